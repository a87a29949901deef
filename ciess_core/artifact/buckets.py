"""Width buckets: rows grouped by effective width into a few dense matrices (pure numpy).

A row whose last non-zero entry is at column ``w - 1`` contributes nothing past column ``w``, so the
dot product of a user vector with it needs only the first ``w`` columns. Rows sorted by width and
cut into a few buckets, each a dense (rows, bucket width) matrix, give exactly the scores of the
zero-padded table while the work follows Σ_bucket rows × width instead of rows × d_max.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ciess_core.errors import ConfigError


def effective_widths(matrix: npt.NDArray[np.floating]) -> npt.NDArray[np.int64]:
    """(n,) int64: one plus the index of each row's last non-zero entry, at least 1.

    Args:
        matrix: (n, w) float.
    """
    nonzero = matrix != 0
    width = matrix.shape[1]
    # argmax on the reversed rows finds the last non-zero; all-zero rows get 1 (one zero column).
    last = width - np.argmax(nonzero[:, ::-1], axis=1)
    last[~nonzero.any(axis=1)] = 1
    return np.maximum(last, 1).astype(np.int64)


def plan_buckets(
    widths: npt.NDArray[np.integer], max_buckets: int = 4, min_saving: float = 0.02
) -> tuple[int, ...]:
    """Bucket widths (ascending, the last one the widest row) that minimise the padded work.

    Work of a plan = Σ_bucket rows × bucket width; every extra bucket must save at least
    ``min_saving`` of the one-bucket work (it costs one more matrix product per request). Solved
    exactly by dynamic programming over the distinct widths.

    Args:
        widths: (n,) positive integers, n >= 1.
        max_buckets: most buckets allowed (>= 1).
        min_saving: fixed cost of a bucket as a fraction of n × max(widths).
    """
    if max_buckets < 1:
        raise ConfigError(f"max_buckets must be >= 1, got {max_buckets}")
    values, counts = np.unique(np.asarray(widths, dtype=np.int64), return_counts=True)
    if values.size == 0:
        raise ConfigError("cannot plan buckets for zero rows")
    cumulative = np.concatenate(([0], np.cumsum(counts)))  # rows with width <= values[j-1]
    overhead = min_saving * float(cumulative[-1] * values[-1])
    m = values.size
    # best[j]: least cost covering the first j distinct widths; choice[b][j]: start of last bucket.
    best = np.full(m + 1, np.inf)
    best[0] = 0.0
    plans: list[npt.NDArray[np.int64]] = []
    totals: list[float] = []
    for _ in range(max_buckets):
        new = np.full(m + 1, np.inf)
        start = np.zeros(m + 1, dtype=np.int64)
        for j in range(1, m + 1):
            # Last bucket holds distinct widths i..j-1 and is values[j-1] wide.
            costs = best[:j] + values[j - 1] * (cumulative[j] - cumulative[:j]) + overhead
            i = int(np.argmin(costs))
            new[j], start[j] = costs[i], i
        plans.append(start)
        totals.append(float(new[m]))
        best = new
    count = int(np.argmin(totals)) + 1
    edges, j = [], m
    for level in range(count - 1, -1, -1):
        edges.append(int(values[j - 1]))
        j = int(plans[level][j])
    return tuple(sorted(edges))


@dataclass(frozen=True, eq=False)
class BucketLayout:
    """A permutation of rows that makes each bucket contiguous.

    Attributes:
        order: (n,) int64, position p holds row ``order[p]`` (rows sorted by width, stable).
        position: (n,) int64 inverse of ``order``: row r sits at ``position[r]``.
        bounds: per bucket (start, end, width): positions start..end-1, each row at most width wide.
    """

    order: npt.NDArray[np.int64]
    position: npt.NDArray[np.int64]
    bounds: tuple[tuple[int, int, int], ...]

    @property
    def padded_elements(self) -> int:
        """Σ_bucket rows × width: the work of one user's scores over all rows."""
        return sum((end - start) * width for start, end, width in self.bounds)


def bucket_layout(
    widths: npt.NDArray[np.integer], max_buckets: int = 4, min_saving: float = 0.02
) -> BucketLayout:
    """Sort rows by width and cut them at the planned bucket widths."""
    width_array = np.asarray(widths, dtype=np.int64)
    edges = plan_buckets(width_array, max_buckets, min_saving)
    order = np.argsort(width_array, kind="stable").astype(np.int64)
    position = np.empty_like(order)
    position[order] = np.arange(order.size, dtype=np.int64)
    ends = np.searchsorted(width_array[order], np.asarray(edges), side="right")
    bounds, start = [], 0
    for end, width in zip(ends.tolist(), edges, strict=True):
        if end > start:
            bounds.append((start, int(end), int(width)))
        start = int(end)
    return BucketLayout(order=order, position=position, bounds=tuple(bounds))
