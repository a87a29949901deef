"""Bad input is a bounded 4xx, never a 5xx; limits on body, batch and id size; header timeout."""

from __future__ import annotations

import asyncio
import pickle
import resource
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import uvicorn
from fastapi.testclient import TestClient
from starlette.types import Receive, Scope, Send

from ciess_core.errors import ConfigError
from service.errors import bounded, echo, validation_errors
from service.fast_path import TopKFastPath
from service.limits import (
    SPARE_DESCRIPTORS,
    BodySizeLimit,
    check_ids,
    connection_budget,
    with_header_timeout,
)
from service.main import create_app
from service.metrics import MetricsMiddleware
from service.schemas import MAX_BATCH_USERS, MAX_ID_LENGTH
from service.settings import Settings, load_settings
from tests.service.conftest import admin_headers, free_port, live_server

# Every error body here stays under this many bytes, whatever the request sent.
BOUND = 4096
JSON = {"Content-Type": "application/json"}
HUGE = "9" * 400


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings), raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/recommendations", '{"user_ids":["u1"],"k":NaN}', "k"),
        ("/v1/recommendations", '{"user_ids":["u1"],"k":Infinity}', "k"),
        ("/v1/recommendations", '{"user_ids":["u1"],"k":-Infinity}', "k"),
        ("/v1/recommendations", '{"user_ids":["u1"],"k":1e400}', "k"),
        ("/v1/recommendations", f'{{"user_ids":["u1"],"k":{HUGE}}}', "k"),
        ("/v1/recommendations", '{"user_ids":[NaN]}', "user_ids"),
        ("/v1/recommendations", '{"user_ids":["u1"],"exclude_seen":NaN}', "exclude_seen"),
        ("/v1/admin/budget", '{"target_sparsity":NaN}', "target_sparsity"),
        ("/v1/admin/budget", '{"target_sparsity":Infinity}', "target_sparsity"),
        ("/v1/admin/budget", '{"target_sparsity":-Infinity}', "target_sparsity"),
        ("/v1/admin/budget", f'{{"max_parameters":{HUGE}}}', "max_parameters"),
        ("/v1/admin/budget", f'{{"max_bytes":{HUGE}}}', "max_bytes"),
        ("/v1/admin/budget", f'{{"max_bytes":-{HUGE}}}', "max_bytes"),
        ("/v1/admin/budget", '{"max_bytes":1e400}', "max_bytes"),
        ("/v1/admin/budget", '{"max_parameters":NaN}', "max_parameters"),
    ],
)
def test_non_finite_and_huge_numbers_are_a_422_naming_the_field(
    client: TestClient, path: str, body: str, field: str
) -> None:
    response = client.post(path, content=body, headers={**JSON, **admin_headers()})
    assert response.status_code == 422, response.text
    assert len(response.content) < BOUND
    errors = response.json()["detail"]
    assert any(error["loc"][:2] == ["body", field] for error in errors), errors
    assert HUGE not in response.text


def test_validation_errors_echo_little(client: TestClient) -> None:
    long_ids = {"user_ids": ["x" * 100_000] * 50}  # 5 MB of ids in a 5 MB body: 413 first
    response = client.post("/v1/recommendations", json=long_ids)
    assert response.status_code == 413
    over_the_ceiling = {"user_ids": ["x" * (MAX_ID_LENGTH + 1)] * 200}
    response = client.post("/v1/recommendations", json=over_the_ceiling)
    assert response.status_code == 422 and len(response.content) < BOUND
    errors = response.json()["detail"]
    assert len(errors) == 11 and errors[-1]["msg"] == "and 190 more error(s)"
    assert errors[0]["loc"] == ["body", "user_ids", 0]
    assert len(errors[0]["input"]) <= 64
    too_many = {"user_ids": ["u1"] * (MAX_BATCH_USERS + 1)}
    response = client.post("/v1/recommendations", json=too_many)
    assert response.status_code == 422 and len(response.content) < BOUND
    assert response.json()["detail"][0]["input"] == f"<a list of {MAX_BATCH_USERS + 1} values>"
    extra_name = {"user_ids": ["u1"], "z" * 200_000: 1}
    response = client.post("/v1/recommendations", json=extra_name)
    assert response.status_code == 422 and len(response.content) < BOUND


