"""The CIESS size search (spec §4–6): config, TD3 actor–critic, exploration, replay, state, pool.

Everything here is pure or holds only its own state; the environment that trains and evaluates
recommenders, and the episode loop, build on these pieces.
"""

from ciess_core.search.config import ItemQuality, SearchConfig
from ciess_core.search.exploration import (
    Exploration,
    GaussianNoise,
    GaussianWalk,
    NoiseProcess,
    QFunction,
    critic_pick,
    explore,
    neighbour_offsets,
    random_walk,
    start_sizes,
)
from ciess_core.search.networks import (
    STATE_DIM,
    Actor,
    Critic,
    denormalise_action,
    normalise_action,
)
from ciess_core.search.pool import (
    POOL_SCHEMA_VERSION,
    AssignmentPool,
    PoolEntry,
    project_to_budget,
    rescale_to_total,
    shrink_sides,
    shrink_spread,
    split_budget,
)
from ciess_core.search.replay import ReplayBuffer, TransitionBatch
from ciess_core.search.state import entity_states, minmax_scale, quality_ratio, reward
from ciess_core.search.td3 import (
    TD3Agent,
    actor_loss,
    build_agent,
    critic_loss,
    policy_sizes,
    soft_update,
    td3_target,
    update,
)

__all__ = [
    "POOL_SCHEMA_VERSION",
    "STATE_DIM",
    "Actor",
    "AssignmentPool",
    "Critic",
    "Exploration",
    "GaussianNoise",
    "GaussianWalk",
    "ItemQuality",
    "NoiseProcess",
    "PoolEntry",
    "QFunction",
    "ReplayBuffer",
    "SearchConfig",
    "TD3Agent",
    "TransitionBatch",
    "actor_loss",
    "build_agent",
    "critic_loss",
    "critic_pick",
    "denormalise_action",
    "entity_states",
    "explore",
    "minmax_scale",
    "neighbour_offsets",
    "normalise_action",
    "policy_sizes",
    "project_to_budget",
    "quality_ratio",
    "random_walk",
    "rescale_to_total",
    "reward",
    "shrink_sides",
    "shrink_spread",
    "soft_update",
    "split_budget",
    "start_sizes",
    "td3_target",
    "update",
]
