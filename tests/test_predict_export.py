"""Predict, evaluate and export from a run directory: the predictions, the scores and the exported models give what the
checkpoint gives."""

from __future__ import annotations

import csv
import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image

from tlx.heads import Network
from tlx.predict import find_images, load_run, main, predict
from tlx.results import read_results

from .conftest import HEAVY, TINY, imported_modules, run_cli, run_main, write_images

# tlx.predict runs on the GPU where there is one (device=auto), whose convolutions (TF32, cuDNN) round otherwise than
# the CPU's reference here: probabilities 3e-4 apart were seen on an H200
PROB_ATOL = 2e-3 if torch.cuda.is_available() else 1e-4


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A TINY run whose head replaces the backbone's last stage (rebuilding it must follow tlx.run's order)."""
    tmp = tmp_path_factory.mktemp("predict")
    photos = write_images(tmp / "photos", n=8)
    proc = run_main(
        *TINY,
        "data=folder",
        f"data.root={photos}",
        "head=reinit_last",
        f"hydra.run.dir={tmp / 'run'}",
        f"cache.dir={tmp / 'cache'}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp / "run"


@pytest.fixture(scope="module")
def reference(run_dir):
    """Logits of the best checkpoint for a list of image paths, with the network rebuilt here as tlx.run builds it
    (pretrained weights, then the checkpoint) and the images read by PIL and timm's eval transform."""
    cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    classes = json.loads((run_dir / "files.json").read_text())["classes"]
    backbone = instantiate(cfg.backbone)
    net = Network(backbone, instantiate(cfg.head)(backbone=backbone, num_classes=len(classes))).eval()
    saved = torch.load(run_dir / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    # A lean checkpoint (the backbone is frozen): the frozen tensors come from the pretrained weights loaded above.
    missing, unexpected = net.load_state_dict(
        {k.removeprefix("net."): v for k, v in saved["state_dict"].items()}, strict=False
    )
    # (BatchNorm keeps its own num_batches_tracked when the state lacks it, without listing it as missing.)
    left_out = {k for k in saved["frozen"]["keys"] if not k.endswith(".num_batches_tracked")}
    assert not unexpected and {f"net.{k}" for k in missing} == left_out
    transform = timm.data.create_transform(**backbone.data_config)

    def _logits(paths: list[Path]) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths])  # (N, 3, H, W)
        with torch.no_grad():
            return x, net(x)  # (N, K)

    return _logits


def test_predict_reproduces_the_runs_own_test_accuracy(run_dir):
    files, results = json.loads((run_dir / "files.json").read_text()), read_results(run_dir)
    assert results["test_split"] == "val"
    model = load_run(run_dir)
    assert model.channels_last  # fed as the run fed it (channels_last: true, a CNN): NHWC, oneDNN's fast layout
    records, skipped = predict(model, [Path(p) for p in files["val"]], top_k=1, batch_size=2)
    truth = [Path(p).parent.name for p in files["val"]]
    accuracy = np.mean([r["labels"][0] == t for r, t in zip(records, truth, strict=True)])
    assert not skipped and accuracy == pytest.approx(results["metrics"]["test/acc"], abs=1e-6)


def test_predict_cli_writes_top_k_csv_and_skips_bad_files(run_dir, reference, tmp_path):
    inputs = shutil.copytree(run_dir.parent / "photos", tmp_path / "inputs")
    (inputs / "bee" / "broken.jpg").write_bytes(b"not a jpeg")
    (inputs / "notes.txt").write_text("not an image, not even looked at")
    shutil.copytree(inputs / "ant", inputs / "__MACOSX" / "ant")  # clutter, left out as training leaves it out
    shutil.copy(inputs / "ant" / "0.png", inputs / "ant" / "0-checkpoint.png")
    Image.open(inputs / "ant" / "1.png").convert("RGB").save(inputs / "ant" / "1.jfif", format="JPEG")  # a JPEG too
    proc = run_cli(  # a new interpreter: what it prints, warnings included
        f"run_dir={run_dir}",
        f"inputs={inputs}",
        f"output={tmp_path / 'preds.csv'}",
        "top_k=3",
        "batch_size=5",
        "num_workers=0",
        module="tlx.predict",
        env={"PYTHONPROFILEIMPORTTIME": "1"},
    )
    imported = imported_modules(proc)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Prediction needs torch and timm, not the training framework (Lightning and torchmetrics: 1.3 s of a 5.4 s call).
    assert {"torch", "timm"} <= imported and not {"pytorch_lightning", "lightning_fabric", "torchmetrics"} & imported
    assert "25 predictions" in proc.stdout and "1 unreadable file skipped" in proc.stdout
    assert f"skipping unreadable image {inputs / 'bee' / 'broken.jpg'}" in proc.stderr
    # what was left out is said (it was only by training), as training says it
    assert f"left out 3 file(s)/folder(s) under {inputs}: 1 checkpoint_copy" in proc.stderr
    with open(tmp_path / "preds.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["path", "label_1", "prob_1", "label_2", "prob_2", "label_3", "prob_3"]
    paths = [Path(r["path"]) for r in rows]
    assert paths == [p for p in find_images(inputs) if p.name != "broken.jpg"]
    probs = np.array([[float(r[f"prob_{k}"]) for k in (1, 2, 3)] for r in rows])  # (N, 3), every class
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-5) and (np.diff(probs, axis=1) <= 0).all()
    expected = reference(paths)[1].softmax(dim=1)
    classes = json.loads((run_dir / "files.json").read_text())["classes"]
    assert [r["label_1"] for r in rows] == [classes[i] for i in expected.argmax(dim=1)]
    assert np.allclose(probs[:, 0], expected.max(dim=1).values.numpy(), atol=PROB_ATOL)


