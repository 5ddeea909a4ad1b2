"""Hostile ids are rejected with ``InvalidId`` before any file is touched.

Every ``Store`` method that takes an id is called with each hostile value while ``os.open``,
``os.listdir``, ``os.scandir``, ``os.stat``, ``os.lstat``, ``os.mkdir``, ``os.makedirs`` and
``builtins.open`` record any call: a rejection must come from parsing alone. A canary file next
to the store root also proves nothing outside the root was reached.
"""

from __future__ import annotations

import builtins
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from chunkstore import Conversation, ConversationNotFound, InvalidId, Store, UserNotFound
from chunkstore._ids import UserId

PATHLIKE = [
    "../",
    "..",
    "../us01",
    "..%2f",
    "%2e%2e",
    "%2e%2e%2fus01",
    "/etc/passwd",
    "/tmp/us01-co01",
    "C:\\Windows",
    "us01\\..\\us02",
    "us01-co01\x00",
    "\x00",
    "us01-co01/../../us02-co01",
    "us01/../us02-co01",
    "١",
    "us٠١",
    "us01-co٠١",
    "us" + "9" * 200,
    "us01-co" + "1" * 10_000,
    "",
    " ",
    "us1",
    "us001",
    "us00",
    "us01-co1",
    "us01-co00",
    "US01-CO01",
    "us01-co01\n",
    "us01-co01 ",
]
NON_STR: list[Any] = [None, 1, 1.5, b"us01", b"us01-co01", ["us01-co01"], {"id": "us01"}, UserId(1)]
# Valid ids of the wrong kind.
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

WATCHED_OS = ["open", "listdir", "scandir", "stat", "lstat", "mkdir", "makedirs", "rename"]


@contextmanager
def no_file_access() -> Iterator[list[str]]:
    """Record every file-system call made inside the block."""
    calls: list[str] = []
    saved = {name: getattr(os, name) for name in WATCHED_OS}
    saved_open = builtins.open

    def recorder(name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def record(*args: Any, **kwargs: Any) -> Any:
            calls.append(f"{name}{args[:1]}")
            return real(*args, **kwargs)

        return record

    for name, real in saved.items():
        setattr(os, name, recorder(f"os.{name}", real))
    builtins.open = recorder("open", saved_open)
    try:
        yield calls
    finally:
        for name, real in saved.items():
            setattr(os, name, real)
        builtins.open = saved_open


@pytest.fixture
def guarded(tmp_path: Path) -> Iterator[Store]:
    canary = tmp_path / "canary"
    canary.write_text("untouched")
    store = Store(tmp_path / "users", durability="none")
    conv = store.create_conversation(store.user_for("s"))
    store.append_message(conv.id, "user", "x")
    before = sorted(p.name for p in tmp_path.iterdir())
    yield store
    assert canary.read_text() == "untouched"
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert store.messages(conv.id)[0].content == "x"


def check_rejected(store: Store, call: Callable[[Store, Any], object], bad: Any) -> None:
    with no_file_access() as calls, pytest.raises(InvalidId):
        call(store, bad)
    assert calls == [], f"touched the file system before rejecting {bad!r}: {calls}"


@pytest.mark.parametrize("method", sorted(USER_CALLS))
def test_hostile_user_ids(guarded: Store, method: str) -> None:
    for bad in PATHLIKE + NON_STR + NOT_A_USER:
        check_rejected(guarded, USER_CALLS[method], bad)


@pytest.mark.parametrize("method", sorted(CONVERSATION_CALLS))
def test_hostile_conversation_ids(guarded: Store, method: str) -> None:
    for bad in PATHLIKE + NON_STR + NOT_A_CONVERSATION:
        if bad is None and method == "list_conversations(cursor)":
            continue  # cursor=None means "the first page"
        check_rejected(guarded, CONVERSATION_CALLS[method], bad)


def test_the_guard_itself_sees_file_access(guarded: Store) -> None:
    with no_file_access() as calls:
        guarded.get_conversation("us01-co01")
    assert calls


def test_a_valid_but_foreign_id_only_reads_its_own_path(store: Store, conv: Conversation) -> None:
    other = store.create_conversation(store.user_for("other"))
    with no_file_access() as calls:
        store.messages(other.id)
    assert all(conv.id not in c for c in calls)


# -- symlinks planted in the store ----------------------------------------------------------------


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory outside the store that looks like a conversation's messages."""
    target = tmp_path / "outside"
    target.mkdir()
    (target / "us01-co01-ms01.json").write_bytes(Path(__file__).read_bytes()[:100])
    (target / "conversation.json").write_text("secret")
    return target


def snapshot(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


def test_symlinked_messages_directory(store: Store, conv: Conversation, outside: Path) -> None:
    mdir = Path(store.root, "us01", "data", "conversations", conv.id, "messages")
    shutil.rmtree(mdir)
    mdir.symlink_to(outside, target_is_directory=True)
    before = snapshot(outside)
    for call in (
        lambda: store.messages(conv.id),
        lambda: store.message_count(conv.id),
        lambda: store.append_message(conv.id, "user", "x"),
        lambda: store.stream_message(conv.id),
        lambda: store.get_conversation(conv.id),
        lambda: store.delete_conversation(conv.id, hard=True),
    ):
        with pytest.raises(ConversationNotFound):
            call()
    assert snapshot(outside) == before


def test_symlinked_conversation_directory(
    store: Store, conv: Conversation, outside: Path
) -> None:
    other = store.create_conversation(conv.user_id)
    link = Path(store.root, "us01", "data", "conversations", other.id)
    shutil.rmtree(link)
    link.symlink_to(outside, target_is_directory=True)
    before = snapshot(outside)
    with pytest.raises(ConversationNotFound):
        store.get_conversation(other.id)
    with pytest.raises(ConversationNotFound):
        store.update_conversation(other.id, title="x")
    assert [c.id for c in store.list_conversations(conv.user_id)] == [conv.id]
    assert snapshot(outside) == before


def test_symlinked_user_directory(store: Store, user: str, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(Path(store.root, user), elsewhere)
    shutil.rmtree(Path(store.root, user))
    Path(store.root, user).symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(UserNotFound):
        store.create_conversation(user)
    with pytest.raises(UserNotFound):
        store.list_conversations(user)


def test_symlinked_message_file_is_not_followed(
    store: Store, conv: Conversation, tmp_path: Path
) -> None:
    store.append_message(conv.id, "user", "mine")
    secret = tmp_path / "secret.json"
    secret.write_text("top secret")
    mdir = Path(store.root, "us01", "data", "conversations", conv.id, "messages")
    (mdir / "us01-co01-ms02.json").symlink_to(secret)
    first, planted = Store(store.root, durability="none").messages(conv.id)
    assert first.content == "mine"
    assert planted.damaged
    assert "secret" not in repr(planted)
