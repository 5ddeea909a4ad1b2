"""The connection-level server (``edge.server``): header deadline, idle cap and JSON error
pages, over raw sockets on loopback.

Times are only upper bounds that guard against a hang (generous) and lower bounds that the
server cannot beat (a deadline cannot fire before it is due); nothing asserts a speed.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
from aiohttp import web
from raw_http import HANG_GUARD_S, Conn, get, now

from edge.server import EdgeAppRunner, EdgeServer, _error_for

# A connection's deadline starts at its accept in the server, a little after the test's
# connect returns on the same loop: this much slack in the lower bounds.
CLOCK_SLACK_S = 0.1


@asynccontextmanager
async def serve(
    app: web.Application, *, header_timeout_s: float = 30.0, max_waiting: int | None = None
) -> AsyncIterator[tuple[int, EdgeServer]]:
    runner = EdgeAppRunner(app, header_timeout_s=header_timeout_s, max_waiting=max_waiting)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server = runner.server
    assert isinstance(server, EdgeServer)
    try:
        yield site.port, server
    finally:
        await runner.cleanup()


@pytest.fixture(autouse=True)
async def close_conns() -> AsyncIterator[None]:
    yield
    await Conn.close_all()


def small_app(**routes: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.Application:
    app = web.Application()

    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app.router.add_get("/ok", ok)
    for name, handler in routes.items():
        app.router.add_route("*", f"/{name}", handler)
    return app


# --- header deadline ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sent",
    [b"", b"GET /ok HTTP/1.1\r\n", b"GET /ok HTTP/1.1\r\nHost: edge\r\nX-Half: "],
    ids=["nothing", "request-line", "half-header"],
)
async def test_a_connection_without_a_complete_head_is_closed_at_the_deadline(
    sent: bytes,
) -> None:
    async with serve(small_app(), header_timeout_s=1.0) as (port, server):
        conn = await Conn.open(port)
        started = now()
        await conn.send(sent)
        assert await conn.closed() == b""
        assert now() - started >= 1.0 - CLOCK_SLACK_S
        assert server.waiting_count == 0


async def test_trickling_a_head_does_not_push_the_deadline_back() -> None:
    async with serve(small_app(), header_timeout_s=1.0) as (port, _):
        conn = await Conn.open(port)
        started = now()
        await conn.send(b"GET /ok HTTP/1.1\r\nX-Slow: ")
        closed = asyncio.create_task(conn.closed())
        sent = 0
        while not closed.done() and sent < 200:  # one byte every 0.1 s, for up to 20 s
            try:
                await conn.send(b"a")
            except ConnectionError:
                break
            sent += 1
            await asyncio.sleep(0.1)
        assert await closed == b""
        assert now() - started >= 1.0 - CLOCK_SLACK_S
        assert sent < 200


async def test_an_idle_keep_alive_connection_is_closed_at_the_deadline() -> None:
    async with serve(small_app(), header_timeout_s=1.0) as (port, _):
        conn = await Conn.open(port)
        await conn.send(get("/ok"))
        status, _, body = await conn.response()
        assert (status, body) == (200, b"ok")
        answered = now()
        assert await conn.closed() == b""
        assert now() - answered >= 1.0 - CLOCK_SLACK_S


async def test_a_request_handled_longer_than_the_deadline_is_not_cut() -> None:
    async def slow(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        for _ in range(5):  # 1.5 s in all, past the 0.5 s deadline
            await response.write(b"x")
            await asyncio.sleep(0.3)
        await response.write_eof()
        return response

    async with serve(small_app(slow=slow), header_timeout_s=0.5) as (port, _):
        conn = await Conn.open(port)
        await conn.send(get("/slow", "Connection: close"))
        data = await conn.closed()
        assert data.startswith(b"HTTP/1.1 200 OK")
        assert data.replace(b"\r\n", b"").endswith(b"1x1x1x1x1x0")  # chunked: five 1-byte chunks


# --- the cap on connections waiting for a request head ------------------------------------------


async def test_past_the_cap_the_oldest_waiting_connections_are_closed() -> None:
    async with serve(small_app(), max_waiting=3) as (port, server):
        conns = [await Conn.open(port) for _ in range(5)]
        # The two oldest are closed, though their deadline (30 s) is far off...
        assert await conns[0].closed() == b""
        assert await conns[1].closed() == b""
        # ...and the three newest are still there, and served.
        for conn in conns[2:]:
            await conn.send(get("/ok"))
            assert (await conn.response())[0] == 200
        assert server.closed_over_cap == 2


async def test_a_connection_with_a_request_in_progress_is_never_closed_by_the_cap() -> None:
    release = asyncio.Event()
    entered = asyncio.Event()

    async def wait(request: web.Request) -> web.Response:
        entered.set()
        await release.wait()
        return web.Response(text="done")

    async with serve(small_app(wait=wait), max_waiting=1) as (port, server):
        busy = await Conn.open(port)
        await busy.send(get("/wait"))
        await asyncio.wait_for(entered.wait(), HANG_GUARD_S)
        idle = [await Conn.open(port) for _ in range(3)]
        assert await idle[0].closed() == b""
        assert await idle[1].closed() == b""
        assert server.waiting_count == 1
        release.set()
        status, _, body = await busy.response()
        assert (status, body) == (200, b"done")


async def test_a_connection_waits_again_from_the_end_of_its_response() -> None:
    async with serve(small_app(), max_waiting=2) as (port, server):
        first = await Conn.open(port)
        second = await Conn.open(port)
        await first.send(get("/ok"))
        assert (await first.response())[0] == 200
        # Now `second` has waited longest: a third connection closes it, not `first`.
        third = await Conn.open(port)
        assert await second.closed() == b""
        await first.send(get("/ok"))
        assert (await first.response())[0] == 200
        await third.send(get("/ok"))
        assert (await third.response())[0] == 200
        assert server.closed_over_cap == 1


# --- aiohttp's own error pages are the edge's JSON ---------------------------------------------

MARK = "ZZMARKZZ"

MALFORMED = {
    "bad-method": (f"G{MARK}T / HTTP/1.1\r\nHost: edge\r\n\r\n".encode(), 400),
    "not-http": (f"\x16\x03\x01{MARK}\r\n\r\n".encode(), 400),
    "bad-version": (f"GET / HTTP/9.{MARK}\r\nHost: edge\r\n\r\n".encode(), 400),
    "header-too-long": (f"GET / HTTP/1.1\r\nX-{MARK}: {'a' * 9000}\r\n\r\n".encode(), 431),
    "request-line-too-long": (f"GET /{MARK}{'b' * 9000} HTTP/1.1\r\n\r\n".encode(), 431),
    "too-many-headers": (
        (
            "GET / HTTP/1.1\r\n" + "".join(f"X-{MARK}{i}: v\r\n" for i in range(200)) + "\r\n"
        ).encode(),
        400,
    ),
    "bad-header-name": (f"GET / HTTP/1.1\r\nX {MARK}: v\r\n\r\n".encode(), 400),
    "control-char-in-header": (f"GET / HTTP/1.1\r\nX-A: {MARK}\x01\r\n\r\n".encode(), 400),
    "bad-chunk-size": (
        f"POST /ok HTTP/1.1\r\nHost: edge\r\nTransfer-Encoding: chunked\r\n\r\n{MARK}\r\n"
        "abc\r\n0\r\n\r\n".encode(),
        400,
    ),
    "content-length-and-chunked": (
        f"POST /ok HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n"
        f"X-M: {MARK}\r\n\r\n3\r\nabc\r\n0\r\n\r\n".encode(),
        400,
    ),
}


@pytest.mark.parametrize("name", list(MALFORMED))
async def test_malformed_requests_get_a_json_error_without_an_echo(name: str) -> None:
    request, expected_status = MALFORMED[name]
    async with serve(small_app()) as (port, _):
        conn = await Conn.open(port)
        await conn.send(request)
        status, headers, body = await conn.response()
        assert status == expected_status
        assert headers["content-type"] == "application/json"
        error = json.loads(body)["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["type"] == "invalid_request_error"
        assert MARK.encode() not in body
        assert b"Traceback" not in body
        assert await conn.closed() == b""  # the connection ends with the error


async def test_an_exception_escaping_the_app_is_a_json_500_without_details() -> None:
    async def boom(request: web.Request) -> web.Response:
        raise RuntimeError(f"secret detail {MARK}")

    async def too_slow(request: web.Request) -> web.Response:
        raise TimeoutError

    async with serve(small_app(boom=boom, too_slow=too_slow)) as (port, _):
        conn = await Conn.open(port)
        await conn.send(get("/boom"))
        status, headers, body = await conn.response()
        assert status == 500
        assert headers["content-type"] == "application/json"
        assert json.loads(body)["error"]["code"] == "internal_error"
        assert MARK.encode() not in body and b"Traceback" not in body

        conn = await Conn.open(port)
        await conn.send(get("/too_slow"))
        status, headers, body = await conn.response()
        assert status == 504
        assert json.loads(body)["error"]["type"] == "server_error"


async def test_an_exception_after_the_response_started_just_ends_the_connection() -> None:
    async def half(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b"partial")
        raise RuntimeError(MARK)

    async with serve(small_app(half=half)) as (port, _):
        conn = await Conn.open(port)
        await conn.send(get("/half"))
        data = await conn.closed()
        assert data.startswith(b"HTTP/1.1 200 OK")
        assert b"partial" in data
        assert b'"error"' not in data and MARK.encode() not in data


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (413, (413, "Request Entity Too Large.", "invalid_request_error")),
        (503, (503, "Service Unavailable.", "server_error")),
        (599, (599, "Request failed.", "server_error")),
    ],
)
def test_other_statuses_get_their_reason_phrase(
    status: int, expected: tuple[int, str, str]
) -> None:
    error = _error_for(status, None)
    assert (error.status, error.message, error.type) == expected


async def test_an_unknown_expectation_is_a_json_417_without_an_echo() -> None:
    async with serve(small_app()) as (port, _):
        conn = await Conn.open(port)
        await conn.send(get("/ok", f"Expect: {MARK}"))
        status, headers, body = await conn.response()
        assert status == 417
        assert headers["content-type"] == "application/json"
        assert json.loads(body)["error"]["message"] == "Expectation Failed."
        assert MARK.encode() not in body
        # The connection stays usable, as with aiohttp's own 417.
        await conn.send(get("/ok"))
        assert (await conn.response())[0] == 200
