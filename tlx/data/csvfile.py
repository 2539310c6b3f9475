"""Labels from a CSV file, as labelling tools and Kaggle export them: ``path,label[,split]`` rows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tlx.data.base import FileSamples, ImageData, Samples, check_split_fractions, fixed_splits
from tlx.errors import ConfigError
from tlx.sources import read_rows


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
        rows = read_rows(self.path, self.scan)
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


def _is_int(text: str) -> bool:
    return text.lstrip("-").isdigit()
