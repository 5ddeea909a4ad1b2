"""``AsyncStore``: the asyncio facade over ``Store``.

Same method names, same arguments. Each call runs as *one* job on the store's own thread pool
(like ``asyncio.to_thread``, context variables included): a conversation rebuild touches many
files, and one thread hop per file would cost far more than the reads themselves. Streaming
buffers tokens on the event loop and only hops to a thread when a chunk is due.

The pool is the store's own, not the event loop's default executor (``min(32, cpus + 4)``
threads, shared with everything else that uses ``to_thread``): its threads mostly *wait on the
disk* (``fsync``), not compute, so there can usefully be more of them than cores, and a burst
of chunk writes does not hold up unrelated ``to_thread`` work (or the other way round).
``max_workers`` sizes it; ``executor=`` passes one in (which the caller then shuts down).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import os
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from datetime import datetime
from types import TracebackType
from typing import Any, Protocol, TypeVar, cast

from ._exceptions import InvalidArgument
from ._lane import WriteLane
from ._models import Conversation, ConversationPage, Message, Problem, SearchPage
from ._store import Store
from ._turns import Turn
from ._writer import MessageWriter

__all__ = ["DEFAULT_MAX_WORKERS", "AsyncMessageWriter", "AsyncStore"]

T = TypeVar("T")

_UNSET: Any = object()

#: Threads of an ``AsyncStore``'s own pool: threads that wait on the disk, not CPU work.
DEFAULT_MAX_WORKERS = 32


class _Run(Protocol):
    def __call__(self, func: Callable[..., T], /, *args: Any, **kwargs: Any) -> Awaitable[T]: ...


def _runner(executor: Executor) -> _Run:
    """``await run(func, *args, **kw)``: one job on ``executor``, as ``asyncio.to_thread`` does
    on the default executor (the caller's context variables are copied into the job)."""

    async def run(func: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        call = functools.partial(contextvars.copy_context().run, func, *args, **kwargs)
        return await loop.run_in_executor(executor, call)

    return run


def _new_executor(max_workers: int) -> ThreadPoolExecutor:
    if isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1:
        raise InvalidArgument(f"max_workers must be an integer >= 1, got {max_workers!r}")
    return ThreadPoolExecutor(max_workers, thread_name_prefix="chunkstore")


class AsyncMessageWriter:
    """Async twin of ``MessageWriter``: ``await w.append(token)``, ``await w.finish(...)``.

    ``run`` is how blocking calls are made (``AsyncStore`` passes its pool's); by default
    ``asyncio.to_thread``.
    """

    def __init__(self, opener: Any, *, run: _Run | None = None, write: _Run | None = None) -> None:
        self._opener = opener
        self._open_run: _Run = run if run is not None else cast(_Run, asyncio.to_thread)
        # Chunk writes and the seal: on ``write`` when given (the store's ``WriteLane``), else
        # where the writer was opened.
        self._run: _Run = write if write is not None else self._open_run
        self._writer: MessageWriter | None = None

    async def open(self) -> AsyncMessageWriter:
        if self._writer is None:
            self._writer = await self._open_run(self._opener)
        return self

    @property
    def writer(self) -> MessageWriter:
        if self._writer is None:
            raise RuntimeError("use 'async with store.stream_message(...)' or 'await w.open()'")
        return self._writer

    @property
    def message_id(self) -> str:
        return self.writer.message_id

    @property
    def seq(self) -> int:
        return self.writer.seq

    async def append(self, token: str) -> None:
        if self.writer.add(token):
            await self._run(self.writer.flush)

    def add(self, token: str) -> bool:
        """Buffer a token without I/O; True when a chunk is due (then ``await flush()``)."""
        return self.writer.add(token)

    async def flush(self) -> None:
        await self._run(self.writer.flush)

    async def finish(
        self,
        finish_reason: str | None = "stop",
        usage: dict[str, Any] | None = None,
        tool_calls: list[dict[str, Any]] | None = None,
    ) -> Message:
        return await self._run(self.writer.finish, finish_reason, usage, tool_calls)

    async def fail(self, error: object = "error", usage: dict[str, Any] | None = None) -> Message:
        return await self._run(self.writer.fail, error, usage)

    async def abandon(self) -> None:
        await self._run(self.writer.abandon)

    @property
    def closed(self) -> bool:
        return self.writer.closed

    async def __aenter__(self) -> AsyncMessageWriter:
        return await self.open()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._run(self.writer.__exit__, exc_type, exc, tb)


class AsyncStore:
    """``Store`` for asyncio code. Accepts the same arguments, or wraps an existing ``Store``.

    ``max_workers``: threads of the store's own pool, i.e. how many calls may wait on the disk
    at once (chunk writes are ``fsync``-bound, so this is not tied to the number of cores).
    ``executor``: run the calls on this executor instead (its owner shuts it down;
    ``max_workers`` is then ignored). ``close()`` shuts down the store's own pool.
    ``stream_workers``: give the chunk writes and seals of streamed messages a ``WriteLane``
    of that many threads of their own (``_lane``), so the other calls (creating a conversation,
    storing a user message, opening a writer) never queue behind them, and their results come
    back to the loop in batches; None (the default) runs them on the pool like every call.
    """

    def __init__(
        self,
        target: str | os.PathLike[str] | Store = "users",
        *,
        max_workers: int = DEFAULT_MAX_WORKERS,
        executor: Executor | None = None,
        stream_workers: int | None = None,
        **options: Any,
    ) -> None:
        lane = WriteLane(stream_workers) if stream_workers is not None else None
        self.store = target if isinstance(target, Store) else Store(target, **options)
        self._owns_executor = executor is None
        self._executor: Executor = executor if executor is not None else _new_executor(max_workers)
        self._run = _runner(self._executor)
        self._lane = lane

    @classmethod
    async def open(
        cls,
        target: str | os.PathLike[str] = "users",
        *,
        max_workers: int = DEFAULT_MAX_WORKERS,
        executor: Executor | None = None,
        stream_workers: int | None = None,
        **options: Any,
    ) -> AsyncStore:
        """Open without blocking the loop (opening may create the store, or migrate it)."""
        if stream_workers is not None:
            WriteLane(stream_workers)  # validated before anything is opened (starts no thread)
        pool = executor if executor is not None else _new_executor(max_workers)
        try:
            store = await _runner(pool)(Store, target, **options)
        except BaseException:
            if executor is None:
                pool.shutdown(wait=False)
            raise
        opened = cls(store, executor=pool, stream_workers=stream_workers)
        opened._owns_executor = executor is None
        return opened

    @property
    def executor(self) -> Executor:
        """The executor every call runs on."""
        return self._executor

    async def run(self, func: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """``func(*args, **kwargs)`` as one job on the store's pool (for callers that batch
        several ``Store`` calls into one thread hop)."""
        return await self._run(func, *args, **kwargs)

    async def __aenter__(self) -> AsyncStore:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the store and shut down its own pool once the calls already queued are done."""
        if self._lane is not None:
            # Writes already queued land before the store closes (blocking: off the loop).
            await asyncio.to_thread(self._lane.shutdown, True)
        if self._owns_executor:
            # Waiting for the workers blocks: do it off the loop.
            await asyncio.to_thread(self._executor.shutdown, True)
        self.store.close()

    async def ping(self) -> None:
        await self._run(self.store.ping)

    async def user_for(self, principal: str) -> str:
        return await self._run(self.store.user_for, principal)

    async def find_user(self, principal: str) -> str | None:
        return await self._run(self.store.find_user, principal)

    async def users(self) -> list[str]:
        return await self._run(self.store.users)

    async def create_conversation(
        self,
        user_id: str,
        title: str | None = None,
        *,
        metadata: Mapping[str, str] | None = None,
        participants: Sequence[str] | None = None,
        pinned: bool = False,
    ) -> Conversation:
        return await self._run(
            self.store.create_conversation,
            user_id,
            title,
            metadata=metadata,
            participants=participants,
            pinned=pinned,
        )

    async def get_conversation(self, conversation_id: str) -> Conversation:
        return await self._run(self.store.get_conversation, conversation_id)

    async def list_conversations(
        self,
        user_id: str,
        limit: int = 50,
        cursor: str | None = None,
        include_deleted: bool = False,
    ) -> ConversationPage:
        return await self._run(
            self.store.list_conversations, user_id, limit, cursor, include_deleted
        )

    async def search(
        self,
        user_id: str,
        query: str,
        limit: int = 20,
        cursor: str | None = None,
        include_deleted: bool = False,
    ) -> SearchPage:
        return await self._run(self.store.search, user_id, query, limit, cursor, include_deleted)

    async def update_conversation(
        self,
        conversation_id: str,
        *,
        title: str | None = _UNSET,
        pinned: bool = _UNSET,
        metadata: Mapping[str, str] = _UNSET,
    ) -> Conversation:
        # Only what was given is passed on: "not given" and None differ for a title.
        changes = {
            name: value
            for name, value in (("title", title), ("pinned", pinned), ("metadata", metadata))
            if value is not _UNSET
        }
        return await self._run(self.store.update_conversation, conversation_id, **changes)

    async def delete_conversation(self, conversation_id: str, hard: bool = False) -> None:
        await self._run(self.store.delete_conversation, conversation_id, hard)

    async def restore_conversation(self, conversation_id: str) -> Conversation:
        return await self._run(self.store.restore_conversation, conversation_id)

    async def sweep_retention(
        self, days: float = 30, dry_run: bool = True, *, now: datetime | None = None
    ) -> list[str]:
        return await self._run(self.store.sweep_retention, days, dry_run, now=now)

    async def append_message(
        self,
        conversation_id: str,
        role: str,
        content: Any,
        *,
        agent_id: str | None = None,
        tool_calls: list[dict[str, Any]] | None = None,
        tool_call_id: str | None = None,
        name: str | None = None,
        finish_reason: str | None = None,
        usage: dict[str, Any] | None = None,
        reply_to: int | None = None,
    ) -> Message:
        return await self._run(
            self.store.append_message,
            conversation_id,
            role,
            content,
            agent_id=agent_id,
            tool_calls=tool_calls,
            tool_call_id=tool_call_id,
            name=name,
            finish_reason=finish_reason,
            usage=usage,
            reply_to=reply_to,
        )

    async def append_turn(
        self,
        conversation_id: str,
        messages: Sequence[Mapping[str, Any]],
        *,
        refuse_while_streaming: bool = False,
    ) -> Turn:
        return await self._run(
            self.store.append_turn,
            conversation_id,
            messages,
            refuse_while_streaming=refuse_while_streaming,
        )

    def stream_message(
        self,
        conversation_id: str,
        role: str = "assistant",
        agent_id: str | None = None,
        *,
        chunk_tokens: int | None = None,
        flush_interval: float | None = _UNSET,
        reply_to: int | None = None,
    ) -> AsyncMessageWriter:
        """Use as ``async with store.stream_message(conv_id) as w:`` (opened on entry)."""
        options: dict[str, Any] = {"chunk_tokens": chunk_tokens, "reply_to": reply_to}
        if flush_interval is not _UNSET:
            options["flush_interval"] = flush_interval
        return AsyncMessageWriter(
            lambda: self.store.stream_message(conversation_id, role, agent_id, **options),
            run=self._run,
            write=self._lane.run if self._lane is not None else None,
        )

    async def messages(
        self, conversation_id: str, after_seq: int = 0, limit: int | None = 50
    ) -> list[Message]:
        return await self._run(self.store.messages, conversation_id, after_seq, limit)

    async def message_count(self, conversation_id: str) -> int:
        return await self._run(self.store.message_count, conversation_id)

    async def delete_message(self, conversation_id: str, message_id: str) -> bool:
        return await self._run(self.store.delete_message, conversation_id, message_id)

    async def check(self, fix: bool = False) -> list[Problem]:
        return await self._run(self.store.check, fix)
