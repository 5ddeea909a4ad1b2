"""The built-in demo upstream.

When no ``UPSTREAM_BASE_URL`` is configured the edge starts this small OpenAI-compatible server
on loopback and relays to it exactly as it would to a real provider, so ``make run`` and a first
try of the API work offline, and the relay path under test is the production one. It answers
deterministically: it quotes the last user message and says that it is the demo.

Only ``POST /v1/chat/completions`` (streaming and not) and ``GET /v1/models`` exist. Streams are
shaped like OpenAI's: a role chunk with empty content, one chunk per word-token, a finish chunk,
an optional usage chunk (``stream_options.include_usage``), then ``data: [DONE]``.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from typing import Any

import orjson
from aiohttp import web

from edge.sse import DONE_EVENT, encode_data

__all__ = ["DEMO_MODEL", "create_demo_app", "demo_reply", "start_demo_upstream"]

DEMO_MODEL = "demo"
DEMO_OWNER = "chunkstore-demo (built-in demo upstream, not a real model)"
_QUOTE_CHARS = 200
_EXPLANATION = (
    "This answer comes from the built-in demo upstream of the edge, not from a language model. "
    "Set UPSTREAM_BASE_URL (and UPSTREAM_API_KEY if needed) to relay to a real "
    "OpenAI-compatible model."
)
# A word with the whitespace before it, the way BPE tokenizers attach the leading space.
_TOKEN = re.compile(r"\s*\S+")

_TOKEN_DELAY: web.AppKey[float] = web.AppKey("demo_token_delay", float)


class _BadRequest(Exception):
    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def demo_reply(messages: list[Any]) -> str:
    """The demo's deterministic answer to ``messages``."""
    said = " ".join(_last_user_text(messages).split())[:_QUOTE_CHARS]
    return f"[demo upstream] You said: {said} — {_EXPLANATION}"


def _last_user_text(messages: list[Any]) -> str:
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return _text_of(message.get("content"))
    return ""


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        # Content parts: only the text ones can be quoted back.
        return " ".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


def _tokenize(text: str) -> list[str]:
    return _TOKEN.findall(text)


def _count_prompt_tokens(messages: list[Any]) -> int:
    # A rough, deterministic stand-in for a tokenizer: words plus a few per message for roles.
    return sum(
        len(_tokenize(_text_of(m.get("content")))) + 3 for m in messages if isinstance(m, dict)
    )


def _error(status: int, message: str, code: str) -> web.Response:
    body = {"error": {"message": message, "type": "invalid_request_error", "code": code}}
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


async def _parse_request(request: web.Request) -> dict[str, Any]:
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError as exc:
        raise _BadRequest(f"The request body is not valid JSON: {exc}", "invalid_json") from exc
    if not isinstance(body, dict):
        raise _BadRequest("The request body must be a JSON object.", "invalid_type")
    messages = body.get("messages")
    if messages is None:
        raise _BadRequest("Missing required parameter: 'messages'.", "missing_required_parameter")
    if not isinstance(messages, list) or not messages:
        raise _BadRequest("'messages' must be a non-empty array.", "invalid_type")
    return body


async def _chat_completions(request: web.Request) -> web.StreamResponse:
    try:
        body = await _parse_request(request)
    except _BadRequest as exc:
        return _error(400, exc.message, exc.code)

    model = body.get("model")
    if not isinstance(model, str) or not model:
        model = DEMO_MODEL
    messages: list[Any] = body["messages"]
    tokens = _tokenize(demo_reply(messages))
    prompt_tokens = _count_prompt_tokens(messages)
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": len(tokens),
        "total_tokens": prompt_tokens + len(tokens),
    }
    completion_id = f"chatcmpl-demo-{uuid.uuid4().hex}"
    created = int(time.time())

    if body.get("stream") is not True:
        completion = {
            "id": completion_id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "".join(tokens), "refusal": None},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": usage,
        }
        return web.Response(body=orjson.dumps(completion), content_type="application/json")

    stream_options = body.get("stream_options")
    include_usage = isinstance(stream_options, dict) and stream_options.get("include_usage") is True

    def chunk(choices: list[dict[str, Any]], **extra: Any) -> bytes:
        payload = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": choices,
            **extra,
        }
        return encode_data(orjson.dumps(payload))

    def choice(delta: dict[str, Any], finish_reason: str | None = None) -> list[dict[str, Any]]:
        return [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]

    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    delay = request.app[_TOKEN_DELAY]
    try:
        await response.prepare(request)
        await response.write(chunk(choice({"role": "assistant", "content": ""})))
        for i, token in enumerate(tokens):
            if i and delay > 0:
                await asyncio.sleep(delay)
            await response.write(chunk(choice({"content": token})))
        await response.write(chunk(choice({}, "stop")))
        if include_usage:
            await response.write(chunk([], usage=usage))
        await response.write(DONE_EVENT)
        await response.write_eof()
    except ConnectionResetError:
        # The client went away mid-stream; there is nobody left to answer.
        pass
    return response


async def _models(request: web.Request) -> web.Response:
    listing = {
        "object": "list",
        "data": [{"id": DEMO_MODEL, "object": "model", "created": 0, "owned_by": DEMO_OWNER}],
    }
    return web.Response(body=orjson.dumps(listing), content_type="application/json")


def create_demo_app(*, token_delay: float = 0.02) -> web.Application:
    """The demo upstream as an application; ``token_delay`` seconds pass between tokens."""
    if token_delay < 0:
        raise ValueError("token_delay must not be negative")
    app = web.Application()
    app[_TOKEN_DELAY] = token_delay
    app.router.add_post("/v1/chat/completions", _chat_completions)
    app.router.add_get("/v1/models", _models)
    return app


async def start_demo_upstream(
    host: str = "127.0.0.1", *, port: int = 0, token_delay: float = 0.02
) -> tuple[web.AppRunner, str]:
    """Start the demo upstream; return its runner (``await runner.cleanup()`` to stop it) and
    its base URL, ``http://<host>:<port>/v1``. Port 0 picks a free ephemeral port."""
    runner = web.AppRunner(create_demo_app(token_delay=token_delay), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_port = runner.addresses[0][1]
    except BaseException:
        await runner.cleanup()
        raise
    url_host = f"[{host}]" if ":" in host else host
    return runner, f"http://{url_host}:{bound_port}/v1"
