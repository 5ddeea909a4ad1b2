"""Fault injection: ENOSPC and EIO on write, fsync, replace and link.

``chunkstore._fsio.os`` is replaced by a proxy whose selected call fails (a failing ``write``
first writes half its bytes, as a disk filling up mid-write does). Every call site is hit in
turn: the fault goes on the 1st, 2nd, 3rd... call of that function until the operation runs
without reaching it. After each fault: ``StorageError`` with the errno kept, no temp file left,
no torn file visible, ``check()`` clean, and the next write succeeds once the fault is gone.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from chunkstore_support import messages_dir, temp_files

from chunkstore import ConversationNotFound, StorageError, Store, _fsio
from chunkstore._records import decode

OPS = ["write", "fsync", "replace", "link"]
CODES = [errno.ENOSPC, errno.EIO]


class FaultyOS:
    """``os`` as ``_fsio`` sees it, with the ``nth`` call of ``op`` failing with ``code``."""

    def __init__(self, op: str, code: int, nth: int) -> None:
        self.op, self.code, self.nth = op, code, nth
        self.calls = 0

    @property
    def hit(self) -> bool:
        return self.calls >= self.nth

    def __getattr__(self, name: str) -> Any:
        real = getattr(os, name)
        if name != self.op:
            return real

        def faulty(*args: Any) -> Any:
            self.calls += 1
            if self.calls == self.nth:
                if name == "write" and len(args[1]) > 1:
                    os.write(args[0], bytes(args[1][: len(args[1]) // 2]))
                raise OSError(self.code, os.strerror(self.code))
            return real(*args)

        return faulty


def assert_no_torn_file(root: str) -> None:
    """Every record file under the root is whole; the segment holds whole lines only."""
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            path = Path(dirpath, name)
            if name.endswith(".json") or name == "FORMAT":
                decode(path.read_bytes())  # raises on a torn or partial file
            elif name == "segment.jsonl":
                data = path.read_bytes()
                assert not data or data.endswith(b"\n"), f"torn segment {path}"
                for line in data.splitlines():
                    decode(line)


class Scenario:
    """A durable store with a user, a conversation and a message, in a root of its own."""

    def __init__(self, root: Path) -> None:
        self.root = str(root)
        self.store = Store(root, durability="chunk", flush_interval=None)
        self.user = self.store.user_for("s")
        self.conv = self.store.create_conversation(self.user).id
        self.store.append_message(self.conv, "user", "before")

    def count(self) -> int:
        return self.store.message_count(self.conv)


def stream(s: Scenario) -> object:
    with s.store.stream_message(s.conv, chunk_tokens=2) as w:
        for token in ["a", "b", "c", "d", "e"]:
            w.append(token)
    return w.result


OPERATIONS: dict[str, Callable[[Scenario], object]] = {
    "user_for": lambda s: s.store.user_for("another session"),
    "create_conversation": lambda s: s.store.create_conversation(s.user, title="t"),
    "update_conversation": lambda s: s.store.update_conversation(s.conv, title="new"),
    "soft_delete": lambda s: s.store.delete_conversation(s.conv),
    "hard_delete": lambda s: s.store.delete_conversation(s.conv, hard=True),
    "append_message": lambda s: s.store.append_message(s.conv, "user", "hello"),
    "stream_message": stream,
}


@pytest.mark.parametrize("code", CODES, ids=["ENOSPC", "EIO"])
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("operation", sorted(OPERATIONS))
def test_fault_at_every_call_site(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, operation: str, op: str, code: int
) -> None:
    run = OPERATIONS[operation]
    for nth in range(1, 50):
        s = Scenario(tmp_path / f"{nth}")
        count = s.count()
        fault = FaultyOS(op, code, nth)
        monkeypatch.setattr(_fsio, "os", fault)
        try:
            run(s)
            failed = False
        except StorageError as exc:
            failed = True
            assert exc.errno == code
        finally:
            monkeypatch.setattr(_fsio, "os", os)
        if not fault.hit:
            break  # the operation never reached the nth call: every site was covered

        assert_no_torn_file(s.root)
        leftovers = temp_files(s.root)
        if operation == "hard_delete" and failed:
            # The rename happened but could not be synced: the trash is kept for check(fix)
            # rather than emptied under a name a power cut might undo.
            assert all(".trash-" in p for p in leftovers)
            assert {p.kind for p in s.store.check(fix=True)} <= {"temp-file"}
        else:
            assert leftovers == []
        assert s.store.check() == []
        if operation == "append_message" and failed:
            assert s.count() == count  # a failed append left no message behind

        # The disk is back: writes succeed again.
        fresh = s.store.create_conversation(s.user)
        s.store.append_message(fresh.id, "user", "after")
        s.conv = fresh.id
        assert stream(s) is not None
        assert [m.content for m in s.store.messages(fresh.id)] == ["after", "abcde"]
        assert s.store.check() == []
    else:
        pytest.fail("the operation never stopped reaching new call sites")


@pytest.mark.parametrize(
    ("op", "nth"),
    [("write", 1), ("fsync", 1), ("fsync", 2), ("link", 1)],
    ids=["write", "fsync-file", "fsync-directory", "link"],
)
def test_a_failed_chunk_can_be_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, op: str, nth: int
) -> None:
    s = Scenario(tmp_path)
    w = s.store.stream_message(s.conv, chunk_tokens=2)
    w.append("a")
    w.append("b")
    monkeypatch.setattr(_fsio, "os", FaultyOS(op, errno.ENOSPC, nth))
    w.append("c")
    with pytest.raises(StorageError) as info:
        w.append("d")
    monkeypatch.setattr(_fsio, "os", os)
    assert info.value.errno == errno.ENOSPC
    assert temp_files(s.root) == []
    assert_no_torn_file(s.root)
    assert s.store.messages(s.conv)[-1].content == "ab"  # chunk 2 is not visible
    w.flush()  # space is back: the buffered tokens go out as chunk 2 after all
    assert s.store.messages(s.conv)[-1].content == "abcd"
    w.append("e")
    message = w.finish()
    assert message.content == "abcde"
    assert message.token_count == 5
    assert s.store.check() == []


def test_failed_seal_leaves_an_interrupted_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = Scenario(tmp_path)
    w = s.store.stream_message(s.conv, chunk_tokens=2)
    for token in "abcde":
        w.append(token)
    monkeypatch.setattr(_fsio, "os", FaultyOS("link", errno.EIO, 1))
    with pytest.raises(StorageError):
        w.finish()
    monkeypatch.setattr(_fsio, "os", os)
    assert w.closed
    last = s.store.messages(s.conv)[-1]
    assert (last.status, last.content) == ("interrupted", "abcd")  # the durable prefix
    assert temp_files(s.root) == []
    assert s.store.check() == []


def test_segment_failure_is_not_a_write_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = Scenario(tmp_path)
    # The sealed file's write is call 1; the segment append is call 2.
    monkeypatch.setattr(_fsio, "os", FaultyOS("write", errno.ENOSPC, 2))
    message = s.store.append_message(s.conv, "user", "kept")
    monkeypatch.setattr(_fsio, "os", os)
    assert Store(s.root, durability="none").messages(s.conv)[-1] == message
    assert_no_torn_file(s.root)
    assert s.store.check() == []


def test_hard_delete_with_a_failing_directory_sync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = Scenario(tmp_path)
    monkeypatch.setattr(_fsio, "os", FaultyOS("fsync", errno.EIO, 1))
    with pytest.raises(StorageError) as info:
        s.store.delete_conversation(s.conv, hard=True)
    monkeypatch.setattr(_fsio, "os", os)
    assert info.value.errno == errno.EIO
    with pytest.raises(ConversationNotFound):
        s.store.messages(s.conv)
    assert [p.kind for p in s.store.check(fix=True)] == ["temp-file"]
    assert s.store.check() == []


def test_no_torn_file_even_in_messages_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = Scenario(tmp_path)
    before = sorted(os.listdir(messages_dir(s.root, s.conv)))
    monkeypatch.setattr(_fsio, "os", FaultyOS("write", errno.ENOSPC, 1))
    with pytest.raises(StorageError):
        s.store.append_message(s.conv, "user", "x" * 100_000)
    monkeypatch.setattr(_fsio, "os", os)
    assert sorted(os.listdir(messages_dir(s.root, s.conv))) == before
