"""The fast path of a byte budget: a kept model stored in fewer bits, served within seconds.

Every model the product pipeline exports records how its selected twin (the same recipe trained
on train, chosen on validation) validates with its tables stored as each value type
(``metrics.valid_by_value_type``). When the admin asks for a byte budget, :func:`plan_fast_path`
looks through the kept artifacts of the served model's data and backbone for the value type
whose stores fit and that validates best (from an artifact stored in a quantised type, only that
type: its codes cannot be rounded again into a model its run validated); a ``requantise`` job
then stores that artifact's
tables again in that type (:func:`~ciess_core.artifact.requantise.requantise_artifact`, numpy
only: no torch, no training) and the worker promotes it. The byte planner's budget job runs
after it and replaces it only if its pick validates better (``replace_if_better``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ciess_core.artifact.manifest import Manifest
from ciess_core.artifact.requantise import (
    keeps_measured_quality,
    requantise_artifact,
    requantised_bytes,
)
from ciess_core.errors import ConfigError
from ciess_core.storage import VALUE_TYPES
from service.jobs.store import Job, JobStore
from service.settings import Settings
from service.versions import kept_versions

logger = logging.getLogger(__name__)

REQUANTISE_JOB = "requantise"
SELECTION_METRIC = "ndcg@20"
"""The validation metric the pipeline selects on, and the fast path compares with."""


def new_version(job_id: int) -> str:
    """A sortable, unique artifact name: UTC time and the job id."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + f"-job{job_id}"


@dataclass(frozen=True)
class FastPlan:
    """A kept artifact and the value type that meets the budget.

    Attributes:
        source: the kept artifact's directory.
        source_version: its name.
        value_type: the type to store its tables as.
        bytes: its embedding stores' bytes in that type.
        valid: its selected twin's validation :data:`SELECTION_METRIC` in that type.
    """

    source: Path
    source_version: str
    value_type: str
    bytes: int
    valid: float

    def params(self) -> dict[str, Any]:
        return {
            "source": str(self.source),
            "source_version": self.source_version,
            "value_type": self.value_type,
            "bytes": self.bytes,
            "valid": self.valid,
            "metric": SELECTION_METRIC,
        }


def _same_model_family(kept: Manifest, served: Manifest) -> bool:
    """Whether ``kept`` scores the served model's users and items on its data."""
    return (
        kept.backbone == served.backbone
        and kept.max_size == served.max_size
        and (kept.num_users, kept.num_items) == (served.num_users, served.num_items)
        and kept.dataset.get("fingerprint") == served.dataset.get("fingerprint")
    )


def plan_fast_path(
    settings: Settings, store: JobStore, served: Manifest, max_bytes: int
) -> FastPlan | None:
    """The kept artifact and value type within ``max_bytes`` that validates best, or None when
    no kept artifact measured a type that fits. A kept artifact stored in a quantised type offers
    only that type: its float32 values are gone (:func:`keeps_measured_quality`). The served
    model in its own type is no candidate: a copy of it would change nothing."""
    best: FastPlan | None = None
    for kept in kept_versions(settings, store):
        manifest = kept.manifest
        if manifest is None or not _same_model_family(manifest, served):
            continue
        measured = manifest.metrics.get("valid_by_value_type") or {}
        for value_type in VALUE_TYPES:
            valid = (measured.get(value_type) or {}).get(SELECTION_METRIC)
            if valid is None or not keeps_measured_quality(manifest.value_dtype, value_type):
                continue
            if manifest == served and value_type == manifest.value_dtype:
                continue  # the served model as it is: nothing to serve sooner
            size = requantised_bytes(manifest, value_type)
            if size <= max_bytes and (best is None or valid > best.valid):
                best = FastPlan(kept.directory, kept.version, value_type, size, float(valid))
    return best


def run_requantise_job(settings: Settings, store: JobStore, job: Job) -> Path:
    """The ``requantise`` job: the planned artifact stored as its value type, exported under
    ``artifacts_dir``; the worker promotes it when this returns."""
    params = job.params
    store.report(job.id, "requantising", 0.1)
    source, value_type = Path(str(params["source"])), str(params["value_type"])
    if not source.is_dir():
        raise ConfigError(f"the kept artifact {source} is gone")
    version = new_version(job.id)
    out = settings.artifacts_dir / version
    settings.artifacts_dir.mkdir(parents=True, exist_ok=True)
    requantise_artifact(
        source, value_type, out, str(params.get("source_version")), int(params["max_bytes"])
    )
    store.set_artifact(job.id, out, version)
    store.report(job.id, "exported", 1.0)
    logger.info("job %d: %s stored as %s in %s", job.id, source.name, value_type, out)
    return out
