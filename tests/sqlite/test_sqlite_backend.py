"""The SQLite backend through the ``Backend`` protocol: users, conversations, messages,
liveness, durability settings, errors and ``check``."""

from __future__ import annotations

import errno
import os
import sqlite3
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlite_support import chunk_record, digest, message_record, new_conversation, open_backend

from chunkstore._backend import Backend, StreamSink
from chunkstore._exceptions import (
    ConversationDeleted,
    ConversationNotFound,
    LimitExceeded,
    LockTimeout,
    StorageError,
    StoreFormatError,
    UserNotFound,
    WriterClosed,
)
from chunkstore._ids import ConversationId, MessageId, UserId
from chunkstore._sqlite import SqliteBackend


def test_satisfies_the_protocols(backend: SqliteBackend, conv: ConversationId) -> None:
    b: Backend = backend  # mypy checks these assignments against the Protocols
    sink: StreamSink = backend.open_stream(conv, role="assistant", max_messages=None)
    sink.release()
    assert b.describe() == f"sqlite:{backend.path}"
    assert repr(backend).startswith("SqliteBackend(")


def test_one_database_file_in_wal_mode(backend: SqliteBackend, db_path: str) -> None:
    assert backend._conn().execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert os.path.isfile(db_path)


def test_busy_timeout_is_the_lock_timeout(db_path: str) -> None:
    b = open_backend(db_path, lock_timeout=2.5)
    try:
        assert b._conn().execute("PRAGMA busy_timeout").fetchone()[0] == 2500
    finally:
        b.close()


# -- users and sessions ------------------------------------------------------------------------


def test_users_and_sessions(backend: SqliteBackend, db_path: str) -> None:
    a, b = digest("session-a"), digest("session-b")
    assert backend.find_user(a) is None
    assert backend.users() == []
    assert backend.user_for(a) == "us01"
    assert backend.user_for(a) == "us01"
    assert backend.user_for(b) == "us02"
    assert backend.find_user(b) == "us02"
    assert backend.users() == ["us01", "us02"]
    # Only the digest is stored, never the principal.
    with sqlite3.connect(db_path) as raw:
        sessions = raw.execute("SELECT digest, user_id FROM sessions ORDER BY user_id").fetchall()
    assert sessions == [(a, 1), (b, 2)]


