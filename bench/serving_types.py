"""Serving speed by value type: is an int8 or int4 artifact served as fast as its float32 one?

One artifact (float32) and its copies stored again as int8 and int4
(:func:`ciess_core.artifact.requantise.requantise_artifact`, what a byte budget's fast path
serves) are each served by ``ciess serve --workers W``; the three servers run side by side for
the whole benchmark, idle but for the one under load. In each of ``--rounds`` rounds, wrk drives
each server in turn for ``--seconds`` (after an unrecorded warm-up), the order rotated from one
round to the next so that a drift of the machine falls on every type alike.

Each round gives a paired ratio per quantised type: its throughput over float32's in the same
round (and its p99 over float32's). The report gives the median ratio and a distribution-free
confidence interval for it (order statistics of the rounds' ratios, the binomial rule, at least
95 % coverage), and a non-inferiority verdict against margins fixed before any measurement:
throughput not lower than float32's by more than ``--margin`` (3 %), p99 not higher by more than
``--p99-margin`` (10 %), each judged at the interval's bound.

    python bench/serving_types.py --artifact ARTIFACT_DIR --rounds 10 --seconds 10

With ``--fresh-servers`` the three servers are started anew at every round and stopped at its
end, so that the rounds sample server instances as well as loads: a type's ratio then measures
the type, not the one server it had for the whole run. ``--coverage`` sets the run's interval
(a later look at a question already asked pays with a wider one).

Each run is added to ``OUT/serving-types.json``, which keeps every run; where there are several
of one setup, the verdict is read from all their rounds pooled, at a wider interval
(:data:`POOLED_COVERAGE`), so that a second look cannot turn a miss into a pass by chance alone.
``OUT/serving-types.md`` shows the pooled verdicts and every run (findings from
``serving-types.notes.md``; ``--rewrite`` rewrites the page alone). Needs wrk.
"""

from __future__ import annotations

import argparse
import json
import secrets
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from scipy import stats

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from backbones import provenance, save_json, write_with_findings
from cli_help import DefaultsHelp

from bench.serving import PATH_TEMPLATE, Server, _sample_users, run_wrk, start_server
from ciess_core.artifact.requantise import requantise_artifact

BASELINE = "float32"
#: The interval of the pooled verdict: each further look at the same question costs coverage, so
#: that the looks together keep a false "not lower" or "not higher" rare (serving-types.notes.md).
POOLED_COVERAGE = 0.99


def _interval_rank(count: int, coverage: float) -> int:
    """j ≥ 1: the largest rank whose interval [x(j), x(count - j + 1)] covers the population
    median with probability at least ``coverage`` (1, the whole range, where none does)."""
    tail, rank = (1.0 - coverage) / 2.0, 1
    while rank + 1 <= (count + 1) // 2 and stats.binom.cdf(rank, count, 0.5) <= tail:
        rank += 1
    return rank


def interval_coverage(count: int, coverage: float = 0.95) -> float:
    """The exact coverage of :func:`median_interval`'s interval for ``count`` values:
    1 - 2 P(Binomial(count, 1/2) < j)."""
    rank = _interval_rank(count, coverage)
    return 1.0 - 2.0 * float(stats.binom.cdf(rank - 1, count, 0.5))


def median_interval(values: list[float], coverage: float = 0.95) -> tuple[float, float, float]:
    """The median of ``values`` and a distribution-free interval for the population median:
    their j-th smallest and j-th largest (:func:`_interval_rank`)."""
    ordered = sorted(values)
    rank = _interval_rank(len(ordered), coverage)
    return statistics.median(ordered), ordered[rank - 1], ordered[len(ordered) - rank]


