"""Training configuration (frozen, validated once at the edge)."""

from __future__ import annotations

from dataclasses import dataclass

from ciess_core.checks import check_device, check_seed
from ciess_core.errors import ConfigError
from ciess_core.storage import ValueType

#: The least learning rate a schedule decays to, unless the learning rate itself is lower.
MIN_LEARNING_RATE = 1e-3


@dataclass(frozen=True)
class TrainConfig:
    """BPR training schedule (defaults follow the authors' code, CIESS.md §2).

    Attributes:
        batch_size: sampled users per batch, one positive and one negative each.
        max_batches: upper bound on training batches.
        learning_rate: Adam's initial learning rate.
        lr_decay: factor applied every ``lr_decay_every`` batches.
        lr_decay_every: batches between decays.
        min_learning_rate: floor of the decayed learning rate.
        eval_every: batches between evaluations on the held-out matrix (0: never evaluate).
        patience: evaluations without improvement before stopping early.
        selection_metric: the held-out metric that picks the best checkpoint.
        seed: seeds the initialisation, sampling and dropout.
        device: "cpu" or "cuda" (or "cuda:N").
        eval_users_per_chunk: users scored at once during evaluation.
        value_type: how the model's tables will be stored (:data:`ciess_core.storage.VALUE_TYPES`);
            every evaluation (validation, test) scores the tables as that store decodes them, so
            that early stopping and selection see the model that will be served.
    """

    batch_size: int = 10_000
    max_batches: int = 3_000
    learning_rate: float = 0.03
    lr_decay: float = 0.9
    lr_decay_every: int = 200
    min_learning_rate: float = MIN_LEARNING_RATE
    eval_every: int = 200
    patience: int = 3
    selection_metric: str = "ndcg@20"
    seed: int = 42
    device: str = "cpu"
    eval_users_per_chunk: int = 2048
    value_type: str = "float32"

    def __post_init__(self) -> None:
        positive = {
            "batch_size": self.batch_size,
            "max_batches": self.max_batches,
            "lr_decay_every": self.lr_decay_every,
            "patience": self.patience,
            "eval_users_per_chunk": self.eval_users_per_chunk,
        }
        for name, value in positive.items():
            if value < 1:
                raise ConfigError(f"{name} must be >= 1, got {value}")
        if self.eval_every < 0:
            raise ConfigError(f"eval_every must be >= 0, got {self.eval_every}")
        if not 0 < self.min_learning_rate <= self.learning_rate:
            raise ConfigError(
                f"need 0 < min_learning_rate <= learning_rate, got {self.min_learning_rate} "
                f"and {self.learning_rate}"
            )
        if not 0 < self.lr_decay <= 1:
            raise ConfigError(f"lr_decay must lie in (0, 1], got {self.lr_decay}")
        ValueType(self.value_type)  # raises ConfigError naming the choices
        check_device(self.device)
        check_seed(self.seed)

    def learning_rate_at(self, batch: int) -> float:
        """Learning rate in force for the 0-based ``batch``."""
        decayed = self.learning_rate * self.lr_decay ** (batch // self.lr_decay_every)
        return max(decayed, self.min_learning_rate)
