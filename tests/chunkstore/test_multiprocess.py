"""Many processes writing into one conversation: seqs stay unique, gap-free and monotonic.

4 processes x 25 messages by default; ``STRESS=1`` runs 8 x 100 (SPEC §6). Workers alternate
``append_message`` and ``stream_message`` (see ``chunkstore_support.append_worker``).
"""

from __future__ import annotations

import multiprocessing

import pytest
from chunkstore_support import STRESS, append_worker, mixed_worker

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


MIXED_PROCESSES, MIXED_OPS = (8, 1000) if STRESS else (4, 30)


@pytest.mark.stress
def test_mixed_writers_appends_creations_and_metadata_updates(root: str) -> None:
    store = Store(root, durability="none")
    user = store.user_for("shared")
    shared = store.create_conversation(user, title="shared")
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(MIXED_PROCESSES) as pool:
        results = pool.starmap(
            mixed_worker,
            [(root, shared.id, user, worker, MIXED_OPS) for worker in range(MIXED_PROCESSES)],
        )
    seqs = sorted(seq for r in results for seq in r[0])
    assert seqs == list(range(1, len(seqs) + 1))  # unique, gap-free
    created = [c for r in results for c in r[1]]
    assert len(set(created)) == len(created)  # no conversation id handed out twice
    for conversation_id in created:
        assert [m.content for m in store.messages(conversation_id)] == ["first"]
    # Updates are serialized: the one stamped last is the one that stuck (none was lost).
    updates = sorted(u for r in results for u in r[2])
    final = store.get_conversation(shared.id)
    assert final.title == updates[-1][1]
    assert final.metadata["by"] == final.title.split("-")[0][1:]
    page_ids = []
    cursor = None
    while True:
        page = store.list_conversations(user, limit=100, cursor=cursor)
        page_ids += [c.id for c in page]
        if not page.has_more:
            break
        cursor = page.next_cursor
    assert sorted(page_ids) == sorted([shared.id, *created])
    assert store.check() == []
