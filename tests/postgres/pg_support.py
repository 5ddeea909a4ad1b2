"""Helpers of the PostgreSQL backend tests (importable by spawned worker processes too).

The backend is called directly, through the ``Backend`` protocol, with the records the front
(``Store``) would build, as in ``tests/sqlite``.
"""

from __future__ import annotations

import hashlib
from typing import Any

import psycopg

from chunkstore._backend import Backend
from chunkstore._ids import ConversationId, MessageId, UserId
from chunkstore._postgres import PostgresBackend


def digest(principal: str) -> str:
    return hashlib.sha256(principal.encode()).hexdigest()


def open_backend(url: str, **options: Any) -> PostgresBackend:
    options.setdefault("durability", "none")
    return PostgresBackend(url, **options)


def raw(url: str) -> psycopg.Connection[tuple[Any, ...]]:
    """A plain autocommit connection to the test's database."""
    return psycopg.connect(url, autocommit=True)


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
    """The record ``Store.append_message`` hands the backend."""
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


def append_worker(url: str, conversation: str, worker: int, count: int) -> list[int]:
    """A process writing ``count`` messages (plain appends and streams, alternating) into one
    conversation; returns the seqs it got (run with multiprocessing)."""
    backend = open_backend(url)
    conv = ConversationId.parse(conversation)
    seqs = []
    try:
        for i in range(count):
            if i % 2 == 0:
                message = backend.append_message(
                    conv, message_record("user", f"w{worker}-{i}"), max_messages=None
                )
                seqs.append(message.seq)
            else:
                sink = backend.open_stream(conv, role="assistant", max_messages=None)
                sink.write_chunk(chunk_record(sink.message_id, 1, f"w{worker}-"), durable=False)
                sink.seal(
                    chunk_record(sink.message_id, 2, f"{i}", status="complete"), durable=False
                )
                seqs.append(sink.message_id.seq)
    finally:
        backend.close()
    return seqs


def open_worker(url: str) -> int:
    """A process opening (and so migrating) a database; returns its schema version."""
    backend = open_backend(url)
    try:
        backend.ping()
        with raw(url) as conn:
            row = conn.execute("SELECT max(version) FROM _migrations").fetchone()
        assert row is not None
        return int(row[0])
    finally:
        backend.close()


def stream_until_killed(url: str, conversation: str) -> None:
    """A writer process (run as a script): stream chunks with durability "chunk" for ever,
    printing each chunk's number once ``write_chunk`` has returned (acknowledged)."""
    import time

    backend = PostgresBackend(url, durability="chunk")
    sink = backend.open_stream(
        ConversationId.parse(conversation), role="assistant", max_messages=None
    )
    print(f"started {sink.message_id}", flush=True)
    n = 0
    while True:
        n += 1
        sink.write_chunk(chunk_record(sink.message_id, n, f"c{n} "), durable=True)
        print(n, flush=True)
        time.sleep(0.002)
