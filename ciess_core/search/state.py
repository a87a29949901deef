"""States and rewards of the size-search MDP (spec §4), pure numpy.

Every function works on one side (users or items) at a time: the min–max scaling is within a side.
"""

from __future__ import annotations

import numpy as np

from ciess_core.errors import ConfigError

__all__ = ["entity_states", "minmax_scale", "quality_ratio", "reward"]


def minmax_scale(values: np.ndarray) -> np.ndarray:
    """Scale ``(N,)`` values linearly onto [−1, 1] (min → −1, max → 1); a constant array → 0.

    Returns float64.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return values.copy()
    low, high = float(values.min()), float(values.max())
    if high == low:
        return np.zeros_like(values)
    return 2.0 * (values - low) / (high - low) - 1.0


def entity_states(popularity: np.ndarray, sizes: np.ndarray, quality: np.ndarray) -> np.ndarray:
    """The ``(N, 3)`` float32 state of one side: [popularity, size, quality], each min–max scaled.

    Args:
        popularity: ``(N,)`` training interaction counts f_n.
        sizes: ``(N,)`` current sizes d_n.
        quality: ``(N,)`` qualities q_n (see :func:`quality_ratio`).
    """
    columns = [np.asarray(column) for column in (popularity, sizes, quality)]
    shapes = {column.shape for column in columns}
    if len(shapes) != 1 or columns[0].ndim != 1:
        raise ConfigError(
            "popularity, sizes and quality must be 1-d of one length, got shapes "
            f"{[column.shape for column in columns]}"
        )
    return np.stack([minmax_scale(column) for column in columns], axis=1).astype(np.float32)


def quality_ratio(
    eval_masked: np.ndarray, eval_full: np.ndarray, floor: float = 1e-5
) -> np.ndarray:
    """q_n = min(eval_masked(n) / max(eval_full(n), floor), 1), ``(N,)`` float64.

    The floor keeps entities that score 0 at full size from dividing by zero; the cap stops weak
    long-tail entities from reporting a better-than-full model. NaN in either input (a user with
    nothing to evaluate) counts as an eval of 0, matching ``RankingResult.item_quality``, which
    gives items without an evaluated user 0.
    """
    masked = np.nan_to_num(np.asarray(eval_masked, dtype=np.float64), nan=0.0)
    full = np.nan_to_num(np.asarray(eval_full, dtype=np.float64), nan=0.0)
    if masked.shape != full.shape:
        raise ConfigError(
            f"eval_masked and eval_full must have one shape, got {masked.shape} and {full.shape}"
        )
    if not floor > 0:
        raise ConfigError(f"floor must be > 0, got {floor}")
    return np.minimum(masked / np.maximum(full, floor), 1.0)


def reward(quality: np.ndarray, sizes: np.ndarray, max_size: int, penalty: float) -> np.ndarray:
    """r_n = q_n − λ·(d_n / d_max)², ``(N,)`` float64; ``penalty`` is λ."""
    quality = np.asarray(quality, dtype=np.float64)
    fraction = np.asarray(sizes, dtype=np.float64) / max_size
    if quality.shape != fraction.shape:
        raise ConfigError(
            f"quality and sizes must have one shape, got {quality.shape} and {fraction.shape}"
        )
    return quality - penalty * fraction**2
