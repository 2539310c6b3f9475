"""The frozen-feature cache: hits, misses on every key part, same metrics as without it, crash safety."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time

import pytest
import torch

from tlx.backbones import create_backbone
from tlx.data import FolderData
from tlx.errors import ConfigError
from tlx.features import FeatureCache, extract, find_cut, use_cached_features
from tlx.freeze import Freeze
from tlx.heads import LinearHead, Network, ReinitLastHead
from tlx.run import autocast_dtype, train

from .test_data import make_folder


def _setup(
    root,
    cache_dir,
    name="tf_efficientnet_lite0",
    pretrained=True,
    size=32,
    freeze=("head_only", None),
    head=LinearHead,
    per_class=None,
    views=1,
    augment=False,
    workers=0,
    autocast=None,
):
    backbone = create_backbone(name, pretrained=pretrained, image_size=size)
    data = FolderData(
        root=str(root),
        data_config=backbone.data_config,
        num_workers=workers,
        samples_per_class=per_class,
        augment=augment,
    )
    data.setup()
    net = Network(backbone, head(backbone=backbone, num_classes=len(data.classes)))
    Freeze(*freeze).apply(net, backbone.stage_groups(exclude=set(net.head.new_backbone_modules)))
    cache = FeatureCache(dir=str(cache_dir), views=views)
    info = use_cached_features(net, data, cache, name, backbone.weights_hash, 0, torch.device("cpu"), autocast=autocast)
    return info, data


@pytest.fixture
def photos(tmp_path):
    return make_folder(tmp_path / "photos", n=8)


def test_unchanged_input_hits(photos, cache_dir):
    first, data1 = _setup(photos, cache_dir)
    second, data2 = _setup(photos, cache_dir)
    assert (first["misses"], first["hits"]) == (2, 0) and first["cut"] == "pooled"
    assert (second["misses"], second["hits"]) == (0, 2)
    assert torch.equal(data1.features["train"][0], data2.features["train"][0])
    assert data1.features["train"][0].shape == (len(data1.samples["train"]), 1280)


def test_extraction_says_how_far_it_got_where_no_bar_is_drawn(photos, monkeypatch, caplog):
    backbone = create_backbone("tf_efficientnet_lite0", pretrained=False, image_size=32)
    data = FolderData(root=str(photos), data_config=backbone.data_config, num_workers=0)
    data.setup()
    net = Network(backbone, LinearHead(backbone=backbone, num_classes=len(data.classes)))
    loader = torch.utils.data.DataLoader(data.dataset("train"), batch_size=8)  # 18 images: 8, 8, 2
    monkeypatch.setattr("tlx.progress.PROGRESS_EVERY_S", 0.0)  # a line after every batch
    with caplog.at_level("INFO", logger="tlx.progress"):
        extract(net, ["pooled"], loader, torch.device("cpu"), desc="extracting train")  # stderr is no terminal here
    lines = [r.getMessage().rsplit(" (", 1)[0] for r in caplog.records if r.name == "tlx.progress"]
    assert lines == [f"extracting train: {n} of 18 images" for n in (8, 16, 18)]


@pytest.mark.parametrize("change", ["backbone", "weights", "cut", "transform", "image_list", "file_content"])
def test_each_key_part_change_misses(photos, cache_dir, change):
    _setup(photos, cache_dir)
    kwargs = {
        "backbone": {"name": "tf_efficientnet_lite1"},
        "weights": {"pretrained": False},
        "cut": {"freeze": ("last_n", 1)},
        "transform": {"size": 40},
        "image_list": {"per_class": 3},
        "file_content": {},
    }[change]
    if change == "file_content":  # same name and size, different pixels
        victim = sorted(photos.rglob("*.jpg"))[0]
        from PIL import Image

        Image.new("RGB", (40, 30), (10, 200, 30)).save(victim, format="JPEG")
    info, _ = _setup(photos, cache_dir, **kwargs)
    assert info["used"] and info["misses"] >= 1
    if change in ("backbone", "weights", "cut", "transform"):
        assert info["hits"] == 0


def test_stage_boundary_cut_for_last_n_and_reinit(photos, cache_dir):
    info, data = _setup(photos, cache_dir, freeze=("last_n", 1))
    assert info["used"] and info["cut"] == "8:blocks.6"
    assert data.features["train"][0].shape[1:] == (192, 1, 1)  # (C, H, W) at 32 px
    info, data = _setup(photos, cache_dir, head=ReinitLastHead)
    assert info["cut"] == "8:blocks.6"  # same activation as above, so the same entries
    assert info["hits"] == 2


# With loader workers the augmentations are drawn in the workers, seeded from the loader's generator: every view's
# loader must have its own seed (all views were once identical with workers, the default on a GPU machine).
@pytest.mark.parametrize("workers", [0, 1])
def test_augmented_views_are_cached_per_view(photos, cache_dir, workers):
    info, data = _setup(photos, cache_dir, views=3, augment=True, workers=workers)
    n = len(data.samples["train"])
    feats, views = data.features["train"]
    assert views == 3 and feats.shape[0] == 3 * n
    for a, b in ((0, 1), (0, 2), (1, 2)):  # different random crops/flips
        assert not torch.equal(feats[a * n : (a + 1) * n], feats[b * n : (b + 1) * n]), (a, b)
    assert data.features["val"][0].shape[0] == len(data.samples["val"])
    info, _ = _setup(photos, cache_dir, augment=True)  # random augmentation with one view: not cacheable
    assert not info["used"]


def test_views_without_augmentation_are_one_copy(photos, cache_dir):
    _, data = _setup(photos, cache_dir, views=3)
    feats, views = data.features["train"]
    assert views == 1 and feats.shape[0] == len(data.samples["train"])


def test_crash_mid_write_leaves_no_trusted_entry(photos, cache_dir, monkeypatch):
    real_save = torch.save

    def half_then_die(obj, f, *a, **k):
        real_save(obj, f, *a, **k)
        with open(f, "r+b") as fh:  # half a file on disk, then the process "dies"
            fh.truncate(os.path.getsize(f) // 2)
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", half_then_die)
    with pytest.raises(KeyboardInterrupt):
        _setup(photos, cache_dir)
    monkeypatch.setattr(torch, "save", real_save)
    assert not list(cache_dir.glob("*/*.pt"))  # only the temporary file exists, under a name nobody loads
    assert list(cache_dir.glob("*/.*.tmp"))
    info, _ = _setup(photos, cache_dir)
    assert (info["misses"], info["hits"]) == (2, 0)


def test_corrupt_entry_is_a_miss(photos, cache_dir, caplog, capsys):
    from tlx.cache import main

    _setup(photos, cache_dir)
    for entry in cache_dir.glob("*/*.pt"):
        entry.write_bytes(b"garbage")
    assert main(["list", "--dir", str(cache_dir)]) == 0  # said as damaged (it was a line of "None"s)
    assert capsys.readouterr().out.count("unreadable (damaged: a run extracts it again)") == 2
    with caplog.at_level(logging.WARNING, logger="tlx.features"):
        info, _ = _setup(photos, cache_dir)
    assert info["misses"] == 2
    said = [r.getMessage() for r in caplog.records if "ignoring unreadable cache entry" in r.getMessage()]
    assert len(said) == 2 and len(set(said)) == 2  # once per entry (twice before: before and inside the lock)


def test_cached_training_gives_the_same_metrics_as_training_through_the_backbone(make_cfg, tmp_path):
    overrides = ["data.samples_per_class=6", "trainer.max_epochs=3", "head=mlp", "head.dropout=0.3"]
    cached = train(make_cfg(*overrides), tmp_path / "cached")
    direct = train(make_cfg(*overrides, "cache.enabled=false"), tmp_path / "direct")
    assert cached["cache"]["used"] and not direct["cache"]["used"]
    for key in ("val/acc", "val/f1", "test/acc", "test/f1"):
        assert cached["metrics"][key] == pytest.approx(direct["metrics"][key], abs=1e-6), key
    assert cached["metrics"]["test/loss"] == pytest.approx(direct["metrics"]["test/loss"], rel=1e-4)


@pytest.mark.parametrize("strategy", ["head=mlp", "strategy=reinit_last"])
def test_float16_cache_trains_like_float32(make_cfg, tmp_path, strategy):
    """cache.dtype=float16 halves the cache; the Lightning loop computes in the model's dtype on what it reads (half
    inputs into float weights once failed with "mat1 and mat2 must have the same dtype")."""
    overrides = ["data.samples_per_class=6", "trainer.max_epochs=2", strategy]
    half = train(make_cfg(*overrides, "cache.dtype=float16"), tmp_path / "half")
    full = train(make_cfg(*overrides), tmp_path / "full")
    assert half["cache"]["used"] and half["status"] == "ok"
    assert half["metrics"]["test/loss"] == pytest.approx(full["metrics"]["test/loss"], rel=0.05)


def test_mixed_precision_extraction_has_entries_of_its_own(photos, cache_dir):
    full, data_full = _setup(photos, cache_dir, size=64)
    mixed, data_mixed = _setup(photos, cache_dir, size=64, autocast=torch.bfloat16)
    again, data_again = _setup(photos, cache_dir, size=64)
    assert (full["misses"], mixed["misses"], mixed["hits"], again["hits"]) == (2, 2, 0, 2)
    a, b = data_full.features["train"][0], data_mixed.features["train"][0]  # (N, 1280) each
    assert a.dtype == b.dtype == torch.float32 and torch.equal(a, data_again.features["train"][0])
    # computed in bfloat16 (8 bits of mantissa): close to the float32 features, but not them
    assert not torch.equal(a, b) and torch.nn.functional.cosine_similarity(a, b).min() > 0.99


@pytest.mark.parametrize(
    ("precision", "device", "expected"),
    [
        ("32-true", "cpu", None),
        ("bf16-mixed", "cpu", torch.bfloat16),
        ("bf16-true", "cuda", torch.bfloat16),
        ("16-mixed", "cuda", torch.float16),
        ("16-mixed", "cpu", None),
    ],
)
def test_extraction_computes_in_the_runs_mixed_precision(precision, device, expected):
    assert autocast_dtype(precision, torch.device(device)) == expected


def test_a_bf16_run_extracts_in_bf16(make_cfg, tmp_path, cache_dir):
    results = train(make_cfg("trainer.precision=bf16-mixed"), tmp_path / "run")
    assert results["status"] == "ok" and results["cache"]["misses"] == 3
    metas = [torch.load(p, weights_only=True)["meta"] for p in cache_dir.glob("*/*.pt")]
    assert len(metas) == 3 and {m["autocast"] for m in metas} == {"torch.bfloat16"}


@pytest.mark.parametrize("channels_last", [True, False])
def test_extraction_feeds_the_memory_format_the_run_asks_for(make_cfg, tmp_path, monkeypatch, channels_last):
    """``channels_last=false`` reaches the extraction too (it once fed NHWC images whatever the setting)."""
    seen = []
    forward = Network.forward_to_many

    def spy(self, x, cuts):
        seen.append(x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous())
        return forward(self, x, cuts)

    monkeypatch.setattr(Network, "forward_to_many", spy)
    results = train(make_cfg(f"channels_last={str(channels_last).lower()}"), tmp_path / "run")
    assert results["cache"]["misses"] == 3 and seen and set(seen) == {channels_last}


def test_find_cut_none_when_everything_trains(photos, cache_dir):
    info, _ = _setup(photos, cache_dir, freeze=("none", None))
    assert not info["used"] and info["cut"] is None


def test_cache_cli_lists_and_clears(photos, cache_dir):
    from tlx.cache import main

    _setup(photos, cache_dir)
    mine = cache_dir / "checkpoints" / "model_final.pt"  # a user's file in the folder: no entry of the cache
    mine.parent.mkdir()
    torch.save(torch.zeros(1), mine)
    assert main(["list", "--dir", str(cache_dir)]) == 0
    assert len(list(cache_dir.glob("*/*.pt"))) == 3
    assert main(["clear", "--dir", str(cache_dir)]) == 0
    assert list(cache_dir.glob("*/*.pt")) == [mine]  # (clear deleted it with the entries)


def test_cache_cli_leaves_what_running_jobs_extract_and_refuses_a_folder_that_is_not_there(
    photos, cache_dir, tmp_path, capsys
):
    """clear removed the lock a running job held, so another job extracted the same entry at once; a mistyped --dir
    was an empty cache (exit 0); entries under 50 KiB were listed as 0.0 MiB."""
    import fcntl

    from tlx.cache import main

    _setup(photos, cache_dir)
    held, dead = cache_dir / "ab" / f".{'ab' * 20}.pt.lock", cache_dir / "cd" / f".{'cd' * 20}.pt.lock"
    writing = held.with_name(f".{'ab' * 20}.pt.{os.getpid()}.{time.time_ns()}.tmp")  # this process's write
    left_over = dead.with_name(f".{'cd' * 20}.pt.999999999.{time.time_ns()}.tmp")  # of a process long gone
    for f in (held, dead, writing, left_over):
        f.parent.mkdir(exist_ok=True)
        f.write_bytes(b"")
    fd = os.open(held, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)  # as a job extracting that entry holds it
    try:
        capsys.readouterr()
        assert main(["list", "--dir", str(cache_dir)]) == 0
        assert " KiB  tf_efficientnet_lite0  cut=pooled" in capsys.readouterr().out  # small entries: KiB, not 0.0 MiB
        assert main(["clear", "--dir", str(cache_dir)]) == 0
        assert capsys.readouterr().out.strip().endswith("left 1 entry that running jobs are extracting")
        assert sorted(p.name for p in cache_dir.rglob("*") if p.is_file()) == sorted([held.name, writing.name])
    finally:
        os.close(fd)
    (tmp_path / "a_file").write_text("")
    for missing in (tmp_path / "typo", tmp_path / "a_file"):
        with pytest.raises(SystemExit) as exit_:
            main(["list", "--dir", str(missing)])
        assert exit_.value.code == 2
        assert capsys.readouterr().err.startswith(f"python -m tlx.cache: error: no cache folder at {missing}")


def test_a_cache_entry_that_cannot_be_stored_leaves_no_file_and_the_run_goes_on(tmp_path):
    """A full disk while an entry was written: torch's writer raised a RuntimeError (not an OSError), so the run ended
    in a traceback after its extraction, and left a half-written temporary file that every later run added to. Here
    the write really fails: the process may not write files over 64 KiB (RLIMIT_FSIZE), as on a full disk."""
    code = f"""
