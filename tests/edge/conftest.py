"""Fixtures shared by the edge tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from fake_upstream import FakeUpstream, MakeEdge

from edge.app import create_app
from edge.config import EdgeConfig

# --- fake upstream ------------------------------------------------------------------------------


@pytest.fixture
async def fake_upstream() -> AsyncIterator[FakeUpstream]:
    """A started :class:`FakeUpstream` on loopback; ``fake_upstream.base_url`` ends in ``/v1``."""
    upstream = FakeUpstream()
    await upstream.start()
    try:
        yield upstream
    finally:
        await upstream.close()


# --- an edge app behind aiohttp's test client ---------------------------------------------------



@pytest.fixture
def store_root(tmp_path: Path) -> Path:
    """Where ``make_edge`` apps keep their store (``DB_URL=file:<tmp_path>/users``)."""
    return tmp_path / "users"


@pytest.fixture
def make_edge(aiohttp_client: Any, store_root: Path, fake_upstream: FakeUpstream) -> MakeEdge:
    """``await make_edge(**config)``: a test client for an edge with persistence on, storing
    under ``store_root`` and relaying to ``fake_upstream``; keyword arguments override any
    ``EdgeConfig`` field."""

    async def make(**overrides: Any) -> TestClient[Any, Any]:
        options: dict[str, Any] = {
            "persist_transcripts": True,
            "db_url": f"file:{store_root}",
            "upstream_base_url": fake_upstream.base_url,
            "durability": "none",  # fsync adds nothing to these tests but time
        }
        options.update(overrides)
        client: TestClient[Any, Any] = await aiohttp_client(create_app(EdgeConfig(**options)))
        return client

    return make
