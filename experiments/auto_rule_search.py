"""Replays auto's racing rule on finished regime sweeps, for the shipped settings and a grid of others.

An auto candidate is the same run as its strategy run alone (tests/test_auto.py checks this to the last digit), so
a sweep's fixed jobs hold everything a search would see: each strategy's validation accuracy at every validation
step (`logs/metrics.csv`) and its cost (`timing.total_s` minus its extraction, which auto's probe does once for
every candidate). This script runs the search of `tlx/auto.py` over those curves, its own race callback
(`tlx.auto._Race`) deciding at every validation step: the probe, then `reinit_last`, `last_n2` and `full` in that
order, each skipped under its `min_per_class` or after a candidate was stopped by the gap (`prune_deeper`). Its time
is the auto job's own probe candidate plus each candidate's cost times the fraction it trained, plus 1 s for the
search itself.

For every rule it counts the rows where the pick is within 1 point of the row's best fixed strategy (test), and
where the replayed time is at most 3x the row's best strategy run alone and the chosen strategy run alone.

With ``--mean``, the 1-point criterion is checked on means over seeds, as ``experiments/auto_check.py --mean`` does:
sweep dirs whose names differ only by a ``_seedN`` suffix are seeds of one sweep, and a row counts when the mean of
the pick's test accuracy over its seeds is within 1 point of the best mean of a fixed strategy; the time criteria stay
per seed. The shipped rule was chosen this way on seeds 0-2: two rules of the grid meet the 1-point criterion on every
mean row with every seed's time at most 3x the chosen strategy's run alone and no pick below head_only; of the two,
the one with more single-seed rows within 1 point (20 of 24 against 19). Seeds 3-5 were run after, to check it.

``--clock 3`` replays a rule tlx does not have, against the shipped one: a candidate that does not lead is stopped
once the search has run 3x the leader's own cost (the probe's time plus the leader's training), aiming at the time
criterion directly.

Usage: python experiments/auto_rule_search.py SWEEP_DIR [SWEEP_DIR ...] [--rows] [--mean] [--clock RATIO ...]
"""

from __future__ import annotations

import argparse
import csv
import itertools
import re
import statistics
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

from omegaconf import OmegaConf
from pytorch_lightning.trainer.states import TrainerFn

from tlx.auto import _Race
from tlx.results import read_results

ORDER = ("reinit_last", "last_n2", "full")
_LABELS = {"head_only": "head_only", "reinit_last(1)": "reinit_last", "last_n(2)": "last_n2", "full": "full"}


@dataclass(frozen=True)
class Rule:
    """The settings of ``conf/strategy/auto.yaml`` that the search varies (the shipped values by default)."""

    gap: float | None = 0.03
    full_gap_from: float = 0.5
    full_min_per_class: int = 30
    check_fraction: float = 0.25
    slack: float = 0.15
    prune_deeper: bool = True
    clock: float | None = None  # not in tlx (replayed only, --clock): a candidate that does not lead is stopped once
    # the search has run this many times the leader's own cost (the probe's time plus the leader's training)


def load(sweep: Path) -> dict[int, dict]:
    """samples per class -> {strategy: {curve: [[step, val/acc], ...], test, alone_s, fit_s}, "_probe_s": the auto
    job's probe, "_auto": its pick and time}."""
    from tlx.report import strategy_label

    rows: dict[int, dict] = {}
    for config in sorted(sweep.glob("*/.hydra/config.yaml")):
        job = config.parent.parent
        results = read_results(job)
        if not results or results.get("status") != "ok":
            continue
        cfg = OmegaConf.load(config)
        row = rows.setdefault(int(cfg.data.get("samples_per_class") or 0), {})
        label = strategy_label(cfg)
        if label == "auto":
            row["_probe_s"] = read_results(job / "candidates" / "head_only")["timing"]["total_s"]
            row["_auto"] = {"winner": results["auto"]["winner"], "s": results["timing"]["total_s"]}
            continue
        with open(job / "logs" / "metrics.csv") as f:  # its step column is the trainer's global step - 1
            curve = [[int(r["step"]) + 1, float(r["val/acc"])] for r in csv.DictReader(f) if r.get("val/acc")]
        timing = results["timing"]
        if label == "head_only":  # the probe's chosen epoch at step 0, as auto hands it to the next candidate
            curve = [[0, results["metrics"]["val/acc"]]]
        row[_LABELS.get(label, label)] = {
            "curve": curve,
            "test": results["metrics"]["test/acc"],
            "alone_s": timing["total_s"],
            "fit_s": timing["total_s"] - timing.get("extract_s", 0.0),
        }
    return {n: r for n, r in rows.items() if "_probe_s" in r}


