"""Without a SLURM: when a run resumes (resume=auto), and how the sweep learns job states where sacct does not work
(fake sacct/squeue commands on PATH). The real thing runs in tests/test_slurm.py."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tlx.errors import ConfigError
from tlx.results import resume_checkpoint
from tlx.squeue import SlurmCallback, _make_watcher

slurm = pytest.importorskip("submitit.slurm.slurm", reason="needs submitit (pip install -e '.[dev]')")


@pytest.mark.parametrize(
    ("resume", "has_last", "status", "resumes"),
    [
        ("auto", True, None, True),  # killed: no results.json
        ("auto", True, "preempted", True),  # requeued SLURM job
        ("auto", True, "interrupted", True),
        ("auto", True, "ok", False),  # finished (skip_done=false runs it again from the start)
        ("auto", False, None, False),
        (False, True, None, False),
        (True, True, "ok", True),
        (True, False, None, False),
    ],
)
def test_resume_checkpoint(tmp_path: Path, resume, has_last, status, resumes) -> None:
    last = tmp_path / "last.ckpt"
    if has_last:
        last.write_bytes(b"")
    assert resume_checkpoint(resume, last, {"status": status} if status else None) == (last if resumes else None)


def test_resume_checkpoint_rejects_other_values(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="resume must be true, false or auto"):
        resume_checkpoint("sometimes", tmp_path / "last.ckpt", None)


@pytest.fixture
def no_accounting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``sacct`` that fails as without slurmdbd (and counts its calls), ``squeue`` that knows two of three jobs."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sacct").write_text(
        f"#!/bin/sh\necho call >> {tmp_path / 'sacct_calls'}\necho 'Slurm accounting storage is disabled' >&2\nexit 1\n"
    )
    (bin_dir / "squeue").write_text(
        f'#!/bin/sh\necho "$@" > {tmp_path / "squeue_args"}\n'
        'printf "7_0|RUNNING|vm\\n7_1|CANCELLED|vm\\n7_3|PENDING|\\n"\n'
    )
    for script in bin_dir.iterdir():
        script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return tmp_path


def test_watcher_reads_squeue_where_sacct_fails(no_accounting: Path, caplog: pytest.LogCaptureFixture) -> None:
    watcher = _make_watcher(slurm.SlurmInfoWatcher)(delay_s=600)
    for job in ("7_0", "7_1", "7_2", "7_3"):
        watcher.register_job(job)
    with caplog.at_level(logging.INFO):
        watcher.update()
        watcher.update()
    states = {job: watcher.get_state(job, mode="cache") for job in ("7_0", "7_1", "7_2", "7_3")}
    assert states == {"7_0": "RUNNING", "7_1": "CANCELLED", "7_2": "NOT_IN_QUEUE", "7_3": "PENDING"}
    assert [watcher.is_done(j, mode="cache") for j in ("7_0", "7_1", "7_2", "7_3")] == [False, True, True, False]
    assert (no_accounting / "sacct_calls").read_text().count("call") == 1  # tried once, then squeue only
    assert "--jobs=7" in (no_accounting / "squeue_args").read_text()
    assert "sacct does not work here (Slurm accounting storage is disabled)" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text


def test_slurm_callback_replaces_the_watcher_only_for_the_slurm_launcher(monkeypatch: pytest.MonkeyPatch) -> None:
    original = slurm.SlurmJob.watcher
    monkeypatch.setattr(slurm.SlurmJob, "watcher", original)
    launcher = "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
    SlurmCallback().on_multirun_start(OmegaConf.create({"hydra": {"launcher": {"_target_": launcher}}}))
    assert slurm.SlurmJob.watcher is original
    launcher = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    SlurmCallback().on_multirun_start(OmegaConf.create({"hydra": {"launcher": {"_target_": launcher}}}))
    assert slurm.SlurmJob.watcher is not original and hasattr(slurm.SlurmJob.watcher, "_squeue")
