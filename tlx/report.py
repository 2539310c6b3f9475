"""The sweep report: ``python -m tlx.report <multirun dir> [--metric test/acc]``, and automatically after a sweep.

Reads every job's ``results.json`` and ``.hydra/config.yaml`` under the multirun directory and writes there
``report.md`` (rows = samples per class, columns = strategy, cells = mean +- std over seeds, best per row marked),
``report.csv`` (one row per cell), ``report.png`` (the metric against samples per class, one line per strategy) and
``report.html`` (the table and the plot in one self-contained page). An Optuna search (``hparams_search=``, its study
in ``<sweep dir>/optuna.db``) gets a table of trials instead.

``python -m tlx.report <run dir>`` (a directory with ``results.json`` at its top) rebuilds that run's ``report.html``
instead (:mod:`tlx.run_report`).
"""

from __future__ import annotations

import argparse
import csv
import logging
import math
import re
import statistics
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from matplotlib.figure import Figure
from matplotlib.ticker import NullLocator
from omegaconf import DictConfig, OmegaConf

from tlx.errors import ConfigError, plural
from tlx.page import esc, figure_png, img_tag, link, page, section, table, write_page
from tlx.results import RESULTS, read_results

log = logging.getLogger("tlx.report")  # (not __main__ under python -m tlx.report)

_CSV_FIELDS = "samples_per_class strategy metric mean std n n_failed best trainable_params wall_s_mean".split()


@dataclass
class Job:
    """One sweep job as the report sees it."""

    path: str
    samples_per_class: int | None
    fraction: float | None
    strategy: str
    overrides: list[str]
    status: str
    value: float | None = None
    trainable: int | None = None
    wall_s: float | None = None
    train_per_class: float | None = None
    error: str | None = None
    on_val: bool = False  # a test/ metric of a job without a test split: measured on its validation images


@dataclass
class Cell:
    """The jobs of one (row, strategy) pair, summarised over seeds. A row is a data size, and the other swept
    settings when there are any (``variant``: ``backbone.name=resnet18``)."""

    regime: str
    strategy: str
    jobs: list[Job] = field(default_factory=list)
    x: float = math.nan  # samples per class, for the plot
    best: bool = False
    variant: str = ""

    @property
    def values(self) -> list[float]:
        return [float(j.value) for j in self.jobs if j.status == "ok"]

    @property
    def failed(self) -> int:
        return sum(j.status != "ok" for j in self.jobs)

    @property
    def trainable(self) -> list[int]:
        return [j.trainable for j in self.jobs if j.status == "ok" and j.trainable is not None]

    @property
    def wall_s(self) -> list[float]:
        return [j.wall_s for j in self.jobs if j.status == "ok" and j.wall_s is not None]

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.values) if self.values else None

    @property
    def std(self) -> float | None:
        return statistics.stdev(self.values) if len(self.values) > 1 else None

    @property
    def mean_wall_s(self) -> float | None:
        return statistics.fmean(self.wall_s) if self.wall_s else None

    @property
    def mixed(self) -> list[str]:
        """Overrides other than the seeds that differ between the pooled jobs (they should not be averaged)."""
        variants = [{o for o in j.overrides if not _is_seed(_key(o))} for j in self.jobs]
        return sorted(set.union(*variants) - set.intersection(*variants)) if variants else []


# Overrides that are the table's own axes (rows: data size; columns: what trains), or replicates that cells average
# over (seeds); any other setting that varies between the jobs (backbone.name, optim.lr) splits the rows.
_AXES = ("strategy", "freeze", "head", "lp_ft", "auto", "experiment", "hydra")
_AXES += ("data.samples_per_class", "data.fraction")


def _key(override: str) -> str:
    return override.lstrip("+~").split("=", 1)[0]


def _is_seed(key: str) -> bool:
    return key == "seed" or key.endswith(".seed") or key.endswith("_seed")


def _variants(jobs: list[Job]) -> dict[str, str]:
    """Each job's path -> the swept settings that are no axis of the table and differ between jobs, as
    ``key=value`` text ('' when every job has the same)."""
    settings = [{_key(o): o.lstrip("+~") for o in j.overrides} for j in jobs]
    keys = {k for s in settings for k in s}
    varying = sorted(
        k
        for k in keys
        if not _is_seed(k)
        and not any(k == a or k.startswith(a + ".") for a in _AXES)
        and len({s.get(k) for s in settings}) > 1
    )
    return {j.path: ", ".join(s[k] for k in varying if k in s) for j, s in zip(jobs, settings, strict=True)}


