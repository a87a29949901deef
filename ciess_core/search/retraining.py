"""Stages 4 and 5 for every budget: retrain each candidate and select it on validation, pick one,
test only the pick, and train the pick once more on every interaction for deployment.

Each of these is a unit of work of its own (one candidate's selection, one budget's test, one
budget's deployment model), so that :func:`retrain_budgets` can run them side by side in a
:class:`~ciess_core.search.parallel.StageRunner`, longest first, each as soon as what it needs is
there. :func:`retrain_budget` and :func:`deploy_budget` run the same units one after another.

Under the clean protocol only the chosen candidate is tested: the pick is made on validation, and
a candidate that is not served needs no test number (a benchmark that reports one calls
:func:`test_candidate` itself). A protocol that selects on the test set (the reference protocol
of ``bench/experiments``) tests every candidate while it selects.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ciess_core.data import DatasetSplit, Phase, hold_out_per_user
from ciess_core.errors import ConfigError
from ciess_core.models import Backbone
from ciess_core.run_folder import write_run
from ciess_core.runs import (
    RunOutcome,
    RunSpec,
    Teachers,
    execute_run,
    fresh_model,
    select_on_validation,
    stage_summary,
    train_deployment,
    validation_by_value_type,
)
from ciess_core.search.budgets import Budget, ByteBudget, budget_label, check_within
from ciess_core.search.files import BudgetFolder, checkpoint_folder, chosen_candidate
from ciess_core.search.parallel import StageRunner
from ciess_core.search.teachers import full_model_batches, prepare_teachers
from ciess_core.sizes import SizeAssignment, SizeScheme
from ciess_core.training import evaluate_model
from ciess_core.training.checkpoints import training_checkpoints

if TYPE_CHECKING:
    from ciess_core.search.pipeline import PipelineSpec, StageReport

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Candidate:
    """One assignment to retrain for a budget.

    Attributes:
        sizes: the users' and items' sizes.
        kind: "search" (from the search's pool), "equal" (per-side equal sizes) or "full"
            (:data:`FULL_KIND`: the pipeline's full models stored as ``value_type``, kept as
            they are, never retrained).
        value_type: how its tables are stored (:data:`ciess_core.storage.VALUE_TYPES`): its
            validation and test score them so, and its deployment run records it for export.
    """

    sizes: SizeAssignment
    kind: str = "search"
    value_type: str = "float32"


FULL_KIND = "full"
"""The kind of candidate that is the pipeline's full model itself: its model in each phase is
that phase's full model (stage 1's, and the test and deployment teachers), stored as the
candidate's value type, so it costs evaluations and no training."""

_SCHEME_OF_KIND = {"equal": SizeScheme.EQUAL, FULL_KIND: SizeScheme.FULL}


def run_spec_of(spec: PipelineSpec, budget: Budget, record: dict[str, Any]) -> RunSpec:
    """A candidate's retraining as a run, from its record (kind, value type, sparsity)."""
    target = record["achieved_sparsity"] if isinstance(budget, ByteBudget) else budget
    value_type = record.get("value_type", "float32")
    return RunSpec(
        dataset=spec.dataset,
        backbone=spec.backbone,
        training=dataclasses.replace(spec.training, value_type=value_type),
        target_sparsity=target,
        protocol=spec.protocol,
        size_scheme=_SCHEME_OF_KIND.get(record["kind"], SizeScheme.CIESS),
        distillation=spec.distillation,
        start=spec.retrain_start,
    )


def _phase_model(teachers: Teachers | None, phase: Phase) -> Backbone:
    """The full model of ``phase`` (a full candidate's model in that phase)."""
    model = None if teachers is None else teachers.get(phase)
    if model is None:
        raise ConfigError(
            f"a full-model candidate needs the pipeline's full model of the {phase.value} phase"
        )
    return model


