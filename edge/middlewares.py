"""Middlewares, outermost first: metrics → errors → auth → sessions → body deadline.

* **metrics** (outermost, so it sees the status the client gets): counts requests by route
  template and status (never by raw path: ids in paths would explode the label set).
* **errors**: every failure leaves as an OpenAI-shaped JSON error; bad input is a 4xx, and an
  unexpected exception is logged and answered with a bare 500 (no stack trace, no detail).
* **auth**: with ``EDGE_API_KEYS`` set, every request needs ``Authorization: Bearer <key>``
  (the key is compared in constant time) but ``/healthz`` and the chat page: ``GET``/``HEAD``
  of ``/`` and ``/static/{path}`` (``edge.page``). Those are static files shipped in the
  package, the same for everyone, with no data in them; the page asks for the key itself and
  sends it on every API call. Which requests are open is decided by the route they matched,
  not by a prefix of the raw path, so every API route stays protected.
* **sessions**: the principal whose history a request may see: the ``x-session-id`` header,
  else the ``cf_session_id`` cookie, else a new unguessable id, sent back as an HttpOnly,
  SameSite=Lax cookie (by ``on_response_prepare``, so streamed responses carry it too).
* **body deadline**: a request body is read whole before the handler runs, within
  ``CLIENT_BODY_TIMEOUT_S``; a client that has not sent it all by then gets a 408 and the
  connection is closed. ``request.read()`` keeps the body, so the handlers' own ``read()``
  returns it at once. Last in the chain, so a request refused by auth is not read at all.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
import secrets
from collections.abc import Awaitable, Callable
from http.cookies import SimpleCookie

from aiohttp import hdrs, web
from aiohttp.typedefs import Middleware

import chunkstore
from edge.errors import ApiError, conversation_not_found, error_response
from edge.keys import CONFIG, METRICS, SESSION_ID, SESSION_IS_NEW, SESSION_USED

__all__ = [
    "SESSION_COOKIE",
    "SESSION_HEADER",
    "body_deadline_middleware",
    "middlewares",
    "set_session_cookie",
]

log = logging.getLogger("edge")

SESSION_HEADER = "x-session-id"
SESSION_COOKIE = "cf_session_id"
# Printable ASCII without separators that could confuse headers or cookies.
_SESSION_ID = re.compile(r"[A-Za-z0-9._~+/=:@-]{1,256}")
_OPEN_PATHS = frozenset({"/healthz"})
# The chat page's routes (edge.page), by their canonical form: static files, no data.
_PAGE_ROUTES = frozenset({"/", "/static/{path}"})
_COOKIE_MAX_AGE_S = 400 * 24 * 3600  # the longest lifetime browsers honour

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _status_error(exc: web.HTTPException) -> ApiError:
    status = exc.status
    if status == 404:
        return ApiError(404, "Unknown path.", code="not_found")
    if status == 405:
        return ApiError(405, "Method not allowed.", code="method_not_allowed")
    if status == 413:
        return ApiError(413, "Request body too large.", code="request_too_large")
    return ApiError(status, exc.reason or "Request failed.", code=None)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return error_response(_status_error(exc), headers)
    except chunkstore.InvalidId as exc:
        return error_response(ApiError(400, str(exc), code="invalid_id"))
    except chunkstore.ConversationNotFound:
        return error_response(conversation_not_found())
    except chunkstore.LimitExceeded as exc:
        return error_response(ApiError(422, str(exc), code="limit_exceeded"))
    except chunkstore.ConversationDeleted as exc:
        return error_response(ApiError(422, str(exc), code="conversation_deleted"))
    except chunkstore.InvalidArgument as exc:
        return error_response(ApiError(400, str(exc), code="invalid_value"))
    except (chunkstore.StorageError, chunkstore.LockTimeout) as exc:
        log.error("storage failure on %s %s: %s", request.method, request.path, exc)
        return error_response(
            ApiError(503, "Storage is unavailable.", type="server_error", code="storage_error")
        )
    except ConnectionResetError as exc:
        # The client went away mid-response: nobody to answer.
        log.debug("client connection lost: %s", exc)
        raise web.HTTPBadRequest() from None
    except OSError as exc:
        log.error("I/O failure on %s %s: %s", request.method, request.path, exc)
        return error_response(
            ApiError(503, "Storage is unavailable.", type="server_error", code="storage_error")
        )
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(
            ApiError(500, "Internal server error.", type="server_error", code="internal_error")
        )


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    metrics = request.app[METRICS]
    route = request.match_info.route.resource
    name = route.canonical if route is not None else "unmatched"
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        metrics.requests.labels(name, request.method, str(status)).inc()


def _is_open(request: web.Request) -> bool:
    if request.path in _OPEN_PATHS:
        return True
    resource = request.match_info.route.resource
    return (
        request.method in ("GET", "HEAD")
        and resource is not None
        and resource.canonical in _PAGE_ROUTES
    )


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    keys = request.app[CONFIG].edge_api_keys
    if keys and not _is_open(request):
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        given = given.strip()
        if not given.isascii():
            # aiohttp hands undecodable header bytes over as surrogates; a key never has them.
            raise ApiError(
                400,
                "Malformed Authorization header: the key must be ASCII.",
                code="invalid_authorization",
            )
        if scheme.lower() != "bearer" or not any(
            hmac.compare_digest(given.encode(), key.encode()) for key in keys
        ):
            raise ApiError(
                401,
                "Missing or invalid API key for this edge (Authorization: Bearer <key>).",
                code="invalid_api_key",
            )
    return await handler(request)


@web.middleware
async def session_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    # A header that is present but empty is malformed, not absent.
    given = request.headers.get(SESSION_HEADER)
    if given is None:
        given = request.cookies.get(SESSION_COOKIE)
    if given is not None:
        if not _SESSION_ID.fullmatch(given):
            raise ApiError(400, "Malformed session id.", code="invalid_session")
        request[SESSION_ID] = given
        request[SESSION_IS_NEW] = False
    else:
        request[SESSION_ID] = secrets.token_urlsafe(32)
        request[SESSION_IS_NEW] = True
    return await handler(request)


@web.middleware
async def body_deadline_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.body_exists:
        timeout = request.app[CONFIG].client_body_timeout_s
        try:
            async with asyncio.timeout(timeout):
                await request.read()
        except TimeoutError:
            response = error_response(
                ApiError(
                    408,
                    f"The request body was not received within {timeout} s.",
                    code="request_timeout",
                )
            )
            # The rest of the body may still come: this connection cannot carry another request.
            response.force_close()
            return response
        except web.RequestPayloadError:
            # Invalid chunked encoding or compression, or a body cut short by the client.
            response = error_response(ApiError(400, "Malformed request body.", code="invalid_body"))
            response.force_close()
            return response
    return await handler(request)


async def set_session_cookie(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: hand a new session its cookie, whatever the response type.

    aiohttp has already turned ``response.cookies`` into headers when this signal runs, so the
    ``Set-Cookie`` header is added directly. ``X-Session-Created: true`` says the same to
    clients that drop cookies (the OpenAI SDK keeps none between client objects): this request
    started a new session, so a new user, and its conversations are that user's alone.
    """
    if request.get(SESSION_IS_NEW) and request.get(SESSION_USED):
        response.headers["X-Session-Created"] = "true"
        jar: SimpleCookie = SimpleCookie()
        jar[SESSION_COOKIE] = request[SESSION_ID]
        morsel = jar[SESSION_COOKIE]
        morsel["httponly"] = True
        morsel["samesite"] = "Lax"
        morsel["path"] = "/"
        morsel["max-age"] = str(_COOKIE_MAX_AGE_S)
        response.headers.add(hdrs.SET_COOKIE, morsel.OutputString())


def middlewares() -> list[Middleware]:
    return [
        metrics_middleware,
        error_middleware,
        auth_middleware,
        session_middleware,
        body_deadline_middleware,
    ]
