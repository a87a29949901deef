"""Configuration of the CIESS search (spec §4–6), frozen and validated once at the edge."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from ciess_core.checks import check_device, check_seed
from ciess_core.errors import ConfigError
from ciess_core.sizes import check_target_sparsity

__all__ = ["ItemQuality", "SearchConfig"]


class ItemQuality(enum.Enum):
    """What an item's quality q_n measures.

    - ``users`` (the paper's, spec §4): the mean eval of the users who interacted with the item in
      training. Under a fixed-weight evaluator it hardly moves with the item's own size, so the
      size penalty alone drives every item towards size 1 (docs/benchmarks/ciess-ml-1m.md).
    - ``own`` (the default): how well the item itself is ranked for its validation users: the
      mean, over the item's validation interactions (u, n), of [n in u's top-k] and
      [n in u's top-k] /
      log2(rank + 2) for k in 5/10/20 (the item-side counterparts of Recall and NDCG). It falls
      when the item's own vector is cut. Items without validation interactions get 0.
    """

    USERS = "users"
    OWN = "own"


@dataclass(frozen=True)
class SearchConfig:
    """Hyperparameters of the RL size search; defaults are the paper's (CIESS.md §4–6) except
    ``item_quality``, whose default ``own`` measured better (docs/benchmarks/ciess-ml-1m.md).

    Attributes:
        num_episodes: episodes M; every episode restarts from full sizes.
        iterations_per_episode: iterations T per episode (one size assignment each).
        reward_penalty: λ in r = q − λ·(d/d_max)²; 0.4 on ML-1M, 0.2 on Yelp2018.
        max_size: d_max, the full embedding size; actions are integer sizes in [1, max_size].
        hidden_size: width of the two hidden layers of the actor and of each Q head.
        actor_learning_rate: Adam learning rate of the actor.
        critic_learning_rate: Adam learning rate of the twin critic.
        gamma: discount factor γ of the TD target.
        tau: Polyak factor τ of the soft target update, θ' ← τ·θ + (1 − τ)·θ'.
        policy_delay: the actor and the targets are updated on every ``policy_delay``-th critic
            update.
        target_noise_std: standard deviation, in size units, of the target-policy smoothing noise.
        target_noise_clip: the smoothing noise is clipped to ±this (size units).
        grad_norm_clip: maximum global gradient norm of each critic and actor step.
        replay_capacity_factor: a side's replay buffer holds this many × its number of entities.
        batch_size: transitions per TD3 minibatch.
        exploration_scale: standard deviation of the Gaussian exploration noise, in size units.
        walk_steps: number of random-walk steps (candidates = start + this many visited sizes).
        walk_radius: size d links to every d' with 0 < |d − d'| ≤ walk_radius.
        pool_size: l, the number of assignments kept per budget for selective retraining.
        item_quality: what an item's quality measures (see :class:`ItemQuality`).
        budgets: target sparsities c for which the pool keeps the best assignments.
        seed: seeds the networks' initialisation, exploration and replay sampling.
        device: "cpu" or "cuda" (or "cuda:N") for the actor–critic networks.
    """

    num_episodes: int = 30
    iterations_per_episode: int = 10
    reward_penalty: float = 0.4
    max_size: int = 128
    hidden_size: int = 256
    actor_learning_rate: float = 1e-3
    critic_learning_rate: float = 3e-3
    gamma: float = 0.99
    tau: float = 0.005
    policy_delay: int = 2
    target_noise_std: float = 2.0
    target_noise_clip: float = 5.0
    grad_norm_clip: float = 0.01
    replay_capacity_factor: int = 100
    batch_size: int = 4096
    exploration_scale: float = 6.0
    walk_steps: int = 5
    walk_radius: int = 5
    pool_size: int = 3
    item_quality: ItemQuality = ItemQuality.OWN
    budgets: tuple[float, ...] = (0.8, 0.9, 0.95)
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        at_least_one = {
            "num_episodes": self.num_episodes,
            "iterations_per_episode": self.iterations_per_episode,
            "hidden_size": self.hidden_size,
            "policy_delay": self.policy_delay,
            "replay_capacity_factor": self.replay_capacity_factor,
            "batch_size": self.batch_size,
            "walk_steps": self.walk_steps,
            "walk_radius": self.walk_radius,
            "pool_size": self.pool_size,
        }
        for name, value in at_least_one.items():
            if value < 1:
                raise ConfigError(f"{name} must be >= 1, got {value}")
        if self.max_size < 2:
            raise ConfigError(f"max_size must be >= 2, got {self.max_size}")
        strictly_positive = {
            "actor_learning_rate": self.actor_learning_rate,
            "critic_learning_rate": self.critic_learning_rate,
            "grad_norm_clip": self.grad_norm_clip,
        }
        non_negative = {
            "reward_penalty": self.reward_penalty,
            "target_noise_std": self.target_noise_std,
            "target_noise_clip": self.target_noise_clip,
            "exploration_scale": self.exploration_scale,
        }
        for name, number in strictly_positive.items():
            if not (math.isfinite(number) and number > 0):
                raise ConfigError(f"{name} must be a finite number > 0, got {number}")
        for name, number in non_negative.items():
            if not (math.isfinite(number) and number >= 0):
                raise ConfigError(f"{name} must be a finite number >= 0, got {number}")
        if not 0 <= self.gamma <= 1:
            raise ConfigError(f"gamma must lie in [0, 1], got {self.gamma}")
        if not 0 < self.tau <= 1:
            raise ConfigError(f"tau must lie in (0, 1], got {self.tau}")
        if not isinstance(self.item_quality, ItemQuality):
            raise ConfigError(
                f"item_quality must be one of {[kind.value for kind in ItemQuality]}, "
                f"got {self.item_quality!r}"
            )
        if not self.budgets:
            raise ConfigError("budgets must name at least one target sparsity, got ()")
        for budget in self.budgets:
            try:
                check_target_sparsity(budget, self.max_size)
            except ConfigError as error:
                raise ConfigError(f"budgets: {error}") from None
        if len(set(self.budgets)) != len(self.budgets):
            raise ConfigError(f"budgets must be distinct, got {self.budgets}")
        check_device(self.device)
        check_seed(self.seed)

    def replay_capacity(self, num_entities: int) -> int:
        """Replay capacity of a side with ``num_entities`` users or items."""
        if num_entities < 1:
            raise ConfigError(f"num_entities must be >= 1, got {num_entities}")
        return self.replay_capacity_factor * num_entities
