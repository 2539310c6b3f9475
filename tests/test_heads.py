"""Replacing the ImageNet classifier: each head type, and the network's split forward."""

from __future__ import annotations

import pytest
import torch

from tlx.backbones import create_backbone
from tlx.errors import ConfigError
from tlx.features import find_cut
from tlx.freeze import Freeze
from tlx.heads import LinearHead, MLPHead, Network, ReinitLastHead


@pytest.fixture
def backbone():
    return create_backbone("tf_efficientnet_lite0", image_size=64)


def test_linear_head(backbone):
    net = Network(backbone, LinearHead(backbone, num_classes=4))
    assert net(torch.zeros(2, 3, 64, 64)).shape == (2, 4)
    assert not any("classifier" in n and p.numel() for n, p in net.named_parameters())  # 1000-way layer is gone
    assert net.head.fc.weight.shape == (4, 1280)


def test_mlp_head(backbone):
    head = MLPHead(backbone, num_classes=3, hidden=[64, 32], dropout=0.5)
    widths = [m.out_features for m in head.mlp if isinstance(m, torch.nn.Linear)]
    assert widths == [64, 32, 3]
    assert any(isinstance(m, torch.nn.Dropout) and m.p == 0.5 for m in head.mlp)
    assert Network(backbone, head)(torch.zeros(2, 3, 64, 64)).shape == (2, 3)


def test_reinit_last_replaces_the_last_stages_with_new_layers(backbone):
    pretrained = {k: v.clone() for k, v in backbone.model.state_dict().items()}
    head = ReinitLastHead(backbone, num_classes=3, n=1)
    net = Network(backbone, head)
    assert head.new_backbone_modules == ["blocks.6"]
    assert isinstance(net.backbone.blocks[6], torch.nn.Sequential)
    assert isinstance(net.backbone.conv_head, torch.nn.Identity) and isinstance(net.backbone.bn2, torch.nn.Identity)
    assert net.backbone.blocks[6][0].in_channels == 192 and net.backbone.blocks[6][0].out_channels == 1280
    assert torch.equal(net.backbone.blocks[5][0].conv_pw.weight, pretrained["blocks.5.0.conv_pw.weight"])
    assert net(torch.zeros(2, 3, 64, 64)).shape == (2, 3)
    Freeze("head_only").apply(net, backbone.stage_groups(exclude=set(head.new_backbone_modules)))
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert trainable == {
        "backbone.blocks.6.0.weight",
        "backbone.blocks.6.1.weight",
        "backbone.blocks.6.1.bias",
        "head.fc.weight",
        "head.fc.bias",
    }
    assert find_cut(net) == 8  # the cache stores the input of the new layers: blocks.5's output


def test_reinit_last_validates_n(backbone):
    with pytest.raises(ConfigError, match="head.n=8"):
        ReinitLastHead(backbone, num_classes=3, n=8)


def test_split_forward_equals_full_forward(backbone):
    net = Network(backbone, LinearHead(backbone, num_classes=3)).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        full = net(x)
        for cut in ["pooled", 0, 4, 9, len(net.chain)]:
            assert torch.allclose(net.forward_from(net.forward_to(x, cut), cut), full, atol=1e-5), cut


def test_a_vit_is_a_chain_of_its_token_steps_and_blocks():
    """A ViT's patch embedding + class token + position embeddings, its blocks and its final norm: frozen blocks are a
    prefix whose tokens can be cached, so last_n trains its last blocks from them."""
    vit = create_backbone("vit_tiny_patch16_224", pretrained=False, image_size=32)
    assert [name for name, _ in vit.chain] == ["patch_embed", *(f"blocks.{i}" for i in range(12)), "norm"]
    net = Network(vit, LinearHead(vit, num_classes=2)).eval()
    Freeze("head_only").apply(net, vit.stage_groups())
    assert find_cut(net) == "pooled"
    Freeze("last_n", n=2).apply(net, vit.stage_groups())
    assert find_cut(net) == 11  # the input of blocks.10: the tokens after blocks.9
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        tokens = net.forward_to(x, 11)
        assert tokens.shape == (2, 5, 192)  # class token + 2 x 2 patches
        assert torch.allclose(net.forward_from(tokens, 11), net(x), atol=1e-5)
    Freeze("last_n", n=13).apply(net, vit.stage_groups())  # the token steps train too (the class token with them)
    assert find_cut(net) is None


def test_non_chain_architectures_still_work_with_pooled_cut():
    eva = create_backbone("eva02_tiny_patch14_224", pretrained=False)  # rotary position embeddings go to every block
    assert eva.chain == []
    net = Network(eva, LinearHead(eva, num_classes=2))
    Freeze("head_only").apply(net, eva.stage_groups())
    assert find_cut(net) == "pooled"
    Freeze("last_n", n=2).apply(net, eva.stage_groups())
    assert find_cut(net) is None  # no mid-network cut without a chain: training goes through the backbone
    with pytest.raises(ConfigError, match="reinit_last needs a chain"):
        ReinitLastHead(eva, num_classes=2)
