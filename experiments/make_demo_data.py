"""Rebuild tlx/demo: 3 Fashion-MNIST classes as PNG folders (20 train, 100 val, 50 test images per class).

Usage: python experiments/make_demo_data.py [FASHION_MNIST_ROOT]
"""

import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from tlx.data.fashion_mnist import FASHION_MNIST_CLASSES, _read_idx

CLASSES = ["Sandal", "Sneaker", "Ankle boot"]
SIZES = {"train": 20, "val": 100, "test": 50}


def main(root: Path, out: Path) -> None:
    rng = np.random.default_rng(0)
    train_x, train_y = _read_idx(root, "train-images-idx3-ubyte"), _read_idx(root, "train-labels-idx1-ubyte")
    test_x, test_y = _read_idx(root, "t10k-images-idx3-ubyte"), _read_idx(root, "t10k-labels-idx1-ubyte")
    for split in SIZES:
        shutil.rmtree(out / split, ignore_errors=True)
    for name in CLASSES:
        label = FASHION_MNIST_CLASSES.index(name)
        pool = rng.permutation(np.flatnonzero(train_y == label))
        picks = {
            "train": (train_x, pool[: SIZES["train"]]),
            "val": (train_x, pool[SIZES["train"] : SIZES["train"] + SIZES["val"]]),
            "test": (test_x, rng.permutation(np.flatnonzero(test_y == label))[: SIZES["test"]]),
        }
        for split, (x, rows) in picks.items():
            folder = out / split / name.lower().replace(" ", "_")
            folder.mkdir(parents=True, exist_ok=True)
            for row in rows:
                Image.fromarray(x[row]).save(folder / f"{split}_{row:05d}.png", optimize=True)


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/fashion-mnist"), Path("tlx/demo"))
