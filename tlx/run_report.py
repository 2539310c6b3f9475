"""The run report: ``report.html`` in a run directory, written at the end of every run and rebuilt on demand with
``python -m tlx.report <run dir>``.

The page is built only from files the run wrote, so it can be rebuilt later: the summary, confusion matrices and
per-class accuracy from ``results.json``, the training curves from ``logs/metrics.csv``, and the gallery of the
validation images the tested checkpoint got most confidently wrong from ``val_predictions.csv`` (one row per image of
``files.json``'s val list) with the thumbnails in ``gallery/``. The run writes those thumbnails itself because not
every image id is a file it could reload (Fashion-MNIST ids are ``train:123``).
"""

from __future__ import annotations

import csv
import logging
import shutil
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from PIL import Image

from tlx.data import ImageData, Samples
from tlx.errors import ConfigError, plural
from tlx.module import TransferModule
from tlx.page import esc, figure_png, image_png, img_tag, page, section, table, write_page
from tlx.results import read_results, resume_command, what_trains

log = logging.getLogger(__name__)

REPORT = "report.html"
PREDICTIONS_SUFFIX = "predictions.csv"
PREDICTIONS = f"val_{PREDICTIONS_SUFFIX}"
GALLERY = "gallery"
GALLERY_SIZE = 24
THUMBNAIL_PX = 160
TOP_K = 3


def save_run_report(
    out_dir: Path, module: TransferModule, data: ImageData, device: torch.device, html: bool = True
) -> Path | None:
    """End of a run: the tested checkpoint's validation predictions, the gallery thumbnails and ``report.html``
    (unless ``html`` is false).

    Never raises: the run's results are already saved, so a failure here is logged as a warning.
    """
    try:
        probs = predict_val(module, data, device)
        write_predictions_table(out_dir, probs, data.samples["val"], data.classes)
        if not html:
            return None
        path = write_run_report(out_dir)
    except Exception as e:  # a broken report must not fail a finished run
        log.warning(
            "could not write the run report (%s: %s); retry with: python -m tlx.report %s", type(e).__name__, e, out_dir
        )
        return None
    log.info("run report: %s", path)
    return path


def predict_val(module: TransferModule, data: ImageData, device: torch.device) -> torch.Tensor:
    """Class probabilities (N, K) of every validation image, in the order of ``files.json``'s val list.

    One pass over the validation loader (cached features when the run used them), with the weights the module holds
    (after ``trainer.test(ckpt_path="best")``: the tested checkpoint's).
    """
    module.eval().to(device)
    dtype = next(module.parameters()).dtype  # bf16/16 with trainer.precision=*-true
    out = []
    with torch.inference_mode():
        for x, _ in data.val_dataloader():  # unshuffled
            out.append(module(x.to(device, dtype)).float().softmax(dim=1).cpu())  # (B, K)
    return torch.cat(out)


def write_predictions_table(
    out_dir: Path, probs: torch.Tensor, samples: Samples, classes: list[str], kind: str = "val"
) -> Path:
    """Write ``<kind>_predictions.csv`` (``id, true, predicted, probability, true_probability, label_1, prob_1,
    ...``; ``val_predictions.csv`` in a run directory) and thumbnails of the most confidently wrong images into
    ``gallery/``.

    Args:
        out_dir: where to write.
        probs: (N, K) class probabilities of ``samples``, in their order.
        samples: the labelled images.
        classes: class names, in label order.
        kind: which images these are (``val``: a run's validation images; ``eval``: ``tlx.evaluate``'s).
    """
    out_dir = Path(out_dir)
    k = min(TOP_K, len(classes))
    top = probs.topk(k, dim=1)
    rows = []
    for i, (values, indices) in enumerate(zip(top.values.tolist(), top.indices.tolist(), strict=True)):
        true = samples.labels[i]
        row = {
            "id": samples.ids[i],
            "true": classes[true],
            "predicted": classes[indices[0]],
            "probability": round(values[0], 6),
            "true_probability": round(float(probs[i, true]), 6),
        }
        for j in range(k):
            row[f"label_{j + 1}"], row[f"prob_{j + 1}"] = classes[indices[j]], round(values[j], 6)
        rows.append(row)
    path = out_dir / f"{kind}_{PREDICTIONS_SUFFIX}"
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)

    gallery = out_dir / GALLERY
    shutil.rmtree(gallery, ignore_errors=True)  # thumbnails of an earlier attempt in this directory
    gallery.mkdir()
    for i, _ in most_confident_mistakes(rows):
        img = samples.load(i, draft=2 * THUMBNAIL_PX)
        img.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
        img.save(gallery / _thumbnail_name(i, kind))
    return path


def most_confident_mistakes(rows: list[dict[str, Any]], n: int = GALLERY_SIZE) -> list[tuple[int, dict[str, Any]]]:
    """The ``n`` wrongly predicted rows with the highest predicted probability, as (val index, row)."""
    wrong = [(i, r) for i, r in enumerate(rows) if r["true"] != r["predicted"]]
    return sorted(wrong, key=lambda ir: -float(ir[1]["probability"]))[:n]


def read_metrics(path: Path) -> dict[str, dict[int, float]]:
    """Per-epoch values of every metric in Lightning's ``metrics.csv`` (the last value logged for an epoch wins, so a
    resumed run's repeated epochs count once)."""
    history: dict[str, dict[int, float]] = defaultdict(dict)
    if not Path(path).is_file():
        return {}
    with Path(path).open(newline="") as f:
        for row in csv.DictReader(f):
            if not row.get("epoch"):
                continue
            for key, value in row.items():
                if key not in ("epoch", "step") and value not in ("", None):
                    history[key][int(row["epoch"])] = float(value)
    return dict(history)


def write_run_report(run_dir: Path) -> Path:
    """Build ``report.html`` in ``run_dir`` from the files the run wrote; returns its path."""
    run_dir = Path(run_dir)
    results = read_results(run_dir)
    if results is None:
        raise ConfigError(f"{run_dir} has no readable results.json; give the directory of a tlx run")
    status = results.get("status", "unknown")
    history = read_metrics(run_dir / "logs" / "metrics.csv")
    per_class = results.get("per_class", {})
    classes = per_class.get("classes") or results.get("data", {}).get("classes") or []
    if results.get("backbone"):
        title = f"tlx run: {results['backbone']} / {what_trains(results)}"
    else:
        title = f"tlx run ({status})"
    sections = [
        section("summary", "Summary", table(_summary_rows(run_dir, results))),
        section("curves", "Training curves", _curves_html(history, results)),
    ]
    if results.get("auto"):
        sections.insert(1, section("auto", "What auto tried", _auto_html(results["auto"])))
    probe = next((st for st in results.get("stages", []) if st.get("stage") == "probe"), None)
    if probe:
        sections.append(section("probe", "Linear probe: learning rate and weight decay", _probe_html(probe)))
    if status == "ok":
        # the tested checkpoint's validation epoch, and test (the same split, val, for a run without a test split)
        splits = list(dict.fromkeys(("val", results.get("test_split", "test"))))
        sections += [
            section("confusion", "Confusion matrix", confusion_html(classes, per_class, splits)),
            section("per-class", "Per-class accuracy", per_class_html(classes, per_class, splits)),
            section("gallery", "Most confidently wrong validation images", gallery_html(run_dir)),
        ]
    return write_page(run_dir / REPORT, page(title, str(run_dir.resolve()), sections))


