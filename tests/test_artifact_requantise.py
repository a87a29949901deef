"""An artifact stored again in another value type, without torch: what it keeps, what it
counts, and that a failure leaves nothing behind."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from ciess_core import __version__
from ciess_core.artifact.manifest import SCHEMA_VERSION
from ciess_core.artifact.reader import load_artifact
from ciess_core.artifact.requantise import (
    keeps_measured_quality,
    requantise_artifact,
    requantised_bytes,
)
from ciess_core.artifact.scorer import ArtifactScorer, ScorerOptions
from ciess_core.data import DatasetSplit
from ciess_core.errors import ArtifactError
from ciess_core.models import BackboneKind
from tests.test_artifact_export import export


@pytest.fixture(scope="module")
def source(clustered_split: DatasetSplit, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = export(BackboneKind.NCF, clustered_split, tmp_path_factory.mktemp("src") / "a")
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["metrics"] = {"valid": {"ndcg@20": 0.3}, "test": {"ndcg@20": 0.29},
        "valid_by_value_type": {"int4-table": {"ndcg@20": 0.28}}}  # fmt: skip
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


@pytest.mark.parametrize("value_type", ["float16", "int8", "int4-table"])
def test_a_requantised_artifact_counts_its_new_bytes_and_scores_like_its_tables(
    source: Path, tmp_path: Path, value_type: str
) -> None:
    old = load_artifact(source)
    out = tmp_path / value_type
    manifest = requantise_artifact(source, value_type, out, "v-source")
    new = load_artifact(out)  # validates every file, hash and the stored bytes
    assert new.manifest == manifest and manifest.value_dtype == value_type
    assert manifest.memory.stored == requantised_bytes(old.manifest, value_type)
    assert manifest.memory.stored < old.manifest.memory.stored
    assert manifest.verification["requantised_from"] == "v-source"
    assert manifest.metrics["valid"] == (
        {"ndcg@20": 0.28} if value_type == "int4-table" else None  # only what was measured
    )
    for name in old.manifest.tables:
        np.testing.assert_array_equal(new.tables[name].sizes, old.tables[name].sizes)
        error = new.tables[name].values - old.tables[name].values  # a table scale clips: RMS
        assert np.sqrt(np.mean(np.square(error))) <= 0.06 * np.abs(old.tables[name].values).max()
    users = np.arange(5)
    before = ArtifactScorer(old, ScorerOptions(threads=1)).recommend(users, 5)[0]
    after = ArtifactScorer(new, ScorerOptions(threads=1)).recommend(users, 5)[0]
    if value_type == "float16":  # the same model, eleven bits of mantissa: the same lists
        assert np.mean(before == after) >= 0.9


def test_a_requantisation_over_its_budget_writes_nothing(source: Path, tmp_path: Path) -> None:
    needed = requantised_bytes(load_artifact(source).manifest, "int8")
    with pytest.raises(ArtifactError, match=f"over the budget of {needed - 1}"):
        requantise_artifact(source, "int8", tmp_path / "out", max_bytes=needed - 1)
    assert list(tmp_path.iterdir()) == []  # no artifact, no staging folder
    with pytest.raises(ArtifactError, match="exists already"):
        requantise_artifact(source, "int8", source)


def test_a_requantisation_copies_only_the_listed_files(source: Path, tmp_path: Path) -> None:
    """A stray file, or a link out of the source folder, is neither copied nor listed: the copy
    holds what the source's manifest vouches for."""
    copy = tmp_path / "source"
    shutil.copytree(source, copy)
    secret = tmp_path / "secret.txt"
    secret.write_text("outside the artifact\n")
    (copy / "ids/leak.json").symlink_to(secret)
    (copy / "notes.txt").write_text("stray\n")
    manifest = requantise_artifact(copy, "int8", tmp_path / "out")
    listed = {entry.path for entry in manifest.files}
    assert "ids/leak.json" not in listed and "notes.txt" not in listed
    assert not (tmp_path / "out/ids/leak.json").exists()
    out = tmp_path / "out"
    written = {path.relative_to(out).as_posix() for path in out.rglob("*") if path.is_file()}
    assert written == listed | {"manifest.json"}


def test_a_requantisation_keeps_sizes_stored_as_runs_and_counts_them_so(
    clustered_split: DatasetSplit, tmp_path: Path
) -> None:
    count = clustered_split.num_users + clustered_split.num_items
    source = export(BackboneKind.LIGHTGCN, clustered_split, tmp_path / "equal", np.full(count, 5))
    old = load_artifact(source).manifest
    assert any("size_runs" in entry.path for entry in old.files)  # equal sizes: one run
    for value_type in ("int8", "int4-table"):
        manifest = requantise_artifact(source, value_type, tmp_path / value_type)
        assert any("size_runs" in entry.path for entry in manifest.files)
        assert manifest.memory.stored == requantised_bytes(old, value_type)


@pytest.mark.parametrize("value_type", ["int8", "int4", "int8-table", "int4-table"])
def test_a_quantised_artifact_stored_again_in_its_own_type_keeps_its_codes(
    source: Path, tmp_path: Path, value_type: str
) -> None:
    quantised = tmp_path / "once"
    requantise_artifact(source, value_type, quantised)
    again = requantise_artifact(quantised, value_type, tmp_path / "twice")
    assert again.metrics["valid"] == (
        {"ndcg@20": 0.28} if value_type == "int4-table" else None  # what its run measured
    )
    stores = [entry for entry in again.files if entry.path.startswith("tables/")]
    assert stores
    for entry in stores:
        assert (tmp_path / "twice" / entry.path).read_bytes() == (
            quantised / entry.path
        ).read_bytes(), entry.path


def test_a_quantised_artifact_stored_in_another_type_claims_no_validation(
    source: Path, tmp_path: Path
) -> None:
    requantise_artifact(source, "int8", tmp_path / "int8")
    twice = requantise_artifact(tmp_path / "int8", "int4-table", tmp_path / "int4-table")
    # Its run measured int4-table from float32 values, not from int8 codes rounded again.
    assert keeps_measured_quality("int8", "int4-table") is False
    assert twice.metrics["valid"] is None
    assert keeps_measured_quality("float32", "int4-table") is True


def test_a_requantised_artifact_is_of_this_version_and_claims_no_test_of_another_model(
    source: Path, tmp_path: Path
) -> None:
    """Its manifest is written by this ciess (an older source's versions would misstate its
    stores); a test measured the source's model, which only the source's own type keeps."""
    older = tmp_path / "older"
    shutil.copytree(source, older)
    manifest = json.loads((older / "manifest.json").read_text())
    assert manifest["value_dtype"] == "float32"
    (older / "manifest.json").write_text(
        json.dumps({**manifest, "schema_version": 2, "ciess_version": "0.0.1"})
    )
    same = requantise_artifact(older, "float32", tmp_path / "float32", max_bytes=10**9)
    other = requantise_artifact(older, "int8", tmp_path / "int8")
    for copy in (same, other):
        assert (copy.schema_version, copy.ciess_version) == (SCHEMA_VERSION, __version__)
    assert same.metrics["test"] == {"ndcg@20": 0.29} and same.budget_bytes == 10**9
    assert other.metrics["test"] is None and other.budget_bytes is None
    assert load_artifact(tmp_path / "int8").manifest == other
