"""Logs: one format for every line the edge writes to stderr, JSON objects by default.

* ``EDGE_LOG_FORMAT=json`` (the default): one JSON object per line, ``{"ts", "level",
  "logger", "event", ...fields}``, for log shippers and dashboards. ``text``: one readable line
  per record, ``<time> <LEVEL> <logger>: <event> key=value ...``, for a terminal.
* ``edge.store``: store events (chunk writes, rebuilds, stream outcomes) with their ids, sizes
  and durations; never conversation content.
* ``edge.access``: one ``access`` event per request that reached the app (routed or not):
  ``method``, ``path`` (never the query string: it may carry secrets), ``status`` (499: the
  request was cancelled, e.g. at shutdown) and ``duration_ms`` (for a stream, until its end).
  It replaces aiohttp's own access log (``aiohttp.access``: Apache-style text that quotes the
  query string), which :func:`configure_logging` turns off. Requests aiohttp's parser refuses
  (malformed, oversized heads) never reach the app: ``edge`` logs them at DEBUG level.
* Every other logger (``edge``, ``aiohttp.*``...): its message as ``event``.

The banner ``python -m edge`` prints at start is not a log line: it goes to stdout.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import orjson

__all__ = [
    "JsonFormatter",
    "TextFormatter",
    "access_log",
    "configure_logging",
    "elapsed_ms",
    "log_access",
    "log_event",
    "store_log",
]

store_log = logging.getLogger("edge.store")
access_log = logging.getLogger("edge.access")

# The name of the handler configure_logging installs on the root logger (so that a second call
# replaces it rather than adding another).
_HANDLER_NAME = "edge"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": round(record.created, 6),
            "level": record.levelname,
            "logger": record.name,
            "event": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if fields:
            payload.update(fields)
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(payload, default=str).decode()


class TextFormatter(logging.Formatter):
    """``<time> <LEVEL> <logger>: <event> key=value ...`` (the fields of structured events)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = getattr(record, "fields", None)
        if not fields:
            return line
        head, sep, tail = line.partition("\n")  # a traceback stays below the fields
        pairs = " ".join(f"{key}={_text_value(value)}" for key, value in fields.items())
        return f"{head} {pairs}{sep}{tail}"


def _text_value(value: Any) -> str:
    if isinstance(value, str) and value and not any(c.isspace() or c in "\"'=" for c in value):
        return value
    if isinstance(value, (str, dict, list)):
        return orjson.dumps(value, default=str).decode()
    return str(value)


def configure_logging(level: str, log_format: str = "json") -> None:
    """Send every log line to stderr at ``level`` and above, as JSON (``"json"``) or plain
    text (``"text"``); turn aiohttp's own access log off (``edge.access`` replaces it).

    Calling it again replaces the handler it installed (nothing else on the root logger)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # Store and access events go through the root handler like every other line.
    for logger in (store_log, access_log):
        logger.handlers.clear()
        logger.propagate = True
    # aiohttp asks this logger whether it is enabled (for INFO) before formatting a line.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def log_event(event: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log ``event`` with ``fields`` as one structured line on the ``edge.store`` logger."""
    if store_log.isEnabledFor(level):
        store_log.log(level, event, extra={"fields": fields})


def log_access(method: str, path: str, status: int, duration_ms: float) -> None:
    """Log one request as an ``access`` event on the ``edge.access`` logger."""
    if access_log.isEnabledFor(logging.INFO):
        fields = {"method": method, "path": path, "status": status, "duration_ms": duration_ms}
        access_log.info("access", extra={"fields": fields})


def elapsed_ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 3)
