"""``python -m edge`` starting and stopping: a server that cannot start says why in one line on
stderr and exits with code 2, without a traceback; SIGINT stops it cleanly."""

from __future__ import annotations

import asyncio
import errno
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

import edge.__main__ as edge_main
import edge.server
from edge.server import StartupError, default_max_idle_connections

REPO_ROOT = Path(__file__).resolve().parents[2]
SETTINGS_PREFIXES = (
    "EDGE_",
    "UPSTREAM_",
    "CLIENT_",
    "MAX_",
    "STREAM_",
    "STORE_",
    "STORAGE_",
    "RETENTION_",
    "HISTORY_",
    "CHUNK_",
    "GIL_",
)


def edge_env(**env: str) -> dict[str, str]:
    environ = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(SETTINGS_PREFIXES) and key not in ("DB_URL", "PERSIST_TRANSCRIPTS")
    }
    environ["PYTHONPATH"] = os.pathsep.join(
        [str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    environ.update(env)
    return environ


def run_edge(*argv: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m edge`` expecting it to stop on its own (a start-up failure)."""
    return subprocess.run(
        [sys.executable, "-m", "edge", *argv],
        cwd=REPO_ROOT,
        env=edge_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
    )


def assert_one_line_exit_2(result: subprocess.CompletedProcess[str], starts: str) -> str:
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.endswith("\n"), result.stderr
    assert result.stderr.startswith(starts), result.stderr
    return result.stderr


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_a_taken_port_is_one_line_and_the_store_is_not_touched(
    taken_port: int, tmp_path: Path
) -> None:
    root = tmp_path / "users"
    result = run_edge("--port", str(taken_port), PERSIST_TRANSCRIPTS="true", DB_URL=f"file:{root}")
    assert assert_one_line_exit_2(result, "edge: ") == (
        f"edge: cannot listen on 127.0.0.1:{taken_port}: address already in use\n"
    )
    # The address is checked before the app starts: no store was created.
    assert not root.exists()


def test_an_unresolvable_host_is_one_line() -> None:
    result = run_edge(EDGE_HOST="no.such.host.invalid", EDGE_PORT="0")
    assert_one_line_exit_2(result, "edge: cannot listen on no.such.host.invalid:0: ")


def test_a_store_that_cannot_be_created_is_one_line() -> None:
    result = run_edge(PERSIST_TRANSCRIPTS="true", DB_URL="file:/proc/forbidden", EDGE_PORT="0")
    assert_one_line_exit_2(result, "edge: cannot open the store at /proc/forbidden: ")


def test_a_file_in_place_of_the_store_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "users"
    path.write_text("not a directory")
    result = run_edge(PERSIST_TRANSCRIPTS="true", DB_URL=f"file:{path}", EDGE_PORT="0")
    assert assert_one_line_exit_2(result, "edge: ") == (
        f"edge: cannot open the store at {path}: {path}/FORMAT: not a directory\n"
    )


def _read_only_directory(path: Path) -> tuple[Callable[[], None], str]:
    """Make ``path`` a directory nobody may create entries in; return its undo and the error
    the OS gives. Permission bits do not stop root, so root gets an immutable directory
    (``chattr +i``, on filesystems that have it)."""
    path.mkdir()
    if os.geteuid() != 0:
        path.chmod(0o555)
        return (lambda: path.chmod(0o755)), "permission denied"
    chattr = shutil.which("chattr")
    if chattr is None or subprocess.run([chattr, "+i", str(path)], capture_output=True).returncode:
        pytest.skip("running as root on a filesystem without chattr +i: nothing is read-only")
    return (lambda: subprocess.run([chattr, "-i", str(path)], check=True)), "not permitted"


def test_a_store_under_a_read_only_directory_is_one_line(tmp_path: Path) -> None:
    parent = tmp_path / "read-only"
    undo, reason = _read_only_directory(parent)
    try:
        result = run_edge(
            PERSIST_TRANSCRIPTS="true", DB_URL=f"file:{parent / 'users'}", EDGE_PORT="0"
        )
    finally:
        undo()
    assert_one_line_exit_2(result, f"edge: cannot open the store at {parent / 'users'}: ")
    assert reason in result.stderr


def test_sigint_stops_the_edge_cleanly() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge"],
        cwd=REPO_ROOT,
        env=edge_env(EDGE_PORT="0", EDGE_LOG_LEVEL="WARNING"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("edge listening on http://127.0.0.1:")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0
    assert "Traceback" not in err


# --- main() around edge.server.run_app, in process ------------------------------------------------


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(SETTINGS_PREFIXES) or name in ("DB_URL", "PERSIST_TRANSCRIPTS"):
            monkeypatch.delenv(name)
    monkeypatch.setattr(edge_main, "configure_logging", lambda level, log_format: None)


def test_main_serves_the_app_with_the_configured_deadlines(
    clean_env: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    calls: list[dict[str, Any]] = []

    def fake_run_app(app: web.Application, **kwargs: Any) -> None:
        calls.append(kwargs)
        kwargs["print"]("======== Running on http://127.0.0.1:43210 ========\n(Press CTRL+C)")

    monkeypatch.setattr(edge_main, "run_app", fake_run_app)
    edge_main.main(["--port", "0", "--upstream-base-url", "http://up.example/v1"])
    edge_main.main(
        [
            "--port",
            "0",
            "--upstream-base-url",
            "http://up.example/v1",
            "--client-header-timeout-s",
            "7",
            "--max-idle-connections",
            "33",
        ]
    )
    assert [
        (call["host"], call["port"], call["header_timeout_s"], call["max_idle_connections"])
        for call in calls
    ] == [("127.0.0.1", 0, 20, None), ("127.0.0.1", 0, 7, 33)]
    assert calls[0]["shutdown_timeout"] == 5.0
    assert "edge listening on http://127.0.0.1:43210" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("cause", "expected"),
    [
        (PermissionError(errno.EACCES, "no"), "edge: cannot start: permission denied\n"),
        (OSError("odd"), "edge: cannot start: odd\n"),
    ],
)
def test_main_reports_other_os_errors_of_the_start_up_in_one_line(
    cause: OSError,
    expected: str,
    clean_env: None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    def fail(app: web.Application, **kwargs: Any) -> None:
        raise StartupError(str(cause)) from cause

    monkeypatch.setattr(edge_main, "run_app", fail)
    with pytest.raises(SystemExit) as info:
        edge_main.main(["--upstream-base-url", "http://up.example/v1"])
    assert info.value.code == 2
    assert capsys.readouterr().err == expected


def test_main_lets_a_start_up_bug_show_its_traceback(
    clean_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(app: web.Application, **kwargs: Any) -> None:
        raise StartupError("bug") from ZeroDivisionError()

    monkeypatch.setattr(edge_main, "run_app", fail)
    with pytest.raises(StartupError):
        edge_main.main(["--upstream-base-url", "http://up.example/v1"])


def test_the_default_idle_cap_is_half_the_open_file_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY:
        assert default_max_idle_connections() == max(1, soft // 2)
    monkeypatch.setattr(
        edge.server.resource,
        "getrlimit",
        lambda which: (resource.RLIM_INFINITY, resource.RLIM_INFINITY),
    )
    assert default_max_idle_connections() is None
    monkeypatch.setattr(edge.server.resource, "getrlimit", lambda which: (1024, 4096))
    assert default_max_idle_connections() == 512


def test_a_failed_start_up_closes_what_had_started() -> None:
    """``run_app`` itself: the app's start-up fails half-way; contexts that started are closed
    (aiohttp's run_app leaves them open), and the error comes out as a StartupError."""
    events: list[str] = []

    async def first(app: web.Application) -> Any:
        events.append("first opened")
        yield
        events.append("first closed")

    async def second(app: web.Application) -> Any:
        raise OSError(errno.ENOSPC, "disk full")
        yield

    app = web.Application()
    app.cleanup_ctx.extend([first, second])
    with pytest.raises(StartupError) as info:
        edge.server.run_app(
            app,
            host="127.0.0.1",
            port=0,
            header_timeout_s=1,
            max_idle_connections=None,
            shutdown_timeout=1,
        )
    assert isinstance(info.value.__cause__, OSError)
    assert events == ["first opened", "first closed"]


def test_run_app_serves_until_sigterm(capsys: pytest.CaptureFixture[str]) -> None:
    """``run_app`` in this process: it listens, prints aiohttp's banner, serves, and stops
    gracefully on SIGTERM (the app's cleanup runs)."""
    events: list[str] = []

    async def context(app: web.Application) -> Any:
        events.append("started")
        yield
        events.append("cleaned up")

    async def on_listening(message: str) -> None:
        port = int(message.split(":")[2].split()[0])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /ok HTTP/1.1\r\nHost: edge\r\nConnection: close\r\n\r\n")
        events.append((await reader.read()).split(b"\r\n")[0].decode())
        writer.close()
        os.kill(os.getpid(), signal.SIGTERM)

    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/ok", ok)
    app.cleanup_ctx.append(context)
    tasks: list[asyncio.Task[None]] = []

    def banner(message: str) -> None:
        print(message)
        tasks.append(asyncio.get_running_loop().create_task(on_listening(message)))

    edge.server.run_app(
        app,
        host="127.0.0.1",
        port=0,
        header_timeout_s=5,
        max_idle_connections=10,
        shutdown_timeout=1,
        print=banner,
    )
    assert events == ["started", "HTTP/1.1 200 OK", "cleaned up"]
    assert capsys.readouterr().out.startswith("======== Running on http://127.0.0.1:")


def test_run_app_reports_a_taken_port(taken_port: int) -> None:
    with pytest.raises(edge.server.ListenError) as info:
        edge.server.run_app(
            web.Application(),
            host="127.0.0.1",
            port=taken_port,
            header_timeout_s=5,
            max_idle_connections=None,
            shutdown_timeout=1,
        )
    assert str(info.value) == f"cannot listen on 127.0.0.1:{taken_port}: address already in use"
    assert isinstance(info.value.error, OSError)


@pytest.mark.parametrize(
    ("host", "error", "expected"),
    [
        (
            "::1",
            OSError(errno.EADDRINUSE, "x"),
            "cannot listen on [::1]:80: address already in use",
        ),
        (
            "h",
            socket.gaierror(-2, "Name or service not known"),
            "cannot listen on h:80: cannot resolve the host (name or service not known)",
        ),
        ("h", OSError("odd"), "cannot listen on h:80: odd"),
    ],
)
def test_listen_errors_read_as_one_line(host: str, error: OSError, expected: str) -> None:
    assert str(edge.server.ListenError(host, 80, error)) == expected
