"""A real filesystem that fills up (a 512 KiB tmpfs): ENOSPC is survived, not just simulated.

Mounting needs privileges; where the machine does not allow it the test is skipped and the
fault-injection suite (test_faults.py) still covers every call site.
"""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from chunkstore import StorageError, Store
from chunkstore._fsio import TEMP_MARKER


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "tiny"
    mount.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mount)],
        capture_output=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def all_files(root: Path) -> list[Path]:
    return [Path(d) / f for d, _, fs in os.walk(root) for f in fs]


def test_disk_full_then_space_returns(tiny_fs: Path) -> None:
    root = tiny_fs / "users"
    store = Store(root, durability="chunk", flush_interval=None)
    conv = store.create_conversation(store.user_for("s"))
    # Leave only a little room.
    filler = tiny_fs / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"x" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    os.truncate(filler, max(0, filler.stat().st_size - 24 * 1024))

    failures = 0
    acknowledged = 0
    for i in range(200):
        try:
            with store.stream_message(conv.id) as w:
                for t in range(240):
                    w.append(f"token-{i}-{t} ")
            acknowledged += 1
        except StorageError as exc:
            assert exc.errno == errno.ENOSPC
            failures += 1
            break
    assert failures == 1, "the disk never filled up"

    # No torn file and no temp file is visible.
    assert [p for p in all_files(root) if TEMP_MARKER in p.name] == []
    problems = [p for p in store.check() if p.kind == "corrupt"]
    assert problems == []
    messages = store.messages(conv.id, limit=None)
    assert sum(m.status == "complete" for m in messages) == acknowledged
    assert all(m.status in ("complete", "interrupted", "error") for m in messages)

    # Space returns: writing works again, and repair leaves a clean store.
    filler.unlink()
    with store.stream_message(conv.id) as w:
        w.append("back ")
    assert store.messages(conv.id, limit=None)[-1].content == "back "
    store.check(fix=True)
    assert store.check() == []