def test_predict_json_for_one_file(run_dir, reference, tmp_path, capsys):
    image = run_dir.parent / "photos" / "cat" / "0.png"
    main([f"run_dir={run_dir}", f"inputs={image}", f"output={tmp_path / 'preds.json'}", "top_k=2", "num_workers=0"])
    assert "1 prediction -> " in capsys.readouterr().out
    saved = json.loads((tmp_path / "preds.json").read_text())
    assert saved["classes"] == ["ant", "bee", "cat"] and saved["checkpoint"].endswith("best.ckpt")
    (record,) = saved["predictions"]
    assert record["path"] == str(image) and len(record["labels"]) == len(record["probs"]) == 2
    assert record["probs"][0] == pytest.approx(reference([image])[1].softmax(dim=1).max().item(), abs=PROB_ATOL)


def test_predict_cli_says_how_far_it_got_where_no_bar_is_drawn(run_dir, tmp_path, monkeypatch, caplog, capsys):
    monkeypatch.setattr("tlx.progress.PROGRESS_EVERY_S", 0.0)  # a line after every batch
    args = [
        f"run_dir={run_dir}",
        f"inputs={run_dir.parent / 'photos'}",
        f"output={tmp_path / 'p.csv'}",
        "batch_size=10",
    ]
    main([*args, "num_workers=0"])  # stderr is no terminal under pytest: no bar
    assert "24 predictions" in capsys.readouterr().out
    lines = [r.getMessage().rsplit(" (", 1)[0] for r in caplog.records if r.name == "tlx.progress"]
    assert lines == [f"predicting: {n} of 24 images" for n in (10, 20, 24)]  # shown: the CLI logs them at INFO


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("no_run_dir", "run directory not found"),
        ("no_checkpoint", "no checkpoint at"),
        ("failed_run", "failed before it trained (data root not found: /nope; set data.root=...); it has no model"),
        ("no_images", "no images in"),
        ("weights_gone", "cannot rebuild its backbone: weights file not found: "),  # a traceback before
        ("bad_option", "unknown option 'topk'; the options are run_dir=, inputs="),
        ("device=gpu", "device=gpu: use auto, cpu, cuda or cuda:<index>"),
        ("num_workers=-3", "num_workers=-3: use auto or a number of processes >= 0"),
        ("batch_size=0", "batch_size=0: use batch_size >= 1"),
        ("output=FILE/p.csv", "cannot write output=FILE/p.csv"),
        ("output=P.CSV", None),  # a suffix in capitals is a CSV too
        ("checkpoint=FILE", "FILE is not a checkpoint a tlx run wrote (UnpicklingError); use checkpoint=best"),
        # another run's (of 3 other classes: it was used with this run's class names)
        ("checkpoint=OTHER", "OTHER was trained on other classes (x, y, z) than RUN has (ant, bee, cat); give the"),
        pytest.param(
            "device=cuda",
            "device=cuda but no CUDA GPU is available here; use device=cpu",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here"),
        ),
    ],
)
def test_predict_errors_are_one_line(run_dir, tmp_path, capsys, case, expected):
    args = {"run_dir": str(run_dir), "inputs": str(run_dir.parent / "photos")}
    if "=" in case:  # an option's value
        (tmp_path / "FILE").write_text("not a checkpoint, not a folder")
        other = torch.load(run_dir / "checkpoints" / "best.ckpt", weights_only=True)
        assert other["classes"] == ["ant", "bee", "cat"]  # each checkpoint names its classes
        torch.save(other | {"classes": ["x", "y", "z"]}, tmp_path / "OTHER")
        case = case.replace("OTHER", str(tmp_path / "OTHER"))
        expected = expected and expected.replace("OTHER", str(tmp_path / "OTHER")).replace("RUN", str(run_dir))
        key, value = case.replace("FILE", str(tmp_path / "FILE")).replace("P.CSV", str(tmp_path / "P.CSV")).split("=")
        args[key] = value
        if expected is None:
            main([f"{k}={v}" for k, v in args.items()])
            assert "24 predictions" in capsys.readouterr().out and (tmp_path / "P.CSV").is_file()
            return
        expected = expected.replace("FILE", str(tmp_path / "FILE"))
    if case == "no_run_dir":
        args["run_dir"] = str(tmp_path / "nope")
    elif case in ("no_checkpoint", "failed_run"):
        (tmp_path / "run" / ".hydra").mkdir(parents=True)
        for name in (".hydra/config.yaml", "files.json") if case == "no_checkpoint" else ():  # a failed run: neither
            shutil.copy(run_dir / name, tmp_path / "run" / name)
        args["run_dir"] = str(tmp_path / "run")
        if case == "failed_run":
            error = "data root not found: /nope; set data.root=..."
            (tmp_path / "run" / "results.json").write_text(json.dumps({"status": "failed", "error": error}))
    elif case == "weights_gone":  # trained with backbone.weights=<a local file>, which has since moved
        shutil.copytree(run_dir, tmp_path / "run")
        saved = tmp_path / "run" / ".hydra" / "config.yaml"
        assert "  weights: bundled\n" in saved.read_text()
        saved.write_text(saved.read_text().replace("  weights: bundled\n", f"  weights: {tmp_path / 'gone.pth'}\n"))
        args["run_dir"] = str(tmp_path / "run")
    elif case == "no_images":
        (tmp_path / "empty").mkdir()
        args["inputs"] = str(tmp_path / "empty")
    elif case == "bad_option":
        args["topk"] = "2"
    with pytest.raises(SystemExit) as exit_info:
        main([f"{k}={v}" for k, v in args.items()])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and err[0].startswith("tlx.predict: error: ")
    assert expected in err[0]
    if case == "no_checkpoint":
        assert "resume=true" in err[0]  # says how to finish the run


