"""The body deadline (``CLIENT_BODY_TIMEOUT_S``, a middleware of the edge app) over raw sockets:
a body that does not arrive in time is a JSON 408, one that arrives in pieces in time is served.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from raw_http import Conn, now

from edge.app import create_app
from edge.config import EdgeConfig

# The deadline cannot fire before it is due (measured from a little after the server saw the
# head); only that lower bound is checked, never a speed.
CLOCK_SLACK_S = 0.1
MARK = "ZZMARKZZ"


@pytest.fixture(autouse=True)
async def close_conns() -> AsyncIterator[None]:
    yield
    await Conn.close_all()


@pytest.fixture
async def edge_port(aiohttp_server: Any) -> int:
    config = EdgeConfig(client_body_timeout_s=1, upstream_base_url="http://127.0.0.1:9/v1")
    server = await aiohttp_server(create_app(config))
    port: int = server.port
    return port


def post(path: str, length: int, body: bytes, *extra: str) -> bytes:
    head = [f"POST {path} HTTP/1.1", "Host: edge", f"Content-Length: {length}", *extra, "", ""]
    return "\r\n".join(head).encode() + body


async def test_a_body_that_does_not_arrive_in_time_gets_a_json_408(edge_port: int) -> None:
    conn = await Conn.open(edge_port)
    started = now()
    await conn.send(post("/v1/chat/completions", 100, b"0123456789"))
    status, headers, body = await conn.response()
    assert now() - started >= 1.0 - CLOCK_SLACK_S
    assert status == 408
    assert headers["content-type"] == "application/json"
    assert headers["connection"] == "close"
    assert json.loads(body) == {
        "error": {
            "message": "The request body was not received within 1 s.",
            "type": "invalid_request_error",
            "param": None,
            "code": "request_timeout",
        }
    }
    # The late rest of the body is read and dropped, then the connection is closed: it cannot
    # carry another request.
    await conn.send(b"x" * 90)
    assert await conn.closed() == b""


async def test_a_body_sent_in_pieces_within_the_deadline_reaches_the_handler(
    edge_port: int,
) -> None:
    payload = b'{"title": "in pieces"}'
    conn = await Conn.open(edge_port)
    await conn.send(post("/v1/conversations", len(payload), payload[:5], "x-session-id: s"))
    for i in range(5, len(payload), 5):
        await asyncio.sleep(0.05)
        await conn.send(payload[i : i + 5])
    status, _, body = await conn.response()
    # No 408: the body arrived whole and the handler answered (persistence is off here: 501).
    assert status == 501, body


async def test_a_body_that_cannot_be_decoded_is_a_json_400(edge_port: int) -> None:
    conn = await Conn.open(edge_port)
    garbage = f"not gzip {MARK}".encode()
    await conn.send(post("/v1/chat/completions", len(garbage), garbage, "Content-Encoding: gzip"))
    status, _, body = await conn.response()
    assert status == 400
    assert json.loads(body)["error"]["code"] == "invalid_body"
    assert MARK.encode() not in body
