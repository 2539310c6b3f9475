"""tlx on a CUDA GPU: the demo's strategies each run alone and `auto`, the README's first command in each precision,
and full fine-tuning's training images/s per precision.

1. `python -m tlx data=demo strategy=<s>` for head_only, reinit_last, last_n2, full, lp_ft and auto, each from an
   empty feature cache (the README's CPU table of the same runs), one after the other: val/test accuracy, the
   process's wall seconds, results.json's extraction and fit seconds.
2. `python -m tlx +experiment=small_data trainer.precision=<p>` from an empty cache for 32-true, bf16-mixed and
   16-mixed, alternating, `--repeats` times: medians of the extraction and of the whole process.
3. Training images/s of tlx's Lightning module fine-tuning everything (EfficientNet-Lite0, 224 px, channels-last,
   fused AdamW) in a Lightning Trainer on the GPU, per precision, on one batch of random images in memory (what the
   GPU can take; a real run's images/s is also bounded by JPEG decoding, see bench/decode.py).

Needs a CUDA GPU. Writes bench/results/gpu.json. Usage: python bench/gpu.py [--repeats 2] [--steps 30] [--batch-size 64]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch
from _common import lightning_images_per_s, median, report, run_tlx

STRATEGIES = ("head_only", "reinit_last", "last_n2", "full", "lp_ft", "auto")
PRECISIONS = ("32-true", "bf16-mixed", "16-mixed")
WARMUP = 5


def _show(rows: dict, key: str, value) -> None:
    """Keep a row and print it now: what was measured is seen even if a time limit ends the benchmark later."""
    rows[key] = value
    print(f"  {key}: {value}", flush=True)


def strategies(tmp: Path) -> dict:
    rows: dict = {}
    for s in STRATEGIES:
        out = tmp / f"strategy_{s}"
        r = run_tlx(out, "data=demo", f"strategy={s}", f"cache.dir={out / 'cache'}")
        m, t = r["metrics"], r["timing"]
        winner = f" (chose {r['auto']['winner']})" if "auto" in r else ""
        _show(rows, f"{s}: val/acc, test/acc", f"{m['val/acc']:.4f}, {m['test/acc']:.4f}{winner}")
        times = f"{r['wall_s']:.1f}, {t['extract_s']:.1f}, {t['fit_s']:.1f}"
        _show(rows, f"{s}: wall s (process), extract s, fit s", times)
    rows["device"] = r["timing"]["device"]
    return rows


def precisions(tmp: Path, repeats: int) -> dict:
    runs: dict[str, list[dict]] = {p: [] for p in PRECISIONS}
    for i in range(repeats):
        for p in PRECISIONS:
            out = tmp / f"precision_{p}_{i}"
            runs[p].append(run_tlx(out, "+experiment=small_data", f"trainer.precision={p}", f"cache.dir={out / 'c'}"))
    rows: dict = {}
    for p, rs in runs.items():
        m = rs[0]["metrics"]
        extract_s = median([r["timing"]["extract_s"] for r in rs])
        _show(rows, f"small_data {p}: extraction of 510 images (s, median)", extract_s)
        _show(rows, f"small_data {p}: whole process (s, median)", median([r["wall_s"] for r in rs]))
        _show(rows, f"small_data {p}: val/acc, test/acc", f"{m['val/acc']:.4f}, {m['test/acc']:.4f}")
    return rows


def _one_batch(batch: int, size: int, steps: int):
    """A DataModule whose training data is one random batch, ``steps`` times (moved to the GPU each step, as a real
    loader's batches are; no decoding)."""
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader, IterableDataset

    x, y = torch.randn(batch, 3, size, size), torch.randint(0, 3, (batch,))

    class Repeat(IterableDataset):
        def __iter__(self):
            return iter([(x, y)] * steps)

    class OneBatch(pl.LightningDataModule):
        def train_dataloader(self):
            return DataLoader(Repeat(), batch_size=None)  # (a list would be taken for a list of loaders)

    return OneBatch()


def throughput(precision: str, batch: int, size: int, steps: int) -> float:
    from tlx.backbones import create_backbone
    from tlx.freeze import Freeze
    from tlx.heads import LinearHead, Network
    from tlx.module import Optim, TransferModule

    backbone = create_backbone("tf_efficientnet_lite0", image_size=size)
    net = Network(backbone, LinearHead(backbone, num_classes=3))
    freeze = Freeze("none")
    freeze.apply(net, backbone.stage_groups())
    net.to(memory_format=torch.channels_last)
    module = TransferModule(net, freeze, Optim(lr=1e-4, scheduler="none"), num_classes=3)
    module.channels_last = True
    data = _one_batch(batch, size, steps)
    return lightning_images_per_s(module, data, steps, batch, WARMUP, accelerator="gpu", precision=precision)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=224)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench/gpu.py needs a CUDA GPU; none is visible here")
    tmp = Path(tempfile.mkdtemp(prefix="tlx-bench-gpu-"))
    rows: dict = {}
    for p in PRECISIONS:
        key = f"full fine-tuning, batch {args.batch_size} at {args.image_size} px, {p}: train images/s"
        _show(rows, key, throughput(p, args.batch_size, args.image_size, args.steps))
    rows.update(precisions(tmp, args.repeats))
    rows.update(strategies(tmp))
    report("gpu", rows)


if __name__ == "__main__":
    main()
