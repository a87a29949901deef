"""The size penalty λ of the reward r = q − λ·(d/d_max)² (spec §4), fixed or steered per budget.

The paper uses one λ for the whole search and lets one search serve every budget. With a fixed λ
the search settles where the quality it gains balances the penalty, which need not be near any
budget (on ML-1M with LightGCN it stays near sparsity 0.76, docs/benchmarks/ciess-ml-1m.md), and a
budget the search never visits is only reached by projecting denser assignments onto it.

``PenaltyControl.PER_BUDGET`` instead gives each budget its own phase of episodes, loosest budget
first, and after every iteration moves λ by a multiplicative dual-ascent step towards the budget:
λ ← λ·exp(η·(c − s)), where s is the iteration's sparsity and c the phase's budget. A search that
keeps too many parameters raises λ, one that prunes past the budget lowers it. λ carries over from
one phase to the next, and so do the agents and their replay buffers.

Under per-budget control the rewards are divided by 1 + λ (:func:`reward_scale`). A positive
factor leaves every entity's best size where it was, and keeps the rewards within [−1, 1] however
far λ moves. Unscaled, a λ in the hundreds gives rewards in the hundreds and Q values near
−λ/(1 − γ), which a critic stepping at 3e-3 per update cannot follow: in the first measured
run the users' critic loss reached 2.5e4 and their sizes stopped answering λ at all.
"""

from __future__ import annotations

import enum
import math

from ciess_core.errors import ConfigError

__all__ = ["PENALTY_BOUNDS", "PenaltyControl", "adjust_penalty", "reward_scale"]

#: λ never leaves this range, so that a budget the policy cannot reach does not blow λ up.
PENALTY_BOUNDS = (1e-3, 1e3)


class PenaltyControl(enum.Enum):
    """How λ is set during the search."""

    FIXED = "fixed"
    PER_BUDGET = "per-budget"


def adjust_penalty(penalty: float, target_sparsity: float, achieved: float, step: float) -> float:
    """One dual-ascent step: λ·exp(step·(target − achieved)), kept within ``PENALTY_BOUNDS``.

    Args:
        penalty: the current λ (> 0).
        target_sparsity: the phase's budget c.
        achieved: the sparsity of the assignment just evaluated.
        step: η, the step size in log-λ per unit of sparsity gap (≥ 0).
    """
    if not (math.isfinite(penalty) and penalty > 0):
        raise ConfigError(f"penalty must be a finite number > 0, got {penalty}")
    if not (math.isfinite(step) and step >= 0):
        raise ConfigError(f"step must be a finite number >= 0, got {step}")
    low, high = PENALTY_BOUNDS
    # In log space, so that a huge step saturates at a bound instead of overflowing.
    logarithm = math.log(penalty) + step * (target_sparsity - achieved)
    return math.exp(min(max(logarithm, math.log(low)), math.log(high)))


def reward_scale(control: PenaltyControl, penalty: float) -> float:
    """The factor the rewards are multiplied by: 1 for a fixed λ (the paper's), 1 / (1 + λ)
    under per-budget control."""
    if control is PenaltyControl.FIXED:
        return 1.0
    return 1.0 / (1.0 + penalty)
