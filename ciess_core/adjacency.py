"""Graph normalisation for the graph backbones, in scipy only (no torch).

The trainer (:mod:`ciess_core.models.graph`) and the torch-free artifact scorer both build their
propagation matrices here, so that training and serving use the same graph.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def bipartite_adjacency(interactions: sp.csr_matrix) -> sp.csr_matrix:
    """(U+I, U+I) symmetric 0/1 float32 adjacency of a (U, I) interaction matrix."""
    binary = sp.csr_matrix(interactions, dtype=np.float32, copy=True)
    binary.data[:] = 1.0
    return sp.csr_matrix(
        sp.bmat([[None, binary], [binary.T, None]], format="csr", dtype=np.float32)
    )


def symmetric_normalized_adjacency(interactions: sp.csr_matrix) -> sp.csr_matrix:
    """LightGCN's D^-1/2 A D^-1/2, no self loops; isolated nodes stay 0."""
    adjacency = bipartite_adjacency(interactions)
    degree = np.asarray(adjacency.sum(axis=1)).ravel()
    inverse_sqrt = np.zeros_like(degree)
    np.power(degree, -0.5, where=degree > 0, out=inverse_sqrt)
    scale = sp.diags(inverse_sqrt)
    return sp.csr_matrix((scale @ adjacency @ scale).tocsr(), dtype=np.float32)


def mean_normalized_adjacency_with_self_loops(interactions: sp.csr_matrix) -> sp.csr_matrix:
    """NGCF's D^-1 (A + I), row-normalised with self loops."""
    adjacency = bipartite_adjacency(interactions) + sp.identity(
        sum(interactions.shape), dtype=np.float32
    )
    degree = np.asarray(adjacency.sum(axis=1)).ravel()
    return sp.csr_matrix((sp.diags(1.0 / degree) @ adjacency).tocsr(), dtype=np.float32)
