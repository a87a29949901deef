"""Reliability benchmark: the service under bad input, faults and hostile clients.

Sets up its own world in a temporary folder: a generated clustered dataset (120 users, 80 items),
a LightGCN artifact trained on it by the core (build_backbone, train_bpr, export_model), a tiny
recipe for budget jobs, a 40-character admin token, and real servers: ``ciess serve`` subprocesses
on free loopback ports, with the job worker unless a row says otherwise, configured by ``CIESS_*``
variables. Each row starts its own server on a fresh state folder and stops it.

Rows (each: ``tried``, ``failed`` = answers other than the intended one, ``five_xx``, ``seconds``):

- ``schema-fuzz-no-token``, ``schema-fuzz-admin``: schemathesis over /openapi.json (every
  operation, positive and negative data, its checks ``not_a_server_error``,
  ``negative_data_rejection``, ``status_code_conformance``, ``content_type_conformance``,
  ``response_schema_conformance``, ``ignored_auth``), without and with the admin token; then
  NaN, ±Infinity, ±1e400, 400-digit integers and a 5,000-digit one written as raw JSON into every
  number field of every JSON body, and NaN / Infinity / 1e400 / 400 digits into every number
  parameter. Intended: no 5xx; 422 (400 for the 5,000 digits; 401 without the token on admin
  routes).
- ``bad-input``: over 100 hand-written bad requests (bench/reliability_cases.py), each with the one
  status it must get; an error body over 8 KiB, or the admin token in the server's log, also fails.
- ``hot-swap-1-process``, ``hot-swap-2-processes``: single-user top-k at a fixed rate (open loop,
  200 requests/s) from before a budget job ("search", tiny recipe) is posted until after its
  model serves; every answer must be a valid 200, and those due after the swap must carry the new
  X-Model-Version.
- ``worker-killed``: kill -9 of the job worker while its job runs: the job failed within 5 s, a
  new worker in /readyz and ``ciess_job_workers`` within 10 s, the killed job's own process gone
  within 10 s, the next job succeeds (``tried`` counts these checks).
- ``restart-bad-pointer``: three kept versions promoted through the API, two then damaged (bytes
  flipped, a file truncated, values of 3e30 with their hashes recomputed); each restart with
  ``current.json`` at a damaged, missing or unreadable target must serve the last good version,
  say so in /v1/model ``fallback_from`` and answer top-k.
- ``slow-clients``: the server under ``ulimit -n 1024``; 1,100 slow clients (headers never ended,
  reconnecting when closed) while normal top-k requests arrive on new connections: every normal
  request must get a valid 200.
- ``huge-body``: 300 MB bodies (declared by Content-Length, and chunked), also to an admin route
  without the token: 413 within 1 s.
- ``concurrent-identical-budgets``: 100 identical budget posts at once (2 API processes): one 202,
  99 times 200 with the same job id; 100 more while that job runs: 200 with the same id.

    python bench/reliability.py                 # every row, about 6 minutes on 2 cores
    python bench/reliability.py --quick         # a smoke check, about 1.5 minutes
    python bench/reliability.py --only huge-body,bad-input
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime as dt
import json
import os
import re
import resource
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import reliability_cases as cases
from bench.cli_help import DefaultsHelp
from bench.machine_info import cpu_description

ROWS = (
    "schema-fuzz-no-token",
    "schema-fuzz-admin",
    "bad-input",
    "hot-swap-1-process",
    "hot-swap-2-processes",
    "worker-killed",
    "restart-bad-pointer",
    "slow-clients",
    "huge-body",
    "concurrent-identical-budgets",
)
DATASET_FILE = "clustered.txt"
TINY_RECIPE = """\
episodes = 1
iterations = 2
supernet_batches = 5
max_batches = 20
batch_size = 256
eval_every = 10
"""
# A job that trains until its worker is killed.
LONG_RECIPE = """\
max_batches = 1000000
batch_size = 256
eval_every = 0
"""
SCHEMATHESIS_CHECKS = (
    "not_a_server_error,negative_data_rejection,status_code_conformance,"
    "content_type_conformance,response_schema_conformance,ignored_auth"
)
# schemathesis's list of statuses that reject invalid data, with 413 (the body limit) added.
SCHEMATHESIS_CONFIG = """\
[checks.negative_data_rejection]
expected-statuses = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429"]
"""
MAX_LISTED = 15  # failures listed per row in the JSON


@dataclass(frozen=True)
class Options:
    """The run's knobs (the command line's, see --help)."""

    quick: bool
    fuzz_examples: int
    rps: float
    k: int
    slow_clients: int
    slow_seconds: float
    header_timeout: float
    normal_every: float
    body_megabytes: int
    burst: int
    kill_rounds: int
    swap_seconds: float
    poll_seconds: float
    seed: int


@dataclass(frozen=True)
class World:
    """The dataset, the base artifact, the recipe and the token every row starts from."""

    root: Path
    data_dir: Path
    artifact: Path
    recipe: Path
    token: str
    users: list[str]
    items: list[str]


@dataclass
class Row:
    """One line of the report; ``failures`` lists the first answers that were wrong and
    ``five_xx_examples`` the first 5xx answers."""

    test: str
    tried: int = 0
    failed: int = 0
    five_xx: int = 0
    seconds: float = 0.0
    notes: str = ""
    failures: list[str] = field(default_factory=list)
    five_xx_examples: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def count(self, status: int, problem: str, what: str) -> None:
        """One request (or check): its status and what was wrong ("" when nothing)."""
        self.tried += 1
        shown = f"{what}: {problem or f'status {status}'}"[:300]
        if status >= 500:
            self.five_xx += 1
            if len(self.five_xx_examples) < 5:
                self.five_xx_examples.append(shown)
        if problem:
            self.failed += 1
            if len(self.failures) < MAX_LISTED:
                self.failures.append(shown)


# --- the world ---------------------------------------------------------------------------------


def write_dataset(path: Path, seed: int) -> None:
    """Users and items in 4 clusters; each user picks 12 items of its own cluster and 2 others
    (the clustered data of tests/conftest.py, as a ``user item`` file)."""
    rng = np.random.default_rng(seed)
    num_users, num_items, clusters = 120, 80, 4
    lines = []
    for user in range(num_users):
        own = [i for i in range(num_items) if i % clusters == user % clusters]
        other = [i for i in range(num_items) if i % clusters != user % clusters]
        chosen = [*rng.choice(own, 12, replace=False), *rng.choice(other, 2, replace=False)]
        lines += [f"u{user} i{item}" for item in chosen]
    path.write_text("\n".join(lines) + "\n")


def build_world(root: Path, seed: int) -> World:
    """Dataset, trained and exported base artifact (d_max 16, 30 batches), recipe and token."""
    import torch

    from ciess_core.artifact.export import ExportMetadata, ExportOptions, export_model
    from ciess_core.data import Phase, load_pairs, split_per_user
    from ciess_core.models import BackboneConfig, BackboneKind, build_backbone
    from ciess_core.training import TrainConfig, train_bpr

    torch.set_num_threads(1)
    data_dir = root / "data"
    data_dir.mkdir(parents=True)
    write_dataset(data_dir / DATASET_FILE, seed)
    data = load_pairs(data_dir / DATASET_FILE)
    split = split_per_user(data, seed=42)
    train, _ = split.phase(Phase.TEST)
    config = BackboneConfig.default_for(BackboneKind.LIGHTGCN, max_size=16, num_layers=2)
    model = build_backbone(config, train, torch.Generator().manual_seed(seed))
    train_bpr(
        model, train, TrainConfig(batch_size=256, max_batches=30, eval_every=0), progress=False
    )
    artifact = export_model(
        model,
        train,
        split.external_user_ids,
        split.external_item_ids,
        root / "base" / "v1-base",
        ExportMetadata(
            dataset=DATASET_FILE,
            dataset_fingerprint=data.fingerprint(),
            split_seed=42,
            size_scheme="full",
            metrics={"protocol": "clean", "test": {"recall@20": 0.0}},
        ),
        ExportOptions(verify_users=16, threads=1),
    )
    recipe = root / "tiny-recipe.toml"
    recipe.write_text(TINY_RECIPE)
    return World(
        root=root,
        data_dir=data_dir,
        artifact=artifact,
        recipe=recipe,
        token=secrets.token_hex(20),
        users=[str(u) for u in split.external_user_ids],
        items=[str(i) for i in split.external_item_ids],
    )


# --- servers -----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((cases.HOST, 0))
        return int(probe.getsockname()[1])


def _limit_files(count: int) -> Callable[[], None]:
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (count, count))

    return limit


class Service:
    """``ciess serve`` in a session of its own on a free loopback port, its output in a log file;
    stopped (SIGTERM to its group, SIGKILL after 30 s) by :meth:`stop` or on leaving ``with``."""

    def __init__(
        self,
        world: World,
        state_dir: Path,
        options: Options,
        *,
        workers: int = 1,
        job_worker: bool = True,
        access_log: bool = False,
        open_files: int | None = None,
        recipe: Path | None = None,
        environment: dict[str, str] | None = None,
    ) -> None:
        self.port = free_port()
        self.log_path = state_dir.parent / f"{state_dir.name}-serve.log"
        command = [
            sys.executable, "-m", "ciess_core.cli", "serve",
            "--port", str(self.port), "--workers", str(workers),
        ]  # fmt: skip
        command += [] if job_worker else ["--no-worker"]
        command += [] if access_log else ["--no-access-log"]
        variables = {k: v for k, v in os.environ.items() if not k.startswith("CIESS_")}
        variables.update(
            OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(ROOT),
            CIESS_STATE_DIR=str(state_dir), CIESS_ARTIFACT_DIR=str(world.artifact),
            CIESS_DATA_DIR=str(world.data_dir), CIESS_ADMIN_TOKEN=world.token,
            CIESS_RECIPE_FILE=str(recipe or world.recipe), CIESS_JOB_METHOD="search",
            CIESS_POLL_SECONDS=str(options.poll_seconds), CIESS_SCORER_THREADS="1",
        )  # fmt: skip
        variables.update(environment or {})
        self.command = command
        self.environment = {k: v for k, v in variables.items() if k.startswith("CIESS_")}
        self._arguments = (command, variables, open_files)
        self.process: subprocess.Popen[bytes] | None = None
        self.server_errors = 0  # 5xx answers to get() and post()

    def start(self, ready_timeout: float = 90.0) -> Service:
        command, variables, open_files = self._arguments
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command,
                env=variables,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_limit_files(open_files) if open_files else None,
            )
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ciess serve exited: {self.log_tail()}")
            if self.get("/readyz", timeout=5).status == 200:
                return self
            time.sleep(0.2)
        raise RuntimeError(f"ciess serve not ready after {ready_timeout} s: {self.log_tail()}")

    def stop(self) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    def __enter__(self) -> Service:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_tail(self, chars: int = 2000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def get(self, target: str, token: str | None = None, timeout: float = 30.0) -> cases.Answer:
        headers = cases.bearer(token) if token else ()
        return self._counted(cases.send(self.port, "GET", target, headers, timeout=timeout))

    def post(self, target: str, value: Any, token: str | None = None) -> cases.Answer:
        headers = (*cases.JSON, *(cases.bearer(token) if token else ()))
        body = json.dumps(value).encode()
        return self._counted(cases.send(self.port, "POST", target, headers, body))

    def _counted(self, answer: cases.Answer) -> cases.Answer:
        self.server_errors += answer.status >= 500
        return answer

    def job_workers(self) -> list[int]:
        """Pids of the job workers this ``ciess serve`` started (from /proc)."""
        wanted = ["--parent-pid", str(self.pid)]
        found = []
        for process in _processes():
            arguments = process[2]
            if "service.jobs.worker" in arguments and _contains(arguments, wanted):
                found.append(process[0])
        return found

    def rss_megabytes(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0


def _contains(values: list[str], run: list[str]) -> bool:
    return any(values[i : i + len(run)] == run for i in range(len(values)))


def _processes() -> Iterator[tuple[int, int, list[str], str]]:
    """(pid, parent pid, arguments, state) of every process readable in /proc."""
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            arguments = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        yield int(entry.name), int(fields[1]), arguments, fields[0]


def _alive(pid: int) -> bool:
    return any(p == pid and state != "Z" for p, _, _, state in _processes())


def wait_for(condition: Callable[[], Any], timeout: float, every: float = 0.1) -> Any:
    """``condition()``'s first true value within ``timeout`` seconds, else None."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value or time.monotonic() > deadline:
            return value or None
        time.sleep(every)


