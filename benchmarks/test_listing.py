"""Listing a user's conversations, newest first: page 1 and page 50 (limit 20) of 10,000.

SPEC §6: page 1 of a user with 10,000 conversations under 10 ms cold, at most SQLite's time warm.

The fixture is built once per module. ``create_conversation`` replaces ``user.json`` and makes
two directories (about 1 ms on the README's machine), so creating all 10,000 through the API
would add 10 s or more to every run: the first ``listing_api_conversations`` go through the
API (durability "none"), and the rest are written directly in on-disk format v1
(``conversation.json`` cloned from an API-made one, re-encoded with its checksum;
``user.json``'s counter moved on), which is exactly what the API would have left.
``test_create_conversation`` then times the API's ``create_conversation`` at that size.

Baseline: SQLite ``conversations`` table (``INTEGER PRIMARY KEY`` plus an index on
``(user_id, id)``), page 50 both with ``OFFSET`` and keyset (``id < ?``), rows turned into dicts.
chunkstore's page 50 uses its cursor (the id to continue after).

The SQLite backend (``test_sqlite_backend``), SPEC §6: at most 1.2x a hand-written query of the
same rows on the same engine. A user with as many conversations, all created through
``Store("sqlite:PATH")`` (fast enough there: about 30 µs each); page 1, page 50 (its cursor)
and ``get_conversation``, against the same queries hand-written on the backend's own database
(``_handwritten.list_page``, ``get_conversation``: rows into the same ``Conversation`` objects
and ``ConversationPage``), in alternating rounds (``conftest.paired``); cold: a fresh ``Store``
/ connection each round, opened in the untimed setup; warm: one reused.

The PostgreSQL backend (``test_postgres_backend``), the same target and method on
``Store("postgresql://...")`` (the benchmark session's server), against
``_handwritten_pg.list_page`` / ``get_conversation`` on the same database; cold: a fresh
``Store`` with its pool's connection opened in the untimed setup / a fresh connection, each a
new server session.

The FastAPI plan's bound (``test_lookup_bound``), SPEC §6: a conversation lookup
(``get_conversation``) under 100 ms on every backend (file, sqlite, postgresql), at 10,000
conversations, cold (a fresh ``Store`` each round, opened in the untimed setup) and warm.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from benchmarks import _data, _handwritten, _handwritten_pg
from benchmarks.conftest import SIZES, Results, paired, postgres_settings
from chunkstore import (
    Store,  # the record codec: the fixture writes on-disk format v1
)
from chunkstore._fsio import settled
from chunkstore._ids import ConversationId, UserId

SUITE = "listing"
LIMIT = 20
PAGE = 50


@dataclass
class Listing:
    root: str
    user: str
    count: int
    sqlite_path: str
    api_create_ms: float  # create_conversation's time at the end of the API phase


def _page_cursor(count: int, page: int) -> tuple[int, int]:
    """The last conversation number before ``page`` (chunkstore's cursor), and the OFFSET."""
    offset = (page - 1) * LIMIT
    return count - offset + 1, offset


@pytest.fixture(scope="module")
def listing(tmp_path_factory: pytest.TempPathFactory) -> Listing:
    base = tmp_path_factory.mktemp("listing")
    root = str(base / "store")
    count = SIZES.listing_conversations
    user, template, last_create = _data.build_conversations(
        root, count, SIZES.listing_api_conversations
    )
    uid = UserId.parse(user)

    sqlite_path = str(base / "conversations.sqlite")
    conn = _data.sqlite_connect(sqlite_path)
    conn.execute(
        "CREATE TABLE conversations (id INTEGER PRIMARY KEY, conversation_id TEXT NOT NULL, "
        "user_id TEXT NOT NULL, title TEXT, created_at TEXT NOT NULL, updated_at TEXT NOT NULL, "
        "pinned INTEGER NOT NULL DEFAULT 0, metadata TEXT, participants TEXT, deleted_at TEXT)"
    )
    conn.execute("CREATE INDEX conversations_user ON conversations (user_id, id)")
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO conversations VALUES (?,?,?,?,?,?,?,?,?,?)",
        (
            (
                i,
                str(ConversationId(uid.n, i)),
                user,
                f"Conversation {i}",
                template["createdAt"],
                template["updatedAt"],
                0,
                orjson.dumps({"n": str(i)}).decode(),
                "[]",
                None,
            )
            for i in range(1, count + 1)
        ),
    )
    conn.execute("COMMIT")
    conn.execute("ANALYZE")
    conn.close()
    return Listing(root, user, count, sqlite_path, last_create * 1000)


