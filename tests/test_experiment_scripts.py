"""The means over seeds that the README's auto section quotes: experiments/auto_check.py --mean and
experiments/auto_rule_search.py's score_mean, on small sweeps whose answers are known."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]


def _script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def _job(sweep: Path, cfg, n: int, seed: int, test: float, seconds: float, winner: str | None = None) -> None:
    cfg = OmegaConf.merge(cfg, {"data": {"samples_per_class": n}, "seed": seed})
    job = sweep / f"n={n},{'auto' if winner else cfg.freeze.mode + str(cfg.head._target_)}"
    (job / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, job / ".hydra" / "config.yaml")
    results = {"status": "ok", "metrics": {"test/acc": test, "val/acc": test}, "timing": {"total_s": seconds}}
    if winner:
        results["auto"] = {"winner": winner}
    (job / "results.json").write_text(json.dumps(results))


def test_auto_check_mean_compares_means_over_seeds(make_cfg, tmp_path):
    check = _script("auto_check")
    cfgs = {s: make_cfg(f"strategy={s}") for s in ("head_only", "reinit_last", "full", "auto")}
    # test accuracy per seed; auto picks full at seed 0 and reinit_last at seed 1 at 100 per class, and head_only at
    # both seeds at 10 per class, 1.5 points under reinit_last's mean
    table = {
        100: {"head_only": (0.70, 0.70), "reinit_last": (0.80, 0.81), "full": (0.83, 0.77)},
        10: {"head_only": (0.60, 0.61), "reinit_last": (0.62, 0.62), "full": (0.50, 0.50)},
    }
    picks = {100: ("full", "reinit_last"), 10: ("head_only", "head_only")}
    seconds = {"head_only": 5, "reinit_last": 10, "full": 40}
    sweeps = [tmp_path / "s", tmp_path / "s_seed1"]
    for seed, sweep in enumerate(sweeps):
        for n, row in table.items():
            for strategy, tests in row.items():
                _job(sweep, cfgs[strategy], n, seed, tests[seed], seconds[strategy])
            pick = picks[n][seed]
            _job(sweep, cfgs["auto"], n, seed, row[pick][seed], 35, winner=pick)
    lines = check.check_mean(sweeps)
    rows = {line.split(" | ")[0]: line for line in lines if line.startswith("| 10")}
    # 100 per class: reinit_last's mean 0.805 beats full's 0.80; auto's mean (0.83 + 0.81) / 2 = 0.82, +1.50
    assert rows["| 100"].startswith("| 100 | 2 | reinit_last(1) 0.8050 | 0.8200 (full, reinit_last) | +1.50 | 0.7000 |")
    # time per seed against the chosen strategy alone: 35/40 and 35/10 -> median 2.2x, worst 3.5x
    assert "| 2.2x, 3.5x |" in rows["| 100"]
    assert rows["| 10"].startswith(
        "| 10 | 2 | reinit_last(1) 0.6200 | 0.6050 (head_only, head_only) | -1.50 | 0.6050 |"
    )
    assert lines[-1].startswith(
        "Rows: 2. Mean over seeds within 1 point of the best fixed strategy's mean: 1/2; not below head_only's mean: "
        "2/2; every seed's wall time at most 3x the chosen strategy's run alone: 0/2;"
    )


def _curve(accs: list[float]) -> list[list[float]]:
    return [[50 * (i + 1), a] for i, a in enumerate(accs)]


def _row(full_test: float) -> dict:
    # reinit_last leads from its first check; last_n2 trails it by 10 points at step 50, which ends the search
    # (prune_deeper), so the pick is reinit_last whatever full would have done
    fixed = {
        "head_only": ([[0, 0.5]], 0.5),
        "reinit_last": (_curve([0.7, 0.75, 0.78, 0.8]), 0.80),
        "last_n2": (_curve([0.6, 0.7, 0.8, 0.85]), 0.79),
        "full": (_curve([0.6, 0.7, 0.8, 0.9]), full_test),
    }
    row = {k: {"curve": c, "test": t, "alone_s": 10.0, "fit_s": 8.0} for k, (c, t) in fixed.items()}
    return row | {"_probe_s": 2.0}


def test_rule_search_mean_groups_seeds_and_scores_the_mean_pick():
    search = _script("auto_rule_search")
    # two seeds of one sweep; at 100 per class full tests 0.805 (the pick is 0.5 points under the best mean), at 1000
    # per class 0.82 (2 points under)
    data = {f"sweep{suffix}": {100: _row(0.805), 1000: _row(0.82)} for suffix in ("", "_seed1")}
    within, fast_best, fast_chosen, total, below = search.score_mean(search.Rule(), data)
    assert (within, total, below) == (1, 2, 0)  # one group of 2 rows, not 4: the seeds are averaged
    assert (fast_best, fast_chosen) == (4, 4)  # per seed: probe 2 s + 1 s + reinit_last 8 s + last_n2 at 25%, 2 s


def test_rule_search_clock_stops_a_candidate_that_does_not_lead_once_the_search_passes_its_ratio():
    search = _script("auto_rule_search")
    row = _row(0.9)
    # last_n2 stays within the gap and the slack of reinit_last (0.8 at its end) and overtakes it only at its end
    row["last_n2"] = {"curve": _curve([0.78, 0.79, 0.795, 0.85]), "test": 0.84, "alone_s": 45.0, "fit_s": 40.0}
    row["full"]["curve"] = _curve([0.5, 0.5, 0.5, 0.5])  # stopped by the slack at its first check
    assert search.replay(search.Rule(), 100, row)[0] == "last_n2"
    # the clock: 3 x (probe 2 s + reinit_last 8 s) = 30 s; 11 s are spent before last_n2, whose 50% (20 s) passes it
    pick, seconds, log = search.replay(search.Rule(clock=3.0), 100, row)
    assert log == ["reinit_last: finished", "last_n2: stopped by the clock at 50%", "full: stopped by the clock at 25%"]
    assert (pick, seconds) == ("reinit_last", 2 + 1 + 8 + 20 + 2)
