"""Masked-embedding backbones behind one contract (:class:`Backbone`)."""

from __future__ import annotations

import scipy.sparse as sp
import torch

from ciess_core.models.base import Backbone, BackboneConfig, BackboneKind, Representation
from ciess_core.models.lightgcn import LightGCN
from ciess_core.models.masking import MaskedEmbedding, prefix_mask
from ciess_core.models.ncf import NCF
from ciess_core.models.ngcf import NGCF
from ciess_core.models.stored import stored_tables, stored_weight

__all__ = [
    "NCF",
    "NGCF",
    "Backbone",
    "BackboneConfig",
    "BackboneKind",
    "LightGCN",
    "MaskedEmbedding",
    "Representation",
    "build_backbone",
    "prefix_mask",
    "stored_tables",
    "stored_weight",
]


def build_backbone(
    config: BackboneConfig, train: sp.csr_matrix, generator: torch.Generator
) -> Backbone:
    """Build the backbone ``config.kind`` for a (num_users, num_items) training matrix.

    The model lives on ``generator.device``; all its random initialisation comes from ``generator``.
    """
    num_users, num_items = train.shape
    if config.kind is BackboneKind.LIGHTGCN:
        return LightGCN(num_users, num_items, config, train, generator)
    if config.kind is BackboneKind.NGCF:
        return NGCF(num_users, num_items, config, train, generator)
    return NCF(num_users, num_items, config, generator)
