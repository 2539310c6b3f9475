"""LP-FT and ``+experiment=auto``: stage 2 starts from the probe's head, auto is deterministic, resumes without
redoing candidates, and its winner is the run's model for predict and export."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from tlx.auto import _spread, _versus
from tlx.predict import load_run
from tlx.probe import Probe, fit_probe
from tlx.run import train

from .conftest import CONF, TINY, run_cli, run_main, write_images

AUTO_RUN = [*TINY, "data=folder", "data.val_fraction=0.25", "+experiment=auto", "data.samples_per_class=null"]


class _HeadAtStart(pl.Callback):
    def __init__(self) -> None:
        self.weight: torch.Tensor | None = None

    def on_train_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self.weight = module.net.head.fc.weight.detach().clone()


def test_lp_ft_stage_two_starts_from_the_probe_head(make_cfg, tmp_path):
    data = write_images(tmp_path / "imgs", n=8)
    common = ["data=folder", f"data.root={data}", "data.val_fraction=0.25"]
    probe_run = train(make_cfg(*common, "strategy=head_only"), tmp_path / "probe")
    seen = _HeadAtStart()
    lp_ft = train(make_cfg(*common, "strategy=lp_ft"), tmp_path / "lp_ft", callbacks=(seen,))

    probe_head = torch.load(tmp_path / "probe" / "checkpoints" / "best.ckpt", weights_only=False)["state_dict"]
    assert torch.equal(seen.weight, probe_head["net.head.fc.weight"])  # the head stage 2 starts from = the probe's
    assert [s["stage"] for s in lp_ft["stages"]] == ["probe", "finetune"]
    assert lp_ft["stages"][0]["val/acc"] == pytest.approx(probe_run["metrics"]["val/acc"])
    assert lp_ft["stages"][1]["epochs"] == 2 and lp_ft["freeze"] == "last_n(n=2)"
    tuned = torch.load(tmp_path / "lp_ft" / lp_ft["checkpoint"], weights_only=False)["state_dict"]
    assert not torch.equal(tuned["net.head.fc.weight"], seen.weight)  # and stage 2 trained it further
    assert lp_ft["best_epoch"] is not None and not (tmp_path / "lp_ft" / "checkpoints" / "stage1.ckpt").exists()

    # Where fine-tuning only makes it worse (an lr that wrecks the weights), the run keeps stage 1's model: it used to
    # keep the best fine-tuning epoch whatever it scored
    clear = write_images(tmp_path / "clear", n=8, shift=100)  # classes far enough apart for the probe (val/acc 0.67)
    seen = _HeadAtStart()
    wrecked = train(
        make_cfg("data=folder", f"data.root={clear}", "data.val_fraction=0.25", "strategy=lp_ft", "optim.lr=1e3"),
        tmp_path / "wrecked",
        callbacks=(seen,),
    )
    assert wrecked["stages"][1]["val/acc"] < wrecked["stages"][0]["val/acc"]
    assert wrecked["best_epoch"] is None and wrecked["checkpoint"] == "checkpoints/best.ckpt"
    kept = torch.load(tmp_path / "wrecked" / "checkpoints" / "best.ckpt", weights_only=False)["state_dict"]
    assert torch.equal(kept["net.head.fc.weight"], seen.weight)  # stage 1's head, tested: val/acc as the probe's
    assert wrecked["metrics"]["val/acc"] == pytest.approx(wrecked["stages"][0]["val/acc"])
    assert sorted(p.name for p in (tmp_path / "wrecked" / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]


def test_a_linear_head_with_dropout_trains_in_the_loop_not_the_probe(make_cfg, tmp_path):
    """The probe has no dropout: a head_only run with head.dropout > 0 trains its head with the Lightning loop (the
    setting was once silently dropped), one without uses the probe."""
    overrides = ["strategy=head_only", "data.samples_per_class=6", "trainer.max_epochs=2"]
    dropped = train(make_cfg(*overrides, "head.dropout=0.3"), tmp_path / "dropout")
    plain = train(make_cfg(*overrides), tmp_path / "plain")
    assert [s["stage"] for s in dropped["stages"]] == ["train"]
    assert [s["stage"] for s in plain["stages"]] == ["probe"]


def test_probe_picks_the_candidate_with_lowest_val_loss():
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(3, 16, generator=g) * 2
    y, vy = torch.arange(60) % 3, torch.arange(30) % 3
    x = centers[y] + torch.randn(60, 16, generator=g)
    vx = centers[vy] + torch.randn(30, 16, generator=g)
    fitted = fit_probe(x, y, vx, vy, 3, Probe(lr=(1e-4, 1e-2), weight_decay=(0.0,), epochs=20))
    assert len(fitted.table) == 2
    assert fitted.lr == min(fitted.table, key=lambda r: r["val/loss"])["lr"] == 1e-2  # 1e-4 barely moves in 20 epochs
    assert ((vx @ fitted.weight.t() + fitted.bias).argmax(1) == vy).float().mean() > 0.8


def test_probe_trains_large_grids_on_the_runs_threads_and_small_ones_on_one(monkeypatch):
    """Small steps (the demo's) run on one thread, where more were no faster; large ones (here 64 features x 1281 x
    16 candidates x 30 classes a step) on the run's threads, 1.5-1.8x faster on 2 cores (bench/probe_large.py), with
    the head that one thread gives, and the run's threads back afterwards."""
    set_threads, used = torch.set_num_threads, []
    monkeypatch.setattr(torch, "set_num_threads", lambda n: used.append(n) or set_threads(n))
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(4096, 1280, generator=g), torch.arange(4096) % 30
    probe = Probe(epochs=1)  # the 16 candidates
    set_threads(2)
    large = fit_probe(x, y, x[:300], y[:300], 30, probe)
    assert used[-2:] == [2, 2] and torch.get_num_threads() == 2
    small = fit_probe(x[:60, :100], y[:60] % 3, x[:30, :100], y[:30] % 3, 3, probe)
    assert used[-2:] == [1, 2] and torch.get_num_threads() == 2
    set_threads(1)
    one = fit_probe(x, y, x[:300], y[:300], 30, probe)
    set_threads(2)
    assert (large.lr, large.weight_decay, large.epoch) == (one.lr, one.weight_decay, one.epoch)
    assert torch.allclose(large.weight, one.weight, atol=1e-5) and small.weight.shape == (3, 100)


