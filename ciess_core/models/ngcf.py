"""NGCF (Wang et al., SIGIR 2019) with per-entity masked embeddings."""

from __future__ import annotations

from typing import cast

import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

from ciess_core.models.base import (
    BackboneConfig,
    DotProductBackbone,
    Representation,
    xavier_initializer,
)
from ciess_core.models.graph import SparseOperator, mean_normalized_adjacency_with_self_loops
from ciess_core.models.masking import MaskedEmbedding


class NGCF(DotProductBackbone):
    """Layers e' = LeakyReLU(W1 (L e) + W2 ((L e) ⊙ e)), each L2-normalised; final = concat.

    The final representation is [ego; layer_1; ...; layer_K]; the ego part is as wide as the widest
    size in use, every layer is ``max_size`` wide (the spec's 128 → 512-d for three layers).
    """

    def __init__(
        self,
        num_users: int,
        num_items: int,
        config: BackboneConfig,
        train: sp.csr_matrix,
        generator: torch.Generator,
    ) -> None:
        super().__init__(num_users, num_items, config)
        width = config.max_size
        self.embedding = MaskedEmbedding(
            num_users + num_items, width, xavier_initializer, generator
        )
        self.propagation = SparseOperator(
            mean_normalized_adjacency_with_self_loops(train), device=generator.device
        )
        self.sum_layers = nn.ModuleList(
            nn.Linear(width, width, device=generator.device) for _ in range(config.num_layers)
        )
        self.product_layers = nn.ModuleList(
            nn.Linear(width, width, device=generator.device) for _ in range(config.num_layers)
        )
        for layer in [*self.sum_layers, *self.product_layers]:
            xavier_initializer(layer.weight, generator)
            nn.init.zeros_(layer.bias)
        self._dropout_generator = generator

    def tables(self) -> tuple[MaskedEmbedding, ...]:
        return (self.embedding,)

    def random_state(self) -> dict[str, torch.Tensor]:
        return {"dropout": self._dropout_generator.get_state()}

    def set_random_state(self, state: dict[str, torch.Tensor]) -> None:
        self._dropout_generator.set_state(state["dropout"])

    def _dropout(self, x: torch.Tensor) -> torch.Tensor:
        rate = self.config.dropout
        if not self.training or rate == 0.0:
            return x
        keep = torch.rand(x.shape, generator=self._dropout_generator, device=x.device) >= rate
        return x * keep / (1.0 - rate)

    def represent(self) -> Representation:
        """Returns (users (U, w + K·d_max), items (I, w + K·d_max))."""
        ego = self.embedding()
        outputs = [ego]
        layer_pairs = zip(self.sum_layers, self.product_layers, strict=True)
        for sum_module, product_module in layer_pairs:
            sum_layer, product_layer = cast(nn.Linear, sum_module), cast(nn.Linear, product_module)
            width = ego.shape[1]
            side = self.propagation @ ego
            # The first layer sees truncated input: use only the weight columns it can reach.
            summed = F.linear(side, sum_layer.weight[:, :width], sum_layer.bias)
            product = F.linear(side * ego, product_layer.weight[:, :width], product_layer.bias)
            ego = self._dropout(F.leaky_relu(summed + product, negative_slope=0.2))
            outputs.append(F.normalize(ego, p=2, dim=1))
        final = torch.cat(outputs, dim=1)
        return final[: self.num_users], final[self.num_users :]