def summarise(
    rows: list[dict[str, Any]], margin: float, p99_margin: float, coverage: float = 0.95
) -> dict[str, Any]:
    """Per quantised type: the rounds' paired ratios against float32, their medians, intervals
    of at least ``coverage`` and the non-inferiority verdicts. A round is told apart by its
    ``run`` (0 where absent) and ``round``, so that the rows of several runs pool."""
    by_round: dict[tuple[int, int], dict[str, dict[str, Any]]] = {}
    for row in rows:
        by_round.setdefault((row.get("run", 0), row["round"]), {})[row["value_type"]] = row
    types = sorted({row["value_type"] for row in rows} - {BASELINE})
    summary: dict[str, Any] = {
        "rounds": len(by_round),
        "coverage": interval_coverage(len(by_round), coverage),
    }
    for value_type in [BASELINE, *types]:
        own = [rounds[value_type] for rounds in by_round.values()]
        summary[value_type] = {
            "median_throughput_rps": statistics.median(r["throughput_rps"] for r in own),
            "median_p99_ms": statistics.median(r["p99_ms"] for r in own),
            "median_server_cpu_ms_per_request": statistics.median(
                r["server_cpu_ms_per_request"] for r in own
            ),
        }
    for value_type in types:
        pairs = [(rounds[value_type], rounds[BASELINE]) for rounds in by_round.values()]
        throughput = median_interval(
            [q["throughput_rps"] / f["throughput_rps"] for q, f in pairs], coverage
        )
        p99 = median_interval([q["p99_ms"] / f["p99_ms"] for q, f in pairs], coverage)
        summary[value_type].update(
            throughput_ratio=dict(zip(("median", "low", "high"), throughput, strict=True)),
            p99_ratio=dict(zip(("median", "low", "high"), p99, strict=True)),
            throughput_not_lower=throughput[1] >= 1.0 - margin,
            p99_not_higher=p99[2] <= 1.0 + p99_margin,
        )
    return summary


#: Setup keys that runs before them did not record, with the value those runs had.
SETUP_DEFAULTS: dict[str, Any] = {"fresh_servers": False}


def same_setup(first: dict[str, Any], second: dict[str, Any]) -> bool:
    """Whether two runs measured alike (a key one of them lacks counts at its old value)."""
    return {**SETUP_DEFAULTS, **first} == {**SETUP_DEFAULTS, **second}


