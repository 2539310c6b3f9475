"""Shared fixtures: compose the real configs with small overrides, run the real command line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
SHARED_FMNIST = ROOT.parent / "shared" / "data" / "fashion-mnist"

# Small and fast: 32 px images, a few images per class, 2 epochs, no loader processes.
TINY = [
    "backbone.image_size=32",
    "data.samples_per_class=4",
    "data.batch_size=8",
    "data.num_workers=0",
    "trainer.max_epochs=2",
    "trainer.enable_progress_bar=false",
]


def fashion_mnist_root() -> Path | None:
    """Fashion-MNIST idx files: this workplace's shared copy, Debian's package, or $TLX_FASHION_MNIST."""
    for cand in (os.environ.get("TLX_FASHION_MNIST"), SHARED_FMNIST, "/usr/share/datasets/fashion-mnist"):
        if cand and (Path(cand) / "train-images-idx3-ubyte.gz").is_file():
            return Path(cand)
    return None


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"


@pytest.fixture
def make_cfg(cache_dir: Path):
    """Compose conf/config.yaml with TINY overrides, a private cache dir, and the given overrides."""

    def _make(*overrides: str, tiny: bool = True) -> DictConfig:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            return compose("config", overrides=[*(TINY if tiny else []), f"cache.dir={cache_dir}", *overrides])

    return _make


def run_cli(
    *args: str, cwd: Path | None = None, env: dict | None = None, module: str = "tlx", timeout: int = 600
) -> subprocess.CompletedProcess:
    """Run ``python -m <module> args...`` as a user would; returns the finished process (text output)."""
    full_env = {**os.environ, "HYDRA_FULL_ERROR": "0", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd or ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def write_images(
    root: Path,
    classes: tuple[str, ...] = ("ant", "bee", "cat"),
    n: int = 5,
    size: int = 32,
    shift: float = 40.0,
    seed: int = 0,
) -> Path:
    """``root/<class>/<i>.png``: noise whose mean brightness depends on the class (``shift`` apart), so a
    classifier can learn something without being perfect."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            pixels = rng.normal(128 + shift * (c - (len(classes) - 1) / 2), 50, (size, size, 3))
            Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(root / name / f"{i}.png")
    return root
