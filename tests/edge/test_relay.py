"""End to end: the official openai SDK → edge → a real aiohttp upstream on loopback."""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import openai
import orjson
import pytest
from aiohttp.test_utils import TestServer
from fake_upstream import TOOL_CALL_ID, FakeUpstream

import chunkstore
from chunkstore import Store
from edge.app import create_app
from edge.config import EdgeConfig
from edge.keys import PENDING_REPLIES

Start = Callable[..., Awaitable["Edge"]]


class Edge:
    def __init__(self, server: TestServer, root: Path) -> None:
        self.server = server
        self.root = root
        self.base_url = str(server.make_url("/v1"))
        self.clients: list[openai.AsyncOpenAI] = []

    def client(self, session: str | None = "s1", **headers: str) -> openai.AsyncOpenAI:
        if session is not None:
            headers["x-session-id"] = session
        client = openai.AsyncOpenAI(
            base_url=self.base_url, api_key="sk-client", max_retries=0, default_headers=headers
        )
        self.clients.append(client)
        return client

    def store(self) -> Store:
        return Store(self.root, durability="none")

    async def settled(self) -> Store:
        """The store once this edge has finished storing the replies it relayed.

        ``[DONE]`` does not wait for the seal; a test reading the files directly waits for the
        edge's pending replies, as the edge's own readers do (``PendingReplies``)."""
        tasks = self.server.app[PENDING_REPLIES].tasks()
        if tasks:
            await asyncio.wait(tasks)
        return self.store()

    def files(self) -> list[str]:
        return sorted(
            os.path.relpath(os.path.join(d, f), self.root)
            for d, _, fs in os.walk(self.root)
            for f in fs
        )


@pytest.fixture
async def start_edge(
    tmp_path: Path, fake_upstream: FakeUpstream, aiohttp_server: Any
) -> AsyncIterator[Start]:
    started: list[Edge] = []

    async def start(**overrides: Any) -> Edge:
        options: dict[str, Any] = {
            "persist_transcripts": True,
            "db_url": f"file:{tmp_path}/users",
            "upstream_base_url": fake_upstream.base_url,
        }
        options.update(overrides)
        server = await aiohttp_server(create_app(EdgeConfig(**options)))
        edge = Edge(server, tmp_path / "users")
        started.append(edge)
        return edge

    yield start
    for edge in started:
        for client in edge.clients:
            await client.close()


async def raw_stream(edge: Edge, body: dict[str, Any], **headers: str) -> tuple[Any, list[Any]]:
    """POST a streaming request with aiohttp; return the response and its decoded events."""
    headers.setdefault("x-session-id", "s1")
    async with aiohttp.ClientSession() as http, http.post(
        f"{edge.base_url}/chat/completions", json={"stream": True, **body}, headers=headers
    ) as resp:
        raw = await resp.read()
    events: list[Any] = []
    for block in raw.split(b"\n\n"):
        # A stored stream's events start with their SSE id (``id: <message id>:<offset>``).
        _, found, data = block.partition(b"data: ")
        if found:
            events.append("[DONE]" if data == b"[DONE]" else orjson.loads(data))
    return resp, events


def content_of(events: list[Any]) -> str:
    return "".join(
        e["choices"][0]["delta"].get("content") or ""
        for e in events
        if isinstance(e, dict) and e.get("choices")
    )


def expected_text(n: int) -> str:
    return "".join(f"tok{i} " for i in range(n))


# -- streaming and bundling ---------------------------------------------------------------------


