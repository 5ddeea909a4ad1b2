"""Talking to the upstream: which headers cross, where requests go, how its errors come back.

The edge strips everything of its own before forwarding (``X-Conversation-ID``,
``x-session-id``, ``X-Agent-ID``, its session cookie) and hop-by-hop headers. With
``UPSTREAM_API_KEY`` set the client's ``Authorization`` is replaced; with ``EDGE_API_KEYS`` set
the client's key is for the edge only and never forwarded.

Requests never leave ``UPSTREAM_BASE_URL``'s path, since they may carry the server's key:
the path after ``/v1/`` is taken segment by segment from the *decoded* request path, dot and
empty segments are refused (``%2e%2e`` decodes to ``..``), and each segment is percent-encoded
again, ``?`` and ``#`` included, so it can neither climb out of the base path nor start a query.
The URL is handed to aiohttp already encoded, so nothing normalizes it on the way out.

Whatever the upstream sends is bounded: an error body or a non-streamed body is read up to a
limit (past it: 502), and a silent upstream is cut after ``UPSTREAM_READ_TIMEOUT_S`` (504).
"""

from __future__ import annotations

from collections.abc import Mapping
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from chunkstore import redact_url
from edge.config import EdgeConfig
from edge.errors import ApiError, error_body
from edge.keys import CONFIG, UPSTREAM_SESSION, UPSTREAM_URL
from edge.middlewares import SESSION_COOKIE

__all__ = [
    "UpstreamFailure",
    "UpstreamInvalid",
    "UpstreamTimeout",
    "UpstreamTooLarge",
    "UpstreamUnreachable",
    "forward_headers",
    "read_bounded",
    "relay_other",
    "response_headers",
    "upstream_error_response",
    "upstream_url",
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
# RFC 3986 pchar, less "%": what a path segment may hold unencoded. Everything else, "?", "#"
# and "/" included, is percent-encoded.
_SEGMENT_SAFE = "-._~!$&'()*+,;=:@"


class UpstreamFailure(ApiError):
    """The upstream did not give a usable answer (before anything was sent to the client)."""

    def __init__(self, status: int, message: str, code: str) -> None:
        super().__init__(status, redact_url(message), type="upstream_error", code=code)


class UpstreamUnreachable(UpstreamFailure):
    def __init__(self, detail: str) -> None:
        super().__init__(
            502, f"The upstream API could not be reached: {detail}", "upstream_unreachable"
        )


class UpstreamTimeout(UpstreamFailure):
    def __init__(self, seconds: int) -> None:
        super().__init__(
            504,
            f"The upstream API sent nothing for {seconds} s (UPSTREAM_READ_TIMEOUT_S).",
            "upstream_timeout",
        )


class UpstreamTooLarge(UpstreamFailure):
    def __init__(self, limit: int) -> None:
        super().__init__(
            502,
            f"The upstream API's answer is larger than {limit} bytes (UPSTREAM_MAX_BODY_BYTES).",
            "upstream_response_too_large",
        )


class UpstreamInvalid(UpstreamFailure):
    def __init__(self, detail: str) -> None:
        super().__init__(
            502, f"The upstream API's answer is not usable: {detail}", "upstream_invalid_response"
        )


def connection_failure(exc: BaseException, read_timeout_s: int) -> UpstreamFailure:
    """The error to answer with for an exception raised while talking to the upstream."""
    if isinstance(exc, TimeoutError):  # aiohttp's ServerTimeoutError is one too
        return UpstreamTimeout(read_timeout_s)
    return UpstreamUnreachable(str(exc) or type(exc).__name__)


async def read_bounded(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """The whole body, however many pieces it arrives in; ``UpstreamTooLarge`` past ``limit``
    (checked before the body is read whole, so a huge body is never held in memory)."""
    if resp.content_length is not None and resp.content_length > limit:
        raise UpstreamTooLarge(limit)
    parts: list[bytes] = []
    size = 0
    async for block in resp.content.iter_any():
        size += len(block)
        if size > limit:
            raise UpstreamTooLarge(limit)
        parts.append(block)
    return b"".join(parts)


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
    """The upstream's error, with its status, as an OpenAI-shaped body.

    The body is read whole (an error may arrive in several writes), up to 1 MiB; anything else
    (not JSON, too large, not OpenAI-shaped) becomes a generic error with the same status.
    """
    body: Any
    try:
        body = orjson.loads(await read_bounded(resp, _MAX_ERROR_BODY))
    except (orjson.JSONDecodeError, UpstreamTooLarge):
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


def upstream_url(base_url: str, tail: str, query_string: str = "") -> URL:
    """The upstream URL for ``tail`` (the decoded path after ``/v1/``), confined to the base.

    400 for a path that could leave it: a ``.`` or ``..`` segment, or an empty one (``//``).
    The result is already encoded: pass it to aiohttp as is, which then sends it unchanged.
    """
    segments = tail.split("/")
    if any(segment in ("", ".", "..") for segment in segments):
        raise ApiError(
            400,
            "Invalid path: no empty, '.' or '..' segments after /v1/.",
            code="invalid_path",
        )
    path = "/".join(quote(segment, safe=_SEGMENT_SAFE) for segment in segments)
    # ``tail`` came from a decoded path, so it holds no "%XX" of its own: quote() encoded them.
    raw = f"{base_url}/{path}"
    if query_string:
        raw += "?" + query_string
    url = URL(raw, encoded=True)
    base_path = URL(base_url, encoded=True).raw_path.rstrip("/") + "/"
    if not url.raw_path.startswith(base_path):  # unreachable by construction; kept as a guard
        raise ApiError(400, "Invalid path.", code="invalid_path")
    return url


async def relay_other(request: web.Request) -> web.StreamResponse:
    """Any ``/v1/*`` path the edge does not own goes upstream unchanged, streamed both ways
    (paths the edge owns are excluded by the route's pattern: see ``app.py``)."""
    config = request.app[CONFIG]
    url = upstream_url(
        request.app[UPSTREAM_URL], request.match_info["tail"], request.rel_url.raw_query_string
    )
    body = await request.read()
    try:
        resp = await request.app[UPSTREAM_SESSION].request(
            request.method,
            url,
            headers=forward_headers(request.headers, config),
            data=body or None,
        )
    except (aiohttp.ClientConnectionError, TimeoutError) as exc:
        raise connection_failure(exc, config.upstream_read_timeout_s) from None
    async with resp:
        if resp.status < 200:
            # An upgrade (101) or another interim answer: the edge relays HTTP requests only,
            # and the client never asked for it (Upgrade is a hop-by-hop header, not forwarded).
            raise UpstreamInvalid(f"HTTP {resp.status} is not relayed")
        out = web.StreamResponse(status=resp.status, headers=response_headers(resp.headers))
        try:
            async for block in resp.content.iter_any():
                if not out.prepared:
                    await out.prepare(request)
                await out.write(block)
        except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, TimeoutError) as exc:
            if not out.prepared:
                raise connection_failure(exc, config.upstream_read_timeout_s) from None
            # Headers are gone already: all that can be done is to cut the response short.
            if request.transport is not None:
                request.transport.close()
            return out
        if not out.prepared:
            await out.prepare(request)
        await out.write_eof()
        return out
