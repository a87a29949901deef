"""The requests of bench/reliability.py: a raw HTTP/1.1 client, the hand-written bad-input suite
and the non-finite / huge numbers injected into every number field of the OpenAPI schema.

The client writes the bytes it is given (a body json.dumps would refuse, a non-UTF-8 body, a
malformed request line) and reads the answer to the end (``Connection: close``), so that every
case is exactly the request its name says. Each case carries the one status it must get; the
statuses are the service's documented ones (``service/errors.py``: 400 for a body that is not
UTF-8 or JSON that cannot be read, 401 / 403 for a missing / wrong admin token, 404, 405, 409,
413, 422 for invalid input).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

HOST = "127.0.0.1"
# An error body larger than this echoes the request: the service bounds its error bodies.
MAX_ERROR_BODY_BYTES = 8192
# Literals json.dumps will not write (NaN, infinities) or a parser turns into infinities or
# huge integers; each goes in place of a number, as raw text.
NUMBER_LITERALS = (
    "NaN",
    "Infinity",
    "-Infinity",
    "1e400",
    "-1e400",
    "1" + "0" * 399,
    "-" + "1" * 400,
    "1" + "0" * 399 + ".5",
)
# Over Python's 4,300-digit limit on integer parsing: JSON that cannot be read (400).
TOO_MANY_DIGITS = "9" * 5000
QUERY_LITERALS = ("NaN", "Infinity", "-Infinity", "1e400", "1" + "0" * 399)


@dataclass(frozen=True)
class Answer:
    """One HTTP answer; ``status`` 0 when none came (closed, reset or timed out)."""

    status: int
    headers: dict[str, str]
    body: bytes
    seconds: float
    error: str = ""

    def json(self) -> Any:
        return json.loads(self.body)


def _dechunk(body: bytes) -> bytes:
    out, position = bytearray(), 0
    while True:
        end = body.find(b"\r\n", position)
        if end < 0:
            return bytes(out)
        size = int(body[position:end].split(b";")[0] or b"0", 16)
        if size == 0:
            return bytes(out)
        out += body[end + 2 : end + 2 + size]
        position = end + 2 + size + 2


def parse_answer(raw: bytes, seconds: float, error: str = "") -> Answer:
    """An answer from the bytes a server sent on a connection it then closed."""
    head, separator, body = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    try:
        status = int(lines[0].split(b" ", 2)[1]) if separator else 0
    except (IndexError, ValueError):
        status = 0
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = _dechunk(body)
    elif "content-length" in headers:
        body = body[: int(headers["content-length"])]
    return Answer(status, headers, body, seconds, error if not status else "")


def request_bytes(
    port: int,
    method: str,
    target: str,
    headers: tuple[tuple[str, str], ...] = (),
    body: bytes | None = None,
) -> bytes:
    """An HTTP/1.1 request with ``Host`` and ``Connection: close``; ``Content-Length`` is added
    for a body unless ``headers`` set it or ``Transfer-Encoding``."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: {HOST}:{port}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers]
    named = {name.lower() for name, _ in headers}
    if body is not None and not named & {"content-length", "transfer-encoding"}:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")


def send_raw(port: int, data: bytes, timeout: float = 30.0) -> Answer:
    """Write ``data`` on a new connection and read until the server closes it."""
    started = time.perf_counter()
    chunks: list[bytes] = []
    error = ""
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as connection:
            connection.settimeout(timeout)
            try:
                connection.sendall(data)
            except OSError as failure:  # the server may answer and close before reading it all
                error = f"send: {failure}"
            while chunk := connection.recv(65536):
                chunks.append(chunk)
    except OSError as failure:
        error = error or str(failure) or type(failure).__name__
    return parse_answer(b"".join(chunks), time.perf_counter() - started, error)


def send(
    port: int,
    method: str,
    target: str,
    headers: tuple[tuple[str, str], ...] = (),
    body: bytes | None = None,
    timeout: float = 30.0,
) -> Answer:
    return send_raw(port, request_bytes(port, method, target, headers, body), timeout)


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("Authorization", f"Bearer {token}"),)


JSON = (("Content-Type", "application/json"),)


