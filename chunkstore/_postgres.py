"""The PostgreSQL backend (``postgresql://`` or ``postgres://``, a libpq URI): one database,
several processes on several machines.

It mirrors the SQLite backend's design (``_sqlite.py``); where the engines differ:

* **Driver**: psycopg 3, its sync ``ConnectionPool`` (``psycopg_pool``; at most ``pool_size``
  connections, 10 by default, shared by every thread of the store), no ORM. Connections run in
  autocommit mode with ``prepare_threshold=None`` (no server-side prepared statements), so the
  pool may sit behind a *transaction-mode* pooler (PgBouncer): nothing outlives a transaction
  on a pooled connection (every setting is ``SET LOCAL``). The one exception is the lease
  connection (below).
* **Schema versions**: the ``_migrations`` table, ``MIGRATIONS`` below applied at open by the
  same ~30-line runner as ``_migrations.py`` (written again here for psycopg): one transaction
  per migration, each under a transaction-level advisory lock, so two processes opening a fresh
  database at once apply each migration once (the second waits, then finds it done). A
  database newer than the code is refused (``StoreFormatError``); a schema with tables but no
  ``_migrations`` is not a chunkstore database. The tables go in the connection's current
  schema (``search_path``): several stores can share one database, one schema each
  (``?options=-csearch_path%3Dname``).
* **Tables** (version 1) are SQLite's: ``users`` (``last_conversation`` is the per-user
  counter), ``sessions`` (principal digests), ``conversations`` (``PRIMARY KEY (user_id,
  number)``, ``last_seq`` the message counter), ``messages`` (``PRIMARY KEY (user_id,
  conversation, seq)``, the UNIQUE (conversation, seq) of SPEC §7; ``status``, ``writer``,
  ``line``), ``chunks`` (one row per chunk record, the record verbatim as JSON text, written
  while the reply streams), ``instances`` (leases) and ``health``. Version 2 adds
  ``messages.deleted_at`` (``delete_message`` marks a row; readers skip it). Times are
  ``utc_now()``'s fixed-width ISO text, as on SQLite, so they read back exactly and compare
  in text order (``COLLATE "C"``); JSON is text too (``jsonb`` would reorder a metadata
  object's keys); a title is a ``json`` string, since a ``text`` value cannot hold NUL.
  Foreign keys cascade: a hard delete is one ``DELETE``. A sealed message's merged form is its
  ``line`` (derived; ``check(fix=True)`` rebuilds it), so reads of sealed messages never
  merge chunk rows.
* **Seqs** are claimed in the transaction that inserts the message row: ``UPDATE
  conversations SET last_seq = last_seq + 1 ... RETURNING last_seq`` takes the row's lock, so
  concurrent writers (on any machine) queue on it and the seqs are gap-free and unique; a
  rolled-back claim gives its number back. ``open_stream`` is one statement: the claim's
  ``WHERE`` holds every check (not deleted, under ``max_messages``, the lease held; rechecked
  on the newest row version after a wait), the message row is inserted from what it returns,
  and a claim of nothing is explained by one read after it. Conversation numbers the same way from
  ``users.last_conversation`` (the user's row lock also makes ``max_conversations`` exact).
  User ids are an identity column, new users created under a transaction-level advisory lock
  so that two processes seeing a new principal at once do not both burn a number.
* **Transactions are short**: ``BEGIN`` and its ``SET LOCAL`` settings go in one round trip;
  no transaction is held across a stream (each chunk is its own). The streaming writes (a
  chunk, the start of a stream, a seal) are each ONE round trip and one transaction. The
  start and the seal are one autocommitted statement whose ``WITH`` sets its own settings
  first: ``set_config(name, value, true)`` is ``SET LOCAL`` for that statement's implicit
  transaction, so the settings still end with it (nothing outlives a transaction). A chunk
  (the hot path: half its server time went to planning that ``WITH``) is one simple-protocol
  query of three statements, ``SET LOCAL synchronous_commit; SET LOCAL lock_timeout;
  INSERT``, its values bound client-side: a query of several statements is one implicit
  transaction block, in which ``SET LOCAL`` holds and ends with it. ``synchronous_commit`` is
  read when that transaction commits (checked: after ``on`` the server's WAL flush position
  has passed the commit on return, after ``off`` it has not), ``lock_timeout`` when a lock
  wait begins, after the settings are set.
* **Search** (version 3): ``search_documents`` holds one row per document (a title as seq 0,
  or one finished message), its words as ``_sql.index_words`` folds them, and ``document``,
  a stored generated ``tsvector`` under the ``'simple'`` configuration named explicitly (no
  stemming or stop words, whatever ``default_text_search_config`` says: the same words as
  the other engines), titles weighted A and messages D (weights no search reads any more),
  with a GIN index. A query is ``to_tsquery('simple', ...)`` of quoted ``term:*`` lexemes
  joined by ``&``, ranked by ``_search``'s rule (title hits, then message hits, each newest
  conversation first, a message hit with its latest matching message): per kind, the primary
  key walked backward over the user's newest documents until the page is full (a common
  word), then, if it is not, the GIN index for the older conversations (a rare one), each
  step's plan pinned by ``SET LOCAL`` settings since the planner cannot tell a common prefix
  from a rare one (``_SEARCH_STEPS``, ``_ranked``). Every write keeps
  the documents current in its own transaction (a reply in its seal's one statement); a
  hard delete's go with the conversation's foreign key. ``check`` compares them with the
  rows (``stale-index``; ``fix`` rebuilds them).
* **The seal** merges the records its sink committed (kept up to ``KEEP_RECORDS_CHARS`` of
  JSON, so memory stays bounded; only this sink writes this message's chunk rows, its seq is
  its own) and writes the terminal chunk, the message's status and line and the
  conversation's ``last_message_at`` in one statement. A stream past the bound, or one with a
  failed write (maybe committed, maybe not), reads the chunk rows back in the seal's
  transaction as before.
* **Durability** is ``synchronous_commit``, per transaction (``SET LOCAL``): ``on`` waits
  for the commit's WAL flush. ``"chunk"``: a chunk written ``durable`` commits with ``on``.
  ``"message"``: chunks commit with ``off`` (still atomic and in order: a server crash may only
  lose the latest commits), the seal with ``on``, whose flush covers every earlier commit, so
  the whole message is durable when sealed. ``"none"``: ``off`` everywhere. Metadata writes and
  ``append_message`` commit with ``on`` unless ``"none"``.
* **Locks wait at most ``lock_timeout``**: ``SET LOCAL lock_timeout`` in every write (a row
  lock or an advisory lock not had in time is ``LockTimeout``), and a pool with every
  connection busy for that long is ``LockTimeout`` too.
* **Liveness without timeouts: a per-process lease.** The first ``open_stream`` of a backend
  opens ONE dedicated connection (never from the pool), takes an instance number (a row of
  ``instances``, an identity: never handed out twice) and holds the session-level advisory
  lock ``pg_advisory_lock(<the store's namespace>, <instance>)`` on it for the backend's
  lifetime. The namespace is the oid of the store's ``instances`` table, so stores in
  different schemas of one database never share a lease. A streaming message row names its
  writer instance; a reader says ``streaming`` while that advisory lock is held (``pg_locks``:
  ``locktype = 'advisory'``, ``granted``, matching ``classid``/``objid``), ``interrupted``
  otherwise: one query per read, for every unsealed message at once, probed *before* those
  messages' rows are read again (a writer dead at the probe never comes back, so a message
  still unsealed after it is truly interrupted). The server drops the lock when the session
  ends: a killed process (``SIGKILL`` included), a closed or broken connection. So 200
  concurrent streams of one process need the pool plus one connection, never 200.
  ``release()`` sets the message's writer to NULL (``interrupted`` at once). ``close()`` ends
  the lease.

  *If the lease connection dies* (a server restart, a network cut, ``pg_terminate_backend``)
  the lease is gone: every reply of the process that is still streaming reads
  ``interrupted`` from then on (a reply sealed later still reads complete). The next
  ``open_stream`` notices (the message row is only inserted while its lease is held, checked
  in the same statement) and takes a new number on a new connection. That check is not a
  ``pg_locks`` scan (which copies the server's whole lock table): it is
  ``pg_try_advisory_xact_lock_shared(<namespace>, <instance>)``, false exactly while some
  session holds the lease's exclusive lock (it never waits: the lease's number is never
  waited for by anyone). Were the lease gone, it takes a *shared* lock until that statement
  ends (and the claim is undone); readers count only ``ExclusiveLock`` as a lease held, so
  that moment never makes a dead lease look alive. A machine that vanishes
  without closing its TCP connection keeps its lease until the server gives the connection
  up: the lease session sets ``tcp_keepalives_idle=10``, ``tcp_keepalives_interval=5``,
  ``tcp_keepalives_count=3`` (about 25 s over TCP) and turns ``idle_session_timeout`` off.

  *Poolers*: a session advisory lock needs a real session. The lease connection must reach
  the server directly or through a *session-mode* pooler, never a transaction-mode one (which
  would hand the session, and the lock, to other clients between statements). The pooled
  connections may use either mode.
* **Fork**: a forked child never uses the parent's pool nor lease connection (psycopg's
  finalizers leave a parent's connection alone in a child): it opens its own on first use.
* **Errors** become the chunkstore tree (``_storage_error``): a lock not had in time
  (``lock_not_available``, ``query_canceled``) is ``LockTimeout``; a full disk
  ``StorageError(ENOSPC)``; a refused login ``StorageError(EACCES)``; a missing database
  ``StorageError(ENOENT)``; a lost or refused connection and anything else the server reports
  ``StorageError(EIO)``. Messages show the URL with its password hidden.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import socket
import threading
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import orjson
import psycopg
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool, PoolClosed, PoolTimeout

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
from ._url import redact_url
from ._writer import utc_now

__all__ = ["MIGRATIONS", "PostgresBackend", "PostgresSink", "migrate", "version_of"]

# A session found on another user's row stays there (imports, re-registration): never moved.
_ADD_SESSION = (
    "INSERT INTO sessions (digest, user_id) VALUES (%s, %s) ON CONFLICT (digest) DO NOTHING"
)

DURABILITY_MODES = ("chunk", "message", "none")
DEFAULT_POOL_SIZE = 10

Conn = psycopg.Connection[tuple[Any, ...]]
#: A migration: its name and its steps, run in order in one transaction: a statement, or a
#: function of the connection for what SQL alone cannot do (the search index is filled with
#: words that Python folds, as ``_search`` does).
Migration = tuple[str, tuple["str | Callable[[Conn], None]", ...]]

MIGRATIONS: list[Migration] = [
    (
        "initial schema",
        (
            """CREATE TABLE users (
                id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                created_at text NOT NULL,
                last_conversation bigint NOT NULL DEFAULT 0
            )""",
            """CREATE TABLE sessions (
                digest text PRIMARY KEY,
                user_id bigint NOT NULL REFERENCES users (id)
            )""",
            """CREATE TABLE conversations (
                user_id bigint NOT NULL REFERENCES users (id),
                number bigint NOT NULL,
                title json,
                created_at text NOT NULL,
                updated_at text NOT NULL,
                pinned boolean NOT NULL DEFAULT false,
                metadata text NOT NULL DEFAULT '{}',
                participants text NOT NULL DEFAULT '[]',
                deleted_at text,
                last_seq bigint NOT NULL DEFAULT 0,
                last_message_at text,
                PRIMARY KEY (user_id, number)
            )""",
            """CREATE TABLE messages (
                user_id bigint NOT NULL,
                conversation bigint NOT NULL,
                seq bigint NOT NULL,
                role text,
                status text NOT NULL,
                writer integer,
                created_at text NOT NULL,
                line text,
                PRIMARY KEY (user_id, conversation, seq),
                FOREIGN KEY (user_id, conversation)
                    REFERENCES conversations (user_id, number) ON DELETE CASCADE
            )""",
            """CREATE TABLE chunks (
                user_id bigint NOT NULL,
                conversation bigint NOT NULL,
                seq bigint NOT NULL,
                chunk bigint NOT NULL,
                record text NOT NULL,
                PRIMARY KEY (user_id, conversation, seq, chunk),
                FOREIGN KEY (user_id, conversation, seq)
                    REFERENCES messages (user_id, conversation, seq) ON DELETE CASCADE
            )""",
            """CREATE TABLE instances (
                id integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                pid integer NOT NULL,
                host text NOT NULL,
                started_at text NOT NULL
            )""",
            """CREATE TABLE health (
                id integer PRIMARY KEY CHECK (id = 1),
                pinged_at text NOT NULL
            )""",
        ),
    ),
    (
        # ``Store.delete_message``: the row stays (its seq stays claimed, seqs stay gap-free),
        # marked; readers skip it. Like the file store's tombstone (and SQLite's migration 2),
        # it hides, it does not erase.
        "deleted messages",
        ("ALTER TABLE messages ADD COLUMN deleted_at text",),
    ),
    (
        # The search index: one row per document, a conversation's title (seq 0: messages
        # count from 1) or one finished message's text, as ``_sql.index_words`` (folded words,
        # space-separated); ``document`` is its tsvector under the 'simple' configuration,
        # named explicitly (no stemming, no stop words: the other engines have neither, and a
        # query must mean the same whatever ``default_text_search_config`` says), titles
        # weighted A and messages D (for ``ts_rank``, which ranked searches until the ranking
        # became ``_search``'s kind-then-recency rule; kept: a migration is never edited).
        # A generated column: it can never disagree with ``words``. The GIN index is what a
        # search reads for a rare word; the conversation's foreign key takes a hard delete's
        # documents with it.
        "search index",
        (
            """CREATE TABLE search_documents (
                user_id bigint NOT NULL,
                conversation bigint NOT NULL,
                seq bigint NOT NULL,
                words text NOT NULL,
                document tsvector GENERATED ALWAYS AS (
                    setweight(to_tsvector('simple'::regconfig, words),
                              CASE WHEN seq = 0 THEN 'A'::"char" ELSE 'D'::"char" END)
                ) STORED,
                PRIMARY KEY (user_id, conversation, seq),
                FOREIGN KEY (user_id, conversation)
                    REFERENCES conversations (user_id, number) ON DELETE CASCADE
            )""",
            "CREATE INDEX search_documents_document ON search_documents USING gin (document)",
            lambda conn: _fill_search_index(conn),
        ),
    ),
]

# pg_advisory_xact_lock(_SCHEMA_LOCK, 0) serializes migrations ("csk" + "M").
_SCHEMA_LOCK = 0x63736B4D

_CONVERSATION_COLUMNS = (
    "user_id, number, title, created_at, updated_at, pinned, metadata, participants, deleted_at"
)
# update_conversation's keys -> (column, how the value is stored)
_UPDATABLE: dict[str, tuple[str, Any]] = {
    "title": ("title", lambda v: _json_text(v)),
    "pinned": ("pinned", lambda v: bool(v)),
    "metadata": ("metadata", lambda v: dumps(dict(v))),
    "deleted_at": ("deleted_at", lambda v: v),
}
_MESSAGE_KEY = "user_id = %s AND conversation = %s AND seq = %s"
# A user's conversations, without the user column (the caller knows it): ``_sql.conversations``.
_LISTED_COLUMNS = (
    "number, title, created_at, updated_at, pinned, metadata, participants, deleted_at"
)
# The seq of a title's search document (messages count from 1).
_TITLE = 0
# Of a document, PostgreSQL indexes at most this many characters of words: a tsvector holds
# at most 1 MB (a longer one is an error that would fail the write). Past it, a message's
# text is still stored whole; only its end is not searchable.
_MAX_INDEXED_CHARS = 200_000
# A search: ``_search``'s ranking, the conversations whose title matches, newest first, then
# those where only a message does, newest first, each with its latest matching message
# (``_ranked``). Each kind is read in up to two steps, each with its plan pinned (the
# planner cannot tell a common prefix from a rare one: it estimates a ``:*`` tsquery from
# statistics that may not cover it, and a wrong guess costs either way; measured on 10,000
# conversations, 99 ms when it chose the GIN index for ``the`` and read its 35,000 matches):
#
# * the *walk*: the primary key backward (``user_id, conversation DESC, seq DESC``) over the
#   user's newest ``_WINDOWS`` documents of the kind (their lowest conversation is the
#   statement's first subquery), each document tested, stopping at ``LIMIT``: a common word
#   fills the page after about a page's worth of rows. Bitmap scans are off (``SET LOCAL``),
#   so the GIN index cannot be chosen for it.
# * the *rest*, only when the walk's window held fewer matches than the page needs (so the
#   word is rare among the newest documents): the GIN index for the conversations below the
#   window, then a sort of those few matches. Plain index scans are off, so the primary key
#   cannot be walked for it.
#
# ``%(q)s`` is the tsquery text (``_tsquery``: quoted prefix lexemes), parsed by the same
# 'simple' configuration as the documents. Soft deletion is a lookup of the conversation by its
# key for each matching document (a correlated subquery: never a join that would read every
# conversation of the user); a message hit leaves out the conversations whose title matches
# (all known by then: the title steps found fewer than the page).
# The walks' windows, titles and messages: about the newest 500 conversations each (a
# conversation has one title and a few messages). A word the page's conversations do not
# find in them holds at most ~4% of the documents (a few hundred or thousand for 10,000
# conversations): few enough for the GIN index and a sort.
_WINDOWS = (500, 2000)
_VISIBLE = (
    "(%(deleted)s OR (SELECT c.deleted_at FROM conversations AS c "
    "WHERE c.user_id = d.user_id AND c.number = d.conversation) IS NULL)"
)
_MATCHING = (
    "FROM search_documents AS d WHERE d.user_id = %(user)s AND {kind} "
    "AND d.document @@ to_tsquery('simple'::regconfig, %(q)s) "
    f"AND {_VISIBLE} AND d.conversation <> ALL(%(titled)s) AND {{range}} "
)
# Per kind (a title is the seq-0 document): where the window starts (the conversation of the
# user's ``_WINDOWS``-th newest document of the kind; None: the window is all of them), the
# walk (the window's conversations) and the rest (those below it), each a page of
# (conversation, seq): a message hit's seq is its conversation's latest matching one.
_SEARCH_STEPS = tuple(
    (
        (
            "SELECT d.conversation FROM search_documents AS d "
            f"WHERE d.user_id = %(user)s AND {kind} "
            f"ORDER BY d.conversation DESC, d.seq DESC OFFSET {window - 1} LIMIT 1"
        ).encode(),
        *(
            (
                "SELECT DISTINCT ON (d.conversation) d.conversation, d.seq "
                + _MATCHING.format(kind=kind, range=range_)
                + "ORDER BY d.conversation DESC, d.seq DESC LIMIT %(need)s"
            ).encode()
            for range_ in ("d.conversation >= %(start)s", "d.conversation < %(start)s")
        ),
    )
    for kind, window in zip(("d.seq = 0", "d.seq > 0"), _WINDOWS, strict=True)
)
# The plan settings of the walk and of the rest (sequential scans are priced out for both).
_STEP_SETTINGS = (
    b"SET LOCAL enable_bitmapscan = off; SET LOCAL enable_indexscan = on",
    b"SET LOCAL enable_bitmapscan = on; SET LOCAL enable_indexscan = off",
)
# The page's hits in order (%s: the conversations' numbers, their seqs: 0 for a title; the
# user): each conversation and, for a message hit, its line, by their primary keys.
_SEARCH_HITS = (
    "SELECT p.seq, m.line, "
    + ", ".join(f"c.{c.strip()}" for c in _LISTED_COLUMNS.split(","))
    + " FROM unnest(%s::bigint[], %s::bigint[]) WITH ORDINALITY AS p (number, seq, i) "
    "JOIN conversations AS c ON c.user_id = %s AND c.number = p.number "
    "LEFT JOIN messages AS m ON m.user_id = c.user_id AND m.conversation = c.number "
    "AND m.seq = p.seq ORDER BY p.i"
).encode()
_SELECT_CONVERSATION = (
    f"SELECT {_LISTED_COLUMNS} FROM conversations WHERE user_id = %s AND number = %s"
).encode()
_SELECT_PAGE_ALL = (
    f"SELECT {_LISTED_COLUMNS} FROM conversations WHERE user_id = %s AND number < %s "
    "ORDER BY number DESC LIMIT %s"
).encode()
_SELECT_PAGE = (
    f"SELECT {_LISTED_COLUMNS} FROM conversations WHERE user_id = %s AND number < %s "
    "AND deleted_at IS NULL ORDER BY number DESC LIMIT %s"
).encode()
# The instances whose lease is held now, among those asked (%s: the namespace, the numbers).
_HELD_LEASES = (
    "SELECT objid::int8 FROM pg_locks WHERE locktype = 'advisory' AND granted "
    "AND mode = 'ExclusiveLock' "
    "AND objsubid = 2 AND classid::int8 = %s AND objid::int8 = ANY(%s::int8[]) "
    "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
)
# Settings of the lease session: a vanished client's lease ends (TCP keepalives), and an idle
# lease is never timed out. Only the settings this server knows are set.
_LEASE_SETTINGS = (
    "SELECT set_config(s.name, s.value, false) FROM (VALUES "
    "('tcp_keepalives_idle', '10'), ('tcp_keepalives_interval', '5'), "
    "('tcp_keepalives_count', '3'), ('idle_session_timeout', '0'), "
    "('idle_in_transaction_session_timeout', '0')) AS s (name, value) "
    "WHERE s.name IN (SELECT name FROM pg_settings)"
)

# A chunk: ONE simple-protocol query (client-side binding), its settings then the row. A
# query of several statements is one implicit transaction, in which ``SET LOCAL`` holds (and
# ends with it): the same settings as a ``WITH`` of set_config, at half the server's work
# (planning ``INSERT ... SELECT ... FROM`` that ``WITH`` cost as much as the insert itself).
# {0}: synchronous_commit, {1}: lock_timeout.
_INSERT_CHUNK = (
    "SET LOCAL synchronous_commit = {0}; SET LOCAL lock_timeout = '{1}'; "
    "INSERT INTO chunks (user_id, conversation, seq, chunk, record) VALUES (%s, %s, %s, %s, %s)"
)
# The other streaming writes, each one autocommitted statement ({} : PostgresBackend._settings).
# A seal from the records the sink kept: the terminal chunk row, the message's status and
# line, the conversation's last_message_at; each step reads the one before it, so they run in
# that order (the settings first) and all or none commit.
_SEAL = (
    "WITH s AS ({}), "
    "k AS (INSERT INTO chunks (user_id, conversation, seq, chunk, record) "
    "SELECT %s, %s, %s, %s, %s FROM s RETURNING 1), "
    "m AS (UPDATE messages SET status = %s, writer = NULL, role = %s, line = %s "
    "WHERE user_id = %s AND conversation = %s AND seq = %s AND EXISTS (SELECT FROM k) "
    "RETURNING user_id, conversation, seq), "
    # The message's search document, in the seal's statement: findable once finished.
    "d AS (INSERT INTO search_documents (user_id, conversation, seq, words) "
    "SELECT m.user_id, m.conversation, m.seq, w.words FROM m, (SELECT %s::text AS words) AS w "
    "WHERE w.words IS NOT NULL) "
    "UPDATE conversations SET last_message_at = %s "
    "WHERE user_id = %s AND number = %s AND EXISTS (SELECT FROM m)"
)
# open_stream: the seq claimed by one UPDATE whose WHERE holds every check (the conversation
# not deleted, the message limit, the lease held), the message row inserted from what it
# returns. The lease probe: pg_try_advisory_xact_lock_shared conflicts only with the lease's
# exclusive session lock, so it returns false exactly while the lease is held (and never
# waits); when the lease is gone it takes a shared lock until this transaction ends, which
# _HELD_LEASES does not count (ExclusiveLock only).
_START = (
    "WITH s AS ({}), "
    "c AS (UPDATE conversations SET last_seq = last_seq + 1, last_message_at = %(now)s FROM s "
    "WHERE user_id = %(user)s AND number = %(n)s AND deleted_at IS NULL "
    "AND last_seq < %(limit)s "
    "AND NOT pg_try_advisory_xact_lock_shared(%(space)s::int8::bit(32)::int4, %(instance)s) "
    "RETURNING last_seq) "
    "INSERT INTO messages (user_id, conversation, seq, role, status, writer, created_at) "
    "SELECT %(user)s, %(n)s, last_seq, %(role)s, 'streaming', %(instance)s, %(now)s FROM c "
    "RETURNING seq"
)
# Why _START claimed nothing (read after it, in its own snapshot).
_WHY_NOT_STARTED = (
    "SELECT deleted_at, last_seq, "
    "NOT pg_try_advisory_xact_lock_shared(%s::int8::bit(32)::int4, %s) "
    "FROM conversations WHERE user_id = %s AND number = %s"
)

_INSERT_CHUNK_ROW = (
    "INSERT INTO chunks (user_id, conversation, seq, chunk, record) VALUES (%s, %s, %s, %s, %s)"
)
# A sink keeps the records it committed up to this much JSON (a reply of a few thousand
# tokens): its seal merges them instead of reading the chunk rows back (as on SQLite).


# Every live backend, so one fork handler can reset them all in the child.
_BACKENDS: weakref.WeakSet[PostgresBackend] = weakref.WeakSet()
# In a forked child, the parent's pools and connections: kept referenced, never used.
_INHERITED: list[object] = []


def _indexed(message: Message) -> str | None:
    """A message's search document (``_sql.index_words``, at most ``_MAX_INDEXED_CHARS``),
    or None when it has none: not finished, or no words."""
    if message.status not in TERMINAL:
        return None
    return _document_words(message.text)


def _document_words(text: str | None) -> str | None:
    words = index_words(text)
    if len(words) > _MAX_INDEXED_CHARS:
        cut = words.rfind(" ", 0, _MAX_INDEXED_CHARS + 1)
        words = words[: cut if cut > 0 else _MAX_INDEXED_CHARS]
    return words or None


def _index_document(
    conn: Conn, user: int, conversation: int, seq: int, source: Message | str | None
) -> None:
    """Make the search document of a title (``seq`` ``_TITLE``, ``source`` the title) or a
    message (``source`` the message) what it now is, in the caller's transaction: replaced,
    or removed when there is none."""
    words = _indexed(source) if isinstance(source, Message) else _document_words(source)
    if words is None:
        conn.execute(
            f"DELETE FROM search_documents WHERE {_MESSAGE_KEY}", (user, conversation, seq)
        )
    else:
        conn.execute(
            "INSERT INTO search_documents (user_id, conversation, seq, words) "
            "VALUES (%s, %s, %s, %s) ON CONFLICT (user_id, conversation, seq) "
            "DO UPDATE SET words = excluded.words",
            (user, conversation, seq, words),
        )


def _tsquery(terms: Sequence[str]) -> str:
    """The ``to_tsquery`` text of ``terms``: each a quoted lexeme (quotes doubled and
    backslashes escaped, so nothing in a term is tsquery syntax) matched as a prefix
    (``:*``), all of them required (``&``)."""
    quoted = ("'" + term.replace("\\", "\\\\").replace("'", "''") + "':*" for term in terms)
    return " & ".join(quoted)


def _ranked(
    conn: Conn, user: int, terms: Sequence[str], limit: int, offset: int, include_deleted: bool
) -> list[tuple[int, int | None]]:
    """(conversation, seq: None for a title) of the page ``offset``, ``limit``: each kind's
    walk, then, if the page is still short, its rest (``_SEARCH_STEPS``), in the caller's
    transaction. The walk's and the rest's conversations do not overlap (the window's first
    conversation divides them), and every match of a conversation in the window is in the
    walk's range: the result is the exact ranking, whichever step found it."""
    need = offset + limit
    params: dict[str, Any] = {
        "q": _tsquery(terms),
        "user": user,
        "deleted": include_deleted,
        "titled": [],
    }
    page: list[tuple[int, int | None]] = []
    for title, (window, walk, rest) in zip((True, False), _SEARCH_STEPS, strict=True):
        params["need"] = need - len(page)
        if params["need"] <= 0:
            break
        conn.execute(_STEP_SETTINGS[0])
        start = conn.execute(window, params).fetchone()
        params["start"] = 0 if start is None else start[0]
        found = conn.execute(walk, params).fetchall()
        if len(found) < params["need"] and start is not None:
            conn.execute(_STEP_SETTINGS[1])
            params["need"] -= len(found)
            found += conn.execute(rest, params).fetchall()
        page += [(number, None if title else seq) for number, seq in found]
        if title:
            params["titled"] = [number for number, _ in found]
    return page[offset:need]


