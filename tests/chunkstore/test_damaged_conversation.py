"""A damaged ``conversation.json``: detected, and the rest of the user's data stays readable.

SPEC: "Truncated or bit-flipped files: detected, the rest of the conversation — and the rest
of the user's conversation list — still readable." The damaged conversation is listed and
returned flagged ``damaged`` (id and user from its directory, no title, times from what the
files still tell), its messages stay readable, writes work on that rebuilt record, and
``check`` names it with the next step; ``check --fix`` writes a minimal valid record back.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from chunkstore_support import conversation_dir, flip_bit, truncate

from chunkstore import Conversation, Store
from chunkstore._records import decode, encode_line
from chunkstore.cli import main

HANG_S = 10.0


def fresh(root: str) -> Store:
    return Store(root, durability="none", flush_interval=None)


@pytest.fixture
def five(store: Store, user: str) -> list[Conversation]:
    """us01-co01..co05, each with a title, metadata and two messages."""
    out = []
    for i in range(1, 6):
        conv = store.create_conversation(user, title=f"t{i}", metadata={"k": str(i)})
        store.append_message(conv.id, "user", f"q{i}")
        with store.stream_message(conv.id, chunk_tokens=2) as w:
            for token in f"a{i}!":
                w.append(token)
        out.append(store.get_conversation(conv.id))
    return out


def meta_path(root: str, conversation_id: str) -> Path:
    return conversation_dir(root, conversation_id) / "conversation.json"


def parse(timestamp: str) -> datetime:
    return datetime.fromisoformat(timestamp.replace("Z", "+00:00"))


DAMAGE: dict[str, Callable[[Path], None]] = {
    "bit-flip": lambda p: flip_bit(p, 30),
    "truncated": lambda p: truncate(p, 40),
    "empty": lambda p: p.write_bytes(b""),
    "not-a-record": lambda p: p.write_bytes(encode_line({"v": 1})),  # valid CRC, no fields
    "wrong-types": lambda p: p.write_bytes(
        encode_line({**decode(p.read_bytes()), "createdAt": 5, "metadata": ["x"]})
    ),
    "another-conversation": lambda p: p.write_bytes(
        encode_line({**decode(p.read_bytes()), "id": "us01-co09"})
    ),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_the_list_and_the_rest_stay_readable(
    store: Store, five: list[Conversation], root: str, damage: str
) -> None:
    victim = five[1]  # us01-co02
    DAMAGE[damage](meta_path(root, victim.id))
    for reader in (store, fresh(root)):
        listed = reader.list_conversations(victim.user_id).items
        assert [c.id for c in listed] == [c.id for c in reversed(five)]
        for c in listed:
            assert c.damaged == (c.id == victim.id)
        flagged = listed[-2]
        assert (flagged.id, flagged.user_id, flagged.title) == (victim.id, victim.user_id, None)
        assert (flagged.pinned, flagged.metadata, flagged.deleted_at) == (False, {}, None)
        # Its created_at is its first message's (the files still tell it), never later.
        first = reader.messages(victim.id)[0]
        assert flagged.created_at == first.created_at
        assert parse(flagged.updated_at) >= parse(flagged.created_at)
        undamaged = {c.id: c for c in listed if c.id != victim.id}
        assert undamaged == {c.id: c for c in five if c.id != victim.id}
        # Pages that reach it, stop at it or start after it.
        ids = []
        cursor = None
        while True:
            page = reader.list_conversations(victim.user_id, limit=2, cursor=cursor)
            ids += [c.id for c in page]
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        assert ids == [c.id for c in reversed(five)]
        assert reader.get_conversation(victim.id) == flagged
        assert [m.content for m in reader.messages(victim.id)] == ["q2", "a2!"]
        assert not any(m.damaged for m in reader.messages(victim.id))


def test_an_empty_conversation_takes_its_times_from_its_directory(
    store: Store, user: str, root: str
) -> None:
    conv = store.create_conversation(user, title="empty")
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC).timestamp()
    flip_bit(meta_path(root, conv.id), 30)
    for path in (conversation_dir(root, conv.id) / "messages", conversation_dir(root, conv.id)):
        os.utime(path, (when, when))
    flagged = fresh(root).get_conversation(conv.id)
    assert flagged.damaged and flagged.title is None
    assert parse(flagged.created_at) == parse(flagged.updated_at)
    assert parse(flagged.created_at).timestamp() == when
    assert flagged.created_at.endswith("Z")


def test_writes_work_on_the_rebuilt_record(
    store: Store, five: list[Conversation], root: str
) -> None:
    victim = five[1]
    flip_bit(meta_path(root, victim.id), 30)
    assert store.get_conversation(victim.id).damaged
    store.append_message(victim.id, "user", "still here")
    with store.stream_message(victim.id) as w:
        w.append("and streaming")
    assert [m.content for m in store.messages(victim.id)][-2:] == ["still here", "and streaming"]
    assert store.get_conversation(victim.id).damaged  # appends do not touch the metadata
    # An update writes a whole record again: the conversation is no longer damaged, with
    # what the update set (and nothing of what the damaged file held).
    updated = store.update_conversation(victim.id, title="renamed")
    assert not updated.damaged and updated.title == "renamed" and updated.metadata == {}
    assert fresh(root).get_conversation(victim.id) == updated
    assert store.check() == []


def test_soft_delete_and_restore_of_a_damaged_conversation(
    store: Store, five: list[Conversation], root: str
) -> None:
    victim = five[1]
    flip_bit(meta_path(root, victim.id), 30)
    store.delete_conversation(victim.id)
    deleted = store.get_conversation(victim.id)
    assert deleted.deleted and not deleted.damaged
    assert victim.id not in [c.id for c in store.list_conversations(victim.user_id)]
    assert not store.restore_conversation(victim.id).deleted


def test_sweep_never_removes_a_damaged_conversation(
    store: Store, five: list[Conversation], root: str
) -> None:
    flip_bit(meta_path(root, five[1].id), 30)
    later = datetime(2100, 1, 1, tzinfo=UTC)
    swept = store.sweep_retention(days=1, dry_run=False, now=later)
    assert five[1].id not in swept and len(swept) == 4  # its pinned flag is unknown


def test_check_names_it_and_fix_rebuilds_a_minimal_record(
    store: Store, five: list[Conversation], root: str
) -> None:
    victim = five[1]
    path = meta_path(root, victim.id)
    flip_bit(path, 30)
    (problem,) = store.check()
    assert (problem.kind, problem.path, problem.fixed) == ("corrupt", str(path), False)
    assert "check --fix" in problem.detail and "title" in problem.detail
    (problem,) = store.check(fix=True)
    assert (problem.kind, problem.path, problem.fixed) == ("corrupt", str(path), True)
    assert store.check() == []
    record = decode(path.read_bytes())
    first = store.messages(victim.id)[0]
    assert record == {
        "v": 1,
        "id": victim.id,
        "userId": victim.user_id,
        "title": None,
        "createdAt": first.created_at,
        "updatedAt": record["updatedAt"],
        "pinned": False,
        "metadata": {},
        "participants": [],
        "deletedAt": None,
    }
    assert parse(record["updatedAt"]) >= parse(record["createdAt"])
    rebuilt = fresh(root).get_conversation(victim.id)
    assert not rebuilt.damaged and rebuilt.created_at == first.created_at
    assert store.get_conversation(victim.id) == rebuilt  # the store's cache saw the fix
    assert [m.content for m in store.messages(victim.id)] == ["q2", "a2!"]
    # No temp file left behind: it was replaced atomically.
    assert sorted(os.listdir(path.parent)) == [
        ".lock",
        "conversation.json",
        "messages",
        "segment.jsonl",
    ]


def test_check_fix_rebuilds_a_record_of_another_conversation(
    store: Store, five: list[Conversation], root: str
) -> None:
    DAMAGE["another-conversation"](meta_path(root, five[0].id))
    (problem,) = store.check()
    assert problem.kind == "mismatch" and "check --fix" in problem.detail
    assert [p.fixed for p in store.check(fix=True)] == [True]
    assert store.check() == []
    assert store.get_conversation(five[0].id).id == five[0].id


def test_fifo_as_conversation_json(store: Store, five: list[Conversation], root: str) -> None:
    path = meta_path(root, five[1].id)
    path.unlink()
    os.mkfifo(path)
    outcome: list[Any] = []
    thread = threading.Thread(
        target=lambda: outcome.append(fresh(root).list_conversations(five[1].user_id)),
        daemon=True,
    )
    thread.start()
    thread.join(HANG_S)
    try:
        assert not thread.is_alive(), "the list blocked on a FIFO"
    finally:
        try:  # unblock a regression's reader
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass
    assert [c.damaged for c in outcome[0]] == [False, False, False, True, False]
    (problem,) = store.check()
    assert (problem.kind, problem.path) == ("not-a-file", str(path))
    assert [p.fixed for p in store.check(fix=True)] == [True]
    assert store.check() == []
    assert not fresh(root).get_conversation(five[1].id).damaged


def test_a_directory_as_conversation_json_is_reported_not_removed(
    store: Store, five: list[Conversation], root: str
) -> None:
    path = meta_path(root, five[1].id)
    path.unlink()
    path.mkdir()
    assert store.get_conversation(five[1].id).damaged
    (problem,) = store.check(fix=True)
    assert (problem.kind, problem.fixed) == ("not-a-file", False)
    assert path.is_dir()


def test_an_io_error_is_still_an_error(
    store: Store, five: list[Conversation], root: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Damage is what the file says (corrupt, not a record, not a file); a disk that fails
    to read it is a StorageError, never papered over with a rebuilt record."""
    import errno

    from chunkstore import StorageError, _fsio

    real = _fsio.read_bytes

    def read_bytes(path: str) -> bytes:
        if path.endswith("conversation.json"):
            raise OSError(errno.EIO, "I/O error", path)
        return real(path)

    monkeypatch.setattr(_fsio, "read_bytes", read_bytes)
    with pytest.raises(StorageError):
        fresh(root).get_conversation(five[0].id)


