"""Labels from a CSV file, as labelling tools and Kaggle export them: ``path,label[,split]`` rows."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

from tlx.data.base import FileSamples, ImageData, Samples, check_split_fractions, fixed_splits
from tlx.errors import ConfigError
from tlx.sources import SPLITS, label_file


class CSVData(ImageData):
    """Images listed in a CSV file with a header row naming the columns ``path`` and ``label`` (and ``split``).

    Relative paths are resolved against the CSV's folder. ``split`` is ``train``, ``val`` or ``test``; without the
    column (or without val rows) the same fixed, stratified split as an unsplit folder is taken (``val_fraction``,
    ``test_fraction``, ``split_seed``). Other columns are ignored. Missing files count as bad images
    (``on_bad_image``); a file listed twice is used once, and twice with different labels or splits is an error.
    Classes are the labels, sorted (numerically when every label is a number).
    """

    name = "csv"

    def __init__(
        self, path: str, val_fraction: float = 0.2, test_fraction: float = 0.0, split_seed: int = 0, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        check_split_fractions(val_fraction, test_fraction)
        self.path = Path(str(path)).expanduser()
        self.location = self.path
        self.val_fraction, self.test_fraction, self.split_seed = float(val_fraction), float(test_fraction), split_seed

    def _splits(self) -> tuple[dict[str, Samples], list[str]]:
        rows = self._read()
        labels = {label for _, _, label, _ in rows}
        classes = sorted(labels, key=int) if all(_is_int(x) for x in labels) else sorted(labels)
        index = {name: i for i, name in enumerate(classes)}
        grouped: dict[str, tuple[list[Path], list[int]]] = {}
        # By class, then path: the split does not depend on the rows' order, and equals an unsplit folder's.
        for _, path, label, split in sorted(rows, key=lambda r: (index[r[2]], str(r[1]))):
            paths, ids = grouped.setdefault(split, ([], []))
            paths.append(path)
            ids.append(index[label])
        splits: dict[str, Samples] = {split: FileSamples(*grouped[split]) for split in sorted(grouped)}
        if "all" not in splits and "train" not in splits:
            raise ConfigError(f"no row of {self.path} has split 'train'; mark the training images or drop the column")
        splits = fixed_splits(splits, (self.val_fraction, self.test_fraction), self.split_seed, classes, self.path)
        return self.check_splits(splits, classes), classes

    def _read(self) -> list[tuple[int, Path, str, str]]:
        """(line, resolved path, label, split or ``all``) per row, each file once."""
        label_file(self.path)
        rows: list[tuple[int, Path, str, str]] = []
        first: dict[str, tuple[int, str, str]] = {}
        with open(self.path, newline="", encoding="utf-8-sig") as f:  # utf-8-sig: Excel's byte order mark
            reader = csv.reader(f)
            header = [h.strip().lower() for h in next(reader, [])]
            if "path" not in header or "label" not in header:
                raise ConfigError(
                    f"{self.path} must start with a header row naming the columns path,label (and optionally split); "
                    f"its first row is {','.join(header) or 'empty'}"
                )
            col_path, col_label = header.index("path"), header.index("label")
            col_split = header.index("split") if "split" in header else None
            for row in reader:
                line = reader.line_num
                if not any(cell.strip() for cell in row):
                    continue
                if len(row) < len(header):
                    raise ConfigError(f"{self.path} line {line} has {len(row)} columns, the header {len(header)}")
                path, label = row[col_path].strip(), row[col_label].strip()
                split = row[col_split].strip().lower() if col_split is not None else "all"
                if not path or not label:
                    raise ConfigError(f"{self.path} line {line} has an empty path or label; fill it in or remove it")
                if split not in SPLITS and col_split is not None:
                    raise ConfigError(
                        f"{self.path} line {line}: split '{row[col_split].strip()}' is not train, val or test"
                    )
                resolved = Path(path).expanduser()
                resolved = Path(os.path.normpath(resolved if resolved.is_absolute() else self.path.parent / resolved))
                real = os.path.realpath(resolved)
                if real in first:
                    seen_line, seen_label, seen_split = first[real]
                    if (seen_label, seen_split) != (label, split):
                        raise ConfigError(
                            f"{self.path} lines {seen_line} and {line} both list {path}, as "
                            f"{_as(seen_label, seen_split)} and {_as(label, split)}; keep one of them"
                        )
                    self.scan.skip("duplicate_row", resolved)
                    continue
                first[real] = (line, label, split)
                rows.append((line, resolved, label, split))
        if not rows:
            raise ConfigError(f"{self.path} has a header but no rows; add one path,label row per image")
        return rows


def _is_int(text: str) -> bool:
    return text.lstrip("-").isdigit()


def _as(label: str, split: str) -> str:
    return label if split == "all" else f"{label} ({split})"