@pytest.mark.parametrize(
    ("module", "args", "expected"),
    [
        ("tlx.predict", ["run_dir=RUN", "inputs=NOPE"], "inputs not found"),
        ("tlx.predict", ["run_dir=NOPE", "inputs=PHOTOS"], "run directory not found"),
        ("tlx.predict", ["run_dir=NOPE", "inputs=CLUTTER"], "run directory not found"),  # not after a warning on it
        ("tlx.predict", ["run_dir=RUN", "inputs=CLUTTER", "top_k=0"], "top_k=0: use 1 or more"),
        ("tlx.predict", ["run_dirr=NOPE"], "unknown option 'run_dirr'"),
        ("tlx.export", ["run_dir=NOPE"], "run directory not found"),
        ("tlx.export", ["run_dir=RUN", "out=RUN/files.json/export"], "cannot write out="),
        ("tlx.export", ["run_dir=RUN", "out=PHOTOS"], "holds other files and no earlier export"),  # were replaced
        ("tlx.evaluate", ["run_dir=RUN", "inputs=NOPE"], "inputs not found"),
        ("tlx.evaluate", ["run_dir=NOPE", "inputs=PHOTOS"], "run directory not found"),
        ("tlx.evaluate", ["run_dir=NOPE", "inputs=CLUTTER"], "run directory not found"),
        ("tlx.evaluate", ["run_dir=RUN", "inputs=PHOTOS/ant/0.png"], "is a file; give a folder"),
    ],
)
def test_bad_arguments_end_before_torch_loads(run_dir, tmp_path, module, args, expected):
    """One line each. A mistyped run_dir with inputs holding a file that is no image came after a warning about that
    file (and top_k=0 after it too, 3 s later)."""
    write_images(tmp_path / "clutter", n=1)
    (tmp_path / "clutter" / "ant" / "notes.txt").write_text("not an image")
    args = [
        a.replace("NOPE", str(tmp_path / "nope"))
        .replace("PHOTOS", str(run_dir.parent / "photos"))
        .replace("CLUTTER", str(tmp_path / "clutter"))
        .replace("RUN", str(run_dir))
        for a in args
    ]
    proc = run_cli(*args, module=module, env={"PYTHONPROFILEIMPORTTIME": "1"})
    imported = imported_modules(proc)
    said = [line for line in proc.stderr.splitlines() if not line.startswith("import time:")]
    assert proc.returncode == 2 and said[0].startswith(f"{module}: error: ") and expected in said[0]
    assert len(said) == 1, said
    assert "tlx.errors" in imported and not HEAVY & imported  # the profile was read, and has no torch