def _reindex(conn: Conn, key: tuple[int, int, int]) -> None:
    """Rebuild one search document from its row as it is now (``check(fix=True)``, in its
    write transaction, under the row's lock: a write made since the check is kept)."""
    user, n, seq = key
    if seq == _TITLE:
        row = conn.execute(
            "SELECT title FROM conversations WHERE user_id = %s AND number = %s FOR UPDATE",
            (user, n),
        ).fetchone()
        _index_document(conn, user, n, seq, row[0] if row else None)
        return
    found = conn.execute(
        f"SELECT line, deleted_at FROM messages WHERE {_MESSAGE_KEY} FOR UPDATE", key
    ).fetchone()
    live = found is not None and found[0] is not None and found[1] is None
    message = from_line(orjson.loads(found[0])) if live and found else None
    _index_document(conn, user, n, seq, message)


def _fill_search_index(conn: Conn) -> None:
    """Migration 3's last step: the documents of the rows already there, in the migration's
    transaction (a store opened after it always has a complete index). Read in keyset pages,
    so memory stays bounded on a large database."""
    after = (0, 0)
    while True:
        rows = conn.execute(
            "SELECT user_id, number, title FROM conversations WHERE (user_id, number) > (%s, %s) "
            "ORDER BY user_id, number LIMIT 500",
            after,
        ).fetchall()
        if not rows:
            break
        for user, number, title in rows:
            _index_document(conn, user, number, _TITLE, title)  # psycopg loads the json
        after = rows[-1][:2]
    position = (0, 0, 0)
    while True:
        rows = conn.execute(
            "SELECT user_id, conversation, seq, line FROM messages "
            "WHERE (user_id, conversation, seq) > (%s, %s, %s) AND line IS NOT NULL "
            "AND deleted_at IS NULL ORDER BY user_id, conversation, seq LIMIT 500",
            position,
        ).fetchall()
        if not rows:
            return
        for user, number, seq, line in rows:
            _index_document(conn, user, number, seq, from_line(orjson.loads(line)))
        position = rows[-1][:3]


