"""``python -m edge`` (and the ``edge`` console script): validate the config, then serve.

A bad setting never reaches the server: it is reported as one line on stderr,
``edge: configuration error: <what is wrong>``, and the process exits with code 2 (the code
argparse uses for usage errors), without a traceback. So does a server that cannot start:
``edge: cannot listen on <host>:<port>: <why>`` (the port is taken, the host does not resolve
or is not local) and ``edge: cannot open the store at <path>: <why>`` (``PERSIST_TRANSCRIPTS``
with a ``DB_URL`` that cannot be created or read).

The server is :func:`edge.server.run_app`: aiohttp's life cycle with the edge's read deadlines,
idle-connection cap and JSON error pages.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from chunkstore import redact_url
from edge.config import ConfigError, EdgeConfig, load_config
from edge.logs import configure_logging

try:
    from edge.server import ListenError, StartupError, run_app
except ModuleNotFoundError as missing:  # `pip install chunkstore` without the `edge` extra
    print(
        f"edge: the edge server needs {missing.name!r}: pip install 'chunkstore[edge]'",
        file=sys.stderr,
    )
    sys.exit(2)

__all__ = ["main"]

_URL = re.compile(r"https?://\S+")
_STREAM_GRACE_S = 5.0


def main(argv: Sequence[str] | None = None) -> None:
    """Run the edge server until interrupted; ``argv`` defaults to ``sys.argv[1:]``."""
    try:
        config = load_config(argv)
    except ConfigError as exc:
        _fail(f"configuration error: {exc}")

    configure_logging(config.log_level, config.log_format)
    # Imported only now so a misconfiguration is reported before the app and its dependencies
    # are loaded.
    from edge.app import create_app

    app = create_app(config)
    try:
        run_app(
            app,
            host=config.host,
            port=config.port,
            header_timeout_s=config.client_header_timeout_s,
            max_idle_connections=config.max_idle_connections,
            print=_banner_printer(config),
            # Streams in flight get this long to end on their own at shutdown; then they are
            # cancelled and their partial replies sealed as errors.
            shutdown_timeout=_STREAM_GRACE_S,
        )
    except ListenError as exc:
        _fail(str(exc))
    except StartupError as exc:
        from chunkstore import ChunkstoreError

        cause = exc.__cause__
        if isinstance(cause, ChunkstoreError):
            # The only part of the start-up that touches the disk is opening the store.
            where = config.store_location
            _fail(f"cannot open the store at {where}: {_store_reason(cause, Path(where))}")
        if isinstance(cause, OSError):
            _fail(f"cannot start: {_os_reason(cause)}")
        raise


def _fail(message: str) -> NoReturn:
    print(f"edge: {message}", file=sys.stderr)
    sys.exit(2)


def _store_reason(exc: Exception, root: Path) -> str:
    """Why the store did not open: the OS error (and the file, if not the root itself)."""
    if isinstance(exc, OSError) and exc.errno:
        reason = os.strerror(exc.errno).lower()
        if exc.filename and Path(exc.filename).resolve() != root:
            return f"{exc.filename}: {reason}"
        return reason
    return str(exc)


def _os_reason(exc: OSError) -> str:
    return os.strerror(exc.errno).lower() if exc.errno else str(exc)


def _banner_printer(config: EdgeConfig) -> Callable[..., None]:
    """A ``print`` for :func:`edge.server.run_app`: its "Running on" line, plus our settings."""

    def print_banner(message: str = "", *args: object, **kwargs: object) -> None:
        # The message (aiohttp's format) holds the address actually bound (port 0 resolved).
        urls = _URL.findall(message) or [f"http://{config.host}:{config.port}"]
        print(_format_banner(config, urls), flush=True)

    return print_banner


def _format_banner(config: EdgeConfig, urls: Sequence[str]) -> str:
    """The lines printed at start: where to connect, what is stored where, which upstream."""
    if config.persist_transcripts:
        persistence = f"on, {config.store_kind} store at {config.store_location}"
    else:
        # The bare `edge` command's default, unlike `make run`'s: say so, and how to turn it on.
        persistence = (
            "off (a pure proxy: nothing is stored, the history API answers 501)\n"
            "               the default of `edge`; `make run` turns it on: "
            "PERSIST_TRANSCRIPTS=true or --persist-transcripts"
        )
    if config.upstream_base_url is None:
        upstream = "built-in demo (set UPSTREAM_BASE_URL to relay to a real API)"
    else:
        upstream = redact_url(config.upstream_base_url)
    return "\n".join(
        [
            # The chat page's address first, on the line tools and people read first.
            f"edge listening on {', '.join(urls)} - chat page: {urls[0]}/ (Press CTRL+C to quit)",
            f"  persistence: {persistence}",
            f"  upstream:    {upstream}",
            "  try:         curl -N -H 'x-session-id: demo' -H 'Content-Type: application/json' "
            f"{urls[0]}/v1/chat/completions "
            """-d '{"model":"demo","stream":true,"messages":[{"role":"user","content":"hi"}]}'""",
        ]
    )


if __name__ == "__main__":
    main()