def _phase_metrics(
    spec: RunSpec, split: DatasetSplit, teachers: Teachers | None, phase: Phase
) -> dict[str, float]:
    """The full model of ``phase`` scored on that phase's held-out data, stored as ``spec``'s
    value type."""
    train, held_out = split.phase(phase)
    model = _phase_model(teachers, phase)
    chunk, value_type = spec.training.eval_users_per_chunk, spec.training.value_type
    return evaluate_model(model, train, held_out, chunk, value_type=value_type).mean()


def _select_full(
    spec: PipelineSpec,
    split: DatasetSplit,
    folder: BudgetFolder,
    run_spec: RunSpec,
    teachers: Teachers | None,
) -> dict[str, Any]:
    """A full candidate's selection: stage 1's full model stored as the candidate's type,
    scored on validation (and, with a protocol that selects on test, the test phase's on test);
    its batch count is the full model's."""
    search_model = _phase_model(teachers, Phase.SEARCH)
    by_type = validation_by_value_type(search_model, split, run_spec.training.eval_users_per_chunk)
    record: dict[str, Any] = {
        "valid": by_type[run_spec.training.value_type],
        "valid_by_value_type": by_type,
        "selected_batches": full_model_batches(folder.path.parent),
        "stages": {},
    }
    if spec.selection_share:
        value_type = run_spec.training.value_type
        record["valid_held_out"] = held_out_metrics(spec, split, search_model, value_type)
    if not selects_on_validation(spec):
        record["test"] = _phase_metrics(run_spec, split, teachers, Phase.TEST)
    return record


def held_out_metrics(
    spec: PipelineSpec, split: DatasetSplit, model: Backbone, value_type: str
) -> dict[str, float]:
    """``model`` (trained on the search phase's train), stored as ``value_type``, scored on the
    part of validation that the search never saw (``spec.selection_share``; the fits' view).
    The pick uses all of validation; this score is kept beside it so that a pick made on the
    unseen part alone can be compared (``bench/selection_views.py``)."""
    train, valid = split.phase(Phase.SEARCH)
    _, held = hold_out_per_user(valid, spec.selection_share, spec.search.seed)
    chunk = spec.training.eval_users_per_chunk
    return evaluate_model(model, train, held, chunk, value_type=value_type).mean()


def selects_on_validation(spec: PipelineSpec) -> bool:
    """Whether the protocol picks on validation, so that selecting trains on train only."""
    return spec.protocol.selects_on == "valid"


def selection_phases(spec: PipelineSpec) -> tuple[Phase, ...]:
    """The phases whose teachers a candidate's selection distils from."""
    return (Phase.SEARCH,) if selects_on_validation(spec) else (Phase.SEARCH, Phase.TEST)


def select_candidate(
    spec: PipelineSpec,
    split: DatasetSplit,
    folder: BudgetFolder,
    budget: Budget,
    index: int,
    candidate: Candidate,
    progress: bool,
    teachers: Teachers | None,
) -> dict[str, Any]:
    """Retrain candidate ``index`` and select its batch count: on validation (trained on
    train), or with a protocol that selects on test, its whole run; a full candidate
    (:data:`FULL_KIND`) is only scored. Writes its sizes, history
    and record in ``folder``; returns the record (an earlier call's when there is one)."""
    if (cached := folder.candidate_record(index)) is not None:
        return cached
    sizes = candidate.sizes
    started = time.perf_counter()
    record: dict[str, Any] = {
        "candidate": index,
        "kind": candidate.kind,
        "value_type": candidate.value_type,
        "achieved_sparsity": sizes.sparsity,
        "bytes": sizes.bytes(candidate.value_type, spec.backbone_tables),
    }
    run_spec = run_spec_of(spec, budget, record)
    if candidate.kind == FULL_KIND:
        record.update(_select_full(spec, split, folder, run_spec, teachers))
        history: list[dict[str, Any]] = []
    elif selects_on_validation(spec):
        model, selection = select_on_validation(run_spec, split, sizes, progress, teachers)
        history = [{"stage": "select", **dataclasses.asdict(r)} for r in selection.history]
        record.update(
            valid=selection.best_metrics,
            valid_by_value_type=validation_by_value_type(
                model, split, run_spec.training.eval_users_per_chunk
            ),
            selected_batches=max(selection.best_batch, 1),
            stages={"select": stage_summary(selection)},
        )
        if spec.selection_share:
            value_type = run_spec.training.value_type
            record["valid_held_out"] = held_out_metrics(spec, split, model, value_type)
    else:
        _, outcome, history = execute_run(run_spec, split, sizes, progress, teachers)
        record.update(
            valid=outcome.valid_metrics,
            test=outcome.test_metrics,
            selected_batches=outcome.selected_batches,
            stages=outcome.stages,
        )
    record["seconds"] = round(time.perf_counter() - started, 2)
    folder.write_candidate(index, sizes, history, record)
    return record


