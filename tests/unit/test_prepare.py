"""Stratified seeded splitting, limits, and train-only normalization statistics."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.formats import RawData
from pipeline.prepare import normalization_stats, split, stratified_indices, stratified_subset


@pytest.fixture
def labels():
    # Unequal classes, shuffled: 0 has 101 items, 1 has 57, 2 has 12, 3 has 1.
    y = np.repeat(np.arange(4), [101, 57, 12, 1])
    return np.random.default_rng(3).permutation(y)


def raw_data(n_train=600, n_test=200, classes=10, seed=0, channels=1):
    rng = np.random.default_rng(seed)
    return RawData(
        x_train=rng.integers(0, 256, (n_train, 6, 5, channels), dtype=np.uint8),
        y_train=np.arange(n_train) % classes,
        x_test=rng.integers(0, 256, (n_test, 6, 5, channels), dtype=np.uint8),
        y_test=np.arange(n_test) % classes,
    )


@pytest.mark.parametrize("fraction", [0.1, 0.25, 0.49])
def test_stratified_keeps_class_shares(labels, fraction):
    rest, picked = stratified_indices(labels, fraction, seed=0)
    for cls in np.unique(labels):
        count = (labels == cls).sum()
        assert abs((labels[picked] == cls).sum() - fraction * count) <= 1
        assert (labels[picked] == cls).sum() + (labels[rest] == cls).sum() == count


def test_stratified_is_a_partition(labels):
    rest, picked = stratified_indices(labels, 0.3, seed=0)
    assert np.intersect1d(rest, picked).size == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([rest, picked])),
                                  np.arange(len(labels)))


def test_stratified_is_seeded(labels):
    a = stratified_indices(labels, 0.3, seed=7)
    b = stratified_indices(labels, 0.3, seed=7)
    c = stratified_indices(labels, 0.3, seed=8)
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.array_equal(a[1], c[1])


def test_subset_with_limit_keeps_shares(labels):
    keep = stratified_subset(labels, 50, seed=0)
    assert abs(len(keep) - 50) <= len(np.unique(labels))
    assert len(np.unique(keep)) == len(keep)
    share = len(keep) / len(labels)
    for cls in np.unique(labels):
        assert abs((labels[keep] == cls).sum() - share * (labels == cls).sum()) <= 1


@pytest.mark.parametrize("limit", [0, 171, 10_000])
def test_subset_without_effective_limit_is_everything(labels, limit):
    np.testing.assert_array_equal(stratified_subset(labels, limit, seed=0),
                                  np.arange(len(labels)))


def test_split_leaves_test_set_untouched():
    raw = raw_data()
    s = split(raw, val_fraction=0.2, seed=1)
    np.testing.assert_array_equal(s.x_test, raw.x_test)
    np.testing.assert_array_equal(s.y_test, raw.y_test)
    assert len(s.y_train) == 480 and len(s.y_val) == 120
    for arr in s.arrays().values():
        assert arr.dtype == np.uint8
    assert s.x_train.shape[1:] == (6, 5, 1)


def test_split_train_and_val_come_from_train_without_overlap():
    raw = raw_data()
    s = split(raw, val_fraction=0.2, seed=1)
    # Images are random noise, hence unique: identify them by their bytes.
    train = {x.tobytes() for x in s.x_train}
    val = {x.tobytes() for x in s.x_val}
    assert not train & val
    assert train | val == {x.tobytes() for x in raw.x_train}
    assert np.bincount(s.y_val).tolist() == [12] * 10


def test_split_limit_applies_to_every_split():
    s = split(raw_data(), val_fraction=0.2, seed=1, limit=50)
    assert {k: len(getattr(s, f"y_{k}")) for k in ("train", "val", "test")} == {
        "train": 50, "val": 50, "test": 50}
    assert np.bincount(s.y_test).tolist() == [5] * 10


def test_split_is_deterministic():
    a, b = split(raw_data(), 0.2, seed=5), split(raw_data(), 0.2, seed=5)
    for key, arr in a.arrays().items():
        np.testing.assert_array_equal(arr, b.arrays()[key])


def test_normalization_equals_numpy_on_train_only():
    s = split(raw_data(channels=3), val_fraction=0.2, seed=1)
    stats = normalization_stats(s.x_train)
    x = s.x_train.astype(np.float64)
    np.testing.assert_allclose(stats["mean"], x.mean(axis=(0, 1, 2)))
    np.testing.assert_allclose(stats["std"], x.std(axis=(0, 1, 2)))
    assert len(stats["mean"]) == 3


def test_normalization_does_not_see_val_or_test():
    raw = raw_data()
    _, val_idx = stratified_indices(raw.y_train, 0.2, seed=1)  # what split() will pick
    x_train = raw.x_train.copy()
    x_train[val_idx] = 255
    changed = RawData(x_train=x_train, y_train=raw.y_train,
                      x_test=np.full_like(raw.x_test, 255), y_test=raw.y_test)
    a, b = split(raw, 0.2, seed=1), split(changed, 0.2, seed=1)
    assert (b.x_val == 255).all() and not (a.x_val == 255).all()
    np.testing.assert_array_equal(a.x_train, b.x_train)
    assert normalization_stats(a.x_train) == normalization_stats(b.x_train)


def test_constant_channel_gets_unit_std():
    stats = normalization_stats(np.full((4, 2, 2, 1), 7, dtype=np.uint8))
    assert stats == {"mean": [7.0], "std": [1.0]}
