"""NCF's tower as an onnxruntime graph: 3-D MatMuls against one Gemm per layer, at each block cap.

Usage:
    python bench/ncf_tower_graph.py --artifacts matmul=DIR gemm=DIR [--threads 1 2] [--repeats 5]

Each DIR is an NCF artifact of ``ciess export``; export the same run folder once with the code
before the tower graph changed (``matmul``: Unsqueeze, Add, then a MatMul and an Add per layer on
(B, I, h) activations) and once with the current code (``gemm``: the pairs flattened to (B·I, h)
rows, one Gemm with its bias per layer). The artifact scorer scores NCF's tower in blocks of users
(``ciess_core.artifact.scorer._MAX_BLOCK_ELEMENTS`` activations); the best cap may move with the
graph, so every artifact is timed at caps 2^19 to 2^23, interleaved (the machine's drift hits
every variant alike): batches of 64 random users (the service's largest turn batch), one user at
a time, and every user. Each variant's top-20 lists and scores are compared with the first
artifact's at the shipped cap. Rows go to ``docs/benchmarks/ncf-tower-graph.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from backbones import provenance, save_json, write_with_findings
from cli_help import DefaultsHelp

from ciess_core.artifact import scorer as artifact_scorer
from ciess_core.artifact.scorer import ScorerOptions, load_scorer

REPORTS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks"
SHIFTS = (19, 20, 21, 22, 23)


def named_artifacts(pairs: list[str]) -> dict[str, Path]:
    named = {}
    for pair in pairs:
        name, separator, directory = pair.partition("=")
        if not separator or not name or not Path(directory).is_dir():
            raise SystemExit(f"--artifacts: expected NAME=DIR with DIR a folder, got {pair!r}")
        named[name] = Path(directory)
    return named


def time_variant(scorer: Any, users: dict[str, Any]) -> dict[str, Any]:
    """One pass: ms per 64-user batch, ms per user, seconds for every user, and the outputs."""
    started = time.perf_counter()
    tops = [scorer.recommend(batch, 20)[0] for batch in users["batches"]]
    batch_ms = (time.perf_counter() - started) * 1e3 / len(users["batches"])
    started = time.perf_counter()
    for single in users["singles"]:
        scorer.recommend(single, 20)
    one_ms = (time.perf_counter() - started) * 1e3 / len(users["singles"])
    started = time.perf_counter()
    scores = scorer.score_all(users["everyone"])
    return {
        "timings": {
            "batch64_ms": batch_ms,
            "one_user_ms": one_ms,
            "all_users_s": time.perf_counter() - started,
        },
        "tops": tops,
        "scores": scores,
    }


def measure(artifacts: dict[str, Path], threads: list[int], repeats: int) -> list[dict[str, Any]]:
    shipped = artifact_scorer._MAX_BLOCK_ELEMENTS
    rng = np.random.default_rng(0)
    rows = []
    for count in threads:
        scorers = {
            name: load_scorer(path, ScorerOptions(threads=count))
            for name, path in artifacts.items()
        }
        num_users = next(iter(scorers.values())).num_users
        users = {
            "batches": [rng.integers(0, num_users, 64) for _ in range(20)],
            "singles": [rng.integers(0, num_users, 1) for _ in range(100)],
            "everyone": np.arange(num_users),
        }
        variants = [(name, shift) for name in scorers for shift in SHIFTS]
        timings: dict[tuple[str, int], dict[str, list[float]]] = {v: {} for v in variants}
        outputs: dict[tuple[str, int], dict[str, Any]] = {}
        try:
            for _ in range(repeats):
                for name, shift in variants:
                    artifact_scorer._MAX_BLOCK_ELEMENTS = 1 << shift
                    measured = time_variant(scorers[name], users)
                    for key, value in measured.pop("timings").items():
                        timings[(name, shift)].setdefault(key, []).append(value)
                    outputs[(name, shift)] = measured
        finally:
            artifact_scorer._MAX_BLOCK_ELEMENTS = shipped
        baseline_key = (next(iter(scorers)), shipped.bit_length() - 1)
        baseline = outputs[baseline_key]
        base_ms = statistics.median(timings[baseline_key]["batch64_ms"])
        base_all = statistics.median(timings[baseline_key]["all_users_s"])
        for name, shift in variants:
            medians = {k: statistics.median(v) for k, v in timings[(name, shift)].items()}
            output = outputs[(name, shift)]
            rows.append(
                {
                    "artifact": name,
                    "cap": f"2^{shift}",
                    "threads": count,
                    **{key: round(value, 3) for key, value in medians.items()},
                    "batch64_speedup": round(base_ms / medians["batch64_ms"], 2),
                    "all_users_speedup": round(base_all / medians["all_users_s"], 2),
                    "same_top20_batches": sum(
                        np.array_equal(a, b)
                        for a, b in zip(output["tops"], baseline["tops"], strict=True)
                    ),
                    "max_abs_score_difference": float(
                        np.abs(output["scores"] - baseline["scores"]).max()
                    ),
                }
            )
            print(rows[-1], flush=True)
    return rows


def write_report(report: dict[str, Any], path: Path) -> None:
    first = report["artifacts"][0]
    lines = [
        "# NCF's tower graph in the artifact scorer",
        "",
        f"{report['machine']}; {report['date']}; `{report['command']}`. ML-1M NCF artifacts "
        f"({', '.join(f'`{n}`: {p}' for n, p in report['artifact_paths'].items())}), "
        f"{report['repeats']} interleaved repeats; medians. Speed-ups and differences are "
        f"against `{first}` at the cap the scorer had when this ran, 2^{report['shipped_shift']}; "
        "the top-20 column "
        "counts the 20 batches of 64 users whose lists are identical.",
        "",
        "| threads | graph | cap | 64 users, ms | × | one user, ms | every user, s | × "
        "| batches with the same top-20 | max abs score difference |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        lines.append(
            f"| {row['threads']} | {row['artifact']} | {row['cap']} | {row['batch64_ms']:.1f} | "
            f"{row['batch64_speedup']:.2f} | {row['one_user_ms']:.2f} | {row['all_users_s']:.2f} "
            f"| {row['all_users_speedup']:.2f} | {row['same_top20_batches']} / 20 | "
            f"{row['max_abs_score_difference']:.1e} |"
        )
    write_with_findings(path, lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=DefaultsHelp)
    parser.add_argument("--artifacts", nargs="+", required=True, help="NAME=DIR, first: baseline")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=REPORTS / "ncf-tower-graph.json")
    arguments = parser.parse_args()
    artifacts = named_artifacts(arguments.artifacts)
    report = {
        **provenance(),
        "artifacts": list(artifacts),
        "artifact_paths": {name: str(path) for name, path in artifacts.items()},
        "shipped_shift": artifact_scorer._MAX_BLOCK_ELEMENTS.bit_length() - 1,
        "repeats": arguments.repeats,
        "rows": measure(artifacts, arguments.threads, arguments.repeats),
    }
    save_json(arguments.out, report)
    write_report(report, arguments.out.with_suffix(".md"))


if __name__ == "__main__":
    main()
