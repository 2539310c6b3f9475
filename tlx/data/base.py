"""What every data source shares: samples, seeded subsets and splits, transforms, loaders, the data module."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import timm.data
import torch
from PIL import Image, ImageFile
from torch.utils.data import DataLoader, Dataset, Sampler

from tlx.backbones import ConfigError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
SPLITS = ("train", "val", "test")


class Samples:
    """An ordered list of labelled images: ids (for file lists and cache keys), labels and a loader.

    Subclasses provide ``load(i)`` (an RGB PIL image) and ``fingerprint(i)`` (identifies the content).
    """

    def __init__(self, ids: list[str], labels: list[int]) -> None:
        self.ids, self.labels = list(ids), list(labels)

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, indices: list[int]) -> Samples:
        raise NotImplementedError

    def load(self, i: int, draft: int | None = None) -> Image.Image:
        raise NotImplementedError

    def fingerprint(self, i: int) -> str:
        raise NotImplementedError


class FileSamples(Samples):
    """Images stored as files; the fingerprint is a hash of the file's bytes."""

    def __init__(self, paths: list[Path], labels: list[int]) -> None:
        super().__init__([str(p) for p in paths], labels)
        self.paths = [Path(p) for p in paths]

    def subset(self, indices: list[int]) -> FileSamples:
        return FileSamples([self.paths[i] for i in indices], [self.labels[i] for i in indices])

    def load(self, i: int, draft: int | None = None) -> Image.Image:
        with Image.open(self.paths[i]) as img:
            if draft and img.format == "JPEG":
                img.draft("RGB", (draft, draft))  # decode JPEG at a reduced scale when the target is much smaller
            return img.convert("RGB")

    def fingerprint(self, i: int) -> str:
        return hashlib.blake2b(self.paths[i].read_bytes(), digest_size=12).hexdigest()


class ArraySamples(Samples):
    """Images held in a uint8 array (N, H, W) or (N, H, W, 3); the fingerprint hashes the array once."""

    def __init__(self, ids: list[str], labels: list[int], array: np.ndarray, rows: list[int], array_hash: str) -> None:
        super().__init__(ids, labels)
        self.array, self.rows, self.array_hash = array, list(rows), array_hash

    def subset(self, indices: list[int]) -> ArraySamples:
        return ArraySamples([self.ids[i] for i in indices], [self.labels[i] for i in indices], self.array,
                            [self.rows[i] for i in indices], self.array_hash)

    def load(self, i: int, draft: int | None = None) -> Image.Image:
        return Image.fromarray(self.array[self.rows[i]]).convert("RGB")

    def fingerprint(self, i: int) -> str:
        return f"{self.array_hash}:{self.rows[i]}"


def stratified_subset(labels: list[int], seed: int, per_class: int | None = None,
                      fraction: float | None = None) -> list[int]:
    """Indices of a seeded, stratified subset; nested: for one seed a larger subset contains every smaller one.

    Each class's indices are shuffled by a generator seeded with (seed, class) and the first ``per_class``
    (or ``ceil(fraction * count)``) are taken, so growing the size only appends.
    """
    if per_class is None and fraction is None:
        return list(range(len(labels)))
    if per_class is not None and int(per_class) < 1:
        raise ConfigError(f"data.samples_per_class must be >= 1, got {per_class}")
    if fraction is not None and not 0.0 < float(fraction) <= 1.0:
        raise ConfigError(f"data.fraction must be in (0, 1], got {fraction}")
    labels_arr = np.asarray(labels)
    chosen: list[int] = []
    for c in np.unique(labels_arr):
        idx = np.flatnonzero(labels_arr == c)
        perm = idx[np.random.default_rng([int(seed), int(c)]).permutation(len(idx))]
        k = int(per_class) if per_class is not None else math.ceil(float(fraction) * len(idx))
        if k > len(idx):
            log.warning("class %d has %d training images, fewer than the %d asked for: using all", c, len(idx), k)
        chosen.extend(perm[:k].tolist())
    return sorted(chosen)


