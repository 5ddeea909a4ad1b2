"""The PostgreSQL backend through the Backend protocol: URLs, tables, streams and their lease,
durability per transaction, errors, check, delete_message, fork, and the connection bound."""

from __future__ import annotations

import errno
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
from pg_support import chunk_record, digest, message_record, new_conversation, open_backend, raw

from chunkstore import LockTimeout, StorageError, Store, StoreFormatError
from chunkstore._backend import Backend, StreamSink
from chunkstore._exceptions import (
    ConversationDeleted,
    ConversationNotFound,
    InvalidArgument,
    LimitExceeded,
    UserNotFound,
    WriterClosed,
)
from chunkstore._ids import ConversationId, MessageId, UserId
from chunkstore._postgres import MIGRATIONS, PostgresBackend
from chunkstore._url import parse_store_url


def test_satisfies_the_protocols(backend: PostgresBackend, conv: ConversationId) -> None:
    as_backend: Backend = backend
    sink: StreamSink = backend.open_stream(conv, role="assistant", max_messages=None)
    assert as_backend is backend
    sink.release()


# -- URLs ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["postgresql", "postgres", "PostgreSQL"])
def test_both_schemes_name_the_backend(scheme: str) -> None:
    kind, location = parse_store_url(f"{scheme}://u:secret@db.example:5432/chat?sslmode=require")
    assert (kind, location) == (
        "postgresql",
        "postgresql://u:secret@db.example:5432/chat?sslmode=require",
    )


def test_store_opens_the_url_and_hides_the_password(pg_url: str) -> None:
    with_password = pg_url.replace("postgres:@", "postgres:hunter2@", 1)
    assert "hunter2" in with_password  # trust authentication: any password will do
    with Store(with_password.replace("postgresql://", "postgres://", 1), durability="none") as s:
        assert "hunter2" not in repr(s) and "postgres:***@" in repr(s)
        assert isinstance(s.backend, PostgresBackend)
        assert "hunter2" not in s.backend.describe()
        conv = s.create_conversation(s.user_for("alice"), title="Trip")
        s.append_message(conv.id, "user", "hi")
        assert [m.content for m in s.messages(conv.id)] == ["hi"]


# -- tables and ids ----------------------------------------------------------------------------


def test_users_sessions_and_numbers(backend: PostgresBackend, pg_url: str) -> None:
    assert backend.find_user(digest("a")) is None
    assert backend.user_for(digest("a")) == "us01"
    assert backend.user_for(digest("b")) == "us02"
    assert backend.user_for(digest("a")) == "us01"
    assert backend.users() == ["us01", "us02"]
    with raw(pg_url) as conn:
        assert conn.execute("SELECT digest FROM sessions ORDER BY user_id").fetchall() == [
            (digest("a"),),
            (digest("b"),),
        ]
    a = UserId.parse("us01")
    first = backend.create_conversation(
        a, title=None, metadata={}, participants=[], pinned=False, max_conversations=None
    )
    backend.remove_conversation(ConversationId.parse(first.id))
    second = backend.create_conversation(
        a, title=None, metadata={}, participants=[], pinned=False, max_conversations=None
    )
    assert (first.id, second.id) == ("us01-co01", "us01-co02")  # never reused
    with pytest.raises(UserNotFound):
        backend.create_conversation(
            UserId(9), title=None, metadata={}, participants=[], pinned=False, max_conversations=1
        )


def test_user_for_from_many_threads_and_backends_creates_one_user(pg_url: str) -> None:
    backends = [open_backend(pg_url) for _ in range(3)]
    try:
        with ThreadPoolExecutor(12) as pool:
            got = set(pool.map(lambda i: backends[i % 3].user_for(digest("same")), range(24)))
        assert got == {"us01"}
        assert backends[0].user_for(digest("next")) == "us02"  # no number burnt
    finally:
        for b in backends:
            b.close()


