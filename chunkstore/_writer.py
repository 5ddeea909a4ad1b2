"""``MessageWriter``: persists one assistant message while it streams.

Tokens are buffered in memory and written as one chunk file every ``chunk_tokens`` tokens, or
sooner once ``flush_interval`` seconds have passed since the last chunk (checked on ``append``,
and the caller may call ``flush()`` from its own timer). ``finish()``/``fail()`` write the last
record and *seal* the message: all its records go into one ``<id>.json``, written durably
before the chunk files are removed, so a finished message is one file to read. The writer
holds its writer lock from creation to sealing, which is how readers tell ``streaming`` from
``interrupted``.

Memory stays flat however long the stream: only the unwritten tail is held; sealing reads the
written chunks back from the page cache.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from types import TracebackType
from typing import IO, Any

from . import _fsio, _locks, _records
from ._exceptions import InvalidArgument, StorageError, WriterClosed
from ._ids import MessageId
from ._layout import Layout
from ._models import Message
from ._rebuild import rebuild_message

__all__ = ["MessageWriter", "utc_now"]


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


class MessageWriter:
    """Write a streamed message chunk by chunk. Use as a context manager.

    ``append(token)`` adds one token (one streamed delta); an exception inside the ``with``
    block finalizes the message as ``error`` with its partial content.
    """

    def __init__(
        self,
        *,
        layout: Layout,
        message_id: MessageId,
        role: str,
        agent_id: str | None,
        chunk_tokens: int,
        flush_interval: float | None,
        durability: str,
        lock_handle: IO[bytes],
        on_sealed: Callable[[Message], None],
    ) -> None:
        self._layout = layout
        self._id = message_id
        self._role = role
        self._agent_id = agent_id
        self._chunk_tokens = chunk_tokens
        self._flush_interval = flush_interval
        # "chunk": every chunk is on disk before append() returns (at most the unwritten tail
        # of a message is lost in a crash). "message": only sealing is synced. "none": never.
        self._sync_chunks = durability == "chunk"
        self._sync_seal = durability != "none"
        self._lock_handle: IO[bytes] | None = lock_handle
        self._on_sealed = on_sealed
        self._pending: list[str] = []
        self._chunks_written = 0
        self._last_write = time.monotonic()
        self._result: Message | None = None

    @property
    def message_id(self) -> str:
        return str(self._id)

    @property
    def seq(self) -> int:
        return self._id.seq

    @property
    def chunks_written(self) -> int:
        return self._chunks_written

    @property
    def closed(self) -> bool:
        return self._lock_handle is None

    @property
    def result(self) -> Message | None:
        """The sealed message once finished or failed."""
        return self._result

    # -- streaming ----------------------------------------------------------------------------

    def append(self, token: str) -> None:
        """Add one token; writes a chunk file when a chunk is full or the time budget passed."""
        if self.add(token):
            self.flush()

    def add(self, token: str) -> bool:
        """Buffer one token without I/O; True when a chunk is due (then call ``flush()``).

        The async facade uses this to keep token appends off the thread pool.
        """
        self._check_open()
        if not isinstance(token, str):
            raise InvalidArgument(f"a token must be a str, got {type(token).__name__}")
        self._pending.append(token)
        if len(self._pending) >= self._chunk_tokens:
            return True
        return (
            self._flush_interval is not None
            and time.monotonic() - self._last_write >= self._flush_interval
        )

    def flush(self) -> None:
        """Write the buffered tokens as one ``streaming`` chunk (nothing if none are buffered)."""
        self._check_open()
        while self._pending:
            batch = self._pending[: self._chunk_tokens]
            self._write_chunk(self._record(batch, status="streaming"), durable=self._sync_chunks)
            del self._pending[: len(batch)]

    def _record(self, tokens: list[str], *, status: str) -> dict[str, Any]:
        record: dict[str, Any] = {
            "v": 1,
            "messageId": str(self._id),
            "seq": self._chunks_written + 1,
            "tokens": "".join(tokens),
            "tokenCount": len(tokens),
            "timestamp": utc_now(),
            "role": self._role,
            "status": status,
        }
        if self._agent_id is not None:
            record["agentId"] = self._agent_id
        return record

    def _write_chunk(self, record: dict[str, Any], *, durable: bool) -> None:
        path = self._layout.chunk_file(self._id, record["seq"])
        try:
            _fsio.create_exclusive(path, _records.encode_line(record), durable=durable)
        except FileExistsError as exc:
            raise StorageError.wrap(exc, f"chunk already exists: {path}") from exc
        self._chunks_written += 1
        self._last_write = time.monotonic()

    # -- the end ------------------------------------------------------------------------------

    def finish(
        self,
        finish_reason: str | None = "stop",
        usage: dict[str, Any] | None = None,
        tool_calls: list[dict[str, Any]] | None = None,
    ) -> Message:
        """Seal the message as ``complete``."""
        extra: dict[str, Any] = {}
        if finish_reason is not None:
            extra["finishReason"] = finish_reason
        if usage is not None:
            extra["usage"] = usage
        if tool_calls:
            extra["toolCalls"] = tool_calls
        return self._seal("complete", extra)

    def fail(self, error: object = "error", usage: dict[str, Any] | None = None) -> Message:
        """Seal the message as ``error``, keeping the partial content."""
        extra: dict[str, Any] = {"error": error if isinstance(error, (str, dict)) else repr(error)}
        if usage is not None:
            extra["usage"] = usage
        return self._seal("error", extra)

    def _seal(self, status: str, extra: dict[str, Any]) -> Message:
        self._check_open()
        try:
            # The tail beyond one chunk (a huge flush) goes out as streaming chunks first.
            while len(self._pending) > self._chunk_tokens:
                batch = self._pending[: self._chunk_tokens]
                self._write_chunk(self._record(batch, status="streaming"), durable=False)
                del self._pending[: len(batch)]
            last = self._record(self._pending, status=status)
            last.update(extra)
            records = self._read_back() + [last]
            sealed = {"v": 1, "messageId": str(self._id), "sealed": True, "records": records}
            # The sealed file must be durable before the chunk files go, or a crash in between
            # could lose the message; once it exists it wins over any leftover chunk.
            _fsio.create_exclusive(
                self._layout.sealed_file(self._id),
                _records.encode_line(sealed),
                durable=self._sync_seal,
            )
            self._pending.clear()
            for n in range(1, self._chunks_written + 1):
                _fsio.unlink_quietly(self._layout.chunk_file(self._id, n))
            message = rebuild_message(str(self._id), self._id.seq, records, writer_alive=False)
            self._result = message
            self._on_sealed(message)
        finally:
            self._close()
        return message

    def _read_back(self) -> list[dict[str, Any]]:
        records = []
        for n in range(1, self._chunks_written + 1):
            path = self._layout.chunk_file(self._id, n)
            try:
                records.append(_records.decode(_fsio.read_bytes(path)))
            except OSError as exc:
                raise StorageError.wrap(exc, f"cannot read back {path}") from exc
        return records

    def _close(self) -> None:
        handle, self._lock_handle = self._lock_handle, None
        if handle is None:
            return
        # Remove the lock file only once the message is sealed (or abandoned): its presence
        # is what keeps the seq claimed until a sealed or chunk file exists.
        if self._result is not None:
            _fsio.unlink_quietly(self._layout.writer_lock(self._id))
        _locks.release(handle)

    def abandon(self) -> None:
        """Stop without sealing: the message will read back ``interrupted`` (what a crash does)."""
        if self._lock_handle is not None:
            try:
                self.flush()
            finally:
                self._close()

    def _check_open(self) -> None:
        if self._lock_handle is None:
            raise WriterClosed(f"message {self._id} is already finished")

    def __enter__(self) -> MessageWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._lock_handle is None:
            return
        if exc is None:
            self.finish()
        else:
            self.fail({"type": type(exc).__name__, "message": str(exc)})