def _split_indices(labels: list[int], fractions: tuple[float, float], seed: int) -> tuple[list[int], ...]:
    """Stratified (train, val, test) split of one folder with fixed seed, so val/test do not move across runs."""
    labels_arr = np.asarray(labels)
    out: tuple[list[int], list[int], list[int]] = ([], [], [])
    for c in np.unique(labels_arr):
        idx = np.flatnonzero(labels_arr == c)
        perm = idx[np.random.default_rng([int(seed), int(c), 7]).permutation(len(idx))].tolist()
        n_val = max(1, round(fractions[0] * len(idx))) if fractions[0] > 0 else 0
        n_test = max(1, round(fractions[1] * len(idx))) if fractions[1] > 0 else 0
        if n_val + n_test >= len(idx):
            raise ConfigError(f"class {c} has only {len(idx)} images: too few to split off val/test; "
                              "add images or lower data.val_fraction/data.test_fraction")
        out[1].extend(perm[:n_val])
        out[2].extend(perm[n_val:n_val + n_test])
        out[0].extend(perm[n_val + n_test:])
    return tuple(sorted(x) for x in out)


class _ImageDataset(Dataset):
    def __init__(self, samples: Samples, transform: Any, draft: int | None) -> None:
        self.samples, self.transform, self.draft = samples, transform, draft

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.samples.load(i, self.draft)), self.samples.labels[i]


class _TensorDataset(Dataset):
    """Cached activations (V*N, ...) with labels; view v of sample i sits at row v*N + i."""

    def __init__(self, features: torch.Tensor, labels: list[int], views: int = 1) -> None:
        self.features, self.labels, self.views = features, torch.as_tensor(labels * views), views

    def __len__(self) -> int:
        return len(self.labels) // self.views

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.features[i], self.labels[i]


class EpochSampler(Sampler[int]):
    """Shuffles with a generator seeded by (seed, epoch): the order of every epoch is fixed, so a resumed run sees
    the same batches as an uninterrupted one. With ``views > 1`` epoch e reads augmented view ``e % views``."""

    def __init__(self, n: int, seed: int, shuffle: bool = True, views: int = 1) -> None:
        self.n, self.seed, self.shuffle, self.views, self.epoch = n, seed, shuffle, views, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        offset = (self.epoch % self.views) * self.n
        if not self.shuffle:
            return iter(range(offset, offset + self.n))
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter((torch.randperm(self.n, generator=g) + offset).tolist())


