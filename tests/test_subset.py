"""Data regimes: the seeded, stratified, nested training subset; val and test stay fixed across seeds and sizes."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import fashion_mnist_root
from tlx.data import FashionMNISTData, stratified_subset
from tlx.errors import ConfigError

# 5 classes with 40, 50, 60, 70, 80 examples, interleaved in a fixed random order
LABELS = np.random.default_rng(0).permutation(np.repeat(np.arange(5), [40, 50, 60, 70, 80])).tolist()
DATA_CONFIG = {
    "input_size": (3, 32, 32),
    "interpolation": "bilinear",
    "mean": (0.5, 0.5, 0.5),
    "std": (0.5, 0.5, 0.5),
    "crop_pct": 1.0,
}


def _per_class(indices: list[int]) -> Counter:
    return Counter(LABELS[i] for i in indices)


@pytest.mark.parametrize("k", [1, 7, 40])
def test_exact_count_per_class(k: int) -> None:
    chosen = stratified_subset(LABELS, seed=3, per_class=k)
    assert _per_class(chosen) == {c: k for c in range(5)}
    assert len(set(chosen)) == len(chosen) == 5 * k


def test_seeded_and_nested() -> None:
    small, large = stratified_subset(LABELS, 0, per_class=5), stratified_subset(LABELS, 0, per_class=30)
    assert small == stratified_subset(LABELS, 0, per_class=5)  # same seed, same subset
    assert set(small) < set(large)  # a larger subset contains the smaller one
    assert set(stratified_subset(LABELS, 1, per_class=5)) != set(small)  # another seed draws other images
    assert set(stratified_subset(LABELS, 0, fraction=0.1)) < set(stratified_subset(LABELS, 0, fraction=0.5))


def test_fraction_rounds_up_per_class_and_none_is_everything() -> None:
    assert _per_class(stratified_subset(LABELS, 0, fraction=0.1)) == {0: 4, 1: 5, 2: 6, 3: 7, 4: 8}
    assert stratified_subset(LABELS, 0) == list(range(len(LABELS)))


def test_more_than_a_class_has_takes_all_of_it() -> None:
    assert _per_class(stratified_subset(LABELS, 0, per_class=55)) == {0: 40, 1: 50, 2: 55, 3: 55, 4: 55}


@pytest.mark.parametrize(
    ("kwargs", "match"), [({"per_class": 0}, "samples_per_class"), ({"fraction": 1.5}, "fraction")]
)
def test_bad_sizes_name_the_setting(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        stratified_subset(LABELS, 0, **kwargs)


def test_fashion_mnist_val_and_test_fixed_across_seeds_and_sizes(tmp_path: Path) -> None:
    root = fashion_mnist_root()
    if root is None:
        pytest.skip("Fashion-MNIST idx files not found (set TLX_FASHION_MNIST)")
    splits = {}
    for seed in (0, 1):
        for size in (5, 50):
            data = FashionMNISTData(
                root=str(root),
                data_config=DATA_CONFIG,
                samples_per_class=size,
                subset_seed=seed,
                num_workers=0,
                val_per_class=20,
                test_per_class=10,
            )
            data.setup()
            data.save_file_lists(tmp_path / f"files-{seed}-{size}.json")
            splits[seed, size] = json.loads((tmp_path / f"files-{seed}-{size}.json").read_text())
            assert Counter(data.samples["train"].labels) == {c: size for c in range(10)}
            assert Counter(data.samples["val"].labels) == {c: 20 for c in range(10)}
    first = splits[0, 5]
    for s in splits.values():
        assert s["val"] == first["val"] and s["test"] == first["test"] and s["classes"] == first["classes"]
        assert not set(s["train"]) & set(s["val"])  # validation images never train
    assert set(splits[0, 5]["train"]) < set(splits[0, 50]["train"])
    assert set(splits[1, 5]["train"]) < set(splits[1, 50]["train"])
    assert set(splits[0, 5]["train"]) != set(splits[1, 5]["train"])
