"""The authors' reference protocol (CIESS.md §3), for comparisons with published tables.

Their released path trains on train ∪ validation and keeps the checkpoint that is best on the
*test* set; the pipeline then also picks among a budget's candidates on test. Optimistic: a
number from it is compared only with the paper's. The core's protocol is the clean one
(:attr:`ciess_core.runs.Protocol.CLEAN`).
"""

from __future__ import annotations

import dataclasses
import enum
import time

from ciess_core.data import DatasetSplit, Phase
from ciess_core.errors import ConfigError
from ciess_core.runs import (
    Protocol,
    RunOutcome,
    RunProtocol,
    RunResult,
    RunSpec,
    Teachers,
    phase_distiller,
    stage_summary,
    starting_model,
)
from ciess_core.sizes import SizeAssignment
from ciess_core.training import train_bpr

__all__ = ["PROTOCOLS", "ReferenceProtocol", "protocol_named"]


class ReferenceProtocol(enum.Enum):
    """REFERENCE: train on train ∪ validation, keep the checkpoint best on test."""

    REFERENCE = "reference"

    @property
    def selects_on(self) -> str:
        return "test"

    def execute(
        self,
        spec: RunSpec,
        split: DatasetSplit,
        sizes: SizeAssignment,
        progress: bool,
        teachers: Teachers | None,
        selected_batches: int | None,
    ) -> RunResult:
        """Train and test one model; ``selected_batches`` is ignored (test picks the stop)."""
        started = time.perf_counter()
        test_train, test = split.phase(Phase.TEST)
        distiller = phase_distiller(spec, teachers, Phase.TEST, test_train)
        model = starting_model(spec, test_train, sizes, teachers, Phase.TEST)
        result = train_bpr(
            model, test_train, spec.training, held_out=test, progress=progress, distiller=distiller
        )
        outcome = RunOutcome(
            test_metrics=result.best_metrics,
            valid_metrics={},
            achieved_sparsity=sizes.sparsity,
            seconds=time.perf_counter() - started,
            stages={"reference": stage_summary(result)},
            selected_batches=max(result.best_batch, 1),
        )
        history = [{"stage": "test", **dataclasses.asdict(row)} for row in result.history]
        return model, outcome, history


#: The protocols the benchmarks' ``--protocol`` names.
PROTOCOLS: dict[str, RunProtocol] = {
    Protocol.CLEAN.value: Protocol.CLEAN,
    ReferenceProtocol.REFERENCE.value: ReferenceProtocol.REFERENCE,
}


def protocol_named(name: str) -> RunProtocol:
    """The protocol called ``name`` ("clean" or "reference")."""
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise ConfigError(
            f"unknown protocol {name!r}; expected one of {sorted(PROTOCOLS)}"
        ) from None
