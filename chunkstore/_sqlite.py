"""The SQLite backend (``sqlite:PATH``): one database file, several processes on one machine.

Storage design (a contract, like ``users/README.md`` is for the file store):

* **One file, WAL.** ``journal_mode=WAL``: readers never block the writer nor each other, so
  a reader rebuilding a conversation never waits on a streaming reply, and every process on
  the machine can open the same file. Schema versions: the ``_migrations`` table
  (``_migrations.py``); ``MIGRATIONS`` below is the ordered list.
* **Tables** (version 1). ``users`` (``id`` 1 is ``us01``; ``last_conversation`` is the
  per-user counter, so a conversation number is never reused, even after a hard delete),
  ``sessions`` (only the principal's SHA-256 digest, never the principal), ``conversations``
  (``PRIMARY KEY (user_id, number)``: ``(1, 12)`` is ``us01-co12``; ``last_seq`` is the
  message counter; ``last_message_at`` the last message claimed or sealed, for retention),
  ``messages`` (``PRIMARY KEY (user_id, conversation, seq)``, the UNIQUE (conversation, seq) of
  SPEC §7; ``status`` is ``streaming`` until sealed, then ``complete`` or ``error``; ``writer``
  names the instance streaming it, NULL once sealed or released), ``chunks`` (one row per chunk
  record, the record verbatim as JSON text, keyed ``(user_id, conversation, seq, chunk)``),
  ``instances`` (liveness leases, below) and ``health`` (one row ``ping`` rewrites). Tables are
  ``WITHOUT ROWID``: the primary key *is* the b-tree, so the listing (newest first) is a
  backward range scan of ``conversations`` and a rebuild a forward range scan of ``messages``
  (measured slightly faster than rowid tables with a UNIQUE index, even with the larger
  message rows). Foreign keys are enforced and cascade: a hard delete is one ``DELETE``.
* **Messages as chunk rows.** A streamed reply becomes one ``chunks`` row per
  ``write_chunk``, committed while it streams, exactly as the file store writes chunk files;
  ``append_message`` stores its one record as chunk 1. Sealing inserts the terminal record and,
  in the same transaction, marks the message final and stores its merged form (the ``Message``
  ``rebuild_message`` makes, as one ``_rebuild.message_to_line`` JSON text) in
  ``messages.line``. The sink merges the records it committed itself, kept in memory up to
  ``KEEP_RECORDS_CHARS`` of JSON (a reply of a few thousand tokens); a longer stream, or one
  whose chunk write failed, has its chunk rows read back instead, so memory stays bounded.
  That line is derived (``check(fix=True)`` rebuilds it from the chunk rows) and is what
  makes reads fast: a 500-message conversation of streamed replies is 500
  rows instead of ~2000 chunk rows merged in Python. Measured on that conversation (SQLite
  3.40): merging the chunk rows through ``rebuild_message`` costs 1.5x the benchmark suite's
  SQLite baseline (``benchmarks/_data.py``: a chunks table grouped into dicts); reading the
  lines costs 0.5x, as much as a hand-written SELECT of the same rows into the same
  ``Message`` values. The price is the text stored twice. Only a message not sealed
  (streaming or interrupted) is rebuilt from its chunk rows, with the status rule of
  ``_rebuild``. Chunk records are kept verbatim as JSON text (not columns): only those few
  messages read them, and SQLite's JSON functions can still look inside (``json_extract``).
* **Seqs** are claimed in the transaction that inserts the message row (``UPDATE
  conversations SET last_seq = last_seq + 1 ... RETURNING``), under SQLite's one write lock:
  gap-free and unique across threads and processes. Conversation numbers the same way from
  ``users.last_conversation``.
* **Transactions are short, and writes take the lock first.** Connections run in autocommit
  mode; a write is ``BEGIN IMMEDIATE`` ... ``COMMIT``: a deferred transaction that upgrades
  to a write can fail with ``SQLITE_BUSY`` at once, without the busy handler. A write of one
  statement (a chunk row after the first) runs alone, as its own transaction: SQLite takes
  the write lock as that statement starts, waiting for it as ``BEGIN IMMEDIATE`` does, and no
  snapshot is held before it that could go stale. A read of several statements is one
  deferred transaction, so it sees one snapshot. No transaction is held across a stream:
  each chunk is its own.
* **Durability** is ``PRAGMA synchronous``, chosen per transaction: ``FULL`` makes a WAL
  commit durable when it returns (the WAL is fsynced); ``NORMAL`` commits without a sync (in
  WAL mode still atomic and consistent: a power cut may only lose the latest commits);
  ``OFF`` never syncs. ``"chunk"``: a chunk written ``durable`` commits with ``FULL``.
  ``"message"``: chunks commit with ``NORMAL``, the seal with ``FULL``, whose fsync of the WAL
  covers every earlier frame, so the whole message is durable when sealed. ``"none"``: ``OFF``.
  Metadata writes and ``append_message`` commit with ``FULL`` unless ``"none"``.
* **Connections**: one per thread (``threading.local``): a connection carries its open
  transaction, so threads must not share one. ``check_same_thread=False`` only so ``close()``
  can close every thread's connection. After ``fork`` the child never touches the parent's
  connections (SQLite forbids carrying one across a fork): the at-fork hook
  (``os.register_at_fork``, run by every fork that goes on running Python) drops them from
  every live backend, and the child opens its own (the slow paths check ``os.getpid()`` as
  well; the per-call path is one attribute read). ``busy_timeout`` is ``lock_timeout``.
* **Liveness without timeouts: a per-process lease.** The first ``open_stream`` of a backend
  takes an instance number (a row of ``instances``, ``AUTOINCREMENT``: a number is never
  handed out twice, so a dead writer's number can never come back to life) and flocks
  ``<db>.leases/<n>.lock`` for the backend's lifetime (``_locks.hold_writer_lock``: the file
  is never visible unlocked). A streaming message row names its writer instance; a reader says
  ``streaming`` while that lease is held by someone, ``interrupted`` otherwise. The kernel drops
  the flock when the process dies (``SIGKILL`` included), so a crashed writer's reply reads
  ``interrupted`` with every chunk committed so far. ``release()`` sets the message's writer to
  NULL: it reads ``interrupted`` at once, though the process and its lease live on. Only
  messages not sealed are probed, one probe per writer per read, and nothing is cached: a
  lease can end at any moment. The lease is taken lazily, so a process that only reads (the
  CLI's ``ls``) takes no number and leaves no lease file behind. After ``fork`` the
  child closes its copy of the lease descriptor without unlocking it (a flock belongs to the
  open file description the parent still holds: unlocking would end the parent's lease) and
  takes its own when it streams. ``close()`` ends the lease.
* **Search** (version 3): an FTS5 table ``search``, one row per document (a conversation's
  title, or one finished message's text), holding ``_sql.index_words`` (the folded words
  ``_search`` compares) under the ``ascii`` tokenizer, so it matches exactly what
  ``_search.matches`` says; each term a quoted prefix query, all required. A row's rowid is
  ``user << 32 | n`` (``users.last_document``): a search reads its user's rowid range only,
  and the row that indexes a title or a message is named by ``conversations.title_document``
  / ``messages.document``, so a new title, a deleted message or a hard delete removes it by
  rowid. Every write that changes what is searchable updates the index in its own
  transaction (a reply in its seal's): no search ever sees a finished reply unindexed, and
  nothing drifts. Ranking is ``_search``'s (title hits, then message hits, each newest
  conversation first, a message hit with its latest matching message): two walks of the
  index, the title column then the body column, in rowid order newest first, each stopping
  at the *floor* of the page's conversations (the lowest rowid any document of a
  conversation at least as new as the page's oldest has: rows below it are older
  conversations'), so a word in every conversation reads about a page's worth of rows
  (``_ranked``); soft-deleted conversations are filtered as they are met. ``check``
  compares the index with the rows (``stale-index``; ``fix`` rebuilds those documents). FTS5
  is required: a Python whose SQLite lacks it is refused at open (``StorageError``,
  ``ENOSYS``), not at the first write.
* **Errors** become the chunkstore tree (``_storage_error``): ``SQLITE_BUSY``/``LOCKED`` past
  ``busy_timeout`` is ``LockTimeout`` (a lock that could not be taken in time, like the file
  store's); a full disk or database ``StorageError(ENOSPC)``; I/O errors and corruption
  ``StorageError(EIO)``; a file that is not a SQLite database ``StoreFormatError``.
"""

from __future__ import annotations

import contextlib
import errno
import heapq
import itertools
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import IO, Any

import orjson

from . import _fsio, _locks
from ._backend import ConversationDump, ConversationImport, UserRecord
from ._exceptions import (
    ChunkstoreError,
    ConversationDeleted,
    ConversationNotFound,
    InvalidArgument,
    LimitExceeded,
    LockTimeout,
    StorageError,
    StoreFormatError,
    UserNotFound,
    WriterClosed,
)
from ._ids import ConversationId, MessageId, UserId
from ._migrations import Migration, migrate, statements
from ._models import Conversation, ConversationPage, Message, Problem
from ._rebuild import TERMINAL, rebuild_message
from ._search import SearchMatch
from ._sql import (
    FIXABLE,
    KEEP_RECORDS_CHARS,
    conversations,
    dumps,
    first,
    from_line,
    import_rows,
    index_words,
    line_of,
)
from ._writer import utc_now