_SQL_COLUMNS = (
    "SELECT conversation_id, user_id, title, created_at, updated_at, pinned, metadata, "
    "participants, deleted_at FROM conversations"
)
SQL_OFFSET = (
    f"{_SQL_COLUMNS} WHERE user_id = ? AND deleted_at IS NULL ORDER BY id DESC LIMIT ? OFFSET ?"
)
SQL_KEYSET = (
    f"{_SQL_COLUMNS} WHERE user_id = ? AND deleted_at IS NULL AND id < ? ORDER BY id DESC LIMIT ?"
)


def _rows_to_dicts(rows: Any) -> list[dict[str, Any]]:
    return [
        {
            "id": r[0],
            "user_id": r[1],
            "title": r[2],
            "created_at": r[3],
            "updated_at": r[4],
            "pinned": bool(r[5]),
            "metadata": orjson.loads(r[6]) if r[6] else {},
            "participants": orjson.loads(r[7]) if r[7] else [],
            "deleted_at": r[8],
        }
        for r in rows
    ]


def sqlite_page(conn: sqlite3.Connection, user: str, offset: int) -> list[dict[str, Any]]:
    return _rows_to_dicts(conn.execute(SQL_OFFSET, (user, LIMIT, offset)))


def sqlite_page_after(conn: sqlite3.Connection, user: str, before: int) -> list[dict[str, Any]]:
    return _rows_to_dicts(conn.execute(SQL_KEYSET, (user, before, LIMIT)))


VARIANTS = (
    "chunkstore cold",
    "chunkstore warm",
    "sqlite cold",
    "sqlite warm",
    "sqlite keyset cold",
    "sqlite keyset warm",
)


@pytest.mark.parametrize(
    ("page", "variant"),
    [(1, v) for v in VARIANTS if "keyset" not in v] + [(PAGE, v) for v in VARIANTS],
)
def test_list_page(
    benchmark: Any, results: Results, listing: Listing, page: int, variant: str
) -> None:
    case = f"page {page} of {listing.count:,}"
    benchmark.group = f"listing {case}"
    before, offset = _page_cursor(listing.count, page)
    cursor = str(ConversationId(UserId.parse(listing.user).n, before)) if page > 1 else None
    expected_first = listing.count - offset
    rounds = SIZES.listing_rounds
    target: Callable[..., Any]
    kind, temperature = variant.rsplit(" ", 1)

    if kind == "chunkstore":

        def target(store: Store) -> list[str]:
            return [c.id for c in store.list_conversations(listing.user, LIMIT, cursor)]

        def setup() -> tuple[tuple[Any, ...], dict[str, Any]]:
            return (Store(listing.root, durability="none"),), {}

    else:
        keyset = kind == "sqlite keyset"

        def target(conn: sqlite3.Connection) -> list[str]:
            if keyset:
                rows = sqlite_page_after(conn, listing.user, before)
            else:
                rows = sqlite_page(conn, listing.user, offset)
            return [r["id"] for r in rows]

        def setup() -> tuple[tuple[Any, ...], dict[str, Any]]:
            return (_data.sqlite_connect(listing.sqlite_path),), {}

    if temperature == "cold":
        ids = benchmark.pedantic(target, setup=setup, rounds=rounds)
    else:
        if kind == "chunkstore":
            _wait_until_quiet(Path(listing.root) / listing.user / "data" / "conversations")
        (handle,), _ = setup()
        ids = benchmark.pedantic(target, args=(handle,), rounds=rounds, warmup_rounds=1)

    user_n = UserId.parse(listing.user).n
    assert ids == [str(ConversationId(user_n, expected_first - i)) for i in range(LIMIT)]
    results.record(benchmark, SUITE, case, variant)
    if page == 1:
        results.limit(SUITE, case, "chunkstore cold", op="<", limit=0.010, target="< 10 ms")
    results.ratio(SUITE, case, "chunkstore cold", "sqlite cold")
    results.ratio(
        SUITE,
        case,
        "chunkstore warm",
        "sqlite warm",
        op="<=" if page == 1 else None,
        limit=1.0 if page == 1 else None,
        target="≤ 1.0x SQLite" if page == 1 else "",
    )
    if page > 1:
        results.ratio(SUITE, case, "chunkstore warm", "sqlite keyset warm")