def pick(spec: PipelineSpec, records: list[dict[str, Any]]) -> dict[str, Any]:
    """The record that scores best on the protocol's selection metrics (the first of ties)."""
    metric = spec.training.selection_metric
    return max(records, key=lambda record: record[spec.protocol.selects_on][metric])


def test_candidate(
    spec: PipelineSpec,
    split: DatasetSplit,
    folder: BudgetFolder,
    budget: Budget,
    record: dict[str, Any],
    progress: bool,
    teachers: Teachers | None,
) -> dict[str, Any]:
    """The test phase of a candidate selected on validation: a fresh model trained on train ∪
    validation for its selected batches, tested once. Returns its record with ``test``."""
    if "test" in record:
        return record
    run_spec = run_spec_of(spec, budget, record)
    if record["kind"] == FULL_KIND:
        started = time.perf_counter()
        test = _phase_metrics(run_spec, split, teachers, Phase.TEST)
        seconds = round(record["seconds"] + time.perf_counter() - started, 2)
        return {**record, "test": test, "seconds": seconds}
    sizes = folder.candidate(record["candidate"])
    _, outcome, _ = execute_run(
        run_spec, split, sizes, progress, teachers, selected_batches=record["selected_batches"]
    )
    return {
        **record,
        "test": outcome.test_metrics,
        "stages": {**record["stages"], **outcome.stages},
        "seconds": round(record["seconds"] + outcome.seconds, 2),
    }


def finish_budget(
    spec: PipelineSpec,
    folder: BudgetFolder,
    budget: Budget,
    records: list[dict[str, Any]],
    chosen: dict[str, Any],
) -> dict[str, Any]:
    """Write the budget's ``result.json`` (every candidate's record, the tested pick) and the
    chosen sizes; returns the result."""
    candidates = [chosen if r["candidate"] == chosen["candidate"] else r for r in records]
    result = {
        "budget": budget.ratio if isinstance(budget, ByteBudget) else budget,
        "budget_kind": "bytes" if isinstance(budget, ByteBudget) else "sparsity",
        "protocol": spec.protocol.value,
        "chosen": chosen["candidate"],
        "chosen_kind": chosen["kind"],
        "value_type": chosen.get("value_type", "float32"),
        "achieved_sparsity": chosen["achieved_sparsity"],
        "test": chosen["test"],
        "valid": chosen["valid"],
        "candidates": candidates,
        "seconds": round(sum(float(r["seconds"]) for r in candidates), 2),
    }
    folder.write_result(result, folder.candidate(chosen["candidate"]))
    return result


