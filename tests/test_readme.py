"""The README's examples run as pasted: every python block, the curl block and the command-line
block, in the README's order, against the edge as `make run` starts it (a fresh store, the demo
upstream). The edge listens on a free port here, so `127.0.0.1:8080` / `localhost:8080` in the
blocks are replaced by its address; nothing else is changed or added."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from aiohttp import web

from edge.app import create_app
from edge.config import EdgeConfig

README = Path(__file__).resolve().parent.parent / "README.md"


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), flags=re.S)


def block_with(language: str, marker: str) -> str:
    (found,) = [block for block in blocks(language) if marker in block]
    return found


SDK_BLOCK = block_with("python", "import openai")
CONVERSATIONS_BLOCK = block_with("python", "client.conversations.create")
RESUME_BLOCK = block_with("python", "Last-Event-ID")
LIBRARY_BLOCK = block_with("python", "from chunkstore import Store")
ASYNC_BLOCK = block_with("python", "from chunkstore import AsyncStore")
CURL_BLOCK = block_with("sh", "curl ")
CLI_BLOCK = block_with("sh", "chunkstore ls")
INSTANCES_BLOCK = block_with("sh", "docker run")


def test_every_block_is_exercised() -> None:
    """A new block needs a test here: python blocks all run; of the sh blocks, make's need a
    fresh machine (the first is checked below), two run against a live edge, and the one of
    several instances needs Docker: its shape is checked here, and what it sets up (two edge
    processes on one PostgreSQL) runs in tests/edge/test_instances.py."""
    assert len(blocks("python")) == 5
    sh = blocks("sh")
    assert len(sh) == 5
    assert set(sh) - {CURL_BLOCK, CLI_BLOCK, INSTANCES_BLOCK} == {sh[0], sh[1]}
    assert all(line.split()[-1] == "run" for line in sh[1].splitlines())  # a `make run` variant
    lines = INSTANCES_BLOCK.strip().splitlines()
    assert "export DB_URL=postgresql://" in INSTANCES_BLOCK
    assert [line.split("#")[0].split() for line in lines if "make run" in line] == [
        ["EDGE_PORT=8081", "make", "run", "&"],
        ["EDGE_PORT=8082", "make", "run", "&"],
    ]


def test_readme_starts_with_the_two_commands() -> None:
    head = blocks("sh")[0]
    assert [line.split()[:2] for line in head.strip().splitlines()] == [
        ["make", "run"],
        ["make", "test"],
    ]


def test_the_library_example_holds_on_any_machine(capsys: pytest.CaptureFixture[str]) -> None:
    exec(compile(LIBRARY_BLOCK, "README library block", "exec"), {})
    assert capsys.readouterr().out.splitlines() == [
        "Trip",
        "1 user complete hi",
        "2 assistant complete Hello!",
        "[]",
        "[]",
    ]


def test_the_async_example_holds_on_any_machine(capsys: pytest.CaptureFixture[str]) -> None:
    exec(compile(ASYNC_BLOCK, "README async block", "exec"), {})
    assert capsys.readouterr().out == "['streamed']\n"


@pytest.fixture
def live_edge(tmp_path: Path) -> Iterator[str]:
    """The edge as `make run` starts it (persistence on, demo upstream, ./users under
    tmp_path), on a free port; yields its host:port."""
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
        yield f"127.0.0.1:{port}"
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def pasted(block: str, address: str) -> str:
    text = block.replace("127.0.0.1:8080", address).replace("localhost:8080", address)
    assert text != block
    return text


def bash(script: str, cwd: Path) -> str:
    done = subprocess.run(
        ["bash", "-e", "-c", script], cwd=cwd, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_edge_examples_in_order(
    live_edge: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # 1. The SDK example, in a fresh interpreter's namespace: it defines EDGE_URL itself.
    namespace: dict[str, object] = {}
    exec(compile(pasted(SDK_BLOCK, live_edge), "README edge block", "exec"), namespace)
    out = capsys.readouterr().out
    assert "Plan a trip to Lisbon" in out
    statuses = [(1, "user", "complete"), (2, "assistant", "complete")]
    statuses += [(3, "user", "complete"), (4, "assistant", "complete")]
    assert str(statuses) in out

    # 2. The curl block, line by line in one shell (its responses have no newline between).
    if shutil.which("curl") is None:  # pragma: no cover - .ci/run installs curl
        if os.environ.get("CI"):
            pytest.fail("no curl: the README's curl block must run under CI (.ci/run installs it)")
        pytest.skip("no curl")
    lines = pasted(CURL_BLOCK, live_edge).strip().splitlines()
    script = "\n".join(f"{line}\necho" if line.startswith("curl") else line for line in lines)
    answers = [orjson.loads(text) for text in bash(script, tmp_path).splitlines()]
    assert len(answers) == sum(line.startswith("curl") for line in lines)
    assert not [a for a in answers if "error" in a]
    assert answers[0]["id"] == "us01-co02"  # as the block's comment says
    assert [c["id"] for c in answers[1]["data"]] == ["us01-co02", "us01-co01"]
    assert answers[-1]["id"] == "us01-co01" and answers[-1]["deleted_at"] is None

    # 3. The Conversations API example, with the SDK example's `client`.
    exec(compile(CONVERSATIONS_BLOCK, "README conversations block", "exec"), namespace)
    assert capsys.readouterr().out.splitlines() == [
        "msg_us01-co03-ms01 user Plan a trip to Porto",
        "msg_us01-co03-ms02 assistant Start at the Ribeira.",
    ]

    # 4. The resume example (httpx): what it got before and after the cut is the stored reply.
    exec(compile(pasted(RESUME_BLOCK, live_edge), "README resume block", "exec"), {})
    (line,) = capsys.readouterr().out.splitlines()
    assert re.fullmatch(r"us01-co04-ms02 True True", line), line

    # 5. The command-line block, from a checkout where `make` made .venv (here: this one's).
    venv = Path(sys.prefix)
    if not (venv / "bin" / "activate").exists() or not (venv / "bin" / "chunkstore").exists():
        if os.environ.get("CI"):  # pragma: no cover - `make test` runs from .venv
            pytest.fail("the README's CLI block must run under CI: run the tests from .venv")
        pytest.skip("not running from a virtualenv with the chunkstore command")
    (tmp_path / ".venv").symlink_to(venv)
    out = bash(CLI_BLOCK, tmp_path)
    assert "USER  CONVERSATIONS  DELETED\nus01  4              0\n" in out
    assert "\nus01\n" in out  # whoami my-session
    assert "conversation us01-co01\n" in out
    assert '{"type":"conversation","id":"us01-co01"' in out
    assert "store is clean: no problems found" in out
    assert (tmp_path / "backup.jsonl").stat().st_size > 0
    from chunkstore import Store

    # The export, imported into a new database, and the store copied to another: the same.
    files = Store(tmp_path / "users")
    for url in (f"sqlite:{tmp_path / 'restored.db'}", f"sqlite:{tmp_path / 'chat.db'}"):
        with Store(url) as other:
            assert other.find_user("my-session") == "us01"
            assert other.messages("us01-co01", limit=None) == files.messages(
                "us01-co01", limit=None
            )

    conv = Store(tmp_path / "users").get_conversation("us01-co02")
    assert (conv.title, conv.deleted) == ("Lisbon", False)