@pytest.mark.parametrize("module", ["tlx.predict", "tlx.export", "tlx.evaluate"])
def test_help_lists_every_option_before_torch_loads(module):
    import dataclasses
    import importlib

    proc = run_cli("--help", module=module, env={"PYTHONPROFILEIMPORTTIME": "1"})
    imported = imported_modules(proc)
    assert proc.returncode == 0 and proc.stdout.startswith(f"usage: python -m {module} run_dir=<run dir>"), proc.stderr
    options = [f.name for f in dataclasses.fields(importlib.import_module(module)._Args)]
    listed = [m[1] for m in re.finditer(r"^  (\w+)=", proc.stdout, re.MULTILINE)]  # continued lines are deeper
    assert listed == options  # every option the parser takes, in its order, and nothing else
    assert "tlx.errors" in imported and not HEAVY & imported


@pytest.mark.filterwarnings("ignore:.*torch.jit.load.* is deprecated:FutureWarning")
def test_export_matches_the_checkpoint(run_dir, reference, tmp_path):
    proc = run_main(f"run_dir={run_dir}", f"out={tmp_path / 'export'}", module="tlx.export")
    assert proc.returncode == 0, proc.stderr[-3000:]
    meta = json.loads((tmp_path / "export" / "meta.json").read_text())
    assert meta["classes"] == ["ant", "bee", "cat"] and meta["files"] == {
        "torchscript": "model.pt",
        "onnx": "model.onnx",
    }
    pre = meta["preprocessing"]
    assert pre["input_size"] == [3, 32, 32] and pre["mean"] == [0.5] * 3 and pre["std"] == [0.5] * 3
    assert pre["interpolation"] == "bicubic" and pre["crop_pct"] == 0.875 and pre["resize_shorter_side_to"] == 36
    assert "ImageOps.exif_transpose" in pre["orientation"]  # as tlx.predict reads a phone photo
    assert pre["jpeg_draft"] == 37 and "Image.draft" in pre["decode"]  # int(32 / 0.875) + 1

    # A photo-size JPEG, decoded as meta.json says (reduced scale), gives tlx.predict's probabilities: decoded in full
    # it gave others (tlx decodes JPEGs at reduced scale and meta.json did not say so)
    photo = tmp_path / "big.jpg"
    smooth = np.kron(np.random.default_rng(1).integers(0, 255, (30, 40, 3)), np.ones((20, 20, 1)))
    Image.fromarray(smooth.astype(np.uint8)).save(photo, quality=90)  # 800x600
    (predicted,), _ = predict(load_run(run_dir), [photo])
    img = Image.open(photo)
    img.draft("RGB", (pre["jpeg_draft"], pre["jpeg_draft"]))
    transform = timm.data.create_transform(
        input_size=pre["input_size"], interpolation=pre["interpolation"], mean=pre["mean"], std=pre["std"],
        crop_pct=pre["crop_pct"], crop_mode=pre["crop_mode"],
    )  # fmt: skip
    with torch.no_grad():
        probs = torch.jit.load(str(tmp_path / "export" / "model.pt"))(transform(img.convert("RGB"))[None]).softmax(1)
    assert predicted["probs"][0] == pytest.approx(probs.max().item(), abs=1e-5)
    assert predicted["labels"][0] == meta["classes"][int(probs.argmax())]

    x, expected = reference(sorted((run_dir.parent / "photos").rglob("*.png"))[:5])  # (5, 3, 32, 32), (5, K)
    with torch.no_grad():
        scripted = torch.jit.load(str(tmp_path / "export" / "model.pt"))(x)
    assert torch.allclose(scripted, expected, atol=1e-4)

    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(tmp_path / "export" / "model.onnx"), providers=["CPUExecutionProvider"])
    logits = session.run(["logits"], {"image": x.numpy()})[0]  # (5, K): the batch size is not fixed at 1
    assert np.allclose(logits, expected.numpy(), atol=1e-4)
    assert np.allclose(torch.from_numpy(logits).softmax(dim=1), expected.softmax(dim=1), atol=1e-4)
    again = run_main(f"run_dir={run_dir}", f"out={tmp_path / 'export'}", "formats=[onnx]", module="tlx.export")
    assert again.returncode == 0, again.stderr[-3000:]  # an earlier export's folder is written again, and holds
    assert sorted(p.name for p in (tmp_path / "export").iterdir()) == ["meta.json", "model.onnx"]  # only this one


