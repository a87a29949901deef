"""Serving latency while a budget job trains on the same machine, by the job's CPU priority.

``ciess serve`` runs the API and the job worker on one machine; a budget job of the ``search``
method trains with torch on every core. This benchmark serves an artifact with ``ciess serve``
(1 API process, 1 scorer thread, the job's process at torch's default threads: one per core),
drives single-user top-20 requests at a fixed rate (open loop), and measures latency in two
windows of each service's life: ``idle`` (no job) and ``busy`` (a ``search`` job for a target
sparsity, from the moment its pipeline trains its full model). It records the CPU seconds the
job's process got per second of the busy window: what a lower priority costs the job. The job
is then cancelled.

Each ``--niceness`` value is measured ``--repeats`` times, on a fresh service each time, the
values' order rotated from one repeat to the next: the benchmark sets the job's nice value
(``setpriority`` on each of its threads) once the job trains, before the busy window.

    python bench/job_contention.py --artifact /work/runs/serving/yelp-es90-artifact \\
        --data-dir ../shared/data --niceness 0,19 --repeats 3

Rows go to ``OUT/job-contention.json`` (one run per invocation, appended) and
``OUT/job-contention.md`` (findings from ``job-contention.notes.md``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import reliability_cases as cases
from bench.backbones import write_with_findings
from bench.budget_change import harness_options, served_world
from bench.cli_help import DefaultsHelp
from bench.machine_info import cpu_description
from bench.reliability import Options, Service, World, wait_for, wait_job
from bench.serving import PATH_TEMPLATE, wrk, wrk_failures

REPORTS = ROOT / "docs" / "benchmarks"
FINISHED = {"succeeded", "failed", "cancelled"}
TICKS = os.sysconf("SC_CLK_TCK")


# -- processes -----------------------------------------------------------------------------------
def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (field 3 onwards); None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def descendants(root: int) -> list[int]:
    """Every living process below ``root`` (children, their children, ...)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))) is not None:
            parents.setdefault(int(fields[1]), []).append(int(entry.name))
    found, frontier = [], [root]
    while frontier:
        children = parents.get(frontier.pop(), [])
        found += children
        frontier += children
    return found


def job_process(service: Service) -> int | None:
    """The job's process: the newest spawned interpreter below ``ciess serve`` (the worker's
    child; the search job runs its pipeline in that one process)."""
    spawned = []
    for pid in descendants(service.pid):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"multiprocessing.spawn" in command:
            spawned.append(pid)
    return max(spawned, default=None)


def cpu_seconds(pid: int) -> float:
    """User and system CPU seconds of ``pid`` so far (all its threads); 0 once it is gone."""
    fields = _stat(pid)
    return 0.0 if fields is None else (int(fields[11]) + int(fields[12])) / TICKS


def nice_value(pid: int) -> int | None:
    fields = _stat(pid)
    return None if fields is None else int(fields[16])


# -- one service ---------------------------------------------------------------------------------
def _latencies(samples: list[cases.Sample], start: float, end: float) -> dict[str, Any]:
    window = [s for s in samples if start <= s.due < end]
    latencies = [1e3 * s.latency for s in window if s.status]
    return {
        "requests": len(window),
        "not_valid_200": sum(bool(s.problem) for s in window),
        "p50_ms": round(float(np.percentile(latencies, 50)), 2) if latencies else None,
        "p99_ms": round(float(np.percentile(latencies, 99)), 2) if latencies else None,
        "max_ms": round(max(latencies, default=0.0), 2),
    }


class WindowedLoad:
    """Top-20 requests for single users in measured windows: an open loop at ``rps`` running for
    the service's whole life (``connections`` 0), or wrk closed loops on ``connections``
    connections, one per window (the service's capacity; ``--saturate``)."""

    def __init__(self, service: Service, world: World, options: Options, connections: int) -> None:
        self.port, self.connections = service.port, connections
        self.samples: list[cases.Sample] = []
        self.open_loop: cases.OpenLoop | None = None
        self.paths = world.root / "paths.txt"
        if connections:
            self.paths.write_text(
                "".join(f"{PATH_TEMPLATE.format(user=u, k=options.k)}\n" for u in world.users)
            )
            self._wrk(2)  # warm-up, not counted
        else:
            self.open_loop = cases.OpenLoop(service.port, world.users, options.k, options.rps)
            self.open_loop.start()
            time.sleep(3.0)  # warm-up, not counted

    def window(self, seconds: int) -> Callable[[], dict[str, Any]]:
        """Load for ``seconds``; the window's figures, once :meth:`stop` has run."""
        if self.open_loop is None:
            figures = self._wrk(seconds)
            return lambda: figures
        start = self.open_loop.elapsed()
        time.sleep(seconds)
        end = self.open_loop.elapsed()
        return lambda: _latencies(self.samples, start, end)

    def stop(self) -> None:
        if self.open_loop is not None:
            self.samples = self.open_loop.stop()

    def _wrk(self, seconds: int) -> dict[str, Any]:
        raw = wrk(f"http://127.0.0.1:{self.port}", self.paths, seconds, self.connections)
        return {
            "requests": raw["requests"],
            "not_valid_200": raw["status_errors"] + wrk_failures(raw),
            "requests_per_s": round(raw["requests"] / (raw["duration_us"] / 1e6), 1),
            "p50_ms": round(raw["p50_us"] / 1e3, 2),
            "p99_ms": round(raw["p99_us"] / 1e3, 2),
            "max_ms": round(raw["max_us"] / 1e3, 2),
        }


