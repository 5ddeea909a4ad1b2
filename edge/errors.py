"""OpenAI-shaped errors: every error the edge returns is ``{"error": {message, type, code}}``.

Handlers raise ``ApiError``; the error middleware (``middlewares.py``) turns it, aiohttp's own
HTTP errors, chunkstore errors and anything unexpected into this shape. Nothing the client sends
can produce a stack trace in a response.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

__all__ = ["ApiError", "error_body", "error_response"]


class ApiError(Exception):
    """An error to answer with: HTTP status, OpenAI error type and a stable code."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param


def error_body(
    message: str, type: str, code: str | None, param: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def error_response(exc: ApiError, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=exc.status,
        body=orjson.dumps(error_body(exc.message, exc.type, exc.code, exc.param)),
        content_type="application/json",
        headers=headers,
    )
