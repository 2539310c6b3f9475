"""Folders as people have them (issue 11.4): phone photos, clutter, labels from a CSV, unbalanced classes."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tlx.data import CSVData, FileSamples, FolderData, ImageData
from tlx.errors import ConfigError
from tlx.features import FeatureCache
from tlx.predict import TrainedModel, predict
from tlx.results import read_results
from tlx.run import train

from .conftest import write_images

DATA_CONFIG = {"input_size": (3, 32, 32), "interpolation": "bilinear", "mean": (0.5,) * 3, "std": (0.5,) * 3,
               "crop_pct": 1.0}  # fmt: skip


# Phone photos: EXIF orientation.


def _portrait(size: tuple[int, int] = (64, 128)) -> Image.Image:
    """Upright portrait test image: white top half, black bottom half."""
    w, h = size
    pixels = np.zeros((h, w, 3), np.uint8)
    pixels[: h // 2] = 255
    return Image.fromarray(pixels)


def _phone_photo(path: Path) -> Path:
    """A JPEG whose pixels are stored sideways, as a phone stores a portrait photo, with EXIF Orientation=6."""
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    _portrait().transpose(Image.Transpose.ROTATE_90).save(path, exif=exif, quality=95)
    return path


def _assert_upright(img: Image.Image) -> None:
    w, h = img.size
    assert h == 2 * w, img.size
    gray = np.asarray(img.convert("L"), dtype=float)
    assert gray[: h // 4].mean() > 240 and gray[-h // 4 :].mean() < 15


def test_exif_orientation_is_applied_when_loading(tmp_path):
    photo = _phone_photo(tmp_path / "photo.jpg")
    with Image.open(photo) as raw:
        assert raw.size == (128, 64)  # stored sideways
    samples = FileSamples([photo], [0])
    _assert_upright(samples.load(0))
    _assert_upright(samples.load(0, draft=20))  # reduced-scale JPEG decode, then the turn
    assert FileSamples.decoder != "rgb"  # the feature cache key includes it (checked in test_csv_end_to_end)


def test_predict_reads_a_phone_photo_as_its_upright_copy(tmp_path):
    photo = _phone_photo(tmp_path / "photo.jpg")
    _portrait().save(tmp_path / "upright.jpg", quality=95)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 2)).eval()
    model = TrainedModel(net, ["a", "b"], DATA_CONFIG, tmp_path / "none.ckpt", "test")
    records, skipped = predict(model, [photo, tmp_path / "upright.jpg"], top_k=2)
    assert not skipped
    assert np.allclose(records[0]["probs"], records[1]["probs"], atol=1e-3), records
    # and they differ from what the sideways pixels would give
    sideways = tmp_path / "sideways.jpg"
    _portrait().transpose(Image.Transpose.ROTATE_90).save(sideways, quality=95)
    other, _ = predict(model, [sideways], top_k=2)
    assert not np.allclose(other[0]["probs"], records[1]["probs"], atol=1e-3)


@pytest.mark.parametrize(
    ("name", "pixels", "expected"),
    [
        ("scan.png", np.full((8, 8), 32896, np.uint16), 128),  # 16-bit grey: PIL's own convert clips it to 255
        ("depth.tif", np.full((8, 8), 0.5, np.float32), 128),  # float in [0, 1]: PIL's own convert gives 0
        ("counts.tif", np.array([[-1.0, 3.0]], np.float32), None),  # float outside [0, 1]: its own min..max
        ("eight_bit.png", np.full((8, 8), 77, np.uint8), 77),  # 8-bit: as PIL converts it
    ],
)
def test_deep_and_float_images_are_scaled_to_8_bit_not_clipped(tmp_path, name, pixels, expected):
    Image.fromarray(pixels).save(tmp_path / name)
    rgb = np.asarray(FileSamples([tmp_path / name], [0]).load(0))
    assert rgb.dtype == np.uint8 and rgb.shape == (*pixels.shape, 3)
    if expected is None:
        assert rgb[0, 0].tolist() == [0, 0, 0] and rgb[0, 1].tolist() == [255, 255, 255]
    else:
        assert (rgb == expected).all(), rgb.mean()


# Clutter a synced or notebook-edited folder holds.


def _cluttered(tmp_path: Path) -> Path:
    root = write_images(tmp_path / "photos", classes=("ant", "bee", "café"), n=6)
    for i, path in enumerate(sorted((root / "café").iterdir())):
        path.rename(root / "café" / f"фото {i}.png")  # non-ASCII names must just work
    (root / "ant" / ".ipynb_checkpoints").mkdir()
    (root / "ant" / ".ipynb_checkpoints" / "0-checkpoint.png").write_bytes((root / "ant" / "0.png").read_bytes())
    (root / "ant" / "1-checkpoint.png").write_bytes((root / "ant" / "1.png").read_bytes())
    (root / "ant" / "._0.png").write_bytes(b"\0\5\26\7 AppleDouble")
    (root / "ant" / "README.md").write_text("notes")
    (root / "bee" / ".DS_Store").write_bytes(b"\0" * 16)
    (root / "bee" / "Thumbs.db").write_bytes(b"\0" * 16)
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_text("ref: refs/heads/main")
    (root / "__MACOSX" / "ant").mkdir(parents=True)
    (root / "__MACOSX" / "ant" / "._0.png").write_bytes(b"\0")
    (root / ".ipynb_checkpoints").mkdir()
    (root / "notes.txt").write_text("loose file")
    (root / "bee" / "dup.png").symlink_to(root / "bee" / "0.png")  # the same image twice
    (root / "bee" / "loop").symlink_to(root / "bee")  # a link loop
    (root / "bee" / "broken.png").symlink_to(tmp_path / "gone.png")
    (root / "bee_link").symlink_to(root / "bee")  # not a class of its own
    elsewhere = write_images(tmp_path / "elsewhere", classes=("x",), n=1)
    (root / "ant" / "outside.png").symlink_to(elsewhere / "x" / "0.png")  # followed: links out of the root are used
    return root


def test_clutter_is_never_a_class_or_an_image_twice_and_is_counted(tmp_path, caplog):
    root = _cluttered(tmp_path)
    data = FolderData(root=str(root), data_config=DATA_CONFIG, num_workers=0, val_fraction=0.34)
    with caplog.at_level(logging.WARNING):
        data.setup()
    assert data.classes == ["ant", "bee", "café"]
    used = [p for s in data.samples.values() for p in s.paths]
    assert len(used) == 7 + 6 + 6
    assert len({os.path.realpath(p) for p in used}) == len(used)  # no image twice, in any split
    assert root / "ant" / "outside.png" in used
    assert sum("фото" in p.name for p in used) == 6
    counts = data.counts()
    assert counts["skipped"] == {
        "broken_link": 1,
        "checkpoint_copy": 3,
        "duplicate_link": 3,
        "hidden": 1,
        "not_an_image": 1,
        "not_in_a_class_folder": 1,
        "os_metadata": 4,
    }
    assert counts["train_per_class"] == {"ant": 5, "bee": 4, "café": 4}
    summary = [r.getMessage() for r in caplog.records if "left out" in r.getMessage()]
    assert len(summary) == 1 and "left out 14 file(s)/folder(s)" in summary[0] and "\n" not in summary[0]


# Labels from a CSV file.


def _csv(path: Path, rows: list[str], header: str = "path,label") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


def _rows(images: Path, relative_to: Path) -> list[str]:
    return [
        f"{os.path.relpath(p, relative_to)},{p.parent.name}"
        for c in sorted(images.iterdir())
        for p in sorted(c.iterdir())
    ]


def _real(data: ImageData) -> dict[str, list[str]]:
    return {split: sorted(os.path.realpath(p) for p in s.paths) for split, s in data.samples.items()}


def test_csv_with_relative_paths_splits_like_the_folder(tmp_path):
    images = write_images(tmp_path / "images", n=10)
    rows = _rows(images, tmp_path / "labels")
    rows[3] = f"{images / 'ant' / '3.png'},ant"  # absolute paths work too
    csv_file = _csv(tmp_path / "labels" / "labels.csv", rows[::-1])  # row order does not matter
    kwargs = {"data_config": DATA_CONFIG, "num_workers": 0, "val_fraction": 0.2, "test_fraction": 0.2}
    from_csv, from_folder = CSVData(path=str(csv_file), **kwargs), FolderData(root=str(images), **kwargs)
    from_csv.setup()
    from_folder.setup()
    assert from_csv.classes == from_folder.classes == ["ant", "bee", "cat"]
    assert _real(from_csv) == _real(from_folder)
    assert {k: len(v) for k, v in from_csv.samples.items()} == {"train": 18, "val": 6, "test": 6}


def test_csv_split_column_missing_files_and_duplicates(tmp_path):
    images = write_images(tmp_path / "images", n=4)
    rows = [f"{r},{'val' if r.split(',')[0].endswith('0.png') else 'train'}" for r in _rows(images, tmp_path)]
    rows += ["images/ant/gone.png,ant,train", "images/bee/1.png,bee,TRAIN"]  # a missing file; a duplicate row
    data = CSVData(path=str(_csv(tmp_path / "labels.csv", rows, "Path,Label,Split")), data_config=DATA_CONFIG,
                   num_workers=0)  # fmt: skip
    data.setup()
    assert {k: len(v) for k, v in data.samples.items()} == {"train": 9, "val": 3}
    assert all(p.name == "0.png" for p in data.samples["val"].paths)
    assert data.counts()["skipped"] == {"duplicate_row": 1, "missing": 1}


@pytest.mark.parametrize(
    ("header", "row", "expected"),
    [
        ("file,class", "images/ant/0.png,ant", "must start with a header row naming the columns path,label"),
        ("path,label,split", "images/ant/0.png,ant,training", "line 2: split 'training' is not train, val or test"),
        ("path,label", "images/ant/0.png,bee", "lines 2 and 3 both list images/ant/0.png, as bee and ant; keep one"),
    ],
    ids=["header", "split", "two_labels"],
)
def test_csv_errors_name_the_fix(tmp_path, header, row, expected):
    write_images(tmp_path / "images", n=4)
    rows = [row, "images/ant/0.png,ant" + (",train" if "split" in header else "")]
    data = CSVData(path=str(_csv(tmp_path / "labels.csv", rows, header)), data_config=DATA_CONFIG, num_workers=0)
    with pytest.raises(ConfigError, match=re.escape(expected)):
        data.setup()


def test_a_csv_whose_paths_are_all_missing_says_where_they_are_looked_for(tmp_path):
    """Paths written relative to the working folder, not the CSV's: "were unreadable ... check that they are image
    files" named the wrong fix."""
    write_images(tmp_path / "images", n=4)
    rows = [r.replace("images/", "data/images/") for r in _rows(tmp_path / "images", tmp_path)]
    (tmp_path / "meta").mkdir()
    data = CSVData(path=str(_csv(tmp_path / "meta" / "labels.csv", rows)), data_config=DATA_CONFIG, num_workers=0)
    expected = f"its paths are taken relative to its own folder ({tmp_path / 'meta'}), or absolute"
    with pytest.raises(ConfigError, match=re.escape(expected)):
        data.setup()


