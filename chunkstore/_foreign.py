"""Conversations exported by other chat apps, converted to chunkstore's export lines.

Pure conversion, no I/O: ``read_chatgpt`` and ``read_openwebui`` take the parsed JSON of an
export file and yield, for each conversation in it, either the lines of the export format
(``users/README.md`` and the export/import contract: a ``conversation`` line then its
``message`` lines) in their *foreign* form, or a ``Skipped`` that says why it could not be
converted. Foreign form: ``id``, ``user_id`` and ``conversation_id`` are null (the importer
gives the conversation an id in the target user), seqs run 1..n, ``last_seq`` is n, and the
conversation's metadata holds ``source`` (``chatgpt`` / ``openwebui``) and ``source_id`` (the
other app's conversation id), which the importer matches to skip a conversation it already
imported.

Nothing is dropped silently, at either level:

* a conversation that cannot be converted at all (not an object, no id, no message tree, a
  broken tree, nothing the user could see) is yielded as ``Skipped`` with a one-line reason;
* a conversation that converts but loses something on the way (an image, an attached file,
  reasoning steps, a message of a shape not mapped) is still imported with what it keeps, and
  says what it lost in the metadata pair ``import_note`` (one line, at most 512 characters).
  A note rather than a skip because losing a whole conversation for one image is worse than
  importing its text and saying the image is missing; the importer can print the notes.

What is *not* a loss, and so not in the note: messages the user never saw in the other app
(ChatGPT's hidden system messages and custom-instruction context, empty placeholder messages
and the tree's empty root), and the branches the user did not pick (see ``read_chatgpt``).

Every message line carries the ``chunkstore.Message`` fields: status ``complete``, or
``error`` when the source says the message failed, or ``interrupted`` when it never finished
(a foreign app's unfinished message has no writer to finish it); ``token_count`` 0 (the other
apps do not count chunks); times in chunkstore's ISO 8601 UTC form
(``2024-05-01T12:00:00.000000Z``). A message without a time gets its conversation's creation
time (counted in the note). The note also says what was changed to fit the store: a title
cut to its 512 characters, broken characters replaced, numbers too large kept as text.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from ._exceptions import InvalidArgument
from ._validate import MAX_METADATA_VALUE, MAX_TITLE_CHARS, check_content

__all__ = ["SOURCE_CHATGPT", "SOURCE_OPENWEBUI", "Skipped", "read_chatgpt", "read_openwebui"]

SOURCE_CHATGPT = "chatgpt"
SOURCE_OPENWEBUI = "openwebui"

#: ``check_short``'s limit: names, tool call ids and finish reasons are at most this long.
_MAX_SHORT = 256
#: OpenAI's rule for a function name (the edge replays stored tool calls upstream).
_FUNCTION_NAME = re.compile(r"[^A-Za-z0-9_-]")
_MAX_FUNCTION_NAME = 64


@dataclass(frozen=True)
class Skipped:
    """A conversation of the export that was not converted, and why."""

    source_id: str | None  # the other app's conversation id, when it has one
    title: str | None
    reason: str  # one line a user understands: why it was not imported


Lines = list[dict[str, Any]]


# -- shared: the conversion target -------------------------------------------------------------


@dataclass
class _Message:
    """One message on its way to a message line (seq, ids and reply_to are set at the end)."""

    role: str
    content: Any
    created_at: str | None
    status: str = "complete"
    completed_at: str | None = None
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    name: str | None = None
    error: Any = None


@dataclass
class _Losses:
    """What a conversation lost on the way, counted by kind, for its ``import_note``."""

    counts: Counter[str] = field(default_factory=Counter)

    def add(self, what: str, n: int = 1) -> None:
        self.counts[what] += n

    def note(self) -> str | None:
        if not self.counts:
            return None
        parts = [f"{n} {what}" for what, n in sorted(self.counts.items())]
        return _clip("not imported or changed: " + "; ".join(parts))


def _iso(seconds: Any) -> str | None:
    """Epoch seconds as chunkstore writes times (``_writer.utc_now``), or None if not a time."""
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        return None
    if not math.isfinite(seconds):
        return None
    try:
        moment = datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, OSError, ValueError):
        return None
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


def _text(value: Any) -> str | None:
    """A non-empty string, or None."""
    return value if isinstance(value, str) and value else None


def _title(value: Any, losses: _Losses) -> str | None:
    title = _text(value)
    if title is not None and len(title) > MAX_TITLE_CHARS:
        losses.add(f"title shortened to {MAX_TITLE_CHARS} characters")
        title = title[:MAX_TITLE_CHARS]
    return title


def _source_id(value: Any) -> str | None:
    """The other app's conversation id, if it is one the metadata can keep."""
    text = _text(value)
    return text if text is not None and len(text) <= MAX_METADATA_VALUE else None


