"""The one orchestration function: config in, trained classifier and results.json out."""

from __future__ import annotations

import contextlib
import copy
import inspect
import logging
import math
import shutil
import signal
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import timm.data
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf
from pytorch_lightning.callbacks import Checkpoint, ModelCheckpoint
from pytorch_lightning.utilities.exceptions import SIGTERMException

from tlx.backbones import Backbone
from tlx.cluster import requeue_setup
from tlx.console import TrainingLines, draws_bars
from tlx.data import ImageData
from tlx.devices import describe, torch_device
from tlx.errors import ConfigError, Diverged, Terminated, forget_interrupt, interrupt_noted, note_interrupt
from tlx.features import find_cut, use_cached_features
from tlx.freeze import Freeze
from tlx.heads import LinearHead, Network
from tlx.jsonfile import probe_writable
from tlx.module import TransferModule
from tlx.probe import Probe, fit_probe
from tlx.progress import PROGRESS_EVERY_S
from tlx.report import strategy_label
from tlx.results import print_summary, read_results, resume_checkpoint, resume_command, skipped, write_results
from tlx.run_report import save_run_report
from tlx.tracking import create_loggers, finish_tracking

log = logging.getLogger(__name__)
# Frozen layers are in eval mode on purpose.
warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode at the start of training.*")


@dataclass
class Prepared:
    """The backbone and the set-up data of a run, built once and shared by several trainings on the same data
    (``tlx.auto``'s candidates).

    Each training gets its own copy of the backbone (new heads may replace parts of it) and the same images, splits
    and file hashes; a training whose config asks for other data settings gets data set up for them.
    """

    cfg: DictConfig
    backbone: Backbone
    data: ImageData

    def take(self, cfg: DictConfig, out_dir: Path) -> tuple[Backbone, ImageData]:
        """A backbone and data for ``cfg``, from what is already built where the configs agree."""
        if _plain(cfg.backbone) != _plain(self.cfg.backbone):
            fresh = prepare(cfg, out_dir)
            return fresh.backbone, fresh.data
        differ = {k for k in {*cfg.data, *self.cfg.data} if _plain(cfg.data.get(k)) != _plain(self.cfg.data.get(k))}
        if differ - {"augment"}:
            data = _setup_data(cfg, self.backbone)
        else:  # the same images: only the training transform changes
            data = copy.copy(self.data)
            data.augment = bool(cfg.data.augment)
            training = timm.data.create_transform(**data.data_config, is_training=True) if data.augment else None
            data.train_transform = training or data.eval_transform
        data.features = {}
        return copy.deepcopy(self.backbone), data


def prepare(cfg: DictConfig, out_dir: Path) -> Prepared:
    """Build the backbone (its pretraining data config decides the transforms), check the settings that can only be
    wrong, then set up the data (the first images are decoded here)."""
    backbone = instantiate(cfg.backbone)
    _check_before_data(cfg, len(backbone.stage_groups()), out_dir)
    return Prepared(cfg, backbone, _setup_data(cfg, backbone))


def _setup_data(cfg: DictConfig, backbone: Backbone) -> ImageData:
    data = instantiate(cfg.data)(data_config=backbone.data_config)
    data.seed = int(cfg.seed)
    data.setup()
    return data


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig | ListConfig) else node


