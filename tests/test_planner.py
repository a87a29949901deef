"""Byte budgets and the planner: the parameters a byte budget leaves each value type, models
scored as stored, and a tiny pipeline whose byte budgets are met by the value type the planner
picks."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ciess_core.data import DatasetSplit, Phase
from ciess_core.errors import ConfigError
from ciess_core.models import BackboneConfig, LightGCN, build_backbone, stored_tables
from ciess_core.search import retraining
from ciess_core.search.budgets import ByteBudget, sparsity_of
from ciess_core.search.files import BudgetFolder
from ciess_core.search.pipeline import run_pipeline
from ciess_core.search.planner import planned_sparsities, search_budgets
from ciess_core.search.teachers import full_model_batches, prepare_teachers
from ciess_core.sizes import SizeAssignment, parameter_budget
from ciess_core.storage import (
    VALUE_TYPES,
    dense_fp32_bytes,
    dequantise,
    parameters_within,
    quantise,
    stored_bytes,
)
from ciess_core.training import evaluate_model
from ciess_core.training.distillation import DistillationConfig
from tests.test_search_pipeline import MAX_SIZE, tiny_spec


@settings(max_examples=60, deadline=None)
@given(
    num_rows=st.integers(1, 400),
    max_size=st.sampled_from([1, 7, 16, 128, 300]),
    value_type=st.sampled_from(VALUE_TYPES),
    tables=st.integers(1, 2),
    budget=st.integers(0, 400_000),
)
def test_parameters_within_is_the_most_that_fits(
    num_rows: int, max_size: int, value_type: str, tables: int, budget: int
) -> None:
    found = parameters_within(budget, num_rows, value_type, max_size, tables)
    if found < 0:
        assert stored_bytes(num_rows, 0, value_type, max_size, tables) > budget
        return
    assert stored_bytes(num_rows, found, value_type, max_size, tables) <= budget
    if found < num_rows * max_size:
        assert stored_bytes(num_rows, found + 1, value_type, max_size, tables) > budget


@settings(max_examples=60, deadline=None)
@given(
    num_rows=st.integers(1, 5000),
    budget=st.integers(1, 10**7),
    tables=st.integers(1, 2),
)
def test_a_byte_budget_in_bytes_keeps_its_bytes_and_its_sparsities_their_parameters(
    num_rows: int, budget: int, tables: int
) -> None:
    dense = dense_fp32_bytes(num_rows, 128, tables)
    if budget > dense:
        with pytest.raises(ConfigError, match="byte budget must lie in"):
            ByteBudget.of_bytes(budget, num_rows, 128, tables)
        return
    byte_budget = ByteBudget.of_bytes(budget, num_rows, 128, tables)
    assert byte_budget.allowed_bytes(num_rows, 128, tables) == budget
    for value_type in VALUE_TYPES:
        parameters = byte_budget.parameters(value_type, num_rows, 128, tables)
        if parameters >= num_rows:  # a planned sparsity gives the same parameter budget back
            sparsity = sparsity_of(parameters, num_rows, 128)
            assert parameter_budget(num_rows, 128, sparsity) == parameters
            assert stored_bytes(num_rows, parameters, value_type, 128, tables) <= budget


def test_byte_ratios_outside_the_unit_interval_are_refused() -> None:
    for ratio in (0.0, -0.1, 1.5):
        with pytest.raises(ConfigError, match=r"byte ratio must lie in \(0, 1\]"):
            ByteBudget(ratio)
    with pytest.raises(ConfigError, match="byte_ratios must be distinct"):
        dataclasses.replace(tiny_spec(), byte_ratios=(0.1, 0.1))


def test_byte_budget_labels_keep_their_short_names_and_tell_nearby_budgets_apart() -> None:
    """Six significant digits where they give the ratio back (the names of existing folders),
    every digit it needs where they do not: budgets a byte apart on a large dataset."""
    for ratio in (0.2, 0.1, 0.05, 0.025, 0.01):
        assert ByteBudget(ratio).label == f"bytes-{ratio}"
    assert ByteBudget(1.0).label == "bytes-1" and ByteBudget(1e-5).label == "bytes-1e-05"
    rows, bytes_asked = 10_000_000, 250_000_000  # a ratio of 0.048828125: eight digits
    nearby = [ByteBudget.of_bytes(bytes_asked + extra, rows, 128, 1) for extra in range(4)]
    labels = [budget.label for budget in nearby]
    assert len(set(labels)) == 4 and labels[0] == "bytes-0.048828125"
    for budget in nearby:
        assert float(budget.label.removeprefix("bytes-")) == budget.ratio


def test_a_pick_over_its_byte_budget_is_refused_before_its_deployment_trains(
    clustered_split: DatasetSplit, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug, never a choice: no deployment training and no run folder for it."""
    spec = dataclasses.replace(tiny_spec(), byte_ratios=(0.07,))
    split, budget = clustered_split, ByteBudget(0.07)
    folder = BudgetFolder.of(tmp_path, budget)
    full = SizeAssignment.full(split.num_users, split.num_items, MAX_SIZE)
    record = {"candidate": 0, "kind": "search", "value_type": "float32", "achieved_sparsity": 0.0,
              "valid": {}, "test": {}, "selected_batches": 1, "stages": {}, "seconds": 0.0}  # fmt: skip
    folder.write_candidate(0, full, [], record)
    folder.write_result({"chosen": 0, "candidates": [record]}, full)
    allowed = budget.allowed_bytes(split.num_users + split.num_items, MAX_SIZE, 1)
    message = f"bytes-0.07 exceeded: {full.bytes('float32')} bytes stored, {allowed} allowed"
    monkeypatch.setattr(retraining, "train_deployment", lambda *_: pytest.fail("it trained"))
    with pytest.raises(ConfigError, match=message):
        retraining.deploy_budget(spec, split, budget, folder.path, "data", progress=False)
    assert folder.deployment_summary() is None and not folder.deployed()
    folder.write_deployment({}, {"candidate": 0, "seconds": 0.0})  # trained by an older ciess
    with pytest.raises(ConfigError, match=message):
        retraining.write_deployed_run(spec, split, folder, budget, "data")
    assert not folder.deployed()


