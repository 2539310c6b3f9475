"""The linear probe: a softmax layer trained on cached features, its learning rate and weight decay chosen on
validation.

On cached features a linear head costs almost nothing to train, so instead of one setting trained by the Lightning
loop (whose per-step overhead dwarfs the arithmetic) every (lr, weight decay) pair of a small grid is trained at once,
as one batched problem in plain PyTorch: the candidates' weights are stacked into one (G, F, K) tensor, one batched
matrix product per step covers them all, and AdamW is applied with each candidate's own lr and decay. Validation
runs after every epoch; each candidate keeps its best epoch (early stopping), and the best candidate on validation
accuracy (ties: lower validation loss) becomes the head. Kornblith et al. (CVPR 2019) tune the regularisation of
their linear-probe baselines the same way.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import product
from typing import Any

import torch
from torch.nn import functional as F

from tlx.backbones import ConfigError

log = logging.getLogger(__name__)


class Probe:
    """How a linear head is trained on cached pooled features.

    Args:
        enabled: ``auto`` (whenever a linear head trains on cached pooled features) or ``false`` (train it with the
            Lightning loop, ``optim`` and ``trainer.max_epochs`` like any other head).
        lr: learning rates tried.
        weight_decay: decoupled (AdamW) weight decays tried; every (lr, weight decay) pair is one candidate.
        epochs: passes over the training features (null: the run's ``trainer.max_epochs``); each candidate keeps its
            epoch of lowest validation loss.
        batch_size: features per step; null: 32, or more on large sets so that an epoch is at most 64 steps.
    """

    def __init__(
        self,
        enabled: bool | str = "auto",
        lr: tuple[float, ...] = (1e-3, 3e-3, 1e-2, 3e-2),
        weight_decay: tuple[float, ...] = (1e-4, 0.1, 1.0, 5.0),
        epochs: int | None = None,
        batch_size: int | None = None,
    ) -> None:
        if str(enabled).lower() not in ("auto", "false"):
            raise ConfigError(f"probe.enabled must be auto or false, got {enabled}")
        if not lr or any(not float(v) > 0 for v in lr):
            raise ConfigError(f"probe.lr must be a non-empty list of learning rates > 0, got {list(lr)}")
        if not weight_decay or any(float(v) < 0 for v in weight_decay):
            raise ConfigError(f"probe.weight_decay must be a non-empty list of decays >= 0, got {list(weight_decay)}")
        if epochs is not None and int(epochs) < 1:
            raise ConfigError(f"probe.epochs must be >= 1 or null, got {epochs}")
        if batch_size is not None and int(batch_size) < 1:
            raise ConfigError(f"probe.batch_size must be >= 1, got {batch_size}")
        self.enabled = str(enabled).lower() == "auto"
        self.grid = [(float(a), float(b)) for a, b in product(lr, weight_decay)]
        self.epochs = None if epochs is None else int(epochs)
        self.batch_size = None if batch_size is None else int(batch_size)


@dataclass
class ProbeResult:
    """The trained head and how it was chosen.

    Attributes:
        weight: (K, F) weights; bias: (K,) biases.
        lr: the chosen learning rate; weight_decay: the chosen decay; epoch: its best epoch (0-based).
        table: one row per candidate: ``lr``, ``weight_decay``, ``epoch``, ``val/acc``, ``val/loss``.
        seconds: wall time of the whole search.
        history: the chosen candidate's metrics per epoch (``train/loss``, ``train/acc``, ``val/loss``, ``val/acc``).
    """

    weight: torch.Tensor
    bias: torch.Tensor
    lr: float
    weight_decay: float
    epoch: int
    table: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """What results.json records of the probe."""
        return {
            "lr": self.lr,
            "weight_decay": self.weight_decay,
            "best_epoch": self.epoch,
            "seconds": round(self.seconds, 3),
            "table": self.table,
        }


def fit_probe(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    val_x: torch.Tensor,
    val_y: torch.Tensor,
    num_classes: int,
    probe: Probe,
    seed: int = 0,
    label_smoothing: float = 0.0,
    class_weight: torch.Tensor | None = None,
    epochs: int = 30,
) -> ProbeResult:
    """Train every candidate of ``probe``'s grid at once and return the best on validation.

    Args:
        train_x: (N, F) training features; train_y: (N,) labels.
        val_x: (M, F) validation features; val_y: (M,) labels.
        num_classes: K.
        probe: the grid, epochs and batch size.
        seed: seeds the initial weights (the same for every candidate) and the order of every epoch.
        label_smoothing: cross-entropy label smoothing.
        class_weight: (K,) cross-entropy class weights, or None.
        epochs: passes over the training features, unless ``probe.epochs`` says otherwise.
    """
    start = time.perf_counter()
    epochs = probe.epochs or epochs
    with _one_thread():  # steps this small gain nothing from threads (measured 3-25x slower with 2 on 2 cores)
        train_x, val_x = train_x.float().flatten(1), val_x.float().flatten(1)  # (N, F), (M, F)
        train_y, val_y = train_y.long(), val_y.long()
        n, n_f, n_g = len(train_x), train_x.shape[1], len(probe.grid)
        lr = torch.tensor([g[0] for g in probe.grid]).view(n_g, 1, 1)
        wd = torch.tensor([g[1] for g in probe.grid]).view(n_g, 1, 1)
        g = torch.Generator().manual_seed(int(seed))
        bound = 1 / math.sqrt(n_f)  # nn.Linear's default init, the same start for every candidate
        w0 = torch.empty(1, n_f + 1, num_classes).uniform_(-bound, bound, generator=g)
        w = w0.repeat(n_g, 1, 1).requires_grad_()  # (G, F+1, K): weights with the bias as the last row
        m, v = torch.zeros_like(w), torch.zeros_like(w)
        ones = torch.ones(n, 1)
        xb, vb = torch.cat([train_x, ones], 1), torch.cat([val_x, torch.ones(len(val_x), 1)], 1)  # (N, F+1), (M, F+1)
        batch = probe.batch_size or max(32, math.ceil(n / 64))
        total, step = epochs * math.ceil(n / batch), 0
        best_acc = torch.full((n_g,), -1.0)
        best_loss, best_epoch = torch.full((n_g,), math.inf), torch.zeros(n_g, dtype=torch.long)
        best_w = w.detach().clone()
        decay_mask = torch.ones(1, n_f + 1, 1)
        decay_mask[:, -1] = 0  # no weight decay on the bias, as torch.optim.AdamW applies it to a separate bias too
        history = torch.zeros(epochs, 4, n_g)  # per epoch: train loss, train acc, val loss, val acc
        for epoch in range(epochs):
            seen = torch.zeros(2, n_g)  # summed train loss and correct predictions over the epoch
            order = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed) * 100_003 + epoch))
            for i in range(0, n, batch):
                idx = order[i : i + batch]
                logits = torch.matmul(xb[idx], w)  # (G, B, K)
                per_sample = F.cross_entropy(
                    logits.reshape(-1, num_classes),
                    train_y[idx].repeat(n_g),
                    weight=class_weight,
                    label_smoothing=label_smoothing,
                    reduction="none",
                ).view(n_g, -1)  # (G, B)
                # The candidates' mean losses, summed: each candidate gets the gradient of its own loss.
                (grad,) = torch.autograd.grad(per_sample.mean(1).sum(), w)
                with torch.no_grad():
                    seen[0] += per_sample.sum(1)
                    seen[1] += (logits.argmax(-1) == train_y[idx]).sum(1)
                step += 1
                with torch.no_grad():  # AdamW, per candidate lr and decay, cosine schedule to 0 over the run
                    scale = 0.5 * (1 + math.cos(math.pi * (step - 1) / total))
                    m.mul_(0.9).add_(grad, alpha=0.1)
                    v.mul_(0.999).addcmul_(grad, grad, value=0.001)
                    m_hat, v_hat = m / (1 - 0.9**step), v / (1 - 0.999**step)
                    w.mul_(1 - lr * scale * wd * decay_mask)
                    w.sub_(lr * scale * m_hat / (v_hat.sqrt() + 1e-8))
            with torch.no_grad():
                val_logits = torch.matmul(vb, w)  # (G, M, K)
                acc = (val_logits.argmax(-1) == val_y).float().mean(1)  # (G,)
                vloss = F.cross_entropy(val_logits.flatten(0, 1), val_y.repeat(n_g), reduction="none")
                vloss = vloss.view(n_g, -1).mean(1)  # (G,)
                history[epoch] = torch.stack([seen[0] / n, seen[1] / n, vloss, acc])
                better = vloss < best_loss
                best_acc = torch.where(better, acc, best_acc)
                best_loss = torch.where(better, vloss, best_loss)
                best_epoch = torch.where(better, torch.tensor(epoch), best_epoch)
                best_w[better] = w[better]
        table = [
            {"lr": a, "weight_decay": b, "epoch": int(e), "val/acc": float(ac), "val/loss": float(lo)}
            for (a, b), e, ac, lo in zip(probe.grid, best_epoch, best_acc, best_loss, strict=True)
        ]
        k = min(range(n_g), key=lambda i: (float(best_loss[i]), -float(best_acc[i])))
        result = ProbeResult(
            weight=best_w[k, :-1].t().contiguous(),
            bias=best_w[k, -1].contiguous(),
            lr=probe.grid[k][0],
            weight_decay=probe.grid[k][1],
            epoch=int(best_epoch[k]),
            table=table,
            seconds=time.perf_counter() - start,
            history=[
                dict(zip(("train/loss", "train/acc", "val/loss", "val/acc"), row[:, k].tolist(), strict=True))
                for row in history
            ],
        )
        log.info(
            "linear probe: lr=%g weight_decay=%g (best epoch %d) chosen of %d candidates, val/acc %.4f, %.2fs",
            result.lr,
            result.weight_decay,
            result.epoch,
            n_g,
            float(best_acc[k]),
            result.seconds,
        )
        return result


@contextmanager
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
