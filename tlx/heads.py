"""Classifier heads that replace the 1000-way ImageNet softmax, and the network they form with the backbone."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import nn

from tlx.backbones import Backbone
from tlx.errors import ConfigError

log = logging.getLogger(__name__)


class LinearHead(nn.Module):
    """A new softmax layer on the pooled backbone features."""

    def __init__(self, backbone: Backbone, num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        _check_common(num_classes, dropout)
        self.new_backbone_modules: list[str] = []
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(backbone.num_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(x))  # (B, F) -> (B, K)


class MLPHead(nn.Module):
    """New hidden layer(s) with dropout, then the softmax layer, on the pooled backbone features."""

    def __init__(
        self, backbone: Backbone, num_classes: int, hidden: Sequence[int] = (512,), dropout: float = 0.2
    ) -> None:
        super().__init__()
        _check_common(num_classes, dropout)
        hidden = [hidden] if isinstance(hidden, int) else hidden  # head.hidden=256: one hidden layer, as [256]
        if isinstance(hidden, str) or not hidden or any(not isinstance(h, int) or h < 1 for h in hidden):
            raise ConfigError(
                f"head.hidden must be a list of positive widths, e.g. head.hidden=[512] or [512,256], got {hidden}"
            )
        self.new_backbone_modules: list[str] = []
        layers: list[nn.Module] = []
        width = backbone.num_features
        for h in hidden:
            layers += [nn.Linear(width, int(h)), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            width = int(h)
        layers.append(nn.Linear(width, num_classes))
        self.mlp = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)  # (B, F) -> (B, K)


class ReinitLastHead(nn.Module):
    """Drop the backbone's last ``n`` pretrained stages and put new, randomly initialised layers in their place.

    On channels-first CNNs the new layers are a 1x1 conv + BatchNorm + ReLU at the position of the first dropped
    chain element (the other dropped elements become identities), so the backbone's own pooling still applies; the
    new conv maps to ``hidden`` channels, by default the width the dropped stages produced, so whatever the
    architecture does after its last stage still fits. Where no 1x1 conv fits (a ViT's tokens, Swin's channels-last
    maps), the dropped layers stay and start again from timm's random initialisation of the same model. This module
    then holds the dropout and the softmax layer.
    """

    def __init__(
        self, backbone: Backbone, num_classes: int, n: int = 1, hidden: int | None = None, dropout: float = 0.2
    ) -> None:
        super().__init__()
        _check_common(num_classes, dropout)
        if not backbone.chain:
            raise ConfigError(
                f"head=reinit_last needs a chain-structured CNN; '{backbone.name}' is not one: "
                "use head=linear or head=mlp with freeze=last_n"
            )
        stages = backbone.stage_groups()
        if not 1 <= n < len(stages):
            raise ConfigError(
                f"head.n={n} but '{backbone.name}' has {len(stages)} stages; use 1 <= head.n <= {len(stages) - 1}"
            )
        dropped_params = {p for stage in stages[-n:] for p in stage}
        first = next(
            (i for i, (name, _) in enumerate(backbone.chain) if any(p.startswith(name + ".") for p in dropped_params)),
            None,
        )
        if first is None:
            raise ConfigError(f"the last {n} stage(s) of '{backbone.name}' have no layer in its chain to replace; "
                              "use freeze=last_n instead of head=reinit_last")  # fmt: skip
        size = min(int(backbone.data_config["input_size"][-1]), 64)
        x = torch.zeros(1, 3, size, size)
        with torch.no_grad():
            for _, module in backbone.chain[:first]:
                x = module(x)
            in_shape = x.shape
            for _, module in backbone.chain[first:]:
                x = module(x)
        # Pretrained layers of the dropped stages that run after the chain (MobileNetV3's conv_head after the pooling,
        # ConvNeXt's head norm) are dropped too: re-initialised as timm initialises them, they train as new layers.
        after_params = sorted(p for p in dropped_params if backbone.after_chain(p))
        after = sorted({p.rpartition(".")[0] for p in after_params})
        after = [m for m in after if not any(m.startswith(o + ".") for o in after)]
        dropped = [name for name, _ in backbone.chain[first:]]
        if len(in_shape) == 4 and x.ndim == 4 and x.shape[1] == backbone.model.num_features:
            in_ch, out_ch = in_shape[1], x.shape[1]  # (B, C, H, W) at the cut and at the end of forward_features
            if after_params:
                _restart(backbone, after_params)
            width = int(hidden) if hidden else out_ch
            new = nn.Sequential(nn.Conv2d(in_ch, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True))
            for i, name in enumerate(dropped):
                _set_submodule(backbone.model, name, new if i == 0 else nn.Identity())
            backbone.chain[first:] = [
                (name, new if i == 0 else backbone.model.get_submodule(name)) for i, name in enumerate(dropped)
            ]
            if width != out_ch:
                with torch.no_grad():
                    backbone.num_features = backbone.model.eval()(torch.zeros(1, 3, size, size)).shape[-1]
            self.new_backbone_modules = [dropped[0], *after]
            log.info(
                "reinit_last: dropped %s, new 1x1 conv %d -> %d channels%s",
                dropped,
                in_ch,
                width,
                f", re-initialised {after}" if after else "",
            )
        else:  # a ViT's tokens, Swin's channels-last maps: no 1x1 conv fits; the dropped layers themselves start again
            if hidden:
                raise ConfigError(f"head.hidden sizes the new 1x1 conv of a channels-first CNN; '{backbone.name}' "
                                  "re-initialises its own last layers instead: set head.hidden=null")  # fmt: skip
            _restart(backbone, sorted(dropped_params))
            self.new_backbone_modules = [*dropped, *after]
            log.info("reinit_last: %s start again from random initialisation (%s activations: no 1x1 conv)",
                     self.new_backbone_modules, "token" if x.ndim == 3 else "channels-last")  # fmt: skip
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(backbone.num_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(x))  # (B, F) -> (B, K)


class Network(nn.Module):
    """Backbone (without its ImageNet classifier) followed by the new head.

    ``forward_from(x, cut)`` runs only the part after a cut point, for training on cached activations:
    ``cut == "pooled"`` means ``x`` are pooled features, an int ``i`` means ``x`` is the input of chain element i.
    """

    def __init__(self, backbone: Backbone, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone.model
        self.head = head
        self.chain = backbone.chain  # plain list: the modules are registered under self.backbone already
        self.new_prefixes = ["head"] + [f"backbone.{n}" for n in head.new_backbone_modules]
        # What the frozen tensors of a lean checkpoint are rebuilt from (tlx.checkpoints).
        self.weights, self.weights_hash = backbone.weights, backbone.weights_hash

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))  # (B, 3, H, W) -> (B, F) -> (B, K)

    def forward_to(self, x: torch.Tensor, cut: int | str) -> torch.Tensor:
        """The frozen part: images -> activation at the cut."""
        if cut == "pooled":
            return self.backbone(x)
        for _, module in self.chain[:cut]:
            x = module(x)
        return x

    def forward_to_many(self, x: torch.Tensor, cuts: list[int | str]) -> list[torch.Tensor]:
        """The activations at several cuts in one pass over the frozen part, in the order of ``cuts``."""
        if cuts == ["pooled"] or not self.chain:
            return [self.forward_to(x, c) for c in cuts]
        last = len(self.chain) if "pooled" in cuts else max(cuts)
        out: dict[int | str, torch.Tensor] = {}
        for i in range(last + 1):
            if i in cuts:
                out[i] = x
            if i < last:
                x = self.chain[i][1](x)
        if "pooled" in cuts:
            out["pooled"] = self.backbone.forward_head(x, pre_logits=True)  # (B, F), as self.backbone(images)
        return [out[c] for c in cuts]

    def forward_from(self, x: torch.Tensor, cut: int | str) -> torch.Tensor:
        """The trainable part: activation at the cut -> logits."""
        if cut != "pooled":
            for _, module in self.chain[cut:]:
                x = module(x)
            x = self.backbone.forward_head(x, pre_logits=True)
        return self.head(x)

    def is_new(self, param_name: str) -> bool:
        """Whether a parameter belongs to a layer tlx created (head, replacements), not a pretrained one."""
        return any(param_name == p or param_name.startswith(p + ".") for p in self.new_prefixes)


def _check_common(num_classes: int, dropout: float) -> None:
    if num_classes < 2:
        raise ConfigError(f"need at least 2 classes, found {num_classes}: add a folder per class")
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"head.dropout must be in [0, 1), got {dropout}")


def _restart(backbone: Backbone, names: list[str]) -> None:
    """Set the parameters ``names`` (and the buffers of the layers that hold them) to timm's random initialisation of
    the same model, drawn from the run's seeded generator."""
    try:
        twin = backbone.random_twin()
    except Exception as e:
        raise ConfigError(f"head=reinit_last on '{backbone.name}' needs the model built with random weights, which "
                          f"failed ({type(e).__name__}: {e}); use freeze=last_n instead") from e  # fmt: skip
    fresh = dict(twin.named_parameters())
    with torch.no_grad():
        for name in names:
            backbone.model.get_parameter(name).copy_(fresh[name])
        for owner in sorted({n.rpartition(".")[0] for n in names}):
            for buffer_name, buffer in backbone.model.get_submodule(owner).named_buffers(recurse=False):
                buffer.copy_(twin.get_buffer(f"{owner}.{buffer_name}" if owner else buffer_name))


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, module)
