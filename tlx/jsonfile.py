"""Atomic JSON writing, for every JSON file tlx writes (results.json, splits.json, predictions, export metadata),
and the check that a folder takes new files, made before the work that will write there.

Its own tiny module: ``tlx.results`` and ``tlx.report`` use it without importing torch or the data modules.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def probe_writable(folder: Path) -> None:
    """Make ``folder`` (with its parents) and create a file in it; raises the OSError a later write there would."""
    folder.mkdir(parents=True, exist_ok=True)
    tempfile.TemporaryFile(dir=folder).close()


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON to a temporary file beside ``path``, then rename: readers never see half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    os.replace(tmp, path)