def strategy_label(cfg: DictConfig) -> str:
    """A short name for what trains, from ``freeze`` and ``head``: head_only, last_n(2), reinit_last(1), full."""
    if OmegaConf.select(cfg, "auto") is not None:
        return "auto"
    if OmegaConf.select(cfg, "lp_ft.enabled", default=False):
        return "lp_ft+" + strategy_label(OmegaConf.merge(cfg, {"lp_ft": {"enabled": False}}))
    mode = OmegaConf.select(cfg, "freeze.mode")
    head = str(OmegaConf.select(cfg, "head._target_", default="")).rsplit(".", 1)[-1]
    frozen = {"head_only": "head_only", "none": "full"}.get(mode, f"{mode}({OmegaConf.select(cfg, 'freeze.n')})")
    if head == "ReinitLastHead":
        reinit = f"reinit_last({OmegaConf.select(cfg, 'head.n')})"
        return reinit if mode == "head_only" else f"{reinit}+{frozen}"
    return frozen if head in ("LinearHead", "") else f"{frozen}+{head.removesuffix('Head').lower()}"


def collect_jobs(sweep_dir: Path, metric: str = "test/acc") -> list[Job]:
    """Every job under ``sweep_dir`` (any depth): those with a results.json and those that never wrote one."""
    sweep_dir = Path(sweep_dir)
    configs = sweep_dir.rglob(".hydra/config.yaml")
    dirs = {p.parent for p in sweep_dir.rglob(RESULTS)} | {p.parent.parent for p in configs}
    dirs = {d for d in dirs if not any(parent in dirs for parent in d.parents)}  # not an auto job's candidates
    jobs = []
    for d in sorted(dirs):
        if not (d / ".hydra" / "config.yaml").is_file():
            log.warning("skipping %s: no .hydra/config.yaml beside results.json", d)
            continue
        cfg = OmegaConf.load(d / ".hydra" / "config.yaml")
        overrides_file = d / ".hydra" / "overrides.yaml"
        job = Job(
            path=str(d.relative_to(sweep_dir)),
            samples_per_class=OmegaConf.select(cfg, "data.samples_per_class"),
            fraction=OmegaConf.select(cfg, "data.fraction"),
            strategy=strategy_label(cfg),
            overrides=list(OmegaConf.load(overrides_file)) if overrides_file.is_file() else [],
            status="incomplete",
            error="no results.json (the job was killed, or is still running)",
        )
        results = read_results(d)
        if results is not None:
            job.status, job.error = results.get("status", "unknown"), results.get("error")
            if job.status in ("interrupted", "preempted") and not job.error:
                job.error = "stopped before the end; the sweep's command again resumes it from its last.ckpt"
        if job.status == "ok":
            job.value = results.get("metrics", {}).get(metric)
            job.on_val = metric.startswith("test/") and results.get("test_split") == "val"
            job.trainable = results.get("params", {}).get("trainable")
            job.wall_s = results.get("timing", {}).get("total_s")
            counts = results.get("data", {})
            if counts.get("train") and counts.get("num_classes"):
                job.train_per_class = counts["train"] / counts["num_classes"]
            if job.value is None:
                job.status, job.error = "failed", f"no {metric} in results.json"
        jobs.append(job)
    return jobs


def summarize(
    jobs: list[Job], lower_is_better: bool = False
) -> tuple[list[str], list[str], dict[tuple[str, str], Cell]]:
    """Group jobs into cells; returns the row labels (by other swept settings, then data size), column labels (by
    trainable parameters) and the cells keyed by (row, column), with the best cell of each row marked."""
    cells: dict[tuple[str, str], Cell] = {}
    variants = _variants(jobs)
    row_of = {j.path: _regime(j) + (f" · {variants[j.path]}" if variants[j.path] else "") for j in jobs}
    for job in jobs:
        row = row_of[job.path]
        cells.setdefault((row, job.strategy), Cell(row, job.strategy, variant=variants[job.path])).jobs.append(job)
    # x of a row: the samples per class asked for, else the training images per class the jobs actually had.
    for regime in {c.regime for c in cells.values()}:
        row_jobs = [j for j in jobs if row_of[j.path] == regime]
        asked = row_jobs[0].samples_per_class
        had = [j.train_per_class for j in row_jobs if j.train_per_class]
        x = float(asked) if asked is not None else (statistics.median(had) if had else math.nan)
        for cell in cells.values():
            if cell.regime == regime:
                cell.x = x
    rows = sorted({c.regime for c in cells.values()}, key=lambda r: _row_key(cells, r))
    params = {s: [p for c in cells.values() if c.strategy == s for p in c.trainable] for _, s in cells}
    # Fewest trainable parameters first; auto (whose winner varies by row) last, and never marked best: the star is
    # the best fixed strategy of the row, the one auto is measured against.
    columns = sorted(
        params, key=lambda s: (s == "auto", not params[s], statistics.median(params[s]) if params[s] else 0, s)
    )
    for row in rows:
        # in column order, so that a tie goes to the cheaper strategy (as auto's does)
        scored = [c for s in columns if (c := cells.get((row, s))) is not None and c.values and s != "auto"]
        if scored:
            pick = min if lower_is_better else max
            pick(scored, key=lambda c: c.mean).best = True
    return rows, columns, cells


