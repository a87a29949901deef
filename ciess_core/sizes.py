"""Size assignments and their accounting (pure numpy).

A size assignment (:class:`SizeAssignment`) gives every user and every item a size in
``[1, max_size]``; its sparsity is the fraction of the full table that is pruned:
c(d) = 1 - Σ d_n / (N · max_size). The baselines' assignments (full, equal sizes, mixed random)
are drawn here.
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from ciess_core.errors import ConfigError, DataError
from ciess_core.staged_files import staged_file
from ciess_core.storage import count_runs, stored_bytes

Sizes = npt.NDArray[np.int64]


@dataclass(frozen=True, eq=False)
class SizeAssignment:
    """Every user's and every item's embedding size, in ``[1, max_size]``.

    The arrays are int64 and read-only; :attr:`sizes` is the users-then-items vector that a
    model's masked tables take (one table of users then items). Two assignments are equal when
    their sides and ``max_size`` are. Saved as one ``.npz`` (:meth:`save`, :meth:`load`).

    Attributes:
        user_sizes: ``(num_users,)`` the users' sizes.
        item_sizes: ``(num_items,)`` the items' sizes.
        max_size: d_max, the full embedding size.
    """

    user_sizes: Sizes
    item_sizes: Sizes
    max_size: int
    _sizes: Sizes = field(init=False, repr=False)

    def __post_init__(self) -> None:
        max_size = self.max_size
        if isinstance(max_size, bool) or not isinstance(max_size, (int, np.integer)):
            raise ConfigError(f"max_size must be an integer, got {max_size!r}")
        if max_size < 1:
            raise ConfigError(f"max_size must be >= 1, got {max_size}")
        users = _checked_side("user_sizes", self.user_sizes, int(max_size))
        items = _checked_side("item_sizes", self.item_sizes, int(max_size))
        sizes = np.concatenate([users, items])
        sizes.setflags(write=False)
        object.__setattr__(self, "max_size", int(max_size))
        object.__setattr__(self, "_sizes", sizes)
        object.__setattr__(self, "user_sizes", sizes[: users.size])
        object.__setattr__(self, "item_sizes", sizes[users.size :])

    @classmethod
    def from_concatenated(
        cls, sizes: npt.ArrayLike, num_users: int, max_size: int
    ) -> SizeAssignment:
        """The assignment whose users-then-items vector is ``sizes`` (a model's, a file's)."""
        array = np.asarray(sizes)
        if array.ndim != 1:
            raise ConfigError(f"sizes must be a 1-d array, got shape {array.shape}")
        if not 0 < num_users < array.size:
            raise ConfigError(
                f"num_users must lie in (0, {array.size}) so that users and items both have "
                f"an entry, got {num_users}"
            )
        return cls(array[:num_users], array[num_users:], max_size)

    @classmethod
    def equal(cls, num_users: int, num_items: int, size: int, max_size: int) -> SizeAssignment:
        """Every user and every item at ``size``."""
        if not 1 <= size <= max_size:
            raise ConfigError(f"an equal size must lie in [1, {max_size}], got {size}")
        return cls(
            np.full(num_users, size, dtype=np.int64),
            np.full(num_items, size, dtype=np.int64),
            max_size,
        )

    @classmethod
    def full(cls, num_users: int, num_items: int, max_size: int) -> SizeAssignment:
        """Every user and every item at ``max_size``."""
        return cls.equal(num_users, num_items, max_size, max_size)

    @property
    def num_users(self) -> int:
        return int(self.user_sizes.size)

    @property
    def num_items(self) -> int:
        return int(self.item_sizes.size)

    @property
    def num_entities(self) -> int:
        return int(self._sizes.size)

    @property
    def sizes(self) -> Sizes:
        """``(num_users + num_items,)`` the users' sizes, then the items' (read-only)."""
        return self._sizes

    @property
    def parameters(self) -> int:
        """Σ d, the embedding values each table keeps."""
        return int(np.sum(self._sizes, dtype=np.int64))

    @property
    def width(self) -> int:
        """The largest size: the columns a model with these sizes computes."""
        return int(self.sizes.max())

    @property
    def sparsity(self) -> float:
        """Fraction of the dense ``(N, max_size)`` table pruned: 1 - Σ d / (N · max_size)."""
        return 1.0 - float(self.parameters) / (self.num_entities * self.max_size)

    def bytes(self, value_type: str = "float32", tables: int = 1) -> int:
        """Every stored byte of ``tables`` tables of these sizes, values stored as
        ``value_type`` (:data:`ciess_core.storage.VALUE_TYPES`): values, per-row scales of the
        integer types, sizes, and their files' headers, as the artifact writes them."""
        if tables < 1:
            raise ConfigError(f"tables must be >= 1, got {tables}")
        runs = count_runs(self._sizes)  # the sizes file is stored as runs when that is smaller
        return stored_bytes(
            self.num_entities, self.parameters, value_type, self.max_size, tables, runs
        )

    @property
    def key(self) -> str:
        """A content hash: equal keys mean equal assignments."""
        digest = hashlib.sha256(f"{self.num_users}:{self.max_size}:".encode())
        digest.update(self._sizes.astype("<i8").tobytes())
        return digest.hexdigest()[:24]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SizeAssignment):
            return NotImplemented
        return (
            self.num_users == other.num_users
            and self.max_size == other.max_size
            and np.array_equal(self._sizes, other._sizes)
        )

    def __hash__(self) -> int:
        return hash(self.key)

    def __repr__(self) -> str:
        return (
            f"SizeAssignment({self.num_users} users, {self.num_items} items, "
            f"max_size={self.max_size}, sparsity={self.sparsity:.4f})"
        )

    def save(self, path: Path) -> Path:
        """Write ``path`` (an ``.npz`` holding ``user_sizes``, ``item_sizes`` and ``max_size``)
        through a staging file, so that a reader never sees half of it."""
        path = Path(path)
        with staged_file(path) as staging, staging.open("wb") as handle:
            np.savez(
                handle,
                user_sizes=self.user_sizes,
                item_sizes=self.item_sizes,
                max_size=np.int64(self.max_size),
            )
        return path

    @classmethod
    def load(cls, path: Path) -> SizeAssignment:
        """Read a file written by :meth:`save`; DataError when it is missing or not one."""
        path = Path(path)
        try:
            arrays = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            raise DataError(f"{path}: no size assignment file there") from None
        except (OSError, ValueError) as error:
            raise DataError(f"{path}: not a size assignment file ({error})") from None
        if not isinstance(arrays, np.lib.npyio.NpzFile):
            raise DataError(
                f"{path}: a bare array, not a size assignment (an .npz with user_sizes, "
                "item_sizes and max_size)"
            )
        with arrays:
            missing = sorted({"user_sizes", "item_sizes", "max_size"} - set(arrays.files))
            if missing:
                raise DataError(f"{path}: a size assignment file without {missing}")
            max_size = arrays["max_size"]
            if max_size.shape != () or not np.issubdtype(max_size.dtype, np.integer):
                raise DataError(f"{path}: max_size must be one integer, got {max_size!r}")
            try:
                return cls(arrays["user_sizes"], arrays["item_sizes"], int(max_size))
            except ConfigError as error:
                raise DataError(f"{path}: {error}") from None


