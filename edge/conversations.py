"""OpenAI's Conversations API items: ``/v1/conversations/{id}/items[/{item_id}]``.

The official SDK's ``client.conversations.items`` (``create``, ``list``, ``retrieve``,
``delete``) works unchanged against these endpoints, and so does ``conversations.create`` with
initial ``items`` (``history.create_conversation`` hands them here). Items and chat
completions are two views of one stored conversation: an item is a stored message in OpenAI's
shape, a message stored through ``/v1/chat/completions`` is listed as items, and messages added
as items are the history the next chat turn replays.

**Mapping** (one stored message gives one or more items, in this order):

* a ``user`` / ``assistant`` / ``system`` / ``developer`` message with text (or no tool calls)
  → a ``message`` item, id ``msg_<messageId>``; text is an ``input_text`` part (``output_text``
  for the assistant, with ``annotations: []``), an image an ``input_image`` part;
* each tool call of an assistant message → a ``function_call`` item, id
  ``fc_<messageId>_<n>`` (``n`` = 1, 2, ... in the message's order; ``call_id``, ``name``,
  ``arguments``);
* a ``tool`` message → a ``function_call_output`` item, id ``fco_<messageId>``.

Item ids are parsed strictly (one spelling each; ``<messageId>`` as ``chunkstore`` spells it),
so they map back to the message with no lookup: a malformed id, or one of another conversation,
answers the same 404 as a missing one. ``status`` is ``completed`` (complete),
``in_progress`` (still streaming) or ``incomplete`` (error, interrupted). Every item also
carries two fields of ours, which OpenAI clients ignore: ``seq`` (its message's position) and
``reply_to`` (the seq of the message a reply answers, see ``relay``).

Creating items validates them all, then stores them (one job on the store's pool): consecutive
``function_call`` items, and those right after an assistant ``message`` item, become one
assistant message with tool calls (what chat completions replay); an assistant message answers
(``reply_to``) the last user or tool message before it in the same request. Deleting an item
deletes its whole stored message (all of that message's items): ``Store.delete_message``.

A soft-deleted conversation answers 404 here, as OpenAI's deleted ones do (restore it first).
"""

from __future__ import annotations

import bisect
import re
from typing import Any

from aiohttp import web

from chunkstore import AsyncStore, InvalidId, Message, MessageId, Store
from edge.errors import ApiError, parse_json_object

__all__ = [
    "INCLUDABLE",
    "MAX_ITEMS",
    "append_items",
    "find_message",
    "item_not_found",
    "item_objects",
    "items_body",
    "items_to_messages",
    "list_items",
    "parse_after",
    "parse_include",
    "parse_item_id",
    "parse_limit",
    "parse_order",
]

#: Items per create request, as OpenAI allows.
MAX_ITEMS = 20
#: OpenAI's ``include`` values: accepted; nothing they name is stored, so nothing is added.
INCLUDABLE = frozenset(
    {
        "file_search_call.results",
        "web_search_call.results",
        "web_search_call.action.sources",
        "message.input_image.image_url",
        "computer_call_output.output.image_url",
        "code_interpreter_call.outputs",
        "reasoning.encrypted_content",
        "message.output_text.logprobs",
    }
)
DEFAULT_LIMIT = 20
MAX_LIMIT = 100

_MESSAGE_ROLES = frozenset({"user", "assistant", "system", "developer"})
_QUESTION_ROLES = frozenset({"user", "tool"})
_STATUS = {
    "complete": "completed",
    "streaming": "in_progress",
    "error": "incomplete",
    "interrupted": "incomplete",
}
_ITEM_ID = re.compile(r"(msg|fc|fco)_([a-z0-9-]{1,64}?)(?:_([1-9][0-9]{0,3}))?")
_DIGITS = re.compile(r"[0-9]{1,3}")


# -- stored messages as items -------------------------------------------------------------------