def write_report(sweep_dir: Path, metric: str = "test/acc", jobs: list[Job] | None = None) -> dict[str, Path]:
    """Write report.md, report.csv, report.png and report.html into ``sweep_dir``; returns their paths.

    ``jobs``: the sweep's jobs when the caller has read them already (:func:`collect_jobs`).
    """
    sweep_dir = Path(sweep_dir)
    jobs = collect_jobs(sweep_dir, metric) if jobs is None else jobs
    lower_is_better = "loss" in metric
    on_val = [j for j in jobs if j.on_val]
    if on_val:  # (it read as a test score, of images that had chosen the epochs and the probe's setting)
        where = "no test split" if len(on_val) == sum(j.status == "ok" for j in jobs) else "jobs without a test split"
        metric = f"{metric} (on val: {where})"
    rows, columns, cells = summarize(jobs, lower_is_better)
    paths = {ext: sweep_dir / f"report.{ext}" for ext in ("md", "csv", "png", "html")}
    paths["md"].write_text(_markdown(sweep_dir, jobs, rows, columns, cells, metric, lower_is_better))
    _write_csv(paths["csv"], rows, columns, cells, metric)
    png = figure_png(_plot(rows, columns, cells, metric), dpi=120)
    paths["png"].write_bytes(png)
    write_page(paths["html"], _html(sweep_dir, jobs, rows, columns, cells, metric, lower_is_better, png))
    for c in cells.values():
        if c.mixed:
            log.warning("the cell %s / %s averages jobs with different settings: %s", c.regime, c.strategy, c.mixed)
    n_ok = sum(j.status == "ok" for j in jobs)
    log.info("sweep report for %d jobs (%d ok, %d failed): %s", len(jobs), n_ok, len(jobs) - n_ok, paths["md"])
    return paths


class SweepReport(Callback):
    """Hydra callback: write the report into the sweep directory when a multirun ends. A broken report never fails
    the sweep; failed jobs do, after the report: the command exits 1 with one line, as a script running it expects.

    Args:
        metric: the results.json metric to compare, e.g. ``test/acc`` or ``val/f1``.
    """

    def __init__(self, metric: str = "test/acc") -> None:
        self.metric = metric

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        jobs: list[Job] = []
        try:
            jobs = collect_jobs(sweep_dir, self.metric)
            write_report(sweep_dir, self.metric, jobs)
        except Exception:  # the jobs' results are already on disk; a broken report must not turn the sweep red
            log.exception("could not write the sweep report; retry with: python -m tlx.report %s", sweep_dir)
        if all(j.status == "ok" for j in jobs):
            return
        from tlx.sweeps import job_configs, job_dir

        # This command's jobs: a fixed sweep dir also holds the folders of earlier commands' jobs (a job that failed
        # on a value since corrected), which the report lists but which do not fail this command. (Composed only
        # here, where some job did not finish: a sweep of many jobs takes a while to compose.)
        known = job_configs(config)
        mine = None if known is None else {job_dir(config, job) for job in known}
        ran = [j for j in jobs if mine is None or sweep_dir / j.path in mine]
        earlier = [j for j in jobs if j not in ran and j.status != "ok"]
        if earlier:
            log.warning(
                "report.md also lists %d unfinished job(s) of earlier commands in %s (%s); delete their folders to "
                "leave them out", len(earlier), sweep_dir, ", ".join(j.path for j in earlier[:3]),
            )  # fmt: skip
        failed = sum(j.status != "ok" for j in ran)
        if failed:
            # A sweep dir named by the time is new for every command: the same command alone would run all again.
            again = "the same command again"
            if "${now:" in str(OmegaConf.to_container(config.hydra.sweep, resolve=False).get("dir")):
                again += f" with hydra.sweep.dir={sweep_dir}"
            print(f"tlx: error: {failed} of {len(ran)} sweep jobs did not finish (report.md in {sweep_dir} says "
                  f"why); fix that and run {again}: it re-runs only those", file=sys.stderr)  # fmt: skip
            raise SystemExit(1)  # not an Exception: Hydra's callback runner lets it end the process


