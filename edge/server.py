"""The edge's connection-level HTTP server: aiohttp's, plus read deadlines and JSON errors.

``python -m edge`` serves the app with :func:`run_app` (in place of ``aiohttp.web.run_app``),
which differs from aiohttp's in three ways:

* **Header deadline** (``CLIENT_HEADER_TIMEOUT_S``): a connection that has not sent a complete
  request head within that many seconds, counted from the accept and again from the end of each
  response, is closed. This is aiohttp's own ``keepalive_timeout``: the request handler arms it in
  ``connection_made`` and after every response, it is not pushed back by incoming bytes (so a
  head sent one byte at a time is cut all the same), and when it fires the connection is closed
  if it is still waiting for a message, whether it has sent nothing or half a head. A connection
  whose request is being handled (a long stream) is not waiting, so it is never cut by it.
* **Idle cap** (``MAX_IDLE_CONNECTIONS``, default half the open-file limit): at most that many
  connections may wait for a request head at once; past it the *oldest* waiting connection is
  closed. A flood of silent connections therefore cannot use up the process's descriptors
  (asyncio stops accepting for a second each time ``accept`` fails with ``EMFILE``), so a new
  client is always accepted and served.
* **Errors are JSON**: what aiohttp's parser rejects (a bad request line or method, an
  over-long header, too many headers, invalid characters) and an unknown ``Expect`` are
  answered with the edge's ``{"error": {...}}`` shape instead of aiohttp's ``text/plain`` page
  that quotes the input.

The body deadline (``CLIENT_BODY_TIMEOUT_S``) is a middleware (``edge.middlewares``), as the
body is read by handlers, not by the connection.

aiohttp has no public hook for the request-handler class or for "a connection is waiting", so
three small subclasses do it: :class:`EdgeRequestHandler` (the error page; tells the server when
a response is done), :class:`EdgeServer` (creates those handlers; keeps the waiting connections
in accept order and closes the oldest past the cap) and :class:`EdgeAppRunner` (builds an
``EdgeServer`` where ``web.AppRunner`` builds a ``web.Server``). They override only public
methods (``handle_error``, ``finish_response``, ``connection_made``/``connection_lost``,
``__call__``), wrap the server's public ``request_factory`` (called when a request head is
complete), and override the runner's ``_make_server``, the method ``AppRunner`` and
``ServerRunner`` themselves override to pick their server. No private attribute is read.
"""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import socket
from collections.abc import Callable
from contextlib import suppress
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http_exceptions import LineTooLong
from aiohttp.http_parser import RawRequestMessage
from aiohttp.streams import StreamReader

from edge.errors import ApiError, error_response

__all__ = [
    "EdgeAppRunner",
    "EdgeRequestHandler",
    "EdgeServer",
    "ListenError",
    "StartupError",
    "default_max_idle_connections",
    "run_app",
]

log = logging.getLogger("edge")

# An over-cap close is logged at most this often (a flood would otherwise log one line each).
_EVICTION_LOG_INTERVAL_S = 60.0


class ListenError(Exception):
    """The server could not listen on its address; ``str()`` is one line for the operator."""

    def __init__(self, host: str, port: int, error: OSError) -> None:
        self.host = host
        self.port = port
        self.error = error
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        super().__init__(f"cannot listen on {address}: {_os_reason(error)}")


class StartupError(Exception):
    """The app's start-up (its ``on_startup`` and ``cleanup_ctx``) failed; ``__cause__`` is why."""


def _os_reason(error: OSError) -> str:
    """What the OS said, in lower case, without the address asyncio puts in its messages."""
    if isinstance(error, socket.gaierror):
        return f"cannot resolve the host ({(error.strerror or str(error)).lower()})"
    if error.errno:
        return os.strerror(error.errno).lower()
    return str(error) or type(error).__name__


