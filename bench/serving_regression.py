"""Serving throughput and latency of this checkout against an earlier commit, in one run.

Usage:
    python bench/serving_regression.py --base f09379c --rounds 2

Checks the base commit out into a git worktree, exports the same run folder as an artifact of
each commit's format (each commit's own `ciess export`), then runs `bench/serving.py`'s load
section of each checkout in turn, alternating base and head `--rounds` times so that the
machine's drift falls on both alike. Each call is the command of `docs/benchmarks/serving.md`
restricted to its load section and to the `ciess` and `torch` servers. Writes
`docs/benchmarks/serving-regression.md` and its JSON twin: every row of every round, and per
(workers, load) the head's median over the base's median.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "bench" / "_work" / "serving-regression"
REPORTS = ROOT / "docs" / "benchmarks"


def git(*arguments: str, cwd: Path = ROOT) -> str:
    return subprocess.run(
        ["git", *arguments], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout.strip()


def checkout(base: str) -> Path:
    """A worktree of ``base`` (reused when it is already at that commit)."""
    commit = git("rev-parse", base)
    tree = WORK / f"tree-{commit[:12]}"
    if not tree.exists():
        WORK.mkdir(parents=True, exist_ok=True)
        git("worktree", "add", "--detach", str(tree), commit)
    return tree


def export(tree: Path, run: Path, data_dir: Path, out: Path) -> Path:
    """``run`` exported by the ``ciess export`` of the checkout ``tree``."""
    if not out.exists():
        environment = {**os.environ, "PYTHONPATH": str(tree)}
        subprocess.run(
            [sys.executable, "-m", "ciess_core.cli", "export", str(run), "--out", str(out),
             "--data-dir", str(data_dir)],
            cwd=tree, env=environment, check=True,
        )  # fmt: skip
    return out


def load(tree: Path, artifact: Path, run: Path, arguments: argparse.Namespace, out: Path) -> Any:
    """The load section of ``tree``'s ``bench/serving.py``; returns its rows."""
    out.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, str(tree / "bench" / "serving.py"), "--data-dir", str(arguments.data_dir),
        "--artifact", f"ml-1m={artifact}", "--run", f"ml-1m={run}", "--sections", "load",
        "--servers", "ciess,torch", "--workers", "1,2", "--rps", arguments.rps,
        "--closed-loop", arguments.closed_loop,
        "--seconds", str(arguments.seconds), "--out", str(out),
    ]  # fmt: skip
    environment = {**os.environ, "PYTHONPATH": str(tree)}
    subprocess.run(command, cwd=tree, env=environment, check=True)
    rows = json.loads((out / "serving.json").read_text())["rows"]
    return [row for row in rows if row["server"] == "ciess"], " ".join(command)


def same_serving_code(one: str, other: str) -> bool:
    """Whether two commits hold the same core and service (what a server runs)."""
    changed = subprocess.run(
        ["git", "diff", "--quiet", one, other, "--", "ciess_core", "service"], cwd=ROOT
    )
    return changed.returncode == 0