def _summary_rows(run_dir: Path, results: dict[str, Any]) -> list[list[str]]:
    status = results.get("status", "unknown")
    rows = [["status", status]]
    if status == "interrupted":
        best = results.get("best_so_far", {})
        rows += [["epochs done", results.get("epochs_done", "?")]]
        rows += [[f"{k} (best so far)", _fmt(v)] for k, v in best.items() if k.startswith("val/")]
        rows += [["resume with", results.get("resume") or resume_command(run_dir)]]
        return rows
    if status != "ok":
        return rows + [["error", results.get("error") or "no error recorded"]]
    on_val = " (on val: no test split)" if results.get("test_split") == "val" else ""
    m = results["metrics"]
    rows += [
        [k + (on_val if k.startswith("test") else ""), _fmt(m[k])]
        for k in ("val/acc", "val/f1", "test/acc", "test/f1")
        if k in m
    ]
    d, p, t, cache = results["data"], results["params"], results["timing"], results["cache"]
    rows += [
        [
            "best epoch",
            f"{results.get('best_epoch')} of epochs 0-{int(results.get('epochs') or 1) - 1} (its checkpoint is tested)"
            if results.get("best_epoch") is not None or len(results.get("stages", [])) < 2
            else "none: no fine-tuning epoch beat stage 1, the probe's head (tested)",
        ],
        [
            "data",
            f"{d.get('train', 0)} train, {d.get('val', 0)} val, {d.get('test', 0)} test images, "
            f"{d['num_classes']} classes"
            + (f", {plural(d['bad_images'], 'file')} skipped" if d.get("bad_images") else ""),
        ],
        ["parameters", f"{p['trainable']:,} trainable / {p['total']:,} total"],
        ["model", f"{results['backbone']}, {results['head']}, freeze {results['freeze']}"],
        ["weights", results.get("weights", "")],
        [
            "feature cache",
            f"used, cut at {cache['cut']} ({cache['hits']} hits, {cache['misses']} extracted)"
            if cache.get("used")
            else "not used",
        ],
        ["time", _time_row(t, auto="auto" in results)],
        ["seed", results.get("seed", "")],
    ]
    return rows


def _time_row(t: dict[str, Any], auto: bool) -> str:
    """Wall time and its parts; an auto run's total is the whole search, its parts are the winner's own run."""
    parts = f"extract {t['extract_s']:.1f} s, fit {t['fit_s']:.1f} s, test {t['test_s']:.1f} s"
    if auto and t.get("winner_s") is not None:
        row = f"{t['total_s']:.1f} s for the search; the winner's own run in it: {t['winner_s']:.1f} s ({parts})"
    else:
        row = f"{t['total_s']:.1f} s ({parts})"
    row += f" on {t['device']}" if t.get("device") else ""  # (older runs did not record it)
    return row + (", since the resume" if t.get("resumed") else "")


def _auto_html(auto: dict[str, Any]) -> str:
    rows = [
        [
            c["strategy"] + (" (winner)" if c["strategy"] == auto["winner"] else ""),
            c["status"],
            *("" if c.get(k) is None else _fmt(c[k]) for k in ("val/acc", "test/acc")),  # (a stopped one: no test)
            f"{c['seconds']:.1f}" if c.get("seconds") is not None else "",
            c.get("why", ""),
        ]
        for c in auto["candidates"]
    ]
    header = ["candidate", "status", "val/acc", "test/acc", "seconds", "how far it got"]
    return f"<p>{esc(auto['reason'])}</p>" + table(rows, header, numeric={2, 3, 4})


def _probe_html(probe: dict[str, Any]) -> str:
    rows = [
        [_fmt(r["lr"]), _fmt(r["weight_decay"]), r["epoch"], _fmt(r["val/acc"]), _fmt(r["val/loss"])]
        for r in probe.get("table", [])
    ]
    note = (
        "<p>Every (lr, weight decay) pair trained at once on the cached features; each kept its epoch of lowest "
        f"validation loss, and the lowest wins: lr {probe.get('lr')}, weight decay {probe.get('weight_decay')} "
        f"({probe.get('seconds', 0):.2f} s for all of them).</p>"
    )
    return note + table(rows, ["lr", "weight decay", "best epoch", "val/acc", "val/loss"], numeric={0, 1, 2, 3, 4})


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else "n/a" if value is None else str(value)