def test_bounded_helpers() -> None:
    assert bounded("short", 10) == "short"
    cut = bounded("a" * 50 + "TAIL", 20)
    assert len(cut) <= 20 and cut.endswith("TAIL") and " … " in cut
    assert [echo(v) for v in (float("nan"), float("inf"), -float("inf"))] == [
        "NaN",
        "Infinity",
        "-Infinity",
    ]
    assert echo(10**400) == "<an integer of 401 digits>"
    assert echo(1 - 10**400) == "<an integer of 400 digits>"
    assert echo(2**63 - 1) == 2**63 - 1
    assert echo({"a": 1}) == "<an object of 1 fields>"
    errors = validation_errors([{"type": "t", "loc": ("body", "q" * 1000), "msg": "m" * 5000}])
    assert len(errors[0]["loc"][1]) <= 64 and len(errors[0]["msg"]) <= 256


def test_a_body_that_is_not_utf8_is_a_short_400(client: TestClient) -> None:
    response = client.post("/v1/recommendations", content=b'{"user_ids":["\xff"]}', headers=JSON)
    assert response.status_code == 400 and len(response.content) < BOUND


def test_a_long_unknown_id_gets_a_bounded_answer(client: TestClient, settings: Settings) -> None:
    megabyte = "x" * 1_000_000
    response = client.post("/v1/recommendations", json={"user_ids": [megabyte]})
    assert response.status_code == 422 and len(response.content) < BOUND
    over_setting = "y" * (settings.max_id_length + 1)
    for response in (
        client.get(f"/v1/users/{over_setting}/recommendations"),
        client.get(f"/v1/users/{'z' * 60_000}/recommendations"),
        client.post("/v1/recommendations", json={"user_ids": ["u1", over_setting]}),
        client.post("/v1/recommendations", json={"user_ids": ["u1"], "item_ids": [over_setting]}),
        client.get("/v1/users/u1/recommendations", params={"item_id": over_setting}),
    ):
        assert response.status_code == 422, response.text
        assert len(response.content) < BOUND
    detail = client.post("/v1/recommendations", json={"user_ids": ["u1", over_setting]}).json()
    assert detail["detail"] == (
        f"user_ids[1]: an id of {settings.max_id_length + 1} characters, more than the "
        f"{settings.max_id_length} allowed (the max_id_length setting)"
    )
    # Ids as long as the ceiling allows, all unknown: the 404 is cut, not as long as they are.
    lenient = settings.replace(max_id_length=MAX_ID_LENGTH)
    with TestClient(create_app(lenient)) as wide:
        ids = [str(n) * MAX_ID_LENGTH for n in range(5)]
        response = wide.post("/v1/recommendations", json={"user_ids": ids})
        assert response.status_code == 404
        assert len(response.json()["detail"]) <= 1024
        assert response.json()["detail"].endswith("knows 120 users")


def test_the_batch_size_setting(settings: Settings) -> None:
    small = settings.replace(max_batch_users=3)
    with TestClient(create_app(small)) as client:
        assert client.post("/v1/recommendations", json={"user_ids": ["u1"] * 3}).status_code == 200
        response = client.post("/v1/recommendations", json={"user_ids": ["u1"] * 4})
        assert response.status_code == 422
        assert response.json()["detail"] == (
            "user_ids: 4 ids, more than the 3 one request may name (the max_batch_users setting)"
        )


def test_check_ids() -> None:
    check_ids(["a", "bb"], "ids", max_length=2, max_count=2)
    with pytest.raises(ValueError, match=r"ids\[1\]: an id of 3 characters"):
        check_ids(["a", "bbb"], "ids", max_length=2)
    with pytest.raises(ValueError, match="3 ids, more than the 2"):
        check_ids(["a"] * 3, "ids", max_length=2, max_count=2)


