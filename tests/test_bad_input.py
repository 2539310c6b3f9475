"""Bad input through the real command line: one clear line that names the fix, a non-zero exit, and no results.json
that looks like success. Unreadable images and non-image files are skipped with a warning and counted instead."""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from pathlib import Path

import pytest
import timm
import torch
from hydra.utils import instantiate

from tlx.__main__ import _user_error
from tlx.data import FolderData
from tlx.errors import ConfigError
from tlx.results import read_results, write_results

from .conftest import HEAVY, TINY, imported_modules, run_cli, run_main, write_images

_DATA_CONFIG = {
    "input_size": (3, 32, 32),
    "interpolation": "bilinear",
    "mean": (0.5,) * 3,
    "std": (0.5,) * 3,
    "crop_pct": 1.0,
}


def _run(tmp_path: Path, *overrides: str, env: dict | None = None, process: bool = False):
    """``python -m tlx`` with TINY settings in a private run and cache dir; returns the process and results.json.

    In this process (``run_main``) unless ``process`` or ``env`` asks for a new interpreter."""
    run_dir = tmp_path / "run"
    args = (*TINY, f"hydra.run.dir={run_dir}", f"cache.dir={tmp_path / 'cache'}", *overrides)
    proc = run_cli(*args, env=env) if process or env else run_main(*args)
    return proc, read_results(run_dir)


def _assert_fails(proc, results, *phrases: str) -> str:
    """Exit 2 with exactly one ``tlx: error:`` line holding every phrase, no traceback, no successful results."""
    lines = [line for line in proc.stderr.splitlines() if line.startswith("tlx: error:")]
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert all(p in lines[0] for p in phrases), lines[0]
    # results.json, where the run directory could be made, records the failure and the same line
    assert results is None or results == {"status": "failed", "error": lines[0].removeprefix("tlx: error: ")}
    return lines[0]


def _folder(tmp_path: Path, n: int = 5) -> Path:
    return write_images(tmp_path / "photos", n=n)


def test_a_file_for_a_folder_and_a_folder_for_a_file_are_named_as_such(tmp_path):
    from tlx.sources import image_folder, label_file

    (tmp_path / "labels.csv").write_text("path,label\n")
    with pytest.raises(ConfigError, match=r"data root is a file, not a folder: .*\(a label file goes in data=csv"):
        image_folder(tmp_path / "labels.csv")
    with pytest.raises(ConfigError, match=r"label file is a folder, not a file: .*\(a folder of class folders goes in"):
        label_file(tmp_path)


@pytest.mark.parametrize("source", ["folder", "csv"])
def test_data_source_missing_ends_before_the_heavy_imports(tmp_path, source):
    key, expected = ("root", "data root not found") if source == "folder" else ("path", "label file not found")
    missing = tmp_path / ("nope" if source == "folder" else "nope.csv")
    proc, results = _run(tmp_path, f"data={source}", f"data.{key}={missing}", env={"PYTHONPROFILEIMPORTTIME": "1"})
    imported = imported_modules(proc)
    _assert_fails(proc, results, expected, str(missing), f"set data.{key}=")
    assert "tlx.sources" in imported and not HEAVY & imported


def test_a_relative_data_root_that_is_not_found_names_where_it_was_looked_for(tmp_path, monkeypatch):
    """A run rerun from its saved config in another folder looks for its relative data.root there."""
    from tlx.sources import image_folder

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=re.escape(f"data root not found: photos/cats (relative to {tmp_path});")):
        image_folder("photos/cats")


