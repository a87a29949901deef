"""Vectorised BPR triple sampling (pure numpy, randomness passed in)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from ciess_core.errors import DataError

_MAX_REJECTION_ROUNDS = 100


@dataclass(frozen=True)
class BprBatch:
    """One batch of (user, positive item, negative item) triples, each (B,) int64."""

    users: np.ndarray
    positives: np.ndarray
    negatives: np.ndarray


class BprSampler:
    """Draws users uniformly, one training positive each, and one uniform negative per positive.

    A negative that the user interacted with in training is rejected and drawn again; the check is
    a binary search over the sorted ``user * num_items + item`` keys of the training matrix.
    """

    def __init__(self, train: sp.csr_matrix) -> None:
        train = train.tocsr()
        train.sort_indices()
        self.num_users, self.num_items = train.shape
        self.indptr = train.indptr.astype(np.int64)
        self.indices = train.indices.astype(np.int64)
        degrees = np.diff(self.indptr)
        self.active_users = np.flatnonzero(degrees > 0)
        if len(self.active_users) == 0:
            raise DataError("the training matrix has no interactions to sample from")
        if np.any(degrees >= self.num_items):
            raise DataError("a user has interacted with every item: no negative can be sampled")
        self.degrees = degrees
        rows = np.repeat(np.arange(self.num_users, dtype=np.int64), degrees)
        self.keys = rows * self.num_items + self.indices  # sorted: CSR rows then sorted columns

    def contains(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """(B,) bool: whether each (user, item) pair is a training interaction."""
        keys = users * self.num_items + items
        positions = np.searchsorted(self.keys, keys)
        positions = np.minimum(positions, len(self.keys) - 1)
        return self.keys[positions] == keys

    def sample(self, batch_size: int, rng: np.random.Generator) -> BprBatch:
        users = self.active_users[rng.integers(0, len(self.active_users), size=batch_size)]
        offsets = (rng.random(batch_size) * self.degrees[users]).astype(np.int64)
        positives = self.indices[self.indptr[users] + offsets]
        negatives = rng.integers(0, self.num_items, size=batch_size)
        for _ in range(_MAX_REJECTION_ROUNDS):
            clashes = np.flatnonzero(self.contains(users, negatives))
            if len(clashes) == 0:
                break
            negatives[clashes] = rng.integers(0, self.num_items, size=len(clashes))
        return BprBatch(users=users, positives=positives, negatives=negatives)
