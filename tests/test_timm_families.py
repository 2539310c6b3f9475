"""Any timm backbone, not only EfficientNet: architectures whose layout differs from it in one way each.

Random init (no weights can be downloaded here); what is checked is the structure tlx builds on them: the pooled
width, the stages that ``freeze.n`` and ``head=reinit_last`` count, the cut for cached activations, input sizes.
"""

from __future__ import annotations

import pytest
import timm
import torch

from tlx.backbones import create_backbone
from tlx.errors import ConfigError
from tlx.features import find_cut
from tlx.freeze import Freeze
from tlx.heads import LinearHead, Network, ReinitLastHead


def _params_of(net: Network, prefix: str) -> list[torch.nn.Parameter]:
    return [p for n, p in net.named_parameters() if n.startswith(prefix + ".")]


def test_the_head_gets_the_pooled_width_even_after_a_head_conv():
    # MobileNetV3 pools, then widens 288 -> 1024 with its conv_head: the new softmax sees 1024 features.
    b = create_backbone("mobilenetv3_small_050", pretrained=False, image_size=64)
    assert b.num_features == b.model(torch.zeros(1, 3, 64, 64)).shape[-1] == 1024
    net = Network(b, LinearHead(b, num_classes=3))
    assert net(torch.zeros(2, 3, 64, 64)).shape == (2, 3)


def test_a_model_without_stochastic_depth_builds_and_a_rate_it_cannot_take_is_one_line():
    b = create_backbone("densenet121", pretrained=False, image_size=32)  # DenseNet takes no drop_path_rate
    assert b.num_features == 1024
    with pytest.raises(ConfigError, match=r"'densenet121' does not take drop_path_rate; set backbone.drop_path_rate=0"):
        create_backbone("densenet121", pretrained=False, drop_path_rate=0.1)


@pytest.mark.parametrize(
    "name,trailing",
    [
        ("convnext_atto", "head.norm"),
        ("mobilenetv3_small_050", "conv_head"),
        ("eva02_tiny_patch14_224", "fc_norm"),
        ("swin_tiny_patch4_window7_224", "norm"),
    ],
)
def test_a_trailing_group_that_is_no_stage_joins_the_last_stage(name, trailing):
    """timm's groups end with ConvNeXt's head norm, MobileNetV3's conv_head after the pooling, EVA's and Swin's final
    norms: alone, freeze.n=1 would train a LayerNorm (or a conv on pooled features) and nothing of the last real
    stage. (timm's ViT and EfficientNet groups already put them with the last blocks.)"""
    b = create_backbone(name, pretrained=False)
    groups = timm.models.group_parameters(b.model, b.model.group_matcher(coarse=True))
    stages = b.stage_groups()
    assert len(stages) == len(groups) - 1
    assert any(p.startswith(trailing + ".") for p in stages[-1])
    assert any(not p.startswith(trailing + ".") for p in stages[-1])  # ... and the last real stage with it
    net = Network(b, LinearHead(b, num_classes=3))
    Freeze("last_n", n=1).apply(net, b.stage_groups())
    trainable = {n.removeprefix("backbone.") for n, p in net.named_parameters() if p.requires_grad}
    assert {p for p in stages[-1]} <= trainable
    assert len([p for p in stages[-2] if p in trainable]) == 0


def test_efficientnet_stages_are_unchanged():
    # its conv_head already sits in timm's last group, inside the chain: 8 stages, as the README's cache table says
    assert len(create_backbone("tf_efficientnet_lite0", pretrained=False).stage_groups()) == 8