def default_max_idle_connections() -> int | None:
    """Half the process's open-file limit (``RLIMIT_NOFILE``, soft); None when it is unlimited."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return None
    return max(1, soft // 2)


# --- the request handler (one per connection) ----------------------------------------------------


def _error_for(status: int, exc: BaseException | None) -> ApiError:
    """The answer to an error aiohttp handles itself; never quotes the client's input."""
    if isinstance(exc, LineTooLong):
        # aiohttp says 400 for every parser error; a line over its limit is an oversized header
        # field (or request line), which HTTP names 431.
        return ApiError(
            431,
            "The request line or a header field is too long.",
            code="request_header_too_large",
        )
    if status == 400:
        return ApiError(400, "Malformed HTTP request.", code="invalid_http_request")
    if status == 500:
        return ApiError(500, "Internal server error.", type="server_error", code="internal_error")
    if status == 504:
        return ApiError(504, "The request timed out.", type="server_error", code="timeout")
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Request failed"
    kind = "server_error" if status >= 500 else "invalid_request_error"
    return ApiError(status, f"{phrase}.", type=kind)


class EdgeRequestHandler(web.RequestHandler):
    """aiohttp's request handler with the edge's JSON error page, reporting idle transitions.

    aiohttp builds its own error responses (not the app's middlewares) for what its parser
    rejects, for an exception that escapes the app, and for a handler timeout: ``handle_error``
    is the hook for them. An ``HTTPException`` raised before the middlewares (a bad ``Expect``
    header) reaches ``finish_response`` as the response itself: it is replaced there.
    """

    __slots__ = ("_edge_server",)

    def __init__(self, manager: EdgeServer, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._edge_server = manager

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        # ``message`` is aiohttp's, and for parser errors it quotes the client's bytes: unused.
        if status >= 500:
            self.log_exception("Error handling request from %s", request.remote, exc_info=exc)
        else:
            # Bad input, common on the open internet: no traceback, and only at debug level.
            self.logger.debug(
                "rejected a malformed request from %s: %s", request.remote, type(exc).__name__
            )
        if request.writer.output_size > 0:
            # As aiohttp: a response has started, so there is no way to send another one.
            raise ConnectionError("Response is sent already, cannot send an error response")
        response = error_response(_error_for(status, exc))
        # The parser's state is unknown after an error: the connection ends with this response.
        response.force_close()
        return response

    async def finish_response(
        self, request: web.BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> tuple[web.StreamResponse, bool]:
        if isinstance(resp, web.HTTPException) and resp.status >= 400:
            # An HTTP error raised before the app's middlewares could shape it: aiohttp's
            # handling of ``Expect`` (a 417 whose text/plain body quotes the header).
            resp = error_response(_error_for(resp.status, None))
        resp, reset = await super().finish_response(request, resp, start_time)
        if not reset and resp.keep_alive and self.transport is not None:
            # The response is out and the connection stays open: it now waits for the next
            # request head (aiohttp re-arms the header deadline at the same point).
            self._edge_server.waiting(self)
        return resp, reset


# --- the server (the protocol factory; tracks connections) ---------------------------------------


class EdgeServer(web.Server):
    """``web.Server`` that creates :class:`EdgeRequestHandler` and caps waiting connections.

    A connection *waits* from its accept until its first request head is complete, and again
    from the end of each response until the next head. Waiting connections are kept in the
    order they started waiting; when there are more than ``max_waiting``, the oldest is closed.
    """

    def __init__(
        self,
        handler: Callable[..., Any],
        *,
        request_factory: Callable[..., web.BaseRequest],
        max_waiting: int | None,
        handler_cancellation: bool = False,
        **handler_options: Any,
    ) -> None:
        super().__init__(
            handler,
            request_factory=request_factory,
            handler_cancellation=handler_cancellation,
            **handler_options,
        )
        self.max_waiting = max_waiting
        self.closed_over_cap = 0
        # The RequestHandler keyword arguments (keepalive_timeout, ...); Server keeps them too,
        # but privately.
        self._handler_options = handler_options
        self._event_loop = asyncio.get_running_loop()
        # dict: insertion-ordered, O(1) to move a connection to the end or drop it.
        self._waiting: dict[web.RequestHandler, None] = {}
        self._next_eviction_log = 0.0
        self._evicted_since_log = 0
        make_request = self.request_factory

        def request_started(
            message: RawRequestMessage,
            payload: StreamReader,
            protocol: web.RequestHandler,
            writer: AbstractStreamWriter,
            task: asyncio.Task[None],
        ) -> web.BaseRequest:
            # aiohttp builds the request object when a complete head is taken off the
            # connection's queue: from here until the response is done it is not waiting.
            self._waiting.pop(protocol, None)
            return make_request(message, payload, protocol, writer, task)

        self.request_factory = request_started

    async def shutdown(self, timeout: float | None = None) -> None:
        """Give the requests in flight ``timeout`` seconds in all, then close their connections.

        aiohttp waits ``timeout`` for them to end, then as long again for the handlers it
        cancels, and a handler that is relaying a stream is not interrupted by that
        cancellation: a long stream got twice the grace. Closing the connection ends it (its
        next write fails, and the reply is stored as an error with its partial text).
        """
        graceful = asyncio.ensure_future(super().shutdown(timeout))
        if timeout is not None:
            done, _ = await asyncio.wait({graceful}, timeout=timeout)
            if not done:
                for handler in self.connections:
                    handler.force_close()
        await graceful

    @property
    def waiting_count(self) -> int:
        """Connections waiting for a request head now."""
        return len(self._waiting)

    def __call__(self) -> web.RequestHandler:
        return EdgeRequestHandler(self, loop=self._event_loop, **self._handler_options)

    def connection_made(self, handler: web.RequestHandler, transport: asyncio.Transport) -> None:
        super().connection_made(handler, transport)
        self.waiting(handler)

    def connection_lost(
        self, handler: web.RequestHandler, exc: BaseException | None = None
    ) -> None:
        super().connection_lost(handler, exc)
        self._waiting.pop(handler, None)

    def waiting(self, handler: web.RequestHandler) -> None:
        """``handler`` now waits for a request head; past the cap, close the oldest waiting."""
        self._waiting.pop(handler, None)
        self._waiting[handler] = None
        if self.max_waiting is None:
            return
        while len(self._waiting) > self.max_waiting:
            oldest = next(iter(self._waiting))
            del self._waiting[oldest]
            # The same close as the header deadline's: the handler task, idle on its next
            # message, is cancelled and the socket closed, freeing its descriptor now.
            oldest.force_close()
            self._log_eviction()

    def _log_eviction(self) -> None:
        self.closed_over_cap += 1
        self._evicted_since_log += 1
        now = self._event_loop.time()
        if now >= self._next_eviction_log:
            log.warning(
                "more than %d client connections waiting for a request: closed the oldest "
                "(%d since the last report, %d in all; MAX_IDLE_CONNECTIONS)",
                self.max_waiting,
                self._evicted_since_log,
                self.closed_over_cap,
            )
            self._evicted_since_log = 0
            self._next_eviction_log = now + _EVICTION_LOG_INTERVAL_S


# --- the runner ----------------------------------------------------------------------------------


class EdgeAppRunner(web.AppRunner):
    """``web.AppRunner`` serving its app through an :class:`EdgeServer`.

    ``header_timeout_s`` becomes aiohttp's ``keepalive_timeout`` (see the module docstring);
    ``max_waiting`` is the idle cap. Other keyword arguments are ``AppRunner``'s.
    """

    def __init__(
        self,
        app: web.Application,
        *,
        header_timeout_s: float,
        max_waiting: int | None,
        **kwargs: Any,
    ) -> None:
        super().__init__(app, keepalive_timeout=header_timeout_s, **kwargs)
        self._header_timeout_s = header_timeout_s
        self._max_waiting = max_waiting

    async def _make_server(self) -> web.Server:
        # AppRunner's own: runs the app's start-up, then builds a plain web.Server from the
        # app's request handler and factory. Those two are all the server takes from the app, so
        # the EdgeServer is built from them (the plain server holds nothing else: no sockets).
        plain = await super()._make_server()
        return EdgeServer(
            plain.request_handler,
            request_factory=plain.request_factory,
            max_waiting=self._max_waiting,
            handler_cancellation=plain.handler_cancellation,
            keepalive_timeout=self._header_timeout_s,
        )


# --- run it --------------------------------------------------------------------------------------


def run_app(
    app: web.Application,
    *,
    host: str,
    port: int,
    header_timeout_s: float,
    max_idle_connections: int | None,
    shutdown_timeout: float,
    print: Callable[[str], None] | None = None,
) -> None:
    """Serve ``app`` on ``host:port`` until SIGINT or SIGTERM, as ``aiohttp.web.run_app`` does.

    The same life cycle: the app starts (``on_startup``, ``cleanup_ctx``), the site listens,
    ``print`` gets aiohttp's "Running on <url>" message; on a signal the site stops, idle
    connections close, requests in flight get ``shutdown_timeout`` seconds to finish before
    they are cancelled, and the app is cleaned up. ``max_idle_connections`` None means
    :func:`default_max_idle_connections`.

    Raises :class:`StartupError` (from the app's start-up error) or :class:`ListenError`.
    """
    if max_idle_connections is None:
        max_idle_connections = default_max_idle_connections()
    loop = asyncio.new_event_loop()
    main_task = loop.create_task(
        _serve(
            app,
            host=host,
            port=port,
            header_timeout_s=header_timeout_s,
            max_idle_connections=max_idle_connections,
            shutdown_timeout=shutdown_timeout,
            print=print,
        )
    )
    try:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(main_task)
    except (web.GracefulExit, KeyboardInterrupt):
        pass
    finally:
        try:
            # On a signal the main task is still running: cancelling it runs its clean-up
            # (the graceful shutdown). After a start-up failure it is already done.
            if not main_task.done():
                main_task.cancel()
                with suppress(asyncio.CancelledError):
                    loop.run_until_complete(main_task)
        finally:
            _cancel_tasks(loop)
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
            asyncio.set_event_loop(None)


async def _serve(
    app: web.Application,
    *,
    host: str,
    port: int,
    header_timeout_s: float,
    max_idle_connections: int | None,
    shutdown_timeout: float,
    print: Callable[[str], None] | None,
) -> None:
    # A taken port or a host that does not resolve should fail before the app opens its store
    # and starts its upstream: bind (without listening) as the site will, then let go. The
    # site's own bind below still reports a port taken in between.
    try:
        probe = await asyncio.get_running_loop().create_server(
            asyncio.Protocol, host, port, start_serving=False
        )
    except OSError as exc:
        raise ListenError(host, port, exc) from exc
    probe.close()
    await probe.wait_closed()

    runner = EdgeAppRunner(
        app,
        header_timeout_s=header_timeout_s,
        max_waiting=max_idle_connections,
        handle_signals=True,
        shutdown_timeout=shutdown_timeout,
    )
    try:
        await runner.setup()
    except BaseException as exc:
        # aiohttp's run_app leaves the contexts that did start open; close them.
        try:
            await runner.cleanup()
        except Exception as cleanup_exc:
            log.warning("clean-up after the failed start-up failed too: %r", cleanup_exc)
        if isinstance(exc, Exception):
            raise StartupError(str(exc)) from exc
        raise
    try:
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except OSError as exc:
            raise ListenError(host, port, exc) from exc
        if print is not None:
            print(f"======== Running on {site.name} ========\n(Press CTRL+C to quit)")
        while True:
            await asyncio.sleep(3600)
    finally:
        await runner.cleanup()


def _cancel_tasks(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel what is left on the loop and let it finish (as ``asyncio.run`` does)."""
    tasks = asyncio.all_tasks(loop)
    if not tasks:
        return
    for task in tasks:
        task.cancel()
    loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            loop.call_exception_handler(
                {
                    "message": "unhandled exception during shutdown",
                    "exception": task.exception(),
                    "task": task,
                }
            )