def wait_job(service: Service, token: str, job_id: int, states: set[str], timeout: float) -> dict:
    """The job once its state is in ``states`` (or as it stands after ``timeout`` seconds)."""
    last: dict[str, Any] = {}

    def reached() -> bool:
        nonlocal last
        answer = service.get(f"/v1/admin/jobs/{job_id}", token)
        last = answer.json() if answer.status == 200 else {"state": f"HTTP {answer.status}"}
        return last.get("state") in states

    wait_for(reached, timeout, every=0.1)
    return last


@dataclass(frozen=True)
class Context:
    world: World
    options: Options
    work: Path

    def state(self, name: str) -> Path:
        """A fresh state folder for one server of a row."""
        return Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self.work)) / "state"


# --- rows: schema fuzzing and bad input --------------------------------------------------------


def _schemathesis(ctx: Context, service: Service, admin: bool) -> tuple[dict[str, Any], str]:
    """Run schemathesis's CLI; returns its NDJSON events' tally and the command (token hidden)."""
    report = service.log_path.with_suffix(".ndjson")
    config = ctx.work / "schemathesis.toml"
    config.write_text(SCHEMATHESIS_CONFIG)
    command = [
        sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "run",
        f"http://{cases.HOST}:{service.port}/openapi.json", "--checks", SCHEMATHESIS_CHECKS,
        "--max-examples", str(ctx.options.fuzz_examples), "--continue-on-failure",
        "--workers", "1", "--seed", str(ctx.options.seed), "--no-color",
        "--request-timeout", "30", "--report", "ndjson", "--report-ndjson-path", str(report),
    ]  # fmt: skip
    if admin:
        command += ["--header", f"Authorization: Bearer {ctx.world.token}"]
    # Run in the row's folder: schemathesis keeps the failures it found in ./.schemathesis and
    # replays them first in later runs; each run starts from none, and the repository stays clean.
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        check=False,
        timeout=1800,
        cwd=service.log_path.parent,
    )
    tally = _read_ndjson(report)
    tally["exit_code"] = done.returncode
    tally["summary"] = [
        line for line in done.stdout.splitlines() if re.match(r"^\s+\d+ generated|^\s+❌", line)
    ]
    shown = shlex.join(["schemathesis", *command[3:]])
    shown = shown.replace(ctx.world.token, "$TOKEN").replace(str(config), "reliability.toml")
    shown = shown.replace(f"{cases.HOST}:{service.port}", f"{cases.HOST}:PORT")
    return tally, shown.replace(str(report), "report.ndjson")


