"""A peer, side by side (issue 9.5): tlx's `auto` vs fastai's `fine_tune`, same backbone, weights, data and split.

1. tlx runs first, as a user runs it: `python -m tlx +experiment=<--tlx-experiment> <data> ...` in a subprocess,
   with a fresh (cold) feature cache. It writes results.json and files.json (the exact images of every split).
2. fastai then trains in this process on exactly those train/val/test images (labels from the class folders):
   the same timm backbone with the same bundled ImageNet weights (`tlx.backbones.create_backbone`, as tlx built it,
   read from tlx's saved config), cut as fastai cuts every timm model (`TimmBody`: classifier and pooling removed),
   fastai's own head (`add_head`: concat pooling, BN, dropout, 512 hidden), `Learner` with fastai's defaults, frozen
   body as `vision_learner` leaves it, then `learn.fine_tune(epochs)` (1 frozen epoch, then `epochs` unfrozen,
   one-cycle, base_lr 2e-3). Data: `Resize(size)` + `aug_transforms()` and `Normalize` with the backbone's own
   mean/std (what `vision_learner` adds for a timm model), at the input size tlx used; fastai's default batch size
   64 (fewer on small data).
   fastai is built by hand only because `vision_learner(dls, "<timm name>")` would download the weights.
3. Prints val/test accuracy and wall times of both and the time ratio; writes bench/results/peer_fastai_<data>.json.

Times: tlx wall = the whole subprocess (Python start, imports, Hydra, backbone, data scan, feature extraction, fit,
test on the best checkpoint, results); tlx total_s = results.json timing.total_s (train(): backbone to results, no
imports). fastai wall = from building the backbone and DataLoaders to the end of the test evaluation (fastai's
imports are excluded and reported apart). tlx tests its best-val checkpoint; fastai tests its final model.

Usage (fastai is the optional extra `peer`: pip install -e '.[peer]'):
  python bench/peer_fastai.py                                           # the demo, 224 px
  python bench/peer_fastai.py --data /work/shared/data/cifar10-subset --image-size 64 --samples-per-class 200
  python bench/peer_fastai.py --tlx-experiment small_data -- trainer.max_epochs=10   # extra tlx overrides after --
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shlex
import subprocess
import sys
import time
import warnings
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _fail(message: str) -> None:
    """One line naming the fix, exit status 2 (as the tlx command does)."""
    print(f"peer_fastai: error: {message}", file=sys.stderr)
    sys.exit(2)


def data_overrides(data: str) -> list[str]:
    """tlx overrides for ``--data``: ``demo`` (tlx's bundled demo) or a folder of class folders."""
    if data == "demo":
        return ["data=demo"]
    root = Path(data).expanduser().resolve()
    if not root.is_dir():
        _fail(f"--data {data}: no such folder; give a folder of class folders (or train/ test/ of them), or 'demo'")
    return ["data=folder", f"data.root={root}"]


def tlx_command(args: argparse.Namespace, run_dir: Path) -> list[str]:
    """The tlx command line: the chosen experiment on the chosen data, size and subset, a cold cache in the run."""
    cmd = [sys.executable, "-m", "tlx", f"+experiment={args.tlx_experiment}", *data_overrides(args.data)]
    if args.image_size:
        cmd.append(f"backbone.image_size={args.image_size}")
    if args.samples_per_class:
        cmd.append(f"data.samples_per_class={args.samples_per_class}")
    return [
        *cmd,
        f"seed={args.seed}",
        f"cache.dir={run_dir / 'cache'}",
        "trainer.enable_progress_bar=false",
        f"hydra.run.dir={run_dir}",
        *args.tlx_overrides,
    ]


def run_tlx(cmd: list[str], run_dir: Path) -> dict[str, Any]:
    """Run tlx to completion; return its wall time, results.json, files.json and resolved config."""
    log_path = run_dir.parent / "tlx_output.log"
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        done = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "HYDRA_FULL_ERROR": "0"}, stdout=log, stderr=log)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        _fail(f"tlx exited {done.returncode}: {_tlx_error(log_path.read_text())} (full output: {log_path})")
    results = json.loads((run_dir / "results.json").read_text())
    if results.get("status") != "ok":
        _fail(f"tlx run did not finish: results.json status {results.get('status')!r} (see {log_path})")
    from omegaconf import OmegaConf

    return {
        "wall_s": wall,
        "results": results,
        "files": json.loads((run_dir / "files.json").read_text()),
        "config": OmegaConf.load(run_dir / ".hydra" / "config.yaml"),
        "log": log_path,
    }


def _tlx_error(output: str) -> str:
    """The line of tlx's output that says what went wrong: its own ``tlx: error:`` line, else Hydra's first line."""
    lines = [ln.strip() for ln in output.splitlines() if ln.strip() and "HYDRA_FULL_ERROR" not in ln]
    own = [ln for ln in lines if ln.startswith("tlx: error:")]
    hydra = [ln for ln in lines if ln.startswith(("In '", "Could not", "Error"))]
    return (own or hydra or lines[-1:] or ["(no output)"])[-1 if own else 0]


