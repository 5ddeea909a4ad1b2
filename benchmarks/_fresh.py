"""One rebuild measured in a process of its own: ``python -m benchmarks._fresh SIDE MODE ...``.

SPEC §6 measures a rebuild in a *fresh process*: nothing the reader learned from an earlier
read (regexes compiled per conversation, parsed segments, listings, SQLite's schema and page
cache) may help. A fresh ``Store`` in a long-lived benchmark process (``test_rebuild``'s cold
rounds) keeps the process's own warm state, so ``test_rebuild_fresh_process`` starts this
module once per measurement, alternating the two sides.

Each run imports its side's modules and opens its store or connection (not timed: a server
does that once), then times one rebuild and prints one JSON line: the seconds, the number of
messages and a digest of ``[(message id, content), ...]``, which the caller compares between
the sides (outside the timed region).

Sides and modes:

* ``chunkstore``: ``Store(root).messages(conv, ...)`` on the file store;
* ``sqlite``: the plain indexed table of chunk records (``_data.sqlite_create_chunks``):
  ``SELECT message_id, tokens FROM chunks WHERE conversation_id = ? [AND message_seq > ? AND
  message_seq <= ?] ORDER BY message_seq, chunk_seq``, each message's tokens joined: the text
  a history API returns, and nothing else (no message objects, no other fields);
* ``whole``: the conversation in one call (``limit=None`` / one query);
* ``paged``: as the history API reads it, pages of ``--page`` messages (``after_seq`` = the
  last seq of the page before) until a page comes back short. SQLite pages by seq range
  (seqs are gap-free in the fixtures: the cheapest page SQLite can serve).

``--profile`` prints a cProfile of the timed call to stderr (``--sort``), for where the time
goes in a fresh process.

One more side, for ``benchmarks/README.md``'s account of where the time goes (not part of
the suite): ``floor``, what any reader of format v1 must do at least to rebuild a conversation
from its segment, with chunkstore's own primitives: read ``segment.jsonl`` whole, verify each
line's checksum and parse it with orjson, keeping the dicts (no listing, no ``Message``).
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import itertools
import json
import pstats
import sys
import time
from collections.abc import Callable
from typing import Any

Pairs = list[tuple[str, str]]

_WHOLE = (
    "SELECT message_id, tokens FROM chunks WHERE conversation_id = ? "
    "ORDER BY message_seq, chunk_seq"
)
_PAGE = (
    "SELECT message_id, tokens FROM chunks WHERE conversation_id = ? "
    "AND message_seq > ? AND message_seq <= ? ORDER BY message_seq, chunk_seq"
)


def _first(row: tuple[Any, ...]) -> Any:
    return row[0]


def _joined(rows: Any) -> Pairs:
    return [(mid, "".join(r[1] for r in group)) for mid, group in itertools.groupby(rows, _first)]


def sqlite_reader(path: str, conv: str, mode: str, page: int) -> Callable[[], Pairs]:
    import sqlite3

    conn = sqlite3.connect(path, isolation_level=None)
    if mode == "whole":
        return lambda: _joined(conn.execute(_WHOLE, (conv,)))

    def paged() -> Pairs:
        out: Pairs = []
        after = 0
        while True:
            got = _joined(conn.execute(_PAGE, (conv, after, after + page)))
            out += got
            if len(got) < page:
                return out
            after += page

    return paged


def chunkstore_reader(root: str, conv: str, mode: str, page: int) -> Callable[[], Any]:
    from chunkstore import Store

    store = Store(root, durability="none")
    if mode == "whole":
        return lambda: store.messages(conv, limit=None)

    def paged() -> list[Any]:
        out: list[Any] = []
        after = 0
        while True:
            got = store.messages(conv, after_seq=after, limit=page)
            out += got
            if len(got) < page:
                return out
            after = got[-1].seq

    return paged


def floor_reader(root: str, conv: str) -> Callable[[], Pairs]:
    from chunkstore import _records
    from chunkstore._ids import ConversationId
    from chunkstore._layout import Layout

    path = Layout(root).segment_file(ConversationId.parse(conv))

    def read() -> Pairs:
        with open(path, "rb", buffering=0) as f:
            records = list(_records.decode_lines(f.read()))
        return [(r["id"], r["content"]) for r in records]

    return read


def digest(pairs: Pairs) -> str:
    return hashlib.sha256(repr(pairs).encode()).hexdigest()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks._fresh")
    parser.add_argument("side", choices=["chunkstore", "sqlite", "floor"])
    parser.add_argument("mode", choices=["whole", "paged"])
    parser.add_argument("target", help="the store's root, or the SQLite file")
    parser.add_argument("conversation")
    parser.add_argument("--page", type=int, default=100)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--sort", default="tottime")
    args = parser.parse_args(argv)
    if args.side == "chunkstore":
        read = chunkstore_reader(args.target, args.conversation, args.mode, args.page)
    elif args.side == "floor":
        read = floor_reader(args.target, args.conversation)
    else:
        read = sqlite_reader(args.target, args.conversation, args.mode, args.page)
    if args.profile:
        profiler = cProfile.Profile()
        result = profiler.runcall(read)
        pstats.Stats(profiler, stream=sys.stderr).strip_dirs().sort_stats(args.sort).print_stats(25)
        seconds = float("nan")
    else:
        start = time.perf_counter()
        result = read()
        seconds = time.perf_counter() - start
    if args.side == "chunkstore":
        result = [(m.id, m.content) for m in result]
    print(json.dumps({"seconds": seconds, "messages": len(result), "digest": digest(result)}))


if __name__ == "__main__":
    main()
