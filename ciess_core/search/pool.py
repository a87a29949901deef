"""The pool of best size assignments per budget, for selective retraining (spec §6).

For every budget c the pool keeps the top-l assignments (:class:`~ciess_core.sizes.SizeAssignment`)
seen during the search whose sparsity is at least c, ranked by mean quality; an assignment over the
budget is never kept for it. "Sparsity at least c" means Σ d ≤ ``parameter_budget(N, d_max, c)``,
the same test the baselines use.

If the search never meets a budget (it only ever explores denser assignments), the pool offers a
fallback: it also keeps the l sparsest assignments seen (ties by quality), and
:meth:`AssignmentPool.selection` projects those onto the budget with :func:`project_to_budget`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ciess_core.errors import ArtifactError, ConfigError, DataError
from ciess_core.sizes import SizeAssignment, check_target_sparsity, parameter_budget

__all__ = [
    "POOL_SCHEMA_VERSION",
    "AssignmentPool",
    "PoolEntry",
    "project_to_budget",
    "rescale_to_total",
    "shrink_sides",
    "shrink_spread",
    "split_budget",
]

POOL_SCHEMA_VERSION = 2
"""2: one ``assignment_<key>.npz`` per assignment (:meth:`SizeAssignment.save`); 1 kept bare
``.npy`` vectors."""
_INDEX_FILE = "pool.json"


@dataclass(frozen=True)
class PoolEntry:
    """One remembered assignment.

    Attributes:
        assignment: the users' and items' sizes.
        quality: mean quality of the assignment (the caller's choice of mean, e.g. over all q_n).
        order: offer counter when first seen; breaks quality ties in favour of the earlier one.
    """

    assignment: SizeAssignment
    quality: float
    order: int

    @property
    def key(self) -> str:
        """The assignment's content hash; equal keys mean identical assignments."""
        return self.assignment.key


def project_to_budget(assignment: SizeAssignment, target_sparsity: float) -> SizeAssignment:
    """Shrink every size proportionally until the sparsity is at least ``target_sparsity``.

    Each size keeps its mandatory 1 and its excess d − 1 is scaled by the same factor so that Σ d
    equals the budget ``parameter_budget(N, max_size, c)``; the fractional parts are handed out by
    largest remainder, so the result meets the budget exactly, never grows a size, and keeps the
    order of sizes (a larger size never ends up smaller). Sizes already within the budget come back
    unchanged.

    Users and items are shrunk together, by one factor; returns an assignment with sparsity ≥ c.
    """
    sizes, max_size = assignment.sizes, assignment.max_size
    budget = _budget_with_room(len(sizes), max_size, target_sparsity)
    if assignment.parameters <= budget:
        return assignment
    room = budget - len(sizes)
    excess = sizes - 1
    scaled = excess * (room / float(excess.sum()))
    kept = np.floor(scaled).astype(np.int64)
    remainder = room - int(kept.sum())
    if remainder > 0:
        # Stable sort: equal fractions go to the earlier entity.
        receivers = np.argsort(-(scaled - kept), kind="stable")[:remainder]
        kept[receivers] += 1
    projected = np.minimum(1 + kept, sizes)
    return SizeAssignment.from_concatenated(projected, assignment.num_users, max_size)


def rescale_to_total(sizes: np.ndarray, total: int, max_size: int) -> np.ndarray:
    """Scale ``sizes`` by one factor, up or down, so that they sum to exactly ``total``.

    Every size becomes clip(f·d, 1, max_size) for the largest f whose floored sizes fit in
    ``total``; the dimensions still missing go one each to the sizes with the largest fractional
    parts that have room. Relative sizes are kept as far as the bounds allow, and a larger size
    never ends up smaller.

    Args:
        sizes: ``(N,)`` integer sizes in [1, max_size].
        total: the wanted Σ d, in [N, N·max_size].
        max_size: d_max.
    """
    sizes = _checked_sizes(sizes, max_size)
    if not len(sizes) <= total <= len(sizes) * max_size:
        raise ConfigError(f"{len(sizes)} sizes in [1, {max_size}] cannot sum to {total}")
    weights = sizes.astype(np.float64)

    def fitted(factor: float) -> np.ndarray:
        return np.clip(factor * weights, 1.0, float(max_size))

    low, high = 0.0, float(max_size)  # f = max_size puts every size at the cap
    for _ in range(100):
        middle = (low + high) / 2
        if np.floor(fitted(middle)).sum() <= total:
            low = middle
        else:
            high = middle
    scaled = fitted(low)
    kept = np.floor(scaled).astype(np.int64)
    remainder = total - int(kept.sum())
    if remainder > 0:
        fractions = np.where(kept < max_size, scaled - kept, -1.0)
        receivers = np.argsort(-fractions, kind="stable")[:remainder]
        kept[receivers] += 1
    return kept


def shrink_spread(sizes: np.ndarray, factor: float, max_size: int) -> np.ndarray:
    """Move every size towards the assignment's mean by ``factor``, keeping Σ d.

    Each size d becomes round(m + factor · (d − m)), clipped to [1, max_size], and the result is
    rescaled to the original sum (:func:`rescale_to_total`). ``factor`` 1 keeps the assignment,
    0 makes every size equal (within one); in between, the spread around the mean shrinks.

    Args:
        sizes: ``(N,)`` integer sizes in [1, max_size] (one side: users or items).
        factor: in [0, 1].
        max_size: d_max.
    """
    if not 0.0 <= factor <= 1.0:
        raise ConfigError(f"a spread factor must lie in [0, 1], got {factor}")
    sizes = _checked_sizes(sizes, max_size)
    mean = float(sizes.mean())
    moved = np.clip(np.rint(mean + factor * (sizes - mean)), 1, max_size).astype(np.int64)
    return rescale_to_total(moved, int(sizes.sum()), max_size)


def shrink_sides(
    assignment: SizeAssignment, users_factor: float, items_factor: float
) -> SizeAssignment:
    """``assignment`` with each side's spread shrunk by its own factor (:func:`shrink_spread`);
    each side keeps its sum, so the budget is unchanged."""
    max_size = assignment.max_size
    return SizeAssignment(
        shrink_spread(assignment.user_sizes, users_factor, max_size),
        shrink_spread(assignment.item_sizes, items_factor, max_size),
        max_size,
    )


def split_budget(
    assignment: SizeAssignment, target_sparsity: float, user_share: float
) -> SizeAssignment:
    """Refit an assignment to a budget with a given share of it for the users.

    The budget ``parameter_budget(N, max_size, c)`` is split into round(share · budget) for the
    users and the rest for the items (each clipped to what its side can hold), and each side is
    rescaled with :func:`rescale_to_total`, keeping its own relative sizes. Σ d equals the budget
    unless both sides are at a bound.

    Args:
        assignment: the sizes to refit.
        target_sparsity: the budget c.
        user_share: the users' fraction of the budget, in (0, 1).
    """
    if not 0.0 < user_share < 1.0:
        raise ConfigError(f"user_share must lie in (0, 1), got {user_share}")
    num_users, num_items = assignment.num_users, assignment.num_items
    max_size = assignment.max_size
    budget = _budget_with_room(assignment.num_entities, max_size, target_sparsity)
    users_total = round(user_share * budget)
    # Each side keeps at least one dimension per entity and at most max_size per entity.
    users_total = min(
        max(users_total, num_users, budget - num_items * max_size),
        num_users * max_size,
        budget - num_items,
    )
    items_total = min(budget - users_total, num_items * max_size)
    return SizeAssignment(
        rescale_to_total(assignment.user_sizes, users_total, max_size),
        rescale_to_total(assignment.item_sizes, items_total, max_size),
        max_size,
    )


def _budget_with_room(num_entities: int, max_size: int, target_sparsity: float) -> int:
    """``parameter_budget(N, max_size, c)``; ConfigError when it cannot give every entity one."""
    budget = parameter_budget(num_entities, max_size, target_sparsity)
    if budget < num_entities:
        raise ConfigError(
            f"a budget of {budget} parameters cannot give {num_entities} entities one each "
            f"(target sparsity {target_sparsity})"
        )
    return budget


def _checked_sizes(sizes: np.ndarray, max_size: int) -> np.ndarray:
    array = np.asarray(sizes)
    if array.ndim != 1 or array.size == 0:
        raise ConfigError(f"sizes must be a non-empty 1-d array, got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.integer):
        raise ConfigError(f"sizes must be integers, got dtype {array.dtype}")
    if array.min() < 1 or array.max() > max_size:
        raise ConfigError(f"sizes must lie in [1, {max_size}], got [{array.min()}, {array.max()}]")
    return array.astype(np.int64)


def _insert(entries: list[PoolEntry], entry: PoolEntry, limit: int, rank: tuple[str, ...]) -> bool:
    """Insert ``entry`` into the ranked list in place; True if it is in the list afterwards.

    A duplicate (same key) keeps the better quality and its first ``order``.
    """
    for position, existing in enumerate(entries):
        if existing.key == entry.key:
            if entry.quality <= existing.quality:
                return True
            entries[position] = PoolEntry(existing.assignment, entry.quality, existing.order)
            break
    else:
        entries.append(entry)
    entries.sort(key=lambda item: _rank_key(item, rank))
    del entries[limit:]
    return any(existing.key == entry.key for existing in entries)


def _rank_key(entry: PoolEntry, rank: tuple[str, ...]) -> tuple[float, ...]:
    values = {"quality": -entry.quality, "sparsity": float(entry.assignment.parameters)}
    return (*(values[name] for name in rank), float(entry.order))


_BY_QUALITY = ("quality",)
_BY_SPARSITY = ("sparsity", "quality")


class AssignmentPool:
    """Top-l assignments per budget, plus the l sparsest as a fallback (see the module doc)."""

    def __init__(self, budgets: Sequence[float], pool_size: int, max_size: int) -> None:
        if pool_size < 1:
            raise ConfigError(f"pool_size must be >= 1, got {pool_size}")
        if not budgets:
            raise ConfigError("budgets must name at least one target sparsity, got []")
        for budget in budgets:
            check_target_sparsity(budget, max_size)
        if len(set(budgets)) != len(budgets):
            raise ConfigError(f"budgets must be distinct, got {list(budgets)}")
        self.budgets = tuple(float(budget) for budget in budgets)
        self.pool_size = pool_size
        self.max_size = max_size
        self.shape: tuple[int, int] | None = None
        """(num_users, num_items) of every assignment offered; None before the first."""
        self._top: dict[float, list[PoolEntry]] = {budget: [] for budget in self.budgets}
        self._sparsest: list[PoolEntry] = []
        self._offers = 0

    def offer(self, assignment: SizeAssignment, quality: float) -> list[float]:
        """Consider an assignment; returns the budgets whose top-l list now holds it.

        Args:
            assignment: its users and items must be those of earlier offers, its max size the
                pool's.
            quality: its mean quality (higher is better).
        """
        self._check(assignment)
        if not np.isfinite(quality):
            raise ConfigError(f"quality must be finite, got {quality}")
        entry = PoolEntry(assignment, float(quality), self._offers)
        self._offers += 1
        entered = []
        for budget in self.budgets:
            allowed = parameter_budget(assignment.num_entities, self.max_size, budget)
            within = assignment.parameters <= allowed
            if within and _insert(self._top[budget], entry, self.pool_size, _BY_QUALITY):
                entered.append(budget)
        _insert(self._sparsest, entry, self.pool_size, _BY_SPARSITY)
        return entered

    def top(self, budget: float) -> list[PoolEntry]:
        """The kept assignments within ``budget``, best quality first (may be empty)."""
        return list(self._top[self._budget(budget)])

    def sparsest(self) -> list[PoolEntry]:
        """The l sparsest assignments seen, sparsest first (ties: better quality first)."""
        return list(self._sparsest)

    def selection(self, budget: float) -> list[SizeAssignment]:
        """Assignments to retrain for ``budget``: the top-l within it, or, when none is, the
        sparsest assignments projected onto the budget (duplicates after projection dropped)."""
        kept = self._top[self._budget(budget)]
        if kept:
            return [entry.assignment for entry in kept]
        projected = [project_to_budget(entry.assignment, budget) for entry in self._sparsest]
        return list(dict.fromkeys(projected))

    def _check(self, assignment: SizeAssignment) -> None:
        shape = (assignment.num_users, assignment.num_items)
        if assignment.max_size != self.max_size or self.shape not in (None, shape):
            raise ConfigError(
                f"an assignment of {shape[0]} users, {shape[1]} items and max size "
                f"{assignment.max_size} does not fit the pool's (users, items) {self.shape} and "
                f"max size {self.max_size}"
            )
        self.shape = shape

    def _budget(self, budget: float) -> float:
        for known in self.budgets:
            if np.isclose(known, budget, rtol=0.0, atol=1e-12):
                return known
        raise ConfigError(f"budget {budget} is not one of the pool's budgets {list(self.budgets)}")

    def save(self, directory: Path) -> None:
        """Write ``pool.json`` and one ``assignment_<key>.npz`` per distinct kept assignment.

        Assignment files of this layout that are no longer referenced are removed.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        entries = {entry.key: entry for entry in self._sparsest}
        for kept in self._top.values():
            entries.update({entry.key: entry for entry in kept})
        for key, entry in entries.items():
            entry.assignment.save(directory / f"assignment_{key}.npz")

        def describe(entry: PoolEntry) -> dict[str, Any]:
            return {"key": entry.key, "quality": entry.quality, "order": entry.order}

        index = {
            "schema_version": POOL_SCHEMA_VERSION,
            "budgets": list(self.budgets),
            "pool_size": self.pool_size,
            "max_size": self.max_size,
            "shape": None if self.shape is None else list(self.shape),
            "offers": self._offers,
            "top": [[describe(entry) for entry in self._top[budget]] for budget in self.budgets],
            "sparsest": [describe(entry) for entry in self._sparsest],
        }
        (directory / _INDEX_FILE).write_text(json.dumps(index, indent=2))
        for stale in directory.glob("assignment_*.npz"):
            if stale.stem.removeprefix("assignment_") not in entries:
                stale.unlink()

    @classmethod
    def load(cls, directory: Path) -> AssignmentPool:
        """Read a pool written by :meth:`save`; ArtifactError if it is missing or inconsistent."""
        directory = Path(directory)
        index_path = directory / _INDEX_FILE
        try:
            index = json.loads(index_path.read_text())
        except FileNotFoundError:
            raise ArtifactError(
                f"no assignment pool at {directory}: {index_path} is missing"
            ) from None
        except json.JSONDecodeError as error:
            raise ArtifactError(f"{index_path} is not valid JSON: {error}") from None
        version = index.get("schema_version") if isinstance(index, dict) else None
        if version != POOL_SCHEMA_VERSION:
            raise ArtifactError(
                f"{index_path} has schema version {version!r}, this code reads "
                f"{POOL_SCHEMA_VERSION} (an older ciess wrote it): search in a new folder"
            )
        try:
            pool = cls(index["budgets"], index["pool_size"], index["max_size"])
            pool.shape = None if index["shape"] is None else tuple(index["shape"])
            pool._offers = int(index["offers"])
            for budget, described in zip(pool.budgets, index["top"], strict=True):
                pool._top[budget] = [pool._read_entry(directory, item) for item in described]
            pool._sparsest = [pool._read_entry(directory, item) for item in index["sparsest"]]
        except (KeyError, TypeError, ValueError) as error:
            if isinstance(error, ArtifactError):
                raise
            raise ArtifactError(f"{index_path} is malformed: {error!r}") from None
        return pool

    def _read_entry(self, directory: Path, described: dict[str, Any]) -> PoolEntry:
        key = str(described["key"])
        path = directory / f"assignment_{key}.npz"
        try:
            assignment = SizeAssignment.load(path)
        except DataError as error:
            raise ArtifactError(f"cannot read assignment {path}: {error}") from None
        try:
            self._check(assignment)
        except ConfigError as error:
            raise ArtifactError(f"assignment {path}: {error}") from None
        if assignment.key != key:
            raise ArtifactError(f"assignment {path} does not match its key")
        return PoolEntry(assignment, float(described["quality"]), int(described["order"]))
