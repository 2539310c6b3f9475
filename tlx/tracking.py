"""Experiment trackers: Lightning's own loggers, built from ``conf/logger/``, fed the run's resolved config as params
(before training) and its ``results.json`` / ``report.html`` as artifacts (after it).

Per-epoch metrics reach every tracker through Lightning itself (the module's ``self.log``).
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import CSVLogger, Logger, MLFlowLogger, TensorBoardLogger, WandbLogger

from tlx.errors import ConfigError, first_line

log = logging.getLogger(__name__)

RUN_ARTIFACTS = ("results.json", "report.html")  # logged after the run, those the run dir has
DEFAULT_EXPERIMENT = "tlx"
MLFLOW_RUN = "logs/mlflow_run_id"  # the MLflow run of a run directory, for a resumed run to go on with
# conf/logger/csv.yaml, for configs saved before conf/logger/ existed (resuming an older run)
_CSV = {"csv": {"_target_": "pytorch_lightning.loggers.CSVLogger", "save_dir": None, "name": "logs", "version": ""}}


def create_loggers(cfg: DictConfig, out_dir: Path, resume: Path | None = None) -> list[Logger]:
    """One Lightning logger per entry of ``cfg.logger`` (``logger=[tensorboard,mlflow]`` combines them), with the
    resolved config logged as params.

    Keys a logger config leaves null are filled in here, so configs composed outside a Hydra run work too:
    ``save_dir`` is the run dir; the experiment (MLflow ``experiment_name``, wandb ``group``) is the sweep
    directory's name for a sweep job, so a sweep's jobs land together, else ``tlx``; the run's name (MLflow
    ``run_name``, wandb ``name``) is the run directory's name, which in a sweep spells the job's overrides.

    A resumed run's CSV log keeps the rows of the epochs its checkpoint holds (Lightning's CSVLogger deletes
    ``metrics.csv`` when it starts, which left the curves of a resumed run starting at the resumed epoch).

    Args:
        cfg: the run's config.
        out_dir: the run directory.
        resume: the checkpoint the run continues from, if any.
    """
    experiment, run = run_names(out_dir)
    params = OmegaConf.to_container(cfg, resolve=True)
    loggers = []
    confs = cfg.logger if "logger" in cfg else OmegaConf.create(_CSV)
    for key, conf in (confs or {}).items():
        fill = {"save_dir": str(out_dir), "experiment_name": experiment, "group": experiment, "run_name": run}
        if "WandbLogger" in str(conf.get("_target_")):
            fill["name"] = run  # CSV and TensorBoard use `name` for a folder, and set it
        overrides = {k: v for k, v in fill.items() if k in conf and conf[k] is None}
        continued = None  # a resumed run's MLflow run: the same one goes on (a second run held the rest of its epochs)
        if "MLFlowLogger" in str(conf.get("_target_")):
            overrides.update(_mlflow_local_store(conf))
            continued = _earlier_mlflow_run(out_dir, resume) if conf.get("run_id") is None else None
            if continued:
                overrides["run_id"] = continued
        try:
            logger = instantiate(conf, **overrides)
        except InstantiationException as e:
            if isinstance(e.__cause__, ModuleNotFoundError):  # (tlx.__main__ checks the usual ones before the run)
                missing = first_line(e.__cause__)
                raise ConfigError(f"logger={key} needs a package that is not installed: {missing}") from e
            raise
        kept = _csv_rows_until(Path(logger.log_dir) / "metrics.csv", resume) if isinstance(logger, CSVLogger) else None
        if not continued:  # (MLflow's params cannot change, and a resumed run's resume= did)
            logger.log_hyperparams(params)  # a CSVLogger starts here: it deletes an existing metrics.csv
        if kept:
            _write_csv_rows(logger, kept)
        if isinstance(logger, MLFlowLogger):
            (out_dir / MLFLOW_RUN).parent.mkdir(parents=True, exist_ok=True)
            (out_dir / MLFLOW_RUN).write_text(str(logger.run_id))
        log.info("logger=%s: %s", key, _where(logger, conf))
        loggers.append(logger)
    return loggers


def _csv_rows_until(path: Path, resume: Path | None) -> list[dict[str, str]]:
    """The rows of ``metrics.csv`` up to the epoch the checkpoint ``resume`` was written at (later rows are of epochs
    the resumed run trains again); none without a checkpoint."""
    if resume is None or not path.is_file():
        return []
    import torch

    epoch = int(torch.load(resume, map_location="cpu", weights_only=True, mmap=True)["epoch"])
    with path.open(newline="") as f:
        return [r for r in csv.DictReader(f) if r.get("epoch") and float(r["epoch"]) <= epoch]


def _write_csv_rows(logger: CSVLogger, rows: list[dict[str, str]]) -> None:
    """Put ``rows`` back into the CSVLogger's fresh ``metrics.csv``; its columns become the writer's known keys, so the
    resumed run's rows are appended under the same header (a new key rewrites the file with every row, as Lightning
    does)."""
    writer = logger.experiment
    keys = sorted(set().union(*rows) | set(writer.metrics_keys))
    with open(writer.metrics_file_path, "w", newline="") as f:
        out = csv.DictWriter(f, fieldnames=keys)
        out.writeheader()
        out.writerows(rows)
    writer.metrics_keys[:] = keys


def finish_tracking(loggers: list[Logger], out_dir: Path, metrics: dict[str, Any]) -> None:
    """After the run: log ``results.json`` (and ``report.html``, when the run dir has one) as artifacts to the
    trackers that store files (MLflow, wandb), and close the wandb run; give TensorBoard's HPARAMS tab the run's final
    metrics (``final/val/acc``, ...) beside its config (without metrics Lightning writes no hparams summary at all).

    Args:
        loggers: the trainer's loggers.
        out_dir: the run directory.
        metrics: the run's final metrics (results.json's, as the run just wrote them).
    """
    files = [Path(out_dir) / name for name in RUN_ARTIFACTS if (Path(out_dir) / name).is_file()]
    for logger in loggers:
        if isinstance(logger, MLFlowLogger):
            for f in files:
                logger.experiment.log_artifact(logger.run_id, str(f))
        elif isinstance(logger, WandbLogger):
            for f in files:
                logger.experiment.save(str(f), base_path=str(out_dir), policy="now")
            logger.experiment.finish()  # Lightning leaves it open; the next run in this process would reuse it
        elif isinstance(logger, TensorBoardLogger):  # (named final/*: Lightning also logs them as scalars at step 0)
            final = {f"final/{k}": v for k, v in metrics.items() if isinstance(v, int | float)}
            logger.log_hyperparams(logger.hparams, metrics=final)
            logger.save()


def run_names(out_dir: Path) -> tuple[str, str]:
    """(experiment, run) names for the trackers: a sweep job's experiment is its sweep directory's name.

    Whether the run is a sweep job comes from ``.hydra/hydra.yaml``, which Hydra writes into the run dir; runs
    started without Hydra (``tlx.run.train`` from Python) have none and count as single runs.
    """
    out_dir = Path(out_dir).resolve()
    hydra_yaml = out_dir / ".hydra" / "hydra.yaml"
    mode = OmegaConf.select(OmegaConf.load(hydra_yaml), "hydra.mode") if hydra_yaml.is_file() else None
    experiment = out_dir.parent.name if str(mode) == "MULTIRUN" else DEFAULT_EXPERIMENT
    return experiment, out_dir.name


def _earlier_mlflow_run(out_dir: Path, resume: Path | None) -> str | None:
    """The MLflow run an interrupted attempt of this run logged to, when this one resumes it."""
    path = Path(out_dir) / MLFLOW_RUN
    if resume is None or not path.is_file():
        return None
    return path.read_text().strip() or None


def _mlflow_local_store(conf: DictConfig) -> dict[str, Any]:
    """For a ``sqlite:///`` tracking URI: create the database's folder, and keep the artifacts beside it (MLflow's
    own default is ``./mlruns`` under whatever directory the command ran in)."""
    uri = str(conf.get("tracking_uri") or "")
    if not uri.startswith("sqlite:///"):
        return {}
    db = Path(uri.removeprefix("sqlite:///"))
    db.parent.mkdir(parents=True, exist_ok=True)
    if conf.get("artifact_location") is None:
        return {"artifact_location": (db.parent.resolve() / "artifacts").as_uri()}
    return {}


def _where(logger: Logger, conf: DictConfig) -> str:
    if isinstance(logger, MLFlowLogger):
        return f"MLflow run {logger.run_id} in {conf.tracking_uri}"
    return f"{type(logger).__name__} in {getattr(logger, 'log_dir', None) or logger.save_dir}"
