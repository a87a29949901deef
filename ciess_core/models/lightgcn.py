"""LightGCN (He et al., SIGIR 2020) with per-entity masked embeddings."""

from __future__ import annotations

import scipy.sparse as sp
import torch

from ciess_core.errors import ConfigError
from ciess_core.models.base import (
    BackboneConfig,
    DotProductBackbone,
    Representation,
    normal_initializer,
)
from ciess_core.models.graph import SparseOperator, symmetric_normalized_adjacency
from ciess_core.models.masking import MaskedEmbedding
from ciess_core.models.rotation import principal_rotation


class LightGCN(DotProductBackbone):
    """Mean of layers 0..K of propagation over D^-1/2 A D^-1/2; score = <user, item>."""

    def __init__(
        self,
        num_users: int,
        num_items: int,
        config: BackboneConfig,
        train: sp.csr_matrix,
        generator: torch.Generator,
    ) -> None:
        super().__init__(num_users, num_items, config)
        self.embedding = MaskedEmbedding(
            num_users + num_items, config.max_size, normal_initializer(0.01), generator
        )
        self.propagation = SparseOperator(
            symmetric_normalized_adjacency(train), device=generator.device
        )

    def tables(self) -> tuple[MaskedEmbedding, ...]:
        return (self.embedding,)

    def represent(self) -> Representation:
        """Returns (users (U, w), items (I, w)) final embeddings, w = the widest size in use."""
        layer = self.embedding()
        total = layer
        for _ in range(self.config.num_layers):
            layer = self.propagation @ layer
            total = total + layer
        final = total / (self.config.num_layers + 1)
        return final[: self.num_users], final[self.num_users :]

    def turn_to_principal_axes(self) -> None:
        """Turn the ego table to its principal axes: propagation and scoring are linear in it,
        so every score stays (up to rounding). Every entity must be at full size (a cut row
        turned would spill into the columns its mask hides)."""
        if int(self.embedding.sizes.min()) < self.max_size:
            raise ConfigError("only a model whose entities are all at full size can be turned")
        weight = self.embedding.weight
        with torch.no_grad():
            weight.copy_(weight @ principal_rotation(weight))