def build_network(cfg: DictConfig, backbone: Backbone, num_classes: int) -> tuple[Network, Freeze, dict[str, int]]:
    """A new head for our classes on ``backbone``, then the freeze regime over timm's own stages.

    Returns the network, the freeze regime and the trainable/frozen parameter counts.
    """
    make_head = instantiate(cfg.head)
    _check_head_settings(make_head, cfg.head)
    head = make_head(backbone=backbone, num_classes=num_classes)
    net = Network(backbone, head)
    freeze = instantiate(cfg.freeze)
    params = freeze.apply(net, backbone.stage_groups(exclude=set(head.new_backbone_modules)))
    return net, freeze, params


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The dtype Lightning's mixed ``trainer.precision`` computes in on ``device`` (the frozen part's extraction runs
    in it too), or None for full precision: bf16 anywhere, 16 on CUDA."""
    if precision.startswith("bf16"):
        return torch.bfloat16
    if precision.startswith("16") and device.type == "cuda":
        return torch.float16
    return None


def _check_head_settings(make_head: Any, head_cfg: DictConfig) -> None:
    """A setting the head class does not take is one of another head's: e.g. +experiment=small_data (head=linear)
    with strategy=reinit_last (head.n=1), composed into one head config."""
    if not isinstance(make_head, partial):
        return
    params = inspect.signature(make_head.func).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    foreign = sorted(set(make_head.keywords) - set(params))
    if foreign:
        own = [k for k in params if k not in ("self", "backbone", "num_classes")]
        raise ConfigError(
            f"{', '.join(f'head.{k}' for k in foreign)} not among the settings of head={head_cfg._target_} "
            f"({', '.join(own)}): settings of another head; an experiment and a strategy may each choose a head, so "
            "use one of them (e.g. strategy=reinit_last without +experiment=small_data)"
        )


def train(
    cfg: DictConfig,
    out_dir: Path,
    prepared: Prepared | None = None,
    callbacks: tuple[pl.Callback, ...] = (),
    prefetch: tuple[int | str, ...] = (),
    summary: bool = True,
    html: bool = True,
    resume_dir: Path | None = None,
) -> dict[str, Any]:
    """Train and test one classifier as ``cfg`` says; write ``results.json`` into ``out_dir`` and return it.

    Args:
        cfg: the composed config.
        out_dir: the run directory.
        prepared: backbone and data already built for this config's backbone and data (else built here).
        callbacks: further Lightning callbacks for the fine-tuning stage (``tlx.auto`` stops candidates with one).
        prefetch: further cuts to extract into the cache in the same pass as this run's own (for later runs).
        summary: print the summary table at the end (``tlx.auto`` prints one for the whole search instead).
        html: write ``report.html`` (``tlx.auto`` writes one for the whole search instead; its candidates still write
            their validation predictions and gallery, unless stopped as losers).
        resume_dir: the run directory whose resume command an interrupted run prints (default ``out_dir``; an auto
            candidate's is its auto run's, which resumes the whole search).
    """
    start, cpu_start = time.perf_counter(), time.process_time()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    done = read_results(out_dir)
    if skipped(done, cfg, out_dir):
        return done
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    torch.set_num_threads(cfg.threads) if cfg.get("threads") else None

    if prepared is None:  # built for this run alone: no copy needed
        built = prepare(cfg, out_dir)
        backbone, data = built.backbone, built.data
    else:
        _check_before_data(cfg, len(prepared.backbone.stage_groups()), out_dir)
        backbone, data = prepared.take(cfg, out_dir)
    # Seeded again: building the backbone and the data draws from the RNG, and a run given them already made (an
    # auto candidate) must start its head from the same state as the same run on its own.
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    data.save_file_lists(out_dir / "files.json")

    net, freeze, params = build_network(cfg, backbone, len(data.classes))
    head = net.head
    module = TransferModule(
        net,
        freeze,
        instantiate(cfg.optim),
        num_classes=len(data.classes),
        seed=int(cfg.seed),
        class_weights=data.class_weights(),
    )
    module.classes = data.classes
    probe = instantiate(cfg.probe)
    lp_ft = bool(OmegaConf.select(cfg, "lp_ft.enabled", default=False))
    if lp_ft and (freeze.mode == "head_only" or not isinstance(head, LinearHead)):
        raise ConfigError(
            "lp_ft (a linear probe, then fine-tuning from it) needs head=linear and freeze=last_n or "
            "freeze=none; use strategy=lp_ft, or set lp_ft.enabled=false"
        )

    # Frozen prefix: compute its activations once (or read them from the cache) and train only the rest.
    if cfg.get("channels_last") and net.chain:
        net.to(memory_format=torch.channels_last)  # faster convolutions on CPU (oneDNN) and tensor cores
        module.channels_last = True
    device = torch_device(cfg.trainer)
    cache = instantiate(cfg.cache)
    features = partial(
        use_cached_features,
        net,
        data,
        cache,
        backbone.name,
        backbone.weights_hash,
        int(cfg.seed),
        device,
        train_bn=freeze.train_bn,
        autocast=autocast_dtype(str(cfg.trainer.get("precision", "32-true")), device),
        channels_last=module.channels_last,
    )
    max_epochs = int(cfg.trainer.get("max_epochs") or -1)
    probe_epochs = max_epochs if max_epochs > 0 else 30  # a run sized in steps (max_epochs=-1) probes 30 epochs
    stages, extract_s = [], 0.0
    if lp_ft:  # stage 1 of LP-FT: the probe on pooled features; the cut of stage 2 is extracted in the same pass
        pooled = features(cut="pooled", prefetch=(find_cut(net),), augment=False)
        stage = _probe_stage(module, data, probe, pooled, probe_epochs)
        stage.pop("history")
        stages.append(stage | {"cache": "hit" if pooled["misses"] == 0 else "miss"})
        extract_s += pooled["extract_s"]
        data.features.clear()
    cache_info = features(prefetch=prefetch)
    extract_s += cache_info["extract_s"]
    if cache_info["used"]:
        module.cut = find_cut(net)
    module.train()  # Lightning keeps each module's mode at fit start: new layers train, frozen ones stay in eval

    # best.ckpt is this run's, also where an earlier run left one (resume=false, a failed run tried again): Lightning
    # would write best-v1.ckpt beside it, and predict, export and the summary would read the earlier run's model
    checkpoint = _BestCheckpoint(
        dirpath=out_dir / "checkpoints", filename="best", monitor="val/acc", mode="max", enable_version_counter=False
    )
    latest = _LastCheckpoint(out_dir / "checkpoints" / "last.ckpt", float(cfg.get("last_checkpoint_every_s", 0)))
    requeue_callbacks, plugins = requeue_setup(latest.path, out_dir)  # SLURM jobs: last.ckpt, then requeue
    use_probe = probe.enabled and module.cut == "pooled" and isinstance(head, LinearHead) and not lp_ft
    if use_probe and head.drop.p > 0:
        log.info(
            "linear probe not used: head.dropout=%g (the probe fits without dropout); the loop trains the head",
            head.drop.p,
        )
        use_probe = False
    resume = None if use_probe else resume_checkpoint(cfg.get("resume", False), latest.path, done)
    # Progress: bars at a terminal; lines where stdout is a file or a pipe (a bar there is one wrapped last frame)
    bars = bool(cfg.trainer.get("enable_progress_bar", True))
    lines = [TrainingLines(PROGRESS_EVERY_S, _sweep_job())] if bars and not draws_bars() else []
    on_interrupt = _OnInterrupt(out_dir, latest, resume_dir)
    cpu_sync = bool(cfg.trainer.get("sync_batchnorm")) and device.type == "cpu"
    if cpu_sync:  # (trainer=ddp sets it, for GPUs: every process crashed with a traceback on the CPU)
        log.info("trainer.sync_batchnorm is off on the CPU: PyTorch's SyncBatchNorm runs on GPUs only")
    trainer = instantiate(
        cfg.trainer,
        **({"sync_batchnorm": False} if cpu_sync else {}),
        default_root_dir=out_dir,
        enable_progress_bar=bars and not lines,
        callbacks=[
            checkpoint,
            latest,
            on_interrupt,
            *requeue_callbacks,
            *lines,
            *callbacks,
        ],
        plugins=plugins,
        logger=create_loggers(cfg, out_dir, resume),  # conf/logger/: csv (logs/metrics.csv) by default
    )
    t_fit, stage_one = time.perf_counter(), None
    if use_probe:
        # A linear head on cached features is convex: solve it (and choose its L2 on val) instead of epochs of SGD.
        optim_set = [o for o in _command_overrides() if o.lstrip("+~").startswith(("optim.", "optim="))]
        if optim_set:  # (a sweep over optim.lr gave identical head_only rows without a word)
            log.warning(
                "%s: not used by the linear probe, which fits the head with its own grid (probe.lr x "
                "probe.weight_decay); probe.enabled=false trains it in the Lightning loop with optim",
                " ".join(optim_set),
            )
        stage = _probe_stage(module, data, probe, cache_info, probe_epochs)
        stages.append(stage)
        _validate_unlogged(trainer, module, data, on_interrupt)  # (the chosen epoch is among the probe's, logged below)
        history = stage.pop("history")
        for logger in trainer.loggers:  # the chosen candidate's epochs, as a fitted run logs its own
            for epoch, row in enumerate(history):
                logger.log_metrics({**row, "epoch": epoch}, step=epoch)
            logger.save()
        best_path = out_dir / "checkpoints" / "best.ckpt"
        trainer.save_checkpoint(best_path)
        shutil.copyfile(best_path, latest.path)  # the finished state too, as a fitted run leaves it
        fit_s, tested_ckpt = time.perf_counter() - t_fit, None
        module.val_history[-1]["epoch"] = stage["best_epoch"]
        epochs = len(history)
    else:
        stage_one = _save_stage_one(trainer, module, data, on_interrupt, out_dir) if lp_ft else None
        train_loader = data.train_dataloader()
        if resume is not None:  # Lightning starts the loader before it sets the epoch, and loader processes fetch at
            # once: the first resumed epoch read epoch 0's order, and the run went otherwise than uninterrupted
            train_loader.sampler.set_epoch(_resumed_epoch(resume))
        with on_interrupt.exit_status():
            trainer.fit(module, train_loader, data.val_dataloader(shard=True), ckpt_path=resume)
        best_path = Path(checkpoint.best_model_path) if checkpoint.best_model_path else None
        if best_path is None:  # stopped before its first validation (trainer.max_steps within the first epoch, or
            # trainer.check_val_every_n_epoch above max_epochs): Lightning's test of "best" failed with a traceback
            log.info("training ended before a validation: the final weights are validated and kept as best.ckpt")
            _validate_unlogged(trainer, module, data, on_interrupt)
            module.val_history[-1]["epoch"] = max(0, int(trainer.current_epoch) - 1)  # the last (partial) epoch
            best_path = out_dir / "checkpoints" / "best.ckpt"
            trainer.save_checkpoint(best_path)
        _check_finite(module.best_val(), cfg)
        fit_s, tested_ckpt = time.perf_counter() - t_fit, str(best_path)
        epochs = int(trainer.current_epoch)
        tuned = [h for h in module.val_history if h["epoch"] is not None]  # (LP-FT's stage 1 has none)
        stages.append(
            {
                "stage": "finetune" if lp_ft else "train",
                "epochs": int(trainer.current_epoch),
                **_val_of(max(tuned, key=lambda h: h["val/acc"]) if tuned else {}),
                "seconds": round(fit_s, 3),
            }
        )
        if stage_one and module.best_val()["epoch"] is None:
            log.warning(
                "LP-FT: no fine-tuning epoch beat the probe's head on val/acc (%.4f; fine-tuning's best: %s), so the "
                "run's model is the probe's (stage 1)",
                module.best_val()["val/acc"],
                "none" if tuned == [] else f"{stages[-1]['val/acc']:.4f}",
            )
            tested_ckpt = best_path = stage_one
    t_test = time.perf_counter()
    lost = any(getattr(c, "lost", False) for c in callbacks)  # an auto candidate that cannot win: no test pass
    with on_interrupt.exit_status():
        tested = (
            {}
            if lost
            else trainer.test(module, data.test_dataloader(shard=True), ckpt_path=tested_ckpt, verbose=False)[0]
        )
    test_s = time.perf_counter() - t_test
    if stage_one:  # LP-FT's stage-1 checkpoint becomes best.ckpt where it won, else it goes
        won = best_path == stage_one
        best_path = out_dir / "checkpoints" / "best.ckpt" if won else best_path
        if trainer.is_global_zero:
            if won:
                stage_one.replace(best_path)
            else:
                stage_one.unlink()

    best = module.best_val()  # validation metrics of the epoch whose checkpoint is tested
    test_split = "test" if "test" in data.samples else "val"
    results = {
        "status": "ok",
        "metrics": {**_val_of(best), **{k: float(v) for k, v in tested.items()}},
        "best_epoch": best.get("epoch"),
        # Per-class accuracy and confusion matrix (rows: true class) of the tested checkpoint's val epoch and of test.
        "per_class": {
            "classes": data.classes,
            "val": {k: best[k] for k in ("per_class_acc", "confusion") if k in best},
            test_split: module.detail_results.get("test", {}),
        },
        "test_split": test_split,
        "params": params,
        "timing": {
            "total_s": round(time.perf_counter() - start, 3),
            "cpu_s": round(time.process_time() - cpu_start, 3),  # every thread of this process: load-independent
            "extract_s": round(extract_s, 3),
            "fit_s": round(fit_s, 3),
            "test_s": round(test_s, 3),
            "resumed": resume is not None,  # then the times are this part's: the interrupted part's were not kept
            "device": describe(trainer.strategy.root_device),  # what the times were measured on
        },
        "stages": stages,
        "data": data.counts(),
        "cache": cache_info,
        "weights": backbone.weights,
        "seed": int(cfg.seed),
        "backbone": backbone.name,
        "head": OmegaConf.select(cfg, "head._target_").rsplit(".", 1)[-1],
        "freeze": freeze.mode + (f"(n={freeze.n})" if freeze.mode == "last_n" else ""),
        "strategy": strategy_label(cfg),  # what trains, as the sweep reports name it: reinit_last(1), last_n(2), ...
        "epochs": epochs,
        # Lightning resolves symlinks in the checkpoint's path (an outputs/ linked to another disk); out_dir may not
        "checkpoint": str(best_path.resolve().relative_to(out_dir.resolve())) if best_path else None,
    }
    if data.name == "fashion_mnist" or data.samples_per_class or data.fraction:
        results["data"]["samples_per_class"] = data.samples_per_class
        results["data"]["fraction"] = data.fraction
    if trainer.is_global_zero:  # under DDP every process runs train(); one writes the results
        write_results(out_dir, results)
        if not lost:  # report.html; warns instead of failing the run
            save_run_report(out_dir, module, data, device, html=html)
        if summary:
            print_summary(results, out_dir)
        finish_tracking(trainer.loggers, out_dir, results["metrics"])
    return results


def _val_of(history_entry: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in history_entry.items() if k.startswith("val/")}


def _command_overrides() -> list[str]:
    """The command line's overrides of this run (a sweep job's own), or none outside a Hydra run."""
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def _sweep_job() -> int | None:
    """Hydra's number of this sweep job (``-m``), or None in a single run."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    return HydraConfig.get().job.num


