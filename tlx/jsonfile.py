"""Atomic JSON writing, for every JSON file tlx writes (results.json, splits.json, predictions, export metadata).

Its own tiny module: ``tlx.results`` and ``tlx.report`` use it without importing torch or the data modules.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON to a temporary file beside ``path``, then rename: readers never see half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    os.replace(tmp, path)