def pooled_summary(runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The verdicts over every round of ``runs`` (all of one setup), at :data:`POOLED_COVERAGE`;
    None for a single run, or for runs whose setups differ."""
    if len(runs) < 2 or any(not same_setup(run["setup"], runs[0]["setup"]) for run in runs):
        return None
    rows = [{**row, "run": number} for number, run in enumerate(runs) for row in run["rows"]]
    setup = runs[0]["setup"]
    return summarise(rows, setup["margin"], setup["p99_margin"], POOLED_COVERAGE)


def pooled_by_setup(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One pooled verdict per setup that two or more of ``runs`` share, with the runs' numbers
    (from 1, as the page numbers them) under ``runs``."""
    groups: list[list[int]] = []
    for number, run in enumerate(runs):
        group = next((g for g in groups if same_setup(runs[g[0]]["setup"], run["setup"])), None)
        if group is None:
            groups.append([number])
        else:
            group.append(number)
    pooled = []
    for group in groups:
        summary = pooled_summary([runs[number] for number in group])
        if summary is not None:
            pooled.append({"runs": [number + 1 for number in group], **summary})
    return pooled


def load_runs(path: Path) -> list[dict[str, Any]]:
    """The runs kept in the JSON twin ``path`` (none where it is missing; a file of one run,
    as the first run wrote it, is one run)."""
    if not path.exists():
        return []
    kept = json.loads(path.read_text())
    return list(kept["runs"]) if "runs" in kept else [kept]


def measure(args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    artifact = Path(args.artifact)
    manifest = json.loads((artifact / "manifest.json").read_text())
    if manifest.get("value_dtype", BASELINE) != BASELINE:
        raise SystemExit(
            f"--artifact {artifact} is stored as {manifest['value_dtype']}, not float32"
        )
    served = {BASELINE: artifact}
    for value_type in args.types:
        served[value_type] = work / f"artifact-{value_type}"
        requantise_artifact(artifact, value_type, served[value_type], str(artifact))
    sample = _sample_users(artifact, args.paths)
    paths_file = work / "paths.txt"
    paths_file.write_text("".join(PATH_TEMPLATE.format(user=u, k=args.k) + "\n" for u in sample))
    token = secrets.token_hex(16)
    servers: dict[str, Server] = {}
    rows: list[dict[str, Any]] = []

    def start_all() -> None:
        for value_type, folder in served.items():
            state = Path(tempfile.mkdtemp(prefix=f"state-{value_type}-", dir=work))
            servers[value_type] = start_server(
                "ciess", folder, folder, Path("."), args.workers, state, token
            )
            servers[value_type].wait_ready(args.ready_timeout)

    def stop_all() -> None:
        for server in servers.values():
            server.stop()
        servers.clear()

    try:
        memory = {
            value_type: json.loads((folder / "manifest.json").read_text())["memory"]
            for value_type, folder in served.items()
        }
        order = list(served)
        for round_number in range(args.rounds):
            if not servers:
                start_all()
            shift = round_number % len(order)
            for value_type in order[shift:] + order[:shift]:
                result = run_wrk(
                    servers[value_type], paths_file, args.seconds, args.connections, args.warmup
                )
                cpu = result["server_cpu_seconds"]
                rows.append(
                    {
                        "round": round_number,
                        "value_type": value_type,
                        "throughput_rps": result["throughput_rps"],
                        "p50_ms": result["p50_ms"],
                        "p99_ms": result["p99_ms"],
                        "errors": result["errors"],
                        "requests": result["requests"],
                        "server_cpu_ms_per_request": round(
                            1e3 * cpu / max(result["requests"], 1), 4
                        ),
                        "stored_bytes": memory[value_type]["stored"],
                        "resident_bytes": memory[value_type]["resident"],
                    }
                )
                print(
                    f"round {round_number + 1}/{args.rounds} {value_type}: "
                    f"{result['throughput_rps']} rps, p99 {result['p99_ms']} ms, "
                    f"errors {result['errors']}",
                    flush=True,
                )
            if args.fresh_servers:
                stop_all()
    finally:
        stop_all()
    return rows


def _verdict_lines(summary: dict[str, Any], setup: dict[str, Any]) -> list[str]:
    lines = [
        "| value type | throughput ratio | not lower (low ≥ "
        f"{1 - setup['margin']:.2f}) | p99 ratio | not higher (high ≤ {1 + setup['p99_margin']:.2f}) |",
        "|---|---|---|---|---|",
    ]
    for value_type in setup["types"]:
        own = summary[value_type]
        t, p = own["throughput_ratio"], own["p99_ratio"]
        lines.append(
            f"| {value_type} | {t['median']:.3f} [{t['low']:.3f}, {t['high']:.3f}] | "
            f"{'yes' if own['throughput_not_lower'] else 'no'} | {p['median']:.3f} "
            f"[{p['low']:.3f}, {p['high']:.3f}] | {'yes' if own['p99_not_higher'] else 'no'} |"
        )
    return lines


def _run_lines(number: int, run: dict[str, Any]) -> list[str]:
    summary, setup = run["summary"], run["setup"]
    lines = [
        f"## Run {number}: {run['date']}, {summary['rounds']} rounds",
        "",
        f"{run['machine']}: `{run['command']}`.",
        "",
        f"Artifact: {setup['artifact']} ({setup['backbone']}, {setup['users']:,} users, "
        f"{setup['items']:,} items, sparsity {setup['sparsity']:.4f}). `ciess serve --workers "
        f"{setup['workers']}` per type, the three servers up side by side, "
        + (
            "started anew every round"
            if setup.get("fresh_servers", SETUP_DEFAULTS["fresh_servers"])
            else "the same servers for every round"
        )
        + "; wrk, one thread, "
        f"{setup['connections']} connections, {setup['seconds']:g} s a load after a "
        f"{setup['warmup']:g} s warm-up; k = {setup['k']}; {summary['rounds']} rounds, the order "
        "of the types rotated each round.",
        "",
        "| value type | stored bytes | resident bytes | median requests/s | median p99 ms "
        "| server CPU ms/request |",
        "|---|---|---|---|---|---|",
    ]
    first_round = {row["value_type"]: row for row in run["rows"] if row["round"] == 0}
    for value_type, row in first_round.items():
        own = summary[value_type]
        lines.append(
            f"| {value_type} | {row['stored_bytes']:,} | {row['resident_bytes']:,} | "
            f"{own['median_throughput_rps']:,.0f} | {own['median_p99_ms']:.2f} | "
            f"{own['median_server_cpu_ms_per_request']:.3f} |"
        )
    lines += [
        "",
        f"Paired ratios against float32 (per round), median and a {summary['coverage']:.1%} "
        "distribution-free interval; non-inferiority margins, fixed before measuring: "
        f"throughput {setup['margin']:.0%}, p99 {setup['p99_margin']:.0%}.",
        "",
        *_verdict_lines(summary, setup),
        "",
        "Every round:",
        "",
        "| round | value type | requests/s | p50 ms | p99 ms | errors |",
        "|---|---|---|---|---|---|",
    ]
    for row in run["rows"]:
        lines.append(
            f"| {row['round'] + 1} | {row['value_type']} | {row['throughput_rps']:,.0f} | "
            f"{row['p50_ms']:.2f} | {row['p99_ms']:.2f} | {row['errors']} |"
        )
    return lines


def write_report(kept: dict[str, Any], out: Path) -> None:
    """``OUT/serving-types.md`` from the JSON twin's runs: the pooled verdict, then every run."""
    runs = kept["runs"]
    lines = ["# Serving speed by value type (int8 and int4 beside float32)", ""]
    for pooled in kept["pooled"]:
        numbers = pooled["runs"]
        named = ", ".join(str(n) for n in numbers[:-1]) + f" and {numbers[-1]}"
        lines += [
            f"## Runs {named} pooled: {pooled['rounds']} rounds",
            "",
            f"The paired ratios of runs {named} (one setup), median and a "
            f"{pooled['coverage']:.1%} distribution-free interval: wider than one run's, because "
            "each further look at the same question must pay for itself.",
            "",
            *_verdict_lines(pooled, runs[numbers[0] - 1]["setup"]),
            "",
        ]
    for number, run in enumerate(runs, start=1):
        lines += [*_run_lines(number, run), ""]
    write_with_findings(out / "serving-types.md", lines[:-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=DefaultsHelp)
    parser.add_argument("--artifact", help="a float32 artifact folder (needed unless --rewrite)")
    parser.add_argument(
        "--types", default="int8,int4", help="comma-separated value types served beside float32"
    )
    parser.add_argument("--rounds", type=int, default=10, help="rounds of one load per type")
    parser.add_argument("--seconds", type=float, default=10.0, help="recorded seconds per load")
    parser.add_argument("--warmup", type=float, default=2.0, help="unrecorded seconds before it")
    parser.add_argument("--workers", type=int, default=2, help="API processes per server")
    parser.add_argument("--connections", type=int, default=16, help="wrk's connections")
    parser.add_argument("--k", type=int, default=20, help="recommendations per request")
    parser.add_argument("--paths", type=int, default=5000, help="distinct users in the load")
    parser.add_argument("--margin", type=float, default=0.03, help="throughput margin")
    parser.add_argument("--p99-margin", type=float, default=0.10, help="p99 margin")
    parser.add_argument("--ready-timeout", type=float, default=600.0, help="seconds to /readyz")
    parser.add_argument(
        "--fresh-servers",
        action="store_true",
        help="start the three servers anew every round (otherwise once, for every round)",
    )
    parser.add_argument(
        "--coverage", type=float, default=0.95, help="least coverage of the run's intervals"
    )
    parser.add_argument("--out", default=str(ROOT / "docs" / "benchmarks"), help="report folder")
    parser.add_argument(
        "--rewrite",
        action="store_true",
        help="only rewrite OUT/serving-types.md from its JSON twin (after editing its notes)",
    )
    args = parser.parse_args(argv)
    out = Path(args.out)
    if args.rewrite:
        runs = load_runs(out / "serving-types.json")
        if not runs:
            raise SystemExit(f"{out / 'serving-types.json'} does not exist: nothing to rewrite")
        write_report({"runs": runs, "pooled": pooled_by_setup(runs)}, out)
        return 0
    if args.artifact is None:
        parser.error("--artifact is required")
    args.types = [t for t in args.types.split(",") if t]
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (Debian: apt-get install wrk)")
    if args.rounds < 2:
        raise SystemExit("--rounds must be at least 2")
    if not 0.5 <= args.coverage < 1.0:
        raise SystemExit(f"--coverage must be in [0.5, 1), got {args.coverage}")
    work = Path(tempfile.mkdtemp(prefix="serving-types-"))
    try:
        rows = measure(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    manifest = json.loads((Path(args.artifact) / "manifest.json").read_text())
    report = {
        **provenance(),
        "setup": {
            "artifact": str(args.artifact),
            "backbone": manifest["backbone"],
            "users": manifest["num_users"],
            "items": manifest["num_items"],
            "sparsity": manifest.get("achieved_sparsity"),
            "types": args.types,
            "workers": args.workers,
            "connections": args.connections,
            "seconds": args.seconds,
            "warmup": args.warmup,
            "k": args.k,
            "margin": args.margin,
            "p99_margin": args.p99_margin,
            "fresh_servers": args.fresh_servers,
        },
        "summary": summarise(rows, args.margin, args.p99_margin, args.coverage),
        "rows": rows,
    }
    runs = [*load_runs(out / "serving-types.json"), report]
    kept = {"runs": runs, "pooled": pooled_by_setup(runs)}
    save_json(out / "serving-types.json", kept)
    write_report(kept, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
