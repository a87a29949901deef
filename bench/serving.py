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
5xx answer it saw. Rows go to ``OUT/serving.json`` (replacing earlier rows of the same dataset,
server and workers) and ``OUT/serving.md`` is rewritten from them.

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


def start_server(
    kind: str, artifact: Path, run: Path, data_dir: Path, workers: int, state: Path, token: str
) -> Server:
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    if kind == "ciess":
        command = [
            sys.executable, "-m", "ciess_core.cli", "serve", "--no-worker", "--no-access-log",
            "--port", str(port), "--workers", str(workers),
            "--artifact-dir", str(artifact), "--state-dir", str(state),
        ]  # fmt: skip
        env["CIESS_ADMIN_TOKEN"] = token
        env["CIESS_SCORER_THREADS"] = "1"
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
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"load generator failed: {done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout)
    result["loadgen_command"] = shlex.join(["python", *command[1:]])
    return result


def compare(first: dict[str, list[str]], second: dict[str, list[str]]) -> dict[str, Any]:
    identical = sum(first[user] == second[user] for user in first)
    same_set = sum(set(first[user]) == set(second[user]) for user in first)
    return {"users": len(first), "identical_top_k": identical, "same_items": same_set}


def fuzz(server: Server, token: str, examples: int) -> dict[str, Any]:
    """schemathesis over the whole schema; counts every 5xx answer."""
    command = [
        sys.executable, "-m", "schemathesis.cli", "run", f"{server.base}/openapi.json",
        "--checks", "not_a_server_error", "--max-examples", str(examples),
        "--header", f"Authorization: Bearer {token}", "--no-color",
    ]  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    output = done.stdout + done.stderr
    summary = [line for line in output.splitlines() if line.strip()][-25:]
    return {
        "exit_code": done.returncode,
        "seconds": round(time.perf_counter() - start, 1),
        "max_examples": examples,
        "summary": summary,
        "command": shlex.join(["schemathesis", *command[3:]]).replace(token, "$TOKEN"),
    }


def _pairs(values: list[str], flag: str) -> dict[str, Path]:
    pairs = {}
    for value in values:
        name, _, path = value.partition("=")
        if not path:
            raise SystemExit(f"{flag} takes DATASET=PATH, got {value!r}")
        pairs[name] = Path(path)
    return pairs


def bench_dataset(
    args: argparse.Namespace, dataset: str, artifact: Path, run: Path, work: Path
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    manifest = json.loads((artifact / "manifest.json").read_text())
    users = np.asarray(json.loads((artifact / "ids" / "users.json").read_text()))
    rng = np.random.default_rng(0)
    sample = [str(user) for user in rng.permutation(users)[: args.paths]]
    paths_file = work / f"paths-{dataset}.txt"
    paths_file.write_text("".join(PATH_TEMPLATE.format(user=u, k=args.k) + "\n" for u in sample))
    token = secrets.token_hex(16)
    rows: list[dict[str, Any]] = []
    extra: dict[str, Any] = {"artifact": str(artifact), "run": str(run)}
    answers: dict[str, dict[str, list[str]]] = {}
    for kind in ("ciess", "torch"):
        for workers in args.workers:
            state = Path(tempfile.mkdtemp(prefix="serving-state-", dir=work))
            server = start_server(kind, artifact, run, args.data_dir, workers, state, token)
            try:
                ready = server.wait_ready(args.ready_timeout)
                print(f"[{dataset}] {kind} x{workers} ready in {ready:.1f} s", flush=True)
                if kind not in answers:
                    answers[kind] = server.top_k(sample[: args.compare_users], args.k)
                if args.fuzz and kind == "ciess" and "fuzz" not in extra:
                    extra["fuzz"] = fuzz(server, token, args.fuzz_examples)
                    print(f"[{dataset}] fuzz exit {extra['fuzz']['exit_code']}", flush=True)
                loads = [("closed", 0.0)] + [("open", rate) for rate in args.rps]
                for mode, rate in loads:
                    cpu_before = server.cpu_seconds()
                    result = run_load(
                        server, paths_file, mode, args.seconds, args.connections, rate
                    )
                    cpu = server.cpu_seconds() - cpu_before
                    sent = result["sent_with_warmup"]  # the CPU covers the warm-up too
                    row = {
                        "dataset": dataset,
                        "server": kind,
                        "workers": workers,
                        "offered_rps": rate if mode == "open" else None,
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
                        "machine": cpu_description(),
                        "date": dt.date.today().isoformat(),
                        "loadgen_command": result["loadgen_command"],
                    }
                    rows.append(row)
                    print(
                        f"[{dataset}] {kind} x{workers} {mode} {rate or ''}: "
                        f"{row['throughput_rps']} rps p50 {row['p50_ms']} p99 {row['p99_ms']} "
                        f"errors {row['errors']}/{row['requests']}",
                        flush=True,
                    )
            finally:
                server.stop()
    extra["agreement"] = compare(answers["ciess"], answers["torch"])
    return rows, extra


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data-dir", type=Path, default=Path(os.environ.get("CIESS_DATA_DIR", "../shared/data"))
    )
    parser.add_argument("--artifact", action="append", default=[], help="DATASET=ARTIFACT_DIR")
    parser.add_argument(
        "--run", action="append", default=[], help="DATASET=RUN_DIR (the torch baseline)"
    )
    parser.add_argument("--workers", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2])
    parser.add_argument("--rps", type=lambda s: [float(x) for x in s.split(",")], default=[500.0])
    parser.add_argument("--seconds", type=float, default=20.0, help="recorded seconds per load")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--paths", type=int, default=5000, help="distinct users in the load")
    parser.add_argument("--compare-users", type=int, default=300)
    parser.add_argument("--ready-timeout", type=float, default=600.0)
    parser.add_argument(
        "--fuzz", action="store_true", help="schemathesis over the service's schema"
    )
    parser.add_argument("--fuzz-examples", type=int, default=50)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks")
    args = parser.parse_args(argv)
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
        rows, extra = bench_dataset(args, dataset, artifact, runs[dataset], work)
        keys = {(row["dataset"], row["server"], row["workers"], row["offered_rps"]) for row in rows}
        report["rows"] = [
            row for row in report["rows"]
            if (row["dataset"], row["server"], row["workers"], row["offered_rps"]) not in keys
        ] + rows  # fmt: skip
        report["datasets"][dataset] = {**extra, "command": command}
        args.out.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(report, indent=1) + "\n")
        write_report(report, args.out / "serving.md")
    return 0