def retrain_budget(
    spec: PipelineSpec,
    split: DatasetSplit,
    budget: Budget,
    candidates: list[Candidate],
    directory: Path,
    progress: bool,
    teachers: Teachers | None = None,
) -> dict[str, Any]:
    """Stage 4 for one budget, one unit after another: select every candidate, pick one, test
    it. ``teachers``: see :func:`~ciess_core.search.teachers.prepare_teachers`, needed when
    ``spec.distillation`` is set. Returns ``result.json`` (an earlier call's when there is
    one)."""
    folder = BudgetFolder(directory)
    if (cached := folder.result()) is not None:
        return cached
    records = [
        select_candidate(spec, split, folder, budget, index, candidate, progress, teachers)
        for index, candidate in enumerate(candidates)
    ]
    chosen = test_candidate(spec, split, folder, budget, pick(spec, records), progress, teachers)
    return finish_budget(spec, folder, budget, records, chosen)


def train_deployed(
    spec: PipelineSpec,
    split: DatasetSplit,
    folder: BudgetFolder,
    budget: Budget,
    record: dict[str, Any],
    progress: bool,
    teachers: Teachers | None,
) -> dict[str, Any]:
    """Train candidate ``record`` on every interaction for its selected batches and keep the
    weights in ``folder``'s ``deploy/`` until the run folder is written; returns the stage
    summary (an earlier call's when it trained the same candidate). A candidate over
    ``budget`` is a ConfigError before anything trains."""
    sizes = folder.candidate(record["candidate"])
    check_within(budget, sizes, record.get("value_type", "float32"), spec.backbone_tables)
    if (cached := folder.deployment_summary()) is not None and cached["candidate"] == record[
        "candidate"
    ]:
        return cached
    if record["kind"] == FULL_KIND:  # the deployment full model, as it is
        model = _phase_model(teachers, Phase.DEPLOY)
        summary: dict[str, Any] = {"batches_run": 0, "seconds": 0.0, "kept": "teacher-deploy"}
    else:
        run_spec = run_spec_of(spec, budget, record)
        model, summary = train_deployment(
            run_spec, split, sizes, int(record["selected_batches"]), progress, teachers
        )
    summary = {"candidate": record["candidate"], **summary}
    folder.write_deployment(model.state_dict(), summary)
    return summary


def write_deployed_run(
    spec: PipelineSpec, split: DatasetSplit, folder: BudgetFolder, budget: Budget, fingerprint: str
) -> None:
    """The run folder ``run/`` (what ``ciess export`` takes) from the deployment weights and the
    budget's result: the protocol's numbers, the deployment stage, the chosen history, and a
    byte budget's bytes (``budget_bytes`` in ``config.json``). A pick over ``budget`` is a
    ConfigError and no run folder."""
    result, summary = folder.result(), folder.deployment_summary()
    if result is None or summary is None or summary["candidate"] != result["chosen"]:
        raise ConfigError(f"{folder.path} has no tested pick with its deployment model to write")
    chosen, sizes = chosen_candidate(result), folder.chosen()
    check_within(budget, sizes, chosen.get("value_type", "float32"), spec.backbone_tables)
    run_spec = dataclasses.replace(
        run_spec_of(spec, budget, chosen), budget_bytes=_budget_bytes(spec, sizes, budget)
    )
    everything, _ = split.phase(Phase.DEPLOY)
    model = fresh_model(run_spec, everything, sizes)
    model.load_state_dict(torch.load(folder.deployment_weights(), map_location="cpu"))
    stages = {key: value for key, value in summary.items() if key != "candidate"}
    outcome = RunOutcome(
        test_metrics=chosen["test"],
        valid_metrics=chosen["valid"],
        achieved_sparsity=chosen["achieved_sparsity"],
        seconds=float(chosen["seconds"]) + float(summary["seconds"]),
        stages={**chosen["stages"], "deploy": stages},
        selected_batches=int(chosen["selected_batches"]),
        valid_by_value_type=chosen.get("valid_by_value_type", {}),
    )
    history = folder.candidate_history(result["chosen"])
    write_run(folder.run, run_spec, fingerprint, model, outcome, history)
    folder.drop_deployment()