def _pair_tool_calls(messages: list[_Message], losses: _Losses) -> list[_Message]:
    """Keep tool calls only in the shape OpenAI accepts as history: an assistant message with
    tool calls is followed by the tool messages answering it, and every tool message answers
    the call just before it. The edge replays a stored conversation upstream when a client
    continues it, and an upstream rejects a whole request whose history breaks that rule, so
    an unanswered call or an unanswered-for result is dropped (and counted), never kept."""
    kept: list[_Message] = []
    open_call: _Message | None = None  # the last kept call, while tool messages may follow
    answered = False
    for message in messages:
        if message.role == "tool":
            if open_call is None:
                losses.add("tool result(s) without the call they answer")
                continue
            assert open_call.tool_calls is not None
            message.tool_call_id = open_call.tool_calls[0]["id"]
            kept.append(message)
            answered = True
            continue
        if open_call is not None and not answered:
            kept.pop()  # the call: nothing was kept after it
            losses.add("tool call(s) without a result")
        open_call = None
        kept.append(message)
        if message.tool_calls:
            open_call, answered = message, False
    if open_call is not None and not answered:
        kept.pop()
        losses.add("tool call(s) without a result")
    return kept


def _conversation(
    source: str,
    source_id: str,
    title: str | None,
    created: str | None,
    updated: str | None,
    *,
    pinned: bool,
    extra: dict[str, str],
    messages: list[_Message],
    losses: _Losses,
) -> Lines | Skipped:
    """The export lines of one converted conversation, or why it has none."""
    messages = _pair_tool_calls(messages, losses)
    if not messages:
        return Skipped(source_id, title, "it has no messages the user could see")
    times = [m.created_at for m in messages if m.created_at is not None]
    created = created or min(times, default=None)
    if created is None:
        return Skipped(source_id, title, "it has no valid time, neither its own nor a message's")
    # ISO strings of one fixed form compare as the times they name.
    updated = max(updated or created, created, *times)
    untimed = sum(1 for m in messages if m.created_at is None)
    if untimed:
        losses.add("message time(s) missing, set to the conversation's")
    metadata = {"source": source, "source_id": source_id, **extra}
    note = losses.note()
    if note is not None:
        metadata["import_note"] = note
    lines: Lines = [
        {
            "type": "conversation",
            "id": None,
            "user_id": None,
            "title": title,
            "created_at": created,
            "updated_at": updated,
            "pinned": pinned,
            "metadata": metadata,
            "participants": [],
            "deleted_at": None,
            "last_seq": len(messages),
        }
    ]
    question: int | None = None  # the seq of the last user or tool message: what a reply answers
    for seq, m in enumerate(messages, start=1):
        at = m.created_at or created
        lines.append(
            {
                "type": "message",
                "conversation_id": None,
                "id": None,
                "seq": seq,
                "role": m.role,
                "content": m.content,
                "status": m.status,
                "created_at": at,
                "completed_at": _completed(m, at),
                "agent_id": None,
                "finish_reason": m.finish_reason,
                "usage": m.usage,
                "tool_calls": m.tool_calls,
                "tool_call_id": m.tool_call_id,
                "name": m.name,
                "error": m.error,
                "token_count": 0,
                "reply_to": question if m.role == "assistant" else None,
            }
        )
        if m.role in ("user", "tool"):
            question = seq
    return _storable(lines, source_id, title)


#: The integers the store's JSON writer (orjson) can write.
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1


