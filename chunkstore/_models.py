"""The values the store hands out.

The in-process cache shares ``Message`` objects between callers, so treat them (and the dicts
and lists inside: usage, tool_calls) as read-only. ``Message`` is not a frozen dataclass only
because building frozen instances costs three times as much, and a cold rebuild builds one per
message; ``Conversation`` and ``ConversationPage`` are frozen.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "Conversation",
    "ConversationPage",
    "Message",
    "MessageStatus",
    "Problem",
    "Role",
    "SearchHit",
    "SearchPage",
]

Role = Literal["system", "developer", "user", "assistant", "tool"]
MessageStatus = Literal["complete", "error", "streaming", "interrupted"]


@dataclass(slots=True)
class Message:
    id: str
    seq: int
    role: str
    content: Any  # str for text; a list of parts for structured content; None for tool-call-only
    status: MessageStatus
    created_at: str  # ISO 8601 UTC, when the first record was written
    completed_at: str | None = None
    agent_id: str | None = None
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    name: str | None = None
    error: Any = None
    token_count: int = 0
    # Some of the message's files were missing or failed their checksum: what is readable is
    # returned, and ``Store.check()`` names the broken files.
    damaged: bool = False
    # The seq of the message this one answers (a reply's user or tool message), when the
    # writer said so: concurrent turns interleave, and seq order alone cannot pair them.
    reply_to: int | None = None

    @property
    def text(self) -> str:
        """The content as plain text (structured parts' text joined)."""
        if isinstance(self.content, str):
            return self.content
        if isinstance(self.content, list):
            return "".join(p.get("text", "") for p in self.content if isinstance(p, dict))
        return ""

    def to_openai(self) -> dict[str, Any]:
        """The message as an OpenAI chat ``messages`` entry (for replaying history upstream)."""
        out: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.tool_calls:
            out["tool_calls"] = self.tool_calls
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        if self.name is not None:
            out["name"] = self.name
        return out


@dataclass(frozen=True, slots=True)
class Conversation:
    id: str
    user_id: str
    title: str | None
    created_at: str
    updated_at: str
    pinned: bool = False
    metadata: dict[str, str] = field(default_factory=dict)
    participants: list[str] = field(default_factory=list)
    deleted_at: str | None = None
    # Its conversation.json is unreadable (corrupt, not a record of it, not a file): this record
    # is rebuilt from what the other files tell (id and user from the directory, times from
    # the first message or the directories; no title, metadata, pin, participants or soft
    # deletion). Writes work on it; ``Store.check(fix=True)`` writes it back whole.
    damaged: bool = False

    @property
    def deleted(self) -> bool:
        return self.deleted_at is not None


@dataclass(frozen=True, slots=True)
class ConversationPage:
    """One page of ``list_conversations``; pass ``next_cursor`` back for the next one."""

    items: list[Conversation]
    next_cursor: str | None

    @property
    def has_more(self) -> bool:
        return self.next_cursor is not None

    def __iter__(self) -> Iterator[Conversation]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


@dataclass(frozen=True, slots=True)
class SearchHit:
    """One conversation that matches a search, with where and why.

    ``seq`` is the matching message (the latest one when several match), or None when the
    title matches (whether or not a message does too); ``snippet`` is the text around the
    first match in that message (or the title), on one line, at most about 160 characters,
    ``…`` where it was cut.
    """

    conversation: Conversation
    snippet: str
    seq: int | None


@dataclass(frozen=True, slots=True)
class SearchPage:
    """One page of ``search`` results in ``_search``'s ranking (title matches, then message
    matches, each newest first); pass ``next_cursor`` back for the next."""

    items: list[SearchHit]
    next_cursor: str | None

    @property
    def has_more(self) -> bool:
        return self.next_cursor is not None

    def __iter__(self) -> Iterator[SearchHit]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


@dataclass(frozen=True, slots=True)
class Problem:
    """One broken invariant found by ``Store.check()``: where, what kind, and what was done."""

    path: str  # a file (file store) or a row's address (SQL backends)
    kind: str  # a short slug: "corrupt", "gap", "orphan", "temp-file", ...
    detail: str
    fixed: bool = False

    def __str__(self) -> str:
        suffix = " (fixed)" if self.fixed else ""
        return f"{self.kind}: {self.path}: {self.detail}{suffix}"
