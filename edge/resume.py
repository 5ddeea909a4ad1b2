"""Resuming a stored reply's stream, and stopping a reply on purpose.

**Positions.** Every event of a stateful stream carries an SSE ``id:`` of the form
``<messageId>:<offset>``: the reply's message id, and the length of the reply's content (in
Unicode code points, the content as the history API returns it) that the client holds once it
has applied that event. Stored chunk records keep each chunk's text joined, so token boundaries
are not stored, but a character offset into the content is exact whatever the chunking: "what
followed an event" is ``content[offset:]``. Events without content (role, tool-call fragments,
finish reason, usage) carry the offset of the content before them.

**Resume** (``GET /v1/conversations/{id}/messages/{message_id}/stream``, with ``Last-Event-ID``
or ``?after=`` holding such an id or a bare offset; neither: from the start): sends what
followed that position as ``chat.completion.chunk`` events, then follows the live reply to its
end, and ends like every stream with ``data: [DONE]``. Its last events are the reply's end as
stored: the tool calls (whole), the finish reason, the usage, and a status chunk (``choices:
[]``, ``metadata: {"status", "message_id", "reason"}``) that says ``complete``, ``error`` (with
the reason: ``cancelled``, ``client_disconnected``, ``upstream_error``...) or ``interrupted``
(the producer died: the durable prefix was all there was). The content a client got before and
after the cut, concatenated, is the stored reply's content exactly.

Where the rest comes from:

* **the producing instance**: the durable prefix from the store, then the live reply from
  memory: each live reply (``LiveReply``, registered in ``LIVE_REPLIES`` while it streams and
  until it is sealed) keeps the content it has not yet made durable plus a bounded window
  (``LIVE_WINDOW_CHARS``) before it, so a follower gets every token as the upstream sends it;
* **another instance** (or a reply that already ended): the store, polled every
  ``RESUME_POLL_MS`` (the store's content grows a chunk at a time: ``CHUNK_TOKENS`` tokens or
  ``HISTORY_BATCH_FLUSH_MS``), until the message is no longer ``streaming``.

**Cancel** (``POST …/messages/{message_id}/cancel``): cuts the upstream of a running reply and
stores it ``error`` with its partial text and the reason ``cancelled`` (a disconnect is
``client_disconnected``). On the producing instance it is immediate. On another instance of the
same store the request goes through a ``CancelChannel``: PostgreSQL ``NOTIFY`` (milliseconds),
or, for the file and SQLite stores (one machine), a marker file next to the store that each
instance looks for every ``CANCEL_POLL_S`` while it has live replies (at most that much later).
The answer waits (at most ``CANCEL_WAIT_S``) for the reply to be sealed and returns the message.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import orjson
from aiohttp import web

from chunkstore import AsyncStore, InvalidId, Message, MessageId, parse_store_url
from edge.errors import ApiError
from edge.keys import CONFIG, METRICS
from edge.scope import owned_conversation, require_store, session_user

__all__ = [
    "CANCEL_CHANNEL",
    "LIVE_REPLIES",
    "MESSAGE_HEADER",
    "LiveReplies",
    "LiveReply",
    "cancel_ctx",
    "cancel_reply",
    "cut_background_replies",
    "event_id",
    "resume_url",
    "status_reason",
    "stream_reply",
]

log = logging.getLogger("edge.resume")

MESSAGE_HEADER = "X-Message-ID"
# What a live reply keeps in memory besides what it has not made durable yet: enough that a
# follower reading the store a moment ago finds the rest here. Past ``LIVE_MAX_CHARS`` (a store
# that does not keep up) the oldest text goes whatever its state: followers then wait for the
# store.
LIVE_WINDOW_CHARS = 64 * 1024
LIVE_MAX_CHARS = 4 * 1024 * 1024
# A replayed event holds at most this much content.
REPLAY_EVENT_CHARS = 16 * 1024
# How often an instance looks for cancel markers (file and SQLite stores), and how long the
# cancel endpoint waits for the reply to be sealed.
CANCEL_POLL_S = 0.1
CANCEL_WAIT_S = 10.0
# A marker nobody took within this long names a reply that is not running anywhere.
_MARKER_TTL_S = 60.0
_PG_CHANNEL = "edge_cancel"


def event_id(message_id: str, offset: int) -> bytes:
    return f"id: {message_id}:{offset}\n".encode()


def resume_url(message: Message) -> str | None:
    """Where a client resumes a reply still streaming, after the content it was read with."""
    if message.status != "streaming":
        return None
    conversation = MessageId.parse(message.id).conversation_id
    return (
        f"/v1/conversations/{conversation}/messages/{message.id}/stream"
        f"?after={message.id}:{len(_text(message))}"
    )


def status_reason(message: Message) -> str | None:
    """Why a reply ended ``error``: ``cancelled`` (stopped on purpose), ``client_disconnected``,
    ``upstream_error``, ``shutdown``...; None otherwise."""
    error = message.error
    if message.status != "error" or error is None:
        return None
    if isinstance(error, dict):
        reason = error.get("reason") or error.get("type")
        return reason if isinstance(reason, str) else None
    return "error"


def _text(message: Message) -> str:
    content = message.content
    return content if isinstance(content, str) else message.text


# -- live replies -------------------------------------------------------------------------------


class LiveReply:
    """A reply this instance is streaming: its content in memory (the part not yet durable and
    a window before it), what followers wait on, and how to cut it."""

    def __init__(self, conversation_id: str) -> None:
        self.conversation_id = conversation_id
        self.message_id = ""
        self.base = 0  # the offset of the first character held
        self.end = 0  # the content's length so far
        self.durable = 0  # how much of it the store holds (the recorder says)
        self.closed = False  # sealed (or given up): the store has the last word
        self.cut_reason: str | None = None
        self.detached = False  # background generation: its client left, it goes on
        self._pieces: list[str] = []
        self._starts: list[int] = []
        self._waiter: asyncio.Future[None] | None = None
        self._sealed = asyncio.Event()
        self._cutter: Callable[[str], None] | None = None

    # -- the producer ---------------------------------------------------------------------------

    def append(self, text: str) -> None:
        self._pieces.append(text)
        self._starts.append(self.end)
        self.end += len(text)
        if self.end - self.base > LIVE_WINDOW_CHARS:
            self._trim()
        if self._waiter is not None:
            self._wake()

    def _trim(self) -> None:
        target = max(min(self.durable, self.end - LIVE_WINDOW_CHARS), self.end - LIVE_MAX_CHARS)
        cut = bisect.bisect_right(self._starts, target) - 1
        if cut > 0:
            del self._pieces[:cut]
            del self._starts[:cut]
            self.base = self._starts[0]

    def on_cut(self, cutter: Callable[[str], None] | None) -> None:
        """How to stop the producer (None: it cannot be stopped any more)."""
        self._cutter = cutter

    def cut(self, reason: str) -> bool:
        """Stop the reply (its producer stores it ``error`` with this reason); False if it
        cannot be cut any more."""
        if self.closed or self._cutter is None or self.cut_reason is not None:
            return False
        self.cut_reason = reason
        self._cutter(reason)
        return True

    def close(self) -> None:
        self.closed = True
        self._cutter = None
        self._pieces.clear()
        self._starts.clear()
        self._sealed.set()
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        self._waiter = None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- followers ----------------------------------------------------------------------------

    def read_from(self, offset: int) -> str | None:
        """The content after ``offset``, or None when memory no longer holds all of it."""
        if self.closed or offset < self.base:
            return None
        if offset >= self.end:
            return ""
        index = bisect.bisect_right(self._starts, offset) - 1
        first = self._pieces[index][offset - self._starts[index] :]
        return first + "".join(self._pieces[index + 1 :])

    async def changed(self) -> None:
        """Until more content, the seal, or a cut."""
        if self.closed:
            return
        if self._waiter is None:
            self._waiter = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._waiter)

    async def sealed(self) -> None:
        """Until the producer is done with it (sealed or given up)."""
        await self._sealed.wait()


class LiveReplies:
    """This instance's live replies, by message id."""

    def __init__(self) -> None:
        self._replies: dict[str, LiveReply] = {}

    def add(self, reply: LiveReply) -> None:
        self._replies[reply.message_id] = reply

    def remove(self, reply: LiveReply) -> None:
        if self._replies.get(reply.message_id) is reply:
            del self._replies[reply.message_id]
        reply.close()

    def get(self, message_id: str) -> LiveReply | None:
        return self._replies.get(message_id)

    def ids(self) -> list[str]:
        return list(self._replies)

    def __len__(self) -> int:
        return len(self._replies)


