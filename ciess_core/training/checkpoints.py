"""Training checkpoints: a training interrupted (a stopped session, a lost worker) resumes at its
last checkpoint instead of batch 0, and ends with the same weights as one never interrupted.

Checkpoints are kept only inside :func:`training_checkpoints`, which names a folder; there each
:func:`~ciess_core.training.loop.train_bpr` call keeps one file named by the fingerprint of its
inputs (:func:`training_fingerprint`): the model's initial weights, the training and held-out
matrices, the recipe and the teacher. Two trainings with the same fingerprint run the same
batches, so a file is never read by a training it does not belong to. The file is written
through a staging file, at most every ``every_seconds``, and removed when the training returns.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import scipy.sparse as sp
import torch

from ciess_core.staged_files import staged_file

logger = logging.getLogger(__name__)

DEFAULT_EVERY_SECONDS = 60.0
"""How often a training under :func:`training_checkpoints` saves its state by default."""


@dataclass(frozen=True)
class _Scope:
    folder: Path
    every_seconds: float


_SCOPE: ContextVar[_Scope | None] = ContextVar("ciess_training_checkpoints", default=None)


@contextmanager
def training_checkpoints(folder: Path, every_seconds: float | None = None) -> Iterator[None]:
    """Within this block, every training keeps a checkpoint in ``folder`` (created when needed)
    at most every ``every_seconds`` (:data:`DEFAULT_EVERY_SECONDS` when None) and resumes from
    one it finds there."""
    every = DEFAULT_EVERY_SECONDS if every_seconds is None else every_seconds
    token = _SCOPE.set(_Scope(Path(folder), every))
    try:
        yield
    finally:
        _SCOPE.reset(token)


def _digest_tensors(digest: Any, tensors: Mapping[str, torch.Tensor]) -> None:
    for name in sorted(tensors):
        digest.update(name.encode())
        digest.update(tensors[name].detach().cpu().contiguous().numpy().tobytes())


def _digest_matrix(digest: Any, matrix: sp.csr_matrix | None) -> None:
    if matrix is None:
        digest.update(b"none")
        return
    digest.update(repr(matrix.shape).encode())
    digest.update(matrix.indptr.astype("<i8").tobytes())
    digest.update(matrix.indices.astype("<i8").tobytes())


def training_fingerprint(
    model: torch.nn.Module,
    train: sp.csr_matrix,
    held_out: sp.csr_matrix | None,
    recipe: str,
    teacher: torch.nn.Module | None,
) -> str:
    """What a training's batches depend on: the model (its class and initial weights), the
    matrices, the recipe (``repr`` of its config and the distillation's) and the teacher."""
    digest = hashlib.sha256(type(model).__name__.encode())
    _digest_tensors(digest, model.state_dict())
    _digest_matrix(digest, train)
    _digest_matrix(digest, held_out)
    digest.update(recipe.encode())
    if teacher is not None:
        _digest_tensors(digest, teacher.state_dict())
    return digest.hexdigest()[:24]


@dataclass
class TrainingCheckpoint:
    """One training's checkpoint file and when it was last written."""

    path: Path
    every_seconds: float
    _last_saved: float = field(default_factory=time.monotonic)

    @classmethod
    def in_scope(cls, fingerprint: Callable[[], str]) -> TrainingCheckpoint | None:
        """The checkpoint of the training whose ``fingerprint()`` is given when a
        :func:`training_checkpoints` block is active (None otherwise, computing nothing)."""
        scope = _SCOPE.get()
        if scope is None:
            return None
        return cls(scope.folder / f"train-{fingerprint()}.pt", scope.every_seconds)

    def load(self) -> dict[str, Any] | None:
        """The saved state, or None when there is none or it cannot be read."""
        if not self.path.exists():
            return None
        try:
            state: dict[str, Any] = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as error:  # unreadable (another torch, a damaged disk): start afresh
            logger.warning("ignoring the checkpoint %s, which cannot be read: %s", self.path, error)
            return None
        logger.info("resuming training at batch %d from %s", state["batches_run"], self.path)
        return state

    def due(self) -> bool:
        return time.monotonic() - self._last_saved >= self.every_seconds

    def save(self, state: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with staged_file(self.path) as staging:
            torch.save(state, staging)
        self._last_saved = time.monotonic()

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