def test_text_round_trips_exactly(backend: PostgresBackend) -> None:
    user = UserId.parse(backend.user_for(digest("t")))
    title = "nul \x00, quotes \"' and \\, astral \U0001f600"
    metadata = {"z": "last", "a": "first \x00"}  # key order kept (not jsonb)
    created = backend.create_conversation(
        user,
        title=title,
        metadata=metadata,
        participants=["x\x00"],
        pinned=True,
        max_conversations=None,
    )
    got = backend.get_conversation(ConversationId.parse(created.id))
    assert (got.title, got.metadata, got.participants, got.pinned) == (
        title,
        metadata,
        ["x\x00"],
        True,
    )
    assert list(got.metadata) == ["z", "a"]
    conv = ConversationId.parse(created.id)
    message = backend.append_message(conv, message_record("user", title), max_messages=None)
    assert backend.messages(conv, 0, None) == [message] and message.content == title


def test_max_conversations_is_exact_under_concurrency(pg_url: str) -> None:
    backends = [open_backend(pg_url) for _ in range(4)]
    user = UserId.parse(backends[0].user_for(digest("limited")))

    def create(i: int) -> bool:
        try:
            backends[i % 4].create_conversation(
                user, title=None, metadata={}, participants=[], pinned=False, max_conversations=5
            )
        except LimitExceeded:
            return False
        return True

    try:
        with ThreadPoolExecutor(8) as pool:
            assert sum(pool.map(create, range(20))) == 5
        listed = backends[0].list_conversations(user, limit=50, before=None, include_deleted=True)
        assert [c.id for c in listed] == [f"us01-co0{n}" for n in (5, 4, 3, 2, 1)]
    finally:
        for b in backends:
            b.close()


def test_missing_and_deleted_conversations(backend: PostgresBackend, conv: ConversationId) -> None:
    missing = ConversationId(conv.user, 99)
    for call in (
        lambda: backend.get_conversation(missing),
        lambda: backend.messages(missing, 0, None),
        lambda: backend.message_count(missing),
        lambda: backend.remove_conversation(missing),
        lambda: backend.update_conversation(missing, {"title": "x"}),
        lambda: backend.append_message(missing, message_record("user", "x"), max_messages=None),
        lambda: backend.open_stream(missing, role="assistant", max_messages=None),
        lambda: backend.delete_message(missing, 1),
    ):
        with pytest.raises(ConversationNotFound):
            call()
    backend.update_conversation(conv, {"deleted_at": "2026-01-01T00:00:00.000000Z"})
    with pytest.raises(ConversationDeleted):
        backend.append_message(conv, message_record("user", "x"), max_messages=None)
    with pytest.raises(ConversationDeleted):
        backend.open_stream(conv, role="assistant", max_messages=None)
    backend.update_conversation(conv, {"deleted_at": None})
    # The refused claims gave their numbers back.
    assert backend.append_message(conv, message_record("user", "x"), max_messages=None).seq == 1


def test_hard_delete_cascades(backend: PostgresBackend, conv: ConversationId, pg_url: str) -> None:
    backend.append_message(conv, message_record("user", "x"), max_messages=None)
    sink = backend.open_stream(conv, role="assistant", max_messages=None)
    sink.write_chunk(chunk_record(sink.message_id, 1, "a"), durable=False)
    backend.remove_conversation(conv)
    with raw(pg_url) as conn:
        for table in ("conversations", "messages", "chunks"):
            assert conn.execute(f"SELECT count(*) FROM {table}".encode()).fetchone() == (0,)
    with pytest.raises(ConversationNotFound):
        sink.write_chunk(chunk_record(sink.message_id, 2, "b"), durable=False)


def test_expired_uses_the_later_activity(backend: PostgresBackend) -> None:
    from datetime import UTC, datetime, timedelta

    old = new_conversation(backend, "e")
    pinned = new_conversation(backend, "e", pinned=True)
    active = new_conversation(backend, "e")
    with backend._write("age them") as conn:
        conn.execute("UPDATE conversations SET updated_at = '2020-01-01T00:00:00.000000Z'")
    backend.append_message(active, message_record("user", "recent"), max_messages=None)
    cutoff = datetime.now(UTC) - timedelta(days=1)
    assert backend.expired(cutoff) == [str(old)]
    assert str(pinned) not in backend.expired(datetime.now(UTC) + timedelta(days=1))


