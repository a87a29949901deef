"""The served model: an immutable snapshot (scorer + version) and a holder that swaps it atomically.

A request takes one snapshot at its start and uses only that one, so a swap never changes the model
under a running request; the old scorer is freed when its last request lets go of it.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ciess_core.artifact.scorer import ArtifactScorer, ScorerOptions, load_scorer
from ciess_core.errors import ArtifactError
from service.errors import NotReadyError
from service.settings import Settings

logger = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class ServedModel:
    """One loaded artifact.

    Attributes:
        version: the artifact directory's name (unique per export).
        directory: the artifact directory (symlinks resolved).
        scorer: the torch-free scorer.
        item_lookup: external item id -> internal id (for item filters).
        loaded_at: UNIX time of the load.
    """

    version: str
    directory: Path
    scorer: ArtifactScorer
    item_lookup: dict[str, int] = field(repr=False)
    loaded_at: float


def load_served_model(directory: Path, threads: int) -> ServedModel:
    """Validate and load the artifact in ``directory`` (can take seconds on large models)."""
    resolved = Path(directory).resolve()
    scorer = load_scorer(resolved, ScorerOptions(threads=threads))
    lookup = {str(label): index for index, label in enumerate(scorer.external_item_ids.tolist())}
    return ServedModel(resolved.name, resolved, scorer, lookup, time.time())


def read_pointer(settings: Settings) -> Path | None:
    """The artifact to serve: ``current.json`` if the state has one, else ``artifact_dir``."""
    pointer = settings.current_pointer
    if pointer.is_file():
        try:
            data = json.loads(pointer.read_text())
            return Path(data["path"])
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise ArtifactError(f"{pointer}: not a valid pointer ({error})") from None
    return settings.artifact_dir


def write_pointer(settings: Settings, directory: Path, job_id: int | None = None) -> None:
    """Point ``current.json`` at ``directory`` (write a temporary file, then rename: atomic)."""
    pointer = settings.current_pointer
    pointer.parent.mkdir(parents=True, exist_ok=True)
    staging = pointer.with_name(f".{pointer.name}.{os.getpid()}.tmp")
    resolved = Path(directory).resolve()
    body = {"path": str(resolved), "version": resolved.name, "job_id": job_id, "at": time.time()}
    staging.write_text(json.dumps(body) + "\n")
    os.replace(staging, pointer)


class ModelHolder:
    """Holds the current :class:`ServedModel`; readers never block, swaps are serialised."""

    def __init__(self) -> None:
        self._current: ServedModel | None = None
        self._swap_lock = threading.Lock()
        self.failed_versions: set[str] = set()

    @property
    def current(self) -> ServedModel | None:
        return self._current

    def require(self) -> ServedModel:
        """The current model (one reference: keep using it for the whole request)."""
        model = self._current
        if model is None:
            raise NotReadyError("no model is loaded yet; the service is not ready")
        return model

    def swap(self, model: ServedModel) -> ServedModel | None:
        """Make ``model`` current (a single reference assignment); returns the previous one."""
        with self._swap_lock:
            previous, self._current = self._current, model
        logger.info(
            "serving model %s (was %s)", model.version, previous.version if previous else None
        )
        return previous

    def refresh(self, settings: Settings, force: bool = False) -> bool:
        """Load and swap in the pointed-to artifact if it is not the one served (or ``force``).

        Loading happens beside the current model, which keeps serving; a failed load leaves it in
        place and raises. Returns whether a swap happened.
        """
        directory = read_pointer(settings)
        if directory is None:
            return False
        with self._swap_lock:
            current = self._current
            version = Path(directory).resolve().name
            if not force and current is not None and current.version == version:
                return False
            if not force and version in self.failed_versions:
                return False
            try:
                model = load_served_model(directory, settings.scorer_threads)
            except Exception:
                self.failed_versions.add(version)
                raise
            self._current = model
        logger.info(
            "serving model %s (was %s)", model.version, current.version if current else None
        )
        return True
