"""Writing while streaming: chunkstore's durability modes against SQLite inserts.

* **chunk**: one 60-token chunk, i.e. 60 ``MessageWriter.append`` calls, the 60th of which
  writes the chunk file (``flush_interval=None``, so only the token count triggers a write).
  Baseline: the same 60 tokens buffered in a list, joined, inserted as one row and committed.
* **reply**: a 400-token reply end to end: ``stream_message`` → 400 appends → ``finish``
  (7 chunk records, sealed into one file, the segment appended). Baseline: the same reply as 7
  rows, each committed as it is written (what "persist while streaming" means in SQLite).

SQLite runs in WAL mode (what an application would choose for concurrent readers) with
``synchronous=FULL`` (every commit fsynced: comparable to durability "chunk") and ``NORMAL``
(the WAL is synced only at checkpoints: comparable to "message"/"none").

The SQLite backend (``test_reply_sqlite_backend``), SPEC §6: at most 1.2x a hand-written query of
the same rows on the same engine. The same 400-token reply through ``Store("sqlite:PATH")``
under each durability, against ``_handwritten.ReplyWriter`` writing the same rows into the
backend's own database (another conversation of the same file) with the same transactions and
the same ``PRAGMA synchronous`` per transaction, in alternating rounds (``conftest.paired``).

The PostgreSQL backend (``test_reply_postgres_backend``), the same target and method: the reply
through ``Store("postgresql://...")`` on the benchmark session's server against
``_handwritten_pg.ReplyWriter`` (same rows, same transactions, ``synchronous_commit`` per
transaction as the backend chooses it), another conversation of the same database.
"""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from benchmarks import _data, _handwritten, _handwritten_pg
from benchmarks.conftest import SIZES, Results, paired, postgres_settings
from chunkstore import Message, MessageWriter, Store
from chunkstore._ids import ConversationId

SUITE = "write"
MODES = ("chunk", "message", "none")
SQLITE_MODES = ("FULL", "NORMAL")
# A writer is finished and replaced after this many chunks (in the untimed setup), so no
# message grows without bound.
CHUNKS_PER_WRITER = 100


@pytest.fixture(scope="module")
def tokens() -> list[str]:
    return _data.reply_tokens(_data.REPLY_TOKENS, random.Random(7))


def _store(tmp_path_factory: pytest.TempPathFactory, mode: Any) -> tuple[Store, str]:
    root = tmp_path_factory.mktemp(f"write-{mode}") / "store"
    store = Store(root, durability=mode, flush_interval=None)
    user = store.user_for("bench-write")
    return store, store.create_conversation(user, title=mode).id


def _sqlite(tmp_path_factory: pytest.TempPathFactory, synchronous: str) -> Any:
    path = tmp_path_factory.mktemp(f"write-sqlite-{synchronous}") / "chunks.sqlite"
    conn = _data.sqlite_connect(str(path), journal="WAL", synchronous=synchronous)
    _data.sqlite_create_chunks(conn)
    return conn


@pytest.mark.parametrize(
    "variant", [f"chunkstore {m}" for m in MODES] + [f"sqlite {s}" for s in SQLITE_MODES]
)
def test_append_chunk(
    benchmark: Any,
    results: Results,
    tmp_path_factory: pytest.TempPathFactory,
    tokens: list[str],
    variant: str,
) -> None:
    benchmark.group = "write one 60-token chunk"
    chunk = tokens[: _data.CHUNK_TOKENS]
    if variant.startswith("chunkstore"):
        store, conv_id = _store(tmp_path_factory, variant.split()[1])
        state: dict[str, MessageWriter] = {}

        def setup() -> None:
            writer = state.get("writer")
            if writer is None or writer.chunks_written >= CHUNKS_PER_WRITER:
                if writer is not None:
                    writer.finish()
                state["writer"] = store.stream_message(conv_id)

        def append_chunk() -> None:
            append = state["writer"].append
            for token in chunk:
                append(token)

        benchmark.pedantic(append_chunk, setup=setup, rounds=SIZES.write_rounds)
        writer = state["writer"]
        assert writer.chunks_written >= 1
        writer.finish()
    else:
        conn = _sqlite(tmp_path_factory, variant.split()[1])
        counter = iter(range(1, 10**9))

        def insert_chunk() -> None:
            pending = []
            for token in chunk:
                pending.append(token)
            n = next(counter)
            record = {
                "messageId": "us01-co01-ms01",
                "role": "assistant",
                "tokens": "".join(pending),
                "tokenCount": len(pending),
                "timestamp": "2026-01-01T00:00:00.000000Z",
                "status": "streaming",
            }
            conn.execute(_data.CHUNK_INSERT, _data.chunk_row("us01-co01", 1, n, record))
            # isolation_level=None: the INSERT is its own transaction, committed here.

        benchmark.pedantic(insert_chunk, rounds=SIZES.write_rounds)
        conn.close()
    results.record(benchmark, SUITE, "one 60-token chunk", variant)
    _declare(results, "one 60-token chunk")


