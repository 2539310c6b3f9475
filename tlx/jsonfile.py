"""Atomic JSON writing, for every JSON file tlx writes (results.json, splits.json, predictions, export metadata),
and the check that a folder takes new files, made before the work that will write there.

Its own tiny module: ``tlx.results`` and ``tlx.report`` use it without importing torch or the data modules.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any


def probe_writable(folder: Path) -> None:
    """Make ``folder`` (with its parents) and create a file in it; raises the OSError a later write there would."""
    folder.mkdir(parents=True, exist_ok=True)
    tempfile.TemporaryFile(dir=folder).close()


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON to a temporary file beside ``path``, then rename: readers never see half a file. A NaN or infinite
    number is written as null (Python writes a bare NaN, which JSON does not have: strict parsers reject the file)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(_finite(obj), indent=2, default=str, allow_nan=False))
    os.replace(tmp, path)


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj
