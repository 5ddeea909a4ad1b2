"""Helpers of the SQLite backend tests (importable by spawned worker processes too).

The backend is called directly, through the ``Backend`` protocol, with the records the front
(``Store``) would build; so these tests need nothing of the front but the record format.
"""

from __future__ import annotations

import hashlib
from typing import Any

from chunkstore._backend import Backend
from chunkstore._ids import ConversationId, MessageId, UserId
from chunkstore._sqlite import SqliteBackend


def digest(principal: str) -> str:
    return hashlib.sha256(principal.encode()).hexdigest()


def open_backend(path: str, **options: Any) -> SqliteBackend:
    options.setdefault("durability", "none")
    return SqliteBackend(path, **options)


def new_conversation(
    backend: Backend, principal: str = "session-test", **options: Any
) -> ConversationId:
    user = UserId.parse(backend.user_for(digest(principal)))
    options.setdefault("title", "Test")
    options.setdefault("metadata", {})
    options.setdefault("participants", [])
    options.setdefault("pinned", False)
    options.setdefault("max_conversations", None)
    return ConversationId.parse(backend.create_conversation(user, **options).id)


def message_record(role: str, text: str, **extra: Any) -> dict[str, Any]:
    """The record ``Store.append_message`` hands the backend (``messageId`` and ``timestamp``
    are the backend's to set)."""
    record: dict[str, Any] = {"v": 1, "seq": 1, "timestamp": "", "role": role}
    record["tokens"] = text
    record["tokenCount"] = 1 if text else 0
    record["status"] = "complete"
    record.update(extra)
    return record


def chunk_record(
    mid: MessageId, seq: int, tokens: str, status: str = "streaming", **extra: Any
) -> dict[str, Any]:
    """Chunk ``seq`` of a streamed message, as ``MessageWriter`` builds it."""
    record: dict[str, Any] = {
        "v": 1,
        "messageId": str(mid),
        "seq": seq,
        "tokens": tokens,
        "tokenCount": 1,
        "timestamp": f"2026-01-01T00:00:{seq:02d}.000000Z",
        "role": "assistant",
        "status": status,
    }
    record.update(extra)
    return record


def append_worker(path: str, conversation: str, worker: int, count: int) -> None:
    """A process appending ``count`` messages (run with multiprocessing)."""
    backend = open_backend(path)
    conv = ConversationId.parse(conversation)
    try:
        for i in range(count):
            backend.append_message(
                conv, message_record("user", f"w{worker}-{i}"), max_messages=None
            )
    finally:
        backend.close()


def open_worker(path: str) -> int:
    """A process opening (and so creating and migrating) a database; returns its version."""
    backend = open_backend(path)
    try:
        backend.ping()
        conn = backend._conn()
        version: int = conn.execute("SELECT max(version) FROM _migrations").fetchone()[0]
        return version
    finally:
        backend.close()


def stream_until_killed(path: str, conversation: str) -> None:
    """A writer process (run as a script): stream chunks with durability "chunk" for ever,
    printing each chunk's number once ``write_chunk`` has returned (acknowledged)."""
    import time

    backend = SqliteBackend(path, durability="chunk")
    sink = backend.open_stream(
        ConversationId.parse(conversation), role="assistant", max_messages=None
    )
    print(f"started {sink.message_id}", flush=True)
    n = 0
    while True:
        n += 1
        sink.write_chunk(chunk_record(sink.message_id, n, f"c{n} "), durable=True)
        print(n, flush=True)
        time.sleep(0.005)