def _json_text(value: str | None) -> str | None:
    """A title as stored: a JSON string (PostgreSQL text cannot hold NUL, JSON escapes it)."""
    return None if value is None else dumps(value)


def _storage_error(exc: Exception, action: str, timeout: float) -> ChunkstoreError:
    """The chunkstore error for a psycopg or pool error (its ``__cause__``)."""
    text = redact_url(str(exc).strip())
    err: ChunkstoreError
    if isinstance(exc, PoolTimeout):
        err = LockTimeout(f"{action}: no database connection free within {timeout}s ({text})")
    elif isinstance(exc, PoolClosed):
        err = StorageError(errno.EBADF, f"{action}: the store is closed")
    elif isinstance(exc, pg_errors.LockNotAvailable | pg_errors.QueryCanceled):
        err = LockTimeout(f"{action}: a lock was not had within {timeout}s ({text})")
    elif isinstance(exc, pg_errors.DiskFull):
        err = StorageError(errno.ENOSPC, f"{action}: {text}")
    elif isinstance(exc, pg_errors.OutOfMemory):
        err = StorageError(errno.ENOMEM, f"{action}: {text}")
    elif isinstance(
        exc,
        pg_errors.InsufficientPrivilege
        | pg_errors.InvalidAuthorizationSpecification
        | pg_errors.InvalidPassword,
    ):
        err = StorageError(errno.EACCES, f"{action}: {text}")
    elif isinstance(exc, pg_errors.ReadOnlySqlTransaction):
        err = StorageError(errno.EROFS, f"{action}: {text}")
    elif isinstance(exc, pg_errors.InvalidCatalogName) or (
        # A refused connection has no SQLSTATE: only the server's message tells.
        isinstance(exc, psycopg.OperationalError)
        and "database" in text
        and "does not exist" in text
    ):
        err = StorageError(errno.ENOENT, f"{action}: {text}")
    elif isinstance(exc, psycopg.OperationalError) and "authentication failed" in text:
        err = StorageError(errno.EACCES, f"{action}: {text}")
    else:  # a lost or refused connection, corruption, anything else the server reports
        err = StorageError(errno.EIO, f"{action}: {text}")
    err.__cause__ = exc
    return err


