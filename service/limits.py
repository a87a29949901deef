"""The service's limits on what a request may cost, checked before the work they bound.

- :class:`BodySizeLimit`: a request body over the ``max_body_bytes`` setting gets 413 before
  authentication or JSON parsing reads it: at once when ``Content-Length`` says so, else as soon
  as the bytes received pass the limit. It sits ahead of the fast path (:mod:`service.main`) and
  costs a GET nothing but a comparison: no route reads the body of a GET or HEAD.
- :func:`check_ids`: ids per batch (``max_batch_users``) and characters per id
  (``max_id_length``), before any id is looked up: a 422 with a short message, never an
  answer as large as the request.
- :func:`with_header_timeout`: uvicorn's HTTP protocol with a deadline for a request's headers
  (``header_timeout_seconds``). uvicorn closes idle keep-alive connections
  (``timeout_keep_alive``) but waits for ever for headers that never come, so slow or silent
  clients could hold every file descriptor of the process. It also keeps spare descriptors:
  near the process's limit, a new connection closes the one that has waited longest for its
  headers (:func:`connection_budget`).
"""

from __future__ import annotations

import asyncio
import functools
import resource
import sys
from collections.abc import Sequence
from typing import Any

import orjson
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ciess_core.errors import ConfigError
from service.errors import LimitError

# Methods whose body no route reads: FastAPI reads a body only for a route with a body field.
_BODYLESS = frozenset({"GET", "HEAD"})


class BodyTooLargeError(HTTPException):
    """Raised from ``receive`` once a streamed body passes the limit. An HTTPException, so that
    FastAPI's body parsing passes it on (it makes any other error a 400) and it becomes a 413."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, detail=_too_large(max_bytes), headers={"Connection": "close"})


def _too_large(max_bytes: int) -> str:
    return f"the request body is larger than {max_bytes} bytes (the max_body_bytes setting)"


def _content_length(headers: Sequence[tuple[bytes, bytes]]) -> int | None:
    for name, value in headers:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the server refuses such a request itself
    return None


class BodySizeLimit:
    """ASGI middleware: 413 (and the connection closed) for a body over ``max_bytes``."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in _BODYLESS:
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope["headers"])
        if declared is not None and declared > self.max_bytes:
            await self._refuse(send)
            return
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLargeError(self.max_bytes)
            return message

        async def watching_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, watching_send)
        except BodyTooLargeError:
            if started:
                raise
            await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        body = orjson.dumps({"detail": _too_large(self.max_bytes)})
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    # The body was not read: closing is cheaper than reading it to the end.
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def check_ids(
    ids: Sequence[str], field: str, max_length: int, max_count: int | None = None
) -> None:
    """Refuse more than ``max_count`` ids or an id longer than ``max_length`` characters.

    Raises:
        LimitError: naming ``field``, the count or the position and length (422).
    """
    if max_count is not None and len(ids) > max_count:
        raise LimitError(
            f"{field}: {len(ids)} ids, more than the {max_count} one request may name "
            "(the max_batch_users setting)"
        )
    if ids and max(map(len, ids)) > max_length:
        position = next(i for i, value in enumerate(ids) if len(value) > max_length)
        where = field if len(ids) == 1 else f"{field}[{position}]"
        raise LimitError(
            f"{where}: an id of {len(ids[position])} characters, more than the {max_length} "
            "allowed (the max_id_length setting)"
        )


SPARE_DESCRIPTORS = 64
"""At least this many file descriptors (and one in eight of the limit) are kept for what is not a
client connection: the listening socket, the job store, the artifact's files, and the accept of
one more client."""


