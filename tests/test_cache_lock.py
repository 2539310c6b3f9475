"""The feature cache's per-entry lock: jobs sharing a cache extract a missing entry once; a crashed extractor does not
block the others (the kernel drops its lock), and a stuck one blocks them at most ``cache.lock_timeout_s``."""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tlx.features import FeatureCache
from tlx.results import read_results

from .conftest import ROOT, write_images

RUN = [
    "data=folder",
    "backbone.image_size=96",
    "data.batch_size=8",
    "data.num_workers=0",
    "trainer.max_epochs=1",
    "trainer.enable_progress_bar=false",
    "threads=1",
]


def _start(run_dir: Path, photos: Path, cache: Path) -> subprocess.Popen:
    with open(f"{run_dir}.log", "w") as log:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tlx",
                *RUN,
                f"data.root={photos}",
                f"cache.dir={cache}",
                f"hydra.run.dir={run_dir}",
            ],
            cwd=ROOT,
            env={**os.environ, "HYDRA_FULL_ERROR": "0"},
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def _held(lock: Path) -> bool:
    """Whether another process holds ``lock`` (a probe on our own open file: flock locks are per open file)."""
    fd = os.open(lock, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def _stop_while_extracting(proc: subprocess.Popen, cache: Path) -> Path:
    """Freeze ``proc`` (SIGSTOP) at a moment it holds an entry's lock, mid-extraction; returns that lock file."""
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        for lock in cache.glob("*/.*.lock"):
            if _held(lock):
                os.kill(proc.pid, signal.SIGSTOP)
                if _held(lock):  # still held once frozen (it may have finished the entry in between)
                    return lock
                os.kill(proc.pid, signal.SIGCONT)
        time.sleep(0.002)
    proc.kill()
    pytest.fail(f"never saw the extractor holding a lock (rc={proc.poll()})")


def test_a_killed_extractor_does_not_block_the_job_waiting_for_it(tmp_path: Path) -> None:
    photos = write_images(tmp_path / "photos", n=40, size=96)  # enough images that extraction takes a while
    cache = tmp_path / "cache"
    extractor = _start(tmp_path / "a", photos, cache)
    waiter = None
    try:
        lock = _stop_while_extracting(extractor, cache)
        written = len(list(cache.glob("*/*.pt")))  # entries the extractor finished before the one it holds
        waiter = _start(tmp_path / "b", photos, cache)
        log = Path(f"{tmp_path / 'b'}.log")
        deadline = time.monotonic() + 300
        while "waiting for another process" not in log.read_text():
            assert waiter.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.1)
        extractor.send_signal(signal.SIGKILL)  # dies holding the lock, mid-extraction
        extractor.wait(timeout=60)
        assert waiter.wait(timeout=300) == 0, log.read_text()[-3000:]
    finally:
        for proc in (extractor, waiter):
            if proc is not None and proc.poll() is None:
                proc.kill()
    assert read_results(tmp_path / "a") is None
    results = read_results(tmp_path / "b")
    assert results["status"] == "ok"
    assert f"feature cache lock {lock} acquired" in log.read_text()
    # train and val: what the extractor finished is a hit, the rest (the entry it held included) the waiter extracted.
    assert (results["cache"]["hits"], results["cache"]["misses"]) == (written, 2 - written)


def test_the_wait_for_a_stuck_extractor_is_bounded(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cache = FeatureCache(dir=str(tmp_path), lock_timeout_s=0.5)
    key = "ab" * 20
    with cache.lock(key) as held:  # this open file holds it, like another process that hangs
        assert held
        start = time.monotonic()
        with caplog.at_level(logging.INFO, logger="tlx.features"), cache.lock(key) as second:
            waited = time.monotonic() - start
    assert not second and 0.5 <= waited < 5
    assert "waiting for another process" in caplog.text and "extracting here too" in caplog.text
    with cache.lock(key) as again:  # released when the holder closed it
        assert again
