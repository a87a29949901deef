"""Stage files of the pipeline: finished stages are read back, results written atomically; a
budget's folder is written and read only through :class:`BudgetFolder`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ciess_core.errors import DataError
from ciess_core.sizes import SizeAssignment


def read_cached(path: Path) -> dict[str, Any] | None:
    """The result a finished stage left in ``path``, if it did."""
    if not path.exists():
        return None
    cached: dict[str, Any] = json.loads(path.read_text())
    return cached


def write_json(path: Path, value: Any) -> None:
    """Write ``value`` to ``path`` through a staging file, so that a reader never sees half."""
    staging = path.with_suffix(path.suffix + ".tmp")
    staging.write_text(json.dumps(value, indent=1) + "\n")
    staging.replace(path)


@dataclass(frozen=True)
class BudgetFolder:
    """One budget's folder of the pipeline (``<out>/budget-<c>/``)::

    fit.json, equal-fit.json      the fits' scored variants, best first
    candidate_<i>.npz             each retrained candidate's sizes (SizeAssignment files)
    candidate_<i>.history.jsonl   its evaluations
    result.json                   every candidate's metrics, the pick and its test numbers
    sizes.npz                     the chosen candidate's sizes
    run/                          the chosen candidate's deployment run folder
    """

    path: Path

    @classmethod
    def of(cls, out: Path, budget: float) -> BudgetFolder:
        """The folder of ``budget`` in the pipeline folder ``out``."""
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

    def write_candidate(
        self, index: int, sizes: SizeAssignment, history: list[dict[str, Any]]
    ) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        sizes.save(self.path / f"candidate_{index}.npz")
        with (self.path / f"candidate_{index}.history.jsonl").open("w") as handle:
            handle.writelines(json.dumps(row) + "\n" for row in history)

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
