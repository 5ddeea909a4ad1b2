"""The README's examples run exactly as written (against a temp store and a live edge)."""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web

from edge.app import create_app
from edge.config import EdgeConfig

README = Path(__file__).resolve().parent.parent / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_starts_with_the_two_commands() -> None:
    head = README.read_text().split("```sh\n", 1)[1].split("```", 1)[0]
    assert [line.split()[:2] for line in head.strip().splitlines()] == [
        ["make", "run"],
        ["make", "test"],
    ]


@pytest.mark.parametrize("index", [1, 2])
def test_library_examples(index: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    exec(compile(python_blocks()[index], f"README block {index}", "exec"), {})
    assert (tmp_path / "users" / "FORMAT").exists()


@pytest.fixture
def live_edge(tmp_path: Path) -> Iterator[str]:
    """The edge as `make run` starts it (persistence on, demo upstream), on a free port."""
    loop = asyncio.new_event_loop()
    config = EdgeConfig(persist_transcripts=True, db_url=f"file:{tmp_path}/users", port=0)
    runner = web.AppRunner(create_app(config))
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = runner.addresses[0][1]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def test_edge_sdk_example(live_edge: str, capsys: pytest.CaptureFixture[str]) -> None:
    exec(compile(python_blocks()[0], "README edge block", "exec"), {"EDGE_URL": live_edge})
    out = capsys.readouterr().out
    assert "Plan a trip to Lisbon" in out
    statuses = [(1, "user", "complete"), (2, "assistant", "complete")]
    statuses += [(3, "user", "complete"), (4, "assistant", "complete")]
    assert str(statuses) in out
