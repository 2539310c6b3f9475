"""The LightningModule: network, loss, torchmetrics per stage, optimizer parameter groups."""

from __future__ import annotations

import logging
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.trainer.states import TrainerFn
from torch import nn
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix, MulticlassF1Score

from tlx.checkpoints import make_lean, restore_frozen
from tlx.errors import ConfigError
from tlx.freeze import Freeze
from tlx.heads import Network

log = logging.getLogger(__name__)


class Optim:
    """Optimizer and schedule settings.

    Args:
        name: ``adamw`` or ``sgd`` (momentum, nesterov).
        lr: learning rate of the new layers.
        weight_decay: decoupled (AdamW) or L2 (SGD) weight decay.
        momentum: SGD momentum.
        backbone_lr_mult: learning rate of trainable pretrained layers, relative to ``lr``.
        scheduler: ``cosine`` (to 0 over the run, per step) or ``none``.
        label_smoothing: cross-entropy label smoothing.
    """

    def __init__(
        self,
        name: str = "adamw",
        lr: float = 1e-3,
        weight_decay: float = 0.01,
        momentum: float = 0.9,
        backbone_lr_mult: float = 1.0,
        scheduler: str = "cosine",
        label_smoothing: float = 0.0,
    ) -> None:
        if name not in ("adamw", "sgd"):
            raise ConfigError(f"optim.name must be adamw or sgd, got {name}")
        if not float(lr) > 0:
            raise ConfigError(f"optim.lr must be > 0, got {lr}")
        if not float(weight_decay) >= 0:
            raise ConfigError(f"optim.weight_decay must be >= 0, got {weight_decay}")
        if not float(momentum) >= 0:
            raise ConfigError(f"optim.momentum must be >= 0, got {momentum}")
        if float(backbone_lr_mult) < 0:
            raise ConfigError(f"optim.backbone_lr_mult must be >= 0, got {backbone_lr_mult}")
        if scheduler not in ("cosine", "none"):
            raise ConfigError(f"optim.scheduler must be cosine or none, got {scheduler}")
        if not 0.0 <= float(label_smoothing) < 1.0:
            raise ConfigError(f"optim.label_smoothing must be in [0, 1), got {label_smoothing}")
        self.name, self.lr, self.weight_decay, self.momentum = name, float(lr), float(weight_decay), float(momentum)
        self.backbone_lr_mult, self.scheduler = float(backbone_lr_mult), scheduler
        self.label_smoothing = float(label_smoothing)

    def create(self, groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
        """The optimizer over ``groups`` (each with its own ``lr``)."""
        if self.name == "sgd":
            return torch.optim.SGD(
                groups, lr=self.lr, momentum=self.momentum, nesterov=True, weight_decay=self.weight_decay
            )
        # The same update as torch's default (multi-tensor) AdamW, as one fused kernel per step where torch has one
        # (float32 on CPU or CUDA): fewer passes over the weights (bench/small_maps.py measures it on CPU)
        fused = all(p.dtype == torch.float32 and p.device.type in ("cpu", "cuda") for g in groups for p in g["params"])
        return torch.optim.AdamW(groups, lr=self.lr, weight_decay=self.weight_decay, fused=fused or None)


class TransferModule(pl.LightningModule):
    """Backbone + new head, trained with cross-entropy.

    Args:
        net: the network, already frozen by ``freeze``.
        freeze: the freeze regime (re-applied to BatchNorm/dropout after every ``train()``).
        optim: optimizer settings.
        num_classes: number of classes.
        seed: reseeds the global RNG at every epoch start (dropout), so a resumed run continues exactly.
        class_weights: per-class cross-entropy weights (K,), for unbalanced classes; None weighs every image alike.
    """

    def __init__(
        self,
        net: Network,
        freeze: Freeze,
        optim: Optim,
        num_classes: int,
        seed: int = 0,
        class_weights: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.net, self.freeze, self.optim, self.seed = net, freeze, optim, seed
        self.cut: int | str | None = None  # set when training from cached activations
        self.channels_last = False
        self.log_to_loggers = True  # off while the probe's head is validated: the probe logs its own epochs
        self.loss = nn.CrossEntropyLoss(weight=class_weights, label_smoothing=optim.label_smoothing)
        scalar = MetricCollection(
            {
                "acc": MulticlassAccuracy(num_classes, average="micro"),
                "bal_acc": MulticlassAccuracy(num_classes, average="macro"),  # mean per-class recall
                "f1": MulticlassF1Score(num_classes, average="macro"),
            }
        )
        self.metrics = nn.ModuleDict({f"{s}_": scalar.clone(prefix=f"{s}/") for s in ("train", "val", "test")})
        self.details = nn.ModuleDict(
            {
                f"{s}_": MetricCollection(
                    {
                        "per_class_acc": MulticlassAccuracy(num_classes, average=None),
                        "confusion": MulticlassConfusionMatrix(num_classes),
                    }
                )
                for s in ("val", "test")
            }
        )
        self.detail_results: dict[str, dict[str, list]] = {}
        # the epoch's mean loss over images, logged (and val's in val_history)
        self.loss_means = nn.ModuleDict({f"{s}_": MeanMetric() for s in ("train", "val", "test")})
        self.val_history: list[dict[str, Any]] = []  # one entry per validation epoch, to report the best one
        self.classes: list[str] | None = None  # the class names, kept in checkpoints (tlx.predict checks them)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)  # (B, C, H, W) stored as NHWC
        if self.cut is None:
            return self.net(x)
        # cached activations come in the cache's dtype (cache.dtype=float16 halves the cache); the head's dtype rules
        weights = next(self.net.head.parameters(), None)
        return self.net.forward_from(x if weights is None else x.to(weights.dtype), self.cut)

    def train(self, mode: bool = True) -> TransferModule:
        super().train(mode)
        if mode:
            self.freeze.apply_bn_policy(self.net)
        return self

    def on_train_epoch_start(self) -> None:
        torch.manual_seed(self.seed * 100_003 + self.current_epoch)

    def _step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> torch.Tensor:
        x, y = batch
        logits = self(x)  # (B, K)
        loss = self.loss(logits, y)
        self.metrics[f"{stage}_"].update(logits, y)
        if f"{stage}_" in self.details:
            self.details[f"{stage}_"].update(logits, y)
        shown = {"on_step": False, "on_epoch": True, "batch_size": len(y), "logger": self.log_to_loggers}
        # The epoch's loss as a metric (the mean over images): on several devices it is all processes' images, each
        # process having had its own share, of unequal size on eval splits (EvalSampler)
        mean = self.loss_means[f"{stage}_"]
        mean.update(loss.detach(), weight=len(y))
        self.log(f"{stage}/loss", mean, prog_bar=stage != "test", **shown)
        self.log_dict(self.metrics[f"{stage}_"], prog_bar=stage == "val", **shown)
        return loss

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "test")

    def _store_details(self, stage: str) -> None:
        out = {k: v.tolist() for k, v in self.details[f"{stage}_"].compute().items()}
        # a class with no images here has no accuracy (torchmetrics gives 0.0, which reads as all of them wrong)
        counts = [sum(row) for row in out["confusion"]]
        out["per_class_acc"] = [a if n else None for a, n in zip(out["per_class_acc"], counts, strict=True)]
        self.detail_results[stage] = out
        self.details[f"{stage}_"].reset()

    def on_validation_epoch_end(self) -> None:
        self._store_details("val")
        scalars = {k: float(v) for k, v in self.metrics["val_"].compute().items()}
        scalars["val/loss"] = float(self.loss_means["val_"].compute())  # (Lightning resets the logged metrics)
        self.val_history.append({"epoch": int(self.current_epoch), **scalars, **self.detail_results["val"]})

    def on_test_epoch_end(self) -> None:
        self._store_details("test")

    def best_val(self) -> dict[str, Any]:
        """The validation epoch with the best val/acc so far (the first one on ties, as ModelCheckpoint keeps it)."""
        return max(self.val_history, key=lambda h: h["val/acc"]) if self.val_history else {}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["val_history"] = self.val_history
        if self.classes is not None:
            checkpoint["classes"] = list(self.classes)
        # Frozen tensors are left out (rebuilt from the pretrained weights on load): best.ckpt and last.ckpt of a
        # head-only run hold the head, not the whole network.
        fixed = [f"net.{k}" for k in self.freeze.fixed_state_keys(self.net)]
        make_lean(checkpoint, fixed, self.net.weights, self.net.weights_hash)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        path = self.trainer.ckpt_path if self._trainer is not None else None
        restore_frozen(checkpoint, self.state_dict(), self.net.weights, self.net.weights_hash, path)
        # Only a resumed fit takes the history back; testing the best checkpoint must not cut it to that epoch.
        if self._trainer is not None and self.trainer.state.fn == TrainerFn.FITTING:
            self.val_history = list(checkpoint.get("val_history", []))

    def configure_optimizers(self) -> Any:
        new, pretrained = [], []
        for name, p in self.net.named_parameters():
            if p.requires_grad:
                (new if self.net.is_new(name) else pretrained).append(p)
        # The backbone's multiplier is applied by the optimizer itself, as the lr of its own group.
        groups = [{"params": new, "lr": self.optim.lr}]
        if pretrained:
            groups.append({"params": pretrained, "lr": self.optim.lr * self.optim.backbone_lr_mult})
        optimizer = self.optim.create(groups)
        if self.optim.scheduler == "none":
            return optimizer
        total = max(1, int(self.trainer.estimated_stepping_batches))
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