class ImageData(pl.LightningDataModule):
    """Train/val/test splits of labelled images, with transforms from the backbone's pretraining data config.

    Subclasses implement ``_splits()``. Args common to all:
        data_config: the backbone's data config (input size, mean, std, interpolation, crop_pct).
        samples_per_class / fraction: a seeded, stratified, nested subset of the training split.
        subset_seed: seed of that subset (defaults to the run seed).
        batch_size: images per step.
        num_workers: loader processes; ``auto`` sizes them to the machine's cores.
        augment: random crop/flip for training (timm's training transform) instead of the eval transform.
        on_bad_image: ``skip`` (warn and count) or ``fail`` for unreadable image files.
    """

    name = "images"

    def __init__(
        self,
        data_config: dict[str, Any],
        samples_per_class: int | None = None,
        fraction: float | None = None,
        subset_seed: int = 0,
        batch_size: int = 32,
        num_workers: int | str = "auto",
        augment: bool = False,
        on_bad_image: str = "skip",
    ) -> None:
        super().__init__()
        if on_bad_image not in ("skip", "fail"):
            raise ConfigError(f"data.on_bad_image must be 'skip' or 'fail', got '{on_bad_image}'")
        if int(batch_size) < 1:
            raise ConfigError(f"data.batch_size must be >= 1, got {batch_size}")
        self.data_config = dict(data_config)
        self.samples_per_class, self.fraction, self.subset_seed = samples_per_class, fraction, subset_seed
        self.batch_size, self.augment, self.on_bad_image = int(batch_size), bool(augment), on_bad_image
        self.num_workers = default_workers() if num_workers == "auto" else int(num_workers)
        self.eval_transform = timm.data.create_transform(**self.data_config, is_training=False)
        self.train_transform = (timm.data.create_transform(**self.data_config, is_training=True) if self.augment
                                else self.eval_transform)
        self.draft = int(self.data_config["input_size"][-1] / self.data_config.get("crop_pct", 1.0)) + 1
        self.samples: dict[str, Samples] = {}
        self.classes: list[str] = []
        self.bad_images: list[str] = []
        self.features: dict[str, tuple[torch.Tensor, int]] = {}
        self.seed = 0

    def setup(self, stage: str | None = None) -> None:
        if self.samples:
            return
        splits, self.classes = self._splits()
        if "train" not in splits or len(splits["train"]) == 0:
            raise ConfigError("no training images found; check data.root")
        trained = set(splits["train"].labels)
        untrained = [c for i, c in enumerate(self.classes) if i not in trained]
        if untrained:
            raise ConfigError(f"class(es) {untrained} have no readable training images; add images or remove "
                              "those class folders")
        if "val" not in splits or len(splits["val"]) == 0:
            raise ConfigError("no validation images found; add images to data.root/val/<class>/, or put the class "
                              "folders directly under data.root with data.val_fraction > 0")
        splits["train"] = splits["train"].subset(
            stratified_subset(splits["train"].labels, self.subset_seed, self.samples_per_class, self.fraction))
        self.samples = {k: v for k, v in splits.items() if len(v)}
        for split, s in self.samples.items():
            log.info("%s: %d images, %d classes", split, len(s), len(set(s.labels)))

    def _splits(self) -> tuple[dict[str, Samples], list[str]]:
        raise NotImplementedError

    def counts(self) -> dict[str, Any]:
        """Images per split, classes and skipped files, for results.json."""
        return {**{split: len(s) for split, s in self.samples.items()}, "classes": self.classes,
                "num_classes": len(self.classes), "bad_images": len(self.bad_images)}

    def save_file_lists(self, path: Path) -> None:
        """Write the exact ids of every split (after subsetting) to ``path`` as JSON."""
        write_json_atomic(path, {split: s.ids for split, s in self.samples.items()} | {"classes": self.classes})

    def dataset(self, split: str, train_transform: bool = False) -> Dataset:
        """Images of ``split`` (decoded on the fly)."""
        transform = self.train_transform if train_transform else self.eval_transform
        return _ImageDataset(self.samples[split], transform, self.draft)

    def loader(self, dataset: Dataset, shuffle: bool = False, views: int = 1) -> DataLoader:
        """A DataLoader with this module's batch size and workers, shuffled by an epoch-seeded sampler."""
        workers = self.num_workers if isinstance(dataset, _ImageDataset) else 0
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=EpochSampler(len(dataset), self.seed, shuffle, views),
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=torch.cuda.is_available(),
            # Its own generator: starting an epoch's iterator must not draw from the global RNG, whose per-epoch
            # seed drives dropout, or a resumed run's first epoch would differ (Lightning starts it at another time).
            generator=torch.Generator().manual_seed(self.seed),
        )

    def _split_loader(self, split: str, train: bool) -> DataLoader:
        if split in self.features:
            tensor, views = self.features[split]
            return self.loader(_TensorDataset(tensor, self.samples[split].labels, views), shuffle=train, views=views)
        return self.loader(self.dataset(split, train_transform=train), shuffle=train)

    def train_dataloader(self) -> DataLoader:
        return self._split_loader("train", True)

    def val_dataloader(self) -> DataLoader:
        return self._split_loader("val", False)

    def test_dataloader(self) -> DataLoader:
        return self._split_loader("test" if "test" in self.samples else "val", False)

    def check_images(self, samples: FileSamples) -> FileSamples:
        """Decode every file once (JPEG at reduced scale); skip (and record) or fail on unreadable ones."""

        def ok(path: Path) -> str | None:
            try:
                with Image.open(path) as img:
                    img.draft("RGB", (64, 64)) if img.format == "JPEG" else None
                    img.load()
                return None
            except Exception as e:  # PIL raises many types (OSError, SyntaxError, ValueError, DecompressionBomb...)
                return f"{type(e).__name__}: {e}"

        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            errors = list(pool.map(ok, samples.paths))
        bad = [i for i, e in enumerate(errors) if e]
        if bad and self.on_bad_image == "fail":
            raise ConfigError(f"unreadable image {samples.paths[bad[0]]} ({errors[bad[0]]}); remove it, or set "
                              "data.on_bad_image=skip")
        for i in bad:
            log.warning("skipping unreadable image %s (%s)", samples.paths[i], errors[i])
        self.bad_images.extend(str(samples.paths[i]) for i in bad)
        return samples.subset([i for i, e in enumerate(errors) if not e]) if bad else samples


def default_workers() -> int:
    """Loader processes sized to the machine.

    With a GPU the cores are free for decoding: one process per core beyond the main one, at most 8. Without one,
    the model's own threads already use every core and a loader process competes with them (measured on 2 cores:
    full fine-tuning at 32 px ran 1.9x slower with 1 worker than with 0, 224 px extraction the same speed), so
    loaders are only started where cores are to spare: a quarter of them.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if torch.cuda.is_available():
        return max(0, min(8, cores - 1))
    return min(8, cores // 4)


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON to a temporary file beside ``path``, then rename: readers never see half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    os.replace(tmp, path)


ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error we report, never silently half-decoded