def _regime(job: Job) -> str:
    if job.samples_per_class is not None:
        return str(job.samples_per_class)
    return f"fraction {job.fraction:g}" if job.fraction is not None else "all"


def _row_cell(cells: dict[tuple[str, str], Cell], row: str) -> Cell:
    """A cell of ``row`` (they share its data size and setting)."""
    return next(c for (r, _), c in cells.items() if r == row)


def _row_key(cells: dict[tuple[str, str], Cell], row: str) -> tuple[str, bool, float, str]:
    cell = _row_cell(cells, row)
    return cell.variant, math.isnan(cell.x), 0.0 if math.isnan(cell.x) else cell.x, row  # by setting, then size


def _cell_text(cell: Cell | None, markdown: bool = True) -> str:
    if cell is None:
        return ""
    if not cell.values:
        return f"failed ({cell.failed})"
    text = f"{cell.mean:.4f}" + (f" ± {cell.std:.4f}" if cell.std is not None else "")
    text = (f"**{text}** ★" if markdown else f"{text} ★") if cell.best else text
    return text + f" (n={len(cell.values)}" + (f", {cell.failed} failed)" if cell.failed else ")")


def _params_text(cells: dict[tuple[str, str], Cell], columns: list[str]) -> list[str]:
    """Trainable parameters per strategy column: one number, or the range when the jobs differ."""
    params = [sorted({p for c in cells.values() if c.strategy == s for p in c.trainable}) for s in columns]
    return ["" if not p else f"{p[0]:,}" if len(p) == 1 else f"{p[0]:,}–{p[-1]:,}" for p in params]


def _markdown(
    sweep_dir: Path,
    jobs: list[Job],
    rows: list[str],
    columns: list[str],
    cells: dict[tuple[str, str], Cell],
    metric: str,
    lower_is_better: bool,
) -> str:
    n_ok = sum(j.status == "ok" for j in jobs)
    total_s = sum(j.wall_s or 0.0 for j in jobs)
    lines = [
        f"# Sweep report: {metric}",
        "",
        f"`{sweep_dir}`: {len(jobs)} jobs, {n_ok} ok, {len(jobs) - n_ok} failed; {_job_time(total_s)} of job time.",
        f"Cells: mean ± std of {metric} over seeds (n = finished seeds); ★ = best strategy of the row "
        f"({'lowest' if lower_is_better else 'highest'} mean). Columns go from fewest to most trainable parameters.",
        "",
        "| samples per class | " + " | ".join(columns) + " |",
        "| ---: |" + " :---: |" * len(columns),
    ]
    lines += [f"| {row} | " + " | ".join(_cell_text(cells.get((row, s))) for s in columns) + " |" for row in rows]
    lines.append("| trainable params | " + " | ".join(_params_text(cells, columns)) + " |")
    lines += [
        "",
        "## Mean wall time per job (s)",
        "",
        "| samples per class | " + " | ".join(columns) + " |",
        "| ---: |" + " ---: |" * len(columns),
    ]
    for row in rows:
        times = [cells.get((row, s)) for s in columns]
        lines.append(
            f"| {row} | "
            + " | ".join(f"{c.mean_wall_s:.1f}" if c is not None and c.wall_s else "" for c in times)
            + " |"
        )
    mixed = [c for c in cells.values() if c.mixed]
    if mixed:
        lines += ["", "## Warning: cells that average different settings", ""]
        lines += [f"- {c.regime} / {c.strategy}: {', '.join(c.mixed)}" for c in mixed]
    failed = [j for j in jobs if j.status != "ok"]
    if failed:
        lines += ["", "## Failed jobs", ""]
        lines += [f"- `{j.path}` ({j.status}): {j.error or 'no error recorded'}" for j in failed]
    return "\n".join(lines) + "\n"


def _write_csv(
    path: Path, rows: list[str], columns: list[str], cells: dict[tuple[str, str], Cell], metric: str
) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, _CSV_FIELDS)
        writer.writeheader()
        for c in (cells[row, s] for row in rows for s in columns if (row, s) in cells):
            writer.writerow(
                dict(
                    samples_per_class=c.regime,
                    strategy=c.strategy,
                    metric=metric,
                    mean=_blank(c.mean),
                    std=_blank(c.std),
                    n=len(c.values),
                    n_failed=c.failed,
                    best=c.best,
                    trainable_params=c.trainable[0] if c.trainable else "",
                    wall_s_mean=_blank(c.mean_wall_s, 2),
                )
            )


