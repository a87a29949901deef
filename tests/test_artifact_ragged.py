"""The ragged store, width buckets, the manifest and the numpy graph normalisation (pure parts)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from ciess_core.artifact.buckets import bucket_layout, effective_widths, plan_buckets
from ciess_core.artifact.manifest import (
    SCHEMA_VERSION,
    FileEntry,
    Manifest,
    MemoryReport,
    manifest_from_json,
    manifest_to_json,
)
from ciess_core.artifact.propagation import (
    lightgcn_propagate,
    symmetric_normalized_adjacency,
)
from ciess_core.artifact.ragged import (
    RaggedTable,
    pack,
    unpack,
    validate_ragged,
)
from ciess_core.errors import ArtifactError
from ciess_core.storage import offsets_from_sizes


@st.composite
def masked_tables(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, int]:
    """A masked dense table with random sizes; sizes 1 and max_size are drawn often."""
    max_size = draw(st.integers(1, 40))
    num_rows = draw(st.integers(1, 25))
    sizes = np.asarray(
        draw(
            st.lists(
                st.one_of(st.just(1), st.just(max_size), st.integers(1, max_size)),
                min_size=num_rows,
                max_size=num_rows,
            )
        ),
        dtype=np.int64,
    )
    seed = draw(st.integers(0, 2**16))
    dense = np.random.default_rng(seed).normal(size=(num_rows, max_size)).astype(np.float32)
    dense[np.arange(max_size)[None, :] >= sizes[:, None]] = 0.0
    return dense, sizes, max_size


@settings(max_examples=60, deadline=None)
@given(masked_tables())
def test_pack_then_unpack_is_the_masked_table(table: tuple[np.ndarray, np.ndarray, int]) -> None:
    dense, sizes, max_size = table
    ragged = pack(dense, sizes, max_size)
    validate_ragged(ragged)
    assert ragged.values.size == sizes.sum()
    assert ragged.offsets[0] == 0 and ragged.offsets[-1] == ragged.values.size
    np.testing.assert_array_equal(np.diff(ragged.offsets), sizes)
    np.testing.assert_array_equal(unpack(ragged, max_size), dense)
    for row in (0, len(sizes) - 1):
        np.testing.assert_array_equal(ragged.row(row), dense[row, : sizes[row]])
    rows = np.arange(len(sizes))[::-2]
    np.testing.assert_array_equal(unpack(ragged, max_size, rows), dense[rows])


@settings(max_examples=30, deadline=None)
@given(masked_tables())
def test_float16_round_trip_rounds_only_the_values(
    table: tuple[np.ndarray, np.ndarray, int],
) -> None:
    dense, sizes, max_size = table
    ragged = pack(dense, sizes, max_size, value_dtype="float16")
    assert ragged.values.dtype == np.float16
    np.testing.assert_array_equal(
        unpack(ragged, max_size), dense.astype(np.float16).astype(np.float32)
    )


@settings(max_examples=60, deadline=None)
@given(masked_tables(), st.integers(1, 4))
def test_bucketed_dot_products_equal_the_padded_ones(
    table: tuple[np.ndarray, np.ndarray, int], max_buckets: int
) -> None:
    items, _, _ = table
    user = np.random.default_rng(0).normal(size=int(items.shape[1])).astype(np.float32)
    layout = bucket_layout(effective_widths(items), max_buckets=max_buckets, min_saving=0.0)
    assert len(layout.bounds) <= max_buckets
    scores = np.empty(items.shape[0], dtype=np.float64)
    for start, end, width in layout.bounds:
        block = items[layout.order[start:end]]
        assert not np.any(block[:, width:])  # nothing is cut off
        scores[start:end] = block[:, :width].astype(np.float64) @ user[:width]
    expected = items.astype(np.float64) @ user
    np.testing.assert_allclose(scores[layout.position], expected, rtol=1e-12, atol=1e-12)
    assert layout.padded_elements <= items.shape[0] * items.shape[1]


def test_effective_width_is_one_past_the_last_nonzero() -> None:
    matrix = np.array([[1, 0, 2, 0], [0, 0, 0, 0], [0, 0, 0, 3], [5, 0, 0, 0]], dtype=np.float32)
    np.testing.assert_array_equal(effective_widths(matrix), [3, 1, 4, 1])


def test_bucket_plan_of_a_hand_example() -> None:
    # 90 rows of width 2, 10 of width 100: two buckets cost 90·2 + 10·100 = 1180 vs 10000.
    widths = np.array([2] * 90 + [100] * 10)
    assert plan_buckets(widths, max_buckets=4) == (2, 100)
    assert plan_buckets(widths, max_buckets=1) == (100,)
    # All rows equally wide: one bucket, whatever is allowed.
    assert plan_buckets(np.full(50, 13), max_buckets=4) == (13,)
    # An extra bucket that saves less than min_saving is not worth it.
    assert plan_buckets(np.array([99] * 50 + [100] * 50), min_saving=0.02) == (100,)


def _table(**changes: np.ndarray) -> RaggedTable:
    sizes = np.array([2, 1, 3], dtype=np.int16)
    values = {
        "sizes": sizes,
        "offsets": offsets_from_sizes(sizes),
        "values": np.arange(6, dtype=np.float32),
    }
    values.update(changes)
    return RaggedTable(max_size=4, name="tables/t", **values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"offsets": np.array([1, 3, 4, 7])}, r"offsets\[0\] must be 0, got 1"),
        (
            {"offsets": np.array([0, 3, 2, 6])},
            r"non-decreasing, but offsets\[2\] = 2 < offsets\[1\]",
        ),
        ({"values": np.arange(5, dtype=np.float32)}, r"offsets\[-1\] = 6 but values holds 5"),
        (
            {"offsets": np.array([0, 1, 3, 6])},
            r"row 0 spans offsets\[0..1\] = 1 values but its size is 2",
        ),
        (
            {
                "sizes": np.array([2, 1, 5], np.int16),
                "offsets": np.array([0, 2, 3, 8]),
                "values": np.zeros(8, np.float32),
            },
            r"sizes must lie in \[1, 4\], got range \[1, 5\]",
        ),
        ({"values": np.array([0, 1, np.nan, 3, 4, 5], np.float32)}, r"values\[2\] is nan"),
        (
            {"values": np.array([0, 1, 2, 3e30, -3e30, 5], np.float32)},
            r"values\[3\] = 3e\+30 exceeds the magnitude bound 10000 \(2 values do\)",
        ),
    ],
)
def test_validation_names_the_broken_invariant(
    changes: dict[str, np.ndarray], message: str
) -> None:
    table = _table(**changes)
    with pytest.raises(ArtifactError, match=message) as raised:
        validate_ragged(table)
    assert str(raised.value).startswith("tables/t:")


def test_constructor_rejects_wrong_lengths_and_dtypes() -> None:
    with pytest.raises(ArtifactError, match="offsets has 3 entries, expected num_rows \\+ 1 = 4"):
        _table(offsets=np.array([0, 2, 3]))
    with pytest.raises(ArtifactError, match="offsets must be int64"):
        _table(offsets=np.array([0, 2, 3, 6], dtype=np.int32))
    with pytest.raises(ArtifactError, match="values must be one of"):
        _table(values=np.arange(6, dtype=np.float64))
    with pytest.raises(ArtifactError, match="sizes must lie in"):
        pack(np.ones((2, 3), np.float32), np.array([0, 3]))


def _manifest() -> Manifest:
    return Manifest(
        schema_version=SCHEMA_VERSION,
        created_at="2024-01-01T00:00:00+00:00",
        ciess_version="0.1.0",
        backbone="ncf",
        backbone_config={"kind": "ncf", "max_size": 8, "mlp_layers": [4, 2]},
        max_size=8,
        num_users=3,
        num_items=2,
        value_dtype="float32",
        tables=("gmf", "mlp"),
        graphs={"dot": "graphs/dot.onnx"},
        target_sparsity=0.9,
        achieved_sparsity=0.9,
        dataset={"name": "x", "fingerprint": "ab", "split_seed": 1},
        metrics={"test": {"recall@20": 0.5}},
        memory=MemoryReport(30, {"values": 20, "sizes": 10}, 300, 40, {"users": 40}),
        verification={"users": 3},
        files=(FileEntry("a.npy", "00" * 32, 128),),
    )


def test_manifest_json_round_trip() -> None:
    manifest = _manifest()
    again = manifest_from_json(manifest_to_json(manifest))
    assert manifest_to_json(again) == manifest_to_json(manifest)
    assert again.files == manifest.files and again.memory.resident_detail == {"users": 40}


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda text: text.replace(f'"schema_version": {SCHEMA_VERSION}', '"schema_version": 1'),
            "unknown schema_version 1",
        ),
        (
            lambda text: text.replace('"num_users": 3', '"num_users": "3"'),
            "field 'num_users' has the wrong type",
        ),
        (
            lambda text: text.replace('"backbone": "ncf"', '"backbone": "mf"'),
            "unknown backbone 'mf'",
        ),
        (lambda text: text.replace('"gmf",', ""), "holds tables \\['gmf', 'mlp'\\]"),
        (lambda text: text[:-5], "not valid JSON"),
    ],
)
def test_manifest_rejects_what_it_does_not_understand(edit, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ArtifactError, match=message):
        manifest_from_json(edit(manifest_to_json(_manifest())))


def test_manifest_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        _manifest().num_users = 4  # type: ignore[misc]


def test_numpy_propagation_matches_the_torch_lightgcn(tiny_train: sp.csr_matrix) -> None:
    torch = pytest.importorskip("torch")
    from ciess_core.models import BackboneConfig, build_backbone

    model = build_backbone(BackboneConfig(max_size=8), tiny_train, torch.Generator().manual_seed(0))
    model.set_embedding_sizes(
        torch.randint(1, 9, (21,), generator=torch.Generator().manual_seed(1))
    )
    with torch.no_grad():
        users, items = model.represent()
        layer0 = model.tables()[0]().numpy()
    ours = lightgcn_propagate(symmetric_normalized_adjacency(tiny_train), layer0, 3)
    np.testing.assert_allclose(ours, torch.cat([users, items]).numpy(), rtol=1e-5, atol=1e-6)