import logging, resource, signal, torch
from tlx.features import FeatureCache
logging.basicConfig(level=logging.WARNING, format="%(message)s")
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead of killing the process
resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, resource.RLIM_INFINITY))
cache = FeatureCache(dir={str(tmp_path / "cache")!r})
cache.check_writable()
cache.save("ab" * 20, torch.zeros(1000, 1280), {{}})
print("went on")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout == "went on\n", done.stderr[-3000:]
    (said,) = done.stderr.strip().splitlines()
    assert said.startswith(f"could not store a feature cache entry of 4.9 MiB in {tmp_path / 'cache'} (")
    assert "this run goes on with the features in memory" in said
    assert [p for p in (tmp_path / "cache").rglob("*") if p.is_file()] == []  # no half-written file


@pytest.mark.parametrize(
    ("setting", "value"),
    [("views", 1.5), ("max_gb", -1), ("max_gb", 0), ("max_gb", float("nan")), ("lock_timeout_s", -5)],
)
def test_cache_settings_out_of_range_are_one_line(setting, value):
    """cache.views=1.5 ran as 1, a negative or NaN max_gb turned the cache off or its limit off, and a negative lock
    wait was taken, all without a word."""
    with pytest.raises(ConfigError, match=rf"^cache\.{setting} must be "):
        FeatureCache(**{setting: value})


