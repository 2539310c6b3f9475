"""Fine-tuning steps on CPU, before and after two changes (tlx/backbones.py `crop_kernels_to_maps`, tlx/module.py
`Optim.create`): convolutions drop the kernel taps that cannot reach their input (a 5x5 depthwise conv on the 1x1 maps
that 32 px images leave at the end of EfficientNet), and AdamW runs as one fused kernel.

tlx's own training step (TransferModule in a Lightning Trainer, channels-last, as `python -m tlx` runs it) on
EfficientNet-Lite0 with its bundled weights, for `strategy=last_n2` and `strategy=full`, at 32 px (the regime sweeps'
size) and 224 px (the pretraining size, where every map is larger than its kernel and nothing is cropped). Four
variants per cell, run interleaved: neither change, each alone, both (what tlx runs). Reports the median training
images/s over the timed steps of each run, and the ratio of "both" to "neither" per cell.

Usage: python bench/small_maps.py [--steps 12] [--batch-size 64] [--repeats 3] [--sizes 32 224] [--threads N]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from _common import lightning_images_per_s, median, photo_folder, report

from tlx.backbones import create_backbone, crop_kernels_to_maps
from tlx.data import FolderData
from tlx.freeze import Freeze
from tlx.heads import LinearHead, Network
from tlx.module import Optim, TransferModule

WARMUP = 2
STRATEGIES = {"last_n2": Freeze("last_n", n=2), "full": Freeze("none")}
VARIANTS = {"neither": (False, False), "crop only": (True, False), "fused only": (False, True), "both": (True, True)}


class _Unfused(Optim):
    """tlx's optimizer as it was: torch's default (multi-tensor) AdamW."""

    def create(self, groups: list[dict]) -> torch.optim.Optimizer:
        return torch.optim.AdamW(groups, lr=self.lr, weight_decay=self.weight_decay, foreach=True)


def throughput(photos: Path, size: int, batch: int, steps: int, strategy: str, crop: bool, fused: bool) -> float:
    """Training images/s of tlx's step, over the steps after the warm-up."""
    backbone = create_backbone("tf_efficientnet_lite0", image_size=size)
    crop_kernels_to_maps(backbone.model, enabled=crop)
    data = FolderData(root=str(photos), data_config=backbone.data_config, val_fraction=0.05, batch_size=batch)
    data.setup()
    net = Network(backbone, LinearHead(backbone, num_classes=len(data.classes)))
    freeze = STRATEGIES[strategy]
    freeze.apply(net, backbone.stage_groups())
    net.to(memory_format=torch.channels_last)
    optim = (Optim if fused else _Unfused)(lr=1e-3, scheduler="none")
    module = TransferModule(net, freeze, optim, num_classes=len(data.classes))
    module.channels_last = True
    return lightning_images_per_s(module, data, steps, batch, WARMUP)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 224])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's; sweeps use 1)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    photos = photo_folder(
        Path(tempfile.gettempdir()) / "tlx-bench-small-photos", classes=3, per_class=100, size=(96, 64)
    )
    cells = [(size, strategy) for size in args.sizes for strategy in STRATEGIES]
    runs: dict[tuple, list[float]] = {}
    for _ in range(args.repeats):
        for size, strategy in cells:
            for variant, (crop, fused) in VARIANTS.items():
                ips = throughput(photos, size, args.batch_size, args.steps, strategy, crop, fused)
                runs.setdefault((size, strategy, variant), []).append(ips)
    rows: dict = {"batch / timed steps per run / runs": f"{args.batch_size} / {args.steps - WARMUP} / {args.repeats}"}
    for size, strategy in cells:
        ips = {v: median(runs[size, strategy, v]) for v in VARIANTS}
        for variant in VARIANTS:
            rows[f"{size} px {strategy}: {variant}, train images/s (median)"] = ips[variant]
        rows[f"{size} px {strategy}: both / neither"] = ips["both"] / ips["neither"]
    report("small_maps", rows)


if __name__ == "__main__":
    main()