def _read_ndjson(path: Path) -> dict[str, Any]:
    """Requests, 5xx answers and failed cases (with their checks) from schemathesis's events."""
    requests, five_xx, statuses = 0, 0, {}
    failed: list[str] = []
    for line in path.read_text().splitlines():
        event = json.loads(line)
        finished = event.get("ScenarioFinished")
        if finished is None:
            continue
        recorder = finished["recorder"]
        for case_id, interaction in recorder.get("interactions", {}).items():
            response = interaction.get("response") or {}
            status = int(response.get("status_code", 0))
            requests += 1
            five_xx += status >= 500
            statuses[status] = statuses.get(status, 0) + 1
            broken = [
                check["name"]
                for check in recorder.get("checks", {}).get(case_id, [])
                if check["status"] == "failure"
            ]
            if broken:
                request = interaction["request"]
                body = request.get("body") or {}
                text = base64.b64decode(body["$base64"]) if "$base64" in body else b""
                shown = f" body {text[:160].decode(errors='replace')}" if text else ""
                failed.append(
                    f"{request['method']} /{request['uri'].split('/', 3)[-1][:120]}{shown} -> "
                    f"{status} ({', '.join(broken)})"
                )
    return {"requests": requests, "five_xx": five_xx, "statuses": statuses, "failed": failed}


def _send_cases(row: Row, port: int, to_send: list[cases.Case]) -> None:
    for case in to_send:
        answer = case.send(port)
        problem = ""
        if answer.status != case.expect:
            problem = f"got {answer.status or answer.error}, intended {case.expect}"
        elif answer.status >= 400 and len(answer.body) > cases.MAX_ERROR_BODY_BYTES:
            problem = f"error body of {len(answer.body)} bytes"
        row.count(answer.status, problem, case.name)


def row_schema_fuzz(ctx: Context, admin: bool) -> Row:
    row = Row("schema-fuzz-admin" if admin else "schema-fuzz-no-token")
    with Service(ctx.world, ctx.state(row.test), ctx.options, job_worker=False) as service:
        spec = service.get("/openapi.json").json()
        tally, command = _schemathesis(ctx, service, admin)
        row.tried, row.five_xx = tally["requests"], tally["five_xx"]
        row.failed = len(tally["failed"])
        row.failures = tally["failed"][:MAX_LISTED]
        injected = cases.number_injections(spec, admin, ctx.world.token, ctx.world.users[0])
        _send_cases(row, service.port, injected)
    operations = sum(len(methods) for methods in spec["paths"].values())
    row.notes = (
        f"{operations} operations; schemathesis {tally['requests']} requests "
        f"({', '.join(f'{s}: {n}' for s, n in sorted(tally['statuses'].items()))}), "
        f"{len(tally['failed'])} failing its checks; then {len(injected)} requests with "
        "NaN/Infinity/1e400/huge integers in every number field and parameter. "
        + ("With" if admin else "Without")
        + " the admin token; no job worker (budget jobs stay queued, 429 past the queue limit)."
    )
    row.details = {"schemathesis_command": command, "schemathesis": tally | {"failed": None}}
    return row


def row_bad_input(ctx: Context) -> Row:
    row = Row("bad-input")
    world, token = ctx.world, ctx.world.token
    service = Service(world, ctx.state(row.test), ctx.options, job_worker=False, access_log=True)
    with service:
        queued = service.post("/v1/admin/budget", {"target_sparsity": 0.5}, token).json()
        service.post(f"/v1/admin/jobs/{queued['id']}/cancel", {}, token)
        suite = cases.bad_input_cases(
            cases.World(world.users[0], tuple(world.items), token, queued["id"])
        )
        _send_cases(row, service.port, suite)
        alive = service.get(f"/v1/users/{world.users[0]}/recommendations?k=5")
        row.count(alive.status, "" if alive.status == 200 else "server unwell after", "top-k after")
    logged = token in service.log_path.read_text(errors="replace")
    row.count(0, "the admin token is in the server's log" if logged else "", "log check")
    row.notes = (
        f"{len(suite)} hand-written cases (bench/reliability_cases.py), each with one intended "
        "status; an error body over 8 KiB also fails. Then a valid top-k (200), and the server's "
        "log (access log on) must not hold the admin token sent in query strings."
    )
    row.details = {"cases": [(case.name, case.expect) for case in suite]}
    return row


