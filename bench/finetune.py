"""Full fine-tuning throughput (issue 6.2): tlx's Lightning module vs a plain PyTorch loop, same everything.

Same model (EfficientNet-Lite0, bundled weights, everything trainable), same images (JPEG photos decoded by the
same dataset and loader processes), batch size, optimizer (AdamW) and threads. Training images/s are measured
over the steps after a warm-up, from the start of the first timed step to the end of the last (data waits
included). The plain loop runs twice: NCHW as most hand-written loops are, and channels-last as tlx runs.

Usage: python bench/finetune.py [--steps 12] [--batch-size 32] [--image-size 224] [--repeats 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from _common import lightning_images_per_s, median, photo_folder, report

from tlx.backbones import create_backbone
from tlx.data import FolderData
from tlx.freeze import Freeze
from tlx.heads import LinearHead, Network
from tlx.module import Optim, TransferModule

WARMUP = 2


def _build(photos: Path, size: int, batch: int) -> tuple[Network, FolderData, Freeze]:
    backbone = create_backbone("tf_efficientnet_lite0", image_size=size)
    data = FolderData(root=str(photos), data_config=backbone.data_config, val_fraction=0.05, batch_size=batch)
    data.setup()
    net = Network(backbone, LinearHead(backbone, num_classes=len(data.classes)))
    freeze = Freeze("none")
    freeze.apply(net, backbone.stage_groups())
    return net, data, freeze


def tlx_throughput(photos: Path, size: int, batch: int, steps: int) -> float:
    net, data, freeze = _build(photos, size, batch)
    net.to(memory_format=torch.channels_last)
    module = TransferModule(net, freeze, Optim(lr=1e-4, scheduler="none"), num_classes=len(data.classes))
    module.channels_last = True
    return lightning_images_per_s(module, data, steps, batch, WARMUP)


def plain_throughput(photos: Path, size: int, batch: int, steps: int, channels_last: bool) -> float:
    net, data, _ = _build(photos, size, batch)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    net.to(memory_format=fmt).train()
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4, weight_decay=0.01)
    loader = data.loader(data.dataset("train"), shuffle=True)
    done, t0 = 0, 0.0
    while done < steps:
        for x, y in loader:
            if done == WARMUP:
                t0 = time.perf_counter()
            loss = torch.nn.functional.cross_entropy(net(x.contiguous(memory_format=fmt)), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            done += 1
            if done == steps:
                break
    return (steps - WARMUP) * batch / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    photos = photo_folder(Path(tempfile.gettempdir()) / "tlx-bench-photos", classes=3, per_class=60)
    runs: dict[str, list[float]] = {"tlx": [], "plain_cl": [], "plain": []}
    for _ in range(args.repeats):
        runs["tlx"].append(tlx_throughput(photos, args.image_size, args.batch_size, args.steps))
        runs["plain_cl"].append(plain_throughput(photos, args.image_size, args.batch_size, args.steps, True))
        runs["plain"].append(plain_throughput(photos, args.image_size, args.batch_size, args.steps, False))
    tlx_ips, cl_ips, plain_ips = (median(runs[k]) for k in ("tlx", "plain_cl", "plain"))
    report(
        "finetune",
        {
            "image size / batch / timed steps per run / runs": f"{args.image_size} / {args.batch_size} / "
            f"{args.steps - WARMUP} / {args.repeats}",
            "tlx (Lightning) train images/s (median)": tlx_ips,
            "plain loop, channels-last, train images/s (median)": cl_ips,
            "plain loop, NCHW, train images/s (median)": plain_ips,
            "ratio tlx / plain channels-last (target >= 0.95)": tlx_ips / cl_ips,
            "ratio tlx / plain NCHW": tlx_ips / plain_ips,
        },
    )


if __name__ == "__main__":
    main()