def test_probe_draws_its_epochs_with_the_samplers_weights():
    """data.balance=sampler: the probe's epochs are draws in proportion to the sample weights, as the loader's are.
    With an lr too small to move the head, an epoch's train loss is the mean cross-entropy over what it drew: with
    all the weight on sample 3, that of sample 3 alone; without weights (a shuffle), that of all samples."""
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(40, 8, generator=g), torch.arange(40) % 2
    probe = Probe(lr=(1e-12,), weight_decay=(0.0,), epochs=2)
    only_3 = fit_probe(x, y, x, y, 2, probe, sample_weight=(torch.arange(40) == 3).double())
    shuffled = fit_probe(x, y, x, y, 2, probe)

    def loss(fitted, rows):
        return float(torch.nn.functional.cross_entropy(x[rows] @ fitted.weight.t() + fitted.bias, y[rows]))

    assert [h["train/loss"] for h in only_3.history] == pytest.approx([loss(only_3, [3])] * 2, rel=1e-5)
    assert [h["train/loss"] for h in shuffled.history] == pytest.approx([loss(shuffled, slice(None))] * 2, rel=1e-5)
    assert loss(only_3, [3]) != pytest.approx(loss(only_3, slice(None)), rel=1e-3)


def test_auto_seeds_a_random_init_as_a_fixed_run_does(make_cfg, tmp_path, monkeypatch):
    """backbone.pretrained=false: auto's probe candidate is the same run as head_only alone, whatever the global RNG
    held before (auto once built the backbone unseeded). Run again, the finished search is skipped (skip_done) without
    building anything."""
    from tlx.auto import run_auto

    overrides = ["backbone.pretrained=false", "data.samples_per_class=6", "trainer.max_epochs=2"]
    alone = train(make_cfg(*overrides, "strategy=head_only"), tmp_path / "alone")
    torch.manual_seed(12345)
    searched = run_auto(
        make_cfg(*overrides, "+experiment=auto", "auto.candidates=[]"),
        tmp_path / "auto",
        lambda name: make_cfg(*overrides, f"strategy={name}"),
    )
    assert searched["auto"]["winner"] == "head_only"
    assert searched["metrics"]["val/acc"] == alone["metrics"]["val/acc"]
    assert searched["stages"][0]["table"] == alone["stages"][0]["table"]

    def built(*args, **kwargs):
        raise AssertionError("a finished auto run was prepared again")

    monkeypatch.setattr("tlx.auto.prepare", built)
    again = run_auto(make_cfg(*overrides, "+experiment=auto", "auto.candidates=[]"), tmp_path / "auto", built)
    assert again["metrics"] == json.loads(json.dumps(searched["metrics"]))


