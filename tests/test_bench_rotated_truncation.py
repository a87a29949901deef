"""``bench/rotated_truncation.py``: turning LightGCN's table keeps its scores, and cutting the
turned table keeps more of them than cutting the table as trained."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import numpy as np
import scipy.sparse as sp
import torch

from bench.rotated_truncation import TurnedModel, equal_width, grid_rows, report_lines
from ciess_core.data import DatasetSplit
from ciess_core.models import Backbone, BackboneConfig, BackboneKind, build_backbone
from ciess_core.models.rotation import principal_rotation
from ciess_core.pipeline import pipeline_spec
from ciess_core.search.budgets import ByteBudget
from ciess_core.sizes import SizeAssignment

USERS, ITEMS, WIDTH = 30, 20, 16


def _model(seed: int = 0) -> Backbone:
    rng = np.random.default_rng(seed)
    train = sp.csr_matrix((rng.random((USERS, ITEMS)) < 0.2).astype(np.float32))
    config = BackboneConfig.default_for(BackboneKind.LIGHTGCN, max_size=WIDTH)
    model = build_backbone(config, train, torch.Generator().manual_seed(seed))
    with torch.no_grad():  # a table of low rank plus noise, as a trained one is
        (table,) = model.tables()
        factors = torch.randn(USERS + ITEMS, 3, generator=torch.Generator().manual_seed(seed))
        mixing = torch.randn(3, WIDTH, generator=torch.Generator().manual_seed(seed + 1))
        table.weight.copy_(factors @ mixing + 0.05 * torch.randn(USERS + ITEMS, WIDTH))
    return model


def _scores(model: Backbone) -> torch.Tensor:
    with torch.no_grad():
        return model.score_all_items(model.represent(), torch.arange(USERS))


def test_the_rotation_is_orthogonal_and_ordered_by_energy() -> None:
    (table,) = _model().tables()
    rotation = principal_rotation(table.weight.detach())
    assert torch.allclose(rotation.T @ rotation, torch.eye(WIDTH), atol=1e-5)
    energy = ((table.weight.detach() @ rotation) ** 2).sum(dim=0)
    assert bool((energy[:-1] >= energy[1:] - 1e-4).all())


def test_turning_at_full_size_keeps_every_score() -> None:
    model = _model()
    before = _scores(model)
    turned = TurnedModel(model)
    turned.cut(SizeAssignment(np.full(USERS, 2), np.full(ITEMS, 2), WIDTH))
    full = turned.cut(SizeAssignment(np.full(USERS, WIDTH), np.full(ITEMS, WIDTH), WIDTH))
    assert torch.allclose(_scores(full), before, atol=1e-5)  # each cut starts from the turned


def test_cutting_the_turned_table_keeps_the_scores_better_than_cutting_it_as_trained() -> None:
    sizes = SizeAssignment(np.full(USERS, 3), np.full(ITEMS, 3), WIDTH)
    full = _scores(_model())
    cut = _model()
    cut.set_size_assignment(sizes)
    turned = TurnedModel(_model()).cut(sizes)
    assert bool((turned.embedding_sizes() == 3).all())

    def error(model: Backbone) -> float:
        return float(((_scores(model) - full) ** 2).mean())

    assert error(turned) < 0.1 * error(cut)


def test_the_equal_width_is_the_widest_that_fits_the_byte_budget() -> None:
    spec = pipeline_spec("ml-1m", "lightgcn", byte_ratios=(0.05,))
    split = cast(DatasetSplit, SimpleNamespace(num_users=600, num_items=400))
    budget = ByteBudget(0.05).allowed_bytes(1000, spec.backbone.max_size, spec.backbone_tables)
    for value_type in ("float32", "int8", "int4-table"):
        width = equal_width(split, spec, 0.05, value_type)

        def stored(size: int, value_type: str = value_type) -> int:
            sizes = SizeAssignment(np.full(600, size), np.full(400, size), spec.backbone.max_size)
            return sizes.bytes(value_type, spec.backbone_tables)

        assert 1 <= width < spec.backbone.max_size
        assert stored(width) <= budget < stored(width + 1)


def _finished_run(work: Path, start: str | None, test: float, batches: int) -> Path:
    """The files of a finished byte-budget run at ratio 0.05 that ``grid`` reads: a searched
    candidate (the pick) and an equal one retrained, and the full model's candidate."""
    pipeline = work / "pipeline"
    (pipeline / "teacher").mkdir(parents=True)
    (work / "run_id.txt").write_text(f"run-{start}\n")
    spec = {"dataset": "ml-1m", "byte_ratios": [0.05]}
    (pipeline / "spec.json").write_text(
        json.dumps(spec | ({} if start is None else {"retrain_start": start}))
    )
    (pipeline / "teacher" / "summary.json").write_text(json.dumps({"test": {"ndcg@20": 0.44}}))

    def candidate(index: int, kind: str, selected: int) -> dict[str, object]:
        return {"candidate": index, "kind": kind, "selected_batches": selected,
                "stages": {} if kind == "full" else {"select": {"batches_run": batches}}}  # fmt: skip

    budget = {
        "chosen": 0, "chosen_kind": "search", "value_type": "int4",
        "valid": {"ndcg@20": 0.30}, "test": {"ndcg@20": test},
        "candidates": [candidate(0, "search", 1200), candidate(1, "equal", 900),
                       candidate(2, "full", 3000)],
    }  # fmt: skip
    summary = {"budgets": {"bytes-0.05": budget}, "timings": {"retrain_bytes-0.05": 100.0}}
    (pipeline / "summary.json").write_text(json.dumps(summary))
    return work


def test_the_grid_compares_two_runs_ratio_by_ratio(tmp_path: Path) -> None:
    warm = _finished_run(tmp_path / "warm", "teacher", 0.43, 1000)
    scratch = _finished_run(tmp_path / "scratch", None, 0.42, 3000)  # before the setting
    (row,) = grid_rows(warm, scratch)
    assert (row["kind"], row["byte_ratio"], row["full_test"]) == ("grid", 0.05, 0.44)
    sides = {side["retrain_start"]: side for side in row["runs"]}
    assert set(sides) == {"teacher", "random"}
    assert sides["teacher"]["selection_batches"] == 2000  # the two retrained candidates
    assert sides["random"]["selection_batches"] == 6000
    assert sides["teacher"]["test_batches"] == 1200  # the pick's selected batches
    lines = report_lines({"rows": [row], "machine": "m", "date": "d", "commands": ["c"]})
    assert any(
        line.startswith("| 0.05 | teacher | search | int4 | 0.3000 | 0.4300 (97.7%)")
        for line in lines
    )
