"""Exploration over sizes: Gaussian noise, the vectorised random walk and the critic's pick (§5).

One iteration's sizes for a side are ``explore(μ(s), ε, s, Q1, …)``: the noisy actor output
d̂ = μ(s) + ε is rounded and clipped to a start size, a walk over sizes from that start proposes
``walk_steps`` more candidates and Q1 picks the best of the ``walk_steps + 1``. Every array holds
one entry per entity and nothing loops over entities.

The search takes its exploration as an :class:`Exploration` (the paper's: :class:`GaussianWalk`);
the ablation's other noises and its search without the walk live in ``bench/experiments``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np
import torch

from ciess_core.errors import ConfigError
from ciess_core.search.config import SearchConfig

__all__ = [
    "Exploration",
    "GaussianNoise",
    "GaussianWalk",
    "NoiseProcess",
    "QFunction",
    "critic_pick",
    "explore",
    "neighbour_offsets",
    "random_walk",
    "start_sizes",
]

QFunction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""Maps (``(K, 3)`` states, ``(K,)`` float sizes) to ``(K,)`` Q values, e.g. ``Critic.q1``."""


class NoiseProcess(Protocol):
    """Per-entity exploration noise in size units."""

    def sample(self, rng: np.random.Generator) -> np.ndarray:
        """One ``(num_entities,)`` float64 draw."""
        ...

    def reset(self) -> None:
        """Forget any internal state (called at the start of every episode)."""
        ...


class GaussianNoise:
    """ε_n ~ N(0, std²), independent per entity and per draw (the paper's choice, std 6)."""

    def __init__(self, num_entities: int, std: float) -> None:
        self.num_entities = num_entities
        self.std = std

    def sample(self, rng: np.random.Generator) -> np.ndarray:
        return rng.normal(0.0, self.std, size=self.num_entities)

    def reset(self) -> None:
        """Stateless: nothing to forget."""


def start_sizes(policy_sizes: np.ndarray, noise: np.ndarray, max_size: int) -> np.ndarray:
    """round(clip(μ(s) + ε, 1, max_size)) as ``(N,)`` int64."""
    noisy = np.asarray(policy_sizes, dtype=np.float64) + np.asarray(noise, dtype=np.float64)
    return np.rint(np.clip(noisy, 1.0, max_size)).astype(np.int64)


def neighbour_offsets(radius: int) -> np.ndarray:
    """The ``(2·radius,)`` int64 size changes of one walk step: −radius … −1, 1 … radius."""
    magnitudes = np.arange(1, radius + 1, dtype=np.int64)
    return np.concatenate([-magnitudes[::-1], magnitudes])


def random_walk(
    start: np.ndarray, steps: int, radius: int, max_size: int, rng: np.random.Generator
) -> np.ndarray:
    """Walk ``steps`` steps over sizes from every start at once.

    Size d links to every d' with 0 < |d − d'| ≤ radius and 1 ≤ d' ≤ max_size (neighbours outside
    the range are dropped, not folded back), and a step moves to d' with probability ∝ 1/|d − d'|
    among the remaining neighbours. Each step samples all walkers by inverse CDF over a
    ``(N, 2·radius)`` weight matrix.

    Args:
        start: ``(N,)`` integer start sizes in [1, max_size].
        steps: number of steps (≥ 0).
        radius: largest size change of one step (≥ 1).
        max_size: d_max (≥ 2, so that every size has a neighbour).
        rng: draws the steps.

    Returns:
        ``(N, steps + 1)`` int64 candidates: column 0 is the start, column k the size after k steps.
    """
    current = np.asarray(start, dtype=np.int64)
    if current.ndim != 1:
        raise ConfigError(f"start must be 1-d, got shape {current.shape}")
    if current.size and (current.min() < 1 or current.max() > max_size):
        raise ConfigError(
            f"start sizes must lie in [1, {max_size}], got [{current.min()}, {current.max()}]"
        )
    if steps < 0 or radius < 1 or max_size < 2:
        raise ConfigError(
            f"need steps >= 0, radius >= 1 and max_size >= 2, got {steps}, {radius}, {max_size}"
        )
    offsets = neighbour_offsets(radius)
    base_weights = 1.0 / np.abs(offsets)
    rows = np.arange(current.size)
    candidates = [current]
    for _ in range(steps):
        targets = current[:, None] + offsets[None, :]
        valid = (targets >= 1) & (targets <= max_size)
        cumulative = np.cumsum(np.where(valid, base_weights, 0.0), axis=1)
        threshold = rng.random(current.size) * cumulative[:, -1]
        # The first column whose cumulative weight exceeds the threshold; a zero-weight column
        # never qualifies because its cumulative value equals its predecessor's.
        choice = np.sum(cumulative <= threshold[:, None], axis=1)
        # Guards the rare rounding where threshold == total: fall back to the last valid column.
        last_valid = valid.shape[1] - 1 - np.argmax(valid[:, ::-1], axis=1)
        choice = np.minimum(choice, last_valid)
        current = targets[rows, choice]
        candidates.append(current)
    return np.stack(candidates, axis=1)


