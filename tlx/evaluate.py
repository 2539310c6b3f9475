"""``python -m tlx.evaluate run_dir=<run> inputs=<labelled images>``: how well a trained run's model does on
labelled images it has not seen (a new batch of photos, another site's, last month's), as timm's ``validate.py``
scores a model on a labelled folder.

The images are read exactly as the run's validation images (``tlx.predict``'s path), and scored with the metrics the
run itself logs (torchmetrics: accuracy, balanced accuracy, macro F1, per-class accuracy, confusion matrix). Into
``out`` (default ``<run_dir>/eval/<date_time>``) go ``evaluation.json`` (the numbers), ``eval_predictions.csv`` (every
image's true and predicted class with the top-3 probabilities, as a run's ``val_predictions.csv``), ``gallery/`` and
``report.html``: the summary, the confusion matrix, per-class accuracy and the most confidently wrong images.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import unicodedata
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from omegaconf import MISSING

from tlx.errors import ConfigError, plural
from tlx.jsonfile import probe_writable, write_json_atomic
from tlx.predict import check_options, check_run_dir, load_run, parse_args, torch_device  # light: torch loads later
from tlx.results import print_table, read_results, summary_table
from tlx.sources import SPLITS, FileScan, read_rows

log = logging.getLogger("tlx.evaluate")  # not __main__ under python -m

EVALUATION = "evaluation.json"
KIND = "eval"  # eval_predictions.csv, gallery/eval_000123.png

USAGE = """\
usage: python -m tlx.evaluate run_dir=<run dir> inputs=<folder or labels .csv> [key=value ...]

Scores a trained run's model (its best checkpoint) on labelled images: accuracy, balanced accuracy, macro F1,
per-class accuracy and the confusion matrix, with a report of the most confidently wrong images.

options:
  run_dir=      a run directory, outputs/runs/<date_time> (required)
  inputs=       a folder with one subfolder per class, named as the run's classes (a subset of them is fine), or a
                .csv file with path,label columns (with a split column: its test rows) (required)
  out=          the folder to write to (default <run_dir>/eval/<date_time>)
  checkpoint=   best, last, or a .ckpt file (best)
  batch_size=   images per forward pass (64)
  num_workers=  image decoding processes (auto)
  device=       auto, cpu, cuda, cuda:1, ... (auto: cuda when there is one)
"""


@dataclass
class _Args:
    run_dir: str = MISSING
    inputs: str = MISSING
    out: str | None = None
    checkpoint: str = "best"
    batch_size: int = 64
    num_workers: Any = "auto"
    device: str = "auto"


def labelled_images(inputs: Path, scan: FileScan) -> tuple[list[Path], list[str]]:
    """The image files of ``inputs`` and their class names: a folder's class subfolders (images found below each,
    clutter left out as in training), or a label file's rows (its ``test`` rows when it has a ``split`` column)."""
    inputs = Path(inputs).expanduser()
    if not inputs.exists():
        raise ConfigError(f"inputs not found: {inputs}; set inputs=<a folder of class folders, or a labels .csv>")
    if inputs.is_file() and inputs.suffix.lower() == ".csv":
        rows = read_rows(inputs, scan)
        if any(split != "all" for _, _, _, split in rows):
            rows = [r for r in rows if r[3] == "test"]
            if not rows:
                raise ConfigError(
                    f"{inputs} has a split column but no test rows; mark the images to evaluate as test, or drop the "
                    "column to evaluate every row"
                )
        return [path for _, path, _, _ in rows], [label for _, _, label, _ in rows]
    if not inputs.is_dir():
        raise ConfigError(
            f"inputs={inputs} is a file; give a folder with one subfolder of images per class, or a .csv with "
            "path,label columns (tlx.predict takes single images)"
        )
    paths, names = [], []
    for class_dir in scan.subfolders(inputs):
        found = scan.images(class_dir)
        paths += found
        names += [class_dir.name] * len(found)
    return paths, names


def check_classes(names: list[str], classes: list[str], inputs: Path) -> list[int]:
    """The label index of every class name; a ConfigError for names that are not classes of the model."""
    names = [unicodedata.normalize("NFC", n) for n in names]  # as training named the classes (tlx.sources)
    index = {unicodedata.normalize("NFC", name): i for i, name in enumerate(classes)}
    unknown = sorted(set(names) - set(index))
    if unknown:
        hint = (
            f"point inputs= at one of its split folders, e.g. inputs={Path(inputs) / 'test'}"
            if {n.lower() for n in unknown} <= {*SPLITS, "valid", "validation"}
            else "remove them, or rename them to the model's class names"
        )
        raise ConfigError(
            f"{inputs} has images of {', '.join(repr(n) for n in unknown)}, which the model has no class for (its "
            f"classes: {', '.join(classes)}); {hint}"
        )
    if not names:
        raise ConfigError(f"no images in {inputs}; put one subfolder of images per class there")
    return [index[n] for n in names]