@dataclass(frozen=True)
class Case:
    """One bad request and the status it must get. ``raw``: the request's exact bytes (the port
    is filled in), for requests the builder cannot write (malformed HTTP)."""

    name: str
    method: str
    target: str
    expect: int
    body: bytes | None = None
    headers: tuple[tuple[str, str], ...] = ()
    raw: bytes | None = None
    # the token must not reach the server's log (a token sent in the query string)
    secret: str | None = None

    def send(self, port: int, timeout: float = 30.0) -> Answer:
        if self.raw is not None:
            return send_raw(port, self.raw.replace(b"{port}", str(port).encode()), timeout)
        return send(port, self.method, self.target, self.headers, self.body, timeout)


@dataclass(frozen=True)
class World:
    """What the cases refer to: a known user and items, an unknown user, the admin token, a
    cancelled job's id."""

    user: str
    items: tuple[str, ...]
    token: str
    cancelled_job: int
    extra: dict[str, Any] = field(default_factory=dict)


def _json(value: Any) -> bytes:
    return json.dumps(value).encode()


def _recommendation_cases(world: World) -> Iterator[Case]:
    user = world.user
    path = f"/v1/users/{user}/recommendations"
    for query, why in (
        ("k=0", "k below 1"),
        ("k=-1", "negative k"),
        ("k=1001", "k over 1000"),
        ("k=abc", "k not a number"),
        ("k=1.5", "fractional k"),
        ("k=", "empty k"),
        ("k=NaN", "k NaN"),
        ("k=Infinity", "k infinite"),
        ("k=" + "9" * 400, "k of 400 digits"),
        ("k=%00", "k a NUL byte"),
        ("offset=-1", "negative offset"),
        ("offset=10001", "offset over 10000"),
        ("offset=x", "offset not a number"),
        ("exclude_seen=maybe", "exclude_seen not a bool"),
        ("ofset=5", "misspelt offset (unknown parameter)"),
        ("foo=bar", "unknown query parameter"),
        ("k=5&limit=5", "unknown parameter beside a known one"),
        ("fallback=unpopular", "unknown fallback"),
        ("item_id=no-such-item", "unknown item in the item list"),
        ("item_id=" + "i" * 300, "item id over max_id_length"),
    ):
        yield Case(f"GET top-k: {why}", "GET", f"{path}?{query}", 422)
    yield Case("GET top-k: unknown user", "GET", "/v1/users/no-such-user/recommendations", 404)
    yield Case(
        "GET top-k: user id of 300 characters (over max_id_length)",
        "GET",
        f"/v1/users/{'u' * 300}/recommendations",
        422,
    )
    yield Case(
        "GET top-k: user id of 5,000 characters",
        "GET",
        f"/v1/users/{'u' * 5000}/recommendations",
        422,
    )
    yield Case(
        "GET top-k: user id with invalid UTF-8 (%FF%FE)",
        "GET",
        "/v1/users/%FF%FE/recommendations",
        404,
    )
    yield Case(
        "GET top-k: user id with an encoded slash", "GET", "/v1/users/u1%2Fx/recommendations", 404
    )
    yield Case(
        "GET top-k: user id with an encoded NUL", "GET", "/v1/users/u%001/recommendations", 404
    )
    similar = f"/v1/items/{world.items[0]}/similar"
    yield Case("GET similar: unknown item", "GET", "/v1/items/no-such-item/similar", 404)
    yield Case("GET similar: k=0", "GET", f"{similar}?k=0", 422)
    yield Case("GET similar: k=NaN", "GET", f"{similar}?k=NaN", 422)
    yield Case("GET similar: unknown metric", "GET", f"{similar}?metric=euclid", 422)
    yield Case("GET similar: unknown parameter", "GET", f"{similar}?user=u1", 422)
    yield Case(
        "GET similar: item id of 300 characters", "GET", f"/v1/items/{'i' * 300}/similar", 422
    )