def test_narrow_types_get_more_parameters_and_infeasible_types_none() -> None:
    spec = dataclasses.replace(tiny_spec(), byte_ratios=(0.07,))
    planned = planned_sparsities(spec, ByteBudget(0.07), 1000)
    # 0.07 of 64 bytes a row leaves float32 (4 bytes a value plus a size byte) nothing
    assert "float32" not in planned
    assert planned["float16"] < 1.0 - 1.0 / MAX_SIZE + 1e-12
    loose = planned_sparsities(spec, ByteBudget(0.2), 1000)
    assert loose["int4"] < loose["int8"] < loose["float16"] < loose["float32"]
    assert loose["int4"] == 0.0  # the whole table fits as int4
    budgets = search_budgets(dataclasses.replace(spec, byte_ratios=(0.07, 0.2)), 1000)
    assert budgets[:2] == spec.search.budgets
    assert len(budgets) == len(set(budgets))  # each sparsity once (int4 and int4-table: 0)
    assert set(budgets) == {*spec.search.budgets, *planned.values(), *loose.values()}


def test_a_model_scored_as_stored_is_scored_as_its_artifact_decodes_it(
    clustered_split: DatasetSplit,
) -> None:
    train, valid = clustered_split.phase(Phase.SEARCH)
    generator = torch.Generator().manual_seed(3)
    model = build_backbone(BackboneConfig(max_size=MAX_SIZE), train, generator)
    assert isinstance(model, LightGCN)  # the default backbone: its one table is .embedding
    sizes = SizeAssignment.equal(train.shape[0], train.shape[1], 5, MAX_SIZE)
    model.set_size_assignment(sizes)
    before = model.embedding.weight.detach().clone()
    float32 = evaluate_model(model, train, valid).mean()
    scores = {"float32": float32}
    for value_type in ("float16", "int8", "int4"):
        with stored_tables(model, value_type) as stored:
            assert isinstance(stored, LightGCN)
            weight = stored.embedding.weight.detach().numpy()[:, :5].reshape(-1)
            flat = before.numpy()[:, :5].reshape(-1)
            row_sizes = np.full(model.num_entities, 5)
            expected = dequantise(*quantise(flat, row_sizes, value_type), row_sizes, value_type)
            np.testing.assert_array_equal(weight, expected)
        assert torch.equal(model.embedding.weight, before)  # restored after the block
        scores[value_type] = evaluate_model(model, train, valid, value_type=value_type).mean()
    assert scores["float16"]["ndcg@20"] == pytest.approx(float32["ndcg@20"], abs=1e-3)
    assert scores["int4"] != float32  # four bits move the ranking


