"""Persisting a streamed reply without ever making the relay wait for the disk.

The relay hands each token to a ``ReplyRecorder`` with a non-blocking ``put_nowait``; a
background task owns the chunkstore ``MessageWriter`` and does the disk work in worker threads
(one ``asyncio.to_thread`` per chunk, not per token). A slow or failing disk therefore delays
only this task: the client's stream runs at upstream speed, and a storage failure is reported
at the end instead of breaking the stream.

``ToolCallAssembler`` rebuilds complete tool calls from their streamed deltas so the stored
message replays upstream exactly as a non-streamed one would.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from chunkstore import AsyncMessageWriter, AsyncStore, ChunkstoreError
from edge.logs import elapsed_ms, log_event
from edge.metrics import Metrics

__all__ = ["ReplyRecorder", "ToolCallAssembler"]

log = logging.getLogger("edge.persist")

_END = object()


class ToolCallAssembler:
    """Accumulates ``delta.tool_calls`` fragments (by ``index``) into whole tool calls."""

    def __init__(self) -> None:
        self._calls: dict[int, dict[str, Any]] = {}

    def feed(self, deltas: Any) -> None:
        if not isinstance(deltas, list):
            return
        for delta in deltas:
            if not isinstance(delta, dict):
                continue
            index = delta.get("index", 0)
            if not isinstance(index, int):
                continue
            call = self._calls.setdefault(
                index, {"id": None, "type": "function", "function": {"name": "", "arguments": ""}}
            )
            if delta.get("id"):
                call["id"] = delta["id"]
            if delta.get("type"):
                call["type"] = delta["type"]
            function = delta.get("function")
            if isinstance(function, dict):
                if isinstance(function.get("name"), str):
                    call["function"]["name"] += function["name"]
                if isinstance(function.get("arguments"), str):
                    call["function"]["arguments"] += function["arguments"]

    def calls(self) -> list[dict[str, Any]] | None:
        if not self._calls:
            return None
        return [self._calls[i] for i in sorted(self._calls)]


class ReplyRecorder:
    """Stores one assistant reply while it streams; see the module docstring."""

    def __init__(
        self,
        store: AsyncStore,
        conversation_id: str,
        *,
        agent_id: str | None,
        chunk_tokens: int,
        flush_ms: int,
        metrics: Metrics,
    ) -> None:
        self._store = store
        self._conversation_id = conversation_id
        self._agent_id = agent_id
        self._chunk_tokens = chunk_tokens
        self._flush_s = flush_ms / 1000
        self._metrics = metrics
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self.failed = False
        self.message_id: str | None = None
        self._ended = False
        self.task = asyncio.create_task(self._run(), name=f"record-{conversation_id}")

    # -- called by the relay (never blocks) ---------------------------------------------------

    def token(self, text: str) -> None:
        # After a storage failure nothing consumes the queue: stop feeding it.
        if not self._ended and not self.failed:
            self._queue.put_nowait(text)

    def finish(
        self,
        finish_reason: str | None,
        usage: dict[str, Any] | None,
        tool_calls: list[dict[str, Any]] | None,
    ) -> None:
        self._end(("finish", finish_reason, usage, tool_calls))

    def fail(self, error: dict[str, Any], usage: dict[str, Any] | None = None) -> None:
        self._end(("fail", error, usage))

    def _end(self, item: tuple[Any, ...]) -> None:
        if not self._ended:
            self._ended = True
            self._queue.put_nowait(item)

    @property
    def ended(self) -> bool:
        return self._ended

    async def wait(self, timeout: float) -> bool:
        """Wait (bounded) for the reply to be stored; False if it failed or is still going."""
        try:
            await asyncio.wait_for(asyncio.shield(self.task), timeout)
        except TimeoutError:
            log_event(
                "reply_store_timeout",
                logging.WARNING,
                conversation_id=self._conversation_id,
                message_id=self.message_id,
            )
            return False
        return not self.failed

    # -- the background task ------------------------------------------------------------------

    async def _run(self) -> None:
        writer: AsyncMessageWriter | None = None
        try:
            writer = await self._store.stream_message(
                self._conversation_id,
                role="assistant",
                agent_id=self._agent_id,
                chunk_tokens=self._chunk_tokens,
                flush_interval=None,  # time-based flushing is ours (below), on the event loop
            ).open()
            self.message_id = writer.message_id
            await self._consume(writer)
        except (ChunkstoreError, OSError) as exc:
            self._storage_failed(exc)
            if writer is not None and not writer.closed:
                try:
                    await writer.abandon()  # releases the lock: the message reads interrupted
                except (ChunkstoreError, OSError):
                    pass

    async def _consume(self, writer: AsyncMessageWriter) -> None:
        pending = 0
        last_flush = time.monotonic()
        while True:
            timeout = None
            if pending:
                timeout = max(0.0, last_flush + self._flush_s - time.monotonic())
            try:
                item = await asyncio.wait_for(self._queue.get(), timeout)
            except TimeoutError:
                await self._flush(writer, pending)
                pending, last_flush = 0, time.monotonic()
                continue
            if isinstance(item, str):
                pending += 1
                if writer.add(item):
                    await self._flush(writer, pending)
                    pending, last_flush = 0, time.monotonic()
                continue
            await self._seal(writer, item)
            return

    async def _flush(self, writer: AsyncMessageWriter, tokens: int) -> None:
        before = writer.writer.chunks_written
        start = time.perf_counter()
        await writer.flush()
        written = writer.writer.chunks_written - before
        self._metrics.chunks_written.inc(written)
        log_event(
            "chunk_write",
            conversation_id=self._conversation_id,
            message_id=writer.message_id,
            chunk=writer.writer.chunks_written,
            tokens=tokens,
            duration_ms=elapsed_ms(start),
        )

    async def _seal(self, writer: AsyncMessageWriter, item: tuple[Any, ...]) -> None:
        start = time.perf_counter()
        if item[0] == "finish":
            message = await writer.finish(item[1], item[2], item[3])
        else:
            message = await writer.fail(item[1], item[2])
        self._metrics.chunks_written.inc(1)
        log_event(
            "message_sealed",
            conversation_id=self._conversation_id,
            message_id=message.id,
            status=message.status,
            tokens=message.token_count,
            chunks=writer.writer.chunks_written + 1,
            duration_ms=elapsed_ms(start),
        )

    def _storage_failed(self, exc: BaseException) -> None:
        self.failed = True
        self._metrics.storage_failures.inc()
        log_event(
            "storage_failed",
            logging.ERROR,
            conversation_id=self._conversation_id,
            message_id=self.message_id,
            error=f"{type(exc).__name__}: {exc}",
        )
