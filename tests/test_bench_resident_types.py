"""The narrower resident layouts of ``bench/resident_types.py`` score as the float32 scorer does,
within their rounding, and count their bytes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from bench.resident_types import quantise_rows, resident_bytes, scorer_for
from ciess_core.artifact.export import export_model
from ciess_core.data import DatasetSplit, Phase
from ciess_core.models import BackboneConfig, BackboneKind, build_backbone


def _artifact(split: DatasetSplit, out: Path) -> Path:
    train, _ = split.phase(Phase.TEST)
    config = BackboneConfig.default_for(BackboneKind.LIGHTGCN, max_size=32)
    model = build_backbone(config, train, torch.Generator().manual_seed(0))
    sizes = np.random.default_rng(1).integers(1, 33, size=model.num_users + model.num_items)
    model.set_embedding_sizes(torch.from_numpy(sizes))
    return export_model(model.eval(), train, split.external_user_ids, split.external_item_ids, out)


def test_int8_rows_round_trip_within_half_a_step() -> None:
    rows = np.random.default_rng(0).standard_normal((50, 17)).astype(np.float32)
    rows[3] = 0.0
    codes, scales = quantise_rows(rows)
    assert codes.dtype == np.int8 and scales.shape == (50, 1)
    assert np.abs(codes).max() <= 127
    assert np.all(np.abs(codes * scales - rows) <= scales / 2 + 1e-7)
    assert np.all(codes[3] == 0)


def test_narrow_layouts_score_close_to_float32_and_count_their_bytes(
    clustered_split: DatasetSplit, tmp_path: Path
) -> None:
    directory = _artifact(clustered_split, tmp_path / "a")
    reference = scorer_for("float32", directory)
    users = np.arange(reference.num_users)
    exact = reference.score_all(users)
    peak = np.abs(exact).max()
    for layout, tolerance in (("float16", 2e-3), ("int8", 3e-2)):
        scorer = scorer_for(layout, directory)
        scores = scorer.score_all(users)
        assert np.abs(scores - exact).max() <= tolerance * peak, layout
        one = scorer.recommend([5], 10)
        batch = scorer.recommend(users[:8], 10)
        np.testing.assert_array_equal(one[0][0], batch[0][5])
        assert resident_bytes(scorer) < resident_bytes(reference)
    int8 = scorer_for("int8", directory).index
    vectors = reference.index.nbytes // 4  # float32 elements
    scales = 4 * (reference.num_users + reference.num_items)
    assert int8.nbytes == vectors + scales
