"""The user's data source, checked before torch and Lightning load (about 5 s): a ``data.root`` folder or
``data.path`` label file that is not there, or a folder that cannot be a dataset of classes, ends the run within
about a second. The walk over image folders (:class:`FileScan`, :func:`folder_images`) and the reading of label files
(:func:`read_rows`) live here for that, and for ``tlx.evaluate``, which checks its inputs before loading a model.

Only the standard library here: ``python -m tlx`` calls :func:`check_source` before its heavy imports, and the data
classes call the same checks, so a run started from Python fails with the same line.
"""

from __future__ import annotations

import csv
import os
import unicodedata
from collections import Counter
from pathlib import Path
from typing import Any

from tlx.errors import ConfigError

# File suffixes read as images (any case), by the data classes and by tlx.predict.
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def image_folder(root: Any) -> Path:
    """``root`` as a path; a ConfigError unless it is a folder."""
    path = Path(str(root)).expanduser()
    if not path.is_dir():
        what = "is a file, not a folder" if path.is_file() else "not found"
        hint = " (a label file goes in data=csv data.path=...)" if path.suffix.lower() == ".csv" else ""
        raise ConfigError(
            f"data root {what}: {_shown(path)}; set data.root=<folder with one subfolder per class>{hint}"
        )
    return path


def label_file(path: Any) -> Path:
    """``path`` as a path; a ConfigError unless it is a file."""
    path = Path(str(path)).expanduser()
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "not found"
        hint = " (a folder of class folders goes in data=folder data.root=...)" if path.is_dir() else ""
        raise ConfigError(
            f"label file {what}: {_shown(path)}; set data.path=<a .csv with path,label[,split] rows>{hint}"
        )
    return path


def _shown(path: Path) -> str:
    """``path`` for an error line: a relative one with the folder it was looked for in (a run rerun from its saved
    config in another folder looks for its relative data there)."""
    return str(path) if path.is_absolute() else f"{path} (relative to {Path.cwd()})"


# Names synced, zipped, edited and browsed folders collect that are never classes or images (lower case).
_OS_METADATA = {
    ".ds_store", "thumbs.db", "ehthumbs.db", "desktop.ini", "__macosx", "$recycle.bin", "system volume information",
    "@eadir", ".spotlight-v100", ".trashes", ".trash", ".fseventsd", ".temporaryitems", ".thumbnails", ".directory",
}  # fmt: skip


def skip_reason(name: str, is_dir: bool) -> str | None:
    """Why a file or folder of this name is clutter (``os_metadata``, ``checkpoint_copy``, ``hidden``), or None."""
    low = name.lower()
    if low in _OS_METADATA or name.startswith("._"):  # ._name: macOS AppleDouble resource forks
        return "os_metadata"
    if low == ".ipynb_checkpoints" or (not is_dir and Path(low).stem.endswith("-checkpoint")):
        return "checkpoint_copy"  # Jupyter's copies: photo-checkpoint.jpg in .ipynb_checkpoints/
    if name.startswith("."):
        return "hidden"
    return None