# --- rows: hot swap under load -----------------------------------------------------------------


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else 0.0


def row_hot_swap(ctx: Context, workers: int) -> Row:
    """Open-loop top-k across a budget job and its swap; answers due ``grace`` seconds after the
    job succeeded must carry the new version."""
    name = "hot-swap-1-process" if workers == 1 else "hot-swap-2-processes"
    row = Row(name)
    world, options = ctx.world, ctx.options
    grace = 2 * options.poll_seconds + 5.0
    with Service(world, ctx.state(name), options, workers=workers) as service:
        old = service.get("/v1/model").json()["version"]
        load = cases.OpenLoop(service.port, world.users, options.k, options.rps).start()
        try:
            time.sleep(2.0)
            posted = service.post("/v1/admin/budget", {"target_sparsity": 0.5}, world.token)
            posted_at = load.elapsed()
            row.count(0, "" if posted.status == 202 else f"status {posted.status}", "budget post")
            job = wait_job(service, world.token, posted.json().get("id", 0), _FINISHED, 300)
            finished_at = load.elapsed()
            new = job.get("artifact_version") or ""
            ok = job.get("state") == "succeeded"
            row.count(0, "" if ok else f"job {job.get('state')}: {job.get('message')}", "job")

            def switched() -> bool:
                recent = [s.version for s in load.samples[-int(options.rps) :]]
                return bool(recent) and all(version == new for version in recent)

            wait_for(switched, grace + 10)
            time.sleep(max(3.0, options.swap_seconds - load.elapsed()))
        finally:
            samples = load.stop()
    row.five_xx += service.server_errors
    for sample in samples:
        problem = sample.problem
        if not problem and sample.due > finished_at + grace and sample.version != new:
            problem = f"old version {sample.version} {sample.due - finished_at:.1f} s after the job"
        row.count(sample.status, problem, f"top-k due at {sample.due:.2f} s")
    first_new = next((s.due for s in samples if s.version == new), None)
    last_old = max((s.due for s in samples if s.version == old), default=None)
    latencies = [1e3 * s.latency for s in samples if s.status]
    slow = [s.due for s in samples if s.latency > 0.1]
    job_seconds = (job.get("finished_at") or 0) - (job.get("started_at") or 0)
    row.notes = (
        f"{workers} API process(es) + job worker; {options.rps:g} req/s single-user top-{options.k}"
        f" for {samples[-1].due if samples else 0:.1f} s ({len(samples)} requests) across a 'search' budget job "
        f"(tiny recipe, {job_seconds:.1f} s, {job.get('state')}). X-Model-Version {old} → {new}: "
        f"first new answer {_relative(first_new, finished_at)} the job's end, last old answer "
        f"{_relative(last_old, finished_at)} it. Latency p50 "
        f"{_percentile(latencies, 50):.1f} ms, p99 {_percentile(latencies, 99):.1f} ms, max "
        f"{max(latencies, default=0):.1f} ms; {len(slow)} answers over 100 ms"
        + (
            f", due {_relative(min(slow), posted_at)} to {_relative(max(slow), posted_at)} the "
            "budget post"
            if slow
            else ""
        )
        + ". Also counted: the budget post (202) and the job's success."
    )
    row.details = {
        "old_version": old,
        "new_version": new,
        "job_seconds": round(job_seconds, 2),
        "first_new_after_job_s": None if first_new is None else round(first_new - finished_at, 3),
        "last_old_after_job_s": None if last_old is None else round(last_old - finished_at, 3),
        "p50_ms": round(_percentile(latencies, 50), 2),
        "p99_ms": round(_percentile(latencies, 99), 2),
        "max_ms": round(max(latencies, default=0), 2),
        "budget_posted_at_s": round(posted_at, 3),
        "job_finished_at_s": round(finished_at, 3),
        "over_100ms_due_at_s": [round(due, 2) for due in slow[:50]],
    }
    return row


_FINISHED = {"succeeded", "failed", "cancelled"}


def _relative(moment: float | None, reference: float) -> str:
    if moment is None:
        return "never"
    offset = moment - reference
    return f"{abs(offset):.2f} s {'after' if offset >= 0 else 'before'}"


# --- rows: faults ------------------------------------------------------------------------------


def _readiness(service: Service) -> tuple[int, int]:
    """(HTTP status, job workers) of /readyz."""
    answer = service.get("/readyz", timeout=5)
    workers = answer.json()["jobs"]["workers"] if answer.status in (200, 503) else -1
    return answer.status, workers


def _workers_gauge(service: Service) -> float:
    answer = service.get("/metrics", timeout=5)
    match = re.search(rb"^ciess_job_workers (\S+)$", answer.body, re.MULTILINE)
    return float(match.group(1)) if match else -1.0


def _start_long_job(ctx: Context, service: Service, recipe: Path, target: float) -> int:
    """Post a budget whose job trains until killed; return its id once it is training."""
    token = ctx.world.token
    recipe.write_text(LONG_RECIPE)  # read by the job's process when it starts
    job_id = int(service.post("/v1/admin/budget", {"target_sparsity": target}, token).json()["id"])

    def training() -> bool:  # past its start: the stage it reports after loading its data
        job = service.get(f"/v1/admin/jobs/{job_id}", token).json()
        return job["state"] == "running" and job["stage"] not in ("queued", "starting")

    wait_for(training, 60)
    time.sleep(1.0)
    return job_id


