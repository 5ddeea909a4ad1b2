"""``edge.logs``: one format for every line (JSON by default, or text), access log included."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from edge.logs import configure_logging, log_access, log_event

REPO_ROOT = Path(__file__).resolve().parents[2]
LOGGERS = ("", "edge", "edge.store", "edge.access", "aiohttp.access")


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """configure_logging changes process-wide state: put it back after each test."""
    saved = {
        name: (
            logging.getLogger(name).level,
            list(logging.getLogger(name).handlers),
            logging.getLogger(name).propagate,
        )
        for name in LOGGERS
    }
    yield
    for name, (level, handlers, propagate) in saved.items():
        logger = logging.getLogger(name)
        logger.setLevel(level)
        logger.handlers[:] = handlers
        logger.propagate = propagate


def ours() -> list[logging.Handler]:
    return [h for h in logging.getLogger().handlers if h.get_name() == "edge"]


def test_json_lines_for_everything(
    restore_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("INFO")
    configure_logging("INFO")  # a second call replaces the handler
    assert len(ours()) == 1
    logging.getLogger("edge").warning("the upstream %s is unreachable", "http://up/v1")
    log_event("chunk_write", conversation_id="us01-co01", tokens=60)
    log_access("GET", "/v1/models", 200, 1.5)
    logging.getLogger("edge").debug("below the level")
    assert not logging.getLogger("aiohttp.access").isEnabledFor(logging.INFO)  # replaced
    lines = capsys.readouterr().err.splitlines()
    events = [orjson.loads(line) for line in lines]
    assert [(e["logger"], e["level"], e["event"]) for e in events] == [
        ("edge", "WARNING", "the upstream http://up/v1 is unreachable"),
        ("edge.store", "INFO", "chunk_write"),
        ("edge.access", "INFO", "access"),
    ]
    assert events[1]["conversation_id"] == "us01-co01" and events[1]["tokens"] == 60
    assert {k: events[2][k] for k in ("method", "path", "status", "duration_ms")} == {
        "method": "GET",
        "path": "/v1/models",
        "status": 200,
        "duration_ms": 1.5,
    }


def test_text_lines_on_request(restore_logging: None, capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("DEBUG", "text")
    logging.getLogger("edge").debug("plain %d", 1)
    log_event("stream_end", conversation_id="us01-co01", reason="client gone", extra=None)
    log_access("POST", "/v1/chat/completions", 200, 12.25)
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("edge.store").exception("failed", extra={"fields": {"chunk": 2}})
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert lines[0].endswith(" DEBUG edge: plain 1")
    assert lines[1].endswith(
        ' INFO edge.store: stream_end conversation_id=us01-co01 reason="client gone" extra=None'
    )
    assert lines[2].endswith(
        " INFO edge.access: access method=POST path=/v1/chat/completions status=200 "
        "duration_ms=12.25"
    )
    assert lines[3].endswith(" ERROR edge.store: failed chunk=2")
    assert lines[4] == "Traceback (most recent call last):"  # below the fields
    assert "ValueError: boom" in err


def test_exceptions_are_one_json_line(
    restore_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("INFO", "json")
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("edge").exception("unhandled error on %s %s", "GET", "/x")
    (line,) = capsys.readouterr().err.splitlines()
    event = orjson.loads(line)
    assert event["event"] == "unhandled error on GET /x"
    assert "ValueError: boom" in event["exc"]


def test_the_server_writes_only_json_lines(tmp_path: Path) -> None:
    """``python -m edge`` as started by hand: start-up, access and store lines are all JSON, and
    the access log never shows a query string."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("EDGE_", "UPSTREAM_")) and key not in ("DB_URL",)
    }
    env.update(
        EDGE_PORT="0",
        PERSIST_TRANSCRIPTS="true",
        DB_URL=f"file:{tmp_path}/users",
        STORE_DURABILITY="none",
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        banner = proc.stdout.readline()
        url = banner.split("edge listening on ", 1)[1].split()[0]
        for path in ("/healthz", "/v1/models?api_key=sk-query-secret", "/v1/conversations"):
            request = urllib.request.Request(url + path, headers={"x-session-id": "logs-test"})
            with urllib.request.urlopen(request, timeout=30) as resp:
                assert resp.status == 200
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0
    events = [orjson.loads(line) for line in err.splitlines()]  # every line is JSON
    access = [(e["method"], e["path"], e["status"]) for e in events if e["event"] == "access"]
    assert access == [
        ("GET", "/healthz", 200),
        ("GET", "/v1/models", 200),
        ("GET", "/v1/conversations", 200),
    ]
    assert any(e["logger"] == "edge" and "demo upstream" in e["event"] for e in events)
    assert "sk-query-secret" not in err
    assert not [e for e in events if e["logger"] == "aiohttp.access"]
