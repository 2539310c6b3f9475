"""Progress of a long loop: tqdm's bar at a terminal; where stderr is a log file or a pipe (no bar is drawn there), a
log line at most every :data:`PROGRESS_EVERY_S` seconds saying how far it got. Training has its own lines
(:class:`tlx.console.TrainingLines`) at the same interval."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm

PROGRESS_EVERY_S = 60.0

log = logging.getLogger(__name__)

T = TypeVar("T")


def progress(items: Iterable[T], desc: str, total: int, count: Callable[[T], int]) -> Iterator[T]:
    """Yield ``items`` (batches), showing progress: a bar at a terminal, else ``<desc>: <done> of <total> images (<s>)``
    log lines at most every :data:`PROGRESS_EVERY_S` seconds. ``count``: the images in one item."""
    bar = tqdm(items, desc=desc, leave=False, disable=None)  # disable=None: drawn only at a terminal
    start = last = time.monotonic()
    done = 0
    for item in bar:
        yield item
        done += count(item)
        if bar.disable and time.monotonic() - last >= PROGRESS_EVERY_S:
            last = time.monotonic()
            log.info("%s: %d of %d images (%.0fs)", desc, done, total, last - start)
