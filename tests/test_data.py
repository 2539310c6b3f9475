"""Image folders: split layouts, image modes and extensions, transforms from the backbone."""

from __future__ import annotations

import unicodedata

import numpy as np
import pytest
from PIL import Image

from tlx.backbones import create_backbone
from tlx.data import DemoData, FashionMNISTData, FolderData
from tlx.errors import ConfigError
from tlx.evaluate import check_classes

from .conftest import fashion_mnist_root

CFG = {
    "input_size": (3, 32, 32),
    "interpolation": "bilinear",
    "mean": (0.5,) * 3,
    "std": (0.5,) * 3,
    "crop_pct": 0.875,
    "crop_mode": "center",
}


def make_folder(root, classes=("tigger", "misty", "neither"), n=6, size=(40, 30)):
    """Class folders with images in several modes, sizes and extension cases."""
    rng = np.random.default_rng(0)
    modes = [("RGB", ".jpg"), ("L", ".png"), ("RGBA", ".PNG"), ("RGB", ".JPEG"), ("P", ".png"), ("RGB", ".png")]
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(n):
            mode, ext = modes[i % len(modes)]
            img = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).convert(mode)
            img.save(
                root / c / f"{i}{ext}", format="PNG" if ext.lower() == ".png" else "JPEG"
            ) if mode != "RGBA" else img.save(root / c / f"{i}{ext}", format="PNG")
    return root


def test_single_folder_is_split_stratified_and_fixed(tmp_path):
    root = make_folder(tmp_path / "photos", n=10)
    data = FolderData(root=str(root), data_config=CFG, val_fraction=0.2, test_fraction=0.1, num_workers=0)
    data.setup()
    assert data.classes == ["misty", "neither", "tigger"]
    assert {s: len(v) for s, v in data.samples.items()} == {"train": 21, "val": 6, "test": 3}
    assert sorted(data.samples["val"].labels) == [0, 0, 1, 1, 2, 2]
    ids = set(data.samples["train"].ids) | set(data.samples["val"].ids) | set(data.samples["test"].ids)
    assert len(ids) == 30
    again = FolderData(root=str(root), data_config=CFG, val_fraction=0.2, test_fraction=0.1, subset_seed=5)
    again.setup()
    assert again.samples["val"].ids == data.samples["val"].ids  # val does not move with the run seed
    x, y = data.dataset("train")[0]
    assert x.shape == (3, 32, 32) and y in (0, 1, 2)


@pytest.mark.parametrize(("n", "val", "warned"), [(10, 6, True), (50, 30, False)])
def test_a_small_validation_set_is_pointed_out(tmp_path, caplog, n, val, warned):
    root = make_folder(tmp_path / "photos", n=n, size=(8, 8))
    data = FolderData(root=str(root), data_config=CFG, val_fraction=0.2, num_workers=0)
    with caplog.at_level("WARNING", logger="tlx.data.base"):
        data.setup()
    assert len(data.samples["val"]) == val
    lines = [r.getMessage().split(",")[0] for r in caplog.records if r.getMessage().startswith("validation has")]
    assert lines == ([f"validation has {val} images: one image is {100 / val:.1f} points of val/acc"] if warned else [])


def test_train_val_test_layout_and_modes(tmp_path):
    for split in ("train", "val", "test"):
        make_folder(tmp_path / "ds" / split, n=6)
    data = FolderData(root=str(tmp_path / "ds"), data_config=CFG, num_workers=0)
    data.setup()
    assert {s: len(v) for s, v in data.samples.items()} == {"train": 18, "val": 18, "test": 18}
    for i in range(6):  # grayscale, palette, RGBA, upper-case extensions: all become 3-channel tensors
        assert data.dataset("val")[i][0].shape == (3, 32, 32)
    assert data.counts()["bad_images"] == 0


@pytest.mark.parametrize("val_name", ["valid", "validation"])
def test_a_validation_folder_named_as_kaggle_names_it_is_the_val_split(tmp_path, val_name):
    make_folder(tmp_path / "ds" / "train", n=6)
    make_folder(tmp_path / "ds" / val_name, n=2)
    data = FolderData(root=str(tmp_path / "ds"), data_config=CFG, num_workers=0)
    data.setup()  # it used to be ignored: validation was split out of train/ instead
    assert {s: len(v) for s, v in data.samples.items()} == {"train": 18, "val": 6}
    assert all(f"/{val_name}/" in p for p in data.samples["val"].ids)
    make_folder(tmp_path / "ds" / "val", n=2)
    with pytest.raises(ConfigError, match=f"has both val/ and {val_name}/; keep one validation folder"):
        FolderData(root=str(tmp_path / "ds"), data_config=CFG, num_workers=0).setup()


