"""``python -m tlx +experiment=small_data``: train a transfer-learning classifier as the Hydra config says."""

from __future__ import annotations

import importlib.util
import logging
import math
import re
import shlex
import signal
import sys
from functools import partial
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

# Light imports only up to here: Hydra parses the command line before torch, timm and Lightning load, so a mistyped
# key or choice ends in one line within about a second.
from tlx import CONF
from tlx.errors import ConfigError, Terminated, install_hint
from tlx.jsonfile import probe_writable
from tlx.rerun import anchor_data, data_location, make_rerunnable, override_key, saved_candidate, source_run

log = logging.getLogger("tlx")


def _say_nothing(unraisable: Any) -> None:
    """An unraisable-exception hook that says nothing."""


def _user_error(e: BaseException) -> str | None:
    """The one-line message for errors the user can fix, else None."""
    cause = e
    while cause is not None:
        if isinstance(cause, ConfigError):
            return str(cause)
        cause = cause.__cause__ or cause.__context__
    if isinstance(e, MissingMandatoryValue):
        return f"{e.full_key} has no value (??? in conf/); set {e.full_key}=<value> on the command line"
    if isinstance(e, InstantiationException):
        # "Error in call to target 'X':\nTypeError(...)\nfull_key: optim": the error lines, then where
        lines = str(e).strip().splitlines()
        where = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("full_key:")), None)
        what = " ".join(ln for ln in lines if not ln.startswith(("full_key:", "object_type=")))
        return f"{what}{f' (in {where})' if where else ''}; check the config keys against conf/"
    return None


def _compose_candidate(
    config_name: str,
    overrides: list[str],
    strategy: str,
    gpu_job: tuple[int, int] | None = None,
    rerun_of: Path | None = None,
) -> DictConfig:
    """The config of an auto candidate: this run's own overrides but the search's (``auto.*``), with
    ``strategy=<candidate>`` instead of auto.

    ``gpu_job``: (job number, visible GPUs) of a sweep job, which is pinned to a GPU as the auto job itself was.
    ``rerun_of``: the run whose saved config this run reruns; its saved candidate config is the base instead.
    """
    # The search's own settings (auto.budget_s=..., +auto.x=...) are not the candidate's: it has no auto section
    kept = [o for o in overrides if not o.lstrip("+~").startswith(("strategy=", "auto.", "auto="))]
    if rerun_of is not None:
        cfg = saved_candidate(rerun_of, strategy, kept)
        anchor_data(cfg, rerun_of, kept)  # as the auto run's own data.root
    else:
        cfg = hydra.compose(config_name=config_name, overrides=[*kept, f"strategy={strategy}"])
    if gpu_job is not None:
        from tlx.devices import place_job

        place_job(cfg.trainer, *gpu_job)
    return cfg