@pytest.mark.parametrize("name,after", [("convnext_atto", ["head.norm"]), ("mobilenetv3_small_050", ["conv_head"])])
def test_reinit_last_replaces_the_last_stage_of_other_cnns(name, after):
    b = create_backbone(name, pretrained=False, image_size=64)
    with torch.no_grad():  # stand-ins for pretrained values that no initialisation gives
        for module in after:
            for p in b.model.get_submodule(module).parameters():
                p.fill_(0.123)
    head = ReinitLastHead(b, num_classes=3, n=1)
    net = Network(b, head)
    assert head.new_backbone_modules[1:] == after  # the dropped stage's layers after the pooling are new too ...
    for module in after:
        params = _params_of(net, f"backbone.{module}")
        assert params and all(not torch.all(p == 0.123) for p in params)  # ... re-initialised
    Freeze("head_only").apply(net, b.stage_groups(exclude=set(head.new_backbone_modules)))
    for module in [head.new_backbone_modules[0], *after]:
        assert all(p.requires_grad for p in _params_of(net, f"backbone.{module}"))
    cut = find_cut(net)
    assert isinstance(cut, int)  # cached activations can feed it
    x = torch.randn(2, 3, 64, 64)
    net.eval()
    torch.testing.assert_close(net.forward_from(net.forward_to(x, cut), cut), net(x))


@pytest.mark.parametrize(
    "name,dropped",
    [("vit_tiny_patch16_224", ["blocks.11", "norm"]), ("swin_tiny_patch4_window7_224", ["layers.3", "norm"])],
)
def test_reinit_last_restarts_the_last_stage_where_no_1x1_conv_fits(tmp_path, name, dropped):
    """A ViT's tokens and Swin's channels-last maps take no 1x1 conv: the last stage's own layers start again from
    timm's random initialisation (the same draw as the model built at random with this seed), train as new layers,
    and the frozen stages before them keep the loaded weights and feed them cached activations."""
    model = timm.create_model(name, pretrained=False)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(0.123)  # "pretrained" weights no random init draws
    torch.save(model.state_dict(), tmp_path / "weights.pth")
    b = create_backbone(name, weights=str(tmp_path / "weights.pth"), image_size=64)
    torch.manual_seed(7)
    head = ReinitLastHead(b, num_classes=3)
    torch.manual_seed(7)
    twin = dict(b.random_twin().named_parameters())
    net = Network(b, head)
    assert head.new_backbone_modules == dropped
    for n, p in b.model.named_parameters():
        if any(n.startswith(d + ".") for d in dropped):
            assert torch.equal(p, twin[n]), n  # timm's own initialisation of that layer
        else:
            assert torch.all(p == 0.123) or "relative_position" in n, n  # loaded (Swin's tables are resampled)
    Freeze("head_only").apply(net, b.stage_groups(exclude=set(head.new_backbone_modules)))
    trainable = {n.removeprefix("backbone.") for n, p in net.named_parameters() if p.requires_grad}
    assert all(net.is_new(f"backbone.{n}") for n in trainable - {"head.fc.weight", "head.fc.bias"})
    cut = find_cut(net)
    assert b.chain[cut][0] == dropped[0]  # cached activations feed the restarted stage
    x = torch.randn(2, 3, 64, 64)
    net.eval()
    torch.testing.assert_close(net.forward_from(net.forward_to(x, cut), cut), net(x))


def test_image_size_resamples_a_vit_and_its_pretrained_position_embeddings(tmp_path):
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False)
    torch.save(model.state_dict(), tmp_path / "vit.pth")  # weights for 224 px: 14 x 14 patches + class token
    b = create_backbone("vit_tiny_patch16_224", weights=str(tmp_path / "vit.pth"), image_size=64)
    assert b.model.pos_embed.shape == (1, 1 + 4 * 4, 192)
    assert b.data_config["input_size"] == (3, 64, 64)
    assert b.model(torch.zeros(2, 3, 64, 64)).shape == (2, 192)
    # the class token's embedding is carried over; the patch grid is resampled from the file's, not re-drawn
    torch.testing.assert_close(b.model.pos_embed[:, :1], model.pos_embed[:, :1])
    again = create_backbone("vit_tiny_patch16_224", weights=str(tmp_path / "vit.pth"), image_size=64)
    assert again.weights_hash == b.weights_hash  # the same tensors: cache keys and lean checkpoints hold


