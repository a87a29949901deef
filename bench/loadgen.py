"""HTTP/1.1 load generator for bench/serving.py, run as its own process.

Keep-alive connections speak raw HTTP/1.1 over asyncio streams (uvloop when installed): a request
costs the generator a few tens of microseconds, so on a 2-core machine it takes as little CPU from
the server under test as a Python client can.

Two modes:
- ``closed``: ``--connections`` clients each send their next request as soon as the previous
  answer arrives, for ``--duration`` seconds; throughput is what the server sustains.
- ``open``: requests are scheduled at a fixed rate (``--rps``) whatever the server does; latency is
  measured from the *scheduled* send time, so queueing behind a slow answer counts (no coordinated
  omission). Up to ``--connections`` requests are in flight; a request that finds every connection
  busy waits, and that wait is part of its latency.

The first ``--warmup`` seconds are sent but not recorded. Paths come from ``--paths`` (one per
line), used round-robin from a random start. The result is one JSON object on stdout (or --out).

    python bench/loadgen.py --port 8000 --paths paths.txt --mode open --rps 500 --duration 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from cli_help import DefaultsHelp


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    failures: int = 0  # connection errors, timeouts: no status at all
    record_from: float = 0.0
    sent: int = 0  # warm-up included

    def add(self, scheduled: float, finished: float, status: int | None) -> None:
        self.sent += 1
        if scheduled < self.record_from:
            return
        if status is None:
            self.failures += 1
            return
        self.statuses[status] = self.statuses.get(status, 0) + 1
        self.latencies.append(finished - scheduled)


class Connection:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, path: str, timeout: float) -> int:
        if self.writer is None or self.writer.is_closing():
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        self.writer.write(f"GET {path} HTTP/1.1\r\nHost: {self.host}\r\n\r\n".encode())
        try:
            return await asyncio.wait_for(self._response(self.reader), timeout)
        except BaseException:
            self.close()
            raise

    @staticmethod
    async def _response(reader: asyncio.StreamReader) -> int:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length = 0
        for line in lines[1:]:
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
                break
        if length:
            await reader.readexactly(length)
        return status

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def _closed_loop(args: argparse.Namespace, paths: list[str], tally: Tally) -> float:
    start = time.perf_counter()
    tally.record_from = start + args.warmup
    stop = tally.record_from + args.duration
    rng = np.random.default_rng(args.seed)

    async def client(offset: int) -> None:
        connection = Connection(args.host, args.port)
        index = offset
        while (now := time.perf_counter()) < stop:
            path = paths[index % len(paths)]
            index += 1
            try:
                status: int | None = await connection.request(path, args.timeout)
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError):
                status = None
            tally.add(now, time.perf_counter(), status)
        connection.close()

    offsets = rng.integers(0, len(paths), args.connections)
    await asyncio.gather(*(client(int(offset)) for offset in offsets))
    return args.duration


async def _open_loop(args: argparse.Namespace, paths: list[str], tally: Tally) -> float:
    interval = 1.0 / args.rps
    queue: asyncio.Queue[tuple[float, str] | None] = asyncio.Queue()
    start = time.perf_counter() + 0.05
    tally.record_from = start + args.warmup
    total = int((args.warmup + args.duration) * args.rps)
    offset = int(np.random.default_rng(args.seed).integers(0, len(paths)))

    async def client() -> None:
        connection = Connection(args.host, args.port)
        while (job := await queue.get()) is not None:
            scheduled, path = job
            try:
                status: int | None = await connection.request(path, args.timeout)
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError):
                status = None
            tally.add(scheduled, time.perf_counter(), status)
        connection.close()

    clients = [asyncio.create_task(client()) for _ in range(args.connections)]
    for number in range(total):
        scheduled = start + number * interval
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        queue.put_nowait((scheduled, paths[(offset + number) % len(paths)]))
    for _ in clients:
        queue.put_nowait(None)
    await asyncio.gather(*clients)
    return args.duration


def summarize(tally: Tally, seconds: float) -> dict[str, object]:
    latencies = np.asarray(tally.latencies) * 1e3
    ok = tally.statuses.get(200, 0)
    requests = int(latencies.size) + tally.failures
    quantiles = (
        {f"p{q}_ms": round(float(np.percentile(latencies, q)), 3) for q in (50, 90, 99)}
        if latencies.size
        else {"p50_ms": None, "p90_ms": None, "p99_ms": None}
    )
    return {
        **quantiles,
        "max_ms": round(float(latencies.max()), 3) if latencies.size else None,
        "throughput_rps": round(ok / seconds, 1),
        "requests": requests,
        "errors": requests - ok,
        "statuses": {str(status): count for status, count in sorted(tally.statuses.items())},
        "failures": tally.failures,
        "sent_with_warmup": tally.sent,
        "seconds": seconds,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=DefaultsHelp
    )
    parser.add_argument("--host", default="127.0.0.1", help="server address")
    parser.add_argument("--port", type=int, required=True, help="server port")
    parser.add_argument(
        "--paths",
        type=Path,
        required=True,
        help="file of request paths, one a line, sent round-robin from a random start",
    )
    parser.add_argument(
        "--mode",
        choices=["closed", "open"],
        default="closed",
        help="closed: each client sends on the previous answer (throughput); open: requests at "
        "--rps, latency from the scheduled send time (queueing counts)",
    )
    parser.add_argument(
        "--rps", type=float, default=100.0, help="open loop: requests per second offered"
    )
    parser.add_argument(
        "--connections",
        type=int,
        default=8,
        help="keep-alive connections: closed loop, one client each; open loop, the most "
        "requests in flight (more wait, and the wait counts)",
    )
    parser.add_argument(
        "--duration", type=float, default=10.0, help="seconds recorded, after --warmup"
    )
    parser.add_argument(
        "--warmup", type=float, default=2.0, help="seconds sent first and not recorded"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        help="seconds a request may take before it counts as a failure",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the random starting points in --paths"
    )
    parser.add_argument("--out", type=Path, help="write the JSON result here (default: stdout)")
    args = parser.parse_args(argv)
    paths = [line.strip() for line in args.paths.read_text().splitlines() if line.strip()]
    if not paths:
        parser.error(f"{args.paths}: no request paths")
    tally = Tally()
    run = _open_loop if args.mode == "open" else _closed_loop
    try:
        import uvloop

        seconds = uvloop.run(run(args, paths, tally))
    except ImportError:
        seconds = asyncio.run(run(args, paths, tally))
    result = {
        "mode": args.mode,
        "offered_rps": args.rps if args.mode == "open" else None,
        "connections": args.connections,
        **summarize(tally, seconds),
    }
    text = json.dumps(result)
    if args.out:
        args.out.write_text(text + "\n")
    else:
        sys.stdout.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
