"""Principal axes of an embedding table (numpy; the serving side turns artifacts with it).

A model that scores by dot products of embeddings reached from its table by linear maps that
act on rows (LightGCN's propagation) scores the same after its table is multiplied by any
orthogonal matrix. :func:`principal_axes` gives the one that orders the table's columns by
energy: after it, the first ``s`` columns hold as much of ``Σ‖e‖²`` as any ``s`` directions
can, so cutting every row to a prefix drops the least.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt


def principal_axes(gram: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """The orthogonal (w, w) matrix whose columns are the eigenvectors of the symmetric
    ``gram`` = ``tableᵀ table``, largest eigenvalue first (float64)."""
    values, vectors = np.linalg.eigh(np.asarray(gram, dtype=np.float64))
    return np.ascontiguousarray(vectors[:, np.argsort(values)[::-1]])


def turn_to_principal_axes(table: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """``table`` (rows, w) multiplied by :func:`principal_axes` of its Gram matrix, float32."""
    matrix = np.asarray(table, dtype=np.float64)
    return (matrix @ principal_axes(matrix.T @ matrix)).astype(np.float32)
