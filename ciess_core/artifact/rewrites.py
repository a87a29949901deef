"""The models an artifact gives without training, each with the validation its manifest records.

An exported model can be written again with its tables in fewer bits
(:mod:`ciess_core.artifact.requantise`) and, a float32 LightGCN, turned to its principal axes
and cut to an equal size (:mod:`ciess_core.artifact.turned`). Its manifest records how those
models validate: its selected twin stored as each value type (``metrics.valid_by_value_type``)
and, for the pipeline's kept full model, each measured cut (``metrics.valid_turned``: value type
→ size → metrics). :func:`measured_rewrites` lists them with their stored bytes: what the
service's fast path chooses from for a new byte budget and what ``ciess inspect`` shows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from ciess_core.artifact.manifest import Manifest
from ciess_core.artifact.requantise import keeps_measured_quality, requantised_bytes
from ciess_core.artifact.turned import turned_bytes
from ciess_core.storage import VALUE_TYPES

T = TypeVar("T")

#: The validation metric the pipeline selects on (the default of ``TrainConfig``'s
#: ``selection_metric``), by which the models an artifact gives without training are compared.
SELECTION_METRIC = "ndcg@20"


@dataclass(frozen=True)
class Rewrite:
    """One model written from an artifact without training.

    Attributes:
        value_type: the type its tables are stored as.
        bytes: its embedding stores' bytes.
        metrics: its validation metrics, as the artifact's manifest records them.
        width: None: the artifact's model as it is; else the equal size it is turned and cut to.
    """

    value_type: str
    bytes: int
    metrics: dict[str, float]
    width: int | None = None


def measured_rewrites(manifest: Manifest) -> list[Rewrite]:
    """Every model ``manifest``'s artifact gives without training whose validation it records:
    its model stored as each measured type that its stores can give
    (:func:`~ciess_core.artifact.requantise.keeps_measured_quality`; its own type included),
    then every measured turned cut (a float32 LightGCN only). Entries of another shape are
    skipped."""
    measured = manifest.metrics.get("valid_by_value_type")
    by_type = measured if isinstance(measured, dict) else {}
    rewrites = [
        Rewrite(value_type, requantised_bytes(manifest, value_type), dict(by_type[value_type]))
        for value_type in VALUE_TYPES
        if _is_metrics(by_type.get(value_type))
        and keeps_measured_quality(manifest.value_dtype, value_type)
    ]
    if manifest.backbone != "lightgcn" or manifest.value_dtype != "float32":
        return rewrites
    turned = manifest.metrics.get("valid_turned")
    for value_type, by_width in (turned if isinstance(turned, dict) else {}).items():
        if value_type not in VALUE_TYPES or not isinstance(by_width, dict):
            continue
        for width, metrics in by_width.items():
            if not _is_metrics(metrics) or not str(width).isdigit():
                continue
            size = int(width)
            if 1 <= size <= manifest.max_size:
                stored = turned_bytes(manifest, size, value_type)
                rewrites.append(Rewrite(value_type, stored, dict(metrics), size))
    return rewrites


def best_within(
    items: Iterable[T], size: Callable[[T], int], score: Callable[[T], float]
) -> list[T]:
    """The items that score higher than every one of smaller or equal ``size``, smallest
    first: at any budget, the last of them within it scores best of all the items within it
    (the smallest such, on ties)."""
    frontier: list[T] = []
    for item in sorted(items, key=lambda item: (size(item), -score(item))):
        if not frontier or score(item) > score(frontier[-1]):
            frontier.append(item)
    return frontier


def _is_metrics(value: Any) -> bool:
    """Whether ``value`` is a metrics mapping with a number for each metric."""
    return (
        isinstance(value, dict)
        and bool(value)
        and all(isinstance(number, (int, float)) for number in value.values())
    )
