"""A scriptable OpenAI-compatible upstream for end-to-end tests of the edge.

A real aiohttp server on loopback that streams the way OpenAI-compatible providers do and
records every request it receives. The behaviour is chosen per request by the ``model`` name,
so one server instance serves every test:

==================  =========================================================================
``tokens-N``        N content deltas ``"tok0 "``, ``"tok1 "``... (non-streaming: joined text)
``slow-N-MS``       like ``tokens-N`` with MS milliseconds between tokens
``drop-N``          N tokens, then the connection is cut: no finish chunk, no ``[DONE]``
``tools``           a ``get_weather`` tool call streamed in argument fragments
``error-STATUS``    that HTTP status with an OpenAI-shaped error body, never a stream
``echo``            the JSON of the received ``messages`` streamed back as the answer text
anything else       like ``tokens-5``
==================  =========================================================================

Streams start with a role chunk, end with a finish chunk, a usage chunk when
``stream_options.include_usage`` is set, and ``data: [DONE]``.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

if TYPE_CHECKING:
    from aiohttp.test_utils import TestClient

__all__ = [
    "TOOL_ARGUMENT_FRAGMENTS",
    "TOOL_CALL_ID",
    "FakeUpstream",
    "MakeEdge",
    "RecordedRequest",
]

# The type of the ``make_edge`` fixture (tests/edge/conftest.py): test modules import it from
# here, because importing from ``conftest`` breaks when another test directory's conftest is
# imported first under the same module name.
MakeEdge = Callable[..., Awaitable["TestClient[Any, Any]"]]

FAKE_MODEL = "fake"
TOOL_CALL_ID = "call_fake_0001"
TOOL_NAME = "get_weather"
TOOL_ARGUMENT_FRAGMENTS = ('{"', "location", '":"', "Paris", ", FR", '","unit":"', "celsius", '"}')
_ECHO_TOKEN_CHARS = 16

_TOKENS = re.compile(r"tokens-(\d+)")
_SLOW = re.compile(r"slow-(\d+)-(\d+)")
_DROP = re.compile(r"drop-(\d+)")
_ERROR = re.compile(r"error-(\d{3})")


@dataclass
class RecordedRequest:
    """One request as the upstream received it."""

    method: str
    path: str
    headers: dict[str, str]
    json: Any


def token_texts(count: int) -> list[str]:
    return [f"tok{i} " for i in range(count)]


class FakeUpstream:
    """Start with :meth:`start` (returns the ``/v1`` base URL), stop with :meth:`close`."""

    def __init__(self) -> None:
        self.requests: list[RecordedRequest] = []
        self.base_url = ""
        self._runner: web.AppRunner | None = None
        self._serial = 0

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.base_url = f"http://127.0.0.1:{port}/v1"
        return self.base_url

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def chat_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path == "/v1/chat/completions"]

    async def _record(self, request: web.Request) -> Any:
        raw = await request.read()
        try:
            body = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            body = None
        self.requests.append(
            RecordedRequest(request.method, request.path, dict(request.headers), body)
        )
        return body

    async def _models(self, request: web.Request) -> web.Response:
        await self._record(request)
        listing = {
            "object": "list",
            "data": [{"id": FAKE_MODEL, "object": "model", "created": 0, "owned_by": "tests"}],
        }
        return web.json_response(listing, dumps=_dumps)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await self._record(request)
        if not isinstance(body, dict):
            return _error(400, "invalid JSON body", "invalid_request_error", "invalid_json")
        model = str(body.get("model") or "")
        stream = body.get("stream") is True
        options = body.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        self._serial += 1
        ctx = _Completion(f"chatcmpl-fake-{self._serial}", model, include_usage)

        if m := _ERROR.fullmatch(model):
            status = int(m.group(1))
            return _error(status, f"fake upstream error {status}", _error_type(status), None)
        if model == "tools":
            return await ctx.tools(request, stream)

        delay = 0.0
        drop = False
        if m := _TOKENS.fullmatch(model):
            tokens = token_texts(int(m.group(1)))
        elif m := _SLOW.fullmatch(model):
            tokens = token_texts(int(m.group(1)))
            delay = int(m.group(2)) / 1000
        elif m := _DROP.fullmatch(model):
            tokens = token_texts(int(m.group(1)))
            drop = True
        elif model == "echo":
            text = orjson.dumps(body.get("messages")).decode()
            tokens = [
                text[i : i + _ECHO_TOKEN_CHARS] for i in range(0, len(text), _ECHO_TOKEN_CHARS)
            ]
        else:
            tokens = token_texts(5)

        if not stream:
            return ctx.completion("".join(tokens))
        return await ctx.stream_text(request, tokens, delay=delay, drop=drop)


class _Completion:
    """Builds one response's chunks, all sharing its id, created time and model."""

    def __init__(self, completion_id: str, model: str, include_usage: bool) -> None:
        self.id = completion_id
        self.model = model
        self.created = int(time.time())
        self.include_usage = include_usage

    def usage(self, completion_tokens: int) -> dict[str, int]:
        return {
            "prompt_tokens": 7,
            "completion_tokens": completion_tokens,
            "total_tokens": 7 + completion_tokens,
        }

    def chunk(self, choices: list[dict[str, Any]], **extra: Any) -> bytes:
        payload = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": "fp_fake",
            "choices": choices,
            **extra,
        }
        return b"data: " + orjson.dumps(payload) + b"\n\n"

    def delta(self, delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        return self.chunk(
            [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]
        )

    def completion(
        self, content: str | None, *, tool_calls: list[Any] | None = None
    ) -> web.Response:
        message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None}
        if tool_calls is not None:
            message["tool_calls"] = tool_calls
        body = {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": "fp_fake",
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": "tool_calls" if tool_calls else "stop",
                }
            ],
            "usage": self.usage(len(TOOL_ARGUMENT_FRAGMENTS) if tool_calls else 5),
        }
        return web.json_response(body, dumps=_dumps)

    async def _open(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        return response

    async def _finish(
        self, response: web.StreamResponse, finish_reason: str, completion_tokens: int
    ) -> None:
        await response.write(self.delta({}, finish_reason))
        if self.include_usage:
            await response.write(self.chunk([], usage=self.usage(completion_tokens)))
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()

    async def stream_text(
        self, request: web.Request, tokens: list[str], *, delay: float, drop: bool
    ) -> web.StreamResponse:
        response = await self._open(request)
        try:
            await response.write(self.delta({"role": "assistant", "content": ""}))
            for i, token in enumerate(tokens):
                if i and delay:
                    await asyncio.sleep(delay)
                await response.write(self.delta({"content": token}))
            if drop:
                # Give the tokens a moment to leave the socket, then cut it the way a crashed
                # provider or a reset proxy would: no finish chunk, no terminating chunk.
                await asyncio.sleep(0.05)
                if request.transport is not None:
                    request.transport.abort()
                return response
            await self._finish(response, "stop", len(tokens))
        except ConnectionResetError:
            pass
        return response

    async def tools(self, request: web.Request, stream: bool) -> web.StreamResponse:
        if not stream:
            call = {
                "id": TOOL_CALL_ID,
                "type": "function",
                "function": {"name": TOOL_NAME, "arguments": "".join(TOOL_ARGUMENT_FRAGMENTS)},
            }
            return self.completion(None, tool_calls=[call])
        response = await self._open(request)
        try:
            await response.write(
                self.delta({"role": "assistant", "content": None, "refusal": None})
            )
            first = {
                "index": 0,
                "id": TOOL_CALL_ID,
                "type": "function",
                "function": {"name": TOOL_NAME, "arguments": ""},
            }
            await response.write(self.delta({"tool_calls": [first]}))
            for fragment in TOOL_ARGUMENT_FRAGMENTS:
                await response.write(
                    self.delta({"tool_calls": [{"index": 0, "function": {"arguments": fragment}}]})
                )
            await self._finish(response, "tool_calls", len(TOOL_ARGUMENT_FRAGMENTS))
        except ConnectionResetError:
            pass
        return response


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def _error_type(status: int) -> str:
    if status == 429:
        return "rate_limit_exceeded"
    if status in (401, 403):
        return "authentication_error"
    if status >= 500:
        return "server_error"
    return "invalid_request_error"


def _error(status: int, message: str, error_type: str, code: str | None) -> web.Response:
    body = {"error": {"message": message, "type": error_type, "param": None, "code": code}}
    return web.json_response(body, status=status, dumps=_dumps)
