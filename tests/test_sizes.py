"""Size assignments (:class:`SizeAssignment`) and the baselines' assignments."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ciess_core.errors import ConfigError, DataError
from ciess_core.search.pool import rescale_to_total
from ciess_core.sizes import (
    SizeAssignment,
    SizeScheme,
    assign_sizes,
    equal_sizes,
    equal_sizes_within,
    mixed_random_sizes,
    parameter_budget,
)


@st.composite
def assignments(draw: st.DrawFn) -> SizeAssignment:
    """Any valid assignment: 1–20 users and items, sizes in [1, max_size], bounds included."""
    max_size = draw(st.integers(1, 64))
    side = st.lists(
        st.one_of(st.just(1), st.just(max_size), st.integers(1, max_size)), min_size=1, max_size=20
    )
    return SizeAssignment(np.asarray(draw(side)), np.asarray(draw(side)), max_size)


# -- the type ------------------------------------------------------------------------------------


def test_hand_example_sparsity_parameters_and_bytes() -> None:
    sizes = SizeAssignment(np.array([128, 64]), np.array([32, 32]), 128)
    assert (sizes.num_users, sizes.num_items, sizes.num_entities) == (2, 2, 4)
    assert sizes.parameters == 256
    assert sizes.sparsity == pytest.approx(1 - 256 / 512)
    header = 128  # every .npy file of the store: values, sizes (and scales)
    assert sizes.bytes() == (header + 256 * 4) + (header + 4)  # sizes: one byte per entity
    assert sizes.bytes("float16") == (header + 256 * 2) + (header + 4)
    assert sizes.bytes("int8") == (header + 256) + (header + 4 * 2) + (header + 4)
    assert sizes.bytes("int4") == (header + 128) + (header + 4 * 2) + (header + 4)
    assert sizes.bytes("float32", tables=2) == 2 * sizes.bytes()  # NCF keeps two tables
    assert sizes.sizes.tolist() == [128, 64, 32, 32]


def test_arrays_are_int64_read_only_views() -> None:
    source = np.array([3, 4], dtype=np.int16)
    # int16 and uint8 on purpose, against the declared int64: the assignment converts them
    sizes = SizeAssignment(source, np.array([5], dtype=np.uint8), 8)  # type: ignore[arg-type]
    source[0] = 7  # the assignment keeps its own copy
    assert sizes.user_sizes.tolist() == [3, 4] and sizes.user_sizes.dtype == np.int64
    for array in (sizes.user_sizes, sizes.item_sizes, sizes.sizes):
        assert not array.flags.writeable
        with pytest.raises(ValueError, match="read-only"):
            array[0] = 1
    assert np.shares_memory(sizes.user_sizes, sizes.sizes)


@pytest.mark.parametrize(
    ("users", "items", "max_size", "message"),
    [
        ([], [1], 4, r"user_sizes must be a non-empty 1-d array, got shape \(0,\)"),
        ([1], [[1, 2]], 4, r"item_sizes must be a non-empty 1-d array, got shape \(1, 2\)"),
        ([1.0], [1], 4, "user_sizes must be integers, got dtype float64"),
        ([True], [1], 4, "user_sizes must be integers, got dtype bool"),
        ([1, 0], [1], 4, r"user_sizes must lie in \[1, 4\], got range \[0, 1\] \(entry 1 is 0\)"),
        ([1], [2, 5], 4, r"item_sizes must lie in \[1, 4\], got range \[2, 5\] \(entry 1 is 5\)"),
        ([1], [1], 0, "max_size must be >= 1, got 0"),
        ([1], [1], 4.0, "max_size must be an integer, got 4.0"),
    ],
)
def test_constructor_errors_name_the_numbers(
    users: list[object], items: list[object], max_size: object, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        SizeAssignment(np.asarray(users), np.asarray(items), max_size)  # type: ignore[arg-type]


def test_from_concatenated_needs_both_sides() -> None:
    with pytest.raises(ConfigError, match=r"num_users must lie in \(0, 3\).*got 3"):
        SizeAssignment.from_concatenated(np.array([1, 2, 3]), 3, 4)
    with pytest.raises(ConfigError, match=r"num_users must lie in \(0, 3\).*got 0"):
        SizeAssignment.from_concatenated(np.array([1, 2, 3]), 0, 4)
    with pytest.raises(ConfigError, match="1-d"):
        SizeAssignment.from_concatenated(np.ones((2, 2), dtype=np.int64), 1, 4)


@settings(max_examples=80, deadline=None)
@given(assignments())
def test_concatenation_round_trips(sizes: SizeAssignment) -> None:
    again = SizeAssignment.from_concatenated(sizes.sizes, sizes.num_users, sizes.max_size)
    assert again == sizes and again.key == sizes.key and hash(again) == hash(sizes)
    assert sizes.sizes.tolist() == sizes.user_sizes.tolist() + sizes.item_sizes.tolist()
    dense = sizes.num_entities * sizes.max_size
    assert sizes.parameters == sum(sizes.sizes.tolist())
    assert sizes.sparsity == pytest.approx(1 - sizes.parameters / dense)
    assert sizes.bytes("float16", tables=3) == 3 * sizes.bytes("float16")
    scales = 128 + 2 * sizes.num_entities  # int8's one float16 per row, in a file of its own
    assert sizes.bytes("float16") - sizes.bytes("int8") == sizes.parameters - scales


@settings(max_examples=40, deadline=None)
@given(assignments())
def test_save_and_load_round_trip(
    tmp_path_factory: pytest.TempPathFactory, sizes: SizeAssignment
) -> None:
    path = tmp_path_factory.mktemp("sizes") / "sizes.npz"
    sizes.save(path)
    loaded = SizeAssignment.load(path)
    assert loaded == sizes and loaded.max_size == sizes.max_size
    assert loaded.num_users == sizes.num_users and loaded.num_items == sizes.num_items


def test_equality_sees_the_split_and_max_size() -> None:
    sizes = SizeAssignment(np.array([1, 2]), np.array([3]), 4)
    assert sizes != SizeAssignment(np.array([1]), np.array([2, 3]), 4)  # same concatenation
    assert sizes != SizeAssignment(np.array([1, 2]), np.array([3]), 5)
    assert sizes == SizeAssignment(np.array([1, 2]), np.array([3]), 4)
    assert len({sizes, SizeAssignment(np.array([1, 2]), np.array([3]), 4)}) == 1


def test_load_rejects_what_is_not_an_assignment(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no size assignment file"):
        SizeAssignment.load(tmp_path / "missing.npz")
    np.save(tmp_path / "bare.npy", np.array([1, 2, 3]))
    with pytest.raises(DataError, match=r"a bare array, not a size assignment"):
        SizeAssignment.load(tmp_path / "bare.npy")
    np.savez(tmp_path / "partial.npz", user_sizes=np.array([1]))
    with pytest.raises(DataError, match=r"without \['item_sizes', 'max_size'\]"):
        SizeAssignment.load(tmp_path / "partial.npz")
    np.savez(tmp_path / "wide.npz", user_sizes=np.array([9]), item_sizes=np.array([1]), max_size=8)
    with pytest.raises(DataError, match=r"wide\.npz: user_sizes must lie in \[1, 8\]"):
        SizeAssignment.load(tmp_path / "wide.npz")
    (tmp_path / "text.npz").write_text("not a zip")
    with pytest.raises(DataError, match="not a size assignment file"):
        SizeAssignment.load(tmp_path / "text.npz")


def test_bytes_rejects_other_value_types() -> None:
    sizes = SizeAssignment.equal(2, 2, 3, 4)
    with pytest.raises(ConfigError, match="value type must be one of"):
        sizes.bytes("int2")
    with pytest.raises(ConfigError, match="tables must be >= 1"):
        sizes.bytes(tables=0)


# -- the baselines -------------------------------------------------------------------------------


@pytest.mark.parametrize(("target", "size"), [(0.8, 26), (0.9, 13), (0.95, 6)])
def test_equal_sizes_follow_the_papers_rounding(target: float, size: int) -> None:
    sizes = equal_sizes(600, 400, 128, target)
    assert (sizes.num_users, sizes.num_items) == (600, 400)
    assert np.all(sizes.sizes == size)


def test_equal_sizes_within_a_parameter_count() -> None:
    assert equal_sizes_within(6, 4, 16, 35).sizes.tolist() == [3] * 10
    assert equal_sizes_within(6, 4, 16, 5).sizes.tolist() == [1] * 10  # at least one each
    assert equal_sizes_within(6, 4, 16, 10**6).sizes.tolist() == [16] * 10
    spent = equal_sizes_within(6, 4, 16, 35, spend_all=True)
    assert spent.sizes.tolist() == [4] * 5 + [3] * 5 and spent.parameters == 35
    with pytest.raises(ConfigError, match="cannot keep exactly 5 parameters"):
        equal_sizes_within(6, 4, 16, 5, spend_all=True)


@settings(max_examples=80, deadline=None)
@given(st.integers(1, 30), st.integers(1, 30), st.integers(1, 64), st.data())
def test_spending_equal_sizes_is_the_rescaled_flat_assignment(
    num_users: int, num_items: int, max_size: int, data: st.DataObject
) -> None:
    """The equal candidate's sizes: what rescaling an all-ones assignment to the total gives."""
    count = num_users + num_items
    total = data.draw(st.integers(count, count * max_size))
    spent = equal_sizes_within(num_users, num_items, max_size, total, spend_all=True)
    flat = rescale_to_total(np.ones(count, dtype=np.int64), total, max_size)
    assert spent.sizes.tolist() == flat.tolist()


