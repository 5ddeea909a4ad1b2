"""``Store``: the synchronous chunkstore API, one front over every backend.

``Store(target)`` opens the backend ``target`` names (``_url.open_backend``: a path or
``file:`` URL is the file store of format v1, ``sqlite:PATH`` one SQLite database). The front
owns what every backend shares, so it is written once: it parses ids, hashes principals,
validates every argument and limit, builds message records, buffers a streamed message's
tokens (``MessageWriter``), and leaves storing and finding to the backend (``_backend.py``).
``AsyncStore`` wraps this class; there is no second implementation.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from ._backend import Backend
from ._exceptions import (
    ConversationDeleted,
    ConversationNotFound,
    InvalidArgument,
    ReplyStreaming,
)
from ._ids import ConversationId, MessageId, UserId
from ._models import Conversation, ConversationPage, Message, Problem, SearchHit, SearchPage
from ._search import search_terms, snippet
from ._turns import QUESTION_ROLES, STORED_ROLES, Turn, merge_history, replayable
from ._url import open_backend
from ._validate import (
    DURABILITY_MODES,
    MAX_PAGE,
    check_content,
    check_metadata,
    check_participants,
    check_principal,
    check_role,
    check_short,
    check_title,
    positive_int,
)
from ._writer import MessageWriter, utc_now

__all__ = ["DEFAULT_CHUNK_TOKENS", "DEFAULT_FLUSH_INTERVAL", "DURABILITY_MODES", "Store"]

Durability = Literal["chunk", "message", "none"]
DEFAULT_CHUNK_TOKENS = 60
DEFAULT_FLUSH_INTERVAL = 1.0
# Locks are held for milliseconds; a long bound only matters under extreme contention.
DEFAULT_LOCK_TIMEOUT = 30.0
DEFAULT_CACHE_CONVERSATIONS = 256

_UNSET: Any = object()
_MAX_SEQ = 10**18 - 1  # the largest seq a message id can spell (18 digits)


class Store:
    """A conversation store: ``Store("users")``, ``Store("file:./users")``,
    ``Store("sqlite:./chat.db")``.

    ``durability``: ``"chunk"`` (default) makes every chunk durable before ``append`` returns at
    a chunk boundary; ``"message"`` only when a message is sealed; ``"none"`` never syncs
    (tests, throwaway data). Metadata is always replaced atomically; ``"none"`` only skips
    its sync.
    """

    def __init__(
        self,
        target: str | os.PathLike[str] = "users",
        *,
        durability: Durability = "chunk",
        chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
        flush_interval: float | None = DEFAULT_FLUSH_INTERVAL,
        max_conversations_per_user: int | None = None,
        max_messages_per_conversation: int | None = None,
        lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
        cache_conversations: int = DEFAULT_CACHE_CONVERSATIONS,
    ) -> None:
        if durability not in DURABILITY_MODES:
            raise InvalidArgument(
                f"durability must be one of {DURABILITY_MODES}, got {durability!r}"
            )
        positive_int("chunk_tokens", chunk_tokens)
        for name, value in (
            ("max_conversations_per_user", max_conversations_per_user),
            ("max_messages_per_conversation", max_messages_per_conversation),
        ):
            if value is not None:
                positive_int(name, value)
        self.durability: Durability = durability
        self.chunk_tokens = chunk_tokens
        self.flush_interval = flush_interval
        self.max_conversations_per_user = max_conversations_per_user
        self.max_messages_per_conversation = max_messages_per_conversation
        self.lock_timeout = lock_timeout
        self._backend: Backend = open_backend(
            target,
            durability=durability,
            lock_timeout=lock_timeout,
            cache_conversations=cache_conversations,
        )

    @property
    def backend(self) -> Backend:
        """The storage engine behind this store (for its own extras; see ``_backend.py``)."""
        return self._backend

    @property
    def root(self) -> str:
        """The file store's root directory (file backend only)."""
        root = getattr(self._backend, "root", None)
        if not isinstance(root, str):
            raise AttributeError(f"{self!r} has no root directory")
        return root

    def __repr__(self) -> str:
        return f"Store({self._backend.describe()!r}, durability={self.durability!r})"

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the backend's connections and locks (idempotent)."""
        self._backend.close()

    def ping(self) -> None:
        """Raise ``StorageError`` unless the store can take a small durable write now."""
        self._backend.ping()

    # -- users --------------------------------------------------------------------------------

    def user_for(self, principal: str) -> str:
        """The user id for an external principal (a session id), created on first sight.

        Only a SHA-256 of the principal is stored, never the principal itself.
        """
        return self._backend.user_for(_digest(principal))

    def find_user(self, principal: str) -> str | None:
        """The user id for a principal already seen, or None (nothing is created)."""
        return self._backend.find_user(_digest(principal))

    def users(self) -> list[str]:
        """Every user id in the store, in numeric order."""
        return self._backend.users()

    # -- conversations ------------------------------------------------------------------------

    def create_conversation(
        self,
        user_id: str,
        title: str | None = None,
        *,
        metadata: Mapping[str, str] | None = None,
        participants: Sequence[str] | None = None,
        pinned: bool = False,
    ) -> Conversation:
        user = UserId.parse(user_id)
        checked_title = check_title(title)
        meta = check_metadata(metadata or {})
        people = check_participants(participants or [])
        if not isinstance(pinned, bool):
            raise InvalidArgument("pinned must be a bool")
        return self._backend.create_conversation(
            user,
            title=checked_title,
            metadata=meta,
            participants=people,
            pinned=pinned,
            max_conversations=self.max_conversations_per_user,
        )

    def get_conversation(self, conversation_id: str) -> Conversation:
        """Metadata of a conversation (soft-deleted ones too: see ``deleted_at``)."""
        return self._backend.get_conversation(ConversationId.parse(conversation_id))

    def list_conversations(
        self,
        user_id: str,
        limit: int = 50,
        cursor: str | None = None,
        include_deleted: bool = False,
    ) -> ConversationPage:
        """Newest first. ``cursor`` is the ``next_cursor`` of the previous page.

        Pages are stable while conversations are created: new ones sort before page 1, and the
        cursor is the id to continue after.
        """
        # Every argument is validated before the store is touched: a hostile cursor must be
        # rejected before anything is listed, like a hostile id.
        user = UserId.parse(user_id)
        positive_int("limit", limit, maximum=MAX_PAGE)
        before = ConversationId.parse(cursor) if cursor is not None else None
        if before is not None and before.user != user.n:
            raise InvalidArgument("cursor does not belong to this user")
        return self._backend.list_conversations(
            user, limit=limit, before=before, include_deleted=bool(include_deleted)
        )

    def search(
        self,
        user_id: str,
        query: str,
        limit: int = 20,
        cursor: str | None = None,
        include_deleted: bool = False,
    ) -> SearchPage:
        """The user's conversations whose title or finished messages match ``query``: title
        matches newest first, then message matches newest first (``_search`` says what
        matches and how results rank, the same on every backend), each with the matching
        message's seq and a snippet around the match. ``cursor`` is the ``next_cursor`` of
        the previous page: a position in the ranking, so a page may repeat or miss a
        conversation when matches change between pages (as with any ranked search)."""
        user = UserId.parse(user_id)
        terms = search_terms(query)
        positive_int("limit", limit, maximum=MAX_PAGE)
        offset = _search_offset(cursor)
        found = self._backend.search(
            user, terms, limit=limit + 1, offset=offset, include_deleted=bool(include_deleted)
        )
        hits = [
            SearchHit(match.conversation, snippet(match.text, terms), match.seq)
            for match in found[:limit]
        ]
        more = len(found) > limit
        return SearchPage(hits, str(offset + limit) if more else None)

    def update_conversation(
        self,
        conversation_id: str,
        *,
        title: str | None = _UNSET,
        pinned: bool = _UNSET,
        metadata: Mapping[str, str] = _UNSET,
    ) -> Conversation:
        """Change title, pinned and/or metadata (metadata is replaced whole, as in OpenAI's API)."""
        conv = ConversationId.parse(conversation_id)
        changes: dict[str, Any] = {}
        if title is not _UNSET:
            changes["title"] = check_title(title)
        if pinned is not _UNSET:
            if not isinstance(pinned, bool):
                raise InvalidArgument("pinned must be a bool")
            changes["pinned"] = pinned
        if metadata is not _UNSET:
            changes["metadata"] = check_metadata(metadata)
        return self._backend.update_conversation(conv, changes)

    def delete_conversation(self, conversation_id: str, hard: bool = False) -> None:
        """Soft delete (hidden from listings, read-only, restorable) or ``hard`` (gone)."""
        conv = ConversationId.parse(conversation_id)
        if hard:
            self._backend.remove_conversation(conv)
        elif not self._backend.get_conversation(conv).deleted:
            self._backend.update_conversation(conv, {"deleted_at": utc_now()})

    def restore_conversation(self, conversation_id: str) -> Conversation:
        """Undo a soft delete."""
        conv = ConversationId.parse(conversation_id)
        return self._backend.update_conversation(conv, {"deleted_at": None})

    def sweep_retention(
        self, days: float = 30, dry_run: bool = True, *, now: datetime | None = None
    ) -> list[str]:
        """Hard-delete conversations with no activity for ``days`` days; pinned ones are kept.

        Activity is the later of the metadata's ``updated_at`` and the last message written.
        Returns the ids removed (or, with ``dry_run``, that would be). Idempotent.
        """
        if not isinstance(days, (int, float)) or isinstance(days, bool) or days <= 0:
            raise InvalidArgument("days must be a positive number")
        cutoff = (now or datetime.now(UTC)) - timedelta(days=days)
        expired = self._backend.expired(cutoff)
        if not dry_run:
            for conversation_id in expired:
                try:
                    self._backend.remove_conversation(ConversationId.parse(conversation_id))
                except ConversationNotFound:
                    pass  # removed by someone else meanwhile: the sweep is idempotent
        return expired

    # -- messages -----------------------------------------------------------------------------

    def append_message(
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
        """Store a complete message (user, system, tool or assistant) in one write.

        ``reply_to``: the seq of the message this one answers (a reply's user or tool
        message), stored as the record's ``replyTo`` and read back as ``Message.reply_to``.
        """
        conv = ConversationId.parse(conversation_id)
        record = self._message_record(
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
        return self._backend.append_message(
            conv, record, max_messages=self.max_messages_per_conversation
        )

    @staticmethod
    def _message_record(
        role: Any,
        content: Any,
        *,
        agent_id: Any = None,
        tool_calls: Any = None,
        tool_call_id: Any = None,
        name: Any = None,
        finish_reason: Any = None,
        usage: Any = None,
        reply_to: Any = None,
    ) -> dict[str, Any]:
        """The one record of a complete message, every field validated (``users/README.md``);
        the backend sets ``messageId`` and ``timestamp`` when it claims the seq."""
        check_role(role)
        check_content(content)
        record: dict[str, Any] = {"v": 1, "seq": 1, "timestamp": "", "role": role}
        if isinstance(content, str):
            record["tokens"] = content
            record["tokenCount"] = 1 if content else 0
        else:
            # Structured content (parts) is kept verbatim; ``tokens`` has its text for tools
            # that only read text.
            record["tokens"] = "".join(p.get("text", "") for p in content or [])
            record["tokenCount"] = 0
            record["content"] = content
        if agent_id is not None:
            record["agentId"] = check_short("agent_id", agent_id)
        record["status"] = "complete"
        if tool_calls:
            if not isinstance(tool_calls, list):
                raise InvalidArgument("tool_calls must be a list")
            record["toolCalls"] = tool_calls
        if tool_call_id is not None:
            record["toolCallId"] = check_short("tool_call_id", tool_call_id)
        if name is not None:
            record["name"] = check_short("name", name)
        if finish_reason is not None:
            record["finishReason"] = check_short("finish_reason", finish_reason)
        if usage is not None:
            if not isinstance(usage, dict):
                raise InvalidArgument("usage must be a dict")
            record["usage"] = usage
        if reply_to is not None:
            record["replyTo"] = _check_reply_to(reply_to)
        return record

    def stream_message(
        self,
        conversation_id: str,
        role: str = "assistant",
        agent_id: str | None = None,
        *,
        chunk_tokens: int | None = None,
        flush_interval: float | None = _UNSET,
        reply_to: int | None = None,
    ) -> MessageWriter:
        """Start a streamed message; write tokens with ``append`` and end with ``finish``.

        ``reply_to``: the seq of the message this one answers (see ``append_message``).
        """
        conv = ConversationId.parse(conversation_id)
        check_role(role)
        if agent_id is not None:
            check_short("agent_id", agent_id)
        if chunk_tokens is not None:
            positive_int("chunk_tokens", chunk_tokens)
        if reply_to is not None:
            _check_reply_to(reply_to)
        sink = self._backend.open_stream(
            conv, role=role, max_messages=self.max_messages_per_conversation
        )
        return MessageWriter(
            sink,
            role=role,
            agent_id=agent_id,
            chunk_tokens=chunk_tokens or self.chunk_tokens,
            flush_interval=self.flush_interval if flush_interval is _UNSET else flush_interval,
            durability=self.durability,
            reply_to=reply_to,
        )

    def append_turn(
        self,
        conversation_id: str,
        messages: Sequence[Mapping[str, Any]],
        *,
        refuse_while_streaming: bool = False,
    ) -> Turn:
        """Continue a conversation with the messages a chat client sent (OpenAI chat form:
        ``role``, ``content``, ``tool_calls``, ``tool_call_id``, ``name``).

        Clients resend some or all of the history: what the stored history already ends with
        is skipped (``_turns.merge_history``), and of the rest the ``user``, ``assistant`` and
        ``tool`` messages are stored, in order. Every message is validated before the first
        is stored, so a turn is stored whole or not at all (short of a failing disk).
        ``ConversationDeleted`` for a soft-deleted conversation. With
        ``refuse_while_streaming``, ``ReplyStreaming`` (and nothing stored) while the
        conversation's last message is a reply still streaming, wherever its writer runs:
        the caller waits and tries again, so its history holds that reply whole.
        """
        conv = ConversationId.parse(conversation_id)
        records = [self._turn_record(m) for m in messages]
        if self._backend.get_conversation(conv).deleted:
            raise ConversationDeleted(f"conversation {conv} is deleted: restore it to write")
        stored_history = self._backend.messages(conv, 0, None)
        if refuse_while_streaming and stored_history and stored_history[-1].status == "streaming":
            last = stored_history[-1].id
            raise ReplyStreaming(f"reply {last} of {conv} is still streaming", last)
        history = [m.to_openai() for m in stored_history if replayable(m)]
        overlap = merge_history(history, messages)
        new = [dict(m) for m in messages[overlap:]]
        stored = [
            self._backend.append_message(
                conv, record, max_messages=self.max_messages_per_conversation
            )
            for record in records[overlap:]
            if record is not None
        ]
        answers = next(
            (m.seq for m in reversed([*stored_history, *stored]) if m.role in QUESTION_ROLES),
            None,
        )
        return Turn(history, new, stored, answers)

    def _turn_record(self, message: Mapping[str, Any]) -> dict[str, Any] | None:
        """The record of one message a client sent, or None for a role a turn does not store."""
        if not isinstance(message, Mapping):
            raise InvalidArgument("each message must be an object")
        if message.get("role") not in STORED_ROLES:
            return None
        calls = message.get("tool_calls")
        return self._message_record(
            message["role"],
            message.get("content"),
            tool_calls=calls if isinstance(calls, list) else None,
            tool_call_id=message.get("tool_call_id"),
            name=message.get("name"),
        )

    def messages(
        self, conversation_id: str, after_seq: int = 0, limit: int | None = 50
    ) -> list[Message]:
        """Rebuilt messages with ``seq > after_seq`` in seq order, at most ``limit`` (None: all)."""
        conv = ConversationId.parse(conversation_id)
        if not isinstance(after_seq, int) or isinstance(after_seq, bool) or after_seq < 0:
            raise InvalidArgument("after_seq must be an integer >= 0")
        if limit is not None:
            positive_int("limit", limit)
        return self._backend.messages(conv, after_seq, limit)

    def message_count(self, conversation_id: str) -> int:
        """How many messages the conversation holds (streaming ones included, deleted not)."""
        return self._backend.message_count(ConversationId.parse(conversation_id))

    def delete_message(self, conversation_id: str, message_id: str) -> bool:
        """Delete one message of a conversation: it no longer reads back, nor is it replayed.

        Its seq stays taken (the next message does not reuse it; later seqs do not move).
        True if it was deleted now, False if there is no such message or it is already
        deleted. ``ConversationDeleted`` for a soft-deleted conversation; ``InvalidArgument``
        for a message of another conversation, or one still streaming (end it first).
        """
        conv = ConversationId.parse(conversation_id)
        mid = MessageId.parse(message_id)
        if mid.conversation_id != conv:
            raise InvalidArgument(f"message {mid} is not in conversation {conv}")
        return self._backend.delete_message(conv, mid.seq)

    # -- integrity ----------------------------------------------------------------------------

    def check(self, fix: bool = False) -> list[Problem]:
        """Walk the store and report every broken invariant; ``fix`` repairs what is safe."""
        return self._backend.check(bool(fix))


def _check_reply_to(value: Any) -> int:
    """A ``reply_to``: the seq of a message, a positive integer of at most 18 digits."""
    positive_int("reply_to", value, maximum=_MAX_SEQ)
    result: int = value
    return result


def _search_offset(cursor: object) -> int:
    """The position a search cursor continues from (cursors are what ``search`` hands out:
    the decimal number of results already seen)."""
    if cursor is None:
        return 0
    if not isinstance(cursor, str) or not cursor.isdecimal() or len(cursor) > 9:
        raise InvalidArgument("invalid search cursor")
    return int(cursor)


def _digest(principal: str) -> str:
    check_principal(principal)
    return hashlib.sha256(principal.encode("utf-8", "surrogatepass")).hexdigest()
