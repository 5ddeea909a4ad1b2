"""The PostgreSQL search index (``search_documents``: a stored tsvector under the explicit
'simple' configuration, a GIN index): filled by its migration, kept current by every write,
checked and repaired by ``check``, and a search's two plans: the primary key walked newest first
(common words), the GIN index (rare ones).
What a search finds is the conformance suite's (``test_conformance_search.py``)."""

from __future__ import annotations

import pytest
from pg_support import digest, message_record, new_conversation, open_backend, raw

import chunkstore._postgres as pg_module
from chunkstore._ids import ConversationId, UserId
from chunkstore._postgres import MIGRATIONS, PostgresBackend, migrate
from chunkstore._rebuild import rebuild_message
from chunkstore._sql import line_of

ME = UserId(1)


def hits(backend: PostgresBackend, query: str) -> list[tuple[str, int | None]]:
    found = backend.search(ME, query.split(), limit=50, offset=0, include_deleted=False)
    return [(m.conversation.id, m.seq) for m in found]


def documents(url: str) -> list[tuple[int, int, int, str]]:
    with raw(url) as conn:
        return conn.execute(
            "SELECT user_id, conversation, seq, words FROM search_documents ORDER BY 1, 2, 3"
        ).fetchall()


def old_line(seq: int, text: str) -> str:
    record = message_record("user", text)
    record["messageId"] = f"us01-co01-ms{seq:02d}"
    record["timestamp"] = "2026-01-01T00:00:00.000000Z"
    return line_of(rebuild_message(record["messageId"], seq, [record], writer_alive=False))


def test_the_migration_indexes_what_is_already_there(pg_url: str) -> None:
    now = "2026-01-01T00:00:00.000000Z"
    with raw(pg_url) as conn:
        assert migrate(conn, MIGRATIONS[:2], what="test") == 2
        conn.execute("INSERT INTO users (created_at, last_conversation) VALUES (%s, 1)", (now,))
        conn.execute("INSERT INTO sessions VALUES (%s, 1)", (digest("old"),))
        conn.execute(
            "INSERT INTO conversations (user_id, number, title, created_at, updated_at, "
            "last_seq) VALUES (1, 1, '\"Lisbon Trip\"', %s, %s, 3)",
            (now, now),
        )
        for seq, status, line, deleted_at in [
            (1, "complete", old_line(1, "Pastel de nata"), None),
            (2, "streaming", None, None),  # never sealed: not searchable
            (3, "complete", old_line(3, "a secret plan"), now),  # deleted: not searchable
        ]:
            conn.execute(
                "INSERT INTO messages (user_id, conversation, seq, role, status, created_at, "
                "line, deleted_at) VALUES (1, 1, %s, 'user', %s, %s, %s, %s)",
                (seq, status, now, line, deleted_at),
            )
    backend = open_backend(pg_url)
    try:
        assert documents(pg_url) == [(1, 1, 0, "lisbon trip"), (1, 1, 1, "pastel de nata")]
        assert hits(backend, "lisbon") == [("us01-co01", None)]
        assert hits(backend, "nata") == [("us01-co01", 1)]
        assert hits(backend, "secret") == []
        assert [p for p in backend.check(False) if p.kind == "stale-index"] == []
    finally:
        backend.close()


def test_writes_leave_no_stale_documents(backend: PostgresBackend, pg_url: str) -> None:
    conv = new_conversation(backend, title="Lisbon")
    backend.update_conversation(conv, {"title": "Porto again"})
    backend.append_message(conv, message_record("user", "hello there"), max_messages=None)
    backend.append_message(conv, message_record("user", "!!!"), max_messages=None)  # no words
    assert documents(pg_url) == [(1, 1, 0, "porto again"), (1, 1, 1, "hello there")]
    assert backend.delete_message(conv, 1) is True
    backend.update_conversation(conv, {"title": None})
    assert documents(pg_url) == []
    backend.update_conversation(conv, {"title": "Faro"})
    backend.append_message(conv, message_record("user", "sun"), max_messages=None)
    backend.remove_conversation(conv)  # the foreign key takes its documents
    assert documents(pg_url) == []
    assert backend.check(False) == []


def test_a_very_long_message_is_indexed_up_to_the_bound(backend: PostgresBackend) -> None:
    conv = new_conversation(backend)
    words = [f"w{i}" for i in range(60_000)]  # ~410,000 characters of words
    text = " ".join(words) + " lastword"
    backend.append_message(conv, message_record("user", text), max_messages=None)
    assert hits(backend, "w1") == [(str(conv), 1)]
    assert hits(backend, "lastword") == []  # past _MAX_INDEXED_CHARS: stored, not indexed
    assert backend.check(False) == []