LIVE_REPLIES = web.AppKey("live_replies", LiveReplies)


# -- cancelling across instances ----------------------------------------------------------------


class CancelChannel(Protocol):
    async def request(self, message_id: str) -> None: ...

    async def close(self) -> None: ...


class MarkerCancels:
    """File and SQLite stores: a marker file per cancelled message in ``directory`` (next to
    the store, on the machine all its instances share), looked for every ``CANCEL_POLL_S``."""

    def __init__(self, directory: Path, replies: LiveReplies) -> None:
        self._dir = directory
        self._replies = replies
        self._task = asyncio.create_task(self._watch(), name="cancel-markers")

    async def request(self, message_id: str) -> None:
        await asyncio.to_thread(self._write, message_id)

    def _write(self, message_id: str) -> None:
        self._dir.mkdir(parents=True, exist_ok=True)
        (self._dir / message_id).touch()

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(CANCEL_POLL_S)
            if not len(self._replies):
                continue
            try:
                names = os.listdir(self._dir)
            except OSError:
                continue
            now = time.time()
            for name in names:
                reply = self._replies.get(name)
                path = self._dir / name
                try:
                    if reply is not None:
                        path.unlink()
                        reply.cut("cancelled")
                    elif now - path.stat().st_mtime > _MARKER_TTL_S:
                        path.unlink()
                except OSError:
                    pass  # another instance took it

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