@pytest.mark.parametrize(
    "variant", [f"chunkstore {m}" for m in MODES] + [f"sqlite {s}" for s in SQLITE_MODES]
)
def test_reply(
    benchmark: Any,
    results: Results,
    tmp_path_factory: pytest.TempPathFactory,
    tokens: list[str],
    variant: str,
) -> None:
    benchmark.group = "write a 400-token reply"
    target: Callable[[], Any]
    if variant.startswith("chunkstore"):
        store, conv_id = _store(tmp_path_factory, variant.split()[1])

        def target() -> Any:
            with store.stream_message(conv_id, role="assistant") as writer:
                for token in tokens:
                    writer.append(token)
                return writer.finish("stop", usage={"completion_tokens": len(tokens)})

        message = benchmark.pedantic(target, rounds=SIZES.reply_rounds)
        assert message.content == "".join(tokens)
        assert message.status == "complete"
    else:
        conn = _sqlite(tmp_path_factory, variant.split()[1])
        counter = iter(range(1, 10**9))

        def target() -> Any:
            seq = next(counter)
            chunk_tokens = _data.CHUNK_TOKENS
            pending: list[str] = []
            n = 0
            for i, token in enumerate(tokens):
                pending.append(token)
                last = i == len(tokens) - 1
                if len(pending) == chunk_tokens or last:
                    n += 1
                    record = {
                        "messageId": f"us01-co01-ms{seq:02d}",
                        "role": "assistant",
                        "tokens": "".join(pending),
                        "tokenCount": len(pending),
                        "timestamp": "2026-01-01T00:00:00.000000Z",
                        "status": "complete" if last else "streaming",
                    }
                    if last:
                        record["finishReason"] = "stop"
                        record["usage"] = {"completion_tokens": len(tokens)}
                    conn.execute(_data.CHUNK_INSERT, _data.chunk_row("us01-co01", seq, n, record))
                    pending = []
            return n

        assert benchmark.pedantic(target, rounds=SIZES.reply_rounds) == 7
        conn.close()
    results.record(benchmark, SUITE, "400-token reply", variant)
    _declare(results, "400-token reply")


def _declare(results: Results, case: str) -> None:
    results.ratio(SUITE, case, "chunkstore chunk", "sqlite FULL", target="(both fsync per chunk)")
    results.ratio(SUITE, case, "chunkstore message", "sqlite NORMAL")
    results.ratio(SUITE, case, "chunkstore none", "sqlite NORMAL")


# -- the SQLite backend against hand-written SQL on its own database ------------------------------


def _rows(path: str, conversation_id: str) -> list[Any]:
    """A conversation's message and chunk rows, without what differs between two writes of
    the same reply (ids, times): what the backend and the hand-written writer must agree on."""
    conv = ConversationId.parse(conversation_id)
    volatile = ("messageId", "id", "timestamp", "createdAt", "completedAt")
    with sqlite3.connect(path) as conn:
        messages = conn.execute(
            "SELECT seq, role, status, writer, line FROM messages WHERE user_id = ? "
            "AND conversation = ? ORDER BY seq",
            (conv.user, conv.n),
        ).fetchall()
        chunks = conn.execute(
            "SELECT seq, chunk, typeof(record), record FROM chunks WHERE user_id = ? "
            "AND conversation = ? ORDER BY seq, chunk",
            (conv.user, conv.n),
        ).fetchall()
    conn.close()

    def strip(text: str) -> dict[str, Any]:
        return {k: v for k, v in orjson.loads(text).items() if k not in volatile}

    return [
        [(seq, role, status, writer, strip(line)) for seq, role, status, writer, line in messages],
        [(seq, chunk, kind, strip(record)) for seq, chunk, kind, record in chunks],
    ]


@pytest.mark.parametrize("mode", MODES)
def test_reply_sqlite_backend(
    benchmark: Any,
    results: Results,
    tmp_path_factory: pytest.TempPathFactory,
    tokens: list[str],
    mode: Any,
) -> None:
    """A 400-token reply through the SQLite backend against hand-written SQL writing the same
    rows, in alternating rounds. Each side has a database of its own, made the same way: in
    one shared file the conversation made first has its rows land in the middle of the
    b-trees and the other's at their end, which is cheaper (measured: 116-120 µs against
    126-148 µs for the same statements), and would favour one side."""
    benchmark.group = f"write a 400-token reply, sqlite backend {mode}, interleaved"
    base = tmp_path_factory.mktemp(f"write-sqlite-backend-{mode}")
    path, hand_path = str(base / "store.db"), str(base / "hand-written.db")
    usage = {"completion_tokens": len(tokens)}
    with Store(f"sqlite:{hand_path}", durability="none") as twin:
        hand_conv = twin.create_conversation(twin.user_for("bench-write"), title="same").id
    with Store(f"sqlite:{path}", durability=mode, flush_interval=None) as store:
        user = store.user_for("bench-write")
        api_conv = store.create_conversation(user, title="same").id
        assert api_conv == hand_conv  # the same keys, in databases of the same shape
        conn = _handwritten.connect(hand_path)
        writer = _handwritten.ReplyWriter(conn, hand_conv, mode, _handwritten.take_instance(conn))

        def api(_: Any) -> Message:
            with store.stream_message(api_conv, role="assistant") as stream:
                for token in tokens:
                    stream.append(token)
                return stream.finish("stop", usage=usage)

        def hand_written(_: Any) -> Message:
            return writer.write_reply(tokens, "stop", usage)

        # One reply each, outside the timing: the same message and the same rows, or the
        # comparison means nothing.
        ours, theirs = api(None), hand_written(None)
        same = ("role", "content", "status", "finish_reason", "usage", "token_count", "seq")
        assert all(getattr(ours, f) == getattr(theirs, f) for f in same)
        assert ours.content == "".join(tokens) and ours.status == "complete"
        assert _rows(path, api_conv) == _rows(hand_path, hand_conv)
        figures = benchmark.pedantic(
            paired,
            args=((lambda: None, api), (lambda: None, hand_written), SIZES.reply_rounds),
            rounds=1,
            iterations=1,
        )
        assert _rows(path, api_conv) == _rows(hand_path, hand_conv)
        conn.close()
    with Store(f"sqlite:{hand_path}", durability="none") as twin:
        assert twin.messages(hand_conv, limit=None) != []
    results.record_pair(
        benchmark,
        SUITE,
        "400-token reply",
        f"chunkstore sqlite backend {mode}",
        f"hand-written query {mode}",
        figures,
        op="<=",
        limit=1.2,
        target="≤ 1.2x hand-written",
    )


