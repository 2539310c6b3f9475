"""Freeze regimes: which parameters train, and frozen BatchNorm statistics that do not move."""

from __future__ import annotations

import pytest
import torch

from tlx.backbones import create_backbone
from tlx.errors import ConfigError
from tlx.freeze import Freeze
from tlx.heads import LinearHead, Network
from tlx.module import Optim, TransferModule


def _net(head_cls=LinearHead, **head_kwargs):
    backbone = create_backbone("tf_efficientnet_lite0", image_size=64)
    head = head_cls(backbone=backbone, num_classes=3, **head_kwargs)
    return backbone, Network(backbone, head)


def _trainable(net: Network) -> set[str]:
    return {n for n, p in net.named_parameters() if p.requires_grad}


def test_head_only_trains_only_the_head():
    backbone, net = _net()
    counts = Freeze("head_only").apply(net, backbone.stage_groups())
    assert _trainable(net) == {"head.fc.weight", "head.fc.bias"}
    assert counts["trainable"] == 1280 * 3 + 3
    assert counts["total"] == counts["trainable"] + counts["frozen"]


def test_last_n_trains_the_last_n_timm_stages():
    backbone, net = _net()
    stages = backbone.stage_groups()
    assert len(stages) == 8  # stem + 7 block stages; conv_head/bn2 belong to the last (timm's group_matcher)
    Freeze("last_n", n=2).apply(net, stages)
    trainable = _trainable(net)
    expected = {f"backbone.{p}" for s in stages[-2:] for p in s} | {"head.fc.weight", "head.fc.bias"}
    assert trainable == expected
    assert any(n.startswith("backbone.blocks.5.") for n in trainable)
    assert any(n.startswith("backbone.conv_head.") for n in trainable)
    assert not any(n.startswith("backbone.blocks.4.") or n.startswith("backbone.conv_stem") for n in trainable)


def test_none_trains_everything():
    backbone, net = _net()
    counts = Freeze("none").apply(net, backbone.stage_groups())
    assert counts["frozen"] == 0
    assert _trainable(net) == {n for n, _ in net.named_parameters()}


def test_last_n_larger_than_stage_count_is_an_error():
    backbone, net = _net()
    with pytest.raises(ConfigError, match=r"freeze.n=9 but the backbone has only 8 stages"):
        Freeze("last_n", n=9).apply(net, backbone.stage_groups())
    with pytest.raises(ConfigError, match="unknown freeze mode"):
        Freeze("some")


def _bn_state(net: Network, prefix: str = "") -> dict[str, torch.Tensor]:
    return {
        k: v.clone()
        for k, v in net.state_dict().items()
        if ("running_mean" in k or "running_var" in k) and k.startswith(prefix)
    }


@pytest.mark.parametrize("mode,n", [("head_only", None), ("last_n", 1)])
def test_frozen_batchnorm_statistics_do_not_move_in_a_training_step(mode, n):
    backbone, net = _net()
    freeze = Freeze(mode, n=n)
    stages = backbone.stage_groups()
    freeze.apply(net, stages)
    module = TransferModule(net, freeze, Optim(lr=0.1, scheduler="none"), num_classes=3)
    before = _bn_state(net)
    module.train()  # the policy is re-applied after every train()
    optimizer = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.1)
    x, y = torch.randn(8, 3, 64, 64), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    torch.nn.functional.cross_entropy(module(x), y).backward()
    optimizer.step()
    after = _bn_state(net)
    trainable_bn = {
        k for k in before if k.replace("running_mean", "weight").replace("running_var", "weight") in _trainable(net)
    }
    frozen = [k for k in before if k not in trainable_bn]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)
    if mode == "last_n":  # BatchNorm layers of the trainable stage do update
        assert trainable_bn and any(not torch.equal(before[k], after[k]) for k in trainable_bn)


def test_train_bn_lets_frozen_batchnorm_update():
    backbone, net = _net()
    freeze = Freeze("head_only", train_bn=True)
    freeze.apply(net, backbone.stage_groups())
    module = TransferModule(net, freeze, Optim(), num_classes=3).train()
    before = _bn_state(net, "backbone.bn1")
    with torch.no_grad():
        module(torch.randn(4, 3, 64, 64))
    assert not torch.equal(before["backbone.bn1.running_mean"], net.state_dict()["backbone.bn1.running_mean"])


def test_optimizer_sees_trainable_parameters_only_with_backbone_multiplier():
    backbone, net = _net()
    freeze = Freeze("last_n", n=1)
    freeze.apply(net, backbone.stage_groups())
    module = TransferModule(net, freeze, Optim(lr=1e-2, backbone_lr_mult=0.1, scheduler="none"), num_classes=3)
    optimizer = module.configure_optimizers()
    in_opt = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert in_opt == {id(p) for p in net.parameters() if p.requires_grad}
    assert sorted(g["lr"] for g in optimizer.param_groups) == pytest.approx([1e-3, 1e-2])
    assert optimizer.defaults["fused"]  # float32 on CPU: torch's fused AdamW
    net.double()  # no fused kernel for these: torch's default AdamW, not an error
    assert not module.configure_optimizers().defaults["fused"]