def _job_time(seconds: float) -> str:
    """``42 s`` or ``3.5 min`` (4 jobs of seconds read "0.0 min")."""
    return f"{seconds:.0f} s" if seconds < 60 else f"{seconds / 60:.1f} min"


def _blank(v: float | None, digits: int | None = None) -> float | str:
    return "" if v is None else v if digits is None else round(v, digits)


def _plot(rows: list[str], columns: list[str], cells: dict[tuple[str, str], Cell], metric: str) -> Figure:
    """Lines over data size, one panel per other swept setting; bars when the sweep has one data size (or none)."""
    sizes = {c.x for c in cells.values() if c.values and not math.isnan(c.x)}
    if len(sizes) <= 1:
        return _bar_plot(rows, columns, cells, metric, next(iter(sizes), None))
    variants = sorted({c.variant for c in cells.values()})
    ncols = min(len(variants), 3)
    nrows = math.ceil(len(variants) / ncols)
    size = (7.6, 4.4) if ncols == 1 else (4.0 * ncols + 1.8, 3.2 * nrows + 0.6)
    fig = Figure(figsize=size, layout="constrained")  # Agg canvas, no pyplot state
    axes = fig.subplots(nrows, ncols, squeeze=False, sharey=True).ravel()
    for ax, v in zip(axes, variants, strict=False):
        for i, s in enumerate(columns):
            points = [c for r in rows if (c := cells.get((r, s))) is not None and c.variant == v]
            points = [c for c in points if c.values and not math.isnan(c.x)]
            if points:
                ax.errorbar(
                    [c.x for c in points],
                    [c.mean for c in points],
                    yerr=[c.std or 0.0 for c in points],
                    capsize=3,
                    label=s,
                    **_style(s, i),
                )
        ax.set_xscale("log")
        # ticks at the sizes swept, as plain numbers (over less than a decade the log axis wrote 4x10^0 ... 8x10^0)
        ax.set_xticks(sorted(sizes), [f"{x:g}" for x in sorted(sizes)])
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xlabel("training images per class")
        ax.grid(True, which="both", alpha=0.3)
        if v:
            ax.set_title(v, fontsize=10)
    for ax in axes[len(variants) :]:
        ax.set_visible(False)
    for ax in axes[::ncols]:
        ax.set_ylabel(metric)
    fig.suptitle(f"{textwrap.fill(metric + ' vs data size', 90)} (mean ± std over seeds)")
    _legend(fig, axes)
    return fig


def _bar_plot(
    rows: list[str], columns: list[str], cells: dict[tuple[str, str], Cell], metric: str, size: float | None
) -> Figure:
    """One group of bars per row (per other swept setting: a backbone sweep at one data size), one bar per strategy."""
    variants = [_row_cell(cells, row).variant or row for row in rows]
    keys = {v.split("=", 1)[0] for v in variants if "=" in v and "," not in v}
    labels = [v.split("=", 1)[1] for v in variants] if len(keys) == 1 and all("=" in v for v in variants) else variants
    fig = Figure(figsize=(max(7.6, 1.1 * len(rows) + 3.2), 4.4), layout="constrained")
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(columns))
    for i, s in enumerate(columns):
        found = [(j, c) for j, r in enumerate(rows) if (c := cells.get((r, s))) is not None and c.values]
        if found:
            style = _style(s, i)
            ax.bar(
                [j - 0.4 + width * (i + 0.5) for j, _ in found],
                [c.mean for _, c in found],
                width,
                yerr=[c.std or 0.0 for _, c in found],
                capsize=2,
                label=s,
                color=style["color"],
                hatch="//" if s == "auto" else None,
                edgecolor="white" if s == "auto" else None,
            )
    ax.set_xticks(range(len(rows)), labels, rotation=20 if max(map(len, labels), default=0) > 12 else 0, ha="right")
    ax.set_xlabel(keys.pop() if len(keys) == 1 else "")
    ax.set_ylabel(metric)
    at = f" at {size:g} training images per class" if size is not None else ""
    ax.set_title(f"{textwrap.fill(metric + at, 80)}\n(mean ± std over seeds)")  # (a long metric ran off the left)
    ax.grid(True, axis="y", alpha=0.3)
    _legend(fig, [ax])
    return fig