async def test_stream_through_openai_sdk_is_bundled_and_persisted(start_edge: Start) -> None:
    edge = await start_edge()
    client = edge.client()
    raw = await client.chat.completions.with_raw_response.create(
        model="tokens-130",
        messages=[{"role": "user", "content": "count"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    conversation_id = raw.headers["x-conversation-id"]
    chunks = [c async for c in raw.parse()]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected_text(130)
    content_events = [c for c in chunks if c.choices and c.choices[0].delta.content]
    # The first delta alone, then bundles of 20: ceil(129 / 20) = 7.
    assert len(content_events) == 1 + math.ceil(129 / 20)
    assert len(content_events) * 10 <= 130
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 130
    # Read-your-writes: the reply is sealed before [DONE] reaches the client.
    messages = (await edge.settled()).messages(conversation_id)
    assert [(m.role, m.status) for m in messages] == [
        ("user", "complete"),
        ("assistant", "complete"),
    ]
    reply = messages[1]
    assert reply.content == expected_text(130)
    assert reply.finish_reason == "stop"
    assert reply.usage is not None and reply.usage["completion_tokens"] == 130
    assert reply.agent_id == "tokens-130"


async def test_every_event_is_a_valid_chunk_in_order(start_edge: Start) -> None:
    edge = await start_edge()
    resp, events = await raw_stream(
        edge,
        {
            "model": "tokens-45",
            "messages": [{"role": "user", "content": "x"}],
            "stream_options": {"include_usage": True},
        },
    )
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1  # upstream id kept
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    kinds = []
    for c in chunks:
        if not c["choices"]:
            kinds.append("usage")
        elif c["choices"][0].get("finish_reason"):
            kinds.append("finish")
        elif c["choices"][0]["delta"].get("content"):
            kinds.append("content")
        else:
            kinds.append("role")
    assert kinds == ["role", "content", "content", "content", "content", "finish", "usage"]
    assert content_of(chunks) == expected_text(45)


async def test_chunk_files_hold_60_tokens_while_streaming(start_edge: Start) -> None:
    edge = await start_edge()
    client = edge.client()
    raw = await client.chat.completions.with_raw_response.create(
        model="slow-150-5", messages=[{"role": "user", "content": "go"}], stream=True
    )
    conversation_id = raw.headers["x-conversation-id"]
    seen_during_stream: list[Any] = []
    received = 0
    async for chunk in raw.parse():
        if chunk.choices and chunk.choices[0].delta.content:
            received += len(chunk.choices[0].delta.content.split())
        if received >= 130 and not seen_during_stream:
            seen_during_stream = edge.store().messages(conversation_id)
    live = seen_during_stream[1]
    assert live.status == "streaming"
    assert live.token_count in (60, 120)
    assert expected_text(150).startswith(live.content)
    # Sealed at the end: the records keep the chunking (60, 60, then the last 30).
    await edge.settled()
    mdir = edge.root / "us01/data/conversations" / conversation_id / "messages"
    sealed = chunkstore._records.decode((mdir / f"{conversation_id}-ms02.json").read_bytes())
    assert [r["tokenCount"] for r in sealed["records"]] == [60, 60, 30]
    assert sorted(os.listdir(mdir)) == [
        f"{conversation_id}-ms01.json",
        f"{conversation_id}-ms02.json",
    ]


async def test_slow_stream_is_flushed_on_time_not_held_for_a_bundle(start_edge: Start) -> None:
    edge = await start_edge(stream_flush_ms=20)
    _, events = await raw_stream(
        edge, {"model": "slow-6-150", "messages": [{"role": "user", "content": "x"}]}
    )
    content_events = [
        e for e in events[:-1] if e["choices"] and e["choices"][0]["delta"].get("content")
    ]
    # 150 ms between tokens, 20 ms flush: every token goes out on its own.
    assert len(content_events) == 6
    assert content_of(events[:-1]) == expected_text(6)


# -- conversation modes ---------------------------------------------------------------------------


async def test_history_right_after_done_shows_the_sealed_reply(
    start_edge: Start, fake_upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    # [DONE] does not wait for the seal; a slow one must still not show through the edge:
    # its history endpoints and the next turn wait for the reply being stored.
    real_finish = chunkstore.MessageWriter.finish

    def slow_finish(self: chunkstore.MessageWriter, *args: Any, **kwargs: Any) -> Any:
        time.sleep(0.3)  # in the store's thread, like a slow fsync
        return real_finish(self, *args, **kwargs)

    monkeypatch.setattr(chunkstore.MessageWriter, "finish", slow_finish)
    edge = await start_edge()
    resp, events = await raw_stream(
        edge, {"model": "tokens-30", "messages": [{"role": "user", "content": "x"}]}
    )
    assert events[-1] == "[DONE]" and "metadata" not in events[-2]
    conversation_id = resp.headers["X-Conversation-ID"]
    async with aiohttp.ClientSession(headers={"x-session-id": "s1"}) as http:
        url = str(edge.server.make_url(f"/v1/conversations/{conversation_id}/messages"))
        page = await (await http.get(url)).json()
    assert [m["status"] for m in page["data"]] == ["complete", "complete"]
    assert page["data"][1]["content"] == expected_text(30)
    # The next turn, sent at once, replays the whole reply upstream.
    resp, events = await raw_stream(
        edge,
        {"model": "echo", "messages": [{"role": "user", "content": "again"}]},
        **{"X-Conversation-ID": conversation_id},
    )
    assert events[-1] == "[DONE]"
    sent = fake_upstream.chat_requests[-1].json["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "user"]
    assert sent[1]["content"] == expected_text(30)


async def test_continue_conversation_prepends_history_once(
    start_edge: Start, fake_upstream: FakeUpstream
) -> None:
    edge = await start_edge()
    client = edge.client()
    first = await client.chat.completions.with_raw_response.create(
        model="tokens-3", messages=[{"role": "user", "content": "one"}]
    )
    conversation_id = first.headers["x-conversation-id"]
    reply = first.parse().choices[0].message.content
    history = [{"role": "user", "content": "one"}, {"role": "assistant", "content": reply}]

    # Only the new turn: the edge prepends the history.
    await client.chat.completions.create(
        model="tokens-3",
        messages=[{"role": "user", "content": "two"}],
        extra_headers={"X-Conversation-ID": conversation_id},
    )
    sent = fake_upstream.chat_requests[-1].json
    assert sent["messages"] == [*history, {"role": "user", "content": "two"}]
    assert "conversation_id" not in sent

    # The whole conversation resent (OpenAI style), id in the body: nothing twice.
    stored = [m.to_openai() for m in (await edge.settled()).messages(conversation_id)]
    await client.chat.completions.create(
        model="tokens-3",
        messages=[*stored, {"role": "user", "content": "three"}],
        extra_body={"conversation_id": conversation_id},
    )
    sent = fake_upstream.chat_requests[-1].json
    assert sent["messages"] == [*stored, {"role": "user", "content": "three"}]
    assert "conversation_id" not in sent
    roles = [m.role for m in (await edge.settled()).messages(conversation_id)]
    assert roles == ["user", "assistant"] * 3


async def test_edge_headers_and_cookie_are_stripped_before_upstream(
    start_edge: Start, fake_upstream: FakeUpstream
) -> None:
    edge = await start_edge()
    async with aiohttp.ClientSession() as http:
        resp = await http.post(
            f"{edge.base_url}/chat/completions",
            json={"model": "tokens-2", "messages": [{"role": "user", "content": "hi"}]},
            headers={
                "x-session-id": "s1",
                "X-Agent-ID": "planner",
                "Cookie": "cf_session_id=abc; theme=dark",
                "Authorization": "Bearer sk-client",
            },
        )
        conversation_id = resp.headers["X-Conversation-ID"]
        resp = await http.post(
            f"{edge.base_url}/chat/completions",
            json={"model": "tokens-2", "messages": [{"role": "user", "content": "again"}]},
            headers={"x-session-id": "s1", "X-Conversation-ID": conversation_id},
        )
        assert resp.status == 200
    headers = {k.lower(): v for k, v in fake_upstream.chat_requests[0].headers.items()}
    assert "x-session-id" not in headers
    assert "x-agent-id" not in headers
    assert headers["cookie"] == "theme=dark"
    assert headers["authorization"] == "Bearer sk-client"  # passed through without UPSTREAM_API_KEY
    headers = {k.lower(): v for k, v in fake_upstream.chat_requests[1].headers.items()}
    assert "x-conversation-id" not in headers
    assert (await edge.settled()).messages(conversation_id)[1].agent_id == "planner"


async def test_upstream_api_key_replaces_client_authorization(
    start_edge: Start, fake_upstream: FakeUpstream
) -> None:
    edge = await start_edge(upstream_api_key="sk-upstream")
    await edge.client().chat.completions.create(
        model="tokens-2", messages=[{"role": "user", "content": "hi"}]
    )
    headers = {k.lower(): v for k, v in fake_upstream.chat_requests[-1].headers.items()}
    assert headers["authorization"] == "Bearer sk-upstream"


async def test_system_message_without_id_is_stateless(start_edge: Start) -> None:
    edge = await start_edge()
    raw = await edge.client().chat.completions.with_raw_response.create(
        model="tokens-2",
        messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
    )
    assert "x-conversation-id" not in raw.headers
    assert [f for f in edge.files() if "conversations" in f] == []


async def test_tool_calls_are_assembled_stored_and_replayed(
    start_edge: Start, fake_upstream: FakeUpstream
) -> None:
    edge = await start_edge()
    client = edge.client()
    raw = await client.chat.completions.with_raw_response.create(
        model="tools", messages=[{"role": "user", "content": "weather?"}], stream=True
    )
    conversation_id = raw.headers["x-conversation-id"]
    [c async for c in raw.parse()]
    reply = (await edge.settled()).messages(conversation_id)[1]
    assert reply.finish_reason == "tool_calls"
    assert reply.tool_calls == [
        {
            "id": TOOL_CALL_ID,
            "type": "function",
            "function": {
                "name": "get_weather",
                "arguments": '{"location":"Paris, FR","unit":"celsius"}',
            },
        }
    ]
    await client.chat.completions.create(
        model="tokens-2",
        messages=[{"role": "tool", "tool_call_id": TOOL_CALL_ID, "content": "12C"}],
        extra_headers={"X-Conversation-ID": conversation_id},
    )
    sent = fake_upstream.chat_requests[-1].json["messages"]
    assert sent[1]["tool_calls"][0]["id"] == TOOL_CALL_ID
    assert sent[2] == {"role": "tool", "tool_call_id": TOOL_CALL_ID, "content": "12C"}


async def test_non_streaming_reply_is_one_message(start_edge: Start) -> None:
    edge = await start_edge()
    raw = await edge.client().chat.completions.with_raw_response.create(
        model="tokens-7", messages=[{"role": "user", "content": "hi"}]
    )
    completion = raw.parse()
    assert completion.choices[0].message.content == expected_text(7)
    reply = (await edge.settled()).messages(raw.headers["x-conversation-id"])[1]
    assert (reply.content, reply.status, reply.finish_reason) == (
        expected_text(7),
        "complete",
        "stop",
    )


# -- sessions and scoping -------------------------------------------------------------------------


async def test_new_session_gets_an_httponly_cookie_and_header_wins(start_edge: Start) -> None:
    edge = await start_edge()
    body = {"model": "tokens-2", "messages": [{"role": "user", "content": "hi"}]}
    async with aiohttp.ClientSession() as http:
        resp = await http.post(f"{edge.base_url}/chat/completions", json=body)
        cookie = resp.cookies["cf_session_id"]
        assert cookie["httponly"] and cookie["samesite"] == "Lax"
        assert len(cookie.value) >= 32
        conversation_id = resp.headers["X-Conversation-ID"]
        # The cookie alone identifies the session...
        resp = await http.post(
            f"{edge.base_url}/chat/completions",
            json=body,
            headers={
                "X-Conversation-ID": conversation_id,
                "Cookie": f"cf_session_id={cookie.value}",
            },
        )
        assert resp.status == 200
        # ...but a header wins over it: another session cannot continue this conversation.
        resp = await http.post(
            f"{edge.base_url}/chat/completions",
            json=body,
            headers={
                "X-Conversation-ID": conversation_id,
                "Cookie": f"cf_session_id={cookie.value}",
                "x-session-id": "someone-else",
            },
        )
        assert resp.status == 404
        assert (await resp.json())["error"]["code"] == "not_found"


async def test_foreign_unknown_and_malformed_ids(start_edge: Start) -> None:
    edge = await start_edge()
    mine = await edge.client("alice").chat.completions.with_raw_response.create(
        model="tokens-2", messages=[{"role": "user", "content": "secret"}]
    )
    conversation_id = mine.headers["x-conversation-id"]
    bob = edge.client("bob")
    for wanted, status in [
        (conversation_id, 404),
        ("us01-co99", 404),
        ("us99-co01", 404),
        ("../../etc", 400),
    ]:
        with pytest.raises(openai.APIStatusError) as info:
            await bob.chat.completions.create(
                model="tokens-2",
                messages=[{"role": "user", "content": "let me in"}],
                extra_headers={"X-Conversation-ID": wanted},
            )
        assert info.value.status_code == status
    assert [m.content for m in (await edge.settled()).messages(conversation_id)][0] == "secret"
    assert len((await edge.settled()).messages(conversation_id)) == 2


# -- failures -------------------------------------------------------------------------------------


async def test_client_abort_stores_partial_reply_as_error(start_edge: Start) -> None:
    edge = await start_edge()
    async with aiohttp.ClientSession() as http:
        resp = await http.post(
            f"{edge.base_url}/chat/completions",
            json={
                "model": "slow-400-5",
                "stream": True,
                "messages": [{"role": "user", "content": "x"}],
            },
            headers={"x-session-id": "s1"},
        )
        conversation_id = resp.headers["X-Conversation-ID"]
        received = b""
        while received.count(b"tok") < 30:
            received += await resp.content.readany()
        resp.close()  # the client goes away mid-stream
    store = await edge.settled()
    for _ in range(500):
        messages = store.messages(conversation_id)
        reply = messages[-1]
        if len(messages) == 2 and reply.status != "streaming":
            break
        await asyncio.sleep(0.02)
    assert reply.status == "error"
    assert reply.error["type"] == "client_disconnected"
    assert len(reply.content) > 0 and expected_text(400).startswith(reply.content)
    assert store.check() == []


async def test_dropped_upstream_ends_stream_with_error_and_stores_partial(
    start_edge: Start,
) -> None:
    edge = await start_edge()
    resp, events = await raw_stream(
        edge, {"model": "drop-30", "messages": [{"role": "user", "content": "x"}]}
    )
    assert "[DONE]" not in events
    assert events[-1]["error"]["code"] == "upstream_stream_error"
    assert content_of(events[:-1]) == expected_text(30)
    reply = (await edge.settled()).messages(resp.headers["X-Conversation-ID"])[1]
    assert reply.status == "error" and reply.content == expected_text(30)
    # The SDK surfaces the error event as an exception.
    with pytest.raises(openai.APIError):
        stream = await edge.client().chat.completions.create(
            model="drop-5", messages=[{"role": "user", "content": "x"}], stream=True
        )
        async for _ in stream:
            pass


async def test_upstream_error_status_is_relayed(start_edge: Start) -> None:
    edge = await start_edge()
    with pytest.raises(openai.RateLimitError) as info:
        await edge.client().chat.completions.create(
            model="error-429", messages=[{"role": "user", "content": "x"}]
        )
    assert info.value.status_code == 429
    body = info.value.body
    assert isinstance(body, dict) and "message" in body


async def test_unreachable_upstream_is_502(start_edge: Start) -> None:
    edge = await start_edge(upstream_base_url="http://127.0.0.1:9/v1", persist_transcripts=False)
    with pytest.raises(openai.APIStatusError) as info:
        await edge.client().chat.completions.create(
            model="x", messages=[{"role": "user", "content": "x"}]
        )
    assert info.value.status_code == 502
    assert info.value.body["code"] == "upstream_unreachable"  # type: ignore[index]


def _fail_writes_of_the_reply(monkeypatch: pytest.MonkeyPatch) -> None:
    """ENOSPC on every file of message 2 (the first reply): chunks and the sealed file."""
    real = chunkstore._fsio.create_exclusive

    def failing(path: str, data: bytes, *, durable: bool) -> None:
        if "-ms02" in os.path.basename(path):
            raise chunkstore.StorageError(28, "No space left on device", path)
        real(path, data, durable=durable)

    monkeypatch.setattr(chunkstore._fsio, "create_exclusive", failing)


async def _storage_failures(edge: Edge) -> str:
    async with aiohttp.ClientSession() as http:
        metrics = await (await http.get(str(edge.server.make_url("/metrics")))).text()
    return next(line for line in metrics.splitlines() if line.startswith("edge_storage_failures"))


@pytest.mark.parametrize(
    ("model", "final_timeout_ms"),
    [
        # A failure during the stream (the first chunk, 60 tokens in) is known at its end.
        ("slow-100-5", 0),
        # Waiting for the seal (STORAGE_FINAL_TIMEOUT_MS) flags a failure of the last write too.
        ("tokens-100", 5000),
    ],
)
async def test_storage_failure_still_completes_the_stream(
    start_edge: Start, monkeypatch: pytest.MonkeyPatch, model: str, final_timeout_ms: int
) -> None:
    edge = await start_edge(storage_final_timeout_ms=final_timeout_ms)
    _fail_writes_of_the_reply(monkeypatch)
    resp, events = await raw_stream(
        edge, {"model": model, "messages": [{"role": "user", "content": "x"}]}
    )
    assert resp.status == 200
    assert events[-1] == "[DONE]"
    assert content_of(events[:-1]) == expected_text(100)
    assert events[-2]["metadata"] == {"storage_failed": True}
    assert await _storage_failures(edge) == "edge_storage_failures_total 1.0"
    monkeypatch.undo()
    # Later writes succeed once the disk recovers.
    conversation_id = resp.headers["X-Conversation-ID"]
    resp, events = await raw_stream(
        edge,
        {"model": "tokens-5", "messages": [{"role": "user", "content": "again"}]},
        **{"X-Conversation-ID": conversation_id},
    )
    assert events[-1] == "[DONE]" and "metadata" not in events[-2]
    statuses = [m.status for m in (await edge.settled()).messages(conversation_id)]
    assert statuses == ["complete", "interrupted", "complete", "complete"]


async def test_a_failure_after_the_stream_is_counted_and_reads_back_interrupted(
    start_edge: Start, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The default: [DONE] does not wait for the disk, so a write that fails after the last
    # upstream event (here the whole reply: a fast stream outruns its recorder) cannot flag
    # the stream. It is counted, logged, and the history says what was kept.
    edge = await start_edge()
    _fail_writes_of_the_reply(monkeypatch)
    resp, events = await raw_stream(
        edge, {"model": "tokens-100", "messages": [{"role": "user", "content": "x"}]}
    )
    assert events[-1] == "[DONE]"
    assert content_of(events[:-1]) == expected_text(100)
    store = await edge.settled()
    assert await _storage_failures(edge) == "edge_storage_failures_total 1.0"
    reply = store.messages(resp.headers["X-Conversation-ID"])[1]
    assert reply.status == "interrupted"


async def test_bad_json_and_oversized_bodies(start_edge: Start) -> None:
    edge = await start_edge(max_request_bytes=1000)
    async with aiohttp.ClientSession() as http:
        url = f"{edge.base_url}/chat/completions"
        for data in (b"{nope", b"[1, 2]", b'"str"', b"[" * 5000 + b"]" * 5000):
            resp = await http.post(url, data=data, headers={"Content-Type": "application/json"})
            assert resp.status in (400, 413), data[:20]
            assert "error" in await resp.json()
        resp = await http.post(url, data=b"{" + b" " * 5000 + b"}")
        assert resp.status == 413
        assert (await resp.json())["error"]["code"] == "request_too_large"

        async def chunked() -> AsyncIterator[bytes]:
            for _ in range(10):
                yield b" " * 500

        resp = await http.post(url, data=chunked())
        assert resp.status == 413
        resp = await http.post(
            url, json={"model": "x", "messages": "nope"}, headers={"x-session-id": "s"}
        )
        assert resp.status == 400
        assert (await resp.json())["error"]["param"] == "messages"


async def test_persistence_off_is_a_pure_proxy_writing_nothing(
    tmp_path: Path, start_edge: Start, fake_upstream: FakeUpstream
) -> None:
    edge = await start_edge(persist_transcripts=False)
    client = edge.client()
    raw = await client.chat.completions.with_raw_response.create(
        model="tokens-30",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        extra_headers={"X-Conversation-ID": "us01-co01"},
        extra_body={"conversation_id": "us01-co01"},
    )
    assert "x-conversation-id" not in raw.headers
    assert content_of([c.model_dump() async for c in raw.parse()]) == expected_text(30)
    assert "conversation_id" not in fake_upstream.chat_requests[-1].json
    await client.chat.completions.create(
        model="tokens-3", messages=[{"role": "user", "content": "x"}]
    )
    models = await client.models.list()
    assert [m.id for m in models.data] == ["fake"]
    assert not (tmp_path / "users").exists()
    assert list(tmp_path.iterdir()) == []


async def test_other_v1_paths_are_relayed(start_edge: Start) -> None:
    edge = await start_edge()
    models = await edge.client().models.list()
    assert [m.id for m in models.data] == ["fake"]
    async with aiohttp.ClientSession() as http:
        resp = await http.get(f"{edge.base_url}/nowhere")
        assert resp.status == 404


async def test_history_batch_flush_writes_a_partial_chunk_on_time(start_edge: Start) -> None:
    edge = await start_edge(history_batch_flush_ms=50, stream_flush_ms=20)
    client = edge.client()
    raw = await client.chat.completions.with_raw_response.create(
        model="slow-20-300", messages=[{"role": "user", "content": "go"}], stream=True
    )
    conversation_id = raw.headers["x-conversation-id"]
    stream = raw.parse()
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            break
    # Far fewer than 60 tokens have arrived, yet the timer puts them on disk mid-stream.
    reply = None
    for _ in range(250):
        messages = edge.store().messages(conversation_id)
        reply = messages[1] if len(messages) > 1 else None  # the writer opens in the background
        if reply is not None and (reply.token_count > 0 or reply.status != "streaming"):
            break
        await asyncio.sleep(0.02)
    assert reply is not None and reply.status == "streaming" and reply.token_count > 0
    async for _ in stream:
        pass
