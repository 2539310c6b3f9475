"""The frozen-feature cache: compute the frozen part of the network once per input, train the rest from disk.

An entry is one file ``<cache dir>/<key[:2]>/<key>.pt`` holding the activations of every image of one split at
the cut point. The key is a hash of everything the activations depend on: backbone name, a hash of the weights
actually loaded, the cut point, the transform, the number of augmented views, and the ordered list of the images'
content hashes (file bytes, or the idx array's hash and row for Fashion-MNIST). Content hashes rather than
size+mtime: a copied dataset still hits, and a photo replaced by another of the same size still misses.
Entries are written to a temporary file and renamed, so a killed run leaves nothing a later run would trust, and
two jobs writing the same entry at once each rename a complete file. Jobs that need the same missing entry at the same
time (a sweep on a cluster, one shared cache) extract it once: each takes the entry's lock file first
(``fcntl.flock``, released by the kernel when its holder dies, so a crashed extractor never blocks the others), and
the ones that waited find the entry written.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from tlx.data import ImageData
from tlx.errors import ConfigError, first_line, raise_noted_interrupt
from tlx.heads import Network
from tlx.jsonfile import probe_writable
from tlx.progress import progress

log = logging.getLogger(__name__)

FORMAT = 1
Cut = int | str | None


def default_cache_dir() -> Path:
    """``$TLX_CACHE_DIR``, else ``$XDG_CACHE_HOME/tlx``, else ``~/.cache/tlx``."""
    if os.environ.get("TLX_CACHE_DIR"):
        return Path(os.environ["TLX_CACHE_DIR"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")).expanduser() / "tlx"


def find_cut(net: Network) -> Cut:
    """Where the frozen part of ``net`` ends and the trainable part begins.

    Returns ``"pooled"`` when the whole backbone is frozen, the index of the first chain element with a
    trainable parameter when the trainable part is a tail of the chain, ``len(chain)`` when only the pooling
    side trains, and None when no such cut exists (everything trains, or the architecture is not a chain).
    """
    trainable = {
        n.removeprefix("backbone.") for n, p in net.named_parameters() if p.requires_grad and n.startswith("backbone.")
    }
    if not trainable:
        return "pooled"
    if not net.chain:
        return None
    for i, (_, module) in enumerate(net.chain):
        if any(p.requires_grad for p in module.parameters()):
            return i if i > 0 else None
    return len(net.chain)


class FeatureCache:
    """Where and whether cached activations are used.

    Args:
        enabled: ``auto`` (use it whenever the frozen part ends where the trainable part begins and no random
            augmentation runs before it), ``true`` (the same, but an error when that is impossible) or ``false``.
        dir: cache directory; default ``$TLX_CACHE_DIR`` or the user's cache directory (``~/.cache/tlx``).
        views: augmented views stored per training image; epoch e trains on view ``e % views``. With
            ``views > 1`` the training transform is random (``data.augment``) and still cached.
        max_gb: refuse (warn, and train through the backbone) when the entries of one run would be larger.
        dtype: ``float32`` (exact) or ``float16`` (half the disk).
        lock_timeout_s: the longest wait for another process extracting the same entry; after it, extract here too.
    """

    def __init__(
        self,
        enabled: bool | str = "auto",
        dir: str | None = None,
        views: int = 1,
        max_gb: float = 4.0,
        dtype: str = "float32",
        lock_timeout_s: float = 3600.0,
    ) -> None:
        if str(enabled) not in ("auto", "True", "False", "true", "false"):
            raise ConfigError(f"cache.enabled must be auto, true or false, got {enabled}")
        if isinstance(views, bool) or not float(views).is_integer() or int(views) < 1:
            raise ConfigError(f"cache.views must be a whole number >= 1, got {views}")
        if dtype not in ("float32", "float16"):
            raise ConfigError(f"cache.dtype must be float32 or float16, got {dtype}")
        if not float(max_gb) > 0 or float(max_gb) == float("inf"):  # (NaN too: no comparison was ever over it)
            raise ConfigError(f"cache.max_gb must be a number of GiB > 0, got {max_gb} (cache.enabled=false: no cache)")
        if not float(lock_timeout_s) >= 0:
            raise ConfigError(f"cache.lock_timeout_s must be a number of seconds >= 0, got {lock_timeout_s}")
        self.enabled = str(enabled).lower()
        self.root = Path(dir).expanduser() if dir else default_cache_dir()
        self.views, self.max_bytes, self.dtype = int(views), float(max_gb) * 2**30, getattr(torch, dtype)
        self.lock_timeout_s = float(lock_timeout_s)
        self._said_unreadable: set[Path] = set()

    def check_writable(self) -> None:
        """Fail now, naming the fix, if entries could not be written (rather than after the extraction)."""
        try:
            probe_writable(self.root)
        except OSError as e:
            raise self._unwritable(e) from e

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.pt"

    def load(self, key: str) -> torch.Tensor | None:
        """The stored activations for ``key``, or None (missing or unreadable entries are misses)."""
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            entry = torch.load(path, map_location="cpu", weights_only=True)
            if entry.get("format") == FORMAT and entry.get("key") == key:
                return entry["features"]
        except Exception as e:  # a damaged file is a miss, never a crash; said once (it is looked up again in the lock)
            if path not in self._said_unreadable:
                self._said_unreadable.add(path)
                reason = str(e).split(".")[0] or type(e).__name__  # (torch's advice after it is no help here)
                log.warning("ignoring unreadable cache entry %s (%s): it is extracted again", path, reason)
        return None

    @contextlib.contextmanager
    def lock(self, key: str) -> Iterator[bool]:
        """Hold the entry's lock file while extracting it; waits while another process holds it.

        Yields True when the lock is held, False when the wait ran past ``lock_timeout_s`` (the caller extracts
        anyway: entries are renamed into place whole, so two writers cannot corrupt one).
        """
        path = self.path(key)
        lock_path = path.with_name(f".{path.name}.lock")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            raise self._unwritable(e) from e
        try:
            held = self._acquire(fd, lock_path)
            yield held
        finally:
            os.close(fd)  # closing releases the lock; the lock file stays (removing it would race with waiters)

    def _acquire(self, fd: int, lock_path: Path) -> bool:
        deadline = time.monotonic() + self.lock_timeout_s
        waiting = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                if waiting:
                    log.info("feature cache lock %s acquired", lock_path)
                return True
            except BlockingIOError:
                if not waiting:
                    log.info("waiting for another process extracting this cache entry (lock %s)", lock_path)
                    waiting = True
                if time.monotonic() >= deadline:
                    log.warning(
                        "waited %.0fs for the feature cache lock %s (cache.lock_timeout_s): extracting here too",
                        self.lock_timeout_s,
                        lock_path,
                    )
                    return False
                time.sleep(0.2)

    def _unwritable(self, e: OSError) -> ConfigError:
        why = "it is a file, not a folder" if self.root.is_file() else e.strerror or e  # (mkdir said "File exists")
        return ConfigError(
            f"cannot write the feature cache at {self.root} ({why}); set cache.dir=<writable folder> or TLX_CACHE_DIR, "
            "or cache.enabled=false"
        )

    def save(self, key: str, features: torch.Tensor, meta: dict[str, Any]) -> None:
        """Store atomically: write a uniquely named temporary file in the same folder, then rename it.

        The folder was found writable before the extraction (check_writable); a write that fails now (a full disk:
        torch's writer raised a RuntimeError, 'unexpected pos', a traceback) leaves no temporary file behind and does
        not end the run, which has the features in memory: it is said in one line, and a later run extracts again."""
        path = self.path(key)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{time.time_ns()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"format": FORMAT, "key": key, "meta": meta, "features": features}, tmp)
            os.replace(tmp, path)
        except (OSError, RuntimeError) as e:
            tmp.unlink(missing_ok=True)
            try:
                free = f"; {size_text(shutil.disk_usage(self.root).free)} free there"
            except OSError:
                free = ""
            reason = (e.strerror if isinstance(e, OSError) else None) or first_line(e)
            log.warning(
                "could not store a feature cache entry of %s in %s (%s%s): this run goes on with the features in "
                "memory, and a later run extracts them again; free some space there or set cache.dir",
                size_text(features.numel() * features.element_size()),
                self.root,
                reason,
                free,
            )


def cache_key(parts: dict[str, Any]) -> str:
    """A stable hash of the key parts (JSON with sorted keys)."""
    return hashlib.blake2b(json.dumps(parts, sort_keys=True, default=str).encode(), digest_size=20).hexdigest()


def use_cached_features(
    net: Network,
    data: ImageData,
    cache: FeatureCache,
    backbone_name: str,
    weights_hash: str,
    seed: int,
    device: torch.device,
    train_bn: bool = False,
    cut: Cut = None,
    prefetch: tuple[Cut, ...] = (),
    augment: bool | None = None,
    autocast: torch.dtype | None = None,
    channels_last: bool = True,
) -> dict[str, Any]:
    """Fill ``data.features`` from the cache (extracting what is missing) when the cut allows it.

    Args:
        cut: read the activations at this cut instead of where ``net``'s frozen part ends (LP-FT's first stage reads
            ``"pooled"`` features of a network that will later train deeper).
        prefetch: further cuts whose missing entries are extracted in the same pass over the images and stored,
            for a later stage or candidate that cuts there (one decode and one forward instead of several).
        augment: whether the training images are augmented (default: ``data.augment``); LP-FT's probe reads
            un-augmented features even when its fine-tuning stage augments.
        autocast: extract under ``torch.autocast`` in this dtype (the run's mixed precision, e.g. bfloat16 for
            ``trainer.precision=bf16-mixed``), or None for full precision; part of the entries' keys.
        channels_last: feed the images in NHWC (``channels_last`` of the run config, which converts the network).

    Returns what results.json records: whether it was used, hits and misses, the cut, the extraction time, the time the
    reads took (`read_s`) and the whole lookup but extraction (`lookup_s`: the image hashes for the keys, the reads,
    and any wait for another process extracting the same entries).
    """
    info: dict[str, Any] = {"used": False, "cut": None, "hits": 0, "misses": 0, "extract_s": 0.0, "read_s": 0.0}
    if cache.enabled == "false":
        return info
    cut = find_cut(net) if cut is None else cut
    augment = data.augment if augment is None else augment
    reason = None
    if cut is None and all(p.requires_grad for p in net.parameters()):  # (freeze=none, or last_n of every stage)
        reason = "nothing is frozen, so there is nothing to compute once"
    elif cut is None:
        reason = "the trainable part does not start at a cut point of the backbone"
    elif augment and cache.views == 1:
        reason = "random augmentation runs before the cut (set cache.views>1 to cache augmented views)"
    elif train_bn:
        reason = "frozen BatchNorm layers before the cut update their statistics (freeze.train_bn=true)"
    if reason:
        if cache.enabled == "true":
            raise ConfigError(
                f"cache.enabled=true but the feature cache cannot be used: {reason}; set cache.enabled=auto"
            )
        log.info("feature cache not used: %s", reason)
        return info
    info["cut"] = _cut_name(net, cut)
    net.eval()
    cuts = [cut] + [c for c in dict.fromkeys(prefetch) if c is not None and c != cut]
    train_views = cache.views if augment else 1  # un-augmented views would be identical copies
    estimate = sum(_estimate_bytes(net, c, data, cache, train_views) for c in cuts)
    if estimate > cache.max_bytes:
        msg = (
            f"the feature cache for this run would take {size_text(estimate)}, over cache.max_gb="
            f"{cache.max_bytes / 2**30:g} ({size_text(cache.max_bytes)})"
        )
        if cache.enabled == "true":
            raise ConfigError(f"{msg}; raise cache.max_gb, cut later (larger freeze.n), or cache.dtype=float16")
        log.warning("%s: training through the frozen backbone instead", msg)
        return info
    start = time.perf_counter()  # the lookup: from here on (the size estimate above runs the network once per cut)
    for split, samples in data.samples.items():
        views = train_views if split == "train" else 1
        augmented = split == "train" and augment
        transform = data.train_transform if augmented else data.eval_transform
        parts = {
            "format": FORMAT,
            "backbone": backbone_name,
            "weights": weights_hash,
            "transform": repr(transform),
            "views": views,
            "aug_seed": seed if augmented else None,
            "dtype": str(cache.dtype),
            **({"autocast": str(autocast)} if autocast is not None else {}),  # full-precision keys stay as they were
            "decoder": samples.decoder,  # e.g. EXIF orientation applied: pixels decoded otherwise must miss
            # The ordered content hashes, not the paths: activations depend on the bytes alone.
            "images": hashlib.blake2b("\n".join(samples.fingerprints()).encode()).hexdigest(),
        }
        if views > 1:
            # Each view's loader has its own seed, so loader workers draw other augmentations for every view (they
            # once all drew the same ones: entries made before then must miss).
            parts["view_seeds"] = [_view_seed(seed, v) for v in range(views)]
        keys = {c: cache_key({**parts, "cut": _cut_name(net, c)}) for c in cuts}
        t0 = time.perf_counter()
        features = cache.load(keys[cut])
        info["read_s"] += time.perf_counter() - t0
        hit = features is not None
        if _missing(cache, keys, cut, features):
            with cache.lock(keys[cut]):  # one process extracts missing entries; the others wait for it, then hit
                features = features if features is not None else cache.load(keys[cut])
                hit = features is not None
                missing = _missing(cache, keys, cut, features)
                if missing:
                    if not hit:
                        log.info(
                            "cache miss for %s: %d images%s to extract",
                            split,
                            len(samples),
                            f" x {views} augmented views" if views > 1 else "",
                        )
                    t0 = time.perf_counter()
                    per_view = [
                        extract(
                            net,
                            missing,
                            data.loader(
                                data.dataset(split, train_transform=augmented),
                                seed=_view_seed(seed, v) if augmented else None,
                            ),
                            device,
                            cache.dtype,
                            desc=f"extracting {split}" + (f" view {v + 1}/{views}" if views > 1 else ""),
                            seed=_view_seed(seed, v) if augmented else None,
                            autocast=autocast,
                            channels_last=channels_last,
                        )
                        for v in range(views)
                    ]
                    for j, c in enumerate(missing):
                        out = torch.cat([view[j] for view in per_view])
                        meta = {**parts, "cut": _cut_name(net, c), "n": len(samples), "shape": list(out.shape)}
                        cache.save(keys[c], out, meta)
                        if c == cut:
                            features = out
                    info["extract_s"] += time.perf_counter() - t0
                    log.info(
                        "extracted %s at %s in %.1fs%s",
                        split,
                        ", ".join(_cut_name(net, c) for c in missing),
                        time.perf_counter() - t0,
                        "" if hit else f": {tuple(features.shape)}",  # the shape of what this run reads
                    )
        info["hits" if hit else "misses"] += 1
        if hit:
            log.info("cache hit for %s: %s", split, tuple(features.shape))
        data.features[split] = (features, views)
    info["used"] = True
    # the whole way to the features but extraction: hashing every image's bytes for the keys, the reads, lock waits
    info["lookup_s"] = round(time.perf_counter() - start - info["extract_s"], 4)
    info["extract_s"], info["read_s"] = round(info["extract_s"], 3), round(info["read_s"], 4)
    return info


def extract(
    net: Network,
    cuts: list[int | str],
    loader: torch.utils.data.DataLoader,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    desc: str = "extracting",
    seed: int | None = None,
    autocast: torch.dtype | None = None,
    channels_last: bool = True,
) -> list[torch.Tensor]:
    """Run the frozen part of ``net`` over ``loader`` once, in order; the activations at each cut, on the CPU (in
    ``dtype``). ``autocast``: run under ``torch.autocast`` in that dtype (mixed precision), else in full precision.
    ``channels_last``: the images in NHWC, as a network converted to channels-last takes them fastest."""
    if seed is not None:
        torch.manual_seed(seed)
    net.eval().to(device)
    out: list[list[torch.Tensor]] = [[] for _ in cuts]
    mixed = torch.autocast(device.type, dtype=autocast) if autocast is not None else contextlib.nullcontext()
    batches = progress(loader, desc, len(loader.dataset), lambda batch: len(batch[0]))
    with torch.inference_mode(), mixed:
        try:
            for x, _ in batches:
                raise_noted_interrupt()  # one dropped where it landed (the loader starting its worker processes)
                x = x.to(device, non_blocking=True)  # (B, C, H, W)
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)  # stored as NHWC
                for j, a in enumerate(net.forward_to_many(x, cuts)):
                    out[j].append(a.to(dtype).contiguous().cpu())
        except Exception:
            raise_noted_interrupt()  # a Ctrl-C to the process group stops a loader process too ("worker exited")
            raise
    raise_noted_interrupt()
    return [torch.cat(o) for o in out]


def _view_seed(seed: int, view: int) -> int:
    """The seed of augmented view ``view``: of the main process's RNG (augmentations without loader workers) and of its
    loader's generator (which seeds the workers)."""
    return seed * 1000 + view


