"""Fixtures for the chunkstore tests: a fresh store on ``tmp_path`` for each test.

The store runs with durability ``"none"`` (no fsync) for speed; tests about durability build
their own. ``flush_interval=None`` keeps chunk boundaries deterministic (a chunk every
``chunk_tokens`` tokens, never on a timer) unless a test is about the time budget.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from chunkstore import Conversation, Store


@pytest.fixture
def root(tmp_path) -> str:
    return str(tmp_path / "users")


@pytest.fixture
def store(root: str) -> Iterator[Store]:
    with Store(root, durability="none", flush_interval=None) as s:
        yield s


@pytest.fixture
def user(store: Store) -> str:
    return store.user_for("session-test")


@pytest.fixture
def conv(store: Store, user: str) -> Conversation:
    return store.create_conversation(user, title="Test")
