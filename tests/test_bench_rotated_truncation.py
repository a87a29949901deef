"""``bench/rotated_truncation.py``: turning LightGCN's table keeps its scores, and cutting the
turned table keeps more of them than cutting the table as trained."""

from __future__ import annotations

from types import SimpleNamespace
from typing import cast

import numpy as np
import scipy.sparse as sp
import torch

from bench.rotated_truncation import TurnedModel, equal_width
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
