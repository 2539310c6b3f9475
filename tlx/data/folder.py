"""Image folders: one subfolder per class, optionally under train/ val/ test/; and the bundled demo."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tlx.data.base import FileSamples, ImageData, Samples, check_split_fractions, fixed_splits
from tlx.sources import folder_images

DEMO_ROOT = Path(__file__).resolve().parents[1] / "demo"


class FolderData(ImageData):
    """An image folder with one subfolder per class.

    Either ``root/train``, ``root/val`` (and optionally ``root/test``) splits, or a single folder of class
    subfolders that is split with a fixed, stratified split (``val_fraction``, ``test_fraction``, ``split_seed``).
    Clutter (hidden and OS metadata files and folders, Jupyter checkpoint copies, links to files already found) is
    never a class or an image; ``tlx.sources.FileScan`` says what it skips and why.
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
        found, classes = folder_images(self.root, self.scan)
        splits = {split: FileSamples(paths, labels) for split, (paths, labels) in found.items()}
        splits = fixed_splits(splits, (self.val_fraction, self.test_fraction), self.split_seed, classes, self.root)
        return self.check_splits(splits, classes), classes


class DemoData(FolderData):
    """The small demo dataset shipped inside tlx (3 Fashion-MNIST classes; MIT, see tlx/demo/COPYRIGHT)."""

    name = "demo"

    def __init__(self, root: str | None = None, **kwargs: Any) -> None:
        super().__init__(root=root or DEMO_ROOT, **kwargs)
