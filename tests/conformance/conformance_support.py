"""Helpers of the conformance suite (importable by spawned worker processes too).

Kept free of pytest and hypothesis so a ``multiprocessing`` spawn child imports it cheaply, and
free of any private chunkstore module or file path: every store is opened by its URL.
"""

from __future__ import annotations

import os
from typing import Any

from chunkstore import Message, Store

# Reliability suites run small by default and large with STRESS=1 (``make stress``).
STRESS = os.environ.get("STRESS", "") not in ("", "0")


def open_store(url: str, **options: Any) -> Store:
    """A store on ``url`` for tests: no fsync, and chunk boundaries only every
    ``chunk_tokens`` tokens (never on a timer), unless ``options`` say otherwise."""
    options.setdefault("durability", "none")
    options.setdefault("flush_interval", None)
    return Store(url, **options)


def summary(message: Message) -> tuple[Any, ...]:
    """What a message holds, without the times (which differ between two runs)."""
    return (
        message.id,
        message.seq,
        message.role,
        message.content,
        message.status,
        message.agent_id,
        message.finish_reason,
        message.usage,
        message.tool_calls,
        message.tool_call_id,
        message.name,
        message.error,
        message.token_count,
        message.damaged,
    )


def append_worker(url: str, conversation_id: str, worker: int, count: int) -> list[int]:
    """Write ``count`` messages (alternating plain appends and streams); return their seqs.

    Runs in a spawned process.
    """
    store = open_store(url)
    seqs = []
    try:
        for i in range(count):
            text = f"w{worker}-m{i}"
            if i % 2 == 0:
                seqs.append(store.append_message(conversation_id, role="user", content=text).seq)
            else:
                with store.stream_message(conversation_id, chunk_tokens=2) as w:
                    for token in (f"w{worker}", f"-m{i}", "", "!"):
                        w.append(token)
                seqs.append(w.seq)
    finally:
        store.close()
    return seqs
