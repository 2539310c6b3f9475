"""Checks `auto` against the fixed strategies of a regime sweep (issue 9's "done when"), from the jobs' results.json.

For every row (samples per class): the best fixed strategy by test accuracy, auto's test accuracy and choice, the
gap in points, head_only's accuracy, and auto's wall time against the wall time of the row's best fixed strategy run
alone and of the strategy auto chose run alone (results.json `timing.total_s`). The committed sweeps give every job
its own empty feature cache (`cache.dir=${hydra:runtime.output_dir}/cache`), so a fixed job is that strategy run alone
on data it has not seen, as auto is; the last column takes the fixed run's feature extraction out (`extract_s`), as if
its cache had been filled before. For comparison, the brute-force search: every fixed strategy of the row trained to
the end, the one best on validation picked (its test accuracy against the best, and the sum of their wall times).
Ends with how many rows meet each criterion.

With ``--mean``, the sweep dirs are seeds of one sweep (the same sizes and data, another ``seed``) and one table
compares the means over seeds: for every row, each strategy's test accuracy averaged over the seeds that ran it in
every sweep given, auto's likewise, and the per-seed time ratios (median and worst). A single seed's row sits inside
the noise of choosing on validation (see the experiment READMEs); the mean over seeds is what the criterion is
checked on.

Usage: python experiments/auto_check.py outputs/multirun/regime_sweep [more sweep dirs]
       python experiments/auto_check.py --mean outputs/multirun/regime_sweep_seed3 ..._seed4 ..._seed5
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

from omegaconf import OmegaConf

from tlx.report import strategy_label
from tlx.results import read_results

_PRESETS = {"head_only": "head_only", "reinit_last(1)": "reinit_last", "last_n(2)": "last_n2", "full": "full"}


def load(sweep: Path) -> dict[tuple[int, int], dict[str, dict]]:
    """(samples per class (0: all the training images), seed) -> strategy -> results, for the sweep's ok jobs."""
    rows: dict[tuple[int, int], dict[str, dict]] = {}
    for config in sorted(sweep.glob("*/.hydra/config.yaml")):
        results = read_results(config.parent.parent)
        if not results or results.get("status") != "ok":
            continue
        cfg = OmegaConf.load(config)
        row = (int(cfg.data.get("samples_per_class") or 0), int(cfg.seed))
        rows.setdefault(row, {})[strategy_label(cfg)] = results
    return rows


def _chosen(jobs: dict[str, dict], auto: dict) -> dict:
    """The fixed job of the strategy auto chose."""
    return jobs[next(k for k, v in _PRESETS.items() if v == auto["auto"]["winner"])]


def _best(jobs: dict[str, dict], labels: set[str]) -> str:
    """The fixed strategy among ``labels`` with the highest test accuracy (ties: the first in sorted order)."""
    return max(sorted(labels), key=lambda k: jobs[k]["metrics"]["test/acc"])


