"""Fixtures of the PostgreSQL backend tests: a fresh database for each test, on the one server
of the session (``tests/support/pg_server.py``: started with pgserver, or
``CHUNKSTORE_TEST_POSTGRESQL_URL``; under CI a missing server fails, never skips).

The backend runs with durability ``"none"`` for speed; tests about durability open their own.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from pg_support import new_conversation, open_backend

from chunkstore._ids import ConversationId
from chunkstore._postgres import PostgresBackend

sys.path.append(str(Path(__file__).resolve().parent.parent / "support"))  # pg_server
import pg_server


@pytest.fixture
def pg_url() -> str:
    """The URL of a new, empty database."""
    return pg_server.fresh_database()


@pytest.fixture
def backend(pg_url: str) -> Iterator[PostgresBackend]:
    b = open_backend(pg_url)
    yield b
    b.close()


@pytest.fixture
def conv(backend: PostgresBackend) -> ConversationId:
    return new_conversation(backend)
