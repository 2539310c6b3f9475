"""bench/peer_fastai.py without the tlx run: fastai's model and DataLoaders on a files.json split, the tlx command.

Skipped without fastai (the optional extra `peer`, not in `dev`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest
import torch

from .conftest import ROOT, write_images

pytest.importorskip("fastai.vision.all")
sys.path.insert(0, str(ROOT / "bench"))
import peer_fastai  # noqa: E402

from tlx.backbones import create_backbone  # noqa: E402


@pytest.fixture(scope="module")
def backbone():
    return create_backbone("tf_efficientnet_lite0", weights="bundled", image_size=32)


def test_model_is_fastais_timm_model_with_bundled_weights(backbone):
    from fastai.vision.learner import create_timm_model

    bundled = {k: v.clone() for k, v in backbone.model.state_dict().items()}
    ours = peer_fastai.fastai_model(backbone.model, backbone.num_features, 5)
    # What vision_learner(dls, "tf_efficientnet_lite0") builds, without weights (pretrained=True would download).
    theirs, _ = create_timm_model("tf_efficientnet_lite0", 5, pretrained=False)
    assert [(k, v.shape) for k, v in ours.state_dict().items()] == [
        (k, v.shape) for k, v in theirs.state_dict().items()
    ]
    body = {k.removeprefix("0.model."): v for k, v in ours.state_dict().items() if k.startswith("0.model.")}
    assert body.keys() == bundled.keys()
    assert all(torch.equal(body[k], bundled[k]) for k in bundled)  # the bundled ImageNet weights, untouched
    ours.eval()
    assert ours(torch.randn(2, 3, 32, 32)).shape == (2, 5)  # fastai's head pools the (B, 1280, 1, 1) features


def test_dataloaders_use_exactly_the_files_json_split(tmp_path, backbone):
    root = write_images(tmp_path / "imgs", classes=("ant", "bee", "cat"), n=6)
    paths = {c: sorted(str(p) for p in (root / c).glob("*.png")) for c in ("ant", "bee", "cat")}
    files = {
        "train": [p for c in paths for p in paths[c][:4]],
        "val": [p for c in paths for p in paths[c][4:5]],
        "test": [p for c in paths for p in paths[c][5:]],
        "classes": ["bee", "ant", "cat"],  # not alphabetical: label k must still be class k
    }
    cfg = backbone.data_config
    dls = peer_fastai.fastai_dataloaders(files, 32, cfg["mean"], cfg["std"], None, 0)
    assert [str(p) for p in dls.train.items] == files["train"]
    assert [str(p) for p in dls.valid.items] == files["val"]
    assert list(dls.vocab) == files["classes"]
    assert dls.train.bs == 8
    x, y = dls.valid.one_batch()
    assert x.shape == (3, 3, 32, 32)
    assert [files["classes"][int(i)] for i in y] == [Path(p).parent.name for p in files["val"]]
    assert -1.1 < float(x.min()) and float(x.max()) < 1.1 and float(x.min()) < 0  # normalised with mean/std 0.5
    test = dls.test_dl(peer_fastai.labelled(files["test"], files["classes"], "test"), with_labels=True)
    assert [files["classes"][int(i)] for i in test.one_batch()[1]] == ["ant", "bee", "cat"]


def test_files_outside_the_classes_fail_with_one_line(tmp_path, capsys):
    root = write_images(tmp_path / "imgs", classes=("ant", "dog"), n=1)
    with pytest.raises(SystemExit) as e:
        peer_fastai.labelled([str(root / "dog" / "0.png")], ["ant"], "train")
    assert e.value.code == 2
    assert "not classes ['ant']" in capsys.readouterr().err


def test_default_batch_size_keeps_four_full_batches():
    assert [peer_fastai.default_batch_size(n) for n in (2000, 256, 200, 60, 10)] == [64, 64, 32, 8, 8]


def test_tlx_command_passes_the_data_size_and_subset(tmp_path):
    root = write_images(tmp_path / "imgs", n=1)
    args = argparse.Namespace(
        tlx_experiment="small_data",
        data=str(root),
        image_size=64,
        samples_per_class=100,
        seed=1,
        tlx_overrides=["trainer.max_epochs=3"],
    )
    cmd = peer_fastai.tlx_command(args, tmp_path / "run")
    assert cmd[1:] == [
        "-m",
        "tlx",
        "+experiment=small_data",
        "data=folder",
        f"data.root={root.resolve()}",
        "backbone.image_size=64",
        "data.samples_per_class=100",
        "seed=1",
        f"cache.dir={tmp_path / 'run' / 'cache'}",
        "trainer.enable_progress_bar=false",
        f"hydra.run.dir={tmp_path / 'run'}",
        "trainer.max_epochs=3",
    ]
    args.data = str(tmp_path / "missing")
    with pytest.raises(SystemExit) as e:
        peer_fastai.tlx_command(args, tmp_path / "run")
    assert e.value.code == 2


def test_a_failed_tlx_run_is_reported_by_its_error_line():
    hydra = "In 'config': Could not find 'experiment/auto'\n\nAvailable options in 'experiment':\n\tsmall_data\n"
    hint = "Set the environment variable HYDRA_FULL_ERROR=1 for a complete stack trace.\n"
    assert peer_fastai._tlx_error(hydra + hint) == "In 'config': Could not find 'experiment/auto'"
    assert peer_fastai._tlx_error("[INFO] building\ntlx: error: no images in x; add some\n" + hint) == (
        "tlx: error: no images in x; add some"
    )
