"""Several edge instances on one database: two real ``python -m edge`` processes.

On PostgreSQL (the deployment that needs several instances: one server the tests start, see
``tests/support/pg_server.py``) and on SQLite (several processes on one machine):

* a conversation continued alternately through both instances: both list the same history,
  seqs gap-free and unique;
* read-your-writes across instances: the next turn on B waits (bounded) for the reply A is
  still streaming, and sends it upstream whole, instead of cut short;
* A SIGKILLed mid-stream: B reads that reply ``interrupted`` within 1 s, with its durable
  prefix, and the conversation goes on;
* 2 clients x 2 instances writing one conversation at once: gap-free, unique seqs.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from edge_process import launch_edge
from fake_upstream import FakeUpstream

from chunkstore import Store

sys.path.append(str(Path(__file__).resolve().parent.parent / "support"))  # pg_server
import pg_server

SESSION = {"x-session-id": "instances-test"}


class Instance:
    def __init__(self, proc: asyncio.subprocess.Process, url: str) -> None:
        self.proc = proc
        self.url = url


Start = Callable[[], Awaitable[Instance]]


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:{tmp_path / 'chat.db'}"
    return pg_server.fresh_database()


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    fake = FakeUpstream()
    await fake.start()
    yield fake
    await fake.close()


@pytest.fixture
async def start(db_url: str, upstream: FakeUpstream) -> AsyncIterator[Start]:
    """``await start()``: one more edge process on the same database."""
    running: list[Instance] = []

    async def launch() -> Instance:
        proc, url = await launch_edge(
            PERSIST_TRANSCRIPTS="true",
            DB_URL=db_url,
            UPSTREAM_BASE_URL=upstream.base_url,
            STORE_DURABILITY="chunk",
        )
        instance = Instance(proc, url)
        running.append(instance)
        return instance

    yield launch
    for instance in running:
        if instance.proc.returncode is None:
            instance.proc.terminate()
            await instance.proc.wait()


async def chat(
    http: aiohttp.ClientSession, edge: Instance, text: str, conversation: str | None, model: str
) -> str:
    headers = {**SESSION, **({"X-Conversation-ID": conversation} if conversation else {})}
    resp = await http.post(
        f"{edge.url}/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": text}]},
        headers=headers,
    )
    assert resp.status == 200, await resp.text()
    await resp.read()
    return resp.headers["X-Conversation-ID"]


async def history(http: aiohttp.ClientSession, edge: Instance, conversation: str) -> list[dict]:
    resp = await http.get(
        f"{edge.url}/v1/conversations/{conversation}/messages",
        params={"limit": "100"},
        headers=SESSION,
    )
    assert resp.status == 200
    data: list[dict] = (await resp.json())["data"]
    return data


async def test_a_conversation_continued_through_both_instances(start: Start) -> None:
    a, b = await start(), await start()
    async with aiohttp.ClientSession() as http:
        conversation = await chat(http, a, "one", None, "tokens-3")
        for i, edge in enumerate([b, a, b, a]):
            assert await chat(http, edge, f"turn {i}", conversation, "tokens-3") == conversation
        seen_a = await history(http, a, conversation)
        seen_b = await history(http, b, conversation)
    assert seen_a == seen_b
    assert [m["seq"] for m in seen_a] == list(range(1, 11))
    assert [m["role"] for m in seen_a] == ["user", "assistant"] * 5
    assert all(m["status"] == "complete" for m in seen_a)


async def test_the_next_turn_on_b_waits_for_the_reply_a_is_streaming(
    start: Start, upstream: FakeUpstream
) -> None:
    a, b = await start(), await start()
    async with aiohttp.ClientSession() as http:
        conversation = await chat(http, a, "first", None, "tokens-3")
        # A streams a slow reply (150 tokens, 10 ms apart: 1.5 s).
        slow = asyncio.create_task(chat(http, a, "slow please", conversation, "slow-150-10"))
        await asyncio.sleep(0.5)  # A's reply is streaming now
        await chat(http, b, "next", conversation, "tokens-3")
        await slow
        replayed = upstream.chat_requests[-1].json["messages"]
    # B's upstream call carried A's reply whole: B waited for it instead of cutting it short.
    whole = "".join(f"tok{i} " for i in range(150))
    assert {"role": "assistant", "content": whole} in [
        {"role": m["role"], "content": m["content"]} for m in replayed
    ]


async def test_a_killed_instances_reply_reads_interrupted_on_the_other_within_a_second(
    start: Start, db_url: str
) -> None:
    a, b = await start(), await start()
    async with aiohttp.ClientSession() as http:
        conversation = await chat(http, a, "first", None, "tokens-3")
        resp = await http.post(
            f"{a.url}/v1/chat/completions",
            json={
                "model": "slow-2000-2",
                "stream": True,
                "messages": [{"role": "user", "content": "long"}],
            },
            headers={**SESSION, "X-Conversation-ID": conversation},
        )
        received = b""
        while received.count(b"tok") < 130:  # two chunks of 60 made durable, at least
            block = await resp.content.readany()
            assert block
            received += block
        a.proc.kill()
        await a.proc.wait()
        killed_at = time.monotonic()
        status = None
        while time.monotonic() - killed_at < 10:
            cut = (await history(http, b, conversation))[-1]
            status = cut["status"]
            if status == "interrupted":
                break
            await asyncio.sleep(0.05)
        seen_after = time.monotonic() - killed_at
        resp.close()
        assert status == "interrupted"
        assert seen_after < 1.0, seen_after
        words = cut["content"].split()
        assert len(words) >= 60 and len(words) % 60 == 0  # whole durable chunks
        assert await chat(http, b, "go on", conversation, "tokens-3") == conversation
    with Store(db_url) as store:
        seqs = [m.seq for m in store.messages(conversation, limit=None)]
        assert seqs == list(range(1, len(seqs) + 1))


async def test_two_clients_on_two_instances_write_one_conversation_at_once(start: Start) -> None:
    a, b = await start(), await start()
    turns = 6
    async with aiohttp.ClientSession() as http:
        conversation = await chat(http, a, "start", None, "tokens-2")

        async def client(edge: Instance, name: str) -> None:
            for i in range(turns):
                await chat(http, edge, f"{name} {i}", conversation, "tokens-2")

        await asyncio.gather(client(a, "a"), client(b, "b"))
        seen = await history(http, a, conversation)
    seqs = [m["seq"] for m in seen]
    assert seqs == list(range(1, 2 + 2 * 2 * turns + 1))
    assert sum(1 for m in seen if m["role"] == "user") == 1 + 2 * turns
    assert all(m["status"] == "complete" for m in seen)
