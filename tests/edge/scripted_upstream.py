"""A hostile upstream for the edge's tests: a raw HTTP/1.1 server on loopback.

Unlike ``fake_upstream`` (a well-behaved aiohttp app), this server writes whatever bytes a test
scripts: it can fall silent mid-stream, send endless lines, split a body across writes, answer
101 or a body larger than it announced. It records every request exactly as it arrived on the
wire (the raw request target included), so a test can assert what reached the upstream, and
what did not.

Its base URL has a path (``/openai/v1``), like a real deployment behind a prefix: requests that
escape the prefix are then visible as such.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import orjson

__all__ = ["BASE_PATH", "Exchange", "Respond", "ScriptedUpstream", "sse_headers"]

BASE_PATH = "/openai/v1"
_MAX_HEAD = 64 * 1024


@dataclass
class Exchange:
    """One request as it arrived, and the means to answer it."""

    method: str
    target: str  # the raw request target, exactly as sent (percent-encoding kept)
    headers: dict[str, str]
    body: bytes
    writer: asyncio.StreamWriter
    bytes_sent: int = 0
    write_failed: bool = field(default=False)

    def json(self) -> object:
        return orjson.loads(self.body)

    async def send(self, data: bytes) -> bool:
        """Write and drain; False once the edge has gone (the connection is broken)."""
        if self.write_failed:
            return False
        try:
            self.writer.write(data)
            await self.writer.drain()
        except (ConnectionError, OSError):
            self.write_failed = True
            return False
        self.bytes_sent += len(data)
        return True

    async def respond(
        self, status: int, body: bytes, content_type: str = "application/json"
    ) -> None:
        await self.send(
            f"HTTP/1.1 {status} X\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body
        )


Respond = Callable[[Exchange], Awaitable[None]]


def sse_headers() -> bytes:
    """The head of a streamed answer: no length, the body ends when the connection closes."""
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
        b"Cache-Control: no-cache\r\nConnection: close\r\n\r\n"
    )


class ScriptedUpstream:
    """``await start()`` returns the base URL; ``respond`` answers every request."""

    def __init__(self, respond: Respond) -> None:
        self.respond = respond
        self.exchanges: list[Exchange] = []
        self.base_url = ""
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.base_url = f"http://127.0.0.1:{port}{BASE_PATH}"
        return self.base_url

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            if len(head) > _MAX_HEAD:
                return
            lines = head.decode("latin-1").split("\r\n")
            method, target, _version = lines[0].split(" ", 2)
            headers = {}
            for line in lines[1:]:
                if line:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length", "0"))
            body = await reader.readexactly(length) if length else b""
            exchange = Exchange(method, target, headers, body, writer)
            self.exchanges.append(exchange)
            await self.respond(exchange)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(BaseException):
                await writer.wait_closed()