def _batch_bodies(world: World) -> Iterator[tuple[str, bytes, int]]:
    user = world.user
    good = {"user_ids": [user], "k": 5}
    for why, body in (
        ("unterminated JSON", b'{"user_ids": ["' + user.encode() + b'"'),
        ("trailing comma", b'{"user_ids": ["u1"],}'),
        ("single quotes", b"{'user_ids': ['u1']}"),
        ("bare word", b"user_ids"),
        ("comment in JSON", b'{"user_ids": ["u1"] /* hi */}'),
        ("two JSON documents", b'{"user_ids": ["u1"]}{"user_ids": ["u1"]}'),
    ):
        yield f"malformed JSON: {why}", body, 422
    for why, value in (
        ("null", None),
        ("an array", []),
        ("a string", "u1"),
        ("a number", 123),
        ("an empty object", {}),
        ("user_ids a string", {"user_ids": user}),
        ("user_ids empty", {"user_ids": []}),
        ("user_ids numbers", {"user_ids": [1, 2]}),
        ("user_ids with null", {"user_ids": [None]}),
        ("user_ids an object", {"user_ids": {"u": 1}}),
        ("k a word", {**good, "k": "ten"}),
        ("k 0", {**good, "k": 0}),
        ("k 1001", {**good, "k": 1001}),
        ("k negative", {**good, "k": -5}),
        ("k fractional", {**good, "k": 1.5}),
        ("k true (a bool, not an integer)", {**good, "k": True}),
        ("k a numeric string", {**good, "k": "5"}),
        ("k null", {**good, "k": None}),
        ("offset negative", {**good, "offset": -1}),
        ("offset 10001", {**good, "offset": 10001}),
        ("exclude_seen a word", {**good, "exclude_seen": "maybe"}),
        ("exclude_seen 1 (a number, not a bool)", {**good, "exclude_seen": 1}),
        ("unknown field", {**good, "foo": 1}),
        ("include_items and item_ids both", {**good, "include_items": ["i1"], "item_ids": ["i1"]}),
        ("include_items a string", {**good, "include_items": "i1"}),
        ("include_items unknown", {**good, "include_items": ["no-such-item"]}),
        ("exclude_items numbers", {**good, "exclude_items": [1]}),
        ("unknown fallback", {**good, "fallback": "nope"}),
        ("1,001 user ids (over max_batch_users)", {"user_ids": [user] * 1001}),
        ("10,001 user ids (over the schema's 10,000)", {"user_ids": [user] * 10001}),
        ("user id of 300 characters", {"user_ids": ["u" * 300]}),
        ("user id of 2,000 characters", {"user_ids": ["u" * 2000]}),
        ("user id of 600,000 characters", {"user_ids": ["u" * 600_000]}),
        ("nesting 100 deep", {"user_ids": json.loads("[" * 100 + "]" * 100)}),
    ):
        yield why, _json(value), 422
    yield "unknown user, no fallback", _json({"user_ids": ["no-such-user"]}), 404
    yield "1,000 unknown users", _json({"user_ids": [f"nobody-{i}" for i in range(1000)]}), 404
    yield "nesting 100,000 deep (cannot be read)", b"[" * 100_000 + b"]" * 100_000, 400
    yield "duplicate key, the last one invalid", b'{"user_ids": ["u1"], "k": 5, "k": 0}', 422
    yield "non-UTF-8 body", b'{"user_ids": ["\xff\xfe"]}', 400
    yield "Latin-1 body", b'{"user_ids": ["caf\xe9"]}', 400
    yield (
        "user id a lone UTF-16 surrogate (\\ud800)",
        b'{"user_ids": ["\\ud800"]}',
        422,
    )
    yield (
        "k with 5,000 digits (cannot be read)",
        b'{"user_ids": ["u1"], "k": ' + TOO_MANY_DIGITS.encode() + b"}",
        400,
    )


