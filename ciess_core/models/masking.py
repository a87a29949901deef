"""Masked embeddings: the one place where per-entity embedding sizes are applied.

A :class:`MaskedEmbedding` holds a ``d_max``-wide table and one size per entity. The forward pass
multiplies every row by its prefix mask, so dimensions past an entity's size are exactly zero and
receive exactly zero gradient. Rows are returned truncated to the largest size in use, so that a
model at 90 % sparsity does not pay for 128 dimensions when the widest entity keeps 13.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ciess_core.errors import ConfigError
from ciess_core.models.rows import gather_rows


def prefix_mask(sizes: torch.Tensor, width: int) -> torch.Tensor:
    """Return the (n, width) float mask whose row ``r`` is one on its first ``sizes[r]`` entries."""
    positions = torch.arange(width, device=sizes.device)
    return (positions.unsqueeze(0) < sizes.unsqueeze(1)).to(torch.float32)


def validate_sizes(sizes: torch.Tensor, num_embeddings: int, max_size: int) -> None:
    """Raise :class:`ConfigError` unless ``sizes`` is an integer vector in ``[1, max_size]``."""
    if sizes.dim() != 1 or sizes.numel() != num_embeddings:
        raise ConfigError(
            f"embedding sizes must be a vector of {num_embeddings} entries, "
            f"got shape {tuple(sizes.shape)}"
        )
    if sizes.dtype.is_floating_point or sizes.dtype == torch.bool:
        raise ConfigError(f"embedding sizes must be integers, got dtype {sizes.dtype}")
    low, high = int(sizes.min()), int(sizes.max())
    if low < 1 or high > max_size:
        raise ConfigError(f"embedding sizes must lie in [1, {max_size}], got range [{low}, {high}]")


class MaskedEmbedding(nn.Module):
    """An embedding table of ``num_embeddings`` rows, each with its own size in ``[1, max_size]``.

    Attributes:
        weight: (num_embeddings, max_size) parameter.
        sizes: (num_embeddings,) int64 buffer.
    """

    sizes: torch.Tensor
    _mask: torch.Tensor

    def __init__(
        self,
        num_embeddings: int,
        max_size: int,
        initializer: Callable[[torch.Tensor, torch.Generator], object],
        generator: torch.Generator,
    ) -> None:
        super().__init__()
        if num_embeddings < 1 or max_size < 1:
            raise ConfigError(
                f"a table needs at least one row and one column, got {num_embeddings}x{max_size}"
            )
        self.num_embeddings = num_embeddings
        self.max_size = max_size
        weight = torch.empty(num_embeddings, max_size, device=generator.device)
        initializer(weight, generator)
        self.weight = nn.Parameter(weight)
        self.register_buffer(
            "sizes",
            torch.full((num_embeddings,), max_size, dtype=torch.int64, device=weight.device),
        )
        self.register_buffer(
            "_mask", torch.ones(num_embeddings, max_size, device=weight.device), persistent=False
        )
        self._width = max_size

    @property
    def width(self) -> int:
        """The largest size in use: the number of columns :meth:`forward` returns."""
        return self._width

    def set_sizes(self, sizes: torch.Tensor, clear_truncated: bool = True) -> None:
        """Assign a size to every row.

        Args:
            sizes: (num_embeddings,) integer tensor with values in ``[1, max_size]``.
            clear_truncated: also set the stored weights past each size to zero, so that the table
                itself (not only its output) is exactly the ragged table. Turn off to keep weights
                when sizes change often (a model trained under many masks).
        """
        validate_sizes(sizes, self.num_embeddings, self.max_size)
        sizes = sizes.to(device=self.sizes.device, dtype=torch.int64)
        self.sizes.copy_(sizes)
        self._width = int(sizes.max())
        self._mask = prefix_mask(sizes, self._width)
        if clear_truncated:
            with torch.no_grad():
                self.weight.mul_(prefix_mask(sizes, self.max_size))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[no-untyped-def]
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        # Keep the derived mask and width consistent with the sizes that were just loaded.
        self._width = int(self.sizes.max())
        self._mask = prefix_mask(self.sizes, self._width)

    def forward(self, ids: torch.Tensor | None = None) -> torch.Tensor:
        """Masked rows, truncated to :attr:`width` columns.

        Args:
            ids: (B,) int64 row ids, or None for the whole table.

        Returns:
            (B, width) or (num_embeddings, width) float tensor, zero past each row's size.
        """
        weight = self.weight[:, : self._width]
        if ids is None:
            return weight * self._mask
        return gather_rows(weight, ids) * self._mask[ids]

    def dense(self) -> torch.Tensor:
        """The masked table zero-padded to ``max_size`` columns: (num_embeddings, max_size)."""
        return self.weight * prefix_mask(self.sizes, self.max_size)

    def parameter_count(self) -> int:
        """Number of parameters kept by the current sizes (the ragged table's length)."""
        return int(self.sizes.sum())