def _budget_bytes(spec: PipelineSpec, sizes: SizeAssignment, budget: Budget) -> int | None:
    """The bytes a byte budget allows tables of ``sizes``' rows (None: a sparsity budget)."""
    if not isinstance(budget, ByteBudget):
        return None
    return budget.allowed_bytes(sizes.num_entities, sizes.max_size, spec.backbone_tables)


def deploy_budget(
    spec: PipelineSpec,
    split: DatasetSplit,
    budget: Budget,
    directory: Path,
    dataset_fingerprint: str,
    progress: bool,
    teachers: Teachers | None = None,
) -> float:
    """Stage 5 for one budget, after :func:`retrain_budget`: the chosen candidate's deployment
    model, written as the run folder ``directory/run``. Returns the seconds its training took
    (0 when an earlier call wrote the run folder)."""
    folder = BudgetFolder(directory)
    if folder.deployed():
        return 0.0
    result = folder.result()
    if result is None:
        raise ConfigError(f"{directory} has no retraining result to deploy")
    chosen = chosen_candidate(result)
    summary = train_deployed(spec, split, folder, budget, chosen, progress, teachers)
    write_deployed_run(spec, split, folder, budget, dataset_fingerprint)
    return float(summary["seconds"])


# -- the units as worker processes run them: their teachers are read from the pipeline folder --


def _run_unit(
    function: Callable[..., dict[str, Any]],
    phases: tuple[Phase, ...],
    spec: PipelineSpec,
    split: DatasetSplit,
    out: Path,
    budget: Budget,
    *arguments: Any,
) -> dict[str, Any]:
    """``function(spec, split, folder, budget, *arguments, teachers)`` with the teachers of
    ``phases`` read from the pipeline folder ``out``: a unit as a worker process runs it."""
    teachers = prepare_teachers(spec, split, out, False, phases)[0]
    with training_checkpoints(checkpoint_folder(out)):
        return function(spec, split, BudgetFolder.of(out, budget), budget, *arguments, teachers)


@dataclass(frozen=True)
class _Unit:
    stage: str  # "select", "test" or "deploy"
    budget: Budget
    needs: tuple[Phase, ...]  # the teachers it loads
    width: int  # columns its model computes: the longest units start first
    function: Callable[..., dict[str, Any]]  # select_candidate, test_candidate, train_deployed
    arguments: tuple[Any, ...]  # those between its budget and its teachers


@dataclass
class _Budget:
    """What the scheduler knows of one budget."""

    folder: BudgetFolder
    count: int
    records: dict[int, dict[str, Any]] = dataclasses.field(default_factory=dict)
    result: dict[str, Any] | None = None
    deployed: dict[str, Any] | None = None


