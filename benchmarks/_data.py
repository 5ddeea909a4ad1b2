"""Test data and the baselines chunkstore is measured against.

* ``write_conversation``: a conversation of alternating user messages (~20 tokens) and assistant
  replies (~400 tokens) streamed through ``Store.stream_message`` (60-token chunks, so 7 chunk
  records per reply), as the edge writes them.
* The same chunk records, exported from the store's sealed files, feed every baseline, so each
  baseline holds exactly the bytes of text chunkstore holds:

  - **SQLite**: one indexed ``chunks`` table, ``PRIMARY KEY (conversation_id, message_seq,
    chunk_seq)``; a rebuild selects the conversation's rows in that order and groups them into
    message dicts, as an application would;
  - **JSONL**: one file per conversation, one chunk record per line; a rebuild reads the file,
    parses every line with orjson and groups;
  - **naive files**: the layout chunkstore has *before* compaction, every chunk in its own file
    (the sealed files exploded back into chunk files, no segment); a rebuild lists the
    directory, reads and parses every file, and joins.

The baselines return plain dicts with the fields of ``chunkstore.Message`` a client uses.
"""

from __future__ import annotations

import itertools
import os
import random
import sqlite3
import time
from collections.abc import Iterable
from typing import Any

import orjson

from chunkstore import (
    Store,
    _records,  # the record codec: the fixtures write the on-disk format v1
)
from chunkstore._ids import ConversationId, MessageId, UserId, parse_chunk_name
from chunkstore._layout import Layout

__all__ = [
    "CHUNK_TOKENS",
    "REPLY_TOKENS",
    "USER_TOKENS",
    "build_conversations",
    "explode_to_chunk_files",
    "group_chunk_rows",
    "jsonl_read",
    "jsonl_write",
    "naive_read",
    "reply_tokens",
    "sealed_records",
    "sqlite_connect",
    "sqlite_create_chunks",
    "sqlite_insert_chunks",
    "sqlite_read_conversation",
    "write_conversation",
]

USER_TOKENS = 20
REPLY_TOKENS = 400
CHUNK_TOKENS = 60

_TEXT = (
    "the of and to in is that for it as was with be by on not he this are or his from at which "
    "but have an they you were her she there been one all we their has would when if so no "
    "will more can out who them some only time other could into these its then two first any "
    "like model token stream chunk store message reply server client cache index segment "
)
_WORDS = tuple(_TEXT.split())


def reply_tokens(count: int, rng: random.Random) -> list[str]:
    """``count`` word tokens, each with its leading space, as BPE tokenizers produce them."""
    return [" " + rng.choice(_WORDS) for _ in range(count)]


def write_conversation(store: Store, conversation_id: str, messages: int, seed: int = 0) -> None:
    """``messages`` messages: user (odd seqs) and streamed assistant replies (even seqs)."""
    rng = random.Random(seed)
    for i in range(messages):
        if i % 2 == 0:
            store.append_message(
                conversation_id, role="user", content="".join(reply_tokens(USER_TOKENS, rng))
            )
            continue
        with store.stream_message(conversation_id, role="assistant") as writer:
            for token in reply_tokens(REPLY_TOKENS, rng):
                writer.append(token)
            writer.finish(
                "stop",
                usage={
                    "prompt_tokens": USER_TOKENS,
                    "completion_tokens": REPLY_TOKENS,
                    "total_tokens": USER_TOKENS + REPLY_TOKENS,
                },
            )


