"""The application factory: ``create_app(config) -> web.Application``.

Resources live in ``cleanup_ctx`` so they are opened in order and closed in reverse, even when
start-up fails half-way: the store (only when ``PERSIST_TRANSCRIPTS`` is on: otherwise nothing
may touch the disk), the built-in demo upstream (when no ``UPSTREAM_BASE_URL``), one shared
upstream ``ClientSession`` (and the probe ``/healthz`` uses to tell whether the upstream is
reachable), and the retention sweeper. On shutdown, replies still streaming are sealed as
``error`` with their partial text before the store closes.

The outermost middleware logs one ``access`` event per request (``edge.logs``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import orjson
from aiohttp import web

from chunkstore import AsyncStore, ChunkstoreError, redact_url
from edge.config import EdgeConfig
from edge.demo import start_demo_upstream
from edge.history import add_history_routes
from edge.keys import CONFIG, METRICS, PENDING_REPLIES, STORE, UPSTREAM_SESSION, UPSTREAM_URL
from edge.logs import elapsed_ms, log_access, log_event
from edge.metrics import CONTENT_TYPE_LATEST, Metrics
from edge.middlewares import middlewares, set_session_cookie
from edge.openapi import openapi_document
from edge.page import add_page_routes
from edge.persist import PendingReplies
from edge.relay import chat_completions
from edge.resume import cancel_ctx, cut_background_replies
from edge.upstream import relay_other

__all__ = ["create_app"]

log = logging.getLogger("edge")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# How long shutdown waits for cancelled streams to seal their partial replies.
_SHUTDOWN_GRACE_S = 10.0
# /healthz's upstream probe: how long one may take, and how long its answer is reused (so a
# monitor polling /healthz does not become load on the upstream).
UPSTREAM_PROBE_TIMEOUT_S = 2.0
UPSTREAM_PROBE_TTL_S = 5.0


class UpstreamProbe:
    """Whether the upstream answers HTTP: a ``GET <UPSTREAM_BASE_URL>/models`` without
    ``UPSTREAM_API_KEY`` (no billing, no key in flight), bounded by
    ``UPSTREAM_PROBE_TIMEOUT_S``. Any HTTP status counts (a 401 is an upstream that answers); a
    refused connection, a DNS or TLS failure or a timeout does not. The answer is cached for
    ``UPSTREAM_PROBE_TTL_S``, and concurrent callers share one probe."""

    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session = session
        self.url = url
        self.reachable: bool | None = None  # None: never probed
        self._checked_at = float("-inf")
        self._task: asyncio.Task[bool] | None = None

    async def check(self) -> bool:
        loop = asyncio.get_running_loop()
        if self.reachable is not None and loop.time() - self._checked_at < UPSTREAM_PROBE_TTL_S:
            return self.reachable
        if self._task is None:
            self._task = loop.create_task(self._probe())
        # Shielded: a /healthz client that leaves does not cancel the probe the others await.
        return await asyncio.shield(self._task)

    async def _probe(self) -> bool:
        timeout = aiohttp.ClientTimeout(total=UPSTREAM_PROBE_TIMEOUT_S)
        try:
            async with self.session.get(
                f"{self.url}/models", timeout=timeout, allow_redirects=False
            ):
                reachable = True
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError):
            reachable = False
        finally:
            self._task = None
        if self.reachable is not False and not reachable:
            log.warning("the upstream %s is unreachable", redact_url(self.url))
        elif self.reachable is False and reachable:
            log.info("the upstream %s is reachable again", redact_url(self.url))
        self.reachable = reachable
        self._checked_at = asyncio.get_running_loop().time()
        return reachable

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


UPSTREAM_PROBE = web.AppKey("upstream_probe", UpstreamProbe)


@web.middleware
async def access_log_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Outermost: one ``access`` event per request, with the status the client got and the
    time until the handler returned (a stream's whole length). The path only: never the
    query string."""
    start = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    except asyncio.CancelledError:
        status = 499  # cancelled before it answered (shutdown); nginx's "client closed request"
        raise
    finally:
        log_access(request.method, request.path, status, elapsed_ms(start))


def create_app(config: EdgeConfig) -> web.Application:
    app = web.Application(
        middlewares=[access_log_middleware, *middlewares()],
        # aiohttp enforces this while reading, with or without Content-Length: 413 past it.
        client_max_size=config.max_request_bytes,
    )
    app[CONFIG] = config
    app[METRICS] = Metrics.create()
    pending = app[PENDING_REPLIES] = PendingReplies()
    app[METRICS].pending_replies.set_function(pending.__len__)
    app.on_response_prepare.append(set_session_cookie)
    app.cleanup_ctx.append(cancel_ctx)  # live replies (resume, cancel) and cross-instance cancels
    app.on_shutdown.append(cut_background_replies)
    app.cleanup_ctx.append(_store_ctx)
    app.cleanup_ctx.append(_upstream_ctx)
    app.cleanup_ctx.append(_retention_ctx)

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/openapi.json", openapi)
    app.router.add_post("/v1/chat/completions", chat_completions)
    add_history_routes(app)
    add_page_routes(app)  # the chat page: GET / and /static/{path}
    # Every other /v1 path goes upstream, except those the edge owns: another method on
    # /v1/chat/completions is a 405 (not a GET relayed with the server's key), and an unknown
    # path under /v1/conversations a 404, whatever the upstream would have said.
    app.router.add_route(
        "*", "/v1/{tail:(?!chat/completions$|conversations(?:/|$)).*}", relay_other
    )
    return app