# -- streams and the lease ---------------------------------------------------------------------


def test_a_stream_is_chunk_rows_while_it_streams(
    backend: PostgresBackend, conv: ConversationId, pg_url: str
) -> None:
    sink = backend.open_stream(conv, role="assistant", max_messages=None)
    assert sink.message_id == MessageId(conv.user, conv.n, 1)
    [empty] = backend.messages(conv, 0, None)
    assert (empty.status, empty.content) == ("streaming", "")
    for n, tokens in enumerate(["Hel", "lo, ", "wor"], start=1):
        sink.write_chunk(chunk_record(sink.message_id, n, tokens), durable=False)
        with raw(pg_url) as conn:
            assert conn.execute("SELECT count(*) FROM chunks").fetchone() == (n,)
    [live] = backend.messages(conv, 0, None)
    assert (live.status, live.content, live.role) == ("streaming", "Hello, wor", "assistant")
    sealed = sink.seal(
        chunk_record(sink.message_id, 4, "ld", status="complete", finishReason="stop"),
        durable=True,
    )
    assert (sealed.status, sealed.content, sealed.finish_reason) == (
        "complete",
        "Hello, world",
        "stop",
    )
    assert backend.messages(conv, 0, None) == [sealed]
    with raw(pg_url) as conn:
        assert conn.execute("SELECT status, writer, role FROM messages").fetchone() == (
            "complete",
            None,
            "assistant",
        )
    with pytest.raises(WriterClosed):
        sink.write_chunk(chunk_record(sink.message_id, 5, "x"), durable=False)
    sink.release()  # idempotent after a seal


def test_release_and_close_end_liveness(pg_url: str) -> None:
    writer = open_backend(pg_url)
    conv = new_conversation(writer)
    released = writer.open_stream(conv, role="assistant", max_messages=None)
    released.write_chunk(chunk_record(released.message_id, 1, "half"), durable=True)
    kept = writer.open_stream(conv, role="assistant", max_messages=None)
    kept.write_chunk(chunk_record(kept.message_id, 1, "kept"), durable=True)
    reader = open_backend(pg_url)
    try:
        assert [m.status for m in reader.messages(conv, 0, None)] == ["streaming", "streaming"]
        released.release()
        released.release()
        assert [m.status for m in reader.messages(conv, 0, None)] == ["interrupted", "streaming"]
        writer.close()
        writer.close()
        assert [(m.status, m.content) for m in reader.messages(conv, 0, None)] == [
            ("interrupted", "half"),
            ("interrupted", "kept"),
        ]
        kept.release()  # after close: nothing to do, no error
    finally:
        reader.close()
    with pytest.raises(StorageError) as closed:
        writer.messages(conv, 0, None)
    assert closed.value.errno == errno.EBADF


def test_a_reader_takes_no_lease(
    backend: PostgresBackend, conv: ConversationId, pg_url: str
) -> None:
    backend.append_message(conv, message_record("user", "hi"), max_messages=None)
    backend.messages(conv, 0, None)
    assert backend._lease is None
    with raw(pg_url) as conn:
        assert conn.execute("SELECT count(*) FROM instances").fetchone() == (0,)
    backend.open_stream(conv, role="assistant", max_messages=None).release()
    assert backend._instance == 1


def test_a_dead_lease_connection_reads_interrupted_then_a_new_lease_is_taken(
    backend: PostgresBackend, conv: ConversationId, pg_url: str
) -> None:
    sink = backend.open_stream(conv, role="assistant", max_messages=None)
    sink.write_chunk(chunk_record(sink.message_id, 1, "before"), durable=False)
    assert backend._lease is not None
    lease_pid = backend._lease.info.backend_pid
    with raw(pg_url) as conn:
        conn.execute("SELECT pg_terminate_backend(%s)", (lease_pid,))
        conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (lease_pid,)
        )  # (terminate waits for nothing; the probe below sees the lock gone)
    [cut] = backend.messages(conv, 0, None)
    assert (cut.status, cut.content) == ("interrupted", "before")
    fresh = backend.open_stream(conv, role="assistant", max_messages=None)  # notices, takes lease 2
    assert backend._instance == 2
    assert [m.status for m in backend.messages(conv, 0, None)] == ["interrupted", "streaming"]
    fresh.release()


