"""Export: layout, manifest, size bound, atomic writes, run directories, the CLI, and corruption."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from ciess_core.artifact import export as export_module
from ciess_core.artifact.export import ExportMetadata, ExportOptions, export_model, export_run
from ciess_core.artifact.files import sha256_file
from ciess_core.artifact.manifest import SCHEMA_VERSION, FileEntry
from ciess_core.artifact.reader import load_artifact
from ciess_core.cli import main
from ciess_core.data import DatasetSplit, InteractionData, Phase, split_per_user
from ciess_core.errors import ArtifactError, ConfigError, DataError
from ciess_core.models import Backbone, BackboneConfig, BackboneKind, build_backbone
from ciess_core.run_folder import RUN_FORMAT_VERSION, read_run, write_run
from ciess_core.runs import Protocol, RunOutcome, RunSpec
from ciess_core.sizes import SizeAssignment, SizeScheme, assign_sizes
from ciess_core.storage import count_runs, npy_bytes
from ciess_core.training import TrainConfig

MAX_SIZE = 32


def make_model(kind: BackboneKind, train: sp.csr_matrix, sizes: np.ndarray) -> Backbone:
    """An untrained backbone with the given sizes; N(0, 0.01) tables scaled to give O(1) scores."""
    config = BackboneConfig.default_for(kind, max_size=MAX_SIZE, mlp_layers=(16, 8))
    model = build_backbone(config, train, torch.Generator().manual_seed(0))
    if kind is not BackboneKind.NGCF:  # NGCF's Xavier init is O(1) already
        with torch.no_grad():
            for table in model.tables():
                table.weight.mul_(100.0)
    model.set_embedding_sizes(torch.from_numpy(sizes))
    return model


def random_sizes(count: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(1, MAX_SIZE + 1, count)


def export(
    kind: BackboneKind,
    split: DatasetSplit,
    out: Path,
    sizes: np.ndarray | None = None,
    **options: object,
) -> Path:
    train, _ = split.phase(Phase.TEST)
    count = split.num_users + split.num_items
    model = make_model(kind, train, random_sizes(count) if sizes is None else sizes)
    return export_model(
        model,
        train,
        split.external_user_ids,
        split.external_item_ids,
        out,
        ExportMetadata(dataset="clusters", dataset_fingerprint="f" * 64, split_seed=7),
        ExportOptions(**options),  # type: ignore[arg-type]
    )


@pytest.fixture(scope="module")
def artifacts(clustered_split: DatasetSplit, tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("artifacts")
    return {kind: export(kind, clustered_split, root / kind.value) for kind in BackboneKind}


def test_layout_and_manifest(artifacts: dict, clustered_split: DatasetSplit) -> None:
    directory = artifacts[BackboneKind.NGCF]
    manifest = json.loads((directory / "manifest.json").read_text())
    assert manifest["schema_version"] == SCHEMA_VERSION
    assert (manifest["num_users"], manifest["num_items"]) == (120, 80)
    assert manifest["backbone"] == "ngcf" and manifest["max_size"] == MAX_SIZE
    paths = {entry["path"] for entry in manifest["files"]}
    assert paths == {
        "ids/users.json",
        "ids/items.json",
        "interactions/indptr.npy",
        "interactions/indices.npy",
        "tables/embedding/sizes.npy",
        "tables/embedding/values.npy",
        "graphs/dot.onnx",
        "graphs/topk.onnx",
        *(f"graphs/ngcf_layer_{k}.onnx" for k in range(3)),
    }
    on_disk = {str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file()}
    assert on_disk == paths | {"manifest.json"}
    for entry in manifest["files"]:
        file = directory / entry["path"]
        assert sha256_file(file) == entry["sha256"] and file.stat().st_size == entry["bytes"]
    sizes = np.load(directory / "tables/embedding/sizes.npy")
    assert manifest["achieved_sparsity"] == pytest.approx(1 - sizes.sum() / (200 * MAX_SIZE))
    assert sizes.dtype == np.uint8  # one byte per entity; offsets are derived on load
    memory = manifest["memory"]
    table_files = {e["path"]: e["bytes"] for e in manifest["files"] if "tables/" in e["path"]}
    assert memory["stored"] == sum(table_files.values()) == sum(memory["stored_detail"].values())
    assert memory["stored_detail"]["values"] == table_files["tables/embedding/values.npy"]
    assert memory["stored_detail"]["values"] == 128 + 4 * sizes.sum()  # .npy header + float32
    assert memory["dense"] == 4 * 200 * MAX_SIZE
    assert memory["resident"] == sum(memory["resident_detail"].values()) > 0
    assert manifest["verification"]["top_k_identical_fraction"] == 1.0
    assert manifest["dataset"]["fingerprint"] == "f" * 64
    # The seen items are the training matrix of the test phase (train ∪ valid).
    artifact = load_artifact(directory)
    train, _ = clustered_split.phase(Phase.TEST)
    assert (artifact.seen != train).nnz == 0
    assert artifact.external_user_ids.tolist() == clustered_split.external_user_ids.tolist()


def test_ncf_artifact_stores_both_tables(artifacts: dict) -> None:
    artifact = load_artifact(artifacts[BackboneKind.NCF])
    assert set(artifact.tables) == {"gmf", "mlp"}
    np.testing.assert_array_equal(artifact.tables["gmf"].sizes, artifact.tables["mlp"].sizes)
    assert set(artifact.graph_paths) == {"dot", "topk", "ncf_user", "ncf_item", "ncf_tower"}


def test_no_pickles_anywhere(artifacts: dict) -> None:
    for directory in artifacts.values():
        for file in (path for path in directory.rglob("*") if path.is_file()):
            assert file.suffix in {".npy", ".json", ".onnx"}, file
            if file.suffix == ".npy":
                assert not np.load(file, allow_pickle=False).dtype.hasobject


@pytest.mark.parametrize("target", [0.8, 0.9, 0.95])
@pytest.mark.parametrize("scheme", ["equal", "random", "skewed"])
def test_embedding_bytes_track_the_budget(
    scheme: str, target: float, clustered_split: DatasetSplit, tmp_path: Path
) -> None:
    count = clustered_split.num_users + clustered_split.num_items
    rng = np.random.default_rng(0)
    sizes: np.ndarray  # float64 when skewed, int64 from assign_sizes: made int64 below
    if scheme == "skewed":  # CIESS-like: a few wide entities, a long tail of narrow ones
        sizes = np.clip(rng.pareto(1.5, count) * (1 - target) * MAX_SIZE / 2, 1, MAX_SIZE)
        sizes = np.floor(sizes * (1 - target) * MAX_SIZE * count / sizes.sum()).clip(1, MAX_SIZE)
    else:
        shape = (clustered_split.num_users, clustered_split.num_items, MAX_SIZE)
        sizes = assign_sizes(SizeScheme(scheme), *shape, target, rng).sizes
    sizes = sizes.astype(np.int64)
    out = export(BackboneKind.LIGHTGCN, clustered_split, tmp_path / "a", sizes, verify_users=0)
    manifest = load_artifact(out).manifest
    achieved = manifest.achieved_sparsity
    assert achieved >= target - 1 / MAX_SIZE  # ES rounds its one size
    assignment = SizeAssignment.from_concatenated(sizes, clustered_split.num_users, MAX_SIZE)
    assert manifest.achieved_sparsity == assignment.sparsity
    # Every stored byte of the store, as the files hold them and as a budget counts them.
    table_files = [entry for entry in manifest.files if entry.path.startswith("tables/")]
    assert manifest.memory.stored == sum(entry.bytes for entry in table_files)
    assert manifest.memory.stored == assignment.bytes("float32", tables=1)
    # Beyond the values, only the sizes (a byte per entity, or 8 bytes a run of equal sizes
    # when that is smaller: equal sizes) and two .npy headers.
    dense = manifest.memory.dense
    runs = count_runs(sizes)
    sizes_bytes = min(count, 8 * runs)
    assert manifest.memory.stored == round((1 - achieved) * dense) + sizes_bytes + 2 * 128
    layout = "size_runs.npy" if 8 * runs < count else "sizes.npy"
    assert f"tables/embedding/{layout}" in {entry.path for entry in table_files}


@pytest.mark.parametrize("value_type", ["float16", "int8", "int4", "int8-table", "int4-table"])
@pytest.mark.parametrize("kind", list(BackboneKind))
def test_every_value_type_exports_with_the_parity_of_its_decoded_model(
    kind: BackboneKind, value_type: str, clustered_split: DatasetSplit, tmp_path: Path
) -> None:
    """The artifact's scores equal, within float32 tolerance, those of the exported model whose
    tables hold the stored values decoded, and so does its top-20; the bytes are what the
    layout says."""
    out = export(kind, clustered_split, tmp_path / value_type, value_dtype=value_type)
    artifact = load_artifact(out)
    manifest = artifact.manifest
    assert manifest.value_dtype == value_type
    verification = manifest.verification
    assert verification["top_k_identical_fraction"] == 1.0 and verification["top_k"] == 20
    assert verification["max_abs_score_difference"] <= 1e-5 * (1 + verification["max_abs_score"])
    sizes = SizeAssignment.from_concatenated(
        artifact.tables[manifest.tables[0]].sizes, clustered_split.num_users, MAX_SIZE
    )
    assert manifest.memory.stored == sizes.bytes(value_type, tables=len(manifest.tables))
    assert manifest.memory.stored == sum(
        entry.bytes for entry in manifest.files if entry.path.startswith("tables/")
    )
    assert ("scales" in manifest.memory.stored_detail) == (value_type != "float16")
    full = export(kind, clustered_split, tmp_path / "float32")
    stored_full = load_artifact(full).manifest.memory.stored
    assert (
        manifest.memory.stored
        < stored_full
        * {"float16": 0.6, "int8": 0.4, "int4": 0.3, "int8-table": 0.4, "int4-table": 0.2}[
            value_type
        ]
    )


def test_half_written_export_leaves_nothing(
    clustered_split: DatasetSplit, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(*args: object) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(export_module, "_write_graphs", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        export(BackboneKind.LIGHTGCN, clustered_split, tmp_path / "artifact")
    assert list(tmp_path.iterdir()) == []


def test_failed_parity_check_leaves_nothing(
    clustered_split: DatasetSplit, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = export_module.ArtifactScorer.score_all
    monkeypatch.setattr(
        export_module.ArtifactScorer, "score_all", lambda self, users: original(self, users) + 1e-3
    )
    with pytest.raises(ArtifactError, match="export check failed"):
        export(BackboneKind.NCF, clustered_split, tmp_path / "artifact")
    assert list(tmp_path.iterdir()) == []


def test_export_refuses_an_existing_directory(
    clustered_split: DatasetSplit, tmp_path: Path
) -> None:
    (tmp_path / "taken").mkdir()
    with pytest.raises(ConfigError, match="already exists"):
        export(BackboneKind.LIGHTGCN, clustered_split, tmp_path / "taken")


# -- corruption: each is rejected with its own message ------------------------------------------
def _copy(source: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(source, target)
    return target


def _rewrite(directory: Path, relative: str, array: np.ndarray) -> None:
    """Replace a file *and* its manifest entry, as a buggy writer would."""
    np.save(directory / relative, array, allow_pickle=False)
    _edit_manifest(directory, lambda m: _rehash(directory, m, relative))


def _rehash(directory: Path, manifest: dict, relative: str) -> None:
    for entry in manifest["files"]:
        if entry["path"] == relative:
            entry["sha256"] = sha256_file(directory / relative)
            entry["bytes"] = (directory / relative).stat().st_size


def _edit_manifest(directory: Path, edit) -> None:  # type: ignore[no-untyped-def]
    path = directory / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))


def _truncate(directory: Path) -> None:
    path = directory / "tables/embedding/values.npy"
    path.write_bytes(path.read_bytes()[:-8])


def _flip_byte(directory: Path) -> None:
    path = directory / "tables/embedding/values.npy"
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))


def _short_values(directory: Path) -> None:
    values = np.load(directory / "tables/embedding/values.npy")
    _rewrite(directory, "tables/embedding/values.npy", values[:-2])


def _size_out_of_range(directory: Path) -> None:
    sizes = np.load(directory / "tables/embedding/sizes.npy")
    sizes[3] = 0
    _rewrite(directory, "tables/embedding/sizes.npy", sizes)


def _wide_sizes(directory: Path) -> None:
    sizes = np.load(directory / "tables/embedding/sizes.npy")
    _rewrite(directory, "tables/embedding/sizes.npy", sizes.astype(np.int16))


def _stored_bytes_misstated(directory: Path) -> None:
    _edit_manifest(
        directory, lambda m: m["memory"].__setitem__("stored", m["memory"]["stored"] - 1)
    )


def _item_out_of_range(directory: Path) -> None:
    indices = np.load(directory / "interactions/indices.npy")
    indices[-1] = 80
    _rewrite(directory, "interactions/indices.npy", indices)


def _set(field: str, value: object):  # type: ignore[no-untyped-def]
    return lambda directory: _edit_manifest(directory, lambda m: m.__setitem__(field, value))


def _unlist_graph(directory: Path) -> None:
    _edit_manifest(
        directory,
        lambda m: m.__setitem__("files", [f for f in m["files"] if f["path"] != "graphs/dot.onnx"]),
    )


CORRUPTIONS = {
    "truncated values": (
        _truncate,
        r"tables/embedding/values.npy: file has \d+ bytes, the manifest records",
    ),
    "values shorter than the sizes": (
        _short_values,
        r"values.npy: the sizes add up to \d+ values, which take \d+ values; the file holds",
    ),
    "size out of range": (
        _size_out_of_range,
        r"sizes.npy: sizes must lie in \[1, \d+\], row 3 has 0",
    ),
    "sizes not one byte each": (_wide_sizes, r"sizes.npy: expected a 1-D uint8 array"),
    "stored bytes misstated": (_stored_bytes_misstated, r"manifest.json: memory.stored says"),
    "wrong hash": (_flip_byte, r"tables/embedding/values.npy: sha256 mismatch"),
    "unknown schema version": (
        _set("schema_version", 99),
        r"manifest.json: unknown schema_version 99",
    ),
    "missing file": (lambda d: (d / "ids/items.json").unlink(), r"ids/items.json: missing file"),
    "unlisted required file": (_unlist_graph, r"file list lacks required file graphs/dot.onnx"),
    "mismatched user count": (
        _set("num_users", 121),
        r"ids/users.json: holds 120 ids but manifest.json says num_users = 121",
    ),
    "mismatched item count": (
        _set("num_items", 79),
        r"ids/items.json: holds 80 ids but manifest.json says num_items = 79",
    ),
    "seen item out of range": (
        _item_out_of_range,
        r"interactions/indices.npy: item ids must lie in \[0, 80\)",
    ),
    "no manifest": (lambda d: (d / "manifest.json").unlink(), r"manifest.json: missing file"),
    "binary manifest": (
        lambda d: (d / "manifest.json").write_bytes(b"\xff\xfe\x00{binary"),
        r"manifest.json: not UTF-8 text, so not a manifest \(invalid start byte at byte 0\)",
    ),
    "budget bytes not a count": (
        _set("budget_bytes", 1.5),
        r"manifest.json: field 'budget_bytes' must be a positive integer or null",
    ),
}


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_each_corruption_is_rejected_with_its_own_message(
    name: str, artifacts: dict, tmp_path: Path
) -> None:
    corrupt, message = CORRUPTIONS[name]
    directory = _copy(artifacts[BackboneKind.LIGHTGCN], tmp_path)
    corrupt(directory)
    with pytest.raises(ArtifactError, match=message) as raised:
        load_artifact(directory)
    assert str(directory) in str(raised.value)  # the folder, not only the file inside it


def _list_outside_file(directory: Path, path: str) -> None:
    """List ``path`` in the manifest with the size and sha256 of a file outside the artifact:
    a reader that followed it would read that file and pass."""
    outside = directory.parent / "outside.txt"
    outside.write_text("not part of the artifact\n")
    entry = {"path": path, "sha256": sha256_file(outside), "bytes": outside.stat().st_size}
    _edit_manifest(directory, lambda manifest: manifest["files"].append(entry))


@pytest.mark.parametrize(
    "path",
    [
        "../outside.txt",
        "ids/../../outside.txt",
        "..\\outside.txt",
        "{outside}",  # absolute
        "C:/outside.txt",
    ],
)
def test_a_manifest_path_that_leaves_the_artifact_folder_is_refused(
    path: str, artifacts: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = _copy(artifacts[BackboneKind.LIGHTGCN], tmp_path)
    path = path.format(outside=tmp_path / "outside.txt")
    _list_outside_file(directory, path)
    last = len(json.loads((directory / "manifest.json").read_text())["files"]) - 1
    expected = (
        f"{directory / 'manifest.json'} files[{last}]: field 'path' is {path!r}, not a file "
        "inside the artifact folder"
    )
    with pytest.raises(ArtifactError) as raised:
        load_artifact(directory)
    assert str(raised.value).startswith(expected)
    assert main(["inspect", str(directory)]) == 2
    assert capsys.readouterr().err.startswith(f"error: {expected}")


def test_a_listed_link_out_of_the_artifact_folder_is_refused(
    artifacts: dict, tmp_path: Path
) -> None:
    directory = _copy(artifacts[BackboneKind.LIGHTGCN], tmp_path)
    _list_outside_file(directory, "ids/extra.json")
    (directory / "ids/extra.json").symlink_to(tmp_path / "outside.txt")
    with pytest.raises(ArtifactError) as raised:
        load_artifact(directory)
    assert str(raised.value) == (
        f"artifact {directory}: manifest.json: files entry 'path' 'ids/extra.json' resolves to "
        f"{(tmp_path / 'outside.txt').resolve()}, outside the artifact folder"
    )
    (directory / "ids/extra.json").unlink()  # a link that stays inside the folder is read
    (directory / "ids/extra.json").symlink_to(directory / "ids/users.json")
    users = directory / "ids/users.json"
    entry = FileEntry("ids/extra.json", sha256_file(users), users.stat().st_size)
    _edit_manifest(directory, lambda m: m["files"].__setitem__(-1, dataclasses.asdict(entry)))
    assert load_artifact(directory).manifest.file("ids/extra.json") == entry


def test_an_artifact_path_that_is_a_file_or_missing_is_named_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file = tmp_path / "notes.txt"
    file.write_text("not an artifact\n")
    with pytest.raises(ArtifactError, match=f"^{re.escape(str(file))}: is a file, not an artifact"):
        load_artifact(file)
    assert main(["inspect", str(file)]) == 2
    assert capsys.readouterr().err == f"error: {file}: is a file, not an artifact folder\n"
    with pytest.raises(ArtifactError, match="not an artifact folder \\(does not exist\\)"):
        load_artifact(tmp_path / "nowhere")


@pytest.fixture(scope="module")
def quantised(clustered_split: DatasetSplit, tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("quantised")
    return {
        value_type: export(BackboneKind.LIGHTGCN, clustered_split, root / value_type,
                           value_dtype=value_type, verify_users=0)
        for value_type in ("int8", "int4", "int4-table")
    }  # fmt: skip


def _edit_array(relative: str, edit):  # type: ignore[no-untyped-def]
    def corrupt(directory: Path) -> None:
        _rewrite(directory, relative, edit(np.load(directory / relative)))

    return corrupt


def _set_entry(index: int, value: object):  # type: ignore[no-untyped-def]
    def edit(array: np.ndarray) -> np.ndarray:
        array = array.copy()
        array[index] = value
        return array

    return edit


VALUES, SCALES = "tables/embedding/values.npy", "tables/embedding/scales.npy"
QUANTISED_CORRUPTIONS = {  # (value type, corruption, message)
    "int8 code -128": (
        "int8",
        _edit_array(VALUES, _set_entry(7, -128)),
        r"values.npy: int8 codes must lie in \[-127, 127\], value 7 is -128",
    ),
    "int4 code -8": (
        "int4",
        _edit_array(VALUES, _set_entry(0, 0x08)),  # low nibble 8: the code -8
        r"values.npy: int4 codes must lie in \[-7, 7\], value 0 is -8",
    ),
    "packed int4 one byte short": (
        "int4",
        _edit_array(VALUES, lambda a: a[:-1]),
        r"which take \d+ bytes of packed int4 codes; the file holds",
    ),
    "a scale missing": (
        "int8",
        _edit_array(SCALES, lambda a: a[:-1]),
        r"scales.npy: expected one scale per row \(200\), got 199",
    ),
    "a negative scale": (
        "int8",
        _edit_array(SCALES, _set_entry(4, -1.0)),
        r"scales.npy: scale of row 4 is -1.0",
    ),
    "a scale past the magnitude bound": (
        "int4",
        _edit_array(SCALES, _set_entry(9, 6e4)),
        r"scales.npy: row 9's scale .* over the magnitude bound",
    ),
    "a table's scale doubled": (
        "int4-table",
        _edit_array(SCALES, lambda a: np.concatenate([a, a])),
        r"scales.npy: expected one scale for the table, got 2",
    ),
    "scales of float32": (
        "int8",
        _edit_array(SCALES, lambda a: a.astype(np.float32)),
        r"scales.npy: expected a 1-D float16 array",
    ),
}


@pytest.mark.parametrize("name", list(QUANTISED_CORRUPTIONS))
def test_each_corruption_of_a_quantised_store_is_rejected_with_its_own_message(
    name: str, quantised: dict, tmp_path: Path
) -> None:
    value_type, corrupt, message = QUANTISED_CORRUPTIONS[name]
    directory = _copy(quantised[value_type], tmp_path)
    load_artifact(directory)  # sound before
    corrupt(directory)
    with pytest.raises(ArtifactError, match=message):
        load_artifact(directory)


def test_an_odd_int4_store_keeps_its_spare_nibble_zero(quantised: dict, tmp_path: Path) -> None:
    directory = _copy(quantised["int4"], tmp_path)
    sizes = np.load(directory / "tables/embedding/sizes.npy").astype(np.int64)
    if sizes.sum() % 2 == 0:  # make the count odd: one value less in row 0, its last code gone
        sizes[0] -= 1
        codes = np.load(directory / VALUES)
        from ciess_core.storage import pack_int4, unpack_int4

        kept = np.delete(unpack_int4(codes, int(sizes.sum()) + 1), int(sizes[0]))
        _rewrite(directory, "tables/embedding/sizes.npy", sizes.astype(np.uint8))
        _rewrite(directory, VALUES, pack_int4(kept))
        _edit_manifest(directory, _restate_stored_bytes(directory))
        load_artifact(directory)
    _edit_array(VALUES, lambda a: np.append(a[:-1], np.uint8(a[-1] | 0x30)))(directory)
    _edit_manifest(directory, _restate_stored_bytes(directory))
    with pytest.raises(ArtifactError, match="high nibble unused; it must be 0"):
        load_artifact(directory)


def _restate_stored_bytes(directory: Path):  # type: ignore[no-untyped-def]
    def edit(manifest: dict) -> None:
        files = {e["path"]: e["bytes"] for e in manifest["files"] if "tables/" in e["path"]}
        manifest["memory"]["stored"] = sum(files.values())
        manifest["memory"]["stored_detail"] = {
            Path(path).stem: size for path, size in files.items()
        }

    return edit


def test_corruption_messages_are_distinct() -> None:
    messages = [message for _, message in CORRUPTIONS.values()]
    messages += [message for _, _, message in QUANTISED_CORRUPTIONS.values()]
    assert len(set(messages)) == len(messages)


# -- run directories and the CLI ------------------------------------------------------------------
def _write_pairs(data: InteractionData, path: Path) -> None:
    lines = [
        f"{data.external_user_ids[u]} {data.external_item_ids[i]}"
        for u, i in zip(data.user_ids, data.item_ids, strict=True)
    ]
    path.write_text("\n".join(lines) + "\n")


def _written_run(
    data: InteractionData, root: Path, value_type: str = "float32", budget_type: str | None = None
) -> Path:
    """A run folder of an untrained NGCF of random sizes on ``data`` (written to ``root``)
    selected as ``value_type``; with ``budget_type``, one picked within the bytes of its stores as
    that value type (a byte budget's run)."""
    from ciess_core.data import load_dataset

    data_file = root / "pairs.txt"
    root.mkdir(parents=True, exist_ok=True)
    _write_pairs(data, data_file)
    loaded = load_dataset(str(data_file), root)
    split = split_per_user(loaded, seed=3)
    train, _ = split.phase(Phase.TEST)
    sizes = random_sizes(split.num_users + split.num_items, seed=4)
    model = make_model(BackboneKind.NGCF, train, sizes)
    spec = RunSpec(
        dataset=str(data_file),
        backbone=model.config,
        training=TrainConfig(batch_size=10, max_batches=1, value_type=value_type),
        size_scheme=SizeScheme.RANDOM,
        target_sparsity=0.5,
        protocol=Protocol.CLEAN,
        split_seed=3,
        budget_bytes=None if budget_type is None else model.size_assignment().bytes(budget_type),
    )
    outcome = RunOutcome({"recall@20": 0.25}, {"recall@20": 0.3}, model.sparsity(), 1.0)
    return write_run(root / "run", spec, loaded.fingerprint(), model, outcome, [])


@pytest.fixture(scope="module")
def run_dir(clustered_data: InteractionData, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _written_run(clustered_data, tmp_path_factory.mktemp("run"))


def test_export_run_rebuilds_the_model_and_checks_it(run_dir: Path, tmp_path: Path) -> None:
    out = export_run(run_dir, tmp_path / "artifact", run_dir.parent)
    artifact = load_artifact(out)
    manifest = artifact.manifest
    assert manifest.backbone == "ngcf" and manifest.target_sparsity == 0.5
    assert manifest.metrics["test"] == {"recall@20": 0.25}
    assert manifest.dataset["split_seed"] == 3 and manifest.dataset["size_scheme"] == "random"
    check = manifest.verification
    assert check["max_abs_score_difference"] <= 1e-5 * (1 + check["max_abs_score"])
    np.testing.assert_array_equal(artifact.tables["embedding"].sizes, read_run(run_dir).sizes.sizes)


def test_a_byte_budget_run_records_its_bytes_and_refuses_a_type_over_them(
    clustered_data: InteractionData, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _written_run(clustered_data, tmp_path / "picked", "int8", budget_type="int8")
    stored = read_run(run)
    budget, sizes = stored.config["budget_bytes"], stored.sizes
    assert budget == sizes.bytes("int8")
    exported = tmp_path / "exported"
    exported.mkdir()
    manifest = load_artifact(export_run(run, exported / "int8", run.parent)).manifest
    assert manifest.budget_bytes == budget and manifest.value_dtype == "int8"
    assert manifest.memory.stored == budget  # the bytes are the files' sizes
    assert json.loads((exported / "int8" / "manifest.json").read_text())["budget_bytes"] == budget
    wide = ["export", str(run), "--out", str(exported / "wide"), "--data-dir", str(run.parent)]
    assert main([*wide, "--value-type", "float16"]) == 2
    assert capsys.readouterr().err == (
        f"error: stored as float16 the embedding stores take {sizes.bytes('float16'):,} bytes, "
        f"over the run's byte budget of {budget:,}; int8 fits ({budget:,} bytes)\n"
    )
    assert [path.name for path in exported.iterdir()] == ["int8"]  # nothing half-written
    assert main([*wide, "--value-type", "int4"]) == 0  # narrower: within the budget


def test_a_manifest_from_before_byte_budgets_were_recorded_reads_none(
    artifacts: dict, tmp_path: Path
) -> None:
    directory = _copy(artifacts[BackboneKind.LIGHTGCN], tmp_path)
    assert load_artifact(directory).manifest.budget_bytes is None  # a model without one
    _edit_manifest(directory, lambda manifest: manifest.pop("budget_bytes"))
    assert load_artifact(directory).manifest.budget_bytes is None


def test_export_run_rejects_other_data(run_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "run"
    shutil.copytree(run_dir, broken)
    config = json.loads((broken / "config.json").read_text())
    config["dataset_fingerprint"] = "0" * 64
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(DataError, match=r"fingerprint .* records 0000"):
        export_run(broken, tmp_path / "artifact", run_dir.parent)
    (broken / "model.pt").unlink()
    with pytest.raises(DataError, match=r"model\.pt is missing"):
        export_run(broken, tmp_path / "artifact", run_dir.parent)


def test_read_run_refuses_older_formats_and_sizes_that_do_not_fit(
    run_dir: Path, tmp_path: Path
) -> None:
    stored = read_run(run_dir)
    assert stored.config["format_version"] == RUN_FORMAT_VERSION == 3
    assert (stored.sizes.num_users, stored.sizes.num_items) == (
        stored.config["num_users"],
        stored.config["num_items"],
    )
    older = tmp_path / "older"
    shutil.copytree(run_dir, older)
    config = json.loads((older / "config.json").read_text())
    (older / "config.json").write_text(json.dumps({**config, "format_version": 2}))
    with pytest.raises(DataError, match=r"run format 2, this version reads 3 .*sizes\.npz"):
        read_run(older)
    other = tmp_path / "other"
    shutil.copytree(run_dir, other)
    sizes = stored.sizes
    moved = SizeAssignment.from_concatenated(sizes.sizes, sizes.num_users + 1, sizes.max_size)
    moved.save(other / "sizes.npz")
    with pytest.raises(DataError, match=r"holds \d+ users .* config\.json records"):
        read_run(other)
    SizeAssignment.equal(sizes.num_users, sizes.num_items, 1, sizes.max_size).save(
        other / "sizes.npz"
    )
    with pytest.raises(DataError, match="its sizes disagree with the sizes in its weights"):
        export_run(other, tmp_path / "artifact", run_dir.parent)
    with pytest.raises(ConfigError, match="does not exist"):
        read_run(tmp_path / "nowhere")


def _edit_config(run: Path, field: str, value: object) -> None:
    config = json.loads((run / "config.json").read_text())
    config[field] = value
    (run / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("backbone", "x", """field 'backbone' must be an object, got "x\""""),
        ("split_seed", "x", """field 'split_seed' must be an integer, got "x\""""),
        ("num_users", None, "field 'num_users' must be an integer, got null"),
        ("training", {"value_type": "int3"}, "field 'training.value_type' must be one of"),
    ],
)
def test_a_run_config_field_of_the_wrong_type_is_named(
    field: str, value: object, message: str, run_dir: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "run"
    shutil.copytree(run_dir, broken)
    _edit_config(broken, field, value)
    with pytest.raises(DataError) as raised:
        export_run(broken, tmp_path / "artifact", run_dir.parent)
    assert str(raised.value).startswith(f"{broken / 'config.json'}: {message}")
    assert not (tmp_path / "artifact").exists()


def test_a_bad_backbone_config_names_the_run_config_file(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "run"
    shutil.copytree(run_dir, broken)
    backbone = json.loads((broken / "config.json").read_text())["backbone"]
    _edit_config(broken, "backbone", {**backbone, "kind": "bogus"})
    out = ["export", str(broken), "--out", str(tmp_path / "a"), "--data-dir", str(run_dir.parent)]
    assert main(out) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"error: {broken / 'config.json'}: field 'backbone' {{'kind': 'bogus'")
    assert "'bogus' is not a valid BackboneKind" in error and not (tmp_path / "a").exists()


def _zero_a_member(data: bytes) -> bytes:
    """The archive with bytes of its first member's data zeroed: its CRC no longer matches."""
    start = data.index(b"user_sizes.npy") + 40
    return data[:start] + bytes(16) + data[start + 16 :]


@pytest.mark.parametrize(
    "corrupt", [lambda data: data[:100], _zero_a_member], ids=["truncated", "member"]
)
def test_a_truncated_sizes_file_is_a_clean_error(
    corrupt: Callable[[bytes], bytes],
    run_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    broken = tmp_path / "run"
    shutil.copytree(run_dir, broken)
    sizes = broken / "sizes.npz"
    sizes.write_bytes(corrupt(sizes.read_bytes()))
    with pytest.raises(DataError, match=f"^{re.escape(str(sizes))}: not a readable size"):
        read_run(broken)
    out = ["export", str(broken), "--out", str(tmp_path / "a"), "--data-dir", str(run_dir.parent)]
    assert main(out) == 2
    assert capsys.readouterr().err.startswith(f"error: {sizes}: not a readable size assignment")


def test_a_run_path_that_is_a_file_is_named_so(tmp_path: Path) -> None:
    file = tmp_path / "pairs.txt"
    file.write_text("u i\n")
    with pytest.raises(ConfigError, match=f"^run directory {re.escape(str(file))} is a file, not"):
        read_run(file)


def test_cli_export_and_inspect(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "artifact"
    code = main(
        [
            "export",
            str(run_dir),
            "--out",
            str(out),
            "--data-dir",
            str(run_dir.parent),
            "--verify-users",
            "16",
        ]
    )
    assert code == 0
    assert "budget: target sparsity 0.5" in capsys.readouterr().out
    plot = tmp_path / "sizes.png"
    assert main(["inspect", str(out), "--plot", str(plot)]) == 0
    text = capsys.readouterr().out
    for expected in (
        "sizes of users",
        "sizes of items",
        "of the dense",
        "resident after load",
        "metrics (clean)",
    ):
        assert expected in text
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["export", str(run_dir), "--out", str(out), "--data-dir", str(run_dir.parent)]) == 2
    assert "already exists" in capsys.readouterr().err
    _truncate_any = out / "ids/users.json"
    _truncate_any.write_text("[]")
    assert main(["inspect", str(out)]) == 2
    assert f"error: artifact {out}: ids/users.json" in capsys.readouterr().err


def test_reader_and_scorer_need_no_torch(artifacts: dict) -> None:
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from ciess_core.artifact.scorer import load_scorer, ScorerOptions\n"
        f"scorer = load_scorer({str(artifacts[BackboneKind.NGCF])!r}, ScorerOptions(threads=1))\n"
        "items, scores = scorer.recommend([0, 1], 5)\n"
        "assert items.shape == (2, 5)\n"
        "assert 'torch' not in {m.split('.')[0] for m in sys.modules if sys.modules[m] is not None}\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr


RUNS = "tables/embedding/size_runs.npy"
RUN_CORRUPTIONS = {  # corruption, message
    "odd length": (lambda a: a[:-1], r"size_runs.npy: runs come in \(size, count\) pairs"),
    "size 0": (_set_entry(0, 0), r"size_runs.npy: sizes must lie in \[1, 32\], run 0 has 0"),
    "size past d_max": (_set_entry(2, 33), r"sizes must lie in \[1, 32\], run 1 has 33"),
    "a run of none": (
        lambda a: np.concatenate([a, np.array([3, 0], dtype=np.uint32)]),
        r"size_runs.npy: run 2 repeats its size 0 times",
    ),
    "rows missing": (_set_entry(1, 1), r"size_runs.npy: the runs cover \d+ rows, not 200"),
    "int64 runs": (lambda a: a.astype(np.int64), r"expected a 1-D uint32 array of runs"),
}


@pytest.fixture(scope="module")
def equal_sized(clustered_split: DatasetSplit, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Per-side equal sizes (users 6, items 3): stored as two runs."""
    users, items = clustered_split.num_users, clustered_split.num_items
    sizes = np.r_[np.full(users, 6), np.full(items, 3)]
    root = tmp_path_factory.mktemp("runs")
    return export(BackboneKind.LIGHTGCN, clustered_split, root / "a", sizes, verify_users=0)


def test_equal_sizes_are_stored_as_runs_and_read_back(
    equal_sized: Path, clustered_split: DatasetSplit
) -> None:
    artifact = load_artifact(equal_sized)
    assert np.load(equal_sized / RUNS).tolist() == [
        6, clustered_split.num_users, 3, clustered_split.num_items]  # fmt: skip
    assert not (equal_sized / "tables/embedding/sizes.npy").exists()
    sizes = artifact.tables["embedding"].sizes
    assert sizes[: clustered_split.num_users].tolist() == [6] * clustered_split.num_users
    assert artifact.manifest.memory.stored_detail["sizes"] == npy_bytes(4, np.uint32)


@pytest.mark.parametrize("name", list(RUN_CORRUPTIONS))
def test_each_corruption_of_size_runs_is_rejected_with_its_own_message(
    name: str, equal_sized: Path, tmp_path: Path
) -> None:
    edit, message = RUN_CORRUPTIONS[name]
    directory = _copy(equal_sized, tmp_path)
    _edit_array(RUNS, edit)(directory)
    with pytest.raises(ArtifactError, match=message):
        load_artifact(directory)


def test_a_schema_2_artifact_still_loads(artifacts: dict, tmp_path: Path) -> None:
    directory = _copy(artifacts[BackboneKind.LIGHTGCN], tmp_path)
    _edit_manifest(directory, lambda manifest: manifest.update(schema_version=2))
    assert load_artifact(directory).manifest.schema_version == 2


def test_sizes_stored_as_runs_in_a_schema_2_manifest_are_rejected(
    equal_sized: Path, tmp_path: Path
) -> None:
    """Schema 2 stored one size a row; runs came with schema 3."""
    directory = _copy(equal_sized, tmp_path)
    _edit_manifest(directory, lambda manifest: manifest.update(schema_version=2))
    message = (
        rf"manifest.json: lists {RUNS}, but sizes stored as runs came with schema version 3 "
        r"and this manifest says 2"
    )
    with pytest.raises(ArtifactError, match=message):
        load_artifact(directory)