def item_objects(message: Message) -> list[dict[str, Any]]:
    """The items of one stored message, in order (see the module docstring)."""
    extra = {"seq": message.seq, "reply_to": message.reply_to}
    status = _STATUS.get(message.status, "incomplete")
    if message.role == "tool":
        return [
            {
                "id": f"fco_{message.id}",
                "type": "function_call_output",
                "call_id": message.tool_call_id or "",
                "output": message.text,
                "status": status,
                **extra,
            }
        ]
    items: list[dict[str, Any]] = []
    calls = message.tool_calls if isinstance(message.tool_calls, list) else []
    if message.content or not calls:
        items.append(
            {
                "id": f"msg_{message.id}",
                "type": "message",
                "role": message.role,
                "status": status,
                "content": _content_parts(message),
                **extra,
            }
        )
    for n, call in enumerate(calls, 1):
        call = call if isinstance(call, dict) else {}
        found = call.get("function")
        function: dict[str, Any] = found if isinstance(found, dict) else {}
        items.append(
            {
                "id": f"fc_{message.id}_{n}",
                "type": "function_call",
                "call_id": str(call.get("id") or ""),
                "name": str(function.get("name") or ""),
                "arguments": str(function.get("arguments") or ""),
                "status": status,
                **extra,
            }
        )
    return items


def _text_part(role: str, text: str) -> dict[str, Any]:
    if role == "assistant":
        return {"type": "output_text", "text": text, "annotations": []}
    return {"type": "input_text", "text": text}


def _content_parts(message: Message) -> list[dict[str, Any]]:
    content = message.content
    if isinstance(content, str):
        return [_text_part(message.role, content)]
    if not isinstance(content, list):
        return []
    parts = []
    for part in content:
        if not isinstance(part, dict):
            continue
        kind = part.get("type")
        if kind == "refusal" and isinstance(part.get("refusal"), str):
            parts.append({"type": "refusal", "refusal": part["refusal"]})
        elif kind == "image_url" and isinstance(part.get("image_url"), dict):
            image = part["image_url"]
            parts.append(
                {
                    "type": "input_image",
                    "image_url": image.get("url"),
                    "detail": image.get("detail") or "auto",
                }
            )
        elif isinstance(part.get("text"), str):
            parts.append(_text_part(message.role, part["text"]))
    return parts


# -- items as messages to store -----------------------------------------------------------------


def _bad(param: str, message: str, code: str = "invalid_value") -> ApiError:
    return ApiError(400, message, code=code, param=param)


def items_to_messages(items: Any, *, allow_empty: bool = False) -> list[dict[str, Any]]:
    """Validate OpenAI input items and turn them into chat messages to store (``role``,
    ``content``, ``tool_calls``, ``tool_call_id``), every item checked before any is stored."""
    if not isinstance(items, list) or (not items and not allow_empty):
        raise _bad("items", "'items' must be a non-empty array of items.")
    if len(items) > MAX_ITEMS:
        raise _bad("items", f"At most {MAX_ITEMS} items may be added at a time.")
    messages: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        param = f"items[{i}]"
        if not isinstance(item, dict):
            raise _bad(param, f"'{param}' must be an object.")
        kind = item.get("type", "message")
        if kind == "message":
            messages.append(_message(item, param))
        elif kind == "function_call":
            call = {
                "id": _string(item, "call_id", param),
                "type": "function",
                "function": {
                    "name": _string(item, "name", param),
                    "arguments": _string(item, "arguments", param, empty=True),
                },
            }
            last = messages[-1] if messages else None
            # Calls right after an assistant message (or another call) join it: chat
            # completions replay one assistant message holding all its tool calls.
            if last is not None and last["role"] == "assistant" and last.get("_open"):
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append(
                    {"role": "assistant", "content": None, "tool_calls": [call], "_open": True}
                )
        elif kind == "function_call_output":
            messages.append(
                {
                    "role": "tool",
                    "content": _output(item.get("output"), f"{param}.output"),
                    "tool_call_id": _string(item, "call_id", param),
                }
            )
        else:
            raise _bad(
                f"{param}.type",
                f"Unsupported item type {str(kind)[:64]!r}: this server stores 'message', "
                "'function_call' and 'function_call_output' items.",
                code="unsupported_item_type",
            )
    for message in messages:
        message.pop("_open", None)
    return messages