def _style(strategy: str, i: int) -> dict[str, Any]:
    # auto repeats one of the fixed columns on every row: black crosses on top keep both visible
    if strategy == "auto":
        return {"marker": "x", "markersize": 9, "color": "black", "zorder": 3, "linestyle": "--"}
    return {"marker": "o", "color": f"C{i % 10}"}


def _legend(fig: Figure, axes: Any) -> None:
    """One legend of the strategies for the whole figure, beside the plots (off the points)."""
    entries = {label: handle for ax in axes for handle, label in zip(*ax.get_legend_handles_labels(), strict=True)}
    if entries:
        fig.legend(list(entries.values()), list(entries), title="strategy", loc="outside right upper")


def _html(
    sweep_dir: Path,
    jobs: list[Job],
    rows: list[str],
    columns: list[str],
    cells: dict[tuple[str, str], Cell],
    metric: str,
    lower_is_better: bool,
    png: bytes,
) -> str:
    n_ok = sum(j.status == "ok" for j in jobs)
    total_s = sum(j.wall_s or 0.0 for j in jobs)
    scores = [[row] + [_cell_text(cells.get((row, s)), markdown=False) for s in columns] for row in rows]
    scores.append(["trainable params", *_params_text(cells, columns)])
    times = [
        [row] + [f"{c.mean_wall_s:.1f}" if (c := cells.get((row, s))) is not None and c.wall_s else "" for s in columns]
        for row in rows
    ]
    numeric = set(range(1, len(columns) + 1))
    sections = [
        section(
            "table",
            f"{metric}: mean ± std over seeds",
            table(scores, ["samples per class", *columns], numeric)
            + f'<p class="note">n = finished seeds; ★ = best strategy of the row '
            f"({'lowest' if lower_is_better else 'highest'} mean). Columns go from fewest to most trainable "
            "parameters.</p>",
        ),
        section("plot", f"{metric}: plot", img_tag(png, f"{metric} by data size and strategy", "plot")),
        section("wall-time", "Mean wall time per job (s)", table(times, ["samples per class", *columns], numeric)),
    ]
    mixed = [c for c in cells.values() if c.mixed]
    if mixed:
        items = "".join(f"<li>{esc(c.regime)} / {esc(c.strategy)}: {esc(', '.join(c.mixed))}</li>" for c in mixed)
        sections.append(section("mixed", "Warning: cells that average different settings", f"<ul>{items}</ul>"))
    failed = [j for j in jobs if j.status != "ok"]
    if failed:
        items = "".join(
            f"<li><code>{esc(j.path)}</code> ({esc(j.status)}): {esc(j.error or 'no error recorded')}</li>"
            for j in failed
        )
        sections.append(section("failed", "Failed jobs", f"<ul>{items}</ul>"))
    listed = [
        [
            link(f"{j.path}/report.html", j.path) if (sweep_dir / j.path / "report.html").is_file() else j.path,
            j.strategy,
            j.status,
            "" if j.value is None else f"{j.value:.4f}",
            "" if j.wall_s is None else f"{j.wall_s:.1f}",
        ]
        for j in sorted(jobs, key=lambda j: j.path)
    ]
    sections.append(
        section(
            "jobs",
            "Jobs (each links to its own report: curves, confusion matrices, wrong images)",
            table(listed, ["job", "strategy", "status", metric, "wall s"], {3, 4}),
        )
    )
    subtitle = f"{sweep_dir}: {len(jobs)} jobs, {n_ok} ok, {len(jobs) - n_ok} failed; {_job_time(total_s)} of job time"
    return page(f"Sweep report: {metric}", subtitle, sections)


_SINGLE_RUN = re.compile(r"^  mode: RUN$", re.M)  # hydra.yaml of a run started without -m
OPTUNA_DB = "optuna.db"  # where conf/hparams_search/ keeps a study: in its sweep dir
_TRIAL_FIELDS = "trial state value best params test_acc cache_hits wall_s path".split()


@dataclass
class Trial:
    """One Optuna trial, joined with its job's results.json."""

    number: int
    state: str
    value: float | None
    params: dict[str, Any]
    best: bool = False
    path: str | None = None
    results: dict[str, Any] = field(default_factory=dict)