def _probe_stage(
    module: TransferModule, data: ImageData, probe: Probe, cache_info: dict[str, Any], epochs: int
) -> dict[str, Any]:
    """Fit the linear head on the pooled features now in ``data.features`` (for ``epochs``, unless ``probe.epochs``
    is set) and put it into the network."""
    if not cache_info["used"]:
        raise ConfigError(
            "LP-FT's first stage, the linear probe, needs the feature cache, which this run cannot use (the log line "
            "above says why: cache.enabled=false, freeze.train_bn=true or a cache over cache.max_gb); change that, "
            "or set lp_ft.enabled=false"
        )
    (train_x, views), (val_x, _) = data.features["train"], data.features["val"]
    train_y = torch.as_tensor(data.samples["train"].labels * views)
    val_y = torch.as_tensor(data.samples["val"].labels)
    fitted = fit_probe(
        train_x,
        train_y,
        val_x,
        val_y,
        len(data.classes),
        probe,
        module.seed,
        module.optim.label_smoothing,
        data.class_weights(),
        epochs,
        data.sample_weights(train_y),
    )
    fc = module.net.head.fc
    with torch.no_grad():
        fc.weight.copy_(fitted.weight)
        fc.bias.copy_(fitted.bias)
    chosen = next(r for r in fitted.table if (r["lr"], r["weight_decay"]) == (fitted.lr, fitted.weight_decay))
    return {
        "stage": "probe",
        "epochs": len(fitted.history),
        "val/acc": chosen["val/acc"],
        "val/loss": chosen["val/loss"],
        **fitted.summary(),
        "history": fitted.history,
    }


