"""The edge against a hostile upstream and hostile clients (issue #10's reproductions).

Each test is one attack that once broke the edge: a silent upstream that froze it, paths that
left the upstream's base path carrying the server's key, client input that made 500s, upstream
JSON and SSE that the edge trusted, storage failures that passed silently, and new
conversations orphaned by an unreachable upstream. The upstream is ``ScriptedUpstream``: raw
bytes on loopback, recording every request exactly as it arrived.
"""

from __future__ import annotations

import asyncio
import socket
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest
from aiohttp.test_utils import TestClient
from scripted_upstream import BASE_PATH, Exchange, Respond, ScriptedUpstream, sse_headers

from chunkstore import Store
from edge.app import create_app
from edge.config import EdgeConfig
from edge.keys import PENDING_REPLIES
from edge.sse import SSEDecoder

Client = TestClient[Any, Any]
SESSION = {"x-session-id": "hostile-upstream-tests"}
SERVER_KEY = "sk-server-secret"


def chunk(content: str | None = None, finish: str | None = None, **delta: Any) -> bytes:
    if content is not None:
        delta["content"] = content
    body = {
        "id": "chatcmpl-x",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + orjson.dumps(body) + b"\n\n"


def completion(message: Any) -> bytes:
    return orjson.dumps(
        {
            "id": "chatcmpl-x",
            "object": "chat.completion",
            "created": 1,
            "model": "m",
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
        }
    )


async def stream_tokens(exchange: Exchange, tokens: list[str]) -> None:
    await exchange.send(sse_headers() + chunk(role="assistant"))
    for token in tokens:
        await exchange.send(chunk(token))
    await exchange.send(chunk(finish="stop") + b"data: [DONE]\n\n")


async def well_behaved(exchange: Exchange) -> None:
    if exchange.target.endswith("/chat/completions"):
        body = exchange.json()
        assert isinstance(body, dict)
        if body.get("stream"):
            await stream_tokens(exchange, ["a ", "b ", "c"])
        else:
            await exchange.respond(200, completion({"role": "assistant", "content": "abc"}))
    else:
        await exchange.respond(200, b'{"object":"list","data":[]}')


Start = Callable[..., Awaitable[tuple[Client, ScriptedUpstream]]]


@pytest.fixture
async def start(tmp_path: Path, aiohttp_client: Any) -> AsyncIterator[Start]:
    """``await start(respond, **config)``: an edge (persistence on, the server's own upstream
    key) in front of a ``ScriptedUpstream`` answering with ``respond``."""
    upstreams: list[ScriptedUpstream] = []

    async def make(respond: Respond = well_behaved, **overrides: Any) -> tuple[Client, Any]:
        upstream = ScriptedUpstream(respond)
        await upstream.start()
        upstreams.append(upstream)
        options: dict[str, Any] = {
            "persist_transcripts": True,
            "db_url": f"file:{tmp_path}/users",
            "upstream_base_url": upstream.base_url,
            "upstream_api_key": SERVER_KEY,
            "durability": "none",
        }
        options.update(overrides)
        client = await aiohttp_client(create_app(EdgeConfig(**options)))
        return client, upstream

    yield make
    for upstream in upstreams:
        await upstream.close()


def store_of(tmp_path: Path) -> Store:
    return Store(tmp_path / "users", durability="none")


async def settle(client: Client) -> None:
    tasks = client.server.app[PENDING_REPLIES].tasks()
    if tasks:
        await asyncio.wait(tasks)


async def events_of(body: bytes) -> list[str]:
    return [event.data for event in SSEDecoder().feed(body)]


def conversations(tmp_path: Path) -> list[str]:
    store = store_of(tmp_path)
    return [c.id for u in store.users() for c in store.list_conversations(u).items]


async def raw_request(client: Client, head: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``head`` (and nothing else) on a fresh socket; the status, headers and body."""
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    try:
        writer.write(head)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 30)
    finally:
        writer.close()
    status_line, _, rest = raw.partition(b"\r\n")
    head_text, _, body = rest.partition(b"\r\n\r\n")
    headers = {}
    for line in head_text.decode("latin-1").split("\r\n"):
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, body


# -- 1. a silent upstream ends only its own stream --------------------------------------------


async def test_a_silent_upstream_ends_only_its_own_stream(start: Start, tmp_path: Path) -> None:
    silence = asyncio.Event()

    async def respond(exchange: Exchange) -> None:
        body = exchange.json()
        assert isinstance(body, dict)
        if body.get("model") == "silent":
            await exchange.send(sse_headers() + chunk(role="assistant"))
            for token in ("one ", "two ", "three "):
                await exchange.send(chunk(token))
            await silence.wait()  # and then nothing, with the connection open
        else:
            await well_behaved(exchange)

    client, _ = await start(respond, upstream_read_timeout_s=1)
    stalled = asyncio.create_task(
        client.post(
            "/v1/chat/completions",
            json={
                "model": "silent",
                "stream": True,
                "messages": [{"role": "user", "content": "q"}],
            },
            headers=SESSION,
        )
    )
    # While that stream is silent, the edge keeps serving everyone else.
    for _ in range(3):
        health = await client.get("/healthz")
        assert health.status == 200
        other = await client.post(
            "/v1/chat/completions",
            json={"model": "ok", "messages": [{"role": "user", "content": "hi"}]},
            headers={"x-session-id": "another-user"},
        )
        assert other.status == 200
        assert (await other.json())["choices"][0]["message"]["content"] == "abc"
    resp = await asyncio.wait_for(stalled, 30)
    assert resp.status == 200
    events = await events_of(await asyncio.wait_for(resp.read(), 30))
    silence.set()
    error = orjson.loads(events[-1])
    assert error["error"]["code"] == "upstream_timeout"
    assert error["error"]["type"] == "upstream_error"
    assert "[DONE]" not in events
    text = "".join(
        c["choices"][0]["delta"].get("content") or ""
        for c in map(orjson.loads, events[:-1])
        if c.get("choices")
    )
    assert text == "one two three "
    await settle(client)
    reply = store_of(tmp_path).messages(resp.headers["X-Conversation-ID"])[-1]
    assert (reply.status, reply.content) == ("error", "one two three ")


async def test_a_silent_upstream_of_a_non_streamed_request_is_a_504(
    start: Start, tmp_path: Path
) -> None:
    async def respond(exchange: Exchange) -> None:
        await asyncio.sleep(30)  # never answers within the read timeout

    client, _ = await start(respond, upstream_read_timeout_s=1)
    resp = await client.post(
        "/v1/chat/completions",
        json={"model": "m", "messages": [{"role": "user", "content": "q"}]},
        headers=SESSION,
    )
    assert resp.status == 504
    assert (await resp.json())["error"]["code"] == "upstream_timeout"
    assert conversations(tmp_path) == []  # the new conversation got no reply: rolled back


# -- 2. nothing reaches the upstream outside its base path ------------------------------------


ESCAPES = [
    "/v1/%2e%2e/%2e%2e/admin/keys",
    "/v1/%2E%2E/%2E%2E/admin/keys",
    "/v1/../../billing",
    "/v1/models/../../../billing",
    "/v1/./models",
    "/v1//admin",
    "/v1/models%2f..%2f..%2fadmin",
    "/v1/%2e%2e%2f%2e%2e%2fadmin",
]


@pytest.mark.parametrize("method", ["GET", "POST", "DELETE"])
async def test_no_request_leaves_the_upstream_base_path(start: Start, method: str) -> None:
    client, upstream = await start()
    for target in ESCAPES:
        status, headers, body = await raw_request(
            client,
            f"{method} {target} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n"
            "Connection: close\r\n\r\n".encode(),
        )
        assert status in (400, 404), (target, status)
        assert headers["content-type"].startswith("application/json"), target
        assert "error" in orjson.loads(body)
    assert upstream.exchanges == []


async def test_a_query_cannot_be_injected_through_an_encoded_question_mark(start: Start) -> None:
    client, upstream = await start()
    status, _, _ = await raw_request(
        client, b"GET /v1/models%3Fadmin=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    assert status == 200
    status, _, _ = await raw_request(
        client, b"GET /v1/files/a%23b?limit=2 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    assert status == 200
    assert [e.target for e in upstream.exchanges] == [
        f"{BASE_PATH}/models%3Fadmin=1",  # one path segment, no query
        f"{BASE_PATH}/files/a%23b?limit=2",
    ]


async def test_legitimate_paths_are_relayed_unchanged(start: Start) -> None:
    client, upstream = await start()
    for path in ("/v1/models", "/v1/models/ft:gpt-4o:org:custom:abc123", "/v1/files?purpose=x"):
        resp = await client.get(path)
        assert resp.status == 200, path
    assert [e.target for e in upstream.exchanges] == [
        f"{BASE_PATH}/models",
        f"{BASE_PATH}/models/ft:gpt-4o:org:custom:abc123",
        f"{BASE_PATH}/files?purpose=x",
    ]
    assert all(e.headers["authorization"] == f"Bearer {SERVER_KEY}" for e in upstream.exchanges)


async def test_the_edges_own_paths_are_never_relayed(start: Start) -> None:
    client, upstream = await start()
    resp = await client.get("/v1/chat/completions")
    assert resp.status == 405
    assert resp.headers["Allow"] == "POST"
    assert (await resp.json())["error"]["code"] == "method_not_allowed"
    for method, path in [
        ("GET", "/v1/conversations/us01-co01/items"),
        ("POST", "/v1/conversations/us01-co01/items"),
        ("GET", "/v1/conversations/us01-co01/a/b/c"),
        ("PUT", "/v1/conversations/us01-co01"),
        ("PUT", "/v1/conversations"),
    ]:
        resp = await client.request(method, path, headers=SESSION)
        assert resp.status in (404, 405), (method, path)
        assert resp.content_type == "application/json"
        assert "error" in await resp.json()
    assert upstream.exchanges == []


# -- 3. client input that made 500s ------------------------------------------------------------


async def test_a_non_ascii_bearer_key_is_a_400(start: Start) -> None:
    client, upstream = await start(edge_api_keys=frozenset({"k1"}))
    status, _, body = await raw_request(
        client,
        b"GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\r\n"
        b"Connection: close\r\n\r\n",
    )
    assert status == 400
    assert orjson.loads(body)["error"]["code"] == "invalid_authorization"
    assert upstream.exchanges == []


@pytest.mark.parametrize(
    "content",
    [[{"type": "text", "text": 5}], [{"type": "text", "text": None}], [{"text": ["a"]}]],
)
async def test_content_parts_whose_text_is_not_a_string_are_a_400(
    start: Start, tmp_path: Path, content: Any
) -> None:
    client, upstream = await start()
    resp = await client.post(
        "/v1/chat/completions",
        json={"model": "m", "messages": [{"role": "user", "content": content}]},
        headers=SESSION,
    )
    assert resp.status == 400
    assert (await resp.json())["error"]["param"] == "messages"
    assert upstream.exchanges == []
    assert conversations(tmp_path) == []


async def test_a_non_utf8_agent_header_is_a_400_and_nothing_is_stored(
    start: Start, tmp_path: Path
) -> None:
    client, upstream = await start()
    body = orjson.dumps(
        {"model": "m", "stream": True, "messages": [{"role": "user", "content": "q"}]}
    )
    status, _, answer = await raw_request(
        client,
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"x-session-id: s1\r\nX-Agent-ID: caf\xe9\xff\r\n"
        + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        + body,
    )
    assert status == 400
    assert orjson.loads(answer)["error"]["code"] == "invalid_agent_id"
    assert upstream.exchanges == []
    assert conversations(tmp_path) == []


# -- 5. upstream JSON the edge cannot store -----------------------------------------------------


@pytest.mark.parametrize(
    "answer",
    [
        completion(None),
        completion("a string"),
        completion({"role": "assistant", "content": 5}),
        completion({"role": "assistant", "content": "x", "tool_calls": "no"}),
        b'{"choices": []}',
        b'{"choices": "x"}',
        b"[1, 2]",
        b"not json at all",
    ],
)
async def test_an_unusable_non_streamed_reply_is_a_502_and_the_turn_stays_consistent(
    start: Start, tmp_path: Path, answer: bytes
) -> None:
    async def respond(exchange: Exchange) -> None:
        body = exchange.json()
        assert isinstance(body, dict)
        if body.get("model") == "bad":
            await exchange.respond(200, answer)
        else:
            await well_behaved(exchange)

    client, _ = await start(respond)
    resp = await client.post(
        "/v1/chat/completions",
        json={"model": "bad", "messages": [{"role": "user", "content": "q"}]},
        headers=SESSION,
    )
    assert resp.status == 502
    assert (await resp.json())["error"]["code"] == "upstream_invalid_response"
    assert "X-Conversation-ID" not in resp.headers
    assert conversations(tmp_path) == []  # a new conversation with no reply is not kept

    # In a continued conversation the new user message stays; no half reply is stored.
    ok = await client.post(
        "/v1/chat/completions",
        json={"model": "ok", "messages": [{"role": "user", "content": "first"}]},
        headers=SESSION,
    )
    conversation_id = ok.headers["X-Conversation-ID"]
    resp = await client.post(
        "/v1/chat/completions",
        json={"model": "bad", "messages": [{"role": "user", "content": "second"}]},
        headers={**SESSION, "X-Conversation-ID": conversation_id},
    )
    assert resp.status == 502
    history = store_of(tmp_path).messages(conversation_id)
    assert [(m.role, m.content) for m in history] == [
        ("user", "first"),
        ("assistant", "abc"),
        ("user", "second"),
    ]


# -- 6. memory is bounded by the settings, not by the upstream ----------------------------------


async def test_an_event_that_never_ends_is_cut_at_its_bound(start: Start, tmp_path: Path) -> None:
    line = b"data: " + b"x" * 1000 + b"\n"
    total = 20 * 1024 * 1024

    async def respond(exchange: Exchange) -> None:
        await exchange.send(sse_headers() + chunk(role="assistant") + chunk("partial "))
        block = line * 64
        while exchange.bytes_sent < total and await exchange.send(block):
            pass

    client, upstream = await start(respond, upstream_max_event_bytes=64 * 1024)
    tracemalloc.start()
    try:
        resp = await client.post(
            "/v1/chat/completions",
            json={"model": "m", "stream": True, "messages": [{"role": "user", "content": "q"}]},
            headers=SESSION,
        )
        events = await events_of(await resp.read())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert orjson.loads(events[-1])["error"]["code"] == "upstream_event_too_large"
    # The edge stopped reading: the upstream could not send everything it wanted to.
    assert upstream.exchanges[0].bytes_sent < total
    assert peak < 8 * 1024 * 1024, peak  # a few times the bound, nowhere near 20 MiB
    await settle(client)
    reply = store_of(tmp_path).messages(resp.headers["X-Conversation-ID"])[-1]
    assert (reply.status, reply.content) == ("error", "partial ")


@pytest.mark.parametrize("announce_length", [True, False])
async def test_a_huge_non_streamed_body_is_a_502(
    start: Start, tmp_path: Path, announce_length: bool
) -> None:
    size = 20 * 1024 * 1024

    async def respond(exchange: Exchange) -> None:
        head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
        if announce_length:
            head += f"Content-Length: {size}\r\n"
        await exchange.send(head.encode() + b"\r\n")
        block = b" " * 65536
        while exchange.bytes_sent < size and await exchange.send(block):
            pass

    client, upstream = await start(respond, upstream_max_body_bytes=1024 * 1024)
    resp = await client.post(
        "/v1/chat/completions",
        json={"model": "m", "messages": [{"role": "user", "content": "q"}]},
        headers=SESSION,
    )
    assert resp.status == 502
    assert (await resp.json())["error"]["code"] == "upstream_response_too_large"
    assert upstream.exchanges[0].bytes_sent < size
    assert conversations(tmp_path) == []


async def test_multi_line_data_events_are_relayed_as_sse_joins_them(start: Start) -> None:
    async def respond(exchange: Exchange) -> None:
        await exchange.send(
            sse_headers()
            + chunk("a")
            + b"data: first line\ndata: second line\n\n"  # not JSON: passed through
            + b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m",\n'
            + b'data: "choices":[{"index":0,"delta":{"content":"b"},"finish_reason":null}]}\n\n'
            + chunk(finish="stop")
            + b"data: [DONE]\n\n"
        )

    client, _ = await start(respond)
    resp = await client.post(
        "/v1/chat/completions",
        json={"model": "m", "stream": True, "messages": [{"role": "user", "content": "q"}]},
        headers=SESSION,
    )
    events = await events_of(await resp.read())
    assert "first line\nsecond line" in events
    contents = [
        c["choices"][0]["delta"].get("content")
        for c in (orjson.loads(e) for e in events if e.startswith("{"))
        if c.get("choices")
    ]
    assert "b" in "".join(x or "" for x in contents)
    assert events[-1] == "[DONE]"


# -- extras: error bodies, upgrades, orphans ------------------------------------------------------


async def test_an_upstream_error_split_across_writes_is_relayed_whole(start: Start) -> None:
    error = orjson.dumps(
        {"error": {"message": "quota", "type": "insufficient_quota", "code": "quota"}}
    )

    async def respond(exchange: Exchange) -> None:
        await exchange.send(
            b"HTTP/1.1 429 Too Many\r\nContent-Type: application/json\r\nRetry-After: 7\r\n"
            + f"Content-Length: {len(error)}\r\nConnection: close\r\n\r\n".encode()
            + error[:10]
        )
        await asyncio.sleep(0.05)
        await exchange.send(error[10:])

    client, _ = await start(respond)
    resp = await client.post(
        "/v1/chat/completions",
        json={"model": "m", "messages": [{"role": "user", "content": "q"}]},
        headers=SESSION,
    )
    assert resp.status == 429
    assert resp.headers["Retry-After"] == "7"
    assert (await resp.json())["error"]["code"] == "quota"


async def test_an_upstream_101_is_not_passed_to_the_client(start: Start) -> None:
    async def respond(exchange: Exchange) -> None:
        await exchange.send(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
        )
        await asyncio.sleep(1)

    client, _ = await start(respond)
    resp = await client.get("/v1/models")
    assert resp.status == 502
    assert (await resp.json())["error"]["code"] in (
        "upstream_invalid_response",
        "upstream_unreachable",
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_the_sdks_retries_against_a_down_upstream_leave_no_orphan(
    tmp_path: Path, aiohttp_server: Any
) -> None:
    config = EdgeConfig(
        persist_transcripts=True,
        db_url=f"file:{tmp_path}/users",
        upstream_base_url=f"http://127.0.0.1:{free_port()}/v1",  # nothing listens there
        durability="none",
    )
    server = await aiohttp_server(create_app(config))
    client = openai.AsyncOpenAI(
        base_url=str(server.make_url("/v1")),
        api_key="k",
        default_headers=SESSION,
        max_retries=2,  # the SDK's default
    )
    try:
        with pytest.raises(openai.InternalServerError) as raised:
            await client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "hello?"}]
            )
        assert raised.value.status_code == 502
        assert conversations(tmp_path) == []
    finally:
        await client.close()


# -- 8. every storage failure is flagged, counted and logged ------------------------------------


async def test_a_seal_that_fails_with_a_corrupt_chunk_is_flagged_counted_and_logged(
    start: Start, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "users"
    first_chunk = asyncio.Event()
    go_on = asyncio.Event()

    async def respond(exchange: Exchange) -> None:
        await exchange.send(sse_headers() + chunk(role="assistant"))
        for i in range(20):
            await exchange.send(chunk(f"t{i} "))
        first_chunk.set()
        await go_on.wait()
        await exchange.send(chunk("tail ") + chunk(finish="stop") + b"data: [DONE]\n\n")

    client, _ = await start(
        respond,
        stream_bundle_tokens=10,
        chunk_tokens=20,
        storage_final_timeout_ms=10_000,
    )
    task = asyncio.create_task(
        client.post(
            "/v1/chat/completions",
            json={"model": "m", "stream": True, "messages": [{"role": "user", "content": "q"}]},
            headers=SESSION,
        )
    )
    await asyncio.wait_for(first_chunk.wait(), 30)
    chunk_file = None
    for _ in range(300):  # the first chunk file appears once the recorder has written it
        found = sorted(root.glob("us*/data/conversations/*/messages/*-001.json"))
        if found:
            chunk_file = found[0]
            break
        await asyncio.sleep(0.01)
    assert chunk_file is not None
    # Replace it by a corrupt one (a new inode: the writer's own handle is not involved).
    broken = chunk_file.with_name("broken")
    broken.write_bytes(b"garbage that is no record\n")
    broken.replace(chunk_file)
    go_on.set()
    resp = await asyncio.wait_for(task, 30)
    events = await events_of(await resp.read())
    assert events[-1] == "[DONE]"
    last = orjson.loads(events[-2])
    assert last["metadata"] == {"storage_failed": True}
    metrics = await (await client.get("/metrics")).text()
    assert "edge_storage_failures_total 1.0" in metrics
    assert any("storage_failed" in r.getMessage() for r in caplog.records)
