"""The conformance suite: the whole public API, run against every backend.

Each test takes ``store_url`` (or ``make_url`` for several fresh stores) and opens its stores
through the public API only, so the same test runs on every backend listed in ``BACKENDS``.
A backend that cannot open fails every test. The one exception is a PostgreSQL server that
cannot be had outside CI (``tests/support/pg_server.py``): skipped there with a loud reason,
a failure under CI.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conformance_support import open_store

from chunkstore import Conversation, Store

sys.path.append(str(Path(__file__).resolve().parent.parent / "support"))  # pg_server
import pg_server

# Backend name -> a fresh store URL inside a test's own temporary directory (PostgreSQL: a
# fresh schema on the session's server, see tests/support/pg_server.py; under CI a missing
# server fails every test, never skips it).
BACKENDS: dict[str, Callable[[Path], str]] = {
    "file": lambda tmp_path: str(tmp_path / "store"),
    "sqlite": lambda tmp_path: f"sqlite:{tmp_path / 'chat.db'}",
    "postgresql": lambda tmp_path: pg_server.fresh_schema(),
}

@pytest.fixture(params=sorted(BACKENDS))
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def make_url(backend: str, tmp_path_factory: pytest.TempPathFactory) -> Callable[[], str]:
    """A factory of fresh, empty stores' URLs on this test's backend."""
    return lambda: BACKENDS[backend](tmp_path_factory.mktemp(backend))


@pytest.fixture
def store_url(make_url: Callable[[], str]) -> str:
    return make_url()


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    with open_store(store_url) as s:
        yield s


@pytest.fixture
def user(store: Store) -> str:
    return store.user_for("session-test")


@pytest.fixture
def conv(store: Store, user: str) -> Conversation:
    return store.create_conversation(user, title="Test")