def check(sweep: Path) -> list[str]:
    """One markdown table for the sweep, and a line of counts."""
    rows = load(sweep)
    seeds = len({seed for _, seed in rows}) > 1  # a seed column only when the sweep has several
    lines = [
        f"`{sweep}`",
        "",
        "| samples per class | best fixed (test acc) | auto (test acc, chose) | auto - best (points) | head_only | "
        "auto wall / best fixed alone | auto wall / chosen alone | same, fixed run's extraction left out | "
        "all fixed trained, best on val: pick - best (points), wall |",
        "| ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    within = above = fast = fast_chosen = brute_within = total = 0
    for n, seed in sorted(rows):
        jobs = rows[n, seed]
        auto = jobs.pop("auto", None)
        if auto is None:
            continue
        best = _best(jobs, set(jobs))
        chosen = _chosen(jobs, auto)["timing"]
        acc, best_acc = auto["metrics"]["test/acc"], jobs[best]["metrics"]["test/acc"]
        head = jobs["head_only"]["metrics"]["test/acc"]
        wall = auto["timing"]["total_s"]

        def ratio(alone: float, wall: float = wall) -> str:
            return f"{wall:.0f} s / {alone:.0f} s = {wall / alone:.1f}x"

        best_alone = jobs[best]["timing"]["total_s"]
        brute = max(jobs, key=lambda s: jobs[s]["metrics"]["val/acc"])  # ties: the first label in sorted order
        brute_gap = (jobs[brute]["metrics"]["test/acc"] - best_acc) * 100
        brute_wall = sum(j["timing"]["total_s"] for j in jobs.values())
        total += 1
        within += (acc - best_acc) * 100 >= -1.0
        above += acc >= head
        fast += wall <= 3 * best_alone
        fast_chosen += wall <= 3 * chosen["total_s"]
        brute_within += brute_gap >= -1.0
        lines.append(
            f"| {n or 'all'}{f', seed {seed}' if seeds else ''} | {best} {best_acc:.4f} | "
            f"{acc:.4f} ({auto['auto']['winner']}) | "
            f"{(acc - best_acc) * 100:+.2f} | {head:.4f} | {ratio(best_alone)} | {ratio(chosen['total_s'])} | "
            f"{ratio(chosen['total_s'] - chosen.get('extract_s', 0.0))} | "
            f"{brute} {brute_gap:+.2f}, {brute_wall:.0f} s |"
        )
    lines += [
        "",
        f"Rows: {total}. auto within 1 point of the best fixed strategy: {within}/{total}; not below head_only: "
        f"{above}/{total}; wall time at most 3x the best fixed strategy's run alone: {fast}/{total}; at most 3x the "
        f"chosen strategy's run alone: {fast_chosen}/{total}. Brute force ({len(jobs)} fixed strategies trained, "
        f"best on val) within 1 point: {brute_within}/{total}.",
    ]
    return lines


def check_mean(sweeps: list[Path]) -> list[str]:
    """One markdown table of means over the seeds in ``sweeps``, and a line of counts."""
    runs: dict[int, list[dict[str, dict]]] = {}  # samples per class -> one {strategy: results} per seed
    for sweep in sweeps:
        for (n, _), jobs in sorted(load(sweep).items()):
            if "auto" in jobs:
                runs.setdefault(n, []).append(jobs)
    lines = [
        f"Means over seeds: {', '.join(f'`{s}`' for s in sweeps)}",
        "",
        "| samples per class | seeds | best fixed (mean test acc) | auto (mean test acc; chose) | auto - best (points) "
        "| head_only | auto wall / chosen alone (median, worst) | auto wall / seed's best alone (median, worst) |",
        "| ---: | ---: | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    within = above = fast = fast_best = 0
    for n, seeds in sorted(runs.items()):
        common = set.intersection(*(set(jobs) for jobs in seeds)) - {"auto"}

        def mean(label: str, seeds: list[dict[str, dict]] = seeds) -> float:
            return statistics.mean(jobs[label]["metrics"]["test/acc"] for jobs in seeds)

        best = max(sorted(common), key=mean)
        acc, best_acc, head = mean("auto"), mean(best), mean("head_only")
        to_chosen = [j["auto"]["timing"]["total_s"] / _chosen(j, j["auto"])["timing"]["total_s"] for j in seeds]
        # against each seed's own best fixed strategy, as in the per-seed tables
        to_best = [j["auto"]["timing"]["total_s"] / j[_best(j, common)]["timing"]["total_s"] for j in seeds]
        within += (acc - best_acc) * 100 >= -1.0
        above += acc >= head
        fast += max(to_chosen) <= 3
        fast_best += max(to_best) <= 3
        chose = ", ".join(j["auto"]["auto"]["winner"] for j in seeds)
        lines.append(
            f"| {n or 'all'} | {len(seeds)} | {best} {best_acc:.4f} | {acc:.4f} ({chose}) | "
            f"{(acc - best_acc) * 100:+.2f} | {head:.4f} | "
            f"{statistics.median(to_chosen):.1f}x, {max(to_chosen):.1f}x | "
            f"{statistics.median(to_best):.1f}x, {max(to_best):.1f}x |"
        )
    total = len(runs)
    lines += [
        "",
        f"Rows: {total}. Mean over seeds within 1 point of the best fixed strategy's mean: {within}/{total}; not below "
        f"head_only's mean: {above}/{total}; every seed's wall time at most 3x the chosen strategy's run alone: "
        f"{fast}/{total}; at most 3x the seed's best strategy's run alone: {fast_best}/{total}.",
    ]
    return lines


if __name__ == "__main__":
    args = sys.argv[1:]
    if args and args[0] == "--mean":
        print("\n".join(check_mean([Path(a) for a in args[1:]])))
    else:
        for arg in args:
            print("\n".join(check(Path(arg))), end="\n\n")
