"""The history API: conversations and their rebuilt messages, scoped to the session's user.

Served under ``/v1/conversations`` and, as an alias, ``/api/conversations``. Shapes follow
OpenAI's Conversations API where they overlap (``object``, ``id``, ``created_at`` in unix
seconds, ``metadata``, list envelopes with ``data``/``has_more``) so existing clients parse
them; the OpenAI SDK updates with ``POST``, so ``POST /{id}`` is ``PATCH /{id}``.

The contract:

* Every endpoint answers 501 while persistence is off, before reading anything, and writes
  nothing. Only creating a conversation creates the session's user; reads never do (a session
  with no user lists nothing and finds nothing).
* A conversation id is checked against the session's user before any file is touched
  (``scope.owned_conversation``): malformed → 400, anyone else's or unknown → 404, the same 404.
* Query values are parsed strictly (plain ASCII digits, bounded): anything else is a 400 naming
  the parameter, never a 500.
* Conversation pages are newest first with an opaque cursor (``after`` = the previous page's
  ``last_id``): ids only grow, so conversations created between two pages land before page 1
  and never shift later pages. Message pages are by ``seq`` (``after_seq`` = the previous
  page's ``last_seq``), stable and gap-free because sequence numbers are.
* Reads log one structured ``rebuild`` event and observe ``edge_rebuild_seconds``; neither ever
  carries message content.
* OpenAI's Conversations API works on the same paths: ``POST /v1/conversations`` takes up to
  20 initial ``items``, and ``/{id}/items[/{item_id}]`` serves ``client.conversations.items``
  (the mapping between items and stored messages is ``edge.conversations``).
* ``GET /v1/conversations?q=...`` searches instead of listing (``Store.search``: every word of
  ``q`` starts a word of the title or of one finished message; nothing in ``q`` is syntax):
  the same envelope, title matches newest first then message matches newest first, each
  conversation object with a ``match`` (``snippet``, and the matching message's ``seq`` and
  ``message_id``: its latest matching message; null for a title).
  ``after`` (a previous page's ``last_id``) continues after that conversation in the ranking,
  ``offset`` skips that many; a ``q`` without words or longer than 1000 characters is a 400.
  A reply is found once it is finished: its stream ended and it is stored.
* A soft-deleted conversation answers 404 to ``GET /{id}`` and to an update, as OpenAI's
  deleted ones do, unless ``include_deleted=1`` is given; the listing (``include_deleted=1``),
  ``DELETE`` (idempotent) and ``POST /{id}/restore`` still reach it. Its items answer 404.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import orjson
from aiohttp import web

from chunkstore import (
    AsyncStore,
    Conversation,
    ConversationDeleted,
    ConversationId,
    InvalidArgument,
    InvalidId,
    Message,
    MessageId,
    SearchHit,
)

# The store's own query rule, so that a session with no user yet gets the same 400 for a
# query without words as one with conversations.
from chunkstore._search import search_terms
from edge.conversations import (
    append_items,
    find_message,
    item_not_found,
    item_objects,
    items_body,
    items_to_messages,
    list_items,
    parse_after,
    parse_include,
    parse_item_id,
    parse_limit,
    parse_order,
)
from edge.errors import ApiError, conversation_not_found, parse_json_object
from edge.export import export_conversations
from edge.keys import METRICS, PENDING_REPLIES
from edge.logs import elapsed_ms, log_event
from edge.persist import SETTLE_TIMEOUT_S
from edge.relay import title_from
from edge.resume import cancel_reply, resume_url, status_reason, stream_reply
from edge.scope import owned_conversation, require_store, session_user

__all__ = [
    "DEFAULT_PAGE",
    "FIRST_MESSAGES_PAGE",
    "MAX_PAGE",
    "PREFIXES",
    "add_history_routes",
    "conversation_object",
    "json_response",
    "message_object",
]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

PREFIXES = ("/v1/conversations", "/api/conversations")
DEFAULT_PAGE = 20
MAX_PAGE = 100
FIRST_MESSAGES_PAGE = 20
# Bounds that keep hostile numbers cheap: no store holds more conversations than MAX_OFFSET
# worth paging through by offset, and sequence numbers have at most 18 digits (see ids).
MAX_OFFSET = 1_000_000
MAX_SEQ = 10**18 - 1

# The same limits chunkstore enforces, checked here too so a 400 can name the field.
MAX_TITLE_CHARS = 512
MAX_METADATA_PAIRS = 16
MAX_METADATA_KEY = 64
MAX_METADATA_VALUE = 512
_FIELDS = frozenset({"title", "metadata", "pinned"})
_DIGITS = re.compile(r"[0-9]{1,19}")
_TRUE = frozenset({"1", "true"})
_FALSE = frozenset({"0", "false"})
# The store pages through at most this many conversations per call while skipping an offset.
_SKIP_BATCH = 1000


def add_history_routes(app: web.Application) -> None:
    for prefix in PREFIXES:
        item = f"{prefix}/{{conversation_id}}"
        routes: dict[str, dict[str, Handler]] = {
            prefix: {"GET": list_conversations, "POST": create_conversation},
            # Before the item: "export" is not a conversation id (routes match in order).
            f"{prefix}/export": {"GET": export_conversations},
            item: {
                "GET": get_conversation,
                "PATCH": update_conversation,
                "POST": update_conversation,
                "DELETE": delete_conversation,
            },
            f"{item}/messages": {"GET": list_messages},
            # Resume and cancel (edge.resume): never wait for a reply being stored.
            f"{item}/messages/{{message_id}}/stream": {"GET": stream_reply},
            f"{item}/messages/{{message_id}}/cancel": {"POST": cancel_reply},
            f"{item}/restore": {"POST": restore_conversation},
            f"{item}/items": {"GET": list_conversation_items, "POST": create_items},
            f"{item}/items/{{item_id}}": {"GET": get_item, "DELETE": delete_item},
        }
        for path, handlers in routes.items():
            resource = app.router.add_resource(path)
            for method, handler in handlers.items():
                resource.add_route(method, handler)
                if method == "GET":
                    resource.add_route("HEAD", handler)  # as router.add_get() does
            # Any other method is a 405 here: without this route it would fall through to the
            # ``/v1/{tail}`` relay and reach the upstream.
            resource.add_route("*", _method_not_allowed)


# -- responses ----------------------------------------------------------------------------------


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(data), content_type="application/json")


def _unix(timestamp: str | None) -> int | None:
    """chunkstore's ISO 8601 UTC text as unix seconds (what OpenAI clients expect)."""
    if timestamp is None:
        return None
    try:
        # fromisoformat() only accepts a trailing "Z" from Python 3.11 on.
        return int(datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp())
    except ValueError:
        return None


