"""Hand-written SQL on the PostgreSQL backend's own database: the baseline of its SPEC §6 target.

SPEC §6: "The SQLite and PostgreSQL backends at most 1.2x a hand-written query of the same rows
on the same engine." The PostgreSQL twin of ``_handwritten.py``, under the same rules: the rows
are written through ``Store("postgresql://...")`` (the fixtures use
``_data.write_conversation``, as for the other backends); the functions here read and write
those very tables (``chunkstore/_postgres.py``'s schema) with plain ``psycopg`` and return what
the API's caller gets, built into the same values:

* ``read_messages``: a whole conversation, as ``store.messages(conv, limit=None)``: every
  message's merged form (``messages.line``) in seq order, turned into the same ``Message``
  objects;
* ``list_page`` / ``get_conversation``: ``Conversation`` objects in a ``ConversationPage`` with
  its ``next_cursor``, as ``list_conversations`` / ``get_conversation``;
* ``ReplyWriter.write_reply``: a streamed reply, as ``stream_message``, ``append`` N times,
  ``finish``: the seq claimed and the message row made in one transaction, one ``chunks`` row
  per 60 tokens committed as it is written (one autocommitted ``INSERT``), then the terminal
  chunk, the message's status and line and the conversation's ``last_message_at`` in one
  transaction; ``synchronous_commit`` per transaction as the backend chooses it for each
  durability (set on the session when it changes, as the SQLite baseline sets its
  ``PRAGMA synchronous``); the sealed ``Message`` returned.

Both sides start from the same input (the API's id strings, parsed with chunkstore's own id
parser) and use a connection opened the way the backend opens its own (``connect``: autocommit,
no server-side prepared statements, the same connect timeout, no statement run before the
first timed one; the writer sets the same lock timeout, once on the session); cold, each side's
connection is a new server session opened in the untimed setup (``open_store`` does it for the
backend's pool). What the hand-written side leaves out is
the generality of the API: the front's argument and per-token checks, error translation, a
``BEGIN; SET LOCAL ...`` / ``COMMIT`` around single statements (the backend sets everything per
transaction so that it may sit behind a transaction-mode pooler), reading columns needed only
for unsealed messages, the liveness lease's check as a message row is inserted, and rebuilding
a sealed message from its chunk rows instead of from what the writer had in memory.
"""

from __future__ import annotations

from typing import Any

import orjson
import psycopg

from benchmarks._handwritten import _utc_now
from chunkstore import Conversation, ConversationPage, Message, Store
from chunkstore._ids import ConversationId, UserId

__all__ = [
    "SYNC",
    "ReplyWriter",
    "connect",
    "get_conversation",
    "list_page",
    "open_store",
    "read_messages",
    "take_instance",
]

Conn = psycopg.Connection[tuple[Any, ...]]

# durability -> (chunk commits, seal and other commits), as the backend's module docstring says.
SYNC = {"chunk": ("on", "on"), "message": ("off", "on"), "none": ("off", "off")}
LOCK_TIMEOUT_MS = 30_000  # the backend's default lock_timeout (30 s)


def connect(url: str) -> Conn:
    """A connection opened as ``PostgresBackend`` opens its pooled ones (autocommit, no
    server-side prepared statements, ``connect_timeout=10``), and like them with no statement
    run yet: a new session's first statement pays a one-time cost (~0.1 ms here), which the
    backend's first read pays too. (``ReplyWriter`` sets its lock timeout on the session.)"""
    conn: Conn = psycopg.connect(url, autocommit=True, prepare_threshold=None, connect_timeout=10)
    return conn


def open_store(url: str, durability: str = "none", **options: Any) -> Store:
    """``Store(url)`` with its pool's first connection opened (untimed, in a benchmark's setup),
    as ``Store("sqlite:PATH")`` opens its connection in its constructor. Without this the first
    call of a new store would also pay for connecting (a new server session, ~4 ms here)."""
    store = Store(url, durability=durability, **options)  # type: ignore[arg-type]
    store.backend._get_pool().wait()  # type: ignore[attr-defined]
    return store


# -- rebuild -------------------------------------------------------------------------------------