def collect_trials(sweep_dir: Path, storage: str, study_name: str | None = None) -> tuple[str, str, list[Trial]]:
    """The study's trials (from the Optuna storage, every run of the search), each joined with the job directory
    whose overrides are its parameters; returns (study name, direction, trials)."""
    import optuna  # the `search` extra; only Optuna sweeps come here

    if study_name is None:
        names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
        if len(names) != 1:
            raise ValueError(f"{storage} holds {len(names)} studies ({names}); name one")
        study_name = names[0]
    study = optuna.load_study(study_name=study_name, storage=storage)
    # Jobs in the order they started; each trial takes the first unclaimed one whose overrides hold its parameters.
    files = sorted(Path(sweep_dir).rglob(".hydra/overrides.yaml"), key=lambda f: f.stat().st_mtime_ns)
    jobs = [(set(OmegaConf.load(f)), f.parent.parent) for f in files]
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    best = study.best_trial.number if done else None
    trials = []
    for t in study.trials:
        wanted = {f"{k}={v}" for k, v in t.params.items()} | {f"{k}={v}" for k, v in t.user_attrs.items()}
        job = next((j for j in jobs if wanted <= j[0]), None)
        trial = Trial(t.number, t.state.name, t.value, dict(t.params), best=t.number == best)
        if job is not None:
            jobs.remove(job)
            trial.path = str(job[1].relative_to(sweep_dir))
            trial.results = read_results(job[1]) or {}
        trials.append(trial)
    return study_name, study.direction.name.lower(), trials


def write_trials_report(
    sweep_dir: Path, storage: str, study_name: str | None = None, metric: str = "val/acc"
) -> dict[str, Path]:
    """Write report.md and report.csv for an Optuna search into ``sweep_dir``: one row per trial, best marked ★.

    Args:
        sweep_dir: the search's sweep directory.
        storage: the study's Optuna storage URL, e.g. ``sqlite:///<sweep dir>/optuna.db``.
        study_name: the study; None when the storage holds only one.
        metric: the name of what the trials returned (the config's ``metric``), for the column header.
    """
    sweep_dir = Path(sweep_dir)
    name, direction, trials = collect_trials(sweep_dir, storage, study_name)
    keys = sorted({k for t in trials for k in t.params})
    lines = [
        f"# Optuna search: {name}",
        "",
        f"`{sweep_dir}`: {len(trials)} trials ({sum(t.state == 'COMPLETE' for t in trials)} complete), "
        f"{direction} {metric}; ★ = best trial. Study: `{storage}`.",
        "",
        f"| trial | {metric} | test/acc | " + " | ".join(keys) + " | state | feature cache hits | wall s |",
        "| ---: | ---: | ---: |" + " ---: |" * len(keys) + " :--- | ---: | ---: |",
    ]
    for t in trials:
        value = "" if t.value is None else f"{t.value:.4f}"
        test_acc = t.results.get("metrics", {}).get("test/acc")
        lines.append(
            f"| {t.number} | {f'**{value}** ★' if t.best else value} | "
            + ("" if test_acc is None else f"{test_acc:.4f}")
            + " | "
            + " | ".join(_param_text(t.params.get(k)) for k in keys)
            + f" | {t.state.lower()} | {t.results.get('cache', {}).get('hits', '')} | "
            + f"{t.results.get('timing', {}).get('total_s', '')} |"
        )
    best = next((t for t in trials if t.best), None)
    if best is not None:
        lines += ["", f"Best: trial {best.number}, {metric} = {best.value:.4f}, in `{best.path}`:", ""]
        lines += [f"- `{k}={v}`" for k, v in best.params.items()]
    paths = {"md": sweep_dir / "report.md", "csv": sweep_dir / "report.csv"}
    paths["md"].write_text("\n".join(lines) + "\n")
    with paths["csv"].open("w", newline="") as f:
        writer = csv.DictWriter(f, _TRIAL_FIELDS)
        writer.writeheader()
        for t in trials:
            writer.writerow(
                dict(
                    trial=t.number,
                    state=t.state.lower(),
                    value=_blank(t.value),
                    best=t.best,
                    params=" ".join(f"{k}={v}" for k, v in t.params.items()),
                    test_acc=_blank(t.results.get("metrics", {}).get("test/acc")),
                    cache_hits=t.results.get("cache", {}).get("hits", ""),
                    wall_s=t.results.get("timing", {}).get("total_s", ""),
                    path=t.path or "",
                )
            )
    log.info("Optuna trials report (%d trials, best %s): %s", len(trials), best and best.number, paths["md"])
    return paths