@pytest.mark.parametrize(
    "layout", ["empty_class", "clutter_only_class", "extra_val_class", "no_class_folders", "one_class"]
)
def test_a_folder_that_cannot_be_a_dataset_ends_before_the_heavy_imports(tmp_path, layout):
    """The class-folder checks need only a walk of the folders (at most one image per class), so they run before
    torch loads, as a missing folder's does (they came after about 5 s of imports)."""
    root = tmp_path / "ds"
    if layout == "empty_class":
        write_images(root, classes=("ant", "bee"))
        (root / "dog").mkdir()
        expected = (f"class folder {root / 'dog'} has no images", "add images or remove the folder")
    elif layout == "clutter_only_class":
        write_images(root, classes=("ant", "bee"))
        (root / "cat" / ".ipynb_checkpoints").mkdir(parents=True)  # clutter only: still no images
        expected = (f"class folder {root / 'cat'} has no images", "add images or remove the folder")
    elif layout == "extra_val_class":
        write_images(root / "train", classes=("ant", "bee"))
        write_images(root / "val", classes=("ant", "bee", "cat"))
        expected = ("class folder(s) ['cat']", "not in train/", "add them to train/ or remove them")
    elif layout == "one_class":  # (said after the imports and about 8 s)
        write_images(root, classes=("ant",))
        expected = (f"need at least 2 classes, found 1 in {root} (ant)", "add a folder per class")
    else:
        write_images(root, classes=("ant",))
        for image in (root / "ant").iterdir():
            image.rename(root / image.name)
        (root / "ant").rmdir()
        expected = (f"no class folders in {root}", "one subfolder of images per class")
    proc, results = _run(tmp_path, "data=folder", f"data.root={root}", env={"PYTHONPROFILEIMPORTTIME": "1"})
    _assert_fails(proc, results, *expected)
    assert not HEAVY & imported_modules(proc)


def test_no_images_at_all(tmp_path):
    root = tmp_path / "photos"
    for name in ("ant", "bee"):
        (root / name).mkdir(parents=True)
        (root / name / "notes.txt").write_text("not a picture")
    proc, results = _run(tmp_path, "data=folder", f"data.root={root}")
    line = _assert_fails(proc, results, f"no images in any class folder of {root}", ".jpg", "point data.root at")
    assert results == {"status": "failed", "error": line.removeprefix("tlx: error: ")}  # not a bare run directory


def test_a_failing_run_keeps_the_results_of_a_finished_run_in_its_directory(tmp_path):
    """The same hydra.run.dir again with a mistake: the line and exit 2, and the earlier results stay as they were."""
    root = tmp_path / "photos"
    (root / "ant").mkdir(parents=True)
    (root / "bee").mkdir()
    finished = {"status": "ok", "metrics": {"val/acc": 0.9}}
    (tmp_path / "run").mkdir()
    write_results(tmp_path / "run", finished)
    proc, results = _run(tmp_path, "data=folder", f"data.root={root}")
    _assert_fails(proc, None, f"no images in any class folder of {root}")
    assert results == finished