class WritableOutput(Callback):
    """Hydra callback: an unwritable run or sweep directory ends with one line, before Hydra writes its config there
    (Hydra itself would stop with a traceback)."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        _require_writable(Path(str(config.hydra.run.dir)), "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _require_writable(Path(str(config.hydra.sweep.dir)), "hydra.sweep.dir")


def _require_writable(folder: Path, key: str) -> None:
    try:
        probe_writable(folder)
    except OSError as e:
        print(f"tlx: error: cannot write the output directory {folder} ({e.strerror or e}); set {key}=<writable "
              "folder>", file=sys.stderr)  # fmt: skip
        sys.exit(2)


# Settings that change neither what a run trains nor how it is measured: a run may continue under other values.
_SAME_RUN_IGNORES = {
    "resume", "verbose", "skip_done", "trainer.enable_progress_bar", "data.num_workers", "last_checkpoint_every_s",
    "cache.dir", "cache.lock_timeout_s",
}  # fmt: skip


class SameRun(Callback):
    """Hydra callback: a ``hydra.run.dir`` that holds a run (finished, interrupted, or killed with a last.ckpt) is
    continued or skipped only with that run's config. Another config ends with one line before Hydra writes its
    config there: it would replace the saved config (then ``tlx.predict``/``tlx.export`` rebuild another network than
    the checkpoint's) and resume a checkpoint of another network (a traceback, and the interrupted run unresumable).
    ``resume=false`` starts the directory over, as asked."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        run_dir = Path(str(config.hydra.run.dir))
        message = _other_run(run_dir, config)
        if message:
            from tlx.results import resume_command

            same = resume_command(run_dir).removesuffix(" resume=true")
            print(f"tlx: error: {message}; continue it as it was ({same}), choose another hydra.run.dir, or start "
                  "this one over with resume=false", file=sys.stderr)  # fmt: skip
            sys.exit(2)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        message = _other_sweep(config)
        if message:
            print(f"tlx: error: {message}", file=sys.stderr)
            sys.exit(2)


def _other_run(run_dir: Path, config: DictConfig, searched: tuple[str, ...] = ()) -> str | None:
    """Why ``config`` cannot run in ``run_dir`` (a run of another config is there), or None. ``searched``: keys (and
    groups) a search sets per run, not compared."""

    from tlx.results import read_results, starts_over

    saved = run_dir / ".hydra" / "config.yaml"
    status = (read_results(run_dir) or {}).get("status")
    last = run_dir / "checkpoints" / "last.ckpt"
    if starts_over(config) or not saved.is_file():
        return None
    if status not in ("ok", "interrupted", "preempted") and not last.is_file():
        return None  # nothing to continue (a failed run, or none yet): this config starts it
    old, new = (_flat(OmegaConf.to_container(c, resolve=False)) for c in (OmegaConf.load(saved), config))
    differ = sorted(
        k
        for k in old.keys() | new.keys()
        if old.get(k) != new.get(k) and not _ignored(k) and not any(k == s or k.startswith(f"{s}.") for s in searched)
    )
    if not differ:
        return None
    shown = ", ".join(f"{k}: {old.get(k, '(unset)')} -> {new.get(k, '(unset)')}" for k in differ[:3])
    more = f" and {len(differ) - 3} more" if len(differ) > 3 else ""
    what = {"ok": "a finished run", None: "a killed run", "failed": "a failed run"}.get(status, f"an {status} run")
    return f"{run_dir} holds {what} of another config ({shown}{more})"


def _other_sweep(config: DictConfig) -> str | None:
    """Why the sweep of ``config`` cannot run in its ``hydra.sweep.dir`` (jobs it would run there hold runs of another
    config: a finished one would be skipped and reported as this sweep's, its saved config replaced), or None.

    The jobs are composed as Hydra's basic sweeper composes them (:func:`tlx.sweeps.job_configs`); a search whose
    runs are chosen as it goes (Optuna) is compared on the settings it does not search."""
    from tlx.sweeps import job_configs, job_dir, unnamed_sweep

    unnamed = unnamed_sweep(config)
    if unnamed:  # (data.root=a,b: the second data set was skipped as done, reported as the first's, exit 0)
        return (
            f"{unnamed} sweeps a setting the job folders are not named by (hydra.job.config.override_dirname."
            "exclude_keys), so its jobs would share one folder and all but the first be skipped as done; run one sweep "
            "per value, each with its own hydra.sweep.dir"
        )
    sweep_dir = Path(str(config.hydra.sweep.dir))
    if not sweep_dir.is_dir():
        return None
    jobs = job_configs(config)
    if jobs is None:
        searched = tuple(OmegaConf.select(config, "hydra.sweeper.params") or {})
        runs = sorted(d for d in sweep_dir.iterdir() if (d / ".hydra" / "config.yaml").is_file())
        others = [m for d in runs if (m := _other_run(d, config, searched))]
        if not others:
            return None
        return (  # e.g. Optuna's study in the sweep dir would go on from trials on other data
            f"{len(others)} of the {len(runs)} runs of the search in {sweep_dir} are of another config: {others[0]}; "
            "for a search of this config choose another hydra.sweep.dir"
        )
    others = [m for job in jobs if job_dir(config, job).is_dir() and (m := _other_run(job_dir(config, job), job))]
    if not others:
        return None
    return (
        f"{len(others)} of this sweep's {len(jobs)} jobs would run in directories of another sweep: {others[0]}; for a "
        "sweep of this config choose another hydra.sweep.dir, or run these jobs over with resume=false"
    )


def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted keys to leaf values (a list is one value)."""
    if not isinstance(node, dict):
        return {prefix: node}
    out: dict[str, Any] = {}
    for k, v in node.items():
        out.update(_flat(v, f"{prefix}{k}."))
    return {k.removesuffix("."): v for k, v in out.items()}


def _ignored(key: str) -> bool:
    return key.split(".")[0] == "hydra" or key in _SAME_RUN_IGNORES


def _check_presets(choices: Any) -> None:
    """``+experiment=small_data strategy=last_n2``: both presets set what trains (freeze, head, lr), and the
    experiment, composed last, won without a word (the run trained head_only). One of them must go."""
    experiment, strategy = choices.get("experiment"), choices.get("strategy")
    if experiment in (None, "null") or strategy in (None, "null"):
        return
    path = CONF / "experiment" / f"{experiment}.yaml"  # (a text search: the file's defaults list is all that counts)
    text = path.read_text() if path.is_file() else ""
    chosen = re.search(r"override /strategy:\s*(\w+)", text)
    if chosen and chosen.group(1) != strategy:  # the command line's strategy won: +experiment=auto ran no search
        raise ConfigError(
            f"+experiment={experiment} is strategy={chosen.group(1)}, and strategy={strategy} replaced it; use "
            f"strategy={strategy} alone, or +experiment={experiment} alone"
        )
    if "override /freeze" in text or "override /head" in text:
        raise ConfigError(
            f"+experiment={experiment} and strategy={strategy} both set what trains (freeze, head, lr), and the "
            f"experiment would win; use strategy={strategy} alone (with any other key, e.g. trainer.max_epochs=30), "
            f"or +experiment={experiment} alone"
        )


def _note_preset_lr(cfg: DictConfig, choices: Any, overrides: list[str]) -> None:
    """``optim=sgd strategy=full``: the strategy (or experiment) preset sets ``optim.lr`` for AdamW, and Hydra composes
    it after the optimizer, so SGD trained at AdamW's lr without a word. Says so where the user did not set it."""
    name = choices.get("optim")
    optim_file = CONF / "optim" / f"{name}.yaml"
    if name in (None, "adamw") or not optim_file.is_file() or any(override_key(o) == "optim.lr" for o in overrides):
        return  # (every run but these: no file read at start-up)
    own = OmegaConf.load(optim_file).get("lr")
    if own is None:
        return
    if float(OmegaConf.select(cfg, "optim.lr", default=own)) != float(own):
        strategy = choices.get("strategy")
        preset = f"strategy={strategy}" if strategy else f"+experiment={choices.get('experiment')}"
        log.warning(
            "optim=%s trains at optim.lr=%g, the preset's (%s) lr for AdamW, not optim=%s's own %g; set "
            "optim.lr= to choose",
            name,
            float(cfg.optim.lr),
            preset,
            name,
            float(own),
        )


def _record_failure(out_dir: Path, error: str) -> None:
    """A single run that stopped on an error says so in its results.json (without one its directory looks merely
    unfinished), unless the directory holds the results of an earlier run there that finished: those are kept."""
    from tlx.results import read_results, write_results

    if (read_results(out_dir) or {}).get("status") == "ok":
        return
    try:
        write_results(out_dir, {"status": "failed", "error": error})
    except OSError as e:  # the error itself is what the user needs to see
        log.warning("could not record the failure in %s (%s)", out_dir, e)


@hydra.main(version_base="1.3", config_path=str(CONF), config_name="config")
def main(cfg: DictConfig) -> float:
    """Hydra entry point; returns ``cfg.metric`` for sweepers (NaN for a failed job in a sweep)."""
    from tlx.results import resume_command, write_results
    from tlx.sources import check_source

    hc = HydraConfig.get()
    out_dir = Path(hc.runtime.output_dir)
    multirun = hc.mode == RunMode.MULTIRUN
    if hc.output_subdir:  # the saved config gets the hydra: section, for reruns from it (tlx/rerun.py)
        make_rerunnable(out_dir / hc.output_subdir / "config.yaml")
    try:
        anchored = anchor_data(cfg, source_run(hc.runtime.config_sources), list(hc.overrides.task))
        if anchored:
            log.info("rerun: %s", anchored)
        check_source(cfg.data)  # a data.root or data.path that is not there: one line before the heavy imports
        _check_trackers(cfg)
        _check_presets(hc.runtime.choices)
        _note_preset_lr(cfg, hc.runtime.choices, list(hc.overrides.task))
        seed = cfg.get("seed")
        if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**32:  # (numpy's seed range)
            raise ConfigError(f"seed must be a whole number from 0 to 2**32-1, e.g. seed=0, got {seed}")
        from tlx.console import configure_console

        configure_console(bool(cfg.get("verbose")))  # before the imports below, whose warnings it filters
        from tlx.devices import place_job, visible_gpus
        from tlx.run import signals_as_interrupts, train

        with signals_as_interrupts():  # Ctrl-C or SIGTERM while extracting features: recorded and resumable
            if multirun:  # parallel sweep jobs (hydra/launcher=local_parallel) spread over the GPUs, job k on GPU k % n
                place_job(cfg.trainer, hc.job.num, visible_gpus())
            if cfg.get("auto") is not None:
                from tlx.auto import run_auto

                gpu_job = (hc.job.num, visible_gpus()) if multirun else None
                rerun_of = source_run(hc.runtime.config_sources)
                compose = partial(
                    _compose_candidate, hc.job.config_name, list(hc.overrides.task), gpu_job=gpu_job, rerun_of=rerun_of
                )
                results = run_auto(cfg, out_dir, compose)
            else:
                results = train(cfg, out_dir)
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM (Terminated), outside training
        # The process ends here. What the interrupt left half-built fails in its finalizer as this block lets go of it
        # (a DataLoader iterator stopped in its __init__, starting its workers, has no _shutdown): no traceback of that
        # after the resume line.
        sys.unraisablehook = _say_nothing
        write_results(out_dir, {"status": "interrupted", "resume": resume_command(out_dir)})
        log.error("interrupted; resume with: %s", resume_command(out_dir))
        sys.exit(128 + signal.SIGTERM if isinstance(e, Terminated) else 130)
    except Exception as e:
        message = _user_error(e)
        error = message or f"{type(e).__name__}: {e}"
        if multirun:  # the sweep's report lists the job as failed, with this error
            write_results(out_dir, {"status": "failed", "error": error})
            log.error("job failed (the sweep goes on): %s", error, exc_info=message is None)
            return math.nan
        _record_failure(out_dir, error)
        if message is None:
            raise
        print(f"tlx: error: {message}", file=sys.stderr)
        sys.exit(2)
    return float(results["metrics"].get(cfg.metric) or math.nan)


# The packages of Lightning's trackers (any one of them does)
TRACKER_PACKAGES = {
    "TensorBoardLogger": ("tensorboard", "tensorboardX"),
    "MLFlowLogger": ("mlflow",),
    "WandbLogger": ("wandb",),
    "CometLogger": ("comet_ml",),
    "NeptuneLogger": ("neptune",),
}


def _check_trackers(cfg: DictConfig) -> None:
    """A ``logger=`` whose package is not installed: one line before the heavy imports. It used to fail once every
    feature had been extracted, in three lines naming an install command that works only in a checkout."""
    for key, conf in (cfg.get("logger") or {}).items():
        target = str((conf or {}).get("_target_", "")).rpartition(".")[2]
        packages = TRACKER_PACKAGES.get(target, ())
        if packages and not any(importlib.util.find_spec(p) for p in packages):
            raise ConfigError(
                f"logger={key} needs the {packages[0]} package, which is not installed: "
                + install_hint(packages[0], "track")
            )


# Hydra's plugins behind tlx's launcher and search configs: the module, its package and tlx's extra that has it
HYDRA_PLUGINS = {
    "joblib": ("hydra_plugins.hydra_joblib_launcher", "hydra-joblib-launcher", "parallel"),
    "submitit_slurm": ("hydra_plugins.hydra_submitit_launcher", "hydra-submitit-launcher", "slurm"),
    "submitit_local": ("hydra_plugins.hydra_submitit_launcher", "hydra-submitit-launcher", "slurm"),
    "optuna": ("hydra_plugins.hydra_optuna_sweeper", "hydra-optuna-sweeper", "search"),
}


def _missing_plugin(argv: list[str]) -> str | None:
    """Why the command cannot run where it picks a launcher or a search whose Hydra plugin is not installed. Hydra
    said only "Could not load 'hydra/launcher/joblib'" or "Could not find 'hydra/sweeper/optuna'", with its search
    path, and no word of what to install."""
    for arg in argv:
        key, _, name = arg.lstrip("+~").partition("=")
        if key not in ("hydra/launcher", "hydra/sweeper", "hparams_search"):
            continue
        path = CONF / key / f"{name}.yaml"
        text = path.read_text() if path.is_file() else ""
        picked = [
            p for p in HYDRA_PLUGINS if p == name or re.search(rf"^\s*- (override /hydra/\w+: )?{p}\s*$", text, re.M)
        ]
        for plugin in picked:
            module, package, extra = HYDRA_PLUGINS[plugin]
            if importlib.util.find_spec("hydra_plugins") is None or importlib.util.find_spec(module) is None:
                return f"{arg} needs Hydra's {plugin} plugin, which is not installed: " + install_hint(package, extra)
    return None


# Keys whose values are paths: quoted for Hydra whatever they hold (a relative folder name has no "/")
PATH_KEYS = {"data.root", "data.path", "cache.dir", "hydra.run.dir", "hydra.sweep.dir"}


def path_friendly(argv: list[str]) -> list[str]:
    """The command line with paths as users type them made parseable by Hydra, whose grammar takes neither ``~``
    (the shell expands it only at the start of a word, not after ``data.root=``) nor non-ASCII letters or brackets
    unquoted: ``data.root=~/photos``, ``data.root=/data/Fotos für Oma`` and ``data.root=fotosé`` failed with a lexer
    error. An argument Hydra cannot parse whose value is a path (it holds a ``/``, is there, or is the value of a key
    in PATH_KEYS) gets ``~`` expanded and the value quoted; every other argument is left as it is, and Hydra's own
    error still comes for anything else it cannot parse. A relative ``--config-path`` (a run's ``.hydra``) is made
    absolute: Hydra looked for it under tlx's own package folder."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    out = []
    for i, arg in enumerate(argv):
        key, eq, value = arg.partition("=")
        if key in ("--config-path", "-cp") and eq and value and not Path(value).is_absolute():
            arg = f"{key}={Path(value).expanduser().absolute()}"
        elif not eq and i > 0 and argv[i - 1] in ("--config-path", "-cp") and not Path(arg).is_absolute():
            arg = str(Path(arg).expanduser().absolute())
        elif eq and _path_like(key, value) and not value.startswith(("'", '"', "[", "{")) and not _parses(parser, arg):
            value = str(Path(value).expanduser()) if value.startswith("~") else value
            quoted = f"{key}='{value.replace(chr(92), chr(92) * 2).replace(chr(39), chr(92) + chr(39))}'"
            arg = quoted if _parses(parser, quoted) else arg
        out.append(arg)
    return out


def _path_like(key: str, value: str) -> bool:
    return "/" in value or key.lstrip("+~") in PATH_KEYS or Path(value).expanduser().exists()


def _parses(parser: Any, arg: str) -> bool:
    try:
        parser.parse_override(arg)
        return True
    except Exception:  # Hydra's grammar errors (HydraException, lexer errors)
        return False


def _rerun_groups(argv: list[str]) -> str | None:
    """Why this command cannot run, where it reruns a saved config (``--config-path <run>/.hydra``) and picks a config
    group (``head=mlp``, ``+strategy=last_n2``): the saved config is one file, with no groups to pick from. Hydra
    failed with a traceback, or took ``+strategy=...`` as a new key and trained the saved strategy without a word.
    The line gives the command of a new run: the run's overrides (its data where it was), then all of this one's."""
    config_path, mine = None, []  # (a sweep job's folder name holds "=": the flags' values are not overrides)
    values = {i + 1: flag for i, flag in enumerate(argv) if flag in ("--config-path", "-cp", "--config-name", "-cn")}
    for i, arg in enumerate(argv):
        if values.get(i) in ("--config-path", "-cp") or arg.startswith("--config-path="):
            config_path = arg.removeprefix("--config-path=")
        elif i not in values and "=" in arg and not arg.startswith("-"):
            mine.append(arg)
    if config_path is None or Path(config_path).name != ".hydra":
        return None
    groups = {d.name for d in CONF.iterdir() if d.is_dir() and d.name != "hydra"}
    picked = [a for a in mine if override_key(a) in groups]
    if not picked:
        return None
    run = Path(config_path).parent
    saved = OmegaConf.load(run / ".hydra" / "overrides.yaml") if (run / ".hydra" / "overrides.yaml").is_file() else []
    named = {override_key(m) for m in mine}  # the rerun's own overrides replace the run's of the same key
    kept = [o for o in saved if not o.startswith("hydra.") and override_key(o) not in named]
    where = data_location(run)  # a relative data.root/data.path: the run's own data, as a rerun reads it
    located = {"data.root", "data.path"} if where else set()
    kept = [f"{override_key(o)}={where}" if override_key(o) in located else o for o in kept]
    for strategy in [a.split("=", 1)[1] for a in picked if override_key(a) == "strategy"]:
        experiments = [o for o in kept if override_key(o) == "experiment"]
        try:  # an experiment that sets what trains and a strategy are refused together: the strategy is the new one
            _check_presets({"experiment": experiments[0].split("=", 1)[1], "strategy": strategy} if experiments else {})
        except ConfigError:
            kept.remove(experiments[0])
    # as a new run takes them: experiment is added (+), the other groups are in conf/config.yaml's defaults
    typed = [("+" if override_key(m) == "experiment" else "") + m.lstrip("+") if m in picked else m for m in mine]
    return (
        f"{' '.join(picked)} picks a config group, and a rerun from a saved config has none to pick from (its config "
        f"is one file; keys like seed=1 or freeze.n=2 change it); start a new run with its overrides and yours: "
        f"python -m tlx {shlex.join([*kept, *typed])}"
    )


def _main() -> None:
    """``python -m tlx``: a Ctrl-C while a sweep waits for its SLURM jobs is one line naming the jobs that go on (a
    run or an in-process sweep job records its own interruption and exits 130 itself)."""
    sys.argv[1:] = path_friendly(sys.argv[1:])
    refused = _rerun_groups(sys.argv[1:]) or _missing_plugin(sys.argv[1:])
    if refused:
        print(f"tlx: error: {refused}", file=sys.stderr)
        sys.exit(2)
    # Before Hydra runs the sweeper: alembic's "setup plugin ..." lines when Optuna (or MLflow) opens its database
    logging.getLogger("alembic").setLevel(logging.WARNING)
    try:
        main()
    except KeyboardInterrupt:
        from tlx.squeue import left_running

        jobs = left_running()
        running = ""
        if jobs:
            running = (f"; its {len(jobs)} SLURM job(s) {', '.join(jobs)} go on: 'scancel {' '.join(jobs)}' stops "
                       "them, and the same command again once they have ended reports them (while they run, it would "
                       "train them a second time)")  # fmt: skip
        print(f"tlx: interrupted{running}", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    _main()