@pytest.mark.parametrize("variant", ["chunkstore", "sqlite"])
def test_create_conversation(
    benchmark: Any, results: Results, listing: Listing, variant: str
) -> None:
    """Creating one more conversation for a user who already has ``listing_conversations``.

    Runs last: it adds conversations (newer than every page above). Durability "none" against
    SQLite (WAL) with ``synchronous=OFF``: neither syncs, so this is the CPU and file-system cost.
    """
    case = f"create at {listing.count:,}"
    benchmark.group = "create a conversation"
    rounds = max(1, SIZES.listing_rounds // 6)
    if variant == "chunkstore":
        store = Store(listing.root, durability="none")
        benchmark.pedantic(
            lambda: store.create_conversation(listing.user, title="new"), rounds=rounds
        )
        results.record(
            benchmark, SUITE, case, variant, api_phase_end_create_ms=listing.api_create_ms
        )
    else:
        conn = _data.sqlite_connect(listing.sqlite_path, journal="WAL", synchronous="OFF")
        counter = iter(range(listing.count + 1, 10**9))

        def insert() -> None:
            i = next(counter)
            conn.execute(
                "INSERT INTO conversations VALUES (?,?,?,?,?,?,?,?,?,?)",
                (i, f"us01-co{i}", listing.user, "new", "", "", 0, "{}", "[]", None),
            )

        benchmark.pedantic(insert, rounds=rounds)
        conn.close()
        results.record(benchmark, SUITE, case, variant)
    results.ratio(SUITE, case, "chunkstore", "sqlite")


def _wait_until_quiet(directory: Path) -> None:
    """Warm means a directory nobody wrote to within its timestamp granularity (100 ms here):
    only then can the store trust its cached listing (``chunkstore._fsio.settled``). While
    conversations are being created that fast, a warm listing costs what a cold one does."""
    while not settled(time.time_ns(), os.stat(directory).st_mtime_ns):
        time.sleep(0.05)


# -- the SQLite backend against hand-written SQL on its own database ------------------------------


@dataclass
class SqliteListing:
    path: str  # the backend's database
    user: str
    count: int


@pytest.fixture(scope="module")
def sqlite_listing(tmp_path_factory: pytest.TempPathFactory) -> SqliteListing:
    path = str(tmp_path_factory.mktemp("listing-sqlite") / "store.db")
    count = SIZES.listing_conversations
    with Store(f"sqlite:{path}", durability="none") as store:
        user = store.user_for("bench-listing")
        for i in range(1, count + 1):
            store.create_conversation(user, title=f"Conversation {i}", metadata={"n": str(i)})
    return SqliteListing(path, user, count)


@pytest.mark.parametrize(
    ("what", "temperature"),
    [(w, t) for w in ("page 1", f"page {PAGE}", "lookup") for t in ("cold", "warm")],
)
def test_sqlite_backend(
    benchmark: Any, results: Results, sqlite_listing: SqliteListing, what: str, temperature: str
) -> None:
    """The SQLite backend against hand-written SQL on its own database, in alternating rounds."""
    count, user = sqlite_listing.count, sqlite_listing.user
    user_n = UserId.parse(user).n
    target = f"sqlite:{sqlite_listing.path}"
    api: Callable[[Store], Any]
    hand_written: Callable[[sqlite3.Connection], Any]
    if what == "lookup":
        case = f"get_conversation at {count:,}"
        conv_id = str(ConversationId(user_n, count // 2))

        def api(store: Store) -> Any:
            return store.get_conversation(conv_id)

        def hand_written(conn: sqlite3.Connection) -> Any:
            return _handwritten.get_conversation(conn, conv_id)

    else:
        page = int(what.split()[1])
        case = f"page {page} of {count:,}"
        before, _ = _page_cursor(count, page)
        cursor = str(ConversationId(user_n, before)) if page > 1 else None

        def api(store: Store) -> Any:
            return store.list_conversations(user, LIMIT, cursor)

        def hand_written(conn: sqlite3.Connection) -> Any:
            return _handwritten.list_page(conn, user, LIMIT, cursor)

    benchmark.group = f"listing {case}, sqlite backend, interleaved"
    # The same result, field for field, or the comparison means nothing.
    with Store(target, durability="none") as store:
        expected = api(store)
    conn = _handwritten.connect(sqlite_listing.path)
    assert hand_written(conn) == expected
    conn.close()
    if what == "lookup":
        assert expected.id == conv_id
    else:
        first = count - (page - 1) * LIMIT
        assert [c.id for c in expected] == [
            str(ConversationId(user_n, first - i)) for i in range(LIMIT)
        ]

    rounds = SIZES.listing_paired_rounds
    if temperature == "cold":
        figures = benchmark.pedantic(
            paired,
            args=(
                (lambda: Store(target, durability="none"), api),
                (lambda: _handwritten.connect(sqlite_listing.path), hand_written),
                rounds,
            ),
            rounds=1,
            iterations=1,
        )
    else:
        with Store(target, durability="none") as store:
            conn = _handwritten.connect(sqlite_listing.path)
            api(store)
            hand_written(conn)
            figures = benchmark.pedantic(
                paired,
                args=(
                    (lambda: None, lambda _: api(store)),
                    (lambda: None, lambda _: hand_written(conn)),
                    rounds,
                ),
                rounds=1,
                iterations=1,
            )
            conn.close()
    results.record_pair(
        benchmark,
        SUITE,
        case,
        f"chunkstore sqlite backend {temperature}",
        f"hand-written query {temperature}",
        figures,
        op="<=",
        limit=1.2,
        target="≤ 1.2x hand-written",
    )


# -- the PostgreSQL backend against hand-written SQL on its own database --------------------------


@dataclass
class PostgresListing:
    url: str  # the backend's database
    user: str
    count: int


@pytest.fixture(scope="module")
def postgres_listing(postgres_url: str) -> PostgresListing:
    count = SIZES.listing_conversations
    with Store(postgres_url, durability="none") as store:
        user = store.user_for("bench-listing")
        for i in range(1, count + 1):
            store.create_conversation(user, title=f"Conversation {i}", metadata={"n": str(i)})
    with _handwritten_pg.connect(postgres_url) as conn:
        conn.execute("VACUUM ANALYZE")
    return PostgresListing(postgres_url, user, count)


@pytest.mark.parametrize(
    ("what", "temperature"),
    [(w, t) for w in ("page 1", f"page {PAGE}", "lookup") for t in ("cold", "warm")],
)
def test_postgres_backend(
    benchmark: Any,
    results: Results,
    postgres_listing: PostgresListing,
    what: str,
    temperature: str,
) -> None:
    """The PostgreSQL backend against hand-written SQL on its own database, in alternating
    rounds."""
    count, user, url = postgres_listing.count, postgres_listing.user, postgres_listing.url
    user_n = UserId.parse(user).n
    benchmark.extra_info.update(postgres_settings(url))
    api: Callable[[Store], Any]
    hand_written: Callable[[Any], Any]
    if what == "lookup":
        case = f"get_conversation at {count:,}"
        conv_id = str(ConversationId(user_n, count // 2))

        def api(store: Store) -> Any:
            return store.get_conversation(conv_id)

        def hand_written(conn: Any) -> Any:
            return _handwritten_pg.get_conversation(conn, conv_id)

    else:
        page = int(what.split()[1])
        case = f"page {page} of {count:,}"
        before, _ = _page_cursor(count, page)
        cursor = str(ConversationId(user_n, before)) if page > 1 else None

        def api(store: Store) -> Any:
            return store.list_conversations(user, LIMIT, cursor)

        def hand_written(conn: Any) -> Any:
            return _handwritten_pg.list_page(conn, user, LIMIT, cursor)

    benchmark.group = f"listing {case}, postgresql backend, interleaved"
    # The same result, field for field, or the comparison means nothing.
    with Store(url, durability="none") as store:
        expected = api(store)
    with _handwritten_pg.connect(url) as conn:
        assert hand_written(conn) == expected
    if what == "lookup":
        assert expected.id == conv_id
    else:
        first = count - (page - 1) * LIMIT
        assert [c.id for c in expected] == [
            str(ConversationId(user_n, first - i)) for i in range(LIMIT)
        ]

    rounds = SIZES.listing_paired_rounds
    if temperature == "cold":
        figures = benchmark.pedantic(
            paired,
            args=(
                (lambda: _handwritten_pg.open_store(url), api),
                (lambda: _handwritten_pg.connect(url), hand_written),
                rounds,
            ),
            rounds=1,
            iterations=1,
        )
    else:
        with Store(url, durability="none") as store, _handwritten_pg.connect(url) as conn:
            api(store)
            hand_written(conn)
            figures = benchmark.pedantic(
                paired,
                args=(
                    (lambda: None, lambda _: api(store)),
                    (lambda: None, lambda _: hand_written(conn)),
                    rounds,
                ),
                rounds=1,
                iterations=1,
            )
    results.record_pair(
        benchmark,
        SUITE,
        case,
        f"chunkstore postgresql backend {temperature}",
        f"hand-written pg query {temperature}",
        figures,
        op="<=",
        limit=1.2,
        target="≤ 1.2x hand-written",
    )


# -- the FastAPI plan's bound: a conversation lookup, every backend -------------------------------

LOOKUP_BOUND_S = 0.100  # SPEC §6 and the FastAPI plan


@pytest.mark.parametrize(
    ("backend", "temperature"),
    [(b, t) for b in ("file", "sqlite", "postgresql") for t in ("cold", "warm")],
)
def test_lookup_bound(
    benchmark: Any, request: pytest.FixtureRequest, results: Results, backend: str, temperature: str
) -> None:
    """``store.get_conversation`` of one of a user's 10,000 conversations, on each backend."""
    target: str
    if backend == "file":
        data: Any = request.getfixturevalue("listing")
        target = data.root
    elif backend == "sqlite":
        data = request.getfixturevalue("sqlite_listing")
        target = f"sqlite:{data.path}"
    else:
        data = request.getfixturevalue("postgres_listing")
        target = data.url
        benchmark.extra_info.update(postgres_settings(target))
    conv_id = str(ConversationId(UserId.parse(data.user).n, data.count // 2))
    case = f"get_conversation at {data.count:,}"
    benchmark.group = f"listing {case}, every backend"

    def fresh() -> Store:
        if backend == "postgresql":
            return _handwritten_pg.open_store(target)
        return Store(target, durability="none")

    def lookup(store: Store) -> Any:
        return store.get_conversation(conv_id)

    rounds = SIZES.listing_rounds
    if temperature == "cold":
        out = benchmark.pedantic(
            lookup,
            setup=lambda: ((fresh(),), {}),
            teardown=lambda store: store.close(),
            rounds=rounds,
        )
    else:
        with fresh() as store:
            out = benchmark.pedantic(lookup, args=(store,), rounds=rounds, warmup_rounds=1)
    assert out.id == conv_id
    variant = f"chunkstore {backend} {temperature}"
    results.record(benchmark, SUITE, case, variant)
    results.limit(SUITE, case, variant, op="<", limit=LOOKUP_BOUND_S, target="< 100 ms")