def _auto(tmp_path: Path, name: str, data: Path, *extra: str, run=run_cli) -> dict:
    out = tmp_path / name
    done = run(*AUTO_RUN, f"data.root={data}", f"cache.dir={tmp_path / 'cache'}", f"hydra.run.dir={out}", *extra)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((out / "results.json").read_text())


@pytest.fixture(scope="module")
def auto_runs(tmp_path_factory):
    """Two auto runs of the same data and seed, in separate directories: one in a new interpreter, one in this
    process (after other tests have run in it)."""
    tmp = tmp_path_factory.mktemp("auto")
    data = write_images(tmp / "imgs", n=8)
    return tmp, data, _auto(tmp, "a", data), _auto(tmp, "b", data, run=run_main)


def test_auto_tries_candidates_and_keeps_the_best(auto_runs):
    tmp, _, first, _ = auto_runs
    auto = first["auto"]
    tried = {c["strategy"]: c for c in auto["candidates"]}
    assert list(tried)[0] == "head_only" and tried["head_only"]["status"] == "finished"
    assert tried["full"]["status"] == "skipped"  # 6 images per class: under its min_per_class prior of 30
    trained = [c for c in auto["candidates"] if c["status"] != "skipped"]
    assert len(trained) >= 2
    assert auto["winner"] == max(trained, key=lambda c: c["val/acc"])["strategy"]
    assert first["metrics"]["val/acc"] == tried[auto["winner"]]["val/acc"]
    assert auto["winner"] in auto["reason"] and "images per class" in auto["reason"]
    # how many validation images the margin over the runner-up is
    runner_up = max((c for c in trained if c["strategy"] != auto["winner"]), key=lambda c: c["val/acc"])
    images = round((tried[auto["winner"]]["val/acc"] - runner_up["val/acc"]) * first["data"]["val"])
    margin = f"over {runner_up['strategy']}: {images} of {first['data']['val']} validation images"
    assert (margin if images else f"tied with {runner_up['strategy']}") in auto["reason"]
    assert (tmp / "a" / "checkpoints" / "best.ckpt").is_file()
    # the run is named by what it trained: the console summary's and report.html's titles read "auto: <winner>"
    winner = json.loads((tmp / "a" / auto["winner_dir"] / "results.json").read_text())
    assert first["strategy"] == f"auto: {winner['strategy']}"
    report = (tmp / "a" / "report.html").read_text()
    assert f"tlx run: {first['backbone']} / auto: {winner['strategy']}" in report
    # its time is the whole search's, with the winner's own share named as such
    assert f"{first['timing']['total_s']:.1f} s for the search; the winner&#x27;s own run in it: " in report
    # each trained candidate's freeze line once, as it trains (they were also said, out of turn, as the search began)
    log = (tmp / "a" / "tlx.log").read_text()
    assert log.count("[tlx.freeze][INFO] - freeze=") == len(trained)
    assert log.index("auto: training candidate reinit_last") < log.index("reinit_last: dropped")


