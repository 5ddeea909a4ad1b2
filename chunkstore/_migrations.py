"""Versioned schema migrations for the SQL backends: an ordered list, applied at open.

In the style of simonw/llm's ``migrations.py``: a backend declares its schema as an ordered
list (``_sqlite.MIGRATIONS``), migration N being item N - 1: a name and a function of a
connection. ``migrate`` records each one it applies in the ``_migrations`` table ``(version,
name, applied_at)``, one transaction per migration (``BEGIN IMMEDIATE``, so two processes
opening an old database at once apply each step once: the second waits, then finds it done).
A database already at the code's version costs one read and no write lock. A
database *newer* than the code is refused (``StoreFormatError``) rather than half-understood.

Rules for adding a migration: append, never edit or reorder a released one; use plain
statements (``executescript`` would commit the open transaction); and add a database made at
every earlier version to the tests (``tests/sqlite/test_sqlite_migrations.py`` does it for
every prefix of the list).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence

from ._exceptions import StoreFormatError
from ._writer import utc_now

__all__ = ["Migration", "migrate", "statements", "version_of"]

Migration = tuple[str, Callable[[sqlite3.Connection], None]]


def statements(*sql: str) -> Callable[[sqlite3.Connection], None]:
    """A migration that runs ``sql``, one statement each, in order."""

    def apply(conn: sqlite3.Connection) -> None:
        for statement in sql:
            conn.execute(statement)

    return apply


def version_of(conn: sqlite3.Connection, *, what: str = "the database") -> int:
    """The schema version of the database (0: no chunkstore schema yet)."""
    # One statement, so one snapshot: read as two, another connection's first migration
    # could commit in between, and its tables would be taken for a stranger's.
    tables, ours = conn.execute(
        "SELECT count(*), coalesce(sum(name = '_migrations'), 0) FROM sqlite_master "
        "WHERE type = 'table'"
    ).fetchone()
    if not ours:
        if tables:
            raise StoreFormatError(
                f"{what} has tables but no _migrations table: not a chunkstore database"
            )
        return 0
    version: int = conn.execute("SELECT coalesce(max(version), 0) FROM _migrations").fetchone()[0]
    return version


def migrate(conn: sqlite3.Connection, migrations: Sequence[Migration], *, what: str) -> int:
    """Bring the database on ``conn`` (autocommit mode) up to ``len(migrations)``; return it.

    ``what`` names the database in errors.
    """
    target = len(migrations)
    while True:
        current = version_of(conn, what=what)
        if current > target:
            raise StoreFormatError(
                f"{what} has schema version {current}; this chunkstore knows versions up to "
                f"{target} (upgrade chunkstore to open it)"
            )
        if current == target:
            return current
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Read again under the write lock: another process may have migrated meanwhile.
            if version_of(conn, what=what) == current:
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS _migrations (version INTEGER PRIMARY KEY, "
                    "name TEXT NOT NULL, applied_at TEXT NOT NULL)"
                )
                name, apply = migrations[current]
                apply(conn)
                conn.execute(
                    "INSERT INTO _migrations (version, name, applied_at) VALUES (?, ?, ?)",
                    (current + 1, name, utc_now()),
                )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
