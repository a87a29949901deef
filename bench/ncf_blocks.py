"""How the block size of NCF's full ranking sets its speed on this machine.

Usage:
    python bench/ncf_blocks.py [--users 6040 --items 3706] [--threads 1 2] [--repeats 3]
    python bench/ncf_blocks.py --artifact DIR   # the artifact scorer's onnxruntime graph too

NCF's ``score_all_items`` (``ciess_core/models/ncf.py``) materialises (users, items, first tower
width) activations a block of users at a time; every supernet evaluation of a search or fit, and
every validation of a training, runs it over all users and items. This bench times it on a
randomly initialised NCF of the dataset's shape (the time depends on the shapes alone) at several
block caps, and the code before 2026-12-05 (blocks of 2**25 elements, out-of-place ReLUs) beside
it, interleaved, each at every thread count. Each variant's scores are compared with the old
code's: how many entries differ and by how much, and how many users' top-20 lists change.
``--artifact`` (an NCF artifact of ``ciess export``) also times the artifact scorer, which runs the
same tower as an onnxruntime graph in blocks of users, at each cap: batches of 64 random users (the
service's largest turn batch), one user, and every user. Rows go to
``docs/benchmarks/ncf-blocks.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np
from backbones import provenance, save_json, write_with_findings
from cli_help import DefaultsHelp

from ciess_core.artifact import scorer as artifact_scorer
from ciess_core.artifact.scorer import ScorerOptions, load_scorer
from ciess_core.models import BackboneConfig, BackboneKind, ncf
from ciess_core.models.base import Representation

REPORTS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks"
SHIFTS = (20, 21, 22, 23, 24, 25)
OLD_SHIFT = 25
Scorer = Callable[[Representation, torch.Tensor], torch.Tensor]


def old_scores(model: ncf.NCF, representation: Representation, users: torch.Tensor) -> torch.Tensor:
    """``score_all_items`` as it was before 2026-12-05: 2**25-element blocks, out-of-place ReLUs."""
    gmf_users, gmf_items, user_part, item_part = representation
    block = max(1, (1 << OLD_SHIFT) // (model.num_items * item_part.shape[1]))
    gmf_weight = model.predict.weight[0, model.config.mlp_layers[-1] :][: gmf_items.shape[1]]
    gmf_scores = (gmf_users[users] * gmf_weight) @ gmf_items.T
    blocks = []
    for start in range(0, users.numel(), block):
        chunk = users[start : start + block]
        hidden = F.relu(user_part[chunk].unsqueeze(1) + item_part.unsqueeze(0))
        for layer in model.tower[1:]:
            hidden = F.relu(layer(hidden))
        blocks.append(hidden @ model.predict.weight[0, : hidden.shape[-1]])
    return torch.cat(blocks) + gmf_scores + model.predict.bias[0]


def current_scores(model: ncf.NCF, shift: int) -> Scorer:
    """The code's ``score_all_items`` with its CPU block cap set to 2**shift elements."""

    def score(representation: Representation, users: torch.Tensor) -> torch.Tensor:
        kept = ncf._BLOCK_ELEMENTS_CPU
        ncf._BLOCK_ELEMENTS_CPU = 1 << shift
        try:
            return model.score_all_items(representation, users)
        finally:
            ncf._BLOCK_ELEMENTS_CPU = kept

    return score


def compare(scores: torch.Tensor, reference: torch.Tensor) -> dict[str, Any]:
    difference = (scores - reference).abs()
    top, top_reference = scores.topk(20, dim=1).indices, reference.topk(20, dim=1).indices
    return {
        "entries_differing": int((difference > 0).sum()),
        "max_abs_difference": float(difference.max()),
        "users_whose_top20_differ": int((top != top_reference).any(1).sum()),
    }


def measure(arguments: argparse.Namespace) -> dict[str, Any]:
    recorded = provenance()  # before the thread counts change
    generator = torch.Generator().manual_seed(0)
    config = BackboneConfig(kind=BackboneKind.NCF)
    model = ncf.NCF(arguments.users, arguments.items, config, generator).eval()
    users = torch.arange(arguments.users)
    variants: dict[str, Scorer] = {
        "old code (2^25, out-of-place ReLU)": lambda r, u: old_scores(model, r, u),
        **{f"2^{shift}": current_scores(model, shift) for shift in SHIFTS},
    }
    rows = []
    with torch.no_grad():
        representation = model.represent()
        reference = old_scores(model, representation, users)
        for threads in arguments.threads:
            torch.set_num_threads(threads)
            seconds: dict[str, list[float]] = {name: [] for name in variants}
            for _ in range(
                arguments.repeats
            ):  # interleaved: the machine's drift hits every variant
                for name, score in variants.items():
                    started = time.perf_counter()
                    score(representation, users)
                    seconds[name].append(time.perf_counter() - started)
            old_median = statistics.median(seconds[next(iter(variants))])
            for name, score in variants.items():
                median = statistics.median(seconds[name])
                rows.append(
                    {
                        "variant": name,
                        "threads": threads,
                        "seconds": [round(s, 3) for s in seconds[name]],
                        "seconds_median": round(median, 3),
                        "speedup_over_old": round(old_median / median, 2),
                        **compare(score(representation, users), reference),
                    }
                )
                print(rows[-1], flush=True)
    return {
        **recorded,
        "users": arguments.users,
        "items": arguments.items,
        "tower": [2 * config.max_size, *config.mlp_layers],
        "repeats": arguments.repeats,
        "rows": rows,
    }


