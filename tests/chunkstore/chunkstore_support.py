"""Helpers shared by the chunkstore tests (importable by spawned worker processes too).

Kept free of pytest and hypothesis so a ``multiprocessing`` spawn child imports it cheaply.
"""

from __future__ import annotations

import os
from pathlib import Path

from chunkstore import Store
from chunkstore._fsio import TEMP_MARKER
from chunkstore._ids import ConversationId

# Reliability suites run small by default and large with STRESS=1 (``make stress``).
STRESS = os.environ.get("STRESS", "") not in ("", "0")


def conversation_dir(root: str | Path, conversation_id: str) -> Path:
    conv = ConversationId.parse(conversation_id)
    return Path(root) / str(conv.user_id) / "data" / "conversations" / str(conv)


def messages_dir(root: str | Path, conversation_id: str) -> Path:
    return conversation_dir(root, conversation_id) / "messages"


def message_files(root: str | Path, conversation_id: str) -> list[str]:
    """Sorted names in a conversation's ``messages/`` directory."""
    return sorted(os.listdir(messages_dir(root, conversation_id)))


def chunk_files(root: str | Path, message_id: str) -> list[str]:
    conversation_id = message_id.rsplit("-", 1)[0]
    return [
        n
        for n in message_files(root, conversation_id)
        if n.startswith(message_id + "-") and n.endswith(".json")
    ]


def temp_files(root: str | Path) -> list[str]:
    """Every temp file or trash directory left anywhere under ``root``."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            if TEMP_MARKER in name:
                found.append(os.path.join(dirpath, name))
    return found


def flip_bit(path: str | Path, offset: int, bit: int = 0) -> None:
    """Flip one bit of a file in place (a negative offset counts from the end)."""
    data = bytearray(Path(path).read_bytes())
    data[offset] ^= 1 << bit
    Path(path).write_bytes(bytes(data))


def truncate(path: str | Path, keep: int) -> None:
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[:keep])


def append_worker(root: str, conversation_id: str, worker: int, count: int) -> list[int]:
    """Write ``count`` messages (alternating plain appends and streams); return their seqs.

    Runs in a spawned process for ``test_multiprocess``.
    """
    store = Store(root, durability="none", flush_interval=None)
    seqs = []
    for i in range(count):
        text = f"w{worker}-m{i}"
        if i % 2 == 0:
            seqs.append(store.append_message(conversation_id, role="user", content=text).seq)
        else:
            with store.stream_message(conversation_id, chunk_tokens=2) as w:
                for token in (f"w{worker}", f"-m{i}", "", "!"):
                    w.append(token)
            seqs.append(w.seq)
    return seqs


def mixed_worker(
    root: str, shared_id: str, user: str, worker: int, count: int
) -> tuple[list[int], list[str], list[tuple[str, str]]]:
    """Append to a shared conversation, create new ones and update the shared one's metadata.

    Returns the seqs claimed, the conversations created, and each update's (updated_at, title).
    Runs in a spawned process for ``test_multiprocess``.
    """
    store = Store(root, durability="none", flush_interval=None)
    seqs: list[int] = []
    created: list[str] = []
    updates: list[tuple[str, str]] = []
    for i in range(count):
        kind = i % 3
        if kind == 0:
            seqs.append(store.append_message(shared_id, role="user", content=f"w{worker}-{i}").seq)
        elif kind == 1:
            conv = store.create_conversation(user, title=f"w{worker}-{i}")
            store.append_message(conv.id, role="user", content="first")
            created.append(conv.id)
        else:
            title = f"w{worker}-u{i}"
            updated = store.update_conversation(
                shared_id, title=title, metadata={"by": str(worker)}
            )
            updates.append((updated.updated_at, title))
    return seqs, created, updates


def listing_mutator(root: str, user: str, ids: list[str], step: int) -> None:
    """One change to ``user``'s conversations (``ids`` oldest first), as another process makes
    it while ``test_listing`` holds a warm store. Runs in a spawned process."""
    store = Store(root, durability="none")
    if step == 0:
        store.update_conversation(ids[-1], title="renamed elsewhere")
    elif step == 1:
        store.delete_conversation(ids[-2])
    elif step == 2:
        store.delete_conversation(ids[-3], hard=True)
    elif step == 3:
        store.create_conversation(user, title="created elsewhere")
    elif step == 4:
        store.restore_conversation(ids[-2])
    else:
        store.update_conversation(ids[0], metadata={"by": "another process"})
