"""The file store's search index, measured: ``python -m benchmarks.profile_file_search [N]``.

Not a pytest suite (``benchmarks/test_search.py`` compares the backends): the numbers the
index's design rests on, for one user with N conversations (10,000 by default, SPEC §6: a
search under 50 ms), four messages each plus a title, built through ``Store`` with the index
kept current:

* search, warm (the store already open) and cold (a fresh process, after the import: open +
  first search), for a rare term (one conversation), a common one (every conversation), a
  common prefix and two terms;
* what the index adds to a write: ``append_message`` and a streamed 400-token reply, with the
  index hooks against the same writes with the hooks switched off, per durability;
* what the index costs when it is lost (a rebuild on the next search), after a crash (a dead
  lease: the catch-up), and in ``check``.
"""

from __future__ import annotations

import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from chunkstore import Store
from chunkstore._file_search import INDEX_DIR, FileSearch

WORDS = [
    f"{a}{b}"
    for a in ("lis", "por", "sin", "coi", "bra", "fa", "ev", "avei")
    for b in ("bon", "to", "tra", "mbra", "ga", "ro", "ora", "ro", "x", "y", "z", "q")
]


def median_ms(fn: Callable[[], Any], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def build(root: str, n: int) -> str:
    rng = random.Random(6)
    with Store(root, durability="none", flush_interval=None) as store:
        user = store.user_for("bench")
        store.search(user, "warmup")  # the index exists: every write below keeps it current
        start = time.perf_counter()
        for i in range(n):
            conv = store.create_conversation(user, title=f"chat about {rng.choice(WORDS)} {i}")
            store.append_message(conv.id, "user", f"hello, tell me about {rng.choice(WORDS)}")
            store.append_message(
                conv.id, "assistant", " ".join(rng.choice(WORDS) for _ in range(60))
            )
            text = "rarissimo unique" if i == n // 2 else "thanks, and what of"
            store.append_message(conv.id, "user", f"{text} {rng.choice(WORDS)}")
            store.append_message(
                conv.id, "assistant", " ".join(rng.choice(WORDS) for _ in range(40))
            )
        print(f"built {n} conversations x 4 messages in {time.perf_counter() - start:.1f} s")
    return user


QUERIES = {"rare": "rarissimo", "common": "hello", "common prefix": "li", "two terms": "hel lis"}

COLD = """
import sys, time
from chunkstore import Store
start = time.perf_counter()
store = Store(sys.argv[1], durability="none")
page = store.search("us01", sys.argv[2])
print((time.perf_counter() - start) * 1000, len(page))
"""


def searches(root: str, user: str) -> None:
    with Store(root, durability="none") as store:
        for name, query in QUERIES.items():
            hits = len(store.search(user, query))
            warm = median_ms(lambda q=query: store.search(user, q), 30)
            cold = []
            for _ in range(3):
                out = subprocess.run(
                    [sys.executable, "-c", COLD, root, query], capture_output=True, check=True
                )
                cold.append(float(out.stdout.split()[0]))
            print(
                f"search {name:14} ({query!r}, {hits} hits on page 1): warm {warm:6.2f} ms, "
                f"cold (fresh process: open + search) {statistics.median(cold):6.1f} ms"
            )


def write_cost(base: str) -> None:
    for durability in ("none", "message", "chunk"):
        results = _write_cost(os.path.join(base, f"w-{durability}"), durability)
        for label, (on, off) in results.items():
            print(
                f"write {label:6} durability={durability:7}: {on:6.3f} ms with the index, "
                f"{off:6.3f} ms without (+{(on - off) * 1000:5.0f} us)"
            )


def _write_cost(root: str, durability: str) -> dict[str, tuple[float, float]]:
    """Median ms of a write with the index hooks and without (``_apply`` a no-op), in
    alternating rounds so that drift in a shared machine hits both."""
    with Store(root, durability=durability, chunk_tokens=60, flush_interval=None) as store:
        user = store.user_for("w")
        convs = [store.create_conversation(user, title="t").id for _ in range(20)]
        store.search(user, "x")  # the index exists
        rng = random.Random(1)

        def append() -> None:
            store.append_message(rng.choice(convs), "user", "some words of a user message")

        def reply() -> None:
            with store.stream_message(rng.choice(convs)) as writer:
                for _ in range(400):
                    writer.append("tok ")

        results = {}
        for label, fn, runs in (("append", append, 300), ("reply", reply, 40)):
            on, off = [], []
            for _ in range(5):
                on.append(median_ms(fn, runs // 5))
                saved = FileSearch._apply
                FileSearch._apply = lambda self, conv, update: True  # type: ignore[method-assign]
                try:
                    off.append(median_ms(fn, runs // 5))
                finally:
                    FileSearch._apply = saved  # type: ignore[method-assign]
            results[label] = (statistics.median(on), statistics.median(off))
    return results


def recovery(root: str, user: str) -> None:
    index = os.path.join(root, INDEX_DIR)
    with Store(root, durability="none") as store:
        search = store._backend._search  # type: ignore[attr-defined]
        from chunkstore._ids import UserId

        start = time.perf_counter()
        search.catch_up(UserId.parse(user), time.time_ns())  # lstats only: nothing changed
        print(
            f"catch-up after a dead lease, nothing changed: "
            f"{(time.perf_counter() - start) * 1000:.1f} ms"
        )
        start = time.perf_counter()
        problems = search.check(fix=False)
        print(f"check of the index alone: {(time.perf_counter() - start):.2f} s ({problems})")
        start = time.perf_counter()
        store.check()
        print(f"whole check (store + index): {(time.perf_counter() - start):.2f} s")
    shutil.rmtree(index)
    with Store(root, durability="none") as store:
        start = time.perf_counter()
        store.search(user, "hello")
        print(
            f"rebuild from the files (index deleted) + search: "
            f"{(time.perf_counter() - start):.2f} s, index "
            f"{os.path.getsize(os.path.join(index, f'{user}.sqlite3')) / 1e6:.1f} MB"
        )


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    base = tempfile.mkdtemp(prefix="file-search-")
    try:
        root = os.path.join(base, "store")
        user = build(root, n)
        searches(root, user)
        write_cost(base)
        recovery(root, user)
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