# -- migrations (the runner of _migrations.py, for psycopg) ------------------------------------


def version_of(conn: Conn, *, what: str = "the database") -> int:
    """The schema version of the store in ``conn``'s current schema (0: none yet)."""
    has_migrations, has_tables = conn.execute(
        "SELECT to_regclass(format('%I._migrations', current_schema())) IS NOT NULL, "
        "EXISTS (SELECT 1 FROM pg_tables WHERE schemaname = current_schema())"
    ).fetchone() or (False, False)
    if not has_migrations:
        if has_tables:
            raise StoreFormatError(
                f"{what} has tables but no _migrations table: not a chunkstore database"
            )
        return 0
    row = conn.execute("SELECT coalesce(max(version), 0) FROM _migrations").fetchone()
    return int(row[0]) if row else 0


def migrate(
    conn: Conn, migrations: Sequence[Migration], *, what: str, lock_timeout: float = 30.0
) -> int:
    """Bring the store on ``conn`` (autocommit) up to ``len(migrations)``; return it.

    A store already at the code's version costs two reads and takes no lock; else each step
    waits at most ``lock_timeout`` for its locks (another process migrating, or a table's
    readers), then raises ``lock_not_available``.
    """
    lock_ms = f"{max(1, round(lock_timeout * 1000))}ms"
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
        with conn.transaction():
            conn.execute(f"SET LOCAL lock_timeout = '{lock_ms}'".encode())
            conn.execute("SELECT pg_advisory_xact_lock(%s, 0)", (_SCHEMA_LOCK,))
            # Read again under the lock: another process may have migrated meanwhile.
            if version_of(conn, what=what) == current:
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS _migrations (version integer PRIMARY KEY, "
                    "name text NOT NULL, applied_at text NOT NULL)"
                )
                name, steps = migrations[current]
                for step in steps:
                    if isinstance(step, str):
                        conn.execute(step.encode())
                    else:
                        step(conn)
                conn.execute(
                    "INSERT INTO _migrations (version, name, applied_at) VALUES (%s, %s, %s)",
                    (current + 1, name, utc_now()),
                )


class _LeaseLost(Exception):
    """Internal: the backend's lease ended (its connection died); take a new one."""


