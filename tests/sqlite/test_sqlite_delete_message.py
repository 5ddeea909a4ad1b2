"""``Store.delete_message`` on SQLite: migration 2 marks the row; readers skip it; seqs stay."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from chunkstore import ConversationDeleted, InvalidArgument, Store


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(f"sqlite:{tmp_path / 'chat.db'}", durability="none")


def test_a_deleted_message_is_skipped_and_its_seq_stays_claimed(store: Store) -> None:
    conv = store.create_conversation(store.user_for("s"))
    first = store.append_message(conv.id, "user", "one")
    second = store.append_message(conv.id, "assistant", "two")
    assert store.delete_message(conv.id, first.id) is True
    assert store.delete_message(conv.id, first.id) is False  # already deleted
    assert store.delete_message(conv.id, f"{conv.id}-ms09") is False  # never existed
    assert [m.id for m in store.messages(conv.id)] == [second.id]
    assert store.message_count(conv.id) == 1
    third = store.append_message(conv.id, "user", "three")
    assert third.seq == 3  # not reused
    assert store.check() == []


def test_a_streaming_message_cannot_be_deleted_an_interrupted_one_can(store: Store) -> None:
    conv = store.create_conversation(store.user_for("s"))
    writer = store.stream_message(conv.id)
    writer.append("partial")
    writer.flush()
    with pytest.raises(InvalidArgument, match="still streaming"):
        store.delete_message(conv.id, writer.message_id)
    writer.abandon()  # now interrupted: final
    assert store.delete_message(conv.id, writer.message_id) is True
    assert store.messages(conv.id) == []


def test_a_soft_deleted_conversation_refuses(store: Store) -> None:
    conv = store.create_conversation(store.user_for("s"))
    message = store.append_message(conv.id, "user", "x")
    store.delete_conversation(conv.id)
    with pytest.raises(ConversationDeleted):
        store.delete_message(conv.id, message.id)


def test_a_version_1_database_is_migrated(tmp_path: Path) -> None:
    from chunkstore._migrations import migrate
    from chunkstore._sqlite import MIGRATIONS

    path = tmp_path / "v1.db"
    conn = sqlite3.connect(path, isolation_level=None)
    migrate(conn, MIGRATIONS[:1], what="v1")
    conn.close()
    store = Store(f"sqlite:{path}", durability="none")
    conv = store.create_conversation(store.user_for("s"))
    message = store.append_message(conv.id, "user", "x")
    assert store.delete_message(conv.id, message.id) is True
    assert store.messages(conv.id) == []
