"""The seam between the public API and the storage engines: ``Backend`` and ``StreamSink``.

``Store`` (the front, ``_store.py``) owns everything the engines share: it parses ids,
hashes principals, validates every argument, builds the records of a message (the chunk record
format of ``users/README.md``: ``v``, ``messageId``, ``seq``, ``tokens``, ``tokenCount``,
``timestamp``, ``role``, ``agentId``, ``status``, ``finishReason``, ``usage``, ``error``,
``toolCalls``, ``toolCallId``, ``name``, ``content``), buffers a streamed message's tokens and
decides when a chunk is due, and turns records into ``Message`` values with the one status rule
(``_rebuild.rebuild_message``). A backend is called with parsed ids and valid values only, and
stores and finds; it never validates user input again.

Contract every backend keeps (the conformance suite, ``tests/conformance``, checks it):

* Ids keep the ``us01-co12-ms02`` form on every backend: a backend maps them to its own keys.
  User and conversation numbers are never reused, even after a hard delete.
* Message seqs are claimed atomically with the message's first write, gap-free and unique
  across threads and processes (and machines, where the engine is shared).
* ``durability``: ``"chunk"`` — a chunk is durable when ``write_chunk(durable=True)`` returns;
  ``"message"`` — durable when sealed; ``"none"`` — never synced.
* A streamed message whose sink is alive reads back ``streaming``; once its writer is gone
  without sealing (``release``, a crash, a killed process), ``interrupted`` with every chunk
  written so far. Liveness is a lock the writer's process holds, never a timeout.
* Errors are the ``ChunkstoreError`` tree: ``UserNotFound``, ``ConversationNotFound`` (a
  missing id), ``ConversationDeleted`` (writing to a soft-deleted one), ``LimitExceeded``,
  ``LockTimeout`` (a lock or a locked database not had within ``lock_timeout``),
  ``StorageError`` (the engine failed: I/O, a full disk, a corrupt database...).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from ._ids import ConversationId, MessageId, UserId
from ._models import Conversation, ConversationPage, Message, Problem
from ._search import SearchMatch

__all__ = [
    "Backend",
    "ConversationDump",
    "ConversationImport",
    "MessageImport",
    "StreamSink",
    "UserRecord",
]


@dataclass(frozen=True, slots=True)
class UserRecord:
    """What a store knows of a user beyond its conversations (``Backend.user_records``)."""

    id: str
    created_at: str
    # The SHA-256 hex digests of the user's principals, sorted: how a session finds its user.
    sessions: list[str]
    # The highest conversation number ever handed out (hard-deleted ones included): a copy
    # keeps it, so no number is handed out twice in the destination either.
    last_conversation: int


@dataclass(frozen=True, slots=True)
class ConversationDump:
    """A whole conversation as a backend holds it (``Backend.dump_conversation``): what an
    export writes. Seqs from 1 to ``last_seq`` that no message in ``messages`` has are
    deleted (or, in a damaged store, lost): either way claimed, never handed out again."""

    conversation: Conversation
    last_seq: int  # the highest seq ever claimed, deleted messages included
    messages: list[Message]  # the live ones, rebuilt, in seq order


@dataclass(frozen=True, slots=True)
class MessageImport:
    """One message of a ``ConversationImport``: its chunk records (``_rebuild.message_records``;
    the backend sets each record's ``messageId``), ending in a terminal record if the message
    is final (it is stored sealed) or not (it is stored unsealed, without a writer: it reads
    back ``interrupted``). ``deleted``: stored as a deleted message (its seq claimed, the
    records only a placeholder that never reads back)."""

    seq: int
    records: list[dict[str, Any]]
    deleted: bool = False


@dataclass(frozen=True, slots=True)
class ConversationImport:
    """A whole conversation to store as it was (``Backend.import_conversation``): the
    metadata of ``conversation`` (its ``id`` and ``user_id`` are the backend's to set),
    ``last_seq``, and one ``MessageImport`` per seq 1..``last_seq``, in seq order."""

    conversation: Conversation
    last_seq: int
    messages: list[MessageImport]


class StreamSink(Protocol):
    """Where one streamed message goes while it streams. Its seq is claimed on creation."""

    @property
    def message_id(self) -> MessageId: ...

    def write_chunk(self, record: dict[str, Any], *, durable: bool) -> None:
        """Store chunk ``record["seq"]`` (1, 2, ...) of the message (status ``streaming``)."""

    def seal(self, last: dict[str, Any], *, durable: bool) -> Message:
        """Store the terminal record (status ``complete`` or ``error``) and make the message
        final; return it rebuilt. The sink is closed afterwards, whatever happens."""

    def release(self) -> None:
        """Stop without sealing (idempotent): the message reads back ``interrupted``."""


class Backend(Protocol):
    """One storage engine. Every method is synchronous and thread-safe."""

    def describe(self) -> str:
        """What ``repr(store)`` shows: the location, any password hidden."""

    def close(self) -> None:
        """Release connections, locks and the liveness lease (idempotent)."""

    def ping(self) -> None:
        """Raise ``StorageError`` unless the store can take a small durable write now."""

    # -- users ------------------------------------------------------------------------------

    def user_for(self, principal_digest: str) -> str:
        """The user of a principal (SHA-256 hex digest), created on first sight."""

    def find_user(self, principal_digest: str) -> str | None:
        """The user of a principal already seen, else None."""

    def users(self) -> list[str]:
        """Every user id, in numeric order."""

    def user_records(self, users: Sequence[UserId]) -> list[UserRecord]:
        """The record of each of ``users`` (``UserNotFound`` for a missing one), in order."""

    def import_user(
        self,
        user: UserId | None,
        *,
        created_at: str,
        sessions: Sequence[str],
        last_conversation: int = 0,
    ) -> str | None:
        """Create user ``user`` (None: the next number) with ``created_at``, its conversation
        counter at ``last_conversation``, and the principal digests ``sessions`` (a digest
        already registered keeps its user), atomically; its id, or None if that number is
        taken (nothing is written then)."""

    def add_sessions(self, user: UserId, sessions: Sequence[str]) -> int:
        """Register each digest of ``sessions`` not registered yet to ``user``; how many were.
        ``UserNotFound`` if there is no such user."""

    # -- conversations ----------------------------------------------------------------------

    def create_conversation(
        self,
        user: UserId,
        *,
        title: str | None,
        metadata: dict[str, str],
        participants: list[str],
        pinned: bool,
        max_conversations: int | None,
    ) -> Conversation:
        """A new conversation of ``user`` (``UserNotFound`` if there is no such user;
        ``LimitExceeded`` if it already has ``max_conversations``, soft-deleted included)."""

    def get_conversation(self, conv: ConversationId) -> Conversation:
        """Its metadata, soft-deleted ones too (``ConversationNotFound`` if missing)."""

    def list_conversations(
        self,
        user: UserId,
        *,
        limit: int,
        before: ConversationId | None,
        include_deleted: bool,
    ) -> ConversationPage:
        """Newest (highest number) first, at most ``limit``, numbered below ``before``."""

    def update_conversation(self, conv: ConversationId, changes: Mapping[str, Any]) -> Conversation:
        """Apply ``changes`` (any of ``title``, ``pinned``, ``metadata``, ``deleted_at``) and
        set ``updated_at`` to now, atomically (no concurrent update lost)."""

    def dump_conversation(self, conv: ConversationId) -> ConversationDump:
        """The conversation whole: metadata, ``last_seq`` and its live messages rebuilt
        (``ConversationNotFound`` if missing)."""

    def import_conversation(
        self, user: UserId, number: int | None, data: ConversationImport
    ) -> str | None:
        """Store ``data`` as conversation ``number`` of ``user`` (None: the next number) with
        its exact times, flags, ``last_seq`` and messages, ATOMICALLY: whole or not at all,
        even across a crash, so an interrupted copy resumes by skipping what is there. Its
        id; None if that number is taken (nothing is written). The user's counter moves past
        the number, so it is never handed out again. ``UserNotFound`` if there is no user."""

    def remove_conversation(self, conv: ConversationId) -> None:
        """Hard delete: the conversation and all its messages are gone."""

    def expired(self, cutoff: datetime) -> list[str]:
        """Unpinned conversations whose last activity (the later of ``updated_at`` and the
        last message written) is before ``cutoff``, in id order. Unreadable ones are skipped."""

    # -- messages ---------------------------------------------------------------------------

    def append_message(
        self, conv: ConversationId, record: dict[str, Any], *, max_messages: int | None
    ) -> Message:
        """Store a complete message of one record: claim the next seq, set the record's
        ``messageId`` and ``timestamp``, and store it durably (unless ``none``).
        ``ConversationDeleted`` for a soft-deleted conversation; ``LimitExceeded`` past
        ``max_messages``."""

    def open_stream(
        self, conv: ConversationId, *, role: str, max_messages: int | None
    ) -> StreamSink:
        """Claim the next seq for a streamed message of ``role`` and hold its liveness until
        the sink is sealed or released (same errors as ``append_message``)."""

    def messages(self, conv: ConversationId, after_seq: int, limit: int | None) -> list[Message]:
        """Rebuilt messages with ``seq > after_seq``, in seq order, at most ``limit``."""

    def message_count(self, conv: ConversationId) -> int:
        """How many messages the conversation holds (streaming ones included, deleted ones
        not)."""

    def delete_message(self, conv: ConversationId, seq: int) -> bool:
        """Delete message ``seq`` for good: from now on ``messages`` skips it and
        ``message_count`` does not count it, on every process; its seq stays claimed (never
        handed out again), so later seqs do not move. True if it was deleted now; False if
        there is no such message or it was already deleted. ``ConversationNotFound`` for a
        missing conversation, ``ConversationDeleted`` for a soft-deleted one, and
        ``InvalidArgument`` while the message is still streaming (its writer is alive)."""

    # -- search -----------------------------------------------------------------------------

    def search(
        self,
        user: UserId,
        terms: Sequence[str],
        *,
        limit: int,
        offset: int,
        include_deleted: bool,
    ) -> list[SearchMatch]:
        """The user's conversations that match ``terms`` (``_search``: every term starts a word
        of one document, the title or one finished message), in ``_search``'s ranking (title
        hits newest first, then message hits newest first with the latest matching message),
        one match per conversation; skip ``offset`` of them, return at most
        ``limit``. Soft-deleted conversations only with ``include_deleted``. An unknown user
        has no matches. The index is kept current by every write: a finished message, a new
        title, a deleted message or conversation shows in the next search."""

    # -- integrity --------------------------------------------------------------------------

    def check(self, fix: bool) -> list[Problem]:
        """Every broken invariant; ``fix`` repairs what is safe."""