# -- the command line -----------------------------------------------------------------------------


def test_cli_ls_show_and_check(
    store: Store, five: list[Conversation], root: str, capsys: pytest.CaptureFixture[str]
) -> None:
    victim = five[1]
    flip_bit(meta_path(root, victim.id), 30)

    def cli(*args: str) -> tuple[int, str]:
        code = main(["--root", root, *args])
        return code, capsys.readouterr().out

    code, out = cli("ls", "us01")
    assert code == 0
    (line,) = [line for line in out.splitlines() if line.startswith(victim.id)]
    assert "DAMAGED" in line
    assert sum("DAMAGED" in line for line in out.splitlines()) == 1
    code, out = cli("ls", "us01", "--json")
    assert code == 0
    assert [r["damaged"] for r in map(__import__("json").loads, out.splitlines())] == [
        False,
        False,
        False,
        True,
        False,
    ]
    code, out = cli("ls")
    assert code == 0 and "us01  5" in out
    code, out = cli("show", victim.id)
    assert code == 0
    assert "DAMAGED" in out.splitlines()[0] and "q2" in out and "a2!" in out
    code, out = cli("check")
    assert code == 1 and "check --fix" in out
    code, out = cli("check", "--fix")
    assert code == 0 and "1 fixed, 0 remaining" in out
    code, out = cli("ls", "us01")
    assert code == 0 and "DAMAGED" not in out
