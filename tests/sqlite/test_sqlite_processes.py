"""The SQLite backend across processes: seqs claimed by several processes, databases opened
at once, and a streaming writer killed with SIGKILL."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys

import pytest
import sqlite_support
from sqlite_support import append_worker, new_conversation, open_backend, open_worker

from chunkstore._sqlite import MIGRATIONS, SqliteBackend

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def test_seqs_are_gap_free_across_processes(db_path: str) -> None:
    backend = open_backend(db_path)
    conv = new_conversation(backend)
    workers, per_worker = 4, 25
    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(target=append_worker, args=(db_path, str(conv), w, per_worker))
        for w in range(workers)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    try:
        messages = backend.messages(conv, 0, None)
        assert [m.seq for m in messages] == list(range(1, workers * per_worker + 1))
        assert sorted(m.content for m in messages) == sorted(
            f"w{w}-{i}" for w in range(workers) for i in range(per_worker)
        )
        # Each worker's own messages keep their order.
        for w in range(workers):
            mine = [m.content for m in messages if m.content.startswith(f"w{w}-")]
            assert mine == [f"w{w}-{i}" for i in range(per_worker)]
        assert backend.message_count(conv) == workers * per_worker
        assert backend.check(False) == []
    finally:
        backend.close()


def test_processes_opening_a_new_database_at_once(db_path: str) -> None:
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(4) as pool:
        versions = pool.map(open_worker, [db_path] * 8)
    assert versions == [len(MIGRATIONS)] * 8
    backend = open_backend(db_path)
    try:
        conn = backend._conn()
        assert conn.execute("SELECT count(*) FROM _migrations").fetchone() == (len(MIGRATIONS),)
        assert backend.check(False) == []
    finally:
        backend.close()


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_a_killed_writer_leaves_an_interrupted_reply_with_every_acknowledged_chunk(
    db_path: str,
) -> None:
    backend = open_backend(db_path)
    conv = new_conversation(backend)
    backend.append_message(
        conv, sqlite_support.message_record("user", "tell me"), max_messages=None
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([HERE, ROOT]))
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, sqlite_support; sqlite_support.stream_until_killed(*sys.argv[1:])",
            db_path,
            str(conv),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert child.stdout is not None
        started = child.stdout.readline()
        assert started.startswith("started "), started
        acknowledged = 0
        while acknowledged < 8:
            line = child.stdout.readline()
            assert line, "the writer died on its own"
            acknowledged = int(line)
            if acknowledged == 3:
                # Alive: its lease is held.
                [_, live] = backend.messages(conv, 0, None)
                assert live.status == "streaming"
        os.kill(child.pid, signal.SIGKILL)
        child.wait(30)
        assert child.returncode == -signal.SIGKILL
        [_, reply] = backend.messages(conv, 0, None)
        assert reply.status == "interrupted"
        assert not reply.damaged
        written = reply.content.split()
        assert len(written) >= acknowledged
        assert written == [f"c{n}" for n in range(1, len(written) + 1)]
        # A crash is a valid state, not a problem; fix tidies the dead lease away.
        assert backend.check(False) == []
        assert backend.check(True) == []
        assert os.listdir(db_path + ".leases") == []
        assert backend.messages(conv, 0, None)[1] == reply
        # The conversation goes on.
        follow = backend.append_message(
            conv, sqlite_support.message_record("user", "again"), max_messages=None
        )
        assert follow.seq == 3
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        backend.close()


def test_a_new_backend_sees_the_database_of_another(db_path: str) -> None:
    first = SqliteBackend(db_path, durability="none")
    conv = new_conversation(first)
    second = SqliteBackend(db_path, durability="none")
    try:
        assert second.get_conversation(conv) == first.get_conversation(conv)
    finally:
        first.close()
        second.close()
