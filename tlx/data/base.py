"""What every data source shares: samples, seeded subsets and splits, transforms, loaders, the data module."""

from __future__ import annotations

import hashlib
import logging
import math
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import timm.data
import torch
from PIL import Image, ImageFile, ImageOps
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from tlx.errors import ConfigError, plural
from tlx.jsonfile import write_json_atomic
from tlx.sources import FileScan

log = logging.getLogger(__name__)

FEW_VALIDATION_IMAGES = 30  # fewer: one image is more than 3.3 points of val/acc, and a run says so
# PIL refuses images over 2x this many pixels as decompression bombs, and warns over it: its 89 MP let a 108 MP phone
# or panorama photo through with a raw library warning and dropped a 192 MP one as unreadable. These are the user's
# own photos, and JPEGs decode at reduced scale (FileSamples.load): warn from 1 GP, refuse from 2 GP.
Image.MAX_IMAGE_PIXELS = 1_000_000_000


class Samples:
    """An ordered list of labelled images: ids (for file lists and cache keys), labels and a loader.

    Subclasses provide ``load(i)`` (an RGB PIL image) and ``fingerprint(i)`` (identifies the content).
    ``decoder`` names how bytes become pixels; feature cache keys include it, so entries decoded another way miss.
    """

    decoder = "rgb"

    def __init__(self, ids: list[str], labels: list[int]) -> None:
        self.ids, self.labels = list(ids), list(labels)
        self._fingerprints: list[str] | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, indices: list[int]) -> Samples:
        raise NotImplementedError

    def load(self, i: int, draft: int | None = None) -> Image.Image:
        raise NotImplementedError

    def fingerprint(self, i: int) -> str:
        raise NotImplementedError

    def fingerprints(self) -> list[str]:
        """Every image's fingerprint, in order; computed once (it reads every file), then remembered."""
        if self._fingerprints is None:
            self._fingerprints = [self.fingerprint(i) for i in range(len(self))]
        return self._fingerprints


class FileSamples(Samples):
    """Images stored as files; the fingerprint is a hash of the file's bytes.

    Every image is turned upright by its EXIF orientation before any transform (phone photos store the pixels
    sideways and say so in EXIF), here, in the one place training, feature extraction and prediction decode files;
    then made 8-bit RGB by :func:`to_rgb` (16-bit and float images scaled, not clipped).
    """

    decoder = "exif_transpose+rgb+deep_scaled"  # in the cache key: features decoded otherwise must miss

    def __init__(self, paths: list[Path], labels: list[int]) -> None:
        super().__init__([str(p) for p in paths], labels)
        self.paths = [Path(p) for p in paths]

    def subset(self, indices: list[int]) -> FileSamples:
        return FileSamples([self.paths[i] for i in indices], [self.labels[i] for i in indices])

    def load(self, i: int, draft: int | None = None) -> Image.Image:
        with Image.open(self.paths[i]) as img:
            if draft and img.format == "JPEG":
                # Decode JPEG at a reduced scale when the target is much smaller; the requested box is square, so
                # the scale is the same whichever way the photo turns afterwards.
                img.draft("RGB", (draft, draft))
            return to_rgb(ImageOps.exif_transpose(img))

    def fingerprint(self, i: int) -> str:
        return hashlib.blake2b(self.paths[i].read_bytes(), digest_size=12).hexdigest()


def draft_size(data_config: dict[str, Any]) -> int:
    """The square box a JPEG is decoded for (``Image.draft``: DCT scaling by 1/2, 1/4 or 1/8 as long as the image
    stays at least this large): one pixel above the size the eval transform resizes the shorter side to."""
    return int(data_config["input_size"][-1] / data_config.get("crop_pct", 1.0)) + 1


# Greyscale modes deeper than 8 bits: 16-bit (scans, microscopy, depth maps), 32-bit integer, 32-bit float.
_DEEP_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I", "F"}


