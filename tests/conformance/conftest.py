"""The conformance suite: the whole public API, run against every backend.

Each test takes ``store_url`` (or ``make_url`` for several fresh stores) and opens its stores
through the public API only, so the same test runs on every backend listed in ``BACKENDS``.
A backend whose URLs the library does not accept yet is skipped (``url_supported``).
"""

from __future__ import annotations

import contextlib
import functools
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conformance_support import open_store

from chunkstore import Conversation, Store

# Backend name -> a fresh store URL inside a test's own temporary directory.
BACKENDS: dict[str, Callable[[Path], str]] = {
    "file": lambda tmp_path: str(tmp_path / "store"),
    "sqlite": lambda tmp_path: f"sqlite:{tmp_path / 'chat.db'}",
}

NOT_YET = {"sqlite": "sqlite backend not available yet"}


@functools.cache
def url_supported(scheme: str) -> bool:
    """Whether ``Store`` accepts ``scheme:`` URLs yet (checked once per scheme).

    A library that does not know the scheme either raises, or (the file store taking the URL
    for a relative path) creates a directory literally named ``scheme:`` in the working
    directory: so the probe runs inside an empty temporary directory.
    """
    with tempfile.TemporaryDirectory() as tmp, contextlib.chdir(tmp):
        try:
            Store(f"{scheme}:{Path(tmp, 'probe')}", durability="none").close()
        except Exception:
            return False
        return not Path(tmp, f"{scheme}:").exists()


@pytest.fixture
def scheme_supported() -> Callable[[str], bool]:
    """``url_supported``, for tests (a test module cannot import this conftest by name: every
    test directory has one)."""
    return url_supported


@pytest.fixture(params=sorted(BACKENDS))
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    if name != "file" and not url_supported(name):
        pytest.skip(NOT_YET.get(name, f"{name} backend not available yet"))
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
