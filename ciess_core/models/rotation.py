"""Principal axes of an embedding table.

A model that scores by dot products of embeddings reached from its table by linear maps that
act on rows (LightGCN's propagation) scores the same after its table is multiplied by any
orthogonal matrix. :func:`principal_rotation` gives the one that orders the table's columns
by energy: after it, the first ``s`` columns hold as much of ``Σ‖e‖²`` as any ``s``
directions can, so cutting every row to a prefix drops the least.
"""

from __future__ import annotations

import torch


def principal_rotation(table: torch.Tensor) -> torch.Tensor:
    """The orthogonal (w, w) matrix whose columns are the eigenvectors of ``tableᵀ table``
    (``table`` is (rows, w)), largest eigenvalue first, in ``table``'s dtype and device.
    The eigen-decomposition runs in float64."""
    values, vectors = torch.linalg.eigh(table.T.double() @ table.double())
    return vectors[:, torch.argsort(values, descending=True)].to(table.dtype)
