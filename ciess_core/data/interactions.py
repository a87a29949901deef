"""Interaction data types and the per-user random 50/25/25 split.

`InteractionData` holds every positive (user, item) pair of a dataset with internal ids 0..n-1;
`split_per_user` turns it into a `DatasetSplit` of three disjoint binary CSR matrices. Both are
pure: randomness comes in as a seed, nothing here touches files.
"""

from __future__ import annotations

import enum
import hashlib
import json
import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from ciess_core.errors import ConfigError, DataError

IdArray = npt.NDArray[np.int64]
ExternalIdArray = npt.NDArray[np.str_]

DEFAULT_SPLIT_RATIOS: tuple[float, float, float] = (0.5, 0.25, 0.25)


class Phase(enum.Enum):
    """Which held-out part a run evaluates on.

    SEARCH trains on `train` and evaluates on `valid`; TEST trains on `train + valid` and evaluates
    on `test`; DEPLOY trains the served model on every interaction and has nothing held out.
    """

    SEARCH = "search"
    TEST = "test"
    DEPLOY = "deploy"


def _readonly(array: npt.NDArray[np.generic]) -> npt.NDArray[np.generic]:
    """A read-only view, so that a frozen dataclass cannot be changed through its arrays."""
    view = array.view()
    view.flags.writeable = False
    return view


def _external_ids(values: npt.ArrayLike, what: str) -> ExternalIdArray:
    array = np.asarray(values)
    if array.ndim != 1:
        raise DataError(f"{what} must be 1-D, got shape {array.shape}")
    if array.size and array.dtype.kind != "U":
        raise DataError(f"{what} must be a numpy unicode array, got dtype {array.dtype}")
    if array.size and np.unique(array).size != array.size:
        raise DataError(f"{what} contains duplicate ids")
    return _readonly(array.astype(np.str_, copy=False))  # type: ignore[return-value]


def _internal_ids(values: npt.ArrayLike, bound: int, what: str) -> IdArray:
    array = np.asarray(values)
    if array.ndim != 1:
        raise DataError(f"{what} must be 1-D, got shape {array.shape}")
    if array.size and array.dtype.kind not in "iu":
        raise DataError(f"{what} must be an integer array, got dtype {array.dtype}")
    if array.size and (array.min() < 0 or array.max() >= bound):
        raise DataError(
            f"{what} must lie in [0, {bound}), got range [{array.min()}, {array.max()}]"
        )
    return _readonly(array.astype(np.int64, copy=False))  # type: ignore[return-value]


def pairs_to_csr(user_ids: IdArray, item_ids: IdArray, shape: tuple[int, int]) -> sp.csr_matrix:
    """Binary CSR matrix of a set of (user, item) pairs.

    Args:
        user_ids: (n_pairs,) int64 row per pair.
        item_ids: (n_pairs,) int64 column per pair; repeated pairs count once.
        shape: (num_users, num_items).

    Returns:
        (num_users, num_items) float32 CSR matrix with value 1 at every pair, sorted indices and
        no duplicates (canonical format).
    """
    num_items = np.int64(max(shape[1], 1))
    # Plain sort + adjacent compare: np.unique without return_* is hash-based and far slower here.
    keys = np.sort(user_ids.astype(np.int64) * num_items + item_ids)
    if keys.size:
        keys = keys[np.concatenate(([True], keys[1:] != keys[:-1]))]
    users, items = np.divmod(keys, num_items)
    return _sorted_pairs_to_csr(users, items, shape)


def _sorted_pairs_to_csr(users: IdArray, items: IdArray, shape: tuple[int, int]) -> sp.csr_matrix:
    """CSR from pairs already sorted by (user, item) and unique; O(n), no sort."""
    indptr = np.zeros(shape[0] + 1, dtype=np.int64)
    np.cumsum(np.bincount(users, minlength=shape[0]), out=indptr[1:])
    index_dtype = np.int32 if max(shape[1], users.size) < np.iinfo(np.int32).max else np.int64
    matrix = sp.csr_matrix(
        (
            np.ones(users.size, dtype=np.float32),
            items.astype(index_dtype),
            indptr.astype(index_dtype),
        ),
        shape=shape,
    )
    matrix.has_sorted_indices = True
    return matrix


class _ExternalIdMaps:
    """The external ids of a dataset's users and items, position = internal id: what
    :class:`InteractionData` and :class:`DatasetSplit` both carry, checked and counted one way."""

    external_user_ids: ExternalIdArray
    external_item_ids: ExternalIdArray

    def _check_external_ids(self) -> None:
        """Validates both id maps and stores them as read-only numpy unicode arrays.

        Raises:
            DataError: an id map that is not 1-D, not unicode or holds a duplicate id.
        """
        external_users = _external_ids(self.external_user_ids, "external_user_ids")
        external_items = _external_ids(self.external_item_ids, "external_item_ids")
        object.__setattr__(self, "external_user_ids", external_users)
        object.__setattr__(self, "external_item_ids", external_items)

    @property
    def num_users(self) -> int:
        return int(self.external_user_ids.size)

    @property
    def num_items(self) -> int:
        return int(self.external_item_ids.size)