def race(rule: Rule, name: str, curve: list[list[float]], best_val: float, best_curve: list[list[float]]) -> _Race:
    """``tlx.auto``'s race callback fed ``curve`` one validation at a time, as a Lightning trainer would."""
    callback = _Race(
        best_val,
        best_curve,
        rule.check_fraction,
        rule.slack,
        rule.gap,
        None,
        rule.full_gap_from if name == "full" else 0,
    )
    history: list[dict[str, float]] = []
    for step, acc in curve:
        history.append({"val/acc": acc})
        trainer = SimpleNamespace(
            sanity_checking=False,
            global_step=step,
            estimated_stepping_batches=curve[-1][0],
            should_stop=False,
            state=SimpleNamespace(fn=TrainerFn.FITTING),  # validations within the candidate's fit
        )
        callback.on_validation_end(trainer, SimpleNamespace(val_history=history))
        if trainer.should_stop:
            break
    return callback


def replay(rule: Rule, n: int, row: dict) -> tuple[str, float, list[str]]:
    """The strategy the search picks, its replayed wall time, and what happened to each candidate."""
    best, best_curve = "head_only", row["head_only"]["curve"]
    best_val = best_curve[0][1]
    cost, log, pruned = row["_probe_s"] + 1.0, [], False
    leader_s = row["_probe_s"]  # the leader's own cost, as the search could know it (--clock)
    for name in ORDER:
        if pruned or (name == "full" and n < rule.full_min_per_class):
            log.append(f"{name}: skipped")
            continue
        done = race(rule, name, row[name]["curve"], best_val, best_curve)
        fit_s = row[name]["fit_s"]
        steps = row[name]["curve"][-1][0]
        if rule.clock and _clock_stop(done, rule.clock * leader_s - cost, fit_s, steps, best_val):
            log.append(f"{name}: stopped by the clock at {done.progress:.0%}")
        else:
            log.append(f"{name}: " + (f"stopped at {done.progress:.0%}" if done.stopped else "finished"))
        cost += fit_s * (done.progress if done.stopped else 1.0)
        pruned = pruned or (done.trailed and rule.prune_deeper)
        top = max(acc for _, acc in done.curve)  # its best val/acc so far, as auto's entry records it
        if top > best_val:
            best, best_val, best_curve, leader_s = name, top, done.curve, row["_probe_s"] + fit_s
    return best, cost, log


def _clock_stop(done: _Race, left_s: float, fit_s: float, steps: int, best_val: float) -> bool:
    """The clock rule of ``--clock`` on a raced candidate of ``steps`` steps: stop it at the first validation (before
    the race would) where it has used more than ``left_s`` of its ``fit_s`` without leading; ``done`` is cut there."""
    top = -1.0  # its best val/acc so far
    for i, (step, acc) in enumerate(done.curve):
        progress, top = step / steps, max(top, acc)
        if progress < 1 and fit_s * progress > left_s and top <= best_val:
            done.curve, done.progress, done.stopped, done.trailed = done.curve[: i + 1], progress, "clock", False
            return True
    return False