def _storable(lines: Lines, source_id: str, title: str | None) -> Lines | Skipped:
    """``lines`` as the store can write them, what had to change said in the note; or why
    they cannot be written at all.

    Python's ``json`` reads what the store's writer (orjson) refuses: a lone surrogate (JSON
    may escape half of a UTF-16 pair: an export cut inside an emoji), an integer beyond 64
    bits, nesting deeper than 254 levels (in usage, errors or content parts, kept as they
    were). A lone surrogate becomes U+FFFD and such an integer its decimal text, noted; too
    deep a value skips the conversation. (``orjson.loads`` refuses all three up front.)"""
    try:
        orjson.dumps(lines)
    except orjson.JSONEncodeError:
        pass
    else:
        return lines
    said: set[str] = set()
    try:
        fixed: Lines = _scrubbed(lines, said)
        orjson.dumps(fixed)
    except (orjson.JSONEncodeError, RecursionError) as exc:
        return Skipped(source_id, title, f"it cannot be stored as JSON: {exc}")
    metadata = fixed[0]["metadata"]
    note = metadata.get("import_note")
    changes = "; ".join(sorted(said))
    metadata["import_note"] = _clip(
        f"{note}; {changes}" if note else f"not imported or changed: {changes}"
    )
    return fixed


def _scrubbed(value: Any, said: set[str]) -> Any:
    """``value`` without lone surrogates and integers orjson cannot write (``_storable``)."""
    if isinstance(value, str):
        # Through UTF-16: a pair split into two escapes rejoins, a lone half becomes U+FFFD.
        fixed = value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        if fixed != value:
            said.add("text with broken characters (lone UTF-16 surrogates), replaced by U+FFFD")
        return fixed
    if isinstance(value, int) and not isinstance(value, bool):
        if _INT_MIN <= value <= _INT_MAX:
            return value
        said.add("numbers beyond 64 bits, kept as text")
        return str(value)
    if isinstance(value, list):
        return [_scrubbed(v, said) for v in value]
    if isinstance(value, dict):
        return {_scrubbed(k, said): _scrubbed(v, said) for k, v in value.items()}
    return value


def _clip(text: str) -> str:
    """``text`` cut to a metadata value's limit, marked as cut."""
    if len(text) > MAX_METADATA_VALUE:
        return text[: MAX_METADATA_VALUE - 1] + "…"
    return text


def _completed(message: _Message, created: str) -> str | None:
    """When a message was finished: never before it began; an interrupted one never was."""
    if message.status == "interrupted":
        return None
    return max(message.completed_at or created, created)


def _conversations(data: object, what: str, single: bool) -> list[Any]:
    """The export's conversations: a list of them; one conversation object (``single``) is
    taken as a list of one. Anything else is not that app's export."""
    if isinstance(data, list):
        return data
    if single:
        return [data]
    raise InvalidArgument(
        f"not {what}: expected a JSON list of conversations, got {_json_type(data)}"
    )


def _json_type(value: object) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return "a number"
    return names.get(type(value), type(value).__name__)


# -- ChatGPT -----------------------------------------------------------------------------------

#: ChatGPT content types that are context the model got but the user never saw as a message
#: (custom instructions, memory); real exports flag most of them hidden as well.
_CHATGPT_CONTEXT = frozenset({"user_editable_context", "model_editable_context"})
#: The model's reasoning: shown folded ("Thought for 12s"), not part of any message chunkstore
#: models; dropped and counted.
_CHATGPT_REASONING = frozenset({"thoughts", "reasoning_recap"})
#: ``message.status`` values that say a message never finished.
_CHATGPT_UNFINISHED = frozenset({"in_progress", "finished_partial_completion"})
#: ``metadata.finish_details.type`` → OpenAI's ``finish_reason``.
_CHATGPT_FINISH = {"stop": "stop", "max_tokens": "length"}


