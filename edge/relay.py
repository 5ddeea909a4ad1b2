"""``POST /v1/chat/completions``: the OpenAI-compatible relay, with persistence.

A request is one *turn* of a conversation, in one of four modes:

* persistence off → a pure proxy: nothing is stored, nothing is read;
* ``X-Conversation-ID`` (or body ``conversation_id``) → continue that conversation: its stored
  history is prepended upstream (without repeating what the client resent), and the new user
  and tool messages are stored before the upstream call;
* no id and no system message → a new conversation (titled from the first user message);
* a system (or developer) message and no id → stateless: relayed, nothing stored.

Stateful responses carry ``X-Conversation-ID``. A stored reply records the seq of the message it
answers (``reply_to``: the last user or tool message its turn stored), so replies to turns sent
at once, stored ``user, user, assistant, assistant``, still pair with their questions. Streams
are relayed in bundles (``Bundler``) while a ``ReplyRecorder`` stores the reply in the
background. Disk work never holds up the relay: ``[DONE]`` follows the upstream's last event at
once, flagged ``storage_failed`` if storing has failed by then (``STORAGE_FINAL_TIMEOUT_MS`` >
0 makes it wait that long for the seal instead, so the flag also covers the last write). The
next turn of the conversation and its history endpoints wait for the reply to be stored
(``PendingReplies``): read-your-writes.

A request that would start a conversation and gets no reply (the upstream is unreachable,
answers an error status or something that is not a chat completion, or the client leaves
before it answers) leaves nothing behind: the new conversation is removed again, so a client's
retries do not multiply it. A continued conversation keeps the new user message; a retry that
resends it is not stored twice (``chunkstore.Store.append_turn``).

A stored stream is resumable (``edge.resume``): the response names its reply
(``X-Message-ID``) and every event carries ``id: <message id>:<offset>``, the length of the
reply's content once the event is applied. The message id comes from the store, so the
recorder's writer is opened (one store write: 0.4-1.5 ms median on the file store, SQLite and
PostgreSQL) before the response starts. The relay tees each token to its ``LiveReply`` (what
followers of the reply on this instance read), and a cancel cuts the upstream through it.
With ``BACKGROUND_GENERATION`` on, a request sending ``X-Background-Generation: true`` runs in
a task of its own, and a client that leaves detaches the stream instead of ending it: the
reply is read to its end and stored (at most ``BACKGROUND_MAX_S`` longer).

What the upstream sends is bounded: ``UPSTREAM_READ_TIMEOUT_S`` of silence ends the stream (or
request) it belongs to, an event may hold ``UPSTREAM_MAX_EVENT_BYTES`` and a non-streamed body
``UPSTREAM_MAX_BODY_BYTES``; each failure ends that request alone, with an OpenAI-shaped error.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from chunkstore import AsyncStore, ConversationDeleted, ReplyStreaming, Store
from chunkstore import Turn as StoredTurn
from edge.bundling import Bundler
from edge.errors import ApiError, parse_json_object
from edge.keys import (
    CONFIG,
    METRICS,
    PENDING_REPLIES,
    STORE,
    UPSTREAM_SESSION,
    UPSTREAM_URL,
)
from edge.persist import SETTLE_TIMEOUT_S, ReplyRecorder, ToolCallAssembler
from edge.resume import LIVE_REPLIES, MESSAGE_HEADER, LiveReply
from edge.scope import owned_conversation, session_user
from edge.sse import DONE_EVENT, SSEDecoder, SSEEvent, SSEProtocolError, encode_data, encode_event
from edge.upstream import (
    UpstreamInvalid,
    connection_failure,
    forward_headers,
    read_bounded,
    response_headers,
    upstream_error_response,
)

__all__ = ["Turn", "chat_completions", "title_from"]

log = logging.getLogger("edge.relay")

CONVERSATION_HEADER = "X-Conversation-ID"
AGENT_HEADER = "X-Agent-ID"
# A request's opt-in to background generation (with BACKGROUND_GENERATION on): its reply is
# finished and stored even if the client disconnects. Never forwarded upstream.
BACKGROUND_HEADER = "X-Background-Generation"
_TRUE = frozenset({"1", "true", "yes", "on"})
_INSTRUCTION_ROLES = frozenset({"system", "developer"})
# How often a turn looks again at a reply another instance is streaming (see ``_continue``).
_REMOTE_REPLY_POLL_S = 0.05
# What a reply answers: the last of these its turn stored (``Turn.reply_to``).
_TITLE_CHARS = 80
_ELLIPSIS = "\u2026"


@dataclass
class Turn:
    """What one request does to its conversation."""

    conversation_id: str | None  # None: stateless or persistence off
    upstream_messages: list[Any]
    agent_id: str | None = None
    created: bool = False  # this request created the conversation
    answered: bool = False  # a reply (even a failed one) is being stored
    reply_to: int | None = None  # the seq of the message the reply answers


# -- conversation modes -----------------------------------------------------------------------


def _invalid(message: str) -> ApiError:
    return ApiError(400, message, code="invalid_messages", param="messages")


def _short_text(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= 256


def _validate_messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    """Check every message before anything is stored: a turn is stored whole or not at all."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _invalid("'messages' must be a non-empty array.")
    for message in messages:
        if not isinstance(message, dict) or not _short_text(message.get("role")):
            raise _invalid("Each message must be an object with a 'role'.")
        content = message.get("content")
        if content is not None and not isinstance(content, str):
            if not isinstance(content, list) or not all(map(_valid_part, content)):
                raise _invalid(
                    "Message 'content' must be a string or an array of parts "
                    "(objects whose 'text', if any, is a string)."
                )
        for key in ("name", "tool_call_id"):
            if message.get(key) is not None and not _short_text(message[key]):
                raise _invalid(f"Message '{key}' must be a string of 1 to 256 characters.")
        calls = message.get("tool_calls")
        if calls is not None and not (isinstance(calls, list) and all(map(_valid_call, calls))):
            raise _invalid(
                "Message 'tool_calls' must be an array of {id, type, function: {name, arguments}}."
            )
    return messages