def test_an_unexpected_error_shows_its_traceback_and_is_recorded(tmp_path, monkeypatch):
    import tlx.run

    def crash(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(tlx.run, "train", crash)
    proc, results = _run(tmp_path)
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "RuntimeError: boom" in proc.stderr, proc.stderr
    assert results == {"status": "failed", "error": "RuntimeError: boom"}


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_corrupt_image_is_skipped_warned_and_counted(tmp_path):
    root = _folder(tmp_path, n=6)
    _truncate(root / "bee" / "0.png")
    (root / "cat" / "1.png").write_bytes(b"this is not a PNG")
    proc, results = _run(tmp_path, "data=folder", f"data.root={root}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    output = proc.stdout + proc.stderr
    assert f"skipping unreadable image {root / 'bee' / '0.png'}" in output and "truncated" in output
    assert f"skipping unreadable image {root / 'cat' / '1.png'}" in output
    assert results["status"] == "ok" and results["data"]["bad_images"] == 2


def test_corrupt_image_fails_when_asked(tmp_path):
    root = _folder(tmp_path, n=6)
    _truncate(root / "bee" / "0.png")
    proc, results = _run(tmp_path, "data=folder", f"data.root={root}", "data.on_bad_image=fail")
    _assert_fails(
        proc, results, f"unreadable image {root / 'bee' / '0.png'}", "truncated", "set data.on_bad_image=skip"
    )


def test_non_image_files_are_ignored_and_counted(tmp_path):
    root = _folder(tmp_path, n=6)
    (root / "ant" / "README.md").write_text("notes")
    (root / "bee" / "Thumbs.db").write_bytes(b"\0" * 16)
    (root / "bee" / ".DS_Store").write_bytes(b"\0" * 16)
    proc, results = _run(tmp_path, "data=folder", f"data.root={root}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"left out 3 file(s)/folder(s) under {root}: 1 not_an_image (e.g. {root / 'ant' / 'README.md'})" in (
        proc.stdout + proc.stderr
    )
    assert results["status"] == "ok" and results["data"]["skipped"] == {"not_an_image": 1, "os_metadata": 2}
    assert results["data"]["train"] == 12 and results["data"]["val"] == 3  # every image still used


def test_unknown_backbone_suggests_close_names(tmp_path):
    proc, results = _run(tmp_path, "backbone.name=tf_efficientnet_lit0")
    _assert_fails(proc, results, "unknown timm backbone 'tf_efficientnet_lit0'", "Did you mean: tf_efficientnet_lite0")


def test_last_n_larger_than_the_number_of_stages(tmp_path):
    proc, results = _run(tmp_path, "freeze=last_n", "freeze.n=99")
    _assert_fails(proc, results, "freeze.n=99 but the backbone has only", "use freeze.n<=", "or freeze=none")


def test_weights_file_with_wrong_shapes(tmp_path):
    state = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    state["conv_stem.weight"] = torch.zeros(16, 3, 3, 3)  # lite0 has 32 stem channels
    torch.save(state, tmp_path / "weights.pth")
    proc, results = _run(tmp_path, f"backbone.weights={tmp_path / 'weights.pth'}")
    _assert_fails(
        proc,
        results,
        f"weights in {tmp_path / 'weights.pth'} do not fit",
        "1 shape mismatches",
        "conv_stem.weight: file (16, 3, 3, 3) vs model (32, 3, 3, 3)",
        "check backbone.name",
    )


@pytest.mark.parametrize(
    ("override", "expected"),
    [("optim.lrr=1", "Could not override 'optim.lrr'"), ("head=linar", "Could not find 'head/linar'")],
    ids=["key", "group"],
)
def test_unknown_config_key_or_choice(tmp_path, override, expected):
    # Python's import profile (stderr) shows whether torch was imported: a typo must end before the heavy imports
    proc, results = _run(tmp_path, override, env={"PYTHONPROFILEIMPORTTIME": "1"})
    imported = imported_modules(proc)
    assert proc.returncode != 0 and expected in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert results is None
    assert "hydra" in imported and not HEAVY & imported


@pytest.mark.parametrize(
    ("overrides", "command"),
    [
        (["head=mlp", "seed=3"], "+experiment=small_data 'data.root=/data/my photos' head=mlp seed=3"),
        # small_data and last_n2 both set what trains: the experiment goes, as a new run would refuse both
        (["+strategy=last_n2"], "head=linear 'data.root=/data/my photos' seed=2 strategy=last_n2"),
    ],
)
def test_a_rerun_that_picks_a_config_group_is_one_line_naming_the_new_run(tmp_path, overrides, command):
    """A saved config has no groups: head=mlp on a rerun was a traceback, and +strategy=last_n2 (Hydra's own hint for
    strategy=last_n2) trained the saved strategy without a word. The line gives the command of a new run: the run's
    overrides, its data where the run read it (data.root=photos was relative), and every override of the rerun."""
    run = tmp_path / "seed=2,strategy=x"  # a sweep job's folder: its name holds "="
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text(
        "- +experiment=small_data\n- head=linear\n- data.root=photos\n- seed=2\n"
    )
    (run / "files.json").write_text(json.dumps({"data_location": "/data/my photos"}))
    proc = run_main("--config-path", str(run / ".hydra"), "--config-name", "config", *overrides)
    assert proc.returncode == 2 and proc.stderr.startswith(f"tlx: error: {overrides[0]} picks a config group")
    assert proc.stderr.strip().endswith(f"start a new run with its overrides and yours: python -m tlx {command}")


def test_cache_dir_cannot_be_written(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("a file, not a folder: nothing can be created below it, not even by root")
    proc, results = _run(tmp_path, f"cache.dir={blocker / 'cache'}")
    _assert_fails(
        proc, results, f"cannot write the feature cache at {blocker / 'cache'}", "set cache.dir=", "cache.enabled=false"
    )
    proc, results = _run(tmp_path, f"cache.dir={blocker}")  # the file itself: mkdir said "File exists"
    _assert_fails(proc, results, f"cannot write the feature cache at {blocker} (it is a file, not a folder)")
    # A run that never uses the cache (augmentation before the cut, one view) needs no cache folder: it was refused too
    proc, results = _run(tmp_path, f"cache.dir={blocker / 'cache'}", "data.augment=true", "trainer.max_epochs=1")
    assert proc.returncode == 0 and results["status"] == "ok" and not results["cache"]["used"], proc.stderr[-2000:]


# Close relatives of the cases above, checked in-process (the command line turns any ConfigError into its one line).


@pytest.mark.parametrize(
    ("layout", "expected"),
    [
        ("flat", "no class folders in"),
        ("unreadable_class", "all 4 training images of class 'cat' in"),
        ("empty_val", "no validation images found"),
        ("no_val_fraction", "no validation images found"),
    ],
)
def test_more_folder_errors(tmp_path, layout, expected):
    kwargs = {}
    if layout == "flat":
        root = tmp_path / "flat"
        root.mkdir()
    elif layout == "unreadable_class":
        root = _folder(tmp_path)
        for path in (root / "cat").iterdir():
            path.write_bytes(b"junk")
    elif layout == "empty_val":
        root = tmp_path / "ds"
        write_images(root / "train", classes=("ant", "bee"))
        (root / "val" / "ant").mkdir(parents=True)
    else:
        root, kwargs = _folder(tmp_path), {"val_fraction": 0.0}
    data = FolderData(root=str(root), data_config=_DATA_CONFIG, num_workers=0, **kwargs)
    with pytest.raises(ConfigError, match=re.escape(expected)):
        data.setup()


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("+optim.lrr=1", "TypeError(\"Optim.__init__() got an unexpected keyword argument 'lrr'\") (in optim); check"),
        ("backbone=timm", "backbone.name has no value (??? in conf/); set backbone.name=<value>"),
    ],
)
def test_instantiate_errors_become_one_line(make_cfg, override, expected):
    cfg = make_cfg(override)
    with pytest.raises(Exception) as info:
        instantiate(cfg.optim if override.startswith("+optim") else cfg.backbone)
    assert expected in _user_error(info.value)


# Settings that can only be wrong fail before any image is decoded (issue 11.5).


def test_zero_epochs_is_one_line_not_a_lightning_traceback(tmp_path):
    proc, results = _run(tmp_path, "trainer.max_epochs=0")
    _assert_fails(proc, results, "trainer.max_epochs must be >= 1 (or -1 with trainer.max_steps > 0), got 0")


def test_val_fraction_outside_0_1_is_named_as_such(tmp_path):
    proc, results = _run(tmp_path, "data=folder", f"data.root={_folder(tmp_path)}", "data.val_fraction=1.5")
    _assert_fails(proc, results, "data.val_fraction must be in [0, 1)", "got 1.5")


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["trainer.max_epochs=-1"], "trainer.max_epochs must be >= 1 (or -1 with trainer.max_steps > 0), got -1"),
        (["data.test_fraction=-0.1"], "data.test_fraction must be in [0, 1)"),
        (["trainer.max_epochs=two"], "trainer.max_epochs must be a whole number, e.g. trainer.max_epochs=2, got two"),
        (["freeze=last_n", "freeze.n=two"], "freeze.n must be a whole number, e.g. freeze.n=2, got two"),
        (["head=reinit_last", "head.n=1.5"], "head.n must be a whole number, e.g. head.n=2, got 1.5"),
        (["data.val_fraction=0.5", "data.test_fraction=0.5"], "data.val_fraction + data.test_fraction must be < 1"),
        (["data.fraction=0"], "data.fraction must be a number in (0, 1] (or null: all), got 0"),
        (["data.samples_per_class=0"], "data.samples_per_class must be a whole number >= 1 (or null: all), got 0"),
        (["data.samples_per_class=abc"], "data.samples_per_class must be a whole number >= 1 (or null: all), got abc"),
        (["data.fraction=half"], "data.fraction must be a number in (0, 1] (or null: all), got half"),
        (["data.balance=oversample"], "data.balance must be none, weighted_loss or sampler, got 'oversample'"),
        (["freeze=last_n", "freeze.n=9"], "freeze.n=9 but the backbone has only 8 stages; use freeze.n<=8"),
        (["head=reinit_last", "head.n=8"], "head.n=8 but the backbone has 8 stages; use 1 <= head.n <= 7"),
        (
            ["head=reinit_last", "head.n=3", "freeze=last_n", "freeze.n=6"],
            "freeze.n=6 but the backbone has only 5 stages left after head.n=3; use freeze.n<=5",
        ),
        (["cache.dir=BLOCKED/cache"], "cannot write the feature cache at BLOCKED/cache"),
        (["strategy=lp_ft", "probe.enabled=false"], "lp_ft.enabled=true trains its first stage with the linear probe"),
        (
            ["data.val_fraction=0.5", "data.test_fraction=0.4"],
            "class 'lone' has only 1 image: too few to keep one for training after 1 val + 1 test; add images to it, "
            "or remove its folder (every class needs at least 1 val + 1 test + 1 train)",  # lower fractions: no help
        ),
        (["optim.weight_decay=-1"], "optim.weight_decay must be >= 0, got -1"),  # (tracebacks from torch)
        (["optim=sgd", "optim.momentum=-1"], "optim.momentum must be >= 0, got -1"),
    ],
    ids=lambda x: x[-1] if isinstance(x, list) else None,
)
def test_bad_settings_fail_before_any_image_is_decoded(make_cfg, tmp_path, monkeypatch, overrides, expected):
    from tlx.data import FileSamples, ImageData
    from tlx.run import train

    def decoded(*args, **kwargs):
        raise AssertionError("an image was decoded before the setting was checked")

    monkeypatch.setattr(ImageData, "_decode_errors", decoded)
    monkeypatch.setattr(FileSamples, "load", decoded)
    root = _folder(tmp_path, n=10)
    write_images(root, classes=("lone",), n=1)
    (tmp_path / "BLOCKED").write_text("a file: nothing can be created below it")
    overrides = [o.replace("BLOCKED", str(tmp_path / "BLOCKED")) for o in overrides]
    cfg = make_cfg("data=folder", f"data.root={root}", "data.samples_per_class=null", *overrides)
    with pytest.raises(ConfigError, match=re.escape(expected.replace("BLOCKED", str(tmp_path / "BLOCKED")))):
        train(cfg, tmp_path / "run")


