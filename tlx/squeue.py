"""Job states on SLURM clusters without accounting, for sweeps on ``hydra/launcher=slurm``.

Without accounting (no slurmdbd) ``sacct`` fails, and submitit logs a "Bypassing sacct error" warning at every poll and
never learns that a cancelled job ended. :class:`SlurmCallback` gives submitit a watcher that reads job states from
``squeue`` once ``sacct`` has failed. A Hydra callback (conf/config.yaml), so every ``python -m tlx`` imports this
module before its task starts: it imports nothing heavy (submitit only when the sweep runs on SLURM), and a run that
ends at a bad setting ends without waiting for torch and Lightning to load. Preemption and requeue: ``tlx.cluster``.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger(__name__)

# squeue states after which a job will not run again (submitit's watcher treats every other state as not done).
_ENDED = {"BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY", "TIMEOUT"}


class SlurmCallback(Callback):
    """Hydra callback: when the sweep runs on ``hydra/launcher=slurm``, read job states from ``squeue`` where
    ``sacct`` does not work (no accounting), instead of a warning per poll and cancelled jobs never seen to end."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if str(config.hydra.launcher.get("_target_", "")).endswith("SlurmLauncher"):
            from submitit.slurm import slurm

            slurm.SlurmJob.watcher = _make_watcher(slurm.SlurmInfoWatcher)(delay_s=600)


def _make_watcher(base: type) -> type:
    """submitit's SLURM watcher with a ``squeue`` fallback (a factory, so submitit is imported only when used)."""

    class SqueueFallbackWatcher(base):
        """``sacct`` while it works; after it fails on the first call, ``squeue`` (jobs still in slurmctld's memory,
        ``MinJobAge``) and, for jobs that left it, a final state ``NOT_IN_QUEUE``."""

        sacct: bool | None = None

        def update(self) -> None:
            command = self._make_command()
            if command is None:
                return
            self._num_calls += 1
            self._last_status_check = time.time()
            if self.sacct is not False:
                done = subprocess.run(command, capture_output=True)
                if done.returncode == 0:
                    self.sacct = True
                    self._info_dict.update(self.read_info(done.stdout))
                    return
                error = (done.stderr or done.stdout).decode(errors="replace").strip().splitlines()
                if self.sacct:  # it worked before: a passing failure, keep the last states
                    log.warning("sacct failed (%s); job states may be stale", error[-1] if error else done.returncode)
                    return
                self.sacct = False
                log.info("sacct does not work here (%s): reading job states from squeue", error[-1] if error else "")
            self._info_dict.update(self._squeue())

        def _squeue(self) -> dict[str, dict[str, str]]:
            waiting = self._registered - self._finished
            ids = sorted({j.split("_")[0] for j in waiting})
            done = subprocess.run(
                ["squeue", "--noheader", "--array", "--states=all", "--format=%i|%T|%N", f"--jobs={','.join(ids)}"],
                capture_output=True,
                text=True,
            )
            if done.returncode != 0 and "Invalid job id" not in done.stderr:
                log.warning("squeue failed (%s); job states may be stale", done.stderr.strip())
                return {}
            info = {}
            for line in done.stdout.splitlines():
                job_id, state, nodes = line.strip().split("|")
                state = state if state in _ENDED else "RUNNING" if state != "PENDING" else "PENDING"
                info[job_id] = {"JobID": job_id, "State": state, "NodeList": nodes}
            for job_id in waiting - info.keys():  # purged from slurmctld's memory: it ended
                info[job_id] = {"JobID": job_id, "State": "NOT_IN_QUEUE", "NodeList": ""}
            return info

    return SqueueFallbackWatcher


def left_running() -> list[str]:
    """The SLURM jobs this process submitted and has not seen end (none where it submitted none): a Ctrl-C while a
    sweep waits for its jobs stops the waiting, not the jobs."""
    slurm = sys.modules.get("submitit.slurm.slurm")
    watcher = getattr(getattr(slurm, "SlurmJob", None), "watcher", None)
    if watcher is None:
        return []
    left = set(watcher._registered) - set(watcher._finished)
    tasks = {j for j in left if not any(k.startswith(f"{j}_") for k in left)}  # an array's tasks, not the array too
    return sorted(tasks, key=lambda j: (len(j), j))
