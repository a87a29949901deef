"""TD3 (Fujimoto et al., 2018) for one side's size policy, as functions over tensors (spec §5).

The update follows the paper's order, like CleanRL's ``td3_continuous_action.py``: clipped
target-policy smoothing, twin-Q minimum, critic step, and on every ``policy_delay``-th update an
actor step and a Polyak update of both targets. There is no terminal flag: an iteration never
ends the entity's life.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ciess_core.search.config import SearchConfig
from ciess_core.search.networks import Actor, Critic
from ciess_core.search.replay import TransitionBatch

__all__ = [
    "TD3Agent",
    "actor_loss",
    "build_agent",
    "critic_loss",
    "policy_sizes",
    "soft_update",
    "td3_target",
    "update",
]


@dataclass
class TD3Agent:
    """The networks, targets and optimisers of one side (users or items).

    Attributes:
        actor: the policy μ.
        critic: the twin critic (Q1, Q2).
        target_actor: Polyak-averaged copy of ``actor``.
        target_critic: Polyak-averaged copy of ``critic``.
        actor_optimizer: Adam over ``actor``'s parameters.
        critic_optimizer: Adam over ``critic``'s parameters.
        config: the search hyperparameters (γ, τ, noise, clip, delay, d_max).
        generator: draws the target-policy smoothing noise; lives on ``device``.
        device: where the networks live.
    """

    actor: Actor
    critic: Critic
    target_actor: Actor
    target_critic: Critic
    actor_optimizer: torch.optim.Optimizer
    critic_optimizer: torch.optim.Optimizer
    config: SearchConfig
    generator: torch.Generator
    device: torch.device


def build_agent(
    config: SearchConfig, init_generator: torch.Generator, device: torch.device
) -> TD3Agent:
    """A fresh agent: networks initialised from ``init_generator`` (on its device), then moved
    to ``device``; the smoothing-noise generator is seeded from ``init_generator``."""
    actor = Actor(config.max_size, config.hidden_size, init_generator).to(device)
    critic = Critic(config.max_size, config.hidden_size, init_generator).to(device)
    noise_seed = int(
        torch.randint(0, 2**62, (1,), generator=init_generator, device=init_generator.device)
    )
    noise_generator = torch.Generator(device=device)
    noise_generator.manual_seed(noise_seed)
    return TD3Agent(
        actor=actor,
        critic=critic,
        target_actor=copy.deepcopy(actor).requires_grad_(False),
        target_critic=copy.deepcopy(critic).requires_grad_(False),
        actor_optimizer=torch.optim.Adam(actor.parameters(), lr=config.actor_learning_rate),
        critic_optimizer=torch.optim.Adam(critic.parameters(), lr=config.critic_learning_rate),
        config=config,
        generator=noise_generator,
        device=device,
    )


def td3_target(
    reward: torch.Tensor,
    next_state: torch.Tensor,
    target_actor: nn.Module,
    target_critic: nn.Module,
    noise_std: float,
    noise_clip: float,
    max_size: int,
    gamma: float,
    generator: torch.Generator,
) -> torch.Tensor:
    """TD target y = r + γ · min(Q1', Q2')(s', clamp(μ'(s') + clip(ε, ±noise_clip), 1, max_size)).

    Args:
        reward: ``(B,)`` rewards.
        next_state: ``(B, 3)`` next states.
        target_actor: maps ``(B, 3)`` states to ``(B,)`` sizes.
        target_critic: maps (``(B, 3)`` states, ``(B,)`` sizes) to (Q1, Q2), each ``(B,)``.
        noise_std: standard deviation of ε ~ N(0, noise_std²), size units.
        noise_clip: ε is clipped to [−noise_clip, noise_clip].
        max_size: d_max; the smoothed size is clamped to [1, d_max].
        gamma: discount γ.
        generator: draws ε (on the tensors' device).

    Returns:
        ``(B,)`` targets, without gradient.
    """
    with torch.no_grad():
        next_size = target_actor(next_state)
        noise = torch.randn(
            next_size.shape, generator=generator, device=next_size.device, dtype=next_size.dtype
        )
        noise = (noise * noise_std).clamp(-noise_clip, noise_clip)
        next_size = (next_size + noise).clamp(1.0, float(max_size))
        next_q1, next_q2 = target_critic(next_state, next_size)
        return reward + gamma * torch.minimum(next_q1, next_q2)


def critic_loss(q1: torch.Tensor, q2: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MSE(Q1, y) + MSE(Q2, y); all ``(B,)``."""
    return F.mse_loss(q1, target) + F.mse_loss(q2, target)


def actor_loss(actor: nn.Module, critic: Critic, states: torch.Tensor) -> torch.Tensor:
    """−mean Q1(s, μ(s)) over ``(B, 3)`` states."""
    return -critic.q1(states, actor(states)).mean()


def soft_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    """Polyak averaging in place: θ' ← τ·θ + (1 − τ)·θ' for every parameter pair."""
    with torch.no_grad():
        for target_parameter, parameter in zip(
            target.parameters(), source.parameters(), strict=True
        ):
            target_parameter.copy_(tau * parameter + (1.0 - tau) * target_parameter)


def _step(
    optimizer: torch.optim.Optimizer, module: nn.Module, loss: torch.Tensor, max_norm: float
) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(module.parameters(), max_norm)
    optimizer.step()


def update(agent: TD3Agent, batch: TransitionBatch, step: int) -> dict[str, float]:
    """One TD3 update of ``agent`` on ``batch``; ``step`` is the 0-based count of updates so far.

    The critic is updated every call; the actor and both targets only when
    ``(step + 1) % policy_delay == 0`` (the 2nd, 4th, … update for a delay of 2). Both steps clip
    the global gradient norm to ``grad_norm_clip``.

    Returns:
        ``{"critic_loss": …, "q1": mean Q1}`` plus ``"actor_loss"`` when the actor was updated.
    """
    config = agent.config

    def tensor(array: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(array, dtype=torch.float32, device=agent.device)

    states, actions = tensor(batch.states), tensor(batch.actions)
    rewards, next_states = tensor(batch.rewards), tensor(batch.next_states)

    target = td3_target(
        rewards,
        next_states,
        agent.target_actor,
        agent.target_critic,
        config.target_noise_std,
        config.target_noise_clip,
        config.max_size,
        config.gamma,
        agent.generator,
    )
    q1, q2 = agent.critic(states, actions)
    loss = critic_loss(q1, q2, target)
    _step(agent.critic_optimizer, agent.critic, loss, config.grad_norm_clip)
    losses = {"critic_loss": float(loss.detach()), "q1": float(q1.detach().mean())}

    if (step + 1) % config.policy_delay == 0:
        policy_loss = actor_loss(agent.actor, agent.critic, states)
        _step(agent.actor_optimizer, agent.actor, policy_loss, config.grad_norm_clip)
        # The actor step also filled the critic's gradients; they are cleared by the next critic
        # step's zero_grad, so they never leak into a critic update.
        soft_update(agent.target_actor, agent.actor, config.tau)
        soft_update(agent.target_critic, agent.critic, config.tau)
        losses["actor_loss"] = float(policy_loss.detach())
    return losses


def policy_sizes(actor: Actor, states: np.ndarray, device: torch.device) -> np.ndarray:
    """The deterministic policy's continuous sizes μ(s): ``(N, 3)`` states → ``(N,)`` float64."""
    with torch.no_grad():
        sizes = actor(torch.as_tensor(states, dtype=torch.float32, device=device))
    return sizes.cpu().numpy().astype(np.float64)