def test_a_run_that_diverged_fails_instead_of_finishing_ok(tmp_path):
    # optim.lr=1e30 turns the weights infinite and the loss NaN in the first steps: the run finished "ok" with NaN
    # predictions, and results.json held a bare NaN, which strict JSON parsers reject
    proc, results = _run(tmp_path, "strategy=reinit_last", "optim.lr=1e30", "trainer.max_epochs=2")
    _assert_fails(proc, results, "training diverged: val/loss is nan", "lower optim.lr (now 1e+30)")
    json.loads((tmp_path / "run" / "results.json").read_text(), parse_constant=pytest.fail)  # no NaN anywhere


@pytest.mark.parametrize("seed", ["abc", "-1", "99999999999"])  # (the numbers were numpy's traceback)
def test_a_seed_that_is_no_seed_is_one_line(tmp_path, seed):
    proc, results = _run(tmp_path, f"seed={seed}")
    _assert_fails(proc, results, f"seed must be a whole number from 0 to 2**32-1, e.g. seed=0, got {seed}")


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("backbone.weights=none", "'hub' or 'bundled'; for random weights: backbone.pretrained=false"),
        pytest.param(
            "trainer.accelerator=gpu",
            "trainer.accelerator=gpu but no CUDA GPU is visible here; use trainer.accelerator=auto or cpu",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here"),
        ),
    ],
)
def test_a_setting_that_cannot_be_met_here_is_one_line_naming_the_fix(tmp_path, override, expected):
    proc, results = _run(tmp_path, override)
    _assert_fails(proc, results, expected)


