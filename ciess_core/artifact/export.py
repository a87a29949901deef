"""Export a trained backbone (in memory or from a run directory) as a versioned artifact.

The only module of :mod:`ciess_core.artifact` that imports torch. The artifact is written into a
temporary sibling directory, loaded back with the torch-free reader and scorer to check it against
the model (and to measure its resident memory), and renamed into place only when complete; any
failure removes the temporary directory, so a half-written export leaves nothing behind.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
import torch
from torch import nn

from ciess_core import __version__
from ciess_core.artifact import graphs
from ciess_core.artifact.files import file_entry, write_array, write_ids
from ciess_core.artifact.manifest import (
    ITEM_IDS_FILE,
    MANIFEST_NAME,
    SCHEMA_VERSION,
    SEEN_INDICES_FILE,
    SEEN_INDPTR_FILE,
    TABLES_BY_KIND,
    USER_IDS_FILE,
    Manifest,
    MemoryReport,
    graph_files,
    manifest_to_json,
)
from ciess_core.artifact.ragged import pack, unpack
from ciess_core.artifact.reader import load_artifact
from ciess_core.artifact.scorer import ArtifactScorer, ScorerOptions
from ciess_core.artifact.stores import store_table
from ciess_core.data import DatasetSplit, Phase
from ciess_core.errors import ArtifactError, ConfigError, DataError
from ciess_core.json_form import jsonable
from ciess_core.models import NCF, NGCF, Backbone, BackboneConfig, BackboneKind, build_backbone
from ciess_core.storage import VALUE_TYPES, dense_fp32_bytes

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExportMetadata:
    """What the manifest says about where the model came from.

    Attributes:
        dataset: dataset name (or path) the model was trained on.
        dataset_fingerprint: ``InteractionData.fingerprint()`` of that dataset.
        split_seed: seed of the 50/25/25 split.
        target_sparsity: the budget asked (None for a full-size model).
        budget_bytes: the byte budget asked, every stored byte of the embedding stores (None: a
            sparsity budget); an export whose stores exceed it is refused.
        size_scheme: how the sizes were chosen ("full", "equal", "random", "ciess").
        metrics: the run's metrics ({"protocol", "valid", "test"}).
        source: free text, e.g. the run directory.
        trained_on: which interactions the exported model was trained on.
    """

    dataset: str = ""
    dataset_fingerprint: str = ""
    split_seed: int | None = None
    target_sparsity: float | None = None
    budget_bytes: int | None = None
    size_scheme: str | None = None
    metrics: Mapping[str, Any] = field(default_factory=dict)
    source: str = ""
    trained_on: str = ""


@dataclass(frozen=True)
class ExportOptions:
    """How to write and check the artifact.

    Attributes:
        value_dtype: how the tables' values are stored (:data:`ciess_core.storage.VALUE_TYPES`):
            "float32" (lossless), "float16", "int8" or "int4" (per-row scales), "int8-table" or
            "int4-table" (one scale per table). The parity check
            compares the artifact with the model whose tables hold the stored values decoded.
            None: a run's own value type (the one it was selected in, ``training.value_type``),
            float32 for a model.
        verify_users: users whose scores and top-k are compared with the model after writing
            (0: none).
        tolerance: float32 parity bar, |artifact - model| <= tolerance · (1 + |model|).
        top_k: list length of the top-k comparison.
        threads: onnxruntime threads for the check.
    """

    value_dtype: str | None = None
    verify_users: int = 256
    tolerance: float = 1e-5
    top_k: int = 20
    threads: int = 1

    def __post_init__(self) -> None:
        if self.value_dtype is not None and self.value_dtype not in VALUE_TYPES:
            raise ConfigError(f"value type must be one of {list(VALUE_TYPES)}")
        if self.verify_users < 0 or self.top_k < 1:
            raise ConfigError("verify_users must be >= 0 and top_k >= 1")


def _numpy(tensor: torch.Tensor) -> npt.NDArray[np.float32]:
    return cast(npt.NDArray[np.float32], tensor.detach().to("cpu", torch.float32).numpy())


def _write_graphs(model: Backbone, staging: Path) -> None:
    """Write the backbone's scoring graphs (the manifest hashes them with the other files)."""
    kind, config = model.config.kind, model.config
    built = {"dot": graphs.dot_graph(), "topk": graphs.topk_graph()}
    if isinstance(model, NGCF):
        for layer, (sum_layer, product_layer) in enumerate(
            zip(model.sum_layers, model.product_layers, strict=True)
        ):
            summed, product = cast(nn.Linear, sum_layer), cast(nn.Linear, product_layer)
            built[f"ngcf_layer_{layer}"] = graphs.ngcf_layer_graph(
                _numpy(summed.weight),
                _numpy(summed.bias),
                _numpy(product.weight),
                _numpy(product.bias),
            )
    elif isinstance(model, NCF):
        width, last = config.max_size, config.mlp_layers[-1]
        first_layer = cast(nn.Linear, model.tower[0])
        first = _numpy(first_layer.weight)
        predict = _numpy(model.predict.weight)[0]
        built["ncf_user"] = graphs.ncf_user_graph(
            first[:, :width], _numpy(first_layer.bias), predict[last : last + width]
        )
        built["ncf_item"] = graphs.ncf_item_graph(first[:, width : 2 * width])
        tower = [
            (_numpy(cast(nn.Linear, layer).weight), _numpy(cast(nn.Linear, layer).bias))
            for layer in model.tower[1:]
        ]
        built["ncf_tower"] = graphs.ncf_tower_graph(
            tower, predict[:last], float(model.predict.bias.item())
        )
    files = graph_files(kind.value, config.num_layers)
    for role, model_proto in built.items():
        graphs.save_graph(model_proto, staging / files[role])