def conversation_object(conversation: Conversation) -> dict[str, Any]:
    return {
        "id": conversation.id,
        "object": "conversation",
        "title": conversation.title,
        "created_at": _unix(conversation.created_at) or 0,
        "updated_at": _unix(conversation.updated_at) or 0,
        "metadata": dict(conversation.metadata),
        "pinned": conversation.pinned,
        "deleted_at": _unix(conversation.deleted_at),
        # Like a message's: its conversation.json was unreadable, so title, metadata and pin
        # are lost and the times come from its messages (the list and messages still work).
        "damaged": conversation.damaged,
    }


def message_object(message: Message) -> dict[str, Any]:
    return {
        "id": message.id,
        "object": "conversation.message",
        "seq": message.seq,
        "role": message.role,
        "content": message.content,
        "name": message.name,
        "agent_id": message.agent_id,
        "status": message.status,
        "finish_reason": message.finish_reason,
        "tool_calls": message.tool_calls,
        "tool_call_id": message.tool_call_id,
        "usage": message.usage,
        "created_at": _unix(message.created_at) or 0,
        "damaged": message.damaged,
        "reply_to": message.reply_to,
        # A reply still streaming: where to follow it (after the content above), wherever it
        # is produced. An error: why it ended (``cancelled`` when stopped on purpose).
        "resume_url": resume_url(message),
        "status_reason": status_reason(message),
    }


