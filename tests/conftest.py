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


# What a command must not import before it has checked its arguments (about 5 s here).
HEAVY = {"torch", "timm", "pytorch_lightning"}


def imported_modules(proc: subprocess.CompletedProcess) -> set[str]:
    """The modules a process imported, from Python's import profile on its stderr (run it with
    ``env={"PYTHONPROFILEIMPORTTIME": "1"}``); the profile's lines are taken out of ``proc.stderr``."""
    lines = proc.stderr.splitlines()
    proc.stderr = "\n".join(line for line in lines if not line.startswith("import time:"))
    return {line.rsplit("|", 1)[-1].strip() for line in lines if line.startswith("import time:")}


def run_main(*args: str, module: str = "tlx") -> subprocess.CompletedProcess:
    """``python -m <module> args...`` in this process: the same entry point, Hydra command-line parsing and one-line
    error handling as :func:`run_cli`, without the ~5 s of a new interpreter importing torch and Lightning. For tests
    of what a run does, says and exits with; tests of the process itself (what it imports, its signals, a fresh
    interpreter's results) use :func:`run_cli`. Logging, Lightning's log levels, torch's thread count and the
    unraisable-exception hook are put back afterwards."""
    import contextlib
    import io
    import logging
    import runpy
    import warnings

    import torch
    from hydra.core.global_hydra import GlobalHydra

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    levels = {name: logging.getLogger(name).level for name in ("pytorch_lightning", "lightning_fabric", "lightning")}
    threads, unraisablehook = torch.get_num_threads(), sys.unraisablehook
    argv, out, err, code = sys.argv, io.StringIO(), io.StringIO(), 0
    sys.argv = [module, *args]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
            # runpy's note that tlx.__main__ was imported before (a test imported a helper from it)
            warnings.filterwarnings("ignore", message="'tlx.*' found in sys.modules", category=RuntimeWarning)
            try:
                # as -m runs it: Hydra finds conf/ from the file, OmegaConf the module of its dataclasses
                runpy.run_module(module, run_name="__main__", alter_sys=True)
            except SystemExit as e:
                code = 0 if e.code is None else e.code if isinstance(e.code, int) else 1  # as the interpreter
            except Exception:  # what the interpreter would print before exiting 1
                import traceback

                traceback.print_exc()
                code = 1
    finally:
        sys.argv, sys.unraisablehook = argv, unraisablehook  # (an interrupted run quiets it as its process ends)
        torch.set_num_threads(threads)
        GlobalHydra.instance().clear()
        for handler in root.handlers:
            if handler not in handlers:
                handler.close()
        root.handlers[:], root.level = handlers, level
        for name, old in levels.items():
            logging.getLogger(name).setLevel(old)
    return subprocess.CompletedProcess([module, *args], code, out.getvalue(), err.getvalue())


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
