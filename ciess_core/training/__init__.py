"""BPR training of masked backbones."""

from ciess_core.training.config import TrainConfig
from ciess_core.training.loop import (
    BatchHook,
    EvaluationRecord,
    TrainResult,
    bpr_loss,
    evaluate_model,
    train_bpr,
)
from ciess_core.training.sampling import BprBatch, BprSampler

__all__ = [
    "BatchHook",
    "BprBatch",
    "BprSampler",
    "EvaluationRecord",
    "TrainConfig",
    "TrainResult",
    "bpr_loss",
    "evaluate_model",
    "train_bpr",
]
