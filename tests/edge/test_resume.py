"""Resume, cancel and background generation (``edge.resume``).

* every event of a stored stream carries ``id: <message id>:<offset>`` (the content's length
  once the event is applied), and the response ``X-Message-ID``;
* a client cut at random points resumes with ``Last-Event-ID`` (or ``?after=``) and gets the
  rest: before + after == the stored content, on the file store, SQLite and PostgreSQL;
* a finished reply replays and ends at once; resume and cancel are scoped to the session;
* ``POST …/cancel`` during a resumed stream stops the reply (stored ``error``, reason
  ``cancelled``); background generation finishes a reply whose client left;
* two real edge processes on one PostgreSQL: a reply produced on A resumed on B, B's cancel
  reaching A, A SIGKILLed while B follows (the resumed stream ends ``interrupted``).
"""

from __future__ import annotations

import asyncio
import random
import re
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestServer
from edge_process import launch_edge
from fake_upstream import FakeUpstream

from edge.app import create_app
from edge.config import EdgeConfig
from edge.keys import PENDING_REPLIES

sys.path.append(str(Path(__file__).resolve().parent.parent / "support"))  # pg_server
import pg_server

S1 = {"x-session-id": "resume-s1"}
S2 = {"x-session-id": "resume-s2"}
_ID = re.compile(r"(us\d+-co\d+-ms\d+):(\d+)")


# -- SSE helpers --------------------------------------------------------------------------------


def parse(raw: bytes) -> list[dict[str, Any]]:
    """The complete events of ``raw``: ``{"id": ..., "data": ...}`` (data parsed unless
    ``[DONE]``); an unfinished last event is left out, as a client that was cut has it."""
    events = []
    for block in raw.split(b"\n\n")[:-1]:
        event: dict[str, Any] = {}
        for line in block.split(b"\n"):
            name, _, value = line.partition(b": ")
            if name == b"id":
                event["id"] = value.decode()
            elif name == b"data":
                event["data"] = "[DONE]" if value == b"[DONE]" else orjson.loads(value)
        if "data" in event:
            events.append(event)
    return events


def content(events: list[dict[str, Any]]) -> str:
    return "".join(
        choice["delta"].get("content") or ""
        for e in events
        if isinstance(e["data"], dict)
        for choice in e["data"].get("choices") or []
        if choice.get("index", 0) == 0
    )


def status_of(events: list[dict[str, Any]]) -> dict[str, Any]:
    (status,) = [
        e["data"]["metadata"]
        for e in events
        if isinstance(e["data"], dict) and "status" in (e["data"].get("metadata") or {})
    ]
    return status  # type: ignore[no-any-return]


class Edge:
    def __init__(self, url: str, server: TestServer | None = None) -> None:
        self.url = url
        self.server = server

    async def settled(self) -> None:
        if self.server is not None:
            tasks = self.server.app[PENDING_REPLIES].tasks()
            if tasks:
                await asyncio.wait(tasks)


async def start_stream(
    http: aiohttp.ClientSession,
    edge: Edge,
    model: str,
    conversation: str | None = None,
    **headers: str,
) -> aiohttp.ClientResponse:
    if conversation is not None:
        headers["X-Conversation-ID"] = conversation
    resp = await http.post(
        f"{edge.url}/v1/chat/completions",
        json={"model": model, "stream": True, "messages": [{"role": "user", "content": "go"}]},
        headers={**S1, **headers},
    )
    assert resp.status == 200, await resp.text()
    return resp


async def read_until(resp: aiohttp.ClientResponse, chars: int) -> bytes:
    """Read until at least ``chars`` characters of content arrived (or the stream ended)."""
    raw = b""
    while len(content(parse(raw))) < chars:
        block = await resp.content.readany()
        if not block:
            break
        raw += block
    return raw


async def resume(
    http: aiohttp.ClientSession,
    edge: Edge,
    conversation: str,
    message: str,
    last_id: str | None = None,
    *,
    session: dict[str, str] = S1,
    params: dict[str, str] | None = None,
) -> aiohttp.ClientResponse:
    headers = dict(session)
    if last_id is not None:
        headers["Last-Event-ID"] = last_id
    return await http.get(
        f"{edge.url}/v1/conversations/{conversation}/messages/{message}/stream",
        headers=headers,
        params=params,
    )


