"""``python -m edge`` (and the ``edge`` console script): validate the config, then serve.

A bad setting never reaches the server: it is reported as one line on stderr,
``edge: configuration error: <what is wrong>``, and the process exits with code 2 (the code
argparse uses for usage errors), without a traceback.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Sequence

from aiohttp import web

from edge.config import ConfigError, EdgeConfig, load_config
from edge.logs import configure_logging

__all__ = ["main"]

_URL = re.compile(r"https?://\S+")
_STREAM_GRACE_S = 5.0


def main(argv: Sequence[str] | None = None) -> None:
    """Run the edge server until interrupted; ``argv`` defaults to ``sys.argv[1:]``."""
    try:
        config = load_config(argv)
    except ConfigError as exc:
        print(f"edge: configuration error: {exc}", file=sys.stderr)
        sys.exit(2)

    configure_logging(config.log_level)
    # Imported only now so a misconfiguration is reported before the app and its dependencies
    # are loaded.
    from edge.app import create_app

    app = create_app(config)
    web.run_app(
        app,
        host=config.host,
        port=config.port,
        print=_banner_printer(config),
        # Streams in flight get this long to end on their own at shutdown; then they are
        # cancelled and their partial replies sealed as errors.
        shutdown_timeout=_STREAM_GRACE_S,
    )


def _banner_printer(config: EdgeConfig) -> Callable[..., None]:
    """A ``print`` for :func:`aiohttp.web.run_app`: its "Running on" line, plus our settings."""

    def print_banner(message: str = "", *args: object, **kwargs: object) -> None:
        # aiohttp's message holds the addresses it actually bound (with port 0 resolved).
        urls = _URL.findall(message) or [f"http://{config.host}:{config.port}"]
        print(_format_banner(config, urls), flush=True)

    return print_banner


def _format_banner(config: EdgeConfig, urls: Sequence[str]) -> str:
    """The lines printed at start: where to connect, what is stored where, which upstream."""
    if config.persist_transcripts:
        persistence = f"on, store at {config.store_path.resolve()}"
    else:
        persistence = "off (pure proxy; set PERSIST_TRANSCRIPTS=true to store conversations)"
    if config.upstream_base_url is None:
        upstream = "built-in demo (set UPSTREAM_BASE_URL to relay to a real API)"
    else:
        upstream = config.upstream_base_url
    return "\n".join(
        [
            f"edge listening on {', '.join(urls)} (Press CTRL+C to quit)",
            f"  persistence: {persistence}",
            f"  upstream:    {upstream}",
            "  try:        curl -N -H 'x-session-id: demo' -H 'Content-Type: application/json' "
            f"{urls[0]}/v1/chat/completions "
            """-d '{"model":"demo","stream":true,"messages":[{"role":"user","content":"hi"}]}'""",
        ]
    )


if __name__ == "__main__":
    main()
