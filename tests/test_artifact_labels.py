"""LabelIndex answers what a dict built from the same id array answers, for any query."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ciess_core.artifact.labels import LabelIndex
from ciess_core.errors import ArtifactError

# Ids as services see them: empty, numeric-looking (with leading zeros and signs), non-ASCII
# (accents, CJK, emoji outside the BMP, combining marks, a lone surrogate as JSON can carry),
# control characters and NUL.
ID_TEXT = st.one_of(
    st.text(max_size=12),
    st.integers(-(10**12), 10**12).map(str),
    st.integers(0, 999).map(lambda n: f"{n:05d}"),
    st.sampled_from(
        ["", "0", "00", "-0", "1e3", "é", "e\u0301", "用户", "😀", "a\x00b", " ", "\ud800"]
    ),
)


def as_artifact_ids(labels: list[str]) -> np.ndarray:
    """Distinct ids as the reader stores them: a unicode array (trailing NULs dropped)."""
    array = np.asarray(labels, dtype=np.str_)
    _, first = np.unique(array, return_index=True)
    return array[np.sort(first)]


def dict_answers(ids: np.ndarray, queries: list[str]) -> list[int]:
    """What the scorer's dict (built by enumerating the array) answered."""
    lookup = {label: index for index, label in enumerate(ids)}
    return [lookup.get(query, -1) for query in queries]


@st.composite
def ids_and_queries(draw: st.DrawFn) -> tuple[np.ndarray, list[str]]:
    ids = as_artifact_ids(draw(st.lists(ID_TEXT, max_size=40)))
    known = st.sampled_from(ids.tolist()) if ids.size else ID_TEXT
    near_misses = known.flatmap(
        lambda label: st.sampled_from([label + "\x00", label + " ", label[:-1], "0" + label])
    )
    queries = draw(st.lists(st.one_of(known, known, ID_TEXT, near_misses), max_size=30))
    return ids, queries


@settings(max_examples=300, deadline=None)
@given(ids_and_queries())
def test_lookups_match_a_dict(case: tuple[np.ndarray, list[str]]) -> None:
    ids, queries = case
    index = LabelIndex(ids)
    expected = dict_answers(ids, queries)
    found = index.lookup(queries)
    assert found.dtype == np.int64 and found.shape == (len(queries),)
    assert found.tolist() == expected
    for query, answer in zip(queries, expected, strict=True):  # the one-label paths
        assert index.lookup([query]).tolist() == [answer] and index.find(query) == answer
    assert len(index) == ids.size


def test_examples_by_hand() -> None:
    index = LabelIndex(np.asarray(["10", "2", "", "é", "1"]))
    queries = ["1", "10", "100", "2", "", "\x00", "1\x00", "é", "e", "2", "02", "10 "]
    assert index.lookup(queries).tolist() == [4, 0, -1, 1, 2, -1, -1, 3, -1, 1, -1, -1]
    assert index.lookup([]).tolist() == [] and index.lookup([]).dtype == np.int64
    assert (index.find(""), index.find("\x00"), index.find("3"), index.find("é")) == (2, -1, -1, 3)
    # Sorted labels ("<U2": 8 bytes each) and an int32 permutation.
    assert index.nbytes == 5 * 8 + 5 * 4


def test_an_empty_index_knows_nothing() -> None:
    index = LabelIndex(np.asarray([], dtype=np.str_))
    assert index.lookup(["", "a"]).tolist() == [-1, -1] and index.lookup([""]).tolist() == [-1]
    assert index.find("") == -1 and index.nbytes == 0


def test_bad_id_arrays_are_rejected() -> None:
    with pytest.raises(ArtifactError, match=r"not unique: \['b'\]"):
        LabelIndex(np.asarray(["b", "a", "b"]))
    with pytest.raises(ArtifactError, match="1-D unicode"):
        LabelIndex(np.asarray([1, 2]))
    with pytest.raises(ArtifactError, match="1-D unicode"):
        LabelIndex(np.asarray([["a"]]))