def test_stores_in_two_schemas_of_one_database_never_share_a_lease(pg_url: str) -> None:
    with raw(pg_url) as conn:
        conn.execute("CREATE SCHEMA one")
        conn.execute("CREATE SCHEMA two")
    sep = "&" if "?" in pg_url else "?"
    a = open_backend(f"{pg_url}{sep}options=-csearch_path%3Done")
    b = open_backend(f"{pg_url}{sep}options=-csearch_path%3Dtwo")
    try:
        conv_a, conv_b = new_conversation(a), new_conversation(b)
        sink_a = a.open_stream(conv_a, role="assistant", max_messages=None)
        sink_b = b.open_stream(conv_b, role="assistant", max_messages=None)
        assert a._instance == b._instance == 1  # the same number, in two namespaces
        assert a._space != b._space
        a.close()
        assert b.messages(conv_b, 0, None)[0].status == "streaming"
        sink_b.release()
        del sink_a
    finally:
        a.close()
        b.close()


def test_seqs_are_gap_free_across_threads(backend: PostgresBackend, conv: ConversationId) -> None:
    def write(i: int) -> int:
        if i % 2:
            return backend.append_message(
                conv, message_record("user", f"{i}"), max_messages=None
            ).seq
        sink = backend.open_stream(conv, role="assistant", max_messages=None)
        sink.seal(chunk_record(sink.message_id, 1, f"{i}", status="complete"), durable=False)
        return sink.message_id.seq

    with ThreadPoolExecutor(8) as pool:
        seqs = list(pool.map(write, range(60)))
    assert sorted(seqs) == list(range(1, 61))
    assert [m.seq for m in backend.messages(conv, 0, None)] == list(range(1, 61))
    assert backend.message_count(conv) == 60
    assert backend.check(False) == []


def test_fifty_streams_use_the_pool_and_one_lease_connection(pg_url: str) -> None:
    backend = open_backend(pg_url)
    conv = new_conversation(backend)
    streams, rounds = 50, 5
    barrier = threading.Barrier(streams)
    peak = 0
    stop = threading.Event()

    watcher_conn = raw(pg_url)  # one connection, kept: a closed one lingers in the view

    def count() -> int:
        row = watcher_conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND backend_type = 'client backend' AND pid != pg_backend_pid()"
        ).fetchone()
        assert row is not None
        return int(row[0])

    def watch() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, count())

    def stream(i: int) -> str:
        sink = backend.open_stream(conv, role="assistant", max_messages=None)
        barrier.wait()  # all 50 open at once
        for n in range(1, rounds + 1):
            sink.write_chunk(chunk_record(sink.message_id, n, f"{i}."), durable=False)
        return sink.seal(
            chunk_record(sink.message_id, rounds + 1, "", status="complete"), durable=False
        ).content

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with ThreadPoolExecutor(streams) as pool:
            contents = list(pool.map(stream, range(streams)))
    finally:
        stop.set()
        watcher.join()
    try:
        assert contents == [f"{i}." * rounds for i in range(streams)]
        assert 2 <= peak <= backend.pool_size + 1
        assert count() <= backend.pool_size + 1
    finally:
        backend.close()
        watcher_conn.close()