def build_conversations(root: str, count: int, api_count: int) -> tuple[str, dict[str, Any], float]:
    """A user with ``count`` empty conversations: (user id, a conversation.json record, seconds
    the last API ``create_conversation`` took).

    The first ``api_count`` are created through the API (durability "none"). A create costs
    about 1 ms (user.json replaced, two directories made), so the rest are written directly in
    format v1: the
    last API-made ``conversation.json`` cloned with a new id, title and metadata, re-encoded
    with its checksum, and ``user.json``'s counter moved on, which is what the API leaves.
    """
    store = Store(root, durability="none", flush_interval=None)
    user = store.user_for("bench-listing")
    last_create = 0.0
    for i in range(1, api_count + 1):
        start = time.perf_counter()
        store.create_conversation(user, title=f"Conversation {i}", metadata={"n": str(i)})
        last_create = time.perf_counter() - start
    layout = Layout(root)
    uid = UserId.parse(user)
    template = _records.decode(_read(layout.conversation_file(ConversationId(uid.n, api_count))))
    for i in range(api_count + 1, count + 1):
        conv = ConversationId(uid.n, i)
        record = {
            **template,
            "id": str(conv),
            "title": f"Conversation {i}",
            "metadata": {"n": str(i)},
        }
        os.makedirs(layout.messages_dir(conv))
        with open(layout.conversation_file(conv), "wb") as f:
            f.write(_records.encode_line(record))
    user_record = _records.decode(_read(layout.user_file(uid)))
    user_record["lastConversation"] = max(count, api_count)
    with open(layout.user_file(uid), "wb") as f:
        f.write(_records.encode_line(user_record))
    return user, template, last_create


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def sealed_records(root: str, conversation_id: str) -> dict[int, list[dict[str, Any]]]:
    """Every message's chunk records, read from its sealed file: seq -> records in order."""
    conv = ConversationId.parse(conversation_id)
    layout = Layout(root)
    out: dict[int, list[dict[str, Any]]] = {}
    for name in os.listdir(layout.messages_dir(conv)):
        parsed = parse_chunk_name(name)
        if parsed is None or parsed[1] != 0:
            continue
        seq = parsed[0]
        sealed = _read(layout.sealed_file(MessageId(conv.user, conv.n, seq)))
        out[seq] = _records.decode(sealed)["records"]
    return dict(sorted(out.items()))


# -- naive: one file per chunk -------------------------------------------------------------------


def explode_to_chunk_files(
    records: dict[int, list[dict[str, Any]]], conversation_id: str, messages_dir: str
) -> int:
    """Write every record as its own chunk file (format v1 names and encoding); file count."""
    conv = ConversationId.parse(conversation_id)
    os.makedirs(messages_dir, exist_ok=True)
    files = 0
    for seq, recs in records.items():
        mid = MessageId(conv.user, conv.n, seq)
        for n, record in enumerate(recs, start=1):
            record = {**record, "seq": n}
            with open(os.path.join(messages_dir, f"{mid}-{n:03d}.json"), "wb") as f:
                f.write(_records.encode_line(record))
            files += 1
    return files


def naive_read(messages_dir: str) -> list[dict[str, Any]]:
    """List, read and parse every chunk file, then join each message's tokens."""
    names = []
    for name in os.listdir(messages_dir):
        parsed = parse_chunk_name(name)
        if parsed is not None:
            names.append((parsed, name))
    names.sort()
    records = []
    for (seq, _chunk), name in names:
        with open(os.path.join(messages_dir, name), "rb") as f:
            record = orjson.loads(f.read())
        records.append(
            (
                seq,
                record["role"],
                record["tokens"],
                record["tokenCount"],
                record["timestamp"],
                record["status"],
                record.get("finishReason"),
                record.get("usage"),
                record["messageId"],
            )
        )
    return group_chunk_rows(records, usage_is_json=False)


# -- JSONL: one file per conversation ------------------------------------------------------------


def jsonl_write(path: str, records: dict[int, list[dict[str, Any]]]) -> None:
    with open(path, "wb") as f:
        for seq, recs in records.items():
            for n, record in enumerate(recs, start=1):
                f.write(orjson.dumps({**record, "messageSeq": seq, "seq": n}) + b"\n")


def jsonl_read(path: str) -> list[dict[str, Any]]:
    with open(path, "rb") as f:
        data = f.read()
    rows = []
    for line in data.splitlines():
        r = orjson.loads(line)
        rows.append(
            (
                r["messageSeq"],
                r["role"],
                r["tokens"],
                r["tokenCount"],
                r["timestamp"],
                r["status"],
                r.get("finishReason"),
                r.get("usage"),
                r["messageId"],
            )
        )
    return group_chunk_rows(rows, usage_is_json=False)


