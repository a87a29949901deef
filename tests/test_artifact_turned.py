"""A float32 LightGCN artifact turned to its principal axes and cut to an equal width, in
numpy: it scores as the torch model turned and cut the same way, counts its new bytes, and
refuses what a turn cannot keep, leaving nothing behind."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ciess_core.artifact.export import ExportMetadata, ExportOptions, export_model
from ciess_core.artifact.reader import load_artifact
from ciess_core.artifact.scorer import ArtifactScorer, ScorerOptions
from ciess_core.artifact.turned import turn_and_cut_artifact, turned_bytes
from ciess_core.data import DatasetSplit, Phase
from ciess_core.errors import ArtifactError, ConfigError
from ciess_core.models import Backbone, BackboneKind
from ciess_core.search.budgets import ByteBudget
from ciess_core.search.turned_full import (
    TURN_RATIOS,
    TURN_VALUE_TYPES,
    turned_validation,
    turned_widths,
)
from ciess_core.sizes import SizeAssignment
from ciess_core.storage import equal_stored_bytes, widest_equal_size
from tests.test_artifact_export import MAX_SIZE, export, make_model


def _full_model(split: DatasetSplit) -> Backbone:
    train, _ = split.phase(Phase.TEST)
    model = make_model(
        BackboneKind.LIGHTGCN, train, np.full(split.num_users + split.num_items, MAX_SIZE)
    )
    with torch.no_grad():  # unequal column energies, as a trained table has
        model.tables()[0].weight.mul_(torch.linspace(0.1, 2.0, MAX_SIZE))
    return model


@pytest.fixture(scope="module")
def source(clustered_split: DatasetSplit, tmp_path_factory: pytest.TempPathFactory) -> Path:
    train, _ = clustered_split.phase(Phase.TEST)
    return export_model(
        _full_model(clustered_split),
        train,
        clustered_split.external_user_ids,
        clustered_split.external_item_ids,
        tmp_path_factory.mktemp("full") / "a",
        ExportMetadata(dataset="clusters", dataset_fingerprint="f" * 64, split_seed=7),
        ExportOptions(),
    )


def _scores(directory: Path, users: np.ndarray) -> np.ndarray:
    return ArtifactScorer(load_artifact(directory), ScorerOptions(threads=1)).score_all(users)


def test_turned_at_full_width_every_score_stays(source: Path, tmp_path: Path) -> None:
    users = np.arange(8)
    manifest = turn_and_cut_artifact(source, MAX_SIZE, "float32", tmp_path / "turned", "v1")
    assert (
        manifest.verification["turned_from"] == "v1" and manifest.verification["width"] == MAX_SIZE
    )
    before, after = _scores(source, users), _scores(tmp_path / "turned", users)
    np.testing.assert_allclose(after, before, rtol=1e-4, atol=1e-4 * np.abs(before).max())


@pytest.mark.parametrize("value_type", ["float32", "int8", "int4-table"])
def test_cut_in_numpy_it_scores_as_the_torch_model_turned_and_cut(
    clustered_split: DatasetSplit, source: Path, tmp_path: Path, value_type: str
) -> None:
    width = 5
    measured = {"ndcg@20": 0.25}
    manifest = turn_and_cut_artifact(source, width, value_type, tmp_path / "cut", valid=measured)
    new = load_artifact(tmp_path / "cut")  # validates every file, hash and the stored bytes
    assert new.manifest == manifest and manifest.value_dtype == value_type
    assert manifest.achieved_sparsity == pytest.approx(1 - width / MAX_SIZE)
    assert manifest.metrics["valid"] == measured and manifest.metrics["test"] is None
    assert manifest.metrics["valid_by_value_type"] == {value_type: measured}
    assert manifest.dataset["size_scheme"] == "equal" and manifest.target_sparsity is None
    assert manifest.memory.stored < 0.25 * load_artifact(source).manifest.memory.stored
    assert any("size_runs" in entry.path for entry in manifest.files)  # one run of sizes
    assert manifest.memory.stored == turned_bytes(load_artifact(source).manifest, width, value_type)
    model = _full_model(clustered_split)
    model.turn_to_principal_axes()
    count = clustered_split.num_users + clustered_split.num_items
    model.set_size_assignment(
        SizeAssignment.from_concatenated(np.full(count, width), clustered_split.num_users, MAX_SIZE)
    )
    users = np.arange(8)
    with torch.no_grad():
        expected = model.score_all_items(model.represent(), torch.from_numpy(users)).numpy()
    scores = _scores(tmp_path / "cut", users)
    tolerance = {"float32": 1e-4, "int8": 2e-2, "int4-table": 0.2}[value_type]
    assert np.abs(scores - expected).max() <= tolerance * np.abs(expected).max()


def test_what_a_turn_cannot_keep_is_refused_and_nothing_is_written(
    clustered_split: DatasetSplit, source: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    ncf = export(BackboneKind.NCF, clustered_split, tmp_path / "ncf")
    with pytest.raises(ArtifactError, match="ncf model: turning its tables"):
        turn_and_cut_artifact(ncf, 4, "int8", out)
    quantised = tmp_path / "int8"
    turn_and_cut_artifact(source, MAX_SIZE, "int8", quantised)
    with pytest.raises(ArtifactError, match="stores int8 values: only a float32"):
        turn_and_cut_artifact(quantised, 4, "int8", out)
    with pytest.raises(ConfigError, match=r"width must lie in \[1, 32\], got 0"):
        turn_and_cut_artifact(source, 0, "int8", out)
    with pytest.raises(ArtifactError, match="over the budget of 100"):
        turn_and_cut_artifact(source, 4, "int8", out, max_bytes=100)
    assert not out.exists() and not list(tmp_path.glob(".*staging"))
    with pytest.raises(ArtifactError, match="exists already"):
        turn_and_cut_artifact(source, 4, "int8", source)


def test_the_measured_widths_are_the_widest_each_type_stores_within_each_ratio() -> None:
    users, items, width = 600, 400, 128
    widths = turned_widths(users, items, width)
    assert set(widths) == set(TURN_VALUE_TYPES)
    for value_type, sizes in widths.items():
        assert sizes == sorted(set(sizes), reverse=True)
        for ratio in TURN_RATIOS:
            allowed = ByteBudget(ratio).allowed_bytes(users + items, width, 1)
            size = widest_equal_size(allowed, users + items, value_type, width)
            assert size in sizes or size == 0
            assert equal_stored_bytes(users + items, size, value_type, width) <= allowed
            if 0 < size < width:
                assert equal_stored_bytes(users + items, size + 1, value_type, width) > allowed


def test_scoring_the_turned_cuts_leaves_the_full_model_as_it_was(
    clustered_split: DatasetSplit,
) -> None:
    train, _ = clustered_split.phase(Phase.SEARCH)
    count = clustered_split.num_users + clustered_split.num_items
    model = make_model(BackboneKind.LIGHTGCN, train, np.full(count, MAX_SIZE))
    before = model.tables()[0].weight.detach().clone()
    scores = turned_validation(model, clustered_split)
    assert set(scores) == set(TURN_VALUE_TYPES)
    assert all(
        metrics["ndcg@20"] > 0 for by_width in scores.values() for metrics in by_width.values()
    )
    assert torch.equal(model.tables()[0].weight, before)
    assert bool((model.embedding_sizes() == MAX_SIZE).all())
