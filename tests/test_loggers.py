"""Experiment trackers (conf/logger/), read back through each tool's own API: MLflow's client, TensorBoard's event
reader, and wandb's protobuf records in its offline transaction log."""

from __future__ import annotations

import json
import os
import struct
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import TINY, run_cli, run_main, write_images
from tlx.errors import ConfigError

# A tiny folder dataset: 3 classes x 10 images (8 train, 2 val each), 32 px, 2 epochs.
SMALL = [
    "data=folder",
    "backbone.image_size=32",
    "data.batch_size=8",
    "data.num_workers=0",
    "trainer.max_epochs=2",
    "trainer.enable_progress_bar=false",
]
EPOCHS = 2


def _wandb_records(run_dir: Path) -> list[Any]:
    """Every record of a wandb offline run's ``run-<id>.wandb`` file, parsed with wandb's own protobuf ``Record``.

    wandb >= 0.19 has no Python reader for this file any more (its datastore moved into the Go ``wandb-core``), so
    the framing is decoded here: a 7-byte header, then LevelDB log format (32 KiB blocks of chunks, each with a
    4-byte checksum, 2-byte length and 1-byte type: 1 full, 2 first, 3 middle, 4 last).
    """
    from wandb.proto import wandb_internal_pb2

    (path,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    block, pos, records, pending = 32768, 7, [], b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a chunk header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def _wandb_run(run_dir: Path) -> dict[str, Any]:
    """The run's name and group, its config, the history of each metric, and the files it saved."""
    run: dict[str, Any] = {"config": {}, "history": {}, "files": []}
    for r in _wandb_records(run_dir):
        kind = r.WhichOneof("record_type")
        if kind == "run":
            run["name"], run["group"], run["project"] = r.run.display_name, r.run.run_group, r.run.project
        elif kind == "config":
            run["config"].update({u.key: json.loads(u.value_json) for u in r.config.update})
        elif kind == "history":
            for item in r.history.item:
                key = item.key or "/".join(item.nested_key)  # wandb-core writes keys as nested_key
                run["history"].setdefault(key, []).append(json.loads(item.value_json))
        elif kind == "files":
            run["files"] += [f.path for f in r.files.files]
    return run


@pytest.mark.slow  # 16 s: a sweep with three trackers; each tracker's single run is tested by default
def test_sweep_jobs_land_as_one_experiment_in_every_tracker(tmp_path: Path) -> None:
    """`logger=many` on a 2-job sweep: each tracker has both jobs, as runs named after their overrides, under one
    experiment named after the sweep, with the resolved config, per-epoch val/acc and results.json."""
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    sweep, db = tmp_path / "sweep", tmp_path / "mlflow" / "mlflow.db"
    done = run_cli(
        "-m",
        "logger=many",
        f"hydra.sweep.dir={sweep}",
        f"cache.dir={tmp_path / 'cache'}",
        f"data.root={write_images(tmp_path / 'images', n=10)}",
        *SMALL,
        "optim.lr=0.01,0.001",
        env={"MLFLOW_TRACKING_URI": f"sqlite:///{db}"},  # as an override it would be part of the job dir names
    )
    assert done.returncode == 0, done.stderr[-3000:]
    jobs = {p.parent.name: json.loads(p.read_text()) for p in sweep.glob("*/results.json")}
    assert len(jobs) == 2 and all(r["status"] == "ok" for r in jobs.values())
    # MLflow's database setup and Lightning's "experiment not found, creating it" are no news to the user
    console = done.stdout + done.stderr
    assert "MLflow database tables" not in console and "not found. Creating it." not in console, console[-3000:]

    client = MlflowClient(f"sqlite:///{db}")
    experiment = client.get_experiment_by_name("sweep")  # the sweep directory's name
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert set(runs) == set(jobs)
    for name, run in runs.items():
        assert run.info.status == "FINISHED"
        assert run.data.params["optim/lr"] == ("0.01" if "optim.lr=0.01," in name else "0.001")
        assert run.data.params["data/root"].endswith("images")
        history = client.get_metric_history(run.info.run_id, "val/acc")
        assert len(history) == EPOCHS
        assert max(m.value for m in history) == pytest.approx(jobs[name]["metrics"]["val/acc"])  # the best epoch
        assert run.data.metrics["test/acc"] == pytest.approx(jobs[name]["metrics"]["test/acc"])
        local = client.download_artifacts(run.info.run_id, "results.json", str(tmp_path / name))
        assert json.loads(Path(local).read_text()) == jobs[name]
        assert Path(run.info.artifact_uri.removeprefix("file://")).is_relative_to(db.parent)  # beside the database

    for name, results in jobs.items():
        events = EventAccumulator(str(sweep / name / "tensorboard"))
        events.Reload()
        val_acc = events.Scalars("val/acc")
        assert len(val_acc) == EPOCHS
        assert max(e.value for e in val_acc) == pytest.approx(results["metrics"]["val/acc"])
        assert events.Scalars("test/acc")[0].value == pytest.approx(results["metrics"]["test/acc"])
        # the HPARAMS tab's run: the config beside the final metrics (Lightning wrote no hparams summary at all)
        assert "_hparams_/session_start_info" in events.PluginTagToContent("hparams")
        assert events.Scalars("final/test/acc")[0].value == pytest.approx(results["metrics"]["test/acc"])

        wb = _wandb_run(sweep / name)
        assert (wb["name"], wb["group"], wb["project"]) == (name, "sweep", "tlx")
        assert wb["config"]["optim"]["lr"] == (0.01 if "optim.lr=0.01," in name else 0.001)
        assert len(wb["history"]["val/acc"]) == EPOCHS
        assert max(wb["history"]["val/acc"]) == pytest.approx(results["metrics"]["val/acc"])
        assert wb["history"]["test/acc"] == [pytest.approx(results["metrics"]["test/acc"])]
        assert "results.json" in wb["files"]

        assert (sweep / name / "logs" / "metrics.csv").is_file()  # csv comes with every tracker


def test_single_run_mlflow_defaults_and_csv_stays(make_cfg, tmp_path: Path) -> None:
    """A run started from Python (no Hydra run dir): experiment `tlx`, run named after its directory; the default
    logger is still the CSV file that tlx's reports read."""
    from mlflow.tracking import MlflowClient

    from tlx.run import train

    assert list(make_cfg().logger) == ["csv"]
    db = tmp_path / "store" / "mlflow.db"
    data = write_images(tmp_path / "images", n=10)
    cfg = make_cfg(*SMALL, f"data.root={data}", "logger=mlflow", f"logger.mlflow.tracking_uri=sqlite:///{db}")
    results = train(cfg, tmp_path / "my_run")
    client = MlflowClient(f"sqlite:///{db}")
    (run,) = client.search_runs([client.get_experiment_by_name("tlx").experiment_id])
    assert run.info.run_name == "my_run"
    assert run.data.params["freeze/mode"] == "head_only" and run.data.params["trainer/max_epochs"] == str(EPOCHS)
    history = client.get_metric_history(run.info.run_id, "val/acc")
    assert len(history) == EPOCHS and history[0].step < history[1].step
    assert run.data.metrics["test/acc"] == pytest.approx(results["metrics"]["test/acc"])
    assert (tmp_path / "my_run" / "logs" / "metrics.csv").read_text().count("\n") > EPOCHS


def test_a_resumed_run_goes_on_in_its_mlflow_run(make_cfg, tmp_path: Path) -> None:
    """A run interrupted and resumed is one MLflow run (it was two of the same name: the first FAILED with the
    epochs before the interruption, the second with the rest)."""
    from mlflow.tracking import MlflowClient

    from tlx.results import read_results, write_results
    from tlx.run import train

    db = tmp_path / "store" / "mlflow.db"
    data = write_images(tmp_path / "images", n=10)
    base = [*SMALL, f"data.root={data}", "logger=mlflow", f"logger.mlflow.tracking_uri=sqlite:///{db}"]
    base += ["probe.enabled=false", "last_checkpoint_every_s=0"]  # epochs in the Lightning loop, last.ckpt each
    train(make_cfg(*base), tmp_path / "run")
    # as a run interrupted after its last epoch's checkpoint leaves it
    write_results(tmp_path / "run", {"status": "interrupted", "resume": "..."})
    assert read_results(tmp_path / "run")["status"] == "interrupted"
    resumed = train(make_cfg(*base, "resume=true"), tmp_path / "run")
    client = MlflowClient(f"sqlite:///{db}")
    (run,) = client.search_runs([client.get_experiment_by_name("tlx").experiment_id])
    assert run.info.status == "FINISHED" and run.data.params["resume"] == "auto"  # the first attempt's params
    assert run.data.metrics["test/acc"] == pytest.approx(resumed["metrics"]["test/acc"])
    assert len(client.get_metric_history(run.info.run_id, "val/acc")) >= EPOCHS


def test_missing_tracker_package_names_the_extra(make_cfg, tmp_path: Path, monkeypatch) -> None:
    import pytorch_lightning.loggers.mlflow as pl_mlflow

    from tlx.tracking import create_loggers

    monkeypatch.setattr(pl_mlflow, "_MLFLOW_AVAILABLE", False)
    cfg = make_cfg("logger=mlflow", f"logger.mlflow.tracking_uri=sqlite:///{tmp_path / 'm.db'}")
    with pytest.raises(ConfigError, match=r"logger=mlflow needs a package that is not installed: \S") as raised:
        create_loggers(cfg, tmp_path / "run")
    assert "\n" not in str(raised.value)  # one line (Lightning's own message has several)


@pytest.mark.parametrize("logger", ["tensorboard", "mlflow"])
def test_a_tracker_that_is_not_installed_is_one_line_before_any_work(logger, tmp_path: Path, monkeypatch) -> None:
    """It used to fail once every feature had been extracted (about 10 s on the demo), in three lines that named an
    install command for a checkout only, after making an empty outputs/mlflow/."""

    for package in ("tensorboard", "tensorboardX", "mlflow"):
        monkeypatch.setitem(sys.modules, package, None)  # as if not installed: import fails, find_spec finds nothing
    monkeypatch.chdir(tmp_path)
    done = run_main("+experiment=small_data", *TINY, f"logger={logger}", "hydra.run.dir=run", "cache.dir=cache")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"tlx: error: logger={logger} needs the {logger} package, which is not installed: pip install {logger} (or "
        "tlx's 'track' extra: pip install -e '.[track]' in a checkout)"
    ]
    assert not (tmp_path / "cache").exists() and sorted(os.listdir("run")) == [".hydra", "results.json", "tlx.log"]
