"""A model's tables as a store of a value type holds them (simulated quantisation).

An artifact stores each table's kept prefixes as float32, float16, int8 or int4
(:mod:`ciess_core.storage`); what it serves is those values decoded. Scoring a model "as stored"
replaces every table's weights by that decoding for a while, with the same per-row quantiser the
artifact writer uses, so that validation, test and the planner's candidate scores measure the
model a user will be served, not its float32 original.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

from ciess_core.models.base import Backbone
from ciess_core.models.masking import prefix_mask
from ciess_core.storage import ValueType, dequantise, quantise


def stored_weight(weight: torch.Tensor, sizes: torch.Tensor, value_type: str) -> torch.Tensor:
    """(n, d_max) ``weight`` as a ``value_type`` store decodes it: each row's first ``sizes[r]``
    values stored and decoded, zero past them."""
    mask = prefix_mask(sizes, weight.shape[1]).bool()
    kept = weight.detach()[mask].cpu().numpy().astype(np.float32)  # row-major: row by row
    row_sizes = sizes.detach().cpu().numpy().astype(np.int64)
    stored, scales = quantise(kept, row_sizes, value_type)
    decoded = dequantise(stored, scales, row_sizes, value_type)
    result = torch.zeros_like(weight)
    result[mask] = torch.from_numpy(decoded).to(weight.device)
    return result


@contextmanager
def stored_tables(model: Backbone, value_type: str) -> Iterator[Backbone]:
    """``model`` with every table's weights as a ``value_type`` store decodes them, for the
    ``with`` block (float32: the model untouched). The weights are restored afterwards."""
    if ValueType(value_type).name == "float32":
        yield model
        return
    kept = [table.weight.detach().clone() for table in model.tables()]
    try:
        with torch.no_grad():
            for table in model.tables():
                table.weight.copy_(stored_weight(table.weight, table.sizes, value_type))
        yield model
    finally:
        with torch.no_grad():
            for table, original in zip(model.tables(), kept, strict=True):
                table.weight.copy_(original)