def measure_artifact(directory: Path, threads: list[int], repeats: int) -> list[dict[str, Any]]:
    """The artifact scorer at each block cap: ms per batch of 64 users and of one user, seconds
    for every user, and whether each batch's top-20 equals the cap 2**25's."""
    kept = artifact_scorer._MAX_BLOCK_ELEMENTS
    rng = np.random.default_rng(0)
    rows = []
    for count in threads:
        scorer = load_scorer(directory, ScorerOptions(threads=count))
        batches = [rng.integers(0, scorer.num_users, 64) for _ in range(20)]
        singles = [rng.integers(0, scorer.num_users, 1) for _ in range(100)]
        everyone = np.arange(scorer.num_users)
        timings: dict[int, dict[str, list[float]]] = {
            shift: {"batch64_ms": [], "one_user_ms": [], "all_users_s": []} for shift in SHIFTS
        }
        tops: dict[int, list[np.ndarray]] = {}
        try:
            for _ in range(repeats):
                for shift in SHIFTS:
                    artifact_scorer._MAX_BLOCK_ELEMENTS = 1 << shift
                    started = time.perf_counter()
                    tops[shift] = [scorer.recommend(batch, 20)[0] for batch in batches]
                    timings[shift]["batch64_ms"].append((time.perf_counter() - started) * 50)
                    started = time.perf_counter()
                    for single in singles:
                        scorer.recommend(single, 20)
                    timings[shift]["one_user_ms"].append((time.perf_counter() - started) * 10)
                    started = time.perf_counter()
                    scorer.score_all(everyone)
                    timings[shift]["all_users_s"].append(time.perf_counter() - started)
        finally:
            artifact_scorer._MAX_BLOCK_ELEMENTS = kept
        for shift in SHIFTS:
            medians = {key: statistics.median(values) for key, values in timings[shift].items()}
            old = statistics.median(timings[OLD_SHIFT]["batch64_ms"])
            rows.append(
                {
                    "variant": f"2^{shift}",
                    "threads": count,
                    **{key: round(value, 3) for key, value in medians.items()},
                    "batch64_speedup_over_2^25": round(old / medians["batch64_ms"], 2),
                    "same_top20_as_2^25": all(
                        np.array_equal(a, b)
                        for a, b in zip(tops[shift], tops[OLD_SHIFT], strict=True)
                    ),
                }
            )
            print(rows[-1], flush=True)
    return rows


def write_report(report: dict[str, Any], path: Path) -> None:
    lines = [
        "# NCF full ranking: block size",
        "",
        f"{report['machine']}; {report['date']}; `{report['command']}`. A randomly initialised "
        f"NCF of {report['users']:,} users × {report['items']:,} items (tower "
        f"{' → '.join(map(str, report['tower']))}), `score_all_items` over every user, "
        f"{report['repeats']} interleaved repeats per variant; `2^n`: the current code with its "
        "CPU block cap at 2^n activations (in-place ReLUs). Differences are against the old "
        "code's scores.",
        "",
        "| threads | variant | median s | × old | entries differing | max abs difference "
        "| users whose top-20 differ |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        lines.append(
            f"| {row['threads']} | {row['variant']} | {row['seconds_median']:.2f} | "
            f"{row['speedup_over_old']:.2f} | {row['entries_differing']:,} | "
            f"{row['max_abs_difference']:.1e} | {row['users_whose_top20_differ']} |"
        )
    if report.get("artifact_rows"):
        lines += [
            "",
            f"## The artifact scorer (onnxruntime), `{report['artifact']}`",
            "",
            "| threads | cap | 64 users, ms | × 2^25 | one user, ms | every user, s "
            "| top-20 as at 2^25 |",
            "|---|---|---|---|---|---|---|",
        ]
        for row in report["artifact_rows"]:
            lines.append(
                f"| {row['threads']} | {row['variant']} | {row['batch64_ms']:.1f} | "
                f"{row['batch64_speedup_over_2^25']:.2f} | {row['one_user_ms']:.2f} | "
                f"{row['all_users_s']:.2f} | {'yes' if row['same_top20_as_2^25'] else 'no'} |"
            )
    write_with_findings(path, lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=DefaultsHelp)
    parser.add_argument("--users", type=int, default=6040, help="ML-1M's users by default")
    parser.add_argument("--items", type=int, default=3706, help="ML-1M's items by default")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--artifact", type=Path, help="an NCF artifact: time its scorer too")
    parser.add_argument("--out", type=Path, default=REPORTS / "ncf-blocks.json")
    arguments = parser.parse_args()
    report = measure(arguments)
    if arguments.artifact:
        report["artifact"] = str(arguments.artifact)
        report["artifact_rows"] = measure_artifact(
            arguments.artifact, arguments.threads, arguments.repeats
        )
    save_json(arguments.out, report)
    write_report(report, arguments.out.with_suffix(".md"))


if __name__ == "__main__":
    main()