def _write_tables(
    model: Backbone, staging: Path, value_type: str
) -> tuple[MemoryReport, list[npt.NDArray[np.float32]]]:
    """Pack, store as ``value_type`` and write every masked table. Returns the stored-bytes
    report and each table as the artifact holds it: the stored values decoded, dense at d_max
    (the reference of the parity check)."""
    names = TABLES_BY_KIND[model.config.kind.value]
    detail: dict[str, int] = {}
    decoded = []
    for name, table in zip(names, model.tables(), strict=True):
        ragged = pack(
            _numpy(table.dense()), table.sizes.cpu().numpy(), model.max_size, name=f"tables/{name}"
        )
        stored = store_table(ragged, name, value_type)
        stored.validate(model.num_entities)
        for role, array in stored.arrays().items():
            entry = write_array(staging, stored.files[role], array)
            detail[role] = detail.get(role, 0) + entry.bytes
        decoded.append(unpack(stored.to_ragged(), width=model.max_size))
    dense = dense_fp32_bytes(model.num_entities, model.max_size, tables=len(names))
    return MemoryReport(sum(detail.values()), detail, dense), decoded


@contextmanager
def _tables_as_stored(
    model: Backbone, decoded: list[npt.NDArray[np.float32]]
) -> Iterator[Backbone]:
    """``model`` with its tables' weights replaced by ``decoded`` for the ``with`` block."""
    kept = [table.weight.detach().clone() for table in model.tables()]
    try:
        with torch.no_grad():
            for table, stored in zip(model.tables(), decoded, strict=True):
                table.weight.copy_(torch.from_numpy(stored).to(table.weight.device))
        yield model
    finally:
        with torch.no_grad():
            for table, original in zip(model.tables(), kept, strict=True):
                table.weight.copy_(original)


def _write_interactions(train: sp.csr_matrix, staging: Path) -> None:
    matrix = sp.csr_matrix(train, copy=True)
    matrix.sum_duplicates()
    matrix.eliminate_zeros()
    matrix.sort_indices()
    write_array(staging, SEEN_INDPTR_FILE, matrix.indptr.astype(np.int64))
    write_array(staging, SEEN_INDICES_FILE, matrix.indices.astype(np.int32))