def to_rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB of any image PIL opens. ``convert("RGB")`` clips deeper greyscale to 255 (a 16-bit PNG comes out
    white) and truncates floats (an image in [0, 1] comes out black), so those are scaled into 0-255 first: 16-bit
    by the type's range (/257, the same for every image of a set); 32-bit integer as 8-bit data when it holds nothing
    above 255, else as 16-bit, else by its own maximum; float from [0, 1], or from its own minimum-maximum when it
    holds values outside."""
    if img.mode not in _DEEP_MODES:
        return img.convert("RGB")
    a = np.asarray(img, dtype=np.float64)
    if img.mode == "F":
        lo, hi = (0.0, 1.0) if a.size and a.min() >= 0 and a.max() <= 1 else (float(a.min()), float(a.max()))
    elif img.mode.startswith("I;16"):
        lo, hi = 0.0, 65535.0
    else:
        top = float(a.max()) if a.size else 0.0
        lo, hi = 0.0, 255.0 if top <= 255 else 65535.0 if top <= 65535 else top
    scaled = np.rint((a - lo) * (255.0 / max(hi - lo, 1e-12)))
    return Image.fromarray(np.clip(scaled, 0, 255).astype(np.uint8), "L").convert("RGB")


class ArraySamples(Samples):
    """Images held in a uint8 array (N, H, W) or (N, H, W, 3); the fingerprint hashes the array once."""

    def __init__(self, ids: list[str], labels: list[int], array: np.ndarray, rows: list[int], array_hash: str) -> None:
        super().__init__(ids, labels)
        self.array, self.rows, self.array_hash = array, list(rows), array_hash

    def subset(self, indices: list[int]) -> ArraySamples:
        return ArraySamples(
            [self.ids[i] for i in indices],
            [self.labels[i] for i in indices],
            self.array,
            [self.rows[i] for i in indices],
            self.array_hash,
        )

    def load(self, i: int, draft: int | None = None) -> Image.Image:
        return Image.fromarray(self.array[self.rows[i]]).convert("RGB")

    def fingerprint(self, i: int) -> str:
        return f"{self.array_hash}:{self.rows[i]}"


def stratified_subset(
    labels: list[int],
    seed: int,
    per_class: int | None = None,
    fraction: float | None = None,
    names: list[str] | None = None,
) -> list[int]:
    """Indices of a seeded, stratified subset; nested: for one seed a larger subset contains every smaller one.

    Each class's indices are shuffled by a generator seeded with (seed, class) and the first ``per_class``
    (or ``ceil(fraction * count)``) are taken, so growing the size only appends. ``names`` (class names) are used
    in messages.
    """
    if per_class is None and fraction is None:
        return list(range(len(labels)))
    _check_subset(per_class, fraction)
    labels_arr = np.asarray(labels)
    chosen: list[int] = []
    for c in np.unique(labels_arr):
        idx = np.flatnonzero(labels_arr == c)
        perm = idx[np.random.default_rng([int(seed), int(c)]).permutation(len(idx))]
        k = int(per_class) if per_class is not None else math.ceil(float(fraction) * len(idx))
        if k > len(idx):
            log.warning(
                "class '%s' has %d training images, fewer than the %d asked for: using all",
                names[c] if names else c,
                len(idx),
                k,
            )
        chosen.extend(perm[:k].tolist())
    return sorted(chosen)


def _check_subset(per_class: int | None, fraction: float | None) -> None:
    if per_class is not None and (not _is_number(per_class, int) or int(per_class) < 1):
        raise ConfigError(f"data.samples_per_class must be a whole number >= 1 (or null: all), got {per_class}")
    if fraction is not None and (not _is_number(fraction, float) or not 0.0 < float(fraction) <= 1.0):
        raise ConfigError(f"data.fraction must be a number in (0, 1] (or null: all), got {fraction}")


def _is_number(value: Any, kind: type) -> bool:
    """Whether ``value`` is a number of ``kind`` as the command line gives one (``4``; ``0.5`` or ``1``)."""
    return not isinstance(value, bool) and isinstance(value, (int,) if kind is int else (int, float))


def check_split_fractions(val_fraction: float, test_fraction: float) -> None:
    """Refuse split fractions that leave no training images, before anything is read."""
    for key, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= float(value) < 1.0:
            raise ConfigError(f"data.{key} must be in [0, 1) (a share of each class's images), got {value}")
    if float(val_fraction) + float(test_fraction) >= 1.0:
        raise ConfigError(
            f"data.val_fraction + data.test_fraction must be < 1 to leave training images, got "
            f"{val_fraction} + {test_fraction}"
        )


def fixed_splits(
    splits: dict[str, Samples], fractions: tuple[float, float], seed: int, classes: list[str], where: str
) -> dict[str, Samples]:
    """Complete ``splits`` with the fixed, stratified split of a source without its own.

    ``{"all": s}`` becomes train/val/test by ``fractions`` (val, test); train (+ test) without val gets val taken out
    of train by the val fraction; splits with a val are returned as they are.
    """
    if "all" in splits:
        train, val, test = _split_indices(splits["all"].labels, fractions, seed, classes)
        everything = splits["all"]
        return {"train": everything.subset(train), "val": everything.subset(val), "test": everything.subset(test)}
    if "val" not in splits and "train" in splits:
        if fractions[0] <= 0:
            raise ConfigError(
                f"{where} has train but no val images and data.val_fraction=0; add val images or set "
                "data.val_fraction to a value in (0, 1)"
            )
        train, val, _ = _split_indices(splits["train"].labels, (fractions[0], 0.0), seed, classes)
        return {**splits, "train": splits["train"].subset(train), "val": splits["train"].subset(val)}
    return splits


def _split_indices(
    labels: list[int], fractions: tuple[float, float], seed: int, names: list[str]
) -> tuple[list[int], ...]:
    """Stratified (train, val, test) split of one folder with fixed seed, so val/test do not move across runs."""
    labels_arr = np.asarray(labels)
    out: tuple[list[int], list[int], list[int]] = ([], [], [])
    for c in np.unique(labels_arr):
        idx = np.flatnonzero(labels_arr == c)
        perm = idx[np.random.default_rng([int(seed), int(c), 7]).permutation(len(idx))].tolist()
        n_val = max(1, round(fractions[0] * len(idx))) if fractions[0] > 0 else 0
        n_test = max(1, round(fractions[1] * len(idx))) if fractions[1] > 0 else 0
        if n_val + n_test >= len(idx):
            # (each split that is asked for takes at least one image of every class, whatever its fraction)
            splits = " + ".join(f"1 {s}" for s, n in (("val", n_val), ("test", n_test)) if n)
            fix = "" if n_val + n_test == (n_val > 0) + (n_test > 0) else " or lower data.val_fraction/test_fraction,"
            raise ConfigError(
                f"class '{names[c]}' has only {plural(len(idx), 'image')}: too few to keep one for training after "
                f"{n_val} val + {n_test} test; add images to it,{fix} or remove its folder (every class needs at least "
                f"{splits} + 1 train)"
            )
        out[1].extend(perm[:n_val])
        out[2].extend(perm[n_val : n_val + n_test])
        out[0].extend(perm[n_val + n_test :])
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
    the same batches as an uninterrupted one. With ``views > 1`` epoch e reads augmented view ``e % views``.
    With ``weights`` (one per sample) an epoch is ``n`` draws with replacement in proportion to them instead."""

    def __init__(
        self, n: int, seed: int, shuffle: bool = True, views: int = 1, weights: torch.Tensor | None = None
    ) -> None:
        self.n, self.seed, self.shuffle, self.views, self.epoch = n, seed, shuffle, views, 0
        self.weights = weights

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        offset = (self.epoch % self.views) * self.n
        if not self.shuffle:
            return iter(range(offset, offset + self.n))
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        if self.weights is not None:
            return iter((torch.multinomial(self.weights, self.n, replacement=True, generator=g) + offset).tolist())
        return iter((torch.randperm(self.n, generator=g) + offset).tolist())