def _missing(cache: FeatureCache, keys: dict[Cut, str], cut: Cut, features: torch.Tensor | None) -> list[Cut]:
    """The cuts to extract: the run's own when it was not loaded, and every other one not on disk yet."""
    return [c for c in keys if (features is None if c == cut else not cache.path(keys[c]).is_file())]


def _cut_name(net: Network, cut: int | str) -> str:
    """The cut as results.json and the cache key name it: ``pooled`` or ``<index>:<chain element>``."""
    return cut if cut == "pooled" else f"{cut}:{net.chain[cut][0] if cut < len(net.chain) else 'features'}"


def _estimate_bytes(net: Network, cut: int | str, data: ImageData, cache: FeatureCache, train_views: int) -> float:
    size = data.data_config["input_size"]
    device = next(net.parameters()).device  # (on the GPU after an extraction there: LP-FT's stage 1 did one)
    with torch.inference_mode():
        one = net.forward_to(torch.zeros(1, *size, device=device), cut).numel()
    n = sum(len(s) * (train_views if split == "train" else 1) for split, s in data.samples.items())
    return float(n * one * torch.empty((), dtype=cache.dtype).element_size())


# The cache's files: an entry ``<key>.pt`` (a 20-byte blake2b key, entry_key) in the folder of the key's first 2
# characters, its lock ``.<key>.pt.lock`` and a write in progress ``.<key>.pt.<pid>.<ns>.tmp``; nothing else a folder
# may hold (a user's own .pt files in a mistyped --dir were listed and deleted as entries).
_FILE = re.compile(r"(?P<dot>\.?)(?P<key>[0-9a-f]{40})\.pt(?P<extra>\.lock|\.\d+\.\d+\.tmp)?")


