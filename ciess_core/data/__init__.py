"""Interaction data: loading files, the named datasets, and the per-user train/valid/test split."""

from ciess_core.data.interactions import (
    DEFAULT_SPLIT_RATIOS,
    DatasetSplit,
    InteractionData,
    Phase,
    check_split,
    hold_out_per_user,
    pairs_to_csr,
    split_per_user,
    validate_split_ratios,
)
from ciess_core.data.loaders import (
    InteractionFormat,
    guess_format,
    load_csv,
    load_interactions,
    load_lightgcn,
    load_lightgcn_folder,
    load_movielens_ratings,
    load_pairs,
)
from ciess_core.data.registry import (
    DATA_DIR_ENV,
    DATASETS,
    DatasetSpec,
    load_dataset,
    open_dataset,
    resolve_data_dir,
)

__all__ = [
    "DATASETS",
    "DATA_DIR_ENV",
    "DEFAULT_SPLIT_RATIOS",
    "DatasetSpec",
    "DatasetSplit",
    "InteractionData",
    "InteractionFormat",
    "Phase",
    "check_split",
    "guess_format",
    "hold_out_per_user",
    "load_csv",
    "load_dataset",
    "load_interactions",
    "load_lightgcn",
    "load_lightgcn_folder",
    "load_movielens_ratings",
    "load_pairs",
    "open_dataset",
    "pairs_to_csr",
    "resolve_data_dir",
    "split_per_user",
    "validate_split_ratios",
]
