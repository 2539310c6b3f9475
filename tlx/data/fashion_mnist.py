"""Fashion-MNIST from its original idx files."""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from tlx.data.base import ArraySamples, ImageData, Samples, stratified_subset
from tlx.errors import ConfigError

FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]


class FashionMNISTData(ImageData):
    """Fashion-MNIST from its original idx files (gzipped or not).

    Train pool = the 60,000 training images minus a fixed, stratified validation set of ``val_per_class`` images
    per class; test = the 10,000 t10k images (or ``test_per_class`` of them per class). ``classes`` restricts to
    some classes (names or label numbers). With ``download: true`` and a network, torchvision fetches the files.
    """

    name = "fashion_mnist"

    def __init__(
        self,
        root: str,
        val_per_class: int = 100,
        test_per_class: int | None = None,
        classes: list[Any] | None = None,
        download: bool = False,
        split_seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.root, self.download = Path(str(root)).expanduser(), download
        self.val_per_class, self.test_per_class, self.split_seed = int(val_per_class), test_per_class, split_seed
        self.only = classes

    def _splits(self) -> tuple[dict[str, Samples], list[str]]:
        root = self._find_root()
        keep = self._class_ids()
        out = {}
        for split, prefix in (("train", "train"), ("test", "t10k")):
            images = _read_idx(root, f"{prefix}-images-idx3-ubyte")
            labels = _read_idx(root, f"{prefix}-labels-idx1-ubyte")
            array_hash = hashlib.blake2b(images.tobytes(), digest_size=8).hexdigest()
            rows = [i for i in range(len(labels)) if int(labels[i]) in keep]
            lab = [keep.index(int(labels[i])) for i in rows]
            out[split] = ArraySamples([f"{prefix}:{i}" for i in rows], lab, images, rows, array_hash)
        val = stratified_subset(out["train"].labels, self.split_seed + 1_000_003, self.val_per_class)
        val_set = set(val)
        pool = [i for i in range(len(out["train"])) if i not in val_set]
        out["train"], out["val"] = out["train"].subset(pool), out["train"].subset(val)
        if self.test_per_class:
            keep_test = stratified_subset(out["test"].labels, self.split_seed, self.test_per_class)
            out["test"] = out["test"].subset(keep_test)
        return out, [FASHION_MNIST_CLASSES[c] for c in keep]

    def _class_ids(self) -> list[int]:
        if not self.only:
            return list(range(10))
        ids = []
        for c in self.only:
            if isinstance(c, int) and 0 <= c < 10:
                ids.append(c)
            elif c in FASHION_MNIST_CLASSES:
                ids.append(FASHION_MNIST_CLASSES.index(c))
            else:
                raise ConfigError(f"unknown Fashion-MNIST class {c!r}; use 0-9 or one of {FASHION_MNIST_CLASSES}")
        return ids

    def _find_root(self) -> Path:
        for cand in (self.root, self.root / "FashionMNIST" / "raw"):
            if any((cand / f"train-images-idx3-ubyte{s}").is_file() for s in ("", ".gz")):
                return cand
        if self.download:
            from torchvision.datasets import FashionMNIST

            FashionMNIST(str(self.root), train=True, download=True)
            FashionMNIST(str(self.root), train=False, download=True)
            return self.root / "FashionMNIST" / "raw"
        raise ConfigError(
            f"Fashion-MNIST idx files not found under {self.root}; set data.root to the folder with "
            "train-images-idx3-ubyte.gz (Debian: apt install dataset-fashion-mnist puts them in "
            "/usr/share/datasets/fashion-mnist), or data.download=true when online"
        )


def _read_idx(root: Path, name: str) -> np.ndarray:
    path = root / name if (root / name).is_file() else root / f"{name}.gz"
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)
