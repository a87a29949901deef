"""The exploration ablation (spec §8): other noises before the random walk, and no walk at all.

Measured on ML-1M, LightGCN, budget 0.90 (docs/benchmarks/ciess-ml-1m-experiments.md): Gaussian
noise with the walk 0.3713 test N@20, without the walk 0.3702, uniform noise 0.3624, OU 0.3418.
The paper's Gaussian walk stays the core's (:class:`~ciess_core.search.exploration.GaussianWalk`);
these variants plug into ``SearchHooks.exploration``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ciess_core.errors import ConfigError
from ciess_core.search.config import SearchConfig
from ciess_core.search.exploration import (
    Exploration,
    GaussianWalk,
    NoiseProcess,
    QFunction,
    start_sizes,
)

__all__ = [
    "VARIANTS",
    "NoWalk",
    "OrnsteinUhlenbeckNoise",
    "OrnsteinUhlenbeckWalk",
    "UniformNoise",
    "UniformWalk",
]


class UniformNoise:
    """ε_n ~ U(−half_width, half_width), independent per entity and per draw."""

    def __init__(self, num_entities: int, half_width: float) -> None:
        self.num_entities = num_entities
        self.half_width = half_width

    def sample(self, rng: np.random.Generator) -> np.ndarray:
        return rng.uniform(-self.half_width, self.half_width, size=self.num_entities)

    def reset(self) -> None:
        """Stateless: nothing to forget."""


class OrnsteinUhlenbeckNoise:
    """Ornstein–Uhlenbeck noise per entity: x ← x − θ·x + σ·N(0, 1), starting from 0.

    Successive draws of one entity are correlated across the iterations of an episode; ``reset``
    returns every entity to 0. The stationary standard deviation is σ / √(θ(2 − θ)).
    """

    def __init__(self, num_entities: int, sigma: float, theta: float) -> None:
        self.num_entities = num_entities
        self.sigma = sigma
        self.theta = theta
        self.state = np.zeros(num_entities, dtype=np.float64)

    def sample(self, rng: np.random.Generator) -> np.ndarray:
        self.state = (
            self.state
            - self.theta * self.state
            + self.sigma * rng.standard_normal(self.num_entities)
        )
        return self.state.copy()

    def reset(self) -> None:
        self.state = np.zeros(self.num_entities, dtype=np.float64)


class UniformWalk(GaussianWalk):
    """Uniform noise of half-width ``exploration_scale``, then the paper's walk."""

    def noise(self, num_entities: int, config: SearchConfig) -> NoiseProcess:
        return UniformNoise(num_entities, config.exploration_scale)


@dataclass(frozen=True)
class OrnsteinUhlenbeckWalk(GaussianWalk):
    """OU noise with σ = ``exploration_scale`` and mean reversion ``theta``, then the walk."""

    theta: float = 0.15

    def __post_init__(self) -> None:
        if not (math.isfinite(self.theta) and 0 < self.theta <= 1):
            raise ConfigError(f"theta must lie in (0, 1], got {self.theta}")

    def noise(self, num_entities: int, config: SearchConfig) -> NoiseProcess:
        return OrnsteinUhlenbeckNoise(num_entities, config.exploration_scale, self.theta)


class NoWalk(GaussianWalk):
    """Gaussian noise, and no walk: the noisy actor output, rounded and clipped, is the size
    (the critic picks nothing)."""

    def sizes(
        self,
        policy_sizes: np.ndarray,
        noise: np.ndarray,
        states: np.ndarray,
        critic_q1: QFunction,
        config: SearchConfig,
        rng: np.random.Generator,
        device: torch.device,
    ) -> np.ndarray:
        return start_sizes(policy_sizes, noise, config.max_size)


#: The ablation's variants by the names its report rows carry.
VARIANTS: dict[str, Exploration] = {
    "walk-gaussian": GaussianWalk(),
    "no-walk": NoWalk(),
    "walk-ou": OrnsteinUhlenbeckWalk(),
    "walk-uniform": UniformWalk(),
}
