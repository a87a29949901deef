"""λ steered per budget: one phase of episodes per budget, a ``SearchHooks.penalty`` schedule.

The paper uses one λ for the whole search and lets one search serve every budget. With a fixed λ
the search settles where the quality it gains balances the penalty, which need not be near any
budget (on ML-1M with LightGCN it stays near sparsity 0.76), and a budget the search never visits
is only reached by projecting denser assignments onto it.

:class:`PerBudgetPenalty` instead gives each budget its own phase of episodes, loosest budget
first, and after every iteration moves λ by a multiplicative dual-ascent step towards the budget:
λ ← λ·exp(η·(c − s)), where s is the iteration's sparsity and c the phase's budget. A search that
keeps too many parameters raises λ, one that prunes past the budget lowers it. λ carries over from
one phase to the next, and so do the agents and their replay buffers. The rewards are divided by
1 + λ: a positive factor leaves every entity's best size where it was and keeps the rewards within
[−1, 1] however far λ moves (unscaled, the users' critic loss reached 2.5e4 at λ = 1,000).

Measured (docs/benchmarks/ciess-ml-1m-experiments.md, with policy rollouts, since deleted): test
N@20 0.4039 / 0.3623 / 0.2919 at 0.80 / 0.90 / 0.95 against 0.3995 / 0.3713 / 0.3291 with the
fixed λ; only 6 and 4 of the 110 iterations of the 0.90 and 0.95 phases landed within their
budget, the policy lagging λ by several episodes.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ciess_core.errors import ConfigError
from ciess_core.search.config import SearchConfig
from ciess_core.search.loop import Penalty

__all__ = ["PENALTY_BOUNDS", "PerBudgetPenalty", "adjust_penalty", "per_budget_search"]

#: λ never leaves this range, so that a budget the policy cannot reach does not blow λ up.
PENALTY_BOUNDS = (1e-3, 1e3)


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


@dataclass(frozen=True)
class PerBudgetPenalty:
    """The schedule: λ starts at ``start`` and takes one step after every iteration.

    Attributes:
        budgets: the target sparsities, one phase each, loosest first.
        episodes_per_phase: episodes of each phase.
        start: λ of the first iteration (> 0).
        step: η of the dual-ascent step (≥ 0).
    """

    budgets: tuple[float, ...]
    episodes_per_phase: int
    start: float
    step: float

    def __post_init__(self) -> None:
        if not self.budgets or self.episodes_per_phase < 1:
            raise ConfigError(
                f"need budgets and >= 1 episode per phase, got {self.budgets}, "
                f"{self.episodes_per_phase}"
            )
        if not (math.isfinite(self.start) and self.start > 0):
            raise ConfigError(f"a per-budget penalty needs a starting λ > 0, got {self.start}")
        if not (math.isfinite(self.step) and self.step >= 0):
            raise ConfigError(f"step must be a finite number >= 0, got {self.step}")

    @property
    def total_episodes(self) -> int:
        return self.episodes_per_phase * len(self.budgets)

    def phase_budget(self, episode: int) -> float:
        """The budget λ is steered towards in 0-based ``episode``."""
        if not 0 <= episode < self.total_episodes:
            raise ConfigError(f"episode must lie in [0, {self.total_episodes}), got {episode}")
        return sorted(self.budgets)[episode // self.episodes_per_phase]

    def __call__(self, episode: int, trace: Sequence[Mapping[str, Any]]) -> Penalty:
        """The penalty of the next iteration: λ after one step from the last row of ``trace``."""
        if not trace:
            penalty = self.start
        else:
            last = trace[-1]
            target = self.phase_budget(int(last["episode"]) - 1)
            penalty = adjust_penalty(float(last["penalty"]), target, last["sparsity"], self.step)
        return Penalty(penalty, 1.0 / (1.0 + penalty))


def per_budget_search(config: SearchConfig, step: float) -> tuple[SearchConfig, PerBudgetPenalty]:
    """``config`` with its M episodes split over its budgets (rounded up to whole phases), and
    the schedule that steers λ from ``config.reward_penalty`` by steps of ``step``."""
    per_phase = math.ceil(config.num_episodes / len(config.budgets))
    schedule = PerBudgetPenalty(tuple(config.budgets), per_phase, config.reward_penalty, step)
    return dataclasses.replace(config, num_episodes=schedule.total_episodes), schedule
