"""Fixtures of the SQLite backend tests: a fresh database on ``tmp_path`` for each test.

The backend runs with durability ``"none"`` (no fsync) for speed; tests about durability open
their own.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlite_support import new_conversation, open_backend

from chunkstore._ids import ConversationId
from chunkstore._sqlite import SqliteBackend


@pytest.fixture
def db_path(tmp_path: Path) -> str:
    return str(tmp_path / "chat.db")


@pytest.fixture
def backend(db_path: str) -> Iterator[SqliteBackend]:
    b = open_backend(db_path)
    yield b
    b.close()


@pytest.fixture
def conv(backend: SqliteBackend) -> ConversationId:
    return new_conversation(backend)
