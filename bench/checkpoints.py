"""Checkpoint size per run (issue 11), lean vs full, for each strategy preset on the demo data at 224 px.

Each strategy trains for a few epochs (``python -m tlx strategy=<s>``); then, per checkpoint, "lean" is the file the
run wrote and "full" is the same checkpoint with the frozen tensors put back and no ``frozen`` entry, which is what
tlx wrote before lean checkpoints (the whole network, optimizer state and loop state), serialised the same way.

Usage: python bench/checkpoints.py [--epochs 1]
"""

from __future__ import annotations

import argparse
import io
import tempfile
from pathlib import Path

import torch
from _common import report, run_tlx

STRATEGIES = ("head_only", "last_n2", "reinit_last", "full")


def _full_size(ckpt: Path, run_dir: Path) -> int:
    """Bytes of ``ckpt`` with every tensor in it, as a checkpoint without lean saving would be."""
    from tlx.checkpoints import FROZEN, is_lean
    from tlx.predict import load_run

    saved = torch.load(ckpt, map_location="cpu", weights_only=True)
    if is_lean(saved):
        net = load_run(run_dir, str(ckpt)).net  # rebuilt with the pretrained weights, the checkpoint loaded
        saved["state_dict"] = {f"net.{k}": v for k, v in net.state_dict().items()}
        del saved[FROZEN]
    buffer = io.BytesIO()
    torch.save(saved, buffer)
    return buffer.tell()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()
    rows: dict = {"epochs": args.epochs, "image size": 224, "data": "demo (3 classes, 20 train images per class)"}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for strategy in STRATEGIES:
            run_dir = tmp / strategy
            overrides = [f"strategy={strategy}", f"trainer.max_epochs={args.epochs}", f"cache.dir={tmp / 'cache'}"]
            results = run_tlx(run_dir, *overrides)
            rows[f"{strategy}: trainable parameters"] = results["params"]["trainable"]
            lean = full = 0
            for name in ("best.ckpt", "last.ckpt"):
                ckpt = run_dir / "checkpoints" / name
                lean += ckpt.stat().st_size
                full += _full_size(ckpt, run_dir)
            rows[f"{strategy}: full checkpoints per run (best + last) MB"] = round(full / 1e6, 3)
            rows[f"{strategy}: lean checkpoints per run (best + last) MB"] = round(lean / 1e6, 3)
            rows[f"{strategy}: ratio full/lean"] = round(full / lean, 1)
    report("checkpoints", rows)


if __name__ == "__main__":
    main()
