"""``AsyncStore``: the same names and parameters as ``Store``, and the same results, on every
backend."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import pytest
from conformance_support import open_store, summary

from chunkstore import (
    AsyncMessageWriter,
    AsyncStore,
    ConversationDeleted,
    ConversationNotFound,
    LimitExceeded,
    MessageWriter,
    Store,
)

OPTIONS = {"durability": "none", "flush_interval": None, "chunk_tokens": 2}


def public_methods(cls: type) -> dict[str, Any]:
    return {
        name: member
        for name, member in inspect.getmembers(cls)
        if not name.startswith("_") and inspect.isfunction(member)
    }


def default(param: inspect.Parameter) -> Any:
    """A parameter's default; a private "not given" sentinel (each module has its own) shows
    as its type's name."""
    value = param.default
    if value is inspect.Parameter.empty or isinstance(value, (type(None), bool, int, float, str)):
        return value
    return f"<{type(value).__name__}>"


def parameters(func: Any) -> list[tuple[str, Any, Any]]:
    return [
        (p.name, p.kind, default(p))
        for p in inspect.signature(func).parameters.values()
        if p.name != "self"
    ]


def test_every_store_method_is_on_the_async_store() -> None:
    sync, facade = public_methods(Store), public_methods(AsyncStore)
    assert set(sync) <= set(facade)
    for name in set(sync) - {"stream_message"}:
        assert inspect.iscoroutinefunction(facade[name]), name
    assert not inspect.iscoroutinefunction(facade["stream_message"])  # used as ``async with``


@pytest.mark.parametrize("name", sorted(public_methods(Store)))
def test_async_store_has_the_same_parameters(name: str) -> None:
    assert parameters(getattr(AsyncStore, name)) == parameters(getattr(Store, name))


def test_writer_has_the_same_methods() -> None:
    sync, facade = public_methods(MessageWriter), public_methods(AsyncMessageWriter)
    assert set(sync) <= set(facade)
    for name in ("append", "flush", "finish", "fail", "abandon"):
        assert inspect.iscoroutinefunction(facade[name]), name
        assert [p[0] for p in parameters(facade[name])] == [p[0] for p in parameters(sync[name])]


# -- the same session, through both ---------------------------------------------------------------


def conversation_summary(c: Any) -> tuple[Any, ...]:
    return (c.id, c.user_id, c.title, c.pinned, c.metadata, c.participants, c.deleted)


def sync_session(url: str) -> list[Any]:
    out: list[Any] = []
    store = Store(url, **OPTIONS)
    out.append(store.find_user("a"))
    user = store.user_for("a")
    out.append([user, store.user_for("b"), store.find_user("a"), store.users()])
    conv = store.create_conversation(user, "Trip", metadata={"k": "v"})
    second = store.create_conversation(user, title="Other", pinned=True)
    out.append(conversation_summary(conv))
    out.append(conversation_summary(store.get_conversation(conv.id)))
    out.append(summary(store.append_message(conv.id, "user", "hi", name="me")))
    with store.stream_message(conv.id, "assistant", "agent-1", chunk_tokens=3) as w:
        for token in ["Hel", "lo", " ", "the", "re"]:
            w.append(token)
        out.append(w.chunks_written)
    out.append((w.message_id, w.seq))
    failed = store.stream_message(conv.id)
    failed.append("part")
    out.append(summary(failed.fail("boom")))
    abandoned = store.stream_message(conv.id)
    abandoned.append("cut")
    abandoned.abandon()
    out.append([summary(m) for m in store.messages(conv.id, after_seq=1, limit=2)])
    out.append([summary(m) for m in store.messages(conv.id, limit=None)])
    out.append(store.message_count(conv.id))
    page = store.list_conversations(user, limit=1)
    out.append(([c.id for c in page], page.next_cursor is not None))
    out.append([c.id for c in store.list_conversations(user, cursor=page.next_cursor)])
    out.append(conversation_summary(store.update_conversation(conv.id, title="New", pinned=True)))
    store.delete_conversation(second.id)
    try:
        store.append_message(second.id, "user", "x")
    except ConversationDeleted as exc:
        out.append(type(exc).__name__)
    out.append([c.id for c in store.list_conversations(user, include_deleted=True)])
    out.append(conversation_summary(store.restore_conversation(second.id)))
    out.append(store.sweep_retention(days=30, dry_run=True))
    store.delete_conversation(second.id, hard=True)
    try:
        store.get_conversation(second.id)
    except ConversationNotFound as exc:
        out.append(type(exc).__name__)
    out.append(store.check())
    out.append(store.check(fix=True))
    store.close()
    limited = Store(url, max_messages_per_conversation=4, **OPTIONS)
    try:
        limited.append_message(conv.id, "user", "over")
    except LimitExceeded as exc:
        out.append(type(exc).__name__)
    limited.close()
    return out


