"""A new artifact from an existing one with its tables stored in another value type (no torch).

A budget change that a kept model can meet by storing its values in fewer bits needs no
training: every table is decoded as the scorer reads it and stored again
(:func:`~ciess_core.artifact.stores.store_table`); the graphs, ids and seen items are copied
unchanged. The manifest keeps the source's model, data and metrics, with ``valid`` replaced by
the source run's validation of that value type when the run measured it
(``metrics.valid_by_value_type``) and the copy holds that model (:func:`keeps_measured_quality`;
null otherwise), ``test`` null unless the value type is the source's (another type is another
model, never tested), the byte budget it was written for, the current schema and package
versions, and ``verification`` saying where it came from.

The copy is written in a hidden staging folder beside ``out`` and renamed into place only once it
loads and scores, so a failure leaves nothing behind.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ciess_core import __version__
from ciess_core.artifact.files import file_entry, inside, write_array
from ciess_core.artifact.manifest import MANIFEST_NAME, SCHEMA_VERSION, Manifest, manifest_to_json
from ciess_core.artifact.ragged import RaggedTable
from ciess_core.artifact.reader import Artifact, load_artifact, table_files
from ciess_core.artifact.scorer import ArtifactScorer, ScorerOptions
from ciess_core.artifact.stores import store_table
from ciess_core.errors import ArtifactError
from ciess_core.storage import ValueType, table_file_bytes


def keeps_measured_quality(source_type: str, value_type: str) -> bool:
    """Whether an artifact stored as ``source_type``, stored again as ``value_type``, holds the
    model whose validation its run measured in that type (``metrics.valid_by_value_type``).

    True from ``float32``, whose values are the model's own, and for the same type, whose codes
    decode and encode back to themselves. From another quantised type it is not: the decoded
    codes would be rounded a second time, a model no run validated.
    """
    return source_type == "float32" or source_type == value_type


def requantised_bytes(manifest: Manifest, value_type: str) -> int:
    """The embedding stores' bytes of ``manifest``'s model stored as ``value_type``: its sizes
    stay stored as they are (a byte a row, or runs), its values and scales change."""
    values = round((1.0 - manifest.achieved_sparsity) * manifest.num_entities * manifest.max_size)

    def value_bytes(stored_as: str) -> int:
        files = table_file_bytes(manifest.num_entities, values, stored_as, manifest.max_size)
        return len(manifest.tables) * (files["values"] + files.get("scales", 0))

    return manifest.memory.stored - value_bytes(manifest.value_dtype) + value_bytes(value_type)


def requantise_artifact(
    source: Path,
    value_type: str,
    out: Path,
    source_label: str = "",
    max_bytes: int | None = None,
) -> Manifest:
    """Write the artifact of ``source`` with its tables stored as ``value_type`` to ``out``
    (which must not exist); returns its manifest. With ``max_bytes``, stores over it are an
    ArtifactError and nothing is written."""
    started = time.perf_counter()
    artifact = source_to_rewrite(source, value_type, out)
    old = artifact.manifest
    metrics: dict[str, Any] = dict(old.metrics)
    measured = (metrics.get("valid_by_value_type") or {}).get(value_type)
    metrics["valid"] = measured if keeps_measured_quality(old.value_dtype, value_type) else None
    if value_type != old.value_dtype:  # its codes decode to another model: one never tested
        metrics["test"] = None
    return write_with_tables(
        source,
        old,
        out,
        artifact.tables,
        value_type,
        {"value_dtype": value_type, "metrics": metrics},
        {"requantised_from": source_label or str(source), "source_value_dtype": old.value_dtype},
        max_bytes,
        started,
    )


def source_to_rewrite(source: Path, value_type: str, out: Path) -> Artifact:
    """The artifact of ``source``, loaded (and validated) to be written again to ``out`` as
    ``value_type``.

    Raises:
        ConfigError: an unknown value type.
        ArtifactError: ``out`` exists, or ``source`` is not a valid artifact.
    """
    ValueType(value_type)  # a ConfigError naming the choices
    if out.exists():
        raise ArtifactError(f"{out} exists already")
    return load_artifact(source)


def _copy_listed_files(source: Path, manifest: Manifest, staging: Path) -> None:
    """Copy the files ``manifest`` lists under ``source``, but the tables', into a new
    ``staging`` folder: only listed files, each inside ``source`` (links followed, their
    contents copied), never a stray file or a link out of the folder."""
    staging.mkdir(parents=True)
    tables = {file for name in manifest.tables for file in table_files(manifest, name).values()}
    for entry in manifest.files:
        if entry.path in tables:
            continue
        target = staging / entry.path
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(inside(source, entry.path), target)


def write_with_tables(
    source: Path,
    old: Manifest,
    out: Path,
    tables: Mapping[str, RaggedTable],
    value_type: str,
    changes: Mapping[str, Any],
    verification: Mapping[str, Any],
    max_bytes: int | None,
    started: float,
) -> Manifest:
    """Write the artifact of ``source`` (whose manifest, already loaded, is ``old``) to ``out``
    with ``tables`` (float, one per table of its manifest) stored as ``value_type``, the
    manifest's fields in ``changes`` replaced, ``budget_bytes`` set to ``max_bytes``, the schema
    and package versions to this ciess's and ``verification`` saying where it came from;
    every other file ``old`` lists is copied (:func:`_copy_listed_files`). The copy is staged
    beside ``out``, checked (within ``max_bytes`` when given; it loads and scores finite
    values) and only then renamed into place; returns its manifest. ``verification`` gains the
    seconds since ``started`` (a ``time.perf_counter()`` reading)."""
    staging = out.parent / f".{out.name}.staging"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        _copy_listed_files(source, old, staging)
        detail: dict[str, int] = {}
        for name in old.tables:
            stored = store_table(tables[name], name, value_type)
            stored.validate(old.num_entities)
            for role, array in stored.arrays().items():
                entry = write_array(staging, stored.files[role], array)
                detail[role] = detail.get(role, 0) + entry.bytes
        files = tuple(
            file_entry(staging, str(path.relative_to(staging)))
            for path in sorted(staging.rglob("*"))
            if path.is_file()
        )
        manifest = dataclasses.replace(
            old,
            **changes,
            schema_version=SCHEMA_VERSION,  # its stores are written by this version's rules
            ciess_version=__version__,
            budget_bytes=max_bytes,
            created_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            memory=dataclasses.replace(
                old.memory, stored=sum(detail.values()), stored_detail=detail
            ),
            verification=dict(verification),
            files=files,
        )
        if max_bytes is not None and manifest.memory.stored > max_bytes:
            raise ArtifactError(
                f"{source} stored as {value_type} takes {manifest.memory.stored} bytes, over "
                f"the budget of {max_bytes}"
            )
        (staging / MANIFEST_NAME).write_text(manifest_to_json(manifest))
        scorer = ArtifactScorer(load_artifact(staging), ScorerOptions(threads=1))
        users = np.arange(min(4, old.num_users), dtype=np.int64)
        if not np.all(np.isfinite(scorer.score_all(users))):
            raise ArtifactError(f"{out}: the rewritten tables score non-finite values")
        manifest = dataclasses.replace(
            manifest,
            memory=dataclasses.replace(
                manifest.memory,
                resident=scorer.resident_bytes,
                resident_detail=scorer.resident_detail,
            ),
            verification={
                **manifest.verification,
                "seconds": round(time.perf_counter() - started, 3),
            },
        )
        (staging / MANIFEST_NAME).write_text(manifest_to_json(manifest))
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest
