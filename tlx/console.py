"""What a run prints: a quiet console by default, everything with ``verbose=true``.

A run shows tlx's own log lines (what it builds, and warnings about the user's data and settings: skipped images,
ignored files, a feature cache too big), the progress bars and the summary table. Hidden by default, because none of
it is about the user's data or anything the user set:

- deprecation notices from libraries (``DeprecationWarning``, ``PendingDeprecationWarning``, ``FutureWarning``), e.g.
  torch's ``isinstance(treespec, LeafSpec)`` seen through Lightning;
- Lightning's advice (``PossibleUserWarning``), e.g. a logging interval longer than an epoch, an unused ``srun``,
  few loader workers (tlx sizes them on purpose);
- Lightning's info lines: accelerators available, tips, ``Loading train_dataloader to estimate ...``,
  ``Trainer.fit stopped``, ``weights_only was not set``, the loading of the best checkpoint for the test (a resumed
  run says itself which checkpoint it continues from);
- Lightning's notes that the run's log and checkpoint folders are not empty: tlx's resume rules manage the run
  directory, and a resumed run keeps its earlier rows of ``logs/metrics.csv``.

Other library warnings (plain ``UserWarning``) still show: they may concern a setting the user chose.

Lightning's progress bars are drawn only at a terminal. Where stdout is not one (``> train.log``, ``nohup``, a SLURM
job's log, a pipe), a drawn bar comes out as one frame per bar with its metrics wrapped over several lines, so there
:class:`TrainingLines` logs one line per validation instead (and a line a minute within a long epoch); they go to the
run's ``tlx.log`` as well. Feature extraction, whose bar is tqdm's, also says how far it got once a minute there.
"""

from __future__ import annotations

import logging
import os
import re
import time
import warnings
from typing import Any

# Imported here, before the levels below are set: importing either package sets its own logger to INFO.
import lightning_fabric  # noqa: F401
import pytorch_lightning  # noqa: F401
from lightning_fabric.utilities.warnings import PossibleUserWarning
from pytorch_lightning import Callback, LightningModule, Trainer
from rich.console import Console

log = logging.getLogger("tlx.train")

HIDDEN_WARNINGS: tuple[type[Warning], ...] = (
    DeprecationWarning,
    PendingDeprecationWarning,
    FutureWarning,
    PossibleUserWarning,
)
# Lightning's notes on the run directory, which tlx manages itself (resume=auto|true|false): a resumed run keeps its
# logs/metrics.csv rows (tlx.tracking), so "Previous log files ... will be deleted" would not even be true.
HIDDEN_MESSAGES = (
    r"Experiment logs directory .* exists and is not empty",
    r"Checkpoint directory .* exists and is not empty",
    # DDP with a channels-last network (tlx converts CNNs): a performance hint per process, not an error
    r"Grad strides do not match bucket view strides",
    # torchmetrics, on a diverged run's NaN loss: the run then fails with a line that says what happened
    r"Encountered nan values in tensor",
    # a run that stops before its first validation: tlx validates the final weights then (tlx.run)
    r"`ModelCheckpoint\(monitor='val/acc'\)` could not find the monitored key",
)
# alembic: MLflow's database setup (MLflow's own loggers: MLFLOW_LOGGING_LEVEL below)
LIBRARY_LOGGERS = ("pytorch_lightning", "lightning_fabric", "lightning", "alembic")
# Library log records that are no news: a new experiment is what a first tracked run makes
HIDDEN_RECORDS = {"pytorch_lightning.loggers.mlflow": r"Experiment with name .* not found\. Creating it\."}


