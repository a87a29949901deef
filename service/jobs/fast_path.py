"""The fast path of a byte budget: a kept model stored in fewer bits, served within seconds.

Every model the product pipeline exports records how its selected twin (the same recipe trained
on train, chosen on validation) validates with its tables stored as each value type
(``metrics.valid_by_value_type``). When the admin asks for a byte budget, :func:`plan_fast_path`
looks through the kept artifacts of the served model's data and backbone for the value type
whose stores fit and that validates best (from an artifact stored in a quantised type, only that
type: its codes cannot be rounded again into a model its run validated); a ``requantise`` job
then stores that artifact's
tables again in that type (:func:`~ciess_core.artifact.requantise.requantise_artifact`, numpy
only: no torch, no training) and the worker promotes it. A kept float32 LightGCN artifact
that recorded how it validates turned to its principal axes and cut to equal sizes
(``metrics.valid_turned``, the full model a search job keeps:
:func:`~ciess_core.search.turned_full.export_turnable_full`) also offers each measured cut
whose stores fit; a ``turn`` job writes it (:func:`~ciess_core.artifact.turned.
turn_and_cut_artifact`, numpy only), so that a budget below every quantised store of a kept
model is met within seconds too. The byte planner's budget job runs after either and replaces
it only if its pick validates better (``replace_if_better``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

from ciess_core.artifact.manifest import Manifest
from ciess_core.artifact.requantise import requantise_artifact
from ciess_core.artifact.rewrites import (
    SELECTION_METRIC,
    Rewrite,
    best_within,
    measured_rewrites,
)
from ciess_core.artifact.turned import turn_and_cut_artifact
from ciess_core.errors import ConfigError
from service.jobs.store import Job, JobStore
from service.settings import Settings
from service.versions import kept_versions

logger = logging.getLogger(__name__)

REQUANTISE_JOB: Final = "requantise"
TURN_JOB: Final = "turn"
#: The jobs of the fast path: numpy only, each done in seconds.
FAST_PATH_JOBS = (REQUANTISE_JOB, TURN_JOB)


def new_version(job_id: int) -> str:
    """A sortable, unique artifact name: UTC time and the job id."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + f"-job{job_id}"


@dataclass(frozen=True)
class FastPlan:
    """A kept artifact and a model it gives without training that meets the budget.

    Attributes:
        source: the kept artifact's directory.
        source_version: its name.
        rewrite: the model (value type, bytes, validation metrics, and the equal size it is
            turned and cut to, if it is).
    """

    source: Path
    source_version: str
    rewrite: Rewrite

    @property
    def value_type(self) -> str:
        return self.rewrite.value_type

    @property
    def bytes(self) -> int:
        return self.rewrite.bytes

    @property
    def width(self) -> int | None:
        return self.rewrite.width

    @property
    def valid(self) -> float:
        """Its validation :data:`SELECTION_METRIC` (the selected twin's in that type; turned:
        the full model's turned and cut so)."""
        return float(self.rewrite.metrics[SELECTION_METRIC])

    @property
    def kind(self) -> Literal["requantise", "turn"]:
        """The job that writes it: :data:`REQUANTISE_JOB` or :data:`TURN_JOB`."""
        return REQUANTISE_JOB if self.width is None else TURN_JOB

    def params(self) -> dict[str, Any]:
        return {
            "source": str(self.source),
            "source_version": self.source_version,
            "value_type": self.value_type,
            "bytes": self.bytes,
            "valid": self.valid,
            "metric": SELECTION_METRIC,
            **(
                {}
                if self.width is None
                else {"width": self.width, "metrics": dict(self.rewrite.metrics)}
            ),
        }


def _same_model_family(kept: Manifest, served: Manifest) -> bool:
    """Whether ``kept`` scores the served model's users and items on its data."""
    return (
        kept.backbone == served.backbone
        and kept.max_size == served.max_size
        and (kept.num_users, kept.num_items) == (served.num_users, served.num_items)
        and kept.dataset.get("fingerprint") == served.dataset.get("fingerprint")
    )


def _plans(directory: Path, version: str, manifest: Manifest, served: Manifest) -> list[FastPlan]:
    """Every model ``manifest``'s artifact gives without training whose validation on
    :data:`SELECTION_METRIC` it records (:func:`~ciess_core.artifact.rewrites.measured_rewrites`),
    the served model as it is aside."""
    return [
        FastPlan(directory, version, rewrite)
        for rewrite in measured_rewrites(manifest)
        if SELECTION_METRIC in rewrite.metrics
        and not (
            rewrite.width is None
            and manifest == served
            and rewrite.value_type == manifest.value_dtype
        )  # the served model as it is: nothing to serve sooner
    ]


def fast_path_options(settings: Settings, store: JobStore, served: Manifest) -> list[FastPlan]:
    """What byte budgets get within seconds: of every kept artifact of the served model's data
    and backbone, each model it gives without training and measured, the ones that validate
    better than every one of fewer or equal bytes, fewest bytes first. A kept artifact stored in
    a quantised type offers only that type: its float32 values are gone
    (:func:`~ciess_core.artifact.requantise.keeps_measured_quality`). The served model in its
    own type is no option: a copy of it would change nothing."""
    plans = [
        plan
        for kept in kept_versions(settings, store)
        if kept.manifest is not None and _same_model_family(kept.manifest, served)
        for plan in _plans(kept.directory, kept.version, kept.manifest, served)
    ]
    return best_within(plans, lambda plan: plan.bytes, lambda plan: plan.valid)


def plan_fast_path(
    settings: Settings, store: JobStore, served: Manifest, max_bytes: int
) -> FastPlan | None:
    """The option of :func:`fast_path_options` within ``max_bytes`` that validates best (the
    fewest bytes of those that validate as well), or None when no kept artifact measured one
    that fits."""
    fitting = [
        plan for plan in fast_path_options(settings, store, served) if plan.bytes <= max_bytes
    ]
    return fitting[-1] if fitting else None


def run_fast_path_job(settings: Settings, store: JobStore, job: Job) -> Path:
    """A ``requantise`` job (the planned artifact stored as its value type) or a ``turn`` job
    (turned, cut to its width and stored so), exported under ``artifacts_dir``; the worker
    promotes it when this returns."""
    params = job.params
    turned = job.kind == TURN_JOB
    store.report(job.id, "turning" if turned else "requantising", 0.1)
    source, value_type = Path(str(params["source"])), str(params["value_type"])
    if not source.is_dir():
        raise ConfigError(f"the kept artifact {source} is gone")
    version = new_version(job.id)
    out = settings.artifacts_dir / version
    settings.artifacts_dir.mkdir(parents=True, exist_ok=True)
    label, max_bytes = str(params.get("source_version")), int(params["max_bytes"])
    if turned:
        width = int(params["width"])
        turn_and_cut_artifact(
            source, width, value_type, out, label, max_bytes, params.get("metrics")
        )
    else:
        requantise_artifact(source, value_type, out, label, max_bytes)
    store.set_artifact(job.id, out, version)
    store.report(job.id, "exported", 1.0)
    logger.info(
        "job %d: %s %s as %s in %s",
        job.id, source.name, f"turned, cut to {params['width']} and stored" if turned else
        "stored", value_type, out,
    )  # fmt: skip
    return out