# -- SQLite: one indexed table -------------------------------------------------------------------

_CHUNKS_SCHEMA = """
CREATE TABLE IF NOT EXISTS chunks (
    conversation_id TEXT NOT NULL,
    message_seq INTEGER NOT NULL,
    chunk_seq INTEGER NOT NULL,
    message_id TEXT NOT NULL,
    role TEXT NOT NULL,
    tokens TEXT NOT NULL,
    token_count INTEGER NOT NULL,
    timestamp TEXT NOT NULL,
    status TEXT NOT NULL,
    finish_reason TEXT,
    usage TEXT,
    PRIMARY KEY (conversation_id, message_seq, chunk_seq)
)
"""

_SELECT_CONVERSATION = (
    "SELECT message_seq, role, tokens, token_count, timestamp, status, finish_reason, usage, "
    "message_id FROM chunks WHERE conversation_id = ? ORDER BY message_seq, chunk_seq"
)

CHUNK_INSERT = (
    "INSERT INTO chunks (conversation_id, message_seq, chunk_seq, message_id, role, tokens, "
    "token_count, timestamp, status, finish_reason, usage) VALUES (?,?,?,?,?,?,?,?,?,?,?)"
)


def sqlite_connect(
    path: str, *, journal: str | None = None, synchronous: str | None = None
) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    if journal is not None:
        conn.execute(f"PRAGMA journal_mode={journal}")
    if synchronous is not None:
        conn.execute(f"PRAGMA synchronous={synchronous}")
    return conn


def sqlite_create_chunks(conn: sqlite3.Connection) -> None:
    conn.execute(_CHUNKS_SCHEMA)


def chunk_row(conversation_id: str, seq: int, n: int, record: dict[str, Any]) -> tuple[Any, ...]:
    usage = record.get("usage")
    return (
        conversation_id,
        seq,
        n,
        record["messageId"],
        record["role"],
        record["tokens"],
        record["tokenCount"],
        record["timestamp"],
        record["status"],
        record.get("finishReason"),
        orjson.dumps(usage).decode() if usage is not None else None,
    )


def sqlite_insert_chunks(
    conn: sqlite3.Connection, conversation_id: str, records: dict[int, list[dict[str, Any]]]
) -> None:
    rows = (
        chunk_row(conversation_id, seq, n, r)
        for seq, recs in records.items()
        for n, r in enumerate(recs, start=1)
    )
    conn.execute("BEGIN")
    conn.executemany(CHUNK_INSERT, rows)
    conn.execute("COMMIT")


def sqlite_read_conversation(
    conn: sqlite3.Connection, conversation_id: str
) -> list[dict[str, Any]]:
    return group_chunk_rows(
        conn.execute(_SELECT_CONVERSATION, (conversation_id,)), usage_is_json=True
    )


# -- grouping rows into messages (shared by every baseline) --------------------------------------


def group_chunk_rows(
    rows: Iterable[tuple[Any, ...]], *, usage_is_json: bool
) -> list[dict[str, Any]]:
    """Rows ``(message_seq, role, tokens, token_count, timestamp, status, finish_reason, usage,
    message_id)`` in (message, chunk) order -> one dict per message."""
    out = []
    for seq, group in itertools.groupby(rows, key=lambda r: r[0]):
        chunks = list(group)
        first, last = chunks[0], chunks[-1]
        usage = last[7]
        if usage is not None and usage_is_json:
            usage = orjson.loads(usage)
        out.append(
            {
                "id": first[8],
                "seq": seq,
                "role": first[1],
                "content": "".join(c[2] for c in chunks),
                "status": last[5],
                "created_at": first[4],
                "completed_at": last[4],
                "finish_reason": last[6],
                "usage": usage,
                "token_count": sum(c[3] for c in chunks),
            }
        )
    return out
