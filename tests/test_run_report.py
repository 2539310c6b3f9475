"""The run report: written by a real (tiny) run from the files it leaves, rebuilt on demand, and seen in Chromium."""

from __future__ import annotations

import csv
import html
import json
import logging
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from PIL import Image

from tests.conftest import CONF, TINY, fashion_mnist_root, write_images
from tlx import run_report
from tlx.report import main as report_main
from tlx.run_report import GALLERY, PREDICTIONS, REPORT, most_confident_mistakes, write_run_report

CLASSES = ("ant", "bee", "cat")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _train(run_dir: Path, cache: Path, *overrides: str) -> dict:
    from tlx.run import train

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=[*TINY, "+experiment=small_data", f"cache.dir={cache}", *overrides])
    return train(cfg, run_dir)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A finished run on a photo folder with val and test splits; small shift between classes, so the model errs."""
    tmp = tmp_path_factory.mktemp("run")
    photos = write_images(tmp / "photos", CLASSES, n=20, shift=12.0)
    overrides = ("data=folder", f"data.root={photos}", "data.val_fraction=0.3", "data.test_fraction=0.2")
    results = _train(tmp / "run", tmp / "cache", *overrides, "trainer.max_epochs=4")
    return tmp / "run", results


def _predictions(run_dir: Path) -> list[dict]:
    with (run_dir / PREDICTIONS).open(newline="") as f:
        return list(csv.DictReader(f))


def test_run_writes_report_from_the_tested_checkpoint(run: tuple[Path, dict]) -> None:
    run_dir, results = run
    rows = _predictions(run_dir)
    files = json.loads((run_dir / "files.json").read_text())
    assert [r["id"] for r in rows] == files["val"]  # one row per validation image, in files.json's order
    assert [r["true"] for r in rows] == [Path(p).parent.name for p in files["val"]]
    # The predictions are the tested (best) checkpoint's: their accuracy is the val/acc reported for it.
    acc = np.mean([r["true"] == r["predicted"] for r in rows])
    assert acc == pytest.approx(results["metrics"]["val/acc"], abs=1e-6)
    # and val/loss is their mean cross-entropy (no label smoothing or class weights here)
    loss = np.mean([-np.log(float(r["true_probability"])) for r in rows])
    assert results["metrics"]["val/loss"] == pytest.approx(loss, rel=2e-5)  # the csv has 6 decimals
    for r in rows:
        assert r["predicted"] == r["label_1"] and float(r["probability"]) >= float(r["prob_2"]) >= float(r["prob_3"])
        assert float(r["true_probability"]) <= float(r["probability"]) + 1e-6

    mistakes = most_confident_mistakes(rows)
    assert 0 < len(mistakes) < len(rows), "the tiny run should be neither perfect nor always wrong"
    assert sorted(p.name for p in (run_dir / GALLERY).iterdir()) == sorted(f"val_{i:06d}.png" for i, _ in mistakes)
    probabilities = [float(r["probability"]) for _, r in mistakes]
    assert probabilities == sorted(probabilities, reverse=True)

    page = (run_dir / REPORT).read_text()
    for element in ("summary", "curves", "confusion", "per-class", "gallery"):
        assert f'<section id="{element}">' in page
    for _, r in mistakes:
        assert f"true: <b>{r['true']}</b>" in page and f"predicted: {r['predicted']}" in page
    assert page.count('class="thumb"') == len(mistakes)
    assert page.count("data:image/png;base64,") == 3 + len(mistakes)  # curves, confusion, per-class, thumbnails
    assert re.findall(r'(?:src|href)="(?!data:)', page) == []  # nothing outside the file
    assert f"<td>test/acc</td><td>{results['metrics']['test/acc']:.4f}</td>" in page
    assert "<th class=num>val accuracy</th>" in page and "<th class=num>test accuracy</th>" in page
    # The timings say what they were measured on: this machine's GPU where it has one, else its CPU threads
    device = results["timing"]["device"]
    expected = f"cuda:0 ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else "cpu ("
    assert device.startswith(expected) and f" on {html.escape(device)}</td>" in page


def test_report_is_rebuilt_from_the_run_directory(run: tuple[Path, dict], tmp_path: Path) -> None:
    run_dir, _ = run
    copy = shutil.copytree(run_dir, tmp_path / "copy", ignore=shutil.ignore_patterns(REPORT, "checkpoints"))
    report_main([str(copy)])  # python -m tlx.report <run dir>
    rebuilt = (copy / REPORT).read_text()
    assert rebuilt.count('class="thumb"') == (run_dir / REPORT).read_text().count('class="thumb"') > 0
    # Without the thumbnails, images whose id is a file are read from it.
    shutil.rmtree(copy / GALLERY)
    assert write_run_report(copy).read_text().count('class="thumb"') == rebuilt.count('class="thumb"')


def test_report_of_a_directory_without_results_says_so(tmp_path: Path, capsys) -> None:
    (tmp_path / "results.json").write_text("{")  # cut short
    with pytest.raises(SystemExit) as exit_info:
        report_main([str(tmp_path)])
    assert exit_info.value.code == 2
    assert (
        capsys.readouterr().err
        == f"tlx.report: error: {tmp_path} has no readable results.json; give the directory of a tlx run\n"
    )


def test_a_report_failure_does_not_fail_the_run(monkeypatch, caplog, tmp_path: Path) -> None:
    def broken(*args):
        raise RuntimeError("disk full")

    monkeypatch.setattr(run_report, "predict_val", broken)
    with caplog.at_level(logging.WARNING):
        assert run_report.save_run_report(tmp_path, None, None, None) is None
    assert "could not write the run report (RuntimeError: disk full); retry with: python -m tlx.report" in caplog.text


def test_interrupted_run_report_shows_curves_and_resume(tmp_path: Path) -> None:
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "metrics.csv").write_text(
        "epoch,step,train/acc,train/loss,val/acc,val/loss\n0,1,,,0.5,1.0\n0,1,0.4,1.2,,\n1,3,,,0.7,0.8\n1,3,0.6,0.9,,\n"
    )
    resume = "python -m tlx --config-path x --config-name config resume=true"
    best = {"epoch": 1, "val/acc": 0.7}
    (tmp_path / "results.json").write_text(
        json.dumps({"status": "interrupted", "epochs_done": 2, "best_so_far": best, "resume": resume})
    )
    page = write_run_report(tmp_path).read_text()
    assert "tlx run (interrupted)" in page and html.escape(resume) in page and "0.7000" in page
    assert 'id="curves-figure"' in page and 'id="gallery"' not in page


@pytest.mark.skipif(fashion_mnist_root() is None, reason="Fashion-MNIST idx files not found (TLX_FASHION_MNIST)")
def test_gallery_of_images_that_are_not_files(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TLX_FASHION_MNIST", str(fashion_mnist_root()))
    data = ("data=fashion_mnist", "data.classes=[Shirt,T-shirt/top,Pullover]", "data.val_per_class=6")
    _train(tmp_path / "run", tmp_path / "cache", *data, "data.test_per_class=2")
    rows = _predictions(tmp_path / "run")
    assert rows and all(re.fullmatch(r"train:\d+", r["id"]) for r in rows)
    mistakes = most_confident_mistakes(rows)
    assert mistakes  # shirts, T-shirts and pullovers at 32 px after 2 epochs
    for i, _ in mistakes:
        with Image.open(tmp_path / "run" / GALLERY / f"val_{i:06d}.png") as img:
            assert img.size == (28, 28) and np.asarray(img).std() > 10  # the garment, not a blank square
    assert (tmp_path / "run" / REPORT).read_text().count('class="thumb"') == len(mistakes)


# Headless Chromium: what a person opening report.html sees.

_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--force-device-scale-factor=1",
]
# Written into the page once it has loaded: where each section and figure is, and whether each thumbnail decoded.
_PROBE = """<script>
addEventListener("load", () => {
  const box = e => { const r = e.getBoundingClientRect(); return [r.left, r.top + scrollY, r.width, r.height]; };
  const out = {height: document.documentElement.scrollHeight, boxes: {}, thumbs: []};
  for (const e of document.querySelectorAll("section[id], img[id]")) out.boxes[e.id] = box(e);
  for (const img of document.querySelectorAll("#gallery img"))
    out.thumbs.push({decoded: img.complete && img.naturalWidth > 0, box: box(img)});
  const pre = document.createElement("pre");
  pre.id = "probe";
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


def _chromium(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp / f"profile{len(list(tmp.glob('profile*')))}"  # a new empty profile per start
    return subprocess.run(
        [CHROMIUM, *_FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def _pixels_near(region: np.ndarray, rgb: str, tol: int = 40) -> int:
    target = np.array([int(rgb[i : i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(region.astype(int) - target).max(axis=-1) <= tol).sum())


def test_chromium_shows_the_plots_and_the_gallery(run: tuple[Path, dict], tmp_path: Path) -> None:
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed but CI is set; .ci/run installs it (apt-get install -y chromium)")
        pytest.skip("chromium is not installed (Debian: apt-get install chromium)")
    run_dir, _ = run
    probe_page = tmp_path / "probe.html"
    probe_page.write_text((run_dir / REPORT).read_text().replace("</body>", _PROBE + "</body>"))
    dom = _chromium(tmp_path, "--window-size=1280,2400", "--dump-dom", probe_page.as_uri())
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom.stdout)
    assert found, f"no probe in the dumped DOM: {dom.stderr[-2000:]}"
    layout = json.loads(html.unescape(found.group(1)))
    assert layout["thumbs"] and all(t["decoded"] for t in layout["thumbs"])

    shot = tmp_path / "report.png"
    height = int(layout["height"])
    proc = _chromium(tmp_path, f"--window-size=1280,{height}", f"--screenshot={shot}", (run_dir / REPORT).as_uri())
    assert shot.is_file(), proc.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape[:2] == (height, 1280)

    def region(box: list[float]) -> np.ndarray:
        left, top, width, h = (round(v) for v in box)
        assert top + h <= height and width > 100 and h > 100, box
        return pixels[top : top + h, left : left + width]

    for figure in ("curves-figure", "confusion-figure", "per-class-figure"):
        crop = region(layout["boxes"][figure])
        inked = (crop < 235).any(axis=-1).mean()
        colours = len(np.unique(crop.reshape(-1, 3) // 32, axis=0))
        assert inked > 0.03 and colours >= 8, (figure, inked, colours)
    curves = region(layout["boxes"]["curves-figure"])
    assert _pixels_near(curves, "#1f77b4") > 200 and _pixels_near(curves, "#d62728") > 200  # train and val lines
    assert _pixels_near(region(layout["boxes"]["confusion-figure"]), "#08306b", 60) > 200  # dark cells of Blues
    per_class = region(layout["boxes"]["per-class-figure"])
    assert _pixels_near(per_class, "#d62728") > 500 and _pixels_near(per_class, "#2da44e") > 500  # val and test bars
    for thumb in layout["thumbs"]:
        left, top, width, h = (round(v) for v in thumb["box"])
        assert pixels[top : top + h, left : left + width].std() > 20  # the noise image, not a blank box
