"""Pictures of a search: its trace per episode and the chosen sizes against popularity."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from ciess_core.search.files import BudgetFolder
from ciess_core.sizes import SizeAssignment

logger = logging.getLogger(__name__)


def plot_trace(trace_path: Path, out: Path) -> Path:
    """Mean reward and mean size per episode (users and items), from ``trace.jsonl``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in trace_path.read_text().splitlines() if line.strip()]
    episodes = sorted({row["episode"] for row in rows})
    figure, (reward_axis, size_axis) = plt.subplots(1, 2, figsize=(10, 3.8))
    for side, style in (("users", "-o"), ("items", "-s")):
        rewards = [
            np.mean([r[f"{side}_mean_reward"] for r in rows if r["episode"] == e]) for e in episodes
        ]
        sizes = [
            np.mean([r[f"{side}_mean_size"] for r in rows if r["episode"] == e]) for e in episodes
        ]
        reward_axis.plot(episodes, rewards, style, markersize=3, label=side)
        size_axis.plot(episodes, sizes, style, markersize=3, label=side)
    reward_axis.set(xlabel="episode", ylabel="mean reward", title="reward per episode")
    size_axis.set(xlabel="episode", ylabel="mean embedding size", title="size per episode")
    for axis in (reward_axis, size_axis):
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    figure.savefig(out, dpi=120)
    plt.close(figure)
    return out


def plot_sizes_by_popularity(
    sizes: SizeAssignment,
    user_popularity: np.ndarray,
    item_popularity: np.ndarray,
    title: str,
    out: Path,
) -> Path:
    """Scatter of each entity's size against its training popularity, users and items apart."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    for axis, label, popularity, side_sizes in (
        (axes[0], "users", user_popularity, sizes.user_sizes),
        (axes[1], "items", item_popularity, sizes.item_sizes),
    ):
        axis.scatter(np.maximum(popularity, 1), side_sizes, s=3, alpha=0.4)
        axis.set_xscale("log")
        axis.set(
            xlabel=f"{label}: training interactions",
            title=f"{label} (mean size {side_sizes.mean():.1f})",
        )
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("embedding size")
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(out, dpi=120)
    plt.close(figure)
    return out


def plot_search_run(
    run: Path,
    train: sp.csr_matrix,
    budgets: Sequence[float],
    out: Path,
    title_prefix: str = "",
) -> list[Path]:
    """The plots of one search folder (``run``, as ``run_pipeline`` writes it) into ``out``:
    ``search-trace.png`` and one ``sizes-<c>.png`` per budget; ``train`` gives the popularity."""
    out.mkdir(parents=True, exist_ok=True)
    written = [plot_trace(run / "search" / "trace.jsonl", out / "search-trace.png")]
    for budget in budgets:
        written.append(
            plot_sizes_by_popularity(
                BudgetFolder.of(run, budget).chosen(),
                np.diff(train.indptr),
                np.bincount(train.indices, minlength=train.shape[1]),
                f"{title_prefix}CIESS sizes at sparsity {budget:g}",
                out / f"sizes-{budget:g}.png",
            )
        )
    return written
