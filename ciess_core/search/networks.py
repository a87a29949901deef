"""Actor and twin critic of the size search (spec §5).

Both networks speak in size units: the actor returns a continuous size in [1, d_max], and the critic
takes a size and normalises it to [−1, 1] itself. States are the 3 features of
:func:`ciess_core.search.state.entity_states`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = [
    "STATE_DIM",
    "Actor",
    "Critic",
    "denormalise_action",
    "normalise_action",
]

STATE_DIM = 3
"""Popularity, current size and quality, each scaled to [−1, 1]."""

_FINAL_LAYER_BOUND = 3e-3


def normalise_action(size: torch.Tensor, max_size: int) -> torch.Tensor:
    """Map sizes in [1, max_size] linearly onto [−1, 1] (1 → −1, max_size → 1)."""
    return 2.0 * (size - 1.0) / (max_size - 1.0) - 1.0


def denormalise_action(action: torch.Tensor, max_size: int) -> torch.Tensor:
    """Inverse of :func:`normalise_action`: [−1, 1] → [1, max_size]."""
    return (action + 1.0) * (max_size - 1.0) / 2.0 + 1.0


def _linear(
    in_features: int, out_features: int, bound: float | None, generator: torch.Generator
) -> nn.Linear:
    """A linear layer initialised from ``generator``: U(±bound), default U(±1/√fan_in).

    1/√fan_in is what ``nn.Linear`` draws by default; drawing it here makes it reproducible.
    """
    layer = nn.Linear(in_features, out_features, device=generator.device)
    limit = 1.0 / math.sqrt(in_features) if bound is None else bound
    with torch.no_grad():
        nn.init.uniform_(layer.weight, -limit, limit, generator=generator)
        nn.init.uniform_(layer.bias, -limit, limit, generator=generator)
    return layer


def _mlp(
    in_features: int, hidden_size: int, final_bound: float | None, generator: torch.Generator
) -> nn.Sequential:
    """in → hidden → hidden → 1 with ReLU between layers."""
    return nn.Sequential(
        _linear(in_features, hidden_size, None, generator),
        nn.ReLU(),
        _linear(hidden_size, hidden_size, None, generator),
        nn.ReLU(),
        _linear(hidden_size, 1, final_bound, generator),
    )


class Actor(nn.Module):
    """Deterministic policy μ(s): 3 → hidden → hidden → 1, tanh rescaled to [1, max_size].

    The last layer starts at U(±3e-3), so every size starts near the middle of the range.
    Parameters are created on ``generator.device``; move the module afterwards if needed.
    """

    def __init__(self, max_size: int, hidden_size: int, generator: torch.Generator) -> None:
        super().__init__()
        self.max_size = max_size
        self.network = _mlp(STATE_DIM, hidden_size, _FINAL_LAYER_BOUND, generator)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        """``(B, 3)`` states → ``(B,)`` continuous sizes in [1, max_size]."""
        action = torch.tanh(self.network(states)).squeeze(-1)
        return denormalise_action(action, self.max_size)


class Critic(nn.Module):
    """Twin Q heads, each 4 → hidden → hidden → 1 on [state; size normalised to [−1, 1]]."""

    def __init__(self, max_size: int, hidden_size: int, generator: torch.Generator) -> None:
        super().__init__()
        self.max_size = max_size
        self.q1_head = _mlp(STATE_DIM + 1, hidden_size, None, generator)
        self.q2_head = _mlp(STATE_DIM + 1, hidden_size, None, generator)

    def _inputs(self, states: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
        action = normalise_action(sizes.to(states.dtype), self.max_size)
        return torch.cat([states, action.unsqueeze(-1)], dim=-1)

    def forward(
        self, states: torch.Tensor, sizes: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, 3)`` states and ``(B,)`` sizes (size units) → (Q1, Q2), each ``(B,)``."""
        inputs = self._inputs(states, sizes)
        return self.q1_head(inputs).squeeze(-1), self.q2_head(inputs).squeeze(-1)

    def q1(self, states: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
        """Only the first head, ``(B,)``: what the actor maximises and the exploration ranks by."""
        return self.q1_head(self._inputs(states, sizes)).squeeze(-1)
