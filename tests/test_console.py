"""The console of a real run: quiet by default (no library deprecation, advice or info lines), everything with
verbose=true; warnings about the user's data show either way."""

from __future__ import annotations

import re
from pathlib import Path

from tests.conftest import TINY, run_cli, write_images

# Lines libraries print that a run must not show by default (the four lines and their kin).
LIBRARY_LINES = re.compile(
    r"Warning|warn\(|deprecat|site-packages|weights_only|Loading `train_dataloader`|GPU available|TPU available|"
    r"HPU available|`Trainer\.fit` stopped|Tip:|srun|logging interval|Restoring states|Loaded model weights"
)


def test_quiet_by_default_everything_with_verbose(tmp_path: Path) -> None:
    photos = write_images(tmp_path / "photos", n=6)
    (photos / "bee" / "notes.txt").write_text("not an image")
    tiny = [o for o in TINY if not o.startswith("trainer.enable_progress_bar")]  # the training bar is shown
    args = ["+experiment=small_data", *tiny, "data=folder", f"data.root={photos}", f"cache.dir={tmp_path / 'cache'}"]

    left_out = "left out 1 file(s)/folder(s) under"  # the user's data: always shown
    quiet = run_cli(*args, f"hydra.run.dir={tmp_path / 'quiet'}")  # the README's first command (the probe fits)
    assert quiet.returncode == 0, quiet.stderr[-3000:]
    output = quiet.stdout + quiet.stderr
    assert [line for line in output.splitlines() if LIBRARY_LINES.search(line)] == []
    assert left_out in output and "not_an_image" in output
    assert "Testing" in quiet.stdout  # Lightning's progress bar
    assert "run dir" in quiet.stdout and "report.html" in output  # the summary table; where the report went

    # The Lightning loop (probe off) has its own advice and info lines: hidden, with the training bar shown.
    looped = [*args, "probe.enabled=false"]
    quiet = run_cli(*looped, f"hydra.run.dir={tmp_path / 'looped'}")
    assert quiet.returncode == 0, quiet.stderr[-3000:]
    output = quiet.stdout + quiet.stderr
    assert [line for line in output.splitlines() if LIBRARY_LINES.search(line)] == []
    assert "Epoch 1/1" in quiet.stdout and left_out in output

    verbose = run_cli(*looped, f"hydra.run.dir={tmp_path / 'verbose'}", "verbose=true")
    assert verbose.returncode == 0, verbose.stderr[-3000:]
    output = verbose.stdout + verbose.stderr
    assert "GPU available" in output and "`Trainer.fit` stopped" in output  # Lightning's info lines
    assert "is smaller than the logging interval" in output  # Lightning's advice (2 batches < log_every_n_steps)
    assert left_out in output