@pytest.mark.parametrize("name", ["levit_128s", "inception_v3"])
def test_a_size_the_model_cannot_take_is_one_line_at_build(name):
    with pytest.raises(ConfigError, match=rf"'{name}' cannot take 64px inputs .*; set backbone.image_size=null"):
        create_backbone(name, pretrained=False, image_size=64)


def test_a_model_without_group_matcher_has_stages_from_its_children():
    b = create_backbone("poolformer_s12", pretrained=False, image_size=64)  # a MetaFormer: no group_matcher
    assert not hasattr(b.model, "group_matcher")
    stages = b.stage_groups()
    # stem, stages.0-3, and the head's norm (after the pooling) with the last stage
    assert [sorted({".".join(p.split(".")[:2]) for p in s}) for s in stages] == [
        ["stem.conv"],
        ["stages.0"],
        ["stages.1"],
        ["stages.2"],
        ["head.norm", "stages.3"],
    ]
    assert sum(len(s) for s in stages) == len(list(b.model.parameters()))
    net = Network(b, LinearHead(b, num_classes=3))
    Freeze("last_n", n=1).apply(net, stages)
    assert find_cut(net) == len(b.chain) - 1  # stages.3 and the head norm train on cached activations


def test_a_model_whose_children_return_tuples_is_no_chain():
    b = create_backbone("xcit_nano_12_p16_224", pretrained=False)  # patch_embed returns (x, (h, w))
    assert b.chain == []
    assert b.model(torch.zeros(1, 3, 224, 224)).shape == (1, b.num_features)


@pytest.mark.parametrize(
    "name,strategy",
    [("mobilenetv3_small_050", "reinit_last"), ("vit_tiny_patch16_224", "reinit_last")],
    ids=["mobilenetv3", "vit"],
)
def test_a_run_on_another_backbone_trains_on_cached_activations_as_through_it(make_cfg, tmp_path, name, strategy):
    """head=reinit_last end to end on cached activations, with the metrics of training through the whole network:
    MobileNetV3's new last stage and the conv_head after its pooling; a ViT's restarted last block and final norm on
    cached tokens."""
    from tlx.run import train

    common = ["backbone=timm", f"backbone.name={name}", "backbone.pretrained=false", f"strategy={strategy}"]
    cached = train(make_cfg(*common), tmp_path / "cached")
    direct = train(make_cfg(*common, "cache.enabled=false"), tmp_path / "direct")
    assert cached["status"] == direct["status"] == "ok"
    assert cached["cache"]["used"] and cached["cache"]["cut"] != "pooled" and not direct["cache"]["used"]
    assert cached["metrics"]["test/loss"] == pytest.approx(direct["metrics"]["test/loss"], rel=1e-4)


def test_auto_skips_the_candidate_a_backbone_cannot_build_and_goes_on(make_cfg, tmp_path):
    """reinit_last needs a chain: on EVA (rotary position embeddings go to every block) auto records why it skipped it
    and tries the rest (on a ViT, before it had a chain, the whole search once ended in that one line)."""
    from tlx.auto import run_auto

    overrides = ["backbone=timm", "backbone.name=eva02_tiny_patch14_224", "backbone.pretrained=false"]
    overrides += ["data.samples_per_class=4", "trainer.max_epochs=1"]
    candidates = "auto.candidates=[{strategy:reinit_last,min_per_class:0},{strategy:last_n1,min_per_class:0}]"
    results = run_auto(
        make_cfg(*overrides, "+experiment=auto", candidates),
        tmp_path / "auto",
        lambda name: make_cfg(*overrides, f"strategy={name}"),
    )
    rows = {c["strategy"]: c for c in results["auto"]["candidates"]}
    assert rows["reinit_last"]["status"] == "skipped"
    assert "needs a chain-structured CNN" in rows["reinit_last"]["why"]
    assert rows["head_only"]["status"] == "finished" and rows["last_n1"]["status"] in ("finished", "stopped")
    assert results["auto"]["winner"] in ("head_only", "last_n1")
