"""Shared bits of the benchmarks: timing whole commands, medians, a synthetic photo folder, printing results."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def timed(cmd: list[str], env: dict | None = None) -> float:
    """Wall seconds of one command run to completion (it must succeed)."""
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, env={**os.environ, **(env or {})}, capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    if done.returncode != 0:
        sys.exit(f"benchmark command failed ({done.returncode}): {' '.join(cmd)}\n{done.stderr[-3000:]}")
    return elapsed


def run_tlx(run_dir: Path, *overrides: str) -> dict:
    """``python -m tlx <overrides>`` into ``run_dir`` (progress bars off), timed: its results.json, with the process's
    wall seconds as ``wall_s``."""
    wall = timed(
        [sys.executable, "-m", "tlx", *overrides, "trainer.enable_progress_bar=false", f"hydra.run.dir={run_dir}"]
    )
    return {**json.loads((Path(run_dir) / "results.json").read_text()), "wall_s": wall}


def median(xs: list[float]) -> float:
    return float(statistics.median(xs))


def machine() -> str:
    """One line naming the machine the numbers come from."""
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{platform.processor() or platform.machine()}, {cores} cores, {gpu}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )


def photo_folder(root: Path, classes: int = 3, per_class: int = 40, size: tuple[int, int] = (1024, 768)) -> Path:
    """Class folders of smooth random JPEG 'photos' (large, as from a phone camera, scaled down)."""
    if root.is_dir():
        return root
    rng = np.random.default_rng(0)
    for c in range(classes):
        d = root / f"class{c}"
        d.mkdir(parents=True)
        for i in range(per_class):
            small = rng.integers(0, 255, (size[1] // 32, size[0] // 32, 3), dtype=np.uint8)
            Image.fromarray(small).resize(size, Image.BICUBIC).save(d / f"{i}.jpg", quality=90)
    return root


def report(name: str, rows: dict, out: Path | None = None) -> None:
    """Print the results as aligned lines and save them as JSON under bench/results/."""
    print(f"\n== {name} ({machine()})")
    for key, value in rows.items():
        print(f"  {key:<58} {value:.3f}" if isinstance(value, float) else f"  {key:<58} {value}")
    out = out or ROOT / "bench" / "results" / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine(), **rows}, indent=2))


def lightning_images_per_s(
    module, data, steps: int, batch: int, warmup: int = 2, accelerator: str = "cpu", precision: str = "32-true"
) -> float:
    """Training images/s of ``module`` (a LightningModule) on ``data`` (its DataModule) in a Lightning Trainer (the CPU
    unless ``accelerator`` says otherwise), over the steps after ``warmup``: from the start of the first timed step to
    the end of the last (data waits included; on a GPU, each step's end waits for its kernels)."""
    import pytorch_lightning as pl

    starts: list[float] = []
    ends: list[float] = []

    class StepTimer(pl.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
            starts.append(time.perf_counter())

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
            if accelerator != "cpu":
                import torch

                torch.cuda.synchronize()
            ends.append(time.perf_counter())

    trainer = pl.Trainer(
        max_steps=steps,
        limit_val_batches=0,
        enable_checkpointing=False,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[StepTimer()],
        accelerator=accelerator,
        devices=1,
        precision=precision,
    )
    trainer.fit(module, datamodule=data)
    return (steps - warmup) * batch / (ends[-1] - starts[warmup])