def retrain_budgets(
    runner: StageRunner,
    spec: PipelineSpec,
    split: DatasetSplit,
    out: Path,
    candidates: dict[Budget, list[Candidate]],
    teacher_futures: dict[Phase, Future[float]],
    progress: bool,
    dataset_fingerprint: str | None,
    report: StageReport,
) -> dict[Budget, dict[str, Any]]:
    """Stages 4 and 5 for every budget in ``candidates`` (each budget's candidates;
    ignored for a budget whose retraining an earlier call finished), as units of work in
    ``runner``: every candidate's selection, then per budget the pick's test and, with
    ``dataset_fingerprint``, its deployment model (written as ``budget-<c>/run``). A unit starts
    once the teachers it needs (``teacher_futures``, the phases' teachers being trained) are
    there; among the units that can start, those of the widest models go first.

    Returns each budget's result, with ``deploy_seconds`` (0 when nothing was deployed here)."""
    budgets = {
        budget: _Budget(BudgetFolder.of(out, budget), len(listed))
        for budget, listed in candidates.items()
    }
    waiting: list[_Unit] = []
    deploy_seconds = dict.fromkeys(budgets, 0.0)

    def chosen_record(state: _Budget) -> dict[str, Any]:
        result = state.result
        assert result is not None
        return chosen_candidate(result)

    def queue_deployment(budget: Budget, record: dict[str, Any]) -> None:
        state = budgets[budget]
        if dataset_fingerprint is None or state.folder.deployed():
            return
        cached = state.folder.deployment_summary()
        if cached is not None and cached["candidate"] == record["candidate"]:
            state.deployed = cached
            return
        width = state.folder.candidate(record["candidate"]).width
        arguments = (record, progress)
        waiting.append(_Unit("deploy", budget, (Phase.DEPLOY,), width, train_deployed, arguments))

    def selected(budget: Budget) -> None:
        state = budgets[budget]
        records = [state.records[index] for index in range(state.count)]
        chosen = pick(spec, records)
        if "test" in chosen:  # a protocol that tests while it selects
            tested(budget, chosen)
        else:
            width = state.folder.candidate(chosen["candidate"]).width
            arguments = (chosen, progress)
            waiting.append(_Unit("test", budget, (Phase.TEST,), width, test_candidate, arguments))
        queue_deployment(budget, chosen)

    def tested(budget: Budget, chosen: dict[str, Any]) -> None:
        state = budgets[budget]
        records = [state.records[index] for index in range(state.count)]
        state.result = finish_budget(spec, state.folder, budget, records, chosen)
        finished = sum(s.result is not None for s in budgets.values())
        report(f"retrained budget {budget_label(budget)}", 0.5 + 0.5 * finished / len(budgets))

    for budget, state in budgets.items():
        if (result := state.folder.result()) is not None:
            state.result = result
            queue_deployment(budget, chosen_record(state))
            continue
        for index, candidate in enumerate(candidates[budget]):
            if (record := state.folder.candidate_record(index)) is not None:
                state.records[index] = record
                continue
            arguments = (index, candidate, progress)
            needs = selection_phases(spec)
            width = candidate.sizes.width
            waiting.append(_Unit("select", budget, needs, width, select_candidate, arguments))
        if len(state.records) == state.count:
            selected(budget)

    running: dict[Future[dict[str, Any]], _Unit] = {}
    while waiting or running:
        for teacher in teacher_futures.values():
            if teacher.done():
                teacher.result()  # raises a failed teacher's error before a unit needs it
        ready = [unit for unit in waiting if _teachers_ready(unit.needs, teacher_futures)]
        for unit in sorted(ready, key=lambda unit: -unit.width):
            waiting.remove(unit)
            submitted = runner.submit(
                _run_unit, unit.function, unit.needs, spec, split, out, unit.budget, *unit.arguments
            )
            running[submitted] = unit
        waitables: set[Future[Any]] = {f for f in teacher_futures.values() if not f.done()}
        if not running and not waitables:
            raise ConfigError("retraining units wait for a teacher that is not being trained")
        waitables.update(running)
        done, _ = wait(waitables, return_when=FIRST_COMPLETED)
        for future in done:
            if future not in running:
                continue  # a teacher: checked at the top of the loop
            unit, outcome = running.pop(future), future.result()
            state = budgets[unit.budget]
            if unit.stage == "select":
                state.records[outcome["candidate"]] = outcome
                if len(state.records) == state.count:
                    selected(unit.budget)
            elif unit.stage == "test":
                tested(unit.budget, outcome)
            else:
                state.deployed = outcome
                deploy_seconds[unit.budget] = float(outcome["seconds"])
    if dataset_fingerprint is not None:
        for budget, state in budgets.items():
            if not state.folder.deployed():
                write_deployed_run(spec, split, state.folder, budget, dataset_fingerprint)
    results = {}
    for budget, state in budgets.items():
        assert state.result is not None
        results[budget] = {**state.result, "deploy_seconds": deploy_seconds[budget]}
    return results


def _teachers_ready(needs: tuple[Phase, ...], futures: dict[Phase, Future[float]]) -> bool:
    return all(phase not in futures or futures[phase].done() for phase in needs)
