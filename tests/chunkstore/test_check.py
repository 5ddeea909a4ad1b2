"""``Store.check()``: every kind of problem is found; ``fix=True`` repairs what is derived."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from chunkstore_support import (
    conversation_dir,
    flip_bit,
    message_files,
    messages_dir,
    temp_files,
)

from chunkstore import Conversation, Problem, Store
from chunkstore._records import decode, encode_line


def kinds(problems: list[Problem]) -> list[str]:
    return sorted(p.kind for p in problems)


@pytest.fixture
def busy(store: Store, conv: Conversation) -> Conversation:
    """A conversation with a bit of everything: plain, streamed, failed and interrupted."""
    store.append_message(conv.id, "user", "hello")
    with store.stream_message(conv.id, chunk_tokens=2) as w:
        for token in "answer":
            w.append(token)
    store.stream_message(conv.id).fail("boom")
    w = store.stream_message(conv.id, chunk_tokens=2)
    for token in "cut":
        w.append(token)
    w.abandon()
    return conv


def test_clean_store_checks_clean(store: Store, busy: Conversation) -> None:
    store.delete_conversation(store.create_conversation(busy.user_id).id)  # soft-deleted is fine
    assert store.check() == []
    assert store.check(fix=True) == []
    assert store.check() == []


def test_empty_store_checks_clean(store: Store) -> None:
    assert store.check() == []


def test_live_writer_is_not_a_problem(store: Store, conv: Conversation) -> None:
    w = store.stream_message(conv.id, chunk_tokens=1)
    w.append("x")
    assert store.check() == []
    w.finish()
    assert store.check() == []


def test_temp_files_everywhere_are_found_and_removed(
    store: Store, busy: Conversation, root: str
) -> None:
    cdir = conversation_dir(root, busy.id)
    garbage = [
        Path(root, ".us02.tmp-1234"),  # an unfinished user directory
        Path(root, "sessions", ".abc.json.tmp-0123456789ab"),
        cdir.parent / ".us01-co09.tmp-99",  # an unfinished conversation
        cdir.parent / ".trash-us01-co07.tmp-99-1",  # an unfinished hard delete
        cdir / ".conversation.json.tmp-0123456789ab",
        messages_dir(root, busy.id) / ".us01-co01-ms05-001.json.tmp-0123456789ab",
    ]
    for path in garbage:
        if path.name.startswith((".us02", ".us01-co09", ".trash")):
            (path / "messages").mkdir(parents=True)
        else:
            path.write_bytes(b"half")
    problems = store.check()
    assert kinds(problems) == ["temp-file"] * len(garbage)
    assert not any(p.fixed for p in problems)
    fixed = store.check(fix=True)
    assert all(p.fixed for p in fixed)
    assert "(fixed)" in str(fixed[0])
    assert temp_files(root) == []
    assert store.check() == []
    assert [m.content for m in store.messages(busy.id)] == ["hello", "answer", "", "cut"]


def test_corrupt_files_are_reported_not_removed(
    store: Store, busy: Conversation, root: str
) -> None:
    mdir = messages_dir(root, busy.id)
    flip_bit(mdir / "us01-co01-ms01.json", 20)
    flip_bit(mdir / "us01-co01-ms04-001.json", 20)
    problems = store.check(fix=True)
    assert kinds(problems) == ["corrupt", "corrupt"]
    assert {os.path.basename(p.path) for p in problems} == {
        "us01-co01-ms01.json",
        "us01-co01-ms04-001.json",
    }
    assert (mdir / "us01-co01-ms01.json").exists()  # never deletes a message's only copy
    assert kinds(store.check()) == ["corrupt", "corrupt"]


@pytest.mark.parametrize("target", ["conversation.json", "user.json", "session"])
def test_corrupt_metadata(store: Store, conv: Conversation, root: str, target: str) -> None:
    path = {
        "conversation.json": conversation_dir(root, conv.id) / "conversation.json",
        "user.json": Path(root, "us01", "user.json"),
        "session": next(p for p in Path(root, "sessions").iterdir() if p.suffix == ".json"),
    }[target]
    path.write_bytes(b"{torn")
    (problem,) = store.check()
    assert (problem.kind, problem.path) == ("corrupt", str(path))
    assert "(fixed)" not in str(problem)


def test_missing_files(store: Store, conv: Conversation, root: str) -> None:
    other = store.create_conversation(conv.user_id)
    (conversation_dir(root, conv.id) / "conversation.json").unlink()
    shutil.rmtree(messages_dir(root, other.id))
    Path(root, "FORMAT").unlink()
    problems = store.check()
    assert kinds(problems) == ["missing", "missing", "missing"]


def test_user_without_conversations_directory(store: Store, user: str, root: str) -> None:
    shutil.rmtree(Path(root, user, "data"))
    assert kinds(store.check()) == ["missing"]


def test_unknown_format_version(store: Store, root: str) -> None:
    Path(root, "FORMAT").write_bytes(encode_line({"format": "chunkstore", "version": 2}))
    assert kinds(store.check()) == ["format"]


def test_strangers(store: Store, conv: Conversation, root: str) -> None:
    Path(root, "notes.txt").write_text("?")
    Path(root, "us1").mkdir()  # not a canonical user id
    cdir = conversation_dir(root, conv.id)
    (cdir.parent / "backup").mkdir()
    (cdir.parent / "us02-co01").mkdir()  # another user's conversation in us01
    (messages_dir(root, conv.id) / "photo.png").write_bytes(b"?")
    assert kinds(store.check(fix=True)) == ["stranger"] * 5
    assert Path(root, "notes.txt").exists()  # strangers are reported, never removed


def test_orphan_session(store: Store, conv: Conversation, root: str) -> None:
    store.user_for("second")
    shutil.rmtree(Path(root, "us02"))
    (problem,) = store.check()
    assert problem.kind == "orphan"
    assert "us02" in problem.detail


def test_conversation_metadata_naming_another_conversation(
    store: Store, conv: Conversation, root: str
) -> None:
    path = conversation_dir(root, conv.id) / "conversation.json"
    record = decode(path.read_bytes())
    record["id"] = "us01-co02"
    path.write_bytes(encode_line(record))
    assert kinds(store.check()) == ["mismatch"]


def test_message_file_naming_another_message(store: Store, busy: Conversation, root: str) -> None:
    mdir = messages_dir(root, busy.id)
    shutil.copy(mdir / "us01-co01-ms01.json", mdir / "us01-co01-ms05.json")
    assert kinds(store.check()) == ["mismatch"]
    shutil.copy(mdir / "us01-co01-ms04-001.json", mdir / "us01-co01-ms06-001.json")
    assert kinds(store.check()) == ["mismatch", "mismatch"]


def test_message_gap(store: Store, busy: Conversation, root: str) -> None:
    (messages_dir(root, busy.id) / "us01-co01-ms02.json").unlink()
    (conversation_dir(root, busy.id) / "segment.jsonl").unlink()
    problems = store.check()
    assert kinds(problems) == ["gap"]
    assert "[2]" in problems[0].detail


def test_chunk_gap(store: Store, conv: Conversation, root: str) -> None:
    w = store.stream_message(conv.id, chunk_tokens=1)
    for token in "abc":
        w.append(token)
    w.abandon()
    (messages_dir(root, conv.id) / "us01-co01-ms01-002.json").unlink()
    problems = store.check()
    assert kinds(problems) == ["gap"]
    assert "[1, 3]" in problems[0].detail


def test_leftover_chunks_and_stale_lock_after_a_crash_while_sealing(
    store: Store, conv: Conversation, root: str
) -> None:
    mdir = messages_dir(root, conv.id)
    w = store.stream_message(conv.id, chunk_tokens=1)
    w.append("a")
    w.append("b")
    saved = {n: (mdir / n).read_bytes() for n in message_files(root, conv.id)}
    w.finish()
    for name, data in saved.items():  # the sealed file was durable; nothing else was removed
        (mdir / name).write_bytes(data)
    assert kinds(store.check()) == ["leftover-chunks", "stale-lock"]
    assert all(p.fixed for p in store.check(fix=True))
    assert message_files(root, conv.id) == ["us01-co01-ms01.json"]
    assert store.check() == []
    assert store.messages(conv.id)[0].content == "ab"


def test_segment_problems_are_fixed_by_rebuilding_it(
    store: Store, busy: Conversation, root: str
) -> None:
    segment = conversation_dir(root, busy.id) / "segment.jsonl"
    before = segment.read_bytes()
    lines = before.splitlines(keepends=True)
    # a corrupt line, and a well-formed line that disagrees with its sealed file
    record = decode(lines[1])
    record["content"] = "forged"
    segment.write_bytes(lines[0][:10] + b"#" + lines[0][11:] + encode_line(record) + lines[2])
    problems = store.check()
    assert kinds(problems) == ["segment"]
    assert "corrupt line" in problems[0].detail
    assert "disagrees" in problems[0].detail
    store.messages(busy.id)  # warm the cache on the bad segment
    assert kinds(store.check(fix=True)) == ["segment"]
    assert segment.read_bytes() == before
    assert store.check() == []
    assert [m.content for m in store.messages(busy.id)][:2] == ["hello", "answer"]


def test_missing_or_torn_segment_is_rebuilt_silently(
    store: Store, busy: Conversation, root: str
) -> None:
    segment = conversation_dir(root, busy.id) / "segment.jsonl"
    before = segment.read_bytes()
    segment.unlink()
    assert store.check() == []  # derived data: its absence only costs speed
    assert store.check(fix=True) == []
    assert segment.read_bytes() == before
    segment.write_bytes(before + b'{"seq":9,"torn')
    assert store.check() == []
    store.check(fix=True)
    assert segment.read_bytes() == before


def test_problem_str() -> None:
    problem = Problem("/x", "gap", "message seqs missing: [2]")
    assert str(problem) == "gap: /x: message seqs missing: [2]"


def test_store_without_a_session_registry(store: Store, user: str, root: str) -> None:
    shutil.rmtree(Path(root, "sessions"))
    assert store.check() == []  # users without sessions are still users


@pytest.mark.parametrize("counter", [None, 1, "3", True])
def test_a_counter_behind_the_conversations_is_reported_and_moved_up(
    store: Store, user: str, root: str, counter: object
) -> None:
    convs = [store.create_conversation(user, title=f"c{i}") for i in range(3)]
    store.delete_conversation(convs[1].id, hard=True)  # a gap: the highest is still 3
    path = os.path.join(root, user, "user.json")
    record = decode(Path(path).read_bytes())
    if counter is None:
        del record["lastConversation"]  # a user.json lost and recreated, say
    else:
        record["lastConversation"] = counter
    Path(path).write_bytes(encode_line(record))
    [problem] = store.check()
    assert (problem.kind, problem.path) == ("counter", path)
    assert f"lastConversation is {counter!r}, but conversation 3 exists" in problem.detail
    assert kinds(store.check(fix=True)) == ["counter"]
    assert decode(Path(path).read_bytes())["lastConversation"] == 3
    assert store.check() == []
    # The next conversation comes after every existing one, and listing sees them all.
    new = store.create_conversation(user, title="next")
    assert new.id.endswith("-co04")
    listed = [c.id for c in Store(root, durability="none").list_conversations(user).items]
    assert listed == [new.id, convs[2].id, convs[0].id]


def test_a_counter_ahead_or_a_user_without_conversations_is_fine(
    store: Store, user: str, root: str
) -> None:
    path = os.path.join(root, user, "user.json")
    record = decode(Path(path).read_bytes())
    del record["lastConversation"]
    Path(path).write_bytes(encode_line(record))
    assert store.check() == []  # nothing to bound yet
    conv = store.create_conversation(user)
    store.delete_conversation(conv.id, hard=True)
    assert decode(Path(path).read_bytes())["lastConversation"] == 1
    assert store.check(fix=True) == []  # ahead of every number: never moved down
    assert decode(Path(path).read_bytes())["lastConversation"] == 1