def _cache_files(root: Path) -> list[Path]:
    return sorted(
        p
        for p in [*root.glob("*/*.pt"), *root.glob("*/.*.pt.*")]
        if (m := _FILE.fullmatch(p.name)) and m["key"][:2] == p.parent.name and bool(m["dot"]) == bool(m["extra"])
    )


def _entries(root: Path) -> list[Path]:
    return [p for p in _cache_files(root) if not p.name.startswith(".")]


def list_entries(root: Path) -> list[dict[str, Any]]:
    """Every entry in the cache folder with its size and metadata (``unreadable``: a damaged file, which a run
    ignores and extracts again)."""
    rows = []
    for path in _entries(root):
        try:
            meta, unreadable = torch.load(path, map_location="cpu", weights_only=True).get("meta", {}), False
        except Exception:
            meta, unreadable = {}, True
        rows.append(
            {
                "key": path.stem,
                "bytes": path.stat().st_size,
                "backbone": meta.get("backbone"),
                "cut": meta.get("cut"),
                "n": meta.get("n"),
                "shape": meta.get("shape"),
                "unreadable": unreadable,
            }
        )
    return rows


def clear(root: Path) -> tuple[int, int]:
    """Remove every entry, lock and leftover temporary file of the cache, except the lock and the file being written
    of an entry a running job extracts (removing its lock let another job extract the same entry at once); returns
    how many entries went and how many extractions in progress were left alone."""
    files = _cache_files(root)
    busy = {f for f in files if f.name.endswith(".lock") and _held(f)}
    busy |= {f for f in files if f.name.endswith(".tmp") and _alive(int(f.name.split(".")[-3]))}
    for f in files:
        if f not in busy:
            f.unlink(missing_ok=True)
    for d in {f.parent for f in files}:
        if not any(d.iterdir()):
            d.rmdir()
    return sum(not f.name.startswith(".") for f in files), sum(f.name.endswith(".lock") for f in busy)


def _held(lock: Path) -> bool:
    """Whether a process holds the lock file (flock: a lock dies with its process)."""
    try:
        fd = os.open(lock, os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def size_text(n: float) -> str:
    """Bytes as people read them: ``812 KiB``, ``3.4 MiB``, ``1.2 GiB``."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n / 2**10:.0f} KiB"
