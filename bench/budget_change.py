"""A byte budget through the fast path: from the admin call to the new model answering.

Starts ``ciess serve`` (API + job worker, the service's default settings) on a float32 artifact
whose manifest records its validation per value type (``ciess train`` and ``ciess search`` write
it), drives single-user top-k at a fixed rate (open loop), and posts
``{"max_bytes": SHARE × the served bytes, "method": "search"}`` to ``/v1/admin/budget``. The
service queues a ``requantise`` job (the served model stored in the best measured type that fits)
and the planner's job. Measured per repeat: seconds from the post to the first answer of the new
model (its ``X-Model-Version``), the fast job's own seconds, the answers that were not a valid
200 and latency during the change. The planner's job is then cancelled (it runs the whole
pipeline, hours on this machine; ``docs/benchmarks/bytes.md`` measures what it picks). Rows go
to ``docs/benchmarks/budget-change.json``; ``docs/benchmarks/budget-change.md`` is rewritten.

    python bench/budget_change.py --artifact bench/_work/serving/ml1m-es90-artifact \\
        --data-dir ../shared/data --repeats 3

``--while-searching`` first posts an earlier budget (``{"target_sparsity": 0.95}``: the
pipeline, no fast path) and waits until its job trains; the measured budget then supersedes it
(the budget asked last wins), and the row records when that job stopped.

``--turnable-from PIPELINE`` serves instead the full LightGCN of a finished pipeline folder
(its deployment teacher) exported as a search job keeps it, with its turned cuts measured on
validation (:func:`ciess_core.search.turned_full.export_turnable_full`); a budget below every
type the full model can be stored in is then met by a ``turn`` job (turned to its principal
axes, cut to equal sizes, stored in the type that validated best).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import secrets
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import reliability_cases as cases
from bench.cli_help import DefaultsHelp
from bench.machine_info import cpu_description
from bench.reliability import Options, Service, World, wait_for, wait_job

REPORTS = ROOT / "docs" / "benchmarks"
FINISHED = {"succeeded", "failed", "cancelled"}
BAR_SECONDS = 10.0


def harness_options(rps: float) -> Options:
    """The reliability harness's knobs; only the rate, k and the service's poll matter here."""
    return Options(
        quick=False, fuzz_examples=0, rps=rps, k=20, slow_clients=0, slow_seconds=0.0,
        header_timeout=0.0, normal_every=0.0, body_megabytes=0, burst=0, kill_rounds=0,
        swap_seconds=0.0, poll_seconds=1.0, seed=0,
    )  # fmt: skip


def served_world(artifact: Path, data_dir: Path, work: Path) -> World:
    """What the service benchmarks serve: ``artifact``, the shipped recipe, a fresh admin token
    and 500 of the artifact's users (a fixed sample) to ask for."""
    recipe = work / "recipe.toml"
    recipe.write_text("# the shipped recipe, nothing overridden\n")
    users = json.loads((artifact / "ids" / "users.json").read_text())
    sample = np.random.default_rng(0).permutation(np.asarray(users, dtype=str))[:500]
    return World(
        root=work,
        data_dir=data_dir,
        artifact=artifact,
        recipe=recipe,
        token=secrets.token_hex(20),
        users=[str(user) for user in sample],
        items=[],
    )


# The earlier budget of --while-searching: the pipeline at a sparsity, which has no fast path.
EARLIER_BUDGET = {"target_sparsity": 0.95, "method": "search"}
# Stages of a job that has not started computing yet.
NOT_TRAINING = {"queued", "starting", "loading"}


def start_earlier_job(service: Service, token: str) -> int:
    """Post :data:`EARLIER_BUDGET` and wait until its job trains; its id."""
    posted = service.post("/v1/admin/budget", EARLIER_BUDGET, token)
    if posted.status != 202:
        raise SystemExit(f"earlier budget: status {posted.status}, {posted.body[:500]!r}")
    job_id = int(posted.json()["id"])

    def training() -> bool:
        job = service.get(f"/v1/admin/jobs/{job_id}", token).json()
        return job["state"] == "running" and job["stage"] not in NOT_TRAINING

    if not wait_for(training, 300):
        raise SystemExit(f"the earlier budget's job {job_id} did not start training")
    return job_id


