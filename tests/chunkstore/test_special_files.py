"""FIFOs, directories and symlinks planted where the store keeps a regular file.

Opening a FIFO for reading blocks until a writer comes, so a store that opened one blindly
would hang every reader of that conversation (and, through shared locks, everyone else). The
store never opens a file blocking: it opens with ``O_NONBLOCK | O_NOFOLLOW``, checks the open
file is a regular one, and treats anything else as damage.

Every read runs in a thread with a generous deadline (``HANG_S``): a regression fails the test
instead of hanging the suite. That deadline is a hang detector, not a timing assertion.
"""

from __future__ import annotations

import itertools
import os
import stat
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from chunkstore_support import conversation_dir, messages_dir

from chunkstore import Conversation, StorageError, Store, _fsio

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")

HANG_S = 10.0
T = TypeVar("T")

_planted: list[Path] = []


def plant_fifo(path: Path) -> Path:
    """Replace ``path`` (if it exists) by a FIFO; unblocked again when the test ends."""
    if path.is_dir() and not path.is_symlink():
        path.rmdir()
    elif path.exists() or path.is_symlink():
        path.unlink()
    os.mkfifo(path)
    _planted.append(path)
    return path


@pytest.fixture(autouse=True)
def unblock_fifos() -> Iterator[None]:
    """After each test, open every planted FIFO for writing once: a reader that a regression
    left blocked in ``open()`` gets EOF and its thread ends, instead of lingering."""
    yield
    while _planted:
        path = _planted.pop()
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:
            continue  # nobody is blocked reading it (ENXIO), or it is gone
        os.close(fd)