def _checked_side(name: str, values: npt.ArrayLike, max_size: int) -> Sizes:
    array = np.asarray(values)
    if array.ndim != 1 or array.size == 0:
        raise ConfigError(f"{name} must be a non-empty 1-d array, got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.integer):
        raise ConfigError(f"{name} must be integers, got dtype {array.dtype}")
    low, high = int(array.min()), int(array.max())
    if low < 1 or high > max_size:
        where = int(np.argmax((array < 1) | (array > max_size)))
        raise ConfigError(
            f"{name} must lie in [1, {max_size}], got range [{low}, {high}] "
            f"(entry {where} is {array[where]})"
        )
    return array.astype(np.int64)


class SizeScheme(enum.Enum):
    """How a training run assigns sizes: full width, equal sizes (ES), mixed random (MR), or the
    CIESS search's assignment (given from outside, never drawn here)."""

    FULL = "full"
    EQUAL = "equal"
    RANDOM = "random"
    CIESS = "ciess"


def parameter_budget(num_entities: int, max_size: int, target_sparsity: float) -> int:
    """Largest number of kept parameters whose sparsity is at least ``target_sparsity``."""
    check_target_sparsity(target_sparsity, max_size)
    return int(np.floor((1.0 - target_sparsity) * num_entities * max_size + 1e-9))


def highest_sparsity(max_size: int) -> float:
    """The largest target sparsity at which every entity keeps one of its ``max_size``
    dimensions."""
    return 1.0 - 1.0 / max_size


def check_target_sparsity(target_sparsity: float, max_size: int) -> None:
    """Raise ConfigError unless every entity can keep at least one dimension at this sparsity."""
    highest = highest_sparsity(max_size)
    if not 0.0 <= target_sparsity <= highest:
        raise ConfigError(
            f"target sparsity must lie in [0, {highest:.6f}] (every entity keeps at least 1 of "
            f"{max_size} dimensions), got {target_sparsity}"
        )


def equal_sizes(
    num_users: int, num_items: int, max_size: int, target_sparsity: float
) -> SizeAssignment:
    """ES baseline: every entity gets round((1 - c) · max_size), at least 1 (spec §7)."""
    check_target_sparsity(target_sparsity, max_size)
    size = max(1, int(np.rint((1.0 - target_sparsity) * max_size)))
    return SizeAssignment.equal(num_users, num_items, size, max_size)


def equal_sizes_within(
    num_users: int, num_items: int, max_size: int, max_parameters: int, spend_all: bool = False
) -> SizeAssignment:
    """Equal sizes that keep at most ``max_parameters`` per table: ⌊P / N⌋ each, clipped to
    [1, max_size] (so at least 1 even when P < N: the caller checks its budget).

    With ``spend_all``, the first P - N·⌊P / N⌋ entities (users first) take one more, so that
    exactly P are kept and sizes differ by at most one; P must then lie in [N, N · max_size].
    """
    num_entities = num_users + num_items
    size = min(max_size, max(1, max_parameters // num_entities))
    if not spend_all:
        return SizeAssignment.equal(num_users, num_items, size, max_size)
    if not num_entities <= max_parameters <= num_entities * max_size:
        raise ConfigError(
            f"{num_entities} sizes in [1, {max_size}] cannot keep exactly {max_parameters} "
            "parameters"
        )
    sizes = np.full(num_entities, size, dtype=np.int64)
    sizes[: max_parameters - num_entities * size] += 1
    return SizeAssignment.from_concatenated(sizes, num_users, max_size)


def mixed_random_sizes(
    num_users: int,
    num_items: int,
    max_size: int,
    target_sparsity: float,
    rng: np.random.Generator,
) -> SizeAssignment:
    """MR baseline: random sizes rescaled so that Σ d equals the budget exactly.

    Sizes are drawn uniformly from [1, max_size] (users first, then items), scaled to the
    parameter budget, floored, and the remainder is handed out one dimension at a time to random
    entities that still have room.
    """
    num_entities = num_users + num_items
    budget = parameter_budget(num_entities, max_size, target_sparsity)
    if budget < num_entities:
        raise ConfigError(
            f"a budget of {budget} parameters cannot give {num_entities} entities one each"
        )
    draws = rng.uniform(1.0, max_size, size=num_entities)
    # Scale the part above the floor of 1 so that the expected total hits the budget.
    extra = draws - 1.0
    scale = (budget - num_entities) / extra.sum() if extra.sum() > 0 else 0.0
    sizes = np.clip(np.floor(1.0 + extra * scale), 1, max_size).astype(np.int64)
    remainder = budget - int(sizes.sum())
    while remainder > 0:
        room = np.flatnonzero(sizes < max_size)
        chosen = rng.choice(room, size=min(remainder, len(room)), replace=False)
        sizes[chosen] += 1
        remainder = budget - int(sizes.sum())
    return SizeAssignment.from_concatenated(sizes, num_users, max_size)


def assign_sizes(
    scheme: SizeScheme,
    num_users: int,
    num_items: int,
    max_size: int,
    target_sparsity: float | None,
    rng: np.random.Generator,
) -> SizeAssignment:
    """Sizes for ``scheme``; ES and MR need a target sparsity, FULL takes none."""
    if scheme is SizeScheme.FULL:
        if target_sparsity not in (None, 0.0):
            raise ConfigError("the full-size scheme takes no target sparsity")
        return SizeAssignment.full(num_users, num_items, max_size)
    if target_sparsity is None:
        raise ConfigError(f"size scheme '{scheme.value}' needs a target sparsity (e.g. 0.9)")
    if scheme is SizeScheme.EQUAL:
        return equal_sizes(num_users, num_items, max_size, target_sparsity)
    if scheme is SizeScheme.RANDOM:
        return mixed_random_sizes(num_users, num_items, max_size, target_sparsity, rng)
    raise ConfigError(f"size scheme '{scheme.value}' takes its sizes from outside, not drawn")
