"""SLURM through hydra-submitit-launcher: preemption and requeue, and job states on clusters without accounting.

Who owns requeue: submitit. A sweep job under ``hydra/launcher=slurm`` runs inside submitit, which handles the signal
SLURM sends before the time limit or at preemption (``SIGUSR2``, ``--signal=USR2@signal_delay_s``): it calls the
launcher's ``checkpoint`` method (a resubmission of the same Hydra job, same overrides, so the same job directory),
runs ``scontrol requeue`` and exits; it also counts timeouts against ``max_num_timeout``. Lightning's own SLURM
requeue (``SLURMEnvironment(auto_requeue=True)``, on ``SIGUSR1``) would requeue the job a second time and write its
own ``hpc_ckpt_*.ckpt`` beside tlx's ``last.ckpt``, so it is turned off in submitit jobs; so is Lightning's SIGTERM
handler, which ends training at the next batch: SLURM sends SIGTERM at preemption before the signal above, and
submitit ignores it on purpose, so that the job lives on to checkpoint and requeue (after ``scancel``, SLURM's
SIGKILL follows ``KillWait`` seconds later, and the next run resumes from ``last.ckpt``). tlx adds what submitit cannot
know: on the signal it lets the current epoch finish, writes ``checkpoints/last.ckpt`` and only then hands over to
submitit's handler; the requeued job finds that ``last.ckpt`` and resumes from it (``resume=auto``).

Job states on clusters without accounting: ``tlx.squeue`` (a Hydra callback, which every start imports, so it is kept
apart from Lightning).
"""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path
from types import FrameType
from typing import Any

import pytorch_lightning as pl

from tlx.results import resume_command, write_results

log = logging.getLogger(__name__)

# How long to wait for the end of the current epoch after the preemption signal before requeueing anyway (with an
# older last.ckpt). SLURM kills the job signal_delay_s after the signal (120 s in conf/hydra/launcher/slurm.yaml,
# and it may signal up to 60 s early), so this leaves submitit time to requeue.
EPOCH_END_WAIT_S = 45


def in_submitit_job() -> bool:
    """Whether this process is a job submitit started on SLURM (its sbatch script exports ``SUBMITIT_EXECUTOR``)."""
    return os.environ.get("SUBMITIT_EXECUTOR") == "slurm" and "SLURM_JOB_ID" in os.environ


def requeue_setup(last: Path, out_dir: Path) -> tuple[list[pl.Callback], list[Any]]:
    """Trainer callbacks and plugins for a submitit SLURM job (both empty elsewhere).

    Args:
        last: the run's ``checkpoints/last.ckpt``, written before the job is requeued.
        out_dir: the run directory (``results.json`` records the preemption).
    """
    if not in_submitit_job():
        return [], []
    from lightning_fabric.plugins.environments import SLURMEnvironment

    return [Preemption(last, out_dir)], [SLURMEnvironment(auto_requeue=False)]


class Preemption(pl.Callback):
    """While training: on submitit's preemption/timeout signal, finish the epoch, write ``last.ckpt``, then let
    submitit requeue the job (at most ``wait_s`` seconds later, even mid-epoch).

    Args:
        last: where to write the checkpoint the requeued job resumes from.
        out_dir: the run directory; its ``results.json`` says ``preempted`` until the requeued job finishes.
        wait_s: the longest wait for an epoch end after the signal.
    """

    def __init__(self, last: Path, out_dir: Path, wait_s: float = EPOCH_END_WAIT_S) -> None:
        self.last, self.out_dir, self.wait_s = Path(last), Path(out_dir), wait_s
        self.signum: int | None = None
        self.submitit_handler: Any = None
        self.sigterm_handler = signal.getsignal(signal.SIGTERM)  # submitit's (it ignores SIGTERM), before Lightning's
        self.trainer: pl.Trainer | None = None
        self.pending = False

    def on_train_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        from submitit import JobEnvironment

        self.trainer = trainer
        self.signum = JobEnvironment._usr_sig()  # SIGUSR2, or $SUBMITIT_PREEMPT_SIGNAL
        self.submitit_handler = signal.getsignal(self.signum)
        signal.signal(self.signum, self._on_signal)
        signal.signal(signal.SIGTERM, self.sigterm_handler)  # Lightning restores it at the end of fit as well

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.pending:
            return
        self.pending = True
        log.warning(
            "SLURM signalled %s (preemption or time limit): writing %s at the end of this epoch, then requeueing",
            signal.Signals(signum).name,
            self.last,
        )
        signal.signal(signal.SIGALRM, self._on_timeout)
        signal.alarm(max(1, int(self.wait_s)))

    def _on_timeout(self, signum: int, frame: FrameType | None) -> None:
        log.warning(
            "no epoch ended within %ds of the signal: requeueing with the last.ckpt already written", self.wait_s
        )
        self._requeue(epochs_done=int(self.trainer.current_epoch))  # mid-epoch: the finished ones

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if self.pending:
            trainer.save_checkpoint(self.last)
            self._requeue(epochs_done=int(trainer.current_epoch) + 1)

    def on_fit_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if self.pending:  # the signal came after the last epoch ended; last.ckpt was written at fit end
            self._requeue(epochs_done=int(trainer.current_epoch))
        elif self.signum is not None:
            signal.signal(self.signum, self.submitit_handler)  # the test stage runs with submitit's own handler

    def _requeue(self, epochs_done: int) -> None:
        signal.alarm(0)
        signal.signal(self.signum, self.submitit_handler)
        trainer = self.trainer
        if trainer.is_global_zero:
            write_results(
                self.out_dir,
                {"status": "preempted", "epochs_done": epochs_done, "resume": resume_command(self.out_dir)},
            )
            log.warning("preempted after %d epoch(s): handing over to submitit to requeue the job", epochs_done)
        # submitit pickles the resubmission, runs `scontrol requeue` and exits (SystemExit), or raises when it will
        # not requeue (e.g. timed out more than max_num_timeout times).
        self.submitit_handler(self.signum, None)
