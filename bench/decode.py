"""Decoding vs compute (issue 6.3): can the loaders keep the backbone fed?

On large JPEG photos (1024x768, as from a camera) at the backbone's 224 px:
- decode + transform images/s of one process, with and without reduced-size JPEG decoding (PIL draft);
- what tlx's loader delivers with its default workers (sized to the cores);
- the backbone's inference images/s on ready tensors (what extraction needs), and training images/s.

Usage: python bench/decode.py [--images 120] [--repeats 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from _common import median, photo_folder, report

from tlx.backbones import create_backbone
from tlx.data import FolderData


def _rate(fn, n: int, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return n / median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=120)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    photos = photo_folder(Path(tempfile.gettempdir()) / "tlx-bench-photos", classes=3, per_class=60)
    backbone = create_backbone("tf_efficientnet_lite0")
    data = FolderData(root=str(photos), data_config=backbone.data_config, val_fraction=0.05)
    data.setup()
    ds = data.dataset("train")
    n = min(args.images, len(ds))

    def decode(draft: int | None) -> None:
        for i in range(n):
            ds.transform(ds.samples.load(i, draft))

    full = _rate(lambda: decode(None), n, args.repeats)
    drafted = _rate(lambda: decode(data.draft), n, args.repeats)
    loader = data.loader(ds)
    total = len(ds)
    _ = [b for b in loader]  # start the persistent workers once
    delivered = _rate(lambda: [b for b in loader], total, args.repeats)

    model = backbone.model.eval().to(memory_format=torch.channels_last)
    x = torch.randn(data.batch_size, 3, 224, 224).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        model(x)
        infer = _rate(lambda: [model(x) for _ in range(2)], 2 * len(x), args.repeats)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)

    def train_steps() -> None:
        for _ in range(2):
            model(x).sum().backward()
            opt.step()
            opt.zero_grad()

    train_steps()
    trained = _rate(train_steps, 2 * len(x), args.repeats)
    report(
        "decode",
        {
            "photos (1024x768 JPEG) -> 224 px": n,
            "decode+transform images/s, 1 process, full-size decode": full,
            "decode+transform images/s, 1 process, reduced-size JPEG decode": drafted,
            "reduced-size decode speed-up": drafted / full,
            f"tlx loader images/s ({data.num_workers} worker process(es))": delivered,
            "backbone inference images/s (channels-last)": infer,
            "backbone training images/s (forward+backward)": trained,
            "loader / inference ratio (>= 1: decoding is not the bottleneck)": delivered / infer,
        },
    )


if __name__ == "__main__":
    main()