@pytest.mark.parametrize("size", ["0", "abc"])
def test_an_image_size_that_is_no_size_is_one_line(tmp_path, size):
    proc, results = _run(tmp_path, f"backbone.image_size={size}")
    _assert_fails(
        proc, results, "backbone.image_size must be a positive whole number of pixels, e.g. 224, or null", f"got {size}"
    )


def test_an_image_smaller_than_the_backbones_downsampling_is_warned_about(caplog):
    """10 px through a 32x-downsampling network trained to chance on the demo without a word (val/acc 0.33)."""
    from tlx.backbones import create_backbone

    with caplog.at_level(logging.WARNING, logger="tlx.backbones"):
        create_backbone("tf_efficientnet_lite0", pretrained=False, image_size=32)
        assert not caplog.records  # 32 px: one pixel at the last stage, as the sweeps run
        create_backbone("tf_efficientnet_lite0", pretrained=False, image_size=10)
    assert "backbone.image_size=10 is smaller than tf_efficientnet_lite0's downsampling (32x)" in caplog.text
    assert "use 32 or more (its pretraining size is 224)" in caplog.text


def test_one_hidden_width_is_one_hidden_layer():
    from tlx.backbones import create_backbone
    from tlx.heads import MLPHead

    backbone = create_backbone("tf_efficientnet_lite0", pretrained=False)
    head = MLPHead(backbone, 3, hidden=256)  # head.hidden=256 (a TypeError before)
    assert [m.out_features for m in head.modules() if isinstance(m, torch.nn.Linear)] == [256, 3]
    for wrong in ("wide", [512, 0], []):
        with pytest.raises(ConfigError, match=re.escape("head.hidden must be a list of positive widths, e.g. head.")):
            MLPHead(backbone, 3, hidden=wrong)


