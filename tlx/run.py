"""The one orchestration function: config in, trained classifier and results.json out."""

from __future__ import annotations

import logging
import signal
import time
import warnings
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.utilities.exceptions import SIGTERMException

from tlx.devices import torch_device
from tlx.features import find_cut, use_cached_features
from tlx.heads import Network
from tlx.module import TransferModule
from tlx.results import print_summary, read_results, resume_command, write_results
from tlx.tracking import create_loggers, finish_tracking

log = logging.getLogger(__name__)
# Frozen layers are in eval mode on purpose.
warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode at the start of training.*")


def train(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    """Train and test one classifier as ``cfg`` says; write ``results.json`` into ``out_dir`` and return it."""
    start = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    done = read_results(out_dir)
    if cfg.get("skip_done") and done and done.get("status") == "ok":
        log.info("skipping %s: results.json is complete", out_dir)
        return done
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    torch.set_num_threads(cfg.threads) if cfg.get("threads") else None

    # Backbone first: its pretraining data config decides the transforms.
    backbone = instantiate(cfg.backbone)
    data = instantiate(cfg.data)(data_config=backbone.data_config)
    data.seed = int(cfg.seed)
    data.setup()
    data.save_file_lists(out_dir / "files.json")

    # New head for our classes, then the freeze regime over timm's own stages.
    head = instantiate(cfg.head)(backbone=backbone, num_classes=len(data.classes))
    net = Network(backbone, head)
    freeze = instantiate(cfg.freeze)
    params = freeze.apply(net, backbone.stage_groups(exclude=set(head.new_backbone_modules)))
    module = TransferModule(net, freeze, instantiate(cfg.optim), num_classes=len(data.classes), seed=int(cfg.seed))

    # Frozen prefix: compute its activations once (or read them from the cache) and train only the rest.
    if cfg.get("channels_last") and net.chain:
        net.to(memory_format=torch.channels_last)  # faster convolutions on CPU (oneDNN) and tensor cores
        module.channels_last = True
    device = torch_device(cfg.trainer)
    cache = instantiate(cfg.cache)
    cache_info = use_cached_features(
        net, data, cache, backbone.name, backbone.weights_hash, int(cfg.seed), device, train_bn=freeze.train_bn
    )
    if cache_info["used"]:
        module.cut = find_cut(net)
    module.train()  # Lightning keeps each module's mode at fit start: new layers train, frozen ones stay in eval

    checkpoint = ModelCheckpoint(dirpath=out_dir / "checkpoints", filename="best", monitor="val/acc", mode="max")
    latest = _LastCheckpoint(out_dir / "checkpoints" / "last.ckpt", float(cfg.get("last_checkpoint_every_s", 0)))
    trainer = instantiate(
        cfg.trainer,
        default_root_dir=out_dir,
        callbacks=[checkpoint, latest, _OnInterrupt(out_dir)],
        logger=create_loggers(cfg, out_dir),  # conf/logger/: csv (logs/metrics.csv) by default
    )
    resume = latest.path if cfg.get("resume") and latest.path.is_file() else None
    if cfg.get("resume") and resume is None:
        log.warning("resume=true but %s does not exist: starting from the beginning", latest.path)
    t_fit = time.perf_counter()
    trainer.fit(module, datamodule=data, ckpt_path=resume)
    fit_s = time.perf_counter() - t_fit
    t_test = time.perf_counter()
    tested = trainer.test(module, datamodule=data, ckpt_path="best", verbose=False)[0]
    test_s = time.perf_counter() - t_test

    best = module.best_val()  # validation metrics of the epoch whose checkpoint is tested
    test_split = "test" if "test" in data.samples else "val"
    results = {
        "status": "ok",
        "metrics": {
            **{k: v for k, v in best.items() if k.startswith("val/")},
            **{k: float(v) for k, v in tested.items()},
        },
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
            "extract_s": cache_info["extract_s"],
            "fit_s": round(fit_s, 3),
            "test_s": round(test_s, 3),
        },
        "data": data.counts(),
        "cache": cache_info,
        "weights": backbone.weights,
        "seed": int(cfg.seed),
        "backbone": backbone.name,
        "head": OmegaConf.select(cfg, "head._target_").rsplit(".", 1)[-1],
        "freeze": freeze.mode + (f"(n={freeze.n})" if freeze.mode == "last_n" else ""),
        "epochs": int(trainer.current_epoch),
        "checkpoint": (
            str(Path(checkpoint.best_model_path).relative_to(out_dir)) if checkpoint.best_model_path else None
        ),
    }
    if data.name == "fashion_mnist" or data.samples_per_class or data.fraction:
        results["data"]["samples_per_class"] = data.samples_per_class
        results["data"]["fraction"] = data.fraction
    if trainer.is_global_zero:  # under DDP every process runs train(); one writes the results
        write_results(out_dir, results)
        print_summary(results, out_dir)
        finish_tracking(trainer.loggers, out_dir)
    return results


class _LastCheckpoint(pl.Callback):
    """Writes ``last.ckpt`` (for resume) at the end of an epoch once ``every_s`` seconds have passed since the last
    write, and when training ends.

    Epoch boundaries only, so a resumed run continues exactly; throttled, because a run that trains from cached
    features does an epoch in a fraction of a second, and writing the whole network (frozen backbone included) every
    epoch would cost more than the training (Lightning >= 2.6's ``save_last`` only follows the best checkpoint).
    """

    def __init__(self, path: Path, every_s: float) -> None:
        self.path, self.every_s, self.saved_at = path, every_s, time.monotonic()

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if time.monotonic() - self.saved_at >= self.every_s:
            self._save(trainer)

    def on_fit_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self._save(trainer)

    def _save(self, trainer: pl.Trainer) -> None:
        trainer.save_checkpoint(self.path)  # written to a temporary file and renamed by Lightning
        self.saved_at = time.monotonic()


class _OnInterrupt(pl.Callback):
    """On Ctrl-C or SIGTERM: record the run as interrupted (last.ckpt holds the last finished epoch) and say how to
    resume."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir

    def on_exception(self, trainer: pl.Trainer, module: pl.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException):
            # A SystemExit re-raised by Lightning, with no code: the process would exit 0 as if it had finished.
            exception.code = 128 + signal.SIGTERM
        if isinstance(exception, (KeyboardInterrupt, SIGTERMException)) and trainer.is_global_zero:
            best = module.best_val()
            write_results(
                self.out_dir,
                {
                    "status": "interrupted",
                    "epochs_done": int(trainer.current_epoch),
                    "best_so_far": {k: v for k, v in best.items() if k == "epoch" or k.startswith("val/")},
                    "resume": resume_command(self.out_dir),
                },
            )
            log.error(
                "interrupted after %d epoch(s); resume with: %s", trainer.current_epoch, resume_command(self.out_dir)
            )