def test_an_oversized_body_is_413_before_authentication(settings: Settings) -> None:
    small = settings.replace(max_body_bytes=1000)
    with TestClient(create_app(small)) as client:
        padding = "u1" * 600
        for path in ("/v1/admin/budget", "/v1/recommendations", "/v1/admin/reload", "/nowhere"):
            response = client.post(path, content=padding, headers=JSON)  # no token
            assert response.status_code == 413, path
            assert response.headers["connection"] == "close"
            assert "max_body_bytes" in response.json()["detail"]

        def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
            yield b'{"user_ids": ["u1"'
            yield b', "u1"' * 400
            yield b"]}"

        streamed = client.post("/v1/recommendations", content=chunks(), headers=JSON)
        assert streamed.status_code == 413
        within = client.post("/v1/recommendations", json={"user_ids": ["u1"] * 100})
        assert within.status_code == 200
        assert client.get("/v1/users/u1/recommendations").status_code == 200
        metrics = client.get("/metrics").text
        assert 'method="POST",route="unmatched",status="413"} 4.0' in metrics


def test_the_body_limit_runs_ahead_of_the_fast_path(settings: Settings) -> None:
    stack = [entry.cls for entry in create_app(settings).user_middleware]
    assert stack == [MetricsMiddleware, BodySizeLimit, TopKFastPath]  # outermost first


def test_the_body_limit_answers_without_reading_the_body() -> None:
    reads = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        reads.append(await receive())
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    client = TestClient(BodySizeLimit(app, max_bytes=10))  # no lifespan: not entered
    assert client.post("/", content=b"x" * 11).status_code == 413
    assert reads == []
    assert client.post("/", content=b"x" * 10).status_code == 200
    assert client.request("GET", "/", content=b"x" * 11).status_code == 200  # not looked at


def test_a_300_mb_declaration_is_refused_at_once(settings: Settings) -> None:
    """Over a real socket: the 413 comes back before any of the body is sent."""
    with live_server(settings) as url:
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:
            started = time.monotonic()
            connection.sendall(
                b"POST /v1/admin/budget HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: application/json\r\nContent-Length: 300000000\r\n\r\n"
            )
            answer = _read_all(connection)
            assert time.monotonic() - started < 2
    assert answer.startswith(b"HTTP/1.1 413")
    assert b"max_body_bytes" in answer


def _read_all(connection: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    received = b""
    while chunk := connection.recv(65536):
        received += chunk
    return received


def test_limit_settings_have_safe_defaults_and_are_validated() -> None:
    defaults = Settings()
    assert defaults.max_body_bytes == 1_048_576
    assert (defaults.max_batch_users, defaults.max_id_length) == (1000, 256)
    assert defaults.max_queued_jobs == 8
    assert defaults.keep_alive_timeout_seconds == 5 and defaults.header_timeout_seconds == 10.0
    loaded = load_settings({"CIESS_MAX_BODY_BYTES": "2048", "CIESS_HEADER_TIMEOUT_SECONDS": "2.5"})
    assert loaded.max_body_bytes == 2048 and loaded.header_timeout_seconds == 2.5
    for bad in (
        {"max_body_bytes": 0},
        {"max_batch_users": MAX_BATCH_USERS + 1},
        {"max_id_length": 0},
        {"max_queued_jobs": 0},
        {"header_timeout_seconds": 0.0},
    ):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            Settings(**bad)


async def _hello(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"hello"})


@contextmanager
def _server(http: type[asyncio.Protocol] | str) -> Iterator[int]:
    config = uvicorn.Config(
        _hello, host="127.0.0.1", port=free_port(), http=http, lifespan="off", log_level="error"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    try:
        yield config.port
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def _closed_within(port: int, sent: bytes, seconds: float) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=seconds) as connection:
        connection.sendall(sent)
        try:
            return _read_all(connection) == b""
        except TimeoutError:
            return False


