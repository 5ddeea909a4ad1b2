"""The migrations runner (``_migrations``) and the SQLite schema's versions."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator

import pytest
from sqlite_support import digest, new_conversation, open_backend

from chunkstore._exceptions import StoreFormatError
from chunkstore._migrations import Migration, migrate, statements, version_of
from chunkstore._sqlite import MIGRATIONS, SqliteBackend


@pytest.fixture
def conn(db_path: str) -> Iterator[sqlite3.Connection]:
    c = sqlite3.connect(db_path, isolation_level=None)
    yield c
    c.close()


def applied(conn: sqlite3.Connection) -> list[tuple[int, str]]:
    return conn.execute("SELECT version, name FROM _migrations ORDER BY version").fetchall()


def test_a_new_database_gets_every_migration(db_path: str, conn: sqlite3.Connection) -> None:
    SqliteBackend(db_path, durability="none").close()
    assert applied(conn) == [(n, name) for n, (name, _) in enumerate(MIGRATIONS, start=1)]
    at = conn.execute("SELECT applied_at FROM _migrations").fetchone()[0]
    assert at.endswith("Z")


@pytest.mark.parametrize("version", range(len(MIGRATIONS)))
def test_a_database_at_every_earlier_version_upgrades(
    db_path: str, conn: sqlite3.Connection, version: int
) -> None:
    assert migrate(conn, MIGRATIONS[:version], what="test") == version
    backend = open_backend(db_path)
    try:
        assert version_of(conn) == len(MIGRATIONS)
        conv = new_conversation(backend)
        assert backend.get_conversation(conv).id == "us01-co01"
        assert backend.check(False) == []
    finally:
        backend.close()


def test_a_newer_database_is_refused(db_path: str, conn: sqlite3.Connection) -> None:
    SqliteBackend(db_path, durability="none").close()
    newer = len(MIGRATIONS) + 1
    conn.execute(
        "INSERT INTO _migrations VALUES (?, 'from the future', '2030-01-01T00:00:00Z')", (newer,)
    )
    with pytest.raises(StoreFormatError, match=f"schema version {newer}.*upgrade chunkstore"):
        SqliteBackend(db_path, durability="none")


def test_opening_a_current_database_takes_no_write_lock(
    db_path: str, conn: sqlite3.Connection
) -> None:
    SqliteBackend(db_path, durability="none").close()
    conn.execute("BEGIN IMMEDIATE")
    try:
        backend = SqliteBackend(db_path, durability="none", lock_timeout=0.1)
        assert backend.find_user(digest("nobody")) is None
        backend.close()
    finally:
        conn.execute("ROLLBACK")


# -- the runner, with a made-up two-step schema ------------------------------------------------

STEP_1: Migration = ("notes table", statements("CREATE TABLE notes (id INTEGER PRIMARY KEY)"))
STEP_2: Migration = (
    "notes get text",
    statements("ALTER TABLE notes ADD COLUMN body TEXT", "INSERT INTO notes (body) VALUES ('x')"),
)


def test_runner_applies_steps_in_order(conn: sqlite3.Connection) -> None:
    assert version_of(conn) == 0
    assert migrate(conn, [STEP_1], what="test") == 1
    assert applied(conn) == [(1, "notes table")]
    assert migrate(conn, [STEP_1, STEP_2], what="test") == 2
    assert applied(conn) == [(1, "notes table"), (2, "notes get text")]
    assert conn.execute("SELECT body FROM notes").fetchall() == [("x",)]
    assert migrate(conn, [STEP_1, STEP_2], what="test") == 2  # idempotent
    assert conn.execute("SELECT count(*) FROM notes").fetchone() == (1,)


def test_runner_each_step_is_one_transaction(conn: sqlite3.Connection) -> None:
    broken: Migration = (
        "half done",
        statements("ALTER TABLE notes ADD COLUMN body TEXT", "THIS IS NOT SQL"),
    )
    with pytest.raises(sqlite3.OperationalError):
        migrate(conn, [STEP_1, broken], what="test")
    # Step 1 stays; step 2 left nothing behind (its first statement was rolled back).
    assert applied(conn) == [(1, "notes table")]
    columns = [row[1] for row in conn.execute("PRAGMA table_info(notes)")]
    assert columns == ["id"]
    assert not conn.in_transaction
    assert migrate(conn, [STEP_1, STEP_2], what="test") == 2


def test_runner_refuses_newer(conn: sqlite3.Connection) -> None:
    migrate(conn, [STEP_1, STEP_2], what="db.sqlite")
    with pytest.raises(StoreFormatError) as caught:
        migrate(conn, [STEP_1], what="db.sqlite")
    assert str(caught.value) == (
        "db.sqlite has schema version 2; this chunkstore knows versions up to 1 "
        "(upgrade chunkstore to open it)"
    )


def test_runner_refuses_a_foreign_database(conn: sqlite3.Connection) -> None:
    conn.execute("CREATE TABLE people (name TEXT)")
    with pytest.raises(StoreFormatError, match="not a chunkstore database"):
        migrate(conn, [STEP_1], what="test")


def test_runner_from_two_connections_applies_each_step_once(db_path: str) -> None:
    calls: list[str] = []

    def slow(conn: sqlite3.Connection) -> None:
        calls.append(threading.current_thread().name)
        conn.execute("CREATE TABLE slow (id INTEGER)")
        time.sleep(0.2)

    steps: list[Migration] = [STEP_1, ("slow", slow)]
    results: list[int] = []

    def run() -> None:
        c = sqlite3.connect(db_path, isolation_level=None, timeout=10)
        try:
            results.append(migrate(c, steps, what="test"))
        finally:
            c.close()

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [2, 2, 2]
    assert len(calls) == 1


def test_a_first_migration_committed_while_the_version_is_read(db_path: str) -> None:
    """Another connection's first migration commits right after this one's first read of the
    schema (the race a CI run hit: two reads, two snapshots, and our own tables were taken
    for a stranger's). The version is read in one snapshot, so the runner simply finds the
    work done."""
    steps: list[Migration] = [STEP_1]

    class Racing(sqlite3.Connection):
        raced = False

        def execute(self, sql: str, *args: object) -> sqlite3.Cursor:
            cursor = super().execute(sql, *args)
            if "sqlite_master" in sql and not Racing.raced:
                Racing.raced = True
                rows = cursor.fetchall()  # this read is done: now the other one commits
                other = sqlite3.connect(db_path, isolation_level=None)
                try:
                    migrate(other, steps, what="test")
                finally:
                    other.close()
                return _Rows(rows)  # type: ignore[return-value]
            return cursor

    conn = sqlite3.connect(db_path, isolation_level=None, factory=Racing)
    try:
        assert migrate(conn, steps, what="test") == 1
    finally:
        conn.close()
    assert Racing.raced


class _Rows:
    """A cursor's rows, already fetched."""

    def __init__(self, rows: list[object]) -> None:
        self.rows = rows

    def fetchone(self) -> object:
        return self.rows[0] if self.rows else None
