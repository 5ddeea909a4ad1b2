"""Where the time goes, for the targets the benchmarks show unmet: cProfile top entries.

    .venv/bin/python -m benchmarks.profile_hotspots rebuild-cold --messages 5000
    .venv/bin/python -m benchmarks.profile_hotspots rebuild-warm --messages 50
    .venv/bin/python -m benchmarks.profile_hotspots listing --conversations 10000
    .venv/bin/python -m benchmarks.profile_hotspots create --conversations 10000
    .venv/bin/python -m benchmarks.profile_hotspots reply --durability chunk
    .venv/bin/python -m benchmarks.profile_hotspots relay --variant "edge on" --concurrency 200
    .venv/bin/python -m benchmarks.profile_hotspots storage --concurrency 200 --threads 6

Each builds its data in a temporary directory, runs the operation ``--repeat`` times under
cProfile and prints the top entries by own time (``--sort cumulative`` for the call tree).
``relay`` profiles the edge process's event-loop thread (storage work runs in worker threads
and is not in that profile: compare with ``--variant "edge on, durability none"``).
``storage`` is not a profile but an experiment: what the edge's storage work alone sustains
(``--concurrency`` replies written at once through ``AsyncStore``, as ``ReplyRecorder`` does:
create the conversation, store the user message, stream ``--tokens`` tokens, finish) with
asyncio's default executor (``--threads 0``: min(32, cores + 4) threads) or ``--threads N``.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import random
import tempfile
import time
from collections.abc import Callable
from typing import Any

from benchmarks import _data
from benchmarks._relay import event_loop, make_session, run_round, start_server, summarize
from chunkstore import AsyncStore, Store


def _profile(call: Callable[[], Any], repeat: int, sort: str, top: int) -> None:
    call()  # once outside the profile: imports, first-use caches
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    times.sort()
    print(f"median {times[len(times) // 2] * 1000:.2f} ms over {repeat} runs (unprofiled)")
    profiler = cProfile.Profile()
    for _ in range(repeat):
        profiler.runcall(call)
    pstats.Stats(profiler).strip_dirs().sort_stats(sort).print_stats(top)


def rebuild(args: argparse.Namespace, base: str) -> None:
    root = os.path.join(base, "store")
    store = Store(root, durability="none", flush_interval=None)
    conv = store.create_conversation(store.user_for("profile"), title="profile")
    _data.write_conversation(store, conv.id, args.messages, seed=args.messages)
    if args.target == "rebuild-warm":
        warm = Store(root, durability="none")
        _profile(lambda: warm.messages(conv.id, limit=None), args.repeat, args.sort, args.top)
    else:
        # A fresh Store per call is the cold path; opening it is a few stat/read calls.
        _profile(
            lambda: Store(root, durability="none").messages(conv.id, limit=None),
            args.repeat,
            args.sort,
            args.top,
        )


def listing(args: argparse.Namespace, base: str) -> None:
    root = os.path.join(base, "store")
    user, _, _ = _data.build_conversations(root, args.conversations, min(200, args.conversations))
    store = Store(root, durability="none")
    if args.target == "create":
        _profile(
            lambda: store.create_conversation(user, title="new"), args.repeat, args.sort, args.top
        )
    else:
        _profile(lambda: store.list_conversations(user, 20), args.repeat, args.sort, args.top)


def reply(args: argparse.Namespace, base: str) -> None:
    store = Store(os.path.join(base, "store"), durability=args.durability, flush_interval=None)
    conv = store.create_conversation(store.user_for("profile"), title="profile")
    tokens = _data.reply_tokens(_data.REPLY_TOKENS, random.Random(1))

    def one_reply() -> None:
        with store.stream_message(conv.id) as writer:
            for token in tokens:
                writer.append(token)
            writer.finish("stop")

    _profile(one_reply, args.repeat, args.sort, args.top)


def relay(args: argparse.Namespace, base: str) -> None:
    upstream = start_server(
        ["upstream", "--tokens", str(args.tokens)], os.path.join(base, "upstream.log")
    )
    profile = os.path.join(base, "edge.prof")
    edge_args = ["edge", "--upstream", upstream.url, "--profile", profile]
    if args.variant != "edge off":
        edge_args += ["--store", os.path.join(base, "store")]
    if "durability none" in args.variant:
        edge_args += ["--durability", "none"]
    edge = start_server(edge_args, os.path.join(base, "edge.log"))
    try:
        with event_loop() as loop:
            session = loop.run_until_complete(make_session())
            rounds = [
                loop.run_until_complete(run_round(session, edge.url, args.concurrency))
                for _ in range(args.repeat)
            ]
            loop.run_until_complete(session.close())
        figures = summarize(rounds, args.tokens)
        print(", ".join(f"{k}={v:.4g}" for k, v in figures.items()))
    finally:
        edge.stop()
        upstream.stop()
    pstats.Stats(profile).strip_dirs().sort_stats(args.sort).print_stats(args.top)


def storage(args: argparse.Namespace, base: str) -> None:
    async def run() -> float:
        if args.threads:
            from concurrent.futures import ThreadPoolExecutor

            asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(args.threads))
        store = AsyncStore(Store(os.path.join(base, "store"), durability=args.durability))
        users = [await store.user_for(f"s{i}") for i in range(args.concurrency)]
        tokens = [f" t{i}" for i in range(args.tokens)]

        async def one(i: int) -> None:
            conv = await store.create_conversation(users[i], title="x")
            await store.append_message(conv.id, "user", "hello")
            async with store.stream_message(conv.id, flush_interval=None) as writer:
                for token in tokens:
                    await writer.append(token)
                await writer.finish("stop")

        start = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(args.concurrency)))
        return time.perf_counter() - start

    seconds = asyncio.run(run())
    threads = args.threads or f"default ({min(32, (os.cpu_count() or 1) + 4)})"
    print(
        f"durability={args.durability} replies={args.concurrency} threads={threads}: "
        f"{seconds:.2f} s, {args.concurrency * args.tokens / seconds:,.0f} tokens/s"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile_hotspots")
    parser.add_argument(
        "target",
        choices=["rebuild-cold", "rebuild-warm", "listing", "create", "reply", "relay", "storage"],
    )
    parser.add_argument("--messages", type=int, default=500)
    parser.add_argument("--conversations", type=int, default=10_000)
    parser.add_argument("--durability", default="chunk", choices=["chunk", "message", "none"])
    parser.add_argument("--variant", default="edge on")
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--tokens", type=int, default=400)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--sort", default="tottime")
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="chunkstore-profile-") as base:
        if args.target.startswith("rebuild"):
            rebuild(args, base)
        elif args.target in ("listing", "create"):
            listing(args, base)
        elif args.target == "reply":
            reply(args, base)
        elif args.target == "storage":
            storage(args, base)
        else:
            relay(args, base)


if __name__ == "__main__":
    main()