def test_find_cut_is_pooled_for_head_only():
    backbone = create_backbone("tf_efficientnet_lite0", image_size=32)
    net = Network(backbone, LinearHead(backbone, num_classes=2))
    Freeze("head_only").apply(net, backbone.stage_groups())
    assert find_cut(net) == "pooled"


def test_concurrent_writers_of_one_entry_leave_a_valid_entry(cache_dir):
    from concurrent.futures import ThreadPoolExecutor

    cache = FeatureCache(dir=str(cache_dir))
    features = torch.randn(500, 1280)
    with ThreadPoolExecutor(4) as pool:  # four "sweep jobs" storing the same entry at the same time
        list(pool.map(lambda _: cache.save("ab" * 20, features, {"n": 500}), range(8)))
    assert torch.equal(cache.load("ab" * 20), features)
    assert not list(cache_dir.glob("*/.*.tmp"))


def test_a_copied_dataset_still_hits(photos, cache_dir, tmp_path):
    import shutil

    _setup(photos, cache_dir)
    copy = shutil.copytree(photos, tmp_path / "elsewhere" / "photos")
    info, _ = _setup(copy, cache_dir)
    assert (info["misses"], info["hits"]) == (0, 2)  # same bytes, same activations: the paths are not in the key


def test_the_size_estimate_runs_where_the_network_is():
    """The cache's size estimate passes a zero image through the frozen part. LP-FT's stage 1 extracts on the GPU and
    leaves the network there; stage 2's estimate then sent a CPU image through it, and every LP-FT run from an empty
    cache failed on a GPU (seen on an H200). A network on PyTorch's meta device stands in for one on a GPU here."""
    from types import SimpleNamespace

    from tlx.features import _estimate_bytes

    backbone = create_backbone("tf_efficientnet_lite0", image_size=32)
    net = Network(backbone, LinearHead(backbone, num_classes=3))
    data = SimpleNamespace(data_config=backbone.data_config, samples={"train": [0] * 4, "val": [0] * 2})
    cache = SimpleNamespace(dtype=torch.float16)
    on_cpu = [_estimate_bytes(net, cut, data, cache, train_views=2) for cut in ("pooled", 6)]
    assert on_cpu == [(4 * 2 + 2) * 1280 * 2, (4 * 2 + 2) * 80 * 2 * 2 * 2]  # images x (C x H x W) x 2 bytes
    assert [_estimate_bytes(net.to("meta"), cut, data, cache, train_views=2) for cut in ("pooled", 6)] == on_cpu