def scores(probs: Any, labels: Any, num_classes: int) -> dict[str, Any]:
    """The run's own metrics (``tlx.module``'s: accuracy, mean per-class recall, macro F1) of (N, K) probabilities
    against (N,) labels, over the classes that have images here: a subset of the model's classes is fine. Classes
    without images have no accuracy (None); torchmetrics' macro averages counted them as 0 where an image was
    predicted as one (bal_acc 0.30 for 2 classes of 4 at 0.60 each)."""
    import torch
    from torchmetrics.functional.classification import multiclass_confusion_matrix

    confusion = multiclass_confusion_matrix(probs, labels, num_classes).double()  # (K, K), rows: true class
    images, predicted, hits = confusion.sum(1), confusion.sum(0), confusion.diagonal()
    present = images > 0
    recall = hits / images.clamp(min=1)
    precision = hits / predicted.clamp(min=1)
    f1 = torch.where(hits > 0, 2 * precision * recall / (precision + recall).clamp(min=1e-12), 0.0)
    return {
        "metrics": {
            "acc": float(hits.sum() / images.sum()),
            "bal_acc": float(recall[present].mean()),
            "f1": float(f1[present].mean()),
        },
        "per_class": {
            "per_class_acc": [float(r) if p else None for r, p in zip(recall, present, strict=True)],
            "confusion": confusion.long().tolist(),
            "images": images.long().tolist(),
        },
    }


def evaluate(
    run_dir: Path,
    inputs: Path,
    out: Path | None = None,
    checkpoint: str = "best",
    batch_size: int = 64,
    num_workers: int | str = 0,
    device: str = "auto",
) -> tuple[dict[str, Any], Path]:
    """Score the run's model on the labelled images of ``inputs``; write ``evaluation.json``,
    ``eval_predictions.csv``, ``gallery/`` and ``report.html`` into ``out``. Returns the evaluation and ``out``."""
    start = time.perf_counter()
    check_options(device, num_workers, batch_size)
    run_dir = check_run_dir(run_dir)  # before the inputs are listed (and what is left out of them said)
    scan = FileScan()
    paths, names = labelled_images(inputs, scan)
    out = _out_dir(run_dir, out)
    model = load_run(run_dir, checkpoint)
    if not names and scan.skipped.get("not_in_a_class_folder"):
        raise ConfigError(
            f"{inputs} holds images but no class folders; put them in one subfolder per class, named as the model's "
            f"classes ({', '.join(model.classes)}), or label them with a .csv (tlx.predict takes unlabelled images)"
        )
    labels = check_classes(names, model.classes, inputs)
    import torch  # loaded by load_run

    device = torch_device(device)

    from tlx.data import FileSamples
    from tlx.predict import probabilities
    from tlx.run_report import write_predictions_table

    probs, samples, skipped = probabilities(model, FileSamples(paths, labels), batch_size, num_workers, device, inputs)
    run = read_results(run_dir) or {}
    evaluation = {
        "status": "ok",
        "run_dir": str(run_dir.resolve()),
        "checkpoint": str(model.checkpoint),
        "inputs": str(Path(inputs).expanduser().resolve()),
        "backbone": model.backbone,
        "classes": model.classes,
        "images": len(samples),
        **scores(probs, torch.tensor(samples.labels), len(model.classes)),
        "run_metrics": {k: v for k, v in (run.get("metrics") or {}).items() if "/" in k},
        "run_test_split": run.get("test_split", "test"),  # val: the run had no test split, its test/* are on val
        "skipped": {"unreadable": skipped, **dict(scan.skipped)},
    }
    left_out = scan.summary(inputs)
    if left_out:
        log.warning("%s", left_out)
    out.mkdir(parents=True, exist_ok=True)
    write_predictions_table(out, probs, samples, model.classes, kind=KIND)
    evaluation["seconds"] = round(time.perf_counter() - start, 3)
    write_json_atomic(out / EVALUATION, evaluation)
    write_evaluation_report(out)
    return evaluation, out


