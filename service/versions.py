"""Kept model versions: promotion with its history, the start-up fallbacks, listing, retention.

- :func:`promote`: point ``current.json`` at an artifact and record it in the job store's
  history of promotions.
- :func:`fallback_candidates`: what start-up tries when the pointed-to artifact does not load
  (:meth:`service.model_holder.ModelHolder.start`): the promoted artifacts, newest first, then
  the configured ``artifact_dir``.
- :func:`kept_versions`: every artifact the service keeps (``state_dir/artifacts/*``, the
  configured one, promoted ones elsewhere), newest first, with its manifest.
- :func:`apply_retention`: after a job's artifact is promoted (the worker), remove the
  artifacts under ``state_dir/artifacts`` beyond the :data:`KEEP_VERSIONS` newest, but never
  one that ``current.json`` points at, one of the :data:`KEEP_VERSIONS` last promoted (the
  start-up fallbacks), or one that a queued or running job uses (its base, a fast-path job's
  source, its result); then, when no job runs, the pipeline folders (``state_dir/searches/*``)
  that no kept artifact came from and that are older than the oldest kept artifact (a newer one
  may be an interrupted pipeline to resume). Nothing outside ``state_dir`` is ever removed.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from ciess_core.artifact.manifest import Manifest
from ciess_core.artifact.reader import read_manifest
from ciess_core.errors import ArtifactError
from service.jobs.store import JobState, JobStore
from service.model_holder import read_pointer, write_pointer
from service.settings import Settings

logger = logging.getLogger(__name__)

KEEP_VERSIONS = 5
"""Artifacts of ``state_dir/artifacts`` kept by :func:`apply_retention` (the newest), besides
the pointed-to one, the last promoted ones and those of queued or running jobs."""


@dataclass(frozen=True)
class KeptVersion:
    """One artifact the service keeps.

    Attributes:
        version: the directory's name.
        directory: the artifact directory (resolved).
        manifest: its manifest; None when it cannot be read (``problem`` says why).
        problem: why the manifest cannot be read; None when it can.
        created: UNIX time of the export (the manifest's ``created_at``, else the folder's
            modification time).
        configured: it is the ``artifact_dir`` setting's artifact.
        promoted_at: UNIX time ``current.json`` last pointed at it; None if it never did.
        job_id: the job that promoted it, if a job did.
    """

    version: str
    directory: Path
    manifest: Manifest | None
    problem: str | None
    created: float
    configured: bool
    promoted_at: float | None
    job_id: int | None


def promote(
    settings: Settings, store: JobStore, directory: Path, job_id: int | None = None
) -> None:
    """Point ``current.json`` at ``directory`` and record the promotion."""
    resolved = Path(directory).resolve()
    write_pointer(settings, resolved, job_id)
    store.record_promotion(resolved.name, resolved, job_id)


def fallback_candidates(settings: Settings, store: JobStore) -> list[Path]:
    """The promoted artifacts, newest first (each once), then the configured one."""
    candidates: list[Path] = []
    for promotion in store.promotions():
        path = Path(promotion.path)
        if path not in candidates:
            candidates.append(path)
    if settings.artifact_dir is not None and settings.artifact_dir not in candidates:
        candidates.append(settings.artifact_dir)
    return candidates


def _created(directory: Path, manifest: Manifest | None) -> float:
    if manifest is not None:
        try:
            return datetime.fromisoformat(manifest.created_at).timestamp()
        except ValueError:
            pass
    return directory.stat().st_mtime


def _describe(
    directory: Path, configured: Path | None, promoted: dict[Path, tuple[float, int | None]]
) -> KeptVersion:
    manifest, problem = None, None
    try:
        manifest = read_manifest(directory)
    except (ArtifactError, OSError, ValueError) as error:
        problem = str(error)
    promoted_at, job_id = promoted.get(directory, (None, None))
    return KeptVersion(
        version=directory.name,
        directory=directory,
        manifest=manifest,
        problem=problem,
        created=_created(directory, manifest),
        configured=directory == configured,
        promoted_at=promoted_at,
        job_id=job_id,
    )


def kept_versions(settings: Settings, store: JobStore) -> list[KeptVersion]:
    """Every artifact the service keeps, newest first: the folders of ``state_dir/artifacts``
    (half-written hidden ones aside), the configured one, and promoted ones elsewhere."""
    promoted: dict[Path, tuple[float, int | None]] = {}
    for promotion in reversed(store.promotions()):  # oldest first: the latest wins
        promoted[Path(promotion.path).resolve()] = (promotion.at, promotion.job_id)
    directories: list[Path] = []
    if settings.artifacts_dir.is_dir():
        directories += sorted(
            path for path in settings.artifacts_dir.iterdir() if not path.name.startswith(".")
        )
    configured = settings.artifact_dir.resolve() if settings.artifact_dir is not None else None
    directories += [configured] if configured is not None else []
    directories += list(promoted)
    seen: set[Path] = set()
    versions = []
    for directory in directories:
        resolved = directory.resolve()
        if resolved in seen or not resolved.is_dir():
            continue
        seen.add(resolved)
        versions.append(_describe(resolved, configured, promoted))
    return sorted(versions, key=lambda version: version.created, reverse=True)


def _pointed(settings: Settings) -> Path | None:
    try:
        directory = read_pointer(settings)
    except ArtifactError:
        return None
    return None if directory is None else Path(directory).resolve()


# The job parameters that name an artifact a job reads: a budget job's base, a fast-path job's
# (``requantise``, ``turn``: service.jobs.fast_path) source.
_READ_ARTIFACT_PARAMS = ("base_artifact", "source")


def _used_by_jobs(store: JobStore) -> set[Path]:
    """Artifacts a queued or running job reads (its base or source) or has written (its
    result)."""
    used = set()
    for state in (JobState.QUEUED, JobState.RUNNING):
        for job in store.list_jobs(state, limit=10_000):
            read = [job.params.get(name) for name in _READ_ARTIFACT_PARAMS]
            for path in (*read, job.artifact):
                if path:
                    used.add(Path(str(path)).resolve())
    return used


def _newest_change(folder: Path) -> float:
    """The latest modification time of ``folder`` and everything in it."""
    times = [folder.stat().st_mtime]
    times += [path.stat().st_mtime for path in folder.rglob("*")]
    return max(times)


def apply_retention(settings: Settings, store: JobStore, keep: int = KEEP_VERSIONS) -> list[Path]:
    """Remove what the module's rule no longer keeps; returns the folders removed."""
    owned_root = settings.artifacts_dir.resolve()
    versions = kept_versions(settings, store)
    owned = [version for version in versions if version.directory.parent == owned_root]
    protected = {version.directory for version in owned[:keep]}
    protected |= {Path(p.path).resolve() for p in store.promotions(limit=keep)}
    protected |= _used_by_jobs(store)
    for directory in (_pointed(settings), settings.artifact_dir):
        if directory is not None:
            protected.add(Path(directory).resolve())
    removed = []
    for version in owned:
        if version.directory not in protected:
            shutil.rmtree(version.directory, ignore_errors=True)
            removed.append(version.directory)
    if removed:
        store.forget_promotions(removed)
        logger.info("retention: removed %d artifact(s): %s", len(removed),
                    ", ".join(path.name for path in removed))  # fmt: skip
    kept = [version for version in owned if version.directory not in removed]
    searches = settings.state_dir / "searches"
    if not kept or not searches.is_dir() or store.counts()[JobState.RUNNING]:
        return removed  # a running job may be writing a pipeline folder
    sources = [
        Path(str(version.manifest.dataset.get("source") or "")).resolve()
        for version in kept
        if version.manifest is not None and version.manifest.dataset.get("source")
    ]
    oldest = min(version.created for version in kept)
    for folder in sorted(searches.iterdir()):
        resolved = folder.resolve()
        if not folder.is_dir() or any(s.is_relative_to(resolved) for s in sources):
            continue
        if _newest_change(folder) >= oldest:
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
        logger.info("retention: removed the pipeline folder %s", folder.name)
    return removed
