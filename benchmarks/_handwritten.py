"""Hand-written SQL on the SQLite backend's own database: the baseline of its SPEC §6 target.

SPEC §6: "The SQLite and PostgreSQL backends at most 1.2x a hand-written query of the same rows
on the same engine." The backend's rows are written through ``Store("sqlite:PATH")`` (the
fixtures use ``_data.write_conversation``, as for the file store); the functions here read and
write those very tables (``chunkstore/_sqlite.py``'s schema) with plain ``sqlite3``, and return
what the API's caller gets, built into the same values:

* ``read_messages``: a whole conversation, as ``store.messages(conv, limit=None)``: every
  message's merged form (``messages.line``, the JSON the backend stores at the seal) in seq
  order, turned into the same ``Message`` objects;
* ``list_page`` / ``get_conversation``: ``Conversation`` objects (metadata and participants
  parsed) in a ``ConversationPage`` with its ``next_cursor``, as ``list_conversations`` /
  ``get_conversation``;
* ``ReplyWriter.write_reply``: a streamed reply, as ``stream_message``, ``append`` N times,
  ``finish``: the seq claimed and the message row made, one ``chunks`` row per 60 tokens
  committed as it is written, then the terminal chunk, the message's status and line and the
  conversation's ``last_message_at`` in one transaction; ``PRAGMA synchronous`` per transaction
  as the backend chooses it for each durability; the sealed ``Message`` returned.

Both sides start from the same input (the id strings of the API, parsed with chunkstore's own
id parser: the validation a caller gets) and use a connection opened the way the backend opens
its own (same pragmas, schema loaded); neither does anything the other does not need. What the
hand-written side leaves out is the generality of the API: the front's argument and per-token
checks, its error translation, transactions around single statements, reading columns needed
only for unsealed messages, and rebuilding a sealed message from its chunk rows instead of from
what the writer had in memory.
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from typing import Any

import orjson

from chunkstore import Conversation, ConversationPage, Message
from chunkstore._ids import ConversationId, UserId

__all__ = [
    "SYNC",
    "ReplyWriter",
    "connect",
    "get_conversation",
    "list_page",
    "read_messages",
    "take_instance",
]

# durability -> (chunk commits, seal and other commits), as the backend's module docstring says.
SYNC = {"chunk": ("FULL", "FULL"), "message": ("NORMAL", "FULL"), "none": ("OFF", "OFF")}


def connect(path: str) -> sqlite3.Connection:
    """A connection opened as ``SqliteBackend`` opens its own, untimed in every benchmark:
    the same ``connect`` options and pragmas, and the same reads (journal mode, schema
    version) that leave the schema parsed."""
    conn = sqlite3.connect(
        path, timeout=30.0, isolation_level=None, check_same_thread=False, cached_statements=256
    )
    conn.execute("PRAGMA foreign_keys = ON")
    mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal", mode
    conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '_migrations'"
    ).fetchone()
    conn.execute("SELECT coalesce(max(version), 0) FROM _migrations").fetchone()
    return conn


# -- rebuild -------------------------------------------------------------------------------------

# seq too: the one column a complete reader needs besides the line, to name a message whose
# line is NULL (not sealed) for the second query that would merge its chunk rows. Deleted
# messages (migration 2: ``deleted_at``) are skipped, as the backend skips them.
_SELECT_LINES = (
    "SELECT seq, line FROM messages WHERE user_id = ? AND conversation = ? "
    "AND deleted_at IS NULL ORDER BY seq"
)


def read_messages(conn: sqlite3.Connection, conversation_id: str) -> list[Message]:
    """Every message of a conversation, as ``Message`` objects, from the sealed messages'
    lines. A message not sealed would need its chunk rows merged and its writer's lease
    probed, as the backend does; the fixtures have none, so it is refused."""
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
            )
        )
    return out


# -- listing -------------------------------------------------------------------------------------

_COLUMNS = "number, title, created_at, updated_at, pinned, metadata, participants, deleted_at"
_SELECT_PAGE = (
    f"SELECT {_COLUMNS} FROM conversations WHERE user_id = ? AND number < ? "
    "AND deleted_at IS NULL ORDER BY number DESC LIMIT ?"
)
_SELECT_ONE = f"SELECT {_COLUMNS} FROM conversations WHERE user_id = ? AND number = ?"


def _conversation(user: int, row: tuple[Any, ...]) -> Conversation:
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


def list_page(
    conn: sqlite3.Connection, user_id: str, limit: int, cursor: str | None
) -> ConversationPage:
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


def get_conversation(conn: sqlite3.Connection, conversation_id: str) -> Conversation:
    conv = ConversationId.parse(conversation_id)
    row = conn.execute(_SELECT_ONE, (conv.user, conv.n)).fetchone()
    if row is None:
        raise KeyError(conversation_id)
    return _conversation(conv.user, row)


# -- writing -------------------------------------------------------------------------------------


def take_instance(conn: sqlite3.Connection) -> int:
    """An ``instances`` row for the ``writer`` column of streaming messages (the backend takes
    its own once per process, on the first stream: untimed on both sides)."""
    n: int = conn.execute(
        "INSERT INTO instances (pid, started_at) VALUES (0, ?) RETURNING id", (_utc_now(),)
    ).fetchone()[0]
    return n


def _utc_now() -> str:
    # The same expression as chunkstore._writer.utc_now.
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


_CLAIM = (
    "UPDATE conversations SET last_seq = last_seq + 1, last_message_at = ? "
    "WHERE user_id = ? AND number = ? AND deleted_at IS NULL RETURNING last_seq"
)
_INSERT_MESSAGE = (
    "INSERT INTO messages (user_id, conversation, seq, role, status, writer, created_at) "
    "VALUES (?, ?, ?, ?, 'streaming', ?, ?)"
)
_INSERT_CHUNK = (
    "INSERT INTO chunks (user_id, conversation, seq, chunk, record) VALUES (?, ?, ?, ?, ?)"
)
_SEAL_MESSAGE = (
    "UPDATE messages SET status = ?, writer = NULL, role = ?, line = ? "
    "WHERE user_id = ? AND conversation = ? AND seq = ?"
)
_TOUCH_CONVERSATION = (
    "UPDATE conversations SET last_message_at = ? WHERE user_id = ? AND number = ?"
)


class ReplyWriter:
    """Writes streamed replies into one conversation on one connection (its PRAGMA
    synchronous remembered, set only when it changes, as the backend does)."""

    def __init__(
        self,
        conn: sqlite3.Connection,
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

    def _set_sync(self, level: str) -> None:
        if self._sync != level:
            self.conn.execute(f"PRAGMA synchronous = {level}")
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
        conn.execute("BEGIN IMMEDIATE")
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
        conn.execute("BEGIN IMMEDIATE")
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
