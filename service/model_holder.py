"""The served model: an immutable snapshot (scorer + version) and a holder that swaps it atomically.

A request takes one snapshot at its start and uses only that one, so a swap never changes the model
under a running request; the old scorer is freed when its last request lets go of it.

When the promoted artifact (``current.json``) does not load, at start-up or later, another one
serves and :attr:`ModelHolder.fallback` says which version failed and why (``GET /v1/model``): at
start-up the newest promoted artifact that loads, then the configured ``artifact_dir``
(:meth:`ModelHolder.start`); later, the model that was serving. A start-up never fails for an
artifact: with none that loads, the service starts not ready and says why. A pointed-to version
that failed to load is tried again after :data:`RETRY_FAILED_LOAD_SECONDS`, then twice as long
after each further failure (a failure may pass: out of memory, out of file descriptors).

``reload.json`` in the state folder carries a reload generation: ``POST /v1/admin/reload`` bumps
it, and every process of the service, which reads it with ``current.json`` every
``poll_seconds``, reloads when it changed (:func:`request_reload`, :func:`reload_generation`).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
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
        loaded_at: UNIX time of the load.
    """

    version: str
    directory: Path
    scorer: ArtifactScorer
    loaded_at: float


@dataclass(frozen=True)
class Fallback:
    """A promoted version that did not load, while another one serves.

    Attributes:
        version: the version ``current.json`` points at (``current.json`` itself when the
            pointer cannot be read).
        reason: why it did not load (the loader's message).
        at: UNIX time of the failure.
    """

    version: str
    reason: str
    at: float


_MAX_REASON_CHARS = 500


