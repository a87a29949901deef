"""Training and ranking speed with glibc's default allocator settings and with freed memory kept.

Usage:
    python bench/allocator.py --data-dir DIR [--backbones lightgcn ngcf ncf] [--threads 1 2]
        [--repeats 2]

Every measurement is a fresh process (the allocator is set when a process starts), run in turn
for each repeat, backbone, thread count and variant (interleaved: the machine's drift hits both
variants alike):
- ``default``: glibc as it comes (its mmap threshold starts at 128 KiB and adapts);
- ``kept``: ``MALLOC_MMAP_THRESHOLD_`` 32 MiB and ``MALLOC_TRIM_THRESHOLD_`` 1 GiB in the process's
  environment, so that glibc serves the tens of megabytes that a step allocates and frees from
  its heap, and keeps freed memory there, instead of mapping and unmapping them every time.
Each process builds the backbone on ML-1M's search-phase training split at d_max 128 and times
20 BPR steps of 10,000 users (one positive, one negative each, Adam; after 3 steps of warm-up)
and two full-ranking validations (after one of warm-up), and reports its peak resident memory.
The models are initialised the same way in both variants, and the arithmetic is the same. Rows
go to ``docs/benchmarks/allocator.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from backbones import provenance, save_json, write_with_findings
from cli_help import DefaultsHelp

REPORTS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks"
VARIANTS = ("default", "kept")
KEPT = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}
STEPS, WARM_UP_STEPS, EVALUATIONS = 20, 3, 2


def probe(backbone: str, threads: int, data_dir: str) -> dict[str, Any]:
    """One measurement, in this process."""
    import numpy as np
    import torch

    from ciess_core.data import Phase, load_dataset, split_per_user
    from ciess_core.models import BackboneConfig, BackboneKind, build_backbone
    from ciess_core.training import evaluate_model
    from ciess_core.training.loop import bpr_loss

    torch.set_num_threads(threads)
    split = split_per_user(load_dataset("ml-1m", Path(data_dir)), seed=42)
    train, held_out = split.phase(Phase.SEARCH)
    config = BackboneConfig.default_for(BackboneKind(backbone), max_size=128)
    model = build_backbone(config, train, torch.Generator().manual_seed(0)).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    rng = np.random.default_rng(0)

    def step() -> None:
        users, positives, negatives = (
            torch.from_numpy(rng.integers(0, size, 10_000))
            for size in (split.num_users, split.num_items, split.num_items)
        )
        representation = model.represent()
        loss = bpr_loss(
            model.score_pairs(representation, users, positives),
            model.score_pairs(representation, users, negatives),
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(WARM_UP_STEPS):
        step()
    started = time.perf_counter()
    for _ in range(STEPS):
        step()
    step_seconds = (time.perf_counter() - started) / STEPS
    model.eval()
    evaluate_model(model, train, held_out)
    started = time.perf_counter()
    for _ in range(EVALUATIONS):
        evaluate_model(model, train, held_out)
    return {
        "step_s": step_seconds,
        "evaluation_s": (time.perf_counter() - started) / EVALUATIONS,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def measure(arguments: argparse.Namespace) -> list[dict[str, Any]]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    found: dict[tuple[str, int, str], list[dict[str, Any]]] = {}
    for _ in range(arguments.repeats):
        for backbone in arguments.backbones:
            for threads in arguments.threads:
                for variant in VARIANTS:
                    command = [
                        sys.executable,
                        __file__,
                        "--probe",
                        backbone,
                        "--threads",
                        str(threads),
                        "--data-dir",
                        arguments.data_dir,
                    ]
                    done = subprocess.run(
                        command,
                        env={**environment, **KEPT} if variant == "kept" else environment,
                        capture_output=True,
                        text=True,
                        check=True,
                    )
                    result = json.loads(done.stdout.strip().splitlines()[-1])
                    found.setdefault((backbone, threads, variant), []).append(result)
                    print(backbone, threads, variant, result, flush=True)
    rows = []
    for (backbone, threads, variant), results in found.items():
        medians = {key: statistics.median(r[key] for r in results) for key in results[0]}
        rows.append(
            {
                "backbone": backbone,
                "threads": threads,
                "variant": variant,
                **{key: round(value, 4) for key, value in medians.items()},
                "runs": results,
            }
        )
    return rows


def write_report(report: dict[str, Any], path: Path) -> None:
    lines = [
        "# The allocator: glibc's defaults against freed memory kept",
        "",
        f"{report['machine']}; {report['date']}; `{report['command']}`. ML-1M, search-phase "
        "training split, d_max 128; a fresh process per measurement, "
        f"{report['repeats']} interleaved repeats, medians. A step: one BPR batch of 10,000 "
        "users with Adam. An evaluation: full ranking of every validation user. `×`: the "
        "default's time over kept's (above 1: kept is faster).",
        "",
        "| backbone | threads | variant | step, s | × | evaluation, s | × | peak RSS, MiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    default = {
        (r["backbone"], r["threads"]): r for r in report["rows"] if r["variant"] == "default"
    }
    for row in report["rows"]:
        base = default[(row["backbone"], row["threads"])]
        lines.append(
            f"| {row['backbone']} | {row['threads']} | {row['variant']} | {row['step_s']:.3f} | "
            f"{base['step_s'] / row['step_s']:.2f} | {row['evaluation_s']:.2f} | "
            f"{base['evaluation_s'] / row['evaluation_s']:.2f} | {row['peak_rss_mib']:,.0f} |"
        )
    write_with_findings(path, lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=DefaultsHelp)
    parser.add_argument("--data-dir", required=True, help="the folder that holds ml-1m")
    parser.add_argument("--backbones", nargs="+", default=["lightgcn", "ngcf", "ncf"])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=REPORTS / "allocator.json")
    parser.add_argument("--probe", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.probe:
        result = probe(arguments.probe, arguments.threads[0], arguments.data_dir)
        print(json.dumps(result))
        return
    report = {**provenance(), "repeats": arguments.repeats, "rows": measure(arguments)}
    save_json(arguments.out, report)
    write_report(report, arguments.out.with_suffix(".md"))


if __name__ == "__main__":
    main()