def read_chatgpt(data: object) -> Iterator[Lines | Skipped]:
    """Convert ChatGPT's ``conversations.json`` (Settings → Data controls → Export).

    ``data``: the file's parsed JSON, a list of conversations (one conversation object, as the
    per-conversation files of some exports hold, is taken as a list of one); anything else is
    ``InvalidArgument``, raised by this call (before any conversation is yielded). Each
    conversation is ``title``, ``create_time``/``update_time`` (epoch seconds),
    ``conversation_id`` (or ``id``), ``current_node`` and ``mapping``: a tree of nodes
    ``{id, message, parent, children}``.

    Only the branch the user last saw is imported: from ``current_node`` up through ``parent``
    to the root, reversed. Other branches (a message edited, an answer regenerated) are not
    imported, and not counted as lost: they are earlier drafts, not the conversation.

    Per message: ``author.role`` user/assistant/system/tool is kept; ``content.content_type``
    ``text`` (string parts joined by newlines), ``multimodal_text`` (its text and audio
    transcripts; images and other assets are files beside ``conversations.json``, not in it,
    so they are counted in the note), ``code``, ``execution_output``, ``tether_quote``,
    ``tether_browsing_display``, ``system_error`` (status ``error``) become text. An assistant
    message addressed to a tool (``recipient`` not ``all``: code interpreter, browsing, image
    generation) becomes an OpenAI tool call (the function name made valid for OpenAI, the code
    or query as its arguments) and the tool's reply a ``tool`` message answering it; pairs
    that do not line up are dropped and counted (see ``_pair_tool_calls``). Skipped without a
    note, as the user never saw them: messages flagged
    ``metadata.is_visually_hidden_from_conversation``, custom-instruction and memory context,
    nodes without a message, and messages with nothing in them (except one whose only content
    was lost, an image or a file sent alone: it is kept, empty, and the loss counted). Reasoning
    steps
    (``thoughts``, ``reasoning_recap``) and unknown content or roles are dropped and counted.
    ``status`` ``in_progress``/``finished_partial_completion`` or a ``finish_details`` of
    ``interrupted`` make the message ``interrupted``; ``finish_details`` ``stop``/
    ``max_tokens`` become ``finish_reason`` ``stop``/``length``. The model that answered goes
    in the conversation's metadata (``model``, from ``default_model_slug``), ``is_archived`` in
    ``archived``, and ``is_starred`` pins the conversation.
    """
    single = isinstance(data, dict) and "mapping" in data
    # Checked now, not on the first ``next``: a wrong file fails before anything is imported.
    conversations = _conversations(data, "a ChatGPT export", single)
    return (_chatgpt_conversation(raw) for raw in conversations)


def _chatgpt_conversation(raw: Any) -> Lines | Skipped:
    if not isinstance(raw, dict):
        return Skipped(None, None, f"it is {_json_type(raw)}, not a conversation object")
    losses = _Losses()
    title = _title(raw.get("title"), losses)
    source_id = _source_id(raw.get("conversation_id")) or _source_id(raw.get("id"))
    if source_id is None:
        return Skipped(None, title, "it has no conversation id (conversation_id or id)")
    mapping = raw.get("mapping")
    if not isinstance(mapping, dict) or not mapping:
        return Skipped(source_id, title, "it has no message tree (mapping)")
    path = _chatgpt_branch(mapping, raw.get("current_node"))
    if isinstance(path, str):
        return Skipped(source_id, title, path)
    created = _iso(raw.get("create_time"))
    messages: list[_Message] = []
    for index, node in enumerate(path):
        message = _chatgpt_message(node.get("message"), index, losses)
        if message is not None:
            messages.append(message)
    extra: dict[str, str] = {}
    model = _text(raw.get("default_model_slug"))
    if model is not None:
        extra["model"] = model[:MAX_METADATA_VALUE]
    if raw.get("is_archived") is True:
        extra["archived"] = "true"
    return _conversation(
        SOURCE_CHATGPT,
        source_id,
        title,
        created,
        _iso(raw.get("update_time")),
        pinned=raw.get("is_starred") is True,
        extra=extra,
        messages=messages,
        losses=losses,
    )


def _chatgpt_branch(mapping: dict[str, Any], current: Any) -> list[dict[str, Any]] | str:
    """The nodes from the root down to ``current``, or why they cannot be found."""
    if not isinstance(current, str) or current not in mapping:
        return "its current_node names no message of its mapping: the branch shown is unknown"
    path: list[dict[str, Any]] = []
    seen: set[str] = set()
    node_id: Any = current
    while node_id is not None:
        if not isinstance(node_id, str) or node_id not in mapping:
            return f"its message tree is broken: parent {_quote(node_id)} is not in the mapping"
        if node_id in seen:
            return "its message tree has a cycle"
        seen.add(node_id)
        node = mapping[node_id]
        if not isinstance(node, dict):
            return f"its message tree is broken: node {_quote(node_id)} is not an object"
        path.append(node)
        node_id = node.get("parent")
    path.reverse()
    return path