__all__ = ["MIGRATIONS", "SqliteBackend", "SqliteSink"]

# A session found on another user's row stays there (imports, re-registration): never moved.
_ADD_SESSION = (
    "INSERT INTO sessions (digest, user_id) VALUES (?, ?) ON CONFLICT (digest) DO NOTHING"
)

DURABILITY_MODES = ("chunk", "message", "none")

MIGRATIONS: list[Migration] = [
    (
        "initial schema",
        statements(
            """CREATE TABLE users (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                created_at TEXT NOT NULL,
                last_conversation INTEGER NOT NULL DEFAULT 0
            )""",
            """CREATE TABLE sessions (
                digest TEXT PRIMARY KEY,
                user_id INTEGER NOT NULL REFERENCES users (id)
            ) WITHOUT ROWID""",
            """CREATE TABLE conversations (
                user_id INTEGER NOT NULL REFERENCES users (id),
                number INTEGER NOT NULL,
                title TEXT,
                created_at TEXT NOT NULL,
                updated_at TEXT NOT NULL,
                pinned INTEGER NOT NULL DEFAULT 0,
                metadata TEXT NOT NULL DEFAULT '{}',
                participants TEXT NOT NULL DEFAULT '[]',
                deleted_at TEXT,
                last_seq INTEGER NOT NULL DEFAULT 0,
                last_message_at TEXT,
                PRIMARY KEY (user_id, number)
            ) WITHOUT ROWID""",
            """CREATE TABLE messages (
                user_id INTEGER NOT NULL,
                conversation INTEGER NOT NULL,
                seq INTEGER NOT NULL,
                role TEXT,
                status TEXT NOT NULL,
                writer INTEGER,
                created_at TEXT NOT NULL,
                line TEXT,
                PRIMARY KEY (user_id, conversation, seq),
                FOREIGN KEY (user_id, conversation)
                    REFERENCES conversations (user_id, number) ON DELETE CASCADE
            ) WITHOUT ROWID""",
            """CREATE TABLE chunks (
                user_id INTEGER NOT NULL,
                conversation INTEGER NOT NULL,
                seq INTEGER NOT NULL,
                chunk INTEGER NOT NULL,
                record TEXT NOT NULL,
                PRIMARY KEY (user_id, conversation, seq, chunk),
                FOREIGN KEY (user_id, conversation, seq)
                    REFERENCES messages (user_id, conversation, seq) ON DELETE CASCADE
            ) WITHOUT ROWID""",
            """CREATE TABLE instances (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                pid INTEGER NOT NULL,
                started_at TEXT NOT NULL
            )""",
            """CREATE TABLE health (
                id INTEGER PRIMARY KEY CHECK (id = 1),
                pinged_at TEXT NOT NULL
            )""",
        ),
    ),
    (
        # ``Store.delete_message``: the row stays (its seq stays claimed, seqs stay gap-free),
        # marked; readers skip it. Like the file store's tombstone, it hides, it does not erase.
        "deleted messages",
        statements("ALTER TABLE messages ADD COLUMN deleted_at TEXT"),
    ),
    ("search index", lambda conn: _add_search_index(conn)),
]


# The user is known to every caller (it is in the WHERE clause): not read back, every column
# read costs.
_CONVERSATION_COLUMNS_LIST = (
    "number",
    "title",
    "created_at",
    "updated_at",
    "pinned",
    "metadata",
    "participants",
    "deleted_at",
)
_CONVERSATION_COLUMNS = ", ".join(_CONVERSATION_COLUMNS_LIST)
# The search index (``search``): one FTS5 row per document, a conversation's title or one
# finished message's text, stored as ``_sql.index_words`` (its folded words, space-separated)
# in the ``title`` or the ``body`` column (two columns: a search walks title matches first).
# The ``ascii`` tokenizer cuts at those spaces only (every non-ASCII character is part of a
# token; unicode61 would strip accents, which ``_search`` keeps). A rowid is
# ``user_id << 32 | n``, ``n`` from the user's ``last_document`` counter: a user's documents
# are one rowid range, so a search reads that user's postings only (FTS5 takes the ``rowid
# BETWEEN`` constraint with the MATCH), and the row a document is stored under is named by its
# conversation (``title_document``) or message (``document``), so a new title, a deleted
# message or a hard delete removes it by rowid. The rows carry their conversation and seq
# (UNINDEXED) so that a match needs no join to say where it is.
# ``prefix``: postings of every 1-, 2- and 3-character prefix too. Every term is a prefix
# query, and a short one ("the", "ka") otherwise merges the postings of every word it starts:
# measured on 10,000 conversations (45,000 documents), 13-20 ms before any ranking, 1 ms with
# the prefix index, for an index about 3x larger (still smaller than the messages' text).
_SEARCH_TABLE = (
    "CREATE VIRTUAL TABLE search USING fts5(title, body, conversation UNINDEXED, "
    "seq UNINDEXED, tokenize = 'ascii', prefix = '1 2 3')"
)
_DOCUMENT_BITS = 32
# How many rows a search walk reads between two computations of its floor (``_ranked``).
_FLOOR_EVERY = 16
# A function FTS5 registers: it fails ("no such function") where SQLite has no FTS5.
_FTS5_PROBE = "SELECT fts5_source_id()"
# A search walks the index twice, titles then texts (a column filter on one MATCH each), in
# rowid order newest first within the user's range, and stops once the page is known
# (``_ranked``): it reads each row's conversation and seq, never the whole match list.
_WALK = (
    "SELECT rowid, conversation, seq FROM search WHERE search MATCH ? "
    "AND rowid BETWEEN ? AND ? ORDER BY rowid DESC"
)
# The lowest rowid of the documents of conversations numbered at least ``?`` (titles, then
# messages): the walk's stop. Rows below it belong to older conversations only.
_LOWEST_DOCUMENT = (
    "SELECT min(title_document) FROM conversations WHERE user_id = ? AND number >= ?",
    "SELECT min(document) FROM messages WHERE user_id = ? AND conversation >= ?",
)
_INDEX_DOCUMENT = (
    "INSERT INTO search (rowid, title, body, conversation, seq) VALUES (?, ?, ?, ?, ?)"
)
_NEXT_DOCUMENT = (
    "UPDATE users SET last_document = last_document + 1 WHERE id = ? RETURNING last_document"
)
_GET_CONVERSATION = (
    f"SELECT {_CONVERSATION_COLUMNS} FROM conversations WHERE user_id = ? AND number = ?"
)
_LIST_CONVERSATIONS = (
    f"SELECT {_CONVERSATION_COLUMNS} FROM conversations WHERE user_id = ? AND number < ? "
    "AND deleted_at IS NULL ORDER BY number DESC LIMIT ?"
)
_SELECT_MESSAGES = (
    "SELECT seq, writer, line FROM messages WHERE user_id = ? AND conversation = ? "
    "AND seq > ? AND deleted_at IS NULL ORDER BY seq LIMIT ?"
)
_CLAIM_SEQ = (
    "UPDATE conversations SET last_seq = last_seq + 1, last_message_at = ? "
    "WHERE user_id = ? AND number = ? AND deleted_at IS NULL RETURNING last_seq"
)
_CLAIM_SEQ_LIMITED = (
    "UPDATE conversations SET last_seq = last_seq + 1, last_message_at = ? "
    "WHERE user_id = ? AND number = ? AND deleted_at IS NULL AND last_seq < ? RETURNING last_seq"
)
_INSERT_CHUNK = (
    "INSERT INTO chunks (user_id, conversation, seq, chunk, record) VALUES (?, ?, ?, ?, ?)"
)
_SELECT_CHUNKS = (
    "SELECT record FROM chunks WHERE user_id = ? AND conversation = ? AND seq = ? ORDER BY chunk"
)
_SEAL_MESSAGE = (
    "UPDATE messages SET status = ?, writer = NULL, role = ?, line = ?, document = ? "
    "WHERE user_id = ? AND conversation = ? AND seq = ?"
)
_TOUCH_CONVERSATION = (
    "UPDATE conversations SET last_message_at = ? WHERE user_id = ? AND number = ?"
)
# A streaming message's chunk records are kept by its sink, for the seal, while their JSON is
# at most this long in all (a reply of a few thousand tokens); a longer stream drops them and
# its seal reads the chunk rows back, so memory stays bounded however long the stream.
_LIST_CONVERSATIONS_ALL = (
    f"SELECT {_CONVERSATION_COLUMNS} FROM conversations WHERE user_id = ? AND number < ? "
    "ORDER BY number DESC LIMIT ?"
)
# update_conversation's keys -> (column, how the value is stored)
_UPDATABLE: dict[str, tuple[str, Any]] = {
    "title": ("title", lambda v: v),
    "pinned": ("pinned", lambda v: int(bool(v))),
    "metadata": ("metadata", lambda v: dumps(dict(v))),
    "deleted_at": ("deleted_at", lambda v: v),
}
_SYNC_DURABLE = "FULL"
_SYNC_LAZY = "NORMAL"
_SYNC_OFF = "OFF"


