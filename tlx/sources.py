"""The user's data source, checked before torch and Lightning load (about 5 s): a ``data.root`` folder or
``data.path`` label file that is not there ends the run within about a second.

Only the standard library here: ``python -m tlx`` calls :func:`check_source` before its heavy imports, and the data
classes call the same checks, so a run started from Python fails with the same line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tlx.errors import ConfigError

# File suffixes read as images (any case), by the data classes and by tlx.predict.
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def image_folder(root: Any) -> Path:
    """``root`` as a path; a ConfigError unless it is a folder."""
    path = Path(str(root)).expanduser()
    if not path.is_dir():
        raise ConfigError(f"data root not found: {path}; set data.root=<folder with one subfolder per class>")
    return path


def label_file(path: Any) -> Path:
    """``path`` as a path; a ConfigError unless it is a file."""
    path = Path(str(path)).expanduser()
    if not path.is_file():
        raise ConfigError(f"label file not found: {path}; set data.path=<a .csv with path,label[,split] rows>")
    return path


# The data classes whose source is a path the user typed: the config key and its check.
_SOURCES = {"tlx.data.FolderData": ("root", image_folder), "tlx.data.CSVData": ("path", label_file)}


def check_source(data: Any) -> None:
    """Check the source the ``data`` config node names, if it is a user's folder or label file (a missing value,
    ``???``, raises OmegaConf's MissingMandatoryValue, which the command line turns into its own line)."""
    source = _SOURCES.get(str(data.get("_target_")))
    if source is not None:
        key, check = source
        check(data[key])
