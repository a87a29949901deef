"""Stage files of the pipeline: finished stages are read back, results written atomically; a
budget's folder is written and read only through :class:`BudgetFolder`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ciess_core.errors import DataError
from ciess_core.search.budgets import Budget, ByteBudget
from ciess_core.sizes import SizeAssignment
from ciess_core.staged_files import staged_file


def read_cached(path: Path) -> dict[str, Any] | None:
    """The result a finished stage left in ``path``, if it did."""
    if not path.exists():
        return None
    cached: dict[str, Any] = json.loads(path.read_text())
    return cached


def write_json(path: Path, value: Any) -> None:
    """Write ``value`` to ``path`` through a staging file, so that a reader never sees half."""
    with staged_file(path) as staging:
        staging.write_text(json.dumps(value, indent=1) + "\n")


def checkpoint_folder(out: Path) -> Path:
    """Where the trainings of the pipeline in ``out`` keep their checkpoints while they run
    (:mod:`ciess_core.training.checkpoints`): an interrupted one resumes from there."""
    return Path(out) / "checkpoints"


def chosen_candidate(result: dict[str, Any]) -> dict[str, Any]:
    """The record of the pick among a budget result's ``candidates`` (``result.json``)."""
    return next(r for r in result["candidates"] if r["candidate"] == result["chosen"])