def _body_cases(world: World) -> Iterator[Case]:
    for why, body, status in _batch_bodies(world):
        yield Case(f"POST batch: {why}", "POST", "/v1/recommendations", status, body, JSON)
    valid = _json({"user_ids": [world.user]})
    for why, headers, body in (
        ("empty body", JSON, b""),
        ("whitespace body", JSON, b"   "),
        ("empty body, no content type", (), b""),
        ("JSON sent as text/plain", (("Content-Type", "text/plain"),), valid),
        ("form-encoded", (("Content-Type", "application/x-www-form-urlencoded"),), b"user_ids=u1"),
        (
            "multipart",
            (("Content-Type", "multipart/form-data; boundary=x"),),
            b'--x\r\nContent-Disposition: form-data; name="user_ids"\r\n\r\nu1\r\n--x--\r\n',
        ),
        ("JSON sent as application/xml", (("Content-Type", "application/xml"),), valid),
    ):
        yield Case(f"POST batch: {why}", "POST", "/v1/recommendations", 422, body, headers)
    for why, value, status in (
        ("item_ids empty", {"item_ids": []}, 422),
        ("unknown items only", {"item_ids": ["no-such-item"]}, 422),
        ("item_ids a string", {"item_ids": world.items[0]}, 422),
        ("k 0", {"item_ids": list(world.items[:2]), "k": 0}, 422),
        (
            "offset false (a bool, not an integer)",
            {"item_ids": list(world.items[:2]), "offset": False},
            422,
        ),
        ("unknown field", {"item_ids": list(world.items[:2]), "user_id": "u1"}, 422),
        ("item id of 2,000 characters", {"item_ids": ["i" * 2000]}, 422),
    ):
        yield Case(
            f"POST for-items: {why}",
            "POST",
            "/v1/recommendations/for-items",
            status,
            _json(value),
            JSON,
        )
    yield Case(
        "POST for-items: malformed JSON",
        "POST",
        "/v1/recommendations/for-items",
        422,
        b'{"item_ids": [',
        JSON,
    )
    yield Case(
        "POST for-items: query parameter",
        "POST",
        "/v1/recommendations/for-items?k=5",
        422,
        _json({"item_ids": list(world.items[:2])}),
        JSON,
    )
    yield Case("POST batch: query parameter", "POST", "/v1/recommendations?k=5", 422, valid, JSON)
    # Over the 1 MiB body limit, streamed in full: 413 all the same.
    big = _json({"user_ids": [world.user] * 300_000})
    yield Case(
        "POST batch: 2 MB body with Content-Length", "POST", "/v1/recommendations", 413, big, JSON
    )
    chunked = (
        b"".join(
            b"%x\r\n%s\r\n" % (len(part), part)
            for part in (big[i : i + 65536] for i in range(0, len(big), 65536))
        )
        + b"0\r\n\r\n"
    )
    yield Case(
        "POST batch: 2 MB chunked body",
        "POST",
        "/v1/recommendations",
        413,
        chunked,
        (*JSON, ("Transfer-Encoding", "chunked")),
    )


