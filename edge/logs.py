"""Structured logs: one JSON object per line, for store events (chunk writes, rebuilds) and
stream outcomes. Only ids, sizes and durations are logged, never conversation content."""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson

__all__ = ["JsonFormatter", "configure_logging", "elapsed_ms", "log_event", "store_log"]

store_log = logging.getLogger("edge.store")


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


def configure_logging(level: str) -> None:
    """Plain text for the server's own messages; JSON lines for store events (``edge.store``),
    which are meant for machines (log shippers, dashboards)."""
    import sys

    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    store_log.handlers[:] = [handler]
    store_log.propagate = False


def log_event(event: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log ``event`` with ``fields`` as one JSON line on the ``edge.store`` logger."""
    if store_log.isEnabledFor(level):
        store_log.log(level, event, extra={"fields": fields})


def elapsed_ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 3)
