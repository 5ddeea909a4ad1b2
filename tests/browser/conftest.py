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
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from page_support import (
    CHROMIUM,
    CHROMIUM_ARGS,
    NOT_RUN,
    TIMEOUT_MS,
    LiveEdge,
    PageUpstream,
    supported_options,
    unavailable,
    under_ci,
)

from edge.app import create_app
from edge.config import EdgeConfig
from edge.server import EdgeAppRunner


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "edge_config(**options): the browser tests' edge settings")


@pytest.fixture
def live_edge(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[LiveEdge]:
    """The edge, with ``@pytest.mark.edge_config(**options)`` applied to its config."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    def run(coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, loop).result(30)

    upstream = PageUpstream()
    run(upstream.start())
    root = tmp_path / "users"
    config = EdgeConfig(
        **supported_options(
            {
                "persist_transcripts": True,
                "db_url": f"file:{root}",
                "upstream_base_url": upstream.base_url,
                "durability": "none",
                "port": 0,
                # A reload must not end the reply it interrupts: the page resumes it.
                "background_generation": True,
                "log_level": "WARNING",
                **(
                    marker.kwargs
                    if (marker := request.node.get_closest_marker("edge_config"))
                    else {}
                ),
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


# Module-scoped, not session-scoped: Playwright's sync API runs an event loop in this thread
# while the browser is open, and the asyncio tests that follow need the thread's loop free.
@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    reason = unavailable()
    if reason is not None:
        message = f"BROWSER TESTS NOT RUN: {reason}"
        if under_ci():
            pytest.fail(f"{message}; under CI they must run (.ci/run installs Chromium)")
        NOT_RUN.append(message)
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


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Say it at the end of the run too, where nobody can miss it."""
    if NOT_RUN:
        terminalreporter.section("the chat page was not tested", sep="!", red=True, bold=True)
        terminalreporter.line(NOT_RUN[0], red=True, bold=True)