# -- durability and locks ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("durability", "durable", "expected"),
    [
        ("chunk", True, "on"),
        ("chunk", False, "off"),
        ("message", False, "off"),
        ("message", True, "on"),
        ("none", True, "off"),
    ],
)
def test_synchronous_commit_per_transaction(
    pg_url: str, durability: str, durable: bool, expected: str
) -> None:
    backend = open_backend(pg_url, durability=durability)
    try:
        with backend._write("look", durable=durable) as conn:
            assert conn.execute("SHOW synchronous_commit").fetchone() == (expected,)
        with backend._read("look") as conn:  # nothing outlives the transaction
            assert conn.execute("SHOW synchronous_commit").fetchone() == ("on",)
    finally:
        backend.close()


def test_a_row_lock_held_past_the_timeout_is_lock_timeout(pg_url: str) -> None:
    setup = open_backend(pg_url)
    conv = new_conversation(setup)
    impatient = open_backend(pg_url, lock_timeout=0.1)
    try:
        with raw(pg_url) as holder, holder.transaction():
            holder.execute("SELECT * FROM conversations FOR UPDATE")
            with pytest.raises(LockTimeout) as caught:
                impatient.append_message(conv, message_record("user", "x"), max_messages=None)
            assert "0.1s" in str(caught.value)
        assert (
            impatient.append_message(conv, message_record("user", "x"), max_messages=None).seq == 1
        )
    finally:
        impatient.close()
        setup.close()


def test_a_busy_pool_past_the_timeout_is_lock_timeout(pg_url: str) -> None:
    backend = PostgresBackend(pg_url, durability="none", lock_timeout=0.2, pool_size=1)
    try:
        with backend._read("hold the only connection"), pytest.raises(LockTimeout):
            backend.users()
        assert backend.users() == []
    finally:
        backend.close()


# -- errors at open ----------------------------------------------------------------------------


def test_a_missing_database_is_storage_error(pg_url: str) -> None:
    from pg_server import with_database

    with pytest.raises(StorageError) as caught:
        open_backend(with_database(pg_url, "no_such_database"))
    assert caught.value.errno == errno.ENOENT


def test_an_unreachable_server_is_storage_error() -> None:
    with pytest.raises(StorageError) as caught:
        PostgresBackend(
            "postgresql://u:hunter2@127.0.0.1:1/db?connect_timeout=2", durability="none"
        )
    assert caught.value.errno == errno.EIO
    assert "hunter2" not in str(caught.value) and "u:***@" in str(caught.value)


def test_not_a_url_is_invalid_argument() -> None:
    with pytest.raises(InvalidArgument):
        PostgresBackend("postgresql://h/db?no_such_option=1", durability="none")


def test_a_foreign_database_is_refused(pg_url: str) -> None:
    with raw(pg_url) as conn:
        conn.execute("CREATE TABLE stranger (id integer)")
    with pytest.raises(StoreFormatError, match="not a chunkstore database"):
        open_backend(pg_url)


def test_ping_writes(backend: PostgresBackend, pg_url: str) -> None:
    backend.ping()
    backend.ping()
    with raw(pg_url) as conn:
        assert conn.execute("SELECT count(*) FROM health").fetchone() == (1,)


# -- delete_message ------------------------------------------------------------------------------


def test_delete_message(backend: PostgresBackend, conv: ConversationId, pg_url: str) -> None:
    for text in ("one", "two", "three"):
        backend.append_message(conv, message_record("user", text), max_messages=None)
    assert backend.delete_message(conv, 2) is True
    assert backend.delete_message(conv, 2) is False
    assert backend.delete_message(conv, 9) is False
    assert [m.content for m in backend.messages(conv, 0, None)] == ["one", "three"]
    assert [m.seq for m in backend.messages(conv, 1, 1)] == [3]
    assert backend.message_count(conv) == 2
    with raw(pg_url) as conn:  # hidden, not erased (as on SQLite): its seq stays claimed
        row = conn.execute("SELECT deleted_at, line FROM messages WHERE seq = 2").fetchone()
        assert row is not None and row[0].endswith("Z") and '"two"' in row[1]
    assert backend.append_message(conv, message_record("user", "4"), max_messages=None).seq == 4
    assert backend.check(False) == []