def _verify(model: Backbone, scorer: ArtifactScorer, options: ExportOptions) -> dict[str, Any]:
    """Compare the artifact's scores and top-k with ``model``'s (the exported model with its
    tables as stored: decoded from float16, int8 or int4) on a spread of users."""
    count = min(options.verify_users, model.num_users)
    if count == 0:
        return {"users": 0}
    users = np.unique(np.linspace(0, model.num_users - 1, count).round().astype(np.int64))
    with torch.no_grad():
        expected = _numpy(model.score_all_items(model.represent(), torch.from_numpy(users)))
    actual = scorer.score_all(users)
    difference = np.abs(actual - expected)
    bound = options.tolerance * (1.0 + np.abs(expected))
    k = min(options.top_k, model.num_items)
    masked = expected.copy()
    rows = scorer.seen[users]
    masked[np.repeat(np.arange(users.size), np.diff(rows.indptr)), rows.indices] = -np.inf
    # Reference top-k: by score, ties towards the lower item id (as the scorer breaks them).
    reference = np.lexsort((np.broadcast_to(np.arange(model.num_items), masked.shape), -masked))
    reference = np.where(
        np.isneginf(np.take_along_axis(masked, reference[:, :k], axis=1)), -1, reference[:, :k]
    )
    top_items, _ = scorer.recommend(users, k)
    report = {
        "users": int(users.size),
        "max_abs_score_difference": float(difference.max()),
        "max_abs_score": float(np.abs(expected).max()),
        "tolerance": options.tolerance,
        "top_k": k,
        "top_k_identical_fraction": float(np.mean(np.all(top_items == reference, axis=1))),
    }
    if np.any(difference > bound):
        worst = np.unravel_index(int(np.argmax(difference - bound)), difference.shape)
        raise ArtifactError(
            f"export check failed: artifact score {actual[worst]:.8g} vs model "
            f"{expected[worst]:.8g} for user {users[worst[0]]}, item {worst[1]} "
            f"(tolerance {options.tolerance} · (1 + |model|))"
        )
    return report


def export_model(
    model: Backbone,
    train: sp.csr_matrix,
    external_user_ids: npt.ArrayLike,
    external_item_ids: npt.ArrayLike,
    out_dir: Path | str,
    metadata: ExportMetadata | None = None,
    options: ExportOptions | None = None,
) -> Path:
    """Write ``model`` as an artifact directory ``out_dir`` (which must not exist).

    Args:
        model: a trained backbone; exported in eval mode (NGCF without dropout).
        train: (num_users, num_items) interactions it was trained on: the graph of LightGCN and
            NGCF and the items excluded from each user's recommendations.
        external_user_ids: (num_users,) ids; position = internal id.
        external_item_ids: (num_items,) ids.
        out_dir: the artifact directory to create.
        metadata: dataset, budget and metrics for the manifest.
        options: value dtype and the parity check.

    Returns:
        ``out_dir``.
    """
    metadata = metadata or ExportMetadata()
    options = options or ExportOptions()
    value_type = options.value_dtype or "float32"
    out = Path(out_dir)
    if out.exists():
        raise ConfigError(f"artifact directory {out} already exists; choose another --out")
    if train.shape != (model.num_users, model.num_items):
        raise ConfigError(
            f"training matrix shape {train.shape} does not match the model's "
            f"({model.num_users}, {model.num_items})"
        )
    user_ids, item_ids = np.asarray(external_user_ids), np.asarray(external_item_ids)
    if user_ids.shape != (model.num_users,) or item_ids.shape != (model.num_items,):
        raise ConfigError(
            f"external ids have shapes {user_ids.shape} and {item_ids.shape}, expected "
            f"({model.num_users},) and ({model.num_items},)"
        )
    _check_budget_bytes(model, value_type, metadata.budget_bytes)
    was_training = model.training
    model.eval()
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        with torch.no_grad():
            memory, decoded = _write_tables(model, staging, value_type)
            write_ids(staging, USER_IDS_FILE, user_ids)
            write_ids(staging, ITEM_IDS_FILE, item_ids)
            _write_interactions(train, staging)
            _write_graphs(model, staging)
        manifest = _manifest(model, metadata, options, memory, staging)
        (staging / MANIFEST_NAME).write_text(manifest_to_json(manifest))
        scorer = ArtifactScorer(load_artifact(staging), ScorerOptions(threads=options.threads))
        with _tables_as_stored(model, decoded) as stored_model:
            verification = _verify(stored_model, scorer, options)
        manifest = dataclasses.replace(
            manifest,
            memory=dataclasses.replace(
                memory, resident=scorer.resident_bytes, resident_detail=scorer.resident_detail
            ),
            verification=verification,
        )
        (staging / MANIFEST_NAME).write_text(manifest_to_json(manifest))
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        model.train(was_training)
    logger.info(
        "exported %s artifact %s: sparsity %.4f, %d embedding bytes stored as %s (dense %d), "
        "resident %d, check %s",
        manifest.backbone,
        out,
        manifest.achieved_sparsity,
        memory.stored,
        value_type,
        memory.dense,
        manifest.memory.resident,
        verification,
    )
    return out


