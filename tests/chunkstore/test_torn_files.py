"""Torn and bit-flipped files: detected, reported by check(), and the rest stays readable."""

from __future__ import annotations

import os
import random
from pathlib import Path

from chunkstore_support import STRESS, messages_dir

from chunkstore import Store

FLIPS = 1000 if STRESS else 100


def build(root: Path) -> tuple[Store, str]:
    store = Store(root, durability="none", flush_interval=None, chunk_tokens=4)
    conv = store.create_conversation(store.user_for("s"))
    store.append_message(conv.id, role="user", content="first")
    with store.stream_message(conv.id) as w:
        for i in range(10):
            w.append(f"t{i} ")
    store.append_message(conv.id, role="user", content="last")
    # Rebuilding from the message files, not the derived segment, is what is under test.
    os.unlink(messages_dir(root, conv.id).parent / "segment.jsonl")
    return store, conv.id


def assert_damage_contained(root: Path, conversation_id: str, victim_seq: int) -> None:
    store = Store(root, durability="none")
    messages = store.messages(conversation_id, limit=None)
    assert [m.seq for m in messages] == [1, 2, 3]
    for m in messages:
        if m.seq != victim_seq:
            assert not m.damaged and m.status == "complete"
    assert messages[0].content == "first" and messages[2].content == "last"
    problems = store.check()
    assert any(p.kind == "corrupt" for p in problems), problems


def test_sealed_file_truncated_at_every_offset(tmp_path: Path) -> None:
    _, conversation_id = build(tmp_path / "users")
    path = messages_dir(tmp_path / "users", conversation_id) / f"{conversation_id}-ms02.json"
    original = path.read_bytes()
    for offset in range(len(original) - 1):  # the last byte is the newline: harmless to lose
        path.write_bytes(original[:offset])
        assert_damage_contained(tmp_path / "users", conversation_id, victim_seq=2)
        victim = Store(tmp_path / "users").messages(conversation_id)[1]
        assert victim.damaged and victim.status == "interrupted"
    path.write_bytes(original)
    assert Store(tmp_path / "users").check() == []


def test_chunk_file_truncated_at_every_offset(tmp_path: Path) -> None:
    root = tmp_path / "users"
    store = Store(root, durability="none", flush_interval=None, chunk_tokens=4)
    conv = store.create_conversation(store.user_for("s"))
    store.append_message(conv.id, role="user", content="first")
    writer = store.stream_message(conv.id)
    for i in range(12):
        writer.append(f"t{i} ")
    writer.abandon()  # a crash: three chunk files, no sealed file
    store.append_message(conv.id, role="user", content="last")
    os.unlink(messages_dir(root, conv.id).parent / "segment.jsonl")
    path = messages_dir(root, conv.id) / f"{conv.id}-ms02-002.json"
    original = path.read_bytes()
    for offset in range(len(original) - 1):
        path.write_bytes(original[:offset])
        assert_damage_contained(root, conv.id, victim_seq=2)
        victim = Store(root).messages(conv.id)[1]
        # What is readable is returned: chunks 1 and 3, flagged damaged.
        assert victim.damaged and victim.content == "t0 t1 t2 t3 t8 t9 t10 t11 "


def test_random_bit_flips_are_detected(tmp_path: Path) -> None:
    _, conversation_id = build(tmp_path / "users")
    path = messages_dir(tmp_path / "users", conversation_id) / f"{conversation_id}-ms02.json"
    original = path.read_bytes()
    rng = random.Random(1234)
    for _ in range(FLIPS):
        data = bytearray(original)
        bit = rng.randrange((len(data) - 1) * 8)  # not the trailing newline
        data[bit // 8] ^= 1 << (bit % 8)
        path.write_bytes(bytes(data))
        assert_damage_contained(tmp_path / "users", conversation_id, victim_seq=2)
    path.write_bytes(original)
    assert Store(tmp_path / "users").check() == []


def test_corrupt_segment_lines_fall_back_to_message_files(tmp_path: Path) -> None:
    root = tmp_path / "users"
    store = Store(root, durability="none")
    conv = store.create_conversation(store.user_for("s"))
    for i in range(5):
        store.append_message(conv.id, role="user", content=f"m{i}")
    segment = messages_dir(root, conv.id).parent / "segment.jsonl"
    data = bytearray(segment.read_bytes())
    rng = random.Random(7)
    for _ in range(20):
        data[rng.randrange(len(data))] ^= 0x10
    segment.write_bytes(bytes(data))
    messages = Store(root).messages(conv.id)
    assert [m.content for m in messages] == [f"m{i}" for i in range(5)]
    assert not any(m.damaged for m in messages)
    store.check(fix=True)
    assert Store(root).check() == []