def connection_budget() -> int:
    """How many client connections this process keeps open at most: its descriptor limit
    (``ulimit -n``) less the spare (:data:`SPARE_DESCRIPTORS`, or an eighth of the limit)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return sys.maxsize
    return max(1, soft - max(SPARE_DESCRIPTORS, soft // 8))


@functools.cache
def _process_connection_budget() -> int:
    """:func:`connection_budget`, read once per process, not once per connection."""
    return connection_budget()


class _Connections:
    """This process's client connections: how many are open, and those waiting for a request's
    headers, oldest first."""

    open = 0
    waiting: dict[_HeaderDeadline, None] = {}  # noqa: RUF012 (one book per process)


class _HeaderDeadline:
    """A timer from a connection's start, or a request's first byte, to the request's headers;
    when it fires, the connection is closed.

    It also keeps the process under its descriptor limit: when a new connection would make more
    than ``connection_budget`` open, the connection that has waited longest for its headers is
    closed. Without this, slow clients hold every descriptor, ``accept()`` fails, and the event
    loop (uvloop's) closes the connections it cannot accept, prompt clients' too.
    """

    header_timeout: float = 10.0
    connection_budget: int = sys.maxsize
    _header_timer: asyncio.TimerHandle | None = None
    _counted = False
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport

    def _opened(self) -> None:
        self._counted = True
        _Connections.open += 1
        waiting = _Connections.waiting
        while _Connections.open > self.connection_budget and waiting:
            oldest = next(iter(waiting))
            oldest._close()

    def _forget(self) -> None:
        self._disarm_header_timer()
        if self._counted:
            self._counted = False
            _Connections.open -= 1

    def _close(self) -> None:
        self._forget()
        if not self.transport.is_closing():
            self.transport.close()

    def _arm_header_timer(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout, self._headers_late)
            _Connections.waiting[self] = None

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
            _Connections.waiting.pop(self, None)

    def _headers_late(self) -> None:
        self._header_timer = None
        _Connections.waiting.pop(self, None)
        self._close()


class _HttpToolsHeaderDeadline(_HeaderDeadline):
    """For uvicorn's httptools protocols: the parser's callbacks mark a request's start and the
    end of its headers."""

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._opened()
        self._arm_header_timer()

    def on_message_begin(self) -> None:
        super().on_message_begin()  # type: ignore[misc]
        self._arm_header_timer()

    def on_headers_complete(self) -> None:
        self._disarm_header_timer()
        super().on_headers_complete()  # type: ignore[misc]

    def connection_lost(self, exc: Exception | None) -> None:
        self._forget()
        super().connection_lost(exc)  # type: ignore[misc]


class _H11HeaderDeadline(_HeaderDeadline):
    """For uvicorn's h11 protocol: the client's state stays IDLE until its headers are in."""

    conn: Any

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._opened()
        self._arm_header_timer()

    def data_received(self, data: bytes) -> None:
        import h11

        super().data_received(data)  # type: ignore[misc]
        if self.conn.their_state is h11.IDLE:
            self._arm_header_timer()
        else:
            self._disarm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._forget()
        super().connection_lost(exc)  # type: ignore[misc]


def _protocol_class(http: str | type) -> type:
    """The class of uvicorn's ``http`` setting ("auto", "h11", "httptools", "module:Class")."""
    if not isinstance(http, str):
        return http
    from uvicorn.config import HTTP_PROTOCOLS
    from uvicorn.importer import ImportFromStringError, import_from_string

    try:
        found: type = import_from_string(HTTP_PROTOCOLS.get(http, http))
    except (ImportError, ImportFromStringError) as error:
        raise ConfigError(f"HTTP protocol {http!r}: {error}") from None
    return found


@functools.cache
def _with_deadline(http: str | type) -> type:
    """uvicorn's protocol ``http`` with :class:`_HeaderDeadline` mixed in (once per process)."""
    base = _protocol_class(http)
    deadline: type[_HeaderDeadline]
    if hasattr(base, "on_headers_complete"):
        deadline = _HttpToolsHeaderDeadline
    elif hasattr(base, "handle_events"):
        deadline = _H11HeaderDeadline
    else:
        raise ConfigError(f"{base.__name__} is not an HTTP protocol of uvicorn's")
    return type(f"HeaderDeadline{base.__name__}", (deadline, base), {})


def _protocol_with_deadline(
    http: str | type, seconds: float, budget: int | None, **arguments: Any
) -> Any:
    protocol = _with_deadline(http)(**arguments)
    protocol.header_timeout = seconds
    protocol.connection_budget = _process_connection_budget() if budget is None else budget
    return protocol


def with_header_timeout(http: str | type, seconds: float, budget: int | None = None) -> Any:
    """uvicorn's protocol ``http`` (a class, or a name uvicorn knows) with a header deadline of
    ``seconds``: pass the result as uvicorn's ``http``.

    A connection that has not delivered a request's headers ``seconds`` after it opened, or
    after the request's first byte, is closed; idle keep-alive connections stay uvicorn's
    (``timeout_keep_alive``). With more than ``budget`` connections open (default: each
    process's :func:`connection_budget`), the one that has waited longest for its headers is
    closed. The result is a protocol factory, not a class, so that it pickles
    (``ciess serve --workers N`` sends it to each API process): the class is made in
    each process on first use.
    """
    if seconds <= 0:
        raise ConfigError(f"a header timeout must be > 0 seconds, got {seconds}")
    if budget is not None and budget < 1:
        raise ConfigError(f"a connection budget must be at least 1, got {budget}")
    _with_deadline(http)  # refuse a name or class that cannot take the deadline now
    return functools.partial(_protocol_with_deadline, http, float(seconds), budget)