def earlier_job_row(
    service: Service, token: str, job_id: int, answer: dict[str, Any], posted_at: float
) -> dict[str, Any]:
    """What became of the superseded job: its state, message, and when it stopped."""
    job = wait_job(service, token, job_id, FINISHED, 120)
    finished = job.get("finished_at")
    return {
        "budget": EARLIER_BUDGET,
        "id": job_id,
        "superseded_in_answer": job_id in (answer.get("superseded") or []),
        "state": job.get("state"),
        "message": job.get("message"),
        "stopped_after_s": None if finished is None else round(finished - posted_at, 3),
    }


def one_change(
    world: World, options: Options, state: Path, share: float, while_searching: bool = False
) -> dict[str, Any]:
    """One budget change on a fresh service: the row of :mod:`budget_change`."""
    with Service(world, state, options) as service:
        before = service.get("/v1/model").json()
        served_bytes = int(before["bytes"]["embedding_stores"])
        budget = int(share * served_bytes)
        earlier = start_earlier_job(service, world.token) if while_searching else None
        load = cases.OpenLoop(service.port, world.users, options.k, options.rps).start()
        try:
            time.sleep(2.0)
            sent_at, posted_wall = load.elapsed(), time.time()
            posted = service.post(
                "/v1/admin/budget", {"max_bytes": budget, "method": "search"}, world.token
            )
            answer = posted.json() if posted.status in (200, 202) else {}
            fast = answer.get("fast_path") or {}
            if posted.status != 202 or not fast:
                raise SystemExit(f"no fast path: status {posted.status}, {posted.body[:500]!r}")
            fast_params = fast.get("params") or {}
            fast_job = wait_job(service, world.token, int(fast["id"]), FINISHED, 120)
            job_done_at = load.elapsed()
            superseded = (
                None
                if earlier is None
                else earlier_job_row(service, world.token, earlier, answer, posted_wall)
            )
            new = fast_job.get("artifact_version") or ""
            wait_for(lambda: any(s.version == new for s in load.samples), 30)
            time.sleep(2.0)
            after = service.get("/v1/model").json()
            service.post(f"/v1/admin/jobs/{answer['id']}/cancel", {}, world.token)
            planner = wait_job(service, world.token, int(answer["id"]), FINISHED, 120)
        finally:
            samples = load.stop()
    first_new = min((s.due + s.latency for s in samples if s.version == new), default=None)
    wrong = [s for s in samples if s.problem]
    latencies = [1e3 * s.latency for s in samples if s.status]
    fast_seconds = (fast_job.get("finished_at") or 0.0) - (fast_job.get("started_at") or 0.0)
    return {
        "served_bytes_before": served_bytes,
        "max_bytes": budget,
        "share": share,
        "value_type_before": before["value_dtype"],
        "value_type_after": after["value_dtype"],
        "served_bytes_after": after["bytes"]["embedding_stores"],
        "version_before": before["version"],
        "version_after": after["version"],
        "fast_job_kind": fast.get("kind"),
        "fast_job_width": fast_params.get("width"),
        "fast_job_valid": fast_params.get("valid"),
        "fast_job_state": fast_job.get("state"),
        "fast_job_seconds": round(fast_seconds, 3),
        "post_to_job_done_s": round(job_done_at - sent_at, 3),
        "post_to_new_answer_s": None if first_new is None else round(first_new - sent_at, 3),
        "planner_job_state_after_cancel": planner.get("state"),
        "requests": len(samples),
        "not_valid_200": len(wrong),
        "problems": [s.problem for s in wrong[:5]],
        "p50_ms": round(float(np.percentile(latencies, 50)), 2) if latencies else None,
        "p99_ms": round(float(np.percentile(latencies, 99)), 2) if latencies else None,
        "max_ms": round(max(latencies, default=0.0), 2),
        "server_errors": service.server_errors,
        **({} if superseded is None else {"earlier_job": superseded}),
    }