def _kill_round(ctx: Context, service: Service, recipe: Path, row: Row, round_: int) -> None:
    """One kill: a job that trains until killed, its worker killed, then the four checks."""
    token, label = ctx.world.token, f"round {round_ + 1}"
    job_id = _start_long_job(ctx, service, recipe, 0.3 + 0.2 * round_)
    workers = service.job_workers()
    if len(workers) != 1:
        row.count(0, f"job workers found: {workers}", f"{label}: the worker to kill")
        return
    worker = workers[0]
    job_processes = [pid for pid, parent, _, _ in _processes() if parent == worker]
    os.kill(worker, signal.SIGKILL)
    killed = time.monotonic()
    job = wait_job(service, token, job_id, _FINISHED, 5.0)
    failed_in = time.monotonic() - killed
    ok = job.get("state") == "failed" and failed_in <= 5.0
    problem = f"job {job.get('state')} {failed_in:.1f} s after the kill ({job.get('message')})"
    row.count(0, "" if ok else problem, f"{label}: job failed within 5 s")

    def replaced() -> bool:
        fresh = [pid for pid in service.job_workers() if pid != worker]
        return bool(fresh) and _readiness(service)[1] >= 1 and _workers_gauge(service) >= 1

    up = wait_for(replaced, 10.0, every=0.1)
    up_in = time.monotonic() - killed
    problem = "no new worker in /readyz and ciess_job_workers"
    row.count(0, "" if up else problem, f"{label}: new worker within 10 s")
    gone = wait_for(lambda: not any(_alive(pid) for pid in job_processes), 10.0)
    problem = f"job process(es) {job_processes} still running"
    row.count(0, "" if gone else problem, f"{label}: job process gone within 10 s")
    recipe.write_text(TINY_RECIPE)
    posted = service.post("/v1/admin/budget", {"target_sparsity": 0.4 + 0.2 * round_}, token)
    done = wait_job(service, token, posted.json().get("id", 0), _FINISHED, 180)
    problem = f"next job {done.get('state')}: {done.get('message')}"
    row.count(0, "" if done.get("state") == "succeeded" else problem, f"{label}: next job")
    next_seconds = (done.get("finished_at") or 0) - (done.get("started_at") or 0)
    row.details.setdefault("rounds", []).append(
        {
            "job_failed_after_s": round(failed_in, 2),
            "new_worker_after_s": round(up_in, 2),
            "failure_message": job.get("message"),
            "job_processes_of_the_worker": len(job_processes),
            "next_job_seconds": round(next_seconds, 1),
        }
    )


def row_worker_killed(ctx: Context) -> Row:
    row = Row("worker-killed")
    recipe = ctx.work / "worker-killed-recipe.toml"
    recipe.write_text(TINY_RECIPE)
    with Service(ctx.world, ctx.state(row.test), ctx.options, recipe=recipe) as service:
        if not wait_for(lambda: _readiness(service)[1] >= 1, 30):
            row.count(0, "no job worker at start", "worker up")
        for round_ in range(ctx.options.kill_rounds):
            _kill_round(ctx, service, recipe, row, round_)
    row.five_xx += service.server_errors
    rounds = row.details.get("rounds", [])
    row.notes = (
        f"{len(rounds)} round(s) of: budget job (training until killed) running, kill -9 of its "
        "worker (pid from /proc: the child of ciess serve), then 4 checks (tried counts checks): "
        "job failed ≤ 5 s, new worker in /readyz jobs.workers and ciess_job_workers ≤ 10 s, the "
        "job's own process gone ≤ 10 s, the next job ('search', tiny recipe) succeeded. "
        + "; ".join(
            f"round {i + 1}: failed after {r['job_failed_after_s']} s, new worker after "
            f"{r['new_worker_after_s']} s, next job {r['next_job_seconds']} s"
            for i, r in enumerate(rounds)
        )
        + "."
    )
    return row