@pytest.mark.parametrize("http", ["h11", "httptools", "coalescing"])
def test_slow_headers_are_cut_off(http: str) -> None:
    if http == "coalescing":
        from service.http_protocol import CoalescingHttpToolsProtocol

        protocol = with_header_timeout(CoalescingHttpToolsProtocol, 0.3)
    else:
        protocol = with_header_timeout(http, 0.3)
    protocol = pickle.loads(pickle.dumps(protocol))  # as uvicorn --workers N sends it
    with _server(protocol) as port:
        started = time.monotonic()
        assert _closed_within(port, b"", 3)  # connected, silent
        assert _closed_within(port, b"GET / HTTP/1.1\r\nHost: x\r\n", 3)  # headers unfinished
        assert time.monotonic() - started < 3
        with socket.create_connection(("127.0.0.1", port), timeout=3) as connection:
            for _ in range(2):  # a prompt client keeps its keep-alive connection
                connection.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                assert connection.recv(65536).startswith(b"HTTP/1.1 200")
                time.sleep(0.5)  # idle between requests: uvicorn's keep-alive timeout, not ours


@pytest.mark.parametrize("http", ["h11", "httptools"])
def test_near_the_connection_budget_the_longest_waiting_slow_client_makes_room(http: str) -> None:
    """With the budget full of clients that never end their headers, a prompt client still gets
    its answer: the connection that has waited longest is closed, the others stay open."""
    with _server(with_header_timeout(http, 30.0, budget=3)) as port:
        slow = []
        for _ in range(3):
            connection = socket.create_connection(("127.0.0.1", port), timeout=5)
            connection.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
            slow.append(connection)
            time.sleep(0.05)  # arrival order: the first is the oldest
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as prompt:
                prompt.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                assert prompt.recv(65536).startswith(b"HTTP/1.1 200")
            assert slow[0].recv(65536) == b""  # closed by the server
            for connection in slow[1:]:
                connection.settimeout(0.3)
                with pytest.raises(TimeoutError):  # still open, still waiting
                    connection.recv(65536)
        finally:
            for connection in slow:
                connection.close()


def test_the_default_connection_budget_keeps_spare_descriptors() -> None:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        pytest.skip("no descriptor limit in this process")
    assert connection_budget() == max(1, soft - max(SPARE_DESCRIPTORS, soft // 8))
    assert connection_budget() < soft
    with pytest.raises(ConfigError, match="at least 1"):
        with_header_timeout("h11", 1.0, budget=0)


def test_with_header_timeout_refuses_what_it_cannot_wrap() -> None:
    with pytest.raises(ConfigError, match="> 0"):
        with_header_timeout("h11", 0)
    with pytest.raises(ConfigError, match="not an HTTP protocol"):
        with_header_timeout(dict, 1.0)
    with pytest.raises(ConfigError, match="HTTP protocol 'nope'"):
        with_header_timeout("nope", 1.0)


@pytest.mark.parametrize(
    ("path", "body", "authorized"),
    [
        ("/v1/recommendations", b'{"user_ids": ["\\ud800"], "k": 5}', False),
        ("/v1/admin/budget", b'{"target_sparsity": 0.5, "method": "\\udfff"}', True),
    ],
)
def test_a_lone_surrogate_in_a_json_string_gets_a_422_not_a_500(
    client: TestClient, path: str, body: bytes, authorized: bool
) -> None:
    headers = {"Content-Type": "application/json", **(admin_headers() if authorized else {})}
    answer = client.post(path, content=body, headers=headers)
    assert answer.status_code == 422
    assert "\\ud800" in answer.text or "\\udfff" in answer.text  # shown escaped, encodable
    assert bounded("a\ud800b") == "a\\ud800b"


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/recommendations", '{"user_ids": ["u1"], "k": true}'),
        ("/v1/recommendations", '{"user_ids": ["u1"], "k": "5"}'),
        ("/v1/recommendations", '{"user_ids": ["u1"], "exclude_seen": 1}'),
        ("/v1/recommendations/for-items", '{"item_ids": ["i1"], "offset": false}'),
        ("/v1/admin/budget", '{"target_sparsity": false}'),
        ("/v1/admin/budget", '{"max_parameters": "1000"}'),
    ],
)
def test_json_numbers_and_booleans_are_taken_only_as_their_own_types(
    client: TestClient, path: str, body: str
) -> None:
    headers = {"Content-Type": "application/json", **admin_headers()}
    assert client.post(path, content=body.encode(), headers=headers).status_code == 422
