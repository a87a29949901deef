"""What ``ciess inspect`` shows: a text summary of an artifact and a size-by-popularity plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ciess_core.artifact.manifest import Manifest
from ciess_core.artifact.reader import Artifact
from ciess_core.artifact.rewrites import SELECTION_METRIC, best_within, measured_rewrites
from ciess_core.sizes import SizeAssignment

_BAR_WIDTH = 40
#: The validation metrics shown for each model an artifact gives without training.
REWRITE_SHOWN = ("ndcg@20", "recall@20")


def size_histogram(
    sizes: npt.NDArray[np.integer], max_size: int, bins: int = 8
) -> list[tuple[int, int, int]]:
    """Counts of sizes in ``bins`` equal ranges of [1, max_size]: (low, high, count) each."""
    edges = np.unique(np.linspace(1, max_size + 1, bins + 1).round().astype(np.int64))
    counts, _ = np.histogram(sizes, bins=edges)
    return [
        (int(low), int(high) - 1, int(count))
        for low, high, count in zip(edges[:-1], edges[1:], counts, strict=True)
    ]


def popularity(artifact: Artifact) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Training interactions per user (U,) and per item (I,)."""
    seen = artifact.seen
    users = np.diff(seen.indptr).astype(np.int64)
    items = np.bincount(seen.indices, minlength=artifact.manifest.num_items).astype(np.int64)
    return users, items


def artifact_sizes(artifact: Artifact) -> SizeAssignment:
    """The users' and items' sizes of the artifact's tables (every table has the same)."""
    manifest = artifact.manifest
    table = artifact.tables[manifest.tables[0]]
    return SizeAssignment.from_concatenated(table.sizes, manifest.num_users, manifest.max_size)