def judge(rule: Rule, n: int, row: dict) -> tuple[dict[str, dict], str, str, float, list[str]]:
    """One row of one seed: its fixed strategies, the best of them on test, and :func:`replay`'s pick, time and log."""
    fixed = {k: v for k, v in row.items() if not k.startswith("_")}
    top = max(fixed, key=lambda k: fixed[k]["test"])
    return fixed, top, *replay(rule, n, row)


def score(rule: Rule, data: dict[str, dict], show: bool = False) -> tuple[int, int, int, int]:
    """Rows within 1 point, at most 3x the best alone, at most 3x the chosen alone, and rows in all. With ``show``,
    prints every row with the real auto job's pick and time beside the replayed ones."""
    within = fast_best = fast_chosen = total = agree = 0
    for sweep, rows in data.items():
        for n, row in sorted(rows.items()):
            fixed, top, pick, cost, log = judge(rule, n, row)
            gap = (fixed[pick]["test"] - fixed[top]["test"]) * 100
            total += 1
            within += gap >= -1.0
            fast_best += cost <= 3 * fixed[top]["alone_s"]
            fast_chosen += cost <= 3 * fixed[pick]["alone_s"]
            agree += pick == row["_auto"]["winner"]
            if show:
                print(
                    f"{sweep} {n:>5}: {pick:<11} {gap:+.2f} points, {cost:.0f} s = "
                    f"{cost / fixed[top]['alone_s']:.1f}x best alone, {cost / fixed[pick]['alone_s']:.1f}x chosen "
                    f"alone; {', '.join(log)} (the auto job: {row['_auto']['winner']}, {row['_auto']['s']:.0f} s)"
                )
    if show:
        print(f"replayed picks equal to the auto jobs' picks: {agree}/{total} rows")
    return within, fast_best, fast_chosen, total


def score_mean(rule: Rule, data: dict[str, dict], show: bool = False) -> tuple[int, int, int, int, int]:
    """Like :func:`score` with the 1-point criterion on means over seeds: mean rows within 1 point, seeds at most 3x
    the best alone and at most 3x the chosen alone, mean rows, and seed rows whose pick is below head_only."""
    groups: dict[str, list[dict]] = {}
    for sweep, rows in data.items():
        groups.setdefault(re.sub(r"_seed\d+$", "", sweep), []).append(rows)
    within = fast_best = fast_chosen = total = below = 0
    for name, seeds in groups.items():
        for n in sorted(set.intersection(*(set(rows) for rows in seeds))):
            picks, tests = [], {}
            for rows in seeds:
                fixed, top, pick, cost, _ = judge(rule, n, rows[n])
                picks.append(fixed[pick]["test"])
                fast_best += cost <= 3 * fixed[top]["alone_s"]
                fast_chosen += cost <= 3 * fixed[pick]["alone_s"]
                below += fixed[pick]["test"] < fixed["head_only"]["test"]
                for k, v in fixed.items():
                    tests.setdefault(k, []).append(v["test"])
            means = {k: statistics.mean(v) for k, v in tests.items() if len(v) == len(seeds)}
            gap = (statistics.mean(picks) - max(means.values())) * 100
            within += gap >= -1.0
            total += 1
            if show:
                print(f"{name} {n:>5}: mean over {len(seeds)} seeds {gap:+.2f} points from the best fixed strategy")
    return within, fast_best, fast_chosen, total, below


def prune_evidence(data: dict[str, dict], gap: float) -> str:
    """What ``prune_deeper`` rests on: where ``last_n2`` trails ``reinit_last`` by more than ``gap`` at its first
    validation, is ``full`` at least as far behind there?"""
    trailed = further = 0
    for rows in data.values():
        for row in rows.values():
            first = {name: row[name]["curve"][0][1] for name in ORDER}
            if first["reinit_last"] - first["last_n2"] > gap:
                trailed += 1
                further += first["full"] <= first["last_n2"]
    return (
        f"rows where last_n2 trails reinit_last by more than {gap:g} at its first validation: {trailed}; "
        f"full at least as far behind there: {further}"
    )