def labelled(paths: list[str], classes: list[str], split: str) -> list[Path]:
    """``paths`` as Paths, each checked to lie in a class folder named in ``classes`` (fastai's ``parent_label``)."""
    out = [Path(p) for p in paths]
    strays = sorted({p.parent.name for p in out} - set(classes))
    if strays:
        _fail(f"files.json {split} images in folders {strays} that are not classes {classes}; use folder data")
    missing = [p for p in out if not p.is_file()]
    if missing:
        _fail(f"{len(missing)} {split} images of files.json do not exist (first: {missing[0]}); rerun tlx")
    return out


def fastai_dataloaders(
    files: dict[str, list[str]], size: int, mean: tuple, std: tuple, batch_size: int | None, workers: int | None
) -> Any:
    """fastai DataLoaders over exactly tlx's train and val images, as a fastai user builds them for this size."""
    from fastai.vision.all import (
        CategoryBlock,
        DataBlock,
        ImageBlock,
        Normalize,
        Resize,
        aug_transforms,
        parent_label,
    )

    classes = list(files["classes"])
    train, val = labelled(files["train"], classes, "train"), labelled(files["val"], classes, "val")
    block = DataBlock(
        blocks=(ImageBlock, CategoryBlock(vocab=classes, sort=False)),  # label k is class k in both
        get_y=parent_label,
        splitter=lambda items: (list(range(len(train))), list(range(len(train), len(items)))),
        item_tfms=Resize(size),
        batch_tfms=[*aug_transforms(), Normalize.from_stats(mean, std)],
    )
    kwargs = {} if workers is None else {"num_workers": workers}
    return block.dataloaders(train + val, bs=batch_size or default_batch_size(len(train)), **kwargs)


def default_batch_size(n_train: int) -> int:
    """fastai's default 64, halved (down to 8) until an epoch has 4 full batches: its training loader drops the
    last partial batch, so 60 images at 64 would train on nothing."""
    bs = 64
    while bs > 8 and n_train // bs < 4:
        bs //= 2
    return bs


def fastai_model(backbone_model: Any, num_features: int, num_classes: int) -> Any:
    """fastai's model for a timm backbone (``create_timm_model`` without its ``timm.create_model`` download):
    the timm model (classifier already removed) as ``TimmBody``, then fastai's default head."""
    from fastai.vision.learner import TimmBody, add_head

    body = TimmBody(backbone_model)  # forward_features: (B, C, h, w); the head pools
    return add_head(body, num_features, num_classes, pool=body.needs_pool)


def run_fastai(
    tlx: dict[str, Any], epochs: int, batch_size: int | None, workers: int | None, path: Path
) -> dict[str, Any]:
    """Train with fastai's ``fine_tune`` on tlx's split; return accuracies and times."""
    t_import = time.perf_counter()
    warnings.filterwarnings("ignore", message=".*torch.jit.script.* is deprecated", category=FutureWarning)
    from fastai.vision.all import Learner, accuracy, default_split, set_seed

    from tlx.backbones import create_backbone

    import_s = time.perf_counter() - t_import
    b, files = tlx["config"].backbone, tlx["files"]
    if not b.pretrained:
        _fail("tlx ran with backbone.pretrained=false; the peer compares pretrained transfer, drop that override")
    set_seed(int(tlx["config"].seed), reproducible=True)

    t0 = time.perf_counter()
    backbone = create_backbone(b.name, pretrained=True, weights=b.weights, image_size=b.image_size)
    size = int(backbone.data_config["input_size"][-1])
    mean, std = backbone.data_config["mean"], backbone.data_config["std"]
    dls = fastai_dataloaders(files, size, mean, std, batch_size, workers)
    model = fastai_model(backbone.model, backbone.num_features, len(files["classes"]))
    path.mkdir(parents=True, exist_ok=True)
    learn = Learner(dls, model, splitter=default_split, metrics=accuracy, path=path)
    learn.freeze()  # as vision_learner leaves a pretrained model
    with learn.no_bar():  # no progress bars: one line per epoch [epoch, train_loss, valid_loss, accuracy, time]
        learn.fine_tune(epochs)
        fit_s = time.perf_counter() - t0
        val_loss, val_acc = learn.validate()
        test = labelled(files["test"], list(files["classes"]), "test") if files.get("test") else []
        test_acc = float(learn.validate(dl=dls.test_dl(test, with_labels=True))[1]) if test else None
    wall = time.perf_counter() - t0
    trainable = sum(p.numel() for p in learn.model.parameters() if p.requires_grad)
    return {
        "val/acc": float(val_acc),
        "test/acc": test_acc,
        "wall_s": wall,
        "fit_s": fit_s,
        "import_s": import_s,
        "epochs": f"fine_tune({epochs}): 1 frozen + {epochs} unfrozen",
        "input_size": size,
        "mean_std": [list(mean), list(std)],
        "batch_size": dls.train.bs,
        "num_workers": dls.train.num_workers,
        "params": {"trainable": trainable, "total": sum(p.numel() for p in learn.model.parameters())},
        "weights": backbone.weights,
    }


