"""Shared fixtures: small generated datasets with structure a model can learn."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from ciess_core.data import DatasetSplit, InteractionData, split_per_user

# Test tensors are tiny: with several threads, synchronisation dominates and a busy machine (CI, a
# benchmark beside the tests) makes each op orders of magnitude slower.
torch.set_num_threads(1)


def clustered_interactions(
    num_users: int = 120, num_items: int = 80, num_clusters: int = 4, seed: int = 0
) -> InteractionData:
    """Users and items fall into clusters; a user mostly picks items of its own cluster."""
    rng = np.random.default_rng(seed)
    user_cluster = np.arange(num_users) % num_clusters
    item_cluster = np.arange(num_items) % num_clusters
    users, items = [], []
    for user in range(num_users):
        own = np.flatnonzero(item_cluster == user_cluster[user])
        other = np.flatnonzero(item_cluster != user_cluster[user])
        chosen = np.concatenate(
            [rng.choice(own, size=12, replace=False), rng.choice(other, size=2, replace=False)]
        )
        users += [user] * len(chosen)
        items += chosen.tolist()
    return InteractionData(
        user_ids=np.asarray(users, dtype=np.int64),
        item_ids=np.asarray(items, dtype=np.int64),
        external_user_ids=np.asarray([f"u{u}" for u in range(num_users)]),
        external_item_ids=np.asarray([f"i{i}" for i in range(num_items)]),
        source="generated clusters",
    )


@pytest.fixture(scope="session")
def clustered_data() -> InteractionData:
    return clustered_interactions()


@pytest.fixture(scope="session")
def clustered_split(clustered_data: InteractionData) -> DatasetSplit:
    return split_per_user(clustered_data, seed=7)


@pytest.fixture(scope="session")
def tiny_train() -> sp.csr_matrix:
    """A 12 x 9 training matrix where every user has 2..5 items."""
    rng = np.random.default_rng(3)
    rows, cols = [], []
    for user in range(12):
        chosen = rng.choice(9, size=2 + user % 4, replace=False)
        rows += [user] * len(chosen)
        cols += chosen.tolist()
    return sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(12, 9))


@pytest.fixture
def one_thread() -> Iterator[None]:
    """This process on one thread, as each of two workers on two cores: the same floats."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
