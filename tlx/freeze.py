"""Freeze regimes (which parameters train) and the BatchNorm policy for frozen layers."""

from __future__ import annotations

import logging

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from tlx.errors import ConfigError
from tlx.heads import Network

log = logging.getLogger(__name__)

MODES = ("head_only", "last_n", "none")


class Freeze:
    """Which parameters train.

    Args:
        mode: ``head_only`` (only new layers train), ``last_n`` (the last ``n`` pretrained stages train too) or
            ``none`` (everything trains, pretrained weights as the start).
        n: number of trailing stages that train with ``last_n``; stages are timm's ``group_matcher(coarse=True)``.
            ``0`` trains no pretrained stage (as ``head_only``), so a search over ``freeze.n`` can include it.
        train_bn: let frozen BatchNorm layers update their running statistics (default: keep them in eval mode).
    """

    def __init__(self, mode: str, n: int | None = None, train_bn: bool = False) -> None:
        if mode not in MODES:
            raise ConfigError(f"unknown freeze mode '{mode}'; use freeze=head_only, freeze=last_n or freeze=none")
        if mode == "last_n" and (n is None or int(n) < 0):
            raise ConfigError(f"freeze=last_n needs freeze.n >= 0, got {n}")
        self.mode, self.n, self.train_bn = mode, (int(n) if n is not None else None), train_bn

    def apply(self, net: Network, stages: list[list[str]]) -> dict[str, int]:
        """Set ``requires_grad`` on every parameter of ``net``; returns trainable/frozen/total counts.

        Args:
            net: the network.
            stages: the backbone's pretrained parameter names per stage (without the ``backbone.`` prefix).
        """
        trainable_backbone: set[str] = set()
        if self.mode == "none":
            trainable_backbone = {p for stage in stages for p in stage}
        elif self.mode == "last_n":
            if self.n > len(stages):
                raise ConfigError(
                    f"freeze.n={self.n} but the backbone has only {len(stages)} stages; "
                    f"use freeze.n<={len(stages)} or freeze=none"
                )
            trainable_backbone = {p for stage in stages[len(stages) - self.n :] for p in stage}  # [-0:] is all
        for name, p in net.named_parameters():
            p.requires_grad_(net.is_new(name) or name.removeprefix("backbone.") in trainable_backbone)
        self.apply_bn_policy(net)
        counts = count_params(net)
        log.info(
            "freeze=%s%s: %s trainable / %s frozen parameters",
            self.mode,
            f" (n={self.n} of {len(stages)} stages)" if self.mode == "last_n" else "",
            f"{counts['trainable']:,}",
            f"{counts['frozen']:,}",
        )
        return counts

    def apply_bn_policy(self, net: nn.Module) -> None:
        """Run fully frozen layers in eval mode; call after every ``train()``.

        A module whose parameters are all frozen becomes a fixed function: its BatchNorm running statistics do not
        move and its dropout / stochastic depth is off. With ``train_bn`` its BatchNorm layers keep training mode.
        """
        for m in net.modules():
            params = list(m.parameters())
            if params and not any(p.requires_grad for p in params):
                m.eval()
        if self.train_bn:
            for m in net.modules():
                if isinstance(m, _BatchNorm) and net.training:
                    m.train()

    def fixed_state_keys(self, net: nn.Module) -> list[str]:
        """The ``state_dict`` keys of ``net`` that training leaves at their loaded values (in ``state_dict`` order).

        Frozen parameters, and the buffers of fully frozen modules, which run in eval mode (``apply_bn_policy``) so
        their BatchNorm statistics do not move; not with ``train_bn``, where they do. Buffers of modules without
        parameters are not counted: nothing says they stay fixed.
        """
        keys = []
        for key, tensor in net.state_dict(keep_vars=True).items():
            owner, _, _ = key.rpartition(".")
            module = net.get_submodule(owner)
            if isinstance(tensor, nn.Parameter):
                fixed = not tensor.requires_grad
            else:
                params = list(module.parameters())
                fixed = (
                    bool(params)
                    and not any(p.requires_grad for p in params)
                    and not (self.train_bn and isinstance(module, _BatchNorm))
                )
            if fixed:
                keys.append(key)
        return keys


def count_params(net: nn.Module) -> dict[str, int]:
    """Trainable, frozen and total parameter counts."""
    total = sum(p.numel() for p in net.parameters())
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    return {"trainable": trainable, "frozen": total - trainable, "total": total}
