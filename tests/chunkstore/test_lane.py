"""``WriteLane``: jobs run whole on its threads, results come back in batches, and an
``AsyncStore`` with ``stream_workers`` runs its writers' chunk writes and seals there, apart
from its other calls."""

from __future__ import annotations

import asyncio
import contextvars
import threading
from pathlib import Path
from typing import Any

import pytest

from chunkstore import AsyncStore, InvalidArgument
from chunkstore._lane import WriteLane

_WHO = contextvars.ContextVar("who", default="nobody")


async def test_a_job_runs_on_a_lane_thread_in_the_callers_context() -> None:
    lane = WriteLane(2, name="mylane")
    _WHO.set("caller")

    def where(suffix: str) -> tuple[str, str]:
        return threading.current_thread().name, _WHO.get() + suffix

    try:
        name, who = await lane.run(where, "!")
        assert name.startswith("mylane") and who == "caller!"
        assert await lane.run(lambda a, *, b: a + b, 1, b=2) == 3
        assert lane.max_workers == 2
    finally:
        lane.shutdown()


async def test_an_exception_is_the_awaiters() -> None:
    lane = WriteLane(1)

    def boom() -> None:
        raise OSError(5, "disk on fire")

    def stop() -> None:
        raise StopIteration

    try:
        with pytest.raises(OSError, match="disk on fire"):
            await lane.run(boom)
        with pytest.raises(RuntimeError, match="StopIteration"):
            await lane.run(stop)
        assert await lane.run(lambda: "still working") == "still working"
    finally:
        lane.shutdown()


async def test_queued_jobs_come_back_in_one_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    lane = WriteLane(1, max_batch=64)
    gate = threading.Event()
    loop = asyncio.get_running_loop()
    handoffs: list[object] = []
    real = loop.call_soon_threadsafe

    def counting(callback: Any, *args: Any, **kw: Any) -> Any:
        handoffs.append(callback)
        return real(callback, *args, **kw)

    monkeypatch.setattr(loop, "call_soon_threadsafe", counting)
    try:
        blocker = lane.submit(gate.wait)  # the one worker is busy: the next jobs queue up
        await asyncio.sleep(0.05)
        futures = [lane.submit(lambda i=i: i * i) for i in range(20)]
        gate.set()
        assert await blocker is True
        assert await asyncio.gather(*futures) == [i * i for i in range(20)]
        # The blocker's batch, then the 20 queued jobs taken and handed back at once.
        assert len(handoffs) == 2
    finally:
        gate.set()
        lane.shutdown()


async def test_max_batch_bounds_a_batch_and_more_workers_start_on_demand() -> None:
    lane = WriteLane(3, max_batch=2)
    gate = threading.Event()
    seen: set[str] = set()

    def job() -> None:
        seen.add(threading.current_thread().name)
        gate.wait()

    try:
        futures = [lane.submit(job) for _ in range(6)]
        await asyncio.sleep(0.05)
        assert len(lane._threads) == 3  # never more than max_workers
        gate.set()
        await asyncio.gather(*futures)
        assert len(seen) >= 2
    finally:
        gate.set()
        lane.shutdown()


async def test_beyond_the_eager_workers_a_thread_starts_only_for_jobs_that_waited() -> None:
    lane = WriteLane(4, max_batch=1, eager_workers=1, grow_after=0.5)
    gate = threading.Event()
    try:
        futures = [lane.submit(gate.wait)]  # the eager worker takes it and blocks
        await asyncio.sleep(0.05)
        futures += [lane.submit(gate.wait) for _ in range(2)]
        assert len(lane._threads) == 1  # the jobs have not waited long: no new thread
        await asyncio.sleep(0.6)  # a stalled disk: the oldest job has waited past grow_after
        futures.append(lane.submit(gate.wait))
        assert len(lane._threads) == 2
        gate.set()
        assert await asyncio.gather(*futures) == [True] * 4
    finally:
        gate.set()
        lane.shutdown()


async def test_a_cancelled_job_is_skipped() -> None:
    lane = WriteLane(1)
    gate = threading.Event()
    ran: list[int] = []
    try:
        blocker = lane.submit(gate.wait)
        cancelled = lane.submit(ran.append, 1)
        kept = lane.submit(ran.append, 2)
        cancelled.cancel()
        gate.set()
        await blocker
        await kept
        assert ran == [2]
    finally:
        gate.set()
        lane.shutdown()


async def test_shutdown_finishes_queued_jobs_and_refuses_new_ones() -> None:
    lane = WriteLane(1)
    done: list[int] = []
    futures = [lane.submit(done.append, i) for i in range(5)]
    await asyncio.to_thread(lane.shutdown, True)
    await asyncio.gather(*futures)
    assert done == [0, 1, 2, 3, 4]
    with pytest.raises(RuntimeError, match="shutdown"):
        lane.submit(done.append, 5)


def test_a_result_for_a_closed_loop_is_dropped() -> None:
    lane = WriteLane(1)
    gate = threading.Event()

    async def submit() -> asyncio.Future[bool]:
        return lane.submit(gate.wait)

    async def later() -> int:
        return await lane.run(lambda: 7)

    try:
        asyncio.run(submit())  # the loop closes with the job still queued
        gate.set()  # the job ends, its loop is gone: nothing raises in the worker
        assert asyncio.run(later()) == 7
    finally:
        gate.set()
        lane.shutdown()


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "4"])
def test_sizes_are_validated(bad: Any) -> None:
    with pytest.raises(InvalidArgument, match="max_workers"):
        WriteLane(bad)
    with pytest.raises(InvalidArgument, match="max_batch"):
        WriteLane(1, max_batch=bad)
    with pytest.raises(InvalidArgument, match="eager_workers"):
        WriteLane(1, eager_workers=bad)


@pytest.mark.parametrize("bad", [-1, float("nan"), True, "0.1", None])
def test_grow_after_is_validated(bad: Any) -> None:
    with pytest.raises(InvalidArgument, match="grow_after"):
        WriteLane(1, grow_after=bad)


async def test_stream_writes_run_on_the_lane_and_the_rest_on_the_pool(tmp_path: Path) -> None:
    store = await AsyncStore.open(tmp_path / "users", durability="chunk", stream_workers=2)
    threads: list[str] = []
    real_flush: Any = None

    conv = await store.create_conversation(await store.user_for("s"))
    writer = await store.stream_message(conv.id, chunk_tokens=2, flush_interval=None).open()
    real_flush = writer.writer.flush

    def flush() -> None:
        threads.append(threading.current_thread().name)
        real_flush()

    writer.writer.flush = flush  # type: ignore[method-assign]
    await writer.append("a")
    await writer.append("b")  # a chunk: on the lane
    message = await writer.finish("stop")
    assert message.content == "ab"
    assert threads and all(name.startswith("chunkstore-lane") for name in threads)
    assert (await store.run(threading.current_thread)).name.startswith("chunkstore_")
    assert [m.content for m in await store.messages(conv.id)] == ["ab"]
    await store.close()
    assert store._lane is not None
    with pytest.raises(RuntimeError, match="shutdown"):  # close() shut the lane down
        store._lane.submit(threading.current_thread)


def test_stream_workers_are_validated(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="max_workers"):
        AsyncStore(tmp_path / "users", stream_workers=0)
    with pytest.raises(InvalidArgument, match="max_workers"):
        asyncio.run(AsyncStore.open(tmp_path / "users", stream_workers=-1))