class PgNotifyCancels:
    """PostgreSQL: ``NOTIFY edge_cancel`` with ``<schema> <message id>``; every instance
    listens on one connection of its own (reconnecting when it drops)."""

    def __init__(self, url: str, replies: LiveReplies) -> None:
        self._url = url
        self._replies = replies
        self._schema: str | None = None
        self._listening = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._listen(), name="cancel-listen")

    async def ready(self, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._listening), timeout)

    async def _listen(self) -> None:
        import psycopg

        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self._url, autocommit=True
                ) as conn:
                    row = await (await conn.execute("SELECT current_schema()")).fetchone()
                    self._schema = str(row[0]) if row else ""
                    await conn.execute(f"LISTEN {_PG_CHANNEL}")
                    if not self._listening.done():
                        self._listening.set_result(None)
                    async for note in conn.notifies():
                        schema, _, message_id = note.payload.partition(" ")
                        reply = self._replies.get(message_id)
                        if schema == self._schema and reply is not None:
                            reply.cut("cancelled")
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database went away: listen again shortly
                log.warning("cancel listener: %s: %s", type(exc).__name__, exc)
                await asyncio.sleep(1.0)

    async def request(self, message_id: str) -> None:
        import psycopg

        async with await psycopg.AsyncConnection.connect(self._url, autocommit=True) as conn:
            await conn.execute(
                "SELECT pg_notify(%s, current_schema() || ' ' || %s)", (_PG_CHANNEL, message_id)
            )

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


CANCEL_CHANNEL = web.AppKey("cancel_channel", CancelChannel)


