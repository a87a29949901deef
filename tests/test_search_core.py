"""The pure core of the CIESS search: TD3 pieces, exploration, state/reward, replay and pool."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from ciess_core.errors import ArtifactError, ConfigError
from ciess_core.search import (
    Actor,
    AssignmentPool,
    Critic,
    GaussianNoise,
    GaussianWalk,
    ReplayBuffer,
    SearchConfig,
    TransitionBatch,
    build_agent,
    critic_loss,
    critic_pick,
    denormalise_action,
    entity_states,
    explore,
    minmax_scale,
    normalise_action,
    project_to_budget,
    quality_ratio,
    random_walk,
    rescale_to_total,
    reward,
    shrink_sides,
    shrink_spread,
    soft_update,
    split_budget,
    start_sizes,
    td3_target,
    update,
)
from ciess_core.sizes import SizeAssignment, parameter_budget


def cpu_generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- config -------------------------------------------------------------------------------------


def test_default_config_is_the_papers() -> None:
    config = SearchConfig()
    assert (config.num_episodes, config.iterations_per_episode, config.max_size) == (30, 10, 128)
    assert (config.exploration_scale, config.walk_steps, config.walk_radius) == (6.0, 5, 5)
    assert config.replay_capacity(50) == 5_000


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("tau", 0.0),
        ("gamma", 1.5),
        ("walk_radius", 0),
        ("max_size", 1),
        ("grad_norm_clip", 0.0),
        ("reward_penalty", -0.1),
        ("batch_size", 0),
        ("device", "tpu"),
    ],
)
def test_config_rejects_bad_values_naming_field_and_value(field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=field) as error:
        SearchConfig(**{field: value})  # type: ignore[arg-type]
    assert str(value) in str(error.value)


def test_config_rejects_impossible_budget() -> None:
    with pytest.raises(ConfigError, match=r"budgets.*0\.999"):
        SearchConfig(budgets=(0.8, 0.999))


# --- networks -----------------------------------------------------------------------------------


def test_action_normalisation_round_trip() -> None:
    sizes = torch.tensor([1.0, 64.5, 128.0])
    normalised = normalise_action(sizes, 128)
    assert torch.allclose(normalised[[0, 2]], torch.tensor([-1.0, 1.0]))
    assert torch.allclose(denormalise_action(normalised, 128), sizes)


def test_actor_range_and_small_final_layer() -> None:
    actor = Actor(128, 32, cpu_generator(0))
    final = actor.network[-1]
    assert isinstance(final, nn.Linear)
    assert final.weight.abs().max() <= 3e-3 and final.bias.abs().max() <= 3e-3
    sizes = actor(torch.randn(64, 3, generator=cpu_generator(1)) * 100)
    assert sizes.shape == (64,)
    assert bool(((sizes >= 1) & (sizes <= 128)).all())
    # Near-zero final layer: every size starts close to the middle of the range.
    assert torch.allclose(actor(torch.zeros(2, 3)), torch.full((2,), 64.5), atol=1.0)


def test_critic_twin_heads_and_seeded_init() -> None:
    critic = Critic(128, 16, cpu_generator(0))
    states, sizes = torch.randn(5, 3, generator=cpu_generator(1)), torch.arange(1.0, 6.0)
    q1, q2 = critic(states, sizes)
    assert q1.shape == q2.shape == (5,)
    assert torch.equal(critic.q1(states, sizes), q1)
    assert not torch.equal(q1, q2)
    again = Critic(128, 16, cpu_generator(0))
    assert torch.equal(again(states, sizes)[0], q1)


# --- TD3 ----------------------------------------------------------------------------------------


class FixedActor(nn.Module):
    def __init__(self, sizes: torch.Tensor) -> None:
        super().__init__()
        self.sizes = sizes

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        return self.sizes.clone()


class FixedCritic(nn.Module):
    """Returns known twin values and records the sizes it was asked about."""

    def __init__(self, q1: torch.Tensor, q2: torch.Tensor) -> None:
        super().__init__()
        self.values = (q1, q2)
        self.seen = torch.empty(0)

    def forward(
        self, states: torch.Tensor, sizes: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        self.seen = sizes.clone()
        return self.values


def test_td3_target_uses_min_of_twin_critics() -> None:
    critic = FixedCritic(torch.tensor([3.0, 10.0, -1.0]), torch.tensor([5.0, 4.0, -2.0]))
    target = td3_target(
        reward=torch.tensor([1.0, 2.0, 0.0]),
        next_state=torch.zeros(3, 3),
        target_actor=FixedActor(torch.tensor([10.0, 20.0, 30.0])),
        target_critic=critic,
        noise_std=0.0,
        noise_clip=5.0,
        max_size=128,
        gamma=0.5,
        generator=cpu_generator(0),
    )
    assert torch.allclose(target, torch.tensor([1 + 0.5 * 3, 2 + 0.5 * 4, 0 + 0.5 * -2]))
    assert torch.equal(critic.seen, torch.tensor([10.0, 20.0, 30.0]))


def test_td3_target_noise_is_clipped_then_clamped_to_size_range() -> None:
    num = 2_000
    middle = torch.full((num,), 64.0)
    critic = FixedCritic(torch.zeros(num), torch.zeros(num))
    td3_target(
        torch.zeros(num),
        torch.zeros(num, 3),
        FixedActor(middle),
        critic,
        3.0,
        5.0,
        128,
        0.9,
        cpu_generator(7),
    )
    expected_noise = (torch.randn(num, generator=cpu_generator(7)) * 3.0).clamp(-5.0, 5.0)
    assert torch.equal(critic.seen, middle + expected_noise)
    assert critic.seen.min() == 59.0 and critic.seen.max() == 69.0  # clipping is active

    edges = torch.tensor([1.0, 128.0]).repeat(num // 2)
    td3_target(
        torch.zeros(num),
        torch.zeros(num, 3),
        FixedActor(edges),
        critic,
        3.0,
        5.0,
        128,
        0.9,
        cpu_generator(8),
    )
    assert critic.seen.min() == 1.0 and critic.seen.max() == 128.0
    assert (critic.seen[0::2] <= 6.0).all() and (critic.seen[1::2] >= 123.0).all()


def test_critic_loss_hand_case() -> None:
    loss = critic_loss(torch.tensor([1.0, 2.0]), torch.tensor([0.0, 0.0]), torch.tensor([1.0, 1.0]))
    # MSE(Q1) = (0 + 1) / 2, MSE(Q2) = (1 + 1) / 2.
    assert float(loss) == pytest.approx(1.5)


def test_soft_update_is_exact_polyak() -> None:
    source, target = nn.Linear(3, 2), nn.Linear(3, 2)
    expected = [
        0.25 * s + 0.75 * t for s, t in zip(source.parameters(), target.parameters(), strict=True)
    ]
    soft_update(target, source, 0.25)
    for parameter, wanted in zip(target.parameters(), expected, strict=True):
        assert torch.equal(parameter, wanted)


def tiny_config(**overrides: object) -> SearchConfig:
    return SearchConfig(hidden_size=16, batch_size=64, **overrides)  # type: ignore[arg-type]


def random_batch(rng: np.random.Generator, size: int = 64) -> TransitionBatch:
    return TransitionBatch(
        states=rng.uniform(-1, 1, (size, 3)).astype(np.float32),
        actions=rng.integers(1, 129, size).astype(np.float32),
        rewards=rng.uniform(0, 1, size).astype(np.float32),
        next_states=rng.uniform(-1, 1, (size, 3)).astype(np.float32),
    )


def snapshot(module: nn.Module) -> list[torch.Tensor]:
    return [parameter.detach().clone() for parameter in module.parameters()]


def same(module: nn.Module, saved: list[torch.Tensor]) -> bool:
    return all(torch.equal(p, s) for p, s in zip(module.parameters(), saved, strict=True))


def test_actor_and_targets_update_only_every_second_step() -> None:
    agent = build_agent(tiny_config(), cpu_generator(0), torch.device("cpu"))
    rng = np.random.default_rng(0)
    for step in range(4):
        actor, critic = snapshot(agent.actor), snapshot(agent.critic)
        targets = snapshot(agent.target_actor), snapshot(agent.target_critic)
        losses = update(agent, random_batch(rng), step)
        assert not same(agent.critic, critic)
        delayed = step % 2 == 1
        assert ("actor_loss" in losses) == delayed
        assert same(agent.actor, actor) != delayed
        assert same(agent.target_actor, targets[0]) != delayed
        assert same(agent.target_critic, targets[1]) != delayed


def test_targets_move_by_tau_towards_online_networks() -> None:
    agent = build_agent(tiny_config(tau=0.5), cpu_generator(0), torch.device("cpu"))
    before = snapshot(agent.target_critic)
    update(agent, random_batch(np.random.default_rng(1)), step=1)
    for target, online, old in zip(
        agent.target_critic.parameters(), agent.critic.parameters(), before, strict=True
    ):
        assert torch.equal(target, 0.5 * online + 0.5 * old)


def test_critic_learns_a_constant_reward() -> None:
    agent = build_agent(tiny_config(gamma=0.0), cpu_generator(0), torch.device("cpu"))
    batch = random_batch(np.random.default_rng(2))
    batch = TransitionBatch(
        batch.states, batch.actions, np.full(64, 0.7, np.float32), batch.next_states
    )
    first = update(agent, batch, 0)["critic_loss"]
    for step in range(1, 150):
        last = update(agent, batch, step)["critic_loss"]
    assert last < 0.1 * first


# --- exploration --------------------------------------------------------------------------------


def test_start_sizes_round_and_clip() -> None:
    sizes = start_sizes(np.array([0.2, 3.4, 200.0, 10.6]), np.array([-5.0, 0.0, 0.0, 0.0]), 128)
    assert sizes.dtype == np.int64
    assert sizes.tolist() == [1, 3, 128, 11]


def test_random_walk_first_step_is_inverse_distance() -> None:
    walkers = 200_000
    candidates = random_walk(np.full(walkers, 64), 1, 5, 128, np.random.default_rng(0))
    offsets = np.concatenate([np.arange(-5, 0), np.arange(1, 6)])
    counts = np.array([(candidates[:, 1] - 64 == offset).sum() for offset in offsets])
    assert counts.sum() == walkers
    expected = (1.0 / np.abs(offsets)) / (1.0 / np.abs(offsets)).sum() * walkers
    assert stats.chisquare(counts, expected).pvalue > 1e-3
    assert np.allclose(counts / walkers, expected / walkers, atol=0.005)


@pytest.mark.parametrize(("start", "neighbours"), [(1, range(2, 7)), (128, range(123, 128))])
def test_random_walk_truncates_neighbours_at_the_bounds(start: int, neighbours: range) -> None:
    walkers = 50_000
    candidates = random_walk(np.full(walkers, start), 1, 5, 128, np.random.default_rng(1))
    values = np.array(list(neighbours))
    counts = np.array([(candidates[:, 1] == value).sum() for value in values])
    assert counts.sum() == walkers
    weights = 1.0 / np.abs(values - start)
    assert stats.chisquare(counts, weights / weights.sum() * walkers).pvalue > 1e-3


def test_random_walk_shape_start_bounds_and_step_lengths() -> None:
    rng = np.random.default_rng(2)
    start = rng.integers(1, 8, 5_000)
    candidates = random_walk(start, 5, 5, 7, rng)
    assert candidates.shape == (5_000, 6) and candidates.dtype == np.int64
    assert np.array_equal(candidates[:, 0], start)
    assert candidates.min() >= 1 and candidates.max() <= 7
    steps = np.abs(np.diff(candidates, axis=1))
    assert steps.min() >= 1 and steps.max() <= 5
    assert random_walk(start, 0, 5, 7, rng).shape == (5_000, 1)


def test_random_walk_rejects_out_of_range_start() -> None:
    with pytest.raises(ConfigError, match="start sizes"):
        random_walk(np.array([0, 3]), 5, 5, 128, np.random.default_rng(0))


def test_critic_pick_takes_argmax_q1_in_chunks() -> None:
    rng = np.random.default_rng(3)
    states = rng.uniform(-1, 1, (50, 3)).astype(np.float32)
    candidates = rng.integers(1, 129, (50, 6))
    preferred = (states[:, 0] + 1) * 60 + 1  # each entity likes a different size

    def q1(state: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
        return -((size - ((state[:, 0] + 1) * 60 + 1)) ** 2)

    picked = critic_pick(q1, states, candidates, torch.device("cpu"), chunk_size=13)
    best = np.argmin(np.abs(candidates - preferred[:, None]), axis=1)
    assert np.array_equal(picked, candidates[np.arange(50), best])


def test_explore_walks_from_the_noisy_start_and_the_critic_picks() -> None:
    rng = np.random.default_rng(4)
    states = np.zeros((1_000, 3), dtype=np.float32)
    mu, noise = np.full(1_000, 40.0), rng.normal(0, 6, 1_000)

    def prefers_large(state: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
        return size

    cpu = torch.device("cpu")
    plain = start_sizes(mu, noise, 128)
    walked = explore(
        mu, noise, states, prefers_large, SearchConfig(), np.random.default_rng(9), cpu
    )
    candidates = random_walk(plain, 5, 5, 128, np.random.default_rng(9))
    assert walked.dtype == np.int64
    assert np.array_equal(walked, candidates.max(axis=1))  # this critic prefers the largest
    assert (walked >= plain).all() and walked.min() >= 1 and walked.max() <= 128


def test_the_papers_exploration_is_gaussian_noise_then_the_walk() -> None:
    config = SearchConfig()
    gaussian = GaussianWalk().noise(100_000, config)
    assert isinstance(gaussian, GaussianNoise)
    draws = gaussian.sample(np.random.default_rng(5))
    assert draws.std() == pytest.approx(config.exploration_scale, rel=0.02)
    assert abs(draws.mean()) < 0.1
    states = np.zeros((500, 3), dtype=np.float32)
    mu, noise = np.full(500, 40.0), draws[:500]

    def prefers_small(state: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
        return -size

    cpu = torch.device("cpu")
    sizes = GaussianWalk().sizes(
        mu, noise, states, prefers_small, config, np.random.default_rng(2), cpu
    )
    expected = explore(mu, noise, states, prefers_small, config, np.random.default_rng(2), cpu)
    assert np.array_equal(sizes, expected)


# --- state and reward ---------------------------------------------------------------------------


def test_minmax_scale_and_states() -> None:
    assert np.allclose(minmax_scale(np.array([2.0, 4.0, 6.0])), [-1.0, 0.0, 1.0])
    assert np.array_equal(minmax_scale(np.full(4, 7.0)), np.zeros(4))
    states = entity_states(np.array([1, 5, 9]), np.full(3, 128), np.array([0.2, 1.0, 0.6]))
    assert states.shape == (3, 3) and states.dtype == np.float32
    assert np.allclose(states, [[-1, 0, -1], [0, 0, 1], [1, 0, 0]])
    with pytest.raises(ConfigError, match="one length"):
        entity_states(np.ones(3), np.ones(2), np.ones(3))


def test_quality_ratio_floor_cap_and_missing() -> None:
    q = quality_ratio(np.array([0.1, 0.3, 0.0, 2e-6, np.nan]), np.array([0.2, 0.2, 0.0, 0.0, 0.5]))
    assert np.allclose(q, [0.5, 1.0, 0.0, 0.2, 0.0])
    assert quality_ratio(np.array([0.01]), np.array([0.0]), floor=0.1)[0] == pytest.approx(0.1)


def test_reward_formula() -> None:
    r = reward(np.array([1.0, 0.5, 0.8]), np.array([128, 64, 32]), 128, 0.4)
    assert np.allclose(r, [1.0 - 0.4, 0.5 - 0.4 * 0.25, 0.8 - 0.4 / 16])


# --- replay -------------------------------------------------------------------------------------


def transitions(first: int, count: int) -> tuple[np.ndarray, ...]:
    ids = np.arange(first, first + count, dtype=np.float32)
    return np.repeat(ids[:, None], 3, axis=1), ids, -ids, np.repeat(ids[:, None], 3, axis=1) + 0.5


def test_replay_wraps_around_and_samples() -> None:
    buffer = ReplayBuffer(5)
    buffer.add(*transitions(0, 3))
    assert len(buffer) == 3
    buffer.add(*transitions(3, 4))  # ids 3..6 overwrite slots 3, 4, 0, 1
    assert len(buffer) == 5
    batch = buffer.sample(1_000, np.random.default_rng(0))
    assert batch.states.shape == (1_000, 3) and batch.next_states.shape == (1_000, 3)
    assert batch.actions.shape == batch.rewards.shape == (1_000,) and len(batch) == 1_000
    assert set(batch.actions.tolist()) == {2.0, 3.0, 4.0, 5.0, 6.0}
    assert np.array_equal(batch.rewards, -batch.actions)
    assert np.array_equal(batch.next_states[:, 0], batch.actions + 0.5)

    buffer.add(*transitions(10, 12))  # more than the capacity at once: the last 5 remain
    assert set(buffer.sample(500, np.random.default_rng(1)).actions.tolist()) == set(range(17, 22))


def test_replay_rejects_bad_shapes_and_empty_sampling() -> None:
    buffer = ReplayBuffer(4)
    with pytest.raises(ConfigError, match="empty"):
        buffer.sample(2, np.random.default_rng(0))
    states, actions, rewards, next_states = transitions(0, 3)
    with pytest.raises(ConfigError, match="next_states"):
        buffer.add(states, actions, rewards, next_states[:, :2])


# --- pool ---------------------------------------------------------------------------------------

# 2 users and 2 items, d_max 8: the full table holds 32; budget 0.5 allows Σd ≤ 16, 0.75 Σd ≤ 8.
BUDGETS = (0.5, 0.75)


def sizes_of(*values: int, num_users: int = 2, max_size: int = 8) -> SizeAssignment:
    """Users then items, as the hand examples write them."""
    return SizeAssignment.from_concatenated(np.array(values), num_users, max_size)


def test_pool_keeps_top_l_within_budget_ranked_by_quality() -> None:
    pool = AssignmentPool(BUDGETS, pool_size=2, max_size=8)
    assert pool.offer(sizes_of(8, 8, 8, 8), 1.0) == []  # over every budget
    assert pool.offer(sizes_of(4, 4, 4, 4), 0.6) == [0.5]
    assert pool.offer(sizes_of(2, 2, 2, 2), 0.5) == [0.5, 0.75]
    assert pool.offer(sizes_of(5, 5, 3, 3), 0.7) == [0.5]  # pushes [2,2,2,2] out of 0.5
    assert pool.offer(sizes_of(1, 1, 1, 1), 0.1) == [0.75]
    assert pool.offer(sizes_of(1, 1, 1, 2), 0.05) == []  # not in the top 2 anywhere
    assert [e.assignment for e in pool.top(0.5)] == [sizes_of(5, 5, 3, 3), sizes_of(4, 4, 4, 4)]
    assert [e.quality for e in pool.top(0.75)] == [0.5, 0.1]
    for budget in BUDGETS:
        limit = parameter_budget(4, 8, budget)
        assert all(entry.assignment.parameters <= limit for entry in pool.top(budget))


def test_pool_takes_one_shape_of_assignment() -> None:
    pool = AssignmentPool(BUDGETS, pool_size=2, max_size=8)
    pool.offer(sizes_of(2, 2, 2, 2), 0.5)
    with pytest.raises(ConfigError, match=r"1 users, 3 items and max size 8 does not fit"):
        pool.offer(sizes_of(2, 2, 2, 2, num_users=1), 0.5)
    with pytest.raises(ConfigError, match=r"max size 9 does not fit .* max size 8"):
        pool.offer(sizes_of(2, 2, 2, 2, max_size=9), 0.5)


def test_pool_dedupes_identical_assignments() -> None:
    pool = AssignmentPool(BUDGETS, pool_size=3, max_size=8)
    pool.offer(sizes_of(2, 2, 2, 2), 0.5)
    pool.offer(sizes_of(2, 2, 2, 2), 0.4)
    pool.offer(sizes_of(1, 2, 2, 2), 0.45)
    assert [e.quality for e in pool.top(0.75)] == [0.5, 0.45]
    pool.offer(sizes_of(1, 2, 2, 2), 0.9)  # seen again, better: moves up, still once
    assert [e.assignment for e in pool.top(0.75)] == [sizes_of(1, 2, 2, 2), sizes_of(2, 2, 2, 2)]


def test_pool_save_load_round_trip(tmp_path: Path) -> None:
    pool = AssignmentPool(BUDGETS, pool_size=2, max_size=8)
    rng = np.random.default_rng(6)
    for _ in range(20):
        pool.offer(sizes_of(*rng.integers(1, 9, 4)), float(rng.uniform()))
    pool.save(tmp_path)
    loaded = AssignmentPool.load(tmp_path)
    assert loaded.budgets == pool.budgets and loaded.shape == (2, 2)
    for budget in BUDGETS:
        assert [(e.key, e.quality, e.assignment) for e in loaded.top(budget)] == [
            (e.key, e.quality, e.assignment) for e in pool.top(budget)
        ]
    assert [e.key for e in loaded.sparsest()] == [e.key for e in pool.sparsest()]
    # Saving a changed pool again removes files no entry refers to.
    loaded.offer(sizes_of(1, 1, 1, 1), 2.0)
    loaded.offer(sizes_of(1, 1, 1, 2), 2.0)
    loaded.save(tmp_path)
    referenced = {e.key for b in BUDGETS for e in loaded.top(b)} | {
        e.key for e in loaded.sparsest()
    }
    assert {p.stem.removeprefix("assignment_") for p in tmp_path.glob("*.npz")} == referenced


def test_pool_load_rejects_unknown_schema_and_foreign_files(tmp_path: Path) -> None:
    pool = AssignmentPool(BUDGETS, 2, 8)
    pool.offer(sizes_of(2, 2, 2, 2), 0.5)
    pool.save(tmp_path)
    (entry,) = pool.top(0.5)
    SizeAssignment.equal(1, 3, 2, 8).save(tmp_path / f"assignment_{entry.key}.npz")
    with pytest.raises(ArtifactError, match="does not fit the pool"):
        AssignmentPool.load(tmp_path)
    index = json.loads((tmp_path / "pool.json").read_text())
    index["schema_version"] = 1
    (tmp_path / "pool.json").write_text(json.dumps(index))
    with pytest.raises(ArtifactError, match="schema version 1, this code reads 2"):
        AssignmentPool.load(tmp_path)
    with pytest.raises(ArtifactError, match="missing"):
        AssignmentPool.load(tmp_path / "nowhere")


def test_project_to_budget() -> None:
    sizes = sizes_of(128, 100, 64, 10, 1, 1, num_users=3, max_size=128)
    projected = project_to_budget(sizes, 0.9)
    assert projected.parameters == parameter_budget(6, 128, 0.9)
    assert projected.num_users == 3
    assert (projected.sizes >= 1).all() and (projected.sizes <= sizes.sizes).all()
    assert (np.diff(projected.sizes) <= 0).all()  # order kept
    within = sizes_of(10, 2, 1, 1, 1, 1, num_users=3, max_size=128)
    assert project_to_budget(within, 0.9) == within


def test_pool_selection_falls_back_to_projected_sparsest() -> None:
    pool = AssignmentPool(BUDGETS, pool_size=2, max_size=8)
    pool.offer(sizes_of(8, 8, 8, 8), 1.0)
    pool.offer(sizes_of(6, 4, 2, 2), 0.8)
    assert len(pool.selection(0.5)) == 1  # [6, 4, 2, 2] qualifies for 0.5 (Σ 14 ≤ 16)
    # Excess [5, 3, 1, 1] scaled by 4/10 = [2, 1.2, 0.4, 0.4]: floors [2, 1, 0, 0], and the one
    # remaining dimension goes to the first largest fraction.
    fallback = pool.selection(0.75)
    assert fallback == [sizes_of(3, 2, 2, 1), sizes_of(2, 2, 2, 2)]
    assert all(sizes.parameters <= 8 for sizes in fallback)


@pytest.mark.parametrize("seed", range(5))
def test_rescale_to_total_hits_the_total_and_keeps_the_order(seed: int) -> None:
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 33, size=int(rng.integers(2, 200)))
    for total in (len(sizes), int(sizes.sum()) // 3, int(sizes.sum()) * 2, len(sizes) * 32):
        total = min(max(total, len(sizes)), len(sizes) * 32)
        rescaled = rescale_to_total(sizes, total, max_size=32)
        assert rescaled.sum() == total and rescaled.min() >= 1 and rescaled.max() <= 32
        for smaller, larger in itertools.pairwise(np.unique(sizes)):
            # a larger size never ends up below a smaller one; equal sizes differ by ≤ 1
            assert rescaled[sizes == smaller].max() <= rescaled[sizes == larger].min()
        for value in np.unique(sizes):
            assert np.ptp(rescaled[sizes == value]) <= 1
    assert rescale_to_total(np.array([2, 4, 8]), 28, max_size=32).tolist() == [4, 8, 16]
    with pytest.raises(ConfigError, match="cannot sum"):
        rescale_to_total(np.array([2, 4]), 65, max_size=32)


def test_shrink_spread_keeps_the_sum_and_narrows_the_spread_by_the_factor() -> None:
    sizes = np.array([1, 2, 4, 9, 24], dtype=np.int64)  # mean 8, sum 40
    assert shrink_spread(sizes, 1.0, max_size=32).tolist() == sizes.tolist()
    equal = shrink_spread(sizes, 0.0, max_size=32)
    assert equal.tolist() == [8, 8, 8, 8, 8]
    half = shrink_spread(sizes, 0.5, max_size=32)
    # 8 + 0.5 (d − 8), rounded half to even: 4, 5, 6, 8, 16: sum 39, one more to the largest
    # fractional part (the rescale keeps the order): the sum stays 40.
    assert half.sum() == 40 and half.tolist() == sorted(half.tolist())
    assert np.std(equal) < np.std(half) < np.std(sizes)
    assert shrink_spread(np.array([3, 5]), 0.0, max_size=32).tolist() == [4, 4]
    assert shrink_spread(np.array([3, 4]), 0.0, max_size=32).sum() == 7  # within one of equal
    with pytest.raises(ConfigError, match="spread factor"):
        shrink_spread(sizes, 1.5, max_size=32)


def test_split_budget_gives_the_users_their_share_and_meets_the_budget() -> None:
    sizes = sizes_of(4, 8, 12, 2, 2, 6, 6, 6, num_users=3, max_size=16)  # 3 users, 5 items
    budget = parameter_budget(8, 16, 0.75)  # 32 parameters
    fitted = split_budget(sizes, target_sparsity=0.75, user_share=0.75)
    assert fitted.parameters == budget
    assert fitted.user_sizes.sum() == 24 and fitted.item_sizes.sum() == 8
    assert fitted.user_sizes.tolist() == [4, 8, 12]  # already the users' share: unchanged
    # A share the users cannot hold (3 × 16 < 0.99 × 32 is fine, 1 each for items is the floor).
    crowded = split_budget(sizes, target_sparsity=0.75, user_share=0.99)
    assert crowded.item_sizes.tolist() == [1] * 5 and crowded.parameters == budget
    with pytest.raises(ConfigError, match="user_share"):
        split_budget(sizes, target_sparsity=0.75, user_share=1.0)


def test_shrink_sides_shrinks_each_side_within_itself() -> None:
    sizes = sizes_of(1, 3, 8, 2, 6, num_users=2, max_size=8)
    equal = shrink_sides(sizes, 0.0, 0.0)
    assert equal.user_sizes.tolist() == [2, 2] and equal.item_sizes.tolist() == [6, 5, 5]
    assert shrink_sides(sizes, 1.0, 1.0) == sizes
    assert shrink_sides(sizes, 0.0, 1.0).item_sizes.tolist() == [8, 2, 6]