def key(row: dict[str, Any]) -> tuple[int, str]:
    """(workers, load): the load as serving.md names it."""
    if row["offered_rps"] is None:
        return int(row["workers"]), f"closed, {row['connections']} conns, {row['generator']}"
    return int(row["workers"]), f"open {row['offered_rps']:g}/s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="the earlier commit")
    parser.add_argument("--rounds", type=int, default=2, help="base/head pairs, alternating")
    parser.add_argument(
        "--more",
        action="store_true",
        help="add the rounds to those of the report's JSON twin (same base, and a head with "
        "the same ciess_core and service) instead of starting again",
    )
    parser.add_argument(
        "--head-first", action="store_true", help="in each new round, the head before the base"
    )
    parser.add_argument("--run", default=str(ROOT / "bench/_work/serving/run"))
    parser.add_argument("--data-dir", default=os.environ.get("CIESS_DATA_DIR", "../shared/data"))
    parser.add_argument("--rps", default="200,500")
    parser.add_argument("--closed-loop", default="wrk", help="generators of the closed loop")
    parser.add_argument("--seconds", type=float, default=15.0)
    arguments = parser.parse_args()
    arguments.data_dir = Path(arguments.data_dir).resolve()
    run = Path(arguments.run).resolve()
    base_tree = checkout(arguments.base)
    head = git("rev-parse", "HEAD")
    base = git("rev-parse", arguments.base)
    artifacts = {
        "base": export(base_tree, run, arguments.data_dir, WORK / f"artifact-{base[:12]}"),
        "head": export(ROOT, run, arguments.data_dir, WORK / f"artifact-{head[:12]}"),
    }
    trees = {"base": base_tree, "head": ROOT}
    rows: list[dict[str, Any]] = []
    if arguments.more:
        earlier = json.loads((REPORTS / "serving-regression.json").read_text())
        rows = [r for r in earlier if r["side"] == "base" and r["commit"] == base]
        for commit in {r["commit"] for r in earlier if r["side"] == "head"}:
            if same_serving_code(commit, head):  # an earlier head that serves the same code
                rows += [r for r in earlier if r["side"] == "head" and r["commit"] == commit]
    first = 1 + max((int(r["round"]) for r in rows), default=-1)
    commands = {}
    order = ("head", "base") if arguments.head_first else ("base", "head")
    for round_index in range(first, first + arguments.rounds):
        for side in order:
            out = WORK / f"round{round_index}-{side}"
            shutil.rmtree(out, ignore_errors=True)
            found, commands[side] = load(trees[side], artifacts[side], run, arguments, out)
            commit = base if side == "base" else head
            rows += [
                {**row, "side": side, "commit": commit, "round": round_index, "first": order[0]}
                for row in found
            ]
    write(rows, arguments, commands, base, head, first + arguments.rounds)


def write(
    rows: list[dict[str, Any]],
    arguments: argparse.Namespace,
    commands: dict[str, str],
    base: str,
    head: str,
    rounds: int,
) -> None:
    machine = f"{os.cpu_count()} cores; {datetime.now(timezone.utc).strftime('%Y-%m-%d')}"
    (REPORTS / "serving-regression.json").write_text(json.dumps(rows, indent=1) + "\n")
    lines = [
        "# Serving: this commit against an earlier one",
        "",
        "Written by `bench/serving_regression.py`. Each commit serves the same run folder, "
        "exported by its own `ciess export`, with `bench/serving.py --sections load --servers "
        "ciess,torch` of its own checkout; the two alternate, round after round, on the same "
        "machine. Only the `ciess` rows are shown (the `torch` server is the load section's "
        "reference).",
        "",
        f"- base `{base[:12]}`, head `{head[:12]}` (and earlier heads with the same "
        f"`ciess_core` and `service`: "
        f"{', '.join(sorted({r['commit'][:12] for r in rows if r['side'] == 'head'}))}); "
        f"{rounds} round(s), "
        f"{sum(1 for r in {(x['round'], x.get('first', 'base')) for x in rows} if r[1] == 'head')}"
        f" of them head first; {machine}",
        f"- command: `python bench/serving_regression.py --base {arguments.base} "
        f"--rounds N` (then `--more`: N more rounds, added)",
        f"- each call: `{commands.get('head', '')}`",
        "",
        "| workers | load | base req/s | head req/s | head / base | base p99 ms | head p99 ms |",
        "|---|---|---|---|---|---|---|",
    ]
    groups: dict[tuple[int, str], dict[str, list[dict[str, Any]]]] = {}
    for row in rows:
        groups.setdefault(key(row), {"base": [], "head": []})[row["side"]].append(row)
    for (workers, load_name), sides in sorted(groups.items()):
        through = {s: statistics.median(r["throughput_rps"] for r in sides[s]) for s in sides}
        p99 = {s: statistics.median(r["p99_ms"] for r in sides[s]) for s in sides}
        ratio = through["head"] / through["base"] if through["base"] else float("nan")
        lines.append(
            f"| {workers} | {load_name} | {through['base']:,.0f} | {through['head']:,.0f} | "
            f"{ratio:.3f} | {p99['base']:.3f} | {p99['head']:.3f} |"
        )
    lines += ["", "Medians over the rounds; every row is in the JSON twin.", ""]
    (REPORTS / "serving-regression.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
