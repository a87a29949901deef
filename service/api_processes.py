"""``ciess serve --workers N`` (N > 1): N API processes, each listening on a socket of its own.

uvicorn's own ``--workers`` hands one listening socket to every process; the process that wakes
first accepts every queued connection, so a client that opens its keep-alive pool at once (a
gateway, a load generator) is served by one process and one core
(``tests/service/test_multiprocess.py`` saw 24 of 24 connections on one process). Here each
process binds its own socket with ``SO_REUSEPORT`` and the kernel spreads new connections over
them by a hash of the addresses.

:class:`ApiProcesses` starts the processes (``multiprocessing``'s spawn start method), restarts
one that dies (after 1 s, doubling to 30 s while it keeps dying; a process that dies before it
served stops the whole group: the app, the port or the settings are broken and would fail
again), and stops them all, gracefully, on
``SIGTERM`` or ``SIGINT``. The parent keeps a bound, non-listening socket on the port while it
runs, so no other program can take the port between two restarts, and a port of 0 is chosen
once for all processes.

The price of a socket each: the connections waiting in a process's queue when it dies are reset
(on one shared socket the other processes would have taken them); on Linux 5.14 and later,
``sysctl net.ipv4.tcp_migrate_req=1`` moves them to the live processes instead.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Mapping
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Any

logger = logging.getLogger("ciess")

APP = "service.main:app_from_environment"
LISTEN_BACKLOG = 2048  # uvicorn's default
# a process that exits with this code never served: restarting it would fail the same way
STARTUP_FAILURE = 3
FIRST_RESTART_DELAY_SECONDS = 1.0
MAX_RESTART_DELAY_SECONDS = 30.0
_SUPERVISE_EVERY_SECONDS = 0.2
_STOP_TIMEOUT_SECONDS = 30.0


class RestartBackoff:
    """How long to wait before starting a dead child process again: ``first`` seconds after
    a death, twice as long after each further one, at most ``most``; a child that had run
    ``most`` seconds counts as healthy again (the next wait is ``first``). The API processes'
    supervisor and the job worker's use it."""

    def __init__(
        self, first: float = FIRST_RESTART_DELAY_SECONDS, most: float = MAX_RESTART_DELAY_SECONDS
    ) -> None:
        self._first = first
        self._most = most
        self._next = first

    def after_death(self, ran_seconds: float) -> float:
        """The wait before the next start of a child that died after ``ran_seconds``."""
        if ran_seconds >= self._most:
            self._next = self._first
        wait = self._next
        self._next = min(2 * wait, self._most)
        return wait


def _bind(address_info: tuple[Any, ...], reuse_port: bool) -> socket.socket:
    """A TCP socket of one ``getaddrinfo`` result, bound with ``SO_REUSEADDR`` (and
    ``SO_REUSEPORT`` if ``reuse_port``; an IPv6 one for IPv6 alone). Raises ``OSError`` when
    the address is taken or cannot be bound."""
    family, kind, protocol, _, address = address_info
    bound = socket.socket(family, kind, protocol)
    try:
        bound.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            bound.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            bound.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        bound.bind(address)
    except OSError:
        bound.close()
        raise
    return bound


def _addresses(host: str, port: int) -> list[tuple[Any, ...]]:
    """The distinct ``getaddrinfo`` results of ``host:port`` for a listening TCP socket."""
    found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    return list({info[4]: info for info in found}.values())


