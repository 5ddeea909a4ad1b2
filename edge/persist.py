"""Persisting a streamed reply without ever making the relay wait for the disk.

The relay hands each token to a ``ReplyRecorder``, which appends it to a list (no await, no
task, no timer per token). A background task owns the chunkstore ``MessageWriter``; it sleeps
until a chunk is due (``chunk_tokens`` pending), the ``HISTORY_BATCH_FLUSH_MS`` timer fires
(one ``call_at`` handle, armed only while tokens are pending) or the stream ends, and does the
disk work on the store's threads: one job per chunk, not per token. A slow or failing disk
therefore delays only this task: the client's stream runs at upstream speed, and a storage
failure is reported at the end instead of breaking the stream.

The relay does not wait for the disk at the end of a stream either: ``[DONE]`` goes out as soon
as the upstream's last event is relayed, while the recorder writes the last chunk and seals.
``PendingReplies`` keeps read-your-writes anyway: it knows which replies are still being
stored, per conversation, and the edge's readers of a conversation (the history endpoints, the
next turn) wait for them first.

``ToolCallAssembler`` rebuilds complete tool calls from their streamed deltas so the stored
message replays upstream exactly as a non-streamed one would.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from chunkstore import AsyncMessageWriter, AsyncStore, ChunkstoreError
from edge.logs import elapsed_ms, log_event
from edge.metrics import Metrics

if TYPE_CHECKING:
    from edge.resume import LiveReply

__all__ = ["SETTLE_TIMEOUT_S", "PendingReplies", "ReplyRecorder", "ToolCallAssembler"]

log = logging.getLogger("edge.persist")

# How long a reader of a conversation waits for a reply of it still being stored. Long enough
# for any healthy disk; bounded so a stuck one cannot hang every read of the conversation.
SETTLE_TIMEOUT_S = 10.0


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


class PendingReplies:
    """The recorder tasks still storing a reply, by conversation.

    A task leaves on its own once done. ``settle`` is what a reader of a conversation awaits
    first so it sees the replies this edge already finished relaying; shutdown awaits ``tasks``.
    """

    def __init__(self) -> None:
        self._by_conversation: dict[str, set[asyncio.Task[None]]] = {}
        self._relayed: dict[asyncio.Task[None], Callable[[], bool]] = {}

    def track(
        self,
        conversation_id: str,
        task: asyncio.Task[None],
        relayed: Callable[[], bool] | None = None,
    ) -> None:
        """``relayed``: whether the reply's stream has ended (only its storing is left)."""
        tasks = self._by_conversation.setdefault(conversation_id, set())
        tasks.add(task)
        if relayed is not None:
            self._relayed[task] = relayed

        def done(finished: asyncio.Task[None]) -> None:
            tasks.discard(finished)
            self._relayed.pop(finished, None)
            if not tasks and self._by_conversation.get(conversation_id) is tasks:
                del self._by_conversation[conversation_id]

        task.add_done_callback(done)

    def tasks(self) -> list[asyncio.Task[None]]:
        return [task for tasks in self._by_conversation.values() for task in tasks]

    def __len__(self) -> int:
        return sum(len(tasks) for tasks in self._by_conversation.values())

    async def settle(self, conversation_id: str, timeout: float, *, streaming: bool = True) -> bool:
        """Wait (bounded) until the conversation has no reply being stored; False on timeout.

        Past the bound the caller reads what is stored: the reply then shows as ``streaming``.
        A stuck disk must not hang every reader of the conversation. ``streaming=False``
        waits only for the replies whose stream has ended (the history: a reply still
        streaming shows as such, with where to resume it).
        """
        return await self._settle(self._by_conversation.get(conversation_id), timeout, streaming)

    async def settle_user(self, user: str, timeout: float) -> bool:
        """``settle(streaming=False)`` for every conversation of ``user`` (what a search of
        the user's conversations reads: a reply whose stream ended must be found)."""
        prefix = f"{user}-"
        tasks = {
            task
            for conversation_id, by in self._by_conversation.items()
            if conversation_id.startswith(prefix)
            for task in by
        }
        return await self._settle(tasks, timeout, streaming=False)

    async def _settle(
        self, tasks: set[asyncio.Task[None]] | None, timeout: float, streaming: bool
    ) -> bool:
        if not tasks:
            return True
        if not streaming:
            relayed = self._relayed
            tasks = {t for t in tasks if t not in relayed or relayed[t]()}
            if not tasks:
                return True
        _done, pending = await asyncio.wait(list(tasks), timeout=timeout)
        return not pending


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
        reply_to: int | None = None,
        live: LiveReply | None = None,
    ) -> None:
        self._store = store
        self._conversation_id = conversation_id
        self._agent_id = agent_id
        self._reply_to = reply_to  # the seq of the message this reply answers
        self._chunk_tokens = chunk_tokens
        self._flush_s = flush_ms / 1000
        self._metrics = metrics
        self._loop = asyncio.get_running_loop()
        # The hand-off: tokens not yet given to the writer, in order. The relay appends, the
        # consumer takes whole chunks from the front; both run on the event loop.
        self._tokens: list[str] = []
        self._end_item: tuple[Any, ...] | None = None
        # Set while the consumer sleeps: resolved when a chunk is due, when the stream ends,
        # or by the one flush timer (HISTORY_BATCH_FLUSH_MS after the last write).
        self._wakeup: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._flush_due = False  # the timer fired (asyncio may run it a hair before its time)
        self._last_write = self._loop.time()
        self.failed = False
        self.message_id: str | None = None
        # The message id once the writer is open (None: opening failed): the relay awaits it
        # before its first event, whose SSE id names the message.
        self.opened: asyncio.Future[str | None] = self._loop.create_future()
        # Told how much of the content is durable, after each chunk (``edge.resume``).
        self._live = live
        self._ended = False
        self.task = asyncio.create_task(self._run(), name=f"record-{conversation_id}")

    # -- called by the relay (never blocks) ---------------------------------------------------

    def token(self, text: str) -> None:
        # After a storage failure nothing consumes the buffer: stop feeding it.
        if self._ended or self.failed:
            return
        tokens = self._tokens
        tokens.append(text)
        if self._wakeup is not None:  # the consumer sleeps: wake it once per chunk, not token
            if len(tokens) >= self._chunk_tokens:
                self._wake()
            elif self._timer is None:
                self._arm_timer()

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
            self._end_item = item
            self._wake()

    def _wake(self) -> None:
        waiter = self._wakeup
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _arm_timer(self) -> None:
        self._timer = self._loop.call_at(self._last_write + self._flush_s, self._timer_fired)

    def _timer_fired(self) -> None:
        self._timer = None
        self._flush_due = True
        self._wake()

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
                reply_to=self._reply_to,
            ).open()
            self.message_id = writer.message_id
            self.opened.set_result(self.message_id)
            await self._consume(writer)
        except Exception as exc:
            # Every failure of storing is a storage failure, whatever its type: a corrupt
            # record met while sealing is a ValueError, a bug a TypeError. Each is flagged,
            # counted and logged; none may end the task silently with the reply unsealed.
            self._storage_failed(exc)
            if writer is not None and not writer.closed:
                try:
                    await writer.abandon()  # releases the lock: the message reads interrupted
                except Exception:
                    pass  # already reported above; the lock goes with the handle regardless
        finally:
            if not self.opened.done():
                self.opened.set_result(None)

    async def _consume(self, writer: AsyncMessageWriter) -> None:
        """Write whole chunks as they fill up, a partial one when ``HISTORY_BATCH_FLUSH_MS``
        has passed since the last write with tokens pending, and seal at the end."""
        loop = self._loop
        chunk = self._chunk_tokens
        tokens = self._tokens
        add = writer.writer.add  # the sync writer's: buffers in memory, no I/O
        self._last_write = loop.time()
        while True:
            pending = len(tokens)
            if self._end_item is not None:
                # The stream is over: whatever is left goes to the seal, one job on the store's
                # threads (the writer stores a tail longer than a chunk as unsynced chunks and
                # makes them durable with the seal), never a durable write per chunk of a
                # backlog: a slow disk at shutdown must not hold the seal past the grace.
                for text in tokens:
                    add(text)
                tokens.clear()
                await self._seal(writer, self._end_item)
                return
            if pending >= chunk:
                take = chunk
            elif pending and (self._flush_due or loop.time() >= self._last_write + self._flush_s):
                take = pending
            else:
                await self._sleep(pending)
                continue
            taken = tokens[:take]
            for text in taken:
                add(text)  # True on the last of a full chunk: flushed right below
            del tokens[:take]
            await self._flush(writer, take)
            if self._live is not None:
                self._live.durable += sum(map(len, taken))
            self._last_write = loop.time()
            self._flush_due = False

    async def _sleep(self, pending: int) -> None:
        """Until ``token``/``_end``/the flush timer wakes us (the timer only with tokens pending:
        otherwise ``token`` arms it when the first one comes)."""
        loop = self._loop
        self._wakeup = loop.create_future()
        if pending:
            self._arm_timer()
        try:
            await self._wakeup
        finally:
            self._wakeup = None
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

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
        before = writer.writer.chunks_written
        if item[0] == "finish":
            message = await writer.finish(item[1], item[2], item[3])
        else:
            message = await writer.fail(item[1], item[2])
        # The chunks of a tail longer than one chunk, then the sealing record.
        self._metrics.chunks_written.inc(writer.writer.chunks_written - before + 1)
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
        self._tokens.clear()  # nothing will consume them (``token`` stops buffering)
        self._metrics.storage_failures.inc()
        log_event(
            "storage_failed",
            logging.ERROR,
            conversation_id=self._conversation_id,
            message_id=self.message_id,
            error=f"{type(exc).__name__}: {exc}",
        )
        if not isinstance(exc, ChunkstoreError | OSError):
            # Not the disk's doing: a defect (or corrupt data met while sealing). Keep its
            # traceback in the log.
            log.error("storing a reply in %s failed", self._conversation_id, exc_info=exc)
