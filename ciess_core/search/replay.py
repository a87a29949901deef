"""Ring-buffer replay memory of one side's transitions (numpy, spec §4–5)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ciess_core.errors import ConfigError
from ciess_core.search.networks import STATE_DIM

__all__ = ["ReplayBuffer", "TransitionBatch"]


@dataclass(frozen=True)
class TransitionBatch:
    """A minibatch of transitions (s, d, r, s'), all float32 numpy arrays.

    Attributes:
        states: ``(B, 3)`` states the sizes were chosen in.
        actions: ``(B,)`` the chosen sizes, in size units.
        rewards: ``(B,)`` rewards r = q − λ·(d/d_max)².
        next_states: ``(B, 3)`` states after training with those sizes.
    """

    states: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    next_states: np.ndarray

    def __len__(self) -> int:
        return int(self.actions.shape[0])


class ReplayBuffer:
    """Fixed-capacity ring buffer; once full, new transitions overwrite the oldest."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ConfigError(f"replay capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._states = np.zeros((capacity, STATE_DIM), dtype=np.float32)
        self._actions = np.zeros(capacity, dtype=np.float32)
        self._rewards = np.zeros(capacity, dtype=np.float32)
        self._next_states = np.zeros((capacity, STATE_DIM), dtype=np.float32)
        self._next = 0
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def add(
        self,
        states: np.ndarray,
        actions: np.ndarray,
        rewards: np.ndarray,
        next_states: np.ndarray,
    ) -> None:
        """Append one transition per entity: ``(N, 3)``, ``(N,)``, ``(N,)``, ``(N, 3)``.

        If N exceeds the capacity only the last ``capacity`` transitions are kept.
        """
        states = np.asarray(states, dtype=np.float32)
        actions = np.asarray(actions, dtype=np.float32)
        rewards = np.asarray(rewards, dtype=np.float32)
        next_states = np.asarray(next_states, dtype=np.float32)
        count = actions.shape[0]
        if actions.ndim != 1 or rewards.shape != (count,):
            raise ConfigError(
                f"actions and rewards must both have shape (N,), got {actions.shape} and "
                f"{rewards.shape}"
            )
        for name, array in (("states", states), ("next_states", next_states)):
            if array.shape != (count, STATE_DIM):
                raise ConfigError(
                    f"{name} must have shape ({count}, {STATE_DIM}), got {array.shape}"
                )
        if count > self.capacity:
            states, actions = states[-self.capacity :], actions[-self.capacity :]
            rewards, next_states = rewards[-self.capacity :], next_states[-self.capacity :]
            count = self.capacity
        positions = (self._next + np.arange(count)) % self.capacity
        self._states[positions] = states
        self._actions[positions] = actions
        self._rewards[positions] = rewards
        self._next_states[positions] = next_states
        self._next = int((self._next + count) % self.capacity)
        self._size = min(self._size + count, self.capacity)

    def sample(self, batch_size: int, rng: np.random.Generator) -> TransitionBatch:
        """``batch_size`` transitions drawn with replacement, as CleanRL's buffer does."""
        if self._size == 0:
            raise ConfigError("cannot sample from an empty replay buffer")
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        indices = rng.integers(0, self._size, size=batch_size)
        return TransitionBatch(
            states=self._states[indices],
            actions=self._actions[indices],
            rewards=self._rewards[indices],
            next_states=self._next_states[indices],
        )

    def state_dict(self) -> dict[str, np.ndarray]:
        """The filled part of the buffer and its write position, for checkpoints."""
        return {
            "states": self._states[: self._size].copy(),
            "actions": self._actions[: self._size].copy(),
            "rewards": self._rewards[: self._size].copy(),
            "next_states": self._next_states[: self._size].copy(),
            "position": np.asarray([self._next, self._size], dtype=np.int64),
        }

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Restore what :meth:`state_dict` returned (same capacity)."""
        position, size = (int(x) for x in state["position"])
        if size > self.capacity or state["actions"].shape != (size,):
            raise ConfigError(
                f"replay checkpoint holds {state['actions'].shape[0]} transitions (size {size}) "
                f"for a buffer of capacity {self.capacity}"
            )
        self._states[:size] = state["states"]
        self._actions[:size] = state["actions"]
        self._rewards[:size] = state["rewards"]
        self._next_states[:size] = state["next_states"]
        self._next, self._size = position, size
