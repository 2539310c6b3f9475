"""``+experiment=auto``: choose how much of the backbone to train, on the user's own data, and keep the winner.

A second orchestrator beside ``tlx.run``: every candidate is a strategy preset (``conf/strategy/``), composed like a
fixed run and trained by ``tlx.run.train`` in its own run directory (``candidates/<strategy>/``), so a candidate and
a fixed run are the same thing. The backbone and the data are built once and shared.

The search:

1. The cached linear probe (``head_only``) always runs first: it is nearly free on cached features, and it is the
   head every LP-FT candidate starts from.
2. The deeper candidates follow in the configured order (cheapest first), each only if the training images per class
   reach its ``min_per_class`` (the prior, measured by the regime sweeps in ``experiments/``) and the time budget is
   not spent.
3. A candidate races the best so far: at each validation from ``check_fraction`` of its steps on, it is stopped
   when it trails the best candidate's curve at the same step by more than ``gap`` (the candidates train on the same
   data, so their curves compare step by step; the same steps where the run sets trainer.max_steps, as the regime
   sweeps do, else each its preset's epochs), or when even ``slack`` per remaining unit of
   progress could not lift its best validation accuracy to the best so far (an optimistic bound on what it can still
   gain). A stopped candidate skips its test pass and its validation predictions. One stopped for trailing the
   leader's curve also ends the search (``prune_deeper``): the candidates after it train more of the same backbone
   from the same weights, and in the regime sweeps those trailed further at the same step.
4. The highest validation accuracy wins (ties: the earlier, cheaper candidate). Its checkpoint becomes the run's
   ``checkpoints/best.ckpt``, its results the run's ``results.json``, with an ``auto`` section that lists every
   candidate, the winner and a one-line reason.

Finished candidates are never trained again: a killed auto run, resumed, reads their results.json and goes on.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.trainer.states import TrainerFn

from tlx.console import other_process
from tlx.errors import ConfigError, Diverged
from tlx.features import find_cut
from tlx.rerun import load_saved_config, make_rerunnable
from tlx.results import print_summary, read_results, resume_command, skipped, starts_over, write_results
from tlx.run import Prepared, build_network, prepare, train
from tlx.run_report import write_run_report

log = logging.getLogger(__name__)

PROBE = "head_only"
CANDIDATES_DIR = "candidates"


@dataclass
class Candidate:
    """One strategy auto may try.

    Attributes:
        strategy: a preset in ``conf/strategy/``.
        min_per_class: tried only when the training images per class reach this (the prior).
        gap_from: the gap rule may stop it only from this fraction of its steps on (never before
            ``auto.check_fraction``; null in the config: 0). Full fine-tuning starts slowest, so the sweeps give it
            until half its steps.
    """

    strategy: str
    min_per_class: int = 0
    gap_from: float = 0.0


class Auto:
    """Settings of the search (``auto:`` in ``conf/strategy/auto.yaml``).

    Args:
        candidates: the deeper strategies, in the order they are tried (cheapest first); each is a mapping with
            ``strategy`` and ``min_per_class``. The probe (``head_only``) always runs first.
        check_fraction: a candidate can be stopped from this fraction of its training steps on.
        slack: the most validation accuracy a candidate is assumed to gain over its whole remaining training (it
            gains ``slack * (1 - progress)`` at most); smaller stops losers sooner.
        gap: a candidate whose best validation accuracy so far trails the leader's at the same step by more than
            this is stopped (null: no such rule).
        prune_deeper: when a candidate is stopped by ``gap``, skip the candidates after it (they are deeper).
        budget_s: wall-clock budget of the whole search in seconds (null: none). A candidate still training when it
            is spent is stopped; later ones are skipped.
    """

    def __init__(
        self,
        candidates: list[dict[str, Any]],
        check_fraction: float = 0.25,
        slack: float = 0.15,
        gap: float | None = 0.03,
        prune_deeper: bool = True,
        budget_s: float | None = None,
    ) -> None:
        if not 0.0 < float(check_fraction) <= 1.0:
            raise ConfigError(f"auto.check_fraction must be in (0, 1], got {check_fraction}")
        if float(slack) < 0:
            raise ConfigError(f"auto.slack must be >= 0, got {slack}")
        if gap is not None and not float(gap) >= 0:
            raise ConfigError(f"auto.gap must be >= 0 or null, got {gap}")
        if budget_s is not None and not float(budget_s) > 0:
            raise ConfigError(f"auto.budget_s must be > 0 or null, got {budget_s}")
        parsed = []
        for c in candidates:
            c = dict(c)
            unknown = set(c) - {"strategy", "min_per_class", "gap_from"}
            if "strategy" not in c or unknown:
                raise ConfigError(
                    "auto.candidates entries are {strategy: <conf/strategy name>, min_per_class: <int>, "
                    f"gap_from: <fraction or null>}}, got {c}"
                )
            gap_from = float(c.get("gap_from") or 0.0)
            if not 0.0 <= gap_from <= 1.0:
                raise ConfigError(f"auto.candidates: gap_from must be in [0, 1] or null, got {c}")
            parsed.append(Candidate(str(c["strategy"]), int(c.get("min_per_class", 0)), gap_from))
        names = [c.strategy for c in parsed]
        if PROBE in names or len(set(names)) != len(names) or "auto" in names:
            raise ConfigError(
                f"auto.candidates must name distinct strategies other than {PROBE} (always tried first) and auto; "
                f"got {names}"
            )
        self.candidates, self.check_fraction, self.slack = parsed, float(check_fraction), float(slack)
        self.gap, self.prune_deeper = (None if gap is None else float(gap)), bool(prune_deeper)
        self.budget_s = None if budget_s is None else float(budget_s)


class _Race(pl.Callback):
    """Stops a candidate that can no longer beat the best so far, or runs past the deadline.

    Args:
        best_so_far: the leader's best validation accuracy (-1: no leader yet).
        leader_curve: the leader's ``[step, val/acc]`` at each of its validations (empty: no step-wise comparison).
        check_fraction, slack, gap: as in :class:`Auto`.
        gap_from: the gap rule applies from this fraction of the steps on (and not before ``check_fraction``).
        deadline: ``time.monotonic()`` past which the search's budget is spent, or None.
    """

    def __init__(
        self,
        best_so_far: float,
        leader_curve: list[list[float]],
        check_fraction: float,
        slack: float,
        gap: float | None,
        deadline: float | None,
        gap_from: float = 0.0,
    ) -> None:
        self.best_so_far, self.leader_curve, self.gap_from = best_so_far, leader_curve, gap_from
        self.check_fraction, self.slack, self.gap, self.deadline = check_fraction, slack, gap, deadline
        self.stopped: str | None = None
        self.lost = False  # stopped because it could no longer win (then its test pass is skipped)
        self.trailed = False  # stopped by the gap rule
        self.progress = 0.0
        self.curve: list[list[float]] = []  # [step, val/acc] at each validation, for the candidates after this one

    def on_validation_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not module.val_history:
            return
        step = int(trainer.global_step)
        self.curve.append([step, float(module.val_history[-1]["val/acc"])])
        # Outside a fit (trainer.validate: a probe-only candidate or LP-FT's stage 1 at step 0; the final weights of
        # one that stopped before its first validation) the trainer has no training loader to estimate steps from.
        if trainer.state.fn != TrainerFn.FITTING:
            self.progress = 1.0 if step else 0.0
        else:
            self.progress = min(1.0, step / max(1, trainer.estimated_stepping_batches)) if step else 0.0
        best = max(h["val/acc"] for h in module.val_history)
        # the leader's best validation accuracy by the same step
        lead = max((acc for s, acc in self.leader_curve if s <= step), default=None)
        if self.deadline is not None and time.monotonic() > self.deadline and step:  # (a probe at step 0 is done)
            self.stopped = f"budget spent at {self.progress:.0%}"
        elif self.progress >= self.check_fraction and self.progress < 1:
            gap_applies = self.gap is not None and lead is not None and self.progress >= self.gap_from
            if gap_applies and best + self.gap < lead:
                self.stopped = (
                    f"stopped at {self.progress:.0%}: val/acc {best:.4f} trails the leader's {lead:.4f} at step {step}"
                )
                self.trailed = True
            elif best + self.slack * (1 - self.progress) < self.best_so_far:
                self.stopped = (
                    f"stopped at {self.progress:.0%}: val/acc {best:.4f} could not reach {self.best_so_far:.4f}"
                )
            self.lost = self.stopped is not None
        if self.stopped:
            trainer.should_stop = True
            log.info("auto: %s", self.stopped)


def run_auto(cfg: DictConfig, out_dir: Path, compose: Callable[[str], DictConfig]) -> dict[str, Any]:
    """Try the candidates as ``cfg.auto`` says, make the winner the run's model, and return the run's results.

    Args:
        cfg: the run's config (with an ``auto`` section).
        out_dir: the run directory; each candidate trains in ``out_dir/candidates/<strategy>``.
        compose: the config of a candidate, from its strategy name (the face composes it with Hydra, from the same
            overrides as this run). Only called for candidates that have no saved config yet, so a resumed run
            (whose config comes from its own directory) never composes again.
    """
    start, cpu_start = time.perf_counter(), time.process_time()
    out_dir = Path(out_dir)
    done = read_results(out_dir)
    if skipped(done, cfg, out_dir):  # as a finished fixed run is
        return done
    settings: Auto = instantiate(cfg.auto)
    names = [PROBE, *settings_names(settings)]
    fresh: dict[str, DictConfig] = {}
    if starts_over(cfg) and (out_dir / CANDIDATES_DIR).is_dir() and not other_process():
        # resume=false: the search starts over, from candidates composed anew from this command (their saved configs
        # and finished results were reused: the run's config said one thing and its candidates had trained another).
        # All are composed before anything is removed: a rerun from the saved config composes from the saved ones.
        fresh = {name: compose(name) for name in names}
        log.info("auto: resume=false: the candidates of the earlier search in %s are replaced", out_dir)
        shutil.rmtree(out_dir / CANDIDATES_DIR)
    configs = {name: _candidate_config(out_dir, name, compose, fresh.get(name)) for name in names}
    # seeded as a fixed run is before it builds anything: a randomly initialised backbone (pretrained=false) is then
    # the same as the one its strategy run alone would build
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    prepared = prepare(configs[PROBE], out_dir)
    data = prepared.data
    per_class = len(data.samples["train"]) / len(data.classes)
    deadline = time.monotonic() + settings.budget_s if settings.budget_s else None
    log.info("auto: %.0f training images per class; candidates %s", per_class, list(configs))

    # One pass over the images extracts every cut a cached candidate will read, alongside the probe's own.
    # A candidate this backbone cannot build (head=reinit_last on a ViT) is skipped, saying why; the rest go on.
    cuts, unfit = [], {}
    for c in settings.candidates:
        if per_class >= c.min_per_class:
            try:
                cuts.append(_cut_of(configs[c.strategy], prepared, out_dir / CANDIDATES_DIR / c.strategy))
            except ConfigError as e:
                unfit[c.strategy] = str(e)
                log.warning("auto: %s is skipped: %s", c.strategy, e)
    prefetch = tuple(c for c in cuts if c is not None)
    tried: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    trailed: str | None = None  # the candidate that ended the search by trailing the leader (prune_deeper)
    resumed = False  # some candidate finished, or started, before an interruption: its time is not in this search's
    for name in names:
        cand = next((c for c in settings.candidates if c.strategy == name), Candidate(name))
        row: dict[str, Any] = {"strategy": name, "dir": f"{CANDIDATES_DIR}/{name}"}
        spent = deadline is not None and time.monotonic() > deadline and best is not None
        why_not = unfit.get(name) or skip_reason(
            cand, per_class, spent, trailed if settings.prune_deeper else None, settings.gap
        )
        if why_not:
            tried.append(row | {"status": "skipped", "why": why_not})
            if name not in unfit:  # (those were named with their error above)
                log.info("auto: %s skipped: %s", name, why_not)
            continue
        run_dir = out_dir / CANDIDATES_DIR / name
        race = _Race(
            best["val/acc"] if best else -1.0,
            best["curve"] if best else [],
            settings.check_fraction,
            settings.slack,
            settings.gap,
            deadline,
            cand.gap_from,
        )
        # a finished candidate is not trained again (a resumed search), unless resume=false starts the search over
        results = {} if starts_over(cfg) else read_results(run_dir) or {}
        read_back = results.get("status") == "ok"
        if not read_back:
            log.info("auto: training candidate %s", name)
            try:
                results = train(
                    configs[name],
                    run_dir,
                    prepared,
                    (race,),
                    prefetch if name == PROBE else (),
                    summary=False,
                    html=False,
                    resume_dir=out_dir,
                )
            except (KeyboardInterrupt, SystemExit):  # Ctrl-C or SIGTERM: the search resumes as a whole
                if not other_process():
                    write_results(
                        out_dir, {"status": "interrupted", "candidate": name, "resume": resume_command(out_dir)}
                    )
                raise
            except Diverged as e:  # a candidate whose training blew up cannot win; the others still can
                if not other_process():
                    write_results(run_dir, {"status": "failed", "error": str(e)})
                tried.append(row | {"status": "failed", "why": str(e)})
                log.warning("auto: %s failed: %s", name, e)
                continue
            results["auto_candidate"] = {
                "stopped": race.stopped,
                "trailed": race.trailed,
                "progress": round(race.progress, 3),
                "curve": race.curve,
            }
            if not other_process():
                write_results(run_dir, results)
        resumed = resumed or read_back or bool(results["timing"].get("resumed"))
        stop = results.get("auto_candidate", {})
        entry = row | {
            "status": "stopped" if stop.get("stopped") else "finished",
            "val/acc": results["metrics"].get("val/acc"),
            "test/acc": results["metrics"].get("test/acc"),
            "seconds": results["timing"]["total_s"],
            "epochs": results.get("epochs"),
            "progress": stop.get("progress") if stop.get("stopped") else 1.0,  # the fraction of its steps it trained
            "why": stop.get("stopped") or "trained to the end",
        }
        tried.append(entry)
        log.info(
            "auto: %s %s: val/acc %.4f in %.1fs (%s)",
            name,
            entry["status"],
            entry["val/acc"],
            entry["seconds"],
            entry["why"],
        )
        if stop.get("trailed"):
            trailed = name
        if best is None or entry["val/acc"] > best["val/acc"]:
            best = entry | {"results": results, "curve": stop.get("curve", [])}
    if best is None:
        raise ConfigError("auto tried no candidate; lower auto.candidates' min_per_class or raise auto.budget_s")
    seconds, cpu_s = time.perf_counter() - start, time.process_time() - cpu_start
    return _finish(out_dir, best, tried, per_class, seconds, cpu_s, resumed)


def skip_reason(
    cand: Candidate, per_class: float, budget_spent: bool, trailed: str | None, gap: float | None
) -> str | None:
    """Why ``cand`` is not tried, or None when it is.

    Args:
        cand: the candidate.
        per_class: training images per class.
        budget_spent: the search's time budget is spent (and some candidate finished).
        trailed: an earlier candidate stopped for trailing the leader's curve by more than ``gap`` (prune_deeper).
        gap: ``auto.gap``, for the message.
    """
    if per_class < cand.min_per_class:
        return f"fewer than {cand.min_per_class} images per class"
    if budget_spent:
        return "budget spent"
    if trailed:
        return f"{trailed} trailed the leader by more than {gap:g} at the same step; {cand.strategy} trains more"
    return None


def _cut_of(cfg: DictConfig, prepared: Prepared, run_dir: Path) -> int | str | None:
    """Where a candidate's cached activations would be cut, or None when it cannot train from the cache; a
    ConfigError when its network cannot be built on this backbone."""
    backbone, data = prepared.take(cfg, run_dir)
    logging.disable(logging.INFO)  # its info lines (freeze=..., reinit_last: ...) come when the candidate trains
    try:
        net = build_network(cfg, backbone, len(data.classes))[0]
    finally:
        logging.disable(logging.NOTSET)
    if cfg.data.augment or str(cfg.cache.enabled).lower() == "false":
        return None
    return find_cut(net)


def settings_names(settings: Auto) -> list[str]:
    """The deeper candidates' strategy names, in the order they are tried."""
    return [c.strategy for c in settings.candidates]