def _curves_html(history: dict[str, dict[int, float]], results: dict[str, Any]) -> str:
    if not any(k in history for k in ("train/loss", "val/loss", "train/acc", "val/acc")):
        return '<p class="note">No per-epoch metrics (logs/metrics.csv is missing or empty).</p>'
    best = results.get("best_epoch", results.get("best_so_far", {}).get("epoch"))
    fig = Figure(figsize=(10.4, 3.6), layout="constrained")
    for ax, (name, label) in zip(
        fig.subplots(1, 2), (("loss", "cross-entropy loss"), ("acc", "accuracy")), strict=True
    ):
        for stage, color in (("train", "#1f77b4"), ("val", "#d62728")):
            series = history.get(f"{stage}/{name}", {})
            if series:
                epochs = sorted(series)
                ax.plot(
                    epochs,
                    [series[e] for e in epochs],
                    color=color,
                    label=stage,
                    marker="o" if len(epochs) <= 40 else None,
                    markersize=3,
                )
        if best is not None:
            ax.axvline(best, color="#57606a", linestyle="--", linewidth=1, label=f"best epoch ({best})")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.set_title(f"{label.capitalize()}, train and val")
        ax.grid(True, alpha=0.3)
        ax.legend()
    return img_tag(figure_png(fig), "loss and accuracy per epoch", "curves-figure")


def confusion_html(classes: list[str], per_class: dict[str, Any], splits: list[str]) -> str:
    """Heatmaps of ``per_class[split]["confusion"]`` (rows: true class) side by side, one per split that has one."""
    splits = [s for s in splits if per_class.get(s, {}).get("confusion")]
    if not classes or not splits:
        return '<p class="note">No confusion matrix in results.json.</p>'
    k = len(classes)
    n = len(splits)
    stacked = k > 16  # many classes: one heatmap under the other, each as wide as the page
    if stacked:
        panel = 0.24 * k  # inches per heatmap side
        fig = Figure(figsize=(panel + 2.6, n * (panel + 1.6)), layout="constrained")
        axes = fig.subplots(n, 1, squeeze=False)[:, 0]
    else:
        panel = min((10.4 - 1.2) / n, max(3.5, 0.45 * k + 2.0))
        fig = Figure(figsize=(n * panel + 1.2, panel + 0.6), layout="constrained")
        axes = fig.subplots(1, n, squeeze=False)[0]
    image = None
    for ax, split in zip(axes, splits, strict=True):
        counts = np.asarray(per_class[split]["confusion"], dtype=float)  # (K, K), rows: true class
        fraction = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
        image = ax.imshow(fraction, cmap="Blues", vmin=0.0, vmax=1.0)
        ax.set_xticks(
            range(k),
            classes,
            rotation=40 if k > 3 else 0,
            ha="right" if k > 3 else "center",
            fontsize=7 if stacked else 9,
        )
        ax.set_yticks(range(k), classes, fontsize=7 if stacked else 9)
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        ax.set_title(f"{split}: {int(counts.sum())} images")
        if not stacked:  # counts written in the cells while they stay readable
            for (r, c), count in np.ndenumerate(counts):
                ax.text(
                    c,
                    r,
                    f"{int(count)}",
                    ha="center",
                    va="center",
                    fontsize=9,
                    color="white" if fraction[r, c] > 0.55 else "#1f2328",
                )
    fig.colorbar(image, ax=list(axes), shrink=0.8, label="fraction of the true class")
    note = (
        f'<p class="note">Rows: true class; colour: share of the row{"" if stacked else "; numbers: image counts"}.</p>'
    )
    return img_tag(figure_png(fig), "confusion matrices", "confusion-figure") + note


