"""OpenAI-shaped errors: every error the edge returns is ``{"error": {message, type, code}}``.

Handlers raise ``ApiError``; the error middleware (``middlewares.py``) turns it, aiohttp's own
HTTP errors, chunkstore errors and anything unexpected into this shape. Nothing the client sends
can produce a stack trace in a response.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

__all__ = [
    "ApiError",
    "conversation_not_found",
    "error_body",
    "error_response",
    "parse_json_object",
]


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


def conversation_not_found() -> ApiError:
    """The one 404 for a missing *or foreign* conversation, so the two cannot be told apart.

    A fresh instance each time: re-raising one shared exception object would chain every
    raise's traceback onto it and keep those frames alive for the life of the server.
    """
    return ApiError(404, "Conversation not found.", code="not_found")


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


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """A request body that must be a JSON object; anything else is a 400 (deep nesting too:
    orjson refuses it rather than recursing)."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ApiError(400, "Request body is not valid JSON.", code="invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, "Request body must be a JSON object.", code="invalid_json")
    return body