def main_mean(data: dict[str, dict]) -> None:
    """The shipped rule and the grid, scored on means over seeds."""
    within, fast_best, fast_chosen, total, below = score_mean(Rule(), data, show=True)
    seeds = sum(len(rows) for rows in data.values())
    print(
        f"shipped rule: mean rows within 1 point {within}/{total}; seed rows <=3x best alone {fast_best}/{seeds}, "
        f"<=3x chosen alone {fast_chosen}/{seeds}, below head_only {below}"
    )
    scored = [(score_mean(r, data), r) for r in _grid()]
    meets = [(s, r) for s, r in scored if s[0] == s[3] and s[2] == seeds and s[4] == 0]
    print(f"{len(scored)} rules; every mean row within 1 point, every seed <=3x chosen alone, none below head_only:")
    single = {r: score(r, data)[0] for _, r in meets}  # single-seed rows within 1 point: the tie-break
    for s, r in sorted(meets, key=lambda x: (-single[x[1]], -x[0][1])):
        print(f"  single-seed rows within 1 point {single[r]}/{seeds}, <=3x best alone {s[1]}/{seeds}: {r}")


def main_clock(data: dict[str, dict], ratios: list[float], rows: bool) -> None:
    """The shipped rule, then the shipped rule with a clock stop at each of ``ratios``, on every seed's rows and on
    means over seeds."""
    for ratio in [None, *ratios]:
        rule = Rule(clock=ratio)
        if rows:
            print(f"clock {ratio}:")
        within, fast_best, fast_chosen, total = score(rule, data, show=rows)
        mean_within, _, _, mean_total, below = score_mean(rule, data)
        print(
            f"clock {ratio}: seed rows within 1 point {within}/{total}, <=3x best alone {fast_best}/{total}, <=3x "
            f"chosen alone {fast_chosen}/{total}; mean rows within 1 point {mean_within}/{mean_total}; seed rows below "
            f"head_only {below}"
        )


def _grid() -> list[Rule]:
    return [
        Rule(gap, gap_from, min_pc, 0.25, slack, prune)
        for gap, gap_from, min_pc, slack, prune in itertools.product(
            (None, 0.02, 0.03, 0.04, 0.06, 0.1), (0.25, 0.5), (30, 100, 1000), (0.05, 0.1, 0.15, 0.2), (True, False)
        )
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweeps", nargs="+", type=Path)
    parser.add_argument("--rows", action="store_true", help="print every row for the shipped rule")
    parser.add_argument("--mean", action="store_true", help="the 1-point criterion on means over seeds")
    parser.add_argument(
        "--clock", type=float, nargs="+", metavar="RATIO", help="the shipped rule against a clock rule (Rule.clock)"
    )
    args = parser.parse_args()
    data = {str(s): load(s) for s in args.sweeps}
    if args.clock:
        return main_clock(data, args.clock, args.rows)
    print(prune_evidence(data, Rule().gap))
    if args.mean:
        return main_mean(data)
    shipped = score(Rule(), data, show=args.rows)
    total = shipped[3]
    print(
        f"shipped rule: within 1 point {shipped[0]}/{total}, <=3x best alone {shipped[1]}/{total}, "
        f"<=3x chosen alone {shipped[2]}/{total}"
    )
    grid = _grid()
    scored = sorted(((score(r, data), r) for r in grid), key=lambda x: (-min(x[0][:3]), -sum(x[0][:3])))
    print(f"{len(grid)} rules; all three criteria on every row: {sum(min(s[:3]) == total for s, _ in scored)}")
    print("best by the worst of the three counts (within 1 point, <=3x best alone, <=3x chosen alone):")
    for s, r in scored[:8]:
        print(f"  {s[0]}/{s[1]}/{s[2]} of {total}: {r}")
    for i, name in enumerate(("within 1 point", "<=3x best alone")):
        s, r = max(scored, key=lambda x: (x[0][i], sum(x[0][:3])))
        print(f"most rows {name}: {s[0]}/{s[1]}/{s[2]}: {r}")


if __name__ == "__main__":
    main()
