"""Budget jobs one after another: what the first byte budget's planner job costs, and what a
later one costs once the budget-free stages exist.

Starts ``ciess serve`` (API + job worker) on an artifact with a recipe file for its jobs and
posts ``{"max_bytes": SHARE × the dense float32 bytes, "method": "search"}`` once per share, each
after the last planner job has finished. A job's pipeline copies the full model, the teachers
and the supernet from an earlier job's pipeline of the same data and recipe and starts at its
search (``ciess_core/search/shared_stages.py``); the first job has none to copy. Measured per
job: its seconds (start to finish, in the job store), its pipeline's stage timings
(``summary.json``), the stages it copied, and the model it promoted. Rows go to
``docs/benchmarks/planner-jobs.json``; ``planner-jobs.md`` is rewritten.

    python bench/planner_jobs.py --artifact ARTIFACT --recipe scripts/quickstart-recipe.toml \\
        --data-dir ../shared/data --shares 0.04 0.032
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import secrets
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.budget_change import append_run, harness_options
from bench.cli_help import DefaultsHelp
from bench.machine_info import cpu_description
from bench.reliability import Service, World, wait_for, wait_job
from ciess_core.search.files import read_cached
from ciess_core.search.shared_stages import COPIED_STAGES_FILE

REPORTS = ROOT / "docs" / "benchmarks"
FINISHED = {"succeeded", "failed", "cancelled"}


def _newest_pipeline(state: Path) -> Path:
    """The pipeline folder whose summary was written last: the job that just finished."""
    summaries = sorted(
        (state / "searches").glob("*/summary.json"), key=lambda path: path.stat().st_mtime
    )
    return summaries[-1].parent


def run_jobs(world: World, state: Path, shares: list[float]) -> list[dict[str, Any]]:
    """One planner job per share, in order, on one service: a row each."""
    rows = []
    with Service(world, state, harness_options(1.0), recipe=world.recipe) as service:
        dense = int(service.get("/v1/model").json()["bytes"]["dense_equivalent"])
        for share in shares:
            budget = int(share * dense)
            posted = service.post(
                "/v1/admin/budget", {"max_bytes": budget, "method": "search"}, world.token
            )
            if posted.status not in (200, 202):
                raise SystemExit(f"budget {budget}: status {posted.status}, {posted.body[:500]!r}")
            answer = posted.json()
            job = wait_job(service, world.token, int(answer["id"]), FINISHED, 7200)
            if job.get("state") != "succeeded":
                raise SystemExit(f"job {answer['id']} ended {job.get('state')}: {job}")
            promoted = job.get("artifact_version")
            wait_for(lambda new=promoted: service.get("/v1/model").json()["version"] == new, 30)
            pipeline = _newest_pipeline(state)
            timings = json.loads((pipeline / "summary.json").read_text())["timings"]
            served = service.get("/v1/model").json()
            rows.append(
                {
                    "share": share,
                    "max_bytes": budget,
                    "job_seconds": round(job["finished_at"] - job["started_at"], 1),
                    "fast_path_job": (answer.get("fast_path") or {}).get("id"),
                    "copied_stages": sorted(read_cached(pipeline / COPIED_STAGES_FILE) or {}),
                    "timings": timings,
                    "served_version": served["version"],
                    "promoted_version": promoted,
                    "served_bytes": served["bytes"]["embedding_stores"],
                    "served_value_type": served["value_dtype"],
                    "served_valid_ndcg@20": served["metrics"]["valid"]["ndcg@20"],
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def write_report(report: dict[str, Any], path: Path) -> None:
    lines = [
        "# Planner jobs one after another",
        "",
        "Written by `bench/planner_jobs.py` from `planner-jobs.json`. `ciess serve` (API and job",
        "worker) serves an artifact; the admin posts byte budgets (`max_bytes`, method `search`)",
        "one after another, each once the last planner job has finished. `job s`: the job's",
        "start to finish in the job store. `copied`: its pipeline copied the full model, the",
        "teachers and the supernet from an earlier job's (their timings below are the earlier",
        "job's, read back). Stage seconds from the pipeline's `summary.json`.",
        "",
    ]
    for run in report["runs"]:
        rows = [row for row in report["rows"] if row["run_id"] == run["run_id"]]
        stages = sorted({key.split("_bytes")[0] for row in rows for key in row["timings"]})
        lines += [
            f"## Run `{run['run_id']}`",
            "",
            f"{run['machine']}; {run['date']}; artifact `{run['artifact']}`; recipe "
            f"`{run['recipe']}`; `{run['command']}`. {run['conditions']}",
            "",
            "| job | max_bytes | copied | job s | "
            + " | ".join(f"{stage} s" for stage in stages)
            + " | served (type, bytes, valid N@20) |",
            "|---|---|---|---|" + "---|" * len(stages) + "---|",
        ]
        for index, row in enumerate(rows, 1):
            by_stage = {key.split("_bytes")[0]: value for key, value in row["timings"].items()}
            lines.append(
                f"| {index} | {row['max_bytes']:,} | {', '.join(row['copied_stages']) or 'none'} | "
                f"{row['job_seconds']} | "
                + " | ".join(str(by_stage.get(stage, "–")) for stage in stages)
                + f" | {row['served_value_type']}, {row['served_bytes']:,}, "
                f"{row['served_valid_ndcg@20']:.4f} |"
            )
        first, *later = rows
        if later:
            lines += [
                "",
                f"Later jobs took {', '.join(str(r['job_seconds']) for r in later)} s against "
                f"the first's {first['job_seconds']} s.",
            ]
        lines.append("")
    path.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=DefaultsHelp
    )
    parser.add_argument("--artifact", type=Path, required=True, help="the artifact to serve")
    parser.add_argument("--recipe", type=Path, default=ROOT / "scripts" / "quickstart-recipe.toml",
                        help="the jobs' recipe file (recipe_file)")  # fmt: skip
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data",
                        help="datasets folder (the jobs read it)")  # fmt: skip
    parser.add_argument("--shares", type=float, nargs="+", default=[0.04, 0.032],
                        help="byte budgets, as shares of the dense float32 tables' bytes")  # fmt: skip
    parser.add_argument("--conditions", default="Nothing else ran on the machine.",
                        help="what else ran meanwhile, said in the report")  # fmt: skip
    parser.add_argument("--out", type=Path, default=REPORTS, help="folder of the report")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="planner-jobs-"))
    users = json.loads((args.artifact / "ids" / "users.json").read_text())
    world = World(
        root=work,
        data_dir=args.data_dir,
        artifact=args.artifact,
        recipe=args.recipe.resolve(),
        token=secrets.token_hex(20),
        users=[str(user) for user in users[:100]],
        items=[],
    )
    run_id = "planner-jobs-" + dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    rows = [{"run_id": run_id, **row} for row in run_jobs(world, work / "state", args.shares)]
    run = {
        "run_id": run_id,
        "artifact": str(args.artifact),
        "recipe": str(args.recipe),
        "machine": cpu_description(),
        "date": dt.date.today().isoformat(),
        "command": shlex.join(["python", "bench/planner_jobs.py", *(argv or sys.argv[1:])]),
        "conditions": args.conditions,
    }
    report = append_run(args.out / "planner-jobs.json", run, rows)
    write_report(report, args.out / "planner-jobs.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
