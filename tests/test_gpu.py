"""On a CUDA GPU: the README's first command, mixed precision, a GPU-trained model's predictions and export, a
parallel sweep and DDP. Marked ``gpu``: deselected by default, run with ``python -m pytest -m gpu`` on a machine
with a GPU (skipped where there is none). The rest of the suite runs on the GPU too where there is one
(``trainer.accelerator=auto``)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch

from tlx.predict import load_run
from tlx.run import train

from .conftest import TINY, run_cli, run_main, write_images

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

FOLDER = ["data=folder", "data.val_fraction=0.25"]


def _results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def _on_gpu(results: dict) -> bool:
    return results["timing"]["device"].startswith("cuda:0 (")


def test_main_command_trains_on_the_gpu_as_on_the_cpu(tmp_path):
    """``python -m tlx +experiment=small_data`` on the GPU: the same features up to rounding and the same probe give
    the README's CPU numbers (val 0.8933, test 0.8867) within a point; a second run reads the cache."""
    runs = []
    for name in ("cold", "warm"):
        done = run_cli(
            "+experiment=small_data",
            f"hydra.run.dir={tmp_path / name}",
            f"cache.dir={tmp_path / 'cache'}",
            "trainer.enable_progress_bar=false",
        )
        assert done.returncode == 0, done.stderr[-3000:]
        runs.append(_results(tmp_path / name))
    cold, warm = runs
    assert _on_gpu(cold) and _on_gpu(warm)
    assert cold["metrics"]["val/acc"] == pytest.approx(0.8933, abs=0.01)
    assert cold["metrics"]["test/acc"] == pytest.approx(0.8867, abs=0.01)
    assert cold["cache"]["misses"] > 0 and warm["cache"]["misses"] == 0
    assert warm["metrics"]["test/acc"] == pytest.approx(cold["metrics"]["test/acc"], abs=1e-6)


@pytest.mark.parametrize("precision", ["16-mixed", "bf16-mixed"])
def test_mixed_precision_fine_tunes_on_the_gpu(make_cfg, tmp_path, precision):
    """Half-precision extraction into the cache, then fine-tuning the last stage from it (16-mixed: with Lightning's
    gradient scaler); LP-FT's stage 1 fits its head on the same half-precision features."""
    data = write_images(tmp_path / "imgs", n=8)
    for strategy in ("last_n1", "lp_ft"):
        cfg = make_cfg(*FOLDER, f"data.root={data}", f"strategy={strategy}", f"trainer.precision={precision}")
        results = train(cfg, tmp_path / strategy)
        assert results["status"] == "ok" and _on_gpu(results), strategy
        assert results["cache"]["used"]
        assert all(math.isfinite(v) for k, v in results["metrics"].items() if k.endswith(("loss", "acc")))
        state = torch.load(tmp_path / strategy / results["checkpoint"], weights_only=False)["state_dict"]
        assert all(v.isfinite().all() for v in state.values() if v.is_floating_point()), strategy


def test_a_gpu_trained_model_predicts_alike_on_gpu_and_cpu_and_exports(cache_dir, tmp_path):
    data = write_images(tmp_path / "imgs", n=8)
    run = tmp_path / "run"
    done = run_main(
        *TINY, *FOLDER, f"data.root={data}", "strategy=full", f"cache.dir={cache_dir}", f"hydra.run.dir={run}"
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert _on_gpu(_results(run))
    rows = {}
    for device in ("cuda", "cpu"):
        out = tmp_path / f"{device}.csv"
        done = run_main(f"run_dir={run}", f"inputs={data}", f"output={out}", f"device={device}", module="tlx.predict")
        assert done.returncode == 0, done.stderr[-2000:]
        with out.open(newline="") as f:
            rows[device] = list(csv.DictReader(f))
    assert len(rows["cuda"]) == len(rows["cpu"]) == 24
    for g, c in zip(rows["cuda"], rows["cpu"], strict=True):
        assert g["path"] == c["path"]
        # cuDNN's convolutions (TF32 by default) against oneDNN's: equal up to rounding
        assert float(g["prob_1"]) == pytest.approx(float(c["prob_1"]), abs=5e-3)
    done = run_main(f"run_dir={run}", "formats=[torchscript,onnx]", f"out={tmp_path / 'export'}", module="tlx.export")
    assert done.returncode == 0, done.stderr[-2000:]
    x = torch.randn(2, 3, 32, 32)
    scripted = torch.jit.load(str(tmp_path / "export" / "model.pt"), map_location="cpu")
    assert torch.allclose(scripted(x), load_run(run).net.cpu()(x), atol=1e-4)


def test_a_parallel_sweep_and_ddp_run_on_the_gpu(tmp_path):
    """``-m hydra/launcher=local_parallel``: each job pinned to GPU 0 (the one there is); ``trainer=ddp`` on it."""
    data = write_images(tmp_path / "imgs", n=8)
    common = [*TINY, *FOLDER, f"data.root={data}", f"cache.dir={tmp_path / 'cache'}"]
    done = run_cli(
        "-m",
        "hydra/launcher=local_parallel",
        "strategy=head_only,last_n1",
        *common,
        f"hydra.sweep.dir={tmp_path / 's'}",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    jobs = sorted((tmp_path / "s").glob("*/results.json"))
    assert len(jobs) == 2 and all(_on_gpu(json.loads(p.read_text())) for p in jobs)
    done = run_cli("trainer=ddp", "trainer.devices=1", "strategy=full", *common, f"hydra.run.dir={tmp_path / 'ddp'}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert _on_gpu(_results(tmp_path / "ddp"))