@dataclass(frozen=True)
class BudgetFolder:
    """One budget's folder of the pipeline (``<out>/budget-<c>/``, a byte budget's
    ``<out>/bytes-<ratio>/``)::

    fit.json, equal-fit.json      the fits' scored variants, best first (a byte budget:
                                  fit-<type>.json, equal-fit-<type>.json per value type)
    <fit>.sizes.npz               those variants' sizes and scores, and the fingerprint of the
                                  fit's inputs: a resumed pipeline reuses a finished fit
    plan.json                     a byte budget's plan: every value type's room and scores
    candidate_<i>.npz             each retrained candidate's sizes (SizeAssignment files)
    candidate_<i>.history.jsonl   its evaluations
    candidate_<i>.json            its record: validation metrics, selected batches, seconds
    result.json                   every candidate's record, the pick and its test numbers
    sizes.npz                     the chosen candidate's sizes
    deploy/                       the deployment model's weights, until run/ is written
    run/                          the chosen candidate's deployment run folder
    """

    path: Path

    @classmethod
    def of(cls, out: Path, budget: Budget) -> BudgetFolder:
        """The folder of ``budget`` in the pipeline folder ``out``."""
        if isinstance(budget, ByteBudget):
            return cls(Path(out) / budget.label)
        return cls(Path(out) / f"budget-{budget:g}")

    @property
    def run(self) -> Path:
        """The deployment model's run folder (:mod:`ciess_core.run_folder`)."""
        return self.path / "run"

    def deployed(self) -> bool:
        return self.run.is_dir()

    def result(self) -> dict[str, Any] | None:
        """``result.json``, once the budget's retraining has finished (None before)."""
        return read_cached(self.path / "result.json")

    def finished(self) -> bool:
        return (self.path / "result.json").exists()

    def write_result(self, result: dict[str, Any], chosen: SizeAssignment) -> None:
        """The pick: ``result.json`` and the chosen sizes (the result last: it marks the
        budget finished)."""
        self.path.mkdir(parents=True, exist_ok=True)
        chosen.save(self.path / "sizes.npz")
        write_json(self.path / "result.json", result)

    def chosen(self) -> SizeAssignment:
        """The chosen candidate's sizes."""
        return self._sizes("sizes")

    def write_fit(self, name: str, records: list[dict[str, Any]]) -> None:
        """``<name>.json``: a fit's scored variants."""
        self.path.mkdir(parents=True, exist_ok=True)
        write_json(self.path / f"{name}.json", records)

    def write_fitted(
        self, name: str, fingerprint: str, scored: list[tuple[float, SizeAssignment]]
    ) -> None:
        """``<name>.sizes.npz``: a finished fit's variants (score, sizes), in order, and the
        fingerprint of its inputs; written through a staging file."""
        max_size = scored[0][1].max_size
        dtype = np.min_scalar_type(max_size)
        target = self.path / f"{name}.sizes.npz"
        with staged_file(target) as staging, staging.open("wb") as handle:
            np.savez(
                handle,
                fingerprint=np.array(fingerprint),
                scores=np.array([score for score, _ in scored], dtype=np.float64),
                user_sizes=np.stack([sizes.user_sizes for _, sizes in scored]).astype(dtype),
                item_sizes=np.stack([sizes.item_sizes for _, sizes in scored]).astype(dtype),
                max_size=np.int64(max_size),
            )

    def fitted(self, name: str, fingerprint: str) -> list[tuple[float, SizeAssignment]] | None:
        """The variants :meth:`write_fitted` kept for a fit of these inputs (None: no such fit
        finished here, or one of other inputs)."""
        path = self.path / f"{name}.sizes.npz"
        if not path.exists():
            return None
        with np.load(path, allow_pickle=False) as arrays:
            if str(arrays["fingerprint"]) != fingerprint:
                return None
            max_size = int(arrays["max_size"])
            return [
                (
                    float(score),
                    SizeAssignment(users.astype(np.int64), items.astype(np.int64), max_size),
                )
                for score, users, items in zip(
                    arrays["scores"], arrays["user_sizes"], arrays["item_sizes"], strict=True
                )
            ]

    def write_candidate(
        self,
        index: int,
        sizes: SizeAssignment,
        history: list[dict[str, Any]],
        record: dict[str, Any],
    ) -> None:
        """A retrained candidate: its sizes, its evaluations, then its record (last: it marks
        the candidate's selection finished)."""
        self.path.mkdir(parents=True, exist_ok=True)
        sizes.save(self.path / f"candidate_{index}.npz")
        with (self.path / f"candidate_{index}.history.jsonl").open("w") as handle:
            handle.writelines(json.dumps(row) + "\n" for row in history)
        write_json(self.path / f"candidate_{index}.json", record)

    def candidate_record(self, index: int) -> dict[str, Any] | None:
        """A candidate's record once its selection has finished (None before)."""
        return read_cached(self.path / f"candidate_{index}.json")

    @property
    def _deployment(self) -> Path:
        return self.path / "deploy"

    def write_deployment(self, state: dict[str, Any], summary: dict[str, Any]) -> None:
        """The deployment model's weights and stage summary, kept until the run folder is
        written (the summary last: it marks the training finished)."""
        self._deployment.mkdir(parents=True, exist_ok=True)
        with staged_file(self.deployment_weights()) as staging:
            torch.save(state, staging)
        write_json(self._deployment / "summary.json", summary)

    def deployment_summary(self) -> dict[str, Any] | None:
        """The deployment training's summary once it has finished (None before)."""
        return read_cached(self._deployment / "summary.json")

    def deployment_weights(self) -> Path:
        return self._deployment / "model.pt"

    def drop_deployment(self) -> None:
        """Remove the kept weights once the run folder holds them."""
        for name in ("summary.json", "model.pt"):
            (self._deployment / name).unlink(missing_ok=True)
        self._deployment.rmdir()

    def candidate(self, index: int) -> SizeAssignment:
        return self._sizes(f"candidate_{index}")

    def candidate_history(self, index: int) -> list[dict[str, Any]]:
        text = (self.path / f"candidate_{index}.history.jsonl").read_text()
        return [json.loads(line) for line in text.splitlines() if line]

    def _sizes(self, stem: str) -> SizeAssignment:
        if (self.path / f"{stem}.npy").exists() and not (self.path / f"{stem}.npz").exists():
            raise DataError(
                f"{self.path} keeps its sizes as a bare {stem}.npy (an older ciess); remove the "
                "folder to retrain this budget"
            )
        return SizeAssignment.load(self.path / f"{stem}.npz")