def test_a_class_without_validation_images_is_warned_about_and_has_no_val_accuracy(make_cfg, tmp_path, caplog):
    """Its val accuracy was reported as 0.0 (torchmetrics' value for no images), without a word."""
    write_images(tmp_path / "ds" / "train", n=4)
    write_images(tmp_path / "ds" / "val", classes=("ant", "bee"), n=2)
    with caplog.at_level(logging.WARNING, logger="tlx.data.base"):
        results = train(make_cfg("data=folder", f"data.root={tmp_path / 'ds'}"), tmp_path / "run", summary=False)
    assert any(r.getMessage().startswith("no validation images of class(es) 'cat': its val") for r in caplog.records)
    assert results["per_class"]["val"]["per_class_acc"][2] is None
    assert None not in results["per_class"]["val"]["per_class_acc"][:2]


def test_csv_end_to_end_with_subset_cache_and_exif(make_cfg, tmp_path, cache_dir):
    images = write_images(tmp_path / "images", n=8)
    _phone_photo(images / "ant" / "phone.jpg")
    csv_file = _csv(tmp_path / "labels.csv", _rows(images, tmp_path))
    results = train(make_cfg("data=csv", f"data.path={csv_file}", "data.samples_per_class=3"), tmp_path / "run")
    assert results["status"] == "ok" and results["data"]["train"] == 9 and results["cache"]["misses"] == 2
    assert "test/bal_acc" in results["metrics"] and "val/bal_acc" in results["metrics"]
    entries = list(FeatureCache(dir=str(cache_dir)).root.glob("*/*.pt"))
    metas = [torch.load(e, weights_only=True)["meta"] for e in entries]
    assert metas and all(m["decoder"] == FileSamples.decoder for m in metas)