async def cancel_ctx(app: web.Application) -> AsyncIterator[None]:
    """The live-reply registry, and (with persistence on) the channel cancels take to reach
    another instance of the same store."""
    replies = app[LIVE_REPLIES] = LiveReplies()
    config = app[CONFIG]
    channel: MarkerCancels | PgNotifyCancels | None = None
    if config.persist_transcripts:
        kind, location = parse_store_url(config.db_url)
        if kind == "postgresql":
            channel = PgNotifyCancels(config.db_url, replies)
            await channel.ready(5.0)
        else:
            channel = MarkerCancels(Path(os.path.abspath(location) + ".cancel"), replies)
        app[CANCEL_CHANNEL] = channel
    try:
        yield
    finally:
        if channel is not None:
            await channel.close()


async def cut_background_replies(app: web.Application) -> None:
    """On shutdown: replies that went on without their client are cut (stored ``error``,
    reason ``shutdown``); replies with a client get the server's grace period."""
    replies = app.get(LIVE_REPLIES)
    if replies is not None:
        for message_id in replies.ids():
            reply = replies.get(message_id)
            if reply is not None and reply.detached:
                reply.cut("shutdown")


# -- the handlers -------------------------------------------------------------------------------


async def _target(request: web.Request) -> tuple[AsyncStore, str, MessageId]:
    """The store, conversation and message named in the path, scoped to the session: a
    malformed id is a 400, another user's or conversation's a 404."""
    store = require_store(request)
    user = await session_user(request, create=False)
    conversation_id = owned_conversation(user, request.match_info["conversation_id"])
    try:
        message_id = MessageId.parse(request.match_info["message_id"])
    except InvalidId:
        raise ApiError(400, "Malformed message id.", code="invalid_id") from None
    if str(message_id.conversation_id) != conversation_id:
        raise _message_not_found()
    return store, conversation_id, message_id


def _message_not_found() -> ApiError:
    return ApiError(404, "Message not found.", code="not_found")


async def _read(store: AsyncStore, conversation_id: str, message_id: MessageId) -> Message:
    found = await store.messages(conversation_id, after_seq=message_id.seq - 1, limit=1)
    if not found or found[0].id != str(message_id):
        raise _message_not_found()
    return found[0]


def _position(request: web.Request, message_id: str) -> int:
    """``Last-Event-ID`` (wins) or ``?after=``: ``<message id>:<offset>`` or ``<offset>``."""
    raw = request.headers.get("Last-Event-ID") or request.query.get("after")
    if raw is None or raw == "":
        return 0
    named, colon, offset = raw.rpartition(":")
    if colon and named != message_id:
        raise ApiError(
            400,
            "Last-Event-ID / after names another message.",
            code="invalid_value",
            param="after",
        )
    if not offset.isascii() or not offset.isdigit() or len(offset) > 12:
        raise ApiError(
            400,
            "Last-Event-ID / after must be '<message id>:<offset>' or an offset.",
            code="invalid_value",
            param="after",
        )
    return int(offset)


class _Replay:
    """Writes a resumed stream's events: content after a position, then the stored end."""

    def __init__(self, out: web.StreamResponse, message: Message) -> None:
        self.out = out
        self.message_id = message.id
        self.head: dict[str, Any] = {
            "id": f"chatcmpl-{message.id}",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": "",
        }
        self.learn(message)
        self.sent_events = 0

    def learn(self, message: Message) -> None:
        """Take the model and creation time from a read that has them (a reply read before
        its first chunk has neither)."""
        head = self.head
        if not head["model"] and message.agent_id:
            head["model"] = message.agent_id
        if not head["created"] and message.created_at:
            with contextlib.suppress(ValueError):
                created = datetime.fromisoformat(message.created_at.replace("Z", "+00:00"))
                head["created"] = int(created.timestamp())

    def _event(self, offset: int, chunk: dict[str, Any]) -> bytes:
        return event_id(self.message_id, offset) + b"data: " + orjson.dumps(chunk) + b"\n\n"

    async def content(self, offset: int, text: str) -> None:
        """``text`` starts at ``offset``; sent in events of at most ``REPLAY_EVENT_CHARS``."""
        frames = []
        for start in range(0, len(text), REPLAY_EVENT_CHARS):
            piece = text[start : start + REPLAY_EVENT_CHARS]
            delta = {"index": 0, "delta": {"content": piece}, "finish_reason": None}
            frames.append(
                self._event(offset + start + len(piece), {**self.head, "choices": [delta]})
            )
        self.sent_events += len(frames)
        await self.out.write(b"".join(frames))

    async def end(self, offset: int, message: Message) -> None:
        frames = []
        if message.tool_calls:
            calls = [
                {"index": i, **{k: v for k, v in call.items() if k in ("id", "type", "function")}}
                for i, call in enumerate(message.tool_calls)
            ]
            choice = {"index": 0, "delta": {"tool_calls": calls}, "finish_reason": None}
            frames.append(self._event(offset, {**self.head, "choices": [choice]}))
        if message.status == "complete":
            choice = {"index": 0, "delta": {}, "finish_reason": message.finish_reason}
            frames.append(self._event(offset, {**self.head, "choices": [choice]}))
        if message.usage:
            frames.append(self._event(offset, {**self.head, "choices": [], "usage": message.usage}))
        status = {"status": message.status, "message_id": message.id}
        reason = status_reason(message)
        if reason is not None:
            status["reason"] = reason
        frames.append(self._event(offset, {**self.head, "choices": [], "metadata": status}))
        frames.append(b"data: [DONE]\n\n")
        self.sent_events += len(frames)
        await self.out.write(b"".join(frames))