# Every live backend, so one fork handler can reset them all in the child.
_BACKENDS: weakref.WeakSet[SqliteBackend] = weakref.WeakSet()
# In a forked child, the parent's connections: kept referenced so they are never used, not even
# closed by the garbage collector (SQLite forbids using a connection across a fork).
_INHERITED: list[sqlite3.Connection] = []


def _storage_error(exc: sqlite3.Error, action: str, timeout: float) -> ChunkstoreError:
    """The chunkstore error for a sqlite3 error (its ``__cause__``)."""
    code = getattr(exc, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    err: ChunkstoreError
    if primary in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
        err = LockTimeout(f"{action}: the database stayed locked for {timeout}s ({exc})")
    elif primary == sqlite3.SQLITE_NOTADB:
        err = StoreFormatError(f"{action}: not a SQLite database ({exc})")
    elif primary == sqlite3.SQLITE_FULL:
        err = StorageError(errno.ENOSPC, f"{action}: {exc}")
    elif primary in (sqlite3.SQLITE_READONLY, sqlite3.SQLITE_PERM, sqlite3.SQLITE_AUTH):
        err = StorageError(errno.EACCES, f"{action}: {exc}")
    elif primary == sqlite3.SQLITE_CANTOPEN:
        err = StorageError(errno.ENOENT, f"{action}: {exc}")
    else:  # IOERR, CORRUPT, and anything else the engine reports: the store failed
        err = StorageError(errno.EIO, f"{action}: {exc}")
    err.__cause__ = exc
    return err


class _Local(threading.local):
    conn: sqlite3.Connection | None = None
    sync: str | None = None  # the connection's PRAGMA synchronous, as last set


class SqliteBackend:
    """The SQLite backend (see the module docstring); implements ``_backend.Backend``.

    ``durability``: ``"chunk"``, ``"message"`` or ``"none"``, as for every backend.
    ``lock_timeout``: how long a write waits for SQLite's write lock (``busy_timeout``).
    """

    def __init__(self, path: str, *, durability: str = "chunk", lock_timeout: float = 30.0) -> None:
        if durability not in DURABILITY_MODES:
            raise InvalidArgument(f"durability must be one of {DURABILITY_MODES}")
        if not path or path == ":memory:" or path.startswith("file:"):
            raise InvalidArgument(f"sqlite needs a database file path, got {path!r}")
        self.path = path
        self.durability = durability
        self.lock_timeout = lock_timeout
        self._file = os.path.abspath(path)
        self._leases_dir = self._file + ".leases"
        self._durable_sync = _SYNC_OFF if durability == "none" else _SYNC_DURABLE
        self._lazy_sync = _SYNC_OFF if durability == "none" else _SYNC_LAZY
        self._closed = False
        self._pid = os.getpid()
        self._local = _Local()
        self._conns: list[sqlite3.Connection] = []
        self._conns_guard = threading.Lock()
        self._lease_guard = threading.Lock()
        self._instance: int | None = None
        self._lease: IO[bytes] | None = None
        try:
            os.makedirs(os.path.dirname(self._file), exist_ok=True)
        except OSError as exc:
            raise StorageError.wrap(exc, f"cannot create the directory of {path}") from exc
        _BACKENDS.add(self)
        try:
            with self._errors("open the database"):
                conn = self._conn()
                self._require_fts5(conn)
                self._use_wal(conn)
                migrate(conn, MIGRATIONS, what=self.describe())
        except BaseException:
            self.close()
            raise

    def _require_fts5(self, conn: sqlite3.Connection) -> None:
        """Refuse to open without FTS5 (the search index): the stdlib sqlite3 of python.org's
        and the usual distributions' Pythons has it, but a Python built against a SQLite
        without it would otherwise fail at the first write, with SQLite's "no such module"."""
        try:
            conn.execute(_FTS5_PROBE)
        except sqlite3.OperationalError as exc:
            raise StorageError(
                errno.ENOSYS,
                f"{self.describe()}: this Python's SQLite ({sqlite3.sqlite_version}) has no "
                "FTS5, which chunkstore's search index needs: use a Python whose sqlite3 "
                "module is built with FTS5",
            ) from exc

    def _use_wal(self, conn: sqlite3.Connection) -> None:
        """Put the database in WAL mode (once per database: the mode is stored in the file).

        Switching needs the database to itself: while another process opens the same new
        database at that moment, SQLite answers with the old mode (or "locked") at once,
        without its busy handler. So the switch is retried until ``lock_timeout``.
        """
        deadline = time.monotonic() + self.lock_timeout
        while True:
            try:
                mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
                if mode != "wal":
                    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise
                mode = "locked"
            if mode == "wal":
                return
            if time.monotonic() > deadline:
                raise StorageError(
                    errno.EIO, f"{self.describe()}: cannot use WAL mode (got {mode!r})"
                )
            time.sleep(0.01)

    def describe(self) -> str:
        return f"sqlite:{self.path}"

    def __repr__(self) -> str:
        return f"SqliteBackend({self.path!r}, durability={self.durability!r})"

    # -- connections and transactions ------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        """This thread's connection. The fast path is one attribute read: ``close()`` and the
        at-fork hook (``_reset_after_fork``) replace ``_local``, so a closed backend or a forked
        child finds no connection there and takes the checks below."""
        conn = self._local.conn
        if conn is not None:
            return conn
        if self._pid != os.getpid():
            self._after_fork()
        if self._closed:
            raise StorageError(errno.EBADF, f"{self.describe()} is closed")
        local = self._local
        conn = local.conn
        if conn is None:
            # timeout= is SQLite's busy_timeout: how long a statement waits for a lock.
            conn = sqlite3.connect(
                self._file,
                timeout=self.lock_timeout,
                isolation_level=None,
                check_same_thread=False,
                cached_statements=256,
            )
            conn.execute("PRAGMA foreign_keys = ON")
            with self._conns_guard:
                self._conns.append(conn)
            local.conn = conn
            local.sync = None
        return conn

    def _after_fork(self) -> None:
        """In a forked child: drop the parent's connections and lease (never use them)."""
        # Fresh locks: another thread of the parent may have held one at the fork.
        self._conns_guard = threading.Lock()
        self._lease_guard = threading.Lock()
        self._pid = os.getpid()
        _INHERITED.extend(self._conns)
        self._conns = []
        self._local = _Local()
        lease, self._lease, self._instance = self._lease, None, None
        if lease is not None:
            # Close our copy of the descriptor, never unlock: the flock belongs to the open
            # file description, which the parent still holds; LOCK_UN would end its lease.
            with contextlib.suppress(OSError):
                lease.close()

    @contextlib.contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            raise self._error(exc, action) from exc

    def _error(self, exc: sqlite3.Error, action: str) -> ChunkstoreError:
        """``exc`` as the chunkstore error of failing to ``action`` (hot paths catch
        ``sqlite3.Error`` themselves and format ``action`` only when it happens)."""
        return _storage_error(exc, f"{self.describe()}: cannot {action}", self.lock_timeout)

    def _set_sync(self, conn: sqlite3.Connection, level: str) -> None:
        if self._local.sync != level:
            conn.execute(f"PRAGMA synchronous = {level}")
            self._local.sync = level

    @contextlib.contextmanager
    def _write(self, action: str, *, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """One write transaction (``BEGIN IMMEDIATE``), committed ``durable`` (see the module
        docstring) unless the store's durability is ``"none"``."""
        try:
            conn = self._conn()
            self._set_sync(conn, self._durable_sync if durable else self._lazy_sync)
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise self._error(exc, action) from exc

    @contextlib.contextmanager
    def _read(self, action: str) -> Iterator[sqlite3.Connection]:
        """One read transaction: every statement in it sees the same snapshot."""
        with self._errors(action):
            conn = self._conn()
            conn.execute("BEGIN")
            try:
                yield conn
            finally:
                if conn.in_transaction:
                    conn.execute("COMMIT")

    def close(self) -> None:
        if self._pid != os.getpid():
            self._after_fork()
        _BACKENDS.discard(self)
        own = self._local.conn
        with self._lease_guard, self._conns_guard:
            self._closed = True
            # Before any connection is closed: a thread's next _conn() finds none here, and
            # so sees the backend closed.
            self._local = _Local()
            conns, self._conns = self._conns, []
            lease, self._lease = self._lease, None
            instance, self._instance = self._instance, None
        if instance is not None and own is not None and not own.in_transaction:
            # Tidy only: the lease ending is what makes our unsealed messages interrupted
            # (and check(fix=True) removes the rows of leases that ended without this).
            with contextlib.suppress(sqlite3.Error):
                own.execute("DELETE FROM instances WHERE id = ?", (instance,))
        if lease is not None and instance is not None:
            # Unlinked before unlocking: no reader can find the file unlocked and alive.
            _fsio.unlink_quietly(self._lease_path(instance))
            _locks.release(lease)
        for conn in conns:
            with contextlib.suppress(sqlite3.Error):
                conn.close()

    def ping(self) -> None:
        with self._write("take a write"):
            self._conn().execute(
                "INSERT INTO health (id, pinged_at) VALUES (1, ?) "
                "ON CONFLICT (id) DO UPDATE SET pinged_at = excluded.pinged_at",
                (utc_now(),),
            )

    # -- the liveness lease -----------------------------------------------------------------

    def _lease_path(self, instance: int) -> str:
        return os.path.join(self._leases_dir, f"{instance}.lock")

    def _instance_number(self) -> int:
        """This process's instance number, its lease taken on first use (see the docstring)."""
        instance = self._instance  # None in a forked child: the at-fork hook dropped it
        if instance is not None:
            return instance
        if self._pid != os.getpid():
            self._after_fork()
        with self._lease_guard:
            if self._instance is not None:
                return self._instance
            try:
                os.makedirs(self._leases_dir, exist_ok=True)
            except OSError as exc:
                raise StorageError.wrap(exc, f"cannot create {self._leases_dir}") from exc
            for _ in range(10):
                # Not synced: a power cut that loses this commit loses every later one that
                # names the number too (the WAL keeps commits in order).
                with self._write("take an instance number", durable=False) as conn:
                    n: int = conn.execute(
                        "INSERT INTO instances (pid, started_at) VALUES (?, ?) RETURNING id",
                        (os.getpid(), utc_now()),
                    ).fetchone()[0]
                try:
                    self._lease = _locks.hold_writer_lock(self._lease_path(n), self.lock_timeout)
                except FileExistsError:
                    # Left by a database restored from an older copy (the counter went back):
                    # that number is spent; take the next one.
                    continue
                except OSError as exc:
                    raise StorageError.wrap(exc, f"cannot take lease {n}") from exc
                self._instance = n
                return n
            raise StorageError(errno.EEXIST, f"cannot take a lease in {self._leases_dir}")

    def _writer_alive(self, writer: int | None) -> bool:
        if writer is None:
            return False
        if writer == self._instance and self._lease is not None:
            return True  # our own lease, held until close()
        return _locks.is_held(self._lease_path(writer))

    # -- users ------------------------------------------------------------------------------

    def user_for(self, principal_digest: str) -> str:
        found = self.find_user(principal_digest)
        if found is not None:
            return found
        with self._write("create a user") as conn:
            row = conn.execute(
                "SELECT user_id FROM sessions WHERE digest = ?", (principal_digest,)
            ).fetchone()
            if row is not None:
                return str(UserId(row[0]))  # another process created it meanwhile
            n: int = conn.execute(
                "INSERT INTO users (created_at) VALUES (?) RETURNING id", (utc_now(),)
            ).fetchone()[0]
            conn.execute(
                "INSERT INTO sessions (digest, user_id) VALUES (?, ?)", (principal_digest, n)
            )
        return str(UserId(n))

    def find_user(self, principal_digest: str) -> str | None:
        with self._errors("find a user"):
            row = (
                self._conn()
                .execute("SELECT user_id FROM sessions WHERE digest = ?", (principal_digest,))
                .fetchone()
            )
        return None if row is None else str(UserId(row[0]))

    def users(self) -> list[str]:
        with self._errors("list users"):
            rows = self._conn().execute("SELECT id FROM users ORDER BY id").fetchall()
        return [str(UserId(n)) for (n,) in rows]

    def user_records(self, users: Sequence[UserId]) -> list[UserRecord]:
        out = []
        with self._read("read users") as conn:
            for user in users:
                row = conn.execute(
                    "SELECT created_at, last_conversation FROM users WHERE id = ?", (user.n,)
                ).fetchone()
                if row is None:
                    raise UserNotFound(f"no user {user}")
                digests = conn.execute(
                    "SELECT digest FROM sessions WHERE user_id = ? ORDER BY digest", (user.n,)
                ).fetchall()
                out.append(UserRecord(str(user), row[0], [d for (d,) in digests], row[1]))
        return out

    def import_user(
        self,
        user: UserId | None,
        *,
        created_at: str,
        sessions: Sequence[str],
        last_conversation: int = 0,
    ) -> str | None:
        with self._write("import a user") as conn:
            if user is None:
                n: int = conn.execute(
                    "INSERT INTO users (created_at, last_conversation) VALUES (?, ?) RETURNING id",
                    (created_at, last_conversation),
                ).fetchone()[0]
            else:
                # AUTOINCREMENT keeps the highest id ever used: a number given here is never
                # handed out again by user_for.
                row = conn.execute(
                    "INSERT INTO users (id, created_at, last_conversation) VALUES (?, ?, ?) "
                    "ON CONFLICT (id) DO NOTHING RETURNING id",
                    (user.n, created_at, last_conversation),
                ).fetchone()
                if row is None:
                    return None
                n = row[0]
            conn.executemany(
                _ADD_SESSION,
                [(digest, n) for digest in sessions],
            )
        return str(UserId(n))

    def add_sessions(self, user: UserId, sessions: Sequence[str]) -> int:
        with self._write("register sessions") as conn:
            if conn.execute("SELECT 1 FROM users WHERE id = ?", (user.n,)).fetchone() is None:
                raise UserNotFound(f"no user {user}")
            added = 0
            for digest in sessions:
                added += conn.execute(
                    _ADD_SESSION,
                    (digest, user.n),
                ).rowcount
        return added

    # -- conversations ----------------------------------------------------------------------

    def create_conversation(
        self,
        user: UserId,
        *,
        title: str | None,
        metadata: dict[str, str],
        participants: list[str],
        pinned: bool,
        max_conversations: int | None,
    ) -> Conversation:
        with self._write("create a conversation") as conn:
            if max_conversations is not None:
                (count,) = conn.execute(
                    "SELECT count(*) FROM conversations WHERE user_id = ?", (user.n,)
                ).fetchone()
                if count >= max_conversations:
                    raise LimitExceeded(
                        f"user {user} has reached the limit of {max_conversations} conversations"
                    )
            row = conn.execute(
                "UPDATE users SET last_conversation = last_conversation + 1 WHERE id = ? "
                "RETURNING last_conversation",
                (user.n,),
            ).fetchone()
            if row is None:
                raise UserNotFound(f"no user {user}")
            now = utc_now()
            number = row[0]
            row = conn.execute(
                "INSERT INTO conversations (user_id, number, title, created_at, updated_at, "
                "pinned, metadata, participants, deleted_at, title_document) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL, ?) "
                f"RETURNING {_CONVERSATION_COLUMNS}",
                (
                    user.n,
                    number,
                    title,
                    now,
                    now,
                    int(pinned),
                    dumps(metadata),
                    dumps(participants),
                    _index_document(conn, user.n, number, None, title),
                ),
            ).fetchone()
        return _conversation(user.n, row)

    def get_conversation(self, conv: ConversationId) -> Conversation:
        user = conv.user
        try:
            row = self._conn().execute(_GET_CONVERSATION, (user, conv.n)).fetchone()
        except sqlite3.Error as exc:
            raise self._error(exc, f"read {conv}") from exc
        if row is None:
            raise ConversationNotFound(f"no conversation {conv}")
        return _conversation(user, row)

    def list_conversations(
        self,
        user: UserId,
        *,
        limit: int,
        before: ConversationId | None,
        include_deleted: bool,
    ) -> ConversationPage:
        sql = _LIST_CONVERSATIONS_ALL if include_deleted else _LIST_CONVERSATIONS
        below = before.n if before is not None else 2**63 - 1
        n = user.n
        try:
            rows = self._conn().execute(sql, (n, below, limit + 1)).fetchall()
        except sqlite3.Error as exc:
            raise self._error(exc, f"list the conversations of {user}") from exc
        more = len(rows) > limit
        if more:
            del rows[limit:]
        items = conversations(n, rows)
        return ConversationPage(items, items[-1].id if more else None)

    def update_conversation(self, conv: ConversationId, changes: Mapping[str, Any]) -> Conversation:
        sets: list[str] = ["updated_at = ?"]
        values: list[Any] = [utc_now()]
        for key, value in changes.items():
            column, encode = _UPDATABLE[key]
            sets.append(f"{column} = ?")
            values.append(encode(value))
        with self._write(f"update {conv}") as conn:
            if "title" in changes:
                # The old title's document goes and the new one's comes in the same transaction.
                found = conn.execute(
                    "SELECT title_document FROM conversations WHERE user_id = ? AND number = ?",
                    (conv.user, conv.n),
                ).fetchone()
                if found is None:
                    raise ConversationNotFound(f"no conversation {conv}")
                _drop_documents(conn, [found[0]])
                sets.append("title_document = ?")
                values.append(_index_document(conn, conv.user, conv.n, None, changes["title"]))
            # One UPDATE: SQLite's write lock makes it atomic, no concurrent update is lost.
            row = conn.execute(
                f"UPDATE conversations SET {', '.join(sets)} WHERE user_id = ? AND number = ? "
                f"RETURNING {_CONVERSATION_COLUMNS}",
                (*values, conv.user, conv.n),
            ).fetchone()
        if row is None:
            raise ConversationNotFound(f"no conversation {conv}")
        return _conversation(conv.user, row)

    def dump_conversation(self, conv: ConversationId) -> ConversationDump:
        # Two reads: the metadata and counter, then the messages. A message written between
        # them (a live store) only makes the counter look behind, which the messages say.
        with self._errors(f"read {conv}"):
            row = (
                self._conn()
                .execute(
                    f"SELECT {_CONVERSATION_COLUMNS}, last_seq FROM conversations "
                    "WHERE user_id = ? AND number = ?",
                    (conv.user, conv.n),
                )
                .fetchone()
            )
        if row is None:
            raise ConversationNotFound(f"no conversation {conv}")
        messages = self.messages(conv, 0, None)
        last_seq = max(row[-1], messages[-1].seq if messages else 0)
        return ConversationDump(_conversation(conv.user, row[:-1]), last_seq, messages)

    def import_conversation(
        self, user: UserId, number: int | None, data: ConversationImport
    ) -> str | None:
        """One write transaction: the user's counter, the conversation row, its message
        and chunk rows all commit together or not at all."""
        with self._write("import a conversation") as conn:
            row = conn.execute(
                "SELECT last_conversation, (SELECT max(number) FROM conversations "
                "WHERE user_id = ?) FROM users WHERE id = ?",
                (user.n, user.n),
            ).fetchone()
            if row is None:
                raise UserNotFound(f"no user {user}")
            if number is None:
                number = max(row[0], row[1] or 0) + 1
            elif (
                conn.execute(
                    "SELECT 1 FROM conversations WHERE user_id = ? AND number = ?",
                    (user.n, number),
                ).fetchone()
                is not None
            ):
                return None
            conn.execute(
                "UPDATE users SET last_conversation = max(last_conversation, ?) WHERE id = ?",
                (number, user.n),
            )
            c = data.conversation
            message_rows, chunk_rows, latest = import_rows(user.n, number, data, utc_now())
            # Indexed in the import's transaction, as every write keeps the index.
            documents = [
                _index_message(conn, MessageId(u, n, seq), from_line(orjson.loads(line)))
                if line is not None and deleted_at is None
                else None
                for u, n, seq, _, _, _, line, deleted_at in message_rows
            ]
            conn.execute(
                "INSERT INTO conversations (user_id, number, title, created_at, updated_at, "
                "pinned, metadata, participants, deleted_at, last_seq, last_message_at, "
                "title_document) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    user.n,
                    number,
                    c.title,
                    c.created_at,
                    c.updated_at,
                    int(c.pinned),
                    dumps(c.metadata),
                    dumps(c.participants),
                    c.deleted_at,
                    data.last_seq,
                    latest,
                    _index_document(conn, user.n, number, None, c.title),
                ),
            )
            conn.executemany(
                "INSERT INTO messages (user_id, conversation, seq, role, status, writer, "
                "created_at, line, deleted_at, document) VALUES (?, ?, ?, ?, ?, NULL, ?, ?, ?, ?)",
                [(*row, document) for row, document in zip(message_rows, documents, strict=True)],
            )
            conn.executemany(_INSERT_CHUNK, chunk_rows)
        return str(ConversationId(user.n, number))

    def remove_conversation(self, conv: ConversationId) -> None:
        with self._write(f"delete {conv}") as conn:
            # Its documents first (the index has no foreign key to cascade along).
            docs = conn.execute(
                "SELECT title_document FROM conversations WHERE user_id = ? AND number = ? "
                "UNION ALL SELECT document FROM messages WHERE user_id = ? AND conversation = ? "
                "AND document IS NOT NULL",
                (conv.user, conv.n, conv.user, conv.n),
            ).fetchall()
            _drop_documents(conn, [doc for (doc,) in docs])
            # The foreign keys cascade to its messages and their chunks.
            cursor = conn.execute(
                "DELETE FROM conversations WHERE user_id = ? AND number = ?", (conv.user, conv.n)
            )
            if cursor.rowcount == 0:
                raise ConversationNotFound(f"no conversation {conv}")

    def expired(self, cutoff: datetime) -> list[str]:
        # Every stored time is utc_now()'s fixed-width ISO form, so text order is time order.
        limit = cutoff.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
        with self._errors("find expired conversations"):
            rows = (
                self._conn()
                .execute(
                    "SELECT user_id, number FROM conversations WHERE pinned = 0 "
                    "AND max(updated_at, coalesce(last_message_at, '')) < ? "
                    "ORDER BY user_id, number",
                    (limit,),
                )
                .fetchall()
            )
        return [str(ConversationId(u, n)) for u, n in rows]

    # -- messages ---------------------------------------------------------------------------

    def _claim_seq(
        self, conn: sqlite3.Connection, conv: ConversationId, limit: int | None, now: str
    ) -> MessageId:
        """The next seq of ``conv``, claimed in the caller's write transaction: one ``UPDATE``
        whose ``WHERE`` holds every check; only when it claims nothing is the row read, under
        the same write lock, to say why."""
        row = conn.execute(
            _CLAIM_SEQ if limit is None else _CLAIM_SEQ_LIMITED,
            (now, conv.user, conv.n) if limit is None else (now, conv.user, conv.n, limit),
        ).fetchone()
        if row is not None:
            return MessageId(conv.user, conv.n, row[0])
        row = conn.execute(
            "SELECT deleted_at, last_seq FROM conversations WHERE user_id = ? AND number = ?",
            (conv.user, conv.n),
        ).fetchone()
        if row is None:
            raise ConversationNotFound(f"no conversation {conv}")
        if row[0] is not None:
            raise ConversationDeleted(f"conversation {conv} is deleted: restore it to write")
        raise LimitExceeded(f"conversation {conv} has reached the limit of {limit} messages")

    def append_message(
        self, conv: ConversationId, record: dict[str, Any], *, max_messages: int | None
    ) -> Message:
        with self._write(f"append to {conv}") as conn:
            now = utc_now()
            mid = self._claim_seq(conn, conv, max_messages, now)
            record["messageId"] = str(mid)
            record["timestamp"] = now
            message = rebuild_message(str(mid), mid.seq, [record], writer_alive=False)
            conn.execute(
                "INSERT INTO messages (user_id, conversation, seq, role, status, writer, "
                "created_at, line, document) VALUES (?, ?, ?, ?, ?, NULL, ?, ?, ?)",
                (
                    mid.user,
                    mid.conversation,
                    mid.seq,
                    message.role,
                    message.status,
                    now,
                    line_of(message),
                    _index_message(conn, mid, message),
                ),
            )
            conn.execute(
                "INSERT INTO chunks (user_id, conversation, seq, chunk, record) "
                "VALUES (?, ?, ?, 1, ?)",
                (mid.user, mid.conversation, mid.seq, dumps(record)),
            )
        return message

    def open_stream(
        self, conv: ConversationId, *, role: str, max_messages: int | None
    ) -> SqliteSink:
        instance = self._instance
        if instance is None:
            instance = self._instance_number()
        # _write's transaction, spelled out: once per streamed message.
        try:
            conn = self._conn()
            self._set_sync(conn, self._durable_sync)
            conn.execute("BEGIN IMMEDIATE")
            try:
                now = utc_now()
                mid = self._claim_seq(conn, conv, max_messages, now)
                conn.execute(
                    "INSERT INTO messages (user_id, conversation, seq, role, status, writer, "
                    "created_at) VALUES (?, ?, ?, ?, 'streaming', ?, ?)",
                    (mid.user, mid.conversation, mid.seq, role, instance, now),
                )
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise self._error(exc, f"start a message in {conv}") from exc
        return SqliteSink(self, mid)

    def messages(self, conv: ConversationId, after_seq: int, limit: int | None) -> list[Message]:
        user, n = conv.user, conv.n
        out: list[Any] = []
        unsealed: list[tuple[int, int, int | None]] = []  # (index in out, seq, writer)
        chunks: dict[int, list[dict[str, Any]]] = {}
        try:
            conn = self._conn()
            conn.execute("BEGIN")  # one snapshot for every statement below
            try:
                # Each row is parsed as the cursor yields it (a fetchall() first would hold
                # every line and its Message at once: twice the peak memory of a long read).
                # No status column: a NULL line says "not sealed", and every column read costs
                # (status alone was a fifth of a 500-message read).
                loads = orjson.loads
                append = out.append
                for seq, writer, line in conn.execute(
                    _SELECT_MESSAGES, (user, n, after_seq, -1 if limit is None else limit)
                ):
                    if line is None:
                        unsealed.append((len(out), seq, writer))
                        append(None)
                        continue
                    # _from_line, inlined: this runs once per message, and a call per message
                    # is a tenth of a long read.
                    d = loads(line)
                    get = d.get
                    append(
                        Message(
                            d["id"],
                            d["seq"],
                            d["role"],
                            get("content"),
                            d["status"],
                            get("createdAt", ""),
                            get("completedAt"),
                            get("agentId"),
                            get("finishReason"),
                            get("usage"),
                            get("toolCalls"),
                            get("toolCallId"),
                            get("name"),
                            get("error"),
                            get("tokenCount", 0),
                            bool(get("damaged")),
                            get("replyTo"),
                        )
                    )
                if not out and not self._exists(conn, conv):
                    raise ConversationNotFound(f"no conversation {conv}")
                if unsealed:
                    found = conn.execute(
                        "SELECT seq, record FROM chunks WHERE user_id = ? AND conversation = ? "
                        "AND seq IN (SELECT value FROM json_each(?)) ORDER BY seq, chunk",
                        (user, n, dumps([seq for _, seq, _ in unsealed])),
                    )
                    for seq, group in itertools.groupby(found, key=first):
                        chunks[seq] = [loads(record) for _, record in group]
            finally:
                if conn.in_transaction:
                    conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise self._error(exc, f"read {conv}") from exc
        alive: dict[int | None, bool] = {}
        for index, seq, writer in unsealed:
            if writer not in alive:  # one probe per writer per read; never kept longer
                alive[writer] = self._writer_alive(writer)
            out[index] = rebuild_message(
                str(MessageId(user, n, seq)), seq, chunks.get(seq, []), writer_alive=alive[writer]
            )
        return out

    def _exists(self, conn: sqlite3.Connection, conv: ConversationId) -> bool:
        return (
            conn.execute(
                "SELECT 1 FROM conversations WHERE user_id = ? AND number = ?", (conv.user, conv.n)
            ).fetchone()
            is not None
        )

    def message_count(self, conv: ConversationId) -> int:
        with self._errors(f"count the messages of {conv}"):
            row = (
                self._conn()
                .execute(
                    "SELECT (SELECT count(*) FROM messages WHERE user_id = c.user_id "
                    "AND conversation = c.number AND deleted_at IS NULL) FROM conversations AS c "
                    "WHERE user_id = ? AND number = ?",
                    (conv.user, conv.n),
                )
                .fetchone()
            )
        if row is None:
            raise ConversationNotFound(f"no conversation {conv}")
        count: int = row[0]
        return count

    def delete_message(self, conv: ConversationId, seq: int) -> bool:
        with self._write(f"delete message {seq} of {conv}") as conn:
            row = conn.execute(
                "SELECT deleted_at FROM conversations WHERE user_id = ? AND number = ?",
                (conv.user, conv.n),
            ).fetchone()
            if row is None:
                raise ConversationNotFound(f"no conversation {conv}")
            if row[0] is not None:
                raise ConversationDeleted(f"conversation {conv} is deleted: restore it to write")
            found = conn.execute(
                "SELECT line, writer, deleted_at, document FROM messages "
                "WHERE user_id = ? AND conversation = ? AND seq = ?",
                (conv.user, conv.n, seq),
            ).fetchone()
            if found is None or found[2] is not None:
                return False
            line, writer, _, document = found
            # Not sealed: streaming while its writer's lease is held (a crashed writer's
            # message is interrupted, final, and can go).
            if line is None and self._writer_alive(writer):
                raise InvalidArgument(
                    f"message {MessageId(conv.user, conv.n, seq)} is still streaming: "
                    "it can be deleted once it ends"
                )
            _drop_documents(conn, [document])
            conn.execute(
                "UPDATE messages SET deleted_at = ?, document = NULL "
                "WHERE user_id = ? AND conversation = ? AND seq = ?",
                (utc_now(), conv.user, conv.n, seq),
            )
        return True

    # -- search -----------------------------------------------------------------------------

    def search(
        self,
        user: UserId,
        terms: Sequence[str],
        *,
        limit: int,
        offset: int,
        include_deleted: bool,
    ) -> list[SearchMatch]:
        """The page of ``_search``'s ranking (``_ranked``: two walks of the FTS5 index in the
        user's rowid range, newest first, that stop with the page), then the page's
        conversations and matching messages read by their keys."""
        with self._read(f"search the conversations of {user}") as conn:
            found: list[SearchMatch] = []
            for number, seq in _ranked(conn, user.n, terms, limit, offset, include_deleted):
                row = conn.execute(_GET_CONVERSATION, (user.n, number)).fetchone()
                if row is None:  # the index names a conversation gone: check() reports it
                    continue
                conversation = _conversation(user.n, row)
                text = conversation.title or ""
                if seq is not None:
                    line = conn.execute(
                        "SELECT line FROM messages WHERE user_id = ? AND conversation = ? "
                        "AND seq = ?",
                        (user.n, number, seq),
                    ).fetchone()
                    text = from_line(orjson.loads(line[0])).text if line and line[0] else ""
                found.append(SearchMatch(conversation, seq, text))
        return found

    # -- integrity --------------------------------------------------------------------------

    def check(self, fix: bool) -> list[Problem]:
        """``PRAGMA integrity_check`` and ``foreign_key_check``, then the store's own
        invariants: counters at least every number they hand out, message seqs 1..N and chunk
        seqs 1..k without a gap, every sealed message's line equal to its chunk rows rebuilt.

        ``fix`` repairs what is derived: a counter behind is moved up (never down), a line
        is rebuilt from the chunk rows (a "sealed" message whose chunk rows do not end in a
        terminal record becomes unsealed, and reads back ``interrupted``); and it tidies what
        dead processes left: their lease files and ``instances`` rows, and their unsealed
        messages' writer (an interrupted message is a valid state, never a problem). It never
        deletes a row that holds data. Problems are found in one read snapshot (no lock held
        against writers); the fixes are then applied in one short write transaction, each
        guarded so that a change made meanwhile is never undone.
        """
        problems: list[Problem] = []
        fixes: list[tuple[str, tuple[Any, ...]]] = []
        stale: dict[tuple[int, int, int | None], list[int]] = {}
        where = self.describe()
        with self._read("check the database") as conn:
            for (line,) in conn.execute("PRAGMA integrity_check").fetchall():
                if line != "ok":
                    problems.append(Problem(where, "corrupt", line))
            orphans = conn.execute(
                'SELECT "table", "parent", count(*) FROM pragma_foreign_key_check GROUP BY 1, 2'
            ).fetchall()
            for table, parent, count in orphans:
                problems.append(
                    Problem(f"{where}:{table}", "orphan", f"{count} rows without their {parent}")
                )
            problems += self._check_counters(conn, fixes)
            problems += self._check_gaps(conn)
            problems += self._check_lines(conn, fixes)
            relined = {
                (m.user, m.conversation, m.seq)
                for m in (MessageId.parse(p.path) for p in problems if p.kind == "stale-line")
            }
            problems += self._check_index(conn, stale, relined)
        if fix:
            if fixes or stale:
                with self._write("repair the database") as conn:
                    for sql, params in fixes:
                        conn.execute(sql, params)
                    # After the lines: a document is rebuilt from the repaired line.
                    for key, rowids in stale.items():
                        _reindex(conn, key, rowids)
            problems = [replace(p, fixed=True) if p.kind in FIXABLE else p for p in problems]
            self._tidy_leases()
        return problems

    def _check_counters(
        self, conn: sqlite3.Connection, fixes: list[tuple[str, tuple[Any, ...]]]
    ) -> list[Problem]:
        problems = []
        behind = conn.execute(
            "SELECT c.user_id, c.number, c.last_seq, m.top FROM conversations AS c JOIN "
            "(SELECT user_id, conversation, max(seq) AS top FROM messages GROUP BY 1, 2) AS m "
            "ON m.user_id = c.user_id AND m.conversation = c.number WHERE m.top > c.last_seq"
        ).fetchall()
        for user, n, last, top in behind:
            fixes.append(
                (
                    "UPDATE conversations SET last_seq = max(last_seq, ?) "
                    "WHERE user_id = ? AND number = ?",
                    (top, user, n),
                )
            )
            problems.append(
                Problem(
                    str(ConversationId(user, n)),
                    "counter-behind",
                    f"message counter {last} is behind message {top}",
                )
            )
        behind = conn.execute(
            "SELECT u.id, u.last_conversation, max(c.number) FROM users AS u "
            "JOIN conversations AS c ON c.user_id = u.id GROUP BY u.id "
            "HAVING max(c.number) > u.last_conversation"
        ).fetchall()
        for user, last, top in behind:
            fixes.append(
                (
                    "UPDATE users SET last_conversation = max(last_conversation, ?) WHERE id = ?",
                    (top, user),
                )
            )
            problems.append(
                Problem(
                    str(UserId(user)),
                    "counter-behind",
                    f"conversation counter {last} is behind conversation {top}",
                )
            )
        return problems

    def _check_gaps(self, conn: sqlite3.Connection) -> list[Problem]:
        problems = []
        for user, n, count, top in conn.execute(
            "SELECT user_id, conversation, count(*), max(seq) FROM messages GROUP BY 1, 2 "
            "HAVING count(*) != max(seq) OR min(seq) != 1"
        ).fetchall():
            problems.append(
                Problem(
                    str(ConversationId(user, n)),
                    "gap",
                    f"{count} messages numbered up to {top}: some are missing",
                )
            )
        for user, n, seq, count, top in conn.execute(
            "SELECT user_id, conversation, seq, count(*), max(chunk) FROM chunks GROUP BY 1, 2, 3 "
            "HAVING count(*) != max(chunk) OR min(chunk) != 1"
        ).fetchall():
            problems.append(
                Problem(
                    str(MessageId(user, n, seq)),
                    "gap",
                    f"{count} chunks numbered up to {top}: some are missing",
                )
            )
        return problems

    def _check_lines(
        self, conn: sqlite3.Connection, fixes: list[tuple[str, tuple[Any, ...]]]
    ) -> list[Problem]:
        """Every sealed message's line against its chunk rows, rebuilt."""
        problems = []
        rows = conn.execute(
            "SELECT m.user_id, m.conversation, m.seq, m.line, c.record FROM messages AS m "
            "LEFT JOIN chunks AS c USING (user_id, conversation, seq) "
            "WHERE m.line IS NOT NULL OR m.status != 'streaming' "
            "ORDER BY m.user_id, m.conversation, m.seq, c.chunk"
        )
        for (user, n, seq), group in itertools.groupby(rows, key=lambda r: r[:3]):
            found = list(group)
            mid = MessageId(user, n, seq)
            records = [orjson.loads(r[4]) for r in found if r[4] is not None]
            rebuilt = rebuild_message(str(mid), seq, records, writer_alive=False)
            line = found[0][3]
            try:
                current = from_line(orjson.loads(line)) if line is not None else None
            except (orjson.JSONDecodeError, KeyError, TypeError):
                current = None
            if current == rebuilt:
                continue
            if rebuilt.status in TERMINAL:
                detail = "the sealed message disagrees with its chunk rows"
                change: tuple[str, str | None] = (rebuilt.status, line_of(rebuilt))
            else:
                detail = "sealed, but its chunk rows end without a terminal record"
                change = ("streaming", None)
            fixes.append(
                (
                    "UPDATE messages SET status = ?, line = ?, writer = NULL "
                    "WHERE user_id = ? AND conversation = ? AND seq = ? AND line IS ?",
                    (*change, user, n, seq, line),
                )
            )
            problems.append(Problem(str(mid), "stale-line", detail))
        return problems

    def _check_index(
        self,
        conn: sqlite3.Connection,
        stale: dict[tuple[int, int, int | None], list[int]],
        relined: set[tuple[int, int, int]],
    ) -> list[Problem]:
        """The search index against the rows: every title and finished message (not deleted)
        with words has exactly one document, holding its words, at the rowid its row names;
        nothing else is indexed. ``stale`` gets each document key that disagrees, with the
        rowids found for it (``_reindex`` replaces them). A message whose line is stale
        (``relined``) is not judged by that line: its document is rebuilt after the line is,
        whatever it holds now, and only the line is reported."""
        expected: dict[tuple[int, int, int | None], tuple[str, int | None]] = {}
        for user, n, title, document in conn.execute(
            "SELECT user_id, number, title, title_document FROM conversations"
        ):
            expected[(user, n, None)] = (index_words(title), document)
        for user, n, seq, line, document in conn.execute(
            "SELECT user_id, conversation, seq, line, document FROM messages "
            "WHERE deleted_at IS NULL AND (line IS NOT NULL OR document IS NOT NULL)"
        ):
            try:
                message = from_line(orjson.loads(line)) if line is not None else None
            except (orjson.JSONDecodeError, KeyError, TypeError):
                message = None  # _check_lines reports (and rebuilds) it
            words = index_words(message.text) if message and message.status in TERMINAL else ""
            expected[(user, n, seq)] = (words, document)
        found: dict[tuple[int, int, int | None], list[tuple[int, str]]] = {}
        for rowid, title, body, n, seq in conn.execute(
            "SELECT rowid, title, body, conversation, seq FROM search"
        ):
            key = (rowid >> _DOCUMENT_BITS, n, seq)
            found.setdefault(key, []).append((rowid, title if seq is None else body))
        problems = []
        for key in sorted(expected.keys() | found.keys(), key=_document_order):
            if key in relined:
                stale[key] = [rowid for rowid, _ in found.get(key, [])]
                continue
            words, document = expected.get(key, ("", None))
            docs = found.get(key, [])
            if words:
                good = len(docs) == 1 and docs[0] == (document, words)
            else:
                good = not docs and document is None
            if good:
                continue
            stale[key] = [rowid for rowid, _ in docs]
            user, n, seq = key
            where = ConversationId(user, n) if seq is None else MessageId(user, n, seq)
            what = "title" if seq is None else "text"
            problems.append(
                Problem(str(where), "stale-index", f"the search index disagrees with its {what}")
            )
        return problems

    def _tidy_leases(self) -> None:
        """Forget the leases of processes that are gone (their files, rows and writers)."""
        with self._read("list the leases") as conn:
            numbers = {n for (n,) in conn.execute("SELECT id FROM instances")}
            numbers |= {
                n
                for (n,) in conn.execute(
                    "SELECT DISTINCT writer FROM messages WHERE writer IS NOT NULL"
                )
            }
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            for name in os.listdir(self._leases_dir):
                stem, dot, ext = name.partition(".")
                if stem.isdigit() and dot and ext == "lock":
                    numbers.add(int(stem))
        dead = [n for n in sorted(numbers) if not self._writer_alive(n)]
        if not dead:
            return
        with self._write("forget ended leases") as conn:
            for n in dead:
                conn.execute("DELETE FROM instances WHERE id = ?", (n,))
                conn.execute("UPDATE messages SET writer = NULL WHERE writer = ?", (n,))
        for n in dead:
            # Not held by anyone, and never handed out again: safe to remove.
            _fsio.unlink_quietly(self._lease_path(n))


def _conversation(user: int, row: tuple[Any, ...]) -> Conversation:
    """A ``conversations`` row (``_CONVERSATION_COLUMNS``) of ``user``."""
    return conversations(user, [row])[0]


def _match_expression(terms: Sequence[str], column: str) -> str:
    """The FTS5 query of ``terms`` in ``column``: each a quoted string (nothing in it is
    syntax) and a prefix (``*``), all of them required, in that column only (a row is one
    document: a title has an empty body, a message an empty title)."""
    required = " AND ".join('"' + term.replace('"', '""') + '"*' for term in terms)
    return f"{{{column}}} : ({required})"


def _ranked(
    conn: sqlite3.Connection,
    user: int,
    terms: Sequence[str],
    limit: int,
    offset: int,
    include_deleted: bool,
) -> list[tuple[int, int | None]]:
    """(conversation, seq) of the page ``offset``, ``limit`` of ``_search``'s ranking: the
    conversations whose title matches, newest (highest number) first, then those where only
    a message matches, newest first, each with its latest (highest seq) matching message.

    Each walk (titles, then message texts) reads the user's matching rows in rowid order,
    newest first. A rowid is the order a document was indexed in, not its conversation's
    number (a new message in an old conversation is a new, high rowid), so the walk keeps
    every conversation it meets and stops at the *floor* of the ``k`` newest it holds (``k``
    what the page still needs): the lowest rowid any document of a conversation numbered at
    least the ``k``-th has (``_LOWEST_DOCUMENT``, a range of primary-key rows). Every row
    below it belongs to an older conversation, which cannot enter the page, so the ranking
    is exact; and since conversations are mostly written in order, a common word stops after
    about a page's worth of rows instead of reading its every match. A rare word ends with
    its matches. The floor is recomputed when the ``k``-th conversation changes, at most
    once per ``_FLOOR_EVERY`` rows read (an older floor is lower, so still a valid stop)."""
    need = offset + limit
    low = user << _DOCUMENT_BITS
    high = low + (1 << _DOCUMENT_BITS) - 1
    deleted: dict[int, bool] = {}

    def hidden(number: int) -> bool:
        if include_deleted:
            return False
        if number not in deleted:
            row = conn.execute(
                "SELECT deleted_at IS NOT NULL FROM conversations WHERE user_id = ? AND number = ?",
                (user, number),
            ).fetchone()
            deleted[number] = row is None or bool(row[0])
        return deleted[number]

    page: list[tuple[int, int | None]] = []
    titled: set[int] = set()
    for column, lowest in zip(("title", "body"), _LOWEST_DOCUMENT, strict=True):
        wanted = need - len(page)
        if wanted <= 0:
            break
        latest: dict[int, int] = {}  # conversation -> its highest matching seq (0: title)
        floor = low  # nothing below: the walk ends with the user's rows
        floor_of = None  # the k-th conversation ``floor`` was computed for
        since = _FLOOR_EVERY
        cursor = conn.execute(_WALK, (_match_expression(terms, column), low, high))
        try:
            for rowid, number, seq in cursor:
                if rowid < floor:
                    break
                if number in titled or hidden(number):
                    continue
                seq = seq or 0
                if latest.get(number, -1) < seq:
                    latest[number] = seq
                since += 1
                if len(latest) < wanted or since < _FLOOR_EVERY:
                    continue
                since = 0
                kth = heapq.nlargest(wanted, latest)[-1]
                if kth != floor_of:
                    floor_of = kth
                    lowest_row = conn.execute(lowest, (user, kth)).fetchone()[0]
                    floor = floor if lowest_row is None else lowest_row
        finally:
            cursor.close()
        for number in heapq.nlargest(wanted, latest):
            page.append((number, None if column == "title" else latest[number]))
        if column == "title":
            titled.update(latest)
    return page[offset:need]


def _index_document(
    conn: sqlite3.Connection, user: int, conversation: int, seq: int | None, text: str | None
) -> int | None:
    """Add a document (a title if ``seq`` is None, else a message's text) to the search
    index in the caller's write transaction; its rowid, or None if it has no words."""
    indexed = index_words(text)
    if not indexed:
        return None
    n: int = conn.execute(_NEXT_DOCUMENT, (user,)).fetchone()[0]
    if n >= 1 << _DOCUMENT_BITS:
        raise StorageError(errno.EOVERFLOW, f"user {UserId(user)} has run out of search rows")
    document = user << _DOCUMENT_BITS | n
    conn.execute(
        _INDEX_DOCUMENT,
        (document, indexed, None, conversation, None)
        if seq is None
        else (document, None, indexed, conversation, seq),
    )
    return document


def _index_message(conn: sqlite3.Connection, mid: MessageId, message: Message) -> int | None:
    """Index a message if it is finished (``complete`` or ``error``); its rowid or None."""
    if message.status not in TERMINAL:
        return None
    return _index_document(conn, mid.user, mid.conversation, mid.seq, message.text)


def _drop_documents(conn: sqlite3.Connection, documents: Sequence[int | None]) -> None:
    """Remove documents from the search index by rowid (None: nothing was indexed)."""
    for document in documents:
        if document is not None:
            conn.execute("DELETE FROM search WHERE rowid = ?", (document,))


def _document_order(key: tuple[int, int, int | None]) -> tuple[int, int, int]:
    user, n, seq = key
    return (user, n, -1 if seq is None else seq)


def _reindex(
    conn: sqlite3.Connection, key: tuple[int, int, int | None], rowids: Sequence[int]
) -> None:
    """Rebuild one document from its row as it is now (``check(fix=True)``, in its write
    transaction): the rows found for it and the one its row names go, the current title or
    message text comes in. Read under the write lock, so a write made since the check is
    kept, never undone."""
    user, n, seq = key
    if seq is None:
        row = conn.execute(
            "SELECT title, title_document FROM conversations WHERE user_id = ? AND number = ?",
            (user, n),
        ).fetchone()
        _drop_documents(conn, [*rowids, row[1] if row else None])
        if row is not None:
            conn.execute(
                "UPDATE conversations SET title_document = ? WHERE user_id = ? AND number = ?",
                (_index_document(conn, user, n, None, row[0]), user, n),
            )
        return
    row = conn.execute(
        "SELECT line, document, deleted_at FROM messages "
        "WHERE user_id = ? AND conversation = ? AND seq = ?",
        (user, n, seq),
    ).fetchone()
    _drop_documents(conn, [*rowids, row[1] if row else None])
    if row is None:
        return
    document = None
    if row[0] is not None and row[2] is None:
        message = from_line(orjson.loads(row[0]))
        document = _index_message(conn, MessageId(user, n, seq), message)
    conn.execute(
        "UPDATE messages SET document = ? WHERE user_id = ? AND conversation = ? AND seq = ?",
        (document, user, n, seq),
    )


def _add_search_index(conn: sqlite3.Connection) -> None:
    """Migration 3: the search index, filled from the rows already there (in the migration's
    transaction: a database opened after it always has a complete index)."""
    for sql in (
        "ALTER TABLE users ADD COLUMN last_document INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE conversations ADD COLUMN title_document INTEGER",
        "ALTER TABLE messages ADD COLUMN document INTEGER",
        _SEARCH_TABLE,
    ):
        conn.execute(sql)
    titles = conn.execute(
        "SELECT user_id, number, title FROM conversations WHERE title IS NOT NULL"
    ).fetchall()
    for user, number, title in titles:
        conn.execute(
            "UPDATE conversations SET title_document = ? WHERE user_id = ? AND number = ?",
            (_index_document(conn, user, number, None, title), user, number),
        )
    # Keyset pages: memory stays bounded on a large database, and no cursor is open on
    # ``messages`` while its rows are updated.
    after: tuple[int, int, int] = (0, 0, 0)
    while True:
        rows = conn.execute(
            "SELECT user_id, conversation, seq, line FROM messages "
            "WHERE (user_id, conversation, seq) > (?, ?, ?) AND line IS NOT NULL "
            "AND deleted_at IS NULL ORDER BY user_id, conversation, seq LIMIT 500",
            after,
        ).fetchall()
        if not rows:
            return
        for user, number, seq, line in rows:
            message = from_line(orjson.loads(line))
            conn.execute(
                "UPDATE messages SET document = ? "
                "WHERE user_id = ? AND conversation = ? AND seq = ?",
                (_index_message(conn, MessageId(user, number, seq), message), user, number, seq),
            )
        after = tuple(rows[-1][:3])


class SqliteSink:
    """A streamed message of the SQLite backend: one ``chunks`` row per ``write_chunk``, then
    the seal. Its liveness is the backend's lease (the message row names the instance) until
    it is sealed or released. The lease is per process, not per message: a sink dropped
    without either (``MessageWriter`` never does) reads ``streaming`` until the backend is
    closed or its process ends.

    The sink keeps the records it committed (``KEEP_RECORDS_CHARS`` of JSON at most): the seal
    rebuilds the message from them instead of reading the chunk rows back. Only this sink
    writes this message's chunk rows (its seq is its own), so they are those rows; a record
    that failed to commit, or a stream past the bound, and the seal reads the rows back."""

    def __init__(self, backend: SqliteBackend, message_id: MessageId) -> None:
        self._backend = backend
        self._id = message_id
        self._key = (message_id.user, message_id.conversation, message_id.seq)
        self._open = True
        self._records: list[dict[str, Any]] | None = []
        self._kept = 0  # the length of their JSON

    @property
    def message_id(self) -> MessageId:
        return self._id

    def write_chunk(self, record: dict[str, Any], *, durable: bool) -> None:
        if not self._open:
            self._check_open()
        backend = self._backend
        chunk = record["seq"]
        text = dumps(record)
        try:
            conn = backend._conn()
            level = backend._durable_sync if durable else backend._lazy_sync
            if backend._local.sync != level:
                backend._set_sync(conn, level)
            # One statement, its own transaction: SQLite takes the write lock at its start
            # (waiting busy_timeout for it) exactly as BEGIN IMMEDIATE would. (The message's
            # role was stored with its row by open_stream.)
            self._insert(conn, chunk, text)
        except BaseException as exc:
            self._records = None  # maybe committed, maybe not: the seal reads the rows
            if isinstance(exc, sqlite3.Error):
                raise backend._error(exc, f"write a chunk of {self._id}") from exc
            raise
        records = self._records
        if records is not None:
            self._kept += len(text)
            if self._kept <= KEEP_RECORDS_CHARS:
                records.append(dict(record))  # a copy: the rows hold what it said now
            else:
                self._records = None

    def _insert(self, conn: sqlite3.Connection, chunk: Any, text: str) -> None:
        try:
            conn.execute(_INSERT_CHUNK, (*self._key, chunk, text))
        except sqlite3.IntegrityError as exc:
            if "FOREIGN KEY" in str(exc):  # the message row went with its conversation
                raise ConversationNotFound(f"no conversation {self._id.conversation_id}") from None
            raise StorageError(errno.EEXIST, f"chunk {chunk} of {self._id} exists") from exc

    def seal(self, last: dict[str, Any], *, durable: bool) -> Message:
        if not self._open:
            self._check_open()
        backend = self._backend
        key = self._key
        try:
            text = dumps(last)
            records = self._records
            message: Message | None = None
            if records is not None:
                # Merged before the transaction: the write lock is held for the statements only.
                records.append(last)
                message = rebuild_message(str(self._id), key[2], records, writer_alive=False)
                line = line_of(message)
            conn = backend._conn()
            backend._set_sync(conn, backend._durable_sync if durable else backend._lazy_sync)
            conn.execute("BEGIN IMMEDIATE")
            try:
                self._insert(conn, last["seq"], text)
                if message is None:
                    records = [orjson.loads(r) for (r,) in conn.execute(_SELECT_CHUNKS, key)]
                    message = rebuild_message(str(self._id), key[2], records, writer_alive=False)
                    line = line_of(message)
                # Indexed in the seal's transaction: findable exactly when it is finished.
                document = _index_message(conn, self._id, message)
                conn.execute(_SEAL_MESSAGE, (message.status, message.role, line, document, *key))
                conn.execute(_TOUCH_CONVERSATION, (utc_now(), key[0], key[1]))
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise backend._error(exc, f"seal {self._id}") from exc
        finally:
            self._open = False
            self._records = None
        return message

    def release(self) -> None:
        if not self._open:
            return
        self._open = False
        self._records = None
        if self._backend._closed:
            return  # its lease ended with the backend: the message reads interrupted already
        # Not synced: if this commit is lost, so is the process and its lease (interrupted
        # either way).
        with self._backend._write(f"release {self._id}", durable=False) as conn:
            conn.execute(
                "UPDATE messages SET writer = NULL WHERE user_id = ? AND conversation = ? "
                "AND seq = ? AND line IS NULL",
                self._key,
            )

    def _check_open(self) -> None:
        if not self._open:
            raise WriterClosed(f"message {self._id} is already finished")


def _reset_after_fork() -> None:
    for backend in list(_BACKENDS):
        backend._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)
