"""The artifact's ``manifest.json``: what the artifact holds, as frozen dataclasses (pure).

The manifest names every file with its sha256 and byte size, the backbone and its config, the
entity counts, the budget asked and the sparsity achieved, the metrics of the run, and the memory
accounting (bytes stored vs the dense table, bytes resident once loaded). :func:`manifest_from_json`
rejects an unknown schema version or a missing or ill-typed field with :class:`ArtifactError`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import PurePosixPath, PureWindowsPath
from types import MappingProxyType
from typing import Any

from ciess_core.errors import ArtifactError
from ciess_core.json_form import jsonable
from ciess_core.storage import VALUE_TYPES

SCHEMA_VERSION = 3
"""3: a table's sizes may be stored as runs (``size_runs.npy``); 2: one size per row only.
An optional field (``budget_bytes``: None where it is missing) or graph
(:data:`OPTIONAL_GRAPHS`) needs no new version: a reader ignores the fields it does not know."""
READABLE_SCHEMA_VERSIONS = (2, 3)
SIZE_RUNS_SCHEMA_VERSION = 3
"""The first schema version whose tables may store their sizes as runs."""
MANIFEST_NAME = "manifest.json"
BACKBONE_KINDS = ("lightgcn", "ngcf", "ncf")

# Which ragged tables and graphs each backbone's artifact holds (graph role -> file).
TABLES_BY_KIND: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {"lightgcn": ("embedding",), "ngcf": ("embedding",), "ncf": ("gmf", "mlp")}
)
DOT_GRAPH = "graphs/dot.onnx"
NCF_USER_GRAPH = "graphs/ncf_user.onnx"
NCF_ITEM_GRAPH = "graphs/ncf_item.onnx"
NCF_TOWER_GRAPH = "graphs/ncf_tower.onnx"
TOPK_GRAPH = "graphs/topk.onnx"
# Graphs an artifact of this schema may lack (written by newer exports, optional for the reader).
OPTIONAL_GRAPHS: Mapping[str, str] = MappingProxyType({"topk": TOPK_GRAPH})
USER_IDS_FILE = "ids/users.json"
ITEM_IDS_FILE = "ids/items.json"
SEEN_INDPTR_FILE = "interactions/indptr.npy"
SEEN_INDICES_FILE = "interactions/indices.npy"


def ngcf_layer_graph(layer: int) -> str:
    return f"graphs/ngcf_layer_{layer}.onnx"


def graph_files(kind: str, num_layers: int) -> dict[str, str]:
    """Graph role -> file for a backbone kind, as an export writes them (optional ones included)."""
    graphs = {"dot": DOT_GRAPH, **OPTIONAL_GRAPHS}
    if kind == "ncf":
        graphs.update(
            {"ncf_user": NCF_USER_GRAPH, "ncf_item": NCF_ITEM_GRAPH, "ncf_tower": NCF_TOWER_GRAPH}
        )
    if kind == "ngcf":
        graphs.update({f"ngcf_layer_{k}": ngcf_layer_graph(k) for k in range(num_layers)})
    return graphs


@dataclass(frozen=True)
class FileEntry:
    """One file of the artifact: path relative to the artifact root, sha256 hex, size in bytes."""

    path: str
    sha256: str
    bytes: int


@dataclass(frozen=True)
class MemoryReport:
    """Memory accounting of the embedding tables, in bytes.

    Attributes:
        stored: every byte of the embedding stores' files (values, scales, sizes, their
            ``.npy`` headers included): what a byte budget counts, equal to the files' sizes.
        stored_detail: those bytes by file role ("values", "scales", "sizes"), over all tables.
        dense: the same tables dense at d_max in float32 (values only): the reference of a
            byte ratio.
        resident: what the scorer keeps in memory after loading (propagated and bucketed
            matrices, NCF projections), measured by loading the artifact; 0 when unknown.
        resident_detail: resident bytes by part (e.g. "users", "items", "ncf_item_part").
    """

    stored: int
    stored_detail: Mapping[str, int]
    dense: int
    resident: int = 0
    resident_detail: Mapping[str, int] = field(default_factory=dict)

    @property
    def byte_ratio(self) -> float:
        """Stored bytes over the dense float32 bytes."""
        return self.stored / self.dense if self.dense else 0.0


@dataclass(frozen=True)
class Manifest:
    """Everything ``manifest.json`` says.

    Attributes:
        schema_version: :data:`SCHEMA_VERSION`.
        created_at: ISO-8601 UTC time of the export.
        ciess_version: package version that wrote the artifact.
        backbone: "lightgcn", "ngcf" or "ncf".
        backbone_config: the backbone's config (``BackboneConfig`` fields, enums by value).
        max_size: d_max.
        num_users: users (rows 0..num_users-1 of every table).
        num_items: items (the next num_items rows).
        value_dtype: how the tables' values are stored: one of
            :data:`ciess_core.storage.VALUE_TYPES` (float32, float16, int8, int4).
        tables: names of the ragged tables, in the backbone's order.
        graphs: graph role -> file.
        target_sparsity: the budget asked (None for a full-size model); for a byte budget,
            the sparsity of the model picked within it.
        budget_bytes: the byte budget asked, every stored byte of the embedding stores (None:
            a sparsity budget, or a manifest written before it was recorded).
        achieved_sparsity: 1 - Σ sizes / (N · d_max).
        dataset: name, fingerprint and split seed of the training data.
        metrics: metrics of the run ("valid", "test", "protocol").
        memory: bytes stored, dense and resident.
        verification: the export's own parity check against the model (users checked, largest
            score difference, top-k agreement).
        files: every file but the manifest.
    """

    schema_version: int
    created_at: str
    ciess_version: str
    backbone: str
    backbone_config: Mapping[str, Any]
    max_size: int
    num_users: int
    num_items: int
    value_dtype: str
    tables: tuple[str, ...]
    graphs: Mapping[str, str]
    target_sparsity: float | None
    budget_bytes: int | None = field(default=None, kw_only=True)
    achieved_sparsity: float
    dataset: Mapping[str, Any]
    metrics: Mapping[str, Any]
    memory: MemoryReport
    verification: Mapping[str, Any]
    files: tuple[FileEntry, ...]

    @property
    def num_entities(self) -> int:
        return self.num_users + self.num_items

    @property
    def num_layers(self) -> int:
        return int(self.backbone_config.get("num_layers", 0))

    def file(self, path: str) -> FileEntry:
        """The entry of ``path``; ArtifactError when the manifest does not list it."""
        for entry in self.files:
            if entry.path == path:
                return entry
        raise ArtifactError(f"{MANIFEST_NAME}: the file list has no entry for {path}")


def manifest_to_json(manifest: Manifest) -> str:
    """Pretty JSON text of ``manifest`` (keys in field order, NaN and infinities as null)."""
    return json.dumps(jsonable(manifest), indent=2, allow_nan=False) + "\n"


def _field(data: Mapping[str, Any], name: str, kind: type | tuple[type, ...], where: str) -> Any:
    if name not in data:
        raise ArtifactError(f"{where}: missing field {name!r}")
    value = data[name]
    # bool is an int in Python; no field here is a bool.
    if isinstance(value, bool) or not isinstance(value, kind):
        raise ArtifactError(f"{where}: field {name!r} has the wrong type ({type(value).__name__})")
    return value


def _inside_path(entry: Mapping[str, Any], label: str) -> str:
    """The ``path`` field of a file entry, refused (ArtifactError naming ``label``, the field
    and the value) unless it names a file inside the artifact folder: not empty, not absolute,
    no drive, no NUL byte and no ``..`` component (split on ``/`` or ``\\``). Links are
    followed where the file is read (:func:`ciess_core.artifact.files.inside`)."""
    path: str = _field(entry, "path", str, label)
    parts = PurePosixPath(path.replace("\\", "/")).parts
    if (
        not path
        or "\x00" in path
        or PurePosixPath(path).is_absolute()
        or PureWindowsPath(path).anchor
        or ".." in parts
    ):
        raise ArtifactError(
            f"{label}: field 'path' is {path!r}, not a file inside the artifact folder (a "
            "file path must be relative to it, without '..')"
        )
    return path


def _budget(data: Mapping[str, Any], where: str) -> tuple[float | None, int | None]:
    """The budget asked: ``target_sparsity`` (a number or null) and ``budget_bytes`` (a positive
    integer, null, or missing in a manifest written before it was recorded)."""
    target = data.get("target_sparsity")
    if target is not None and (isinstance(target, bool) or not isinstance(target, (int, float))):
        raise ArtifactError(f"{where}: field 'target_sparsity' must be a number or null")
    budget_bytes = data.get("budget_bytes")
    if budget_bytes is not None and (
        isinstance(budget_bytes, bool) or not isinstance(budget_bytes, int) or budget_bytes < 1
    ):
        raise ArtifactError(f"{where}: field 'budget_bytes' must be a positive integer or null")
    return None if target is None else float(target), budget_bytes


def manifest_from_json(text: str, where: str = MANIFEST_NAME) -> Manifest:
    """Parse and check ``manifest.json`` text.

    Raises:
        ArtifactError: not JSON, unknown schema version, a missing or ill-typed field, an unknown
            backbone, a count or size that is not positive, or a file path that leaves the
            artifact folder.
    """
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ArtifactError(f"{where}: not valid JSON ({error})") from None
    except RecursionError:
        raise ArtifactError(f"{where}: not a manifest (JSON nested too deeply)") from None
    if not isinstance(data, dict):
        raise ArtifactError(f"{where}: expected a JSON object at the top level")
    version = data.get("schema_version")
    if version not in READABLE_SCHEMA_VERSIONS:
        raise ArtifactError(
            f"{where}: unknown schema_version {version!r}; this reader understands "
            f"{list(READABLE_SCHEMA_VERSIONS)} (re-export the artifact with a matching ciess "
            "version)"
        )
    backbone = _field(data, "backbone", str, where)
    if backbone not in BACKBONE_KINDS:
        raise ArtifactError(f"{where}: unknown backbone {backbone!r}; known: {BACKBONE_KINDS}")
    counts = {
        name: _field(data, name, int, where) for name in ("max_size", "num_users", "num_items")
    }
    for name, value in counts.items():
        if value < 1:
            raise ArtifactError(f"{where}: {name} must be >= 1, got {value}")
    memory_data = _field(data, "memory", dict, where)
    memory = MemoryReport(
        stored=_field(memory_data, "stored", int, f"{where} memory"),
        stored_detail=MappingProxyType(
            dict(_field(memory_data, "stored_detail", dict, f"{where} memory"))
        ),
        dense=_field(memory_data, "dense", int, f"{where} memory"),
        resident=_field(memory_data, "resident", int, f"{where} memory"),
        resident_detail=MappingProxyType(
            dict(_field(memory_data, "resident_detail", dict, f"{where} memory"))
        ),
    )
    files = []
    for index, entry in enumerate(_field(data, "files", list, where)):
        label = f"{where} files[{index}]"
        if not isinstance(entry, dict):
            raise ArtifactError(f"{label}: expected an object")
        files.append(
            FileEntry(
                path=_inside_path(entry, label),
                sha256=_field(entry, "sha256", str, label),
                bytes=_field(entry, "bytes", int, label),
            )
        )
    target, budget_bytes = _budget(data, where)
    tables = tuple(_field(data, "tables", list, where))
    if tables != TABLES_BY_KIND[backbone]:
        raise ArtifactError(
            f"{where}: a {backbone} artifact holds tables {list(TABLES_BY_KIND[backbone])}, "
            f"the manifest lists {list(tables)}"
        )
    value_dtype = _field(data, "value_dtype", str, where)
    if value_dtype not in VALUE_TYPES:
        raise ArtifactError(
            f"{where}: value_dtype must be one of {list(VALUE_TYPES)}, got {value_dtype!r}"
        )
    return Manifest(
        schema_version=int(version),
        created_at=_field(data, "created_at", str, where),
        ciess_version=_field(data, "ciess_version", str, where),
        backbone=backbone,
        backbone_config=MappingProxyType(dict(_field(data, "backbone_config", dict, where))),
        max_size=counts["max_size"],
        num_users=counts["num_users"],
        num_items=counts["num_items"],
        value_dtype=value_dtype,
        tables=tables,
        graphs=MappingProxyType(dict(_field(data, "graphs", dict, where))),
        target_sparsity=target,
        budget_bytes=budget_bytes,
        achieved_sparsity=float(_field(data, "achieved_sparsity", (int, float), where)),
        dataset=MappingProxyType(dict(_field(data, "dataset", dict, where))),
        metrics=MappingProxyType(dict(_field(data, "metrics", dict, where))),
        memory=memory,
        verification=MappingProxyType(dict(_field(data, "verification", dict, where))),
        files=tuple(files),
    )