def _route_cases(world: World) -> Iterator[Case]:
    token = bearer(world.token)
    for method, target, status, headers in (
        ("GET", "/v1/nope", 404, ()),
        ("GET", "/v2/users/u1/recommendations", 404, ()),
        ("GET", "/v1/users/u1", 404, ()),
        ("GET", "/v1/users/../admin/jobs", 404, ()),
        ("GET", "/docs/static/../../../etc/passwd", 404, ()),
        ("GET", "/v1/admin/nope", 404, token),
        ("DELETE", "/v1/recommendations", 405, ()),
        ("PUT", f"/v1/users/{world.user}/recommendations", 405, ()),
        ("GET", "/v1/recommendations", 405, ()),
        ("POST", "/healthz", 405, ()),
        ("DELETE", "/v1/model", 405, ()),
        ("PATCH", "/v1/admin/budget", 405, token),
        ("GET", "/v1/admin/reload", 405, token),
    ):
        yield Case(
            f"{method} {target[:40]}: no such route or method",
            method,
            target,
            status,
            headers=headers,
        )
    for name, raw in (
        ("unknown method BREW", b"BREW /v1/model HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
        (
            "header line without a colon",
            b"GET /v1/model HTTP/1.1\r\nHost: x\r\nNoColonHere\r\nConnection: close\r\n\r\n",
        ),
        (
            "Content-Length not a number",
            b"POST /v1/recommendations HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\nConnection: close\r\n\r\n",
        ),
        (
            "negative Content-Length",
            b"POST /v1/recommendations HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\nConnection: close\r\n\r\n",
        ),
        (
            "Content-Length and Transfer-Encoding both",
            b"POST /v1/recommendations HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\n\r\n",
        ),
        (
            "bad chunk size",
            b"POST /v1/recommendations HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\nzz\r\n",
        ),
        ("HTTP/2 preface over HTTP/1.1", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
    ):
        yield Case(f"raw HTTP: {name}", "", "", 400, raw=raw)


def _admin_cases(world: World) -> Iterator[Case]:
    token = world.token
    good = _json({"target_sparsity": 0.5})
    routes = (
        ("POST", "/v1/admin/budget", good),
        ("GET", "/v1/admin/jobs", None),
        ("GET", f"/v1/admin/jobs/{world.cancelled_job}", None),
        ("POST", f"/v1/admin/jobs/{world.cancelled_job}/cancel", b""),
        ("POST", "/v1/admin/reload", b""),
        ("GET", "/v1/admin/models", None),
        ("POST", "/v1/admin/models/nope/promote", b""),
    )
    for method, target, body in routes:
        headers = JSON if body else ()
        yield Case(f"{method} {target}: no token", method, target, 401, body, headers)
        yield Case(
            f"{method} {target}: wrong token",
            method,
            target,
            403,
            body,
            (*headers, *bearer("x" * 40)),
        )
    budget = "/v1/admin/budget"
    for why, headers, status in (
        ("empty bearer token", (("Authorization", "Bearer "),), 401),
        ("Basic scheme with the token", (("Authorization", f"Basic {token}"),), 401),
        ("the token without a scheme", (("Authorization", token),), 401),
        ("the token in X-Admin-Token", (("X-Admin-Token", token),), 401),
        ("the token's first 31 characters", bearer(token[:31]), 403),
        ("the token and one character more", bearer(token + "x"), 403),
        ("the token upper-cased", bearer(token.upper()), 403),
        ("two Authorization headers, the first wrong", (*bearer("y" * 40), *bearer(token)), 403),
    ):
        yield Case(f"POST budget: {why}", "POST", budget, status, good, (*JSON, *headers))
    for parameter in ("token", "access_token", "api_key", "admin_token"):
        yield Case(
            f"POST budget: the token in the query string ({parameter}=)",
            "POST",
            f"{budget}?{parameter}={quote(token)}",
            401,
            good,
            JSON,
            secret=token,
        )
    yield Case(
        "GET jobs: the token in the query string",
        "GET",
        f"/v1/admin/jobs?token={quote(token)}",
        401,
        secret=token,
    )
    admin = bearer(token)
    for why, target, status in (
        ("no such job", "/v1/admin/jobs/999999", 404),
        ("job id 0", "/v1/admin/jobs/0", 422),
        ("job id negative", "/v1/admin/jobs/-1", 422),
        ("job id a word", "/v1/admin/jobs/abc", 422),
        ("job id of 30 digits", "/v1/admin/jobs/" + "9" * 30, 422),
        ("job id fractional", "/v1/admin/jobs/1.5", 422),
        ("unknown state filter", "/v1/admin/jobs?state=bogus", 422),
        ("limit 0", "/v1/admin/jobs?limit=0", 422),
        ("limit 100000", "/v1/admin/jobs?limit=100000", 422),
    ):
        yield Case(f"GET jobs: {why}", "GET", target, status, headers=admin)
    for why, value in (
        ("none of the three forms", {}),
        ("only a method", {"method": "search"}),
        ("two forms", {"target_sparsity": 0.5, "max_parameters": 1000}),
        ("all three forms", {"target_sparsity": 0.5, "max_parameters": 1000, "max_bytes": 10_000}),
        ("target_sparsity 1.0", {"target_sparsity": 1.0}),
        ("target_sparsity negative", {"target_sparsity": -0.1}),
        ("target_sparsity a word", {"target_sparsity": "half"}),
        ("max_parameters 0", {"max_parameters": 0}),
        ("max_parameters 2**63", {"max_parameters": 2**63}),
        ("max_parameters fractional", {"max_parameters": 10.5}),
        ("max_parameters below one dimension per entity", {"max_parameters": 10}),
        ("max_bytes 1", {"max_bytes": 1}),
        ("unknown method", {"target_sparsity": 0.5, "method": "random"}),
        ("unknown field", {"target_sparsity": 0.5, "priority": "high"}),
        ("a list", [{"target_sparsity": 0.5}]),
    ):
        yield Case(f"POST budget: {why}", "POST", budget, 422, _json(value), (*JSON, *admin))
    yield Case(
        "POST budget: malformed JSON", "POST", budget, 422, b'{"target_sparsity": ', (*JSON, *admin)
    )
    yield Case(
        "POST budget: non-UTF-8 body", "POST", budget, 400, b'{"method": "\xff"}', (*JSON, *admin)
    )
    yield Case(
        "POST budget: method a lone UTF-16 surrogate (\\udfff)",
        "POST",
        budget,
        422,
        b'{"target_sparsity": 0.5, "method": "\\udfff"}',
        (*JSON, *admin),
    )
    for why, target, status in (
        ("no such job", "/v1/admin/jobs/999999/cancel", 404),
        ("job id a word", "/v1/admin/jobs/abc/cancel", 422),
        ("no such version", "/v1/admin/models/no-such-version/promote", 404),
        ("version '..'", "/v1/admin/models/%2E%2E/promote", 422),
        ("version with a space", "/v1/admin/models/a%20b/promote", 422),
        ("version of 300 characters", f"/v1/admin/models/{'v' * 300}/promote", 422),
    ):
        yield Case(f"POST {why}", "POST", target, status, b"", admin)


def bad_input_cases(world: World) -> list[Case]:
    """The bad-input suite: every case a request that must be refused with one status."""
    return [
        *_recommendation_cases(world),
        *_body_cases(world),
        *_route_cases(world),
        *_admin_cases(world),
    ]


# --- numbers injected into every number field of the schema -----------------------------------


def _resolve(schema: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        schema = spec["components"]["schemas"][name]
    return schema


def _is_number(schema: dict[str, Any], spec: dict[str, Any]) -> bool:
    schema = _resolve(schema, spec)
    if schema.get("type") in ("number", "integer"):
        return True
    return any(
        _is_number(member, spec) for member in schema.get("anyOf", []) + schema.get("oneOf", [])
    )


def _base_body(schema: dict[str, Any], name: str) -> dict[str, Any]:
    """The first example naming ``name``, else the first example with ``name`` added."""
    examples = schema.get("examples") or [{}]
    chosen = next((example for example in examples if name in example), examples[0])
    return dict(chosen)


def number_injections(spec: dict[str, Any], admin: bool, token: str, user: str) -> list[Case]:
    """For every operation: each number field of its JSON body, and each number parameter
    (query or path), set to each literal of NUMBER_LITERALS / QUERY_LITERALS.

    Intended: 422; 401 instead for an admin route without the token (``admin`` False); 400 for
    an integer of over 4,300 digits, which the service's JSON parser cannot read (a body is read
    before authentication, as for the body limit).
    """
    cases: list[Case] = []
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            secured = bool(operation.get("security"))
            headers = bearer(token) if admin and secured else ()
            refused = 401 if secured and not admin else None
            target = path.replace("{user_id}", user).replace("{item_id}", "i0")
            target = target.replace("{job_id}", "1").replace("{version}", "v")
            content = operation.get("requestBody", {}).get("content", {})
            if "application/json" in content:
                schema = _resolve(content["application/json"]["schema"], spec)
                for name, field_schema in schema.get("properties", {}).items():
                    if not _is_number(field_schema, spec):
                        continue
                    body = _base_body(schema, name)
                    body[name] = "__NUMBER__"
                    text = json.dumps(body)
                    for literal in (*NUMBER_LITERALS, TOO_MANY_DIGITS):
                        # A body that cannot be read is refused before authentication.
                        unreadable = literal == TOO_MANY_DIGITS
                        status = 400 if unreadable else refused or 422
                        shown = literal if len(literal) < 12 else f"<{len(literal)} characters>"
                        cases.append(
                            Case(
                                f"{method.upper()} {path} body {name}={shown}",
                                method.upper(),
                                target,
                                status,
                                text.replace('"__NUMBER__"', literal).encode(),
                                (*JSON, *headers),
                            )
                        )
            for parameter in operation.get("parameters", []):
                if not _is_number(parameter.get("schema", {}), spec):
                    continue
                for literal in QUERY_LITERALS:
                    shown = literal if len(literal) < 12 else f"<{len(literal)} characters>"
                    if parameter["in"] == "query":
                        where = f"{target}?{parameter['name']}={literal}"
                    else:
                        where = target.replace("/1", f"/{literal}", 1)
                    cases.append(
                        Case(
                            f"{method.upper()} {path} {parameter['in']} {parameter['name']}={shown}",
                            method.upper(),
                            where,
                            refused or 422,
                            b"" if method == "post" else None,
                            headers,
                        )
                    )
    return cases


# --- clients that keep many requests or connections going at once ------------------------------


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One answer on a keep-alive connection (``Content-Length`` bodies, as the service sends)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head[:-4].split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
    length = int(headers.get("content-length", "0"))
    body = await reader.readexactly(length) if length else b""
    return status, headers, body


@dataclass
class Sample:
    """One request of a load: when it was due (seconds from the load's start), how long its
    answer took from then, its status (0: none), the X-Model-Version header and what was wrong
    with it ("" when it got the intended answer)."""

    due: float
    latency: float
    status: int
    version: str
    problem: str


def top_k_problem(status: int, headers: dict[str, str], body: bytes, user: str, k: int) -> str:
    """Why an answer to a single-user top-k is not a valid 200 ("" when it is)."""
    if status != 200:
        return f"status {status}"
    try:
        data = json.loads(body)
        items = data["items"]
        scores = [item["score"] for item in items]
        wrong = (
            data["user_id"] != user
            or len(items) != k
            or not all(isinstance(item["item_id"], str) for item in items)
            or not all(isinstance(s, float | int) and math.isfinite(s) for s in scores)
            or any(a < b for a, b in itertools.pairwise(scores))
            or data["model_version"] != headers.get("x-model-version")
        )
    except (ValueError, KeyError, TypeError) as error:
        return f"unreadable body: {error}"
    return "invalid body" if wrong else ""


class OpenLoop:
    """Single-user top-k requests at a fixed rate on ``connections`` keep-alive connections,
    in a thread of its own until :meth:`stop`. A request due while every connection is busy
    waits for one, and its latency counts from when it was due (no coordinated omission)."""

    def __init__(
        self, port: int, users: list[str], k: int, rps: float, connections: int = 16
    ) -> None:
        self.port, self.users, self.k, self.rps = port, users, k, rps
        self.connections = connections
        self.samples: list[Sample] = []
        self.started = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def start(self) -> OpenLoop:
        self.started = time.perf_counter()
        self._thread.start()
        return self

    def stop(self) -> list[Sample]:
        self._stop.set()
        self._thread.join(timeout=60)
        return self.samples

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    async def _run(self) -> None:
        pool: asyncio.Queue[tuple[Any, Any] | None] = asyncio.Queue()
        for _ in range(self.connections):
            pool.put_nowait(None)
        tasks = []
        index = 0
        while not self._stop.is_set():
            due = index / self.rps
            delay = self.started + due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            user = self.users[index % len(self.users)]
            tasks.append(asyncio.create_task(self._one(pool, due, user)))
            index += 1
        await asyncio.gather(*tasks)
        while not pool.empty():
            connection = pool.get_nowait()
            if connection is not None:
                connection[1].close()

    async def _one(self, pool: asyncio.Queue[Any], due: float, user: str) -> None:
        connection = await pool.get()
        status, headers, body, problem = 0, {}, b"", ""
        try:
            if connection is None:
                connection = await asyncio.open_connection(HOST, self.port)
            reader, writer = connection
            writer.write(
                f"GET /v1/users/{user}/recommendations?k={self.k} HTTP/1.1\r\n"
                f"Host: {HOST}\r\n\r\n".encode()
            )
            status, headers, body = await asyncio.wait_for(read_answer(reader), 30)
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError) as error:
            problem = f"no answer: {type(error).__name__}"
            if connection is not None:
                connection[1].close()
            connection = None
        finally:
            pool.put_nowait(connection)
        latency = time.perf_counter() - self.started - due
        problem = problem or top_k_problem(status, headers, body, user, self.k)
        version = headers.get("x-model-version", "")
        self.samples.append(Sample(due, latency, status, version, problem))


@dataclass
class SlowStats:
    """What the slow clients saw: connections opened, closed by the server (with how long each
    lived), answered (the server sent something), refused and the most open at once."""

    opened: int = 0
    closed_by_server: int = 0
    answered: int = 0
    refused: int = 0
    open_now: int = 0
    most_open: int = 0
    lifetimes: list[float] = field(default_factory=list)


async def slow_client(
    port: int, stop_at: float, stats: SlowStats, drip: float, pause: float
) -> None:
    """Open a connection, send part of a request's headers, then one more header line every
    ``drip`` seconds, never ending them; when the server closes it, wait ``pause`` and start
    again, until ``stop_at`` (a persistent slow client)."""
    loop = asyncio.get_running_loop()
    while loop.time() < stop_at:
        try:
            reader, writer = await asyncio.open_connection(HOST, port)
        except OSError:
            stats.refused += 1
            await asyncio.sleep(pause)
            continue
        opened = loop.time()
        stats.opened += 1
        stats.open_now += 1
        stats.most_open = max(stats.most_open, stats.open_now)
        try:
            writer.write(b"GET /v1/model HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            while loop.time() < stop_at:
                try:
                    data = await asyncio.wait_for(reader.read(4096), drip)
                except asyncio.TimeoutError:
                    writer.write(b"X-Slow: 1\r\n")
                    continue
                if data:
                    stats.answered += 1
                else:
                    stats.closed_by_server += 1
                    stats.lifetimes.append(loop.time() - opened)
                break
        except OSError:
            stats.closed_by_server += 1
            stats.lifetimes.append(loop.time() - opened)
        finally:
            stats.open_now -= 1
            writer.close()
        await asyncio.sleep(pause)


async def operator_calls(
    port: int, token: str, stop_at: float
) -> list[tuple[str, float, int, str]]:
    """GET /v1/admin/jobs (with the token) and /readyz, each once a second, on one keep-alive
    connection (a new one if it is closed); (target, sent at, status, problem) of each."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    results = []
    connection = None
    targets = ("/v1/admin/jobs?limit=1", "/readyz")
    while loop.time() < stop_at:
        for target in targets:
            sent = loop.time() - started
            status, problem = 0, ""
            try:
                if connection is None:
                    connection = await asyncio.open_connection(HOST, port)
                reader, writer = connection
                writer.write(
                    f"GET {target} HTTP/1.1\r\nHost: {HOST}\r\n"
                    f"Authorization: Bearer {token}\r\n\r\n".encode()
                )
                status, _, body = await asyncio.wait_for(read_answer(reader), 15)
                problem = "" if status == 200 else f"status {status}: {body[:120]!r}"
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError) as error:
                problem = f"no answer: {error!r}"
                if connection is not None:
                    connection[1].close()
                connection = None
            results.append((target, sent, status, problem))
        await asyncio.sleep(1.0)
    if connection is not None:
        connection[1].close()
    return results


async def timed_get(port: int, target: str, timeout: float) -> Answer:
    """A GET on a new connection; status 0 (and ``error`` saying why) when no answer came."""
    started = time.perf_counter()
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), timeout)
    except (OSError, asyncio.TimeoutError) as error:
        return Answer(0, {}, b"", time.perf_counter() - started, f"connect: {error!r}")
    try:
        writer.write(f"GET {target} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
        remaining = timeout - (time.perf_counter() - started)
        status, headers, body = await asyncio.wait_for(read_answer(reader), max(remaining, 0.01))
    except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError) as error:
        problem = (
            "closed without an answer"
            if isinstance(error, asyncio.IncompleteReadError)
            else repr(error)
        )
        return Answer(0, {}, b"", time.perf_counter() - started, problem)
    finally:
        writer.close()
    return Answer(status, headers, body, time.perf_counter() - started)


async def burst(port: int, data: bytes, count: int) -> list[Answer]:
    """``count`` connections opened first, then the same request written on all of them at once."""
    go = asyncio.Event()
    ready: list[int] = []

    async def one() -> Answer:
        reader, writer = await asyncio.open_connection(HOST, port)
        ready.append(1)
        await go.wait()
        started = time.perf_counter()
        writer.write(data)
        try:
            raw = await asyncio.wait_for(reader.read(-1), 60)
        except (OSError, asyncio.TimeoutError) as error:
            return Answer(0, {}, b"", time.perf_counter() - started, str(error))
        finally:
            writer.close()
        return parse_answer(raw, time.perf_counter() - started)

    tasks = [asyncio.create_task(one()) for _ in range(count)]
    while len(ready) < count and not any(task.done() for task in tasks):
        await asyncio.sleep(0.01)
    go.set()
    return list(await asyncio.gather(*tasks))


def stream_body(
    port: int, head: bytes, total: int, chunked: bool, chunk: int = 1 << 18, timeout: float = 30.0
) -> tuple[Answer, float, int]:
    """Send ``head`` then up to ``total`` body bytes (raw or as chunks) while reading the answer
    in another thread; stop sending once it has come. Returns the answer, the seconds from the
    end of the head to the answer's first byte, and the body bytes sent by then."""
    connection = socket.create_connection((HOST, port), timeout=timeout)
    first_byte = threading.Event()
    chunks: list[bytes] = []
    state = {"sent": 0, "at": 0.0}

    def read() -> None:
        try:
            while data := connection.recv(65536):
                if not chunks:
                    state["at"] = time.perf_counter()
                    first_byte.set()
                chunks.append(data)
        except OSError:
            pass
        first_byte.set()

    reader = threading.Thread(target=read, daemon=True)
    connection.sendall(head)
    started = time.perf_counter()
    reader.start()
    piece = b"x" * chunk
    framed = b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece
    try:
        while state["sent"] < total and not first_byte.is_set():
            connection.sendall(framed)
            state["sent"] += len(piece)
    except OSError:
        pass
    first_byte.wait(timeout)
    reader.join(timeout)
    connection.close()
    seconds = (state["at"] or time.perf_counter()) - started
    return parse_answer(b"".join(chunks), seconds), seconds, int(state["sent"])