def _flip_bytes(path: Path) -> None:
    data = bytearray(path.read_bytes())
    for index in range(len(data) - 64, len(data)):  # the values, past the .npy header
        data[index] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _absurd_values(artifact: Path) -> None:
    """Every value 3e30, the manifest's hash and size of the file fixed to match."""
    import hashlib

    path = artifact / "tables" / "embedding" / "values.npy"
    values = np.load(path)
    np.save(path, np.full_like(values, 3e30))
    manifest_path = artifact / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    for entry in manifest["files"]:
        if entry["path"] == "tables/embedding/values.npy":
            entry["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
            entry["bytes"] = path.stat().st_size
    manifest_path.write_text(json.dumps(manifest, indent=1))


def _check_fallback(
    service: Service, row: Row, users: list[str], good: str, bad: str, what: str
) -> None:
    """After a restart on a bad pointer: /readyz, /v1/model and top-k from ``good``."""
    ready = service.get("/readyz")
    served = ready.json().get("model_version") if ready.status == 200 else None
    row.count(
        ready.status,
        "" if served == good else f"readyz {ready.status}, serves {served}",
        f"{what}: /readyz",
    )
    model = service.get("/v1/model")
    info = model.json() if model.status == 200 else {}
    fallback = (info.get("fallback_from") or {}).get("version")
    problem = "" if (info.get("version"), fallback) == (good, bad) else (
        f"status {model.status}, version {info.get('version')}, fallback_from {fallback}"
    )  # fmt: skip
    row.count(model.status, problem, f"{what}: /v1/model")
    for user in users[:10]:
        answer = service.get(f"/v1/users/{user}/recommendations?k=5")
        problem = cases.top_k_problem(answer.status, answer.headers, answer.body, user, 5)
        if not problem and answer.headers.get("x-model-version") != good:
            problem = f"served by {answer.headers.get('x-model-version')}"
        row.count(answer.status, problem, f"{what}: top-k {user}")


def row_restart_bad_pointer(ctx: Context) -> Row:
    row = Row("restart-bad-pointer")
    world, token = ctx.world, ctx.world.token
    state = ctx.state(row.test)
    kept = {
        name: state / "artifacts" / name
        for name in ("kept-good", "kept-flipped", "kept-truncated", "kept-absurd")
    }
    for directory in kept.values():
        shutil.copytree(world.artifact, directory)
    service = Service(world, state, ctx.options, job_worker=False)
    with service:
        for name in kept:  # promoted in this order: the history start-up falls back through
            answer = service.post(f"/v1/admin/models/{name}/promote", {}, token)
            row.count(
                answer.status,
                "" if answer.status == 200 else f"status {answer.status}",
                f"promote {name}",
            )
    _flip_bytes(kept["kept-flipped"] / "tables" / "embedding" / "values.npy")
    _truncate(kept["kept-truncated"] / "tables" / "embedding" / "sizes.npy")
    _absurd_values(kept["kept-absurd"])
    pointers = [
        ("values.npy bytes flipped", kept["kept-flipped"], "kept-flipped"),
        ("sizes.npy truncated", kept["kept-truncated"], "kept-truncated"),
        ("values 3e30, hashes recomputed", kept["kept-absurd"], "kept-absurd"),
        ("pointer to a missing folder", state / "artifacts" / "vanished", "vanished"),
        ("current.json not JSON", None, "current.json"),
    ]
    if ctx.options.quick:
        pointers = pointers[:1]
    started = []
    for what, target, failed_version in pointers:
        pointer = state / "current.json"
        if target is None:
            pointer.write_text("{not json")
        else:
            body = {"path": str(target), "version": target.name, "job_id": None, "at": time.time()}
            pointer.write_text(json.dumps(body) + "\n")
        before = time.perf_counter()
        try:
            service.start(ready_timeout=60)
        except RuntimeError as error:
            row.count(0, f"no start: {str(error)[-200:]}", what)
            continue
        started.append(time.perf_counter() - before)
        try:
            _check_fallback(service, row, world.users, "kept-good", failed_version, what)
        finally:
            service.stop()
    row.five_xx = max(row.five_xx, service.server_errors)
    row.notes = (
        "4 copies of the base artifact promoted through POST /v1/admin/models/{v}/promote "
        "(kept-good first), 3 then damaged; each restart with current.json at a bad target must "
        "serve kept-good (the newest promoted version that loads): /readyz, /v1/model with "
        "fallback_from = the bad version, 10 top-k answers from kept-good. Restarts: "
        + ", ".join(what for what, _, _ in pointers)
        + f"; ready after {', '.join(f'{s:.1f}' for s in started)} s."
    )
    return row


# --- rows: hostile clients ---------------------------------------------------------------------


def _open_files(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


async def _slow_attack(ctx: Context, service: Service, row: Row) -> cases.SlowStats:
    """The slow clients and, meanwhile, one normal top-k request every ``normal_every`` seconds
    on a new connection, each allowed twice the header timeout plus 5 s."""
    options = ctx.options
    loop = asyncio.get_running_loop()
    stop_at = loop.time() + options.slow_seconds
    stats = cases.SlowStats()

    async def staggered(index: int) -> None:
        await asyncio.sleep(index * 0.002)
        await cases.slow_client(port, stop_at, stats, drip=1.0, pause=1.0)

    port = service.port
    # An operator's connection, open before the attack: admin and readiness calls on it.
    operator = asyncio.create_task(cases.operator_calls(port, ctx.world.token, stop_at))
    attackers = [asyncio.create_task(staggered(i)) for i in range(options.slow_clients)]
    timeout = 2 * options.header_timeout + 5
    normal = []
    index = 0
    most_files = 0
    while loop.time() < stop_at:
        most_files = max(most_files, _open_files(service.pid))
        user = ctx.world.users[index % len(ctx.world.users)]
        target = f"/v1/users/{user}/recommendations?k={options.k}"
        sent = options.slow_seconds - (stop_at - loop.time())
        normal.append((user, sent, asyncio.create_task(cases.timed_get(port, target, timeout))))
        index += 1
        await asyncio.sleep(options.normal_every)
    latencies = []
    for user, sent, task in normal:
        answer = await task
        latencies.append(answer.seconds)
        problem = answer.error or cases.top_k_problem(
            answer.status, answer.headers, answer.body, user, options.k
        )
        if problem:
            problem += f" after {answer.seconds:.2f} s"
        row.count(answer.status, problem, f"normal top-k {user} sent at {sent:.2f} s")
    calls = await operator
    for target, sent, status, problem in calls:
        row.count(status, problem, f"keep-alive {target} sent at {sent:.2f} s")
    row.details["normal_failed"] = (
        f"{sum(1 for *_, t in normal if t.result().status != 200)} of {len(normal)}"
    )
    row.details["keep_alive_failed"] = f"{sum(1 for *_, p in calls if p)} of {len(calls)}"
    await asyncio.gather(*attackers)
    row.details["server_open_files_max"] = most_files
    row.details["normal_p50_s"] = round(_percentile(latencies, 50), 3)
    row.details["normal_max_s"] = round(max(latencies, default=0), 3)
    return stats


def row_slow_clients(ctx: Context) -> Row:
    row = Row("slow-clients")
    options = ctx.options
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = min(hard, max(soft, options.slow_clients + 512))
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    environment = {"CIESS_HEADER_TIMEOUT_SECONDS": f"{options.header_timeout:g}"}
    service = Service(
        ctx.world, ctx.state(row.test), options, job_worker=False, open_files=1024,
        environment=environment,
    )  # fmt: skip
    try:
        with service:
            stats = asyncio.run(_slow_attack(ctx, service, row))
            after = service.get(f"/v1/users/{ctx.world.users[0]}/recommendations?k=5")
            row.count(
                after.status, "" if after.status == 200 else f"status {after.status}", "top-k after"
            )
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    lifetimes = stats.lifetimes
    row.notes = (
        f"ciess serve (1 process) under ulimit -n 1024, CIESS_HEADER_TIMEOUT_SECONDS="
        f"{options.header_timeout:g} (default 10); {options.slow_clients} slow clients for "
        f"{options.slow_seconds:g} s, each sending a header line a second and never ending its "
        f"headers, reconnecting 1 s after the server closes it: {stats.opened} connections opened, "
        f"{stats.most_open} open at once at most, {stats.closed_by_server} closed by the server "
        f"(server's open files up to {row.details['server_open_files_max']}) "
        f"(median life {_percentile(lifetimes, 50):.1f} s), {stats.refused} refused. Normal "
        f"top-k on a new connection every {options.normal_every:g} s (timeout "
        f"{2 * options.header_timeout + 5:g} s): p50 {row.details['normal_p50_s']} s, max "
        f"{row.details['normal_max_s']} s (the answered ones), {row.details['normal_failed']} "
        "failed; then one more after the attack. Also counted: GET /v1/admin/jobs and /readyz "
        "once a second on a keep-alive connection opened before: "
        f"{row.details['keep_alive_failed']} failed."
    )
    row.details.update(asdict(stats) | {"lifetimes": None})
    return row


def row_huge_body(ctx: Context) -> Row:
    row = Row("huge-body")
    total = ctx.options.body_megabytes * 1_000_000
    with Service(ctx.world, ctx.state(row.test), ctx.options, job_worker=False) as service:
        rss_before = service.rss_megabytes()
        timings = []
        for target, chunked in (
            ("/v1/recommendations", False),
            ("/v1/admin/budget", False),
            ("/v1/recommendations", True),
            ("/v1/admin/budget", True),
        ):
            framing = (
                ("Transfer-Encoding", "chunked") if chunked else ("Content-Length", str(total))
            )
            head = cases.request_bytes(service.port, "POST", target, (*cases.JSON, framing))
            answer, seconds, sent = cases.stream_body(service.port, head, total, chunked)
            timings.append((seconds, sent))
            problem = "" if answer.status == 413 and seconds <= 1.0 else (
                f"{answer.status or answer.error} after {seconds:.2f} s"
            )  # fmt: skip
            how = "chunked" if chunked else "Content-Length"
            row.count(answer.status, problem, f"{target} ({how}, no token)")
        rss_after = service.rss_megabytes()
        after = service.get(f"/v1/users/{ctx.world.users[0]}/recommendations?k=5")
        row.count(
            after.status, "" if after.status == 200 else f"status {after.status}", "top-k after"
        )
    row.notes = (
        f"{ctx.options.body_megabytes} MB bodies streamed (256 KiB writes until the answer) to "
        "POST /v1/recommendations and POST /v1/admin/budget without the token, declared by "
        "Content-Length and chunked; intended 413 within 1 s (before authentication). Answered "
        f"after {', '.join(f'{s * 1e3:.0f} ms ({b / 1e6:.1f} MB sent)' for s, b in timings)}; "
        f"server RSS {rss_before:.0f} → {rss_after:.0f} MB; then a valid top-k."
    )
    return row


def row_concurrent_budgets(ctx: Context) -> Row:
    row = Row("concurrent-identical-budgets")
    token, count = ctx.world.token, ctx.options.burst
    body = json.dumps({"target_sparsity": 0.5}).encode()
    recipe = ctx.work / "concurrent-recipe.toml"
    recipe.write_text(LONG_RECIPE)  # the job runs until cancelled: the second burst finds it
    service = Service(ctx.world, ctx.state(row.test), ctx.options, workers=2, recipe=recipe)
    with service:
        data = cases.request_bytes(
            service.port, "POST", "/v1/admin/budget", (*cases.JSON, *cases.bearer(token)), body
        )
        first = asyncio.run(cases.burst(service.port, data, count))
        creator = next((i for i, answer in enumerate(first) if answer.status == 202), None)
        job_id = None if creator is None else first[creator].json()["id"]
        for index, answer in enumerate(first):
            ident = answer.json().get("id") if answer.status in (200, 202) else None
            intended = 202 if index == creator else 200
            problem = "" if (answer.status, ident) == (intended, job_id) else (
                f"status {answer.status or answer.error}, job {ident}, intended {intended} with job {job_id}"
            )  # fmt: skip
            row.count(answer.status, problem, f"burst 1 post {index}")
        running = wait_job(service, token, job_id or 0, {"running", *_FINISHED}, 30)
        second = asyncio.run(cases.burst(service.port, data, count))
        for index, answer in enumerate(second):
            ident = answer.json().get("id") if answer.status in (200, 202) else None
            problem = "" if (answer.status, ident) == (200, job_id) else (
                f"status {answer.status or answer.error}, job {ident}, intended 200 with job {job_id}"
            )  # fmt: skip
            row.count(answer.status, problem, f"burst 2 post {index}")
        jobs = service.get("/v1/admin/jobs", token).json()["jobs"]
        row.count(0, "" if len(jobs) == 1 else f"{len(jobs)} jobs in the store", "one job stored")
        if job_id:
            service.post(f"/v1/admin/jobs/{job_id}/cancel", {}, token)
    row.five_xx += service.server_errors
    row.notes = (
        f"ciess serve --workers 2 with the job worker (the job trains until cancelled); {count} connections opened, then the same "
        'budget ({"target_sparsity": 0.5}) written on all at once: intended one 202 and '
        f"{count - 1} × 200 with its id; {count} more while that job runs (state "
        f"{running.get('state')} when sent): 200 with the same id; then GET /v1/admin/jobs must "
        f"list one job. Answered in {max(a.seconds for a in first):.2f} s and "
        f"{max(a.seconds for a in second):.2f} s."
    )
    return row


# --- the report --------------------------------------------------------------------------------

RUNNERS: dict[str, Callable[[Context], Row]] = {
    "schema-fuzz-no-token": lambda ctx: row_schema_fuzz(ctx, admin=False),
    "schema-fuzz-admin": lambda ctx: row_schema_fuzz(ctx, admin=True),
    "bad-input": row_bad_input,
    "hot-swap-1-process": lambda ctx: row_hot_swap(ctx, workers=1),
    "hot-swap-2-processes": lambda ctx: row_hot_swap(ctx, workers=2),
    "worker-killed": row_worker_killed,
    "restart-bad-pointer": row_restart_bad_pointer,
    "slow-clients": row_slow_clients,
    "huge-body": row_huge_body,
    "concurrent-identical-budgets": row_concurrent_budgets,
}


def run_row(ctx: Context, name: str) -> Row:
    """One row, timed; an exception is a failed row that says what went wrong."""
    started = time.perf_counter()
    try:
        row = RUNNERS[name](ctx)
    except Exception as error:  # a broken row must not lose the others
        row = Row(name, tried=1, failed=1, notes=f"the row did not finish: {error!r}"[:500])
    row.seconds = round(time.perf_counter() - started, 1)
    return row


def _markdown(report: dict[str, Any], notes: Path) -> str:
    lines = [
        "# Reliability",
        "",
        f"Produced by `{report['command']}` on {report['date']} ({report['machine']}, Python "
        f"{report['python']}, schemathesis {report['schemathesis']}); JSON twin "
        "`reliability.json`, where each row also lists its first failures and details. Each row "
        "sets up its own world (a generated clustered dataset of 120 users and 80 items, a "
        "LightGCN artifact trained on it by the core, a tiny recipe for budget jobs, a "
        "40-character admin token) and runs real `ciess serve` processes on loopback ports "
        "(`CIESS_*` settings, `CIESS_POLL_SECONDS="
        f"{report['settings']['poll_seconds']:g}`), on the same 2 cores as the clients. "
        "`tried`: requests sent (checks, where the row says so); `failed`: those that did not "
        "get the intended answer; `five_xx`: answers with a 5xx status. Every row must end with "
        "`failed` 0 and `five_xx` 0. Latencies include the other jobs sharing the machine "
        f"(load average {report['load_average'][0]:.1f} at the start, "
        f"{report['load_average'][1]:.1f} at the end).",
        "",
        "Commands:",
        "",
        f"- `{report['command']}` (all rows; `--quick` for a smoke check, `--only ROW,...` for "
        "some rows, `--help` for the knobs)",
        *(
            f"- {row['test']}: `{row['details']['schemathesis_command']}`"
            for row in report["rows"]
            if "schemathesis_command" in row.get("details", {})
        ),
        "",
        "| test | tried | failed | five_xx | seconds | notes |",
        "|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        text = row["notes"].replace("|", "\\|")
        lines.append(
            f"| {row['test']} | {row['tried']:,} | {row['failed']} | {row['five_xx']} | "
            f"{row['seconds']:g} | {text} |"
        )
    older = [row for row in report["rows"] if row.get("command") != report["command"]]
    if older:
        lines += ["", "Rows this command did not run, kept from earlier runs:"]
        lines += [f"- {row['test']}: `{row.get('command')}` on {row.get('date')}" for row in older]
    lines += ["", f"The command took {report['run_seconds']:g} s in all."]
    failing = [row for row in report["rows"] if row["failures"] or row["five_xx_examples"]]
    if failing:
        lines += ["", "## Failures (the first of each row, and its first 5xx answers)", ""]
        for row in failing:
            shown = row["failures"][:8]
            shown += [e for e in row["five_xx_examples"] if e not in shown]
            lines.append(f"- `{row['test']}`:")
            lines += [f"  - {failure}" for failure in shown]
    if notes.exists():  # hand-written findings, kept apart so that regenerating keeps them
        lines += ["", "## Findings", "", notes.read_text().strip()]
    return "\n".join(lines) + "\n"


def write_report(
    rows: list[Row],
    out: Path,
    options: Options,
    command: str,
    seconds: float,
    load_at_start: float,
) -> None:
    """``out/reliability.json`` (rows of earlier runs that this one did not run are kept) and
    ``out/reliability.md`` from it."""
    from importlib.metadata import version

    path = out / "reliability.json"
    earlier = json.loads(path.read_text())["rows"] if path.exists() else []
    today = dt.date.today().isoformat()
    fresh = {row.test: asdict(row) | {"date": today, "command": command} for row in rows}
    merged = {row["test"]: row for row in earlier} | fresh
    report = {
        "rows": [merged[name] for name in ROWS if name in merged],
        "machine": cpu_description(),
        "date": today,
        "python": sys.version.split()[0],
        "schemathesis": version("schemathesis"),
        "command": command,
        "run_seconds": round(seconds, 1),
        "settings": asdict(options),
        "load_average": [round(load_at_start, 2), round(os.getloadavg()[0], 2)],
    }
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1) + "\n")
    (out / "reliability.md").write_text(_markdown(report, out / "reliability.notes.md"))


def parse_arguments(argv: list[str] | None) -> tuple[argparse.Namespace, Options]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=DefaultsHelp, prog="bench/reliability.py"
    )
    parser.add_argument("--only", help=f"comma-separated rows to run, of: {', '.join(ROWS)}")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke check: few fuzz examples, short loads, fewer slow clients and restarts; "
        "writes its report to the work folder unless --out is given",
    )
    parser.add_argument("--out", type=Path, help="report folder (default docs/benchmarks)")
    parser.add_argument("--work", type=Path, help="work folder (default: a temporary one, removed)")
    parser.add_argument(
        "--fuzz-examples", type=int, help="schemathesis --max-examples (400; quick 5)"
    )
    parser.add_argument("--rps", type=float, default=200.0, help="hot-swap request rate")
    parser.add_argument("--slow-clients", type=int, help="slow connections (1100; quick 1100)")
    parser.add_argument(
        "--slow-seconds", type=float, help="length of the slow-client attack (30; quick 10)"
    )
    parser.add_argument(
        "--header-timeout",
        type=float,
        help="CIESS_HEADER_TIMEOUT_SECONDS of slow-clients (5; quick 2)",
    )
    parser.add_argument("--body-megabytes", type=int, default=300, help="huge-body size")
    parser.add_argument("--burst", type=int, default=100, help="concurrent identical budget posts")
    parser.add_argument(
        "--swap-seconds",
        type=float,
        help="hot-swap load length at least (60; quick 12): from 2 s before the budget post to "
        "3 s past the swap, longer if this says so",
    )
    parser.add_argument("--kill-rounds", type=int, help="worker kills (2; quick 1)")
    parser.add_argument("--seed", type=int, default=1, help="dataset and schemathesis seed")
    arguments = parser.parse_args(argv)
    quick = arguments.quick

    def pick(value: Any, full: Any, short: Any) -> Any:
        return value if value is not None else (short if quick else full)

    options = Options(
        quick=quick,
        fuzz_examples=pick(arguments.fuzz_examples, 400, 5),
        rps=arguments.rps,
        k=10,
        slow_clients=pick(arguments.slow_clients, 1100, 1100),
        slow_seconds=pick(arguments.slow_seconds, 30.0, 10.0),
        header_timeout=pick(arguments.header_timeout, 5.0, 2.0),
        normal_every=0.25,
        body_megabytes=arguments.body_megabytes,
        burst=arguments.burst,
        kill_rounds=pick(arguments.kill_rounds, 2, 1),
        swap_seconds=pick(arguments.swap_seconds, 60.0, 12.0),
        poll_seconds=0.5,
        seed=arguments.seed,
    )
    return arguments, options