async def async_session(url: str) -> list[Any]:
    out: list[Any] = []
    store = await AsyncStore.open(url, **OPTIONS)
    out.append(await store.find_user("a"))
    user = await store.user_for("a")
    out.append([user, await store.user_for("b"), await store.find_user("a"), await store.users()])
    conv = await store.create_conversation(user, "Trip", metadata={"k": "v"})
    second = await store.create_conversation(user, title="Other", pinned=True)
    out.append(conversation_summary(conv))
    out.append(conversation_summary(await store.get_conversation(conv.id)))
    out.append(summary(await store.append_message(conv.id, "user", "hi", name="me")))
    async with store.stream_message(conv.id, "assistant", "agent-1", chunk_tokens=3) as w:
        for token in ["Hel", "lo", " ", "the", "re"]:
            await w.append(token)
        out.append(w.writer.chunks_written)
    out.append((w.message_id, w.seq))
    failed = await store.stream_message(conv.id).open()
    await failed.append("part")
    out.append(summary(await failed.fail("boom")))
    abandoned = await store.stream_message(conv.id).open()
    await abandoned.append("cut")
    await abandoned.abandon()
    out.append([summary(m) for m in await store.messages(conv.id, after_seq=1, limit=2)])
    out.append([summary(m) for m in await store.messages(conv.id, limit=None)])
    out.append(await store.message_count(conv.id))
    page = await store.list_conversations(user, limit=1)
    out.append(([c.id for c in page], page.next_cursor is not None))
    out.append([c.id for c in await store.list_conversations(user, cursor=page.next_cursor)])
    updated = await store.update_conversation(conv.id, title="New", pinned=True)
    out.append(conversation_summary(updated))
    await store.delete_conversation(second.id)
    try:
        await store.append_message(second.id, "user", "x")
    except ConversationDeleted as exc:
        out.append(type(exc).__name__)
    out.append([c.id for c in await store.list_conversations(user, include_deleted=True)])
    out.append(conversation_summary(await store.restore_conversation(second.id)))
    out.append(await store.sweep_retention(days=30, dry_run=True))
    await store.delete_conversation(second.id, hard=True)
    try:
        await store.get_conversation(second.id)
    except ConversationNotFound as exc:
        out.append(type(exc).__name__)
    out.append(await store.check())
    out.append(await store.check(fix=True))
    await store.close()
    async with AsyncStore(url, max_messages_per_conversation=4, **OPTIONS) as limited:
        try:
            await limited.append_message(conv.id, "user", "over")
        except LimitExceeded as exc:
            out.append(type(exc).__name__)
    return out


async def test_async_gives_the_same_results_as_sync(make_url: Callable[[], str]) -> None:
    sync_url, async_url = make_url(), make_url()
    expected = sync_session(sync_url)
    assert expected[-1] == "LimitExceeded"  # the session ran to its end
    assert await async_session(async_url) == expected
    # ... and what each left behind reads the same through the other facade.
    with open_store(async_url) as sync_view:
        async with await AsyncStore.open(sync_url, **OPTIONS) as async_view:
            user = sync_view.users()[0]
            conv = sync_view.list_conversations(user).items[0]
            assert [summary(m) for m in sync_view.messages(conv.id, limit=None)] == [
                summary(m) for m in await async_view.messages(conv.id, limit=None)
            ]


async def test_exception_in_async_with_is_an_error(store_url: str) -> None:
    async with AsyncStore(store_url, **OPTIONS) as store:
        conv = await store.create_conversation(await store.user_for("s"))
        with pytest.raises(RuntimeError, match="aborted"):
            async with store.stream_message(conv.id) as w:
                await w.append("partial")
                await w.append(" reply")
                await w.append(" cut")
                raise RuntimeError("aborted")
        (message,) = await store.messages(conv.id)
        assert (message.status, message.content) == ("error", "partial reply cut")


async def test_async_live_writer_reads_streaming(store_url: str) -> None:
    async with AsyncStore(store_url, **OPTIONS) as store:
        conv = await store.create_conversation(await store.user_for("s"))
        w = await store.stream_message(conv.id, chunk_tokens=2).open()
        for token in "abcde":
            await w.append(token)
        with open_store(store_url) as other:
            (live,) = other.messages(conv.id)
            assert (live.status, live.content) == ("streaming", "abcd")
        await w.finish(usage={"total_tokens": 5})
        (done,) = await store.messages(conv.id)
        assert (done.status, done.content, done.usage) == ("complete", "abcde", {"total_tokens": 5})
