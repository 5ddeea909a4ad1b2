"""Resuming a reply's stream (``GET /v1/conversations/{id}/messages/{message_id}/stream``).

The edge (file store, durability "chunk") and a paced upstream run on an event loop in a
thread of their own; the client measures from the main thread's loop.

* **first replayed event**: reconnect to a 2,000-token reply (``Last-Event-ID`` a third of the
  way in) and time from sending the request to the arrival of the first content event. Two
  cases: the reply has ended (everything comes from the store), and the reply is live on this
  instance (the durable prefix from the store, the rest from memory). Target: under 20 ms.
* **rest at relay speed**: a client that reconnects while the reply streams gets its last
  content event no later than the client that never left gets its own (``lag_ms``: the
  follower's last content event minus the original's; positive = the follower is behind).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from benchmarks.conftest import SMOKE, Results
from edge.app import create_app
from edge.config import EdgeConfig

SUITE = "resume"
TOKENS = 200 if SMOKE else 2000
TOKEN_DELAY_S = 0.0005 if SMOKE else 0.001  # the paced upstream: 2,000 tokens in about 2 s
ROUNDS = 2 if SMOKE else 30
SESSION = {"x-session-id": "bench-resume"}


def _chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
    body = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "bench",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + orjson.dumps(body) + b"\n\n"


async def _upstream(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    paced = body.get("model") == "paced"
    out = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await out.prepare(request)
    await out.write(_chunk({"role": "assistant", "content": ""}))
    for i in range(TOKENS):
        await out.write(_chunk({"content": f" t{i}"}))
        if paced:
            await asyncio.sleep(TOKEN_DELAY_S)
    await out.write(_chunk({}, "stop") + b"data: [DONE]\n\n")
    return out


@pytest.fixture(scope="module")
def edge_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    loop = asyncio.new_event_loop()
    upstream_app = web.Application()
    upstream_app.router.add_post("/v1/chat/completions", _upstream)
    upstream = web.AppRunner(upstream_app, access_log=None)
    loop.run_until_complete(upstream.setup())
    loop.run_until_complete(web.TCPSite(upstream, "127.0.0.1", 0).start())
    upstream_url = f"http://127.0.0.1:{upstream.addresses[0][1]}/v1"
    root = tmp_path_factory.mktemp("resume") / "users"
    config = EdgeConfig(
        persist_transcripts=True,
        db_url=f"file:{root}",
        upstream_base_url=upstream_url,
        durability="chunk",
        log_level="WARNING",
    )
    runner = web.AppRunner(create_app(config), access_log=None)
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", 0).start())
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield url
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(30)
        asyncio.run_coroutine_threadsafe(upstream.cleanup(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def _contents(raw: bytes) -> list[tuple[str, str]]:
    """(id, content) of the content events in ``raw``."""
    out = []
    for block in raw.split(b"\n\n"):
        event_id, _, data = block.partition(b"\ndata: ")
        if not data or data == b"[DONE]":
            continue
        for choice in orjson.loads(data).get("choices") or []:
            text = (choice.get("delta") or {}).get("content")
            if text:
                out.append((event_id.removeprefix(b"id: ").decode(), text))
    return out


async def _start(http: aiohttp.ClientSession, url: str, model: str) -> aiohttp.ClientResponse:
    resp = await http.post(
        f"{url}/v1/chat/completions",
        json={"model": model, "stream": True, "messages": [{"role": "user", "content": "go"}]},
        headers=SESSION,
    )
    assert resp.status == 200
    return resp


async def _first_event(
    http: aiohttp.ClientSession, url: str, conversation: str, message: str, after: str
) -> tuple[float, aiohttp.ClientResponse]:
    start = time.perf_counter()
    resp = await http.get(
        f"{url}/v1/conversations/{conversation}/messages/{message}/stream",
        headers={**SESSION, "Last-Event-ID": after},
    )
    raw = b""
    while not _contents(raw):
        block = await resp.content.readany()
        assert block
        raw += block
    return time.perf_counter() - start, resp


def _third(events: list[tuple[str, str]]) -> str:
    return events[len(events) // 3][0]


def test_first_replayed_event_of_an_ended_reply(
    edge_url: str, benchmark: Any, results: Results
) -> None:
    async def setup() -> tuple[aiohttp.ClientSession, str, str, str]:
        http = aiohttp.ClientSession()
        resp = await _start(http, edge_url, "fast")
        events = _contents(await resp.read())
        assert "".join(t for _, t in events) == "".join(f" t{i}" for i in range(TOKENS))
        await asyncio.sleep(0.2)  # sealed
        return http, resp.headers["X-Conversation-ID"], resp.headers["X-Message-ID"], _third(events)

    loop = asyncio.new_event_loop()
    http, conversation, message, after = loop.run_until_complete(setup())
    times: list[float] = []

    def one() -> None:
        seconds, resp = loop.run_until_complete(
            _first_event(http, edge_url, conversation, message, after)
        )
        loop.run_until_complete(resp.read())
        times.append(seconds)

    try:
        one()  # warm-up: first-use caches
        times.clear()
        benchmark.pedantic(one, rounds=ROUNDS, iterations=1)
    finally:
        loop.run_until_complete(http.close())
        loop.close()
    times.sort()
    figures = {"first_event_ms": times[len(times) // 2] * 1000, "p90_ms": times[-1] * 1000}
    if len(times) >= 10:
        figures["p90_ms"] = times[int(0.9 * len(times))] * 1000
    results.record(benchmark, SUITE, f"{TOKENS}-token reply", "ended reply", **figures)
    results.limit(
        SUITE,
        f"{TOKENS}-token reply",
        "ended reply",
        metric="first_event_ms",
        op="<",
        limit=20.0,
        target="< 20 ms",
    )


def test_a_live_reply_resumed_gets_the_rest_at_relay_speed(
    edge_url: str, benchmark: Any, results: Results
) -> None:
    first: list[float] = []
    lags: list[float] = []

    async def one_reply() -> None:
        async with aiohttp.ClientSession() as http, aiohttp.ClientSession() as other:
            resp = await _start(http, edge_url, "paced")
            conversation = resp.headers["X-Conversation-ID"]
            message = resp.headers["X-Message-ID"]
            raw = b""
            while len(_contents(raw)) < 3:
                raw += await resp.content.readany()
            events = _contents(raw)
            seconds, follower = await _first_event(
                other, edge_url, conversation, message, events[-1][0]
            )
            first.append(seconds)

            async def last_content(r: aiohttp.ClientResponse, raw: bytes) -> tuple[float, bytes]:
                at = time.perf_counter()
                while True:
                    block = await r.content.readany()
                    if not block:
                        return at, raw
                    if b'"content"' in block:
                        at = time.perf_counter()
                    raw += block

            (original_at, whole), (follower_at, _rest) = await asyncio.gather(
                last_content(resp, raw), last_content(follower, b"")
            )
            assert "".join(t for _, t in _contents(whole)) == "".join(
                f" t{i}" for i in range(TOKENS)
            )
            lags.append((follower_at - original_at) * 1000)

    loop = asyncio.new_event_loop()
    try:
        benchmark.pedantic(
            lambda: loop.run_until_complete(one_reply()), rounds=max(2, ROUNDS // 6), iterations=1
        )
    finally:
        loop.close()
    first.sort()
    lags.sort()
    figures = {
        "first_event_ms": first[len(first) // 2] * 1000,
        "lag_ms": lags[len(lags) // 2],
        "max_lag_ms": lags[-1],
    }
    case = f"{TOKENS}-token reply"
    results.record(benchmark, SUITE, case, "live reply", **figures)
    results.limit(
        SUITE, case, "live reply", metric="first_event_ms", op="<", limit=20.0, target="< 20 ms"
    )
    results.limit(SUITE, case, "live reply", metric="lag_ms", op="<", limit=20.0, target="")