# -- the PostgreSQL backend against hand-written SQL on its own database --------------------------


def _pg_rows(url: str, conversation_id: str) -> list[Any]:
    """``_rows`` on PostgreSQL: what the backend and the hand-written writer must agree on."""
    conv = ConversationId.parse(conversation_id)
    volatile = ("messageId", "id", "timestamp", "createdAt", "completedAt")
    with _handwritten_pg.connect(url) as conn:
        messages = conn.execute(
            "SELECT seq, role, status, writer, line FROM messages WHERE user_id = %s "
            "AND conversation = %s ORDER BY seq",
            (conv.user, conv.n),
        ).fetchall()
        chunks = conn.execute(
            "SELECT seq, chunk, pg_typeof(record)::text, record FROM chunks WHERE user_id = %s "
            "AND conversation = %s ORDER BY seq, chunk",
            (conv.user, conv.n),
        ).fetchall()

    def strip(text: str) -> dict[str, Any]:
        return {k: v for k, v in orjson.loads(text).items() if k not in volatile}

    return [
        [(seq, role, status, writer, strip(line)) for seq, role, status, writer, line in messages],
        [(seq, chunk, kind, strip(record)) for seq, chunk, kind, record in chunks],
    ]


@pytest.mark.parametrize("mode", MODES)
def test_reply_postgres_backend(
    benchmark: Any, results: Results, postgres_url: str, tokens: list[str], mode: Any
) -> None:
    """A 400-token reply through the PostgreSQL backend against hand-written SQL writing the
    same rows into its database, in alternating rounds."""
    benchmark.group = f"write a 400-token reply, postgresql backend {mode}, interleaved"
    benchmark.extra_info.update(postgres_settings(postgres_url))
    usage = {"completion_tokens": len(tokens)}
    with Store(postgres_url, durability=mode, flush_interval=None) as store:
        user = store.user_for(f"bench-write-{mode}")
        api_conv = store.create_conversation(user, title="backend").id
        hand_conv = store.create_conversation(user, title="hand-written").id
        conn = _handwritten_pg.connect(postgres_url)
        writer = _handwritten_pg.ReplyWriter(
            conn, hand_conv, mode, _handwritten_pg.take_instance(conn)
        )

        def api(_: Any) -> Message:
            with store.stream_message(api_conv, role="assistant") as stream:
                for token in tokens:
                    stream.append(token)
                return stream.finish("stop", usage=usage)

        def hand_written(_: Any) -> Message:
            return writer.write_reply(tokens, "stop", usage)

        # One reply each, outside the timing (the backend's lease is taken here): the same
        # message and the same rows, or the comparison means nothing.
        ours, theirs = api(None), hand_written(None)
        same = ("role", "content", "status", "finish_reason", "usage", "token_count", "seq")
        assert all(getattr(ours, f) == getattr(theirs, f) for f in same)
        assert ours.content == "".join(tokens) and ours.status == "complete"
        assert _pg_rows(postgres_url, api_conv) == _pg_rows(postgres_url, hand_conv)
        figures = benchmark.pedantic(
            paired,
            args=((lambda: None, api), (lambda: None, hand_written), SIZES.reply_rounds),
            rounds=1,
            iterations=1,
        )
        assert _pg_rows(postgres_url, api_conv) == _pg_rows(postgres_url, hand_conv)
        assert store.messages(hand_conv, limit=None) != []
        conn.close()
    results.record_pair(
        benchmark,
        SUITE,
        "400-token reply",
        f"chunkstore postgresql backend {mode}",
        f"hand-written pg query {mode}",
        figures,
        op="<=",
        limit=1.2,
        target="≤ 1.2x hand-written",
    )