async def stream_reply(request: web.Request) -> web.StreamResponse:
    store, conversation_id, message_id = await _target(request)
    mid = str(message_id)
    after = _position(request, mid)
    message = await _read(store, conversation_id, message_id)
    app = request.app
    replies = app[LIVE_REPLIES]
    poll_s = app[CONFIG].resume_poll_ms / 1000
    live = replies.get(mid)
    source = "live" if live is not None else ("store" if message.status == "streaming" else "ended")
    app[METRICS].resumes.labels(source).inc()

    out = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Conversation-ID": conversation_id,
            MESSAGE_HEADER: mid,
        }
    )
    await out.prepare(request)
    replay = _Replay(out, message)
    position = after
    fresh: Message | None = message  # a read not yet used
    try:
        while True:
            live = replies.get(mid)
            if live is not None and fresh is None:
                text = live.read_from(position)
                if text:
                    await replay.content(position, text)
                    position += len(text)
                    continue
                if text == "":
                    await live.changed()
                    continue
            if fresh is None:
                fresh = await _read(store, conversation_id, message_id)
            message, fresh = fresh, None
            replay.learn(message)
            content = _text(message)
            progressed = len(content) > position
            if progressed:
                await replay.content(position, content[position:])
                position = len(content)
            if message.status != "streaming":
                await replay.end(position, message)
                break
            live = replies.get(mid)
            if live is not None and live.read_from(position) is not None:
                continue
            if not progressed:
                await asyncio.sleep(poll_s)
        await out.write_eof()
    except (ConnectionResetError, RuntimeError, OSError):
        pass  # the client left: nothing to store, nothing to undo
    return out


async def cancel_reply(request: web.Request) -> web.Response:
    from edge.history import json_response, message_object

    store, conversation_id, message_id = await _target(request)
    mid = str(message_id)
    message = await _read(store, conversation_id, message_id)
    app = request.app
    live = app[LIVE_REPLIES].get(mid)
    if live is not None:
        if live.cut("cancelled"):
            app[METRICS].cancels.labels("local").inc()
    elif message.status == "streaming":
        channel = app.get(CANCEL_CHANNEL)
        if channel is not None:
            await channel.request(mid)
            app[METRICS].cancels.labels("remote").inc()
    else:
        return json_response(message_object(message))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + CANCEL_WAIT_S
    poll_s = app[CONFIG].resume_poll_ms / 1000
    while loop.time() < deadline:
        live = app[LIVE_REPLIES].get(mid)
        if live is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(live.sealed(), deadline - loop.time())
            continue
        message = await _read(store, conversation_id, message_id)
        if message.status != "streaming":
            break
        await asyncio.sleep(poll_s)
    return json_response(message_object(message))
