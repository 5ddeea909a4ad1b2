"""``AsyncStore``: the same names as ``Store``, each call one thread hop."""

from __future__ import annotations

import inspect

import pytest

from chunkstore import AsyncMessageWriter, AsyncStore, InvalidId, MessageWriter, Store


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
