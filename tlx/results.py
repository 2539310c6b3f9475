"""results.json: written atomically by the run, read by reports; the end-of-run summary table."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from tlx.errors import ConfigError, plural
from tlx.jsonfile import write_json_atomic

log = logging.getLogger(__name__)

RESULTS = "results.json"


def write_results(run_dir: Path, results: dict[str, Any]) -> Path:
    """Write ``results.json`` into ``run_dir`` atomically (temporary file, then rename)."""
    path = Path(run_dir) / RESULTS
    write_json_atomic(path, results)
    return path


def read_results(run_dir: Path) -> dict[str, Any] | None:
    """The run's results, or None when there are none (or they are unreadable)."""
    try:
        return json.loads((Path(run_dir) / RESULTS).read_text())
    except (OSError, ValueError):
        return None


def starts_over(cfg: Any) -> bool:
    """``resume=false``: the run starts its directory over, whatever an earlier run left there (finished or not)."""
    return str(cfg.get("resume")).lower() == "false"


def skipped(done: dict[str, Any] | None, cfg: Any, run_dir: Path) -> bool:
    """Whether a run is skipped because its results (``done``) say it finished ok (a re-run sweep) and ``cfg`` sets
    ``skip_done`` without ``resume=false`` (which starts the directory over); logs it."""
    if cfg.get("skip_done") and not starts_over(cfg) and done and done.get("status") == "ok":
        log.info("skipping %s: results.json is complete", run_dir)
        return True
    return False


def resume_command(run_dir: Path) -> str:
    """The command that continues an interrupted run in its own directory."""
    run_dir = Path(run_dir).resolve()
    return f"python -m tlx --config-path {run_dir / '.hydra'} --config-name config hydra.run.dir={run_dir} resume=true"


def resume_checkpoint(resume: bool | str, last: Path, done: dict[str, Any] | None) -> Path | None:
    """The checkpoint a run continues from, or None to start from the beginning.

    Args:
        resume: ``true`` (resume, warn when there is nothing to resume from), ``false``, or ``auto``: resume when
            ``last`` exists and the run directory holds no finished results (a requeued SLURM job, a re-run sweep
            job, a killed run started again with the same ``hydra.run.dir``).
        last: the run's ``checkpoints/last.ckpt``.
        done: the run directory's results.json as it was before this run started, if any.
    """
    if str(resume).lower() == "auto":
        if last.is_file() and (done or {}).get("status") != "ok":
            log.info("resuming from %s (results.json: %s)", last, (done or {}).get("status", "none"))
            return last
        return None
    if str(resume).lower() not in ("true", "false"):
        raise ConfigError(f"resume must be true, false or auto, got {resume}")
    if str(resume).lower() == "false":
        return None
    if not last.is_file():
        log.warning("resume=true but %s does not exist: starting from the beginning", last)
        return None
    log.info("resuming from %s", last)
    return last


def what_trains(results: dict[str, Any]) -> str:
    """The run's strategy as the sweep reports name it (``reinit_last(1)``, ``auto: last_n(2)``); runs written before
    results.json had a ``strategy`` say head and freeze mode."""
    return results.get("strategy") or f"{results['head']} / {results['freeze']}"


def print_summary(results: dict[str, Any], run_dir: Path) -> None:
    """A short table of what was trained and how well, printed at the end of every run."""
    table = summary_table(f"tlx: {results['backbone']} / {what_trains(results)}")
    m = results["metrics"]
    for key in ("val/acc", "val/f1", "test/acc", "test/f1"):
        if m.get(key) is not None:
            table.add_row(
                key + (" (on val)" if key.startswith("test") and results["test_split"] == "val" else ""),
                f"{m[key]:.4f}",
            )
    p, d, t = results["params"], results["data"], results["timing"]
    table.add_row("params", f"{p['trainable']:,} trainable / {p['total']:,} total")
    table.add_row(
        "data",
        f"{d.get('train', 0)} train, {d.get('val', 0)} val, {d.get('test', 0)} test, "
        f"{d['num_classes']} classes" + (f", {d['bad_images']} skipped" if d["bad_images"] else ""),
    )
    table.add_row("weights", results["weights"])
    cache = results["cache"]
    if not cache["used"]:
        cached = "not used"
    elif cache["misses"] == 0:
        cached = f"hit at {cache['cut']}"
    else:  # (an entry is one split's activations: "1 extracted" read as one image)
        hits = f", {cache['hits']} hit" if cache.get("hits") else ""
        cached = f"{plural(cache['misses'], 'split')} extracted{hits} at {cache['cut']}"
    table.add_row("feature cache", cached)
    if "auto" in results:
        table.add_row("auto", results["auto"]["reason"])
        time_row = f"{t['total_s']:.1f}s for the search (the winner's own run in it: {t['winner_s']:.1f}s)"
    else:
        time_row = f"{t['total_s']:.1f}s (extract {t['extract_s']:.1f}s, fit {t['fit_s']:.1f}s)"
    if t.get("resumed"):
        time_row += ", since the resume"
    table.add_row("time", time_row)
    table.add_row("run dir", str(run_dir))
    print_table(table)


def summary_table(title: str) -> Table:
    """A two-column table of names (bold) and values, as tlx's commands end with one."""
    table = Table(title=title, show_header=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")  # a long run dir wraps at a narrow terminal instead of losing its end
    return table


def print_table(table: Table) -> None:
    """Print ``table`` on stdout, as wide as its rows where stdout is a log file or a pipe."""
    console = Console(stderr=False)
    if not console.is_terminal:  # a log file or a pipe has no width: rich's 80 columns would fold the rows
        console = Console(stderr=False, width=1000)  # a table is only as wide as its rows need
    console.print(table)