def critic_pick(
    critic_q1: QFunction,
    states: np.ndarray,
    candidates: np.ndarray,
    device: torch.device,
    chunk_size: int = 65_536,
) -> np.ndarray:
    """For every entity, the candidate size with the largest Q1 (the first one on ties).

    Args:
        critic_q1: the critic's first head, called on at most ``chunk_size`` (state, size) rows.
        states: ``(N, 3)`` states.
        candidates: ``(N, K)`` integer candidate sizes.
        device: where ``critic_q1`` runs.
        chunk_size: rows per critic call, bounding the memory of the hidden activations.

    Returns:
        ``(N,)`` int64 chosen sizes.
    """
    candidates = np.asarray(candidates, dtype=np.int64)
    num_entities, num_candidates = candidates.shape
    if np.shape(states) != (num_entities, 3):
        raise ConfigError(f"states must have shape ({num_entities}, 3), got {np.shape(states)}")
    entities_per_chunk = max(1, chunk_size // num_candidates)
    best = np.empty(num_entities, dtype=np.int64)
    with torch.no_grad():
        for begin in range(0, num_entities, entities_per_chunk):
            end = min(begin + entities_per_chunk, num_entities)
            chunk_states = torch.as_tensor(states[begin:end], dtype=torch.float32, device=device)
            chunk_sizes = torch.as_tensor(candidates[begin:end], dtype=torch.float32, device=device)
            q = critic_q1(
                chunk_states.repeat_interleave(num_candidates, dim=0), chunk_sizes.reshape(-1)
            )
            best[begin:end] = q.reshape(end - begin, num_candidates).argmax(dim=1).cpu().numpy()
    return candidates[np.arange(num_entities), best]


def explore(
    policy_sizes: np.ndarray,
    noise: np.ndarray,
    states: np.ndarray,
    critic_q1: QFunction,
    config: SearchConfig,
    rng: np.random.Generator,
    device: torch.device,
) -> np.ndarray:
    """One side's sizes for an iteration, ``(N,)`` int64 in [1, d_max]: the random walk from the
    noisy actor output, scored by the critic.

    Args:
        policy_sizes: ``(N,)`` actor outputs μ(s).
        noise: ``(N,)`` exploration noise ε (e.g. from a :class:`NoiseProcess`).
        states: ``(N, 3)`` current states.
        critic_q1: the side's critic head Q1.
        config: supplies ``walk_steps``, ``walk_radius`` and ``max_size``.
        rng: draws the random walk.
        device: where ``critic_q1`` runs.
    """
    start = start_sizes(policy_sizes, noise, config.max_size)
    candidates = random_walk(start, config.walk_steps, config.walk_radius, config.max_size, rng)
    return critic_pick(critic_q1, states, candidates, device)


class Exploration(Protocol):
    """How an iteration's sizes come from the actor's: the search's extension point for
    exploration (:func:`~ciess_core.search.loop.run_search`)."""

    def noise(self, num_entities: int, config: SearchConfig) -> NoiseProcess:
        """A fresh noise process for a side of ``num_entities`` users or items."""
        ...

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
        """One side's ``(N,)`` int64 sizes in [1, d_max] (arguments as :func:`explore`'s)."""
        ...


class GaussianWalk:
    """The paper's exploration (spec §5): ε_n ~ N(0, ``exploration_scale``²) per entity, then the
    random walk scored by the critic (:func:`explore`)."""

    def noise(self, num_entities: int, config: SearchConfig) -> NoiseProcess:
        return GaussianNoise(num_entities, config.exploration_scale)

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
        return explore(policy_sizes, noise, states, critic_q1, config, rng, device)
