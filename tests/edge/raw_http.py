"""Raw HTTP/1.1 over loopback sockets, for tests of what a normal client cannot send."""

from __future__ import annotations

import asyncio
import contextlib

HANG_GUARD_S = 20.0


class Conn:
    """A raw HTTP/1.1 client connection (``Conn.close_all()`` closes them all)."""

    opened: list[Conn] = []

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        Conn.opened.append(self)

    @classmethod
    async def open(cls, port: int) -> Conn:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def response(self) -> tuple[int, dict[str, str], bytes]:
        """One response: status, headers (lower-case names), body (by Content-Length)."""
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), HANG_GUARD_S)
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        body = await asyncio.wait_for(self.reader.readexactly(length), HANG_GUARD_S)
        return int(status_line.split()[1]), headers, body

    async def closed(self) -> bytes:
        """Wait (bounded) until the server closes the connection; what arrived before."""
        try:
            return await asyncio.wait_for(self.reader.read(), HANG_GUARD_S)
        except ConnectionResetError:
            return b""

    def close(self) -> None:
        self.writer.close()

    @classmethod
    async def close_all(cls) -> None:
        """Close every connection opened so far (a test's teardown, on the test's loop)."""
        while cls.opened:
            writer = cls.opened.pop().writer
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


def get(path: str, *extra: str) -> bytes:
    return ("\r\n".join([f"GET {path} HTTP/1.1", "Host: edge", *extra, "", ""])).encode()


def now() -> float:
    return asyncio.get_running_loop().time()