def _deleted_object(conversation_id: str) -> dict[str, Any]:
    return {"id": conversation_id, "object": "conversation.deleted", "deleted": True}


async def _method_not_allowed(request: web.Request) -> web.Response:
    resource = request.match_info.route.resource
    allowed = sorted({r.method for r in resource or () if r.method != "*"})
    # The error middleware answers it as an OpenAI-shaped 405 and keeps the Allow header.
    raise web.HTTPMethodNotAllowed(request.method, allowed)


# -- request parsing ----------------------------------------------------------------------------


def _bad(param: str, message: str) -> ApiError:
    return ApiError(400, message, code="invalid_value", param=param)


def _int_param(request: web.Request, name: str, default: int, minimum: int, maximum: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    if not _DIGITS.fullmatch(raw) or not minimum <= int(raw) <= maximum:
        raise _bad(name, f"'{name}' must be an integer from {minimum} to {maximum}.")
    return int(raw)


def _bool_param(request: web.Request, name: str) -> bool:
    raw = request.query.get(name)
    if raw is None or raw.lower() in _FALSE:
        return False
    if raw.lower() in _TRUE:
        return True
    raise _bad(name, f"'{name}' must be true, false, 1 or 0.")


async def _json_body(request: web.Request) -> dict[str, Any] | None:
    """The request's JSON object, or None for an empty body."""
    raw = await request.read()
    return parse_json_object(raw) if raw.strip() else None


def _conversation_fields(body: dict[str, Any]) -> dict[str, Any]:
    """Validated ``title`` / ``metadata`` / ``pinned`` from a create or update body."""
    unknown = sorted(set(body) - _FIELDS)
    if unknown:
        raise _bad(unknown[0], f"Unknown field '{unknown[0]}'; expected title, metadata, pinned.")
    fields: dict[str, Any] = {}
    if "title" in body:
        title = body["title"]
        if title is not None and (not isinstance(title, str) or len(title) > MAX_TITLE_CHARS):
            raise _bad("title", f"'title' must be a string of at most {MAX_TITLE_CHARS} chars.")
        fields["title"] = title
    if "pinned" in body:
        if not isinstance(body["pinned"], bool):
            raise _bad("pinned", "'pinned' must be a boolean.")
        fields["pinned"] = body["pinned"]
    if "metadata" in body:
        fields["metadata"] = _metadata(body["metadata"])
    return fields


def _metadata(value: Any) -> dict[str, str]:
    if value is None:  # OpenAI clients send null for "no metadata"
        return {}
    if (
        not isinstance(value, dict)
        or len(value) > MAX_METADATA_PAIRS
        or not all(
            isinstance(v, str) and len(k) <= MAX_METADATA_KEY and len(v) <= MAX_METADATA_VALUE
            for k, v in value.items()
        )
    ):
        raise _bad(
            "metadata",
            f"'metadata' must be an object of at most {MAX_METADATA_PAIRS} string values, keys "
            f"of at most {MAX_METADATA_KEY} and values of at most {MAX_METADATA_VALUE} characters.",
        )
    return value


async def _owned(request: web.Request) -> tuple[AsyncStore, str]:
    """The store and the session's conversation named in the path, once no reply of it whose
    stream ended is still being stored by this edge: what a stream relayed is what its
    history shows (a reply still streaming shows as ``streaming``, with its ``resume_url``)."""
    store = require_store(request)
    user = await session_user(request, create=False)
    conversation_id = owned_conversation(user, request.match_info["conversation_id"])
    # Replies whose stream ended are waited for; one still streaming reads ``streaming``.
    await request.app[PENDING_REPLIES].settle(conversation_id, SETTLE_TIMEOUT_S, streaming=False)
    return store, conversation_id


# -- conversations ------------------------------------------------------------------------------


async def create_conversation(request: web.Request) -> web.Response:
    store = require_store(request)
    body = await _json_body(request) or {}
    # OpenAI's initial items (up to 20), all validated before anything is created.
    raw_items = body.pop("items", None)
    messages = [] if raw_items is None else items_to_messages(raw_items, allow_empty=True)
    fields = _conversation_fields(body)
    if messages and "title" not in fields:
        fields["title"] = title_from(messages)
    user = await session_user(request, create=True)
    assert user is not None
    conversation = await store.create_conversation(user, **fields)
    if messages:
        try:
            await append_items(store, conversation.id, messages)
        except BaseException:
            # Created whole or not at all: the conversation goes with its items.
            await asyncio.shield(store.delete_conversation(conversation.id, hard=True))
            raise
    return json_response(conversation_object(conversation), status=201)


async def list_conversations(request: web.Request) -> web.Response:
    store = require_store(request)
    limit = _int_param(request, "limit", DEFAULT_PAGE, 1, MAX_PAGE)
    offset = _int_param(request, "offset", 0, 0, MAX_OFFSET)
    include_deleted = _bool_param(request, "include_deleted")
    after = request.query.get("after")
    if after is not None and "offset" in request.query:
        raise _bad("offset", "Use either 'after' or 'offset', not both.")
    user = await session_user(request, create=False)
    query = request.query.get("q")
    if query is not None:
        return await _search(request, store, user, query, limit, offset, after, include_deleted)
    cursor = None if after is None else _cursor(user, after)
    data: list[dict[str, Any]] = []
    has_more = False
    if user is not None:
        exhausted = False
        if offset:
            cursor, exhausted = await _skip(store, user, include_deleted, offset)
        if not exhausted:
            page = await store.list_conversations(
                user, limit=limit, cursor=cursor, include_deleted=include_deleted
            )
            data = [conversation_object(c) for c in page.items]
            has_more = page.has_more
    return _list_response(data, has_more)


def _list_response(data: list[dict[str, Any]], has_more: bool) -> web.Response:
    """A page of conversation objects in OpenAI's list envelope."""
    return json_response(
        {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": has_more,
        }
    )


async def _search(
    request: web.Request,
    store: AsyncStore,
    user: str | None,
    query: str,
    limit: int,
    offset: int,
    after: str | None,
    include_deleted: bool,
) -> web.Response:
    """``GET /v1/conversations?q=``: a page of the session's conversations that match."""
    try:
        search_terms(query)  # a 400 naming q, before anything is read
    except InvalidArgument as exc:
        raise _bad("q", f"'q': {exc}.") from None
    data: list[dict[str, Any]] = []
    has_more = False
    if after is not None:
        after = _cursor(user, after)
    if user is not None:
        # Read-your-writes: a reply whose stream ended here is found, even while it is still
        # being sealed (``[DONE]`` does not wait for the disk).
        await request.app[PENDING_REPLIES].settle_user(user, SETTLE_TIMEOUT_S)
        position: int | None = offset
        if after is not None:
            position = await _search_position(store, user, query, include_deleted, after)
        if position is not None:
            page = await store.search(
                user,
                query,
                limit=limit,
                cursor=str(position) if position else None,
                include_deleted=include_deleted,
            )
            data = [_hit_object(hit) for hit in page.items]
            has_more = page.has_more
    return _list_response(data, has_more)


async def _search_position(
    store: AsyncStore, user: str, query: str, include_deleted: bool, after: str
) -> int | None:
    """Where the results continue after conversation ``after`` (the ranking read again from
    the top, a page of ``MAX_PAGE`` at a time); None when it is no longer among them (the
    matches changed between two pages: the search has nothing more to add)."""
    position = 0
    cursor: str | None = None
    while True:
        page = await store.search(
            user, query, limit=MAX_PAGE, cursor=cursor, include_deleted=include_deleted
        )
        for index, hit in enumerate(page.items):
            if hit.conversation.id == after:
                return position + index + 1
        position += len(page.items)
        cursor = page.next_cursor
        if cursor is None:
            return None


def _hit_object(hit: SearchHit) -> dict[str, Any]:
    conversation = hit.conversation
    message_id = None
    if hit.seq is not None:
        conv = ConversationId.parse(conversation.id)
        message_id = str(MessageId(conv.user, conv.n, hit.seq))
    return {
        **conversation_object(conversation),
        "match": {"snippet": hit.snippet, "seq": hit.seq, "message_id": message_id},
    }


def _cursor(user: str | None, after: str) -> str:
    """The ``after`` cursor as a conversation id of this user; anything else is a 400."""
    try:
        conv = ConversationId.parse(after)
    except InvalidId:
        raise _bad("after", "'after' must be the last_id of a previous page.") from None
    if user is not None and str(conv.user_id) != user:
        raise _bad("after", "'after' must be the last_id of a previous page.")
    return str(conv)


async def _skip(
    store: AsyncStore, user: str, include_deleted: bool, offset: int
) -> tuple[str | None, bool]:
    """The cursor after the first ``offset`` conversations; True once none are left."""
    cursor: str | None = None
    while offset > 0:
        page = await store.list_conversations(
            user, limit=min(offset, _SKIP_BATCH), cursor=cursor, include_deleted=include_deleted
        )
        if not page.items:
            return cursor, True
        cursor = page.items[-1].id
        offset -= len(page.items)
        if not page.has_more:
            return cursor, True
    return cursor, False


async def _visible(request: web.Request) -> tuple[AsyncStore, str, Conversation]:
    """``_owned``, and its conversation, which must not be soft-deleted unless the request
    says ``include_deleted=1`` (OpenAI's deleted conversations are gone: 404)."""
    include_deleted = _bool_param(request, "include_deleted")
    store, conversation_id = await _owned(request)
    conversation = await store.get_conversation(conversation_id)
    if conversation.deleted and not include_deleted:
        raise conversation_not_found()
    return store, conversation_id, conversation


async def get_conversation(request: web.Request) -> web.Response:
    store, conversation_id, conversation = await _visible(request)
    body = conversation_object(conversation)
    body["messages"] = await _message_page(request, store, conversation_id, 0, FIRST_MESSAGES_PAGE)
    return json_response(body)


async def update_conversation(request: web.Request) -> web.Response:
    store, conversation_id, _ = await _visible(request)
    body = await _json_body(request)
    if not body:
        raise ApiError(
            400, "Nothing to update: send title, metadata and/or pinned.", code="invalid_value"
        )
    fields = _conversation_fields(body)
    conversation = await store.update_conversation(conversation_id, **fields)
    return json_response(conversation_object(conversation))


async def delete_conversation(request: web.Request) -> web.Response:
    store, conversation_id = await _owned(request)
    hard = _bool_param(request, "hard")
    await store.delete_conversation(conversation_id, hard=hard)
    return json_response(_deleted_object(conversation_id))


async def restore_conversation(request: web.Request) -> web.Response:
    store, conversation_id = await _owned(request)
    conversation = await store.restore_conversation(conversation_id)
    return json_response(conversation_object(conversation))


# -- messages -----------------------------------------------------------------------------------


async def list_messages(request: web.Request) -> web.Response:
    store, conversation_id = await _owned(request)
    after_seq = _int_param(request, "after_seq", 0, 0, MAX_SEQ)
    limit = _int_param(request, "limit", DEFAULT_PAGE, 1, MAX_PAGE)
    return json_response(await _message_page(request, store, conversation_id, after_seq, limit))


async def _message_page(
    request: web.Request, store: AsyncStore, conversation_id: str, after_seq: int, limit: int
) -> dict[str, Any]:
    start = time.perf_counter()
    # One more than asked: whether it comes back says if there is another page, with no count.
    messages = await store.messages(conversation_id, after_seq=after_seq, limit=limit + 1)
    request.app[METRICS].rebuild_seconds.observe(time.perf_counter() - start)
    page = messages[:limit]
    log_event(
        "rebuild",
        conversation_id=conversation_id,
        after_seq=after_seq,
        messages=len(page),
        streaming=sum(m.status == "streaming" for m in page),
        damaged=sum(m.damaged for m in page),
        duration_ms=elapsed_ms(start),
    )
    return {
        "object": "list",
        "data": [message_object(m) for m in page],
        "first_seq": page[0].seq if page else None,
        "last_seq": page[-1].seq if page else None,
        "has_more": len(messages) > limit,
    }


# -- OpenAI items (edge.conversations) ----------------------------------------------------------


async def _live(request: web.Request) -> tuple[AsyncStore, str]:
    """``_owned``, for OpenAI's item endpoints: a soft-deleted conversation is a 404."""
    store, conversation_id = await _owned(request)
    if (await store.get_conversation(conversation_id)).deleted:
        raise conversation_not_found()
    return store, conversation_id


def _item_list(data: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }


async def create_items(request: web.Request) -> web.Response:
    store, conversation_id = await _live(request)
    parse_include(request)
    messages = await items_body(request)
    try:
        stored = await append_items(store, conversation_id, messages)
    except ConversationDeleted:
        raise conversation_not_found() from None  # deleted meanwhile
    return json_response(_item_list([i for m in stored for i in item_objects(m)], False))


async def list_conversation_items(request: web.Request) -> web.Response:
    store, conversation_id = await _live(request)
    limit = parse_limit(request)
    descending = parse_order(request)
    after = parse_after(request, conversation_id)
    parse_include(request)
    start = time.perf_counter()
    data, has_more = await list_items(
        store, conversation_id, after=after, limit=limit, descending=descending
    )
    request.app[METRICS].rebuild_seconds.observe(time.perf_counter() - start)
    log_event(
        "rebuild",
        conversation_id=conversation_id,
        items=len(data),
        order="desc" if descending else "asc",
        duration_ms=elapsed_ms(start),
    )
    return json_response(_item_list(data, has_more))


async def _item(request: web.Request) -> tuple[AsyncStore, str, Message, dict[str, Any]]:
    """The conversation, message and item named in the path; 404 unless all exist."""
    store, conversation_id = await _live(request)
    item_id = request.match_info["item_id"]
    parsed = parse_item_id(item_id, conversation_id)
    if parsed is None:
        raise item_not_found()
    message = await find_message(store, conversation_id, parsed[0])
    if message is None:
        raise item_not_found()
    for item in item_objects(message):
        if item["id"] == item_id:
            return store, conversation_id, message, item
    raise item_not_found()


async def get_item(request: web.Request) -> web.Response:
    parse_include(request)
    _store, _conversation_id, _message, item = await _item(request)
    return json_response(item)


async def delete_item(request: web.Request) -> web.Response:
    """Delete the stored message the item belongs to (all of its items); OpenAI answers with
    the conversation."""
    store, conversation_id, message, _item_object = await _item(request)
    streaming = ApiError(
        409,
        "This message is still being written; delete it once it ends.",
        code="message_streaming",
    )
    if message.status == "streaming":
        raise streaming
    try:
        deleted = await store.delete_message(conversation_id, message.id)
    except InvalidArgument:
        raise streaming from None
    except ConversationDeleted:
        raise conversation_not_found() from None
    if not deleted:
        raise item_not_found()  # deleted meanwhile
    conversation = await store.get_conversation(conversation_id)
    return json_response(conversation_object(conversation))
