"""The backbone contract shared by LightGCN, NGCF and NCF.

Every backbone scores in two steps: :meth:`Backbone.represent` does the work that does not depend on
the batch (graph propagation, first-layer projections) once, and the scoring methods combine its
result for pairs (training) or for all items (evaluation). Embedding sizes are set for the user and
item rows of every masked table at once.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import nn

from ciess_core.errors import ConfigError
from ciess_core.models.masking import MaskedEmbedding
from ciess_core.models.rows import gather_rows
from ciess_core.sizes import SizeAssignment


class BackboneKind(enum.Enum):
    LIGHTGCN = "lightgcn"
    NGCF = "ngcf"
    NCF = "ncf"


@dataclass(frozen=True)
class BackboneConfig:
    """Hyper-parameters of a backbone (defaults: CIESS.md §2, from the authors' code).

    Attributes:
        kind: which backbone.
        max_size: d_max, the full embedding width.
        num_layers: propagation layers (LightGCN, NGCF).
        weight_decay: L2 coefficient on the batch's masked layer-0 embeddings.
        dropout: NGCF message dropout, training only.
        mlp_layers: NCF tower widths after the [user; item] input.
    """

    kind: BackboneKind = BackboneKind.LIGHTGCN
    max_size: int = 128
    num_layers: int = 3
    weight_decay: float = 1e-4
    dropout: float = 0.1
    mlp_layers: tuple[int, ...] = (64, 32, 16)

    def __post_init__(self) -> None:
        if self.max_size < 1:
            raise ConfigError(f"max_size must be >= 1, got {self.max_size}")
        if self.num_layers < 0:
            raise ConfigError(f"num_layers must be >= 0, got {self.num_layers}")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must lie in [0, 1), got {self.dropout}")
        if not self.mlp_layers or min(self.mlp_layers) < 1:
            raise ConfigError(f"mlp_layers must be positive widths, got {self.mlp_layers}")

    @classmethod
    def default_for(cls, kind: BackboneKind, **overrides: object) -> BackboneConfig:
        """Recommended defaults for ``kind``, with ``overrides`` applied: the authors' values,
        except L2 1e-3 for every backbone, as the shipped recipes (``ciess_core/recipes.toml``)
        have it. For NGCF that is the authors' value; for LightGCN and NCF it won the validation
        sweeps on ML-1M, where the authors' 1e-4 overfits at d_max 128
        (docs/benchmarks/backbones.md).
        """
        values: dict[str, object] = {"kind": kind, "weight_decay": 1e-3}
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]


Representation = tuple[torch.Tensor, ...]


class Backbone(nn.Module, ABC):
    """A latent-factor recommender whose embedding tables are masked per entity.

    Rows ``0..num_users-1`` of every table are users, the next ``num_items`` rows are items.
    """

    def __init__(self, num_users: int, num_items: int, config: BackboneConfig) -> None:
        super().__init__()
        self.num_users = num_users
        self.num_items = num_items
        self.config = config

    @property
    def num_entities(self) -> int:
        return self.num_users + self.num_items

    @property
    def max_size(self) -> int:
        return self.config.max_size

    @abstractmethod
    def tables(self) -> tuple[MaskedEmbedding, ...]:
        """The masked embedding tables, each (num_users + num_items, max_size)."""

    @abstractmethod
    def represent(self) -> Representation:
        """Batch-independent work (propagation, projections) for the current weights."""

    @abstractmethod
    def score_pairs(
        self, representation: Representation, users: torch.Tensor, items: torch.Tensor
    ) -> torch.Tensor:
        """Scores of (users[b], items[b]) pairs: (B,) from two (B,) int64 tensors."""

    @abstractmethod
    def score_all_items(self, representation: Representation, users: torch.Tensor) -> torch.Tensor:
        """Scores of every item for each user: (B, num_items) from (B,) int64 user ids."""

    def score_candidates(
        self, representation: Representation, users: torch.Tensor, items: torch.Tensor
    ) -> torch.Tensor:
        """Scores of a list of items per user: (B, m) from users (B,) and items (B, m)."""
        count, width = items.shape
        scores = self.score_pairs(representation, users.repeat_interleave(width), items.reshape(-1))
        return scores.view(count, width)

    def regularization(
        self, users: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor
    ) -> torch.Tensor:
        """L2 penalty on the batch's masked layer-0 embeddings: wd/2 · Σ‖e‖² / B."""
        rows = torch.cat([users, positives + self.num_users, negatives + self.num_users])
        squares = sum(table(rows).pow(2).sum() for table in self.tables())
        return self.config.weight_decay * 0.5 * squares / users.numel()

    def random_state(self) -> dict[str, torch.Tensor]:
        """The state of the model's own random draws in training (none here; NGCF's dropout):
        a training checkpoint keeps it so that a resumed training draws as the first would."""
        return {}

    def set_random_state(self, state: dict[str, torch.Tensor]) -> None:
        """Restore what :meth:`random_state` returned."""

    def turn_to_principal_axes(self) -> None:
        """Multiply the embedding tables by the orthogonal matrix of
        :func:`~ciess_core.models.rotation.principal_rotation`, which keeps every score, so that
        cutting an entity's embedding to a prefix drops the least of it. Only a backbone whose
        scores are kept by such a turn overrides this (LightGCN).

        Raises:
            ConfigError: this backbone's scores change when its tables are turned.
        """
        raise ConfigError(
            f"a {self.config.kind.value} model's scores change when its embedding tables are "
            "turned, so it cannot start from a turned teacher (LightGCN can)"
        )

    # -- sizes ---------------------------------------------------------------------------------
    def set_embedding_sizes(self, sizes: torch.Tensor, clear_truncated: bool = True) -> None:
        """Give every user and item a size: ``sizes`` is (N,) in [1, max_size], users first."""
        for table in self.tables():
            table.set_sizes(sizes, clear_truncated=clear_truncated)

    def embedding_sizes(self) -> torch.Tensor:
        """(num_users + num_items,) int64 sizes currently in force."""
        return self.tables()[0].sizes.clone()

    def set_size_assignment(self, assignment: SizeAssignment, clear_truncated: bool = True) -> None:
        """Give every user and item its size in ``assignment``, which must be of this model's
        users, items and ``max_size``."""
        shape = (assignment.num_users, assignment.num_items, assignment.max_size)
        if shape != (self.num_users, self.num_items, self.max_size):
            raise ConfigError(
                f"a size assignment of {shape[0]} users, {shape[1]} items and max size "
                f"{shape[2]} does not fit a model of {self.num_users}, {self.num_items} and "
                f"{self.max_size}"
            )
        sizes = torch.from_numpy(assignment.sizes.copy()).to(self.tables()[0].weight.device)
        self.set_embedding_sizes(sizes, clear_truncated=clear_truncated)

    def size_assignment(self) -> SizeAssignment:
        """The sizes currently in force."""
        sizes = self.embedding_sizes().to("cpu", torch.int64).numpy()
        return SizeAssignment.from_concatenated(sizes, self.num_users, self.max_size)

    def embedding_parameter_count(self) -> int:
        """Embedding parameters kept by the current sizes, over all tables."""
        return sum(table.parameter_count() for table in self.tables())

    def dense_embedding_parameter_count(self) -> int:
        """Embedding parameters of the same tables at full width."""
        return len(self.tables()) * self.num_entities * self.max_size

    def sparsity(self) -> float:
        """c(d) = 1 - kept / dense, over all embedding tables."""
        return 1.0 - self.embedding_parameter_count() / self.dense_embedding_parameter_count()


class DotProductBackbone(Backbone):
    """A backbone whose representation is (user vectors, item vectors) scored by dot product."""

    def score_pairs(
        self, representation: Representation, users: torch.Tensor, items: torch.Tensor
    ) -> torch.Tensor:
        user_vectors, item_vectors = representation
        return (gather_rows(user_vectors, users) * gather_rows(item_vectors, items)).sum(dim=-1)

    def score_all_items(self, representation: Representation, users: torch.Tensor) -> torch.Tensor:
        user_vectors, item_vectors = representation
        return gather_rows(user_vectors, users) @ item_vectors.T

    def score_candidates(
        self, representation: Representation, users: torch.Tensor, items: torch.Tensor
    ) -> torch.Tensor:
        user_vectors, item_vectors = representation  # each user's vector is read once
        return torch.einsum(
            "bw,bmw->bm", gather_rows(user_vectors, users), gather_rows(item_vectors, items)
        )


def normal_initializer(std: float):  # type: ignore[no-untyped-def]
    """An initializer drawing N(0, std²) from the given generator."""

    def initialize(weight: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return nn.init.normal_(weight, mean=0.0, std=std, generator=generator)

    return initialize


def xavier_initializer(weight: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Xavier-uniform initialisation from the given generator."""
    return nn.init.xavier_uniform_(weight, generator=generator)
