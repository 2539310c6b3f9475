"""The console of a real run: quiet by default (no library deprecation, advice or info lines), everything with
verbose=true; warnings about the user's data show either way."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, TINY, run_cli, write_images

# Lines libraries print that a run must not show by default (the four lines and their kin).
LIBRARY_LINES = re.compile(
    r"Warning|warn\(|deprecat|site-packages|weights_only|Loading `train_dataloader`|GPU available|TPU available|"
    r"HPU available|`Trainer\.fit` stopped|Tip:|srun|logging interval|Restoring states|Loaded model weights"
)

BAR = "━"  # rich's bar glyph
EPOCH_LINE = re.compile(r"\[tlx\.train\]\[INFO\] - epoch [12]/2: train/loss [\d.]+, val/loss [\d.]+, val/acc [\d.]+, ")


def test_quiet_by_default_everything_with_verbose(tmp_path: Path) -> None:
    photos = write_images(tmp_path / "photos", n=6)
    (photos / "bee" / "notes.txt").write_text("not an image")
    tiny = [o for o in TINY if not o.startswith("trainer.enable_progress_bar")]  # the training bar is shown
    args = ["+experiment=small_data", *tiny, "data=folder", f"data.root={photos}", f"cache.dir={tmp_path / 'cache'}"]

    left_out = "left out 1 file(s)/folder(s) under"  # the user's data: always shown
    quiet = run_cli(*args, f"hydra.run.dir={tmp_path / 'quiet' / ('a_long_folder_name_' * 4)}")  # the probe fits
    assert quiet.returncode == 0, quiet.stderr[-3000:]
    output = quiet.stdout + quiet.stderr
    assert [line for line in output.splitlines() if LIBRARY_LINES.search(line)] == []
    assert left_out in output and "not_an_image" in output
    assert "report.html" in output  # where the report went
    # the summary table; the run dir whole on its row, however long (stdout is a pipe: no terminal width to fit)
    run_dir = tmp_path / "quiet" / ("a_long_folder_name_" * 4)
    assert re.search(rf"│ run dir +│ {re.escape(str(run_dir))} +│\n", quiet.stdout), quiet.stdout
    assert BAR not in output  # stdout is a pipe here: no bar's last frame

    # The Lightning loop (probe off) has its own advice and info lines: hidden. Its progress, on a pipe: a line per
    # epoch, also in the run's log.
    looped = [*args, "probe.enabled=false"]
    quiet = run_cli(*looped, f"hydra.run.dir={tmp_path / 'looped'}")
    assert quiet.returncode == 0, quiet.stderr[-3000:]
    output = quiet.stdout + quiet.stderr
    assert [line for line in output.splitlines() if LIBRARY_LINES.search(line)] == []
    assert len(EPOCH_LINE.findall(output)) == 2 and BAR not in output and left_out in output, output[-3000:]
    assert len(EPOCH_LINE.findall((tmp_path / "looped" / "tlx.log").read_text())) == 2

    # At a terminal: Lightning's bars instead of the lines; verbose shows the libraries' lines.
    code, output = _run_at_a_terminal(*looped, f"hydra.run.dir={tmp_path / 'verbose'}", "verbose=true")
    assert code == 0, output[-3000:]
    assert "Epoch 1/1" in output and BAR in output and not EPOCH_LINE.search(output)  # rich counts from 0
    assert "GPU available" in output and "`Trainer.fit` stopped" in output  # Lightning's info lines
    assert "is smaller than the logging interval" in output  # Lightning's advice (2 batches < log_every_n_steps)
    assert left_out in output


def _run_at_a_terminal(*args: str, timeout: float = 120.0) -> tuple[int, str]:
    """``python -m tlx args...`` with stdout and stderr on a pseudo-terminal, as in a shell: its exit code and
    output (killed after ``timeout`` seconds)."""
    master, slave = pty.openpty()
    env = {**os.environ, "HYDRA_FULL_ERROR": "0", "TERM": "xterm"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tlx", *args], cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave
    )
    os.close(slave)
    chunks, deadline = [], time.monotonic() + timeout
    try:
        while select.select([master], [], [], max(0.0, deadline - time.monotonic()))[0]:
            try:
                chunk = os.read(master, 1 << 16)
            except OSError:  # EIO: the process closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(master)
        if proc.poll() is None and time.monotonic() >= deadline:
            proc.kill()
    return proc.wait(timeout=30), b"".join(chunks).decode(errors="replace")


def test_training_lines_report_the_epochs_mean_loss_and_progress_within_it(caplog) -> None:
    import pytorch_lightning as pl
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from tlx.console import TrainingLines

    losses = []

    class Toy(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(2, 2)

        def training_step(self, batch, i):
            loss = torch.nn.functional.cross_entropy(self.layer(batch[0]), batch[1])
            losses.append((float(loss.detach()), len(batch[1])))
            return loss

        def validation_step(self, batch, i):
            self.log("val/acc", (self.layer(batch[0]).argmax(1) == batch[1]).float().mean())

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(10, 2, generator=g), torch.arange(10) % 2)  # batches of 4, 4, 2
    trainer = pl.Trainer(
        max_epochs=2,
        callbacks=[TrainingLines(every_s=0.0)],  # a progress line after every batch
        enable_progress_bar=False,
        enable_checkpointing=False,
        logger=False,
        num_sanity_val_steps=0,
    )
    with caplog.at_level("INFO", logger="tlx.train"):
        trainer.fit(Toy(), DataLoader(data, batch_size=4), DataLoader(data, batch_size=10))
    lines = [r.getMessage() for r in caplog.records if r.name == "tlx.train"]
    assert [line.split(": ")[0] for line in lines] == [
        *(f"epoch 1/2, batch {b}/3" for b in (1, 2, 3)),
        "epoch 1/2",
        *(f"epoch 2/2, batch {b}/3" for b in (1, 2, 3)),
        "epoch 2/2",
    ]
    for epoch, line in enumerate([lines[3], lines[7]]):
        batches = losses[3 * epoch : 3 * epoch + 3]
        mean = sum(loss * n for loss, n in batches) / 10  # over images, as the run logs train/loss per epoch
        assert re.fullmatch(r"epoch \d/2: train/loss ([\d.]+), val/acc ([\d.]+) \([\d.]+s\)", line), line
        assert float(line.split("train/loss ")[1].split(",")[0]) == pytest.approx(mean, rel=1e-3)


def test_the_summary_says_how_many_splits_the_cache_had(tmp_path, capsys):
    """'1 extracted at pooled' read as one image, where one split of three had missed and two had hit."""
    from tests.conftest import run_main
    from tlx.results import print_summary, read_results

    run_dir = tmp_path / "run"
    done = run_main("+experiment=small_data", *TINY, f"hydra.run.dir={run_dir}", f"cache.dir={tmp_path}")
    assert done.returncode == 0, done.stderr[-2000:]
    results = read_results(run_dir)
    for hits, misses, row in (
        (3, 0, "hit at pooled"),
        (0, 3, "3 splits extracted at pooled"),
        (2, 1, "1 split extracted, 2 hit at pooled"),
    ):
        results["cache"].update(hits=hits, misses=misses)
        capsys.readouterr()
        print_summary(results, run_dir)
        assert re.search(rf"│ feature cache +│ {row} +│", capsys.readouterr().out), row