def _quote(value: Any) -> str:
    scalar = isinstance(value, (str, int, float, bool)) or value is None
    text = json.dumps(value, ensure_ascii=False) if scalar else "?"
    return text if len(text) <= 80 else text[:77] + "…"


def _chatgpt_message(message: Any, index: int, losses: _Losses) -> _Message | None:
    """One node's message, or None when there is none the user saw (or it is counted lost)."""
    if message is None:
        return None  # the tree's root, or a placeholder node
    if not isinstance(message, dict):
        losses.add("unreadable message(s)")
        return None
    metadata = _object(message.get("metadata"))
    author = _object(message.get("author"))
    content = _object(message.get("content"))
    # Only strings are looked up in the sets below (a list would not even hash).
    kind = content.get("content_type")
    kind = kind if isinstance(kind, str) else _json_type(kind)
    if metadata.get("is_visually_hidden_from_conversation") is True or kind in _CHATGPT_CONTEXT:
        return None
    if kind in _CHATGPT_REASONING:
        losses.add("reasoning step(s)")
        return None
    role = author.get("role")
    if role not in ("user", "assistant", "system", "tool"):
        losses.add(f"message(s) from {_quote(role)}, a role chunkstore does not have")
        return None
    text, failed, lost_parts = _chatgpt_text(kind, content, losses)
    if text is None:
        return None
    attachments = metadata.get("attachments")
    files = len(attachments) if isinstance(attachments, list) else 0
    if files:
        losses.add("attached file(s)", files)
    recipient = message.get("recipient")
    calls_tool = role == "assistant" and isinstance(recipient, str) and recipient not in ("all", "")
    if not text and not calls_tool and (role == "tool" or not (files or lost_parts)):
        # An empty message: nothing the user saw. One whose only content was lost (an image
        # sent alone, a file) is kept, empty, so the turn it was part of still reads right;
        # but not a tool's: the edge replays no empty message, and a call whose result is
        # not replayed breaks the history upstream (see ``_pair_tool_calls``).
        return None
    created = _iso(message.get("create_time"))
    out = _Message(role=role, content=text, created_at=created)
    out.completed_at = _iso(message.get("update_time"))
    finish = metadata.get("finish_details")
    finish_type = finish.get("type") if isinstance(finish, dict) else None
    if failed or message.get("status") == "failed":
        out.status = "error"
        out.error = {"message": text or "failed"}
    elif _text(message.get("status")) in _CHATGPT_UNFINISHED or finish_type == "interrupted":
        out.status = "interrupted"
    out.finish_reason = _CHATGPT_FINISH.get(finish_type) if isinstance(finish_type, str) else None
    if calls_tool:
        assert isinstance(recipient, str)
        # The message's own id makes the call's: unique in the conversation, and the same
        # on every import of the same export.
        message_id = _text(message.get("id")) or f"node{index}"
        out.tool_calls = [
            {
                "id": "call_" + _FUNCTION_NAME.sub("_", message_id)[: _MAX_SHORT - 5],
                "type": "function",
                "function": {"name": _function_name(recipient), "arguments": text},
            }
        ]
        out.content = None
    elif role == "tool":
        out.name = _function_name(author.get("name") or "tool")
    return out


def _object(value: Any) -> dict[str, Any]:
    """``value`` if it is a JSON object, else an empty one (a field the export left out)."""
    return value if isinstance(value, dict) else {}


def _function_name(name: Any) -> str:
    """A tool's name as OpenAI accepts a function name (``^[A-Za-z0-9_-]{1,64}$``)."""
    text = _FUNCTION_NAME.sub("_", name if isinstance(name, str) else "")
    return text[:_MAX_FUNCTION_NAME] or "tool"