@dataclass(frozen=True, eq=False)
class InteractionData(_ExternalIdMaps):
    """All positive (user, item) pairs of a dataset, with internal ids 0..n-1.

    Attributes:
        user_ids: (n_pairs,) int64 internal user id per pair.
        item_ids: (n_pairs,) int64 internal item id per pair.
        external_user_ids: (num_users,) numpy unicode; position = internal id.
        external_item_ids: (num_items,) numpy unicode; position = internal id.
        source: human-readable description, e.g. the path(s) read.

    The loaders guarantee that pairs are distinct; `to_csr` binarises anyway. Arrays are stored
    as read-only views.
    """

    user_ids: IdArray
    item_ids: IdArray
    external_user_ids: ExternalIdArray
    external_item_ids: ExternalIdArray
    source: str

    def __post_init__(self) -> None:
        self._check_external_ids()
        users = _internal_ids(self.user_ids, self.num_users, "user_ids")
        items = _internal_ids(self.item_ids, self.num_items, "item_ids")
        if users.size != items.size:
            raise DataError(f"user_ids and item_ids differ in length: {users.size} != {items.size}")
        object.__setattr__(self, "user_ids", users)
        object.__setattr__(self, "item_ids", items)

    @property
    def num_interactions(self) -> int:
        return int(self.user_ids.size)

    def to_csr(self) -> sp.csr_matrix:
        """(num_users, num_items) float32 binary CSR matrix with sorted indices."""
        return pairs_to_csr(self.user_ids, self.item_ids, (self.num_users, self.num_items))

    def fingerprint(self) -> str:
        """SHA-256 hex digest of the sorted pair set and both id maps.

        Independent of pair order and of the machine (fixed little-endian encoding); two datasets
        with the same fingerprint produce the same split for the same seed.
        """
        matrix = self.to_csr()
        digest = hashlib.sha256()
        digest.update(b"ciess-interactions-v1\0")
        digest.update(np.asarray([self.num_users, self.num_items, matrix.nnz], "<i8").tobytes())
        digest.update(np.asarray(matrix.indptr, "<i8").tobytes())
        digest.update(np.asarray(matrix.indices, "<i8").tobytes())
        for ids in (self.external_user_ids, self.external_item_ids):
            digest.update(json.dumps(ids.tolist(), ensure_ascii=False).encode("utf-8"))
            digest.update(b"\0")
        return digest.hexdigest()


@dataclass(frozen=True, eq=False)
class DatasetSplit(_ExternalIdMaps):
    """Three disjoint parts of a dataset, each a (num_users, num_items) binary CSR matrix.

    Attributes:
        train: (num_users, num_items) float32 binary, sorted indices, canonical.
        valid: same shape, disjoint from train.
        test: same shape, disjoint from train and valid.
        external_user_ids: (num_users,) numpy unicode; row i is user external_user_ids[i].
        external_item_ids: (num_items,) numpy unicode; column j is item external_item_ids[j].
        seed: the seed the split was drawn with.
    """

    train: sp.csr_matrix
    valid: sp.csr_matrix
    test: sp.csr_matrix
    external_user_ids: ExternalIdArray
    external_item_ids: ExternalIdArray
    seed: int

    def __post_init__(self) -> None:
        self._check_external_ids()
        shape = (self.num_users, self.num_items)
        for name in ("train", "valid", "test"):
            matrix = getattr(self, name)
            if not sp.issparse(matrix) or matrix.format != "csr":
                raise DataError(f"{name} must be a scipy CSR matrix, got {type(matrix).__name__}")
            if matrix.shape != shape:
                raise DataError(f"{name} has shape {matrix.shape}, expected {shape}")

    def phase(self, phase: Phase) -> tuple[sp.csr_matrix, sp.csr_matrix]:
        """(training matrix, held-out matrix) for a phase.

        SEARCH -> (train, valid); TEST -> (train + valid, test); DEPLOY -> (train + valid + test,
        an empty matrix). All are (num_users, num_items) float32 binary CSR with sorted indices.
        """
        if phase is Phase.SEARCH:
            return self.train, self.valid
        if phase is Phase.TEST:
            return _union(self.train, self.valid), self.test
        if phase is Phase.DEPLOY:
            empty = sp.csr_matrix(self.train.shape, dtype=np.float32)
            return _union(self.train, self.valid, self.test), empty
        raise ConfigError(f"unknown phase {phase!r}; expected one of {[p.value for p in Phase]}")


def _union(*matrices: sp.csr_matrix) -> sp.csr_matrix:
    """The binary union of disjoint interaction matrices, canonical CSR."""
    merged = sp.csr_matrix(sum(matrices[1:], matrices[0]), dtype=np.float32)
    merged.sum_duplicates()
    merged.sort_indices()
    merged.data[:] = 1.0
    return merged


