"""Row gathers by ``index_select`` against advanced indexing: the same weights twice, and speed.

Usage:
    python bench/row_gather.py --dataset ml-1m --threads 2

Trains the shipped recipe's full-width LightGCN on the dataset's training split twice for
``--batches`` batches with ``--threads`` threads, once with the core's row gathers
(:func:`ciess_core.models.rows.gather_rows`, gradient by ``index_add_``) and once with advanced
indexing (``table[ids]``, gradient by ``index_put_`` with accumulation, what the core used
before), and says whether each pair of runs gave identical weights. Then times training batches
of both, alternating blocks of five in one process so that both see the same machine. Rows go to
``docs/benchmarks/row-gather.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from backbones import provenance, save_json
from cli_help import DefaultsHelp

from ciess_core.data import load_dataset, resolve_data_dir, split_per_user
from ciess_core.models import BackboneConfig, BackboneKind, build_backbone
from ciess_core.models.base import DotProductBackbone, Representation
from ciess_core.models.masking import MaskedEmbedding
from ciess_core.training import BprSampler, TrainConfig, bpr_loss, train_bpr

REPORTS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks"


def _advanced_pairs(
    self: DotProductBackbone,
    representation: Representation,
    users: torch.Tensor,
    items: torch.Tensor,
) -> torch.Tensor:
    user_vectors, item_vectors = representation
    return (user_vectors[users] * item_vectors[items]).sum(dim=-1)


def _advanced_rows(self: MaskedEmbedding, ids: torch.Tensor | None = None) -> torch.Tensor:
    weight = self.weight[:, : self._width]
    return weight * self._mask if ids is None else weight[ids] * self._mask[ids]


@contextmanager
def gathers(kind: str) -> Iterator[None]:
    """The core's gathers (``index_select``), or advanced indexing patched in for the block."""
    saved = DotProductBackbone.score_pairs, MaskedEmbedding.forward
    if kind == "advanced indexing":
        DotProductBackbone.score_pairs = _advanced_pairs  # type: ignore[method-assign]
        MaskedEmbedding.forward = _advanced_rows  # type: ignore[method-assign]
    try:
        yield
    finally:
        DotProductBackbone.score_pairs, MaskedEmbedding.forward = saved  # type: ignore[method-assign]


KINDS = ("index_select", "advanced indexing")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=DefaultsHelp
    )
    parser.add_argument("--dataset", default="ml-1m")
    parser.add_argument("--data-dir", type=Path, default=None, help="default $CIESS_DATA_DIR")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batches", type=int, default=30, help="batches of each identity run")
    parser.add_argument("--rounds", type=int, default=8, help="timed blocks of five per kind")
    arguments = parser.parse_args()
    torch.set_num_threads(arguments.threads)
    split = split_per_user(load_dataset(arguments.dataset, resolve_data_dir(arguments.data_dir)))
    train = split.train
    backbone = BackboneConfig.default_for(BackboneKind.LIGHTGCN)

    def fresh() -> Any:
        return build_backbone(backbone, train, torch.Generator().manual_seed(0))

    identical = {}
    for kind in KINDS:
        with gathers(kind):
            weights = []
            for _ in range(2):
                model = fresh()
                config = TrainConfig(max_batches=arguments.batches, eval_every=0)
                train_bpr(model, train, config, progress=False)
                weights.append(model.tables()[0].weight.detach().clone())
        identical[kind] = bool(torch.equal(*weights))

    model = fresh()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    sampler, rng = BprSampler(train), np.random.default_rng(0)

    def step() -> None:
        batch = sampler.sample(10_000, rng)
        users, positives, negatives = (
            torch.from_numpy(a) for a in (batch.users, batch.positives, batch.negatives)
        )
        representation = model.represent()
        loss = bpr_loss(
            model.score_pairs(representation, users, positives),
            model.score_pairs(representation, users, negatives),
        ) + model.regularization(users, positives, negatives)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    seconds: dict[str, list[float]] = {kind: [] for kind in KINDS}
    _timed(step, 2)
    for _ in range(arguments.rounds):
        for kind in KINDS:
            with gathers(kind):
                seconds[kind].append(_timed(step, 5) / 5)
    result = {
        **provenance(),
        "dataset": arguments.dataset,
        "threads": arguments.threads,
        "batches": arguments.batches,
        "rows": [
            {
                "gather": kind,
                "identical_twice": identical[kind],
                "median_seconds_per_batch": round(float(np.median(seconds[kind])), 4),
                "seconds_per_batch": [round(s, 4) for s in seconds[kind]],
            }
            for kind in KINDS
        ],
    }
    save_json(REPORTS / "row-gather.json", result)
    write_report(result)


def _timed(step: Callable[[], None], count: int) -> float:
    started = time.perf_counter()
    for _ in range(count):
        step()
    return time.perf_counter() - started


def write_report(result: dict[str, Any]) -> None:
    rows = result["rows"]
    base = next(r for r in rows if r["gather"] == "advanced indexing")["median_seconds_per_batch"]
    lines = [
        "# Row gathers: the same weights at any thread count",
        "",
        f"Written by `bench/row_gather.py` from `row-gather.json`. {result['machine']}, "
        f"{result['date']}: `{result['command']}`. A full-width LightGCN (128 values a row) on "
        f"{result['dataset']}'s training split, {result['threads']} threads: two trainings of "
        f"{result['batches']} batches from the same seed with each kind of row gather, then "
        "training batches timed in alternating blocks of five (median of the blocks).",
        "",
        "| row gather (gradient) | two runs identical | seconds per batch | against advanced "
        "indexing |",
        "|---|---|---|---|",
    ]
    gradient = {"index_select": "index_add_", "advanced indexing": "index_put_, accumulating"}
    for row in rows:
        median = row["median_seconds_per_batch"]
        lines.append(
            f"| {row['gather']} ({gradient[row['gather']]}) | "
            f"{'yes' if row['identical_twice'] else 'no'} | {median:.4f} | {median / base:.2f}× |"
        )
    (REPORTS / "row-gather.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
