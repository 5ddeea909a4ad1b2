"""A process killed while it holds a lock never wedges the store, and exclusion always holds."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from chunkstore_support import STRESS

from chunkstore import Store
from chunkstore._ids import ConversationId

KILLS = 100 if STRESS else 5

HOLDER = textwrap.dedent(
    """
    import sys, time
    from chunkstore import _locks
    with _locks.exclusive(sys.argv[1], timeout=5):
        print("locked", flush=True)
        time.sleep(60)
    """
)


def test_next_writer_proceeds_after_the_lock_holder_is_killed(tmp_path: Path) -> None:
    store = Store(tmp_path / "users", durability="none", lock_timeout=5)
    conv = store.create_conversation(store.user_for("s"))
    lock = store.backend._layout.conversation_lock(ConversationId.parse(conv.id))
    for i in range(KILLS):
        holder = subprocess.Popen(
            [sys.executable, "-c", HOLDER, lock], stdout=subprocess.PIPE, text=True
        )
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
        # No stale lock: the kernel released it with the process.
        message = store.append_message(conv.id, role="user", content=f"after kill {i}")
        assert message.seq == i + 1
    assert store.check() == []


COUNTER = textwrap.dedent(
    """
    import os, sys
    from chunkstore import _locks
    lock, counter, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
    for _ in range(rounds):
        with _locks.exclusive(lock, timeout=30):
            # An unprotected read-modify-write: only mutual exclusion keeps it correct. The
            # value is replaced whole (a temp file renamed over it): the victim, killed at any
            # point, leaves the old value or the new one, never a truncated file that would
            # restart the count at 0 and look like a lost increment.
            with open(counter) as f:
                value = int(f.read())
            tmp = f"{counter}.{os.getpid()}"
            with open(tmp, "w") as f:
                f.write(str(value + 1))
            os.replace(tmp, counter)
    """
)


def test_mutual_exclusion_under_contention_and_kills(tmp_path: Path) -> None:
    lock = str(tmp_path / ".lock")
    counter = tmp_path / "counter"
    counter.write_text("0")
    rounds = 400 if STRESS else 60
    workers = [
        subprocess.Popen([sys.executable, "-c", COUNTER, lock, str(counter), str(rounds)])
        for _ in range(4)
    ]
    # A victim that is killed at a random point while contending for the same lock.
    victim = subprocess.Popen([sys.executable, "-c", COUNTER, lock, str(counter), "100000"])
    time.sleep(0.3)
    victim.kill()
    victim.wait()
    for worker in workers:
        assert worker.wait(120) == 0
    done_by_victim = int(counter.read_text()) - 4 * rounds
    assert done_by_victim >= 0  # every increment of the workers survived: none was lost