def test_a_streaming_message_cannot_be_deleted_an_interrupted_one_can(
    backend: PostgresBackend, conv: ConversationId
) -> None:
    sink = backend.open_stream(conv, role="assistant", max_messages=None)
    sink.write_chunk(chunk_record(sink.message_id, 1, "a"), durable=False)
    with pytest.raises(InvalidArgument, match="still streaming"):
        backend.delete_message(conv, 1)
    sink.release()
    assert backend.delete_message(conv, 1) is True
    assert backend.messages(conv, 0, None) == []
    backend.update_conversation(conv, {"deleted_at": "2026-01-01T00:00:00.000000Z"})
    with pytest.raises(ConversationDeleted):
        backend.delete_message(conv, 1)


# -- check ---------------------------------------------------------------------------------------


def test_check_fixes_counters_and_lines(backend: PostgresBackend, conv: ConversationId) -> None:
    backend.append_message(conv, message_record("user", "one"), max_messages=None)
    backend.append_message(conv, message_record("user", "two"), max_messages=None)
    sink = backend.open_stream(
        conv, role="assistant", max_messages=None
    )  # a live stream is no problem
    assert backend.check(False) == []
    with backend._write("break it") as conn:
        conn.execute("UPDATE conversations SET last_seq = 1")
        conn.execute("UPDATE users SET last_conversation = 0")
        conn.execute("""UPDATE messages SET line = '{"seq": 1}' WHERE seq = 1""")
        conn.execute(
            "UPDATE chunks SET record = replace(record, '\"complete\"', '\"streaming\"') "
            "WHERE seq = 2"
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
    one, two, three = backend.messages(conv, 0, None)
    assert (one.content, one.status) == ("one", "complete")
    assert (two.content, two.status) == ("two", "interrupted")  # its terminal record is gone
    assert three.status == "streaming"
    sink.release()
    assert backend.append_message(conv, message_record("user", "4"), max_messages=None).seq == 4


def test_check_reports_gaps(backend: PostgresBackend, conv: ConversationId) -> None:
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


def test_check_fix_forgets_dead_leases(pg_url: str) -> None:
    dead = open_backend(pg_url)
    conv = new_conversation(dead)
    dead.open_stream(conv, role="assistant", max_messages=None)
    assert dead._lease is not None
    dead._lease.close()  # what a killed process leaves: its row and its writer, no lock
    backend = open_backend(pg_url)
    try:
        assert backend.messages(conv, 0, None)[0].status == "interrupted"
        assert backend.check(True) == []
        with raw(pg_url) as conn:
            assert conn.execute("SELECT count(*) FROM instances").fetchone() == (0,)
            assert conn.execute("SELECT writer FROM messages").fetchone() == (None,)
        assert backend.messages(conv, 0, None)[0].status == "interrupted"
    finally:
        backend.close()
        dead.close()


# -- fork ----------------------------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_uses_its_own_connections_and_lease(
    backend: PostgresBackend, conv: ConversationId, pg_url: str
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
    # The child's exit neither ended the parent's lease nor broke its connections.
    assert [m.status for m in backend.messages(conv, 0, None)] == ["streaming", "complete"]
    sink.seal(chunk_record(sink.message_id, 2, "!", status="complete"), durable=False)
    assert backend.messages(conv, 0, None)[0].content == "parent!"


def test_tables_are_in_the_current_schema(backend: PostgresBackend, pg_url: str) -> None:
    with raw(pg_url) as conn:
        tables = {
            name
            for (name,) in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
            )
        }
        assert tables == {
            "_migrations",
            "users",
            "sessions",
            "conversations",
            "messages",
            "chunks",
            "instances",
            "health",
            "search_documents",
        }
        versions = conn.execute("SELECT version FROM _migrations ORDER BY 1").fetchall()
    assert versions == [(n,) for n in range(1, len(MIGRATIONS) + 1)]


def test_connections_are_safe_behind_a_transaction_pooler(backend: PostgresBackend) -> None:
    with backend._read("look") as conn:
        assert conn.prepare_threshold is None
        assert conn.autocommit
    assert isinstance(psycopg.__version__, str)
