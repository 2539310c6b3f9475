"""The sweep report on a synthetic multirun directory: table, CSV, plot, failed jobs, best per row."""

from __future__ import annotations

import base64
import csv
import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from tlx.report import SweepReport, main, strategy_label, write_report

STRATEGIES = {  # label: (freeze, head, trainable params)
    "head_only": ({"mode": "head_only"}, {"_target_": "tlx.heads.LinearHead"}, 12_810),
    "last_n(2)": ({"mode": "last_n", "n": 2}, {"_target_": "tlx.heads.LinearHead"}, 2_000_000),
}
# test/acc per (samples per class, strategy) and seed 0, 1
ACC = {
    (10, "head_only"): [0.70, 0.72],
    (10, "last_n(2)"): [0.60, 0.64],
    (100, "head_only"): [0.80, 0.81],
    (100, "last_n(2)"): [0.84, 0.86],
}


def _job(root: Path, spc: int, strategy: str, seed: int, results: dict | None) -> Path:
    freeze, head, _ = STRATEGIES[strategy]
    name = f"data.samples_per_class={spc},seed={seed},strategy={strategy}"
    d = root / name
    (d / ".hydra").mkdir(parents=True)
    cfg = {"seed": seed, "data": {"samples_per_class": spc, "fraction": None}, "freeze": freeze, "head": head}
    (d / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg))
    (d / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(name.split(",")))
    if results is not None:
        (d / "results.json").write_text(json.dumps(results))
    return d


def _ok(acc: float, trainable: int, spc: int) -> dict:
    return {
        "status": "ok",
        "metrics": {"test/acc": acc, "val/acc": acc + 0.01},
        "params": {"trainable": trainable},
        "timing": {"total_s": 10.0 if trainable < 100_000 else 30.0},
        "data": {"train": spc * 10, "num_classes": 10},
    }


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    root = tmp_path / "multirun"
    for (spc, strategy), accs in ACC.items():
        for seed, acc in enumerate(accs):
            _job(root, spc, strategy, seed, _ok(acc, STRATEGIES[strategy][2], spc))
    # A third seed of one cell failed, and a whole cell (1000 per class, last_n(2)) failed or never finished.
    _job(root, 100, "head_only", 2, {"status": "failed", "error": "ConfigError: freeze.n=99 but only 8 stages"})
    _job(root, 1000, "head_only", 0, _ok(0.85, 12_810, 1000))
    _job(root, 1000, "last_n(2)", 0, {"status": "failed", "error": "RuntimeError: out of memory"})
    _job(root, 1000, "last_n(2)", 1, None)
    return root