def per_class_html(classes: list[str], per_class: dict[str, Any], splits: list[str]) -> str:
    """Bars and a table of ``per_class[split]["per_class_acc"]`` with each class's image count, per split."""
    splits = [s for s in splits if per_class.get(s, {}).get("per_class_acc")]
    if not classes or not splits:
        return '<p class="note">No per-class accuracy in results.json.</p>'
    k = len(classes)
    fig = Figure(figsize=(10.4, max(2.4, 0.22 * k * len(splits) + 1.2)), layout="constrained")
    ax = fig.subplots()
    y = np.arange(k)
    height = 0.8 / len(splits)
    for j, (split, color) in enumerate(zip(splits, ("#d62728", "#2da44e"), strict=False)):
        acc = per_class[split]["per_class_acc"]  # None: no images of the class in this split
        bars = ax.barh(y - 0.4 + height * (j + 0.5), [a or 0 for a in acc], height=height, color=color, label=split)
        ax.bar_label(bars, labels=["no images" if a is None else f"{a:.2f}" for a in acc], padding=3, fontsize=8)
    ax.set_yticks(y, classes)
    ax.set_ylim(k - 0.5, -0.5)  # first class on top, no empty margin
    ax.set_xlim(0, 1.1)
    ax.set_xlabel("accuracy")
    ax.grid(True, axis="x", alpha=0.3)
    ax.legend(loc="lower right")
    header = ["class"] + [f"{s} {c}" for s in splits for c in ("accuracy", "images")]
    rows = [
        [name]
        + [
            v
            for s in splits
            for v in (_fmt(per_class[s]["per_class_acc"][c]), int(sum(per_class[s].get("confusion", [[]] * k)[c])))
        ]
        for c, name in enumerate(classes)
    ]
    numeric = set(range(1, len(header)))
    return img_tag(figure_png(fig), "per-class accuracy", "per-class-figure") + table(rows, header, numeric)


def gallery_html(run_dir: Path, kind: str = "val", noun: str = "validation") -> str:
    """The most confidently wrong of the images in ``<kind>_predictions.csv`` (``noun`` images), with thumbnails."""
    name = f"{kind}_{PREDICTIONS_SUFFIX}"
    path = run_dir / name
    if not path.is_file():
        return f'<p class="note warn">No {name} in the directory: no gallery.</p>'
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    mistakes = most_confident_mistakes(rows)
    n_wrong = sum(r["true"] != r["predicted"] for r in rows)
    if not mistakes:
        return f'<p class="note">The model got all {len(rows)} {noun} images right.</p>'
    cards = []
    for i, r in mistakes:
        png = _thumbnail(run_dir, i, r["id"], kind)
        image = (
            img_tag(png, f"{noun} image {r['id']}", css_class="thumb")
            if png
            else ('<div class="note">image not available</div>')
        )
        cards.append(
            f'<div class="card">{image}<div>true: <b>{esc(r["true"])}</b></div>'
            f'<div class="wrong">predicted: {esc(r["predicted"])}</div>'
            f"<div>probability {float(r['probability']):.3f} (true class {float(r['true_probability']):.3f})</div>"
            f'<div class="id">{esc(_short_id(r["id"]))}</div></div>'
        )
    note = (
        f'<p class="note">{n_wrong} of {len(rows)} {noun} images are wrong with the tested checkpoint; the '
        f"{len(mistakes)} with the highest predicted probability, most confident first (all predictions: "
        f"{name}).</p>"
    )
    return note + f'<div class="gallery">{"".join(cards)}</div>'


def _thumbnail_name(index: int, kind: str) -> str:
    return f"{kind}_{index:06d}.png"


def _thumbnail(run_dir: Path, index: int, image_id: str, kind: str) -> bytes | None:
    """The thumbnail the run wrote, else the image file itself when the id is one, else None."""
    saved = run_dir / GALLERY / _thumbnail_name(index, kind)
    if saved.is_file():
        return saved.read_bytes()
    if Path(image_id).is_file():
        try:
            with Image.open(image_id) as img:
                img = img.convert("RGB")
                img.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
                return image_png(img)
        except OSError:
            return None
    return None


def _short_id(image_id: str) -> str:
    parts = Path(image_id).parts
    return "/".join(parts[-2:]) if len(parts) > 1 else image_id