def _check_budget_bytes(model: Backbone, value_type: str, budget_bytes: int | None) -> None:
    """Refuse (ConfigError) to store ``model``'s tables as ``value_type`` when their stores
    would take more than ``budget_bytes`` (None: no byte budget), before anything is written;
    the message names the type that fits with the most bytes (the finest)."""
    if budget_bytes is None:
        return
    sizes, tables = model.size_assignment(), len(model.tables())
    stored = {kind: sizes.bytes(kind, tables) for kind in VALUE_TYPES}
    if stored[value_type] <= budget_bytes:
        return
    fitting = [kind for kind in VALUE_TYPES if stored[kind] <= budget_bytes]
    finest = max(fitting, key=stored.__getitem__, default=None)
    fits = "no value type fits" if finest is None else f"{finest} fits ({stored[finest]:,} bytes)"
    raise ConfigError(
        f"stored as {value_type} the embedding stores take {stored[value_type]:,} bytes, over "
        f"the run's byte budget of {budget_bytes:,}; {fits}"
    )


def _manifest(
    model: Backbone,
    metadata: ExportMetadata,
    options: ExportOptions,
    memory: MemoryReport,
    staging: Path,
) -> Manifest:
    kind = model.config.kind.value
    files = sorted(str(path.relative_to(staging)) for path in staging.rglob("*") if path.is_file())
    return Manifest(
        schema_version=SCHEMA_VERSION,
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        ciess_version=__version__,
        backbone=kind,
        backbone_config=jsonable(model.config),
        max_size=model.max_size,
        num_users=model.num_users,
        num_items=model.num_items,
        value_dtype=options.value_dtype or "float32",
        tables=TABLES_BY_KIND[kind],
        graphs=graph_files(kind, model.config.num_layers),
        target_sparsity=metadata.target_sparsity,
        budget_bytes=metadata.budget_bytes,
        achieved_sparsity=model.size_assignment().sparsity,
        dataset={
            "name": metadata.dataset,
            "fingerprint": metadata.dataset_fingerprint,
            "split_seed": metadata.split_seed,
            "trained_on": metadata.trained_on,
            "size_scheme": metadata.size_scheme,
            "source": metadata.source,
        },
        metrics=jsonable(metadata.metrics),
        memory=memory,
        verification={},
        files=tuple(file_entry(staging, relative) for relative in files),
    )


def backbone_config_from_dict(
    values: Mapping[str, Any], where: str = "backbone config"
) -> BackboneConfig:
    """Rebuild a :class:`BackboneConfig` from its JSON form (as ``config.json`` stores it).

    Raises:
        ConfigError: ``values`` is not a mapping, or not a valid config; the message starts
            with ``where`` (the file and field it came from).
    """
    if not isinstance(values, Mapping):
        raise ConfigError(f"{where}: expected an object, got {values!r}")
    try:
        kind = BackboneKind(values["kind"])
        known = {f.name for f in dataclasses.fields(BackboneConfig)} - {"kind"}
        rest: dict[str, Any] = {k: v for k, v in values.items() if k in known}
        if "mlp_layers" in rest:
            rest["mlp_layers"] = tuple(rest["mlp_layers"])
        return BackboneConfig(kind=kind, **rest)
    except (KeyError, ValueError, TypeError) as error:
        raise ConfigError(f"{where} {dict(values)} is not valid ({error})") from None


@dataclass(frozen=True)
class LoadedRun:
    """A run directory's model rebuilt on its test-phase training matrix."""

    model: Backbone
    train: sp.csr_matrix
    external_user_ids: npt.NDArray[np.str_]
    external_item_ids: npt.NDArray[np.str_]
    config: dict[str, Any]
    metrics: dict[str, Any]
    fingerprint: str