def _reason(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    return text if len(text) <= _MAX_REASON_CHARS else text[: _MAX_REASON_CHARS - 1] + "…"


def load_served_model(directory: Path, threads: int) -> ServedModel:
    """Validate and load the artifact in ``directory`` (can take seconds on large models)."""
    resolved = Path(directory).resolve()
    scorer = load_scorer(resolved, ScorerOptions(threads=threads))
    return ServedModel(resolved.name, resolved, scorer, time.time())


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


_RELOAD_FILE = "reload.json"


def request_reload(settings: Settings) -> str:
    """Bump the reload generation that every process watches; returns the new one."""
    path = settings.state_dir / _RELOAD_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    generation = f"{time.time_ns()}-{os.getpid()}"
    staging = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    staging.write_text(json.dumps({"generation": generation, "at": time.time()}) + "\n")
    os.replace(staging, path)
    return generation


def all_processes_within(settings: Settings, load_seconds: float) -> float:
    """Seconds until every process serves what this one just loaded in ``load_seconds``: the
    others check at their next poll, then load (counted twice: they may be busier)."""
    return round(settings.poll_seconds + 2 * load_seconds, 3)


def reload_generation(settings: Settings) -> str | None:
    """The reload generation now (None before the first reload or if unreadable)."""
    try:
        return str(json.loads((settings.state_dir / _RELOAD_FILE).read_text())["generation"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _log_swap(model: ServedModel, previous: ServedModel | None) -> None:
    logger.info("serving model %s (was %s)", model.version, previous.version if previous else None)


def _still_pointed(settings: Settings, directory: Path) -> bool:
    """Whether the pointer still names ``directory`` (resolved)."""
    try:
        pointed = read_pointer(settings)
    except (ArtifactError, OSError):
        return False  # unreadable now: the next poll decides
    return pointed is not None and Path(pointed).resolve() == directory


RETRY_FAILED_LOAD_SECONDS = 60.0
"""How long :meth:`ModelHolder.refresh` waits before it loads again a pointed-to version whose
load failed (the failure may pass: out of memory, out of file descriptors); twice as long after
each further failure, up to :data:`MAX_RETRY_FAILED_LOAD_SECONDS`."""
MAX_RETRY_FAILED_LOAD_SECONDS = 960.0


@dataclass(frozen=True)
class _FailedLoad:
    """A version whose load failed ``failures`` times in a row; the next try is at ``retry_at``
    (the holder's clock)."""

    failures: int
    retry_at: float


def _retry_delay(failures: int) -> float:
    """Seconds before the next load of a version that failed ``failures`` (≥ 1) times."""
    return min(RETRY_FAILED_LOAD_SECONDS * 2 ** (failures - 1), MAX_RETRY_FAILED_LOAD_SECONDS)


class ModelHolder:
    """Holds the current :class:`ServedModel`; readers never block, swaps are serialised.

    Two locks: loads (seconds) are serialised by one, so that two refreshes never load at once;
    the other guards only the swap itself (the pointer read again and the assignment), so that a
    promotion waits for no load.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        """``clock``: seconds for the retry delays of failed loads (monotonic)."""
        self._current: ServedModel | None = None
        self._swap_lock = threading.Lock()
        self._load_lock = threading.Lock()
        self._clock = clock
        self._failed: dict[str, _FailedLoad] = {}
        self.fallback: Fallback | None = None

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
        _log_swap(model, previous)
        return previous

    def serve_promoted(self, model: ServedModel) -> ServedModel | None:
        """Swap in ``model``, which ``current.json`` now names (a promotion wrote it): its past
        failures and the fallback are forgotten. Returns the previous model."""
        with self._swap_lock:
            previous = self._serve_locked(model)
        _log_swap(model, previous)
        return previous

    def _serve_locked(self, model: ServedModel) -> ServedModel | None:
        """Serve ``model``, the one the pointer names, forgetting its past failures and the
        fallback (the caller holds the swap lock); returns the previous model."""
        previous, self._current = self._current, model
        self._failed.pop(model.version, None)
        self.fallback = None
        return previous

    def refresh(self, settings: Settings, force: bool = False) -> bool:
        """Load and swap in the pointed-to artifact if it is not the one served (or ``force``).

        Loading happens beside the current model, which keeps serving, and outside the swap
        lock; once loaded, the model is swapped in only if the pointer still names it (a
        promotion may have moved it meanwhile). A failed load leaves the current model in place,
        is recorded in :attr:`fallback` and raises; that version is loaded again only after
        :func:`_retry_delay` (or when forced), so that a poll does not fail, and log, again each
        time. Returns whether a swap happened.
        """
        try:
            directory = read_pointer(settings)
        except ArtifactError as error:
            reason = _reason(error)
            known = self.fallback
            if not force and known is not None and known.reason == reason:
                return False  # reported already: not again at every poll
            failure = Fallback(settings.current_pointer.name, reason, time.time())
            self.fallback = failure
            raise
        if directory is None:
            return False
        resolved = Path(directory).resolve()
        version = resolved.name
        with self._load_lock:
            current = self._current
            if not force and current is not None and current.version == version:
                return False
            failed = self._failed.get(version)
            if not force and failed is not None and self._clock() < failed.retry_at:
                return False
            if failed is not None:
                logger.info("loading %s again (it failed %d time(s))", version, failed.failures)
            try:
                model = load_served_model(resolved, settings.scorer_threads)
            except Exception as error:
                self._record_failure(settings, resolved, failed, error)
                raise
            with self._swap_lock:
                if not _still_pointed(settings, resolved):
                    logger.info("not serving %s: the pointer moved while it loaded", version)
                    return False
                previous = self._serve_locked(model)
        _log_swap(model, previous)
        return True

    def _record_failure(
        self, settings: Settings, directory: Path, failed: _FailedLoad | None, error: Exception
    ) -> None:
        """Remember a failed load of ``directory`` for its retry delay; say so in
        :attr:`fallback` unless a promotion moved the pointer meanwhile."""
        failures = 1 if failed is None else failed.failures + 1
        retry_at = self._clock() + _retry_delay(failures)
        with self._swap_lock:
            self._failed[directory.name] = _FailedLoad(failures, retry_at)
            if _still_pointed(settings, directory):
                self.fallback = Fallback(directory.name, _reason(error), time.time())

    def start(self, settings: Settings, fallbacks: Sequence[Path] = ()) -> None:
        """The start-up load: the pointed-to artifact, else the first of ``fallbacks`` that
        loads (the promoted artifacts newest first, then the configured one:
        :func:`service.versions.fallback_candidates`), saying so in the log and in
        :attr:`fallback`. Never raises for an artifact that does not load: with none that does,
        the service starts without a model (not ready), and a promotion or a reload can still
        bring one."""
        with suppress(Exception):  # refresh records why in self.fallback
            self.refresh(settings)
        failure = self.fallback
        if failure is None:
            return  # serving what the pointer says, or nothing is configured
        # no current.json: the artifact that failed is the configured one, never promoted
        what = "promoted" if settings.current_pointer.is_file() else "configured (artifact_dir)"
        logger.error(
            "the %s artifact %s does not load: %s; trying the last good versions",
            what,
            failure.version,
            failure.reason,
        )
        pointed = {failure.version}
        for candidate in fallbacks:
            if Path(candidate).resolve().name in pointed:
                continue
            try:
                model = load_served_model(candidate, settings.scorer_threads)
            except Exception as error:
                logger.warning("fallback %s does not load either: %s", candidate, _reason(error))
                continue
            self.swap(model)
            self.fallback = failure
            logger.warning(
                "serving %s instead of the %s %s (%s); promote or reload to change it",
                model.version,
                what,
                failure.version,
                failure.reason,
            )
            return
        logger.error(
            "no artifact loads: not ready until a good one is promoted "
            "(POST /v1/admin/models/{version}/promote) or the pointer is fixed"
        )