def configure_console(verbose: bool) -> None:
    """Hide library deprecation notices, advice and info lines unless ``verbose``; with ``verbose`` change nothing
    (the libraries' own defaults: everything they print is shown). In the other processes of a multi-device run (each
    runs the whole command) tlx's own info and warning lines are hidden too: one process speaks, as Lightning's do."""
    if other_process():  # (its warnings too: they are the first process's, about the same data)
        logging.getLogger("tlx").setLevel(logging.ERROR)
    if verbose:
        return
    for category in HIDDEN_WARNINGS:
        warnings.filterwarnings("ignore", category=category)
    for message in HIDDEN_MESSAGES:
        warnings.filterwarnings("ignore", message=message)
    for name in LIBRARY_LOGGERS:
        # Children (e.g. pytorch_lightning.utilities.rank_zero) have no level of their own and inherit this one.
        logging.getLogger(name).setLevel(logging.WARNING)
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # MLflow sets its loggers' level when imported
    for name, pattern in HIDDEN_RECORDS.items():
        logging.getLogger(name).addFilter(lambda record, p=re.compile(pattern): not p.match(record.getMessage()))


def draws_bars() -> bool:
    """Whether rich (Lightning's progress bars) redraws a bar in place on stdout, as it decides it (rich.live): at a
    terminal or in Jupyter; elsewhere it prints each bar's last frame once."""
    console = Console()
    return console.is_jupyter or (console.is_terminal and not console.is_dumb_terminal)


class TrainingLines(Callback):
    """Progress as log lines, for a stdout that is not a terminal: after each validation while training,
    ``epoch 3/20: train/loss 0.275, val/loss 2.071, val/acc 0.488, ... (6.2s)`` (``step 150/200`` for runs sized in
    steps; ``job #3, epoch ...`` in sweep job 3, as Hydra numbers it); within a long stretch of training, a line at most
    every ``every_s`` seconds saying how far it got.

    ``train/loss`` is the mean training loss over the images since the previous validation (the epoch's, as the run
    logs it, when validation is at the end of each epoch); under DDP, rank 0's images, and only rank 0 logs.
    """

    def __init__(self, every_s: float, job: int | None = None) -> None:
        self.every_s = every_s
        self.job = "" if job is None else f"job #{job}, "  # a sweep's jobs may log at once (parallel launchers)
        self.start = self.last = 0.0
        self.loss_sum: Any = 0.0  # a tensor on the training device once batches come (no sync per step)
        self.loss_n = 0

    def on_train_start(self, trainer: Trainer, module: LightningModule) -> None:
        self.start = self.last = time.monotonic()

    def on_train_batch_end(self, trainer: Trainer, module: LightningModule, outputs: Any, batch: Any, i: int) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is not None:
            n = len(batch[1])
            self.loss_sum = self.loss_sum + loss.detach() * n
            self.loss_n += n
        if time.monotonic() - self.last >= self.every_s:
            total = trainer.num_training_batches
            self._line(trainer, f", batch {i + 1}" + (f"/{total}" if isinstance(total, int) else ""), {})

    def on_validation_end(self, trainer: Trainer, module: LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        first = [k for k in ("val/loss", "val/acc") if k in metrics]
        self._line(trainer, "", {k: metrics[k] for k in first + sorted(set(metrics) - set(first))})
        self.loss_sum, self.loss_n = 0.0, 0

    def _line(self, trainer: Trainer, within: str, metrics: dict[str, float]) -> None:
        if not trainer.is_global_zero:  # DDP: one process speaks, as the bars are drawn by one
            return
        if trainer.max_epochs is not None and trainer.max_epochs > 0:
            where = f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}"
        else:
            where = f"step {trainer.global_step}/{trainer.max_steps}"
        shown = ({"train/loss": float(self.loss_sum) / self.loss_n} if self.loss_n else {}) | metrics
        values = ", ".join(f"{k} {v:.4g}" for k, v in shown.items())
        now = time.monotonic()
        log.info("%s%s%s: %s (%.1fs)", self.job, where, within, values, now - self.start)
        self.last = now


def other_process() -> bool:
    """Whether this is a process other than the first of a multi-device run (Lightning's launcher sets their rank)."""
    return any(os.environ.get(k, "0") != "0" for k in ("RANK", "LOCAL_RANK", "NODE_RANK"))
