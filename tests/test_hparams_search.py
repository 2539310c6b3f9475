"""The Optuna search (conf/hparams_search/small_data_optuna.yaml) through the command line: the study persists in
SQLite in the sweep dir, a rerun continues it, frozen-backbone trials reuse cached features, the report marks the
best trial."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from tests.conftest import run_cli, write_images
from tlx.report import main as report_main


def test_search_persists_continues_and_reports(tmp_path: Path) -> None:
    import optuna

    sweep = tmp_path / "search"
    args = [
        "-m",
        "hparams_search=small_data_optuna",
        "+experiment=small_data",
        f"hydra.sweep.dir={sweep}",
        f"cache.dir={tmp_path / 'cache'}",
        "data=folder",
        f"data.root={write_images(tmp_path / 'images', n=10)}",
        "backbone.image_size=32",
        "data.batch_size=8",
        "data.num_workers=0",
        "trainer.max_epochs=2",
        "trainer.enable_progress_bar=false",
        "hydra.sweeper.sampler.seed=0",  # the config has none (a rerun would propose the same trials again)
    ]
    first = run_cli(*args, "hydra.sweeper.n_trials=2")
    assert first.returncode == 0, first.stderr[-3000:]
    storage = f"sqlite:///{sweep / 'optuna.db'}"
    study = optuna.load_study(study_name="small_data_optuna", storage=storage)
    assert [t.number for t in study.trials] == [0, 1]
    first_params = [t.params for t in study.trials]

    second = run_cli(*args, "hydra.sweeper.n_trials=1")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "Using an existing study with name 'small_data_optuna'" in second.stdout + second.stderr
    study = optuna.load_study(study_name="small_data_optuna", storage=storage)
    trials = study.trials
    assert [t.number for t in trials] == [0, 1, 2]
    assert [t.params for t in trials[:2]] == first_params  # the first command's trials, kept
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert {"freeze.n", "optim.lr", "optim.weight_decay", "head.dropout"} == set(trials[0].params)

    # Each trial's job: the values Optuna proposed reached the run, and it returned its val/acc to the study.
    with (sweep / "report.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["trial"]) for r in rows] == [0, 1, 2]
    seen_cuts = set()
    for t, row in zip(trials, rows, strict=True):
        run_dir = sweep / row["path"]
        results = json.loads((run_dir / "results.json").read_text())
        assert results["metrics"]["val/acc"] == t.value
        assert results["freeze"] == f"last_n(n={t.params['freeze.n']})"
        # Frozen prefixes already extracted by an earlier trial (same freeze.n: same cut) are read from the cache.
        assert (results["cache"]["hits"] > 0) == (results["cache"]["cut"] in seen_cuts), row
        assert results["cache"]["used"]
        seen_cuts.add(results["cache"]["cut"])
    assert len(seen_cuts) < len(trials)  # some trial reused features (with this seed, trial 2 repeats trial 0's)

    best = study.best_trial.number
    assert [r["best"] for r in rows] == [str(t.number == best) for t in trials]
    md = (sweep / "report.md").read_text()
    best_line = next(line for line in md.splitlines() if line.startswith(f"| {best} |"))
    assert "★" in best_line and md.count("★") == 2  # the legend and the best trial

    (sweep / "report.md").unlink()
    report_main([str(sweep)])  # by hand: python -m tlx.report <sweep dir> finds the study in it
    assert (sweep / "report.md").read_text() == md
    with pytest.raises(SystemExit) as refused:  # a search is ranked by its objective: --metric was ignored silently
        report_main([str(sweep), "--metric", "test/accc"])
    assert refused.value.code == 2 and (sweep / "report.md").read_text() == md

    # The same search on other images would continue this study: TPE would learn from, and "Best" name, trials on
    # the first images. One line, before any trial; the study is left as it was.
    other = run_cli(*args, f"data.root={write_images(tmp_path / 'other', n=6)}", "hydra.sweeper.n_trials=1")
    err = other.stderr.strip().splitlines()
    assert other.returncode == 2 and len(err) == 1, other.stderr[-3000:]
    assert err[0].startswith(f"tlx: error: 3 of the 3 runs of the search in {sweep} are of another config: ")
    assert "data.root: " in err[0] and err[0].endswith("for a search of this config choose another hydra.sweep.dir")
    assert len(optuna.load_study(study_name="small_data_optuna", storage=storage).trials) == 3