class EvalSampler(DistributedSampler):
    """Every sample once, in order (epoch e reads view ``e % views``); across the processes of a multi-device run
    each takes every world-size-th one. A DistributedSampler only so that Lightning keeps it: its own repeats
    samples until every process has as many, and the val and test metrics then counted some images twice (9 val
    images on 2 devices: a confusion matrix of 10, val/acc 0.40 instead of 0.33). The processes are looked up when
    iterated, since the loaders are made before Lightning starts them."""

    def __init__(self, n: int, views: int = 1) -> None:  # (DistributedSampler's own __init__ needs the processes)
        self.n, self.views, self.epoch = n, views, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _mine(self) -> range:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return range(torch.distributed.get_rank(), self.n, torch.distributed.get_world_size())
        return range(self.n)

    def __len__(self) -> int:
        return len(self._mine())

    def __iter__(self):
        offset = (self.epoch % self.views) * self.n
        return iter([offset + i for i in self._mine()])


class ImageData:
    """Train/val/test splits of labelled images, with transforms from the backbone's pretraining data config.

    Its loaders are what Lightning trains on (``tlx.run`` hands them to the trainer); it is no LightningDataModule, so
    that ``tlx.predict``, which reads images through it, does not import Lightning (1.3 s of a 5.4 s call, measured).

    Subclasses implement ``_splits()``. Args common to all:
        data_config: the backbone's data config (input size, mean, std, interpolation, crop_pct).
        samples_per_class / fraction: a seeded, stratified, nested subset of the training split.
        subset_seed: seed of that subset (defaults to the run seed).
        batch_size: images per step.
        num_workers: loader processes; ``auto`` sizes them to the machine's cores.
        augment: random crop/flip for training (timm's training transform) instead of the eval transform.
        on_bad_image: ``skip`` (warn and count) or ``fail`` for unreadable image files.
        balance: unbalanced classes: ``none``, ``weighted_loss`` (cross-entropy weighted inversely to each class's
            training images, see ``class_weights``) or ``sampler`` (each epoch draws classes equally often).
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
        balance: str = "none",
    ) -> None:
        if on_bad_image not in ("skip", "fail"):
            raise ConfigError(f"data.on_bad_image must be 'skip' or 'fail', got '{on_bad_image}'")
        if int(batch_size) < 1:
            raise ConfigError(f"data.batch_size must be >= 1, got {batch_size}")
        if balance not in ("none", "weighted_loss", "sampler"):
            raise ConfigError(f"data.balance must be none, weighted_loss or sampler, got '{balance}'")
        _check_subset(samples_per_class, fraction)
        self.balance = balance
        self.data_config = dict(data_config)
        self.samples_per_class, self.fraction, self.subset_seed = samples_per_class, fraction, subset_seed
        self.batch_size, self.augment, self.on_bad_image = int(batch_size), bool(augment), on_bad_image
        self.num_workers = default_workers() if num_workers == "auto" else int(num_workers)
        self.eval_transform = timm.data.create_transform(**self.data_config, is_training=False)
        self.train_transform = (
            timm.data.create_transform(**self.data_config, is_training=True) if self.augment else self.eval_transform
        )
        self.draft = draft_size(self.data_config)
        self.samples: dict[str, Samples] = {}
        self.classes: list[str] = []
        self.bad_images: list[str] = []
        self.scan = FileScan()  # what file sources left out, and why
        self.location: Path | str = self.name  # where the images come from, for messages
        self.features: dict[str, tuple[torch.Tensor, int]] = {}
        self.seed = 0

    def setup(self, stage: str | None = None) -> None:
        if self.samples:
            return
        splits, self.classes = self._splits()
        summary = self.scan.summary(self.location)
        if summary:
            log.warning(summary)
        if "train" not in splits or len(splits["train"]) == 0:
            raise ConfigError("no training images found; check data.root")
        trained = set(splits["train"].labels)
        untrained = [c for i, c in enumerate(self.classes) if i not in trained]
        if untrained:
            raise ConfigError(
                f"class(es) {untrained} have no readable training images; add training images for them or remove them"
            )
        if "val" not in splits or len(splits["val"]) == 0:
            raise ConfigError(
                "no validation images found; add images to data.root/val/<class>/, or put the class "
                "folders directly under data.root with data.val_fraction > 0"
            )
        splits["train"] = splits["train"].subset(
            stratified_subset(
                splits["train"].labels, self.subset_seed, self.samples_per_class, self.fraction, self.classes
            )
        )
        self.samples = {k: v for k, v in splits.items() if len(v)}
        for split, s in self.samples.items():
            log.info("%s: %d images, %d classes", split, len(s), len(set(s.labels)))
        per_class = self.train_per_class()
        most, fewest = (
            max(range(len(per_class)), key=per_class.__getitem__),
            min(range(len(per_class)), key=per_class.__getitem__),
        )
        if per_class[most] >= 10 * per_class[fewest]:
            log.warning(
                "unbalanced classes: '%s' has %d training images, '%s' only %d (%.0fx)%s",
                self.classes[most],
                per_class[most],
                self.classes[fewest],
                per_class[fewest],
                per_class[most] / per_class[fewest],
                "; consider data.balance=weighted_loss or data.balance=sampler" if self.balance == "none" else "",
            )
        n_val = len(self.samples["val"])
        if n_val < FEW_VALIDATION_IMAGES:
            log.warning(
                "validation has %s: one image is %.1f points of val/acc, and the best epoch, the linear probe's "
                "setting and auto's choice are all judged on them; more validation images make those choices steadier "
                "(a larger data.val_fraction, where the split is tlx's)",
                plural(n_val, "image"),
                100 / n_val,
            )
        unseen = [name for c, name in enumerate(self.classes) if c not in set(self.samples["val"].labels)]
        if unseen:  # (its val accuracy was reported as 0.0, without a word)
            log.warning(
                "no validation images of class(es) %s: %s val accuracy is not measured, and val/acc, val/bal_acc and "
                "the choices made on them cannot tell how the model does there; give every class validation images "
                "(in val/, or readable images for tlx's split)",
                ", ".join(repr(n) for n in unseen),
                "its" if len(unseen) == 1 else "their",
            )

    def train_per_class(self) -> list[int]:
        """Training images per class (after subsetting)."""
        return np.bincount(self.samples["train"].labels, minlength=len(self.classes)).tolist()

    def class_weights(self) -> torch.Tensor | None:
        """Per-class loss weights for ``balance=weighted_loss``: ``N / (K * n_c)``, so every class weighs the same in
        total (1 for balanced data); None otherwise."""
        if self.balance != "weighted_loss":
            return None
        per_class = torch.as_tensor(self.train_per_class(), dtype=torch.float32)
        return per_class.sum() / (len(per_class) * per_class)

    def sample_weights(self, labels: torch.Tensor) -> torch.Tensor | None:
        """For ``balance=sampler``: one weight per training sample, 1 / its class's count, so that draws in
        proportion to them take every class equally often; None otherwise."""
        if self.balance != "sampler":
            return None
        labels = torch.as_tensor(labels)
        return 1.0 / torch.bincount(labels, minlength=len(self.classes)).double()[labels]

    def _splits(self) -> tuple[dict[str, Samples], list[str]]:
        raise NotImplementedError

    def counts(self) -> dict[str, Any]:
        """Images per split, classes and skipped files, for results.json."""
        return {
            **{split: len(s) for split, s in self.samples.items()},
            "classes": self.classes,
            "num_classes": len(self.classes),
            "bad_images": len(self.bad_images),
            "skipped": dict(sorted(self.scan.skipped.items())),
            "train_per_class": dict(zip(self.classes, self.train_per_class(), strict=True)),
            "balance": self.balance,
        }

    def save_file_lists(self, path: Path) -> None:
        """Write the exact ids of every split (after subsetting) to ``path`` as JSON."""
        found = getattr(self, "root", None) or getattr(self, "path", None)  # (the demo's and a CSV's, too)
        where = {"data_location": str(Path(found).absolute())} if isinstance(found, Path) else {}
        write_json_atomic(path, {split: s.ids for split, s in self.samples.items()} | {"classes": self.classes} | where)

    def dataset(self, split: str, train_transform: bool = False) -> Dataset:
        """Images of ``split`` (decoded on the fly)."""
        transform = self.train_transform if train_transform else self.eval_transform
        return _ImageDataset(self.samples[split], transform, self.draft)

    def loader(
        self,
        dataset: Dataset,
        shuffle: bool = False,
        views: int = 1,
        weights: torch.Tensor | None = None,
        seed: int | None = None,
        shard: bool = False,
    ) -> DataLoader:
        """A DataLoader with this module's batch size and workers, shuffled (or drawn by ``weights``, one per sample)
        by an epoch-seeded sampler. ``seed`` (default: the run's) seeds its generator, from which the loader workers'
        random augmentations are seeded."""
        workers = self.num_workers if isinstance(dataset, _ImageDataset) else 0
        if shard and not shuffle and weights is None:  # an eval loader for Lightning's loops (see EvalSampler)
            sampler: Sampler[int] = EvalSampler(len(dataset), views)
        else:
            sampler = EpochSampler(len(dataset), self.seed, shuffle, views, weights)
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=torch.cuda.is_available(),
            # Its own generator: starting an epoch's iterator must not draw from the global RNG, whose per-epoch
            # seed drives dropout, or a resumed run's first epoch would differ (Lightning starts it at another time).
            generator=torch.Generator().manual_seed(self.seed if seed is None else seed),
        )

    def _split_loader(self, split: str, train: bool, shard: bool = False) -> DataLoader:
        weights = self.sample_weights(self.samples[split].labels) if train else None
        if split in self.features:
            tensor, views = self.features[split]
            dataset = _TensorDataset(tensor, self.samples[split].labels, views)
            return self.loader(dataset, shuffle=train, views=views, weights=weights, shard=shard)
        return self.loader(self.dataset(split, train_transform=train), shuffle=train, weights=weights, shard=shard)

    def train_dataloader(self) -> DataLoader:
        return self._split_loader("train", True)

    def val_dataloader(self, shard: bool = False) -> DataLoader:
        """Every validation image in order; ``shard``: for Lightning's loops, each process of a multi-device run its
        own share (:class:`EvalSampler`)."""
        return self._split_loader("val", False, shard)

    def test_dataloader(self, shard: bool = False) -> DataLoader:
        """As :meth:`val_dataloader`, of the test split (the validation split where there is none)."""
        return self._split_loader("test" if "test" in self.samples else "val", False, shard)

    def check_images(self, samples: FileSamples, where: Path | str = "the input") -> FileSamples:
        """Decode every file once (JPEG at reduced scale); skip (warn and count) or fail on unreadable ones.

        Args:
            samples: the files to check.
            where: what holds them, for messages (e.g. the data root).
        """
        errors = self._decode_errors(samples, where)
        return samples.subset([i for i, e in enumerate(errors) if not e]) if any(errors) else samples

    def check_splits(self, splits: dict[str, FileSamples], classes: list[str]) -> dict[str, FileSamples]:
        """``check_images`` over every split at once, so that "all N images were unreadable" counts the whole source;
        a class whose every training image is unreadable is an error that names it."""
        keys = list(splits)
        union = FileSamples([p for k in keys for p in splits[k].paths], [y for k in keys for y in splits[k].labels])
        errors = self._decode_errors(union, self.location)
        out, start = {}, 0
        for k in keys:
            samples, errs = splits[k], errors[start : start + len(splits[k])]
            start += len(samples)
            for c in sorted(set(samples.labels)) if k == "train" else []:
                mine = [i for i, label in enumerate(samples.labels) if label == c]
                if all(errs[i] for i in mine):
                    raise ConfigError(
                        f"all {plural(len(mine), 'training image')} of class '{classes[c]}' in {self.location} were "
                        "unreadable "
                        f"(first: {samples.paths[mine[0]]}: {errs[mine[0]]}); fix or remove them"
                    )
            out[k] = samples.subset([i for i, e in enumerate(errs) if not e]) if any(errs) else samples
        return out

    def _decode_errors(self, samples: FileSamples, where: Path | str) -> list[str | None]:
        """One error message per file (None: it decodes); counts and logs the bad ones, or raises when asked to."""

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
            raise ConfigError(
                f"unreadable image {samples.paths[bad[0]]} ({errors[bad[0]]}); remove it, or set data.on_bad_image=skip"
            )
        if bad and len(bad) == len(samples):
            listed = isinstance(where, Path) and where.is_file()  # a label file's rows
            if listed and all(e.startswith("FileNotFoundError") for e in errors):
                raise ConfigError(
                    f"none of the {len(bad)} files {where} lists exists (first: {samples.paths[bad[0]]}); its paths "
                    f"are taken relative to its own folder ({where.parent}), or absolute, with / between folders: fix "
                    "them"
                )
            raise ConfigError(
                f"all {len(bad)} images in {where} were unreadable (first: {samples.paths[bad[0]]}: {errors[bad[0]]}); "
                "check that they are image files"
            )
        for i in bad[:5]:
            log.warning("skipping unreadable image %s (%s)", samples.paths[i], errors[i])
        if len(bad) > 5:
            log.warning("skipping %d more unreadable images in %s", len(bad) - 5, where)
        for i in bad:
            self.scan.skip("missing" if errors[i].startswith("FileNotFoundError") else "unreadable", samples.paths[i])
        self.bad_images.extend(str(samples.paths[i]) for i in bad)
        return errors


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


ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error we report, never silently half-decoded
