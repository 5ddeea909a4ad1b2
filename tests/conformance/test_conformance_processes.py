"""Several processes on one store URL, and writers killed mid-stream, on every backend.

* 4 processes x 25 messages into one conversation (``STRESS=1``: 8 x 100): seqs unique,
  gap-free, in each process's order.
* A child streams with durability ``"chunk"`` and prints each acknowledged chunk count; the
  parent SIGKILLs it at a random moment: every acknowledged chunk's tokens are there and the
  message reads ``interrupted`` (3 kills by default, 50 with ``STRESS=1``).
"""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable

import pytest
from conformance_support import STRESS, append_worker, open_store

from chunkstore import Message, Store

PROCESSES, MESSAGES = (8, 100) if STRESS else (4, 25)
KILLS = 50 if STRESS else 3
CHUNK_TOKENS = 4


@pytest.mark.stress
def test_processes_share_one_conversation(store_url: str) -> None:
    store = open_store(store_url)
    conv = store.create_conversation(store.user_for("shared"))
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(PROCESSES) as pool:
        results = pool.starmap(
            append_worker, [(store_url, conv.id, worker, MESSAGES) for worker in range(PROCESSES)]
        )

    total = PROCESSES * MESSAGES
    claimed = [seq for seqs in results for seq in seqs]
    assert sorted(claimed) == list(range(1, total + 1))  # unique and gap-free
    for seqs in results:
        assert seqs == sorted(seqs)  # each process sees its own messages in order

    messages = store.messages(conv.id, limit=None)
    assert [m.seq for m in messages] == list(range(1, total + 1))
    assert all(m.status == "complete" and not m.damaged for m in messages)
    assert sorted(m.content for m in messages) == sorted(
        f"w{w}-m{i}" + ("!" if i % 2 else "") for w in range(PROCESSES) for i in range(MESSAGES)
    )
    for worker, seqs in enumerate(results):  # every process's message is where it claimed it
        for i, seq in enumerate(seqs):
            assert messages[seq - 1].content.startswith(f"w{worker}-m{i}")
    assert store.message_count(conv.id) == total
    assert store.check() == []
    store.close()


# -- SIGKILL mid-stream ---------------------------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import sys
    from chunkstore import Store

    url, conv_id, chunk_tokens = sys.argv[1], sys.argv[2], int(sys.argv[3])
    store = Store(url, durability="chunk", chunk_tokens=chunk_tokens, flush_interval=None)
    print("ready", flush=True)
    w = store.stream_message(conv_id)
    print("claimed", w.seq, flush=True)
    i = 0
    while True:
        w.append(f"<{i}>")
        i += 1
        if i % chunk_tokens == 0:
            print(w.chunks_written, flush=True)
    """
)


def token(i: int) -> str:
    return f"<{i}>"


def run_and_kill(url: str, conv_id: str, rng: random.Random, mode: int) -> tuple[int, bool]:
    """Start a writer, kill it at a random moment; return (acknowledged chunks, claimed).

    ``mode`` spreads the kills: 0 around the claim, 1 after a random number of
    acknowledgements (mid-chunk or mid-sync), 2 after a random delay.
    """
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, url, conv_id, str(CHUNK_TOKENS)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    seen: list[bytes] = []
    try:
        assert child.stdout is not None
        ready = child.stdout.readline()
        assert ready == b"ready\n", child.stderr.read() if child.stderr else ready
        if mode == 0:
            time.sleep(rng.uniform(0, 0.004))
        elif mode == 1:
            target = rng.randint(1, 40)
            while (line := child.stdout.readline()) and line.strip() != str(target).encode():
                seen.append(line)
            if line:
                seen.append(line)
            time.sleep(rng.uniform(0, 0.002))
        else:
            time.sleep(rng.uniform(0, 0.1))
    finally:
        child.send_signal(signal.SIGKILL)
        out, err = child.communicate(timeout=30)
    assert child.returncode == -signal.SIGKILL, err.decode()
    lines = (b"".join(seen) + out).split(b"\n")[:-1]  # a line without newline was cut mid-print
    claimed = any(line.startswith(b"claimed") for line in lines)
    acks = [int(line) for line in lines if line.isdigit()]
    return (acks[-1] if acks else 0), claimed


def read_after_kill(store: Store, conversation_id: str) -> list[Message]:
    """The conversation once the killed writer's liveness is gone. A file lock goes with the
    process; a database server notices a dead client a moment later (PostgreSQL: 1-3 ms here),
    so a reply may read ``streaming`` that briefly. SPEC §6 gives other readers 1 s."""
    deadline = time.monotonic() + 1.0
    while True:
        messages = store.messages(conversation_id, limit=None)
        if not any(m.status == "streaming" for m in messages) or time.monotonic() > deadline:
            return messages
        time.sleep(0.01)


@pytest.mark.stress
def test_sigkill_mid_stream_loses_no_acknowledged_chunk(make_url: Callable[[], str]) -> None:
    seed = int.from_bytes(os.urandom(4), "big")
    rng = random.Random(seed)
    acknowledged_total = 0
    for kill in range(KILLS):
        url = make_url()
        store = Store(url, durability="chunk")
        conv = store.create_conversation(store.user_for("crash"))
        acked, claimed = run_and_kill(url, conv.id, rng, mode=kill % 3)
        acknowledged_total += acked
        context = f"seed {seed}, kill {kill}, {acked} chunks acknowledged"

        messages = read_after_kill(store, conv.id)  # the conversation reads
        if not claimed:
            assert len(messages) <= 1, context  # killed around the claim: maybe an empty one
        if messages:
            (message,) = messages
            assert message.status == "interrupted", context
            assert not message.damaged, context
            expected = "".join(token(i) for i in range(acked * CHUNK_TOKENS))
            assert message.content.startswith(expected), (context, message.content[-40:])
            assert message.token_count % CHUNK_TOKENS == 0, context  # only whole chunks
            assert message.token_count >= acked * CHUNK_TOKENS, context
        else:
            assert acked == 0, context

        store.check(fix=True)  # e.g. what the chunk being written at the kill left behind
        assert store.check() == [], context
        with open_store(url) as fresh:  # a restarted process reads the same
            assert fresh.messages(conv.id, limit=None) == messages, context
            # The conversation stays writable after the crash.
            assert fresh.append_message(conv.id, "user", "after").seq == len(messages) + 1
        store.close()
    if KILLS >= 3:
        assert acknowledged_total > 0  # the mode-1 kills land mid-stream
