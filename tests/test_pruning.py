"""Magnitude pruning: which entries it keeps, and the bytes of its sparse stores."""

from __future__ import annotations

import numpy as np
import pytest

from ciess_core.errors import ConfigError
from ciess_core.pruning import kept_within, magnitude_mask, pruned_bytes
from ciess_core.storage import npy_bytes


def test_the_largest_magnitudes_are_kept_after_each_rows_minimum() -> None:
    weight = np.array([[0.1, -5.0, 0.2], [0.01, 0.02, -0.03], [3.0, -4.0, 0.5]])
    mask = magnitude_mask(weight, kept=4, row_minimum=1)
    expected = np.array([[False, True, False], [False, False, True], [True, True, False]])
    np.testing.assert_array_equal(mask, expected)
    # without the minimum the small row loses everything
    bare = magnitude_mask(weight, kept=4, row_minimum=0)
    np.testing.assert_array_equal(bare.sum(axis=1), [1, 0, 3])
    assert bare.sum() == 4
    with pytest.raises(ConfigError, match="kept must lie in"):
        magnitude_mask(weight, kept=2, row_minimum=1)


def test_sparse_store_bytes_count_counts_columns_and_values() -> None:
    assert pruned_bytes(10, 25, 128) == npy_bytes(10, np.uint8) + npy_bytes(
        25, np.uint8
    ) + npy_bytes(25, np.float32)
    assert pruned_bytes(10, 25, 128, tables=2) == 2 * pruned_bytes(10, 25, 128)
    for budget in (0, 400, 5_000, 10**6):
        kept = kept_within(budget, 10, 128)
        if kept < 0:
            assert pruned_bytes(10, 0, 128) > budget
            continue
        assert pruned_bytes(10, kept, 128) <= budget
        assert kept == 1280 or pruned_bytes(10, kept + 1, 128) > budget