def test_an_export_that_fails_leaves_no_folder(tmp_path, capsys):
    """A run that failed at its settings has no model: the one-line error, and no empty export/ folder (it was left)."""
    from tlx.export import main as export_main

    (tmp_path / "run" / ".hydra").mkdir(parents=True)
    (tmp_path / "run" / "results.json").write_text(json.dumps({"status": "failed", "error": "data root not found"}))
    with pytest.raises(SystemExit) as exit_info:
        export_main([f"run_dir={tmp_path / 'run'}"])
    assert exit_info.value.code == 2 and "failed before it trained" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [".hydra", "results.json"]


def _val_folder(run_dir: Path, dest: Path) -> Path:
    """The run's validation images copied into ``dest/<class>/``, as a user would collect new labelled photos."""
    for p in json.loads((run_dir / "files.json").read_text())["val"]:
        (dest / Path(p).parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(p, dest / Path(p).parent.name / Path(p).name)
    return dest


def test_evaluate_reproduces_the_runs_own_scores(run_dir, tmp_path):
    inputs = _val_folder(run_dir, tmp_path / "new photos")
    (inputs / "bee" / "broken.jpg").write_bytes(b"not a jpeg")
    (inputs / ".DS_Store").write_bytes(b"\0")
    proc = run_main(f"run_dir={run_dir}", f"inputs={inputs}", "num_workers=0", module="tlx.evaluate")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (out,) = (run_dir / "eval").iterdir()  # the default: <run dir>/eval/<date_time>
    ev, results = json.loads((out / "evaluation.json").read_text()), read_results(run_dir)
    # The run has no test split, so its test pass scored the same val images with the same checkpoint.
    assert results["test_split"] == "val" and ev["images"] == results["data"]["val"]
    for key in ("acc", "bal_acc", "f1"):
        assert ev["metrics"][key] == pytest.approx(results["metrics"][f"test/{key}"], abs=1e-6)
    assert ev["per_class"]["confusion"] == results["per_class"]["val"]["confusion"]
    assert ev["skipped"]["unreadable"] == [str(inputs / "bee" / "broken.jpg")] and ev["skipped"]["os_metadata"] == 1
    with open(out / "eval_predictions.csv") as f:
        rows = list(csv.DictReader(f))
    wrong = sum(r["true"] != r["predicted"] for r in rows)
    assert len(rows) == ev["images"] and wrong == ev["images"] - round(ev["metrics"]["acc"] * ev["images"])
    assert len(list((out / "gallery").iterdir())) == min(wrong, 24)
    page = (out / "report.html").read_text()
    assert all(f'id="{s}"' in page for s in ("summary", "confusion", "per-class", "gallery"))
    assert re.search(rf"│ accuracy +│ {ev['metrics']['acc']:.4f} ", proc.stdout)
    assert str(out / "report.html") in proc.stdout and "test/acc (on val) " in proc.stdout  # the run had no test split
    (out / "report.html").unlink()
    assert run_main(str(out), module="tlx.report").returncode == 0 and (out / "report.html").is_file()  # rebuilt


def test_evaluate_a_label_file_takes_its_test_rows_and_a_subset_of_classes(run_dir, tmp_path):
    from tlx.evaluate import evaluate

    photos = run_dir.parent / "photos"
    rows = ["path,label,split", "ant/0.png,ant,train", "ant/1.png,ant,test", "cat/0.png,cat,test", "gone.png,cat,test"]
    (photos / "labels.csv").write_text("\n".join(rows) + "\n")  # relative paths: against the CSV's folder
    try:
        ev, out = evaluate(run_dir, photos / "labels.csv", tmp_path / "ev", num_workers=0)
    finally:
        (photos / "labels.csv").unlink()
    assert out == tmp_path / "ev" and ev["images"] == 2 and ev["per_class"]["images"] == [1, 0, 1]
    assert ev["per_class"]["per_class_acc"][1] is None  # no bee images: no accuracy (it read 0.0)
    assert ev["skipped"]["unreadable"] == [str(photos / "gone.png")]
    with open(out / "eval_predictions.csv") as f:
        assert [(Path(r["id"]).relative_to(photos), r["true"]) for r in csv.DictReader(f)] == [
            (Path("ant/1.png"), "ant"),
            (Path("cat/0.png"), "cat"),
        ]
    # the same out= again: an earlier evaluation is replaced (a folder holding anything else is refused, below)
    again, _ = evaluate(run_dir, _val_folder(run_dir, tmp_path / "val"), tmp_path / "ev", num_workers=0)
    assert again["images"] == json.loads((out / "evaluation.json").read_text())["images"] > 2


def test_evaluate_scores_a_subset_of_classes_over_the_classes_it_has():
    """2 of a model's 4 classes, 6 of 10 right in each, the wrong ones predicted as the 2 absent classes: balanced
    accuracy 0.6 (torchmetrics' macro average counted the absent classes as 0: 0.30), F1 over the 2 classes."""
    from tlx.evaluate import scores

    labels = torch.tensor([1] * 10 + [2] * 10)
    predicted = torch.tensor([1] * 6 + [0] * 4 + [2] * 6 + [3] * 4)
    got = scores(torch.nn.functional.one_hot(predicted, 4).float(), labels, 4)
    assert got["metrics"]["acc"] == pytest.approx(0.6) and got["metrics"]["bal_acc"] == pytest.approx(0.6)
    assert got["metrics"]["f1"] == pytest.approx(0.75)  # precision 1, recall 0.6 in each
    assert got["per_class"]["per_class_acc"] == [None, pytest.approx(0.6), pytest.approx(0.6), None]


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("unknown_class", "has images of 'dog', which the model has no class for (its classes: ant, bee, cat); remove"),
        ("split_folders", "has images of 'test', 'train', which the model has no class for"),
        ("no_test_rows", "has a split column but no test rows"),
        ("users_folder", "exists and is not an earlier evaluation; choose another out= folder"),
        ("loose_images", "holds images but no class folders; put them in one subfolder per class, named as the"),
        ("csv_paths_missing", "its paths are taken relative to its own folder"),  # "check they are image files"
    ],
)
def test_evaluate_errors_are_one_line(run_dir, tmp_path, capsys, case, expected):
    from tlx.evaluate import main as evaluate_main

    inputs, out = tmp_path / "inputs", tmp_path / "out"
    if case == "unknown_class":
        _val_folder(run_dir, inputs)
        shutil.copytree(inputs / "ant", inputs / "dog")
    elif case == "split_folders":
        _val_folder(run_dir, inputs / "train")
        _val_folder(run_dir, inputs / "test")
    elif case == "loose_images":
        inputs = shutil.copytree(run_dir.parent / "photos" / "ant", inputs)
    elif case == "no_test_rows":
        inputs = tmp_path / "labels.csv"
        inputs.write_text(f"path,label,split\n{run_dir.parent / 'photos' / 'ant' / '0.png'},ant,train\n")
    elif case == "csv_paths_missing":  # written relative to the working folder, not the CSV's
        inputs = tmp_path / "labels.csv"
        inputs.write_text("path,label\nphotos/ant/0.png,ant\nphotos/bee/0.png,bee\n")
    else:
        _val_folder(run_dir, inputs)
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit) as exit_info:
        evaluate_main([f"run_dir={run_dir}", f"inputs={inputs}", f"out={out}", "num_workers=0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and err[0].startswith("tlx.evaluate: error: ")
    assert expected in err[0]
    if case == "split_folders":
        assert f"inputs={inputs / 'test'}" in err[0]
    # nothing written, and what the user had is untouched
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"] if case == "users_folder" else not out.exists()


def test_onnx_export_without_the_onnx_package_is_one_line_before_the_model_loads(tmp_path, monkeypatch):
    """It said so only after loading the run's model (about 4 s), naming an install of a 'tlx' from PyPI."""
    from tests.conftest import run_main

    monkeypatch.setitem(sys.modules, "onnx", None)  # as if not installed
    done = run_main(f"run_dir={tmp_path}", f"out={tmp_path / 'export'}", module="tlx.export")  # (no model in it)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "tlx.export: error: ONNX export needs the onnx package, which is not installed: pip install onnx (or tlx's "
        "'export' extra: pip install -e '.[export]' in a checkout); or export formats=[torchscript]"
    ]
    assert not (tmp_path / "export").exists()
