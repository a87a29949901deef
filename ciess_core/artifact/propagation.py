"""LightGCN propagation in numpy/scipy, for loading an artifact without torch.

The normalised graphs come from :mod:`ciess_core.adjacency`, shared with the trainer.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from ciess_core.adjacency import (
    bipartite_adjacency,
    mean_normalized_adjacency_with_self_loops,
    symmetric_normalized_adjacency,
)

__all__ = [
    "bipartite_adjacency",
    "lightgcn_propagate",
    "mean_normalized_adjacency_with_self_loops",
    "symmetric_normalized_adjacency",
]


def lightgcn_propagate(
    normalized: sp.csr_matrix, layer0: npt.NDArray[np.float32], num_layers: int
) -> npt.NDArray[np.float32]:
    """Mean of layers 0..K of x_{k+1} = Â x_k.

    Args:
        normalized: (N, N) float32 D^-1/2 A D^-1/2.
        layer0: (N, w) float32 masked layer-0 embeddings.
        num_layers: K.

    Returns:
        (N, w) float32 final embeddings.
    """
    layer = layer0
    total = layer0.copy()
    for _ in range(num_layers):
        layer = np.asarray(normalized @ layer, dtype=np.float32)
        total += layer
    return (total / np.float32(num_layers + 1)).astype(np.float32, copy=False)
