"""The SQLite search index (``_sqlite``'s FTS5 table): filled by its migration, kept current by
every write (no stale rows left behind), checked and repaired by ``check``, and FTS5 required
at open. What a search finds is the conformance suite's (``test_conformance_search.py``)."""

from __future__ import annotations

import errno
import sqlite3

import pytest
from sqlite_support import digest, message_record, new_conversation, open_backend

import chunkstore._sqlite as sqlite_module
from chunkstore._exceptions import StorageError
from chunkstore._ids import ConversationId, UserId
from chunkstore._migrations import migrate
from chunkstore._rebuild import rebuild_message
from chunkstore._sql import line_of
from chunkstore._sqlite import MIGRATIONS, SqliteBackend

ME = UserId(1)


def hits(backend: SqliteBackend, query: str, **options: bool) -> list[tuple[str, int | None]]:
    found = backend.search(
        ME,
        query.split(),
        limit=50,
        offset=0,
        include_deleted=options.get("include_deleted", False),
    )
    return [(m.conversation.id, m.seq) for m in found]


def index_rows(db_path: str) -> int:
    with sqlite3.connect(db_path) as conn:
        count: int = conn.execute("SELECT count(*) FROM search").fetchone()[0]
    return count


def old_line(seq: int, text: str) -> str:
    record = message_record("user", text)
    record["messageId"] = f"us01-co01-ms{seq:02d}"
    record["timestamp"] = "2026-01-01T00:00:00.000000Z"
    return line_of(rebuild_message(record["messageId"], seq, [record], writer_alive=False))


def test_the_migration_indexes_what_is_already_there(db_path: str) -> None:
    conn = sqlite3.connect(db_path, isolation_level=None)
    assert migrate(conn, MIGRATIONS[:2], what="test") == 2
    now = "2026-01-01T00:00:00.000000Z"
    conn.execute("INSERT INTO users (created_at, last_conversation) VALUES (?, 1)", (now,))
    conn.execute("INSERT INTO sessions VALUES (?, 1)", (digest("old"),))
    conn.execute(
        "INSERT INTO conversations (user_id, number, title, created_at, updated_at, last_seq) "
        "VALUES (1, 1, 'Lisbon trip', ?, ?, 3)",
        (now, now),
    )
    rows = [
        (1, "complete", old_line(1, "pastel de nata"), None),
        (2, "streaming", None, None),  # never sealed: not searchable
        (3, "complete", old_line(3, "a secret plan"), now),  # deleted: not searchable
    ]
    for seq, status, line, deleted_at in rows:
        conn.execute(
            "INSERT INTO messages (user_id, conversation, seq, role, status, created_at, line, "
            "deleted_at) VALUES (1, 1, ?, 'user', ?, ?, ?, ?)",
            (seq, status, now, line, deleted_at),
        )
    conn.close()
    backend = open_backend(db_path)
    try:
        assert hits(backend, "lisbon") == [("us01-co01", None)]
        assert hits(backend, "nata") == [("us01-co01", 1)]
        assert hits(backend, "secret") == []
        # (The made-up rows have no chunk rows: only the index is checked here.)
        assert [p for p in backend.check(False) if p.kind == "stale-index"] == []
        assert index_rows(db_path) == 2
    finally:
        backend.close()


def test_writes_leave_no_stale_documents(backend: SqliteBackend, db_path: str) -> None:
    conv = new_conversation(backend, title="Lisbon")
    assert index_rows(db_path) == 1
    backend.update_conversation(conv, {"title": "Porto"})
    backend.update_conversation(conv, {"title": "Porto again"})
    assert index_rows(db_path) == 1
    backend.append_message(conv, message_record("user", "hello there"), max_messages=None)
    backend.append_message(conv, message_record("user", "!!!"), max_messages=None)  # no words
    assert index_rows(db_path) == 2
    assert backend.delete_message(conv, 1) is True
    assert index_rows(db_path) == 1
    backend.update_conversation(conv, {"title": None})
    assert index_rows(db_path) == 0
    backend.update_conversation(conv, {"title": "Faro"})
    backend.append_message(conv, message_record("user", "sun"), max_messages=None)
    backend.remove_conversation(conv)
    assert index_rows(db_path) == 0
    assert backend.check(False) == []


