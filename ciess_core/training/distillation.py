"""Listwise knowledge distillation from a trained teacher into a size-constrained student.

The pipeline trains a full-size model before it searches (its quality is the denominator of the
search's reward), so a teacher is at hand when the chosen assignments are retrained. Each batch,
every sampled user gets a short candidate list: ``sampled_top`` items drawn from the teacher's
``top_k`` highest-scored items among those the user has not interacted with in the student's
training matrix, and ``sampled_random`` items drawn uniformly from the catalogue. The student is
pulled towards the teacher's softmax over that list (KL divergence, temperature τ, scaled by τ²),
beside the usual BPR loss. The top items carry the teacher's knowledge of which unseen items
come next; the random ones anchor the rest of the catalogue.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from ciess_core.errors import ConfigError
from ciess_core.evaluation import mask_excluded
from ciess_core.models import Backbone
from ciess_core.models.base import Representation

logger = logging.getLogger(__name__)


class TeacherSource(enum.Enum):
    """Which full model teaches a training phase.

    SEARCH: the full model trained on the search split (train only) teaches every phase; the
    pipeline has it anyway. PHASE (the default, measured better at 0.90 and 0.95 in
    docs/benchmarks/ciess-ml-1m.md): each phase has its own full model, trained on that phase's
    training matrix (train ∪ validation for the test phase, every interaction for the
    deployment model); one more full training per phase.
    """

    SEARCH = "search"
    PHASE = "phase"


@dataclass(frozen=True)
class DistillationConfig:
    """How strongly and on which items the student follows the teacher.

    Attributes:
        weight: factor of the distillation term added to the BPR loss.
        temperature: τ of both softmaxes.
        top_k: size of each user's list of the teacher's best unseen items.
        sampled_top: candidates per user per batch drawn from that list.
        sampled_random: candidates per user per batch drawn uniformly from all items.
        users_per_batch: how many of the batch's users (the first ones; the sampler draws them
            uniformly) get a candidate list; 0: all of them.
        teacher: which full model teaches each phase.
    """

    weight: float = 1.0
    temperature: float = 1.0
    top_k: int = 100
    sampled_top: int = 16
    sampled_random: int = 16
    users_per_batch: int = 2048
    teacher: TeacherSource = TeacherSource.PHASE

    def __post_init__(self) -> None:
        if self.weight <= 0:
            raise ConfigError(f"distillation weight must be > 0, got {self.weight}")
        if self.temperature <= 0:
            raise ConfigError(f"distillation temperature must be > 0, got {self.temperature}")
        for name in ("top_k", "sampled_top"):
            if getattr(self, name) < 1:
                raise ConfigError(f"distillation {name} must be >= 1, got {getattr(self, name)}")
        for name in ("sampled_random", "users_per_batch"):
            if getattr(self, name) < 0:
                raise ConfigError(f"distillation {name} must be >= 0, got {getattr(self, name)}")


class Distiller:
    """A frozen teacher and its per-user candidate lists, for :func:`train_bpr`.

    ``teacher`` must score the same users and items as the student; ``exclude`` is the student's
    training matrix (the teacher's top lists skip those items; ``top_k`` is capped at the fewest
    unseen items of any user).
    """

    def __init__(
        self,
        teacher: Backbone,
        exclude: sp.csr_matrix,
        config: DistillationConfig,
        users_per_chunk: int = 2048,
    ) -> None:
        if exclude.shape != (teacher.num_users, teacher.num_items):
            raise ConfigError(
                f"teacher scores {teacher.num_users} users and {teacher.num_items} items, "
                f"the training matrix has shape {exclude.shape}"
            )
        exclude = exclude.tocsr()
        unseen = teacher.num_items - int(np.diff(exclude.indptr).max(initial=0))
        if unseen < 1:
            raise ConfigError("a user has interacted with every item: nothing to distil")
        if config.top_k > unseen:  # every top list must hold unseen items only
            logger.info("distillation top_k %d capped at %d", config.top_k, unseen)
            config = dataclasses.replace(config, top_k=unseen)
        self.config = config
        self.teacher = teacher
        teacher.eval()
        for parameter in teacher.parameters():
            parameter.requires_grad_(False)
        with torch.no_grad():
            self.representation = teacher.represent()
            self.top_items, self.top_scores = _teacher_top_items(
                teacher, self.representation, exclude, config.top_k, users_per_chunk
            )

    def loss(
        self,
        student: Backbone,
        representation: Representation,
        users: torch.Tensor,
        rng: np.random.Generator,
    ) -> torch.Tensor:
        """The weighted distillation term for the batch's ``users`` (B,)."""
        config = self.config
        if config.users_per_batch:
            users = users[: config.users_per_batch]
        count = len(users)
        rows = users.cpu()
        picks = torch.from_numpy(rng.integers(0, config.top_k, size=(count, config.sampled_top)))
        top = self.top_items[rows].gather(1, picks)
        uniform = torch.from_numpy(
            rng.integers(0, self.teacher.num_items, size=(count, config.sampled_random))
        )
        with torch.no_grad():  # the top lists' teacher scores are kept; only the uniform's cost
            teacher_scores = torch.cat(
                [
                    self.top_scores[rows].gather(1, picks).to(users.device),
                    self.teacher.score_candidates(
                        self.representation, users, uniform.to(users.device)
                    ),
                ],
                dim=1,
            )
        candidates = torch.cat([top, uniform], dim=1).to(users.device)
        student_scores = student.score_candidates(representation, users, candidates)
        tau = config.temperature
        target = F.softmax(teacher_scores / tau, dim=1)
        log_student = F.log_softmax(student_scores / tau, dim=1)
        divergence = F.kl_div(log_student, target, reduction="batchmean")
        return config.weight * tau * tau * divergence


def _teacher_top_items(
    teacher: Backbone,
    representation: Representation,
    exclude: sp.csr_matrix,
    top_k: int,
    users_per_chunk: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each user's ``top_k`` best-scored items outside ``exclude`` and their scores, both
    (num_users, top_k) on the CPU."""
    device = teacher.tables()[0].weight.device
    rows: list[torch.Tensor] = []
    values: list[torch.Tensor] = []
    for start in range(0, teacher.num_users, users_per_chunk):
        stop = min(start + users_per_chunk, teacher.num_users)
        users = torch.arange(start, stop, device=device)
        scores = teacher.score_all_items(representation, users)
        mask_excluded(scores, exclude[start:stop])
        best = scores.topk(top_k, dim=1)
        rows.append(best.indices.cpu())
        values.append(best.values.cpu())
    return torch.cat(rows), torch.cat(values)
