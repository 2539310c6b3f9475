"""Image folders: one subfolder per class, optionally under train/ val/ test/; and the bundled demo."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from tlx.backbones import ConfigError
from tlx.data.base import IMAGE_SUFFIXES, SPLITS, FileSamples, ImageData, Samples, _split_indices

log = logging.getLogger(__name__)

DEMO_ROOT = Path(__file__).resolve().parents[1] / "demo"


class FolderData(ImageData):
    """An image folder with one subfolder per class.

    Either ``root/train``, ``root/val`` (and optionally ``root/test``) splits, or a single folder of class
    subfolders that is split with a fixed, stratified split (``val_fraction``, ``test_fraction``, ``split_seed``).
    """

    name = "folder"

    def __init__(self, root: str, val_fraction: float = 0.2, test_fraction: float = 0.0, split_seed: int = 0,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.root = Path(str(root)).expanduser()
        self.val_fraction, self.test_fraction, self.split_seed = float(val_fraction), float(test_fraction), split_seed

    def _splits(self) -> tuple[dict[str, Samples], list[str]]:
        if not self.root.is_dir():
            raise ConfigError(f"data root not found: {self.root}; set data.root=<folder with one subfolder per class>")
        if (self.root / "train").is_dir():
            classes = _class_folders(self.root / "train")
            splits = {s: self._scan(self.root / s, classes, s) for s in SPLITS if (self.root / s).is_dir()}
            if "val" not in splits:  # train/ (+ test/) without val/: a fixed, stratified val split out of train/
                if self.val_fraction <= 0:
                    raise ConfigError(f"{self.root} has train/ but no val/ and data.val_fraction=0; add a val/ "
                                      "folder or set data.val_fraction to a value in (0, 1)")
                train, val, _ = _split_indices(splits["train"].labels, (self.val_fraction, 0.0), self.split_seed)
                splits["train"], splits["val"] = splits["train"].subset(train), splits["train"].subset(val)
        else:
            classes = _class_folders(self.root)
            everything = self._scan(self.root, classes, "all")
            train, val, test = _split_indices(everything.labels, (self.val_fraction, self.test_fraction),
                                              self.split_seed)
            splits = {"train": everything.subset(train), "val": everything.subset(val), "test": everything.subset(test)}
        return {k: self.check_images(v) for k, v in splits.items()}, classes

    def _scan(self, folder: Path, classes: list[str], split: str) -> FileSamples:
        found = _class_folders(folder) if split != "all" else classes
        extra = sorted(set(found) - set(classes))
        if extra:
            raise ConfigError(f"class folder(s) {extra} in {folder} are not in train/ ({classes}); add them to "
                              "train/ or remove them")
        paths, labels, ignored = [], [], []
        for label, name in enumerate(classes):
            d = folder / name
            files = sorted(p for p in d.rglob("*") if p.is_file() and not p.name.startswith(".")) if d.is_dir() else []
            images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
            ignored += [p for p in files if p.suffix.lower() not in IMAGE_SUFFIXES]
            paths += images
            labels += [label] * len(images)
        if split in ("train", "all"):
            if not paths:
                raise ConfigError(f"no images in any class folder of {folder} (looked for "
                                  f"{', '.join(sorted(IMAGE_SUFFIXES))}); point data.root at your image folders")
            present = set(labels)
            empty = [str(folder / name) for i, name in enumerate(classes) if i not in present]
            if empty:
                raise ConfigError(f"class folder {empty[0]} has no images (.jpg/.png/...); add images or remove the "
                                  "folder")
        if ignored:
            log.warning("ignoring %d non-image file(s) in %s (e.g. %s)", len(ignored), folder, ignored[0])
            self.bad_images.extend(str(p) for p in ignored)
        return FileSamples(paths, labels)


class DemoData(FolderData):
    """The small demo dataset shipped inside tlx (3 Fashion-MNIST classes; MIT, see tlx/demo/COPYRIGHT)."""

    name = "demo"

    def __init__(self, root: str | None = None, **kwargs: Any) -> None:
        super().__init__(root=root or DEMO_ROOT, **kwargs)


def _class_folders(folder: Path) -> list[str]:
    classes = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise ConfigError(f"no class folders in {folder}; put one subfolder of images per class there")
    return classes