def _validate_unlogged(
    trainer: pl.Trainer, module: TransferModule, data: ImageData, on_interrupt: _OnInterrupt
) -> None:
    """Validate the network as it is, outside a fit, into ``module.val_history`` and not into the loggers: the probe's
    head, LP-FT's stage 1 before its fine-tuning, a fit's final weights where it ran no validation. (Lightning refuses
    one run logging a metric both ways.) The validation metrics' states are reset after: made under validate's
    inference mode, a fit's validation could not update them."""
    module.log_to_loggers = False
    with on_interrupt.exit_status():
        trainer.validate(module, data.val_dataloader(shard=True), verbose=False)
    module.log_to_loggers = True
    for metric in (module.metrics["val_"], module.details["val_"], module.loss_means["val_"]):
        metric.reset()


def _save_stage_one(
    trainer: pl.Trainer, module: TransferModule, data: ImageData, on_interrupt: _OnInterrupt, out_dir: Path
) -> Path:
    """Validate LP-FT's stage-1 model (the probe's head on the pretrained backbone) before fine-tuning starts, and save
    it: it competes with the fine-tuning epochs for best.ckpt (as an epoch before the first, so ties keep it), where it
    used to be dropped even when fine-tuning only made it worse."""
    _validate_unlogged(trainer, module, data, on_interrupt)  # (not among the loggers' fine-tuning epochs)
    module.val_history[-1]["epoch"] = None
    path = out_dir / "checkpoints" / "stage1.ckpt"
    trainer.save_checkpoint(path)
    return path


