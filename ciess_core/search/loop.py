"""The CIESS episode loop (Algorithm 1), resumable from checkpoints at episode boundaries.

Each iteration: the users' and items' actors propose sizes, exploration (noise, random walk and the
critic's pick) perturbs them, the evaluator scores the whole assignment on validation, rewards and
next states follow, transitions go to each side's replay buffer and each side's TD3 agent makes
one update. Every assignment is offered to the pool of the best per budget.

:class:`SearchHooks` are the loop's extension points for experiments (``bench/experiments``): the
exploration and the reward's size penalty, both the paper's by default.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from tqdm.auto import tqdm

from ciess_core.errors import ConfigError
from ciess_core.search.config import SearchConfig
from ciess_core.search.evaluators import QualityEvaluator
from ciess_core.search.exploration import Exploration, GaussianWalk, NoiseProcess
from ciess_core.search.pool import AssignmentPool
from ciess_core.search.replay import ReplayBuffer
from ciess_core.search.state import entity_states, quality_ratio, reward
from ciess_core.search.td3 import TD3Agent, build_agent, policy_sizes, update
from ciess_core.sizes import SizeAssignment
from ciess_core.staged_files import staged_file

logger = logging.getLogger(__name__)

SIDES = ("users", "items")
CHECKPOINT_VERSION = 1
CHECKPOINT_FILE = "checkpoint.json"


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


class Penalty(NamedTuple):
    """The size penalty of one iteration's rewards: r = scale·(q − weight·(d/d_max)²)."""

    weight: float
    scale: float = 1.0


PenaltySchedule = Callable[[int, Sequence[Mapping[str, Any]]], Penalty]
"""Maps (0-based episode, the trace rows so far) to the next iteration's :class:`Penalty`."""


@dataclass(frozen=True)
class SearchHooks:
    """The search's extension points; the defaults are the paper's (spec §4–5).

    Attributes:
        exploration: how an iteration's sizes come from the actors' (Gaussian noise, then the
            random walk scored by the critic).
        penalty: the reward's size penalty for each iteration (None: λ =
            ``SearchConfig.reward_penalty`` throughout). It sees the trace so far, restored with
            the trace file when a search resumes, so that a schedule needs no state of its own.
    """

    exploration: Exploration = field(default_factory=GaussianWalk)
    penalty: PenaltySchedule | None = None


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


def _build_sides(
    config: SearchConfig, inputs: SearchInputs, exploration: Exploration
) -> dict[str, _SideState]:
    device = torch.device(config.device)
    sides = {}
    for offset, side in enumerate(SIDES):
        generator = torch.Generator(device=device).manual_seed(config.seed + offset)
        count = len(inputs.popularity[side])
        sides[side] = _SideState(
            agent=build_agent(config, generator, device),
            buffer=ReplayBuffer(config.replay_capacity(count)),
            noise=exploration.noise(count, config),
        )
    return sides


def _save_checkpoint(
    directory: Path,
    episode: int,
    sides: dict[str, _SideState],
    pool: AssignmentPool,
    rng: np.random.Generator,
    trace: list[dict[str, Any]],
) -> None:
    """Write the whole search state after ``episode`` episodes, replacing the old checkpoint."""
    staging = _staging_of(directory)
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
    }
    # last, and whole: a staged checkpoint that has this file is complete
    with staged_file(staging / CHECKPOINT_FILE) as meta_staging:
        meta_staging.write_text(json.dumps(meta, indent=1))
    backup = _backup_of(directory)
    shutil.rmtree(backup, ignore_errors=True)
    if directory.exists():
        os.replace(directory, backup)
    os.replace(staging, directory)
    shutil.rmtree(backup, ignore_errors=True)


def _staging_of(directory: Path) -> Path:
    return directory.with_name(directory.name + ".tmp")


def _backup_of(directory: Path) -> Path:
    return directory.with_name(directory.name + ".old")


def _has_checkpoint(directory: Path) -> bool:
    """Whether ``directory`` holds a checkpoint, once a swap that a process died in between its
    two renames (the old checkpoint to its backup, the staged one into place) is finished: with
    ``directory`` missing, the staged checkpoint takes its place when it is complete (it has its
    ``checkpoint.json``, written last), else the backup does."""
    if not directory.exists():
        for kept in (_staging_of(directory), _backup_of(directory)):
            if (kept / CHECKPOINT_FILE).is_file():
                logger.warning("the checkpoint %s is missing: restoring %s", directory, kept)
                os.replace(kept, directory)
                break
    return (directory / CHECKPOINT_FILE).is_file()