def plan(conn: object, statement: bytes, settings: bytes, **params: object) -> str:
    """The plan of one search step as ``_ranked`` runs it (its settings in its transaction)."""
    conn.execute(b"BEGIN; SET LOCAL enable_seqscan = off; " + settings)  # type: ignore[attr-defined]
    try:
        rows = conn.execute(b"EXPLAIN " + statement, params).fetchall()  # type: ignore[attr-defined]
    finally:
        conn.execute(b"COMMIT")  # type: ignore[attr-defined]
    return "\n".join(row[0] for row in rows)


def test_common_words_walk_the_primary_key_rare_ones_the_gin_index(
    backend: PostgresBackend, pg_url: str
) -> None:
    new_conversation(backend, title="Lisbon")
    with raw(pg_url) as conn:
        # One user with 3,000 more conversations (rows made in SQL, for speed), each with a
        # message holding "porto"; "zanzibar" in one old conversation (below the messages'
        # walk window of 2,000 documents) and one new one (inside it). Then statistics.
        conn.execute(
            "INSERT INTO conversations (user_id, number, title, created_at, updated_at) "
            "SELECT 1, n, NULL, '', '' FROM generate_series(2, 3001) AS n"
        )
        conn.execute(
            "INSERT INTO search_documents (user_id, conversation, seq, words) "
            "SELECT 1, n, 1, 'the same words about porto number ' || n "
            "|| CASE WHEN n IN (10, 2990) THEN ' zanzibar' ELSE '' END "
            "FROM generate_series(2, 3001) AS n"
        )
        conn.execute("ANALYZE")
        _, walk, rest = pg_module._SEARCH_STEPS[1]
        params = {"user": 1, "deleted": False, "titled": [], "need": 20, "start": 1002}
        for query in ("porto", "zanzibar", "lis"):
            walked = plan(conn, walk, pg_module._STEP_SETTINGS[0], q=query + ":*", **params)
            assert "Index Scan Backward using search_documents_pkey" in walked, walked
            assert "Bitmap" not in walked, walked
            found = plan(conn, rest, pg_module._STEP_SETTINGS[1], q=query + ":*", **params)
            assert "Bitmap Index Scan on search_documents_document" in found, found
            # (The planner may AND it with the primary key's bitmap of the range: still no walk.)
            assert "Index Scan Backward" not in found, found
    assert hits(backend, "lis") == [("us01-co01", None)]
    assert hits(backend, "zanzibar") == [("us01-co2990", 1), ("us01-co10", 1)]
    porto = hits(backend, "porto")
    assert porto == [(f"us01-co{n}", 1) for n in range(3001, 2951, -1)]


@pytest.mark.parametrize("term", ["a'b", "a\\b", "a:b", "a&b|c!"])
def test_a_tsquery_quotes_what_a_term_holds(backend: PostgresBackend, term: str) -> None:
    # Terms never hold these (``_search`` keeps letters and digits): the quoting holds anyway.
    new_conversation(backend, title="Lisbon")
    backend.search(ME, [term], limit=5, offset=0, include_deleted=False)


def test_check_finds_and_repairs_a_stale_index(backend: PostgresBackend, pg_url: str) -> None:
    conv = new_conversation(backend, title="Lisbon")
    backend.append_message(conv, message_record("user", "pastel de nata"), max_messages=None)
    backend.append_message(conv, message_record("user", "tram"), max_messages=None)
    other = new_conversation(backend, title="Other")
    with raw(pg_url) as conn:
        conn.execute("DELETE FROM search_documents WHERE seq = 1")
        conn.execute("UPDATE search_documents SET words = 'bus' WHERE seq = 2")
        conn.execute(
            "UPDATE search_documents SET words = 'porto' WHERE seq = 0 AND conversation = 1"
        )
        conn.execute("INSERT INTO search_documents VALUES (1, 2, 7, 'ghost')")
    problems = backend.check(False)
    assert sorted((p.kind, p.path, p.fixed) for p in problems) == [
        ("stale-index", str(conv), False),
        ("stale-index", f"{conv}-ms01", False),
        ("stale-index", f"{conv}-ms02", False),
        ("stale-index", f"{other}-ms07", False),
    ]
    assert all(p.fixed for p in backend.check(True))
    assert backend.check(False) == []
    assert hits(backend, "nata") == [(str(conv), 1)]
    assert hits(backend, "lisbon") == [(str(conv), None)]
    assert hits(backend, "ghost") == hits(backend, "bus") == hits(backend, "porto") == []
    assert ConversationId(1, 2) == other


def test_check_rebuilds_the_document_of_a_rebuilt_line(
    backend: PostgresBackend, pg_url: str
) -> None:
    conv = new_conversation(backend)
    backend.append_message(conv, message_record("user", "lisbon"), max_messages=None)
    with raw(pg_url) as conn:
        conn.execute("UPDATE messages SET line = '{\"seq\": 1}'")
        conn.execute("DELETE FROM search_documents WHERE seq = 1")
    assert [p.kind for p in backend.check(True)] == ["stale-line"]
    assert backend.check(False) == []
    assert hits(backend, "lisbon") == [(str(conv), 1)]