def _valid_part(part: Any) -> bool:
    return isinstance(part, dict) and isinstance(part.get("text", ""), str)


def _agent_header(request: web.Request) -> str | None:
    """``X-Agent-ID``: printable text of at most 256 characters, else 400 (never stored)."""
    value = request.headers.get(AGENT_HEADER)
    if value is None or value == "":
        return None
    # aiohttp hands undecodable bytes over as lone surrogates, which no store can encode.
    if len(value) > 256 or not value.isprintable() or _has_surrogates(value):
        raise ApiError(
            400,
            f"{AGENT_HEADER} must be printable UTF-8 text of at most 256 characters.",
            code="invalid_agent_id",
        )
    return value


def _has_surrogates(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _valid_call(call: Any) -> bool:
    if not isinstance(call, dict):
        return False
    function = call.get("function")
    return (
        (call.get("id") is None or isinstance(call["id"], str))
        and isinstance(call.get("type", "function"), str)
        and isinstance(function, dict)
        and isinstance(function.get("name"), str)
        and isinstance(function.get("arguments", ""), str)
    )


def title_from(messages: list[dict[str, Any]]) -> str | None:
    """A title for a new conversation: its first user message's text, shortened."""
    for message in messages:
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):
                content = " ".join(
                    p.get("text", "")
                    for p in content
                    if isinstance(p, dict) and isinstance(p.get("text"), str)
                )
            if isinstance(content, str) and content.strip():
                return _shorten(" ".join(content.split()))
    return None


def _shorten(text: str) -> str:
    """``text`` in at most ``_TITLE_CHARS`` characters: cut at the last word boundary that
    fits, with an ellipsis when cut (mid-word only for a first word longer than that)."""
    if len(text) <= _TITLE_CHARS:
        return text
    limit = _TITLE_CHARS - len(_ELLIPSIS)
    # One character more than fits: a space there means the cut already ends a word.
    space = text.rfind(" ", 0, limit + 1)
    cut = text[:space] if space > 0 else text[:limit]
    return cut.rstrip(" ,;:-") + _ELLIPSIS