def test_a_search_reads_only_its_users_rowids(backend: SqliteBackend) -> None:
    mine = new_conversation(backend, title="Lisbon")
    theirs = new_conversation(backend, "someone-else", title="Lisbon")
    assert theirs.user == 2
    assert hits(backend, "lisbon") == [(str(mine), None)]
    plan = " ".join(
        str(row)
        for row in backend._conn().execute(
            f"EXPLAIN QUERY PLAN {sqlite_module._WALK}", ('{title} : ("l"*)', 0, 1)
        )
    )
    # The FTS5 index answers MATCH and both rowid bounds (no scan of other users' postings),
    # and yields the rows in the ORDER BY's order (rowid, newest first): no sort, so the walk
    # can stop with the page.
    assert "VIRTUAL TABLE INDEX" in plan and ":M" in plan and "><" in plan, plan
    assert "TEMP B-TREE" not in plan, plan


def test_the_walk_stops_with_the_page(backend: SqliteBackend) -> None:
    # 200 conversations whose messages all match: a page of 3 needs the newest 3, and the
    # walk reads a few rows past them (up to its floor), not all 200 matches.
    for i in range(200):
        conv = new_conversation(backend, title=f"chat {i}")
        backend.append_message(conv, message_record("user", "lisbon again"), max_messages=None)
    steps = [0]

    def count() -> int:
        steps[0] += 1
        return 0  # go on

    def work(limit: int) -> tuple[list[tuple[str, int | None]], int]:
        conn = backend._conn()
        steps[0] = 0
        conn.set_progress_handler(count, 50)
        try:
            found = backend.search(ME, ["lisbon"], limit=limit, offset=0, include_deleted=False)
        finally:
            conn.set_progress_handler(None, 50)
        return [(m.conversation.id, m.seq) for m in found], steps[0]

    every, all_work = work(200)
    page, page_work = work(3)
    assert every[:3] == page == [(f"us01-co{n:02d}", 1) for n in (200, 199, 198)]
    assert len(every) == 200
    # The engine's virtual-machine steps as the measure of work (no clock).
    assert page_work * 5 < all_work, (page_work, all_work)


def test_check_finds_and_repairs_a_stale_index(backend: SqliteBackend, db_path: str) -> None:
    conv = new_conversation(backend, title="Lisbon")
    backend.append_message(conv, message_record("user", "pastel de nata"), max_messages=None)
    backend.append_message(conv, message_record("user", "tram"), max_messages=None)
    other = ConversationId(1, 9)
    with backend._write("break the index") as conn:
        conn.execute("DELETE FROM search WHERE seq = 1")  # a message lost
        conn.execute("UPDATE search SET body = 'bus' WHERE seq = 2")  # different words
        conn.execute("UPDATE search SET title = 'porto' WHERE seq IS NULL")  # a stale title
        conn.execute(  # a document of a conversation that is not there
            "INSERT INTO search (rowid, title, body, conversation, seq) VALUES (?, 'x', NULL, ?, "
            "NULL)",
            ((1 << 32) + 99, other.n),
        )
    problems = backend.check(False)
    assert sorted((p.kind, p.path, p.fixed) for p in problems) == [
        ("stale-index", str(conv), False),
        ("stale-index", f"{conv}-ms01", False),
        ("stale-index", f"{conv}-ms02", False),
        ("stale-index", str(other), False),
    ]
    assert hits(backend, "nata") == []
    # The document of a conversation that is not there is never a hit (deleted ones asked
    # for or not), until check repairs the index.
    assert hits(backend, "x") == hits(backend, "x", include_deleted=True) == []
    assert all(p.fixed for p in backend.check(True))
    assert backend.check(False) == []
    assert hits(backend, "nata") == [(str(conv), 1)]
    assert hits(backend, "tram") == [(str(conv), 2)]
    assert hits(backend, "lisbon") == [(str(conv), None)]
    assert hits(backend, "porto") == hits(backend, "bus") == []
    assert index_rows(db_path) == 3


def test_check_rebuilds_the_document_of_a_rebuilt_line(backend: SqliteBackend) -> None:
    conv = new_conversation(backend)
    backend.append_message(conv, message_record("user", "lisbon"), max_messages=None)
    with backend._write("break the line") as conn:
        conn.execute("UPDATE messages SET line = '{\"seq\": 1}'")
        conn.execute("DELETE FROM search WHERE seq = 1")
    assert [p.kind for p in backend.check(True)] == ["stale-line"]
    assert backend.check(False) == []
    assert hits(backend, "lisbon") == [(str(conv), 1)]


def test_a_sqlite_without_fts5_is_refused_at_open(
    db_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_module, "_FTS5_PROBE", "SELECT no_such_function_here()")
    with pytest.raises(StorageError, match="has no FTS5") as caught:
        SqliteBackend(db_path, durability="none")
    assert caught.value.errno == errno.ENOSYS
