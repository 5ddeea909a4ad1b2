"""Durable file primitives: files appear whole or not at all, and leave no temp files."""

from __future__ import annotations

import errno
import os
import types
from pathlib import Path

import pytest

from chunkstore import StorageError, _fsio
from chunkstore._fsio import (
    append_to,
    create_exclusive,
    fsync_dir,
    is_temp_name,
    make_dirs,
    read_bytes,
    replace_atomic,
    unlink_quietly,
)


def names(path: Path) -> list[str]:
    return sorted(os.listdir(path))


@pytest.mark.parametrize("durable", [True, False])
def test_create_exclusive(tmp_path: Path, durable: bool) -> None:
    target = tmp_path / "a.json"
    create_exclusive(str(target), b"one", durable=durable)
    assert target.read_bytes() == b"one"
    with pytest.raises(FileExistsError):
        create_exclusive(str(target), b"two", durable=durable)
    assert target.read_bytes() == b"one"  # never modified
    assert names(tmp_path) == ["a.json"]  # no temp file left either way


@pytest.mark.parametrize("durable", [True, False])
def test_replace_atomic(tmp_path: Path, durable: bool) -> None:
    target = tmp_path / "meta.json"
    replace_atomic(str(target), b"old", durable=durable)
    replace_atomic(str(target), b"new", durable=durable)
    assert target.read_bytes() == b"new"
    assert names(tmp_path) == ["meta.json"]


def test_replace_into_missing_directory_is_a_storage_error(tmp_path: Path) -> None:
    with pytest.raises(StorageError) as info:
        replace_atomic(str(tmp_path / "nope" / "x"), b"x", durable=False)
    assert info.value.errno == errno.ENOENT
    with pytest.raises(StorageError):
        create_exclusive(str(tmp_path / "nope" / "x"), b"x", durable=False)


def test_append_to_creates_and_appends(tmp_path: Path) -> None:
    target = tmp_path / "seg"
    append_to(str(target), b"a\n")
    append_to(str(target), b"b\n")
    assert target.read_bytes() == b"a\nb\n"


def test_append_to_cuts_a_torn_tail(tmp_path: Path) -> None:
    target = tmp_path / "seg"
    target.write_bytes(b"a\nhalf-a-li")
    append_to(str(target), b"b\n")
    assert target.read_bytes() == b"a\nb\n"
    target.write_bytes(b"no newline at all")
    append_to(str(target), b"c\n")
    assert target.read_bytes() == b"c\n"


def test_append_to_cuts_a_torn_tail_longer_than_the_window(tmp_path: Path) -> None:
    target = tmp_path / "seg"
    target.write_bytes(b"a\n" + b"x" * (2 << 20))
    append_to(str(target), b"b\n")
    assert target.read_bytes() == b"b\n"  # no newline in the last MiB: the whole tail goes


def test_append_to_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(StorageError):
        append_to(str(tmp_path / "nope" / "seg"), b"x\n")


def test_read_bytes_small_and_large(tmp_path: Path) -> None:
    small, large = tmp_path / "s", tmp_path / "l"
    small.write_bytes(b"abc")
    large.write_bytes(os.urandom(3 << 20))
    empty = tmp_path / "e"
    empty.write_bytes(b"")
    assert read_bytes(str(small)) == b"abc"
    assert read_bytes(str(large)) == large.read_bytes()
    assert read_bytes(str(empty)) == b""
    with pytest.raises(FileNotFoundError):
        read_bytes(str(tmp_path / "missing"))


def test_helpers(tmp_path: Path) -> None:
    assert is_temp_name(".a.json.tmp-0123456789ab")
    assert not is_temp_name("us01-co01-ms01.json")
    make_dirs([str(tmp_path / "x" / "y"), str(tmp_path / "x" / "y")])
    assert (tmp_path / "x" / "y").is_dir()
    fsync_dir(str(tmp_path))
    unlink_quietly(str(tmp_path / "missing"))  # no error


def _os_with(**overrides: object) -> types.SimpleNamespace:
    proxy = types.SimpleNamespace(**{n: getattr(os, n) for n in dir(os) if not n.startswith("__")})
    for name, value in overrides.items():
        setattr(proxy, name, value)
    return proxy


@pytest.mark.parametrize("code", [errno.EPERM, errno.EXDEV])
def test_filesystem_without_hard_links_falls_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    def no_link(src: str, dst: str) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(_fsio, "os", _os_with(link=no_link))
    target = tmp_path / "a.json"
    create_exclusive(str(target), b"data", durable=True)
    assert target.read_bytes() == b"data"
    with pytest.raises(FileExistsError):
        create_exclusive(str(target), b"again", durable=True)
    assert names(tmp_path) == ["a.json"]


def test_fallback_write_failure_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write = os.write
    calls = []

    def no_link(src: str, dst: str) -> None:
        raise OSError(errno.EPERM, "no hard links here")

    def write(fd: int, data: bytes) -> int:
        calls.append(fd)
        if len(calls) == 2:  # the temp write succeeds; the direct write hits a full disk
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(_fsio, "os", _os_with(link=no_link, write=write))
    with pytest.raises(StorageError) as info:
        create_exclusive(str(tmp_path / "a.json"), b"data", durable=False)
    assert info.value.errno == errno.ENOSPC
    assert names(tmp_path) == []


def test_short_writes_are_completed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_write = os.write

    def one_byte_at_a_time(fd: int, data: bytes) -> int:
        return real_write(fd, bytes(data[:1]))

    monkeypatch.setattr(_fsio, "os", _os_with(write=one_byte_at_a_time))
    create_exclusive(str(tmp_path / "a"), b"hello", durable=False)
    assert (tmp_path / "a").read_bytes() == b"hello"


def test_settled_margin_follows_timestamp_granularity() -> None:
    from chunkstore._fsio import SETTLED_FINE_NS, SETTLED_NS, settled

    fine = 1_700_000_000_123_456_789  # sub-second part: a fine-grained filesystem
    assert not settled(fine + SETTLED_FINE_NS, fine)
    assert settled(fine + SETTLED_FINE_NS + 1, fine)
    coarse = 1_700_000_000_000_000_000  # whole seconds: assume the coarsest clock
    assert not settled(coarse + SETTLED_FINE_NS + 1, coarse)
    assert settled(coarse + SETTLED_NS + 1, coarse)


def test_another_store_sees_changes_made_right_after_a_warm_read(tmp_path) -> None:
    from chunkstore import Store

    a = Store(tmp_path / "users", durability="none")
    b = Store(tmp_path / "users", durability="none")
    user = a.user_for("s")
    conv = a.create_conversation(user)
    for i in range(20):
        assert len(a.messages(conv.id, limit=None)) == i
        assert len(a.list_conversations(user, limit=100)) == i + 1
        b.append_message(conv.id, role="user", content=str(i))  # another "process"
        b.create_conversation(user)