async def _plan_turn(
    request: web.Request, store: AsyncStore, body: dict[str, Any], wanted: str | None
) -> Turn:
    messages = _validate_messages(body)
    agent = _agent_header(request) or (
        body.get("model") if isinstance(body.get("model"), str) else None
    )
    if agent is not None:
        agent = agent[:256] or None  # an empty model name is no agent name
    if wanted is not None:
        user = await session_user(request, create=False)
        conversation_id = owned_conversation(user, wanted)
        instructions = []
        rest = messages
        while rest and rest[0].get("role") in _INSTRUCTION_ROLES:
            instructions.append(rest[0])
            rest = rest[1:]
        try:
            turn = await _continue(request, store, conversation_id, rest)
        except ConversationDeleted:
            raise ApiError(
                422,
                "This conversation is deleted; restore it to continue.",
                code="conversation_deleted",
            ) from None
        plan = Turn(conversation_id, instructions + turn.history + turn.new, agent)
        plan.reply_to = turn.answers
        return plan
    if any(m.get("role") in _INSTRUCTION_ROLES for m in messages):
        return Turn(None, messages, agent)
    user = await session_user(request, create=True)
    assert user is not None
    # The conversation and its first turn in one job on the store's pool: a request's writes
    # before its upstream call queue there behind every other request's, once per job.
    job = asyncio.ensure_future(
        store.run(_start_conversation, store.store, user, title_from(messages), messages)
    )
    try:
        conversation_id, answers, error = await asyncio.shield(job)
    except asyncio.CancelledError:
        # The client left: the job runs on regardless, and what it created goes once it ends.
        job.add_done_callback(lambda done: _roll_back_started(request, store, done))
        raise
    if error is not None:
        # The turn is stored whole or not at all: the new conversation goes with it.
        await asyncio.shield(_roll_back(request, store, conversation_id))
        raise error
    plan = Turn(conversation_id, messages, agent, created=True)
    plan.reply_to = answers
    return plan


def _start_conversation(
    store: Store, user: str, title: str | None, messages: list[dict[str, Any]]
) -> tuple[str, int | None, Exception | None]:
    """Create a conversation and store its first turn (on a store thread): its id, the seq
    the reply answers, and what storing the turn raised (the caller then removes it)."""
    conversation = store.create_conversation(user, title=title)
    try:
        return conversation.id, store.append_turn(conversation.id, messages).answers, None
    except Exception as exc:
        return conversation.id, None, exc


# Roll-backs of conversations whose request was cancelled while they were being created (the
# event loop keeps only weak references to tasks).
_ROLL_BACKS: set[asyncio.Task[None]] = set()


def _roll_back_started(
    request: web.Request,
    store: AsyncStore,
    job: asyncio.Future[tuple[str, int | None, Exception | None]],
) -> None:
    if job.cancelled() or job.exception() is not None:
        return  # nothing was created (or it failed before it could be)
    task = asyncio.ensure_future(_roll_back(request, store, job.result()[0]))
    _ROLL_BACKS.add(task)
    task.add_done_callback(_ROLL_BACKS.discard)