def table(rows: list[tuple[str, ...]]) -> str:
    """Rows of strings as aligned columns (first column left, the others right)."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        for r in rows
    )


def _acc(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="demo", help="'demo' (tlx's bundled demo) or a folder of class folders")
    parser.add_argument("--image-size", type=int, default=None, help="input size for both (default: the weights')")
    parser.add_argument("--samples-per-class", type=int, default=None, help="seeded subset of train (tlx's)")
    parser.add_argument("--tlx-experiment", default="auto", help="tlx's +experiment= (default: auto)")
    parser.add_argument("--epochs", type=int, default=3, help="fastai fine_tune(epochs): 1 frozen + this many")
    parser.add_argument(
        "--batch-size", type=int, default=None, help="fastai's batch size (default: 64, fewer on small data)"
    )
    parser.add_argument("--fastai-workers", type=int, default=None, help="fastai loader workers (default: fastai's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="run folder (default: outputs/bench/peer_fastai/...)")
    parser.add_argument("tlx_overrides", nargs="*", help="extra tlx overrides, after --")
    args = parser.parse_args()
    if importlib.util.find_spec("fastai") is None:  # fail before the tlx run, not after it
        _fail("fastai is not installed; install the optional extra: pip install -e '.[peer]'")

    name = "demo" if args.data == "demo" else Path(args.data).expanduser().resolve().name
    out = args.out or ROOT / "outputs" / "bench" / "peer_fastai" / f"{name}_{datetime.now():%Y-%m-%d_%H-%M-%S}"
    cmd = tlx_command(args, out / "tlx")
    shown = shlex.join(["python", *cmd[1:]])
    print(f"tlx: {shown}", flush=True)
    tlx = run_tlx(cmd, out / "tlx")
    r = tlx["results"]
    print(f"tlx done in {tlx['wall_s']:.1f} s; fastai fine_tune({args.epochs}) on the same split...", flush=True)
    fa = run_fastai(tlx, args.epochs, args.batch_size, args.fastai_workers, out / "fastai")

    counts = {k: len(v) for k, v in tlx["files"].items() if k != "classes"}
    tlx_val, tlx_test = r["metrics"].get("val/acc"), r["metrics"].get("test/acc")
    total_s = float(r["timing"]["total_s"])
    rows = [
        ("", "val/acc", "test/acc", "wall s", "trainable params"),
        (
            f"tlx +experiment={args.tlx_experiment}",
            _acc(tlx_val),
            _acc(tlx_test),
            f"{tlx['wall_s']:.1f} ({total_s:.1f} in train)",
            f"{r['params']['trainable']:,}",
        ),
        (
            f"fastai fine_tune({args.epochs})",
            _acc(fa["val/acc"]),
            _acc(fa["test/acc"]),
            f"{fa['wall_s']:.1f} (+{fa['import_s']:.1f} imports)",
            f"{fa['params']['trainable']:,}",
        ),
    ]
    ratio_wall = tlx["wall_s"] / fa["wall_s"]
    ratio_train = total_s / fa["wall_s"]
    metric = "test/acc" if tlx_test is not None and fa["test/acc"] is not None else "val/acc"
    lead = 100 * ((tlx_test if metric == "test/acc" else tlx_val) - fa[metric])
    from _common import machine

    print(f"\n== peer_fastai on {name}: {counts} images, {len(tlx['files']['classes'])} classes, {fa['input_size']} px")
    print(f"   ({machine()})")
    print(table(rows))
    print(f"time ratio tlx/fastai: {ratio_wall:.2f}x (tlx whole process) / {ratio_train:.2f}x (tlx train() only)")
    print(f"tlx - fastai {metric}: {lead:+.2f} points (done when >= -0.5)")
    report = {
        "machine": machine(),
        "data": args.data,
        "images": counts,
        "classes": tlx["files"]["classes"],
        "samples_per_class": args.samples_per_class,
        "input_size": fa["input_size"],
        "seed": args.seed,
        "tlx": {
            "command": shown,
            "experiment": args.tlx_experiment,
            "val/acc": tlx_val,
            "test/acc": tlx_test,
            "wall_s": round(tlx["wall_s"], 2),
            "timing": r["timing"],
            "params": r["params"],
            "freeze": r.get("freeze"),
            "head": r.get("head"),
            "epochs": r.get("epochs"),
            "weights": r.get("weights"),
            "run_dir": str(out / "tlx"),
        },
        "fastai": {k: round(v, 2) if k.endswith("_s") else v for k, v in fa.items()},
        "ratio_tlx_wall_over_fastai_wall": round(ratio_wall, 3),
        "ratio_tlx_train_over_fastai_wall": round(ratio_train, 3),
        f"tlx_minus_fastai_{metric.replace('/', '_')}_points": round(lead, 2),
        "times": "tlx wall: whole subprocess incl. imports; tlx timing.total_s: train() only; fastai wall: backbone, "
        "DataLoaders, learner, fine_tune, val and test evaluation (imports excluded, in fastai.import_s)",
    }
    path = ROOT / "bench" / "results" / f"peer_fastai_{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"-> {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
