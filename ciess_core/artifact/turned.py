"""A new LightGCN artifact from a kept one, turned to its principal axes and cut to an equal
size (numpy only: no torch, no training).

LightGCN propagates its layer-0 table linearly and scores by dot products, so multiplying the
table by an orthogonal matrix keeps every score; turned to the principal axes of the table
(:func:`~ciess_core.rotation.principal_axes`), cutting every row to its first ``width`` values
drops the least of it. A byte budget that the kept model cannot meet by storing its values in
fewer bits (:mod:`ciess_core.artifact.requantise`) can be met so within seconds, at a quality
that ``docs/benchmarks/rotated-truncation.md`` measures.

The source must store float32 values: from a quantised store the decoded codes would be turned
and rounded again, a model no run validated. The new manifest's ``valid`` is the figure the
caller measured for this cut (null otherwise), its ``test`` is null (no run tested this model),
its sizes are recorded as equal sizes, and ``verification`` records the source, the width and
the seconds taken.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from ciess_core.artifact.manifest import Manifest
from ciess_core.artifact.ragged import RaggedTable, pack, unpack
from ciess_core.artifact.requantise import source_to_rewrite, write_with_tables
from ciess_core.errors import ArtifactError, ConfigError
from ciess_core.rotation import turn_to_principal_axes
from ciess_core.storage import equal_stored_bytes


def turned_bytes(manifest: Manifest, width: int, value_type: str) -> int:
    """The embedding stores' bytes of ``manifest``'s model turned and cut to ``width`` for
    every user and item, stored as ``value_type`` (sizes as one run)."""
    tables = len(manifest.tables)
    return equal_stored_bytes(manifest.num_entities, width, value_type, manifest.max_size, tables)


def turned_and_cut(table: RaggedTable, width: int) -> RaggedTable:
    """``table`` turned to its principal axes, every row cut to its first ``width`` values
    (float32)."""
    dense = unpack(table, table.max_size)
    turned = turn_to_principal_axes(dense)
    sizes = np.full(table.num_rows, width, dtype=np.int64)
    return pack(turned[:, :width], sizes, table.max_size, name=table.name)


def turn_and_cut_artifact(
    source: Path,
    width: int,
    value_type: str,
    out: Path,
    source_label: str = "",
    max_bytes: int | None = None,
    valid: dict[str, float] | None = None,
) -> Manifest:
    """Write the LightGCN artifact of ``source`` turned, cut to ``width`` for every user and
    item and stored as ``value_type`` to ``out`` (which must not exist); returns its manifest.
    ``valid``: the validation metrics measured for this cut and type, if any. With
    ``max_bytes``, stores over it are an ArtifactError and nothing is written.

    Raises:
        ConfigError: an unknown value type, or a width outside [1, max_size].
        ArtifactError: ``out`` exists, the source is not a float32 LightGCN artifact, or the
            stores exceed ``max_bytes``.
    """
    started = time.perf_counter()
    artifact = source_to_rewrite(source, value_type, out)
    old = artifact.manifest
    if old.backbone != "lightgcn":
        raise ArtifactError(
            f"{source} holds a {old.backbone} model: turning its tables would change its scores "
            "(only LightGCN's are kept)"
        )
    if old.value_dtype != "float32":
        raise ArtifactError(
            f"{source} stores {old.value_dtype} values: only a float32 artifact is turned (its "
            "codes would be rounded again into a model no run validated)"
        )
    if not 1 <= width <= old.max_size:
        raise ConfigError(f"width must lie in [1, {old.max_size}], got {width}")
    tables = {name: turned_and_cut(artifact.tables[name], width) for name in old.tables}
    metrics: dict[str, Any] = dict(old.metrics)
    metrics["valid"] = valid
    metrics["test"] = None
    metrics["valid_by_value_type"] = {} if valid is None else {value_type: valid}
    return write_with_tables(
        source,
        old,
        out,
        tables,
        value_type,
        {
            "value_dtype": value_type,
            "metrics": metrics,
            "achieved_sparsity": 1.0 - width / old.max_size,
            "target_sparsity": None,
            "dataset": {**old.dataset, "size_scheme": "equal"},
        },
        {"turned_from": source_label or str(source), "width": width},
        max_bytes,
        started,
    )