@pytest.mark.parametrize("target", [0.5, 0.8, 0.9, 0.95, 0.99])
def test_mixed_random_meets_the_budget_exactly(target: float) -> None:
    rng = np.random.default_rng(0)
    sizes = mixed_random_sizes(3000, 2000, 128, target, rng)
    assert sizes.sizes.min() >= 1 and sizes.sizes.max() <= 128
    assert sizes.parameters == parameter_budget(5000, 128, target)
    assert sizes.sparsity >= target
    # Really mixed (at 0.99 the budget of 1.28 per entity leaves only sizes 1 and 2).
    assert len(np.unique(sizes.sizes)) > (1 if target > 0.95 else 10)


def test_mixed_random_is_seeded() -> None:
    first = mixed_random_sizes(200, 100, 128, 0.9, np.random.default_rng(1))
    second = mixed_random_sizes(200, 100, 128, 0.9, np.random.default_rng(1))
    assert first == second


def test_bad_targets_are_rejected() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ConfigError, match="target sparsity"):
        equal_sizes(5, 5, 128, 1.0)
    with pytest.raises(ConfigError, match="target sparsity"):
        mixed_random_sizes(5, 5, 128, -0.1, rng)
    with pytest.raises(ConfigError, match="needs a target sparsity"):
        assign_sizes(SizeScheme.EQUAL, 5, 5, 128, None, rng)
    with pytest.raises(ConfigError, match="takes no target"):
        assign_sizes(SizeScheme.FULL, 5, 5, 128, 0.5, rng)
    assert assign_sizes(SizeScheme.FULL, 5, 5, 128, None, rng) == SizeAssignment.full(5, 5, 128)
