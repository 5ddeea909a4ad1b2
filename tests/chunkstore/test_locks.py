"""File locks: mutual exclusion across handles and threads, and writer liveness."""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path

import pytest
from chunkstore_support import conversation_dir

from chunkstore import LockTimeout, StorageError, Store, _locks
from chunkstore._locks import exclusive, hold_writer_lock, is_held, release


def test_exclusive_excludes_a_second_holder(tmp_path: Path) -> None:
    path = str(tmp_path / ".lock")
    with exclusive(path, timeout=1):
        with pytest.raises(LockTimeout) as info, exclusive(path, timeout=0.05):
            pass
        assert isinstance(info.value, TimeoutError)
        assert str(info.value) == f"could not lock {path} within 0.05s"  # the path, not an fd
    with exclusive(path, timeout=0.05):  # released on exit
        pass


def test_exclusive_on_a_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(StorageError), exclusive(str(tmp_path / "nope" / ".lock"), timeout=0.05):
        pass


def test_exclusive_serializes_threads(tmp_path: Path) -> None:
    path = str(tmp_path / ".lock")
    counter = tmp_path / "counter"
    counter.write_text("0")

    def bump() -> None:
        for _ in range(50):
            with exclusive(path, timeout=10):
                n = int(counter.read_text())
                counter.write_text(str(n + 1))

    threads = [threading.Thread(target=bump) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert counter.read_text() == "200"


def test_writer_lock_is_a_claim_and_a_liveness_signal(tmp_path: Path) -> None:
    path = str(tmp_path / "us01-co01-ms01.lock")
    assert not is_held(path)  # no file at all
    handle = hold_writer_lock(path, timeout=1)
    assert is_held(path)
    with pytest.raises(FileExistsError):
        hold_writer_lock(path, timeout=1)  # the seq is claimed
    release(handle)
    assert not is_held(path)  # the file stays, but nobody holds it: the writer is gone


def test_writer_lock_failure_closes_the_handle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(handle: object, path: str, timeout: float) -> None:
        raise LockTimeout("busy")

    monkeypatch.setattr(_locks, "_lock_handle", refuse)
    with pytest.raises(LockTimeout):
        hold_writer_lock(str(tmp_path / "x.lock"), timeout=0.01)


def test_store_operation_times_out_on_a_held_conversation_lock(root: str) -> None:
    store = Store(root, durability="none", lock_timeout=0.05)
    conv = store.create_conversation(store.user_for("s"))
    with exclusive(str(conversation_dir(root, conv.id) / ".lock"), timeout=1):
        with pytest.raises(LockTimeout):
            store.append_message(conv.id, "user", "blocked")
        with pytest.raises(LockTimeout):
            store.stream_message(conv.id)
    assert store.append_message(conv.id, "user", "free").seq == 1  # nothing was claimed


def test_a_writer_lock_file_is_locked_before_its_name_appears(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A reader finding the file unlocked would call the message interrupted.
    path = str(tmp_path / "x.lock")
    real_link = os.link
    seen: list[bool] = []

    def link(src: str, dst: str) -> None:
        seen.append(is_held(src))
        real_link(src, dst)

    monkeypatch.setattr(_locks.os, "link", link)
    handle = hold_writer_lock(path, timeout=1)
    assert seen == [True] and is_held(path)
    release(handle)
    assert os.listdir(tmp_path) == ["x.lock"]  # no temp file left
    with pytest.raises(FileExistsError):
        hold_writer_lock(path, timeout=1)  # the seq is claimed
    assert os.listdir(tmp_path) == ["x.lock"]


def test_a_writer_lock_without_hard_links(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_links(src: str, dst: str) -> None:
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(_locks.os, "link", no_links)
    path = str(tmp_path / "x.lock")
    handle = hold_writer_lock(path, timeout=1)
    assert is_held(path) and os.listdir(tmp_path) == ["x.lock"]
    release(handle)
    with pytest.raises(FileExistsError):
        hold_writer_lock(path, timeout=1)
