"""Several processes on one PostgreSQL database: seqs gap-free across processes, and a writer
SIGKILLed mid-stream reads ``interrupted`` from another process within a second, with every
acknowledged chunk (its lease, a session advisory lock, ends with its connection).

Sizes: 4 processes x 25 messages and 3 kills by default; ``STRESS=1``: 8 x 100 and 30 kills.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pg_support import append_worker, new_conversation, open_backend

from chunkstore._ids import ConversationId

STRESS = os.environ.get("STRESS", "") not in ("", "0")
PROCESSES, MESSAGES = (8, 100) if STRESS else (4, 25)
KILLS = 30 if STRESS else 3
HERE = Path(__file__).resolve().parent


@pytest.mark.stress
def test_processes_share_one_conversation(pg_url: str) -> None:
    backend = open_backend(pg_url)
    conv = new_conversation(backend)
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(PROCESSES) as pool:
        results = pool.starmap(
            append_worker, [(pg_url, str(conv), w, MESSAGES) for w in range(PROCESSES)]
        )
    try:
        total = PROCESSES * MESSAGES
        assert sorted(seq for seqs in results for seq in seqs) == list(range(1, total + 1))
        for seqs in results:
            assert seqs == sorted(seqs)  # each process sees its own messages in order
        messages = backend.messages(conv, 0, None)
        assert [m.seq for m in messages] == list(range(1, total + 1))
        assert all(m.status == "complete" for m in messages)
        for worker, seqs in enumerate(results):
            for i, seq in enumerate(seqs):
                assert messages[seq - 1].content == f"w{worker}-{i}"
        assert backend.check(False) == []
    finally:
        backend.close()


def start_writer(url: str, conv: ConversationId) -> subprocess.Popen[bytes]:
    code = (
        f"import sys; sys.path.insert(0, {str(HERE)!r}); "
        "from pg_support import stream_until_killed; stream_until_killed(sys.argv[1], sys.argv[2])"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code, url, str(conv)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


@pytest.mark.stress
def test_a_killed_writer_reads_interrupted_within_a_second(pg_url: str) -> None:
    seed = int.from_bytes(os.urandom(4), "big")
    rng = random.Random(seed)
    reader = open_backend(pg_url)
    try:
        for kill in range(KILLS):
            conv = new_conversation(reader)
            writer = start_writer(pg_url, conv)
            assert writer.stdout is not None
            try:
                started = writer.stdout.readline()
                assert started.startswith(b"started"), (
                    writer.stderr.read() if writer.stderr else b""
                )
                target = rng.randint(1, 30)
                acked = 0
                while acked < target:
                    acked = int(writer.stdout.readline())
                [live] = reader.messages(conv, 0, None)  # another process sees it streaming
                assert live.status == "streaming"
                time.sleep(rng.uniform(0, 0.005))  # mid-chunk, or between two
            finally:
                writer.send_signal(signal.SIGKILL)
                out, err = writer.communicate(timeout=30)
            assert writer.returncode == -signal.SIGKILL, err.decode()
            lines = out.split(b"\n")[:-1]  # a line without its newline was cut mid-print
            acked = max([acked, *(int(line) for line in lines if line.isdigit())])
            killed_at = time.monotonic()
            while True:
                [message] = reader.messages(conv, 0, None)
                if message.status == "interrupted":
                    break
                assert time.monotonic() - killed_at < 1.0, f"seed {seed}: still {message.status}"
                time.sleep(0.01)
            context = f"seed {seed}, kill {kill}, {acked} chunks acknowledged"
            expected = "".join(f"c{n} " for n in range(1, acked + 1))
            assert message.content.startswith(expected), context  # nothing acknowledged lost
            assert not message.damaged, context
            assert reader.check(True) == [], context
            assert reader.messages(conv, 0, None) == [message]
            fresh = open_backend(pg_url)  # a restarted process reads the same, and goes on
            try:
                assert fresh.messages(conv, 0, None) == [message]
                sink = fresh.open_stream(conv, role="assistant", max_messages=None)
                assert sink.message_id.seq == 2
                sink.release()
            finally:
                fresh.close()
    finally:
        reader.close()
