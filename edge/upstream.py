"""Talking to the upstream: which headers cross, where requests go, how its errors come back.

The edge strips everything of its own before forwarding (``X-Conversation-ID``,
``x-session-id``, ``X-Agent-ID``, its session cookie) and hop-by-hop headers. With
``UPSTREAM_API_KEY`` set the client's ``Authorization`` is replaced; with ``EDGE_API_KEYS`` set
the client's key is for the edge only and never forwarded.
"""

from __future__ import annotations

from collections.abc import Mapping
from http.cookies import SimpleCookie
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from edge.config import EdgeConfig
from edge.errors import ApiError, error_body
from edge.keys import CONFIG, UPSTREAM_SESSION, UPSTREAM_URL
from edge.middlewares import SESSION_COOKIE

__all__ = [
    "UpstreamUnreachable",
    "forward_headers",
    "relay_other",
    "response_headers",
    "upstream_error_response",
]

# RFC 9110 §7.6.1 hop-by-hop headers, plus those aiohttp sets itself for the new request.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        # aiohttp negotiates and decodes compression itself; relaying the client's choice would
        # hand us bytes we would have to pass through undecoded.
        "accept-encoding",
    }
)
_EDGE_HEADERS = frozenset({"x-conversation-id", "x-session-id", "x-agent-id"})
_RESPONSE_DROP = _HOP_BY_HOP | {"content-encoding", "set-cookie"}
_MAX_ERROR_BODY = 1 << 20


class UpstreamUnreachable(ApiError):
    def __init__(self, detail: str) -> None:
        super().__init__(
            502,
            f"The upstream API could not be reached: {detail}",
            type="upstream_error",
            code="upstream_unreachable",
        )


def forward_headers(headers: Mapping[str, str], config: EdgeConfig) -> CIMultiDict[str]:
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in headers.items():
        lower = name.lower()
        if lower in _HOP_BY_HOP or lower in _EDGE_HEADERS:
            continue
        if lower == "authorization" and (config.upstream_api_key or config.edge_api_keys):
            continue
        if lower == "cookie":
            value = _without_session_cookie(value)
            if not value:
                continue
        out.add(name, value)
    if config.upstream_api_key:
        out["Authorization"] = f"Bearer {config.upstream_api_key}"
    return out


def _without_session_cookie(header: str) -> str:
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(header)
    except Exception:  # a malformed cookie header is dropped rather than forwarded
        return ""
    return "; ".join(f"{k}={m.value}" for k, m in jar.items() if k != SESSION_COOKIE)


def response_headers(headers: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    return CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in _RESPONSE_DROP)


async def upstream_error_response(
    resp: aiohttp.ClientResponse, extra_headers: Mapping[str, str] | None = None
) -> web.Response:
    """The upstream's error, with its status, as an OpenAI-shaped body."""
    raw = await resp.content.read(_MAX_ERROR_BODY)
    body: Any
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        body = None
    if not (isinstance(body, dict) and isinstance(body.get("error"), dict)):
        body = error_body(
            f"The upstream API answered HTTP {resp.status}.", "upstream_error", "upstream_error"
        )
    headers = CIMultiDict(extra_headers or {})
    if "retry-after" in resp.headers:
        headers["Retry-After"] = resp.headers["retry-after"]
    return web.Response(
        status=resp.status,
        body=orjson.dumps(body),
        content_type="application/json",
        headers=headers,
    )


def upstream_url(request: web.Request, tail: str) -> str:
    return f"{request.app[UPSTREAM_URL]}/{tail}"


async def relay_other(request: web.Request) -> web.StreamResponse:
    """Any ``/v1/*`` path the edge does not own goes upstream unchanged, streamed both ways."""
    config = request.app[CONFIG]
    body = await request.read()
    url = upstream_url(request, request.match_info["tail"])
    try:
        resp = await request.app[UPSTREAM_SESSION].request(
            request.method,
            url,
            params=request.rel_url.query,
            headers=forward_headers(request.headers, config),
            data=body or None,
        )
    except (aiohttp.ClientConnectionError, TimeoutError) as exc:
        raise UpstreamUnreachable(str(exc) or type(exc).__name__) from None
    async with resp:
        out = web.StreamResponse(status=resp.status, headers=response_headers(resp.headers))
        await out.prepare(request)
        async for block in resp.content.iter_any():
            await out.write(block)
        await out.write_eof()
        return out
