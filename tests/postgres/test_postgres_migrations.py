"""The PostgreSQL schema's versions and its migrations runner (``_postgres.migrate``)."""

from __future__ import annotations

import multiprocessing
import threading

import pytest
from pg_support import digest, new_conversation, open_backend, open_worker, raw

from chunkstore._exceptions import LockTimeout, StoreFormatError
from chunkstore._ids import ConversationId
from chunkstore._postgres import _SCHEMA_LOCK, MIGRATIONS, Migration, migrate, version_of


def applied(url: str) -> list[tuple[int, str]]:
    with raw(url) as conn:
        return conn.execute("SELECT version, name FROM _migrations ORDER BY version").fetchall()


def test_a_new_database_gets_every_migration(pg_url: str) -> None:
    open_backend(pg_url).close()
    assert applied(pg_url) == [(n, name) for n, (name, _) in enumerate(MIGRATIONS, start=1)]
    with raw(pg_url) as conn:
        row = conn.execute("SELECT applied_at FROM _migrations LIMIT 1").fetchone()
    assert row is not None and row[0].endswith("Z")


@pytest.mark.parametrize("version", range(len(MIGRATIONS)))
def test_a_database_at_every_earlier_version_upgrades(pg_url: str, version: int) -> None:
    with raw(pg_url) as conn:
        assert migrate(conn, MIGRATIONS[:version], what="test") == version
        assert version_of(conn) == version
        if version >= 1:  # rows written by that version's code: a message, a streamed one
            conn.execute(
                "INSERT INTO users (created_at, last_conversation) "
                "VALUES ('2026-01-01T00:00:00.000000Z', 1)"
            )
            conn.execute("INSERT INTO sessions VALUES (%s, 1)", (digest("old"),))
            conn.execute(
                "INSERT INTO conversations (user_id, number, title, created_at, updated_at, "
                "last_seq) VALUES (1, 1, '\"Old\"', '2026-01-01T00:00:00.000000Z', "
                "'2026-01-01T00:00:00.000000Z', 1)"
            )
            conn.execute(
                "INSERT INTO messages (user_id, conversation, seq, role, status, created_at) "
                "VALUES (1, 1, 1, 'assistant', 'streaming', '2026-01-01T00:00:00.000000Z')"
            )
            conn.execute(
                "INSERT INTO chunks VALUES (1, 1, 1, 1, %s)",
                (
                    '{"v": 1, "messageId": "us01-co01-ms01", "seq": 1, "tokens": "kept", '
                    '"tokenCount": 1, "timestamp": "2026-01-01T00:00:01.000000Z", '
                    '"role": "assistant", "status": "streaming"}',
                ),
            )
    backend = open_backend(pg_url)
    try:
        with raw(pg_url) as conn:
            assert version_of(conn) == len(MIGRATIONS)
        if version >= 1:
            old = ConversationId(1, 1)
            assert backend.find_user(digest("old")) == "us01"
            assert backend.get_conversation(old).title == "Old"
            [message] = backend.messages(old, 0, None)
            assert (message.content, message.status) == ("kept", "interrupted")
        conv = new_conversation(backend, "new")
        assert backend.get_conversation(conv).title == "Test"
        assert backend.delete_message(conv, 1) is False
        assert backend.check(False) == []
    finally:
        backend.close()


def test_a_newer_database_is_refused(pg_url: str) -> None:
    open_backend(pg_url).close()
    newer = len(MIGRATIONS) + 1
    with raw(pg_url) as conn:
        conn.execute(
            "INSERT INTO _migrations VALUES (%s, 'from the future', '2030-01-01T00:00:00Z')",
            (newer,),
        )
    with pytest.raises(StoreFormatError, match=f"schema version {newer}.*upgrade chunkstore"):
        open_backend(pg_url)


def test_opening_a_current_database_takes_no_lock(pg_url: str) -> None:
    open_backend(pg_url).close()
    with raw(pg_url) as holder, holder.transaction():
        holder.execute("SELECT pg_advisory_xact_lock(%s, 0)", (_SCHEMA_LOCK,))
        backend = open_backend(pg_url, lock_timeout=0.1)
        assert backend.find_user(digest("nobody")) is None
        backend.close()


def test_a_migration_waits_for_the_lock(pg_url: str) -> None:
    with raw(pg_url) as holder:
        with holder.transaction():
            holder.execute("SELECT pg_advisory_xact_lock(%s, 0)", (_SCHEMA_LOCK,))
            opened: list[object] = []
            opener = threading.Thread(target=lambda: opened.append(open_backend(pg_url)))
            opener.start()
            opener.join(0.3)
            assert opener.is_alive() and not opened  # waiting for the holder
        opener.join(10)
    assert len(opened) == 1
    opened[0].close()  # type: ignore[attr-defined]
    assert len(applied(pg_url)) == len(MIGRATIONS)


def test_processes_opening_a_new_database_at_once(pg_url: str) -> None:
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(4) as pool:
        versions = pool.map(open_worker, [pg_url] * 4)
    assert versions == [len(MIGRATIONS)] * 4
    assert applied(pg_url) == [(n, name) for n, (name, _) in enumerate(MIGRATIONS, start=1)]


# -- the runner, with a made-up two-step schema ------------------------------------------------

STEP_1: Migration = ("notes table", ("CREATE TABLE notes (id integer PRIMARY KEY)",))
STEP_2: Migration = (
    "notes get text",
    ("ALTER TABLE notes ADD COLUMN body text", "INSERT INTO notes VALUES (1, 'x')"),
)


def test_the_runner_applies_steps_in_order_once(pg_url: str) -> None:
    with raw(pg_url) as conn:
        assert version_of(conn) == 0
        assert migrate(conn, [STEP_1], what="notes") == 1
        assert migrate(conn, [STEP_1, STEP_2], what="notes") == 2
        assert migrate(conn, [STEP_1, STEP_2], what="notes") == 2
        assert conn.execute("SELECT id, body FROM notes").fetchall() == [(1, "x")]
        with pytest.raises(StoreFormatError):
            migrate(conn, [STEP_1], what="notes")


def test_a_failing_step_leaves_the_version_before_it(pg_url: str) -> None:
    broken: Migration = ("broken", ("ALTER TABLE notes ADD COLUMN body text", "SELECT 1/0"))
    with raw(pg_url) as conn:
        migrate(conn, [STEP_1], what="notes")
        with pytest.raises(Exception, match="division by zero"):
            migrate(conn, [STEP_1, broken], what="notes")
        assert version_of(conn) == 1
        assert migrate(conn, [STEP_1, STEP_2], what="notes") == 2  # nothing half-applied


def test_a_locked_migration_past_the_timeout_is_lock_timeout(pg_url: str) -> None:
    with raw(pg_url) as holder, holder.transaction():
        holder.execute("SELECT pg_advisory_xact_lock(%s, 0)", (_SCHEMA_LOCK,))
        with pytest.raises(LockTimeout):
            open_backend(pg_url, lock_timeout=0.1)
