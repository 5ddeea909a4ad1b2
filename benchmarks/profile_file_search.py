"""The file store's search index, measured: ``python -m benchmarks.profile_file_search [N]``.

Not a pytest suite (``benchmarks/test_search.py`` compares the backends): the numbers the
index's design rests on, for one user with N conversations (10,000 by default, SPEC §6: a
search under 50 ms), four messages each plus a title, built through ``Store`` with the index
kept current:

* search, warm (the store already open) and cold (the first search of a fresh process; the
  ``Store()`` before it, mostly lazy imports of the backend, shown apart), for a rare term
  (one conversation), a common one (every conversation), a common prefix and two terms;
* what the index adds to a write: the time spent in its hooks during ``append_message`` and a
  streamed 300-token reply, against the whole write, per durability;
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
opened = time.perf_counter()
page = store.search("us01", sys.argv[2])
print((time.perf_counter() - opened) * 1000, (opened - start) * 1000, len(page))
"""


def searches(root: str, user: str) -> None:
    with Store(root, durability="none") as store:
        for name, query in QUERIES.items():
            hits = len(store.search(user, query))
            warm = median_ms(lambda q=query: store.search(user, q), 30)
            cold, opening = [], []
            for _ in range(3):
                out = subprocess.run(
                    [sys.executable, "-c", COLD, root, query], capture_output=True, check=True
                )
                cold.append(float(out.stdout.split()[0]))
                opening.append(float(out.stdout.split()[1]))
            print(
                f"search {name:14} ({query!r}, {hits} hits on page 1): warm {warm:6.2f} ms, "
                f"cold {statistics.median(cold):5.1f} ms (a fresh process's first search; "
                f"Store() before it: {statistics.median(opening):.0f} ms)"
            )


def write_cost(base: str) -> None:
    """Time spent in the index hooks (``begin`` and ``message_finished``) per write, against
    the whole write: measured inside the write, so the noise of a shared disk (an fsync can
    take 1 or 30 ms) does not drown the difference as an A/B of whole writes would."""
    spent: list[float] = []
    saved = {name: getattr(FileSearch, name) for name in ("begin", "message_finished")}

    def timed(real: Callable[..., Any]) -> Callable[..., Any]:
        def hook(self: FileSearch, *args: Any) -> Any:
            start = time.perf_counter()
            try:
                return real(self, *args)
            finally:
                spent.append(time.perf_counter() - start)

        return hook

    rng = random.Random(1)
    words = [f"{rng.choice(WORDS)}{i}" for i in range(5000)]
    for name, real in saved.items():
        setattr(FileSearch, name, timed(real))
    try:
        for durability in ("none", "message", "chunk"):
            root = os.path.join(base, f"w-{durability}")
            with Store(root, durability=durability, chunk_tokens=60, flush_interval=None) as s:
                user = s.user_for("w")
                convs = [s.create_conversation(user, title="t").id for _ in range(50)]
                s.search(user, "x")  # the index exists
                for kind in ("append, 30 words", "reply, 300 tokens"):
                    hooks, totals = [], []
                    for _ in range(60):
                        spent.clear()
                        start = time.perf_counter()
                        conv = rng.choice(convs)
                        if kind.startswith("append"):
                            text = " ".join(rng.choice(words) for _ in range(30))
                            s.append_message(conv, "user", text)
                        else:
                            with s.stream_message(conv) as writer:
                                for _ in range(300):
                                    writer.append(rng.choice(words) + " ")
                        totals.append(time.perf_counter() - start)
                        hooks.append(sum(spent))
                    print(
                        f"write {kind:17} durability={durability:7}: index hooks "
                        f"{statistics.median(hooks) * 1000:.3f} ms of "
                        f"{statistics.median(totals) * 1000:.2f} ms (median of 60)"
                    )
    finally:
        for name, real in saved.items():
            setattr(FileSearch, name, real)


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