def _out_dir(run_dir: Path, out: Path | None) -> Path:
    """``out``, or ``<run_dir>/eval/<date_time>``; a folder that holds anything but an earlier evaluation is refused,
    so nothing of the user's is overwritten."""
    out = Path(out).expanduser() if out else run_dir / "eval" / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / EVALUATION).is_file())):
        raise ConfigError(f"out={out} exists and is not an earlier evaluation; choose another out= folder")
    existing = next(p for p in (out, *out.parents) if p.exists())  # out itself is made only once there are scores
    try:
        probe_writable(existing)  # found now, not after the images are scored
    except OSError as e:
        raise ConfigError(f"cannot write out={out} ({existing} is not a writable folder); choose another out=") from e
    return out


def write_evaluation_report(out: Path) -> Path:
    """``report.html`` in ``out``, built from ``evaluation.json``, ``eval_predictions.csv`` and ``gallery/``."""
    from tlx.page import page, section, table, write_page
    from tlx.run_report import REPORT, confusion_html, gallery_html, per_class_html

    ev = json.loads((out / EVALUATION).read_text())
    per_class = {KIND: ev["per_class"]}
    sections = [
        section("summary", "Summary", table(_summary_rows(ev))),
        section("confusion", "Confusion matrix", confusion_html(ev["classes"], per_class, [KIND])),
        section("per-class", "Per-class accuracy", per_class_html(ev["classes"], per_class, [KIND])),
        section("gallery", "Most confidently wrong images", gallery_html(out, KIND, "evaluated")),
    ]
    title = f"tlx evaluation: {ev['backbone']} on {Path(ev['inputs']).name}"
    return write_page(out / REPORT, page(title, ev["inputs"], sections))


def _summary_rows(ev: dict[str, Any]) -> list[list[str]]:
    m, run = ev["metrics"], ev["run_metrics"]
    shown = [k for k in ("val/acc", "test/acc") if k in run]
    on_val = " (on val)" if ev.get("run_test_split") == "val" else ""
    skipped = sum(len(v) if isinstance(v, list) else v for v in ev["skipped"].values())
    rows = [
        ["accuracy", f"{m['acc']:.4f}"],
        ["balanced accuracy", f"{m['bal_acc']:.4f} (mean per-class accuracy)"],
        ["macro F1", f"{m['f1']:.4f}"],
        ["images", f"{ev['images']} of {sum(n > 0 for n in ev['per_class']['images'])} classes"],
        ["the run's own scores", ", ".join(f"{k}{on_val * k.startswith('test')} {run[k]:.4f}" for k in shown) or "-"],
        ["model", f"{ev['backbone']}, {ev['checkpoint']}"],
        ["time", f"{ev['seconds']:.1f} s"],
    ]
    if skipped:
        rows.insert(
            4, ["left out", f"{plural(skipped, 'file')} (unreadable, not images, clutter); see evaluation.json"]
        )
    return rows


def print_evaluation(ev: dict[str, Any], out: Path) -> None:
    """The summary rows and each class's accuracy (the 10 worst of more than 20 classes), as a table."""
    table = summary_table(f"tlx.evaluate: {ev['backbone']} on {Path(ev['inputs']).name}")
    for key, value in _summary_rows(ev):
        if key not in ("model", "time"):  # on the page; the console shows the scores
            table.add_row(key, value)
    pc = ev["per_class"]
    present = [c for c, n in enumerate(pc["images"]) if n > 0]
    shown = present if len(present) <= 20 else sorted(present, key=lambda c: pc["per_class_acc"][c])[:10]
    for c in shown:
        table.add_row(
            f"  {ev['classes'][c]}",
            f"{pc['per_class_acc'][c]:.4f} ({pc['confusion'][c][c]} of {pc['images'][c]})",
        )
    if len(shown) < len(present):
        table.add_row("", f"(the 10 worst of {len(present)} classes; all in report.html)")
    table.add_row("report", str(out / "report.html"))
    print_table(table)


def main(argv: list[str] | None = None) -> None:
    """Command line: evaluate, write the files and print the scores."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("tlx.progress").setLevel(logging.INFO)  # where no bar is drawn: a line a minute on a long set
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv, _Args, USAGE)
        ev, out = evaluate(
            Path(args.run_dir),
            Path(args.inputs),
            Path(args.out) if args.out else None,
            args.checkpoint,
            args.batch_size,
            args.num_workers,
            args.device,
        )
    except ConfigError as e:
        print(f"tlx.evaluate: error: {e}", file=sys.stderr)
        sys.exit(2)
    print_evaluation(ev, out)


if __name__ == "__main__":
    main()