async def _continue(
    request: web.Request, store: AsyncStore, conversation_id: str, rest: list[dict[str, Any]]
) -> StoredTurn:
    """Store the new turn of a conversation once its previous reply is stored whole.

    This edge's own replies are awaited through ``PendingReplies``. A reply another edge
    instance (or process) of the same store is still streaming is only visible in the store:
    ``append_turn`` refuses while the last message is ``streaming`` and this polls, bounded by
    ``SETTLE_TIMEOUT_S`` in all; past it, the turn goes on with the reply as far as it got.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + SETTLE_TIMEOUT_S
    # The previous turn's reply may still be sealing here: its history must include it.
    settled = await request.app[PENDING_REPLIES].settle(conversation_id, SETTLE_TIMEOUT_S)
    while True:
        # One store operation: read the history, store what is new (``Store.append_turn``).
        try:
            return await store.append_turn(
                conversation_id, rest, refuse_while_streaming=settled and loop.time() < deadline
            )
        except ReplyStreaming:
            await asyncio.sleep(_REMOTE_REPLY_POLL_S)


# -- the handler --------------------------------------------------------------------------------


async def chat_completions(request: web.Request) -> web.StreamResponse:
    body = parse_json_object(await request.read())
    wanted = request.headers.get(CONVERSATION_HEADER) or body.get("conversation_id")
    body.pop("conversation_id", None)
    if wanted is not None and not isinstance(wanted, str):
        raise ApiError(400, "'conversation_id' must be a string.", code="invalid_id")

    store = request.app.get(STORE)
    if store is None:
        # Persistence off: a pure proxy. The edge's own fields are stripped, nothing is read.
        turn = Turn(None, body.get("messages", []))
    else:
        turn = await _plan_turn(request, store, body, wanted)
        body["messages"] = turn.upstream_messages

    if turn.conversation_id is not None and _background(request):
        # Background generation: the answer runs in a task of its own, so a handler cancelled
        # by the client's disconnect (servers with handler cancellation) does not stop it.
        task = asyncio.create_task(_answer(request, body, turn, store))
        _BACKGROUND_ANSWERS.add(task)
        task.add_done_callback(_BACKGROUND_ANSWERS.discard)
        return await asyncio.shield(task)
    return await _answer(request, body, turn, store)


# Answers running in the background (the event loop keeps only weak references to tasks).
_BACKGROUND_ANSWERS: set[asyncio.Task[web.StreamResponse]] = set()


async def _answer(
    request: web.Request, body: dict[str, Any], turn: Turn, store: AsyncStore | None
) -> web.StreamResponse:
    try:
        return await _exchange(request, body, turn, store)
    finally:
        if turn.created and not turn.answered:
            assert store is not None and turn.conversation_id is not None
            # Shielded: a client that left must not leave the conversation half removed.
            await asyncio.shield(_roll_back(request, store, turn.conversation_id))


async def _roll_back(request: web.Request, store: AsyncStore, conversation_id: str) -> None:
    """Remove a conversation this request created and that got no reply."""
    try:
        await store.delete_conversation(conversation_id, hard=True)
    except Exception as exc:  # the answer to the client matters more; say what was left
        request.app[METRICS].storage_failures.inc()
        log.error("removing unanswered conversation %s failed: %s", conversation_id, exc)


async def _exchange(
    request: web.Request, body: dict[str, Any], turn: Turn, store: AsyncStore | None
) -> web.StreamResponse:
    config = request.app[CONFIG]
    headers = forward_headers(request.headers, config)
    headers.popall(BACKGROUND_HEADER, None)
    headers["Content-Type"] = "application/json"
    try:
        upstream = await request.app[UPSTREAM_SESSION].post(
            f"{request.app[UPSTREAM_URL]}/chat/completions",
            data=orjson.dumps(body),
            headers=headers,
        )
    except (aiohttp.ClientConnectionError, TimeoutError) as exc:
        raise connection_failure(exc, config.upstream_read_timeout_s) from None

    extra = {CONVERSATION_HEADER: turn.conversation_id} if turn.conversation_id else {}
    async with upstream:
        if upstream.status != 200:
            # Nothing was stored for this turn's reply: a conversation this request created
            # is removed (above), so the error carries its id only for a continued one.
            if turn.created:
                extra = {}
            return await upstream_error_response(upstream, extra)
        is_sse = upstream.content_type == "text/event-stream"
        if is_sse:
            return await _relay_stream(request, upstream, turn, store, extra)
        return await _relay_json(request, upstream, turn, store, extra)


async def _relay_json(
    request: web.Request,
    upstream: aiohttp.ClientResponse,
    turn: Turn,
    store: AsyncStore | None,
    extra: dict[str, str],
) -> web.Response:
    config = request.app[CONFIG]
    try:
        raw = await read_bounded(upstream, config.upstream_max_body_bytes)
    except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, TimeoutError) as exc:
        raise connection_failure(exc, config.upstream_read_timeout_s) from None
    if store is None or turn.conversation_id is None:
        passthrough = response_headers(upstream.headers)
        passthrough.update(extra)
        return web.Response(status=upstream.status, body=raw, headers=passthrough)
    # A stored turn needs a reply to store: anything but a chat completion is the upstream's
    # failure (502), and the turn is left as if the call had not happened.
    completion, choice, message = _parse_completion(raw)
    turn.answered = True
    try:
        await store.append_message(
            turn.conversation_id,
            "assistant",
            message.get("content"),
            agent_id=turn.agent_id,
            tool_calls=message.get("tool_calls") or None,
            finish_reason=choice.get("finish_reason"),
            usage=completion.get("usage"),
            reply_to=turn.reply_to,
        )
    except Exception as exc:  # whatever storing raised, the client still gets its reply
        request.app[METRICS].storage_failures.inc()
        log.error(
            "storing reply in %s failed: %s: %s", turn.conversation_id, type(exc).__name__, exc
        )
        completion["metadata"] = {"storage_failed": True}
        raw = orjson.dumps(completion)
    return web.Response(body=raw, content_type="application/json", headers=extra)


def _parse_completion(raw: bytes) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """A non-streamed chat completion's (completion, first choice, its message), checked as far
    as storing it needs; ``UpstreamInvalid`` otherwise."""
    try:
        completion = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise UpstreamInvalid("the body is not JSON") from None
    choices = completion.get("choices") if isinstance(completion, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise UpstreamInvalid("no 'choices' array")
    choice = choices[0]
    message = choice.get("message")
    if not isinstance(message, dict):
        raise UpstreamInvalid("'choices[0].message' is not an object")
    content = message.get("content")
    if not (
        content is None
        or isinstance(content, str)
        or (isinstance(content, list) and all(map(_valid_part, content)))
    ):
        raise UpstreamInvalid("'message.content' is neither text nor an array of parts")
    calls = message.get("tool_calls")
    if calls is not None and not (isinstance(calls, list) and all(map(_valid_call, calls))):
        raise UpstreamInvalid("'message.tool_calls' is not an array of tool calls")
    reason = choice.get("finish_reason")
    if reason is not None and not (isinstance(reason, str) and 0 < len(reason) <= 256):
        raise UpstreamInvalid("'finish_reason' is not a short string")
    if completion.get("usage") is not None and not isinstance(completion["usage"], dict):
        raise UpstreamInvalid("'usage' is not an object")
    return completion, choice, message


class _ClientGone(Exception):
    """The client closed its connection."""


class _UpstreamBroke(Exception):
    """The upstream stream failed or ended before ``[DONE]``."""

    def __init__(self, message: str, code: str = "upstream_stream_error") -> None:
        super().__init__(message)
        self.code = code


async def _relay_stream(
    request: web.Request,
    upstream: aiohttp.ClientResponse,
    turn: Turn,
    store: AsyncStore | None,
    extra: dict[str, str],
) -> web.StreamResponse:
    config = request.app[CONFIG]
    metrics = request.app[METRICS]
    out = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", **extra}
    )
    recorder: ReplyRecorder | None = None
    live: LiveReply | None = None
    if store is not None and turn.conversation_id is not None:
        live = LiveReply(turn.conversation_id)
        recorder = ReplyRecorder(
            store,
            turn.conversation_id,
            agent_id=turn.agent_id,
            reply_to=turn.reply_to,
            chunk_tokens=config.chunk_tokens,
            flush_ms=config.history_batch_flush_ms,
            metrics=metrics,
            live=live,
        )
        ended = recorder
        request.app[PENDING_REPLIES].track(turn.conversation_id, recorder.task, lambda: ended.ended)
        turn.answered = True
    relay = _StreamRelay(
        out,
        Bundler(config.stream_bundle_tokens),
        recorder,
        metrics,
        background_max_s=config.background_max_s if _background(request) and recorder else None,
    )
    relay.upstream = upstream
    metrics.active_streams.inc()
    outcome = "error"
    try:
        if recorder is not None:
            assert live is not None
            # Every event names the message (its SSE id) and so does the response: the
            # writer's open (one store write) comes before the first byte. A store that cannot
            # open it leaves the stream without ids, flagged storage_failed at its end.
            try:
                message_id = await asyncio.wait_for(
                    asyncio.shield(recorder.opened), SETTLE_TIMEOUT_S
                )
            except TimeoutError:
                message_id = None
            if message_id is not None:
                live.message_id = message_id
                out.headers[MESSAGE_HEADER] = message_id
                replies = request.app[LIVE_REPLIES]
                replies.add(live)
                registered = live
                recorder.task.add_done_callback(lambda _task: replies.remove(registered))
                relay.follow(live)
        await relay.prepare(request)
        done = await relay.pump(
            upstream,
            config.stream_flush_ms / 1000,
            read_timeout_s=config.upstream_read_timeout_s,
            max_event_bytes=config.upstream_max_event_bytes,
        )
        if live is not None and relay.cut_reason is None:
            live.on_cut(None)  # the upstream is done: nothing left to cut
        await relay.send(relay.bundler.flush())
        if not done:
            raise _UpstreamBroke("the upstream stream ended before [DONE]")
        if recorder is not None:
            recorder.finish(relay.finish_reason, relay.usage, relay.tool_calls.calls())
            if not await _stored(recorder, config.storage_final_timeout_ms):
                await relay.send([relay.meta_chunk({"storage_failed": True})])
        await relay.write(DONE_EVENT)
        await relay.write_eof()
        outcome = "complete"
    except _ClientGone:
        outcome = "client_abort"
        if recorder is not None:
            recorder.fail(
                {"type": "client_disconnected", "message": "the client closed the stream"}
            )
    except _UpstreamBroke as exc:
        if relay.cut_reason is not None:
            outcome = "cancelled"
            await _end_cut(relay, recorder)
        else:
            outcome = "upstream_error"
            await _end_broken(relay, recorder, exc, config.storage_final_timeout_ms)
    finally:
        relay.close()
        metrics.active_streams.dec()
        metrics.streams.labels(outcome).inc()
        if relay.detached:
            metrics.background_replies.labels(outcome).inc()
        if recorder is not None and not recorder.ended:
            # Cancelled: by a client that went away (servers with handler cancellation) or by
            # shutdown. Either way the partial reply is sealed as an error; shutdown waits for
            # the recorder task.
            transport = request.transport
            if transport is None or transport.is_closing():
                recorder.fail(
                    {"type": "client_disconnected", "message": "the client closed the stream"}
                )
            else:
                recorder.fail(
                    {
                        "type": "cancelled",
                        "reason": "shutdown",
                        "message": "the edge stopped before the stream ended",
                    }
                )
    if not out.prepared:
        raise ConnectionResetError("the client left before the stream started")
    return out


_CUT_MESSAGES = {
    "cancelled": "stopped on request (POST .../cancel)",
    "background_timeout": "the reply went on for BACKGROUND_MAX_S after its client left",
    "shutdown": "the edge stopped while the reply went on in the background",
}


def _background(request: web.Request) -> bool:
    """Whether this request's reply goes on when its client leaves: BACKGROUND_GENERATION on
    and the request opted in."""
    return request.app[CONFIG].background_generation and (
        request.headers.get(BACKGROUND_HEADER, "").strip().lower() in _TRUE
    )


async def _end_cut(relay: _StreamRelay, recorder: ReplyRecorder | None) -> None:
    """A reply stopped on purpose: stored ``error`` with its partial text and the reason; a
    client still there gets what was pending, a status chunk and ``[DONE]``."""
    reason = relay.cut_reason or "cancelled"
    if recorder is not None:
        recorder.fail(
            {"type": "cancelled", "reason": reason, "message": _CUT_MESSAGES.get(reason, reason)}
        )
    try:
        await relay.send(relay.bundler.flush())
        await relay.send([relay.meta_chunk({"status": "error", "reason": reason})])
        await relay.write(DONE_EVENT)
        await relay.write_eof()
    except _ClientGone:
        pass


async def _end_broken(
    relay: _StreamRelay,
    recorder: ReplyRecorder | None,
    exc: _UpstreamBroke,
    final_timeout_ms: int,
) -> None:
    if recorder is not None:
        recorder.fail({"type": "upstream_error", "code": exc.code, "message": str(exc)})
        await _stored(recorder, final_timeout_ms)
    try:
        await relay.send(relay.bundler.flush())  # what arrived before the break is valid
        await relay.write(
            relay.id_line()
            + encode_data(
                orjson.dumps(
                    {
                        "error": {
                            "message": f"Upstream stream failed: {exc}",
                            "type": "upstream_error",
                            "param": None,
                            "code": exc.code,
                        }
                    }
                )
            )
        )
        await relay.write_eof()
    except _ClientGone:
        pass


async def _stored(recorder: ReplyRecorder, timeout_ms: int) -> bool:
    """Whether the reply is stored as far as the end of the stream can tell: with no timeout,
    "nothing has failed so far" (the last chunk and the seal may still be in flight); with
    one, the seal itself, waited for at most that long."""
    if timeout_ms == 0:
        return not recorder.failed
    return await recorder.wait(timeout_ms / 1000)


class _StreamRelay:
    """State of one relayed stream: bundling, the tee to storage and to followers (the live
    reply), the client writes with their SSE ids, and how the stream is cut on purpose."""

    def __init__(
        self,
        out: web.StreamResponse,
        bundler: Bundler,
        recorder: ReplyRecorder | None,
        metrics: Any,
        *,
        background_max_s: int | None = None,
    ) -> None:
        self.out = out
        self.bundler = bundler
        self.recorder = recorder
        self.metrics = metrics
        self.live: LiveReply | None = None
        self.tool_calls = ToolCallAssembler()
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None
        self.last_chunk: dict[str, Any] = {}
        # ``id: <message id>:`` of every event, and the offset it ends with: the length of
        # the content (of choice 0, as stored) sent so far.
        self._id_prefix: bytes | None = None
        self.offset = 0
        # Background generation: a client that leaves detaches the stream instead of ending
        # it; the reply goes on (for at most this long) and is stored.
        self._background_max_s = background_max_s
        self.detached = False
        self.cut_reason: str | None = None
        self.upstream: aiohttp.ClientResponse | None = None  # what ``cut`` closes
        self._timer: asyncio.TimerHandle | None = None

    def follow(self, live: LiveReply) -> None:
        """Tee the content to ``live`` (followers, resume), give every event its SSE id, and
        let ``live`` cut the stream (cancel)."""
        self.live = live
        self._id_prefix = f"id: {live.message_id}:".encode()
        live.on_cut(self.cut)

    async def prepare(self, request: web.Request) -> None:
        if self.detached:
            return
        try:
            await self.out.prepare(request)
        except (ConnectionResetError, aiohttp.ClientConnectionResetError, RuntimeError) as exc:
            if self._background_max_s is None:
                raise _ClientGone(str(exc)) from None
            self._detach()

    async def write_eof(self) -> None:
        if self.detached:
            return
        try:
            await self.out.write_eof()
        except (ConnectionResetError, aiohttp.ClientConnectionResetError, RuntimeError) as exc:
            if self._background_max_s is None:
                raise _ClientGone(str(exc)) from None

    def id_line(self) -> bytes:
        if self._id_prefix is None:
            return b""
        return self._id_prefix + str(self.offset).encode() + b"\n"

    async def write(self, data: bytes) -> None:
        if self.detached:
            return
        try:
            await self.out.write(data)
        except (ConnectionResetError, aiohttp.ClientConnectionResetError, RuntimeError) as exc:
            if self._background_max_s is None:
                raise _ClientGone(str(exc)) from None
            self._detach()

    def _detach(self) -> None:
        self.detached = True
        if self.live is not None:
            self.live.detached = True
        assert self._background_max_s is not None
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self._background_max_s, self.cut, "background_timeout")
        log.info("client left; the reply goes on in the background")

    def cut(self, reason: str | None) -> None:
        """Stop reading the upstream: the pump ends, and the handler stores the reply as cut
        for ``reason`` (``cancelled``, ``background_timeout``)."""
        if self.cut_reason is not None or self.upstream is None:
            return
        self.cut_reason = reason or "cancelled"
        self.upstream.close()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    async def send(self, chunks: list[dict[str, Any]]) -> None:
        if not chunks:
            return
        prefix = self._id_prefix
        if prefix is None:
            await self.write(b"".join(encode_data(orjson.dumps(c)) for c in chunks))
        else:
            frames = []
            for chunk in chunks:
                self.offset += _content_length(chunk)
                frames.append(
                    prefix + str(self.offset).encode() + b"\n" + encode_data(orjson.dumps(chunk))
                )
            await self.write(b"".join(frames))
        self.metrics.stream_events.inc(len(chunks))

    async def pump(
        self,
        upstream: aiohttp.ClientResponse,
        flush_s: float,
        *,
        read_timeout_s: int,
        max_event_bytes: int,
    ) -> bool:
        """Relay until ``[DONE]`` (True) or the end of the upstream body (False).

        Two clocks run here and must not be confused: the flush timer (``flush_s``, ours: a
        pending bundle goes out) and the upstream's read timeout (aiohttp's ``sock_read``,
        ``UPSTREAM_READ_TIMEOUT_S``: the upstream has been silent too long, and the stream
        ends). Both surface as ``TimeoutError``; only the expiry of our own timeout scope is
        the flush timer. Any other is the upstream's, and final: aiohttp keeps raising it.
        """
        decoder = SSEDecoder(max_event_bytes=max_event_bytes)
        self.upstream = upstream
        loop = asyncio.get_running_loop()
        deadline: float | None = None
        while True:
            timeout = None if deadline is None else max(0.0, deadline - loop.time())
            try:
                async with asyncio.timeout(timeout) as flush_timer:
                    data = await upstream.content.readany()
            except TimeoutError:
                if not flush_timer.expired():
                    raise _UpstreamBroke(
                        f"the upstream sent nothing for {read_timeout_s} s", "upstream_timeout"
                    ) from None
                # STREAM_FLUSH_MS passed with a bundle pending: a slow stream must not stall.
                await self.send(self.bundler.flush())
                deadline = None
                continue
            except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as exc:
                raise _UpstreamBroke(str(exc) or type(exc).__name__) from None
            if not data:
                return False
            try:
                events = decoder.feed(data)
            except SSEProtocolError as exc:
                for event in exc.events:  # complete and valid: relay them before giving up
                    if event.data == "[DONE]":
                        return True
                    await self._relay_event(event.data)
                raise _UpstreamBroke(str(exc), "upstream_event_too_large") from None
            for event in events:
                if event.data == "[DONE]":
                    return True
                await self._relay_event(event.data)
            if self.bundler.pending_tokens:
                if deadline is None:
                    deadline = loop.time() + flush_s
            else:
                deadline = None

    async def _relay_event(self, data: str) -> None:
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            chunk = None
        if not isinstance(chunk, dict):
            # Not a chunk we understand: pass it through untouched, in order (framed again
            # line by line: the data of a multi-line event holds "\n"s).
            await self.send(self.bundler.flush())
            await self.write(self.id_line() + encode_event(SSEEvent(data)))
            return
        if "error" in chunk and "choices" not in chunk:
            await self.send(self.bundler.flush())
            await self.write(self.id_line() + encode_data(orjson.dumps(chunk)))
            raise _UpstreamBroke(str(chunk.get("error"))[:200])
        self._tee(chunk)
        await self.send(self.bundler.feed(chunk))

    def _tee(self, chunk: dict[str, Any]) -> None:
        self.last_chunk = chunk
        if chunk.get("usage") is not None:
            self.usage = chunk["usage"]
        choices = chunk.get("choices")
        if not isinstance(choices, list):
            return
        for choice in choices:
            # Only the first choice is stored (n > 1 would be several replies).
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            if isinstance(delta, dict):
                content = delta.get("content")
                if isinstance(content, str) and content:
                    self.metrics.stream_tokens.inc()
                    if self.recorder is not None:
                        self.recorder.token(content)
                    if self.live is not None:
                        self.live.append(content)
                if delta.get("tool_calls"):
                    self.tool_calls.feed(delta["tool_calls"])
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]

    def meta_chunk(self, metadata: dict[str, Any]) -> dict[str, Any]:
        """A chunk with no choices that tells the client something about the stream:
        ``{"storage_failed": true}``, or how a stream cut on purpose ended."""
        last = self.last_chunk
        return {
            "id": last.get("id", "chatcmpl-edge"),
            "object": "chat.completion.chunk",
            "created": last.get("created", 0),
            "model": last.get("model", ""),
            "choices": [],
            "metadata": metadata,
        }


def _content_length(chunk: dict[str, Any]) -> int:
    """How much stored content a chunk carries: choice 0's delta text (the rule of ``_tee``)."""
    choices = chunk.get("choices")
    if not isinstance(choices, list):
        return 0
    length = 0
    for choice in choices:
        if isinstance(choice, dict) and choice.get("index", 0) == 0:
            delta = choice.get("delta")
            if isinstance(delta, dict):
                content = delta.get("content")
                if isinstance(content, str):
                    length += len(content)
    return length
