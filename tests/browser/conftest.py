"""The chat page in a real browser: Playwright for Python driving Debian's Chromium.

A live edge (persistence on, a file store under tmp_path) listens on a free port in a thread of
its own, relaying to the tests' fake upstream (``tests/edge/fake_upstream.py``), whose model
list here names the behaviours the tests pick in the page's model picker.

Without Chromium (``apt-get install chromium``) or the ``playwright`` package these tests are
SKIPPED with a loud reason; under CI (``CI`` set, as ``.ci/run`` runs) they FAIL instead, so a
CI run can never pass without them. Screenshots of the main states go to
``tests/browser/screenshots/`` (git-ignored; ``EDGE_SCREENSHOTS`` overrides).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

sys.path.append(str(Path(__file__).resolve().parent.parent / "edge"))  # fake_upstream
from fake_upstream import FakeUpstream, _Completion

from edge.app import create_app
from edge.config import EdgeConfig
from edge.server import EdgeAppRunner

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
_SAY_SLOW = re.compile(r"say-slow-(\d+)")


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


def _supported(options: dict[str, Any]) -> dict[str, Any]:
    """Options this EdgeConfig knows (the page's tests run against older edges too)."""
    known = {f.name for f in dataclasses.fields(EdgeConfig)}
    return {k: v for k, v in options.items() if k in known}


@pytest.fixture
def live_edge(tmp_path: Path) -> Iterator[LiveEdge]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    def run(coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, loop).result(30)

    upstream = PageUpstream()
    run(upstream.start())
    root = tmp_path / "users"
    config = EdgeConfig(
        **_supported(
            {
                "persist_transcripts": True,
                "db_url": f"file:{root}",
                "upstream_base_url": upstream.base_url,
                "durability": "none",
                "port": 0,
                # A reload must not end the reply it interrupts: the page resumes it.
                "background_generation": True,
                "log_level": "WARNING",
            }
        )
    )

    async def start() -> tuple[EdgeAppRunner, int]:
        # The edge's own runner, as `make run` serves it (no handler cancellation).
        runner = EdgeAppRunner(
            create_app(config),
            header_timeout_s=config.client_header_timeout_s,
            max_waiting=None,
            access_log=None,
        )
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        return runner, runner.addresses[0][1]

    runner, port = run(start())
    try:
        yield LiveEdge(f"http://127.0.0.1:{port}", root, upstream, config)
    finally:
        run(runner.cleanup())
        run(upstream.close())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def playwright_expect() -> Any:
    """Playwright's ``expect`` for the test modules: without the package they are skipped (or
    fail, under CI) instead of failing to import."""
    try:
        from playwright.sync_api import expect
    except ImportError:
        message = f"BROWSER TESTS NOT RUN: {_unavailable()}"
        if _under_ci():
            raise
        _not_run.append(message)
        pytest.skip(message, allow_module_level=True)
    return expect


def _unavailable() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (pip install -e '.[test]')"
    if not os.access(CHROMIUM, os.X_OK):
        return f"no Chromium at {CHROMIUM} (apt-get install chromium, or set EDGE_CHROMIUM)"
    return None


_not_run: list[str] = []


def _under_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    reason = _unavailable()
    if reason is not None:
        message = f"BROWSER TESTS NOT RUN: {reason}"
        if _under_ci():
            pytest.fail(f"{message}; under CI they must run (.ci/run installs Chromium)")
        _not_run.append(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Any, live_edge: LiveEdge) -> Iterator[Any]:
    """A fresh browser context (no cookies: a new session) on the live edge's page, with the
    JavaScript errors it raised checked at the end."""
    context = browser.new_context(base_url=live_edge.url, viewport={"width": 1200, "height": 760})
    context.set_default_timeout(TIMEOUT_MS)
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    tab.on(
        "console",
        lambda msg: errors.append(msg.text) if "Content Security Policy" in msg.text else None,
    )
    try:
        yield tab
    finally:
        context.close()
    assert not errors, f"errors in the page: {errors}"


def shot(page: Any, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path))
    return path


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Say it at the end of the run too, where nobody can miss it."""
    if _not_run:
        terminalreporter.section("the chat page was not tested", sep="!", red=True, bold=True)
        terminalreporter.line(_not_run[0], red=True, bold=True)