def _megabytes(count: int) -> str:
    """Bytes in a readable unit (powers of 1000)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= scale:
            return f"{count / scale:.2f} {unit}"
    return f"{count} B"


def _metrics_line(name: str, values: Any) -> str | None:
    if not isinstance(values, dict) or not values:
        return None
    shown = "  ".join(f"{key}={value:.4f}" for key, value in sorted(values.items()))
    return f"  {name}: {shown}"


def _rewrite_lines(manifest: Manifest) -> list[str]:
    """The models this artifact gives without training that validate better than every one of
    fewer bytes, as its manifest measured them (:mod:`ciess_core.artifact.rewrites`)."""
    scored = [r for r in measured_rewrites(manifest) if SELECTION_METRIC in r.metrics]
    frontier = best_within(scored, lambda r: r.bytes, lambda r: r.metrics[SELECTION_METRIC])
    if all(r.width is None and r.value_type == manifest.value_dtype for r in frontier):
        return []  # none, or only the model as it is
    lines = [
        f"models it gives without training, the best validation {SELECTION_METRIC} within each "
        "size (as measured at export; the service's budget jobs serve them within seconds):",
        f"  {'stored bytes':>12} {'of dense':>8}  {'stored as':<34} validation",
    ]
    for rewrite in reversed(frontier):
        what = rewrite.value_type
        if rewrite.width is not None:
            what += f", turned and cut to {rewrite.width}"
        shown = "  ".join(
            f"{key}={rewrite.metrics[key]:.4f}" for key in REWRITE_SHOWN if key in rewrite.metrics
        )
        share = rewrite.bytes / manifest.memory.dense
        lines.append(f"  {rewrite.bytes:>12,} {share:8.2%}  {what:<34} {shown}")
    return lines


def summarize(artifact: Artifact) -> str:
    """A readable, multi-line summary: model, budget, size histograms, bytes and metrics."""
    manifest = artifact.manifest
    sizes = artifact_sizes(artifact)
    dataset, memory = manifest.dataset, manifest.memory
    target = "not recorded" if manifest.target_sparsity is None else manifest.target_sparsity
    asked = "" if manifest.budget_bytes is None else f"{manifest.budget_bytes:,} bytes, "
    lines = [
        f"artifact: {artifact.directory}",
        f"  schema {manifest.schema_version}, ciess {manifest.ciess_version}, "
        f"created {manifest.created_at}",
        f"backbone: {manifest.backbone}  d_max={manifest.max_size}  "
        f"layers={manifest.num_layers}  tables={', '.join(manifest.tables)}  "
        f"values={manifest.value_dtype}",
        f"dataset: {dataset.get('name') or '?'}  fingerprint "
        f"{str(dataset.get('fingerprint') or '?')[:16]}  split seed {dataset.get('split_seed')}",
        f"  {manifest.num_users} users, {manifest.num_items} items, "
        f"{artifact.seen.nnz} seen interactions",
        f"budget: {asked}target sparsity {target}, achieved {manifest.achieved_sparsity:.4f}  "
        f"(sizes: {dataset.get('size_scheme') or '?'})",
    ]
    for side, side_sizes in (("users", sizes.user_sizes), ("items", sizes.item_sizes)):
        lines.append(
            f"sizes of {side}: min {side_sizes.min()}, mean {side_sizes.mean():.1f}, "
            f"median {np.median(side_sizes):.0f}, max {side_sizes.max()}"
        )
        histogram = size_histogram(side_sizes, manifest.max_size)
        largest = max(count for _, _, count in histogram) or 1
        for low, high, count in histogram:
            bar = "#" * round(_BAR_WIDTH * count / largest)
            lines.append(f"  {low:>4}-{high:<4} {count:>8}  {bar}")
    on_disk = sum(entry.bytes for entry in manifest.files)
    parts = ", ".join(f"{k} {_megabytes(v)}" for k, v in memory.stored_detail.items())
    detail = ", ".join(f"{k} {_megabytes(v)}" for k, v in memory.resident_detail.items())
    lines += [
        "bytes:",
        f"  embedding stores {_megabytes(memory.stored)} ({manifest.value_dtype}: {parts}) = "
        f"{memory.byte_ratio:.2%} of the dense float32 tables ({_megabytes(memory.dense)})",
        f"  all files on disk {_megabytes(on_disk)}",
        f"  resident after load {_megabytes(memory.resident)}" + (f" ({detail})" if detail else ""),
    ]
    metrics = manifest.metrics
    metric_lines = [
        line
        for line in (
            _metrics_line("test", metrics.get("test")),
            _metrics_line("valid", metrics.get("valid")),
        )
        if line
    ]
    if metric_lines:
        lines.append(f"metrics ({metrics.get('protocol') or 'protocol unknown'}):")
        lines += metric_lines
    lines += _rewrite_lines(manifest)
    check = manifest.verification
    if check.get("users"):
        lines.append(
            f"export check: {check['users']} users, max |score difference| "
            f"{check.get('max_abs_score_difference', float('nan')):.2e}, identical top-"
            f"{check.get('top_k')} for {check.get('top_k_identical_fraction', 0.0):.1%}"
        )
    return "\n".join(lines)


def plot_sizes(artifact: Artifact, path: Path) -> Path:
    """Write a PNG: embedding size against popularity (training interactions), users and items."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    manifest = artifact.manifest
    sizes = artifact_sizes(artifact)
    user_popularity, item_popularity = popularity(artifact)
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    panels = (
        ("users", user_popularity, sizes.user_sizes),
        ("items", item_popularity, sizes.item_sizes),
    )
    for axis, (side, counts, side_sizes) in zip(axes, panels, strict=True):
        axis.scatter(counts + 1, side_sizes, s=4, alpha=0.35, linewidths=0)
        axis.set_xscale("log")
        axis.set_xlabel(f"training interactions + 1 ({side})")
        axis.set_title(f"{side}: {side_sizes.size}, mean size {side_sizes.mean():.1f}")
        axis.set_ylim(0, manifest.max_size + 1)
    axes[0].set_ylabel("embedding size")
    figure.suptitle(
        f"{manifest.backbone}, {manifest.dataset.get('name') or 'dataset ?'}: sparsity "
        f"{manifest.achieved_sparsity:.3f}"
    )
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
