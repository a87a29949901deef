"""NCF / NeuMF (He et al., WWW 2017) with both embedding tables masked by the same sizes."""

from __future__ import annotations

import itertools
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from ciess_core.models.base import (
    Backbone,
    BackboneConfig,
    Representation,
    normal_initializer,
    xavier_initializer,
)
from ciess_core.models.masking import MaskedEmbedding
from ciess_core.models.rows import gather_rows

# Full-ranking scores materialise (users, items, first tower width) activations, a block of users
# at a time. On a CPU, blocks of 2**22 elements (16 MB) with in-place ReLUs rank ML-1M's
# 6,040 x 3,706 pairs 3.2 to 4.6 times as fast as 2**25-element blocks did (two runs, one and
# two threads; docs/benchmarks/ncf-blocks.md); on a GPU the larger blocks stay (not measured).
_BLOCK_ELEMENTS_CPU = 1 << 22
_BLOCK_ELEMENTS_GPU = 1 << 25


class NCF(Backbone):
    """NeuMF: score = w·[tower([e_u; e_v]); g_u ⊙ g_v] over a GMF table g and an MLP table e.

    The tower's first layer is linear in [e_u; e_v], so it is split into a user half and an item
    half that are applied once per entity: scoring all items then costs one broadcast add, not a
    (2·d_max)-wide product per pair.
    """

    def __init__(
        self, num_users: int, num_items: int, config: BackboneConfig, generator: torch.Generator
    ) -> None:
        super().__init__(num_users, num_items, config)
        device = generator.device
        rows, width = num_users + num_items, config.max_size
        self.gmf = MaskedEmbedding(rows, width, normal_initializer(0.01), generator)
        self.mlp = MaskedEmbedding(rows, width, normal_initializer(0.01), generator)
        widths = (2 * width, *config.mlp_layers)
        self.tower = nn.ModuleList(
            nn.Linear(w_in, w_out, device=device) for w_in, w_out in itertools.pairwise(widths)
        )
        self.predict = nn.Linear(config.mlp_layers[-1] + width, 1, device=device)
        for layer in [*self.tower, self.predict]:
            xavier_initializer(layer.weight, generator)
            nn.init.zeros_(layer.bias)

    def tables(self) -> tuple[MaskedEmbedding, ...]:
        return (self.gmf, self.mlp)

    def represent(self) -> Representation:
        """Returns (gmf users, gmf items, first-layer user half + bias, first-layer item half)."""
        gmf_all, mlp_all = self.gmf(), self.mlp()
        first = cast(nn.Linear, self.tower[0])
        mlp_width, full = mlp_all.shape[1], self.config.max_size
        user_part = F.linear(mlp_all[: self.num_users], first.weight[:, :mlp_width], first.bias)
        item_part = F.linear(mlp_all[self.num_users :], first.weight[:, full : full + mlp_width])
        return gmf_all[: self.num_users], gmf_all[self.num_users :], user_part, item_part

    def _tower_and_predict(
        self, first_layer: torch.Tensor, gmf_product: torch.Tensor
    ) -> torch.Tensor:
        hidden = F.relu(first_layer)
        for layer in self.tower[1:]:
            hidden = F.relu(layer(hidden))
        mlp_weight = self.predict.weight[0, : hidden.shape[-1]]
        gmf_weight = self.predict.weight[0, hidden.shape[-1] :][: gmf_product.shape[-1]]
        return hidden @ mlp_weight + gmf_product @ gmf_weight + self.predict.bias[0]

    def score_pairs(
        self, representation: Representation, users: torch.Tensor, items: torch.Tensor
    ) -> torch.Tensor:
        gmf_users, gmf_items, user_part, item_part = representation
        return self._tower_and_predict(
            gather_rows(user_part, users) + gather_rows(item_part, items),
            gather_rows(gmf_users, users) * gather_rows(gmf_items, items),
        )

    def score_all_items(self, representation: Representation, users: torch.Tensor) -> torch.Tensor:
        gmf_users, gmf_items, user_part, item_part = representation
        elements = _BLOCK_ELEMENTS_CPU if item_part.device.type == "cpu" else _BLOCK_ELEMENTS_GPU
        block = max(1, elements // (self.num_items * item_part.shape[1]))
        gmf_weight = self.predict.weight[0, self.config.mlp_layers[-1] :][: gmf_items.shape[1]]
        # The GMF half of the prediction is a dot product: fold its weight into the user side.
        gmf_scores = (gmf_users[users] * gmf_weight) @ gmf_items.T
        blocks = []
        for start in range(0, users.numel(), block):
            chunk = users[start : start + block]
            # In place: each activation is a fresh tensor, and the block's memory is the cost.
            hidden = (user_part[chunk].unsqueeze(1) + item_part.unsqueeze(0)).relu_()
            for layer in self.tower[1:]:
                hidden = layer(hidden).relu_()
            blocks.append(hidden @ self.predict.weight[0, : hidden.shape[-1]])
        return torch.cat(blocks) + gmf_scores + self.predict.bias[0]
