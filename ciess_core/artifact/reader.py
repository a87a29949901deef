"""Load an artifact directory and validate all of it (numpy and scipy only; no torch, no pickles).

Checks, in order: the manifest (schema version, fields), that every file the backbone needs is
listed, every listed file's size and sha256, the id maps against the entity counts, each ragged
table's shapes and offsets invariants, and the seen-items CSR. Any failure raises
:class:`ArtifactError` naming the artifact folder, the file and the rule it breaks. A listed
file must lie inside the folder: a path that leaves it (absolute, ``..``, or a link pointing
out) is refused before anything is read.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from ciess_core.artifact.files import check_file, read_array, read_ids
from ciess_core.artifact.manifest import (
    ITEM_IDS_FILE,
    MANIFEST_NAME,
    OPTIONAL_GRAPHS,
    SEEN_INDICES_FILE,
    SEEN_INDPTR_FILE,
    SIZE_RUNS_SCHEMA_VERSION,
    USER_IDS_FILE,
    Manifest,
    graph_files,
    manifest_from_json,
)
from ciess_core.artifact.ragged import RaggedTable
from ciess_core.artifact.stores import StoredTable, sizes_from_runs, store_files
from ciess_core.errors import ArtifactError

logger = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class Artifact:
    """A validated artifact in memory.

    Attributes:
        directory: where it was read from.
        manifest: the parsed manifest.
        tables: table name -> ragged table, each (num_users + num_items) rows, users first.
        external_user_ids: (num_users,) unicode; position = internal id.
        external_item_ids: (num_items,) unicode.
        seen: (num_users, num_items) float32 binary CSR, the training interactions: items excluded
            from a user's recommendations, and the graph of LightGCN and NGCF.
        graph_paths: graph role -> verified .onnx file.
    """

    directory: Path
    manifest: Manifest
    tables: Mapping[str, RaggedTable]
    external_user_ids: npt.NDArray[np.str_]
    external_item_ids: npt.NDArray[np.str_]
    seen: sp.csr_matrix
    graph_paths: Mapping[str, Path]


def artifact_folder(directory: Path | str) -> Path:
    """``directory`` as a path, refused (ArtifactError naming it) unless it is a folder."""
    root = Path(directory)
    if root.is_dir():
        return root
    if root.exists():
        raise ArtifactError(f"{root}: is a file, not an artifact folder")
    raise ArtifactError(f"{root}: not an artifact folder (does not exist)")


def read_manifest(directory: Path | str) -> Manifest:
    """Parse ``directory/manifest.json`` (no file checks); errors name its full path.

    Raises:
        ArtifactError: ``directory`` is not a folder, or its manifest is missing, unreadable,
            not UTF-8 text or not a valid manifest (:func:`manifest_from_json`).
    """
    path = artifact_folder(directory) / MANIFEST_NAME
    if not path.is_file():
        raise ArtifactError(f"{path}: missing file (every artifact folder holds one)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ArtifactError(
            f"{path}: not UTF-8 text, so not a manifest ({error.reason} at byte {error.start})"
        ) from None
    except OSError as error:
        raise ArtifactError(f"{path}: cannot be read ({error.strerror})") from None
    return manifest_from_json(text, where=str(path))


@contextmanager
def _naming_folder(root: Path) -> Iterator[None]:
    """Prefix every ArtifactError raised inside with the artifact folder: the checks' messages
    name a file relative to it (``ids/users.json: ...``, ``manifest.json: ...``)."""
    try:
        yield
    except ArtifactError as error:
        raise ArtifactError(f"artifact {root}: {error}") from None


def table_files(manifest: Manifest, name: str) -> dict[str, str]:
    """The files of table ``name``: its sizes as runs when the manifest lists a runs file (which
    a manifest of a schema before :data:`SIZE_RUNS_SCHEMA_VERSION` may not)."""
    runs = store_files(name, manifest.value_dtype, size_runs=True)["sizes"]
    listed = any(entry.path == runs for entry in manifest.files)
    if listed and manifest.schema_version < SIZE_RUNS_SCHEMA_VERSION:
        raise ArtifactError(
            f"{MANIFEST_NAME}: lists {runs}, but sizes stored as runs came with schema version "
            f"{SIZE_RUNS_SCHEMA_VERSION} and this manifest says {manifest.schema_version} "
            "(re-export the artifact with a matching ciess version)"
        )
    return store_files(name, manifest.value_dtype, size_runs=listed)


def _required_files(manifest: Manifest) -> list[str]:
    files = [USER_IDS_FILE, ITEM_IDS_FILE, SEEN_INDPTR_FILE, SEEN_INDICES_FILE]
    for name in manifest.tables:
        files += table_files(manifest, name).values()
    expected_graphs = graph_files(manifest.backbone, manifest.num_layers)
    required = {role: file for role, file in expected_graphs.items() if role not in OPTIONAL_GRAPHS}
    listed = dict(manifest.graphs)
    if listed not in (expected_graphs, required):
        raise ArtifactError(
            f"{MANIFEST_NAME}: a {manifest.backbone} artifact with {manifest.num_layers} layers "
            f"needs graphs {required} (optionally also {dict(OPTIONAL_GRAPHS)}), the manifest "
            f"lists {listed}"
        )
    return files + list(listed.values())


def _integer_array(array: npt.NDArray[np.generic], relative: str, length: int) -> None:
    if array.ndim != 1 or array.dtype.kind not in "iu":
        raise ArtifactError(
            f"{relative}: expected a 1-D integer array, got {array.dtype} of shape {array.shape}"
        )
    if array.size != length:
        raise ArtifactError(f"{relative}: expected {length} entries, got {array.size}")


def _read_table(manifest: Manifest, name: str, paths: Mapping[str, Path]) -> RaggedTable:
    files = table_files(manifest, name)
    arrays = {role: read_array(paths[relative], relative) for role, relative in files.items()}
    runs = files["sizes"].endswith("size_runs.npy")
    sizes = arrays["sizes"]
    if runs:
        sizes = sizes_from_runs(sizes, manifest.num_entities, manifest.max_size, files["sizes"])
    stored = StoredTable(
        name=name,
        value_type=manifest.value_dtype,
        max_size=manifest.max_size,
        sizes=sizes,
        values=arrays["values"],
        scales=arrays.get("scales"),
        size_runs=runs,
    )
    stored.validate(manifest.num_entities)
    return stored.to_ragged()


def _check_stored_bytes(manifest: Manifest) -> None:
    """The manifest's stored bytes are the table files' sizes (checked against the disk)."""
    roles: dict[str, int] = {}
    for name in manifest.tables:
        for role, relative in table_files(manifest, name).items():
            roles[role] = roles.get(role, 0) + manifest.file(relative).bytes
    memory = manifest.memory
    if memory.stored != sum(roles.values()) or dict(memory.stored_detail) != roles:
        raise ArtifactError(
            f"{MANIFEST_NAME}: memory.stored says {memory.stored} bytes "
            f"({dict(memory.stored_detail)}) but the {manifest.value_dtype} table files hold "
            f"{sum(roles.values())} ({roles})"
        )


def _read_seen(manifest: Manifest, paths: Mapping[str, Path]) -> sp.csr_matrix:
    indptr = read_array(paths[SEEN_INDPTR_FILE], SEEN_INDPTR_FILE)
    indices = read_array(paths[SEEN_INDICES_FILE], SEEN_INDICES_FILE)
    _integer_array(indptr, SEEN_INDPTR_FILE, manifest.num_users + 1)
    if indices.ndim != 1 or indices.dtype.kind not in "iu":
        raise ArtifactError(f"{SEEN_INDICES_FILE}: expected a 1-D integer array")
    if indptr[0] != 0 or np.any(np.diff(indptr) < 0) or indptr[-1] != indices.size:
        raise ArtifactError(
            f"{SEEN_INDPTR_FILE}: must start at 0, never decrease and end at "
            f"len(indices) = {indices.size} (ends at {indptr[-1]})"
        )
    if indices.size and (indices.min() < 0 or indices.max() >= manifest.num_items):
        raise ArtifactError(
            f"{SEEN_INDICES_FILE}: item ids must lie in [0, {manifest.num_items}), got range "
            f"[{indices.min()}, {indices.max()}]"
        )
    matrix = sp.csr_matrix(
        (np.ones(indices.size, dtype=np.float32), indices, indptr),
        shape=(manifest.num_users, manifest.num_items),
    )
    if not matrix.has_canonical_format:
        raise ArtifactError(f"{SEEN_INDICES_FILE}: each user's items must be sorted and distinct")
    return matrix


def _read_id_maps(
    manifest: Manifest, paths: Mapping[str, Path]
) -> tuple[npt.NDArray[np.str_], npt.NDArray[np.str_]]:
    """The users' and items' external ids, each map as long as the manifest's count."""
    maps = []
    for relative, field, count in (
        (USER_IDS_FILE, "num_users", manifest.num_users),
        (ITEM_IDS_FILE, "num_items", manifest.num_items),
    ):
        ids = read_ids(paths[relative], relative)
        if ids.size != count:
            raise ArtifactError(
                f"{relative}: holds {ids.size} ids but {MANIFEST_NAME} says {field} = {count}"
            )
        maps.append(ids)
    return maps[0], maps[1]