class TrialsReport(Callback):
    """Hydra callback of an Optuna search (conf/hparams_search/): creates the sweep dir before the sweeper opens its
    SQLite study there, and writes the trials report when the search ends; never fails the search."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        Path(config.hydra.sweep.dir).mkdir(parents=True, exist_ok=True)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweeper = config.hydra.sweeper
        try:
            write_trials_report(Path(config.hydra.sweep.dir), sweeper.storage, sweeper.study_name, config.metric)
        except Exception:  # the trials are in the study already; a broken report must not turn the search red
            log.exception(
                "could not write the trials report; retry with: python -m tlx.report %s", config.hydra.sweep.dir
            )


def _param_text(v: Any) -> str:
    return "" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)


def main(argv: list[str] | None = None) -> None:
    """Command line: ``python -m tlx.report <run dir or multirun dir> [--metric test/acc]``."""
    parser = argparse.ArgumentParser(
        prog="python -m tlx.report",
        description="Write report.html of a run or an evaluation, or the report of a sweep.",
    )
    parser.add_argument(
        "dir",
        type=Path,
        help="a run directory (results.json at its top), an evaluation directory (evaluation.json) or a multirun "
        "directory (hydra.sweep.dir)",
    )
    parser.add_argument("--metric", default="test/acc", help="sweeps: results.json metric to compare (test/acc)")
    args = parser.parse_args(argv)
    if not args.dir.is_dir():
        parser.error(f"no such directory: {args.dir}")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)  # Optuna's database setup: no news ("setup plugin ...")
    if (args.dir / RESULTS).is_file():
        from tlx.run_report import write_run_report  # torch and the data module are only needed for a run report

        try:
            log.info("run report: %s", write_run_report(args.dir))
        except ConfigError as e:
            parser.exit(2, f"tlx.report: error: {e}\n")
    elif (args.dir / "evaluation.json").is_file():
        from tlx.evaluate import write_evaluation_report  # an evaluation of a run on new images (tlx.evaluate)

        log.info("evaluation report: %s", write_evaluation_report(args.dir))
    elif (args.dir / OPTUNA_DB).is_file():
        if args.metric != parser.get_default("metric"):  # (it was ignored without a word)
            parser.exit(2, f"tlx.report: error: {args.dir} holds a search, ranked by its study's objective; "
                           "--metric is for sweeps\n")  # fmt: skip
        write_trials_report(args.dir, f"sqlite:///{args.dir / OPTUNA_DB}")
    else:
        try:
            jobs = sweep_jobs(args.dir, args.metric)
        except ConfigError as e:  # nothing is written: a report already there stays as it was
            parser.exit(2, f"tlx.report: error: {e}\n")
        write_report(args.dir, args.metric, jobs)


def sweep_jobs(sweep_dir: Path, metric: str) -> list[Job]:
    """The jobs of the one sweep in ``sweep_dir`` (:func:`collect_jobs`), or a ConfigError when there is none, when
    the folder holds several sweeps (their jobs would be reported as one), or when no finished job has ``metric`` (a
    mistyped ``--metric`` turned a good report into "every job failed")."""
    sweeps = sorted(p.parent for p in sweep_dir.rglob("multirun.yaml"))
    if len(sweeps) > 1 and sweep_dir not in sweeps:
        shown = ", ".join(str(d) for d in sweeps[:3]) + (f" and {len(sweeps) - 3} more" if len(sweeps) > 3 else "")
        raise ConfigError(f"{sweep_dir} holds {len(sweeps)} sweeps; give one of them: {shown}")
    if not sweeps:  # outputs/runs: single runs of all kinds, which a report of one sweep would average as its jobs
        modes = {f.parent.parent: _SINGLE_RUN.search(f.read_text()) for f in sweep_dir.rglob(".hydra/hydra.yaml")}
        if modes and all(modes.values()):
            first = min(modes)
            raise ConfigError(
                f"{sweep_dir} holds {plural(len(modes), 'single run')}, not a sweep (no multirun.yaml); give one "
                f"of them (python -m tlx.report {first}) or a sweep directory (hydra.sweep.dir)"
            )
    jobs = collect_jobs(sweep_dir, metric)
    if not jobs:
        raise ConfigError(
            f"no run, evaluation or sweep job in {sweep_dir} (none has a results.json or .hydra/config.yaml); give a "
            "run directory, an evaluation directory or a sweep directory (hydra.sweep.dir)"
        )
    lacking = [j for j in jobs if j.error == f"no {metric} in results.json"]
    if lacking and not any(j.status == "ok" for j in jobs):
        names = sorted((read_results(sweep_dir / lacking[0].path) or {}).get("metrics", {}))
        raise ConfigError(f"no finished job has the metric {metric}; theirs: {', '.join(names)}")
    return jobs


if __name__ == "__main__":
    main()
