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


def job_dir(config: DictConfig, job: DictConfig) -> Path:
    """The folder a job of the sweep of ``config`` runs in."""
    return Path(str(config.hydra.sweep.dir)) / str(job.hydra.sweep.subdir)