async def stored(http: aiohttp.ClientSession, edge: Edge, conversation: str) -> dict[str, Any]:
    """The last message of the conversation, through the history API."""
    resp = await http.get(
        f"{edge.url}/v1/conversations/{conversation}/messages",
        params={"limit": "100"},
        headers=S1,
    )
    assert resp.status == 200
    last: dict[str, Any] = (await resp.json())["data"][-1]
    return last


# -- one edge in the test process, on each backend ----------------------------------------------

StartEdge = Callable[..., Awaitable[Edge]]


@pytest.fixture(params=["file", "sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "file":
        return f"file:{tmp_path / 'users'}"
    if request.param == "sqlite":
        return f"sqlite:{tmp_path / 'chat.db'}"
    return pg_server.fresh_database()


@pytest.fixture
def start_edge(aiohttp_server: Any, fake_upstream: FakeUpstream, tmp_path: Path) -> StartEdge:
    async def start(**overrides: Any) -> Edge:
        options: dict[str, Any] = {
            "persist_transcripts": True,
            "db_url": f"file:{tmp_path / 'users'}",
            "upstream_base_url": fake_upstream.base_url,
            "durability": "none",
            "stream_bundle_tokens": 5,
            "chunk_tokens": 20,
            "history_batch_flush_ms": 50,
        }
        options.update(overrides)
        server = await aiohttp_server(create_app(EdgeConfig(**options)))
        return Edge(str(server.make_url("")).rstrip("/"), server)

    return start


async def test_every_event_names_the_message_and_its_offset(start_edge: StartEdge) -> None:
    edge = await start_edge()
    async with aiohttp.ClientSession() as http:
        resp = await start_stream(http, edge, "tokens-130")
        message = resp.headers["X-Message-ID"]
        conversation = resp.headers["X-Conversation-ID"]
        events = parse(await resp.read())
        await edge.settled()
        reply = await stored(http, edge, conversation)
    assert message == reply["id"] == f"{conversation}-ms02"
    assert events[-1] == {"data": "[DONE]"}
    offset = 0
    for event in events[:-1]:
        offset += len(content([event]))
        assert event["id"] == f"{message}:{offset}"
    assert offset == len(reply["content"]) and content(events) == reply["content"]


async def test_a_client_cut_at_random_points_resumes_exactly(
    start_edge: StartEdge, db_url: str
) -> None:
    """Background generation on: the reply goes on while the client is away, and the resumed
    stream follows it live (from memory) to its end."""
    edge = await start_edge(db_url=db_url, background_generation=True)
    rng = random.Random(14)
    conversation = None
    async with aiohttp.ClientSession() as http:
        for cut in [rng.randrange(1, 1500) for _ in range(3)] + [0]:
            resp = await start_stream(
                http, edge, "slow-250-1", conversation, **{"X-Background-Generation": "true"}
            )
            conversation = resp.headers["X-Conversation-ID"]
            message = resp.headers["X-Message-ID"]
            raw = await read_until(resp, cut)
            resp.close()
            before = parse(raw)
            last = next((e["id"] for e in reversed(before) if "id" in e), None)
            again = await resume(http, edge, conversation, message, last)
            assert again.status == 200
            assert again.headers["X-Message-ID"] == message
            after = parse(await again.read())
            await edge.settled()
            reply = await stored(http, edge, conversation)
            assert reply["status"] == "complete", (reply["status_reason"], reply["content"][-30:])
            assert content(before) + content(after) == reply["content"], cut
            assert status_of(after) == {"status": "complete", "message_id": message}
            assert after[-1] == {"data": "[DONE]"}


async def test_without_background_a_disconnect_stores_error_and_resume_replays_it(
    start_edge: StartEdge,
) -> None:
    edge = await start_edge()
    async with aiohttp.ClientSession() as http:
        # The opt-in header alone does nothing while BACKGROUND_GENERATION is off.
        resp = await start_stream(http, edge, "slow-300-2", **{"X-Background-Generation": "1"})
        conversation = resp.headers["X-Conversation-ID"]
        message = resp.headers["X-Message-ID"]
        raw = await read_until(resp, 200)
        resp.close()
        await asyncio.sleep(0.2)
        await edge.settled()
        before = parse(raw)
        reply = await stored(http, edge, conversation)
        assert reply["status"] == "error"
        assert reply["status_reason"] == "client_disconnected"
        # The history's resume URL is null for a reply that ended; after= takes a bare offset.
        assert reply["resume_url"] is None
        offset = str(len(content(before)))
        again = await resume(http, edge, conversation, message, params={"after": offset})
        after = parse(await again.read())
    assert content(before) + content(after) == reply["content"]
    assert status_of(after) == {
        "status": "error",
        "message_id": message,
        "reason": "client_disconnected",
    }


async def test_a_finished_reply_replays_and_ends_at_once(start_edge: StartEdge) -> None:
    edge = await start_edge()
    async with aiohttp.ClientSession() as http:
        resp = await start_stream(http, edge, "tokens-50")
        conversation, message = resp.headers["X-Conversation-ID"], resp.headers["X-Message-ID"]
        first = parse(await resp.read())
        await edge.settled()
        reply = await stored(http, edge, conversation)
        whole = parse(await (await resume(http, edge, conversation, message)).read())
        end = parse(await (await resume(http, edge, conversation, message, first[-2]["id"])).read())
        middle = parse(
            await (await resume(http, edge, conversation, message, f"{message}:7")).read()
        )
    assert content(whole) == reply["content"] == content(first)
    assert content(end) == ""
    assert content(middle) == reply["content"][7:]
    for events in (whole, end, middle):
        finish = [
            c["finish_reason"]
            for e in events
            if isinstance(e["data"], dict)
            for c in e["data"]["choices"]
            if c.get("finish_reason")
        ]
        assert finish == ["stop"]
        assert status_of(events)["status"] == "complete"
        assert events[-1] == {"data": "[DONE]"}
        assert all(_ID.fullmatch(e["id"]) for e in events[:-1])


async def test_resume_and_cancel_are_scoped_to_the_session(start_edge: StartEdge) -> None:
    edge = await start_edge()
    async with aiohttp.ClientSession() as http:
        resp = await start_stream(http, edge, "tokens-5")
        conversation, message = resp.headers["X-Conversation-ID"], resp.headers["X-Message-ID"]
        await resp.read()
        other = await start_stream(http, edge, "tokens-5")
        other_conversation = other.headers["X-Conversation-ID"]
        await other.read()
        base = f"{edge.url}/v1/conversations"
        cases = [
            (f"{base}/{conversation}/messages/{message}/stream", S2, 404),
            (f"{base}/{conversation}/messages/{message}/cancel", S2, 404),
            (f"{base}/{other_conversation}/messages/{message}/stream", S1, 404),
            (f"{base}/{conversation}/messages/{conversation}-ms09/stream", S1, 404),
            (f"{base}/{conversation}/messages/nope/stream", S1, 400),
            (f"{base}/{conversation}/messages/{message}/stream?after=x", S1, 400),
            (f"{base}/{conversation}/messages/{message}/stream?after=us01-co01-ms01:3", S1, 400),
            (f"/api/conversations/{conversation}/messages/{message}/stream", S1, 200),
        ]
        for url, session, status in cases:
            method = "POST" if url.endswith("cancel") else "GET"
            url = url if url.startswith("http") else edge.url + url
            answer = await http.request(method, url, headers=session)
            assert answer.status == status, url
            if status != 200:
                assert "error" in await answer.json()
            else:
                await answer.read()


async def test_cancel_during_a_resumed_stream(start_edge: StartEdge) -> None:
    edge = await start_edge()
    async with aiohttp.ClientSession() as http:
        resp = await start_stream(http, edge, "slow-2000-2")
        conversation, message = resp.headers["X-Conversation-ID"], resp.headers["X-Message-ID"]
        raw = await read_until(resp, 100)
        # The running reply shows in the history with where to follow it.
        running = await stored(http, edge, conversation)
        assert running["status"] == "streaming" and running["id"] == message
        assert running["resume_url"].startswith(
            f"/v1/conversations/{conversation}/messages/{message}/stream?after={message}:"
        )
        follower = await http.get(edge.url + running["resume_url"], headers=S1)
        seen = running["content"].encode()  # what the history showed, as a page would
        got = await follower.content.readany()
        assert got
        cancel = await http.post(
            f"{edge.url}/v1/conversations/{conversation}/messages/{message}/cancel", headers=S1
        )
        assert cancel.status == 200
        cancelled = await cancel.json()
        rest = parse(got + await follower.read())
        original = parse(raw + await resp.read())
        reply = await stored(http, edge, conversation)
        metrics = await (await http.get(f"{edge.url}/metrics")).text()
    assert cancelled["status"] == "error" and cancelled["status_reason"] == "cancelled"
    assert reply == cancelled
    assert 0 < len(reply["content"]) < len("".join(f"tok{i} " for i in range(2000)))
    assert seen.decode() + content(rest) == reply["content"]
    assert status_of(rest) == {"status": "error", "message_id": message, "reason": "cancelled"}
    # The original client is told too, and its stream ends cleanly.
    assert content(original) == reply["content"]
    assert status_of(original) == {"status": "error", "reason": "cancelled"}
    assert original[-1] == {"data": "[DONE]"}
    assert 'edge_cancels_total{scope="local"} 1.0' in metrics
    assert 'edge_resumes_total{source="live"} 1.0' in metrics


async def test_cancelling_a_reply_that_ended_returns_it_as_it_is(start_edge: StartEdge) -> None:
    edge = await start_edge()
    async with aiohttp.ClientSession() as http:
        resp = await start_stream(http, edge, "tokens-5")
        conversation, message = resp.headers["X-Conversation-ID"], resp.headers["X-Message-ID"]
        await resp.read()
        await edge.settled()
        cancel = await http.post(
            f"{edge.url}/v1/conversations/{conversation}/messages/{message}/cancel", headers=S1
        )
        assert cancel.status == 200
        assert (await cancel.json())["status"] == "complete"


async def test_background_generation_finishes_after_a_disconnect(start_edge: StartEdge) -> None:
    edge = await start_edge(background_generation=True)
    async with aiohttp.ClientSession() as http:
        resp = await start_stream(http, edge, "slow-200-2", **{"X-Background-Generation": "true"})
        conversation = resp.headers["X-Conversation-ID"]
        await read_until(resp, 50)
        resp.close()
        # The history shows the reply streaming on; once it ends, it is stored whole.
        assert (await stored(http, edge, conversation))["status"] == "streaming"
        await edge.settled()
        running = await stored(http, edge, conversation)
        metrics = await (await http.get(f"{edge.url}/metrics")).text()
    assert running["status"] == "complete"
    assert running["content"] == "".join(f"tok{i} " for i in range(200))
    assert 'edge_background_replies_total{outcome="complete"} 1.0' in metrics


async def test_a_background_reply_is_cut_after_background_max_s(
    start_edge: StartEdge,
) -> None:
    edge = await start_edge(background_generation=True, background_max_s=1)
    async with aiohttp.ClientSession() as http:
        resp = await start_stream(http, edge, "slow-1000-3", **{"X-Background-Generation": "true"})
        conversation = resp.headers["X-Conversation-ID"]
        await read_until(resp, 20)
        resp.close()
        await edge.settled()
        reply = await stored(http, edge, conversation)
    assert reply["status"] == "error" and reply["status_reason"] == "background_timeout"
    assert 0 < len(reply["content"].split()) < 1000


# -- two edge processes on one PostgreSQL -------------------------------------------------------


class Process(Edge):
    def __init__(self, proc: asyncio.subprocess.Process, url: str) -> None:
        super().__init__(url)
        self.proc = proc


@pytest.fixture
async def start_process(
    fake_upstream: FakeUpstream,
) -> AsyncIterator[Callable[[str], Awaitable[Process]]]:
    running: list[Process] = []

    async def launch(db_url: str) -> Process:
        proc, url = await launch_edge(
            PERSIST_TRANSCRIPTS="true",
            DB_URL=db_url,
            UPSTREAM_BASE_URL=fake_upstream.base_url,
            STORE_DURABILITY="chunk",
            BACKGROUND_GENERATION="true",
            HISTORY_BATCH_FLUSH_MS="100",
            RESUME_POLL_MS="20",
        )
        process = Process(proc, url)
        running.append(process)
        return process

    yield launch
    for process in running:
        if process.proc.returncode is None:
            process.proc.terminate()
            await process.proc.wait()


async def test_two_instances_on_postgresql_resume_cancel_and_a_killed_producer(
    start_process: Callable[[str], Awaitable[Process]],
) -> None:
    db_url = pg_server.fresh_database()
    a, b = await asyncio.gather(start_process(db_url), start_process(db_url))
    background = {"X-Background-Generation": "true"}
    rng = random.Random(7)
    async with aiohttp.ClientSession() as http:
        # 1. Produced on A, the client cut at random points, resumed on B: B follows the store.
        conversation = None
        for cut in (rng.randrange(1, 1200), rng.randrange(1, 1200)):
            resp = await start_stream(http, a, "slow-200-2", conversation, **background)
            conversation = resp.headers["X-Conversation-ID"]
            message = resp.headers["X-Message-ID"]
            before = parse(await read_until(resp, cut))
            resp.close()
            last = next((e["id"] for e in reversed(before) if "id" in e), None)
            after = parse(await (await resume(http, b, conversation, message, last)).read())
            reply = await stored(http, b, conversation)
            assert reply["status"] == "complete"
            assert content(before) + content(after) == reply["content"]
            assert status_of(after)["status"] == "complete"
        assert conversation is not None

        # 2. Cancelled on B while A produces it: NOTIFY reaches A, which cuts and stores it.
        resp = await start_stream(http, a, "slow-2000-2", conversation, **background)
        message = resp.headers["X-Message-ID"]
        before = parse(await read_until(resp, 50))
        resp.close()
        follower = await resume(http, b, conversation, message, before[-1]["id"])
        first = await follower.content.readany()
        cancel = await http.post(
            f"{b.url}/v1/conversations/{conversation}/messages/{message}/cancel", headers=S1
        )
        cancelled = await cancel.json()
        assert cancelled["status"] == "error" and cancelled["status_reason"] == "cancelled"
        # The follower got everything up to the cut; the last event it got shows where.
        rest = parse(first + await follower.read())
        assert status_of(rest)["reason"] == "cancelled"
        assert content(before) + content(rest) == cancelled["content"]

        # 3. A SIGKILLed while B follows (from where B's history shows the running reply):
        # B's stream ends interrupted, with the durable prefix.
        resp = await start_stream(http, a, "slow-2000-2", conversation, **background)
        message = resp.headers["X-Message-ID"]
        await read_until(resp, 700)  # more than a chunk (60 tokens) durable by now
        running = await stored(http, b, conversation)
        assert running["id"] == message and running["status"] == "streaming"
        follower = await http.get(b.url + running["resume_url"], headers=S1)
        a.proc.kill()
        await a.proc.wait()
        rest = parse(await asyncio.wait_for(follower.read(), 10))
        reply = await stored(http, b, conversation)
    assert reply["status"] == "interrupted"
    assert status_of(rest) == {"status": "interrupted", "message_id": message}
    assert running["content"] + content(rest) == reply["content"]
    assert len(reply["content"]) >= len(running["content"]) > 0


@pytest.mark.parametrize("kind", ["file", "sqlite"])
async def test_a_cancel_on_another_instance_of_a_file_or_sqlite_store(
    start_edge: StartEdge, tmp_path: Path, kind: str
) -> None:
    """Two edges on one store (in this process): B's cancel reaches A through a marker file
    next to the store, which A looks for every 0.1 s."""
    url = f"file:{tmp_path / 'shared'}" if kind == "file" else f"sqlite:{tmp_path / 'shared.db'}"
    a, b = await start_edge(db_url=url), await start_edge(db_url=url)
    async with aiohttp.ClientSession() as http:
        resp = await start_stream(http, a, "slow-2000-2")
        conversation, message = resp.headers["X-Conversation-ID"], resp.headers["X-Message-ID"]
        raw = await read_until(resp, 100)
        cancel = await http.post(
            f"{b.url}/v1/conversations/{conversation}/messages/{message}/cancel", headers=S1
        )
        cancelled = await cancel.json()
        original = parse(raw + await resp.read())
        metrics = await (await http.get(f"{b.url}/metrics")).text()
    assert cancelled["status"] == "error" and cancelled["status_reason"] == "cancelled"
    assert content(original) == cancelled["content"]
    assert status_of(original) == {"status": "error", "reason": "cancelled"}
    assert 'edge_cancels_total{scope="remote"} 1.0' in metrics
