"""The linear probe: a softmax layer trained on cached features, its learning rate and weight decay chosen on
validation.

On cached features a linear head costs almost nothing to train, so instead of one setting trained by the Lightning
loop (whose per-step overhead dwarfs the arithmetic) every (lr, weight decay) pair of a small grid is trained at once,
as one problem in plain PyTorch: the candidates' weights sit side by side in one (F+1, G, K) tensor, so one matrix
product per step serves them all; the cross-entropy gradient is written out (no autograd), and AdamW is applied with
each candidate's own lr and decay. Validation runs after every epoch; each candidate keeps its epoch of lowest
validation loss (early stopping), and the candidate with the lowest validation loss (ties: higher validation
accuracy) becomes the head. Kornblith et al. (CVPR 2019) tune the regularisation of
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

from tlx.errors import ConfigError

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

    def batch_for(self, n: int) -> int:
        """Features per step for ``n`` training features."""
        return self.batch_size or max(32, math.ceil(n / 64))


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
    sample_weight: torch.Tensor | None = None,
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
        sample_weight: (N,) weights (``data.balance=sampler``): an epoch is N draws with replacement in proportion to
            them, as the training loader's sampler draws, instead of a shuffle.
    """
    start = time.perf_counter()
    epochs = probe.epochs or epochs
    n, n_f, n_g = len(train_x), train_x[0].numel(), len(probe.grid)
    batch = probe.batch_for(n)
    # Small steps run on one thread (with 2 threads on 2 cores 0.6-1.4x the speed, e.g. the demo's 32 x 1281 x 48
    # multiply-adds), large ones on the run's threads (1.5-1.8x faster from 32M multiply-adds a step: 10,000 features of
    # 10 classes, 20,000 of 30). No autograd: the gradients are written out below.
    threads = torch.get_num_threads() if batch * (n_f + 1) * n_g * num_classes >= 2e7 else 1
    with _threads(threads), torch.no_grad():
        train_x, val_x = train_x.float().flatten(1), val_x.float().flatten(1)  # (N, F), (M, F)
        train_y, val_y = train_y.long(), val_y.long()
        lr = torch.tensor([g[0] for g in probe.grid]).view(1, n_g, 1)
        wd = torch.tensor([g[1] for g in probe.grid]).view(1, n_g, 1)
        g = torch.Generator().manual_seed(int(seed))
        bound = 1 / math.sqrt(n_f)  # nn.Linear's default init, the same start for every candidate
        w0 = torch.empty(n_f + 1, 1, num_classes).uniform_(-bound, bound, generator=g)
        # (F+1, G, K): the candidates side by side (one plain matrix product per step serves them all, as a (F+1, G*K)
        # matrix), with the bias as the last row
        w = w0.repeat(1, n_g, 1)
        w2 = w.view(n_f + 1, n_g * num_classes)
        m, v = torch.zeros_like(w), torch.zeros_like(w)
        xb = torch.cat([train_x, torch.ones(n, 1)], 1)  # (N, F+1): a constant 1 feature carries the bias
        vb = torch.cat([val_x, torch.ones(len(val_x), 1)], 1)  # (M, F+1)
        total, step = epochs * math.ceil(n / batch), 0
        best_acc = torch.full((n_g,), -1.0)
        best_loss, best_epoch = torch.full((n_g,), math.inf), torch.zeros(n_g, dtype=torch.long)
        best_w = w.clone()
        decay_mask = torch.ones(n_f + 1, 1, 1)
        decay_mask[-1] = 0  # no weight decay on the bias, as torch.optim.AdamW applies it to a separate bias too
        history = torch.zeros(epochs, 4, n_g)  # per epoch: train loss, train acc, val loss, val acc
        # Cross-entropy with class weights and label smoothing, as F.cross_entropy computes it, written out so that a
        # step is a handful of tensor ops (autograd's per-step cost was most of the probe's time on small sets):
        # loss_i = sum_c T_ic * (logsumexp(z_i) - z_ic), whose gradient in z_i is s_i * softmax(z_i) - T_i, where
        # s_i = sum_c T_ic.
        cw = torch.ones(num_classes) if class_weight is None else class_weight.float()
        targets = (1 - label_smoothing) * F.one_hot(train_y, num_classes).float() * cw[train_y, None]
        targets += label_smoothing / num_classes * cw  # (N, K)
        target_sum = targets.sum(1, keepdim=True)  # (N, 1)
        lr_decay = lr * wd * decay_mask  # (F+1, G, 1)
        for epoch in range(epochs):
            seen = torch.zeros(2, n_g)  # summed train loss and correct predictions over the epoch
            epoch_g = torch.Generator().manual_seed(int(seed) * 100_003 + epoch)  # as the training loader's sampler
            if sample_weight is None:
                order = torch.randperm(n, generator=epoch_g)
            else:
                order = torch.multinomial(sample_weight, n, replacement=True, generator=epoch_g)
            for i in range(0, n, batch):
                idx = order[i : i + batch]
                x, t, ts = xb[idx], targets[idx, None], target_sum[idx, None]  # (B, F+1), (B, 1, K), (B, 1, 1)
                logits = (x @ w2).view(len(idx), n_g, num_classes)  # (B, G, K)
                lse = torch.logsumexp(logits, -1, keepdim=True)  # (B, G, 1)
                seen[0] += (ts[:, :, 0] * lse[:, :, 0] - (t * logits).sum(2)).sum(0)  # per sample: s_i lse_i - T_i.z_i
                seen[1] += (logits.argmax(-1) == train_y[idx, None]).sum(0)
                # Each candidate's mean loss over the batch, differentiated in its own weights.
                d_logits = (torch.exp(logits - lse) * ts - t) / len(idx)  # (B, G, K)
                grad = (x.t() @ d_logits.view(len(idx), -1)).view_as(w)  # (F+1, G, K)
                step += 1
                # AdamW, per candidate lr and decay, cosine schedule to 0 over the run
                scale = 0.5 * (1 + math.cos(math.pi * (step - 1) / total))
                m.mul_(0.9).add_(grad, alpha=0.1)
                v.mul_(0.999).addcmul_(grad, grad, value=0.001)
                w.mul_(1 - scale * lr_decay)
                denom = v.sqrt().div_(math.sqrt(1 - 0.999**step)).add_(1e-8)
                w.sub_((lr * (scale / (1 - 0.9**step))) * m / denom)
            val_logits = (vb @ w2).view(len(vb), n_g, num_classes)  # (M, G, K)
            acc = (val_logits.argmax(-1) == val_y[:, None]).float().mean(0)  # (G,)
            picked = val_logits.gather(2, val_y.view(-1, 1, 1).expand(-1, n_g, 1)).squeeze(2)
            vloss = (torch.logsumexp(val_logits, -1) - picked).mean(0)  # (G,)
            history[epoch] = torch.stack([seen[0] / n, seen[1] / n, vloss, acc])
            better = vloss < best_loss
            best_acc = torch.where(better, acc, best_acc)
            best_loss = torch.where(better, vloss, best_loss)
            best_epoch = torch.where(better, torch.tensor(epoch), best_epoch)
            best_w[:, better] = w[:, better]
        table = [
            {"lr": a, "weight_decay": b, "epoch": int(e), "val/acc": float(ac), "val/loss": float(lo)}
            for (a, b), e, ac, lo in zip(probe.grid, best_epoch, best_acc, best_loss, strict=True)
        ]
        k = min(range(n_g), key=lambda i: (float(best_loss[i]), -float(best_acc[i])))
        result = ProbeResult(
            weight=best_w[:-1, k].t().contiguous(),
            bias=best_w[-1, k].contiguous(),
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
def _threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
