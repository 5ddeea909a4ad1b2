"""SIGKILL a writer process at random moments: no acknowledged chunk is ever lost.

A child process streams one message with durability ``"chunk"`` and prints the number of
chunks written each time ``append`` returns at a chunk boundary: a printed count is an
acknowledgement that those chunks are durable. The parent SIGKILLs it at a random moment, then
checks that every acknowledged token is in the message, that it reads ``interrupted``, and that
``check(fix=True)`` leaves a store that checks clean.

About 5 kills by default; ``STRESS=1`` runs 1,000 (SPEC §6), both bounded in time.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from chunkstore_support import STRESS

from chunkstore import Store

KILLS = 1000 if STRESS else 5
TIME_BUDGET = 1800.0 if STRESS else 30.0
CHUNK_TOKENS = 4

CHILD = textwrap.dedent(
    """
    import sys
    from chunkstore import Store

    root, conv_id, chunk_tokens = sys.argv[1], sys.argv[2], int(sys.argv[3])
    store = Store(root, durability="chunk", chunk_tokens=chunk_tokens, flush_interval=None)
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


def run_and_kill(root: str, conv_id: str, rng: random.Random, mode: int) -> tuple[int, bool]:
    """Start a writer, kill it at a random moment; return (acknowledged chunks, claimed).

    ``mode`` spreads the kills: 0 around the claim, 1 after a random number of
    acknowledgements (mid-chunk or mid-fsync), 2 after a random delay.
    """
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, root, conv_id, str(CHUNK_TOKENS)],
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
            time.sleep(rng.uniform(0, 0.15))
    finally:
        child.send_signal(signal.SIGKILL)
        out, err = child.communicate(timeout=30)
    assert child.returncode == -signal.SIGKILL, err.decode()
    lines = (b"".join(seen) + out).split(b"\n")[:-1]  # a line without newline was cut mid-print
    claimed = any(line.startswith(b"claimed") for line in lines)
    acks = [int(line) for line in lines if line.isdigit()]
    return (acks[-1] if acks else 0), claimed


@pytest.mark.stress
def test_sigkill_loses_no_acknowledged_chunk(tmp_path: Path) -> None:
    rng = random.Random(int.from_bytes(os.urandom(4), "big"))
    deadline = time.monotonic() + TIME_BUDGET
    kills = 0
    acknowledged_total = 0
    while kills < KILLS and (kills < 3 or time.monotonic() < deadline):
        root = str(tmp_path / f"store{kills}")
        store = Store(root, durability="chunk")
        conv = store.create_conversation(store.user_for("crash"))
        acked, claimed = run_and_kill(root, conv.id, rng, mode=kills % 3)
        kills += 1
        acknowledged_total += acked

        messages = store.messages(conv.id, limit=None)  # the conversation reads
        if not claimed:
            assert len(messages) <= 1  # killed around the claim: maybe an empty message
        if messages:
            (message,) = messages
            assert message.status == "interrupted"
            assert not message.damaged
            expected = "".join(token(i) for i in range(acked * CHUNK_TOKENS))
            assert message.content.startswith(expected), (acked, message.content[-40:])
            assert message.token_count % CHUNK_TOKENS == 0  # only whole chunks are durable
        else:
            assert acked == 0

        store.check(fix=True)  # e.g. a temp file of the chunk being written at the kill
        assert store.check() == []
        fresh = Store(root, durability="none")  # a restarted process reads the same
        assert fresh.messages(conv.id, limit=None) == messages
        # The conversation stays writable after the crash.
        assert fresh.append_message(conv.id, "user", "after").seq == len(messages) + 1
        shutil.rmtree(root)
    assert kills >= min(KILLS, 3)
    assert acknowledged_total > 0  # the mode-1 kills land mid-stream
