"""``Store.delete_message``: a deletion is additive in format v1 (a ``<messageId>.deleted``
tombstone); the message stops reading back everywhere, its seq is never reused."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from chunkstore import (
    AsyncStore,
    Conversation,
    ConversationDeleted,
    InvalidArgument,
    InvalidId,
    Store,
)
from chunkstore._ids import ConversationId, scan_message_files
from chunkstore._records import decode


def messages_dir(root: str, conv_id: str) -> Path:
    return Path(root) / conv_id.split("-")[0] / "data" / "conversations" / conv_id / "messages"


def fill(store: Store, conv: Conversation, n: int) -> None:
    for i in range(n):
        store.append_message(conv.id, "user" if i % 2 == 0 else "assistant", f"m{i + 1}")


def test_a_deleted_message_no_longer_reads_back(
    store: Store, conv: Conversation, root: str
) -> None:
    fill(store, conv, 4)
    assert store.delete_message(conv.id, f"{conv.id}-ms02") is True
    assert [m.seq for m in store.messages(conv.id)] == [1, 3, 4]
    assert store.message_count(conv.id) == 3
    # Paging by seq still works around the hole.
    assert [m.seq for m in store.messages(conv.id, after_seq=1, limit=1)] == [3]
    # Additive: the message's sealed file stays, a tombstone record joins it.
    mdir = messages_dir(root, conv.id)
    assert (mdir / f"{conv.id}-ms02.json").exists()
    tombstone = decode((mdir / f"{conv.id}-ms02.deleted").read_bytes())
    assert tombstone["messageId"] == f"{conv.id}-ms02" and tombstone["deleted"] is True
    assert isinstance(tombstone["deletedAt"], str)
    assert store.check() == []


def test_every_reader_sees_the_deletion(store: Store, conv: Conversation, root: str) -> None:
    fill(store, conv, 3)
    with Store(root, durability="none") as other:
        assert len(other.messages(conv.id)) == 3  # warm its cache first
        store.delete_message(conv.id, f"{conv.id}-ms03")
        assert [m.seq for m in other.messages(conv.id)] == [1, 2]
    with Store(root, durability="none") as cold:
        assert [m.seq for m in cold.messages(conv.id)] == [1, 2]
        assert cold.message_count(conv.id) == 2


def test_the_seq_of_a_deleted_message_is_never_reused(
    store: Store, conv: Conversation, root: str
) -> None:
    fill(store, conv, 3)
    store.delete_message(conv.id, f"{conv.id}-ms03")
    assert store.append_message(conv.id, "user", "next").seq == 4
    with Store(root, durability="none") as fresh:  # no seq hint: scans the directory
        assert fresh.append_message(conv.id, "user", "later").seq == 5
        with fresh.stream_message(conv.id) as writer:
            writer.append("x")
        assert writer.seq == 6
    assert [m.seq for m in store.messages(conv.id)] == [1, 2, 4, 5, 6]


def test_deleting_twice_or_a_missing_message_is_false(store: Store, conv: Conversation) -> None:
    fill(store, conv, 2)
    assert store.delete_message(conv.id, f"{conv.id}-ms01") is True
    assert store.delete_message(conv.id, f"{conv.id}-ms01") is False
    assert store.delete_message(conv.id, f"{conv.id}-ms09") is False
    assert [m.seq for m in store.messages(conv.id)] == [2]


def test_bad_ids_and_messages_of_other_conversations(
    store: Store, conv: Conversation, user: str
) -> None:
    fill(store, conv, 1)
    other = store.create_conversation(user)
    store.append_message(other.id, "user", "mine")
    with pytest.raises(InvalidArgument):
        store.delete_message(conv.id, f"{other.id}-ms01")
    with pytest.raises(InvalidId):
        store.delete_message(conv.id, "us01-co01-ms1")
    with pytest.raises(InvalidId):
        store.delete_message("../x", f"{conv.id}-ms01")
    with pytest.raises(KeyError):
        store.delete_message("us01-co99", "us01-co99-ms01")
    assert store.message_count(conv.id) == store.message_count(other.id) == 1


def test_a_streaming_message_cannot_be_deleted_until_it_ends(
    store: Store, conv: Conversation
) -> None:
    writer = store.stream_message(conv.id)
    writer.append("partial")
    writer.flush()
    with pytest.raises(InvalidArgument, match="streaming"):
        store.delete_message(conv.id, writer.message_id)
    writer.finish()
    assert store.delete_message(conv.id, writer.message_id) is True
    assert store.messages(conv.id) == []


def test_an_interrupted_message_can_be_deleted(store: Store, conv: Conversation) -> None:
    writer = store.stream_message(conv.id)
    writer.append("cut")
    writer.abandon()
    assert store.messages(conv.id)[0].status == "interrupted"
    assert store.delete_message(conv.id, writer.message_id) is True
    assert store.messages(conv.id) == []
    assert store.check() == []


def test_a_soft_deleted_conversation_refuses_deletes(store: Store, conv: Conversation) -> None:
    fill(store, conv, 1)
    store.delete_conversation(conv.id)
    with pytest.raises(ConversationDeleted):
        store.delete_message(conv.id, f"{conv.id}-ms01")
    store.restore_conversation(conv.id)
    assert store.delete_message(conv.id, f"{conv.id}-ms01") is True


def test_a_deleted_message_is_not_replayed_by_a_turn(store: Store, conv: Conversation) -> None:
    store.append_message(conv.id, "user", "secret")
    store.append_message(conv.id, "assistant", "noted")
    store.delete_message(conv.id, f"{conv.id}-ms01")
    turn = store.append_turn(conv.id, [{"role": "user", "content": "next"}])
    assert turn.history == [{"role": "assistant", "content": "noted"}]
    assert [m.seq for m in turn.stored] == [3]


def test_tombstones_are_names_old_readers_skip(conv: Conversation) -> None:
    """A reader of format v1 from before tombstones lists messages with
    ``scan_message_files``: it skips ``.deleted`` names (and so keeps working, showing the
    message as if it were not deleted)."""
    conv_id = ConversationId.parse(conv.id)
    names = [f"{conv.id}-ms01.json", f"{conv.id}-ms01.deleted", f"{conv.id}-ms02-001.json"]
    assert scan_message_files(names, conv_id) == [(1, 0, False), (2, 1, False)]


def test_check_reports_broken_and_orphan_tombstones(
    store: Store, conv: Conversation, root: str
) -> None:
    fill(store, conv, 2)
    store.delete_message(conv.id, f"{conv.id}-ms01")
    mdir = messages_dir(root, conv.id)
    tombstone = mdir / f"{conv.id}-ms01.deleted"
    tombstone.write_bytes(tombstone.read_bytes()[:-5])  # torn
    (mdir / f"{conv.id}-ms07.deleted").write_bytes((mdir / f"{conv.id}-ms01.json").read_bytes())
    problems = {(Path(p.path).name, p.kind) for p in store.check(fix=True)}
    assert problems == {
        (f"{conv.id}-ms01.deleted", "corrupt"),
        (f"{conv.id}-ms07.deleted", "orphan"),
        (f"{conv.id}-ms07.deleted", "mismatch"),
    }
    # Nothing is "fixed" away: the presence of a tombstone is the deletion.
    assert tombstone.exists() and (mdir / f"{conv.id}-ms07.deleted").exists()
    assert [m.seq for m in store.messages(conv.id)] == [2]
    # A stray tombstone's seq is never handed out (the message would be born deleted).
    store.append_message(conv.id, "user", "3")
    for _ in range(4):
        store.append_message(conv.id, "user", "more")
    assert [m.seq for m in store.messages(conv.id)][-1] == 8


async def test_the_async_store_deletes_too(root: str) -> None:
    async with AsyncStore(root, durability="none") as astore:
        user = await astore.user_for("s")
        conv = await astore.create_conversation(user)
        message = await astore.append_message(conv.id, "user", "q")
        assert await astore.delete_message(conv.id, message.id) is True
        assert await astore.messages(conv.id) == []


def test_a_deletion_in_another_process_is_seen(store: Store, conv: Conversation, root: str) -> None:
    fill(store, conv, 2)
    assert len(store.messages(conv.id)) == 2
    code = (
        "import sys; from chunkstore import Store; "
        "s = Store(sys.argv[1], durability='none'); "
        "print(s.delete_message(sys.argv[2], sys.argv[2] + '-ms01'))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, root, conv.id], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "True"
    assert [m.seq for m in store.messages(conv.id)] == [2]
    assert os.path.exists(messages_dir(root, conv.id) / f"{conv.id}-ms01.json")
