"""The zero-padded dense layout: the baseline ``bench/artifact.py`` measures the bucketed one against.

The core's scorer multiplies each width bucket over its own width only; this one keeps every row
as wide as the widest (one matrix, every product over all columns), as a plain dense table would.
Scores are the same (``tests/test_bench_experiments.py``); only the work differs.
"""

from __future__ import annotations

import numpy as np

from ciess_core.artifact.scorer import ArtifactScorer, DotIndex, FloatArray, IdArray

__all__ = ["PaddedDotIndex", "PaddedScorer"]


class PaddedDotIndex(DotIndex):
    """Every row counts as wide as the matrix: one bucket, products over every column."""

    @staticmethod
    def row_widths(matrix: FloatArray) -> IdArray:
        return np.full(matrix.shape[0], matrix.shape[1], dtype=np.int64)


class PaddedScorer(ArtifactScorer):
    """The artifact scorer over one zero-padded dense item matrix."""

    index_type = PaddedDotIndex
