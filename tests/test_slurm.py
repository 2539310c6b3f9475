"""SLURM for real: a single-node SLURM on this machine (tests/slurm/start.sh, no accounting) runs tlx sweeps through
``hydra/launcher=slurm``. Jobs share one feature cache; a job cancelled mid-training finishes when the sweep command is
run again; a job preempted mid-training is requeued by submitit and resumes from its last.ckpt; the reports equal an
uninterrupted sweep's. Needs Linux, root and Debian's slurm-wlm + munge (.ci/run installs them); skipped elsewhere,
a failure when $CI is set."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import ROOT, run_cli, write_images

pytestmark = pytest.mark.slurm

# Cached head epochs take 20-50 ms here. A cancel kills a job's process (which ignores SIGTERM, as submitit's do) 4.7 s
# after the scancel, measured with this KillWait=1 (srun says it waits up to 3 s for the step first), so a job
# cancelled after its first epoch must have well over 5 s of training left: with 200 epochs a fast day's job once
# finished before the kill; 400 leave at least 8 s (600 cost 20 s more of the default test run, three sweeps long).
EPOCHS = 400
SEEDS = [0, 1]
PREEMPTED, CANCELLED = 0, 1  # sweep job numbers (= SLURM array task ids)


def _why_not() -> str | None:
    if not sys.platform.startswith("linux"):
        return "SLURM test needs Linux"
    if os.geteuid() != 0:
        return "SLURM test starts slurmctld/slurmd/munged and needs root"
    missing = [
        b for b in ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel") if not shutil.which(b)
    ]
    if missing:
        return f"SLURM test needs slurm-wlm and munge (missing {', '.join(missing)}): apt-get install slurm-wlm munge"
    try:
        import hydra_plugins.hydra_submitit_launcher  # noqa: F401
    except ImportError:
        return "SLURM test needs hydra-submitit-launcher: pip install -e '.[dev]'"
    return None


@pytest.fixture(scope="module")
def slurm(tmp_path_factory) -> dict[str, str]:
    """A running single-node SLURM with one job slot per sweep job; yields the environment its clients need; stops it
    after."""
    reason = _why_not()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"CI is set but {reason}")
        pytest.skip(reason)
    state = tmp_path_factory.mktemp("slurm")
    started = subprocess.run(
        [str(ROOT / "tests" / "slurm" / "start.sh"), str(state), str(len(SEEDS))],
        capture_output=True,
        text=True,
        timeout=120,
    )
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        yield {"SLURM_CONF": str(state / "slurm.conf")}
    finally:
        subprocess.run([str(ROOT / "tests" / "slurm" / "stop.sh"), str(state)], timeout=60)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("work")
    write_images(root / "photos", n=10, shift=90.0)
    return root


def _sweep_args(sweep: Path, photos: Path) -> list[str]:
    return [
        "-m",
        "hydra/launcher=slurm",
        "hydra.launcher.partition=tlx",
        "hydra.launcher.gpus_per_node=null",  # a CPU-only cluster
        "hydra.launcher.cpus_per_task=1",
        "hydra.launcher.mem_gb=1",
        "hydra.launcher.timeout_min=60",
        f"hydra.sweep.dir={sweep}",
        "data=folder",
        f"data.root={photos}",
        "backbone.image_size=32",
        "data.batch_size=8",
        "data.num_workers=0",
        f"trainer.max_epochs={EPOCHS}",
        "probe.enabled=false",  # the head trains for epochs in the Lightning loop: there is training to interrupt
        "trainer.enable_progress_bar=false",
        "threads=1",
        "last_checkpoint_every_s=0",  # last.ckpt at every epoch end: the cancelled job resumes from it too
        f"seed={','.join(map(str, SEEDS))}",
    ]


def _env(slurm: dict[str, str], work: Path) -> dict[str, str]:
    return {**slurm, "TLX_CACHE_DIR": str(work / "cache")}


def _jobs(sweep: Path) -> dict[int, Path]:
    """Job directory by seed."""
    jobs = {}
    for d in sweep.iterdir() if sweep.is_dir() else []:
        m = re.search(r"(?:^|,)seed=(\d+)(?:,|$)", d.name)
        if m:
            jobs[int(m.group(1))] = d
    return jobs


def _results(sweep: Path) -> dict[int, dict]:
    return {seed: json.loads((d / "results.json").read_text()) for seed, d in _jobs(sweep).items()}


def _report_rows(sweep: Path) -> list[dict]:
    with open(sweep / "report.csv") as f:
        return [{k: v for k, v in row.items() if k != "wall_s_mean"} for row in csv.DictReader(f)]


def _assert_readable(console: str) -> None:
    assert "Bypassing sacct error" not in console, console[-3000:]
    assert not [line for line in console.splitlines() if "sacct" in line and "error" in line.lower()], console[-3000:]


@pytest.fixture(scope="module")
def uninterrupted(slurm, work) -> tuple[Path, subprocess.CompletedProcess]:
    sweep = work / "sweep_a"
    done = run_cli(*_sweep_args(sweep, work / "photos"), env=_env(slurm, work), timeout=300)
    return sweep, done


def test_sweep_jobs_share_the_feature_cache(uninterrupted) -> None:
    sweep, done = uninterrupted
    console = done.stdout + done.stderr
    assert done.returncode == 0, console[-3000:]
    _assert_readable(console)
    results = _results(sweep)
    assert sorted(results) == SEEDS and all(r["status"] == "ok" for r in results.values()), results
    assert all(r["epochs"] == EPOCHS for r in results.values())
    caches = [r["cache"] for r in results.values()]
    # train and val: each extracted by exactly one job (the other waited for its lock, or came later) and hit by the
    # other one.
    assert all(c["used"] and c["hits"] + c["misses"] == 2 for c in caches), caches
    assert sum(c["misses"] for c in caches) == 2 and sum(c["hits"] for c in caches) == 2, caches
    assert (sweep / "report.md").is_file() and len(_report_rows(sweep)) == 1


def _slurm_job(sweep: Path, task: int) -> str:
    """The SLURM id of sweep job ``task`` (submitit's folders are named <array id>_<task>)."""
    folders = [p.name for p in (sweep / ".submitit").glob(f"*_{task}") if re.fullmatch(rf"\d+_{task}", p.name)]
    assert len(folders) == 1, folders
    return folders[0]


def _wait_for(what: str, check, timeout: float = 180.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


def _squeue(job: str, env: dict[str, str]) -> str:
    return subprocess.run(
        ["squeue", "--noheader", "--states=all", "--format=%T|%r", f"--jobs={job}"],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
    ).stdout.strip()


def test_cancelled_and_preempted_jobs_finish_like_an_uninterrupted_sweep(uninterrupted, slurm, work) -> None:
    reference, _ = uninterrupted
    sweep = work / "sweep_b"
    env = _env(slurm, work)
    log_path = work / "sweep_b.log"
    with open(log_path, "w") as log:
        first = subprocess.Popen(
            [sys.executable, "-m", "tlx", *_sweep_args(sweep, work / "photos")],
            cwd=ROOT,
            env={**os.environ, "HYDRA_FULL_ERROR": "0", **env},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        jobs = _wait_for("the sweep's job folders", lambda: (len(_jobs(sweep)) == len(SEEDS)) and _jobs(sweep))
        slurm_env = {**os.environ, **env}
        # Mid-training: right after each job's first epoch (its last.ckpt appears), with EPOCHS - 1 still to go. The
        # two are watched together: one job may start late (it waited for the other's cache lock), and waiting for it
        # first once let the other train to the end before its turn came.
        # What SLURM sends before the time limit or at preemption (submitit's --signal=USR2@signal_delay_s), and a
        # plain cancel.
        signals = {PREEMPTED: ["--signal=USR2"], CANCELLED: []}

        def signal_those_past_their_first_epoch() -> bool:
            for task in [t for t in signals if (jobs[t] / "checkpoints" / "last.ckpt").is_file()]:
                cmd = ["scancel", *signals.pop(task), _slurm_job(sweep, task)]
                subprocess.run(cmd, check=True, env=slurm_env)
            return not signals

        _wait_for("the first epoch of both jobs", signal_those_past_their_first_epoch)
        preempted, cancelled = _slurm_job(sweep, PREEMPTED), _slurm_job(sweep, CANCELLED)
        # SLURM holds a requeued job for 2 minutes (BeginTime); let it start now.
        _wait_for("the preempted job to be requeued", lambda: "BeginTime" in _squeue(preempted, env))
        subprocess.run(["scontrol", "update", f"JobId={preempted}", "StartTime=now"], check=True, env=slurm_env)
        first.wait(timeout=240)
    finally:
        if first.poll() is None:
            first.kill()
    console = log_path.read_text()
    assert first.returncode != 0 and "CANCELLED" in console, console[-3000:]  # submitit: the job left no result
    _assert_readable(console)
    assert not (jobs[CANCELLED] / "results.json").exists()  # killed mid-training

    # The preempted job wrote last.ckpt at the end of the epoch it was in, was requeued, and resumed from it.
    job_log = "".join(p.read_text() for p in (sweep / ".submitit" / preempted).glob("*_log.*"))
    stopped_at = int(re.search(r"preempted after (\d+) epoch\(s\)", job_log).group(1))
    assert 1 <= stopped_at < EPOCHS, job_log[-3000:]
    assert f"resuming from {jobs[PREEMPTED] / 'checkpoints' / 'last.ckpt'}" in job_log  # tlx's own line

    # The same command again: the cancelled job finishes (from its last.ckpt), the others are skipped.
    again = run_cli(*_sweep_args(sweep, work / "photos"), env=env, timeout=300)
    console = again.stdout + again.stderr
    assert again.returncode == 0, console[-3000:]
    _assert_readable(console)
    rerun_log = "".join(
        p.read_text() for p in (sweep / ".submitit").glob(f"*_{CANCELLED}/*_log.*") if p.parent.name != cancelled
    )
    assert "resuming from" in rerun_log and str(jobs[CANCELLED] / "checkpoints" / "last.ckpt") in rerun_log

    results, expected = _results(sweep), _results(reference)
    assert all(r["status"] == "ok" and r["epochs"] == EPOCHS for r in results.values()), results
    for seed in SEEDS:
        for key, value in expected[seed]["metrics"].items():
            assert results[seed]["metrics"][key] == pytest.approx(value, abs=1e-6), (seed, key)
        assert results[seed]["per_class"] == expected[seed]["per_class"], seed
    assert _report_rows(sweep) == _report_rows(reference)