def one_service(
    world: World,
    options: Options,
    state: Path,
    niceness: int,
    threads: int,
    window: int,
    connections: int,
) -> dict[str, Any]:
    """Idle and busy windows of one fresh service at ``niceness``: a row of the report."""
    # torch takes MKL_NUM_THREADS over OMP_NUM_THREADS where both are set (the harness sets both
    # to 1 for the API's sake), so the job's threads need both.
    threads_variables = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    with Service(world, state, options, environment=threads_variables) as service:
        load = WindowedLoad(service, world, options, connections)
        try:
            idle = load.window(window)
            posted = service.post(
                "/v1/admin/budget", {"target_sparsity": 0.95, "method": "search"}, world.token
            )
            if posted.status != 202:
                raise SystemExit(f"budget post: status {posted.status}, {posted.body[:300]!r}")
            job_id = int(posted.json()["id"])

            def training() -> bool:
                job = service.get(f"/v1/admin/jobs/{job_id}", world.token).json()
                return job.get("state") == "running" and job.get("stage") == "full model"

            if not wait_for(training, 300, every=0.5):
                raise SystemExit(f"job {job_id} did not start its full model in 300 s")
            job_pid = job_process(service)
            if job_pid is None:
                raise SystemExit("the job's process was not found below ciess serve")
            # Its priority lowered by ``niceness`` before the busy window (all its threads).
            for thread in Path(f"/proc/{job_pid}/task").iterdir():
                os.setpriority(os.PRIO_PROCESS, int(thread.name), niceness)
            stage = service.get(f"/v1/admin/jobs/{job_id}", world.token).json().get("stage")
            busy_start, cpu_before = time.perf_counter(), cpu_seconds(job_pid)
            busy = load.window(window)
            busy_end, cpu_after = time.perf_counter(), cpu_seconds(job_pid)
            job_nice = nice_value(job_pid)
            service.post(f"/v1/admin/jobs/{job_id}/cancel", {}, world.token)
            cancelled = wait_job(service, world.token, job_id, FINISHED, 120)
        finally:
            load.stop()
    return {
        "niceness": niceness,
        "job_threads": threads,
        "load": f"wrk, {connections} connections"
        if connections
        else f"open loop, {options.rps:g}/s",
        "job_nice_value_seen": job_nice,
        "job_stage_at_busy_start": stage,
        "job_cpu_per_second": round((cpu_after - cpu_before) / (busy_end - busy_start), 3),
        "job_state_after_cancel": cancelled.get("state"),
        "idle": idle(),
        "busy": busy(),
        "server_errors": service.server_errors,
    }


# -- report --------------------------------------------------------------------------------------
def _median(rows: list[dict[str, Any]], *path: str) -> float | None:
    """Median over ``rows`` of the value at ``path`` (None where no row has it)."""
    values = []
    for row in rows:
        value: Any = row
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        if value is not None:
            values.append(value)
    return float(statistics.median(values)) if values else None


def summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per niceness: medians over its repeats."""
    result = []
    for niceness in sorted({row["niceness"] for row in rows}):
        mine = [row for row in rows if row["niceness"] == niceness]
        entry: dict[str, Any] = {"niceness": niceness, "repeats": len(mine)}
        for window in ("idle", "busy"):
            for figure in ("requests_per_s", "p50_ms", "p99_ms", "max_ms"):
                entry[f"{window}_{figure}"] = _median(mine, window, figure)
        entry["job_cpu_per_second"] = _median(mine, "job_cpu_per_second")
        entry["not_valid_200"] = sum(
            row["idle"]["not_valid_200"] + row["busy"]["not_valid_200"] for row in mine
        )
        result.append(entry)
    return result


def _shown(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def _figures(window: dict[str, Any]) -> str:
    rate = window.get("requests_per_s")
    latency = f"{window['p50_ms']} / {window['p99_ms']} / {window['max_ms']}"
    return latency if rate is None else f"{rate:,.0f} · {latency}"


def write_report(report: dict[str, Any], path: Path) -> None:
    lines = [
        "# Serving latency while a budget job trains",
        "",
        "Written by `bench/job_contention.py` from `job-contention.json`; see the script's",
        "docstring for what is measured. `idle`: no job; `busy`: a `search` budget job training",
        "its full model beside the API. Requests: single-user top-20; under an open loop at a",
        "fixed rate, latency counts from when a request was due; under wrk (closed loop) the",
        "rate is the service's capacity. `job CPU s/s`: CPU seconds the job's process got per",
        "second of the busy window.",
    ]
    for run in report["runs"]:
        rows = [row for row in report["rows"] if row["run_id"] == run["run_id"]]
        connections = run.get("saturate_connections") or 0
        load = (
            f"wrk on {connections} connections"
            if connections
            else f"an open loop at {run['rps']:g} requests/s"
        )
        lines += [
            "",
            f"## run `{run['run_id']}`",
            "",
            f"{run['machine']}; {run['date']}; artifact `{run['artifact']}`; {load}; windows "
            f"of {run['window_s']:g} s; `{run['command']}`. {run['conditions']}",
            "",
            "Medians over repeats:",
            "",
            "| job niceness | repeats | idle requests/s | idle p50 / p99 ms | busy requests/s "
            "| busy p50 / p99 / max ms | job CPU s/s | answers not a valid 200 |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for entry in summary(rows):
            lines.append(
                f"| {entry['niceness']} | {entry['repeats']} | "
                f"{_shown(entry['idle_requests_per_s'], 0)} | {_shown(entry['idle_p50_ms'])} / "
                f"{_shown(entry['idle_p99_ms'])} | {_shown(entry['busy_requests_per_s'], 0)} | "
                f"{_shown(entry['busy_p50_ms'])} / {_shown(entry['busy_p99_ms'])} / "
                f"{_shown(entry['busy_max_ms'], 1)} | {_shown(entry['job_cpu_per_second'])} | "
                f"{entry['not_valid_200']} |"
            )
        lines += [
            "",
            "Every service (requests/s · p50 / p99 / max ms; requests/s under wrk only):",
            "",
            "| repeat | job niceness (seen) | job stage | idle | busy | requests idle / busy "
            "| job CPU s/s |",
            "|---|---|---|---|---|---|---|",
        ]
        for row in rows:
            idle, busy = row["idle"], row["busy"]
            lines.append(
                f"| {row['repeat']} | {row['niceness']} ({row['job_nice_value_seen']}) | "
                f"{row['job_stage_at_busy_start']} | {_figures(idle)} | {_figures(busy)} | "
                f"{idle['requests']} / {busy['requests']} | {row['job_cpu_per_second']} |"
            )
    write_with_findings(path, lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=DefaultsHelp
    )
    parser.add_argument("--artifact", type=Path, help="artifact to serve")
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data",
                        help="datasets folder (the budget job reads it)")  # fmt: skip
    parser.add_argument(
        "--niceness", default="0,19", help="the job's nice values to compare, comma-separated"
    )
    parser.add_argument("--repeats", type=int, default=3, help="services per niceness")
    parser.add_argument("--window", type=int, default=30, help="seconds of each window")
    parser.add_argument(
        "--saturate",
        type=int,
        default=0,
        metavar="CONNECTIONS",
        help="load each window with wrk on this many connections (the service's capacity) "
        "instead of the open loop at --rps",
    )
    parser.add_argument("--rps", type=float, default=200.0, help="top-k requests per second")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="the job's torch threads (OMP_NUM_THREADS)")  # fmt: skip
    parser.add_argument("--conditions", default="Nothing else ran on the machine.",
                        help="what else ran meanwhile, said in the report")  # fmt: skip
    parser.add_argument("--out", type=Path, default=REPORTS, help="folder of the report")
    parser.add_argument("--rewrite", action="store_true", help="rewrite the page from the JSON")
    args = parser.parse_args(argv)
    json_path = args.out / "job-contention.json"
    report = json.loads(json_path.read_text()) if json_path.exists() else {"runs": [], "rows": []}
    if not args.rewrite:
        if args.artifact is None:
            parser.error("--artifact is required (or --rewrite)")
        values = [int(value) for value in args.niceness.split(",")]
        work = Path(tempfile.mkdtemp(prefix="job-contention-"))
        world = served_world(args.artifact, args.data_dir, work)
        options = harness_options(args.rps)
        run_id = "job-contention-" + dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        for repeat in range(1, args.repeats + 1):
            shift = (repeat - 1) % len(values)
            for niceness in values[shift:] + values[:shift]:
                state = Path(tempfile.mkdtemp(prefix=f"r{repeat}-n{niceness}-", dir=work))
                row = {
                    "run_id": run_id,
                    "repeat": repeat,
                    **one_service(
                        world,
                        options,
                        state / "state",
                        niceness,
                        args.threads,
                        args.window,
                        args.saturate,
                    ),
                }
                print(json.dumps(row), flush=True)
                report["rows"].append(row)
        report["runs"].append(
            {
                "run_id": run_id,
                "artifact": str(args.artifact),
                "rps": args.rps,
                "saturate_connections": args.saturate,
                "window_s": args.window,
                "machine": cpu_description(),
                "date": dt.date.today().isoformat(),
                "command": shlex.join(["python", "bench/job_contention.py", *sys.argv[1:]]),
                "conditions": args.conditions,
            }
        )
        args.out.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(report, indent=1) + "\n")
    write_report(report, args.out / "job-contention.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
