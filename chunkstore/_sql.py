"""What the SQL backends (``_sqlite.py``, ``_postgres.py``) share: the forms of their rows.

Both keep the same tables (``messages.line`` holds a sealed message merged, ``chunks.record``
each chunk record verbatim, as JSON text) and build the same values from them; only the SQL
dialect, the connections and the liveness lease differ, and those stay in each backend.
"""

from __future__ import annotations

from typing import Any

import orjson

from ._backend import ConversationImport
from ._ids import MessageId, user_id_text
from ._models import Conversation, Message
from ._rebuild import TERMINAL, message_from_line, message_to_line, rebuild_message
from ._search import words

__all__ = [
    "FIXABLE",
    "KEEP_RECORDS_CHARS",
    "conversations",
    "dumps",
    "first",
    "from_line",
    "import_rows",
    "index_words",
    "line_of",
]

#: The kinds of problem ``check(fix=True)`` repairs: all derived, rebuildable from the rows.
FIXABLE = frozenset({"counter-behind", "stale-line", "stale-index"})

#: How much of a stream's records (as JSON) a sink keeps in memory to merge the message at its
#: seal without reading the rows back; past it (a very long reply) the seal reads them back,
#: so memory stays bounded however long the stream.
KEEP_RECORDS_CHARS = 32 * 1024


def dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def index_words(text: str | None) -> str:
    """A search document as the SQL engines index it: its folded words (``_search.words``),
    joined by single spaces. Both engines then only cut at the spaces (SQLite's ``ascii``
    tokenizer keeps every non-ASCII character in a token; PostgreSQL's parser sees words of
    letters and digits only) and fold nothing more, so they match exactly the words
    ``_search.matches`` sees, accents and all."""
    return " ".join(words(text)) if text else ""


def first(row: tuple[Any, ...]) -> Any:
    return row[0]


def line_of(message: Message) -> str:
    """A sealed message's ``messages.line``: ``_rebuild``'s line, plus ``damaged`` if so."""
    line = message_to_line(message)
    if message.damaged:
        line["damaged"] = True
    return dumps(line)


def from_line(line: dict[str, Any]) -> Message:
    """The ``Message`` a ``messages.line`` holds (the inverse of ``line_of``)."""
    message = message_from_line(line)
    if line.get("damaged"):
        message.damaged = True
    return message


def conversations(user: int, rows: list[tuple[Any, ...]]) -> list[Conversation]:
    """Rows of (number, title, created_at, updated_at, pinned, metadata, participants,
    deleted_at) of ``user``'s conversations, as ``Conversation`` values.

    A listing builds one per row: the ids are spelled inline, as ``ConversationId`` and
    ``UserId`` spell them (``_ids.user_id_text``: no id objects per row), and
    ``Conversation`` takes its fields positionally (keywords cost a third more).
    """
    user_id = user_id_text(user)
    prefix = user_id + "-co"
    loads = orjson.loads
    return [
        Conversation(
            f"{prefix}{n:02d}",
            user_id,
            title,
            created_at,
            updated_at,
            bool(pinned),
            loads(metadata),
            loads(participants),
            deleted_at,
        )
        for n, title, created_at, updated_at, pinned, metadata, participants, deleted_at in rows
    ]


#: A message row of ``import_rows``: (user_id, conversation, seq, role, status, created_at,
#: line, deleted_at); a chunk row: (user_id, conversation, seq, chunk, record).
MessageRow = tuple[int, int, int, str, str, str, str | None, str | None]
ChunkRow = tuple[int, int, int, int, str]


def import_rows(
    user: int, number: int, data: ConversationImport, now: str
) -> tuple[list[MessageRow], list[ChunkRow], str | None]:
    """The rows that store ``data``'s messages as conversation ``number`` of ``user``, as
    if written one by one: a final message sealed (its status, its merged ``line``), one
    that is not left unsealed (status ``streaming``, no line, no writer: it reads back
    ``interrupted``), a deleted one marked ``deleted_at`` ``now``; every record a chunk row.
    Also the conversation's ``last_message_at``: its latest record time (None: none)."""
    messages: list[MessageRow] = []
    chunks: list[ChunkRow] = []
    latest: str | None = None
    for item in data.messages:
        mid = str(MessageId(user, number, item.seq))
        records = [{**r, "messageId": mid} for r in item.records]
        if records[-1].get("status") in TERMINAL:
            message = rebuild_message(mid, item.seq, records, writer_alive=False)
            status, line = message.status, line_of(message)
        else:
            status, line = "streaming", None
        created = records[0].get("timestamp")
        messages.append(
            (
                user,
                number,
                item.seq,
                str(records[0].get("role", "assistant")),
                status,
                created if isinstance(created, str) else "",
                line,
                now if item.deleted else None,
            )
        )
        for record in records:
            chunks.append((user, number, item.seq, record["seq"], dumps(record)))
            stamp = record.get("timestamp")
            if isinstance(stamp, str) and stamp and (latest is None or stamp > latest):
                latest = stamp
    return messages, chunks, latest
