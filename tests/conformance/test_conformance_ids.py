"""Hostile ids are rejected with ``InvalidId`` (a ``ValueError``) by every method that takes
one, on every backend, and leave the store as it was."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from chunkstore import AsyncStore, ChunkstoreError, InvalidId, Store

HOSTILE = [
    "../",
    "..",
    "../us01",
    "us01-co01/../x",
    "us01-co01/../../us02-co01",
    "us01/../us02-co01",
    "us01-co01\x00",
    "\x00",
    "us01\x00-co01",
    "/etc/passwd",
    "/tmp/us01-co01",
    "C:\\Windows",
    "us01\\..\\us02",
    "%2e%2e%2fus01",
    "us" + "9" * 200,
    "us01-co" + "1" * 10_000,
    "x" * 100_000,
    "",
    " ",
    "us1",
    "us1-co1",
    "us01-co1",
    "us001-co01",
    "us00",
    "us01-co00",
    "US01-CO01",
    "us01-co01\n",
    " us01-co01",
    "us01-co01 ",
    "us٠١-co٠١",
    "us01-co01'; DROP TABLE conversations; --",
    "us01-co01%",
    "us01-co01*",
]
NON_STR: list[Any] = [None, 1, 1.5, b"us01", b"us01-co01", ["us01-co01"], {"id": "us01"}]
NOT_A_USER = ["us01-co01", "us01-co01-ms01"]
NOT_A_CONVERSATION = ["us01", "us01-co01-ms01", "us01-co01-ms01-001"]

USER_CALLS: dict[str, Callable[[Store, Any], object]] = {
    "create_conversation": lambda s, bad: s.create_conversation(bad),
    "list_conversations": lambda s, bad: s.list_conversations(bad),
}
CONVERSATION_CALLS: dict[str, Callable[[Store, Any], object]] = {
    "get_conversation": lambda s, bad: s.get_conversation(bad),
    "update_conversation": lambda s, bad: s.update_conversation(bad, title="x"),
    "delete_conversation": lambda s, bad: s.delete_conversation(bad),
    "delete_conversation(hard)": lambda s, bad: s.delete_conversation(bad, hard=True),
    "restore_conversation": lambda s, bad: s.restore_conversation(bad),
    "append_message": lambda s, bad: s.append_message(bad, "user", "x"),
    "stream_message": lambda s, bad: s.stream_message(bad),
    "messages": lambda s, bad: s.messages(bad),
    "message_count": lambda s, bad: s.message_count(bad),
    "list_conversations(cursor)": lambda s, bad: s.list_conversations("us01", cursor=bad),
}


def state(store: Store) -> tuple[object, ...]:
    """Everything a caller can see of the store (it must not change)."""
    users = store.users()
    conversations = [
        c for u in users for c in store.list_conversations(u, limit=1000, include_deleted=True)
    ]
    messages = [
        [(m.seq, m.content, m.status) for m in store.messages(c.id, limit=None)]
        for c in conversations
    ]
    return users, conversations, messages


@pytest.fixture
def guarded(store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A store with one conversation; the working directory (where a hostile id taken for a
    relative path would land) must stay empty, and the store unchanged."""
    user = store.user_for("s")
    conv = store.create_conversation(user, title="mine")
    store.append_message(conv.id, "user", "x")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    before = state(store)
    yield store
    assert list(cwd.iterdir()) == []
    assert state(store) == before


def check_rejected(store: Store, call: Callable[[Store, Any], object], bad: Any) -> None:
    with pytest.raises(InvalidId) as info:
        call(store, bad)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, ChunkstoreError)


@pytest.mark.parametrize("method", sorted(USER_CALLS))
def test_hostile_user_ids(guarded: Store, method: str) -> None:
    for bad in HOSTILE + NON_STR + NOT_A_USER:
        check_rejected(guarded, USER_CALLS[method], bad)


@pytest.mark.parametrize("method", sorted(CONVERSATION_CALLS))
def test_hostile_conversation_ids(guarded: Store, method: str) -> None:
    for bad in HOSTILE + NON_STR + NOT_A_CONVERSATION:
        if bad is None and method == "list_conversations(cursor)":
            continue  # cursor=None means "the first page"
        check_rejected(guarded, CONVERSATION_CALLS[method], bad)


async def test_hostile_ids_through_the_async_facade(guarded: Store) -> None:
    astore = AsyncStore(guarded, max_workers=2)  # not closed: that would close ``guarded``
    try:
        for bad in ["../", "us01-co01/../x", "\x00", "/etc/passwd", "us1-co1", None]:
            for call in (
                astore.get_conversation,
                astore.messages,
                astore.message_count,
                astore.restore_conversation,
                astore.create_conversation,
                astore.list_conversations,
            ):
                with pytest.raises(InvalidId):
                    await call(bad)
            with pytest.raises(InvalidId):
                await astore.append_message(bad, "user", "x")
            with pytest.raises(InvalidId):
                await astore.delete_conversation(bad, hard=True)
            with pytest.raises(InvalidId):
                async with astore.stream_message(bad):
                    pass
    finally:
        astore.executor.shutdown(wait=True)