def test_report_table_csv_and_plot(sweep: Path) -> None:
    linked = "data.samples_per_class=10,seed=0,strategy=head_only"
    (sweep / linked / "report.html").write_text("<html></html>")  # a finished run writes one; the others here lack it
    paths = write_report(sweep)
    assert {p.name for p in paths.values()} == {"report.md", "report.csv", "report.png", "report.html"}

    rows = list(csv.DictReader(paths["csv"].open()))
    by = {(r["samples_per_class"], r["strategy"]): r for r in rows}
    assert [r["samples_per_class"] for r in rows] == ["10", "10", "100", "100", "1000", "1000"]  # sorted numerically
    cell = by[("10", "head_only")]
    assert float(cell["mean"]) == pytest.approx(0.71)
    assert float(cell["std"]) == pytest.approx(statistics.stdev([0.70, 0.72]))
    assert (cell["n"], cell["n_failed"], cell["best"], cell["trainable_params"]) == ("2", "0", "True", "12810")
    assert float(cell["wall_s_mean"]) == pytest.approx(10.0)
    assert by[("100", "last_n(2)")]["best"] == "True" and by[("100", "head_only")]["best"] == "False"
    assert (by[("100", "head_only")]["n"], by[("100", "head_only")]["n_failed"]) == ("2", "1")
    assert (
        by[("1000", "last_n(2)")]["n"],
        by[("1000", "last_n(2)")]["n_failed"],
        by[("1000", "last_n(2)")]["mean"],
    ) == ("0", "2", "")

    md = paths["md"].read_text()
    header = next(line for line in md.splitlines() if line.startswith("| samples per class"))
    assert header.index("head_only") < header.index("last_n(2)")  # fewest trainable parameters first
    row10 = next(line for line in md.splitlines() if line.startswith("| 10 |"))
    assert "**0.7100 ± 0.0141** ★ (n=2)" in row10 and "0.6200 ± 0.0283 (n=2)" in row10
    assert "(n=2, 1 failed)" in next(line for line in md.splitlines() if line.startswith("| 100 |"))
    row1000 = next(line for line in md.splitlines() if line.startswith("| 1000 |"))
    assert "failed (2)" in row1000 and "**0.8500** ★ (n=1)" in row1000
    assert "| trainable params | 12,810 | 2,000,000 |" in md
    assert "out of memory" in md and "freeze.n=99" in md and "no results.json" in md
    assert "12 jobs, 9 ok, 3 failed" in md

    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and paths["png"].stat().st_size > 5_000

    page = paths["html"].read_text()  # the same table and plot in one self-contained page
    assert "<td class=num>0.7100 ± 0.0141 ★ (n=2)</td>" in page and "<td class=num>failed (2)</td>" in page
    assert f'src="data:image/png;base64,{base64.b64encode(paths["png"].read_bytes()).decode()}"' in page
    assert "out of memory" in page and "12 jobs, 9 ok, 3 failed" in page
    # every job is listed, with a link to its own report where it has one (the sweep page had none)
    jobs = page.split('<section id="jobs">')[1].split("</section>")[0]
    assert jobs.count("<tr>") == 1 + 12 and jobs.count("<a href=") == 1
    href = "data.samples_per_class%3D10%2Cseed%3D0%2Cstrategy%3Dhead_only/report.html"
    assert f'<td><a href="{href}">{linked}</a></td><td>head_only</td><td>ok</td><td class=num>0.7000</td>' in jobs
    assert (sweep / "data.samples_per_class=10,seed=0,strategy=head_only/report.html").is_file()
    assert "<td>data.samples_per_class=1000,seed=1,strategy=last_n(2)</td><td>last_n(2)</td><td>incomplete</td>" in jobs


def test_report_other_metric_and_cli(sweep: Path) -> None:
    main([str(sweep), "--metric", "val/acc"])
    rows = list(csv.DictReader((sweep / "report.csv").open()))
    assert float(rows[0]["mean"]) == pytest.approx(0.72) and rows[0]["metric"] == "val/acc"


def test_cli_refuses_what_it_cannot_report_and_keeps_the_report(sweep: Path, tmp_path: Path, capsys) -> None:
    """A mistyped --metric rewrote a good report as "every job failed"; an empty folder got a report of 0 jobs; a
    folder of several sweeps got one report of all their jobs. Each is one line, exit 2, nothing written."""
    main([str(sweep)])
    before = {p.name: p.read_bytes() for p in sweep.glob("report.*")}
    (tmp_path / "empty").mkdir()
    for sweep_copy in ("a", "b"):
        shutil.copytree(sweep, tmp_path / "two" / sweep_copy)
        (tmp_path / "two" / sweep_copy / "multirun.yaml").write_text("hydra: {}\n")
    # outputs/runs: runs started without -m (their .hydra/hydra.yaml says so, as Hydra writes it), reported as one
    # sweep whose "jobs" were every run of every kind
    for i, job in enumerate(sorted(p.parent.parent for p in sweep.rglob(".hydra/config.yaml"))[:2]):
        shutil.copytree(job, tmp_path / "runs" / f"run{i}")
        (tmp_path / "runs" / f"run{i}" / ".hydra" / "hydra.yaml").write_text("hydra:\n  run: {}\n  mode: RUN\n")
    for argv, expected in (
        ([str(sweep), "--metric", "test/accc"], "no finished job has the metric test/accc; theirs: test/acc, val/acc"),
        ([str(tmp_path / "empty")], f"no run, evaluation or sweep job in {tmp_path / 'empty'}"),
        ([str(tmp_path / "two")], f"{tmp_path / 'two'} holds 2 sweeps; give one of them: {tmp_path / 'two' / 'a'}, "),
        (
            [str(tmp_path / "runs")],
            f"{tmp_path / 'runs'} holds 2 single runs, not a sweep (no multirun.yaml); give one of them (python -m "
            f"tlx.report {tmp_path / 'runs' / 'run0'}) or a sweep directory (hydra.sweep.dir)",
        ),
    ):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2
        assert capsys.readouterr().err.startswith(f"tlx.report: error: {expected}")
    assert {p.name: p.read_bytes() for p in sweep.glob("report.*")} == before
    assert not list((tmp_path / "empty").iterdir()) and not list((tmp_path / "two").glob("report.*"))
    assert not list((tmp_path / "runs").glob("report.*"))