_SELECT_LINES = (
    "SELECT seq, line FROM messages WHERE user_id = %s AND conversation = %s "
    "AND deleted_at IS NULL ORDER BY seq"
)


def read_messages(conn: Conn, conversation_id: str) -> list[Message]:
    """Every message of a conversation, as ``Message`` objects, from the sealed messages'
    lines (an unsealed message would need its chunk rows and its writer's lease: the fixtures
    have none, so it is refused)."""
    conv = ConversationId.parse(conversation_id)
    loads = orjson.loads
    out = []
    for seq, line in conn.execute(_SELECT_LINES, (conv.user, conv.n)):
        if line is None:
            # A precondition of the fixtures, not a gap: every benchmark message is sealed.
            raise ValueError(f"message {seq} is not sealed: this baseline reads sealed lines")
        d = loads(line)
        get = d.get
        out.append(
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
                False,
                get("replyTo"),
            )
        )
    return out


# -- listing -------------------------------------------------------------------------------------

_COLUMNS = "number, title, created_at, updated_at, pinned, metadata, participants, deleted_at"
_SELECT_PAGE = (
    f"SELECT {_COLUMNS} FROM conversations WHERE user_id = %s AND number < %s "
    "AND deleted_at IS NULL ORDER BY number DESC LIMIT %s"
)
_SELECT_ONE = f"SELECT {_COLUMNS} FROM conversations WHERE user_id = %s AND number = %s"


def _conversation(user: int, row: tuple[Any, ...]) -> Conversation:
    # title is a json column: psycopg has already parsed it (as for the backend).
    n, title, created_at, updated_at, pinned, metadata, participants, deleted_at = row
    return Conversation(
        f"us{user:02d}-co{n:02d}",
        f"us{user:02d}",
        title,
        created_at,
        updated_at,
        bool(pinned),
        orjson.loads(metadata),
        orjson.loads(participants),
        deleted_at,
    )


def list_page(conn: Conn, user_id: str, limit: int, cursor: str | None) -> ConversationPage:
    """A page of a user's conversations, newest first, after ``cursor`` (keyset)."""
    user = UserId.parse(user_id).n
    below = 2**63 - 1
    if cursor is not None:
        before = ConversationId.parse(cursor)
        if before.user != user:
            raise ValueError("cursor does not belong to this user")
        below = before.n
    rows = conn.execute(_SELECT_PAGE, (user, below, limit + 1)).fetchall()
    items = [_conversation(user, row) for row in rows[:limit]]
    return ConversationPage(items, items[-1].id if len(rows) > limit else None)


def get_conversation(conn: Conn, conversation_id: str) -> Conversation:
    conv = ConversationId.parse(conversation_id)
    row = conn.execute(_SELECT_ONE, (conv.user, conv.n)).fetchone()
    if row is None:
        raise KeyError(conversation_id)
    return _conversation(conv.user, row)


# -- writing -------------------------------------------------------------------------------------


def take_instance(conn: Conn) -> int:
    """An ``instances`` row for the ``writer`` column of streaming messages (the backend takes
    its own, with its lease, once per process on the first stream: untimed on both sides)."""
    row = conn.execute(
        "INSERT INTO instances (pid, host, started_at) VALUES (0, 'bench', %s) RETURNING id",
        (_utc_now(),),
    ).fetchone()
    assert row is not None
    return int(row[0])


_CLAIM = (
    "UPDATE conversations SET last_seq = last_seq + 1, last_message_at = %s "
    "WHERE user_id = %s AND number = %s AND deleted_at IS NULL RETURNING last_seq"
)
_INSERT_MESSAGE = (
    "INSERT INTO messages (user_id, conversation, seq, role, status, writer, created_at) "
    "VALUES (%s, %s, %s, %s, 'streaming', %s, %s)"
)
_INSERT_CHUNK = (
    "INSERT INTO chunks (user_id, conversation, seq, chunk, record) VALUES (%s, %s, %s, %s, %s)"
)
_SEAL_MESSAGE = (
    "UPDATE messages SET status = %s, writer = NULL, role = %s, line = %s "
    "WHERE user_id = %s AND conversation = %s AND seq = %s"
)
_TOUCH_CONVERSATION = (
    "UPDATE conversations SET last_message_at = %s WHERE user_id = %s AND number = %s"
)


