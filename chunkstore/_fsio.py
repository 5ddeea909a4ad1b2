"""Durable file primitives: every byte chunkstore writes goes through this module.

Keeping all writes here serves two purposes: each durability choice is made (and explained) in
one place, and tests inject ENOSPC/EIO by replacing ``os`` in this module's namespace.

Rules the store relies on:

* A new immutable file (chunk, sealed message) appears under its final name complete or not at
  all: it is written to a temp file in the same directory, fsynced, and *hard-linked* to the final
  name. ``link`` fails with EEXIST instead of replacing, so a file is created once and never
  modified, as ``O_CREAT|O_EXCL`` would promise, but a crash mid-write can only leave a temp file
  (which readers ignore and ``check(fix=True)`` removes), never a torn file under a real name.
* A replaceable file (metadata) is written to a temp file, fsynced, ``os.replace``d over the old
  one, and the directory is fsynced so the rename itself survives a power cut.
* On any error the temp file is removed before the error is raised: a failed write leaves no
  trace, and the next write can succeed once the disk recovers.
* An existing file is never opened blocking, and never through a symlink: ``open_regular``
  opens with ``O_NONBLOCK | O_NOFOLLOW`` and refuses (``NotRegularFile``) whatever the
  descriptor shows is not a regular file. A FIFO planted in the store would otherwise block
  ``open()`` until a writer came, hanging its reader; a directory, device or socket is no
  record either. Callers treat the refusal like a corrupt file (damage, never a hang).
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Iterable

from ._exceptions import StorageError

__all__ = [
    "SETTLED_FINE_NS",
    "SETTLED_NS",
    "TEMP_MARKER",
    "NotRegularFile",
    "append_to",
    "create_exclusive",
    "file_type",
    "fsync_dir",
    "is_temp_name",
    "make_dirs",
    "open_regular",
    "read_bytes",
    "replace_atomic",
    "settled",
    "temp_path",
    "unlink_quietly",
    "without_hard_links",
]

TEMP_MARKER = ".tmp-"
# Directory mtimes are only as fine as the filesystem's clock: a kernel tick on ext4/xfs/btrfs,
# a second on ext3/HFS+, two on FAT. A cached listing is trusted while the directory's mtime is
# unchanged only if that mtime was already older than the granularity when the listing was
# taken: then any later change must show as a new mtime.
SETTLED_NS = 2_000_000_000  # whole-second timestamps: assume the coarsest (FAT)
SETTLED_FINE_NS = 100_000_000  # sub-second timestamps: ten times a 100 Hz tick


def settled(now_ns: int, mtime_ns: int) -> bool:
    """Whether a directory last changed at ``mtime_ns`` can be trusted to show the next change."""
    margin = SETTLED_FINE_NS if mtime_ns % 1_000_000_000 else SETTLED_NS
    return now_ns - mtime_ns > margin


# Directory fsync is how POSIX makes a new name durable; Windows has no such call.
_CAN_FSYNC_DIRS = os.name == "posix"
_O_BINARY = getattr(os, "O_BINARY", 0)
# Reads never follow a symlink planted in the store to a file outside it, and never block on
# a FIFO planted in it (see ``open_regular``).
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_READ = os.O_RDONLY | _O_BINARY | _O_NOFOLLOW | _O_NONBLOCK
_FILE_TYPES = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


class NotRegularFile(OSError):
    """A name the store keeps a regular file under holds something else (a FIFO, a directory,
    a device, a socket or a symlink): planted, never opened blocking, treated as damage."""

    def __init__(self, path: str, what: str) -> None:
        super().__init__(errno.EINVAL, f"not a regular file ({what})", path)


def file_type(mode: int) -> str:
    """What a non-regular file is, in words, from its ``st_mode``."""
    return next((name for test, name in _FILE_TYPES if test(mode)), "not a regular file")


def open_regular(path: str, flags: int = _READ, mode: int = 0o644) -> tuple[int, os.stat_result]:
    """Open ``path`` with ``O_NONBLOCK | O_NOFOLLOW`` added to ``flags``; the descriptor and its
    ``fstat`` if it is a regular file, else ``NotRegularFile`` (nothing left open).

    ``O_NONBLOCK`` changes nothing for a regular file (its reads and writes never block on it);
    it only makes opening a FIFO return at once, so it can be refused. ``O_NOFOLLOW`` makes a
    symlink fail with ELOOP, reported as a symlink (the ids' directories on the way are vetted,
    so the last name is the only one left to be a link).
    """
    try:
        fd = os.open(path, flags | _O_NOFOLLOW | _O_NONBLOCK, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise NotRegularFile(path, "a symbolic link") from None
        raise
    try:
        st = os.fstat(fd)
    except BaseException:
        os.close(fd)
        raise
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise NotRegularFile(path, file_type(st.st_mode))
    return fd, st


def is_temp_name(name: str) -> bool:
    return TEMP_MARKER in name


def temp_path(path: str) -> str:
    """A fresh temp name next to ``path`` (readers and listings ignore it; ``check`` removes
    leftovers)."""
    head, tail = os.path.split(path)
    return os.path.join(head, f".{tail}{TEMP_MARKER}{secrets.token_hex(6)}")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def fsync_dir(path: str) -> None:
    """Make the names in directory ``path`` durable (new, renamed or removed entries)."""
    if not _CAN_FSYNC_DIRS:
        return
    fd = os.open(path, os.O_RDONLY | _O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_temp(path: str, data: bytes, durable: bool) -> str:
    tmp = temp_path(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_BINARY, 0o644)
    try:
        _write_all(fd, data)
        if durable:
            # The data must be on disk before the name points at it, or a power cut could
            # leave the final name on an empty or partial file.
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        unlink_quietly(tmp)
        raise
    os.close(fd)
    return tmp


def without_hard_links(exc: OSError) -> bool:
    """Whether ``link`` failed because the filesystem has no hard links."""
    return exc.errno in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV)


def create_exclusive(path: str, data: bytes, *, durable: bool) -> None:
    """Create ``path`` holding ``data``; FileExistsError if it exists. Never a torn file."""
    try:
        tmp = _write_temp(path, data, durable)
    except OSError as exc:
        raise StorageError.wrap(exc, f"cannot write {path}") from exc
    try:
        os.link(tmp, path)
    except FileExistsError:
        unlink_quietly(tmp)
        raise
    except OSError as exc:
        unlink_quietly(tmp)
        if without_hard_links(exc):
            # A filesystem without hard links: fall back to a plain exclusive create.
            _create_exclusive_direct(path, data, durable)
            return
        raise StorageError.wrap(exc, f"cannot write {path}") from exc
    unlink_quietly(tmp)
    if durable:
        try:
            fsync_dir(os.path.dirname(path))
        except OSError as exc:
            # The caller is told the write failed, so the file must not stay behind: a failed
            # append would still show up as a message, and a retried chunk would hit EEXIST
            # forever. (It is whole either way: its data was synced before the link.)
            unlink_quietly(path)
            raise StorageError.wrap(exc, f"cannot sync directory of {path}") from exc


def _create_exclusive_direct(path: str, data: bytes, durable: bool) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_BINARY, 0o644)
    try:
        _write_all(fd, data)
        if durable:
            os.fsync(fd)
    except OSError as exc:
        os.close(fd)
        unlink_quietly(path)
        raise StorageError.wrap(exc, f"cannot write {path}") from exc
    os.close(fd)
    if durable:
        fsync_dir(os.path.dirname(path))


def replace_atomic(path: str, data: bytes, *, durable: bool) -> None:
    """Replace ``path`` with ``data``: readers see the old file or the new one, never a mix."""
    try:
        tmp = _write_temp(path, data, durable)
        try:
            os.replace(tmp, path)
        except BaseException:
            unlink_quietly(tmp)
            raise
        if durable:
            fsync_dir(os.path.dirname(path))
    except OSError as exc:
        raise StorageError.wrap(exc, f"cannot replace {path}") from exc


def append_to(path: str, data: bytes) -> None:
    """Append ``data`` to a derived file (the segment), repairing a torn tail first.

    Derived files are never fsynced: they are rebuildable from the durable files, and a torn
    or lost tail only costs speed. The caller holds the lock that serializes appends.
    """
    try:
        # Never through a symlink, never into a FIFO (a write to one blocks once its buffer is
        # full): a planted segment is refused, and the caller goes on without it.
        fd, st = open_regular(path, os.O_RDWR | os.O_CREAT | _O_BINARY)
        try:
            size = st.st_size
            if size:
                # A crash mid-append leaves a line without its newline; cut it so the next
                # line is not glued to it.
                if os.pread(fd, 1, size - 1) != b"\n":
                    tail = os.pread(fd, min(size, 1 << 20), max(0, size - (1 << 20)))
                    cut = tail.rfind(b"\n")
                    keep = max(0, size - len(tail) + cut + 1) if cut >= 0 else 0
                    os.ftruncate(fd, keep)
                    size = keep
            os.lseek(fd, size, os.SEEK_SET)
            try:
                _write_all(fd, data)
            except OSError:
                # A disk that fills up mid-append leaves part of a line: cut it now, so no
                # torn file stays visible, rather than waiting for the next append to repair it.
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, size)
                raise
        finally:
            os.close(fd)
    except OSError as exc:
        raise StorageError.wrap(exc, f"cannot append to {path}") from exc


def read_bytes(path: str) -> bytes:
    """Read a whole regular file (``open_regular``). FileNotFoundError passes through (callers
    treat it as absence); NotRegularFile is an OSError (callers treat it as damage)."""
    fd, st = open_regular(path)
    try:
        # One read for the whole file, sized by the fstat ``open_regular`` took anyway: a
        # read that returns exactly that size is at the end (the files read here are never
        # modified in place), so no second read is needed to see the end.
        size = st.st_size
        data = os.read(fd, size + 1)
        if len(data) == size:
            return data
        chunks = [data]
        while data:
            data = os.read(fd, 1 << 20)
            chunks.append(data)
    finally:
        os.close(fd)
    return b"".join(chunks)


def make_dirs(paths: Iterable[str]) -> None:
    for p in paths:
        os.makedirs(p, exist_ok=True)


def unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