class PostgresBackend:
    """The PostgreSQL backend (see the module docstring); implements ``_backend.Backend``.

    ``url``: a libpq URI (``postgresql://user:pw@host:5432/db?options=...``).
    ``durability``: ``"chunk"``, ``"message"`` or ``"none"``, as for every backend.
    ``lock_timeout``: how long a write waits for a lock, or for a free pooled connection.
    ``pool_size``: the most connections the pool opens (the lease connection comes on top).
    """

    def __init__(
        self,
        url: str,
        *,
        durability: str = "chunk",
        lock_timeout: float = 30.0,
        pool_size: int = DEFAULT_POOL_SIZE,
    ) -> None:
        if durability not in DURABILITY_MODES:
            raise InvalidArgument(f"durability must be one of {DURABILITY_MODES}")
        if pool_size < 1:
            raise InvalidArgument("pool_size must be at least 1")
        self.url = url
        self.durability = durability
        self.lock_timeout = lock_timeout
        self.pool_size = pool_size
        try:
            params = conninfo_to_dict(url)
        except psycopg.Error as exc:
            raise InvalidArgument(
                f"{self.describe()} is not a PostgreSQL URL ({redact_url(str(exc))})"
            ) from None
        self._connect_options: dict[str, Any] = {"autocommit": True, "prepare_threshold": None}
        if "connect_timeout" not in params:
            self._connect_options["connect_timeout"] = 10
        # lock_timeout 0 would mean "wait forever" to the server: 1 ms is the least.
        self._lock_ms = f"{max(1, round(lock_timeout * 1000))}ms"
        self._sync_durable = "off" if durability == "none" else "on"
        # The streaming writes, each ONE autocommitted statement that sets its transaction's
        # settings itself (set_config(..., true) is SET LOCAL), by durable: see _settings.
        self._insert_chunk = {
            d: _INSERT_CHUNK.format(self._sync_durable if d else "off", self._lock_ms).encode()
            for d in (False, True)
        }
        self._seal_sql = {d: _SEAL.format(self._settings(d)).encode() for d in (False, True)}
        self._start_sql = _START.format(self._settings(True)).encode()
        self._closed = False
        self._pid = os.getpid()
        self._guard = threading.Lock()
        self._lease_guard = threading.Lock()
        self._pool: ConnectionPool[Conn] | None = None
        self._lease: Conn | None = None
        self._instance: int | None = None
        self._space = 0  # the lease namespace: the oid of this store's instances table
        with self._errors("open the database"), self._connect() as conn:
            migrate(conn, MIGRATIONS, what=self.describe(), lock_timeout=lock_timeout)
            row = conn.execute(
                "SELECT format('%I.instances', current_schema())::regclass::oid::int8"
            ).fetchone()
            self._space = int(row[0]) if row else 0
        _BACKENDS.add(self)

    def describe(self) -> str:
        return redact_url(self.url)

    def __repr__(self) -> str:
        return f"PostgresBackend({self.describe()!r}, durability={self.durability!r})"

    # -- connections and transactions ------------------------------------------------------

    def _connect(self) -> Conn:
        conn: Conn = psycopg.connect(self.url, **self._connect_options)
        return conn

    def _get_pool(self) -> ConnectionPool[Conn]:
        if self._pid != os.getpid():
            self._after_fork()
        pool = self._pool
        if pool is not None:
            return pool
        with self._guard:
            if self._closed:
                raise StorageError(errno.EBADF, f"{self.describe()} is closed")
            if self._pool is None:
                self._pool = ConnectionPool(
                    self.url,
                    kwargs=self._connect_options,
                    min_size=1,
                    max_size=self.pool_size,
                    timeout=self.lock_timeout,
                    name="chunkstore",
                    open=False,
                )
                self._pool.open(wait=False)
            return self._pool

    def _after_fork(self) -> None:
        """In a forked child: forget the parent's pool and lease (never use them)."""
        self._guard = threading.Lock()
        self._lease_guard = threading.Lock()
        self._pid = os.getpid()
        _INHERITED.extend(x for x in (self._pool, self._lease) if x is not None)
        self._pool = None
        self._lease, self._instance = None, None

    def _settings(self, durable: bool) -> str:
        """The per-transaction settings of a write of one statement, as a one-row query for
        its ``WITH``: ``set_config(name, value, true)`` is ``SET LOCAL``, so it holds for that
        statement's implicit transaction and governs its commit (``synchronous_commit`` is
        read when the transaction commits; ``lock_timeout`` when a lock wait begins, and the
        statements below read this row before they touch a row another transaction may hold).
        """
        sync = self._sync_durable if durable else "off"
        return (
            f"SELECT set_config('synchronous_commit', '{sync}', true), "
            f"set_config('lock_timeout', '{self._lock_ms}', true)"
        )

    def _error(self, exc: Exception, action: str) -> ChunkstoreError:
        """``exc`` (psycopg's or the pool's) as the chunkstore error of ``action``."""
        return _storage_error(exc, f"{self.describe()}: cannot {action}", self.lock_timeout)

    @contextlib.contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        try:
            yield
        except (psycopg.Error, PoolTimeout, PoolClosed) as exc:
            raise _storage_error(
                exc, f"{self.describe()}: cannot {action}", self.lock_timeout
            ) from exc

    @contextlib.contextmanager
    def _read(self, action: str) -> Iterator[Conn]:
        """A pooled connection for reads (autocommit: each statement its own snapshot)."""
        with self._errors(action), self._get_pool().connection() as conn:
            yield conn

    @contextlib.contextmanager
    def _write(self, action: str, *, durable: bool = True) -> Iterator[Conn]:
        """One write transaction, committed ``durable`` (``synchronous_commit``, see the
        module docstring) unless the store's durability is ``"none"``."""
        sync = self._sync_durable if durable else "off"
        with self._errors(action), self._get_pool().connection() as conn:
            conn.execute(
                f"BEGIN; SET LOCAL synchronous_commit = {sync}; "
                f"SET LOCAL lock_timeout = '{self._lock_ms}'".encode()
            )
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                    with contextlib.suppress(psycopg.Error):
                        conn.execute("ROLLBACK")
                raise

    def close(self) -> None:
        if self._pid != os.getpid():
            self._after_fork()
        _BACKENDS.discard(self)
        with self._lease_guard, self._guard:
            self._closed = True
            pool, self._pool = self._pool, None
            lease, self._lease = self._lease, None
            instance, self._instance = self._instance, None
        if lease is not None:
            # Tidy only: the session ending is what ends the lease (and check(fix=True)
            # removes the rows of leases that ended without this).
            with contextlib.suppress(psycopg.Error):
                lease.execute("DELETE FROM instances WHERE id = %s", (instance,))
            with contextlib.suppress(psycopg.Error):
                lease.close()
        if pool is not None:
            with contextlib.suppress(psycopg.Error):
                pool.close()

    def ping(self) -> None:
        with self._write("take a write") as conn:
            conn.execute(
                "INSERT INTO health (id, pinged_at) VALUES (1, %s) "
                "ON CONFLICT (id) DO UPDATE SET pinged_at = excluded.pinged_at",
                (utc_now(),),
            )

    # -- the liveness lease -----------------------------------------------------------------

    def _instance_number(self) -> int:
        """This backend's instance number, its lease taken on first use (see the docstring)."""
        if self._pid != os.getpid():
            self._after_fork()
        instance = self._instance
        if instance is not None:
            return instance
        with self._lease_guard:
            if self._instance is not None:
                return self._instance
            if self._closed:
                raise StorageError(errno.EBADF, f"{self.describe()} is closed")
            with self._errors("take a liveness lease"):
                conn = self._connect()
                try:
                    conn.execute(_LEASE_SETTINGS)
                    for _ in range(10):
                        # The row becomes visible with its lock already held.
                        with conn.transaction():
                            row = conn.execute(
                                "INSERT INTO instances (pid, host, started_at) "
                                "VALUES (%s, %s, %s) RETURNING id",
                                (os.getpid(), socket.gethostname(), utc_now()),
                            ).fetchone()
                            n = int(row[0]) if row else 0
                            got = conn.execute(
                                "SELECT pg_try_advisory_lock(%s::int8::bit(32)::int4, %s)",
                                (self._space, n),
                            ).fetchone()
                        if got and got[0]:
                            self._lease, self._instance = conn, n
                            return n
                        # Held by someone (a database restored from an older copy: the counter
                        # went back): that number is spent; take the next one.
                    raise StorageError(errno.EEXIST, f"{self.describe()}: cannot take a lease")
                except BaseException:
                    conn.close()
                    raise

    def _drop_lease(self, instance: int) -> None:
        """Forget lease ``instance`` after it was found lost (its connection died)."""
        with self._lease_guard:
            if self._instance != instance:
                return  # already replaced
            lease, self._lease, self._instance = self._lease, None, None
        if lease is not None:
            with contextlib.suppress(psycopg.Error):
                lease.close()

    def _held(self, conn: Conn, writers: Sequence[int]) -> set[int]:
        """The instances among ``writers`` whose lease is held now (one query)."""
        if not writers:
            return set()
        return {int(n) for (n,) in conn.execute(_HELD_LEASES, (self._space, list(writers)))}

    # -- users ------------------------------------------------------------------------------

    def user_for(self, principal_digest: str) -> str:
        found = self.find_user(principal_digest)
        if found is not None:
            return found
        with self._write("create a user") as conn:
            # One creator at a time: two processes seeing a new principal at once must not
            # both take a number (an identity never gives one back).
            conn.execute("SELECT pg_advisory_xact_lock(%s::int8::bit(32)::int4, 0)", (self._space,))
            row = conn.execute(
                "SELECT user_id FROM sessions WHERE digest = %s", (principal_digest,)
            ).fetchone()
            if row is not None:
                return str(UserId(row[0]))  # another process created it meanwhile
            row = conn.execute(
                "INSERT INTO users (created_at) VALUES (%s) RETURNING id", (utc_now(),)
            ).fetchone()
            assert row is not None
            conn.execute(
                "INSERT INTO sessions (digest, user_id) VALUES (%s, %s)", (principal_digest, row[0])
            )
        return str(UserId(row[0]))

    def find_user(self, principal_digest: str) -> str | None:
        with self._read("find a user") as conn:
            row = conn.execute(
                "SELECT user_id FROM sessions WHERE digest = %s", (principal_digest,)
            ).fetchone()
        return None if row is None else str(UserId(row[0]))

    def users(self) -> list[str]:
        with self._read("list users") as conn:
            rows = conn.execute("SELECT id FROM users ORDER BY id").fetchall()
        return [str(UserId(n)) for (n,) in rows]

    def user_records(self, users: Sequence[UserId]) -> list[UserRecord]:
        out = []
        with self._read("read users") as conn:
            for user in users:
                row = conn.execute(
                    "SELECT created_at, ARRAY(SELECT digest FROM sessions "
                    "WHERE user_id = users.id ORDER BY digest), last_conversation "
                    "FROM users WHERE id = %s",
                    (user.n,),
                ).fetchone()
                if row is None:
                    raise UserNotFound(f"no user {user}")
                out.append(UserRecord(str(user), row[0], list(row[1]), int(row[2])))
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
            # The lock user_for takes: one creator of users at a time.
            conn.execute("SELECT pg_advisory_xact_lock(%s::int8::bit(32)::int4, 0)", (self._space,))
            if user is None:
                row = conn.execute(
                    "INSERT INTO users (created_at, last_conversation) VALUES (%s, %s) "
                    "RETURNING id",
                    (created_at, last_conversation),
                ).fetchone()
            else:
                row = conn.execute(
                    "INSERT INTO users (id, created_at, last_conversation) OVERRIDING SYSTEM "
                    "VALUE VALUES (%s, %s, %s) ON CONFLICT (id) DO NOTHING RETURNING id",
                    (user.n, created_at, last_conversation),
                ).fetchone()
                if row is None:
                    return None
                # The identity must move past a number given here, or user_for would hand
                # it out again (and fail on the key); never moved back.
                conn.execute(
                    "SELECT setval(s, greatest(%s, coalesce(pg_sequence_last_value(s), 0))) "
                    "FROM (SELECT pg_get_serial_sequence('users', 'id')::regclass AS s) AS q",
                    (user.n,),
                )
            assert row is not None
            n: int = row[0]
            with conn.cursor() as cursor:
                cursor.executemany(
                    _ADD_SESSION,
                    [(digest, n) for digest in sessions],
                )
        return str(UserId(n))

    def add_sessions(self, user: UserId, sessions: Sequence[str]) -> int:
        with self._write("register sessions") as conn:
            if conn.execute("SELECT 1 FROM users WHERE id = %s", (user.n,)).fetchone() is None:
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
            # The user's row lock first: concurrent creators queue here, so the count below
            # sees every conversation committed before ours.
            row = conn.execute(
                "UPDATE users SET last_conversation = last_conversation + 1 WHERE id = %s "
                "RETURNING last_conversation",
                (user.n,),
            ).fetchone()
            if row is None:
                raise UserNotFound(f"no user {user}")
            if max_conversations is not None:
                counted = conn.execute(
                    "SELECT count(*) FROM conversations WHERE user_id = %s", (user.n,)
                ).fetchone()
                if counted is not None and counted[0] >= max_conversations:
                    raise LimitExceeded(
                        f"user {user} has reached the limit of {max_conversations} conversations"
                    )
            now = utc_now()
            created = conn.execute(
                f"INSERT INTO conversations ({_CONVERSATION_COLUMNS}) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, NULL) "
                f"RETURNING {_CONVERSATION_COLUMNS}",
                (
                    user.n,
                    row[0],
                    _json_text(title),
                    now,
                    now,
                    pinned,
                    dumps(metadata),
                    dumps(participants),
                ),
            ).fetchone()
            _index_document(conn, user.n, row[0], _TITLE, title)
        assert created is not None
        return _conversation(created)

    def get_conversation(self, conv: ConversationId) -> Conversation:
        user = conv.user
        try:
            pool = self._get_pool()
            conn = pool.getconn()
            try:
                row = conn.execute(_SELECT_CONVERSATION, (user, conv.n)).fetchone()
            finally:
                pool.putconn(conn)
        except (psycopg.Error, PoolTimeout, PoolClosed) as exc:
            raise self._error(exc, f"read {conv}") from exc
        if row is None:
            raise ConversationNotFound(f"no conversation {conv}")
        return conversations(user, [row])[0]

    def list_conversations(
        self,
        user: UserId,
        *,
        limit: int,
        before: ConversationId | None,
        include_deleted: bool,
    ) -> ConversationPage:
        below = before.n if before is not None else 2**63 - 1
        sql = _SELECT_PAGE_ALL if include_deleted else _SELECT_PAGE
        n = user.n
        try:
            pool = self._get_pool()
            conn = pool.getconn()
            try:
                rows = conn.execute(sql, (n, below, limit + 1)).fetchall()
            finally:
                pool.putconn(conn)
        except (psycopg.Error, PoolTimeout, PoolClosed) as exc:
            raise self._error(exc, f"list the conversations of {user}") from exc
        items = conversations(n, rows[:limit])
        return ConversationPage(items, items[-1].id if len(rows) > limit else None)

    def update_conversation(self, conv: ConversationId, changes: Mapping[str, Any]) -> Conversation:
        sets, values = ["updated_at = %s"], [utc_now()]
        for key, value in changes.items():
            column, encode = _UPDATABLE[key]
            sets.append(f"{column} = %s")
            values.append(encode(value))
        with self._write(f"update {conv}") as conn:
            # One UPDATE under the row's lock: no concurrent update is lost.
            row = conn.execute(
                f"UPDATE conversations SET {', '.join(sets)} WHERE user_id = %s AND number = %s "
                f"RETURNING {_CONVERSATION_COLUMNS}".encode(),
                (*values, conv.user, conv.n),
            ).fetchone()
            if row is not None and "title" in changes:
                # Under the conversation's row lock: the new title's document replaces the old.
                _index_document(conn, conv.user, conv.n, _TITLE, changes["title"])
        if row is None:
            raise ConversationNotFound(f"no conversation {conv}")
        return _conversation(row)

    def dump_conversation(self, conv: ConversationId) -> ConversationDump:
        with self._read(f"read {conv}") as conn:
            row = conn.execute(
                f"SELECT {_LISTED_COLUMNS}, last_seq FROM conversations "
                "WHERE user_id = %s AND number = %s",
                (conv.user, conv.n),
            ).fetchone()
        if row is None:
            raise ConversationNotFound(f"no conversation {conv}")
        messages = self.messages(conv, 0, None)
        last_seq = max(int(row[-1]), messages[-1].seq if messages else 0)
        conversation = conversations(conv.user, [tuple(row[:-1])])[0]
        return ConversationDump(conversation, last_seq, messages)

    def import_conversation(
        self, user: UserId, number: int | None, data: ConversationImport
    ) -> str | None:
        """One write transaction, under the user's row lock (as ``create_conversation``):
        the counter, the conversation, its message and chunk rows commit together or not
        at all."""
        with self._write("import a conversation") as conn:
            row = conn.execute(
                "SELECT last_conversation, (SELECT max(number) FROM conversations "
                "WHERE user_id = %s) FROM users WHERE id = %s FOR UPDATE",
                (user.n, user.n),
            ).fetchone()
            if row is None:
                raise UserNotFound(f"no user {user}")
            if number is None:
                number = max(int(row[0]), int(row[1] or 0)) + 1
            elif (
                conn.execute(
                    "SELECT 1 FROM conversations WHERE user_id = %s AND number = %s",
                    (user.n, number),
                ).fetchone()
                is not None
            ):
                return None
            conn.execute(
                "UPDATE users SET last_conversation = greatest(last_conversation, %s) "
                "WHERE id = %s",
                (number, user.n),
            )
            c = data.conversation
            message_rows, chunk_rows, latest = import_rows(user.n, number, data, utc_now())
            conn.execute(
                f"INSERT INTO conversations ({_CONVERSATION_COLUMNS}, last_seq, last_message_at) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (
                    user.n,
                    number,
                    _json_text(c.title),
                    c.created_at,
                    c.updated_at,
                    c.pinned,
                    dumps(c.metadata),
                    dumps(c.participants),
                    c.deleted_at,
                    data.last_seq,
                    latest,
                ),
            )
            with conn.cursor() as cursor:
                cursor.executemany(
                    "INSERT INTO messages (user_id, conversation, seq, role, status, writer, "
                    "created_at, line, deleted_at) VALUES (%s, %s, %s, %s, %s, NULL, %s, %s, %s)",
                    message_rows,
                )
                cursor.executemany(
                    "INSERT INTO chunks (user_id, conversation, seq, chunk, record) "
                    "VALUES (%s, %s, %s, %s, %s)",
                    chunk_rows,
                )
            # Indexed in the import's transaction, as every write keeps the index.
            _index_document(conn, user.n, number, _TITLE, c.title)
            for u, n, seq, _, _, _, line, deleted_at in message_rows:
                if line is not None and deleted_at is None:
                    _index_document(conn, u, n, seq, from_line(orjson.loads(line)))
        return str(ConversationId(user.n, number))

    def remove_conversation(self, conv: ConversationId) -> None:
        with self._write(f"delete {conv}") as conn:
            # The foreign keys cascade to its messages and their chunks.
            cursor = conn.execute(
                "DELETE FROM conversations WHERE user_id = %s AND number = %s",
                (conv.user, conv.n),
            )
            if cursor.rowcount == 0:
                raise ConversationNotFound(f"no conversation {conv}")

    def expired(self, cutoff: datetime) -> list[str]:
        # Every stored time is utc_now()'s fixed-width ISO text: text order ("C") is time order.
        limit = cutoff.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
        with self._read("find expired conversations") as conn:
            rows = conn.execute(
                "SELECT user_id, number FROM conversations WHERE NOT pinned "
                'AND greatest(updated_at, last_message_at) COLLATE "C" < %s '
                "ORDER BY user_id, number",
                (limit,),
            ).fetchall()
        return [str(ConversationId(u, n)) for u, n in rows]

    # -- messages ---------------------------------------------------------------------------

    def _claim_seq(
        self, conn: Conn, conv: ConversationId, limit: int | None, now: str
    ) -> MessageId:
        """The next seq of ``conv``, claimed in the caller's write transaction (its row lock
        is held until that transaction ends; a rollback gives the number back)."""
        row = conn.execute(
            "UPDATE conversations SET last_seq = last_seq + 1, last_message_at = %s "
            "WHERE user_id = %s AND number = %s RETURNING last_seq, deleted_at",
            (now, conv.user, conv.n),
        ).fetchone()
        if row is None:
            raise ConversationNotFound(f"no conversation {conv}")
        seq, deleted_at = row
        if deleted_at is not None:
            raise ConversationDeleted(f"conversation {conv} is deleted: restore it to write")
        if limit is not None and seq > limit:
            raise LimitExceeded(f"conversation {conv} has reached the limit of {limit} messages")
        return MessageId(conv.user, conv.n, seq)

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
                "created_at, line) VALUES (%s, %s, %s, %s, %s, NULL, %s, %s)",
                (
                    mid.user,
                    mid.conversation,
                    mid.seq,
                    message.role,
                    message.status,
                    now,
                    line_of(message),
                ),
            )
            _index_document(conn, mid.user, mid.conversation, mid.seq, message)
            conn.execute(
                "INSERT INTO chunks (user_id, conversation, seq, chunk, record) "
                "VALUES (%s, %s, %s, 1, %s)",
                (mid.user, mid.conversation, mid.seq, dumps(record)),
            )
        return message

    def open_stream(
        self, conv: ConversationId, *, role: str, max_messages: int | None
    ) -> PostgresSink:
        limit = 2**63 - 1 if max_messages is None else max_messages
        for _ in range(3):
            instance = self._instance_number()
            now = utc_now()
            params = {
                "now": now,
                "user": conv.user,
                "n": conv.n,
                "limit": limit,
                "space": self._space,
                "instance": instance,
                "role": role,
            }
            try:
                pool = self._get_pool()
                conn = pool.getconn()
                try:
                    # One statement (its own transaction): the seq claimed and the message row
                    # inserted only while our lease is held, so a stream never starts on a
                    # lease that is already gone (its reply would read interrupted at once).
                    row = conn.execute(self._start_sql, params).fetchone()
                    why = None
                    if row is None:
                        why = conn.execute(
                            _WHY_NOT_STARTED, (self._space, instance, conv.user, conv.n)
                        ).fetchone()
                finally:
                    pool.putconn(conn)
            except (psycopg.Error, PoolTimeout, PoolClosed) as exc:
                raise self._error(exc, f"start a message in {conv}") from exc
            if row is not None:
                return PostgresSink(self, MessageId(conv.user, conv.n, row[0]))
            if why is None:
                raise ConversationNotFound(f"no conversation {conv}")
            deleted_at, last_seq, held = why
            if deleted_at is not None:
                raise ConversationDeleted(f"conversation {conv} is deleted: restore it to write")
            if last_seq >= limit:
                raise LimitExceeded(
                    f"conversation {conv} has reached the limit of {max_messages} messages"
                )
            if not held:
                self._drop_lease(instance)
            # else: the conversation changed between the two statements: try again.
        raise StorageError(errno.EIO, f"{self.describe()}: cannot keep a liveness lease")

    def messages(self, conv: ConversationId, after_seq: int, limit: int | None) -> list[Message]:
        key = (conv.user, conv.n)
        with self._read(f"read {conv}") as conn:
            rows = conn.execute(
                "SELECT seq, writer, line FROM messages WHERE user_id = %s AND conversation = %s "
                "AND seq > %s AND deleted_at IS NULL ORDER BY seq LIMIT %s",
                (*key, after_seq, limit),
            ).fetchall()
            if not rows and not self._exists(conn, conv):
                raise ConversationNotFound(f"no conversation {conv}")
            open_seqs = [seq for seq, _, line in rows if line is None]
            if not open_seqs:
                return [from_line(orjson.loads(line)) for _, _, line in rows]
            # The liveness probe first, then the unsealed messages read again: a writer dead
            # at the probe never comes back, so one still unsealed after it is interrupted.
            alive = self._held(conn, sorted({w for _, w, line in rows if line is None and w}))
            again = conn.execute(
                "SELECT m.seq, m.writer, m.line, c.record FROM messages AS m "
                "LEFT JOIN chunks AS c USING (user_id, conversation, seq) "
                "WHERE m.user_id = %s AND m.conversation = %s AND m.seq = ANY(%s) "
                "AND m.deleted_at IS NULL ORDER BY m.seq, c.chunk",
                (*key, open_seqs),
            ).fetchall()
        loads = orjson.loads
        now_open: dict[int, Message] = {}
        for seq, group in itertools.groupby(again, key=first):
            found = list(group)
            _, writer, line, _ = found[0]
            if line is not None:  # sealed meanwhile
                now_open[seq] = from_line(loads(line))
                continue
            records = [loads(r[3]) for r in found if r[3] is not None]
            mid = str(MessageId(conv.user, conv.n, seq))
            now_open[seq] = rebuild_message(mid, seq, records, writer_alive=writer in alive)
        out = []
        for seq, _, line in rows:
            if line is not None:
                out.append(from_line(loads(line)))
            elif seq in now_open:  # else deleted meanwhile
                out.append(now_open[seq])
        return out

    def _exists(self, conn: Conn, conv: ConversationId) -> bool:
        return (
            conn.execute(
                "SELECT 1 FROM conversations WHERE user_id = %s AND number = %s",
                (conv.user, conv.n),
            ).fetchone()
            is not None
        )

    def message_count(self, conv: ConversationId) -> int:
        with self._read(f"count the messages of {conv}") as conn:
            row = conn.execute(
                "SELECT (SELECT count(*) FROM messages WHERE user_id = c.user_id "
                "AND conversation = c.number AND deleted_at IS NULL) FROM conversations AS c "
                "WHERE user_id = %s AND number = %s",
                (conv.user, conv.n),
            ).fetchone()
        if row is None:
            raise ConversationNotFound(f"no conversation {conv}")
        return int(row[0])

    def delete_message(self, conv: ConversationId, seq: int) -> bool:
        """Mark the row deleted (``deleted_at``), as SQLite does: readers skip it; the row
        stays, so the seq stays claimed and ``check`` finds no gap."""
        mid = MessageId(conv.user, conv.n, seq)
        key = (conv.user, conv.n, seq)
        with self._write(f"delete message {mid}") as conn:
            # FOR SHARE: a soft delete of the conversation waits for us (and we for it).
            row = conn.execute(
                "SELECT deleted_at FROM conversations WHERE user_id = %s AND number = %s FOR SHARE",
                (conv.user, conv.n),
            ).fetchone()
            if row is None:
                raise ConversationNotFound(f"no conversation {conv}")
            if row[0] is not None:
                raise ConversationDeleted(f"conversation {conv} is deleted: restore it to write")
            # FOR UPDATE: a seal or a release waits for us.
            found = conn.execute(
                f"SELECT line, writer, deleted_at FROM messages WHERE {_MESSAGE_KEY} FOR UPDATE",
                key,
            ).fetchone()
            if found is None or found[2] is not None:
                return False
            line, writer, _ = found
            if line is None and writer is not None and self._held(conn, [writer]):
                raise InvalidArgument(
                    f"message {mid} is still streaming: it can be deleted once it ends"
                )
            conn.execute(
                f"UPDATE messages SET deleted_at = %s WHERE {_MESSAGE_KEY}", (utc_now(), *key)
            )
            conn.execute(f"DELETE FROM search_documents WHERE {_MESSAGE_KEY}", key)
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
        """The page of ``_search``'s ranking: titles, then messages, each kind walked newest
        first from the primary key and, if the word is rare, found by the GIN index
        (``_SEARCH_STEPS``), in one read-only snapshot; then the page's conversations and
        matching messages by their keys."""
        with self._read(f"search the conversations of {user}") as conn:
            # One snapshot for the steps and the page (the reads are autocommit otherwise);
            # sequential scans priced out for all of them: a step reads an index, always.
            conn.execute(
                b"BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET LOCAL enable_seqscan = off"
            )
            try:
                page = _ranked(conn, user.n, terms, limit, offset, include_deleted)
                rows = conn.execute(
                    _SEARCH_HITS,
                    ([n for n, _ in page], [seq or _TITLE for _, seq in page], user.n),
                ).fetchall()
            finally:
                conn.execute(b"COMMIT")
        found = []
        for seq, line, *columns in rows:
            conversation = conversations(user.n, [tuple(columns)])[0]
            if seq == _TITLE:
                found.append(SearchMatch(conversation, None, conversation.title or ""))
            else:
                text = from_line(orjson.loads(line)).text if line is not None else ""
                found.append(SearchMatch(conversation, seq, text))
        return found

    # -- integrity --------------------------------------------------------------------------

    def check(self, fix: bool) -> list[Problem]:
        """The store's invariants (the engine keeps its own: foreign keys, unique keys):
        counters at least every number they hand out, message seqs 1..N and chunk seqs 1..k
        without a gap, every sealed message's line equal to its chunk rows rebuilt.

        ``fix`` repairs what is derived, as on SQLite: a counter behind is moved up (never
        down), a line is rebuilt from the chunk rows; and it tidies what dead processes left
        (their ``instances`` rows and their unsealed messages' writer). It never deletes a
        row that holds data. Problems are found in one snapshot (``REPEATABLE READ``, no lock
        held against writers); the fixes are then applied in one short write transaction,
        each guarded so that a change made meanwhile is never undone.
        """
        problems: list[Problem] = []
        fixes: list[tuple[str, tuple[Any, ...]]] = []
        stale: set[tuple[int, int, int]] = set()
        with self._read("check the database") as conn:
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            try:
                problems += self._check_counters(conn, fixes)
                problems += self._check_gaps(conn)
                problems += self._check_lines(conn, fixes)
                relined = {
                    (m.user, m.conversation, m.seq)
                    for m in (MessageId.parse(p.path) for p in problems if p.kind == "stale-line")
                }
                problems += self._check_index(conn, stale, relined)
            finally:
                conn.execute("ROLLBACK")
        if fix:
            if fixes or stale:
                with self._write("repair the database") as conn:
                    for sql, params in fixes:
                        conn.execute(sql.encode(), params)
                    # After the lines: a document is rebuilt from the repaired line.
                    for key in sorted(stale):
                        _reindex(conn, key)
            problems = [replace(p, fixed=True) if p.kind in FIXABLE else p for p in problems]
            self._tidy_leases()
        return problems

    def _check_counters(
        self, conn: Conn, fixes: list[tuple[str, tuple[Any, ...]]]
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
                    "UPDATE conversations SET last_seq = greatest(last_seq, %s) "
                    "WHERE user_id = %s AND number = %s",
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
                    "UPDATE users SET last_conversation = greatest(last_conversation, %s) "
                    "WHERE id = %s",
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

    def _check_gaps(self, conn: Conn) -> list[Problem]:
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
            "SELECT user_id, conversation, seq, count(*), max(chunk) FROM chunks "
            "GROUP BY 1, 2, 3 HAVING count(*) != max(chunk) OR min(chunk) != 1"
        ).fetchall():
            problems.append(
                Problem(
                    str(MessageId(user, n, seq)),
                    "gap",
                    f"{count} chunks numbered up to {top}: some are missing",
                )
            )
        return problems

    def _check_lines(self, conn: Conn, fixes: list[tuple[str, tuple[Any, ...]]]) -> list[Problem]:
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
                    "UPDATE messages SET status = %s, line = %s, writer = NULL "
                    f"WHERE {_MESSAGE_KEY} AND line IS NOT DISTINCT FROM %s",
                    (*change, user, n, seq, line),
                )
            )
            problems.append(Problem(str(mid), "stale-line", detail))
        return problems

    def _check_index(
        self, conn: Conn, stale: set[tuple[int, int, int]], relined: set[tuple[int, int, int]]
    ) -> list[Problem]:
        """The search documents against the rows: one per title and finished message (not
        deleted) with words, holding those words (``document`` is generated from them, so it
        cannot disagree); no other. ``stale`` gets the keys that disagree (``_reindex``). A
        message whose line is stale (``relined``) is rebuilt after its line, and only the
        line is reported."""
        expected: dict[tuple[int, int, int], str | None] = {}
        for user, n, title in conn.execute("SELECT user_id, number, title FROM conversations"):
            expected[(user, n, _TITLE)] = _document_words(title)
        for user, n, seq, line in conn.execute(
            "SELECT user_id, conversation, seq, line FROM messages "
            "WHERE deleted_at IS NULL AND line IS NOT NULL"
        ):
            try:
                expected[(user, n, seq)] = _indexed(from_line(orjson.loads(line)))
            except (orjson.JSONDecodeError, KeyError, TypeError):
                expected[(user, n, seq)] = None  # _check_lines reports (and rebuilds) it
        found = {
            (user, n, seq): words
            for user, n, seq, words in conn.execute(
                "SELECT user_id, conversation, seq, words FROM search_documents"
            )
        }
        problems = []
        for key in sorted(expected.keys() | found.keys()):
            if key in relined:
                stale.add(key)
                continue
            if expected.get(key) == found.get(key):
                continue
            stale.add(key)
            user, n, seq = key
            where = ConversationId(user, n) if seq == _TITLE else MessageId(user, n, seq)
            what = "title" if seq == _TITLE else "text"
            problems.append(
                Problem(str(where), "stale-index", f"the search index disagrees with its {what}")
            )
        return problems

    def _tidy_leases(self) -> None:
        """Forget the leases that ended (their ``instances`` rows and messages' writer)."""
        with self._read("list the leases") as conn:
            numbers = {int(n) for (n,) in conn.execute("SELECT id FROM instances")}
            numbers |= {
                int(n)
                for (n,) in conn.execute(
                    "SELECT DISTINCT writer FROM messages WHERE writer IS NOT NULL"
                )
            }
            dead = sorted(numbers - self._held(conn, sorted(numbers)))
        if not dead:
            return
        # A lease that ended never comes back (its number is never handed out again).
        with self._write("forget ended leases") as conn:
            conn.execute("DELETE FROM instances WHERE id = ANY(%s)", (dead,))
            conn.execute("UPDATE messages SET writer = NULL WHERE writer = ANY(%s)", (dead,))