def load_run(run_dir: Path | str, data_dir: Path | str | None) -> LoadedRun:
    """Rebuild the model of a run directory (:func:`ciess_core.run_folder.read_run`).

    The run's model is its deployment model, trained on every interaction; the backbone is
    rebuilt on all interactions of the run's dataset, after checking that the dataset found
    (as ``ciess train`` finds it: :func:`~ciess_core.data.open_dataset`, under ``data_dir``
    or ``$CIESS_DATA_DIR`` for a registered name; a file or folder path needs neither) has the
    fingerprint the run recorded. Those interactions are also each user's seen items in the
    artifact.
    """
    from ciess_core.data import Phase, open_dataset, split_per_user
    from ciess_core.run_folder import CONFIG_FILE, read_run

    run = read_run(run_dir)
    config = run.config
    where = f"{run.directory / CONFIG_FILE}: field 'backbone'"
    backbone = backbone_config_from_dict(config["backbone"], where)
    data = open_dataset(str(config.get("dataset")), data_dir)
    fingerprint, recorded = data.fingerprint(), str(config.get("dataset_fingerprint"))
    if fingerprint != recorded:
        raise DataError(
            f"dataset {config.get('dataset')!r} under {data_dir} has fingerprint "
            f"{fingerprint[:16]}…, but the run {run.directory} records {recorded[:16]}…: it "
            "was trained on other data"
        )
    split = split_per_user(data, seed=int(config.get("split_seed", 42)))
    train, _ = split.phase(Phase.DEPLOY)
    model = build_backbone(backbone, train, torch.Generator().manual_seed(0))
    try:
        model.load_state_dict(run.weights)
    except (RuntimeError, ValueError) as error:
        raise DataError(
            f"{run.directory}: its weights cannot load into a {backbone.kind.value} ({error})"
        ) from None
    if model.size_assignment() != run.sizes:
        raise DataError(f"{run.directory}: its sizes disagree with the sizes in its weights")
    return LoadedRun(
        model=model,
        train=train,
        external_user_ids=split.external_user_ids,
        external_item_ids=split.external_item_ids,
        config=config,
        metrics=run.metrics,
        fingerprint=fingerprint,
    )


def export_deployed(
    model: Backbone,
    split: DatasetSplit,
    out_dir: Path | str,
    metadata: ExportMetadata | None = None,
    options: ExportOptions | None = None,
) -> Path:
    """:func:`export_model` for a model trained on every interaction of ``split`` (its
    deployment phase), with the split's external ids."""
    everything, _ = split.phase(Phase.DEPLOY)
    return export_model(
        model,
        everything,
        split.external_user_ids,
        split.external_item_ids,
        out_dir,
        metadata,
        options,
    )


def export_run(
    run_dir: Path | str,
    out_dir: Path | str,
    data_dir: Path | str | None,
    options: ExportOptions | None = None,
) -> Path:
    """Export the model of a run directory written by :func:`ciess_core.run_folder.write_run`
    (rebuilt as :func:`load_run` does)."""
    run = load_run(run_dir, data_dir)
    config = run.config
    options = options or ExportOptions()
    if options.value_dtype is None:
        selected_as = config.get("training", {}).get("value_type", "float32")
        options = dataclasses.replace(options, value_dtype=selected_as)
    metadata = ExportMetadata(
        dataset=str(config.get("dataset")),
        dataset_fingerprint=run.fingerprint,
        split_seed=int(config.get("split_seed", 42)),
        target_sparsity=config.get("target_sparsity"),
        budget_bytes=config.get("budget_bytes"),
        size_scheme=config.get("size_scheme"),
        metrics={
            **{key: run.metrics.get(key) for key in ("protocol", "valid", "test")},
            **{k: v for k, v in run.metrics.items() if k == "valid_by_value_type"},
        },
        source=str(run_dir),
        trained_on=str(config.get("trained_on", "")),
    )
    return export_model(
        run.model,
        run.train,
        run.external_user_ids,
        run.external_item_ids,
        out_dir,
        metadata,
        options,
    )