async def _store_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    if not config.persist_transcripts:
        yield
        return
    store = await AsyncStore.open(
        config.db_url,
        durability=config.durability,
        chunk_tokens=config.chunk_tokens,
        max_conversations_per_user=config.max_conversations_per_session,
        max_messages_per_conversation=config.max_messages_per_conversation,
        # The store's own pool (STORE_THREADS): its threads wait on fsync, so 200 streams'
        # chunk writes and the writes before each upstream call do not queue behind the few
        # threads of asyncio's default executor.
        max_workers=config.store_threads,
        # Chunk writes and seals on a lane of their own (STORE_STREAM_THREADS): the writes
        # before each upstream call never queue behind 200 streams' chunks.
        stream_workers=config.store_stream_threads or None,
    )
    app[STORE] = store
    # Process-wide, so set while the store's threads exist and restored after (tests run many
    # apps in one process).
    previous_switch = sys.getswitchinterval()
    if config.gil_switch_interval_us:
        sys.setswitchinterval(config.gil_switch_interval_us / 1_000_000)
    try:
        yield
    finally:
        sys.setswitchinterval(previous_switch)
        # By now aiohttp has cancelled the handlers still streaming; each sealed its partial
        # reply as an error through its recorder task, and replies that ended may still be
        # sealing (``[DONE]`` does not wait for them). Let those writes land before closing.
        tasks = app[PENDING_REPLIES].tasks()
        if tasks:
            await asyncio.wait(tasks, timeout=_SHUTDOWN_GRACE_S)
        await store.close()


async def _upstream_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    demo: web.AppRunner | None = None
    if config.upstream_base_url is None:
        demo, url = await start_demo_upstream()
        log.info("no UPSTREAM_BASE_URL: using the built-in demo upstream at %s", url)
    else:
        url = config.upstream_base_url
    app[UPSTREAM_URL] = url
    # No total timeout: a stream may legitimately last minutes. Connecting and each read are
    # bounded instead, so a dead upstream cannot hold a request forever.
    timeout = aiohttp.ClientTimeout(
        total=None, sock_connect=10, sock_read=config.upstream_read_timeout_s
    )
    # No connection cap (aiohttp's default is 100): every client stream holds one upstream
    # connection for its whole length, so with a cap the 101st concurrent stream would wait for
    # another stream to *end* before it even starts. The edge mirrors its clients' concurrency;
    # limiting it is the job of whatever admits the clients.
    connector = aiohttp.TCPConnector(limit=0)
    session = aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=True)
    app[UPSTREAM_SESSION] = session
    probe = app[UPSTREAM_PROBE] = UpstreamProbe(session, url)
    try:
        yield
    finally:
        await probe.close()
        await session.close()
        if demo is not None:
            await demo.cleanup()


async def _retention_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    store = app.get(STORE)
    if store is None or config.retention_days is None:
        yield
        return
    task = asyncio.create_task(
        _sweep_forever(store, config.retention_days, config.retention_interval_s)
    )
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _sweep_forever(store: AsyncStore, days: float, interval_s: int) -> None:
    while True:
        try:
            removed = await store.sweep_retention(days=days, dry_run=False)
            log_event("retention_sweep", removed=len(removed), days=days)
        except Exception:  # a failed sweep must not kill the loop; next round retries
            log.exception("retention sweep failed")
        await asyncio.sleep(interval_s)


async def healthz(request: web.Request) -> web.Response:
    """Liveness and readiness: 503 only when the store cannot take a write. An unreachable
    upstream is reported (``checks.upstream_reachable``) but leaves the status 200: the edge
    itself is fine, and restarting it would not bring the upstream back."""
    config = request.app[CONFIG]
    store = request.app.get(STORE)
    checks: dict[str, object] = {
        "persistence": config.persist_transcripts,
        "upstream": "demo" if config.upstream_base_url is None else "configured",
        "upstream_reachable": await request.app[UPSTREAM_PROBE].check(),
    }
    status = 200
    if store is not None:
        # The backend's own probe: a small durable write (a full disk fails it).
        try:
            await store.ping()
            checks["store_writable"] = True
        except (ChunkstoreError, OSError) as exc:
            log.warning("healthz: the store is not writable: %s", exc)
            checks["store_writable"] = False
            status = 503
    body = {"status": "ok" if status == 200 else "degraded", "checks": checks}
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


async def metrics(request: web.Request) -> web.Response:
    body = request.app[METRICS].exposition()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def openapi(request: web.Request) -> web.Response:
    return web.Response(body=orjson.dumps(openapi_document()), content_type="application/json")
