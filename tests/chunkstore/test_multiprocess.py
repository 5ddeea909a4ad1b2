"""Many processes writing into one conversation: seqs stay unique, gap-free and monotonic.

4 processes x 25 messages by default; ``STRESS=1`` runs 8 x 100 (SPEC §6). Workers alternate
``append_message`` and ``stream_message`` (see ``chunkstore_support.append_worker``).
"""

from __future__ import annotations

import multiprocessing

import pytest
from chunkstore_support import STRESS, append_worker

from chunkstore import Store

PROCESSES, MESSAGES = (8, 100) if STRESS else (4, 25)


@pytest.mark.stress
def test_processes_share_one_conversation(root: str) -> None:
    store = Store(root, durability="none")
    conv = store.create_conversation(store.user_for("shared"))
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(PROCESSES) as pool:
        results = pool.starmap(
            append_worker, [(root, conv.id, worker, MESSAGES) for worker in range(PROCESSES)]
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