def _chatgpt_text(
    kind: str, content: dict[str, Any], losses: _Losses
) -> tuple[str | None, bool, bool]:
    """A message content's text, whether it reports a failure, and whether parts of it were
    lost (counted); text None when the content is of a kind that is not mapped (counted)."""
    if kind in ("text", "multimodal_text"):
        parts = content.get("parts")
        if not isinstance(parts, list):
            losses.add(f"message(s) of type {_quote(kind)} without parts")
            return None, False, False
        texts: list[str] = []
        lost = False
        for part in parts:
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, dict) and isinstance(part.get("text"), str):
                texts.append(part["text"])  # an audio transcription, say
            elif isinstance(part, dict) and "image" in str(part.get("content_type", "")):
                losses.add("image(s)")
                lost = True
            else:
                what = part.get("content_type") if isinstance(part, dict) else None
                losses.add(f"message part(s) of type {_quote(what or _json_type(part))}")
                lost = True
        return "\n".join(t for t in texts if t), False, lost
    if kind in ("code", "execution_output", "tether_quote"):
        return _chatgpt_field(content, "text", kind, losses), False, False
    if kind == "tether_browsing_display":
        return _text(content.get("result")) or _text(content.get("summary")) or "", False, False
    if kind == "system_error":
        error = _chatgpt_field(content, "text", kind, losses)
        name = _text(content.get("name"))
        if error is None:
            return None, False, False
        return (f"{name}: {error}" if name else error), True, False
    losses.add(f"message(s) of type {_quote(kind)}")
    return None, False, False


def _chatgpt_field(content: dict[str, Any], key: str, kind: str, losses: _Losses) -> str | None:
    value = content.get(key, "")
    if value is None:
        return ""
    if not isinstance(value, str):
        losses.add(f"message(s) of type {_quote(kind)} without text")
        return None
    return value


# -- Open WebUI --------------------------------------------------------------------------------


def read_openwebui(data: object) -> Iterator[Lines | Skipped]:
    """Convert Open WebUI's chat export (Settings → Chats → Export Chats).

    ``data``: the file's parsed JSON. The frontend writes ``JSON.stringify`` of the
    ``/api/v1/chats/all`` response: a list of chat records ``{id, user_id, title, chat,
    created_at, updated_at, share_id, archived, pinned, meta, folder_id}`` (``ChatResponse``
    in ``backend/open_webui/models/chats.py``); its importer also takes bare ``chat`` objects,
    and so does this one (their id and title are then the ``chat`` object's own, their time
    its ``timestamp``). One record object is taken as a list of one; anything else is
    ``InvalidArgument``, raised by this call.

    A ``chat`` holds ``history.messages`` (message id → message) and ``history.currentId``;
    the imported branch is the one the user last saw, from ``currentId`` up through
    ``parentId`` (Open WebUI's own ``createMessagesList``); other branches (edits,
    regenerations) are not imported. A chat without a usable history falls back to its
    ``messages`` list, the older form that mirrors the same branch.

    Per message: ``role`` user/assistant/system is kept; ``content`` is text (or a list of
    OpenAI content parts, kept as they are); ``timestamp`` is epoch seconds (milliseconds,
    micro- and nanoseconds are told apart by size, as Open WebUI's own
    ``_normalize_timestamp`` does for milliseconds); an ``error`` makes it an ``error``
    message, ``done: false`` an ``interrupted`` one; ``usage`` (or ``info.usage``) is kept.
    Attached ``files`` (images included) are not imported and are counted in the note. The
    chat's ``models`` go in the conversation's metadata (``model``), ``archived`` in
    ``archived``, ``pinned`` pins it.

    Not verified against a running Open WebUI: the message fields come from its source
    (``models/chat_messages.py`` maps them: ``parentId``, ``childrenIds``, ``role``,
    ``content``, ``model``, ``files``, ``done``, ``error``, ``usage``/``info.usage``,
    ``timestamp``), and versions that keep messages in the ``chat_message`` table may export
    chats whose ``chat.history`` is empty; such chats are skipped with that reason.
    """
    single = isinstance(data, dict) and ("chat" in data or "history" in data)
    conversations = _conversations(data, "an Open WebUI chat export", single)
    return (_openwebui_conversation(raw) for raw in conversations)


