"""A run's saved config reruns it: ``python -m tlx --config-path <run>/.hydra --config-name config``.

Hydra saves the run's config without its ``hydra:`` section, so a run composed from that file alone would get
Hydra's own defaults: a run directory under ``outputs/<date>/<time>`` instead of ``outputs/runs/``, a log named
``__main__.log``, none of tlx's callbacks. :func:`make_rerunnable` adds ``conf/config.yaml``'s ``hydra:`` section to
the saved file, so a rerun is run the way a new run is.

An auto run composes each candidate's config with Hydra, from ``conf/`` and the run's overrides. A rerun from the
saved config has no ``conf/`` groups to compose from; it takes each candidate's config saved by the run it reruns
(``candidates/<strategy>/.hydra/config.yaml``) with the rerun's own overrides on top (:func:`saved_candidate`).
"""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from tlx import CONF
from tlx.errors import ConfigError


def make_rerunnable(config_file: Path) -> None:
    """Append ``conf/config.yaml``'s ``hydra:`` section to a saved config that has none (unresolved: a rerun gets a
    new ``outputs/runs/<date_time>`` of its own)."""
    config_file = Path(config_file)
    if not config_file.is_file() or "hydra" in OmegaConf.load(config_file):
        return
    section = OmegaConf.to_yaml({"hydra": OmegaConf.load(CONF / "config.yaml").hydra})
    with open(config_file, "a") as f:
        f.write(f"# conf/config.yaml's Hydra settings, for a rerun from this file (tlx/rerun.py)\n{section}")


def load_saved_config(path: Path) -> DictConfig:
    """A saved config as the run's config: without the ``hydra:`` section :func:`make_rerunnable` added to it."""
    cfg = OmegaConf.load(path)
    cfg.pop("hydra", None)
    return cfg


def source_run(config_sources: list) -> Path | None:
    """The run directory whose saved config this run was composed from (``--config-path <run>/.hydra``), or None.

    Args:
        config_sources: ``HydraConfig.get().runtime.config_sources``.
    """
    for source in config_sources:
        if source.provider == "main" and source.schema == "file" and Path(source.path).name == ".hydra":
            return Path(source.path).parent
    return None


def override_key(override: str) -> str:
    """The key of a command-line override: ``+strategy=last_n2`` -> ``strategy``."""
    return override.split("=", 1)[0].lstrip("+~")


def data_location(run_dir: Path) -> str | None:
    """The absolute data root (or label file) the run in ``run_dir`` read, as its ``files.json`` records it; None for
    a run that stopped before its data, or from before tlx recorded it. An auto run writes its files.json at the end,
    its candidates each theirs."""
    lists = [run_dir / "files.json", *sorted(run_dir.glob("candidates/*/files.json"))]
    try:
        return json.loads(next(p for p in lists if p.is_file()).read_text()).get("data_location")
    except (StopIteration, OSError, ValueError):
        return None


def anchor_data(cfg: DictConfig, source: Path | None, overrides: list[str]) -> str | None:
    """In a rerun from a saved config, a relative ``data.root`` (``data.path``) is the folder (file) that the run it
    reruns read, as that run's ``files.json`` records it, wherever the rerun is started: resolved against the rerun's
    own working folder it failed, or trained on another folder of the same name. Changes ``cfg``; returns what it
    did, for the log.

    Args:
        cfg: the rerun's config.
        source: the run whose saved config it was composed from (:func:`source_run`), or None for a new run.
        overrides: the command line's overrides: a data.root/data.path given there is the user's, as typed.
    """
    data = cfg.get("data")
    key = next((k for k in ("root", "path") if data is not None and data.get(k) is not None), None)
    if source is None or key is None or Path(str(data[key])).expanduser().is_absolute():
        return None
    if any(override_key(o) == f"data.{key}" for o in overrides):
        return None
    recorded = data_location(source)
    if not recorded or Path(recorded) == Path(str(data[key])).expanduser().absolute():
        return None
    typed, data[key] = data[key], recorded
    return f"data.{key}={typed} means {recorded}, which the run in {source} read (its files.json)"


def saved_candidate(run_dir: Path, strategy: str, overrides: list[str]) -> DictConfig:
    """An auto candidate's config for a rerun of ``run_dir``: the candidate's config saved by that run, with the
    rerun's overrides applied as Hydra applies them to the rerun's own config.

    Args:
        run_dir: the auto run being rerun.
        strategy: the candidate.
        overrides: the rerun's command-line overrides (``HydraConfig.get().overrides.task``), ``strategy=`` left out.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    path = Path(run_dir) / "candidates" / strategy / ".hydra" / "config.yaml"
    if not path.is_file():
        raise ConfigError(
            f"cannot rerun this auto run from its saved config: {path} is missing; start it anew with "
            f"python -m tlx +experiment=auto and the overrides in {Path(run_dir) / '.hydra' / 'overrides.yaml'}"
        )
    cfg = load_saved_config(path)
    for o in OverridesParser.create().parse_overrides(overrides):
        if o.is_delete():
            parent, _, leaf = o.key_or_group.rpartition(".")
            node = OmegaConf.select(cfg, parent) if parent else cfg
            if isinstance(node, DictConfig):
                node.pop(leaf, None)
        else:
            OmegaConf.update(cfg, o.key_or_group, o.value(), merge=True, force_add=True)
    return cfg
