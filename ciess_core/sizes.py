"""Size assignments and their accounting (pure numpy).

A size assignment gives every user and item (users first) a size in ``[1, max_size]``; its sparsity
is the fraction of the full table that is pruned: c(d) = 1 - Σ d_n / (N · max_size).
"""

from __future__ import annotations

import enum

import numpy as np

from ciess_core.errors import ConfigError


class SizeScheme(enum.Enum):
    """How a training run assigns sizes: full width, equal sizes (ES), mixed random (MR), or the
    CIESS search's assignment (given from outside, never drawn here)."""

    FULL = "full"
    EQUAL = "equal"
    RANDOM = "random"
    CIESS = "ciess"


def sparsity(sizes: np.ndarray, max_size: int) -> float:
    """Fraction of the dense (N, max_size) table pruned by ``sizes``."""
    return 1.0 - float(np.sum(sizes, dtype=np.int64)) / (len(sizes) * max_size)


def parameter_budget(num_entities: int, max_size: int, target_sparsity: float) -> int:
    """Largest number of kept parameters whose sparsity is at least ``target_sparsity``."""
    check_target_sparsity(target_sparsity, max_size)
    return int(np.floor((1.0 - target_sparsity) * num_entities * max_size + 1e-9))


def check_target_sparsity(target_sparsity: float, max_size: int) -> None:
    """Raise ConfigError unless every entity can keep at least one dimension at this sparsity."""
    highest = 1.0 - 1.0 / max_size
    if not 0.0 <= target_sparsity <= highest:
        raise ConfigError(
            f"target sparsity must lie in [0, {highest:.6f}] (every entity keeps at least 1 of "
            f"{max_size} dimensions), got {target_sparsity}"
        )


def full_sizes(num_entities: int, max_size: int) -> np.ndarray:
    """Every entity at ``max_size``."""
    return np.full(num_entities, max_size, dtype=np.int64)


def equal_sizes(num_entities: int, max_size: int, target_sparsity: float) -> np.ndarray:
    """ES baseline: every entity gets round((1 - c) · max_size), at least 1 (spec §7)."""
    check_target_sparsity(target_sparsity, max_size)
    size = max(1, int(np.rint((1.0 - target_sparsity) * max_size)))
    return np.full(num_entities, size, dtype=np.int64)


def mixed_random_sizes(
    num_entities: int, max_size: int, target_sparsity: float, rng: np.random.Generator
) -> np.ndarray:
    """MR baseline: random sizes rescaled so that Σ d equals the budget exactly.

    Sizes are drawn uniformly from [1, max_size], scaled to the parameter budget, floored, and the
    remainder is handed out one dimension at a time to random entities that still have room.
    """
    budget = parameter_budget(num_entities, max_size, target_sparsity)
    if budget < num_entities:
        raise ConfigError(
            f"a budget of {budget} parameters cannot give {num_entities} entities one each"
        )
    draws = rng.uniform(1.0, max_size, size=num_entities)
    # Scale the part above the floor of 1 so that the expected total hits the budget.
    extra = draws - 1.0
    scale = (budget - num_entities) / extra.sum() if extra.sum() > 0 else 0.0
    sizes = np.clip(np.floor(1.0 + extra * scale), 1, max_size).astype(np.int64)
    remainder = budget - int(sizes.sum())
    while remainder > 0:
        room = np.flatnonzero(sizes < max_size)
        chosen = rng.choice(room, size=min(remainder, len(room)), replace=False)
        sizes[chosen] += 1
        remainder = budget - int(sizes.sum())
    return sizes


def assign_sizes(
    scheme: SizeScheme,
    num_entities: int,
    max_size: int,
    target_sparsity: float | None,
    rng: np.random.Generator,
) -> np.ndarray:
    """Sizes for ``scheme``; ES and MR need a target sparsity, FULL takes none."""
    if scheme is SizeScheme.FULL:
        if target_sparsity not in (None, 0.0):
            raise ConfigError("the full-size scheme takes no target sparsity")
        return full_sizes(num_entities, max_size)
    if target_sparsity is None:
        raise ConfigError(f"size scheme '{scheme.value}' needs a target sparsity (e.g. 0.9)")
    if scheme is SizeScheme.EQUAL:
        return equal_sizes(num_entities, max_size, target_sparsity)
    if scheme is SizeScheme.RANDOM:
        return mixed_random_sizes(num_entities, max_size, target_sparsity, rng)
    raise ConfigError(f"size scheme '{scheme.value}' takes its sizes from outside, not drawn")
