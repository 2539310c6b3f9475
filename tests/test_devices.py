"""One job per GPU: the round-robin assignment, pinning a job's trainer, the launcher configs composing. One run on
2 processes (CPU, gloo): every eval image counted once, one process speaks and writes."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

import tlx.devices
from tests.conftest import CONF
from tlx.devices import assign_device, place_job, torch_device


def test_round_robin_over_gpus() -> None:
    assert [assign_device(j, 3) for j in range(7)] == [0, 1, 2, 0, 1, 2, 0]
    assert [assign_device(j, 1) for j in range(3)] == [0, 0, 0]
    assert assign_device(5, 0) is None  # no GPU: the CPU


def test_negative_job_number_is_an_error() -> None:
    with pytest.raises(ValueError, match="job_num"):
        assign_device(-1, 2)


def test_place_job_pins_one_device_jobs() -> None:
    trainer = OmegaConf.create({"accelerator": "auto", "devices": 1})
    assert place_job(trainer, job_num=5, n_gpus=4) == 1
    assert trainer.accelerator == "gpu" and list(trainer.devices) == [1]


@pytest.mark.parametrize(
    ("trainer", "n_gpus"),
    [
        ({"accelerator": "auto", "devices": 1}, 0),  # no GPU: Lightning's auto picks the CPU
        ({"accelerator": "cpu", "devices": 1}, 2),  # the user asked for the CPU
        ({"accelerator": "gpu", "devices": 2, "strategy": "ddp"}, 2),  # one job over several GPUs: left alone
    ],
)
def test_place_job_leaves_explicit_choices(trainer: dict, n_gpus: int) -> None:
    cfg = OmegaConf.create(trainer)
    assert place_job(cfg, job_num=3, n_gpus=n_gpus) is None
    assert cfg == OmegaConf.create(trainer)


def test_torch_device_follows_the_pinned_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    assert torch_device(OmegaConf.create({"accelerator": "cpu", "devices": 1})) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert torch_device(OmegaConf.create({"accelerator": "gpu", "devices": [3]})) == torch.device("cuda:3")
    assert torch_device(OmegaConf.create({"accelerator": "auto", "devices": 1})) == torch.device("cuda")
    assert torch_device(OmegaConf.create({"accelerator": "cpu", "devices": 1})) == torch.device("cpu")


@pytest.mark.parametrize(("gpus", "n_jobs"), [(0, 1), (1, 1), (4, 4)])
def test_local_parallel_runs_one_job_per_gpu(monkeypatch: pytest.MonkeyPatch, gpus: int, n_jobs: int) -> None:
    monkeypatch.setattr(tlx.devices, "visible_gpus", lambda: gpus)
    launcher = _hydra("hydra/launcher=local_parallel").launcher
    assert launcher._target_.endswith("JoblibLauncher")
    assert launcher.n_jobs == n_jobs


def test_slurm_launcher_composes() -> None:
    launcher = _hydra("hydra/launcher=slurm", "hydra.launcher.partition=gpu").launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.partition, launcher.gpus_per_node, launcher.tasks_per_node) == ("gpu", 1, 1)
    assert launcher.timeout_min > 0 and launcher.cpus_per_task > 0 and launcher.mem_gb > 0


def test_ddp_trainer_composes(make_cfg) -> None:
    cfg = make_cfg("trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2")
    assert (cfg.trainer.strategy, cfg.trainer.devices, cfg.trainer.sync_batchnorm) == ("ddp", 2, True)


def _hydra(*overrides: str) -> DictConfig:
    """The composed ``hydra`` node (launcher settings) for ``overrides``."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=True).hydra


def test_auto_candidates_of_a_sweep_job_stay_on_its_gpu():
    """An auto job in a parallel sweep is pinned to GPU job % n; its candidates, composed afresh from the command
    line, must be pinned the same way (they once all ran on the first GPU)."""
    from tlx.__main__ import _compose_candidate

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        pinned = _compose_candidate("config", ["+experiment=auto"], "reinit_last", gpu_job=(3, 2))
        alone = _compose_candidate("config", ["+experiment=auto"], "reinit_last")
    assert (pinned.trainer.accelerator, list(pinned.trainer.devices)) == ("gpu", [1])
    assert (alone.trainer.accelerator, alone.trainer.devices) == ("auto", 1)
    assert pinned.head._target_.endswith("ReinitLastHead")


def _two_processes(tmp_path, *overrides: str) -> tuple[subprocess.CompletedProcess, dict]:
    """``python -m tlx`` on 2 CPU processes (gloo) over 3 x 15 images, 9 of them validation; its results.json."""
    import json

    from tests.conftest import TINY, run_cli, write_images

    photos = write_images(tmp_path / "photos", n=15)
    proc = run_cli(
        *TINY,
        *overrides,
        "data=folder",
        f"data.root={photos}",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        f"cache.dir={tmp_path / 'cache'}",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc, json.loads((tmp_path / "run" / "results.json").read_text())


def test_two_processes_count_every_validation_and_test_image_once(tmp_path) -> None:
    """On 2 devices (CPU processes here, GPUs alike) Lightning's DistributedSampler repeated a sample to give both
    processes as many: with 9 validation images the confusion matrix counted 10 and val/acc was off."""
    _, results = _two_processes(
        tmp_path, "data.samples_per_class=null", "data.test_fraction=0.2", "strategy=reinit_last"
    )
    assert (results["data"]["val"], results["data"]["test"]) == (9, 9)
    for split in ("val", "test"):
        assert sum(map(sum, results["per_class"][split]["confusion"])) == 9, split
    # val_predictions.csv (the report's gallery) is every val image's row, each on its own image: it agrees with the
    # confusion matrix (with the eval loaders sharded, it once held the first process's 5 rows on the wrong files)
    import csv

    with open(tmp_path / "run" / "val_predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    classes = results["data"]["classes"]
    counted = [[0] * len(classes) for _ in classes]
    for r in rows:
        assert Path(r["id"]).parent.name == r["true"]
        counted[classes.index(r["true"])][classes.index(r["predicted"])] += 1
    assert len(rows) == 9 and counted == results["per_class"]["val"]["confusion"]


@pytest.mark.slow  # 14 s; DDP's write-once is also tested by two single runs (here and in test_sweep)
def test_an_auto_search_on_two_processes_speaks_and_writes_once(tmp_path) -> None:
    """Each process of a multi-device run runs the whole command: both printed every auto line and the summary, and
    both wrote results.json, best.ckpt and the report."""
    proc, results = _two_processes(tmp_path, "+experiment=auto")
    console = proc.stdout + proc.stderr
    assert console.count("auto: training candidate head_only") == 1 and console.count(" won with val/acc ") == 2
    assert console.count("tlx: tf_efficientnet_lite0 / auto: ") == 1  # the summary's title, once
    assert results["status"] == "ok" and results["auto"]["winner"]
