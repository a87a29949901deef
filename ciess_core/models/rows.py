"""Row gathers whose gradients are the same floats at any thread count."""

from __future__ import annotations

import torch


def gather_rows(table: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """``table[ids]`` for int64 ``ids`` of any shape: ``(*ids.shape, table.shape[1])``.

    The gradient flows back through ``index_add_``, which on CPU splits its work by columns and
    so sums each row's contributions in the same order whatever the thread count. Advanced
    indexing's backward (``index_put_`` with accumulation) splits by ids, and with more than one
    thread the order of its additions, hence the trained weights' last bits, change from run to
    run.
    """
    return table.index_select(0, ids.reshape(-1)).view(*ids.shape, table.shape[1])
