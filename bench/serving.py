"""Serving benchmark: the CIESS service against a plain FastAPI + PyTorch server, same machine.

For each dataset, an artifact (served by ``ciess serve``: onnxruntime, no torch) and the run it was
exported from (served by bench/torch_server.py: the dense PyTorch model, eager scoring) answer
``GET /v1/users/{id}/recommendations?k=20``. Each server runs at 1 and 2 uvicorn workers; the load
generator (bench/loadgen.py) is a separate process on the same machine and drives

- a closed loop (``--connections`` clients back to back): the throughput each server sustains;
- an open loop at each ``--rps`` rate: p50/p99 latency from the scheduled send time.

Before the load, both servers answer the same sample of users and their top-k lists are compared
item by item (the report gives how many are identical). With ``--fuzz``, schemathesis fuzzes the
service's OpenAPI schema (admin endpoints included, with the token) and the report records every
5xx answer it saw. Rows go to ``OUT/serving.json`` (replacing every earlier row of the same
dataset: a dataset's table is one run) and ``OUT/serving.md`` is rewritten from them.

    python bench/serving.py --data-dir ../shared/data \\
        --artifact ml-1m=bench/_work/serving/ml1m-es90-artifact --run ml-1m=bench/_work/serving/ml1m-es90 \\
        --artifact yelp2018=... --run yelp2018=... --fuzz
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.cli_help import DefaultsHelp
from bench.machine_info import cpu_description

PATH_TEMPLATE = "/v1/users/{user}/recommendations?k={k}"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _get_json(url: str, timeout: float = 10.0) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, None


class Server:
    """One server under test in its own process group."""

    def __init__(self, kind: str, command: list[str], env: dict[str, str], port: int) -> None:
        self.kind, self.port = kind, port
        self.log = tempfile.NamedTemporaryFile("w+", suffix=f"-{kind}.log", delete=False)  # noqa: SIM115
        self.process = subprocess.Popen(
            command, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.base = f"http://127.0.0.1:{port}"

    def wait_ready(self, timeout: float) -> float:
        start = time.perf_counter()
        while time.perf_counter() - start < timeout:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.kind} server exited: {self.tail()}")
            try:
                status, _ = _get_json(self.base + "/readyz", timeout=2.0)
                if status == 200:
                    return time.perf_counter() - start
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.5)
        raise RuntimeError(f"{self.kind} server not ready after {timeout} s: {self.tail()}")

    def top_k(self, users: list[str], k: int) -> dict[str, list[str]]:
        answers = {}
        for user in users:
            status, body = _get_json(self.base + PATH_TEMPLATE.format(user=user, k=k))
            if status != 200:
                raise RuntimeError(f"{self.kind}: user {user} answered {status}")
            answers[user] = [item["item_id"] for item in body["items"]]
        return answers

    def cpu_seconds(self) -> float:
        """User + system CPU of every process in the server's group (uvicorn and its workers)."""
        total, tick = 0, os.sysconf("SC_CLK_TCK")
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == self.process.pid:  # the process group id
                total += int(fields[11]) + int(fields[12])
        return total / tick

    def tail(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text()[-2000:]

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.log.close()
        Path(self.log.name).unlink(missing_ok=True)


# ``server`` names: the service as shipped (``ciess serve``); without the turn batcher; without it
# and on uvicorn's stock httptools protocol (two writes per response); without it and without the
# ASGI fast path (FastAPI's routing for every request): against ``ciess-unbatched``, each of the
# last two shows one change's share on its own. Then the PyTorch baseline. Values: the launcher's options, None for ``ciess serve`` itself;
# the variants run bench/serve_variant.py (the same app and uvicorn options, switches off).
CIESS_SERVERS: dict[str, list[str] | None] = {
    "ciess": None,
    "ciess-unbatched": ["--http", "coalescing", "--no-batching"],
    "ciess-stock-http": ["--http", "httptools", "--no-batching"],
    "ciess-no-fast-path": ["--http", "coalescing", "--no-batching", "--no-fast-path"],
}
# ``ciess serve`` as shipped on the same artifact with its tables stored again in fewer bits
# (ciess_core.artifact.requantise, what a byte budget's fast path serves).
QUANTISED_SERVERS = {"ciess-int8": "int8", "ciess-int4": "int4"}
SERVERS = (*CIESS_SERVERS, *QUANTISED_SERVERS, "torch")


def start_server(
    kind: str, artifact: Path, run: Path, data_dir: Path, workers: int, state: Path, token: str
) -> Server:
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    if kind in CIESS_SERVERS or kind in QUANTISED_SERVERS:
        variant = CIESS_SERVERS.get(kind)
        launcher = ["ciess_core.cli", "serve", "--no-worker"] if variant is None else [
            "bench.serve_variant", *variant,
        ]  # fmt: skip
        command = [
            sys.executable, "-m", *launcher, "--no-access-log",
            "--port", str(port), "--workers", str(workers),
        ]  # fmt: skip
        env.update(
            CIESS_ARTIFACT_DIR=str(artifact), CIESS_STATE_DIR=str(state), CIESS_ADMIN_TOKEN=token,
            CIESS_SCORER_THREADS="1", PYTHONPATH=str(ROOT),
        )  # fmt: skip
    else:
        command = [
            sys.executable, "-m", "uvicorn", "bench.torch_server:app_from_environment",
            "--factory", "--no-access-log", "--port", str(port), "--workers", str(workers),
        ]  # fmt: skip
        env.update(CIESS_TORCH_RUN=str(run), CIESS_DATA_DIR=str(data_dir), CIESS_TORCH_THREADS="1")
        env["PYTHONPATH"] = str(ROOT)
    return Server(kind, command, env, port)


def run_load(
    server: Server, paths_file: Path, mode: str, seconds: float, connections: int, rps: float
) -> dict[str, Any]:
    command = [
        sys.executable, str(ROOT / "bench" / "loadgen.py"), "--port", str(server.port),
        "--paths", str(paths_file), "--mode", mode, "--duration", str(seconds),
        "--connections", str(connections), "--rps", str(rps),
    ]  # fmt: skip
    cpu_before = server.cpu_seconds()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    cpu = server.cpu_seconds() - cpu_before  # warm-up included, as in sent_with_warmup
    if done.returncode != 0:
        raise RuntimeError(f"load generator failed: {done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout)
    result["server_cpu_seconds"] = cpu
    result["loadgen_command"] = shlex.join(["python", *command[1:]])
    return result


def wrk(base: str, paths_file: Path, seconds: float, connections: int) -> dict[str, Any]:
    """One wrk closed loop (C, one thread, ``bench/wrk_paths.lua``) on ``base`` for ``seconds``:
    the script's JSON line (latency percentiles in µs, requests, duration, errors by kind) and,
    under ``command``, the command line. Raises RuntimeError when wrk fails."""
    command = [
        "wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "10s",
        "-s", str(ROOT / "bench" / "wrk_paths.lua"), base, "--", str(paths_file),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    line = next((x for x in done.stdout.splitlines() if x.startswith("WRK_JSON ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed: {done.stdout[-1000:]} {done.stderr[-1000:]}")
    raw: dict[str, Any] = json.loads(line.removeprefix("WRK_JSON "))
    raw["command"] = shlex.join(command)
    return raw


def wrk_failures(raw: dict[str, Any]) -> int:
    """Requests of a :func:`wrk` run that got no answer: socket errors and timeouts."""
    return sum(raw[key] for key in ("connect_errors", "read_errors", "write_errors", "timeouts"))


def run_wrk(
    server: Server, paths_file: Path, seconds: float, connections: int, warmup: float = 2.0
) -> dict[str, Any]:
    """Closed loop with wrk (C, one thread): about 10 µs of CPU per request, against several
    times that for bench/loadgen.py, so far less of the two cores goes to the generator.
    A warm-up run first, not recorded; the result has bench/loadgen.py's keys."""
    wrk(server.base, paths_file, warmup, connections)
    cpu_before = server.cpu_seconds()
    raw = wrk(server.base, paths_file, seconds, connections)
    cpu = server.cpu_seconds() - cpu_before
    failures = wrk_failures(raw)
    duration = raw["duration_us"] / 1e6
    return {
        "mode": "closed",
        "connections": connections,
        "p50_ms": round(raw["p50_us"] / 1e3, 3),
        "p90_ms": round(raw["p90_us"] / 1e3, 3),
        "p99_ms": round(raw["p99_us"] / 1e3, 3),
        "max_ms": round(raw["max_us"] / 1e3, 3),
        "throughput_rps": round(raw["requests"] / duration, 1),
        "requests": raw["requests"],
        "errors": raw["status_errors"] + failures,
        "failures": failures,
        "sent_with_warmup": raw["requests"],  # the CPU window covers the recorded run only
        "server_cpu_seconds": cpu,
        "seconds": round(duration, 2),
        "loadgen_command": raw["command"],
    }


def compare(first: dict[str, list[str]], second: dict[str, list[str]]) -> dict[str, Any]:
    identical = sum(first[user] == second[user] for user in first)
    same_set = sum(set(first[user]) == set(second[user]) for user in first)
    return {"users": len(first), "identical_top_k": identical, "same_items": same_set}


def _schemathesis(
    server: Server, token: str, examples: int, config: Path | None = None, options: tuple = ()
) -> dict[str, Any]:
    configured = ["--config-file", str(config)] if config else []
    command = [
        sys.executable, "-m", "schemathesis.cli", *configured, "run", f"{server.base}/openapi.json",
        "--checks", "not_a_server_error", "--max-examples", str(examples),
        "--header", f"Authorization: Bearer {token}", "--no-color", *options,
    ]  # fmt: skip
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    failures = [line for line in lines if "ST1" in line or "Server error" in line]
    marker = next((i for i, line in enumerate(lines) if "SUMMARY" in line), max(0, len(lines) - 20))
    return {
        "exit_code": done.returncode,
        "seconds": round(time.perf_counter() - started, 1),
        "failures": failures,
        "summary": lines[marker:],
        "command": shlex.join(["schemathesis", *command[3:]])
        .replace(token, "$TOKEN")
        .replace(str(config), "KNOWN_USER.toml"),
    }


def fuzz(server: Server, token: str, examples: int, known_user: str, work: Path) -> dict[str, Any]:
    """schemathesis over the whole schema (random ids: mostly 404s on the top-k routes), then the
    single-user top-k route again with a known user id so that the ranking path itself is fuzzed
    (k, exclude_seen, item filters). ``not_a_server_error``: every 5xx is a failure."""
    config = work / "schemathesis-known-user.toml"
    config.write_text(
        "[[operations]]\n"
        'include-path = "/v1/users/{user_id}/recommendations"\n'
        f"parameters = {{ user_id = {json.dumps(known_user)} }}\n"
    )
    whole = _schemathesis(server, token, examples)
    route = ("--include-path", "/v1/users/{user_id}/recommendations")
    known = _schemathesis(server, token, examples, config, route)
    return {"max_examples": examples, "whole_schema": whole, "known_user": known}


def _pairs(values: list[str], flag: str) -> dict[str, Path]:
    pairs = {}
    for value in values:
        name, _, path = value.partition("=")
        if not path:
            raise SystemExit(f"{flag} takes DATASET=PATH, got {value!r}")
        pairs[name] = Path(path)
    return pairs


def _sample_users(artifact: Path, count: int) -> list[str]:
    users = np.asarray(json.loads((artifact / "ids" / "users.json").read_text()))
    return [str(user) for user in np.random.default_rng(0).permutation(users)[:count]]


def bench_load(
    args: argparse.Namespace, dataset: str, artifact: Path, run: Path, work: Path
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Both servers at each worker count: closed and open loops, and their answers compared."""
    manifest = json.loads((artifact / "manifest.json").read_text())
    sample = _sample_users(artifact, args.paths)
    paths_file = work / f"paths-{dataset}.txt"
    paths_file.write_text("".join(PATH_TEMPLATE.format(user=u, k=args.k) + "\n" for u in sample))
    token = secrets.token_hex(16)
    rows: list[dict[str, Any]] = []
    answers: dict[str, dict[str, list[str]]] = {}
    for kind in args.servers:
        served, value_type = artifact, manifest.get("value_dtype", "float32")
        if kind in QUANTISED_SERVERS:
            from ciess_core.artifact.requantise import requantise_artifact

            value_type = QUANTISED_SERVERS[kind]
            served = work / f"{dataset}-{value_type}"
            if not served.exists():
                requantise_artifact(artifact, value_type, served, str(artifact))
        memory = json.loads((served / "manifest.json").read_text())["memory"]
        for workers in args.workers:
            state = Path(tempfile.mkdtemp(prefix="serving-state-", dir=work))
            server = start_server(kind, served, run, args.data_dir, workers, state, token)
            try:
                ready = server.wait_ready(args.ready_timeout)
                print(f"[{dataset}] {kind} x{workers} ready in {ready:.1f} s", flush=True)
                if kind not in answers:
                    answers[kind] = server.top_k(sample[: args.compare_users], args.k)
                loads = [("closed", 0.0, name) for name in args.closed_loop]
                loads += [("open", rate, "python") for rate in args.rps]
                for mode, rate, generator in loads:
                    if generator == "wrk":
                        result = run_wrk(server, paths_file, args.seconds, args.connections)
                    else:
                        result = run_load(
                            server, paths_file, mode, args.seconds, args.connections, rate
                        )
                    cpu, sent = result["server_cpu_seconds"], result["sent_with_warmup"]
                    row = {
                        "dataset": dataset,
                        "server": kind,
                        "workers": workers,
                        "offered_rps": rate if mode == "open" else None,
                        "generator": generator,
                        "p50_ms": result["p50_ms"],
                        "p99_ms": result["p99_ms"],
                        "throughput_rps": result["throughput_rps"],
                        "errors": result["errors"],
                        "requests": result["requests"],
                        "server_cpu_ms_per_request": round(1e3 * cpu / max(sent, 1), 3),
                        "p90_ms": result["p90_ms"],
                        "max_ms": result["max_ms"],
                        "connections": result["connections"],
                        "seconds": result["seconds"],
                        "k": args.k,
                        "ready_seconds": round(ready, 2),
                        "backbone": manifest["backbone"],
                        "sparsity": manifest.get("achieved_sparsity"),
                        "value_type": value_type if kind != "torch" else "float32",
                        "stored_bytes": memory.get("stored") if kind != "torch" else None,
                        "resident_bytes": memory.get("resident") if kind != "torch" else None,
                        "machine": cpu_description(),
                        "date": dt.date.today().isoformat(),
                        "loadgen_command": result["loadgen_command"],
                    }
                    rows.append(row)
                    print(
                        f"[{dataset}] {kind} x{workers} {mode} {rate or ''} ({generator}): "
                        f"{row['throughput_rps']} rps p50 {row['p50_ms']} p99 {row['p99_ms']} "
                        f"errors {row['errors']}/{row['requests']}",
                        flush=True,
                    )
            finally:
                server.stop()
    return rows, {"agreement": compare(answers["ciess"], answers["torch"])}


def bench_fuzz(
    args: argparse.Namespace, dataset: str, artifact: Path, run: Path, work: Path
) -> dict[str, Any]:
    token = secrets.token_hex(16)
    state = Path(tempfile.mkdtemp(prefix="serving-state-", dir=work))
    server = start_server("ciess", artifact, run, args.data_dir, 1, state, token)
    try:
        server.wait_ready(args.ready_timeout)
        result = fuzz(server, token, args.fuzz_examples, _sample_users(artifact, 1)[0], work)
    finally:
        server.stop()
    for name in ("whole_schema", "known_user"):
        print(f"[{dataset}] fuzz {name}: exit {result[name]['exit_code']}", flush=True)
    return result


def bench_scoring(
    args: argparse.Namespace, dataset: str, artifact: Path, run: Path, work: Path
) -> dict[str, Any]:
    """Scoring alone, in this process, one thread each: the artifact scorer's top-k for one user
    against the PyTorch model's (``score_all_items``, mask, ``torch.topk``), as the servers do."""
    import torch

    from ciess_core.artifact.export import load_run
    from ciess_core.artifact.scorer import ScorerOptions, load_scorer

    torch.set_num_threads(1)
    scorer = load_scorer(artifact, ScorerOptions(threads=1))
    loaded = load_run(run, args.data_dir)
    model = loaded.model.eval()
    with torch.no_grad():
        representation = model.represent()
    indptr = torch.from_numpy(loaded.train.indptr.astype(np.int64))
    indices = torch.from_numpy(loaded.train.indices.astype(np.int64))
    users = np.random.default_rng(0).integers(0, scorer.num_users, args.scoring_users)

    def torch_top_k(user: int) -> None:
        with torch.no_grad():
            scores = model.score_all_items(representation, torch.tensor([user]))[0]
            scores[indices[indptr[user] : indptr[user + 1]]] = -torch.inf
            torch.topk(scores, args.k)

    timings = {}
    for name, function in (
        ("ciess", lambda user: scorer.recommend(np.array([user]), args.k)),
        ("torch", torch_top_k),
    ):
        for user in users[:50]:
            function(int(user))  # warm-up
        started = time.perf_counter()
        for user in users:
            function(int(user))
        timings[name] = round(1e6 * (time.perf_counter() - started) / users.size, 1)
    # What the turn batcher does under load: 16 users per call (per user).
    batches = users[: users.size // 16 * 16].reshape(-1, 16)
    scorer.recommend(batches[0], args.k)
    started = time.perf_counter()
    for batch in batches:
        scorer.recommend(batch, args.k)
    timings["ciess_batch_16"] = round(1e6 * (time.perf_counter() - started) / batches.size, 1)
    print(f"[{dataset}] scoring us/user: {timings}", flush=True)
    return {
        "users": int(users.size),
        "k": args.k,
        "microseconds_per_user": timings,
        "item_buckets": scorer.bucket_widths,
        "torch_item_width": int(representation[-1].shape[-1]),
    }


SECTIONS = ("load", "fuzz", "scoring")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=DefaultsHelp
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("CIESS_DATA_DIR", "../shared/data")),
        help="datasets folder the torch baseline and the scoring section read the runs' data "
        "from (default: $CIESS_DATA_DIR, else ../shared/data)",
    )
    parser.add_argument(
        "--artifact",
        action="append",
        default=[],
        help="DATASET=ARTIFACT_DIR, the artifact `ciess serve` serves; once per dataset, "
        "at least once",
    )
    parser.add_argument(
        "--run",
        action="append",
        default=[],
        help="DATASET=RUN_DIR, the run the artifact was exported from (the torch baseline "
        "serves it); once per dataset of --artifact",
    )
    parser.add_argument(
        "--sections", default=",".join(SECTIONS), help="comma-separated, of load,fuzz,scoring"
    )
    parser.add_argument(
        "--workers",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[1, 2],
        help="comma-separated uvicorn worker counts; the load runs on each server at each "
        "(default: 1,2)",
    )
    parser.add_argument(
        "--servers",
        type=lambda s: [x for x in s.split(",") if x],
        default=list(SERVERS),
        help=f"comma-separated, of {','.join(SERVERS)}; ciess and torch are needed (their "
        "answers are compared) (default: all)",
    )
    parser.add_argument(
        "--closed-loop",
        type=lambda s: [x for x in s.split(",") if x],
        default=["wrk", "python"] if shutil.which("wrk") else ["python"],
        help="generators of the closed loop, of wrk,python (default: both when wrk is installed, "
        "else python)",
    )
    parser.add_argument(
        "--rps",
        type=lambda s: [float(x) for x in s.split(",") if x],
        default=[500.0],
        help="comma-separated open-loop rates, requests per second; one open loop each, none "
        "for an empty list (default: 500)",
    )
    parser.add_argument(
        "--seconds",
        type=float,
        default=20.0,
        help="recorded seconds per load (a 2 s warm-up, not recorded, comes first)",
    )
    parser.add_argument(
        "--connections",
        type=int,
        default=16,
        help="closed loop: concurrent clients; open loop: the most requests in flight",
    )
    parser.add_argument(
        "--k", type=int, default=20, help="recommendations per request (the k of the top-k)"
    )
    parser.add_argument(
        "--paths",
        type=int,
        default=5000,
        help="distinct users in the load, drawn from the artifact's users",
    )
    parser.add_argument(
        "--compare-users",
        type=int,
        default=300,
        help="users whose top-k lists ciess and torch both answer, compared item by item",
    )
    parser.add_argument(
        "--ready-timeout",
        type=float,
        default=600.0,
        help="seconds a server may take to answer /readyz before the benchmark stops",
    )
    parser.add_argument(
        "--fuzz-examples",
        type=int,
        default=100,
        help="schemathesis --max-examples (per operation) of each of the fuzz section's two runs",
    )
    parser.add_argument(
        "--scoring-users",
        type=int,
        default=2000,
        help="users timed per scorer in the scoring section (one top-k each)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=ROOT / "docs" / "benchmarks",
        help="folder of serving.json and serving.md",
    )
    args = parser.parse_args(argv)
    if not {"ciess", "torch"} <= set(args.servers) <= set(SERVERS):
        parser.error(f"--servers takes ciess, torch and any of {SERVERS}, got {args.servers}")
    if not set(args.closed_loop) <= {"wrk", "python"}:
        parser.error(f"--closed-loop takes wrk and/or python, got {args.closed_loop}")
    if "wrk" in args.closed_loop and not shutil.which("wrk"):
        parser.error("--closed-loop wrk: wrk is not installed (apt-get install wrk)")
    sections = [name for name in args.sections.split(",") if name]
    if not set(sections) <= set(SECTIONS):
        parser.error(f"--sections takes names from {SECTIONS}, got {args.sections!r}")
    artifacts, runs = _pairs(args.artifact, "--artifact"), _pairs(args.run, "--run")
    if not artifacts or set(artifacts) != set(runs):
        parser.error("give --artifact and --run for the same datasets")
    work = Path(tempfile.mkdtemp(prefix="serving-bench-"))
    json_path = args.out / "serving.json"
    report = (
        json.loads(json_path.read_text()) if json_path.exists() else {"rows": [], "datasets": {}}
    )
    command = shlex.join(
        ["python", "bench/serving.py", *(argv if argv is not None else sys.argv[1:])]
    )
    for dataset, artifact in artifacts.items():
        entry = report["datasets"].setdefault(dataset, {})
        entry.update(artifact=str(artifact), run=str(runs[dataset]))
        commands = entry.setdefault("commands", {})
        for section in sections:
            if section == "load":
                rows, extra = bench_load(args, dataset, artifact, runs[dataset], work)
                # one run per dataset's table: its ratios are measured in one run
                report["rows"] = [r for r in report["rows"] if r["dataset"] != dataset] + rows
                entry.update(extra)
            elif section == "fuzz":
                entry["fuzz"] = bench_fuzz(args, dataset, artifact, runs[dataset], work)
            else:
                entry["scoring"] = bench_scoring(args, dataset, artifact, runs[dataset], work)
            commands[section] = command
            args.out.mkdir(parents=True, exist_ok=True)
            json_path.write_text(json.dumps(report, indent=1) + "\n")
            write_report(report, args.out / "serving.md")
    return 0


def _generator(row: dict[str, Any]) -> str:
    return str(row.get("generator", "python"))  # rows from before wrk: bench/loadgen.py


def write_report(report: dict[str, Any], path: Path) -> None:
    rows = report["rows"]
    lines = [
        "# Serving benchmark",
        "",
        "Written by `bench/serving.py` from `serving.json`. `GET /v1/users/{id}/recommendations?k=20`,",
        "users drawn at random; the load generator (`bench/loadgen.py`, raw HTTP/1.1 keep-alive) runs",
        "as a separate process **on the same 2 cores** as the server, so every figure includes its",
        "CPU cost. Closed loop: clients send back to back (throughput). Open loop: requests at a fixed",
        "rate, latency from the scheduled send time (queueing included). The closed loop runs twice:",
        "with `wrk` (C, about 10 µs of CPU per request, so the servers keep most of the two cores)",
        "and with `bench/loadgen.py` (Python, several times that); the open loop uses",
        "`bench/loadgen.py`, which schedules requests at a fixed rate. `ciess`: `ciess serve` with",
        "onnxruntime, no torch, as shipped: the requests of one event-loop turn ranked as one batch",
        "(`service/batching.py`) and each response sent in one write (`service/http_protocol.py`).",
        "`ciess-unbatched`: the same without the batching (`bench/serve_variant.py --no-batching`).",
        "`ciess-stock-http`: without the batching and on uvicorn's stock httptools protocol",
        "(`--http httptools`: two writes per response); the three show each change's share.",
        "`ciess-int8`, `ciess-int4`: `ciess serve` as shipped on the same artifact with its tables",
        "stored again as int8 / int4 codes with a float16 scale per row",
        "(`ciess_core/artifact/requantise.py`, what a byte budget's fast path serves).",
        "`torch`: `bench/torch_server.py`, the same run's",
        "dense PyTorch model, eager `score_all_items` + `torch.topk`, stock uvicorn. All: FastAPI +",
        "uvicorn (uvloop, httptools), no access log, one scoring thread per worker. Server CPU per",
        "request: user + system time of the server's processes over the load, divided by the",
        "requests sent.",
        "",
    ]
    for dataset, extra in report["datasets"].items():
        subset = [row for row in rows if row["dataset"] == dataset]
        lines += [f"## {dataset}", ""]
        for section, command in extra.get("commands", {}).items():
            lines.append(f"- {section}: `{command}`")
        lines.append("")
        if subset:
            first = subset[0]
            agreement = extra.get("agreement", {})
            lines += [
                f"{first['machine']}; {first['date']}; {first['backbone']} artifact at sparsity "
                f"{first['sparsity']:.4f} (`{extra.get('artifact')}`, run `{extra.get('run')}`).",
                "",
                f"Same answers: for {agreement.get('users')} users, top-{first['k']} identical item "
                f"by item for {agreement.get('identical_top_k')}, same item set for "
                f"{agreement.get('same_items')}.",
                "",
                "| server | workers | load | throughput (req/s) | p50 ms | p90 ms | p99 ms | max ms | errors / requests | server CPU ms / request | ready after (s) |",
                "|---|---|---|---|---|---|---|---|---|---|---|",
            ]
            ordered = sorted(
                subset,
                key=lambda r: (r["server"], r["workers"], r["offered_rps"] or 0, _generator(r)),
            )
            for row in ordered:
                load = (
                    f"closed, {row['connections']} conns, {_generator(row)}"
                    if row["offered_rps"] is None
                    else f"open {row['offered_rps']:.0f}/s"
                )
                lines.append(
                    f"| {row['server']} | {row['workers']} | {load} | {row['throughput_rps']:,.0f} | "
                    f"{row['p50_ms']} | {row['p90_ms']} | {row['p99_ms']} | {row['max_ms']} | "
                    f"{row['errors']} / {row['requests']} | "
                    f"{row.get('server_cpu_ms_per_request', '–')} | {row['ready_seconds']} |"
                )
            closed = {
                (r["server"], r["workers"], _generator(r)): r["throughput_rps"]
                for r in subset
                if r["offered_rps"] is None
            }
            lines.append("")
            for generator in ("wrk", "python"):
                for other in ("torch", "ciess-unbatched", "ciess-stock-http"):
                    ratios = [
                        f"{workers} worker(s): "
                        f"{closed[('ciess', workers, generator)] / closed[(other, workers, generator)]:.2f}×"
                        for workers in sorted({w for _, w, _ in closed})
                        if ("ciess", workers, generator) in closed
                        and closed.get((other, workers, generator))
                    ]
                    if ratios:
                        lines.append(
                            f"- Closed-loop throughput ({generator}), ciess / {other}: "
                            f"{', '.join(ratios)}."
                        )
                for quantised in QUANTISED_SERVERS:
                    ratios = [
                        f"{workers} worker(s): "
                        f"{closed[(quantised, workers, generator)] / closed[('ciess', workers, generator)]:.2f}×"
                        for workers in sorted({w for _, w, _ in closed})
                        if (quantised, workers, generator) in closed
                        and closed.get(("ciess", workers, generator))
                    ]
                    if ratios:
                        lines.append(
                            f"- Closed-loop throughput ({generator}), {quantised} / ciess "
                            f"(float32 tables): {', '.join(ratios)}."
                        )
            lines.append("")
        if "scoring" in extra:
            scoring = extra["scoring"]
            timing = scoring["microseconds_per_user"]
            lines += [
                "Scoring alone, in one process, one thread, top-"
                f"{scoring['k']} of one user, mean over {scoring['users']} users: ciess "
                f"{timing['ciess']} µs (item buckets (items, width) {scoring['item_buckets']}), "
                f"PyTorch eager {timing['torch']} µs (items at width {scoring['torch_item_width']})"
                + (
                    f"; ciess in batches of 16 users, as the turn batcher ranks them under load: "
                    f"{timing['ciess_batch_16']} µs per user."
                    if "ciess_batch_16" in timing
                    else "."
                ),
                "",
            ]
        if "fuzz" in extra and "whole_schema" in extra["fuzz"]:
            for name, title in (
                ("whole_schema", "whole schema, generated ids"),
                ("known_user", "single-user top-k with a known user id"),
            ):
                result = extra["fuzz"][name]
                lines += [
                    f"### OpenAPI fuzz: {title}",
                    "",
                    f"`{result['command']}`: exit code {result['exit_code']}, {result['seconds']} s, "
                    f"5xx answers: {len(result['failures'])}. Summary:",
                    "",
                    "```",
                    *result["summary"],
                    "```",
                    "",
                ]
    notes = path.with_suffix(".notes.md")
    if notes.exists():  # hand-written findings, kept apart so that regenerating keeps them
        lines += ["## Findings", "", notes.read_text().strip(), ""]
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
