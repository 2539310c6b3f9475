"""Image folders: one subfolder per class, optionally under train/ val/ test/; and the bundled demo."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tlx.data.base import (
    IMAGE_SUFFIXES,
    SPLITS,
    FileSamples,
    ImageData,
    Samples,
    check_split_fractions,
    fixed_splits,
)
from tlx.errors import ConfigError
from tlx.sources import image_folder

DEMO_ROOT = Path(__file__).resolve().parents[1] / "demo"


class FolderData(ImageData):
    """An image folder with one subfolder per class.

    Either ``root/train``, ``root/val`` (and optionally ``root/test``) splits, or a single folder of class
    subfolders that is split with a fixed, stratified split (``val_fraction``, ``test_fraction``, ``split_seed``).
    Clutter (hidden and OS metadata files and folders, Jupyter checkpoint copies, links to files already found) is
    never a class or an image; ``tlx.data.base.FileScan`` says what it skips and why.
    """

    name = "folder"

    def __init__(
        self, root: str, val_fraction: float = 0.2, test_fraction: float = 0.0, split_seed: int = 0, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        check_split_fractions(val_fraction, test_fraction)
        self.root = self.location = Path(str(root)).expanduser()
        self.val_fraction, self.test_fraction, self.split_seed = float(val_fraction), float(test_fraction), split_seed

    def _splits(self) -> tuple[dict[str, Samples], list[str]]:
        image_folder(self.root)
        if (self.root / "train").is_dir():
            folders = {s: self._class_dirs(self.root / s) for s in SPLITS if (self.root / s).is_dir()}
            classes = sorted(folders["train"])
            splits = {s: self._scan(self.root / s, dirs, classes, s) for s, dirs in folders.items()}
        else:
            dirs = self._class_dirs(self.root)
            classes = sorted(dirs)
            splits = {"all": self._scan(self.root, dirs, classes, "all")}
        splits = fixed_splits(splits, (self.val_fraction, self.test_fraction), self.split_seed, classes, self.root)
        return self.check_splits(splits, classes), classes

    def _class_dirs(self, folder: Path) -> dict[str, Path]:
        dirs = {d.name: d for d in self.scan.subfolders(folder)}
        if not dirs:
            raise ConfigError(f"no class folders in {folder}; put one subfolder of images per class there")
        return dirs

    def _scan(self, folder: Path, dirs: dict[str, Path], classes: list[str], split: str) -> FileSamples:
        extra = sorted(set(dirs) - set(classes))
        if extra:
            raise ConfigError(
                f"class folder(s) {extra} in {folder} are not in train/ ({classes}); add them to train/ or remove them"
            )
        paths, labels = [], []
        for label, name in enumerate(classes):
            images = self.scan.images(dirs[name]) if name in dirs else []
            paths += images
            labels += [label] * len(images)
        if split in ("train", "all"):
            if not paths:
                raise ConfigError(
                    f"no images in any class folder of {folder} (looked for "
                    f"{', '.join(sorted(IMAGE_SUFFIXES))}); point data.root at your image folders"
                )
            present = set(labels)
            empty = [str(folder / name) for i, name in enumerate(classes) if i not in present]
            if empty:
                raise ConfigError(
                    f"class folder {empty[0]} has no images (.jpg/.png/...); add images or remove the folder"
                )
        return FileSamples(paths, labels)


class DemoData(FolderData):
    """The small demo dataset shipped inside tlx (3 Fashion-MNIST classes; MIT, see tlx/demo/COPYRIGHT)."""

    name = "demo"

    def __init__(self, root: str | None = None, **kwargs: Any) -> None:
        super().__init__(root=root or DEMO_ROOT, **kwargs)
