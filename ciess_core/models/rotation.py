"""Principal axes of a torch embedding table (:mod:`ciess_core.rotation` for the idea)."""

from __future__ import annotations

import torch

from ciess_core.rotation import principal_axes


def principal_rotation(table: torch.Tensor) -> torch.Tensor:
    """The orthogonal (w, w) matrix whose columns are the eigenvectors of ``tableᵀ table``
    (``table`` is (rows, w)), largest eigenvalue first, in ``table``'s dtype and device. The
    Gram matrix is formed in float64 where the table lives; its eigen-decomposition runs in
    numpy."""
    weights = table.detach().double()
    gram = (weights.T @ weights).cpu().numpy()
    return torch.from_numpy(principal_axes(gram)).to(dtype=table.dtype, device=table.device)
