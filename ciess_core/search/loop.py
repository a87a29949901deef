"""The CIESS episode loop (Algorithm 1), resumable from checkpoints at episode boundaries.

Each iteration: the users' and items' actors propose sizes, exploration (noise, random walk and the
critic's pick) perturbs them, the evaluator scores the whole assignment on validation, rewards and
next states follow, transitions go to each side's replay buffer and each side's TD3 agent makes
one update. Every assignment is offered to the pool of the best per budget.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ciess_core.errors import ConfigError
from ciess_core.search.config import SearchConfig
from ciess_core.search.evaluators import QualityEvaluator
from ciess_core.search.exploration import NoiseProcess, explore, make_noise
from ciess_core.search.penalty import adjust_penalty, reward_scale
from ciess_core.search.pool import AssignmentPool
from ciess_core.search.replay import ReplayBuffer
from ciess_core.search.state import entity_states, quality_ratio, reward
from ciess_core.search.td3 import TD3Agent, build_agent, policy_sizes, update
from ciess_core.sizes import sparsity

logger = logging.getLogger(__name__)

SIDES = ("users", "items")
CHECKPOINT_VERSION = 1


@dataclass(frozen=True)
class SearchInputs:
    """What the search knows about the data, per side (users first, then items).

    Attributes:
        popularity: side -> (N_side,) training interaction counts.
        full_quality: side -> (N_side,) eval of the full-size model on validation (the
            denominators of the quality ratio).
    """

    popularity: dict[str, np.ndarray]
    full_quality: dict[str, np.ndarray]

    def __post_init__(self) -> None:
        for side in SIDES:
            if self.popularity[side].shape != self.full_quality[side].shape:
                raise ConfigError(
                    f"{side}: popularity {self.popularity[side].shape} and full quality "
                    f"{self.full_quality[side].shape} must have one length"
                )

    @property
    def num_users(self) -> int:
        return len(self.popularity["users"])

    @property
    def num_items(self) -> int:
        return len(self.popularity["items"])


@dataclass
class _SideState:
    agent: TD3Agent
    buffer: ReplayBuffer
    noise: NoiseProcess
    updates: int = 0


@dataclass
class SearchOutcome:
    """The pool of the best assignments per budget and the per-iteration trace."""

    pool: AssignmentPool
    trace: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


def _initial_states(inputs: SearchInputs, max_size: int) -> dict[str, np.ndarray]:
    # All sizes start at d_max, where the quality ratio is 1 by definition.
    return {
        side: entity_states(
            inputs.popularity[side],
            np.full(len(inputs.popularity[side]), max_size),
            np.ones(len(inputs.popularity[side])),
        )
        for side in SIDES
    }


def _build_sides(config: SearchConfig, inputs: SearchInputs) -> dict[str, _SideState]:
    device = torch.device(config.device)
    sides = {}
    for offset, side in enumerate(SIDES):
        generator = torch.Generator(device=device).manual_seed(config.seed + offset)
        count = len(inputs.popularity[side])
        sides[side] = _SideState(
            agent=build_agent(config, generator, device),
            buffer=ReplayBuffer(config.replay_capacity(count)),
            noise=make_noise(
                config.exploration_noise, count, config.exploration_scale, config.ou_theta
            ),
        )
    return sides


def _save_checkpoint(
    directory: Path,
    episode: int,
    sides: dict[str, _SideState],
    pool: AssignmentPool,
    rng: np.random.Generator,
    trace: list[dict[str, Any]],
    penalty: float,
) -> None:
    """Write the whole search state after ``episode`` episodes, replacing the old checkpoint."""
    staging = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for side, state in sides.items():
        agent = state.agent
        torch.save(
            {
                "actor": agent.actor.state_dict(),
                "critic": agent.critic.state_dict(),
                "target_actor": agent.target_actor.state_dict(),
                "target_critic": agent.target_critic.state_dict(),
                "actor_optimizer": agent.actor_optimizer.state_dict(),
                "critic_optimizer": agent.critic_optimizer.state_dict(),
                "noise_generator": agent.generator.get_state(),
                "updates": state.updates,
            },
            staging / f"agent_{side}.pt",
        )
        np.savez(staging / f"replay_{side}.npz", **state.buffer.state_dict())  # type: ignore[arg-type]
    pool.save(staging / "pool")
    meta = {
        "version": CHECKPOINT_VERSION,
        "episodes_done": episode,
        "rng": rng.bit_generator.state,
        "trace_length": len(trace),
        "penalty": penalty,
    }
    (staging / "checkpoint.json").write_text(json.dumps(meta, indent=1))
    backup = directory.with_name(directory.name + ".old")
    shutil.rmtree(backup, ignore_errors=True)
    if directory.exists():
        os.replace(directory, backup)
    os.replace(staging, directory)
    shutil.rmtree(backup, ignore_errors=True)


def _load_checkpoint(
    directory: Path, sides: dict[str, _SideState], rng: np.random.Generator, penalty: float
) -> tuple[int, AssignmentPool, int, float]:
    meta = json.loads((directory / "checkpoint.json").read_text())
    if meta.get("version") != CHECKPOINT_VERSION:
        raise ConfigError(
            f"{directory / 'checkpoint.json'}: unknown checkpoint version {meta.get('version')}"
        )
    for side, state in sides.items():
        saved = torch.load(directory / f"agent_{side}.pt", weights_only=True)
        agent = state.agent
        agent.actor.load_state_dict(saved["actor"])
        agent.critic.load_state_dict(saved["critic"])
        agent.target_actor.load_state_dict(saved["target_actor"])
        agent.target_critic.load_state_dict(saved["target_critic"])
        agent.actor_optimizer.load_state_dict(saved["actor_optimizer"])
        agent.critic_optimizer.load_state_dict(saved["critic_optimizer"])
        agent.generator.set_state(saved["noise_generator"])
        state.updates = int(saved["updates"])
        with np.load(directory / f"replay_{side}.npz") as arrays:
            state.buffer.load_state_dict(dict(arrays))
    rng.bit_generator.state = meta["rng"]
    pool = AssignmentPool.load(directory / "pool")
    # Checkpoints from before the per-budget penalty hold no λ: it was the fixed one.
    return int(meta["episodes_done"]), pool, meta["trace_length"], meta.get("penalty", penalty)


def _policy_rollout(
    config: SearchConfig,
    inputs: SearchInputs,
    evaluator: QualityEvaluator,
    sides: dict[str, _SideState],
    states: dict[str, np.ndarray],
    pool: AssignmentPool,
    device: torch.device,
) -> dict[str, Any]:
    """Score the actors' own sizes from the episode's last states, without exploration.

    The assignment goes to the pool like any other; nothing goes to the replay buffers and no
    network is updated, so the search itself is the same with or without rollouts.
    """
    started = time.perf_counter()
    sizes = {
        side: np.clip(
            np.rint(policy_sizes(state.agent.actor, states[side], device)), 1, config.max_size
        ).astype(np.int64)
        for side, state in sides.items()
    }
    assignment = np.concatenate([sizes["users"], sizes["items"]])
    signal = evaluator.evaluate(assignment)
    evals = {"users": signal.user_eval, "items": signal.item_eval}
    row: dict[str, Any] = {"iteration": config.iterations_per_episode + 1, "kind": "policy"}
    qualities = []
    for side in SIDES:
        quality = quality_ratio(evals[side], inputs.full_quality[side])
        qualities.append(quality)
        row[f"{side}_mean_size"] = float(sizes[side].mean())
        row[f"{side}_mean_quality"] = float(quality.mean())
    mean_quality = float(np.concatenate(qualities).mean())
    row.update(
        mean_quality=mean_quality,
        sparsity=sparsity(assignment, config.max_size),
        pooled_for=pool.offer(assignment, mean_quality),
        metrics=signal.metrics,
        seconds=round(time.perf_counter() - started, 3),
    )
    return row


def run_search(
    config: SearchConfig,
    inputs: SearchInputs,
    evaluator: QualityEvaluator,
    *,
    checkpoint_dir: Path | None = None,
    trace_path: Path | None = None,
    progress: bool = True,
    on_iteration: Callable[[dict[str, Any]], None] | None = None,
) -> SearchOutcome:
    """Run the CIESS search; resume from ``checkpoint_dir`` if it holds a checkpoint.

    Every iteration appends one JSON line to ``trace_path`` (episode, iteration, kind, reward,
    mean sizes, sparsity, λ, validation metrics, seconds); with ``config.policy_rollouts`` every
    episode ends with one more line of kind ``policy`` (see :func:`_policy_rollout`). Checkpoints
    are written after every episode.
    """
    started = time.perf_counter()
    rng = np.random.default_rng(config.seed)
    sides = _build_sides(config, inputs)
    pool = AssignmentPool(config.budgets, config.pool_size, config.max_size)
    first_episode, trace, penalty = 0, [], config.reward_penalty
    if checkpoint_dir is not None and (checkpoint_dir / "checkpoint.json").exists():
        first_episode, pool, trace_length, penalty = _load_checkpoint(
            checkpoint_dir, sides, rng, penalty
        )
        if trace_path is not None and trace_path.exists():
            lines = trace_path.read_text().splitlines()[:trace_length]
            trace = [json.loads(line) for line in lines]
            trace_path.write_text("".join(line + "\n" for line in lines))
        logger.info("resuming the search after episode %d", first_episode)
    elif trace_path is not None:
        trace_path.write_text("")

    def record(row: dict[str, Any]) -> None:
        """Keep ``row`` in the trace, append it to ``trace_path`` and report it."""
        trace.append(row)
        if trace_path is not None:
            with trace_path.open("a") as handle:
                handle.write(json.dumps(row) + "\n")
        if on_iteration is not None:
            on_iteration(row)

    evaluator.prepare()
    device = torch.device(config.device)
    total = config.total_episodes * config.iterations_per_episode
    bar = tqdm(
        total=total,
        initial=first_episode * config.iterations_per_episode,
        desc="search",
        unit="it",
        disable=not progress,
    )
    for episode in range(first_episode, config.total_episodes):
        target = config.phase_budget(episode)
        states = _initial_states(inputs, config.max_size)
        for state in sides.values():
            state.noise.reset()
        for iteration in range(config.iterations_per_episode):
            iteration_started = time.perf_counter()
            sizes = {}
            for side, state in sides.items():
                proposed = policy_sizes(state.agent.actor, states[side], device)
                sizes[side] = explore(
                    proposed,
                    state.noise.sample(rng),
                    states[side],
                    state.agent.critic.q1,
                    config,
                    rng,
                    device,
                )
            assignment = np.concatenate([sizes["users"], sizes["items"]])
            signal = evaluator.evaluate(assignment)
            evals = {"users": signal.user_eval, "items": signal.item_eval}
            row: dict[str, Any] = {
                "episode": episode + 1,
                "iteration": iteration + 1,
                "kind": "explore",
            }
            qualities = []
            for side, state in sides.items():
                quality = quality_ratio(evals[side], inputs.full_quality[side])
                rewards = reward(quality, sizes[side], config.max_size, penalty) * reward_scale(
                    config.penalty_control, penalty
                )
                next_states = entity_states(inputs.popularity[side], sizes[side], quality)
                state.buffer.add(states[side], sizes[side], rewards, next_states)
                losses = update(
                    state.agent, state.buffer.sample(config.batch_size, rng), state.updates
                )
                state.updates += 1
                states[side] = next_states
                qualities.append(quality)
                row[f"{side}_mean_size"] = float(sizes[side].mean())
                row[f"{side}_mean_reward"] = float(rewards.mean())
                row[f"{side}_mean_quality"] = float(quality.mean())
                row[f"{side}_critic_loss"] = losses["critic_loss"]
            mean_quality = float(np.concatenate(qualities).mean())
            entered = pool.offer(assignment, mean_quality)
            achieved = sparsity(assignment, config.max_size)
            row.update(
                mean_quality=mean_quality,
                sparsity=achieved,
                penalty=penalty,
                target_sparsity=target,
                pooled_for=entered,
                metrics=signal.metrics,
                seconds=round(time.perf_counter() - iteration_started, 3),
            )
            record(row)
            if target is not None:
                penalty = adjust_penalty(penalty, target, achieved, config.penalty_step)
            bar.update(1)
            bar.set_postfix(sparsity=f"{achieved:.3f}", quality=f"{mean_quality:.3f}")
        if config.policy_rollouts:
            row = _policy_rollout(config, inputs, evaluator, sides, states, pool, device)
            row.update(episode=episode + 1, penalty=penalty, target_sparsity=target)
            record(row)
        if checkpoint_dir is not None:
            _save_checkpoint(checkpoint_dir, episode + 1, sides, pool, rng, trace, penalty)
    bar.close()
    return SearchOutcome(pool=pool, trace=trace, seconds=time.perf_counter() - started)
