"""``conversation.json``: reading it, and what a conversation is when it cannot be read.

A conversation's metadata is one record (``users/README.md``). It is *damaged* when the file
says so itself: it fails its checksum (truncated, bit-flipped), is not a record of this
conversation (no such fields, wrong types, another conversation's id), or is not a regular
file at all (``_fsio.NotRegularFile``). A disk that fails to read it (EIO, EACCES) is not
damage: that stays a StorageError, never papered over.

A damaged conversation is still listed, returned and written to, as the record
``damaged_conversation`` rebuilds from what the format keeps elsewhere: its id and user from
the directory name, ``created_at`` from its first message's first record (else the earliest
mtime of its directories), ``updated_at`` from the conversation directory's mtime (never
before ``created_at``). Nothing else is kept anywhere: title, metadata, pin, participants and a
soft deletion are lost (None, {}, false, [], not deleted). ``Store.check(fix=True)`` writes that
record back as the conversation's ``conversation.json``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from . import _fsio, _records
from ._ids import ConversationId, MessageId
from ._layout import Layout
from ._models import Conversation

__all__ = [
    "LOST_FIELDS",
    "Damage",
    "conversation_record",
    "damaged_conversation",
    "read_conversation_file",
]

LOST_FIELDS = "title, metadata, pin, participants and soft deletion"


@dataclass(frozen=True, slots=True)
class Damage:
    """Why a ``conversation.json`` cannot be used: a ``check`` problem kind and a detail."""

    kind: str  # "corrupt", "mismatch" or "not-a-file"
    detail: str


def conversation_record(c: Conversation) -> dict[str, Any]:
    """The ``conversation.json`` record of ``c`` (without its checksum)."""
    return {
        "v": 1,
        "id": c.id,
        "userId": c.user_id,
        "title": c.title,
        "createdAt": c.created_at,
        "updatedAt": c.updated_at,
        "pinned": c.pinned,
        "metadata": c.metadata,
        "participants": c.participants,
        "deletedAt": c.deleted_at,
    }


def read_conversation_file(conv: ConversationId, path: str) -> Conversation | Damage:
    """The conversation ``path`` (its ``conversation.json``) describes, or why it cannot be
    used. FileNotFoundError and other OSErrors (a failing disk) pass through."""
    try:
        raw = _fsio.read_bytes(path)
    except _fsio.NotRegularFile as exc:
        return Damage("not-a-file", str(exc.strerror))
    try:
        record = _records.decode(raw)
    except ValueError as exc:
        return Damage("corrupt", str(exc))
    if record.get("id") != str(conv) or record.get("userId") != str(conv.user_id):
        return Damage("mismatch", "the record names another conversation")
    conversation = _from_record(record)
    if conversation is None:
        return Damage("corrupt", "not a valid conversation record")
    return conversation


def _from_record(record: dict[str, Any]) -> Conversation | None:
    title = record.get("title")
    created = record.get("createdAt")
    updated = record.get("updatedAt", created)
    pinned = record.get("pinned", False)
    metadata = record.get("metadata") or {}
    participants = record.get("participants") or []
    deleted = record.get("deletedAt")
    if not (
        (title is None or isinstance(title, str))
        and isinstance(created, str)
        and isinstance(updated, str)
        and isinstance(pinned, bool)
        and isinstance(metadata, dict)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())
        and isinstance(participants, list)
        and all(isinstance(p, str) for p in participants)
        and (deleted is None or isinstance(deleted, str))
    ):
        return None
    return Conversation(
        id=record["id"],
        user_id=record["userId"],
        title=title,
        created_at=created,
        updated_at=updated,
        pinned=pinned,
        metadata=dict(metadata),
        participants=list(participants),
        deleted_at=deleted,
    )


def damaged_conversation(layout: Layout, conv: ConversationId) -> Conversation:
    """The record of a conversation whose ``conversation.json`` is damaged, rebuilt from what
    the format keeps elsewhere (see the module docstring), flagged ``damaged``."""
    mtimes: dict[str, datetime] = {}
    for name, path in (
        ("conversation", layout.conversation_dir(conv)),
        ("messages", layout.messages_dir(conv)),
    ):
        try:
            mtimes[name] = datetime.fromtimestamp(os.lstat(path).st_mtime_ns / 1e9, UTC)
        except OSError:
            continue
    first = _first_message_time(layout, conv)
    now = datetime.now(UTC)
    created = first or min(mtimes.values(), default=now)
    updated = max(created, mtimes.get("conversation", created))
    return Conversation(
        id=str(conv),
        user_id=str(conv.user_id),
        title=None,
        created_at=_text(created),
        updated_at=_text(updated),
        damaged=True,
    )


def _first_message_time(layout: Layout, conv: ConversationId) -> datetime | None:
    """When the conversation's first message was written, if its first record is readable
    (sealed file first, else its first chunk)."""
    mid = MessageId(conv.user, conv.n, 1)
    for path in (layout.sealed_file(mid), layout.chunk_file(mid, 1)):
        try:
            record = _records.decode(_fsio.read_bytes(path))
            if "records" in record:
                record = record["records"][0]
            return _parse(record["timestamp"])
        except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError):
            continue
    return None


def _parse(text: str) -> datetime:
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        raise ValueError("a timestamp without a time zone")
    return parsed.astimezone(UTC)


def _text(when: datetime) -> str:
    """The store's spelling of a time (``_writer.utc_now``): ISO 8601 UTC with a ``Z``."""
    return when.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