def _check_finite(best: dict[str, Any], cfg: DictConfig) -> None:
    """A run whose best epoch has a NaN validation loss trained nothing usable (its predictions are NaN, its val/acc
    whatever argmax of NaN gives); it used to finish as "ok"."""
    loss = best.get("val/loss")
    if loss is None or math.isfinite(loss):
        return
    precision = str(cfg.trainer.get("precision", "32-true"))
    fix = f"lower optim.lr (now {OmegaConf.select(cfg, 'optim.lr')})"
    if not precision.startswith(("32", "64")):
        fix += f" or train in 32-bit (trainer.precision=32-true; now {precision})"
    raise Diverged(f"training diverged: val/loss is {loss} at its best val/acc epoch, its predictions NaN; {fix}")


def _check_before_data(cfg: DictConfig, stages: int, out_dir: Path) -> None:
    """Refuse settings that can only be wrong before any image is decoded, each with one line naming the fix.

    The data, freeze, head and cache constructors check their own ranges; this checks what needs more than one
    setting: the trainer's length, freeze.n and head.n against the backbone's ``stages``, writable folders.
    """
    accelerator = str(cfg.trainer.get("accelerator", "auto")).lower()
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():  # (Lightning's error came after extraction)
        raise ConfigError(
            f"trainer.accelerator={accelerator} but no CUDA GPU is visible here; use trainer.accelerator=auto or cpu"
        )
    try:  # the optimizer's own ranges (tlx.module.Optim): a bad weight decay was torch's traceback after extraction
        instantiate(cfg.optim)
    except InstantiationException as e:
        raise (e.__cause__ if isinstance(e.__cause__, ConfigError) else e) from None
    for key in ("trainer.max_epochs", "trainer.max_steps", "freeze.n", "head.n"):  # int() below: a traceback
        value = OmegaConf.select(cfg, key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise ConfigError(f"{key} must be a whole number, e.g. {key}=2, got {value}")
    epochs, steps = cfg.trainer.get("max_epochs"), cfg.trainer.get("max_steps")
    if epochs is not None and int(epochs) < 1 and not (int(epochs) == -1 and steps is not None and int(steps) > 0):
        raise ConfigError(
            f"trainer.max_epochs must be >= 1 (or -1 with trainer.max_steps > 0), got {epochs}; "
            "set trainer.max_epochs=10, for example"
        )
    head_n = int(cfg.head.n) if str(cfg.head.get("_target_")).endswith("ReinitLastHead") else 0
    if head_n and not 1 <= head_n < stages:
        raise ConfigError(f"head.n={head_n} but the backbone has {stages} stages; use 1 <= head.n <= {stages - 1}")
    if cfg.freeze.get("mode") == "last_n" and cfg.freeze.get("n") is not None and int(cfg.freeze.n) > stages - head_n:
        left = f" left after head.n={head_n}" if head_n else ""
        raise ConfigError(
            f"freeze.n={cfg.freeze.n} but the backbone has only {stages - head_n} stages{left}; "
            f"use freeze.n<={stages - head_n} or freeze=none"
        )
    lp_ft = bool(OmegaConf.select(cfg, "lp_ft.enabled", default=False))
    if lp_ft and str(cfg.probe.enabled).lower() == "false":
        raise ConfigError(
            "lp_ft.enabled=true trains its first stage with the linear probe, which probe.enabled=false turns off; "
            "drop probe.enabled=false, or fine-tune without the probe stage (strategy=last_n2 or strategy=full)"
        )
    try:
        probe_writable(out_dir)
    except OSError as e:
        raise ConfigError(f"cannot write the run directory {out_dir} ({e.strerror or e}); set hydra.run.dir") from e
    cache = instantiate(cfg.cache)
    # Runs that never cache need no writable cache folder: freeze=none, and (but for LP-FT's probe stage, which reads
    # un-augmented pooled features) augmentation before the cut with one view, or frozen BatchNorm that trains.
    augmented = bool(cfg.data.get("augment")) and cache.views == 1
    never = cfg.freeze.get("mode") == "none" or (not lp_ft and (augmented or bool(cfg.freeze.get("train_bn"))))
    if cache.enabled != "false" and not never:
        cache.check_writable()


class _LastCheckpoint(Checkpoint):
    """Writes ``last.ckpt`` (for resume) at the end of an epoch once ``every_s`` seconds have passed since the last
    write, and when training ends.

    A :class:`~pytorch_lightning.callbacks.Checkpoint`, so that Lightning runs it after ``best.ckpt``'s callback, which
    saves at the same epoch end: as a plain callback it ran first, and the state it wrote held the best score as it was
    before that epoch. A run resumed from it took a worse later epoch for the best, wrote it over ``best.ckpt``, and
    tested it under the best epoch's val metrics.

    Epoch boundaries only, so a resumed run continues exactly; throttled, because a run that trains from cached
    features does an epoch in a fraction of a second, and writing the whole network (frozen backbone included) every
    epoch would cost more than the training (Lightning >= 2.6's ``save_last`` only follows the best checkpoint).
    An epoch end that is not written is kept in memory instead (a copy of what the file would hold), and
    :meth:`save_pending` writes it when the run is interrupted: a stopped run resumes from its last finished epoch, not
    from the last one that happened to be written (or from the beginning).
    """

    def __init__(self, path: Path, every_s: float) -> None:
        self.path, self.every_s, self.saved_at = path, every_s, time.monotonic()
        self.pending: dict[str, Any] | None = None

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if time.monotonic() - self.saved_at >= self.every_s:
            self._save(trainer)
        else:  # the checkpoint as trainer.save_checkpoint would write it, copied: training goes on changing it
            self.pending = _cpu_copy(trainer._checkpoint_connector.dump_checkpoint())

    def save_pending(self, trainer: pl.Trainer) -> None:
        """Write the last finished epoch's checkpoint, if it was kept in memory rather than written."""
        if self.pending is not None:
            trainer.strategy.save_checkpoint(self.pending, self.path)  # rank 0 writes, as save_checkpoint does
            self.pending = None

    def on_fit_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self._save(trainer)

    def _save(self, trainer: pl.Trainer) -> None:
        trainer.save_checkpoint(self.path)  # written to a temporary file and renamed by Lightning
        self.saved_at, self.pending = time.monotonic(), None


_in_lightning = threading.Event()  # set while a Trainer runs (its own SIGTERM handler, which calls ours too, acts)


def _raise_interrupt(signum: int, frame: Any) -> None:
    """SIGTERM or SIGINT outside Lightning's loops (in them, Lightning's SIGTERM handler and _OnInterrupt's SIGINT one
    act)."""
    if signum != signal.SIGTERM:
        raise note_interrupt(KeyboardInterrupt)
    if not _in_lightning.is_set():
        raise note_interrupt(Terminated)  # (extraction raises it again at its next batch where it was dropped)


@contextlib.contextmanager
def signals_as_interrupts() -> Iterator[None]:
    """While the block runs, SIGTERM outside Lightning's loops raises :class:`Terminated`, so the run records itself
    as interrupted and says how to resume (Python's default action ended the process at once, with no word and no
    results.json); where SIGTERM has its default action only, in the main thread: submitit's own handler stays. A
    Ctrl-C raises KeyboardInterrupt, as Python's own handler does. Both are noted, so that one dropped where it landed
    is raised again (:func:`tlx.errors.note_interrupt`)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    defaults = {signal.SIGTERM: signal.SIG_DFL, signal.SIGINT: signal.default_int_handler}
    ours = [s for s, default in defaults.items() if signal.getsignal(s) == default]  # (not one ignored or another's)
    for s in ours:
        signal.signal(s, _raise_interrupt)
    report_dropped = sys.unraisablehook

    def dropped(unraisable: Any) -> None:  # an interrupt Python dropped where it landed, and what failed with it
        if not isinstance(unraisable.exc_value, KeyboardInterrupt) and not interrupt_noted():
            report_dropped(unraisable)  # (the interrupt is raised again: no traceback of it on the console)

    sys.unraisablehook = dropped
    try:
        yield
    finally:
        for s in ours:
            signal.signal(s, defaults[s])
        sys.unraisablehook = report_dropped
        forget_interrupt()


def _resumed_epoch(checkpoint: Path) -> int:
    """The epoch a run resumed from ``checkpoint`` starts with (the one Lightning gives the samplers)."""
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False, mmap=True)
    return int(saved["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"])


def _cpu_copy(obj: Any) -> Any:
    """A copy of a checkpoint dict whose tensors are copied to the CPU (a copy on the GPU would double the memory of
    the weights and optimizer state there)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return type(obj)((k, _cpu_copy(v)) for k, v in obj.items())
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # a named tuple
        return type(obj)(*(_cpu_copy(v) for v in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cpu_copy(v) for v in obj)
    return copy.deepcopy(obj)


class _BestCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint (``best.ckpt``, the best val/acc so far) that resumes in a moved run directory.

    Its state holds absolute paths; when the directory was moved or copied (another disk, a sweep directory renamed),
    Lightning dropped the best score on resume ("The dirpath has changed"), so the first epoch after it replaced
    ``best.ckpt`` whatever its score, and the run tested that epoch's weights under the best epoch's val metrics. The
    paths are rebased onto the new directory instead.
    """

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        old = state_dict.get("dirpath")
        if old and self.dirpath and str(old) != str(self.dirpath):

            def rebase(path: Any) -> Any:
                if path and Path(path).is_relative_to(old):
                    return str(Path(self.dirpath) / Path(path).relative_to(old))
                return path

            state_dict = {
                **state_dict,
                "dirpath": self.dirpath,
                **{k: rebase(state_dict.get(k)) for k in ("best_model_path", "kth_best_model_path", "last_model_path")},
                "best_k_models": {rebase(k): v for k, v in (state_dict.get("best_k_models") or {}).items()},
            }
        super().load_state_dict(state_dict)


class _OnInterrupt(pl.Callback):
    """On Ctrl-C or SIGTERM: write last.ckpt at the last finished epoch (``_LastCheckpoint.save_pending``), record the
    run as interrupted and say how to resume.

    A Ctrl-C is never lost. Python raises KeyboardInterrupt wherever the main thread is when SIGINT arrives; inside a
    finalizer CPython discards it, and training went on: seen when the signal came as Lightning closed the file of a
    checkpoint it had just written (about 1 in 7 signals sent the moment ``last.ckpt`` appeared). While Lightning runs,
    SIGINT's handler also notes the press, and the next batch raises it again. Where SIGINT is ignored (a program
    started with ``&`` by a script), it stays ignored.
    """

    def __init__(self, out_dir: Path, latest: _LastCheckpoint, resume_dir: Path | None = None) -> None:
        self.out_dir, self.latest = out_dir, latest
        self.resume_dir = resume_dir or out_dir  # an auto candidate's run resumes with its auto run
        self.pressed = self.ctrl_c = False
        self.outer_sigint: Any = signal.default_int_handler  # SIGINT's handler outside the Lightning call

    @contextlib.contextmanager
    def exit_status(self) -> Iterator[None]:
        """Around a Lightning call: a Ctrl-C exits 130 (128 + SIGINT), as it does outside training and as shells
        expect. Lightning ends the process with ``sys.exit(1)`` after a KeyboardInterrupt, the status of a failure."""
        try:
            yield
        except SystemExit as e:
            if self.ctrl_c and e.code == 1:
                raise SystemExit(128 + signal.SIGINT) from None
            raise

    def _on_sigint(self, signum: int, frame: Any) -> None:
        self.pressed = True
        raise KeyboardInterrupt

    def setup(self, trainer: pl.Trainer, module: pl.LightningModule, stage: str) -> None:
        _in_lightning.set()  # SIGTERM is Lightning's now (signals_as_interrupts stands aside)
        main = threading.current_thread() is threading.main_thread()
        if main and signal.getsignal(signal.SIGINT) in (signal.default_int_handler, _raise_interrupt):
            self.outer_sigint = signal.signal(signal.SIGINT, self._on_sigint)

    def teardown(self, trainer: pl.Trainer, module: pl.LightningModule, stage: str) -> None:
        _in_lightning.clear()
        if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) == self._on_sigint:
            signal.signal(signal.SIGINT, self.outer_sigint)

    def _raise_if_pressed(self, *args: Any) -> None:
        if self.pressed:
            raise KeyboardInterrupt

    on_train_batch_start = on_validation_batch_start = on_test_batch_start = _raise_if_pressed

    def on_exception(self, trainer: pl.Trainer, module: pl.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException):
            # A SystemExit re-raised by Lightning, with no code: the process would exit 0 as if it had finished.
            exception.code = 128 + signal.SIGTERM
        if isinstance(exception, (KeyboardInterrupt, SIGTERMException)):
            self.ctrl_c = isinstance(exception, KeyboardInterrupt)
            self.latest.save_pending(trainer)
        if isinstance(exception, (KeyboardInterrupt, SIGTERMException)) and trainer.is_global_zero:
            # The best of the epochs last.ckpt holds: a validation that ran in the unfinished epoch (Ctrl-C between its
            # end and the epoch's) was "best so far" beside "1 epoch done", and the resume trains that epoch again
            done = int(trainer.current_epoch)
            kept = [h for h in module.val_history if h["epoch"] is None or h["epoch"] < done]
            best, resume = max(kept, key=lambda h: h["val/acc"], default={}), resume_command(self.resume_dir)
            write_results(
                self.out_dir,
                {
                    "status": "interrupted",
                    "epochs_done": done,
                    "best_so_far": {k: v for k, v in best.items() if k == "epoch" or k.startswith("val/")},
                    "resume": resume,
                },
            )
            if trainer.progress_bar_callback is not None:  # end the live bar first: the line below gets its own line
                trainer.progress_bar_callback.on_exception(trainer, module, exception)
            log.error("interrupted after %d epoch(s); resume with: %s", trainer.current_epoch, resume)
