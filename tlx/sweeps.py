"""The jobs of a Hydra sweep as its basic sweeper splits and composes them (it composes each one before launching
it), for the checks before a sweep runs and its exit status after."""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


def job_configs(config: DictConfig) -> list[DictConfig] | None:
    """Each job's config, its ``hydra`` section included, of the sweep of ``config`` (the multirun's config, as Hydra
    callbacks get it), or None where that is not known ahead: another sweeper (Optuna's trials are chosen as it goes),
    or job folders named by what only the launcher sets (``${hydra.job.num}``)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if not str(OmegaConf.select(config, "hydra.sweeper._target_") or "").endswith("BasicSweeper"):
        return None
    try:
        loader = GlobalHydra.instance().config_loader()
        params = [f"{k}={v}" for k, v in (OmegaConf.select(config, "hydra.sweeper.params") or {}).items()]
        parsed = OverridesParser.create(config_loader=loader).parse_overrides([*params, *config.hydra.overrides.task])
        jobs = [loader.load_sweep_config(config, job) for b in BasicSweeper.split_arguments(parsed, None) for job in b]
        for job in jobs:
            str(job.hydra.sweep.subdir)  # resolvable here, or the folders are not known before the jobs run
    except Exception as e:  # the sweeper itself reports a sweep it cannot run; the checks then stand aside
        log.debug("sweep jobs not known ahead: %s", e)
        return None
    return jobs


def unnamed_sweep(config: DictConfig) -> str | None:
    """The sweep override (``data.root=a,b``) of a key that the job folders' names leave out, where folders are named
    by the overrides (conf/config.yaml: ``override_dirname`` without ``exclude_keys``), or None."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    subdir = str(OmegaConf.to_container(config.hydra.sweep, resolve=False).get("subdir"))
    excluded = set(OmegaConf.select(config, "hydra.job.config.override_dirname.exclude_keys") or [])
    if "override_dirname" not in subdir or not excluded:
        return None
    try:
        parsed = OverridesParser.create().parse_overrides(list(config.hydra.overrides.task))
    except Exception:  # (Hydra reports what it cannot parse itself)
        return None
    return next((o.input_line for o in parsed if o.is_sweep_override() and o.key_or_group in excluded), None)


def job_dir(config: DictConfig, job: DictConfig) -> Path:
    """The folder a job of the sweep of ``config`` runs in."""
    return Path(str(config.hydra.sweep.dir)) / str(job.hydra.sweep.subdir)
