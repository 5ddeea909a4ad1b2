"""``ReplyRecorder``: the hand-off from the relay to the background writer task."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from fake_upstream import MakeEdge

import chunkstore
from chunkstore import AsyncStore, Store
from edge.keys import STORE, UPSTREAM_SESSION
from edge.metrics import Metrics
from edge.persist import PendingReplies, ReplyRecorder


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[AsyncStore]:
    store = await AsyncStore.open(tmp_path / "users", durability="none")
    try:
        yield store
    finally:
        await store.close()


async def new_conversation(store: AsyncStore) -> str:
    return (await store.create_conversation(await store.user_for("s"))).id


def recorder(
    store: AsyncStore, conversation_id: str, *, chunk_tokens: int = 3, flush_ms: int = 60_000
) -> tuple[ReplyRecorder, Metrics]:
    metrics = Metrics.create()
    rec = ReplyRecorder(
        store,
        conversation_id,
        agent_id="agent",
        chunk_tokens=chunk_tokens,
        flush_ms=flush_ms,
        metrics=metrics,
    )
    return rec, metrics


def sealed_records(store: AsyncStore, conversation_id: str, message_id: str) -> list[Any]:
    mdir = os.path.join(store.store.root, "us01/data/conversations", conversation_id, "messages")
    raw = Path(mdir, f"{message_id}.json").read_bytes()
    return list(chunkstore._records.decode(raw)["records"])


def counter(metrics: Metrics, name: str) -> float:
    value = metrics.registry.get_sample_value(name)
    assert value is not None
    return value


async def test_tokens_are_written_a_chunk_at_a_time_in_order(
    store: AsyncStore, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="edge.store")
    conv = await new_conversation(store)
    rec, metrics = recorder(store, conv)
    words = [f"w{i} " for i in range(10)]
    for i, word in enumerate(words):
        rec.token(word)
        if i % 4 == 0:
            await asyncio.sleep(0)  # some while the writer is busy, some in one go
    rec.finish("stop", {"total_tokens": 10}, None)
    assert await rec.wait(10)
    assert rec.message_id is not None
    records = sealed_records(store, conv, rec.message_id)
    assert [r["tokenCount"] for r in records] == [3, 3, 3, 1]
    assert [r["status"] for r in records] == ["streaming"] * 3 + ["complete"]
    (message,) = [m for m in await store.messages(conv) if m.id == rec.message_id]
    assert (message.content, message.status, message.finish_reason) == (
        "".join(words),
        "complete",
        "stop",
    )
    assert counter(metrics, "edge_chunks_written_total") == 4  # three chunks and the seal
    # Chunks due while the stream went on were written one by one, in order; what was left
    # when it ended went to the seal in one job (no durable write per chunk of a backlog).
    writes = [r for r in caplog.records if r.getMessage() == "chunk_write"]
    assert [r.fields["tokens"] for r in writes] == [3] * len(writes)  # type: ignore[attr-defined]
    assert [r.fields["chunk"] for r in writes] == list(range(1, len(writes) + 1))  # type: ignore[attr-defined]
    (sealed,) = [r for r in caplog.records if r.getMessage() == "message_sealed"]
    assert sealed.fields["chunks"] == 4  # type: ignore[attr-defined]


async def test_a_backlog_at_the_end_goes_to_the_seal_in_one_job(
    store: AsyncStore, caplog: pytest.LogCaptureFixture
) -> None:
    """The stream ends with many chunks' worth of tokens not yet written (a slow disk, or the
    edge shutting down): they are stored by the seal, one job, the same records as if each
    chunk had been written on its own."""
    caplog.set_level(logging.INFO, logger="edge.store")
    conv = await new_conversation(store)
    rec, metrics = recorder(store, conv)
    assert await rec.opened is not None
    words = [f"w{i} " for i in range(20)]
    for word in words:  # no await in between: the consumer never runs before the end
        rec.token(word)
    rec.fail({"type": "cancelled", "reason": "shutdown"})
    assert await rec.wait(10)
    assert rec.message_id is not None
    records = sealed_records(store, conv, rec.message_id)
    assert [r["tokenCount"] for r in records] == [3, 3, 3, 3, 3, 3, 2]
    assert [r["status"] for r in records] == ["streaming"] * 6 + ["error"]
    assert [r.getMessage() for r in caplog.records].count("chunk_write") == 0
    assert counter(metrics, "edge_chunks_written_total") == 7
    (message,) = [m for m in await store.messages(conv) if m.id == rec.message_id]
    assert (message.content, message.status) == ("".join(words), "error")


async def test_no_task_or_timer_per_token(store: AsyncStore) -> None:
    conv = await new_conversation(store)
    rec, _ = recorder(store, conv, chunk_tokens=60, flush_ms=60_000)
    await asyncio.sleep(0.05)  # the writer is open and waiting
    loop = asyncio.get_running_loop()
    tasks: list[Any] = []
    timers: list[Any] = []
    real_call_at = loop.call_at

    def counting_call_at(when: float, callback: Any, *args: Any, **kw: Any) -> Any:
        timers.append(callback)
        return real_call_at(when, callback, *args, **kw)

    def counting_factory(lp: Any, coro: Any, **kw: Any) -> Any:
        tasks.append(coro)
        return asyncio.Task(coro, loop=lp, **kw)

    loop.set_task_factory(counting_factory)
    loop.call_at = counting_call_at  # type: ignore[method-assign,assignment]
    try:
        for i in range(300):  # 5 chunks, one token per loop turn
            rec.token(f"t{i}")
            await asyncio.sleep(0)
        rec.finish("stop", None, None)
        assert await rec.wait(10)
    finally:
        loop.set_task_factory(None)
        del loop.call_at
    assert tasks == []  # chunk writes are executor jobs; nothing is a task per token
    # At most one flush timer per chunk (armed while tokens are pending), not per token.
    assert len([t for t in timers if getattr(t, "__self__", None) is rec]) <= 6
    assert rec.message_id is not None
    records = sealed_records(store, conv, rec.message_id)
    # Chunks of 60, then the seal: with the last chunk in it when that chunk was still
    # pending as the stream ended (what was left goes to the seal in one job).
    assert [r["tokenCount"] for r in records] in ([60] * 5 + [0], [60] * 5)
    assert [r["status"] for r in records][-1] == "complete"


async def test_a_partial_chunk_is_written_once_the_flush_time_passes(store: AsyncStore) -> None:
    conv = await new_conversation(store)
    rec, metrics = recorder(store, conv, chunk_tokens=60, flush_ms=50)
    sync = Store(store.store.root, durability="none")

    async def stored_tokens(expected: int) -> int:
        for _ in range(200):
            messages = sync.messages(conv)  # the reply is the conversation's only message
            if messages and messages[0].token_count >= expected:
                return int(messages[0].token_count)
            await asyncio.sleep(0.01)
        return -1

    for i in range(5):
        rec.token(f"a{i} ")
    assert await stored_tokens(5) == 5  # on disk mid-stream, long before 60 tokens
    rec.token("b ")
    rec.token("c ")
    assert await stored_tokens(7) == 7
    # The chunk is visible on disk a moment before the recorder, back from the store's
    # thread, counts it: wait for the count, then hold it to exactly 2.
    for _ in range(200):
        if counter(metrics, "edge_chunks_written_total") >= 2:
            break
        await asyncio.sleep(0.01)
    assert counter(metrics, "edge_chunks_written_total") == 2
    await asyncio.sleep(0.12)  # nothing pending: no timer, no empty chunk
    assert counter(metrics, "edge_chunks_written_total") == 2
    rec.finish("stop", None, None)
    assert await rec.wait(10)
    assert rec.message_id is not None
    records = sealed_records(store, conv, rec.message_id)
    assert [r["tokenCount"] for r in records] == [5, 2, 0]


async def test_a_partial_chunk_waits_for_the_flush_time_since_the_last_write(
    store: AsyncStore,
) -> None:
    conv = await new_conversation(store)
    rec, metrics = recorder(store, conv, chunk_tokens=60, flush_ms=300)
    await asyncio.sleep(0.05)
    rec.token("x")
    await asyncio.sleep(0.1)  # 150 ms after the writer opened: not yet
    assert counter(metrics, "edge_chunks_written_total") == 0
    await asyncio.sleep(0.4)
    assert counter(metrics, "edge_chunks_written_total") == 1
    rec.fail({"type": "client_disconnected", "message": "gone"})
    assert await rec.wait(10)
    (reply,) = await store.messages(conv)
    assert (reply.status, reply.content) == ("error", "x")


async def test_after_a_storage_failure_tokens_are_dropped(
    store: AsyncStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    conv = await new_conversation(store)
    real = chunkstore._fsio.create_exclusive

    def failing(path: str, data: bytes, *, durable: bool) -> None:
        if "-ms01-" in os.path.basename(path):  # the reply's chunk files
            raise chunkstore.StorageError(28, "No space left on device", path)
        real(path, data, durable=durable)

    monkeypatch.setattr(chunkstore._fsio, "create_exclusive", failing)
    rec, metrics = recorder(store, conv, chunk_tokens=3)
    for i in range(3):
        rec.token(f"t{i}")
    assert not await rec.wait(10)
    assert rec.failed
    for i in range(100):
        rec.token(f"late{i}")
    assert rec._tokens == []  # nothing buffers for a writer that is gone
    assert counter(metrics, "edge_storage_failures_total") == 1
    rec.finish("stop", None, None)  # harmless after the failure
    assert not await rec.wait(1)


async def test_the_app_sizes_the_store_pool_and_does_not_cap_upstream_connections(
    make_edge: MakeEdge,
) -> None:
    client = await make_edge(store_threads=5)
    app = client.app
    assert app is not None
    assert app[STORE].executor._max_workers == 5
    # One upstream connection per client stream, however many: no 100-connection cap.
    assert app[UPSTREAM_SESSION].connector.limit == 0


async def test_pending_replies_settle_per_conversation_and_forget_finished_tasks() -> None:
    pending = PendingReplies()
    release = asyncio.Event()

    async def storing() -> None:
        await release.wait()

    slow = asyncio.create_task(storing())
    pending.track("us01-co01", slow)
    assert len(pending) == 1 and pending.tasks() == [slow]
    # Another conversation has nothing to wait for; this one times out, leaving the task be.
    assert await pending.settle("us01-co02", timeout=5) is True
    assert await pending.settle("us01-co01", timeout=0.01) is False
    assert not slow.done()
    release.set()
    assert await pending.settle("us01-co01", timeout=5) is True
    await asyncio.sleep(0)  # done callbacks run on the next loop iteration
    assert len(pending) == 0 and pending.tasks() == []


async def test_the_switch_interval_is_set_while_the_store_is_open_and_restored(
    make_edge: MakeEdge,
) -> None:
    before = sys.getswitchinterval()
    client = await make_edge(gil_switch_interval_us=300)
    assert sys.getswitchinterval() == pytest.approx(0.0003)
    await client.close()
    assert sys.getswitchinterval() == before
