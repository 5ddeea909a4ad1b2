"""Fixtures shared by the edge tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from fake_upstream import FakeUpstream

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