def promptly(call: Callable[[], T]) -> T:
    """``call()`` in a thread; fail (not hang) if it has not returned within ``HANG_S``."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = call()
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(HANG_S)
    if thread.is_alive():
        pytest.fail(f"still blocked after {HANG_S}s: a file was opened blocking")
    if "error" in outcome:
        raise outcome["error"]
    value: T = outcome["value"]
    return value


def fresh(root: str) -> Store:
    return Store(root, durability="none", flush_interval=None)


@pytest.fixture
def three(store: Store, conv: Conversation, root: str) -> Conversation:
    """before / a streamed reply / after, with no segment (the message files are read)."""
    store.append_message(conv.id, "user", "before")
    with store.stream_message(conv.id, chunk_tokens=2) as w:
        for token in "reply":
            w.append(token)
    store.append_message(conv.id, "user", "after")
    (conversation_dir(root, conv.id) / "segment.jsonl").unlink()
    return conv


def kinds(problems: list[Any]) -> list[str]:
    return sorted(p.kind for p in problems)


# -- message files ------------------------------------------------------------------------------


def test_fifo_as_a_sealed_message_file(store: Store, three: Conversation, root: str) -> None:
    plant_fifo(messages_dir(root, three.id) / f"{three.id}-ms02.json")
    before, broken, after = promptly(lambda: fresh(root).messages(three.id))
    assert (before.content, after.content) == ("before", "after")
    assert not before.damaged and not after.damaged
    assert broken.damaged and broken.content == ""
    assert "not-a-file" in kinds(promptly(store.check))


def test_fifo_as_a_chunk_file(store: Store, conv: Conversation, root: str) -> None:
    store.append_message(conv.id, "user", "before")
    w = store.stream_message(conv.id, chunk_tokens=2)
    for token in "aabbcc":
        w.append(token)
    w.abandon()  # a crash: chunk files, no sealed file
    plant_fifo(messages_dir(root, conv.id) / f"{w.message_id}-002.json")
    before, broken = promptly(lambda: fresh(root).messages(conv.id))
    assert before.content == "before" and not before.damaged
    assert broken.damaged and broken.content == "aacc" and broken.status == "interrupted"


def test_fifo_as_a_writer_lock(store: Store, conv: Conversation, root: str) -> None:
    w = store.stream_message(conv.id, chunk_tokens=2)
    for token in "aabb":
        w.append(token)
    w.abandon()
    plant_fifo(messages_dir(root, conv.id) / f"{w.message_id}.lock")
    (message,) = promptly(lambda: fresh(root).messages(conv.id))
    assert (message.status, message.content) == ("interrupted", "aabb")  # no writer holds it


def test_a_directory_as_a_message_file(store: Store, three: Conversation, root: str) -> None:
    mdir = messages_dir(root, three.id)
    (mdir / f"{three.id}-ms01.json").unlink()
    (mdir / f"{three.id}-ms01.json").mkdir()
    broken, reply, _ = promptly(lambda: fresh(root).messages(three.id))
    assert broken.damaged and reply.content == "reply" and not reply.damaged
    assert "not-a-file" in kinds(store.check())


# -- the segment --------------------------------------------------------------------------------


def test_fifo_as_the_segment_is_bypassed(store: Store, conv: Conversation, root: str) -> None:
    for i in range(3):
        store.append_message(conv.id, "user", f"m{i}")
    plant_fifo(conversation_dir(root, conv.id) / "segment.jsonl")
    messages = promptly(lambda: fresh(root).messages(conv.id, limit=None))
    assert [m.content for m in messages] == ["m0", "m1", "m2"]
    assert not any(m.damaged for m in messages)  # the segment is derived: nothing is lost


def test_appending_past_a_fifo_segment(store: Store, conv: Conversation, root: str) -> None:
    store.append_message(conv.id, "user", "first")
    plant_fifo(conversation_dir(root, conv.id) / "segment.jsonl")
    # More than a pipe buffer (64 KiB): a FIFO opened for writing would block on it forever.
    big = "x" * 200_000
    promptly(lambda: store.append_message(conv.id, "user", big))

    def stream() -> None:
        with store.stream_message(conv.id, chunk_tokens=1000) as w:
            for _ in range(100):
                w.append("y" * 1000)

    promptly(stream)
    messages = promptly(lambda: fresh(root).messages(conv.id, limit=None))
    assert [len(m.content) for m in messages] == [5, 200_000, 100_000]
    assert stat.S_ISFIFO(os.lstat(conversation_dir(root, conv.id) / "segment.jsonl").st_mode)


def test_a_symlinked_segment_is_neither_read_nor_written(
    store: Store, conv: Conversation, root: str, tmp_path: Path
) -> None:
    store.append_message(conv.id, "user", "mine")
    outside = tmp_path / "outside.jsonl"
    outside.write_bytes(b"")
    segment = conversation_dir(root, conv.id) / "segment.jsonl"
    segment.unlink()
    segment.symlink_to(outside)
    store.append_message(conv.id, "user", "more")
    assert outside.read_bytes() == b""  # the append did not follow the link
    assert [m.content for m in fresh(root).messages(conv.id)] == ["mine", "more"]


# -- metadata, registry, root -------------------------------------------------------------------


def test_fifo_as_user_json(store: Store, conv: Conversation, root: str) -> None:
    plant_fifo(Path(root, conv.user_id, "user.json"))
    page = promptly(lambda: fresh(root).list_conversations(conv.user_id))
    assert [c.id for c in page] == [conv.id]
    created = promptly(lambda: fresh(root).create_conversation(conv.user_id))
    assert created.id == "us01-co02"  # the directory scan recovers the counter


def test_fifo_as_a_session_entry(store: Store, user: str, root: str) -> None:
    (entry,) = (p for p in Path(root, "sessions").iterdir() if p.suffix == ".json")
    plant_fifo(entry)
    with pytest.raises(StorageError, match="not a regular file"):
        promptly(lambda: fresh(root).user_for("session-test"))
    assert promptly(lambda: fresh(root).user_for("someone else")) == "us02"


def test_fifo_as_the_format_file(store: Store, root: str) -> None:
    plant_fifo(Path(root, "FORMAT"))
    with pytest.raises(StorageError, match="not a regular file"):
        promptly(lambda: fresh(root))


@pytest.mark.parametrize("where", ["conversation", "user", "registry"])
def test_fifo_or_symlink_as_a_lock_file(
    store: Store, conv: Conversation, root: str, tmp_path: Path, where: str
) -> None:
    sessions = itertools.count()
    path = {
        "conversation": conversation_dir(root, conv.id) / ".lock",
        "user": Path(root, conv.user_id, ".lock"),
        "registry": Path(root, "sessions", ".lock"),
    }[where]
    write = {
        "conversation": lambda: store.append_message(conv.id, "user", "x"),
        "user": lambda: store.create_conversation(conv.user_id),
        # A new principal each time: only a first sight takes the registry lock.
        "registry": lambda: store.user_for(f"session {next(sessions)}"),
    }[where]
    plant_fifo(path)
    with pytest.raises(StorageError, match="not a regular file"):
        promptly(write)
    (problem,) = store.check()
    assert (problem.kind, problem.path) == ("not-a-file", str(path))
    assert [p.fixed for p in store.check(fix=True)] == [True]  # a lock file is recreated
    assert store.check() == []
    promptly(write)
    # A symlink is never followed, so it cannot create or lock a file outside the store.
    target = tmp_path / "elsewhere.lock"
    path.unlink()
    path.symlink_to(target)
    with pytest.raises(StorageError, match="not a regular file"):
        write()
    assert not target.exists()


# -- check --------------------------------------------------------------------------------------


def test_check_reports_planted_fifos_and_rebuilds_a_fifo_segment(
    store: Store, three: Conversation, root: str
) -> None:
    store.check(fix=True)  # a segment again
    mdir = messages_dir(root, three.id)
    sealed = plant_fifo(mdir / f"{three.id}-ms02.json")
    segment = plant_fifo(conversation_dir(root, three.id) / "segment.jsonl")
    user_json = plant_fifo(Path(root, three.user_id, "user.json"))
    problems = promptly(store.check)
    assert {(p.kind, p.path) for p in problems} == {
        ("not-a-file", str(sealed)),
        ("not-a-file", str(segment)),
        ("not-a-file", str(user_json)),
    }
    assert all("not a regular file" in p.detail for p in problems)
    fixed = promptly(lambda: store.check(fix=True))
    # Only the derived segment is replaced; a message's file (even a FIFO) and user.json are
    # never removed by check: they are reported for a person to look at.
    assert {(p.path, p.fixed) for p in fixed} == {
        (str(sealed), False),
        (str(segment), True),
        (str(user_json), False),
    }
    assert stat.S_ISREG(os.lstat(segment).st_mode)
    assert stat.S_ISFIFO(os.lstat(sealed).st_mode)
    assert {p.path for p in promptly(store.check)} == {str(sealed), str(user_json)}


def test_check_with_a_fifo_or_file_in_place_of_a_directory(
    store: Store, conv: Conversation, root: str
) -> None:
    other = store.create_conversation(conv.user_id)
    mdir = messages_dir(root, conv.id)
    mdir.rmdir()
    os.mkfifo(mdir)
    cdir = conversation_dir(root, other.id)
    for path in sorted(cdir.rglob("*"), reverse=True):
        path.rmdir() if path.is_dir() else path.unlink()
    cdir.rmdir()
    os.mkfifo(cdir)
    problems = promptly(store.check)
    assert {(p.kind, p.path) for p in problems} == {
        ("not-a-directory", str(mdir)),
        ("not-a-directory", str(cdir)),
    }


def test_cli_check_exits_promptly(store: Store, three: Conversation, root: str) -> None:
    plant_fifo(messages_dir(root, three.id) / f"{three.id}-ms02.json")
    plant_fifo(Path(root, three.user_id, "user.json"))
    done = subprocess.run(
        [sys.executable, "-m", "chunkstore", "--root", root, "check"],
        capture_output=True,
        text=True,
        timeout=60,  # a hang detector: the process is killed and the test fails
        check=False,
    )
    assert done.returncode == 1, done.stderr
    assert done.stdout.count("not-a-file: ") == 2


def test_read_bytes_refuses_what_is_not_a_regular_file(tmp_path: Path) -> None:
    fifo = plant_fifo(tmp_path / "fifo")
    with pytest.raises(_fsio.NotRegularFile, match="not a regular file"):
        promptly(lambda: _fsio.read_bytes(str(fifo)))
    with pytest.raises(_fsio.NotRegularFile):
        _fsio.read_bytes(str(tmp_path))
    (tmp_path / "link").symlink_to(tmp_path / "fifo")
    with pytest.raises(_fsio.NotRegularFile):
        _fsio.read_bytes(str(tmp_path / "link"))
    (tmp_path / "file").write_bytes(b"x" * 3_000_000)
    assert _fsio.read_bytes(str(tmp_path / "file")) == b"x" * 3_000_000
    (tmp_path / "empty").write_bytes(b"")
    assert _fsio.read_bytes(str(tmp_path / "empty")) == b""