def test_an_interrupted_job_is_listed_as_resumable_not_as_an_unexplained_failure(tmp_path: Path) -> None:
    root = tmp_path / "multirun"
    _job(root, 10, "head_only", 0, _ok(0.7, 12_810, 10))
    _job(root, 10, "last_n(2)", 0, {"status": "interrupted", "resume": "python -m tlx ... resume=true"})
    md = write_report(root)["md"].read_text()
    assert "(interrupted): stopped before the end; the sweep's command again resumes it from its last.ckpt" in md
    assert "no error recorded" not in md


def test_callback_never_fails_the_sweep(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path / "missing" / "dir")}}})
    SweepReport().on_multirun_end(cfg)  # the directory does not exist: the report fails, the callback logs it
    assert "could not write the sweep report" in caplog.text


@pytest.mark.parametrize(
    ("freeze", "head", "label"),
    [
        ({"mode": "head_only"}, {"_target_": "tlx.heads.LinearHead"}, "head_only"),
        ({"mode": "last_n", "n": 2}, {"_target_": "tlx.heads.LinearHead"}, "last_n(2)"),
        ({"mode": "head_only"}, {"_target_": "tlx.heads.ReinitLastHead", "n": 1}, "reinit_last(1)"),
        ({"mode": "none"}, {"_target_": "tlx.heads.LinearHead"}, "full"),
        ({"mode": "head_only"}, {"_target_": "tlx.heads.MLPHead"}, "head_only+mlp"),
    ],
)
def test_strategy_label(freeze: dict, head: dict, label: str) -> None:
    assert strategy_label(OmegaConf.create({"freeze": freeze, "head": head})) == label


def test_other_swept_settings_split_the_rows_and_seeds_are_averaged(tmp_path: Path) -> None:
    """A sweep over optim.lr (or backbone.name) compares them row by row; seeds and data.split_seed are replicates.
    (Such cells were once averaged across the settings, with a warning.)"""
    root = tmp_path / "multirun"
    for spc in (10, 100):
        for lr in ("1e-3", "2e-3"):
            for seed in (0, 1):
                acc = (0.6 if lr == "1e-3" else 0.8) + spc / 1000 + seed / 100
                d = _job(root / lr, spc, "head_only", seed, _ok(acc, 12_810, spc))
                overrides = [f"data.samples_per_class={spc}", f"seed={seed}", f"data.split_seed={seed}"]
                (d / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([*overrides, f"optim.lr={lr}"]))
    paths = write_report(root)
    md = paths["md"].read_text()
    assert "different settings" not in md
    rows = [line for line in md.splitlines() if line.startswith("| 10") or line.startswith("| 100")]
    assert [r.split(" | ")[0] for r in rows[:4]] == [
        "| 10 · optim.lr=1e-3",
        "| 100 · optim.lr=1e-3",
        "| 10 · optim.lr=2e-3",
        "| 100 · optim.lr=2e-3",
    ]
    assert "0.6150 ± 0.0071" in rows[0] and "0.9050 ± 0.0071" in rows[3]  # the two seeds of each, averaged
    with paths["csv"].open() as f:
        assert [r["samples_per_class"] for r in csv.DictReader(f)] == [r.split(" | ")[0][2:] for r in rows[:4]]


