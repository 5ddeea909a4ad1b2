"""Helpers of the browser tests (``conftest.py`` has the fixtures): the fake upstream the page
talks to, the live edge's handle, screenshots, and whether the browser can run here."""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

sys.path.append(str(Path(__file__).resolve().parent.parent / "edge"))  # fake_upstream
from fake_upstream import FakeUpstream, _Completion

from edge.config import EdgeConfig

CHROMIUM = os.environ.get("EDGE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = Path(
    os.environ.get("EDGE_SCREENSHOTS", Path(__file__).resolve().parent / "screenshots")
)
# Bounds: no single wait in these tests may hang a run.
TIMEOUT_MS = 15_000
# The models the page offers (the fake upstream's behaviours, see fake_upstream.py), plus
# ``say``: the last user message streamed back verbatim, 4 characters a token.
MODELS = ["say", "tokens-30", "slow-300-3", "slow-200-20", "slow-2000-5", "drop-70"]
_SAY_CHARS = 4


class PageUpstream(FakeUpstream):
    """The fake upstream, listing the page's models and answering ``say``."""

    async def _models(self, request: web.Request) -> web.Response:
        await self._record(request)
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "tests"} for m in MODELS]
        return web.json_response({"object": "list", "data": data})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if body.get("model") != "say":
            return await super()._chat(request)
        await self._record(request)
        said = next(
            (m["content"] for m in reversed(body["messages"]) if m.get("role") == "user"), ""
        )
        tokens = [said[i : i + _SAY_CHARS] for i in range(0, len(said), _SAY_CHARS)]
        self._serial += 1
        ctx = _Completion(f"chatcmpl-say-{self._serial}", "say", False)
        return await ctx.stream_text(request, tokens, delay=0.0, drop=False)


@dataclasses.dataclass
class LiveEdge:
    url: str
    store_root: Path
    upstream: PageUpstream
    config: EdgeConfig

    def chat_requests(self) -> list[Any]:
        return self.upstream.chat_requests


def supported_options(options: dict[str, Any]) -> dict[str, Any]:
    """Options this EdgeConfig knows (the page's tests run against older edges too)."""
    known = {f.name for f in dataclasses.fields(EdgeConfig)}
    return {k: v for k, v in options.items() if k in known}


NOT_RUN: list[str] = []


def under_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def playwright_expect() -> Any:
    """Playwright's ``expect`` for the test modules: without the package they are skipped (or
    fail, under CI) instead of failing to import."""
    try:
        from playwright.sync_api import expect
    except ImportError:
        message = f"BROWSER TESTS NOT RUN: {unavailable()}"
        if under_ci():
            raise
        NOT_RUN.append(message)
        pytest.skip(message, allow_module_level=True)
    return expect


def unavailable() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (pip install -e '.[test]')"
    if not os.access(CHROMIUM, os.X_OK):
        return f"no Chromium at {CHROMIUM} (apt-get install chromium, or set EDGE_CHROMIUM)"
    return None


def shot(page: Any, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path))
    return path