def _conversation(row: tuple[Any, ...]) -> Conversation:
    """A ``_CONVERSATION_COLUMNS`` row as a ``Conversation``."""
    return conversations(row[0], [row[1:]])[0]


class PostgresSink:
    """A streamed message of the PostgreSQL backend: one ``chunks`` row per ``write_chunk``,
    then the seal. Its liveness is the backend's lease (the message row names the instance)
    until it is sealed or released."""

    def __init__(self, backend: PostgresBackend, message_id: MessageId) -> None:
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
            pool = backend._get_pool()
            conn = pool.getconn()
            try:
                # One query, its own transaction, its settings set by itself (SET LOCAL).
                with psycopg.ClientCursor(conn) as cur:
                    self._insert(cur, backend._insert_chunk[durable], chunk, text)
            finally:
                pool.putconn(conn)
        except BaseException as exc:
            self._records = None  # maybe committed, maybe not: the seal reads the rows
            if isinstance(exc, psycopg.Error | PoolTimeout | PoolClosed):
                raise backend._error(exc, f"write a chunk of {self._id}") from exc
            raise
        records = self._records
        if records is not None:
            self._kept += len(text)
            if self._kept <= KEEP_RECORDS_CHARS:
                records.append(dict(record))  # a copy: the rows hold what it said now
            else:
                self._records = None

    def _insert(
        self,
        conn: Conn | psycopg.ClientCursor[Any],
        sql: bytes | str,
        chunk: Any,
        text: str,
        *more: Any,
    ) -> None:
        try:
            conn.execute(sql, (*self._key, chunk, text, *more))
        except pg_errors.ForeignKeyViolation:
            # The message row went with its conversation (a hard delete).
            raise ConversationNotFound(f"no conversation {self._id.conversation_id}") from None
        except pg_errors.UniqueViolation as exc:
            raise StorageError(errno.EEXIST, f"chunk {chunk} of {self._id} exists") from exc

    def seal(self, last: dict[str, Any], *, durable: bool) -> Message:
        if not self._open:
            self._check_open()
        backend = self._backend
        key = self._key
        records = self._records
        try:
            if records is None:
                return self._seal_read_back(last, durable=durable)
            # Merged before the statement: the row locks are held for the statement only.
            text = dumps(last)
            records.append(last)
            message = rebuild_message(str(self._id), key[2], records, writer_alive=False)
            line = line_of(message)
            try:
                pool = backend._get_pool()
                conn = pool.getconn()
                try:
                    self._insert(
                        conn,
                        backend._seal_sql[durable],
                        last["seq"],
                        text,
                        message.status,
                        message.role,
                        line,
                        *key,
                        _indexed(message),
                        utc_now(),
                        key[0],
                        key[1],
                    )
                finally:
                    pool.putconn(conn)
            except (psycopg.Error, PoolTimeout, PoolClosed) as exc:
                raise backend._error(exc, f"seal {self._id}") from exc
        finally:
            self._open = False
            self._records = None
        return message

    def _seal_read_back(self, last: dict[str, Any], *, durable: bool) -> Message:
        """The seal when the records were not kept (past the bound, or after a failed write):
        the chunk rows read back in the seal's transaction."""
        with self._backend._write(f"seal {self._id}", durable=durable) as conn:
            self._insert(conn, _INSERT_CHUNK_ROW, last["seq"], dumps(last))
            records = [
                orjson.loads(r)
                for (r,) in conn.execute(
                    f"SELECT record FROM chunks WHERE {_MESSAGE_KEY} ORDER BY chunk", self._key
                )
            ]
            message = rebuild_message(str(self._id), self._id.seq, records, writer_alive=False)
            conn.execute(
                "UPDATE messages SET status = %s, writer = NULL, role = %s, line = %s "
                f"WHERE {_MESSAGE_KEY}",
                (message.status, message.role, line_of(message), *self._key),
            )
            _index_document(conn, self._id.user, self._id.conversation, self._id.seq, message)
            conn.execute(
                "UPDATE conversations SET last_message_at = %s WHERE user_id = %s AND number = %s",
                (utc_now(), self._id.user, self._id.conversation),
            )
        return message

    def release(self) -> None:
        if not self._open:
            return
        self._open = False
        self._records = None
        if self._backend._closed:
            return  # its lease ended with the backend: the message reads interrupted already
        # Not synced: if this commit is lost, the lease is too (interrupted either way).
        with self._backend._write(f"release {self._id}", durable=False) as conn:
            conn.execute(
                f"UPDATE messages SET writer = NULL WHERE {_MESSAGE_KEY} AND line IS NULL",
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