class FileScan:
    """Finds the image files below folders as people have them, and counts what it leaves out, by reason.

    Hidden files and folders, OS metadata and Jupyter checkpoint copies are skipped (a skipped folder counts once and
    is not looked into). Symlinks are followed, also out of the folder; a file or folder reached a second time
    (through a link, or a link loop) is skipped as ``duplicate_link``, so no image is used twice and no walk loops;
    the first path in sorted order wins. Broken links are ``broken_link``, other suffixes ``not_an_image``.
    """

    def __init__(self) -> None:
        self.skipped: Counter[str] = Counter()
        self.examples: dict[str, Path] = {}
        self._seen: set[str] = set()

    def skip(self, reason: str, path: Path) -> None:
        """Count ``path`` as left out for ``reason``."""
        self.skipped[reason] += 1
        self.examples.setdefault(reason, path)

    def subfolders(self, folder: Path) -> list[Path]:
        """The subfolders of ``folder`` that can be classes (sorted); loose files there are counted, and a link to
        another of them is not a class of its own."""
        out = []
        for entry in sorted(folder.iterdir()):
            reason = skip_reason(entry.name, entry.is_dir())
            if reason:
                self.skip(reason, entry)
            elif entry.is_dir():
                out.append(entry)
            elif entry.is_symlink() and not entry.exists():
                self.skip("broken_link", entry)
            else:
                self.skip("not_in_a_class_folder", entry)
        real = {os.path.realpath(d) for d in out if not d.is_symlink()}
        for d in [d for d in out if d.is_symlink() and os.path.realpath(d) in real]:
            self.skip("duplicate_link", d)
            out.remove(d)
        return out

    def images(self, folder: Path, limit: int | None = None) -> list[Path]:
        """Every image file below ``folder`` (recursively, sorted), each real file at most once per scan; with
        ``limit``, the walk ends once it found that many (what it left out is then counted only that far)."""
        found: list[Path] = []
        if self._first_visit(folder):
            self._walk(folder, found, limit)
        else:
            self.skip("duplicate_link", folder)
        return found

    def _first_visit(self, path: Path) -> bool:
        real = os.path.realpath(path)
        if real in self._seen:
            return False
        self._seen.add(real)
        return True

    def _walk(self, folder: Path, found: list[Path], limit: int | None) -> None:
        for entry in sorted(folder.iterdir()):
            if limit is not None and len(found) >= limit:
                return
            is_dir = entry.is_dir()
            reason = skip_reason(entry.name, is_dir)
            if reason:
                self.skip(reason, entry)
            elif entry.is_symlink() and not entry.exists():
                self.skip("broken_link", entry)
            elif not self._first_visit(entry):
                self.skip("duplicate_link", entry)
            elif is_dir:
                self._walk(entry, found, limit)
            elif entry.suffix.lower() in IMAGE_SUFFIXES:
                found.append(entry)
            else:
                self.skip("not_an_image", entry)

    def summary(self, where: Path | str) -> str | None:
        """One line saying what was left out below ``where`` and why, or None when nothing was."""
        if not self.skipped:
            return None
        parts = ", ".join(f"{n} {reason} (e.g. {self.examples[reason]})" for reason, n in sorted(self.skipped.items()))
        return f"left out {sum(self.skipped.values())} file(s)/folder(s) under {where}: {parts}"


SPLITS = ("train", "val", "test")


def folder_images(
    root: Any, scan: FileScan, limit: int | None = None
) -> tuple[dict[str, tuple[list[Path], list[int]]], list[str]]:
    """The images of a folder with one subfolder per class (``FolderData``), directly or under ``train/``,
    ``val/`` and ``test/``: ``{split: (paths, labels)}`` (split ``all`` when there are no split folders) and the
    sorted class names; a ConfigError for a folder that cannot be such a dataset.

    Args:
        root: the folder.
        scan: counts what the walk leaves out, and why.
        limit: look for at most this many images per class folder (1: whether the folder can be a dataset at all,
            in a fraction of a full scan's time).
    """
    root = image_folder(root)
    splits = _split_folders(root)
    if splits:
        folders = {s: _class_dirs(folder, scan) for s, folder in splits.items()}
        classes = sorted(folders["train"])
        found = {s: _class_images(splits[s], dirs, classes, s, scan, limit) for s, dirs in folders.items()}
    else:
        dirs = _class_dirs(root, scan)
        classes = sorted(dirs)
        found = {"all": _class_images(root, dirs, classes, "all", scan, limit)}
    return found, classes


_SPLIT_WORDS = {"train": "training", "val": "validation", "test": "test"}


def _split_folders(root: Path) -> dict[str, Path]:
    """``{split: folder}`` of a folder laid out as ``train/`` (with class folders in it), ``val/`` (or ``valid/``,
    ``validation/``, as Kaggle and others name it) and ``test/``, in any case (``Train/``, ``VAL/``); empty for a
    folder of class folders, also when one class is called ``train`` (a folder of images, not of class folders)."""
    names = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
    found: dict[str, list[Path]] = {}
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        if folder.name.lower() in names and folder.is_dir():
            found.setdefault(names[folder.name.lower()], []).append(folder)
    for split, folders in found.items():
        if len(folders) > 1:
            raise ConfigError(
                f"{root} has both {folders[0].name}/ and {folders[1].name}/; keep one {_SPLIT_WORDS[split]} folder "
                "(or merge them)"
            )
    train = found.get("train", [None])[0]
    if train is None or not any(p.is_dir() and not skip_reason(p.name, True) for p in train.iterdir()):
        return {}
    return {split: folders[0] for split, folders in found.items()}


def _class_dirs(folder: Path, scan: FileScan) -> dict[str, Path]:
    # A class is its folder's name in Unicode's composed form (NFC): macOS writes "café" decomposed (NFD), so the same
    # name typed or copied elsewhere would otherwise be another class
    dirs: dict[str, Path] = {}
    for d in scan.subfolders(folder):
        name = unicodedata.normalize("NFC", d.name)
        if name in dirs:  # (one of the two was left out without a word)
            raise ConfigError(
                f"{dirs[name]} and {d} are the same class name, written in two Unicode forms; merge them into one "
                "folder"
            )
        dirs[name] = d
    if not dirs:
        raise ConfigError(f"no class folders in {folder}; put one subfolder of images per class there")
    return dirs