def load_artifact(directory: Path | str) -> Artifact:
    """Read and validate the artifact in ``directory``.

    Raises:
        ArtifactError: anything missing, corrupt, inconsistent or of an unknown schema version,
            or a listed file outside the folder; the message names the artifact folder, the
            file and the rule.
    """
    root = Path(directory)
    manifest = read_manifest(root)
    with _naming_folder(root):
        return _validated(root, manifest)


def _validated(root: Path, manifest: Manifest) -> Artifact:
    """Check every file ``manifest`` lists under ``root`` and read the artifact (errors name
    files relative to ``root``)."""
    listed = {entry.path for entry in manifest.files}
    for relative in _required_files(manifest):
        if relative not in listed:
            raise ArtifactError(f"{MANIFEST_NAME}: file list lacks required file {relative}")
    paths = {entry.path: check_file(root, entry) for entry in manifest.files}
    user_ids, item_ids = _read_id_maps(manifest, paths)
    tables = {name: _read_table(manifest, name, paths) for name in manifest.tables}
    _check_stored_bytes(manifest)
    seen = _read_seen(manifest, paths)
    graph_paths = {role: paths[relative] for role, relative in manifest.graphs.items()}
    logger.debug("validated artifact %s (%d files)", root, len(paths))
    return Artifact(
        directory=root,
        manifest=manifest,
        tables=MappingProxyType(tables),
        external_user_ids=user_ids,
        external_item_ids=item_ids,
        seen=seen,
        graph_paths=MappingProxyType(graph_paths),
    )
