"""``MessageWriter``: persists one message while it streams, over any backend.

Tokens are buffered in memory and handed to the backend's sink (``_backend.StreamSink``) as one
chunk record every ``chunk_tokens`` tokens, or sooner once ``flush_interval`` seconds have
passed since the last chunk (checked on ``append``, and the caller may call ``flush()`` from
its own timer). ``finish()``/``fail()`` hand over the last record and the sink *seals* the
message. The sink holds the message's liveness from its creation to its seal, which is how
readers tell ``streaming`` from ``interrupted``.

Memory stays flat however long the stream: only the unwritten tail is held.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

from ._backend import StreamSink
from ._exceptions import InvalidArgument, WriterClosed
from ._models import Message

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
        sink: StreamSink,
        *,
        role: str,
        agent_id: str | None,
        chunk_tokens: int,
        flush_interval: float | None,
        durability: str,
        reply_to: int | None = None,
    ) -> None:
        self._sink: StreamSink | None = sink
        self._id = sink.message_id
        self._id_text = str(self._id)  # in every record
        self._role = role
        self._agent_id = agent_id
        self._reply_to = reply_to
        self._chunk_tokens = chunk_tokens
        self._flush_interval = flush_interval
        # "chunk": every chunk is durable before append() returns (at most the unwritten tail
        # of a message is lost in a crash). "message": only sealing is synced. "none": never.
        self._sync_chunks = durability == "chunk"
        self._sync_seal = durability != "none"
        self._pending: list[str] = []
        self._chunks_written = 0
        self._last_write = time.monotonic()
        self._result: Message | None = None

    @property
    def message_id(self) -> str:
        return self._id_text

    @property
    def seq(self) -> int:
        return self._id.seq

    @property
    def chunks_written(self) -> int:
        return self._chunks_written

    @property
    def closed(self) -> bool:
        return self._sink is None

    @property
    def result(self) -> Message | None:
        """The sealed message once finished or failed."""
        return self._result

    # -- streaming ----------------------------------------------------------------------------

    def append(self, token: str) -> None:
        """Add one token; writes a chunk file when a chunk is full or the time budget passed."""
        # ``add`` inlined, checks first: this runs once per token, and a call per token was
        # half of a 400-token reply's time in the writer.
        if self._sink is None or not isinstance(token, str):
            self._reject(token)
        pending = self._pending
        pending.append(token)
        if len(pending) >= self._chunk_tokens or (
            self._flush_interval is not None
            and time.monotonic() - self._last_write >= self._flush_interval
        ):
            self.flush()

    def add(self, token: str) -> bool:
        """Buffer one token without I/O; True when a chunk is due (then call ``flush()``).

        The async facade uses this to keep token appends off the thread pool.
        """
        if self._sink is None or not isinstance(token, str):
            self._reject(token)
        pending = self._pending
        pending.append(token)
        return len(pending) >= self._chunk_tokens or (
            self._flush_interval is not None
            and time.monotonic() - self._last_write >= self._flush_interval
        )

    def _reject(self, token: object) -> None:
        """Raise what ``append``/``add`` refuse ``token`` for: a closed writer, then a non-str."""
        self._check_open()
        if not isinstance(token, str):
            raise InvalidArgument(f"a token must be a str, got {type(token).__name__}")

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
            "messageId": self._id_text,
            "seq": self._chunks_written + 1,
            "tokens": "".join(tokens),
            "tokenCount": len(tokens),
            "timestamp": utc_now(),
            "role": self._role,
            "status": status,
        }
        if self._agent_id is not None:
            record["agentId"] = self._agent_id
        if self._reply_to is not None:
            record["replyTo"] = self._reply_to
        return record

    def _write_chunk(self, record: dict[str, Any], *, durable: bool) -> None:
        assert self._sink is not None
        self._sink.write_chunk(record, durable=durable)
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
        sink = self._sink
        assert sink is not None
        try:
            # The tail beyond one chunk (a huge flush) goes out as streaming chunks first,
            # unsynced: the seal makes them durable.
            while len(self._pending) > self._chunk_tokens:
                batch = self._pending[: self._chunk_tokens]
                self._write_chunk(self._record(batch, status="streaming"), durable=False)
                del self._pending[: len(batch)]
        except BaseException:
            # The seal was never reached, so the sink is still open: release it, or its
            # liveness (the writer's lock) would say ``streaming`` for the life of the process.
            self._sink = None
            sink.release()
            raise
        try:
            last = self._record(self._pending, status=status)
            last.update(extra)
            message = sink.seal(last, durable=self._sync_seal)
            self._pending.clear()
            self._result = message
        finally:
            # The sink is closed by its seal whatever happened; so is this writer.
            self._sink = None
        return message

    def abandon(self) -> None:
        """Stop without sealing: the message will read back ``interrupted`` (what a crash does)."""
        sink = self._sink
        if sink is not None:
            try:
                self.flush()
            finally:
                self._sink = None
                sink.release()

    def _check_open(self) -> None:
        if self._sink is None:
            raise WriterClosed(f"message {self._id} is already finished")

    def __enter__(self) -> MessageWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._sink is None:
            return
        if exc is None:
            self.finish()
        else:
            self.fail({"type": type(exc).__name__, "message": str(exc)})
