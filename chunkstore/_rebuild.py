"""Rebuilding messages from records: pure functions, no I/O.

A streamed message is a run of chunk records ``seq`` 1..k. The last one says ``complete`` or
``error``; until it exists the message is ``streaming`` (its writer is alive) or
``interrupted`` (its writer is gone: what was made durable is all there will ever be).
"""

from __future__ import annotations

from typing import Any

from ._models import Message, MessageStatus

__all__ = ["TERMINAL", "message_from_line", "message_to_line", "rebuild_message"]

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