def test_max_epochs_minus_one_with_max_steps_is_valid(make_cfg, tmp_path):
    from tlx.run import _check_before_data

    _check_before_data(make_cfg("trainer.max_epochs=-1", "trainer.max_steps=5"), 8, tmp_path)


def test_a_folder_of_unreadable_images_says_so(tmp_path):
    root = _folder(tmp_path)
    for path in root.rglob("*.png"):
        path.write_bytes(b"junk")
    data = FolderData(root=str(root), data_config=_DATA_CONFIG, num_workers=0)
    with pytest.raises(ConfigError, match=re.escape(f"all 15 images in {root} were unreadable (first: {root}/ant/")):
        data.setup()


def test_run_dir_cannot_be_written(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("a file, not a folder")
    env = {"PYTHONPROFILEIMPORTTIME": "1"}
    proc = run_cli(*TINY, f"hydra.run.dir={blocker / 'run'}", f"cache.dir={tmp_path / 'cache'}", env=env)
    imported = imported_modules(proc)
    _assert_fails(proc, None, f"cannot write the output directory {blocker / 'run'}", "set hydra.run.dir=")
    assert "hydra" in imported and not HEAVY & imported  # the profile was read, and has no torch


def test_an_experiment_and_a_strategy_together_are_one_line(tmp_path):
    # both set freeze, head and lr; the experiment, composed last, won without a word (last_n2 trained head_only)
    proc, results = _run(tmp_path, "+experiment=small_data", "strategy=last_n2")
    _assert_fails(
        proc, results, "+experiment=small_data and strategy=last_n2 both set what trains", "strategy=last_n2 alone"
    )
    assert (
        _run(tmp_path, "+experiment=auto", "auto.budget_s=1", "--cfg", "job")[0].returncode == 0
    )  # auto is a strategy
    # the command line's strategy replaced the experiment's auto: it trained plain last_n2, with no search
    for order in (("+experiment=auto", "strategy=last_n2"), ("strategy=last_n2", "+experiment=auto")):
        proc, results = _run(tmp_path, *order)
        _assert_fails(proc, results, "+experiment=auto is strategy=auto, and strategy=last_n2 replaced it")


def test_a_head_setting_of_another_head_is_one_line(make_cfg, tmp_path):
    # +experiment=small_data chooses head=linear, strategy=reinit_last sets head.n for its own head
    from tlx.run import train

    cfg = make_cfg("+experiment=small_data", "strategy=reinit_last")
    expected = "head.n not among the settings of head=tlx.heads.LinearHead (dropout): settings of another head"
    with pytest.raises(ConfigError, match=re.escape(expected) + ".*use one of them"):
        train(cfg, tmp_path / "run")


@pytest.mark.parametrize("lr", [None, "0.05"])
def test_sgd_at_a_presets_adamw_lr_is_pointed_out(make_cfg, caplog, lr):
    """optim=sgd strategy=full trained at full's AdamW lr (0.003), not sgd's 0.01, without a word (Hydra composes the
    strategy after the optimizer); an lr the user gives is theirs."""
    from tlx.__main__ import _note_preset_lr

    overrides = ["optim=sgd", "strategy=full", *([f"optim.lr={lr}"] if lr else [])]
    with caplog.at_level(logging.WARNING, logger="tlx"):
        _note_preset_lr(make_cfg(*overrides), {"optim": "sgd", "strategy": "full"}, overrides)
    said = [r.getMessage() for r in caplog.records]
    assert said == ([] if lr else ["optim=sgd trains at optim.lr=0.003, the preset's (strategy=full) lr for AdamW, "
                                   "not optim=sgd's own 0.01; set optim.lr= to choose"])  # fmt: skip


@pytest.mark.parametrize(
    ("arg", "module", "package"),
    [
        ("hydra/launcher=local_parallel", "hydra_plugins.hydra_joblib_launcher", "hydra-joblib-launcher"),
        ("hydra/launcher=slurm", "hydra_plugins.hydra_submitit_launcher", "hydra-submitit-launcher"),
        ("hparams_search=small_data_optuna", "hydra_plugins.hydra_optuna_sweeper", "hydra-optuna-sweeper"),
    ],
)
def test_a_sweep_whose_hydra_plugin_is_not_installed_names_the_package(arg, module, package, tmp_path, monkeypatch):
    """Hydra said "Could not load 'hydra/launcher/joblib'" (or "Could not find 'hydra/sweeper/optuna'") and listed its
    search path: ten lines, and not a word of what to install."""
    monkeypatch.setitem(sys.modules, module, None)  # as if not installed
    monkeypatch.chdir(tmp_path)
    done = run_main("-m", arg, "+experiment=small_data", "hydra.sweep.dir=sweep")
    assert done.returncode == 2 and os.listdir(tmp_path) == []
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(f"tlx: error: {arg} needs Hydra's ") and f"not installed: pip install {package} (" in line