def _string(item: dict[str, Any], key: str, param: str, *, empty: bool = False) -> str:
    """``item[key]``: a string of 1 to 256 characters (``empty``: any string)."""
    value = item.get(key)
    if isinstance(value, str) and (empty or 0 < len(value) <= 256):
        return value
    what = "a string" if empty else "a string of 1 to 256 characters"
    raise _bad(f"{param}.{key}", f"'{param}.{key}' must be {what}.")


def _message(item: dict[str, Any], param: str) -> dict[str, Any]:
    role = item.get("role")
    if not isinstance(role, str) or role not in _MESSAGE_ROLES:
        raise _bad(f"{param}.role", f"'{param}.role' must be user, assistant, system or developer.")
    content = item.get("content")
    if isinstance(content, str):
        stored: Any = content
    elif isinstance(content, list):
        parts = [_part(p, f"{param}.content[{j}]") for j, p in enumerate(content)]
        one_text = len(parts) == 1 and parts[0]["type"] == "text"
        stored = parts[0]["text"] if one_text else parts
    else:
        raise _bad(f"{param}.content", f"'{param}.content' must be a string or an array of parts.")
    # Open to the function calls that follow it (assistant only): see ``items_to_messages``.
    return {"role": role, "content": stored, "_open": role == "assistant"}


def _part(part: Any, param: str) -> dict[str, Any]:
    """One content part as the chat part it is stored as."""
    if not isinstance(part, dict):
        raise _bad(param, f"'{param}' must be an object.")
    kind = part.get("type")
    if kind in ("input_text", "output_text", "text"):
        if not isinstance(part.get("text"), str):
            raise _bad(f"{param}.text", f"'{param}.text' must be a string.")
        return {"type": "text", "text": part["text"]}
    if kind == "refusal" and isinstance(part.get("refusal"), str):
        return {"type": "refusal", "refusal": part["refusal"]}
    if kind == "input_image" and isinstance(part.get("image_url"), str):
        detail = part.get("detail")
        image: dict[str, Any] = {"url": part["image_url"]}
        if isinstance(detail, str):
            image["detail"] = detail
        return {"type": "image_url", "image_url": image}
    raise _bad(
        f"{param}.type",
        f"Unsupported content part in '{param}': this server stores input_text, output_text, "
        "refusal and input_image (with an image_url) parts.",
        code="unsupported_content",
    )


def _output(output: Any, param: str) -> str:
    if isinstance(output, str):
        return output
    if isinstance(output, list):
        texts = []
        for j, part in enumerate(output):
            if not isinstance(part, dict) or not isinstance(part.get("text"), str):
                raise _bad(f"{param}[{j}]", f"'{param}[{j}]' must be a text part.")
            texts.append(part["text"])
        return "".join(texts)
    raise _bad(param, f"'{param}' must be a string or an array of text parts.")


def _store_messages(
    store: Store, conversation_id: str, messages: list[dict[str, Any]]
) -> list[Message]:
    """Store ``messages`` in order (one job on the store's pool); if one fails, the ones this
    call stored are deleted again, so a request adds all its items or none."""
    stored: list[Message] = []
    question: int | None = None
    try:
        for message in messages:
            role = message["role"]
            saved = store.append_message(
                conversation_id,
                role,
                message["content"],
                tool_calls=message.get("tool_calls"),
                tool_call_id=message.get("tool_call_id"),
                reply_to=question if role == "assistant" else None,
            )
            stored.append(saved)
            if role in _QUESTION_ROLES:
                question = saved.seq
    except BaseException:
        for saved in stored:
            try:
                store.delete_message(conversation_id, saved.id)
            except Exception:
                pass  # the original error is the one to report
        raise
    return stored


async def append_items(
    store: AsyncStore, conversation_id: str, messages: list[dict[str, Any]]
) -> list[Message]:
    """Store messages made by ``items_to_messages``; the stored messages, in order."""
    if not messages:
        return []
    return await store.run(_store_messages, store.store, conversation_id, messages)


# -- item ids and pages -------------------------------------------------------------------------


