"""A plain install (``pip install .``, ``pip install git+...``, a wheel) runs as a checkout does: the wheel carries the
configs (conf/, as tlx/conf) and the demo images, and ``python -m tlx`` trains from it in any folder."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import zipfile

from .conftest import ROOT, TINY, run_cli


def test_a_wheel_carries_the_configs_and_the_demo_and_runs_from_any_folder(tmp_path):
    # Without build isolation where setuptools is at hand (no download, 2 s); else pip fetches it, as a user's would.
    flags = ["--no-build-isolation"] if importlib.util.find_spec("setuptools") else []
    # From a copy of what the wheel is built of: a build in the checkout reuses its build/ folder, whose stale files
    # (say, from a build with this fix) would go into the wheel.
    source = tmp_path / "source"
    for part in ("tlx", "conf"):
        shutil.copytree(ROOT / part, source / part, ignore=shutil.ignore_patterns("__pycache__"))
    for part in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / part, source / part)
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", *flags, "-w", str(tmp_path / "dist"), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = (tmp_path / "dist").glob("tlx-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"tlx/{p.relative_to(ROOT / 'tlx')}" for p in (ROOT / "tlx").rglob("*") if p.is_file()}
    expected = {n for n in expected if "__pycache__" not in n}
    expected |= {f"tlx/conf/{p.relative_to(ROOT / 'conf')}" for p in (ROOT / "conf").rglob("*.yaml")}
    assert sorted(expected - names) == []  # every module, config and demo image

    site = tmp_path / "site"
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-compile", "--target", str(site), str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {"PYTHONPATH": str(site), "TLX_CACHE_DIR": str(tmp_path / "cache")}
    done = run_cli("+experiment=small_data", *TINY, "hydra.run.dir=run", cwd=elsewhere, env=env)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    results = json.loads((elsewhere / "run" / "results.json").read_text())
    assert results["status"] == "ok" and results["data"]["num_classes"] == 3  # the demo's ankle boots, sandals, ...
    saved = (elsewhere / "run" / ".hydra" / "hydra.yaml").read_text()
    assert f"path: {site / 'tlx' / 'conf'}" in saved and str(ROOT) not in saved  # composed from the installed configs
    assert os.listdir(elsewhere) == ["run"]  # nothing written beside it
