"""File locks (portalocker), and why each exists.

* **registry lock** (``sessions/.lock``): allocating a new user id for a new principal.
* **user lock** (``usNN/.lock``): allocating a conversation id and enforcing the per-user limit.
* **conversation lock** (``usNN-coNN/.lock``): allocating message sequence numbers, rewriting
  ``conversation.json`` and appending to the segment. Held for microseconds, never across a
  stream.
* **writer lock** (``messages/<id>.lock``): held by a live ``MessageWriter`` for its whole life.
  It is how readers tell ``streaming`` from ``interrupted``: the kernel drops the lock when the
  writer's process dies, so liveness needs no timeout and no heartbeat.

Lock order is always registry → user → conversation; a writer lock is taken while holding the
conversation lock, never the other way round, so there is no cycle.

Lock files are opened like every existing file (``_fsio.open_regular``): never through a
symlink (which could create or lock a file outside the store) and never blocking on a planted
FIFO. Anything but a regular file is refused: ``exclusive`` raises StorageError (``chunkstore
check --fix`` removes the planted name, and the next lock creates a regular file), and
``is_held`` says no writer holds it.

On POSIX portalocker uses ``flock``, whose locks belong to an open file description: two threads
of one process that open the file separately exclude each other just as two processes do.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO

import portalocker

from . import _fsio
from ._exceptions import LockTimeout, StorageError

__all__ = ["exclusive", "hold_writer_lock", "is_held", "release"]

# Waiters poll (a blocking flock cannot time out). The jitter keeps waiters out of step with a
# holder that re-locks in a loop, which otherwise starves them under heavy contention.
_POLL_MIN = 0.0005
_POLL_MAX = 0.003


@contextmanager
def exclusive(path: str, timeout: float) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing) for the ``with`` block."""
    try:
        fd, _ = _fsio.open_regular(path, os.O_RDWR | os.O_CREAT)
        handle = os.fdopen(fd, "r+b")
    except OSError as exc:
        raise StorageError.wrap(exc, f"cannot open lock {path}") from exc
    try:
        _lock_handle(handle, path, timeout)
    except BaseException:
        handle.close()
        raise
    try:
        yield
    finally:
        release(handle)


def hold_writer_lock(path: str, timeout: float) -> IO[bytes]:
    """Create the writer lock file (EEXIST if the seq is taken) and lock it until released.

    Creating the file is the claim on a sequence number, and the file must never be visible
    unlocked: a reader that found it so would call the message ``interrupted`` (its writer
    dead). So the lock is taken on a temp file, which is then hard-linked to ``path`` (``link``
    fails with EEXIST like ``O_EXCL``). A filesystem without hard links gets ``O_EXCL`` on
    ``path`` itself, with that instant between create and lock.
    """
    tmp = _fsio.temp_path(path)
    handle = _locked_new_file(tmp, path, timeout)
    try:
        os.link(tmp, path)
    except OSError as exc:
        handle.close()
        if not _fsio.without_hard_links(exc):
            raise
        return _locked_new_file(path, path, timeout)
    finally:
        _fsio.unlink_quietly(tmp)
    return handle


def _locked_new_file(create: str, path: str, timeout: float) -> IO[bytes]:
    """Create ``create`` (EEXIST if it exists) and lock it; ``path`` names it in errors."""
    handle = os.fdopen(os.open(create, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644), "r+b")
    try:
        # Readers only probe a lock for an instant, so the wait is short; the timeout guards
        # against a reader stuck on a hung filesystem.
        _lock_handle(handle, path, timeout)
    except BaseException:
        handle.close()
        raise
    return handle


def _lock_handle(handle: IO[bytes], path: str, timeout: float) -> None:
    # ``path``, not ``handle.name``: a handle from ``os.fdopen`` is named by its descriptor.
    deadline = time.monotonic() + timeout
    flags = portalocker.LockFlags.EXCLUSIVE | portalocker.LockFlags.NON_BLOCKING
    while True:
        try:
            portalocker.lock(handle, flags)
            return
        except portalocker.exceptions.LockException:
            if time.monotonic() >= deadline:
                raise LockTimeout(f"could not lock {path} within {timeout}s") from None
            time.sleep(random.uniform(_POLL_MIN, _POLL_MAX))


def release(handle: IO[bytes]) -> None:
    try:
        portalocker.unlock(handle)
    finally:
        handle.close()


def is_held(path: str) -> bool:
    """True while some live writer holds the lock file at ``path``."""
    try:
        fd, _ = _fsio.open_regular(path)
    except (FileNotFoundError, _fsio.NotRegularFile):
        # A FIFO, directory or symlink in its place was planted: a writer only ever locks the
        # regular file it created, so no live writer holds this one.
        return False
    handle = os.fdopen(fd, "rb")
    try:
        portalocker.lock(handle, portalocker.LockFlags.SHARED | portalocker.LockFlags.NON_BLOCKING)
    except portalocker.exceptions.LockException:
        return True
    finally:
        handle.close()  # closing drops our shared lock, if we got it
    return False