def test_the_searchs_own_settings_stay_out_of_its_candidates():
    """auto.budget_s=60 on the command line failed every auto run ("Key 'auto' is not in struct"): each candidate is
    composed from the run's overrides, and a candidate has no auto section."""
    from hydra import initialize_config_dir

    from tlx.__main__ import _compose_candidate

    overrides = ["+experiment=auto", "auto.budget_s=60", "++auto.gap=0.05", "trainer.max_epochs=3"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = _compose_candidate("config", overrides, "reinit_last")
    assert "auto" not in cfg and cfg.trainer.max_epochs == 3 and cfg.head._target_.endswith("ReinitLastHead")


def test_reason_names_a_tie_and_a_partial_score():
    """A tie is said as one (the first of equals wins), not as "+0.0 points ... 0 of 300 validation images"."""
    best = {"strategy": "reinit_last", "val/acc": 0.9}
    tie = _versus(best, {"strategy": "last_n2", "val/acc": 0.9, "status": "finished"}, 300)
    assert tie == " (tied with last_n2, which was tried after it)"
    stopped = {"strategy": "full", "val/acc": 0.85, "status": "stopped", "progress": 0.25}
    assert (
        _versus(best, stopped, 300)
        == " (+5.0 points over full: 15 of 300 validation images, stopped at 25% of its steps)"
    )
    assert _versus(best, None, 300) == ""
    # "at 8 training images per class" for classes of 13, 5 and 6: the mean, said as one
    assert _spread({"data": {"train_per_class": {"a": 13, "b": 5, "c": 6}}}) == " (mean; 5-13)"
    assert _spread({"data": {"train_per_class": {"a": 8, "b": 8}}}) == ""


def test_a_candidate_is_the_same_run_as_its_strategy_alone(auto_runs):
    tmp, data, first, _ = auto_runs
    entry = next(c for c in first["auto"]["candidates"] if c["strategy"] == "reinit_last")
    out = tmp / "reinit_alone"
    extra = [f"data.root={data}", f"cache.dir={tmp / 'cache'}", f"hydra.run.dir={out}", "strategy=reinit_last"]
    done = run_main(*[o for o in AUTO_RUN if o != "+experiment=auto"], *extra)
    assert done.returncode == 0, done.stderr[-3000:]
    alone_results = json.loads((out / "results.json").read_text())
    assert alone_results["strategy"] == "reinit_last(1)"
    alone = alone_results["metrics"]
    assert alone["val/acc"] == entry["val/acc"]
    if entry["test/acc"] is not None:  # a candidate stopped as a loser skips its test pass
        assert alone["test/acc"] == entry["test/acc"]


def test_auto_is_deterministic_for_a_seed(auto_runs):
    _, _, first, second = auto_runs
    assert first["auto"]["winner"] == second["auto"]["winner"]
    strip = [{k: c.get(k) for k in ("strategy", "status", "val/acc", "test/acc")} for c in first["auto"]["candidates"]]
    again = [{k: c.get(k) for k in ("strategy", "status", "val/acc", "test/acc")} for c in second["auto"]["candidates"]]
    assert strip == again


def test_resumed_auto_does_not_redo_finished_candidates(auto_runs):
    tmp, data, first, _ = auto_runs
    run = tmp / "resumed"
    shutil.copytree(tmp / "a", run)
    # As if killed before the third candidate's first checkpoint: the later candidates hold only their composed
    # config, and the run never wrote its results.
    trained = [c["dir"] for c in first["auto"]["candidates"] if c["status"] != "skipped"]
    for later in trained[2:]:
        for path in (run / later).iterdir():
            if path.name != ".hydra":
                shutil.rmtree(path) if path.is_dir() else path.unlink()
    (run / "results.json").unlink()
    kept = {d: (run / d / "results.json").stat().st_mtime_ns for d in trained[:2]}
    done = run_main(
        "--config-path", str(run / ".hydra"), "--config-name", "config", f"hydra.run.dir={run}", "resume=true"
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert {d: (run / d / "results.json").stat().st_mtime_ns for d in trained[:2]} == kept  # not trained again
    resumed = json.loads((run / "results.json").read_text())
    assert all((run / d / "results.json").is_file() for d in trained)
    assert resumed["auto"]["winner"] == first["auto"]["winner"]
    # its time is this part's, and it says so (it said resumed: false beside the resumed part's seconds)
    assert resumed["timing"]["resumed"] and not first["timing"]["resumed"]
    assert "s for the search (the winner's own run in it: " in done.stdout and ", since the resume" in done.stdout


def test_resume_false_starts_the_search_over_with_this_commands_settings(auto_runs):
    """resume=false on a finished auto run reused its candidates (their saved configs and finished results): the run's
    config then said 1 epoch and its candidates had trained 2."""
    tmp, data, first, _ = auto_runs
    run = tmp / "over"
    shutil.copytree(tmp / "a", run)
    trained = [
        c["dir"] for c in first["auto"]["candidates"] if c["status"] == "finished" and c["strategy"] != "head_only"
    ]
    assert trained and all(json.loads((run / d / "results.json").read_text())["epochs"] == 2 for d in trained)
    again = _auto(tmp, "over", data, "trainer.max_epochs=1", "resume=false", run=run_main)
    assert again["epochs"] == 1 or again["auto"]["winner"] == "head_only"
    for d in trained:
        assert json.loads((run / d / "results.json").read_text())["epochs"] == 1, d
        assert "max_epochs: 1" in (run / d / ".hydra" / "config.yaml").read_text()


def test_resume_false_reruns_from_the_saved_config_without_losing_the_run(auto_runs):
    """The same from the run's saved config: its candidates are composed from their saved configs, which resume=false
    deleted first (the run was left with results pointing at candidates that were gone; every later rerun failed)."""
    tmp, _, first, _ = auto_runs
    run = tmp / "over_saved"
    shutil.copytree(tmp / "a", run)
    done = run_main(
        "--config-path", str(run / ".hydra"), "--config-name", "config", f"hydra.run.dir={run}", "resume=false"
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    again = json.loads((run / "results.json").read_text())
    assert again["status"] == "ok" and (run / again["auto"]["winner_dir"] / "checkpoints").is_dir()
    assert [c["strategy"] for c in again["auto"]["candidates"]] == [c["strategy"] for c in first["auto"]["candidates"]]


def test_auto_reruns_from_its_saved_config(auto_runs):
    """The README's rerun command on an auto run: its candidates come from the run's saved candidate configs (the
    saved config has no conf/ groups to compose them from; it once failed with "Key 'strategy' is not in struct")."""
    tmp, _, first, _ = auto_runs
    out = tmp / "rerun"
    done = run_main("--config-path", str(tmp / "a" / ".hydra"), "--config-name", "config", f"hydra.run.dir={out}")
    assert done.returncode == 0, done.stderr[-3000:]
    again = json.loads((out / "results.json").read_text())
    strip = [{k: c.get(k) for k in ("strategy", "status", "val/acc", "test/acc")} for c in first["auto"]["candidates"]]
    assert [{k: c.get(k) for k in strip[0]} for c in again["auto"]["candidates"]] == strip
    assert again["metrics"] == first["metrics"]


def test_a_rerun_applies_its_overrides_to_the_saved_candidates(tmp_path):
    from omegaconf import OmegaConf

    from tlx.errors import ConfigError
    from tlx.rerun import make_rerunnable, saved_candidate

    saved = tmp_path / "candidates" / "last_n2" / ".hydra" / "config.yaml"
    saved.parent.mkdir(parents=True)
    OmegaConf.save({"seed": 0, "data": {"root": "a", "batch_size": 8}, "cache": {"dir": None}}, saved)
    make_rerunnable(saved)  # the hydra: section a candidate's saved config carries is not part of its config
    cfg = saved_candidate(tmp_path, "last_n2", ["seed=3", "data.root=/b c", "+extra.k=1", "~cache"])
    assert OmegaConf.to_container(cfg) == {"seed": 3, "data": {"root": "/b c", "batch_size": 8}, "extra": {"k": 1}}
    with pytest.raises(ConfigError, match="candidates/full/.hydra/config.yaml is missing"):
        saved_candidate(tmp_path, "full", [])


def test_auto_winner_predicts_and_exports(auto_runs):
    tmp, data, first, _ = auto_runs
    run = tmp / "a"
    model = load_run(run)
    winner = load_run(run / first["auto"]["winner_dir"])
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(model.net(x), winner.net(x))
    done = run_main(f"run_dir={run}", f"inputs={data}", f"output={tmp / 'preds.csv'}", module="tlx.predict")
    assert done.returncode == 0, done.stderr[-2000:]
    assert len((tmp / "preds.csv").read_text().splitlines()) == 1 + 24
    done = run_main(f"run_dir={run}", "formats=[torchscript]", f"out={tmp / 'export'}", module="tlx.export")
    assert done.returncode == 0, done.stderr[-2000:]
    scripted = torch.jit.load(str(tmp / "export" / "model.pt"))
    assert torch.allclose(scripted(x), winner.net(x), atol=1e-5)


def _race_step(race, step: int, acc: float, total: int = 200, fitting: bool = True) -> str | None:
    """Feed ``race`` one validation at ``step`` of ``total`` with val/acc ``acc`` (in a fit, or in a trainer.validate
    after one); return why it stopped, if it did."""
    from types import SimpleNamespace

    from pytorch_lightning.trainer.states import TrainerFn

    history = getattr(race, "_test_history", [])
    history.append({"val/acc": acc})
    race._test_history = history
    trainer = SimpleNamespace(
        sanity_checking=False,
        global_step=step,
        estimated_stepping_batches=total if fitting else None,  # (Lightning raises: no training loader)
        should_stop=False,
        state=SimpleNamespace(fn=TrainerFn.FITTING if fitting else TrainerFn.VALIDATING),
    )
    race.on_validation_end(trainer, SimpleNamespace(val_history=history))
    return race.stopped if trainer.should_stop else None


def test_race_stops_a_candidate_that_trails_the_leader_at_the_same_step():
    from tlx.auto import _Race

    leader = [[50, 0.57], [100, 0.60], [150, 0.64], [200, 0.65]]
    # 10 points behind the leader's curve at step 50: stopped there, at the first check (25%)
    far = _Race(0.65, leader, check_fraction=0.25, slack=1.0, gap=0.04, deadline=None)
    assert "trails the leader's 0.5700 at step 50" in _race_step(far, 50, 0.47)
    assert far.lost and far.trailed and far.curve == [[50, 0.47]]
    # 3 points behind at every step: within the gap, and the slack bound (1.0) cannot stop it: it trains to the end
    near = _Race(0.65, leader, check_fraction=0.25, slack=1.0, gap=0.04, deadline=None)
    assert [_race_step(near, s, a - 0.03) for s, a in leader[:3]] == [None, None, None]
    # the same 10 points behind, but before check_fraction (50%): not yet judged
    early = _Race(0.65, leader, check_fraction=0.5, slack=1.0, gap=0.04, deadline=None)
    assert _race_step(early, 50, 0.47) is None
    # compared with the leader's best by the same step, never with its later (higher) values
    catching_up = _Race(0.65, leader, check_fraction=0.25, slack=1.0, gap=0.04, deadline=None)
    assert _race_step(catching_up, 50, 0.54) is None  # 0.54 + 0.04 >= 0.57, though far below the leader's 0.65
    # a candidate with gap_from=0.5 (full fine-tuning) is not judged by the gap at 25%, only by the slack bound
    late = _Race(0.65, leader, check_fraction=0.25, slack=1.0, gap=0.04, deadline=None, gap_from=0.5)
    assert _race_step(late, 50, 0.47) is None
    assert "trails the leader's 0.6000 at step 100" in _race_step(late, 100, 0.50)
    # gap=null leaves only the slack bound: 0.47 + 0.1 * 0.75 < 0.65
    no_gap = _Race(0.65, leader, check_fraction=0.25, slack=0.1, gap=None, deadline=None)
    assert "could not reach 0.6500" in _race_step(no_gap, 50, 0.47)
    assert no_gap.lost and not no_gap.trailed  # lost, but not by trailing: the deeper candidates are still tried
    # past the budget: a training candidate stops; the probe, validated once at step 0 when it has finished, is not
    # recorded as stopped (it was: "budget spent at 0%" on a fully fitted probe)
    assert _race_step(_Race(-1.0, [], 0.25, 0.15, 0.03, deadline=0.0), 100, 0.5) == "budget spent at 50%"
    assert _race_step(_Race(-1.0, [], 0.25, 0.15, 0.03, deadline=0.0), 0, 0.5) is None
    # the final weights of a candidate that stopped before its first validation (trainer.max_steps=3), validated
    # after its fit: trained to the end (it failed on Lightning's step estimate without a training loader)
    ended = _Race(0.65, leader, check_fraction=0.25, slack=1.0, gap=0.04, deadline=None)
    assert _race_step(ended, 3, 0.5, fitting=False) is None and ended.progress == 1.0


def test_a_candidate_that_trails_the_leader_skips_the_deeper_ones():
    from tlx.auto import Candidate, skip_reason

    full = Candidate("full", min_per_class=100)
    assert skip_reason(full, 800, False, None, 0.04) is None
    assert skip_reason(full, 30, False, None, 0.04) == "fewer than 100 images per class"
    assert skip_reason(full, 800, True, None, 0.04) == "budget spent"
    why = skip_reason(full, 800, False, "last_n2", 0.04)
    assert why == "last_n2 trailed the leader by more than 0.04 at the same step; full trains more"


def test_auto_refuses_a_bad_gap_from():
    from tlx.auto import Auto
    from tlx.errors import ConfigError

    assert Auto([{"strategy": "full", "gap_from": 0.5}]).candidates[0].gap_from == 0.5
    with pytest.raises(ConfigError, match="gap_from must be in"):
        Auto([{"strategy": "full", "gap_from": 2}])


def test_probe_train_loss_is_the_cross_entropy_it_trains():
    """With an lr too small to move the weights, each epoch's logged train loss is the cross-entropy of the initial
    head on the training features (class weights and label smoothing included), as F.cross_entropy computes it."""
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(40, 8, generator=g), torch.arange(40) % 4
    weight = torch.tensor([1.0, 2.0, 0.5, 1.5])
    fitted = fit_probe(x, y, x[:8], y[:8], 4, Probe(lr=(1e-12,), weight_decay=(0.0,), epochs=2), 0, 0.1, weight)
    head = torch.nn.Linear(8, 4)
    with torch.no_grad():
        head.weight.copy_(fitted.weight)
        head.bias.copy_(fitted.bias)
        expected = torch.nn.functional.cross_entropy(
            head(x), y, weight=weight, label_smoothing=0.1, reduction="none"
        ).mean()
    assert [h["train/loss"] for h in fitted.history] == pytest.approx([float(expected)] * 2, rel=1e-5)
