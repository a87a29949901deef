"""One write per loop turn: the transport under ``ciess serve``'s HTTP protocol."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from service.cli import uvicorn_http_protocol
from service.http_protocol import CoalescingHttpToolsProtocol, CoalescingTransport
from service.settings import Settings
from tests.service.conftest import live_server


class RecordingTransport(asyncio.Transport):
    """Stands in for the socket transport: records what reaches it."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False
        self.aborted = False

    def write(self, data: Any) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 1)}.get(name, default)


async def _next_turn() -> None:
    await asyncio.sleep(0)
    await asyncio.sleep(0)


def test_writes_of_one_turn_leave_as_one() -> None:
    async def scenario() -> RecordingTransport:
        inner = RecordingTransport()
        transport = CoalescingTransport(inner, asyncio.get_running_loop())
        transport.write(b"HTTP/1.1 200 OK\r\n\r\n")
        transport.write(bytearray(b"{}"))
        assert inner.writes == []  # nothing before the turn ends
        assert transport.get_write_buffer_size() == 21
        await _next_turn()
        assert inner.writes == [b"HTTP/1.1 200 OK\r\n\r\n{}"]
        transport.write(b"next")  # a later turn: its own write
        await _next_turn()
        assert transport.get_extra_info("peername") == ("127.0.0.1", 1)  # the rest passes through
        return inner

    inner = asyncio.run(scenario())
    assert inner.writes[-1] == b"next" and len(inner.writes) == 2


def test_close_sends_what_is_pending_and_abort_drops_it() -> None:
    async def scenario() -> tuple[RecordingTransport, RecordingTransport]:
        loop = asyncio.get_running_loop()
        closing, aborting = RecordingTransport(), RecordingTransport()
        first, second = CoalescingTransport(closing, loop), CoalescingTransport(aborting, loop)
        first.write(b"last words")
        first.close()
        assert closing.writes == [b"last words"] and closing.closed
        second.write(b"never sent")
        second.abort()
        first.write(b"after close")  # dropped at the flush: the transport is closing
        await _next_turn()
        return closing, aborting

    closing, aborting = asyncio.run(scenario())
    assert closing.writes == [b"last words"]
    assert aborting.writes == [] and aborting.aborted


def test_the_service_runs_on_it_and_answers_over_keep_alive(settings: Settings) -> None:
    assert uvicorn_http_protocol() is CoalescingHttpToolsProtocol
    assert uvicorn_http_protocol("httptools") == "httptools"  # `ciess serve --http httptools`
    with live_server(settings) as base, httpx.Client(base_url=base) as client:
        for _ in range(3):  # one connection, several responses in a row
            answer = client.get("/v1/users/u0/recommendations", params={"k": 5})
            assert answer.status_code == 200 and len(answer.json()["items"]) == 5
        assert client.get("/v1/users/nobody/recommendations").status_code == 404
        assert client.get("/openapi.json").json()["info"]["title"] == "ciess"
