"""Checks `auto` against the fixed strategies of a regime sweep (issue 9's "done when"), from the jobs' results.json.

For every row (samples per class): the best fixed strategy by test accuracy, auto's test accuracy and choice, the
gap in points, head_only's accuracy, and auto's time against the time of its chosen strategy run alone in the same
sweep (wall and CPU seconds; results.json `timing.total_s` / `timing.cpu_s`).

Usage: python experiments/auto_check.py outputs/multirun/regime_sweep [more sweep dirs]
"""

from __future__ import annotations

import sys
from pathlib import Path

from omegaconf import OmegaConf

from tlx.report import strategy_label
from tlx.results import read_results

_PRESETS = {"head_only": "head_only", "reinit_last(1)": "reinit_last", "last_n(2)": "last_n2", "full": "full"}


def check(sweep: Path) -> list[str]:
    """One markdown table for the sweep."""
    rows: dict[int, dict[str, dict]] = {}
    for config in sorted(sweep.glob("*/.hydra/config.yaml")):
        results = read_results(config.parent.parent)
        if not results or results.get("status") != "ok":
            continue
        cfg = OmegaConf.load(config)
        rows.setdefault(int(cfg.data.samples_per_class), {})[strategy_label(cfg)] = results
    lines = [
        f"`{sweep}`",
        "",
        "| samples per class | best fixed (test acc) | auto (test acc, chose) | auto - best (points) | head_only | "
        "auto wall / chosen alone | auto CPU / chosen alone |",
        "| ---: | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for n in sorted(rows):
        jobs = rows[n]
        auto = jobs.pop("auto", None)
        if auto is None:
            continue
        best = max(jobs, key=lambda s: jobs[s]["metrics"]["test/acc"])
        chosen_label = next(k for k, v in _PRESETS.items() if v == auto["auto"]["winner"])
        alone = jobs[chosen_label]["timing"]
        acc, best_acc = auto["metrics"]["test/acc"], jobs[best]["metrics"]["test/acc"]
        wall, cpu = (
            f"{auto['timing'][k]:.0f} s / {alone[k]:.0f} s = {auto['timing'][k] / alone[k]:.1f}x"
            for k in ("total_s", "cpu_s")
        )
        lines.append(
            f"| {n} | {best} {best_acc:.4f} | {acc:.4f} ({auto['auto']['winner']}) | {(acc - best_acc) * 100:+.2f} | "
            f"{jobs['head_only']['metrics']['test/acc']:.4f} | {wall} | {cpu} |"
        )
    return lines


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        print("\n".join(check(Path(arg))), end="\n\n")
