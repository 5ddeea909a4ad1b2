"""The edge as a real process: graceful shutdown seals replies; a SIGKILL loses nothing durable.

Each test runs on every backend the edge can be given (``DB_URL``): the file store and SQLite.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from edge_process import launch_edge
from fake_upstream import FakeUpstream

from chunkstore import Store

STRESS = os.environ.get("STRESS") == "1"
KILLS = 100 if STRESS else 2


class EdgeProcess:
    def __init__(self, proc: asyncio.subprocess.Process, url: str) -> None:
        self.proc = proc
        self.url = url


@pytest.fixture(params=["file", "sqlite"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where the edge under test stores: a file store directory or a SQLite database."""
    if request.param == "file":
        return f"file:{tmp_path / 'users'}"
    return f"sqlite:{tmp_path / 'chat.db'}"


async def start_edge(db_url: str, upstream: str) -> EdgeProcess:
    proc, url = await launch_edge(
        PERSIST_TRANSCRIPTS="true", DB_URL=db_url, UPSTREAM_BASE_URL=upstream
    )
    return EdgeProcess(proc, url)


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    fake = FakeUpstream()
    await fake.start()
    yield fake
    await fake.close()


async def stream_until(
    edge: EdgeProcess, tokens: int, **headers: str
) -> tuple[str, aiohttp.ClientSession, aiohttp.ClientResponse]:
    http = aiohttp.ClientSession()
    resp = await http.post(
        f"{edge.url}/v1/chat/completions",
        json={
            "model": "slow-2000-5",
            "stream": True,
            "messages": [{"role": "user", "content": "go"}],
        },
        headers={"x-session-id": "s1", **headers},
    )
    received = b""
    while received.count(b"tok") < tokens:
        block = await resp.content.readany()
        assert block, "stream ended early"
        received += block
    return resp.headers["X-Conversation-ID"], http, resp


async def test_sigterm_seals_the_streaming_reply_as_error(
    db_url: str, upstream: FakeUpstream
) -> None:
    edge = await start_edge(db_url, upstream.base_url)
    conversation_id, http, resp = await stream_until(edge, 100)
    edge.proc.send_signal(signal.SIGTERM)
    # The stream outlives the 5 s grace period (2000 tokens x 5 ms), so it is cancelled.
    assert await asyncio.wait_for(edge.proc.wait(), 30) == 0
    resp.close()
    await http.close()
    with Store(db_url) as store:
        reply = store.messages(conversation_id)[1]
        assert reply.status == "error"
        assert reply.error["type"] in ("cancelled", "client_disconnected")
        assert "".join(f"tok{i} " for i in range(2000)).startswith(reply.content)
        assert len(reply.content) > 0
        assert store.check() == []


async def test_sigkill_mid_stream_then_restart(db_url: str, upstream: FakeUpstream) -> None:
    conversation_id: str | None = None
    for kill in range(KILLS):
        edge = await start_edge(db_url, upstream.base_url)
        headers = {"X-Conversation-ID": conversation_id} if conversation_id else {}
        conversation_id, http, resp = await stream_until(edge, 130 + kill * 7, **headers)
        edge.proc.kill()
        await edge.proc.wait()
        resp.close()
        await http.close()

        # Restarted, the edge serves the cut reply as interrupted, with its durable prefix.
        edge = await start_edge(db_url, upstream.base_url)
        async with aiohttp.ClientSession(headers={"x-session-id": "s1"}) as http:
            # The cut reply is the last message: the second-to-last seq is 4 * kill + 1.
            url = f"{edge.url}/v1/conversations/{conversation_id}/messages"
            page = await (await http.get(url, params={"after_seq": 4 * kill + 1})).json()
            [cut] = page["data"]
            assert cut["status"] == "interrupted"
            # Chunks of 60 tokens were fsynced before the next one: at least one is durable.
            assert len(cut["content"].split()) >= 60 and len(cut["content"].split()) % 60 == 0
            # The conversation goes on after the crash.
            resp = await http.post(
                f"{edge.url}/v1/chat/completions",
                json={"model": "tokens-3", "messages": [{"role": "user", "content": "again"}]},
                headers={"X-Conversation-ID": conversation_id},
            )
            assert resp.status == 200
        edge.proc.terminate()
        await edge.proc.wait()
    with Store(db_url) as store:
        messages = store.messages(conversation_id, limit=None)
        assert [m.seq for m in messages] == list(range(1, len(messages) + 1))
        assert [m.status for m in messages].count("interrupted") == KILLS
        store.check(fix=True)
        assert store.check() == []