def write_report(report: dict[str, Any], path: Path) -> None:
    rows = report["rows"]
    lines = [
        "# Serving benchmark",
        "",
        "Written by `bench/serving.py` from `serving.json`. `GET /v1/users/{id}/recommendations?k=20`,",
        "users drawn at random; the load generator (`bench/loadgen.py`, raw HTTP/1.1 keep-alive) runs",
        "as a separate process **on the same 2 cores** as the server, so every figure includes its",
        "CPU cost. Closed loop: clients send back to back (throughput). Open loop: requests at a fixed",
        "rate, latency from the scheduled send time (queueing included). `ciess`: `ciess serve` with",
        "onnxruntime, no torch. `torch`: `bench/torch_server.py`, the same run's dense PyTorch model,",
        "eager `score_all_items` + `torch.topk`. Both: FastAPI + uvicorn (uvloop, httptools), no",
        "access log, one scoring thread per worker.",
        "",
    ]
    for dataset, extra in report["datasets"].items():
        subset = [row for row in rows if row["dataset"] == dataset]
        if not subset:
            continue
        first = subset[0]
        agreement = extra.get("agreement", {})
        lines += [
            f"## {dataset}",
            "",
            f"{first['machine']}; {first['date']}; {first['backbone']} artifact at sparsity "
            f"{first['sparsity']}; `{extra['command']}`",
            "",
            f"Same answers: for {agreement.get('users')} users, top-{first['k']} identical item by "
            f"item for {agreement.get('identical_top_k')}, same item set for "
            f"{agreement.get('same_items')}.",
            "",
            "| server | workers | load | throughput (req/s) | p50 ms | p90 ms | p99 ms | max ms | errors / requests | server CPU ms / request | ready after (s) |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for row in sorted(subset, key=lambda r: (r["server"], r["workers"], r["offered_rps"] or 0)):
            load = (
                "closed, {} conns".format(row["connections"])
                if row["offered_rps"] is None
                else f"open {row['offered_rps']:.0f}/s"
            )
            lines.append(
                f"| {row['server']} | {row['workers']} | {load} | {row['throughput_rps']:,.0f} | "
                f"{row['p50_ms']} | {row['p90_ms']} | {row['p99_ms']} | {row['max_ms']} | "
                f"{row['errors']} / {row['requests']} | {row['server_cpu_ms_per_request']} | "
                f"{row['ready_seconds']} |"
            )
        closed = {
            (r["server"], r["workers"]): r["throughput_rps"]
            for r in subset
            if r["offered_rps"] is None
        }
        ratios = [
            f"{workers} worker(s): {closed[('ciess', workers)] / closed[('torch', workers)]:.2f}×"
            for workers in sorted({w for _, w in closed})
            if ("ciess", workers) in closed and closed.get(("torch", workers))
        ]
        lines += ["", f"Closed-loop throughput, ciess / torch: {', '.join(ratios)}.", ""]
        if "fuzz" in extra:
            fuzz_result = extra["fuzz"]
            lines += [
                f"### OpenAPI fuzz ({dataset} service)",
                "",
                f"`{fuzz_result['command']}`: exit code {fuzz_result['exit_code']}, "
                f"{fuzz_result['seconds']} s. Tail of its output:",
                "",
                "```",
                *fuzz_result["summary"],
                "```",
                "",
            ]
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
