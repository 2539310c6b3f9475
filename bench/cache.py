"""Feature-cache benchmark (issue 3), side by side in one command on the demo data, same seed.

1. small_data for E epochs: with the cache (cold: it extracts once) vs recomputing the frozen backbone every
   epoch (cache.enabled=false): whole-run wall time and fit time per epoch.
2. A second small_data run with another learning rate (cache hit) vs the first (cold cache), end to end as a
   user runs them: separate processes, imports included.
3. Extraction images/s (tlx.features.extract over every split) vs a bare timm forward loop over the same images,
   in this process: decode + transform + forward, same batch size and loader processes.

Usage: python bench/cache.py [--epochs 20] [--repeats 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from _common import median, report, run_tlx


def _run(tmp: Path, name: str, *overrides: str) -> tuple[float, dict]:
    res = run_tlx(tmp / name, "+experiment=small_data", *overrides)
    return res["wall_s"], res


def _extraction(repeats: int) -> dict:
    from tlx.backbones import create_backbone
    from tlx.data import DemoData
    from tlx.features import extract
    from tlx.freeze import Freeze
    from tlx.heads import LinearHead, Network

    backbone = create_backbone("tf_efficientnet_lite0")
    data = DemoData(data_config=backbone.data_config)
    data.setup()
    net = Network(backbone, LinearHead(backbone, num_classes=3))
    Freeze("head_only").apply(net, backbone.stage_groups())
    net.to(memory_format=torch.channels_last)
    plain = create_backbone("tf_efficientnet_lite0").model.eval()  # contiguous (NCHW), as a hand-written loop has it
    n = sum(len(s) for s in data.samples.values())

    def tlx_pass() -> None:
        for split in data.samples:
            extract(net, ["pooled"], data.loader(data.dataset(split)), torch.device("cpu"))[0]

    def bare_pass() -> None:
        with torch.no_grad():
            for split in data.samples:
                for x, _ in torch.utils.data.DataLoader(
                    data.dataset(split), batch_size=data.batch_size, num_workers=data.num_workers
                ):
                    plain(x)

    times: dict[str, list[float]] = {"tlx": [], "bare": []}
    for _ in range(repeats):
        for name, fn in (("tlx", tlx_pass), ("bare", bare_pass)):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    tlx_ips, bare_ips = n / median(times["tlx"]), n / median(times["bare"])
    return {
        "extraction images": n,
        "extraction tlx images/s (median)": tlx_ips,
        "extraction bare timm loop images/s (median)": bare_ips,
        "extraction ratio tlx/bare (target >= 0.9)": tlx_ips / bare_ips,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3, help="runs of each cheap measurement (medians reported)")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="tlx-bench-cache-"))
    epochs = f"trainer.max_epochs={args.epochs}"
    rows: dict = {}
    cold, warm, fit_cached = [], [], []
    for r in range(args.repeats):
        cache = f"cache.dir={tmp / f'cache{r}'}"
        wall, res = _run(tmp, f"cold{r}", cache, epochs)
        assert res["cache"]["misses"] == 3, res["cache"]
        cold.append(wall)
        fit_cached.append(res["timing"]["fit_s"])
        wall, res = _run(tmp, f"warm{r}", cache, epochs, "optim.lr=0.01")
        assert res["cache"]["hits"] == 3, res["cache"]
        warm.append(wall)
    # Recomputing the backbone every epoch is the slow side: one run (minutes) is enough for the ratio.
    nocache_wall, res = _run(tmp, "nocache", "cache.enabled=false", epochs)
    fit_nocache = res["timing"]["fit_s"]
    rows.update(
        {
            "epochs": args.epochs,
            f"{args.epochs} epochs, recompute backbone: whole run s": nocache_wall,
            f"{args.epochs} epochs, cached (cold, extracts once): whole run s (median)": median(cold),
            "whole-run ratio recompute/cached (target >= 10)": nocache_wall / median(cold),
            "fit s per epoch, recompute": fit_nocache / args.epochs,
            "fit s per epoch, cached (median)": median(fit_cached) / args.epochs,
            "per-epoch ratio recompute/cached": fit_nocache / median(fit_cached),
            "second run (new lr, cache hit) s (median)": median(warm),
            "first/second run ratio, imports included (target >= 3)": median(cold) / median(warm),
        }
    )
    rows.update(_extraction(args.repeats))
    report("cache", rows)


if __name__ == "__main__":
    main()