def main(argv: list[str] | None = None) -> int:
    arguments, options = parse_arguments(argv)
    names = ROWS if not arguments.only else tuple(arguments.only.split(","))
    unknown = [name for name in names if name not in ROWS]
    if unknown:
        raise SystemExit(f"unknown row(s) {unknown}; rows: {', '.join(ROWS)}")
    started = time.perf_counter()
    load_at_start = os.getloadavg()[0]
    work = arguments.work or Path(tempfile.mkdtemp(prefix="reliability-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"work folder {work}", flush=True)
    rows: list[Row] = []
    try:
        world = build_world(Path(tempfile.mkdtemp(prefix="world-", dir=work)), options.seed)
        ctx = Context(world, options, work)
        for name in names:
            row = run_row(ctx, name)
            rows.append(row)
            print(
                f"{row.test}: tried {row.tried}, failed {row.failed}, 5xx {row.five_xx}, "
                f"{row.seconds} s" + "".join(f"\n    {failure}" for failure in row.failures[:5]),
                flush=True,
            )
        out = arguments.out or (work / "report" if options.quick else ROOT / "docs" / "benchmarks")
        command = shlex.join(
            ["python", "bench/reliability.py", *(argv if argv is not None else sys.argv[1:])]
        )
        seconds = time.perf_counter() - started
        write_report(rows, out, options, command, seconds, load_at_start)
        print(
            f"report: {out / 'reliability.md'} ({time.perf_counter() - started:.0f} s)", flush=True
        )
    finally:
        if arguments.work is None and not options.quick:
            shutil.rmtree(work, ignore_errors=True)
    return 0 if all(row.failed == 0 and row.five_xx == 0 for row in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
