"""``AsyncStore``: the same names as ``Store``, each call one job on the store's own pool."""

from __future__ import annotations

import contextvars
import inspect
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

import chunkstore._async
from chunkstore import (
    AsyncMessageWriter,
    AsyncStore,
    InvalidArgument,
    InvalidId,
    MessageWriter,
    Store,
)


def public_methods(cls: type) -> set[str]:
    return {n for n, v in vars(cls).items() if not n.startswith("_") and callable(v)}


def test_same_method_names_as_the_sync_store() -> None:
    assert public_methods(Store) <= public_methods(AsyncStore)
    for name in public_methods(Store) - {"stream_message"}:
        assert inspect.iscoroutinefunction(getattr(AsyncStore, name)), name


def test_writer_has_the_same_names_as_the_sync_writer() -> None:
    assert public_methods(MessageWriter) <= public_methods(AsyncMessageWriter) | {"result"}


async def test_a_whole_session(root: str) -> None:
    async with AsyncStore(root, durability="none", flush_interval=None) as store:
        assert await store.find_user("session-a") is None
        user = await store.user_for("session-a")
        assert await store.find_user("session-a") == user
        assert await store.users() == [user]
        conv = await store.create_conversation(user, title="Trip")
        assert (await store.get_conversation(conv.id)).title == "Trip"
        await store.append_message(conv.id, role="user", content="hi")
        async with store.stream_message(conv.id, role="assistant", chunk_tokens=2) as w:
            assert (w.message_id, w.seq) == ("us01-co01-ms02", 2)
            for token in ["Hel", "lo", " there", "!", "!"]:
                await w.append(token)
            assert w.writer.chunks_written == 2
        assert w.closed
        messages = await store.messages(conv.id)
        assert [(m.role, m.content, m.status) for m in messages] == [
            ("user", "hi", "complete"),
            ("assistant", "Hello there!!", "complete"),
        ]
        assert await store.message_count(conv.id) == 2
        page = await store.list_conversations(user, limit=10)
        assert [c.id for c in page] == [conv.id]
        updated = await store.update_conversation(conv.id, pinned=True)
        assert updated.pinned
        await store.delete_conversation(conv.id)
        assert (await store.list_conversations(user)).items == []
        assert not (await store.restore_conversation(conv.id)).deleted
        assert await store.sweep_retention(days=1) == []
        assert await store.check() == []
        assert await store.check(fix=True) == []
        await store.delete_conversation(conv.id, hard=True)
        assert (await store.list_conversations(user, include_deleted=True)).items == []


async def test_exception_in_async_with_finalizes_as_error(root: str) -> None:
    store = await AsyncStore.open(root, durability="none")
    conv = await store.create_conversation(await store.user_for("s"))
    with pytest.raises(RuntimeError, match="aborted"):
        async with store.stream_message(conv.id) as w:
            await w.append("partial")
            raise RuntimeError("aborted")
    (message,) = await store.messages(conv.id)
    assert (message.status, message.content) == ("error", "partial")
    await store.close()


async def test_explicit_writer_calls(root: str) -> None:
    store = AsyncStore(Store(root, durability="none", flush_interval=None))
    conv = await store.create_conversation(await store.user_for("s"))
    w = store.stream_message(conv.id, chunk_tokens=10)
    with pytest.raises(RuntimeError, match="async with"):
        _ = w.writer  # not opened yet
    assert await w.open() is w
    assert await w.open() is w  # opening twice is harmless
    assert not w.add("a")
    await w.flush()
    assert (await store.messages(conv.id))[0].status == "streaming"
    failed = await w.fail("upstream error", usage={"total_tokens": 1})
    assert (failed.status, failed.content) == ("error", "a")

    w = await store.stream_message(conv.id).open()
    await w.append("b")
    done = await w.finish(finish_reason="length", usage={"total_tokens": 1})
    assert done.finish_reason == "length"

    w = await store.stream_message(conv.id, chunk_tokens=1).open()
    await w.append("c")
    await w.abandon()
    assert [m.status for m in await store.messages(conv.id)] == [
        "error",
        "complete",
        "interrupted",
    ]


async def test_errors_come_through_unchanged(root: str) -> None:
    store = AsyncStore(root, durability="none")
    with pytest.raises(InvalidId):
        await store.messages("../etc")
    with pytest.raises(InvalidId):
        async with store.stream_message("us01-co01/../x"):
            pass


# -- the store's own thread pool ----------------------------------------------------------------

_WHO = contextvars.ContextVar("who", default="nobody")


async def test_calls_run_on_the_stores_own_pool_with_context(root: str) -> None:
    store = await AsyncStore.open(root, durability="none", max_workers=3)
    assert isinstance(store.executor, ThreadPoolExecutor)
    assert store.executor._max_workers == 3
    _WHO.set("caller")

    def where() -> tuple[str, str]:
        return threading.current_thread().name, _WHO.get()

    name, who = await store.run(where)
    assert name.startswith("chunkstore") and who == "caller"
    # Every call, the writer's included, is one job on that pool, not on the loop's default.
    submitted: list[object] = []
    real_submit = store.executor.submit

    def counting_submit(fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        submitted.append(fn)
        return real_submit(fn, *args, **kwargs)

    store.executor.submit = counting_submit  # type: ignore[method-assign]
    conv = await store.create_conversation(await store.user_for("s"))
    async with store.stream_message(conv.id, chunk_tokens=2) as w:
        await w.append("a")
        await w.append("b")  # a chunk: one job
    assert len(submitted) == 2 + 3  # user_for, create; open, flush, finish
    await store.close()
    with pytest.raises(RuntimeError, match="shutdown"):
        await store.run(where)


async def test_a_given_executor_is_used_and_left_open(root: str) -> None:
    with ThreadPoolExecutor(1, thread_name_prefix="mine") as pool:
        async with AsyncStore(root, durability="none", executor=pool) as store:
            assert store.executor is pool
            assert (await store.run(threading.current_thread)).name.startswith("mine")
        assert pool.submit(lambda: 1).result() == 1  # close() did not shut it down
        opened = await AsyncStore.open(root, executor=pool)
        assert opened.executor is pool
        await opened.close()
        assert pool.submit(lambda: 2).result() == 2


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "4"])
def test_max_workers_is_validated(root: str, bad: Any) -> None:
    with pytest.raises(InvalidArgument, match="max_workers"):
        AsyncStore(root, max_workers=bad)


async def test_open_failure_shuts_down_its_pool(root: str, monkeypatch: pytest.MonkeyPatch) -> None:
    pools: list[ThreadPoolExecutor] = []
    real = chunkstore._async._new_executor

    def tracking(max_workers: int) -> ThreadPoolExecutor:
        pools.append(real(max_workers))
        return pools[-1]

    monkeypatch.setattr(chunkstore._async, "_new_executor", tracking)
    with pytest.raises(InvalidArgument):
        await AsyncStore.open(root, durability="sometimes")
    with pytest.raises(RuntimeError, match="shutdown"):
        pools[0].submit(lambda: None)