class ReplyWriter:
    """Writes streamed replies into one conversation on one connection (its
    ``synchronous_commit`` remembered, set only when it changes)."""

    def __init__(
        self,
        conn: Conn,
        conversation_id: str,
        durability: str,
        instance: int,
        chunk_tokens: int = 60,
    ) -> None:
        self.conn = conn
        self.conversation_id = conversation_id
        self.chunk_sync, self.seal_sync = SYNC[durability]
        self.instance = instance
        self.chunk_tokens = chunk_tokens
        self._sync: str | None = None
        # The backend's lock timeout, once on the session (the backend: SET LOCAL per
        # transaction).
        conn.execute(f"SET lock_timeout = '{LOCK_TIMEOUT_MS}ms'".encode())

    def _set_sync(self, level: str) -> None:
        if self._sync != level:
            self.conn.execute(f"SET synchronous_commit = {level}".encode())
            self._sync = level

    def write_reply(
        self, tokens: list[str], finish_reason: str, usage: dict[str, Any], role: str = "assistant"
    ) -> Message:
        conn = self.conn
        conv = ConversationId.parse(self.conversation_id)
        user, number = conv.user, conv.n
        dumps = orjson.dumps
        # The seq, claimed with the message row in one transaction.
        self._set_sync(self.seal_sync)
        now = _utc_now()
        conn.execute("BEGIN")
        try:
            row = conn.execute(_CLAIM, (now, user, number)).fetchone()
            if row is None:
                raise KeyError(f"no writable conversation {conv}")
            seq = row[0]
            conn.execute(_INSERT_MESSAGE, (user, number, seq, role, self.instance, now))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        mid = f"us{user:02d}-co{number:02d}-ms{seq:02d}"
        # Streaming: a chunk row per chunk_tokens tokens, each its own (autocommit) transaction.
        texts: list[str] = []
        first_at = ""
        pending: list[str] = []
        chunk_tokens = self.chunk_tokens
        for token in tokens:
            pending.append(token)
            if len(pending) >= chunk_tokens:
                text = "".join(pending)
                at = _utc_now()
                record = {
                    "v": 1,
                    "messageId": mid,
                    "seq": len(texts) + 1,
                    "tokens": text,
                    "tokenCount": len(pending),
                    "timestamp": at,
                    "role": role,
                    "status": "streaming",
                }
                self._set_sync(self.chunk_sync)
                conn.execute(
                    _INSERT_CHUNK, (user, number, seq, len(texts) + 1, dumps(record).decode())
                )
                if not texts:
                    first_at = at
                texts.append(text)
                pending = []
        # The seal: the terminal record, the message's status and merged line, in one
        # transaction.
        text = "".join(pending)
        at = _utc_now()
        last = {
            "v": 1,
            "messageId": mid,
            "seq": len(texts) + 1,
            "tokens": text,
            "tokenCount": len(pending),
            "timestamp": at,
            "role": role,
            "status": "complete",
            "finishReason": finish_reason,
            "usage": usage,
        }
        if not texts:
            first_at = at
        texts.append(text)
        content = "".join(texts)
        token_count = len(tokens)
        line = {
            "seq": seq,
            "id": mid,
            "role": role,
            "content": content,
            "status": "complete",
            "createdAt": first_at,
            "completedAt": at,
            "finishReason": finish_reason,
            "usage": usage,
            "tokenCount": token_count,
        }
        self._set_sync(self.seal_sync)
        conn.execute("BEGIN")
        try:
            conn.execute(_INSERT_CHUNK, (user, number, seq, len(texts), dumps(last).decode()))
            conn.execute(_SEAL_MESSAGE, ("complete", role, dumps(line).decode(), user, number, seq))
            conn.execute(_TOUCH_CONVERSATION, (_utc_now(), user, number))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return Message(
            mid,
            seq,
            role,
            content,
            "complete",
            first_at,
            at,
            None,
            finish_reason,
            usage,
            None,
            None,
            None,
            None,
            token_count,
        )