def write_report(report: dict[str, Any], path: Path) -> None:
    rows = report["rows"]
    lines = [
        "# Budget change through the fast path",
        "",
        "Written by `bench/budget_change.py` from `budget-change.json`. `ciess serve` (API and job",
        "worker, default settings: 1 API process, 1 s poll) serves a float32 artifact; single-user",
        "top-20 requests arrive at a fixed rate (open loop) while the admin posts a byte budget",
        "(`max_bytes`, method `search`). The service answers with the planner's job and its fast",
        "path: a `requantise` job that stores the served model's tables in the best value type",
        "that fits and that the model's own validation measured, or a `turn` job that turns a",
        "kept full LightGCN to its principal axes and cuts it to the equal size and type whose",
        "cut validated best (`--turnable-from`). `post → new answer`: from",
        "sending the post to the first answer carrying the new `X-Model-Version`. The planner's",
        "job is cancelled afterwards (it is the whole pipeline; `bytes.md` measures its picks).",
        f"Bar: at most {BAR_SECONDS:g} s.",
        "",
    ]
    for run in report["runs"]:
        subset = [r for r in rows if r["run_id"] == run["run_id"]]
        lines += [
            f"## {run['dataset']}: run `{run['run_id']}`",
            "",
            f"{run['machine']}; {run['date']}; artifact `{run['artifact']}`; "
            f"{run['rps']:g} requests/s; `{run['command']}`. {run['conditions']}",
            "",
            "| repeat | bytes before (type) | max_bytes | bytes after (type) | fast job "
            "| its valid N@20 | post → new answer (s) | fast job (s) | requests | not a valid 200 "
            "| p50 ms | p99 ms | max ms |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for row in subset:
            lines.append(
                f"| {row['repeat']} | {row['served_bytes_before']:,} ({row['value_type_before']})"
                f" | {row['max_bytes']:,} | {row['served_bytes_after']:,} "
                f"({row['value_type_after']}) | {_fast_job(row)} | "
                f"{_valid(row.get('fast_job_valid'))} | {row['post_to_new_answer_s']} | "
                f"{row['fast_job_seconds']} | {row['requests']} | {row['not_valid_200']} | "
                f"{row['p50_ms']} | {row['p99_ms']} | {row['max_ms']} |"
            )
        lines += _earlier_jobs(subset)
        worst = max((r["post_to_new_answer_s"] or float("inf")) for r in subset)
        lost = sum(r["not_valid_200"] for r in subset)
        verdict = "met" if worst <= BAR_SECONDS and lost == 0 else "not met"
        lines += [
            "",
            f"Slowest change {worst} s, {lost} answers not a valid 200 over "
            f"{sum(r['requests'] for r in subset)} requests: bar {verdict}.",
            "",
        ]
    path.write_text("\n".join(lines))


def _earlier_jobs(rows: list[dict[str, Any]]) -> list[str]:
    """The report's lines on the jobs the measured budgets superseded (``--while-searching``)."""
    earlier = [row["earlier_job"] for row in rows if "earlier_job" in row]
    if not earlier:
        return []
    stopped = [job["stopped_after_s"] for job in earlier]
    named = sum(job["superseded_in_answer"] for job in earlier)
    states = ", ".join(sorted({str(job["state"]) for job in earlier}))
    return [
        "",
        f"Each change was posted while the search job of an earlier budget "
        f"(`{json.dumps(earlier[0]['budget'])}`) trained. The answer named it superseded in "
        f"{named} of {len(earlier)}; it ended {states} {min(stopped)}–{max(stopped)} s after "
        f"the post (“{earlier[0]['message']}”).",
    ]


def _valid(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"


def _fast_job(row: dict[str, Any]) -> str:
    """The fast path's job as the table names it (rows of older runs name no kind)."""
    kind = row.get("fast_job_kind") or "requantise"
    width = row.get("fast_job_width")
    return kind if width is None else f"{kind}, size {width}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=DefaultsHelp
    )
    served = parser.add_mutually_exclusive_group(required=True)
    served.add_argument("--artifact", type=Path, help="float32 artifact to serve")
    served.add_argument(
        "--turnable-from",
        type=Path,
        help="a finished LightGCN pipeline folder whose full model to serve, turned cuts measured",
    )
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data",
                        help="datasets folder (the planner's job reads it)")  # fmt: skip
    parser.add_argument("--share", type=float, default=0.3,
                        help="the budget as a share of the served bytes")  # fmt: skip
    parser.add_argument("--rps", type=float, default=200.0, help="top-k requests per second")
    parser.add_argument("--repeats", type=int, default=3, help="changes, each on a fresh service")
    parser.add_argument("--while-searching", action="store_true",
                        help="post each change while an earlier budget's search job trains")  # fmt: skip
    parser.add_argument("--conditions", default="Nothing else ran on the machine.",
                        help="what else ran meanwhile, said in the report")  # fmt: skip
    parser.add_argument("--out", type=Path, default=REPORTS, help="folder of the report")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="budget-change-"))
    if args.turnable_from is not None:
        args.artifact = turnable_full(args.turnable_from, args.data_dir)
    manifest = json.loads((args.artifact / "manifest.json").read_text())
    if "valid_by_value_type" not in manifest.get("metrics", {}):
        raise SystemExit(f"{args.artifact}: its manifest has no metrics.valid_by_value_type")
    world, options = served_world(args.artifact, args.data_dir, work), harness_options(args.rps)
    run_id = "budget-change-" + dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    rows = []
    for repeat in range(1, args.repeats + 1):
        state = Path(tempfile.mkdtemp(prefix=f"change-{repeat}-", dir=work)) / "state"
        change = one_change(world, options, state, args.share, args.while_searching)
        row = {"run_id": run_id, "repeat": repeat, **change}
        print(json.dumps(row), flush=True)
        rows.append(row)
    run = {
        "run_id": run_id,
        "dataset": manifest["dataset"]["name"],
        "artifact": str(args.artifact),
        "rps": args.rps,
        "machine": cpu_description(),
        "date": dt.date.today().isoformat(),
        "command": shlex.join(["python", "bench/budget_change.py", *(argv or sys.argv[1:])]),
        "conditions": args.conditions,
    }
    report = append_run(args.out / "budget-change.json", run, rows)
    write_report(report, args.out / "budget-change.md")
    return 0


def turnable_full(pipeline: Path, data_dir: Path) -> Path:
    """The full model of the LightGCN pipeline folder ``pipeline`` exported as a search job
    keeps it, once, to ``pipeline/../turnable-full-artifact``."""
    from bench.rotated_truncation import run_folder
    from ciess_core.pipeline import SPLIT_SEED, load_split
    from ciess_core.search.turned_full import export_turnable_full

    out = pipeline.parent / "turnable-full-artifact"
    if not out.is_dir():
        _, spec, _ = run_folder(pipeline.parent)
        split, fingerprint = load_split(spec.dataset, data_dir)
        export_turnable_full(spec, split, pipeline, out, fingerprint, SPLIT_SEED)
    return out


def append_run(json_path: Path, run: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Add one run and its rows to the report ``json_path`` (``{"runs": [], "rows": []}`` when
    it is new) and write it back; returns the whole report."""
    report = json.loads(json_path.read_text()) if json_path.exists() else {"runs": [], "rows": []}
    report["runs"].append(run)
    report["rows"] += rows
    json_path.write_text(json.dumps(report, indent=1) + "\n")
    return report


if __name__ == "__main__":
    raise SystemExit(main())
