"""Size assignments and their accounting."""

from __future__ import annotations

import numpy as np
import pytest

from ciess_core.errors import ConfigError
from ciess_core.sizes import (
    SizeScheme,
    assign_sizes,
    equal_sizes,
    mixed_random_sizes,
    parameter_budget,
    sparsity,
)


def test_sparsity_of_hand_example() -> None:
    assert sparsity(np.array([128, 64, 0 + 32, 32]), 128) == pytest.approx(1 - 256 / 512)


@pytest.mark.parametrize(("target", "size"), [(0.8, 26), (0.9, 13), (0.95, 6)])
def test_equal_sizes_follow_the_papers_rounding(target: float, size: int) -> None:
    sizes = equal_sizes(1000, 128, target)
    assert np.all(sizes == size)


@pytest.mark.parametrize("target", [0.5, 0.8, 0.9, 0.95, 0.99])
def test_mixed_random_meets_the_budget_exactly(target: float) -> None:
    rng = np.random.default_rng(0)
    sizes = mixed_random_sizes(5000, 128, target, rng)
    assert sizes.min() >= 1 and sizes.max() <= 128
    assert sizes.sum() == parameter_budget(5000, 128, target)
    assert sparsity(sizes, 128) >= target
    # Really mixed (at 0.99 the budget of 1.28 per entity leaves only sizes 1 and 2).
    assert len(np.unique(sizes)) > (1 if target > 0.95 else 10)


def test_mixed_random_is_seeded() -> None:
    first = mixed_random_sizes(300, 128, 0.9, np.random.default_rng(1))
    second = mixed_random_sizes(300, 128, 0.9, np.random.default_rng(1))
    assert np.array_equal(first, second)


def test_bad_targets_are_rejected() -> None:
    with pytest.raises(ConfigError, match="target sparsity"):
        equal_sizes(10, 128, 1.0)
    with pytest.raises(ConfigError, match="target sparsity"):
        mixed_random_sizes(10, 128, -0.1, np.random.default_rng(0))
    with pytest.raises(ConfigError, match="needs a target sparsity"):
        assign_sizes(SizeScheme.EQUAL, 10, 128, None, np.random.default_rng(0))
    with pytest.raises(ConfigError, match="takes no target"):
        assign_sizes(SizeScheme.FULL, 10, 128, 0.5, np.random.default_rng(0))