def test_user_for_from_many_threads_creates_one_user(backend: SqliteBackend) -> None:
    found: list[str] = []
    threads = [
        threading.Thread(target=lambda: found.append(backend.user_for(digest("same"))))
        for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert found == ["us01"] * 8
    assert backend.users() == ["us01"]


# -- conversations -----------------------------------------------------------------------------


def test_create_get_and_ids(backend: SqliteBackend) -> None:
    user = UserId.parse(backend.user_for(digest("x")))
    made = backend.create_conversation(
        user,
        title="Trip",
        metadata={"k": "v"},
        participants=["ana", "bot"],
        pinned=True,
        max_conversations=None,
    )
    assert made.id == "us01-co01" and made.user_id == "us01"
    assert (made.title, made.metadata, made.participants, made.pinned) == (
        "Trip",
        {"k": "v"},
        ["ana", "bot"],
        True,
    )
    assert made.created_at == made.updated_at and made.deleted_at is None
    assert backend.get_conversation(ConversationId(1, 1)) == made


def test_create_for_a_missing_user(backend: SqliteBackend) -> None:
    with pytest.raises(UserNotFound):
        new_conversation_for(backend, UserId(7))


def new_conversation_for(backend: SqliteBackend, user: UserId, limit: int | None = None) -> str:
    return backend.create_conversation(
        user, title=None, metadata={}, participants=[], pinned=False, max_conversations=limit
    ).id


def test_numbers_are_never_reused(backend: SqliteBackend) -> None:
    user = UserId.parse(backend.user_for(digest("x")))
    ids = [new_conversation_for(backend, user) for _ in range(3)]
    assert ids == ["us01-co01", "us01-co02", "us01-co03"]
    backend.remove_conversation(ConversationId(1, 3))
    assert new_conversation_for(backend, user) == "us01-co04"


def test_max_conversations_counts_soft_deleted(backend: SqliteBackend) -> None:
    user = UserId.parse(backend.user_for(digest("x")))
    new_conversation_for(backend, user, limit=2)
    second = ConversationId.parse(new_conversation_for(backend, user, limit=2))
    backend.update_conversation(second, {"deleted_at": "2026-01-01T00:00:00.000000Z"})
    with pytest.raises(LimitExceeded):
        new_conversation_for(backend, user, limit=2)
    backend.remove_conversation(second)
    assert new_conversation_for(backend, user, limit=2) == "us01-co03"


def test_missing_conversations(backend: SqliteBackend) -> None:
    missing = ConversationId(1, 9)
    for call in (
        lambda: backend.get_conversation(missing),
        lambda: backend.update_conversation(missing, {"title": "x"}),
        lambda: backend.remove_conversation(missing),
        lambda: backend.messages(missing, 0, None),
        lambda: backend.message_count(missing),
        lambda: backend.append_message(missing, message_record("user", "hi"), max_messages=None),
        lambda: backend.open_stream(missing, role="assistant", max_messages=None),
    ):
        with pytest.raises(ConversationNotFound):
            call()


def test_update_soft_delete_and_restore(backend: SqliteBackend, conv: ConversationId) -> None:
    before = backend.get_conversation(conv)
    updated = backend.update_conversation(
        conv, {"title": "New", "pinned": True, "metadata": {"a": "b"}}
    )
    assert (updated.title, updated.pinned, updated.metadata) == ("New", True, {"a": "b"})
    assert updated.updated_at >= before.updated_at
    assert updated.created_at == before.created_at
    assert backend.get_conversation(conv) == updated
    deleted = backend.update_conversation(conv, {"deleted_at": "2026-02-02T00:00:00.000000Z"})
    assert deleted.deleted
    with pytest.raises(ConversationDeleted):
        backend.append_message(conv, message_record("user", "hi"), max_messages=None)
    with pytest.raises(ConversationDeleted):
        backend.open_stream(conv, role="assistant", max_messages=None)
    restored = backend.update_conversation(conv, {"deleted_at": None})
    assert not restored.deleted
    backend.append_message(conv, message_record("user", "hi"), max_messages=None)


def test_concurrent_updates_lose_nothing(backend: SqliteBackend, conv: ConversationId) -> None:
    def set_key(i: int) -> None:
        backend.update_conversation(conv, {"title": f"t{i}"})

    threads = [threading.Thread(target=set_key, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert backend.get_conversation(conv).title in {f"t{i}" for i in range(8)}


def test_listing_pages_newest_first(backend: SqliteBackend) -> None:
    user = UserId.parse(backend.user_for(digest("x")))
    for _ in range(5):
        new_conversation_for(backend, user)
    backend.update_conversation(ConversationId(1, 4), {"deleted_at": "2026-01-01T00:00:00Z"})
    page = backend.list_conversations(user, limit=2, before=None, include_deleted=False)
    assert [c.id for c in page] == ["us01-co05", "us01-co03"]
    assert page.next_cursor == "us01-co03"
    page = backend.list_conversations(
        user, limit=2, before=ConversationId(1, 3), include_deleted=False
    )
    assert [c.id for c in page] == ["us01-co02", "us01-co01"]
    assert page.next_cursor is None
    every = backend.list_conversations(user, limit=10, before=None, include_deleted=True)
    assert [c.id for c in every] == [f"us01-co0{n}" for n in (5, 4, 3, 2, 1)]
    assert (
        backend.list_conversations(UserId(9), limit=5, before=None, include_deleted=True).items
        == []
    )


def test_hard_delete_removes_every_row(
    backend: SqliteBackend, conv: ConversationId, db_path: str
) -> None:
    backend.append_message(conv, message_record("user", "hi"), max_messages=None)
    sink = backend.open_stream(conv, role="assistant", max_messages=None)
    sink.write_chunk(chunk_record(sink.message_id, 1, "a"), durable=False)
    backend.remove_conversation(conv)
    with sqlite3.connect(db_path) as raw:
        for table in ("conversations", "messages", "chunks"):
            assert raw.execute(f"SELECT count(*) FROM {table}").fetchone() == (0,)
    with pytest.raises(ConversationNotFound):
        sink.write_chunk(chunk_record(sink.message_id, 2, "b"), durable=False)
    with pytest.raises(ConversationNotFound):
        backend.get_conversation(conv)


def test_expired_skips_pinned_and_counts_messages_as_activity(backend: SqliteBackend) -> None:
    quiet = new_conversation(backend)
    pinned = new_conversation(backend, pinned=True)
    busy = new_conversation(backend)
    now = datetime.now(UTC)
    assert backend.expired(now - timedelta(days=1)) == []
    assert backend.expired(now + timedelta(seconds=1)) == [str(quiet), str(busy)]
    with backend._write("age the conversations") as conn:
        conn.execute("UPDATE conversations SET updated_at = '2000-01-01T00:00:00.000000Z'")
    backend.append_message(busy, message_record("user", "hi"), max_messages=None)
    assert backend.expired(now - timedelta(days=1)) == [str(quiet)]
    assert str(pinned) not in backend.expired(now + timedelta(days=1))


# -- messages ----------------------------------------------------------------------------------


def test_append_message(backend: SqliteBackend, conv: ConversationId) -> None:
    record = message_record("user", "hello", agentId="a1", name="ana")
    message = backend.append_message(conv, record, max_messages=None)
    assert (message.id, message.seq, message.role, message.content) == (
        f"{conv}-ms01",
        1,
        "user",
        "hello",
    )
    assert message.status == "complete" and message.agent_id == "a1" and message.name == "ana"
    assert record["messageId"] == message.id and record["timestamp"] == message.created_at
    assert backend.messages(conv, 0, None) == [message]
    assert backend.message_count(conv) == 1


def test_structured_content_and_tool_calls_round_trip(
    backend: SqliteBackend, conv: ConversationId
) -> None:
    parts = [{"type": "text", "text": "look"}, {"type": "image_url", "image_url": {"url": "x"}}]
    calls = [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    a = backend.append_message(
        conv,
        message_record("user", "look", content=parts, tokenCount=0),
        max_messages=None,
    )
    b = backend.append_message(
        conv,
        message_record("assistant", "", toolCalls=calls, finishReason="tool_calls", content=None),
        max_messages=None,
    )
    c = backend.append_message(
        conv, message_record("tool", "42", toolCallId="c1"), max_messages=None
    )
    assert backend.messages(conv, 0, None) == [a, b, c]
    assert a.content == parts and b.tool_calls == calls and b.content is None
    assert c.tool_call_id == "c1"


def test_a_stream_is_chunk_rows_while_it_streams(
    backend: SqliteBackend, conv: ConversationId, db_path: str
) -> None:
    sink = backend.open_stream(conv, role="assistant", max_messages=None)
    assert sink.message_id == MessageId(conv.user, conv.n, 1)
    [empty] = backend.messages(conv, 0, None)
    assert (empty.status, empty.content) == ("streaming", "")
    for n, tokens in enumerate(["Hel", "lo, ", "wor"], start=1):
        sink.write_chunk(chunk_record(sink.message_id, n, tokens), durable=False)
        with sqlite3.connect(db_path) as raw:
            assert raw.execute("SELECT count(*) FROM chunks").fetchone() == (n,)
    [live] = backend.messages(conv, 0, None)
    assert (live.status, live.content, live.role) == ("streaming", "Hello, wor", "assistant")
    last = chunk_record(
        sink.message_id, 4, "ld", status="complete", finishReason="stop", usage={"total_tokens": 4}
    )
    sealed = sink.seal(last, durable=True)
    assert (sealed.status, sealed.content, sealed.finish_reason) == (
        "complete",
        "Hello, world",
        "stop",
    )
    assert sealed.usage == {"total_tokens": 4} and sealed.token_count == 4
    assert sealed.created_at == "2026-01-01T00:00:01.000000Z"
    assert sealed.completed_at == "2026-01-01T00:00:04.000000Z"
    assert backend.messages(conv, 0, None) == [sealed]
    with sqlite3.connect(db_path) as raw:
        assert raw.execute("SELECT count(*) FROM chunks").fetchone() == (4,)
        assert raw.execute("SELECT status, writer, role FROM messages").fetchone() == (
            "complete",
            None,
            "assistant",
        )
    with pytest.raises(WriterClosed):
        sink.write_chunk(chunk_record(sink.message_id, 5, "x"), durable=False)
    with pytest.raises(WriterClosed):
        sink.seal(last, durable=False)
    sink.release()  # idempotent after a seal


def test_seal_as_error_keeps_the_partial_content(
    backend: SqliteBackend, conv: ConversationId
) -> None:
    sink = backend.open_stream(conv, role="assistant", max_messages=None)
    sink.write_chunk(chunk_record(sink.message_id, 1, "part"), durable=True)
    failed = sink.seal(
        chunk_record(sink.message_id, 2, "", status="error", error={"type": "X"}), durable=True
    )
    assert (failed.status, failed.content, failed.error) == ("error", "part", {"type": "X"})


def test_release_reads_interrupted_while_the_process_lives(
    backend: SqliteBackend, conv: ConversationId, db_path: str
) -> None:
    sink = backend.open_stream(conv, role="assistant", max_messages=None)
    sink.write_chunk(chunk_record(sink.message_id, 1, "half"), durable=True)
    other = open_backend(db_path)
    try:
        assert other.messages(conv, 0, None)[0].status == "streaming"
        sink.release()
        sink.release()
        for reader in (backend, other):
            [message] = reader.messages(conv, 0, None)
            assert (message.status, message.content) == ("interrupted", "half")
    finally:
        other.close()
    with pytest.raises(WriterClosed):
        sink.write_chunk(chunk_record(sink.message_id, 2, "x"), durable=False)


def test_close_ends_the_lease(db_path: str) -> None:
    writer = open_backend(db_path)
    conv = new_conversation(writer)
    sink = writer.open_stream(conv, role="assistant", max_messages=None)
    sink.write_chunk(chunk_record(sink.message_id, 1, "a"), durable=True)
    reader = open_backend(db_path)
    try:
        assert reader.messages(conv, 0, None)[0].status == "streaming"
        writer.close()
        writer.close()
        assert reader.messages(conv, 0, None)[0].status == "interrupted"
        assert os.listdir(db_path + ".leases") == []
        sink.release()  # after close: nothing to do, no error
    finally:
        reader.close()
    with pytest.raises(StorageError):
        writer.messages(conv, 0, None)


def test_a_reader_takes_no_lease(
    backend: SqliteBackend, conv: ConversationId, db_path: str
) -> None:
    backend.append_message(conv, message_record("user", "hi"), max_messages=None)
    backend.messages(conv, 0, None)
    assert not os.path.exists(db_path + ".leases")
    backend.open_stream(conv, role="assistant", max_messages=None).release()
    assert os.listdir(db_path + ".leases") == [f"{backend._instance}.lock"]


def test_messages_after_seq_and_limit(backend: SqliteBackend, conv: ConversationId) -> None:
    for i in range(5):
        backend.append_message(conv, message_record("user", f"m{i}"), max_messages=None)
    sink = backend.open_stream(conv, role="assistant", max_messages=None)
    sink.write_chunk(chunk_record(sink.message_id, 1, "s"), durable=False)
    assert [m.seq for m in backend.messages(conv, 0, None)] == [1, 2, 3, 4, 5, 6]
    assert [m.seq for m in backend.messages(conv, 2, 2)] == [3, 4]
    assert [(m.seq, m.status) for m in backend.messages(conv, 4, 10)] == [
        (5, "complete"),
        (6, "streaming"),
    ]
    assert backend.messages(conv, 6, None) == []
    assert backend.message_count(conv) == 6


def test_max_messages(backend: SqliteBackend, conv: ConversationId) -> None:
    backend.append_message(conv, message_record("user", "a"), max_messages=2)
    backend.open_stream(conv, role="assistant", max_messages=2).release()
    with pytest.raises(LimitExceeded):
        backend.append_message(conv, message_record("user", "c"), max_messages=2)
    with pytest.raises(LimitExceeded):
        backend.open_stream(conv, role="assistant", max_messages=2)
    assert backend.message_count(conv) == 2


def test_seqs_are_gap_free_across_threads(backend: SqliteBackend, conv: ConversationId) -> None:
    errors: list[BaseException] = []

    def work(worker: int) -> None:
        try:
            for i in range(10):
                if i % 2:
                    backend.append_message(
                        conv, message_record("user", f"{worker}-{i}"), max_messages=None
                    )
                    continue
                sink = backend.open_stream(conv, role="assistant", max_messages=None)
                sink.write_chunk(chunk_record(sink.message_id, 1, f"{worker}-"), durable=False)
                sink.seal(
                    chunk_record(sink.message_id, 2, f"{i}", status="complete"), durable=False
                )
                backend.messages(conv, 0, None)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    messages = backend.messages(conv, 0, None)
    assert [m.seq for m in messages] == list(range(1, 81))
    assert sorted(m.content for m in messages) == sorted(
        f"{w}-{i}" for w in range(8) for i in range(10)
    )
    assert all(m.status == "complete" for m in messages)
    assert backend.check(False) == []


# -- durability --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("durability", "chunk", "lazy_chunk", "seal", "metadata"),
    [
        ("chunk", "FULL", "NORMAL", "FULL", "FULL"),
        ("message", "NORMAL", "NORMAL", "FULL", "FULL"),
        ("none", "OFF", "OFF", "OFF", "OFF"),
    ],
)
def test_synchronous_per_transaction(
    db_path: str, durability: str, chunk: str, lazy_chunk: str, seal: str, metadata: str
) -> None:
    """What ``MessageWriter`` passes (``durable`` = durability "chunk" for chunks, not "none"
    for the seal) and what each commit is made with."""
    backend = SqliteBackend(db_path, durability=durability)
    levels = {"FULL": 2, "NORMAL": 1, "OFF": 0}
    try:

        def level() -> int:
            got: int = backend._conn().execute("PRAGMA synchronous").fetchone()[0]
            return got

        conv = new_conversation(backend)
        assert level() == levels[metadata]
        sink = backend.open_stream(conv, role="assistant", max_messages=None)
        sink.write_chunk(chunk_record(sink.message_id, 1, "a"), durable=durability == "chunk")
        assert level() == levels[chunk]
        sink.write_chunk(chunk_record(sink.message_id, 2, "b"), durable=False)
        assert level() == levels[lazy_chunk]
        sink.seal(
            chunk_record(sink.message_id, 3, "c", status="complete"), durable=durability != "none"
        )
        assert level() == levels[seal]
        backend.append_message(conv, message_record("user", "x"), max_messages=None)
        assert level() == levels[metadata]
    finally:
        backend.close()


# -- errors ------------------------------------------------------------------------------------


def test_a_held_write_lock_past_the_timeout_is_lock_timeout(
    db_path: str, conv: ConversationId
) -> None:
    impatient = open_backend(db_path, lock_timeout=0.1)
    holder = sqlite3.connect(db_path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(LockTimeout) as caught:
            impatient.append_message(conv, message_record("user", "x"), max_messages=None)
        assert isinstance(caught.value, TimeoutError)
        assert isinstance(caught.value.__cause__, sqlite3.OperationalError)
        # Readers never wait for the writer (WAL).
        assert impatient.message_count(conv) == 0
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        impatient.close()


def test_a_full_database_is_storage_error_enospc(
    backend: SqliteBackend, conv: ConversationId
) -> None:
    conn = backend._conn()
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages}")
    with pytest.raises(StorageError) as caught:
        for i in range(200):
            backend.append_message(conv, message_record("user", f"{i}" * 2000), max_messages=None)
    assert caught.value.errno == errno.ENOSPC
    conn.execute("PRAGMA max_page_count = 1073741823")
    backend.ping()
    assert backend.check(False) == []  # the failed transactions left nothing behind


def test_not_a_database_is_store_format_error(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_bytes(b"this is not a SQLite database, just text. " * 100)
    with pytest.raises(StoreFormatError):
        SqliteBackend(str(path))


def test_a_foreign_database_is_refused(tmp_path: Path) -> None:
    path = str(tmp_path / "other.db")
    with sqlite3.connect(path) as raw:
        raw.execute("CREATE TABLE people (name TEXT)")
    with pytest.raises(StoreFormatError, match="not a chunkstore database"):
        SqliteBackend(path)


def test_the_parent_directory_is_created(tmp_path: Path) -> None:
    backend = open_backend(str(tmp_path / "a" / "b" / "chat.db"))
    backend.ping()
    backend.close()


def test_ping_writes(backend: SqliteBackend, db_path: str) -> None:
    backend.ping()
    with sqlite3.connect(db_path) as raw:
        assert raw.execute("SELECT count(*) FROM health").fetchone() == (1,)


# -- check -------------------------------------------------------------------------------------


def test_check_a_clean_database(backend: SqliteBackend, conv: ConversationId) -> None:
    backend.append_message(conv, message_record("user", "hi"), max_messages=None)
    sink = backend.open_stream(conv, role="assistant", max_messages=None)
    sink.write_chunk(chunk_record(sink.message_id, 1, "a"), durable=False)
    assert backend.check(False) == []
    assert backend.check(True) == []
    assert backend.messages(conv, 0, None)[1].status == "streaming"  # its writer untouched


def test_check_fixes_counters_and_lines(backend: SqliteBackend, conv: ConversationId) -> None:
    backend.append_message(conv, message_record("user", "one"), max_messages=None)
    backend.append_message(conv, message_record("user", "two"), max_messages=None)
    with backend._write("break it") as conn:
        conn.execute("UPDATE conversations SET last_seq = 1")
        conn.execute("UPDATE users SET last_conversation = 0")
        conn.execute("UPDATE messages SET line = '{\"seq\": 1}' WHERE seq = 1")
        conn.execute(
            "UPDATE chunks SET record = json_set(record, '$.status', 'streaming') WHERE seq = 2"
        )
    problems = backend.check(False)
    assert sorted((p.kind, p.path, p.fixed) for p in problems) == [
        ("counter-behind", "us01", False),
        ("counter-behind", str(conv), False),
        ("stale-line", f"{conv}-ms01", False),
        ("stale-line", f"{conv}-ms02", False),
    ]
    assert all(p.fixed for p in backend.check(True))
    assert backend.check(False) == []
    one, two = backend.messages(conv, 0, None)
    assert (one.content, one.status) == ("one", "complete")
    assert (two.content, two.status) == ("two", "interrupted")  # its terminal record is gone
    assert backend.append_message(conv, message_record("user", "3"), max_messages=None).seq == 3


def test_check_reports_gaps(backend: SqliteBackend, conv: ConversationId) -> None:
    sink = backend.open_stream(conv, role="assistant", max_messages=None)
    for n in (1, 2, 3):
        sink.write_chunk(chunk_record(sink.message_id, n, f"{n}"), durable=False)
    sink.seal(chunk_record(sink.message_id, 4, "", status="complete"), durable=False)
    backend.append_message(conv, message_record("user", "b"), max_messages=None)
    backend.append_message(conv, message_record("user", "c"), max_messages=None)
    with backend._write("break it") as conn:
        conn.execute("DELETE FROM chunks WHERE seq = 1 AND chunk = 2")
        conn.execute("DELETE FROM messages WHERE seq = 2")
    kinds = sorted((p.kind, p.path) for p in backend.check(True))
    assert ("gap", str(conv)) in kinds
    assert ("gap", f"{conv}-ms01") in kinds
    [first, _third] = backend.messages(conv, 0, None)
    assert first.damaged and first.content == "13"


def test_check_fix_forgets_dead_leases(db_path: str) -> None:
    dead = open_backend(db_path)
    conv = new_conversation(dead)
    sink = dead.open_stream(conv, role="assistant", max_messages=None)
    number = dead._instance
    assert number is not None
    # What a killed process leaves: its lease file (unlocked), its row and its writer.
    assert dead._lease is not None
    dead._lease.close()
    dead._lease = None
    backend = open_backend(db_path)
    try:
        assert backend.messages(conv, 0, None)[0].status == "interrupted"
        assert backend.check(True) == []
        assert os.listdir(db_path + ".leases") == []
        with sqlite3.connect(db_path) as raw:
            assert raw.execute("SELECT count(*) FROM instances").fetchone() == (0,)
            assert raw.execute("SELECT writer FROM messages").fetchone() == (None,)
        assert backend.messages(conv, 0, None)[0].status == "interrupted"
    finally:
        backend.close()
        del sink
        dead.close()


# -- fork --------------------------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_uses_its_own_connection_and_lease(
    backend: SqliteBackend, conv: ConversationId
) -> None:
    sink = backend.open_stream(conv, role="assistant", max_messages=None)
    sink.write_chunk(chunk_record(sink.message_id, 1, "parent"), durable=False)
    parent_instance = backend._instance
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, then leave without running the parent's cleanup
        code = 1
        try:
            assert backend._instance is None  # the inherited lease was dropped at the fork
            child = backend.open_stream(conv, role="assistant", max_messages=None)
            child.seal(chunk_record(child.message_id, 1, "child", status="complete"), durable=False)
            statuses = [m.status for m in backend.messages(conv, 0, None)]
            os.write(write, repr((backend._instance, statuses)).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    report = os.read(read, 4096).decode()
    os.close(read)
    assert os.waitstatus_to_exitcode(status) == 0, report
    child_instance, statuses = eval(report)
    assert child_instance not in (None, parent_instance)
    assert statuses == ["streaming", "complete"]
    # The child's exit neither ended the parent's lease nor broke its connection.
    assert [m.status for m in backend.messages(conv, 0, None)] == ["streaming", "complete"]
    other = open_backend(backend.path)
    try:
        assert other.messages(conv, 0, None)[0].status == "streaming"
    finally:
        other.close()
    sink.seal(chunk_record(sink.message_id, 2, "!", status="complete"), durable=False)
    assert backend.messages(conv, 0, None)[0].content == "parent!"