def _load_checkpoint(
    directory: Path, sides: dict[str, _SideState], rng: np.random.Generator
) -> tuple[int, AssignmentPool, int]:
    meta = json.loads((directory / CHECKPOINT_FILE).read_text())
    if meta.get("version") != CHECKPOINT_VERSION:
        raise ConfigError(
            f"{directory / CHECKPOINT_FILE}: unknown checkpoint version {meta.get('version')}"
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
    return int(meta["episodes_done"]), pool, meta["trace_length"]


def run_search(
    config: SearchConfig,
    inputs: SearchInputs,
    evaluator: QualityEvaluator,
    *,
    hooks: SearchHooks | None = None,
    checkpoint_dir: Path | None = None,
    trace_path: Path | None = None,
    progress: bool = True,
    on_iteration: Callable[[dict[str, Any]], None] | None = None,
) -> SearchOutcome:
    """Run the CIESS search; resume from ``checkpoint_dir`` if it holds a checkpoint.

    Every iteration appends one JSON line to ``trace_path`` (episode, iteration, reward, mean
    sizes, sparsity, λ, validation metrics, seconds). Checkpoints are written after every episode.
    ``hooks``: the exploration and the size penalty (None: the paper's).
    """
    hooks = hooks or SearchHooks()
    if hooks.penalty is not None and checkpoint_dir is not None and trace_path is None:
        raise ConfigError("a penalty schedule resumes from the trace: give trace_path too")
    started = time.perf_counter()
    rng = np.random.default_rng(config.seed)
    sides = _build_sides(config, inputs, hooks.exploration)
    pool = AssignmentPool(config.budgets, config.pool_size, config.max_size)
    first_episode, trace = 0, []
    if checkpoint_dir is not None and _has_checkpoint(checkpoint_dir):
        first_episode, pool, trace_length = _load_checkpoint(checkpoint_dir, sides, rng)
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
    total = config.num_episodes * config.iterations_per_episode
    bar = tqdm(
        total=total,
        initial=first_episode * config.iterations_per_episode,
        desc="search",
        unit="it",
        disable=not progress,
    )
    for episode in range(first_episode, config.num_episodes):
        states = _initial_states(inputs, config.max_size)
        for state in sides.values():
            state.noise.reset()
        for iteration in range(config.iterations_per_episode):
            iteration_started = time.perf_counter()
            sizes = {}
            for side, state in sides.items():
                proposed = policy_sizes(state.agent.actor, states[side], device)
                sizes[side] = hooks.exploration.sizes(
                    proposed,
                    state.noise.sample(rng),
                    states[side],
                    state.agent.critic.q1,
                    config,
                    rng,
                    device,
                )
            assignment = SizeAssignment(sizes["users"], sizes["items"], config.max_size)
            signal = evaluator.evaluate(assignment)
            evals = {"users": signal.user_eval, "items": signal.item_eval}
            penalty = (
                Penalty(config.reward_penalty)
                if hooks.penalty is None
                else hooks.penalty(episode, trace)
            )
            row: dict[str, Any] = {"episode": episode + 1, "iteration": iteration + 1}
            qualities = []
            for side, state in sides.items():
                quality = quality_ratio(evals[side], inputs.full_quality[side])
                rewards = (
                    reward(quality, sizes[side], config.max_size, penalty.weight) * penalty.scale
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
            achieved = assignment.sparsity
            row.update(
                mean_quality=mean_quality,
                sparsity=achieved,
                penalty=penalty.weight,
                pooled_for=entered,
                metrics=signal.metrics,
                seconds=round(time.perf_counter() - iteration_started, 3),
            )
            record(row)
            bar.update(1)
            bar.set_postfix(sparsity=f"{achieved:.3f}", quality=f"{mean_quality:.3f}")
        if checkpoint_dir is not None:
            _save_checkpoint(checkpoint_dir, episode + 1, sides, pool, rng, trace)
        logger.info(
            "search: episode %d of %d, last sparsity %.3f, mean quality %.3f",
            episode + 1, config.num_episodes, achieved, mean_quality,
        )  # fmt: skip
    bar.close()
    return SearchOutcome(pool=pool, trace=trace, seconds=time.perf_counter() - started)