def reuse_port_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` (its first address) with ``SO_REUSEADDR`` and
    ``SO_REUSEPORT`` (not listening yet). Raises ``OSError`` when the address is taken or cannot
    be bound."""
    return _bind(_addresses(host, port)[0], reuse_port=True)


def listening_sockets(host: str, port: int) -> list[socket.socket]:
    """TCP sockets listening on every address of ``host:port`` (a name such as ``localhost``
    may have an IPv4 and an IPv6 one), with ``SO_REUSEADDR`` only, as uvicorn binds them
    (``ciess serve`` with one API process). Raises ``OSError`` when one is taken or cannot be
    bound; then none is left open."""
    sockets: list[socket.socket] = []
    try:
        for info in _addresses(host, port):
            sockets.append(_bind(info, reuse_port=False))
            sockets[-1].listen(LISTEN_BACKLOG)
    except OSError:
        for opened in sockets:
            opened.close()
        raise
    return sockets


def serve_one(
    host: str, port: int, options: Mapping[str, Any], environment: Mapping[str, str]
) -> None:
    """One API process: ``environment`` set, its own listening socket on ``host:port`` and a
    uvicorn server of the app with ``options`` (``uvicorn.Config`` keywords). Exits with
    :data:`STARTUP_FAILURE` when it could not listen or the app did not start."""
    import uvicorn

    os.environ.update(environment)
    try:
        listening = reuse_port_socket(host, port)
        listening.listen(LISTEN_BACKLOG)
    except OSError as error:
        logger.error("API process could not listen on %s:%d: %s", host, port, error)
        sys.exit(STARTUP_FAILURE)
    server = uvicorn.Server(uvicorn.Config(APP, factory=True, **options))
    try:
        server.run(sockets=[listening])
    except Exception:
        if server.started:
            raise
        logger.exception("API process could not start the app")
    if not server.started:
        sys.exit(STARTUP_FAILURE)


class ApiProcesses:
    """``count`` API processes (:func:`serve_one`) on ``host:port``, supervised until stopped.

    A process that dies after it served is started again after
    :data:`FIRST_RESTART_DELAY_SECONDS`, each further death of the same slot twice as late, up
    to :data:`MAX_RESTART_DELAY_SECONDS`; one that ran that long counts as healthy again.
    """

    def __init__(
        self,
        count: int,
        host: str,
        port: int,
        options: Mapping[str, Any],
        environment: Mapping[str, str],
    ) -> None:
        if count < 2:
            raise ValueError(f"ApiProcesses runs 2 processes or more, not {count}")
        self._count = count
        self._host = host
        self._held = reuse_port_socket(host, port)  # OSError: the port is taken
        self.port: int = self._held.getsockname()[1]
        self._options = dict(options)
        self._environment = dict(environment)
        self._context = multiprocessing.get_context("spawn")
        self._slots: list[_Slot] = []
        self._stop = threading.Event()
        self.restarts = 0

    def _start_one(self) -> BaseProcess:
        process = self._context.Process(
            target=serve_one,
            args=(self._host, self.port, self._options, self._environment),
            name="ciess-api",
        )
        process.start()
        return process

    def request_stop(self, signum: int = 0, frame: FrameType | None = None) -> None:
        """Ask :meth:`run` to stop the processes and return (a signal handler)."""
        self._stop.set()

    def run(self) -> int:
        """Start the processes, keep them running until :meth:`request_stop` (``SIGTERM`` and
        ``SIGINT`` call it), then stop them; 0, or 1 when a process failed to start."""
        previous = {
            signum: signal.signal(signum, self.request_stop)
            for signum in (signal.SIGTERM, signal.SIGINT)
        }
        failed = False
        try:
            self._slots = [_Slot(self._start_one()) for _ in range(self._count)]
            logger.info(
                "%d API processes on %s:%d (SO_REUSEPORT): pids %s",
                self._count,
                self._host,
                self.port,
                [slot.process.pid for slot in self._slots],
            )
            while not self._stop.wait(_SUPERVISE_EVERY_SECONDS):
                failed = not self._replace_dead()
                if failed:
                    break
        finally:
            self._stop_all()
            self._held.close()
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        return 1 if failed else 0

    def _replace_dead(self) -> bool:
        """Restart each process that died, when its delay is up; False when one died before
        it served."""
        now = time.monotonic()
        for slot in self._slots:
            if slot.restart_at is None:
                if slot.process.is_alive():
                    continue
                slot.process.join()
                if slot.process.exitcode == STARTUP_FAILURE:
                    logger.error(
                        "API process %d failed to start; stopping the others", slot.process.pid
                    )
                    return False
                slot.died(now)
                logger.error(
                    "API process %d died (exit code %s); another in %.0f s",
                    slot.process.pid,
                    slot.process.exitcode,
                    slot.delay,
                )
            if slot.restart_at is not None and now >= slot.restart_at and not self._stop.is_set():
                slot.restarted(self._start_one(), now)
                self.restarts += 1
        return True

    def _stop_all(self) -> None:
        """SIGTERM to each process (uvicorn finishes the requests in flight), SIGKILL to any
        still running after :data:`_STOP_TIMEOUT_SECONDS`."""
        processes = [slot.process for slot in self._slots]
        for process in processes:
            if process.is_alive():
                process.terminate()
        for process in processes:
            process.join(_STOP_TIMEOUT_SECONDS)
            if process.is_alive():
                logger.error("API process %d did not stop in time; killing it", process.pid)
                process.kill()
                process.join()


class _Slot:
    """One of :class:`ApiProcesses`' processes, its restart delay and when it restarts."""

    def __init__(self, process: BaseProcess) -> None:
        self.process = process
        self.started = time.monotonic()
        self.backoff = RestartBackoff()
        self.delay = 0.0
        self.restart_at: float | None = None

    def died(self, now: float) -> None:
        self.delay = self.backoff.after_death(now - self.started)
        self.restart_at = now + self.delay

    def restarted(self, process: BaseProcess, now: float) -> None:
        self.process = process
        self.started = now
        self.restart_at = None