def parse_item_id(item_id: str, conversation_id: str) -> tuple[MessageId, str, int] | None:
    """``(message id, kind, call number)`` of an item id of this conversation; None for
    anything else (malformed, another conversation's): callers answer 404."""
    m = _ITEM_ID.fullmatch(item_id)
    if m is None:
        return None
    kind, mid_text, n = m[1], m[2], m[3]
    if (kind == "fc") != (n is not None):
        return None
    try:
        mid = MessageId.parse(mid_text)
    except InvalidId:
        return None
    if str(mid.conversation_id) != conversation_id:
        return None
    return mid, kind, int(n or 0)


def item_position(kind: str, n: int) -> int:
    """Where an item sits among its message's items: the message item first, then calls."""
    return n if kind == "fc" else 0


def _position(item: dict[str, Any]) -> tuple[int, int]:
    kind, _, rest = item["id"].partition("_")
    n = int(rest.rsplit("_", 1)[1]) if kind == "fc" else 0
    return item["seq"], n


async def find_message(store: AsyncStore, conversation_id: str, mid: MessageId) -> Message | None:
    found = await store.messages(conversation_id, mid.seq - 1, 1)
    return found[0] if found and found[0].seq == mid.seq else None


async def list_items(
    store: AsyncStore,
    conversation_id: str,
    *,
    after: tuple[int, int] | None,
    limit: int,
    descending: bool,
) -> tuple[list[dict[str, Any]], bool]:
    """A page of items after the position ``after`` ((seq, place), exclusive) in the
    order asked; and whether more follow."""
    out: list[dict[str, Any]] = []
    if descending:
        messages = await store.messages(conversation_id, 0, None)
        end = len(messages)
        if after is not None:
            end = bisect.bisect_right([m.seq for m in messages], after[0])
        for message in reversed(messages[:end]):
            for item in reversed(item_objects(message)):
                if after is not None and _position(item) >= after:
                    continue
                out.append(item)
            if len(out) > limit:
                break
        return out[:limit], len(out) > limit
    cursor = after[0] - 1 if after is not None else 0
    while True:
        batch = await store.messages(conversation_id, cursor, limit + 1)
        for message in batch:
            for item in item_objects(message):
                if after is None or _position(item) > after:
                    out.append(item)
        if len(out) > limit or len(batch) < limit + 1:
            return out[:limit], len(out) > limit
        cursor = batch[-1].seq


def parse_include(request: web.Request) -> list[str]:
    values = request.query.getall("include", []) + request.query.getall("include[]", [])
    for value in values:
        if value not in INCLUDABLE:
            raise _bad("include", f"'include' values are: {', '.join(sorted(INCLUDABLE))}.")
    return values


def parse_limit(request: web.Request) -> int:
    raw = request.query.get("limit")
    if raw is None:
        return DEFAULT_LIMIT
    if not _DIGITS.fullmatch(raw) or not 1 <= int(raw) <= MAX_LIMIT:
        raise _bad("limit", f"'limit' must be an integer from 1 to {MAX_LIMIT}.")
    return int(raw)


def parse_order(request: web.Request) -> bool:
    """True for ``desc`` (OpenAI's default), False for ``asc``."""
    raw = request.query.get("order", "desc")
    if raw not in ("asc", "desc"):
        raise _bad("order", "'order' must be asc or desc.")
    return raw == "desc"


def parse_after(request: web.Request, conversation_id: str) -> tuple[int, int] | None:
    raw = request.query.get("after")
    if raw is None:
        return None
    parsed = parse_item_id(raw, conversation_id)
    if parsed is None:
        raise _bad("after", "'after' must be the id of an item of this conversation.")
    mid, kind, n = parsed
    return mid.seq, item_position(kind, n)


async def items_body(request: web.Request) -> list[dict[str, Any]]:
    raw = await request.read()
    if not raw.strip():
        raise _bad("items", "'items' must be a non-empty array of items.")
    body = parse_json_object(raw)
    unknown = sorted(set(body) - {"items"})
    if unknown:
        raise _bad(unknown[0], f"Unknown field '{unknown[0]}'; expected items.")
    return items_to_messages(body.get("items"))


def item_not_found() -> ApiError:
    return ApiError(404, "Item not found.", code="not_found")
