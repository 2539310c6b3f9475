"""A tiny real sweep through the command line: failed jobs do not stop it, the report appears, the command exits 1
when a job failed, a re-run resumes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_cli, run_main

# TINY without its data size: the sweep chooses that.
SWEEP_TINY = [
    "backbone.image_size=32",
    "data.batch_size=8",
    "data.num_workers=0",
    "trainer.max_epochs=2",
    "trainer.enable_progress_bar=false",
]
IMPOSSIBLE = """# @package _global_
# A strategy that cannot be built: EfficientNet-Lite0 has 8 stages.
defaults:
  - override /freeze: last_n
freeze:
  n: 99
"""


def _results(sweep: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sweep.rglob("results.json")}


def test_sweep_reports_failures_and_resumes(tmp_path: Path) -> None:
    (tmp_path / "conf" / "strategy").mkdir(parents=True)
    (tmp_path / "conf" / "strategy" / "impossible.yaml").write_text(IMPOSSIBLE)
    sweep = tmp_path / "sweep"
    args = [
        "-m",
        f"hydra.sweep.dir={sweep}",
        f"hydra.searchpath=[file://{tmp_path / 'conf'}]",
        f"cache.dir={tmp_path / 'cache'}",
        *SWEEP_TINY,
        "data.samples_per_class=2,4",
        "strategy=head_only,impossible",
    ]
    first = run_main(*args)  # in this process (the launcher tests below start real ones)
    # Every job ran and the report was written; the command then exits 1 with one line, as a script expects.
    assert first.returncode == 1, first.stderr[-3000:]
    assert first.stderr.strip().splitlines()[-1] == (
        f"tlx: error: 2 of 4 sweep jobs did not finish (report.md in {sweep} says why); fix that and run the same "
        "command again: it re-runs only those"
    )
    results = _results(sweep)
    assert len(results) == 4
    status = {name: r["status"] for name, r in results.items()}
    assert sorted(status.values()) == ["failed", "failed", "ok", "ok"]
    assert all("freeze.n=99" in r["error"] for r in results.values() if r["status"] == "failed")

    md = (sweep / "report.md").read_text()
    assert (sweep / "report.csv").is_file() and (sweep / "report.png").stat().st_size > 0
    header = next(line for line in md.splitlines() if line.startswith("| samples per class"))
    assert "head_only" in header and "last_n(99)" in header
    for size in (2, 4):
        row = next(line for line in md.splitlines() if line.startswith(f"| {size} |"))
        assert "★ (n=1)" in row and "failed (1)" in row
    assert "## Failed jobs" in md

    # Same command again: the finished jobs are skipped (results untouched), the failed ones run again.
    before = {p: (json.loads(p.read_text())["status"], p.stat().st_mtime_ns) for p in sweep.rglob("results.json")}
    second = run_main(*args)
    assert second.returncode == 1, second.stderr[-3000:]  # the impossible jobs failed again
    assert (second.stdout + second.stderr).count("results.json is complete") == 2
    for p, (status, mtime) in before.items():
        assert (p.stat().st_mtime_ns == mtime) == (status == "ok"), p.parent.name

    # The bad strategy dropped from the command: its failed jobs' folders stay in the fixed sweep dir and in the
    # report, but do not fail this command, which ran only good jobs.
    fixed = run_main(*[a.replace("strategy=head_only,impossible", "strategy=head_only") for a in args])
    assert fixed.returncode == 0, fixed.stderr[-3000:]
    assert "report.md also lists 2 unfinished job(s) of earlier commands in " in fixed.stdout + fixed.stderr

    # A sweep dir named by the time is new for each command: the line says which one to run again into.
    kept = [a for a in args if not a.startswith(("hydra.sweep.dir=", "data.samples_per_class=", "strategy="))]
    timed = run_main(*kept, f"hydra.sweep.dir={tmp_path}/timed_${{now:%H-%M-%S-%f}}", "strategy=impossible")
    (timed_dir,) = tmp_path.glob("timed_*")
    assert timed.returncode == 1 and timed.stderr.strip().splitlines()[-1].endswith(
        f"fix that and run the same command again with hydra.sweep.dir={timed_dir}: it re-runs only those"
    )

    # The same sweep on other data (data.root is not in the job folders' names): its 2 finished jobs would land in
    # these folders, be skipped as finished and reported with the other data's results, their saved configs replaced.
    # One line, before any job runs; nothing in the sweep changes.
    saved = {p: p.read_bytes() for p in sweep.rglob("*") if p.is_file()}
    other = run_main(*args, f"data.root={ROOT / 'tlx' / 'demo'}")
    err = other.stderr.strip().splitlines()
    assert other.returncode == 2 and len(err) == 1, other.stderr[-3000:]
    assert err[0].startswith("tlx: error: 2 of this sweep's 4 jobs would run in directories of another sweep: ")
    assert "holds a finished run of another config (data.root: None -> " in err[0]
    assert err[0].endswith("choose another hydra.sweep.dir, or run these jobs over with resume=false")
    assert {p: p.read_bytes() for p in sweep.rglob("*") if p.is_file()} == saved
    # resume=false runs those jobs over, in the same folders (resume is no part of their names)
    folders = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    over = run_main(*args, f"data.root={ROOT / 'tlx' / 'demo'}", "resume=false")
    assert over.returncode == 1, over.stderr[-3000:]  # (the impossible jobs failed again)
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == folders
    assert sum(f"root: {ROOT / 'tlx' / 'demo'}" in p.read_text() for p in sweep.glob("*/.hydra/config.yaml")) == 4


def test_local_parallel_launcher_runs_jobs_in_processes(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    done = run_cli(
        "-m",
        "hydra/launcher=local_parallel",
        "hydra.launcher.n_jobs=2",
        f"hydra.sweep.dir={sweep}",
        f"cache.dir={tmp_path / 'cache'}",
        *SWEEP_TINY,
        "data.samples_per_class=2,4",
        "probe.enabled=false",  # the head trains in Lightning's loop ...
        "trainer.enable_progress_bar=true",  # ... and says how it goes in lines (stdout is a pipe)
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = _results(sweep)
    assert len(results) == 2 and all(r["status"] == "ok" for r in results.values())
    output = done.stdout + done.stderr
    assert "Joblib.Parallel(n_jobs=2" in output
    # the two jobs' lines may interleave: each says which job it is, as Hydra numbers them ("#0 : ...")
    assert all(output.count(f"job #{j}, epoch {e}/2: train/loss") == 1 for j in (0, 1) for e in (1, 2)), output[-3000:]
    assert (sweep / "report.md").is_file()


def test_local_parallel_runs_as_many_jobs_at_once_as_there_are_gpus_by_default() -> None:
    import torch

    # the launcher's config as Hydra resolves it before any job starts (its n_jobs is ${tlx_gpus:})
    done = run_cli("hydra/launcher=local_parallel", "--cfg", "hydra", "--package", "hydra.launcher", "--resolve")
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"n_jobs: {max(1, torch.cuda.device_count())}\n" in done.stdout, done.stdout


def test_ddp_on_cpu_writes_results_once(tmp_path: Path) -> None:
    # trainer=ddp's sync_batchnorm (for GPUs) is turned off on the CPU: every process crashed with a traceback there
    # when BatchNorm trained (strategy=reinit_last), unless the user added trainer.sync_batchnorm=false
    run_dir = tmp_path / "run"
    done = run_cli(
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "strategy=reinit_last",
        f"hydra.run.dir={run_dir}",
        f"cache.dir={tmp_path / 'cache'}",
        *SWEEP_TINY,
        "data.samples_per_class=4",
        "trainer.enable_progress_bar=true",  # stdout is a pipe: a line per epoch instead of a bar
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((run_dir / "results.json").read_text())["status"] == "ok"
    assert done.stdout.count("run dir") == 1  # the summary of rank 0 only
    output = done.stdout + done.stderr
    assert [output.count(f"epoch {e}/2: train/loss") for e in (1, 2)] == [1, 1], output[-3000:]  # rank 0's lines only


def test_ctrl_c_while_a_sweep_waits_for_slurm_jobs_names_the_jobs_that_go_on(monkeypatch, capsys) -> None:
    """Ctrl-C in the process that waits for a SLURM sweep stops the waiting, not the jobs: it was a KeyboardInterrupt
    traceback from submitit, and the same command run again at once trained the running jobs a second time."""
    import sys

    from submitit.slurm import slurm

    import tlx.__main__ as cli

    watcher = slurm.SlurmInfoWatcher(delay_s=600)
    for job in ("7", "7_1", "7_0", "7_2"):  # an array of 3 (submitit registers the array too)
        watcher.register_job(job)
    watcher._finished.add("7_2")  # this one ended before the Ctrl-C
    monkeypatch.setattr(slurm.SlurmJob, "watcher", watcher)

    def waiting_for_jobs() -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "main", waiting_for_jobs)
    monkeypatch.setattr(sys, "argv", ["tlx", "-m", "hydra/launcher=slurm"])
    with pytest.raises(SystemExit) as stop:
        cli._main()
    assert stop.value.code == 130
    assert capsys.readouterr().err == (
        "tlx: interrupted; its 2 SLURM job(s) 7_0, 7_1 go on: 'scancel 7_0 7_1' stops them, and the same command again "
        "once they have ended reports them (while they run, it would train them a second time)\n"
    )


def test_a_sweep_over_a_setting_the_folders_are_not_named_by_is_refused(tmp_path: Path) -> None:
    """data.root=a,b: both jobs ran in one folder (data.root is left out of the names), so the second was skipped as
    done and reported as the first's results, exit 0. Now one line, before any job; nothing is written."""
    roots = ",".join(str(tmp_path / name) for name in ("a", "b"))
    done = run_main("-m", "data=folder", f"data.root={roots}", f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert done.returncode == 2 and done.stderr.startswith(f"tlx: error: data.root={roots} sweeps a setting the job")
    assert "run one sweep per value, each with its own hydra.sweep.dir" in done.stderr
    assert not (tmp_path / "sweep").exists()