def test_split_folders_in_capitals_and_a_class_name_in_decomposed_unicode(tmp_path):
    """``Train/ Val/ Test/`` are the splits (they became three classes, without a word), and a class folder named in
    decomposed Unicode (as macOS writes "café") is the class of the same name in composed form (it was another)."""
    make_folder(tmp_path / "ds" / "Train", classes=("café", "tea"), n=4)
    make_folder(tmp_path / "ds" / "Val", classes=(unicodedata.normalize("NFD", "café"), "tea"), n=2)
    make_folder(tmp_path / "ds" / "TEST", classes=("café", "tea"), n=2)
    data = FolderData(root=str(tmp_path / "ds"), data_config=CFG, num_workers=0)
    data.setup()
    assert data.classes == ["café", "tea"]
    assert {s: len(v) for s, v in data.samples.items()} == {"train": 8, "val": 4, "test": 4}
    assert check_classes([unicodedata.normalize("NFD", "café")], data.classes, tmp_path) == [0]  # tlx.evaluate's
    make_folder(tmp_path / "ds" / "Train" / unicodedata.normalize("NFD", "café"), classes=("x",), n=1)  # twins
    with pytest.raises(ConfigError, match="are the same class name, written in two Unicode forms; merge them"):
        FolderData(root=str(tmp_path / "ds"), data_config=CFG, num_workers=0).setup()


def test_a_photo_of_more_than_89_megapixels_is_an_image(tmp_path, recwarn):
    """PIL's bomb limit (89 MP: a warning, 179 MP: an error) printed a raw library warning for a 108 MP photo and
    dropped larger ones as unreadable; these are the user's own photos (tlx allows 1 GP, refuses 2 GP)."""
    from tlx.data import FileSamples, ImageData

    Image.new("1", (12000, 9000)).save(tmp_path / "pano.png")  # 108 MP (1-bit: small and quick to write)
    data = ImageData(CFG, num_workers=0)
    assert len(data.check_images(FileSamples([tmp_path / "pano.png"], [0]))) == 1 and not data.bad_images
    assert not [w for w in recwarn if type(w.message).__name__ == "DecompressionBombWarning"]


def test_a_class_called_train_is_a_class(tmp_path):
    make_folder(tmp_path / "ds", classes=("bus", "car", "train"), n=5)  # a folder of images, not of class folders
    data = FolderData(root=str(tmp_path / "ds"), data_config=CFG, num_workers=0, val_fraction=0.4)
    data.setup()
    assert data.classes == ["bus", "car", "train"] and len(data.samples["train"]) + len(data.samples["val"]) == 15


def test_transforms_come_from_the_backbone():
    b = create_backbone("tf_efficientnet_lite0")
    data = DemoData(data_config=b.data_config, num_workers=0)
    text = repr(data.eval_transform)
    assert "224" in text and "bicubic" in text.lower() and "0.5" in text  # lite0: 224 px, bicubic, mean=std=0.5
    data.setup()
    assert data.counts() | {"classes": None} == {
        "train": 60,
        "val": 300,
        "test": 150,
        "classes": None,
        "num_classes": 3,
        "bad_images": 0,
        "skipped": {},
        "train_per_class": dict.fromkeys(data.classes, 20),
        "balance": "none",
    }


def test_samples_per_class_subset_is_saved(tmp_path):
    data = DemoData(data_config=CFG, samples_per_class=5, num_workers=0)
    data.setup()
    assert len(data.samples["train"]) == 15 and len(data.samples["val"]) == 300
    data.save_file_lists(tmp_path / "files.json")
    import json

    saved = json.loads((tmp_path / "files.json").read_text())
    assert saved["train"] == data.samples["train"].ids and saved["classes"] == data.classes


def test_missing_root_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="data root not found"):
        FolderData(root=str(tmp_path / "nope"), data_config=CFG).setup()


def test_fashion_mnist_from_idx_files():
    root = fashion_mnist_root()
    if root is None:
        pytest.skip("Fashion-MNIST idx files not available")
    data = FashionMNISTData(
        root=str(root),
        data_config=CFG,
        samples_per_class=3,
        val_per_class=5,
        test_per_class=4,
        classes=["Sandal", 9],
        num_workers=0,
    )
    data.setup()
    assert data.classes == ["Sandal", "Ankle boot"]
    assert {s: len(v) for s, v in data.samples.items()} == {"train": 6, "val": 10, "test": 8}
    assert not set(data.samples["train"].ids) & set(data.samples["val"].ids)
    assert data.dataset("train")[0][0].shape == (3, 32, 32)