def test_a_byte_budget_pipeline_never_exceeds_its_bytes(
    clustered_split: DatasetSplit, tmp_path: Path
) -> None:
    spec = dataclasses.replace(
        tiny_spec(),
        byte_ratios=(0.07, 0.3),
        share_grid=(0.4, 0.6),
        equal_candidate=True,
        retrain_top=1,
    )
    summary = run_pipeline(spec, clustered_split, tmp_path, progress=False)
    assert set(summary["budgets"]) == {"bytes-0.07", "bytes-0.3"}
    assert not (tmp_path / "budget-0.5").exists()  # search.budgets only feed the pool
    num_entities = clustered_split.num_users + clustered_split.num_items
    for ratio in spec.byte_ratios:
        budget = ByteBudget(ratio)
        folder = BudgetFolder.of(tmp_path, budget)
        result = summary["budgets"][budget.label]
        allowed = budget.allowed_bytes(num_entities, MAX_SIZE, 1)
        assert result["budget_kind"] == "bytes"
        for record in result["candidates"]:
            assert record["bytes"] <= allowed
            sizes = folder.candidate(record["candidate"])
            assert sizes.bytes(record["value_type"]) == record["bytes"]
        assert folder.chosen().bytes(result["value_type"]) <= allowed
        plan = json.loads((folder.path / "plan.json").read_text())
        assert plan[0]["budget_bytes"] == allowed
        assert {row["value_type"] for row in plan[0]["value_types"]} == set(
            planned_sparsities(spec, budget, num_entities)
        )
        assert [row["kind"] for row in plan[1:]].count("equal") == 1
        # equal sizes store a few runs, not a size per row: the bytes hold more values
        for row in plan[0]["value_types"]:
            assert row["equal_parameters"] > row["parameters"] or row["sparsity"] == 0.0
    assert summary["budgets"]["bytes-0.07"]["value_type"] != "float32"  # it cannot fit


def test_a_byte_budget_too_small_for_any_type_is_refused(
    clustered_split: DatasetSplit, tmp_path: Path
) -> None:
    """Before any stage: no full model trained, and the smallest store's bytes named."""
    spec = dataclasses.replace(tiny_spec(), byte_ratios=(0.01,), share_grid=(0.5,), retrain_top=1)
    out = tmp_path / "pipeline"
    with pytest.raises(ConfigError, match=r"cannot keep one value for each of the .* users and"):
        run_pipeline(spec, clustered_split, out, progress=False)
    assert not out.exists()


def test_the_full_model_is_a_candidate_where_it_fits_and_is_never_retrained(
    clustered_split: DatasetSplit, tmp_path: Path
) -> None:
    spec = dataclasses.replace(
        tiny_spec(),
        byte_ratios=(0.3,),
        share_grid=(0.5,),
        retrain_top=1,
        distillation=DistillationConfig(top_k=10, sampled_top=4, sampled_random=4),
    )
    summary = run_pipeline(spec, clustered_split, tmp_path, progress=False)
    budget = ByteBudget(0.3)
    folder = BudgetFolder.of(tmp_path, budget)
    result = summary["budgets"][budget.label]
    split = clustered_split
    full = SizeAssignment.full(split.num_users, split.num_items, MAX_SIZE)
    allowed = budget.allowed_bytes(split.num_users + split.num_items, MAX_SIZE, 1)
    fitting = {t for t in VALUE_TYPES if full.bytes(t) <= allowed}
    assert fitting and "float32" not in fitting
    records = [r for r in result["candidates"] if r["kind"] == retraining.FULL_KIND]
    assert {r["value_type"] for r in records} == fitting
    teachers, _ = prepare_teachers(spec, split, tmp_path, progress=False)
    metric = spec.training.selection_metric
    for record in records:
        value_type = record["value_type"]
        assert record["stages"] == {}  # scored, never trained
        assert record["selected_batches"] == full_model_batches(tmp_path)
        train, valid = split.phase(Phase.SEARCH)
        expected = evaluate_model(teachers[Phase.SEARCH], train, valid, value_type=value_type)
        assert record["valid"][metric] == pytest.approx(expected.mean()[metric])
        tested = retraining.test_candidate(spec, split, folder, budget, record, False, teachers)
        train, test = split.phase(Phase.TEST)
        expected = evaluate_model(teachers[Phase.TEST], train, test, value_type=value_type)
        assert tested["test"][metric] == pytest.approx(expected.mean()[metric])
    best = max(result["candidates"], key=lambda r: r["valid"][metric])
    assert result["chosen"] == best["candidate"]
    retraining.train_deployed(spec, split, folder, budget, records[0], False, teachers)
    kept = torch.load(folder.deployment_weights())
    for name, weights in teachers[Phase.DEPLOY].state_dict().items():
        assert torch.equal(kept[name], weights)  # served as the deployment full model is