def _openwebui_conversation(raw: Any) -> Lines | Skipped:
    if not isinstance(raw, dict):
        return Skipped(None, None, f"it is {_json_type(raw)}, not a chat object")
    losses = _Losses()
    record = raw
    chat = raw.get("chat") if "chat" in raw else raw  # a record, or a bare chat (see above)
    title = _title(record.get("title"), losses) or (
        _title(chat.get("title"), losses) if isinstance(chat, dict) else None
    )
    source_id = _source_id(record.get("id")) or (
        _source_id(chat.get("id")) if isinstance(chat, dict) else None
    )
    if source_id is None:
        return Skipped(None, title, "it has no chat id")
    if not isinstance(chat, dict):
        return Skipped(source_id, title, "its chat is not an object")
    branch = _openwebui_branch(chat)
    if isinstance(branch, str):
        return Skipped(source_id, title, branch)
    messages = [m for m in (_openwebui_message(raw_m, losses) for raw_m in branch) if m]
    created = _iso(_epoch_seconds(record.get("created_at")))
    updated = _iso(_epoch_seconds(record.get("updated_at")))
    if created is None and record is chat:
        created = _iso(_epoch_seconds(chat.get("timestamp")))
    extra: dict[str, str] = {}
    models = chat.get("models")
    if isinstance(models, list) and all(isinstance(m, str) for m in models) and any(models):
        extra["model"] = ", ".join(m for m in models if m)[:MAX_METADATA_VALUE]
    if record.get("archived") is True:
        extra["archived"] = "true"
    return _conversation(
        SOURCE_OPENWEBUI,
        source_id,
        title,
        created,
        updated,
        pinned=record.get("pinned") is True,
        extra=extra,
        messages=messages,
        losses=losses,
    )


def _openwebui_branch(chat: dict[str, Any]) -> list[Any] | str:
    """The messages from the first down to ``history.currentId``, or why there are none."""
    history = chat.get("history")
    legacy = chat.get("messages")
    if isinstance(history, dict) and isinstance(history.get("messages"), dict):
        messages: dict[str, Any] = history["messages"]
        current = history.get("currentId")
        if isinstance(current, str) and current in messages:
            path: list[Any] = []
            seen: set[str] = set()
            node_id: Any = current
            while node_id is not None:
                if not isinstance(node_id, str) or node_id not in messages:
                    return f"its message history is broken: parent {_quote(node_id)} is missing"
                if node_id in seen:
                    return "its message history has a cycle"
                seen.add(node_id)
                message = messages[node_id]
                path.append(message)
                node_id = message.get("parentId") if isinstance(message, dict) else None
            path.reverse()
            return path
        if messages and not isinstance(legacy, list):
            return "its history.currentId names none of its messages: the branch shown is unknown"
    if isinstance(legacy, list):
        return legacy
    return "it has no message history (chat.history.messages or chat.messages)"


def _openwebui_message(message: Any, losses: _Losses) -> _Message | None:
    if not isinstance(message, dict):
        losses.add("unreadable message(s)")
        return None
    role = message.get("role")
    if role not in ("user", "assistant", "system"):
        losses.add(f"message(s) from {_quote(role)}, a role chunkstore does not have")
        return None
    content = message.get("content")
    if content is None:
        content = ""
    try:
        check_content(content)
    except InvalidArgument:
        losses.add("message(s) whose content is neither text nor content parts")
        return None
    files = message.get("files")
    if isinstance(files, list) and files:
        losses.add("attached file(s)", len(files))
    error = message.get("error")
    if not content and not error and not (isinstance(files, list) and files):
        return None  # an empty message: nothing the user saw
    created = _iso(_epoch_seconds(message.get("timestamp")))
    out = _Message(role=role, content=content, created_at=created)
    if error:
        out.status = "error"
        out.error = error
    elif message.get("done") is False:
        out.status = "interrupted"
    info = message.get("info")
    usage = message.get("usage")
    if not isinstance(usage, dict) and isinstance(info, dict):
        usage = info.get("usage")
    out.usage = usage if isinstance(usage, dict) and usage else None
    return out


def _epoch_seconds(value: Any) -> float | None:
    """An Open WebUI epoch time in seconds: it writes seconds (chats, messages), but
    milliseconds (``Date.now()``: a chat's ``timestamp``) and nanoseconds (``time_ns()``:
    other tables) occur too; a number's size tells them apart for any date after 1973."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    for limit, scale in ((1e16, 1e9), (1e13, 1e6), (1e11, 1e3)):
        if abs(value) >= limit:
            return value / scale
    return float(value)