def _candidate_config(
    out_dir: Path, name: str, compose: Callable[[str], DictConfig], fresh: DictConfig | None = None
) -> DictConfig:
    """The candidate's saved config, or a newly composed one (``fresh``, if composed already), saved into its run
    directory (reproducible alone)."""
    path = out_dir / CANDIDATES_DIR / name / ".hydra" / "config.yaml"
    if fresh is not None or not path.is_file():
        cfg = compose(name) if fresh is None else fresh
        if OmegaConf.select(cfg, "auto") is not None:
            raise ConfigError(f"strategy={name} composes another auto run; auto.candidates must name fixed strategies")
        path.parent.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, path, resolve=True)
        make_rerunnable(path)
    return load_saved_config(path)


def _spread(results: dict[str, Any]) -> str:
    """`` (mean; 5-13)`` where the classes have unequal numbers of training images, else nothing."""
    counts = list((results.get("data", {}).get("train_per_class") or {}).values())
    return f" (mean; {min(counts)}-{max(counts)})" if counts and min(counts) != max(counts) else ""


def _finish(
    out_dir: Path,
    best: dict[str, Any],
    tried: list[dict[str, Any]],
    per_class: float,
    seconds: float,
    cpu_s: float,
    resumed: bool,
) -> dict[str, Any]:
    """The winner becomes the run's model: its checkpoint, file lists and results, plus the auto section. ``seconds``
    and ``cpu_s``: this process's search; ``resumed``: it went on from an interrupted one, whose time is not in them."""
    probe = next(t for t in tried if t["strategy"] == PROBE)
    others = [t for t in tried if t is not best and t.get("val/acc") is not None and t["strategy"] != best["strategy"]]
    runner_up = max(others, key=lambda t: t["val/acc"], default=None)
    versus = _versus(best, runner_up, best["results"].get("data", {}).get("val"))
    reason = (
        f"{best['strategy']} won with val/acc {best['val/acc']:.4f}{versus} at {per_class:.0f} training images per "
        f"class{_spread(best['results'])}; {sum(t['status'] != 'skipped' for t in tried)} of {len(tried)} candidates "
        "trained"
    )
    results = {k: v for k, v in best["results"].items() if k != "auto_candidate"}
    results["checkpoint"] = "checkpoints/best.ckpt"
    results["strategy"] = f"auto: {results.get('strategy', best['strategy'])}"
    results["timing"] = dict(
        results["timing"],
        total_s=round(seconds, 3),
        cpu_s=round(cpu_s, 3),
        winner_s=results["timing"]["total_s"],
        winner_cpu_s=results["timing"].get("cpu_s"),
        resumed=resumed,
    )
    results["auto"] = {
        "winner": best["strategy"],
        "winner_dir": best["dir"],
        "reason": reason,
        "train_per_class": per_class,
        "probe_val_acc": probe.get("val/acc"),
        "candidates": [{k: v for k, v in t.items() if k not in ("results", "curve")} for t in tried],
    }
    if other_process():  # a multi-device run: every process searched, the first one writes
        return results
    winner_dir = out_dir / best["dir"]
    (out_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(winner_dir / best["results"]["checkpoint"], out_dir / "checkpoints" / "best.ckpt")
    for name in ("files.json", "val_predictions.csv"):  # what the run report is built from
        if (winner_dir / name).is_file():
            shutil.copyfile(winner_dir / name, out_dir / name)
    for name in ("logs", "gallery"):
        if (winner_dir / name).is_dir():
            shutil.copytree(winner_dir / name, out_dir / name, dirs_exist_ok=True)
    write_results(out_dir, results)
    try:
        write_run_report(out_dir)
    except Exception as e:  # a broken report must not fail a finished search
        log.warning("could not write the run report (%s); retry with: python -m tlx.report %s", e, out_dir)
    log.info("auto: %s", reason)
    print_summary(results, out_dir)
    return results


def _versus(best: dict[str, Any], runner_up: dict[str, Any] | None, n_val: int | None) -> str:
    """How the winner beat the runner-up, for the reason line: the margin, and on how many validation images."""
    if runner_up is None:
        return ""
    margin = best["val/acc"] - runner_up["val/acc"]
    if margin == 0:  # the first of equals wins: candidates are tried from the cheapest
        versus = f" (tied with {runner_up['strategy']}, which was tried after it"
    else:
        versus = f" ({margin * 100:+.1f} points over {runner_up['strategy']}"
        if n_val:  # how many images decided it: on small validation sets a point is one or two images
            versus += f": {round(margin * n_val)} of {n_val} validation images"
    if runner_up["status"] == "stopped" and runner_up.get("progress") is not None:
        versus += f", stopped at {runner_up['progress']:.0%} of its steps"  # a partial score, not its final one
    return versus + ")"