def validate_split_ratios(ratios: tuple[float, float, float]) -> tuple[float, float, float]:
    """Checks that the (train, valid, test) ratios are three positive numbers summing to 1."""
    values = tuple(ratios)
    if len(values) != 3:
        raise ConfigError(f"split ratios must be (train, valid, test), got {len(values)} values")
    if not all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0 for v in values):
        raise ConfigError(f"split ratios must be positive finite numbers, got {values}")
    if not math.isclose(sum(values), 1.0, rel_tol=0.0, abs_tol=1e-9):
        raise ConfigError(f"split ratios must sum to 1, got {values} (sum {sum(values)})")
    return float(values[0]), float(values[1]), float(values[2])


def _check_seed(seed: object, what: str) -> None:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"{what} seed must be a non-negative integer, got {seed!r}")


def _ranks_within_users(
    matrix: sp.csr_matrix, seed: int
) -> tuple[IdArray, IdArray, IdArray, IdArray]:
    """Every stored pair's random rank among its user's pairs, drawn from ``seed``.

    Returns (per-user counts, each pair's user, its item, its rank in [0, count)).
    """
    indptr = matrix.indptr.astype(np.int64)
    counts = np.diff(indptr)
    users = np.repeat(np.arange(matrix.shape[0], dtype=np.int64), counts)
    items = matrix.indices.astype(np.int64)
    # One random 32-bit key per pair, below the user id in a single int64 sort key: sorting orders
    # pairs by user, then randomly within the user (ties keep item order, still deterministic).
    random_keys = np.random.default_rng(int(seed)).integers(0, 2**32, users.size, dtype=np.int64)
    order = np.argsort((users << 32) | random_keys, kind="stable")
    # Users are already sorted, so position p of `order` belongs to user users[p].
    rank = np.empty(users.size, dtype=np.int64)
    rank[order] = np.arange(users.size, dtype=np.int64) - indptr[users]
    return counts, users, items, rank


def split_per_user(
    data: InteractionData,
    seed: int = 42,
    ratios: tuple[float, float, float] = DEFAULT_SPLIT_RATIOS,
) -> DatasetSplit:
    """Per-user random split into train / valid / test.

    Each user's items (in sorted internal-id order) get one key from `np.random.default_rng(seed)`;
    ranked by key, the first round(r_train·n) go to train, up to round((r_train + r_valid)·n) to
    valid, the rest to test (numpy rounds half to even, like the reference code's `round`). A user
    with 8 items therefore gets 4 / 2 / 2. Deterministic for a given seed and pair set.

    Args:
        data: the interactions to split.
        seed: non-negative integer seed.
        ratios: (train, valid, test), positive, summing to 1.

    Returns:
        A DatasetSplit whose three (num_users, num_items) matrices are disjoint and whose union
        is `data.to_csr()`.
    """
    train_ratio, valid_ratio, _ = validate_split_ratios(ratios)
    _check_seed(seed, "split")
    matrix = data.to_csr()
    shape = (data.num_users, data.num_items)
    counts, users, items, rank = _ranks_within_users(matrix, seed)
    train_cut = np.round(counts * train_ratio).astype(np.int64)
    valid_cut = np.round(counts * (train_ratio + valid_ratio)).astype(np.int64)
    in_train = rank < train_cut[users]
    in_valid = ~in_train & (rank < valid_cut[users])
    in_test = ~(in_train | in_valid)

    def part(mask: npt.NDArray[np.bool_]) -> sp.csr_matrix:
        return _sorted_pairs_to_csr(users[mask], items[mask], shape)

    return DatasetSplit(
        train=part(in_train),
        valid=part(in_valid),
        test=part(in_test),
        external_user_ids=data.external_user_ids,
        external_item_ids=data.external_item_ids,
        seed=int(seed),
    )


def hold_out_per_user(
    matrix: sp.csr_matrix, share: float, seed: int
) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """Split every user's interactions in ``matrix`` into (kept, held out).

    Each user's items get one random key from ``np.random.default_rng(seed)``; ranked by key, the
    first round(share · n) are held out (numpy rounds half to even, so a user with one item keeps
    it). Deterministic for a given seed; the two parts are disjoint and their union is ``matrix``.

    Args:
        matrix: (num_users, num_items) binary CSR, canonical (sorted indices, no duplicates).
        share: the fraction held out, in (0, 1).
        seed: non-negative integer seed.
    """
    if not 0.0 < share < 1.0:
        raise ConfigError(f"the held-out share must lie in (0, 1), got {share}")
    _check_seed(seed, "hold-out")
    counts, users, items, rank = _ranks_within_users(matrix, seed)
    held = rank < np.round(counts * share).astype(np.int64)[users]
    shape = (int(matrix.shape[0]), int(matrix.shape[1]))
    return (
        _sorted_pairs_to_csr(users[~held], items[~held], shape),
        _sorted_pairs_to_csr(users[held], items[held], shape),
    )


def check_split(split: DatasetSplit) -> None:
    """Full (O(nnz)) validation: every part binary and the three parts pairwise disjoint."""
    parts = {"train": split.train, "valid": split.valid, "test": split.test}
    for name, matrix in parts.items():
        if matrix.nnz and not np.all(matrix.data == 1):
            raise DataError(f"{name} is not binary")
    names = list(parts)
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            overlap = parts[first].multiply(parts[second]).nnz
            if overlap:
                raise DataError(f"{first} and {second} share {overlap} (user, item) pairs")