def _class_images(
    folder: Path, dirs: dict[str, Path], classes: list[str], split: str, scan: FileScan, limit: int | None
) -> tuple[list[Path], list[int]]:
    extra = sorted(set(dirs) - set(classes))
    if extra:
        raise ConfigError(
            f"class folder(s) {extra} in {folder} are not in train/ ({classes}); add them to train/ or remove them"
        )
    paths: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        images = scan.images(dirs[name], limit) if name in dirs else []
        paths += images
        labels += [label] * len(images)
    if split in ("train", "all"):
        if not paths:
            raise ConfigError(
                f"no images in any class folder of {folder} (looked for "
                f"{', '.join(sorted(IMAGE_SUFFIXES))}); point data.root at your image folders"
            )
        present = set(labels)
        empty = [str(folder / name) for i, name in enumerate(classes) if i not in present]
        if empty:
            raise ConfigError(f"class folder {empty[0]} has no images (.jpg/.png/...); add images or remove the folder")
    return paths, labels


def _check_folder(root: Any) -> None:
    _, classes = folder_images(root, FileScan(), limit=1)
    if len(classes) < 2:  # (said by the model's head too, after the imports and about 8 s)
        raise ConfigError(
            f"need at least 2 classes, found {len(classes)} in {root} ({', '.join(classes)}): add a folder per class"
        )


# The data classes whose source is a path the user typed: the config key and its check.
_SOURCES = {"tlx.data.FolderData": ("root", _check_folder), "tlx.data.CSVData": ("path", label_file)}


def check_source(data: Any) -> None:
    """Check the source the ``data`` config node names, if it is a user's folder or label file (a missing value,
    ``???``, raises OmegaConf's MissingMandatoryValue, which the command line turns into its own line): one that is
    not there, and a folder whose class folders cannot make a dataset (none, an empty one, a class in val/ that is
    not in train/)."""
    source = _SOURCES.get(str(data.get("_target_")))
    if source is not None:
        key, check = source
        check(data[key])


def read_rows(file: Path, scan: FileScan) -> list[tuple[int, Path, str, str]]:
    """(line, resolved path, label, split or ``all``) per row of the label file ``file``, each file once (a second
    row of a file counts in ``scan`` as ``duplicate_row``); a ConfigError names the line of a row that cannot be."""
    label_file(file)
    rows: list[tuple[int, Path, str, str]] = []
    first: dict[str, tuple[int, str, str]] = {}
    with open(file, newline="", encoding="utf-8-sig") as f:  # utf-8-sig: Excel's byte order mark
        reader = csv.reader(f)
        header = [h.strip().lower() for h in next(reader, [])]
        if "path" not in header or "label" not in header:
            raise ConfigError(
                f"{file} must start with a header row naming the columns path,label (and optionally split); "
                f"its first row is {','.join(header) or 'empty'}"
            )
        col_path, col_label = header.index("path"), header.index("label")
        col_split = header.index("split") if "split" in header else None
        for row in reader:
            line = reader.line_num
            if not any(cell.strip() for cell in row):
                continue
            if len(row) < len(header):
                raise ConfigError(f"{file} line {line} has {len(row)} columns, the header {len(header)}")
            name, label = row[col_path].strip(), unicodedata.normalize("NFC", row[col_label].strip())
            split = row[col_split].strip().lower() if col_split is not None else "all"
            if not name or not label:
                raise ConfigError(f"{file} line {line} has an empty path or label; fill it in or remove it")
            if split not in SPLITS and col_split is not None:
                raise ConfigError(f"{file} line {line}: split '{row[col_split].strip()}' is not train, val or test")
            resolved = Path(name).expanduser()
            resolved = Path(os.path.normpath(resolved if resolved.is_absolute() else file.parent / resolved))
            real = os.path.realpath(resolved)
            if real in first:
                seen_line, seen_label, seen_split = first[real]
                if (seen_label, seen_split) != (label, split):
                    raise ConfigError(
                        f"{file} lines {seen_line} and {line} both list {name}, as "
                        f"{_as(seen_label, seen_split)} and {_as(label, split)}; keep one of them"
                    )
                scan.skip("duplicate_row", resolved)
                continue
            first[real] = (line, label, split)
            rows.append((line, resolved, label, split))
    if not rows:
        raise ConfigError(f"{file} has a header but no rows; add one path,label row per image")
    return rows


def _as(label: str, split: str) -> str:
    return label if split == "all" else f"{label} ({split})"