def test_the_sweep_report_does_not_import_torch():
    # `python -m tlx.report <sweep dir>` and the Hydra callback that writes the sweep report need results.json files
    # and matplotlib only: importing torch, timm or Lightning would add seconds to both
    code = "import sys, tlx.report; print(sorted({'torch', 'timm', 'pytorch_lightning'} & set(sys.modules)))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "[]", proc.stdout + proc.stderr


def test_a_tie_goes_to_the_cheaper_strategy(tmp_path: Path) -> None:
    root = tmp_path / "multirun"
    _job(root / "a", 10, "last_n(2)", 0, _ok(0.7, 2_000_000, 10))  # read first: once got the star
    _job(root / "b", 10, "head_only", 0, _ok(0.7, 12_810, 10))
    row = next(line for line in write_report(root)["md"].read_text().splitlines() if line.startswith("| 10 |"))
    assert row.split(" | ")[1].endswith("★ (n=1)") and "★" not in row.split(" | ")[2]


def test_a_test_metric_of_jobs_without_a_test_split_is_named_as_measured_on_val(tmp_path: Path) -> None:
    """A folder of class folders has no test split by default: the jobs' test/acc is their val/acc, which the report
    showed as a test score (the run summary says "(on val)")."""
    root = tmp_path / "multirun"
    for strategy, acc in (("head_only", 0.6), ("last_n(2)", 0.7)):
        _job(
            root,
            10,
            strategy,
            0,
            _ok(acc, 12_810 if strategy == "head_only" else 2_000_000, 10) | {"test_split": "val"},
        )
    paths = write_report(root)
    assert paths["md"].read_text().startswith("# Sweep report: test/acc (on val: no test split)\n")
    assert "test/acc (on val: no test split)" in paths["csv"].read_text()
    _job(root, 10, "last_n(2)", 1, _ok(0.8, 2_000_000, 10))  # one with a test split
    assert "# Sweep report: test/acc (on val: jobs without a test split)" in write_report(root)["md"].read_text()


def _backbone_sweep(root: Path, sizes: tuple[int, ...]) -> Path:
    for spc in sizes:
        for name in ("resnet18", "convnext_atto", "vit_tiny_patch16_224"):
            for strategy in STRATEGIES:
                d = _job(root / name, spc, strategy, 0, _ok(0.5 + spc / 1000, STRATEGIES[strategy][2], spc))
                overrides = [f"data.samples_per_class={spc}", f"strategy={strategy}", f"backbone.name={name}"]
                (d / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    return root


def test_the_plot_gives_each_other_swept_setting_a_panel_or_a_group_of_bars(tmp_path: Path) -> None:
    """Several backbones over several sizes: a panel per backbone, one legend naming each strategy once (it once
    listed every strategy x setting pair beside one crowded plot). At one size: bars grouped by backbone."""
    from tlx.report import _plot, collect_jobs, summarize

    lines = _plot(*summarize(collect_jobs(_backbone_sweep(tmp_path / "lines", (10, 100)), "test/acc")), "test/acc")
    panels = [ax for ax in lines.axes if ax.get_visible()]
    assert sorted(ax.get_title() for ax in panels) == [
        "backbone.name=convnext_atto",
        "backbone.name=resnet18",
        "backbone.name=vit_tiny_patch16_224",
    ]
    assert all(len(ax.get_lines()) >= 2 for ax in panels)  # both strategies' lines in each panel
    (legend,) = lines.legends
    assert [t.get_text() for t in legend.get_texts()] == ["head_only", "last_n(2)"]

    bars = _plot(*summarize(collect_jobs(_backbone_sweep(tmp_path / "bars", (4,)), "test/acc")), "test/acc")
    (ax,) = bars.axes
    assert [t.get_text() for t in ax.get_xticklabels()] == ["convnext_atto", "resnet18", "vit_tiny_patch16_224"]
    assert ax.get_xlabel() == "backbone.name" and len(ax.patches) == 6  # 3 backbones x 2 strategies
    assert "at 4 training images per class" in ax.get_title()
    assert [t.get_text() for t in bars.legends[0].get_texts()] == ["head_only", "last_n(2)"]
