"""Rebuilding messages from records: pure functions, no I/O.

A streamed message is a run of chunk records ``seq`` 1..k. The last one says ``complete`` or
``error``; until it exists the message is ``streaming`` (its writer is alive) or
``interrupted`` (its writer is gone: what was made durable is all there will ever be).
"""

from __future__ import annotations

from typing import Any

from ._models import Message, MessageStatus

__all__ = [
    "TERMINAL",
    "message_from_line",
    "message_records",
    "message_to_line",
    "rebuild_message",
]

TERMINAL = frozenset({"complete", "error"})


def rebuild_message(
    message_id: str,
    seq: int,
    records: list[dict[str, Any]],
    *,
    writer_alive: bool,
    damaged: bool = False,
) -> Message:
    """Merge a message's chunk records (any order, possibly with holes) into a ``Message``.

    ``damaged`` says some files were unreadable; a hole in the chunk numbering or a record
    that does not belong to this message also marks the message damaged.
    """
    given = len(records)
    records = sorted(
        (r for r in records if r.get("messageId") == message_id and isinstance(r.get("seq"), int)),
        key=_record_seq,
    )
    if len(records) != given:
        # A record of another message (a misplaced or copied file) or without a seq: dropped,
        # and the message says so instead of silently reading back shorter.
        damaged = True
    if not records:
        return Message(
            id=message_id,
            seq=seq,
            role="assistant",
            content="",
            status="streaming" if writer_alive else "interrupted",
            created_at="",
            damaged=damaged,
        )
    expected = list(range(1, len(records) + 1))
    if [r["seq"] for r in records] != expected:
        damaged = True
    first, last = records[0], records[-1]
    status: MessageStatus
    if last.get("status") in TERMINAL:
        status = last["status"]
    else:
        status = "streaming" if writer_alive else "interrupted"

    content: Any
    if "content" in first:  # structured content (a list of parts, or null) kept verbatim
        content = first["content"]
    else:
        content = "".join(r.get("tokens", "") for r in records)

    return Message(
        id=message_id,
        seq=seq,
        role=first.get("role", "assistant"),
        content=content,
        status=status,
        created_at=first.get("timestamp", ""),
        completed_at=last.get("timestamp") if status in TERMINAL else None,
        agent_id=first.get("agentId"),
        finish_reason=last.get("finishReason"),
        usage=last.get("usage"),
        tool_calls=last.get("toolCalls"),
        tool_call_id=first.get("toolCallId"),
        name=first.get("name"),
        error=last.get("error"),
        token_count=sum(r.get("tokenCount", 0) for r in records),
        damaged=damaged,
        reply_to=_reply_to(first),
    )


def message_records(message: Message) -> list[dict[str, Any]]:
    """The chunk records ``rebuild_message`` turns back into ``message``: its exact inverse,
    ``rebuild_message(m.id, m.seq, message_records(m), writer_alive=m.status == "streaming")
    == m`` for every undamaged message it can return (a property test checks it).

    An import writes a message it only knows rebuilt (an export line), so it needs records
    that read back as that very value on every backend. One record when it can (a message
    that is not final, or final with ``completed_at == created_at``), else two: the first
    holds what ``rebuild_message`` takes from the first record (role, content, creation time,
    agent, tool call id, name, ``replyTo``, the token count), the last what it takes from the
    last (the final status and its time, finish reason, usage, tool calls, error). A
    message that is not final ends on a ``streaming`` record, so it reads back
    ``interrupted`` wherever no writer holds it. ``damaged`` is not a stored fact: an
    imported message is whole.
    """
    mid = message.id
    first: dict[str, Any] = {"v": 1, "messageId": mid, "seq": 1}
    content = message.content
    if isinstance(content, str):
        first["tokens"] = content
    else:
        # Structured content (a list of parts, or None) kept verbatim; ``tokens`` holds its
        # text for tools that only read text, as ``Store.append_message`` writes it.
        parts = content if isinstance(content, list) else []
        first["tokens"] = "".join(
            p["text"] for p in parts if isinstance(p, dict) and isinstance(p.get("text"), str)
        )
        first["content"] = content
    first["tokenCount"] = message.token_count
    first["timestamp"] = message.created_at
    first["role"] = message.role
    value: Any
    for key, value in (
        ("agentId", message.agent_id),
        ("toolCallId", message.tool_call_id),
        ("name", message.name),
        ("replyTo", message.reply_to),
    ):
        if value is not None:
            first[key] = value
    final = message.status in TERMINAL
    records = [first]
    last = first
    if final and message.completed_at != message.created_at:
        first["status"] = "streaming"
        last = {"v": 1, "messageId": mid, "seq": 2, "tokens": "", "tokenCount": 0}
        if message.completed_at is not None:
            last["timestamp"] = message.completed_at
        last["role"] = message.role
        if message.reply_to is not None:
            last["replyTo"] = message.reply_to  # on every record of a reply (users/README.md)
        records.append(last)
    last["status"] = message.status if final else "streaming"
    for key, value in (
        ("finishReason", message.finish_reason),
        ("usage", message.usage),
        ("toolCalls", message.tool_calls),
        ("error", message.error),
    ):
        if value is not None:
            last[key] = value
    return records


def _reply_to(record: dict[str, Any]) -> int | None:
    """A record's ``replyTo`` (the seq the message answers); anything but a positive int is
    no answer (an old or hand-written record)."""
    value = record.get("replyTo")
    return value if type(value) is int and value > 0 else None


def _record_seq(record: dict[str, Any]) -> int:
    seq: int = record["seq"]
    return seq


# Segment lines: a finished message, already merged. "seq" comes first so a reader can find a
# line's seq without parsing it (see _segment).
_LINE_FIELDS = (
    ("id", "id"),
    ("role", "role"),
    ("content", "content"),
    ("status", "status"),
    ("createdAt", "created_at"),
    ("completedAt", "completed_at"),
    ("agentId", "agent_id"),
    ("finishReason", "finish_reason"),
    ("usage", "usage"),
    ("toolCalls", "tool_calls"),
    ("toolCallId", "tool_call_id"),
    ("name", "name"),
    ("error", "error"),
    ("tokenCount", "token_count"),
    ("replyTo", "reply_to"),
)


def message_to_line(message: Message) -> dict[str, Any]:
    line: dict[str, Any] = {"seq": message.seq}
    for key, attr in _LINE_FIELDS:
        value = getattr(message, attr)
        if value is not None:
            line[key] = value
    return line


def message_from_line(line: dict[str, Any]) -> Message:
    get = line.get
    # Positional: this runs once per message on a cold rebuild, and keywords cost a third more.
    return Message(
        line["id"],
        line["seq"],
        line["role"],
        get("content"),
        line["status"],
        get("createdAt", ""),
        get("completedAt"),
        get("agentId"),
        get("finishReason"),
        get("usage"),
        get("toolCalls"),
        get("toolCallId"),
        get("name"),
        get("error"),
        get("tokenCount", 0),
        False,
        get("replyTo"),
    )