# Unbalanced classes.


def _imbalanced(root: Path) -> Path:
    """44:4 training images, balanced val/ and test/. The classes are noisy reddish vs bluish squares that overlap:
    a classifier that follows the 11:1 prior calls the doubtful rare ones common."""
    for split, counts, seed in (("train", (44, 4), 1), ("val", (10, 10), 2), ("test", (20, 20), 3)):
        rng = np.random.default_rng(seed)
        for c, (name, n) in enumerate(zip(("common", "rare"), counts, strict=True)):
            (root / split / name).mkdir(parents=True)
            mean = np.array([158, 128, 98]) if c == 0 else np.array([98, 128, 158])
            for i in range(n):
                pixels = rng.normal(mean, 40, (32, 32, 3)).clip(0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")
    return root


def test_imbalance_warning_class_weights_and_sampler(tmp_path, caplog):
    root = _imbalanced(tmp_path / "photos")
    data = FolderData(root=str(root), data_config=DATA_CONFIG, num_workers=0, balance="weighted_loss")
    with caplog.at_level(logging.WARNING):
        data.setup()
    assert [r.getMessage() for r in caplog.records if "unbalanced" in r.getMessage()] == [
        "unbalanced classes: 'common' has 44 training images, 'rare' only 4 (11x)"
    ]
    assert data.counts()["train_per_class"] == {"common": 44, "rare": 4}
    assert torch.allclose(data.class_weights(), torch.tensor([48 / (2 * 44), 48 / (2 * 4)]))
    data.balance = "sampler"
    assert data.class_weights() is None
    sampler = data.train_dataloader().sampler
    sampler.set_epoch(3)
    drawn = list(sampler)
    assert drawn == list(sampler) and len(drawn) == 48  # fixed per epoch (resume), one epoch's length
    sampler.set_epoch(4)
    assert list(sampler) != drawn
    rare = sum(data.samples["train"].labels[i] for i in drawn)
    assert 12 <= rare <= 36  # about half, not 4 of 48


@pytest.mark.slow
def test_balancing_raises_the_rare_class_recall(make_cfg, tmp_path):
    root = _imbalanced(tmp_path / "photos")
    recall = {}
    for balance in ("none", "weighted_loss", "sampler"):
        cfg = make_cfg("data=folder", f"data.root={root}", "data.samples_per_class=null", f"data.balance={balance}",
                       "trainer.max_epochs=20", "optim.lr=0.05")  # fmt: skip
        results = train(cfg, tmp_path / balance)
        recall[balance] = results["per_class"]["test"]["per_class_acc"][1]
        assert results["data"]["balance"] == balance and "test/bal_acc" in results["metrics"]
    # measured: none 0.0, weighted_loss 0.90, sampler 0.95 (20 rare test images). The head trains on cached features
    # (the linear probe), which draws its epochs with the sampler's weights: it used to shuffle, and sampler gave 0.0
    assert recall["weighted_loss"] > recall["none"] and recall["sampler"] > recall["none"], recall


def test_a_data_root_typed_as_people_type_paths(tmp_path, monkeypatch):
    """``data.root=~/...`` (the shell leaves a ~ after = alone) and a folder name with non-ASCII letters or brackets
    were Hydra lexer errors; now they are the folder they name."""
    from .conftest import TINY, run_main

    monkeypatch.setenv("HOME", str(tmp_path))
    write_images(tmp_path / "Fotos für Oma (2024)", n=5)
    run_dir = tmp_path / "run"
    proc = run_main(*TINY, "data=folder", "data.root=~/Fotos für Oma (2024)", f"hydra.run.dir={run_dir}",
                    f"cache.dir={tmp_path / 'cache'}")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    from omegaconf import OmegaConf

    saved = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    assert saved.data.root == str(tmp_path / "Fotos für Oma (2024)")  # expanded: the run reruns from anywhere

    # A folder name alone (no "/"), relative to where the command runs, was a lexer error too; and a relative
    # --config-path was looked for inside tlx's package folder.
    write_images(tmp_path / "here" / "fotosé", n=5)
    monkeypatch.chdir(tmp_path / "here")
    first = run_main(*TINY, "data=folder", "data.root=fotosé", "hydra.run.dir=run", f"cache.dir={tmp_path / 'cache'}")
    assert first.returncode == 0, first.stderr[-2000:]
    again = run_main("--config-path", "run/.hydra", "--config-name", "config", "hydra.run.dir=again")
    assert again.returncode == 0, again.stderr[-2000:]
    assert read_results(Path("again"))["metrics"] == read_results(Path("run"))["metrics"]
