"""Moving data losslessly: export, import, and copy between stores of any backend.

One format carries everything (the export format, JSON Lines, version 1): a header line
``{"type": "export", "format": "chunkstore-export", "version": 1, ...}``, then per user a
``{"type": "user", "id", "created_at", "sessions", "last_conversation"}`` line followed by its
conversations, each a
``{"type": "conversation", ..., "last_seq"}`` line and one ``{"type": "message", ...}`` line per
seq from 1 to ``last_seq`` (a deleted message is ``{"type": "message", "id", "seq",
"deleted": true}``: its content is gone, its seq stays claimed). Conversations converted from
other apps (``_foreign``) have no ids: ``"id": null`` and ``metadata`` naming their ``source``
and ``source_id``.

Design decisions, and why:

* **What is exported is what reads back.** A conversation is exported from its rebuilt form
  (``Backend.dump_conversation``: the ``Conversation`` and its ``Message`` values), never from
  a backend's files or rows: the format is the same whatever the source, and a copy is right
  exactly when the destination rebuilds what the source rebuilt. An import turns each message
  back into records with ``_rebuild.message_records``, the exact inverse of
  ``rebuild_message``, so it reads back equal on every backend.
* **A conversation is the unit of atomicity** (``Backend.import_conversation``: one rename of
  a whole directory, one SQL transaction): an interrupted import or copy leaves each
  conversation whole or absent, and running it again skips the ones already there. That is
  what makes both idempotent and resumable, without a journal.
* **Idempotency is by content, not by a marker.** A conversation whose id exists in the
  destination is compared with what is being imported (``_fingerprint``: every exported
  field but the ids, ``streaming`` read as ``interrupted``): identical → skipped; different →
  a *clash*: it is imported under the next free number of the same user, and the mapping
  ``{old: new}`` is reported. A second run finds that copy (same creation time and content)
  and skips it too, so importing twice changes nothing. Writing a provenance marker into the
  metadata would have changed the very data being moved.
* **Users follow their sessions.** A user is the same person as a destination user that
  already holds one of its session digests (a session must keep finding its conversations);
  else it keeps its number if that is free; else it gets a new number (mapped, reported).
  Its sessions are registered to it, so the edge finds the user after a move.
* **Foreign conversations** get a new id in the target user (``user=``) and are skipped when
  that user already has a conversation with the same ``source`` + ``source_id`` metadata.
  Ones the converters could not read come as ``Skipped`` values: recorded in the report with
  their reason, never dropped silently.
* **A user's conversation counter travels too** (``last_conversation`` on its line, an
  addition to the format's user line, optional on import): a hard-deleted conversation is not
  exported, but its number stays spent in the destination, as ids are never reused.
* **Input is validated before anything of a conversation is written**; a bad line is an
  ``InvalidArgument`` naming its line number. A ``streaming`` message is imported as
  ``interrupted``: no writer of it is alive in the destination.
* **A copy verifies**: after each conversation is imported, the destination's rebuild is
  compared with the source's (the exported lines), and each user's sessions must find the
  destination user; a difference is a ``TransferMismatch`` naming the conversation.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

from ._backend import Backend, ConversationDump, ConversationImport, MessageImport
from ._exceptions import (
    ConversationNotFound,
    InvalidArgument,
    InvalidId,
    TransferMismatch,
    UserNotFound,
)
from ._ids import ConversationId, MessageId, UserId
from ._models import Conversation, Message, MessageStatus
from ._rebuild import TERMINAL, message_records
from ._store import Store
from ._url import redact_url
from ._validate import (
    MAX_PAGE,
    check_content,
    check_metadata,
    check_participants,
    check_role,
    check_title,
)
from ._writer import utc_now

__all__ = [
    "EXPORT_FORMAT",
    "EXPORT_VERSION",
    "ImportReport",
    "SkippedConversation",
    "copy_store",
    "export_lines",
    "foreign_lines",
    "import_lines",
]

EXPORT_FORMAT = "chunkstore-export"
EXPORT_VERSION = 1

_STATUSES = frozenset({"complete", "error", "interrupted", "streaming"})
_DIGEST = re.compile(r"[0-9a-f]{64}")
_MAX_SEQ = 10**18 - 1
_MAX_TIME_CHARS = 64
# The fields of a message line, in the order they are written (those of ``Message``).
_MESSAGE_FIELDS = (
    "id",
    "seq",
    "role",
    "content",
    "status",
    "created_at",
    "completed_at",
    "agent_id",
    "finish_reason",
    "usage",
    "tool_calls",
    "tool_call_id",
    "name",
    "error",
    "token_count",
    "reply_to",
)
_CONVERSATION_FIELDS = (
    "title",
    "created_at",
    "updated_at",
    "pinned",
    "metadata",
    "participants",
    "deleted_at",
)
# Keys a line may carry besides its fields: ``show --json`` and the export before version 1
# wrote ``damaged`` (what was unreadable then: nothing to import).
_TOLERATED = frozenset({"type", "damaged"})


@dataclass(frozen=True, slots=True)
class SkippedConversation:
    """A conversation an import did not store, and why (never dropped silently)."""

    source_id: str | None
    title: str | None
    reason: str

    def __str__(self) -> str:
        what = self.source_id or "?"
        if self.title:
            what += f" ({self.title!r})"
        return f"skipped {what}: {self.reason}"


@dataclass(slots=True)
class ImportReport:
    """What an import (or a copy) did. ``mapped`` holds every id that changed, users and
    conversations, ``{old: new}``; ``skipped`` the foreign conversations not stored."""

    users_imported: int = 0
    users_existing: int = 0
    conversations_imported: int = 0
    conversations_identical: int = 0
    messages_imported: int = 0
    conversations_verified: int = 0
    mapped: dict[str, str] = field(default_factory=dict)
    skipped: list[SkippedConversation] = field(default_factory=list)

    def summary(self) -> str:
        """One line for a person: the counts."""
        parts = [
            f"{self.users_imported} user(s) created ({self.users_existing} already there)",
            f"{self.conversations_imported} conversation(s) imported",
            f"{self.messages_imported} message(s)",
            f"{self.conversations_identical} conversation(s) already there (skipped)",
            f"{len(self.mapped)} id(s) mapped",
            f"{len(self.skipped)} foreign conversation(s) skipped",
        ]
        if self.conversations_verified:
            parts.append(f"{self.conversations_verified} conversation(s) verified")
        return ", ".join(parts)


# -- export -------------------------------------------------------------------------------------


def export_lines(
    store: Store,
    *,
    users: Sequence[str] | None = None,
    conversations: Sequence[str] | None = None,
    source: str | None = None,
    sessions: bool = True,
) -> Iterator[dict[str, Any]]:
    """The export of ``store``: the header line, then each user's line and its
    conversations (oldest first, soft-deleted ones included) with their messages.

    ``users`` limits it to those users, ``conversations`` to those conversations (and the
    lines of their users). Every id is checked now, before the first line is made: a typo
    fails the export, not its tail. ``source``: the header's ``source`` (default: the
    store's location, any password hidden). ``sessions=False`` leaves each user's
    ``sessions`` empty: the digests of its principals (API keys, session ids) are how a store
    finds the user, not the user's data; an export handed to a client leaves them out (an
    import then matches the user by number, or makes a new one).
    """
    backend = store.backend
    if conversations is not None:
        wanted = [ConversationId.parse(c) for c in conversations]
        for conv in wanted:
            backend.get_conversation(conv)  # ConversationNotFound now, not mid-export
        by_user: dict[UserId, list[ConversationId]] = {}
        for conv in wanted:
            if conv not in by_user.setdefault(conv.user_id, []):
                by_user[conv.user_id].append(conv)
        plan: list[tuple[UserId, list[ConversationId] | None]] = list(by_user.items())
    else:
        chosen = [UserId.parse(u) for u in (backend.users() if users is None else users)]
        if users is not None:
            known = set(backend.users())
            for user in chosen:
                if str(user) not in known:
                    raise UserNotFound(f"no user {user}")
        plan = [(user, None) for user in chosen]
    return _export(
        store, plan, redact_url(backend.describe()) if source is None else source, sessions
    )


def _export(
    store: Store,
    plan: list[tuple[UserId, list[ConversationId] | None]],
    source: str,
    sessions: bool,
) -> Iterator[dict[str, Any]]:
    backend = store.backend
    yield {
        "type": "export",
        "format": EXPORT_FORMAT,
        "version": EXPORT_VERSION,
        "exported_at": utc_now(),
        "source": source,
    }
    # One call for every user: the file store reads its whole session registry per call.
    records = backend.user_records([user for user, _ in plan])
    for (user, chosen), record in zip(plan, records, strict=True):
        yield {
            "type": "user",
            "id": record.id,
            "created_at": record.created_at,
            "sessions": list(record.sessions) if sessions else [],
            "last_conversation": record.last_conversation,
        }
        for conv in chosen if chosen is not None else conversation_ids(store, str(user)):
            try:
                dump = backend.dump_conversation(conv)
            except ConversationNotFound:
                continue  # hard-deleted since it was listed: nothing left to export
            yield from dump_lines(dump)


def conversation_ids(store: Store, user: str) -> list[ConversationId]:
    """Every conversation of ``user``, soft-deleted ones too, oldest first."""
    out: list[ConversationId] = []
    cursor = None
    while True:
        page = store.list_conversations(user, limit=MAX_PAGE, cursor=cursor, include_deleted=True)
        out.extend(ConversationId.parse(c.id) for c in page.items)
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    out.reverse()
    return out


def dump_lines(dump: ConversationDump) -> list[dict[str, Any]]:
    """A conversation's export lines: its line, then one per seq 1..``last_seq``."""
    c = dump.conversation
    lines: list[dict[str, Any]] = [
        {
            "type": "conversation",
            "id": c.id,
            "user_id": c.user_id,
            "title": c.title,
            "created_at": c.created_at,
            "updated_at": c.updated_at,
            "pinned": c.pinned,
            "metadata": dict(c.metadata),
            "participants": list(c.participants),
            "deleted_at": c.deleted_at,
            "last_seq": dump.last_seq,
        }
    ]
    live = {m.seq: m for m in dump.messages}
    conv = ConversationId.parse(c.id)
    for seq in range(1, dump.last_seq + 1):
        message = live.get(seq)
        if message is None:
            # Deleted (or lost from a damaged store): either way its seq stays claimed.
            mid = str(MessageId(conv.user, conv.n, seq))
            lines.append(
                {"type": "message", "conversation_id": c.id, "id": mid, "seq": seq, "deleted": True}
            )
        else:
            lines.append(message_line(c.id, message))
    return lines


def message_line(conversation_id: str | None, message: Message) -> dict[str, Any]:
    line: dict[str, Any] = {"type": "message", "conversation_id": conversation_id}
    for name in _MESSAGE_FIELDS:
        line[name] = getattr(message, name)
    return line


# -- import -------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Incoming:
    """One conversation of the input, validated, not stored yet."""

    line: int
    exported_id: ConversationId | None  # None: a foreign conversation
    conversation: Conversation
    last_seq: int
    messages: dict[int, Message]  # the live ones by seq (deleted seqs are the others)
    source: tuple[str, str] | None  # a foreign one's (source, source_id)

    def fingerprint(self) -> Any:
        return _fingerprint(self.conversation, self.last_seq, list(self.messages.values()))

    def data(self) -> ConversationImport:
        items = []
        for seq in range(1, self.last_seq + 1):
            message = self.messages.get(seq)
            if message is None:
                items.append(MessageImport(seq, _placeholder(self.conversation), deleted=True))
            else:
                items.append(MessageImport(seq, message_records(message)))
        return ConversationImport(self.conversation, self.last_seq, items)


def _placeholder(conversation: Conversation) -> list[dict[str, Any]]:
    """The records of a deleted message whose content is gone: something has to hold its seq
    (a file, a row), and it never reads back."""
    return [
        {
            "v": 1,
            "seq": 1,
            "tokens": "",
            "tokenCount": 0,
            "timestamp": conversation.created_at,
            "role": "assistant",
            "status": "complete",
        }
    ]


def _fingerprint(conversation: Conversation, last_seq: int, messages: list[Message]) -> Any:
    """What must be equal for two conversations to be the same: every exported field but
    the ids (a mapped copy has other ids), ``streaming`` read as ``interrupted``."""
    fields = tuple(_json(getattr(conversation, name)) for name in _CONVERSATION_FIELDS)
    rows = []
    for m in messages:
        row = [_json(getattr(m, name)) for name in _MESSAGE_FIELDS[1:]]
        if m.status == "streaming":
            row[_MESSAGE_FIELDS.index("status") - 1] = _json("interrupted")
        rows.append(tuple(row))
    return (fields, last_seq, tuple(rows))


def _json(value: Any) -> bytes:
    # Compared as JSON: what the export writes (1 and 1.0, key order of dicts as given).
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def foreign_lines(items: Iterable[Any], report: ImportReport) -> Iterator[dict[str, Any]]:
    """The lines of the conversations a ``_foreign`` reader yields (each a list of lines),
    for ``import_lines``; each ``Skipped`` it yields instead is recorded in ``report``."""
    for item in items:
        if isinstance(item, list):
            yield from item
        else:
            report.skipped.append(
                SkippedConversation(
                    getattr(item, "source_id", None),
                    getattr(item, "title", None),
                    str(getattr(item, "reason", "not readable")),
                )
            )


def import_lines(
    store: Store,
    lines: Iterable[Mapping[str, Any] | bytes | str],
    *,
    user: str | None = None,
    verify: bool = False,
    report: ImportReport | None = None,
    progress: Callable[[str], object] | None = None,
) -> ImportReport:
    """Import export lines (dicts, or their JSON text) into ``store``; idempotent.

    ``user``: the user that receives foreign conversations (lines without ids); required
    if there are any. ``verify``: rebuild each imported conversation and compare it with its
    lines (``TransferMismatch`` if it differs). ``report``: add to this report (else a new
    one). ``progress`` is called with each conversation's id (or its source id) once done.
    """
    importer = _Importer(store, user, verify, report or ImportReport(), progress)
    importer.run(lines)
    return importer.report


class _Importer:
    def __init__(
        self,
        store: Store,
        user: str | None,
        verify: bool,
        report: ImportReport,
        progress: Callable[[str], object] | None,
    ) -> None:
        self.store = store
        self.backend: Backend = store.backend
        self.foreign_user = UserId.parse(user) if user is not None else None
        if self.foreign_user is not None:
            self.backend.user_records([self.foreign_user])  # UserNotFound now
        self.verify = verify
        self.report = report
        self.progress = progress
        self.users: dict[UserId, UserId] = {}  # exported user -> destination user
        self.existing_users = {UserId.parse(u) for u in self.backend.users()}
        # Per destination user, built on first need: conversations by creation time (to
        # find a clash's earlier copy) and foreign ones by (source, source_id).
        self.by_created: dict[UserId, dict[str, list[ConversationId]]] = {}
        self.by_source: dict[UserId, dict[tuple[str, str], str]] = {}

    # -- the line loop --------------------------------------------------------------------

    def run(self, lines: Iterable[Mapping[str, Any] | bytes | str]) -> None:
        pending: tuple[int, dict[str, Any], list[tuple[int, dict[str, Any]]]] | None = None
        for number, raw in enumerate(lines, 1):
            line = _parse(raw, number)
            if line is None:
                continue
            kind = line.get("type")
            if kind == "message":
                if pending is None:
                    raise _bad(number, "a message line before any conversation line")
                pending[2].append((number, line))
                continue
            if pending is not None:
                self.conversation(*pending)
                pending = None
            if kind == "export":
                if number != 1:
                    raise _bad(number, "the export header must be the first line")
                _check_header(line, number)
            elif kind == "user":
                self.user_line(line, number)
            elif kind == "conversation":
                pending = (number, line, [])
            else:
                raise _bad(number, f"unknown line type {kind!r}")
        if pending is not None:
            self.conversation(*pending)

    # -- users --------------------------------------------------------------------------

    def user_line(self, line: dict[str, Any], number: int) -> None:
        _only(line, ("id", "created_at", "sessions", "last_conversation"), number)
        exported = _user_id(line.get("id"), number)
        created_at = _time(line.get("created_at"), "created_at", number)
        sessions = line.get("sessions")
        if not isinstance(sessions, list) or not all(
            isinstance(d, str) and _DIGEST.fullmatch(d) for d in sessions
        ):
            raise _bad(number, "sessions must be a list of SHA-256 hex digests")
        counter = _count(line.get("last_conversation", 0), "last_conversation", number)
        if exported in self.users:
            raise _bad(number, f"user {exported} appears twice")
        self.users[exported] = self.resolve_user(exported, created_at, sessions, counter)

    def resolve_user(
        self, exported: UserId, created_at: str, sessions: list[str], counter: int = 0
    ) -> UserId:
        backend = self.backend
        owners = set()
        for digest in sessions:
            found = backend.find_user(digest)
            if found is not None and UserId.parse(found) in self.existing_users:
                owners.add(UserId.parse(found))
        if owners:
            # The same person: a session of theirs already finds this user.
            target = min(owners)
            backend.add_sessions(target, sessions)
            self.report.users_existing += 1
            return self.mapped(exported, target)
        if exported not in self.existing_users:
            created = backend.import_user(
                exported, created_at=created_at, sessions=sessions, last_conversation=counter
            )
            if created is not None:
                return self.created(exported, UserId.parse(created))
        else:
            (record,) = backend.user_records([exported])
            if not record.sessions and not sessions:
                # Nothing tells them apart (no sessions either side): the same user.
                self.report.users_existing += 1
                return exported
        created = backend.import_user(
            None, created_at=created_at, sessions=sessions, last_conversation=counter
        )
        assert created is not None  # a new number is always free
        return self.created(exported, UserId.parse(created))

    def created(self, exported: UserId, target: UserId) -> UserId:
        self.existing_users.add(target)
        self.report.users_imported += 1
        return self.mapped(exported, target)

    def mapped(self, exported: UserId, target: UserId) -> UserId:
        if exported != target:
            self.report.mapped[str(exported)] = str(target)
        return target

    def user_of(self, exported: UserId, created_at: str) -> UserId:
        """The destination of a conversation's user that had no user line (an export made
        before the format had them): the user of that number, created if missing."""
        target = self.users.get(exported)
        if target is None:
            if exported in self.existing_users:
                target = exported
                self.report.users_existing += 1
            else:
                target = self.resolve_user(exported, created_at, [])
            self.users[exported] = target
        return target

    # -- conversations ------------------------------------------------------------------

    def conversation(
        self, number: int, line: dict[str, Any], messages: list[tuple[int, dict[str, Any]]]
    ) -> None:
        try:
            incoming = _incoming(number, line, messages)
        except InvalidArgument as exc:
            if line.get("id") is not None or line.get("user_id") is not None:
                raise  # a chunkstore export that does not hold: the file is damaged
            # A converted conversation the converter got wrong: the others still go in,
            # and this one is reported, never dropped silently.
            metadata = line.get("metadata")
            source_id = metadata.get("source_id") if isinstance(metadata, dict) else None
            title = line.get("title")
            self.report.skipped.append(
                SkippedConversation(
                    source_id if isinstance(source_id, str) else None,
                    title if isinstance(title, str) else None,
                    f"not importable: {exc}",
                )
            )
            return
        if incoming.exported_id is None:
            done = self.foreign(incoming)
        else:
            done = self.native(incoming, incoming.exported_id)
        if self.progress is not None:
            self.progress(done)

    def native(self, incoming: _Incoming, exported: ConversationId) -> str:
        target = self.user_of(exported.user_id, incoming.conversation.created_at)
        wanted = ConversationId(target.n, exported.n)
        fingerprint = incoming.fingerprint()
        try:
            there: ConversationDump | None = self.backend.dump_conversation(wanted)
        except ConversationNotFound:
            there = None
        if there is not None and _dump_fingerprint(there) == fingerprint:
            return self.identical(exported, wanted)
        new = None
        if there is None:
            new = self.backend.import_conversation(target, wanted.n, incoming.data())
        if new is None:
            # A clash: another conversation holds that id. Imported before under another
            # number? Then that copy is this conversation: nothing to do.
            twin = self.find_twin(target, incoming, fingerprint)
            if twin is not None:
                return self.identical(exported, twin)
            new = self.backend.import_conversation(target, None, incoming.data())
            assert new is not None  # a new number is always free
        return self.imported(incoming, ConversationId.parse(new), exported)

    def foreign(self, incoming: _Incoming) -> str:
        target = self.foreign_user
        if target is None:
            raise _bad(
                incoming.line,
                "a conversation without an id (converted from another app) needs a target "
                "user: --user or --principal",
            )
        assert incoming.source is not None
        sources = self.sources(target)
        found = sources.get(incoming.source)
        if found is not None:
            self.report.conversations_identical += 1
            return found
        new = self.backend.import_conversation(target, None, incoming.data())
        assert new is not None
        sources[incoming.source] = new
        return self.imported(incoming, ConversationId.parse(new), None)

    def identical(self, exported: ConversationId, there: ConversationId) -> str:
        self.report.conversations_identical += 1
        if there != exported:
            self.report.mapped[str(exported)] = str(there)
        self.report.conversations_verified += self.verify
        return str(there)

    def imported(
        self, incoming: _Incoming, new: ConversationId, exported: ConversationId | None
    ) -> str:
        self.report.conversations_imported += 1
        self.report.messages_imported += len(incoming.messages)
        if exported is not None and new != exported:
            self.report.mapped[str(exported)] = str(new)
        created = self.by_created.get(new.user_id)
        if created is not None:
            created.setdefault(incoming.conversation.created_at, []).append(new)
        if self.verify:
            there = self.backend.dump_conversation(new)
            if _dump_fingerprint(there) != incoming.fingerprint():
                was = f" (from {exported})" if exported is not None and exported != new else ""
                raise TransferMismatch(
                    f"conversation {new}{was} does not rebuild in the destination as it did "
                    f"in the source: {_difference(there, incoming)}"
                )
            self.report.conversations_verified += 1
        return str(new)

    def find_twin(
        self, user: UserId, incoming: _Incoming, fingerprint: Any
    ) -> ConversationId | None:
        index = self.by_created.get(user)
        if index is None:
            index = {}
            for listed in self.all_conversations(user):
                index.setdefault(listed.created_at, []).append(ConversationId.parse(listed.id))
            self.by_created[user] = index
        for conv in index.get(incoming.conversation.created_at, []):
            try:
                if _dump_fingerprint(self.backend.dump_conversation(conv)) == fingerprint:
                    return conv
            except ConversationNotFound:
                continue
        return None

    def sources(self, user: UserId) -> dict[tuple[str, str], str]:
        index = self.by_source.get(user)
        if index is None:
            index = {}
            for conv in self.all_conversations(user):
                source, source_id = conv.metadata.get("source"), conv.metadata.get("source_id")
                if source is not None and source_id is not None:
                    index.setdefault((source, source_id), conv.id)
            self.by_source[user] = index
        return index

    def all_conversations(self, user: UserId) -> Iterator[Conversation]:
        cursor = None
        while True:
            page = self.store.list_conversations(
                str(user), limit=MAX_PAGE, cursor=cursor, include_deleted=True
            )
            yield from page.items
            if page.next_cursor is None:
                return
            cursor = page.next_cursor


def _dump_fingerprint(dump: ConversationDump) -> Any:
    return _fingerprint(dump.conversation, dump.last_seq, dump.messages)


def _difference(there: ConversationDump, incoming: _Incoming) -> str:
    """Where a verified conversation differs first, for the error."""
    ours, theirs = _dump_fingerprint(there), incoming.fingerprint()
    for name, a, b in zip(_CONVERSATION_FIELDS, ours[0], theirs[0], strict=True):
        if a != b:
            return f"{name} is {a.decode()}, expected {b.decode()}"
    if ours[1] != theirs[1]:
        return f"last_seq is {ours[1]}, expected {theirs[1]}"
    seqs = [m.seq for m in there.messages]
    wanted = list(incoming.messages)
    if seqs != wanted:
        return f"message seqs are {seqs[:20]}, expected {wanted[:20]}"
    for seq, a_row, b_row in zip(seqs, ours[2], theirs[2], strict=True):
        for name, a, b in zip(_MESSAGE_FIELDS[1:], a_row, b_row, strict=True):
            if a != b:
                return f"message {seq}: {name} is {a.decode()[:200]}, expected {b.decode()[:200]}"
    return "they differ"  # pragma: no cover - the fingerprints differed somewhere above


# -- validation of the lines --------------------------------------------------------------------


def _bad(number: int, message: str) -> InvalidArgument:
    return InvalidArgument(f"line {number}: {message}")


def _parse(raw: Mapping[str, Any] | bytes | str, number: int) -> dict[str, Any] | None:
    if isinstance(raw, (bytes, str)):
        if not raw.strip():
            return None
        try:
            raw = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise _bad(number, f"not JSON: {exc}") from None
    if not isinstance(raw, Mapping):
        raise _bad(number, "not a JSON object")
    return dict(raw)


def _check_header(line: dict[str, Any], number: int) -> None:
    if line.get("format") != EXPORT_FORMAT or line.get("version") != EXPORT_VERSION:
        raise _bad(
            number,
            f"unknown export format {line.get('format')!r} version {line.get('version')!r}: "
            f"this chunkstore reads {EXPORT_FORMAT!r} version {EXPORT_VERSION}",
        )


def _only(line: dict[str, Any], fields: Iterable[str], number: int) -> None:
    unknown = line.keys() - _TOLERATED - set(fields)
    if unknown:
        raise _bad(number, f"unknown field(s) {sorted(unknown)} in a {line.get('type')} line")


def _user_id(value: Any, number: int) -> UserId:
    try:
        return UserId.parse(value)
    except InvalidId as exc:
        raise _bad(number, str(exc)) from None


def _time(value: Any, name: str, number: int, *, empty: bool = False) -> str:
    """An ISO 8601 time as the store writes it (``""`` only where a damaged store has one)."""
    if isinstance(value, str) and (value or empty) and len(value) <= _MAX_TIME_CHARS:
        if not value:
            return value
        try:
            datetime.fromisoformat(value.replace("Z", "+00:00"))
            return value
        except ValueError:
            pass
    raise _bad(number, f"{name} must be an ISO 8601 time, got {value!r}")


def _optional_text(line: dict[str, Any], name: str, number: int) -> str | None:
    value = line.get(name)
    if value is not None and not isinstance(value, str):
        raise _bad(number, f"{name} must be a string or null")
    return value


def _count(value: Any, name: str, number: int, *, minimum: int = 0) -> int:
    if type(value) is not int or not minimum <= value <= _MAX_SEQ:
        raise _bad(number, f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def _incoming(
    number: int, line: dict[str, Any], message_lines: list[tuple[int, dict[str, Any]]]
) -> _Incoming:
    _only(line, ("id", "user_id", *_CONVERSATION_FIELDS, "last_seq"), number)
    raw_id = line.get("id")
    exported: ConversationId | None = None
    if raw_id is not None:
        try:
            exported = ConversationId.parse(raw_id)
        except InvalidId as exc:
            raise _bad(number, str(exc)) from None
        if line.get("user_id") != str(exported.user_id):
            raise _bad(number, f"user_id must be {exported.user_id} for {exported}")
    elif line.get("user_id") is not None:
        raise _bad(number, "a conversation without an id has no user_id")
    try:
        title = check_title(line.get("title"))
        metadata = check_metadata(line.get("metadata") or {})
        participants = check_participants(line.get("participants") or [])
    except InvalidArgument as exc:
        raise _bad(number, str(exc)) from None
    pinned = line.get("pinned", False)
    if not isinstance(pinned, bool):
        raise _bad(number, "pinned must be true or false")
    deleted_at = line.get("deleted_at")
    conversation = Conversation(
        id="",
        user_id="",
        title=title,
        created_at=_time(line.get("created_at"), "created_at", number),
        updated_at=_time(line.get("updated_at"), "updated_at", number),
        pinned=pinned,
        metadata=metadata,
        participants=participants,
        deleted_at=None if deleted_at is None else _time(deleted_at, "deleted_at", number),
    )
    source = None
    if exported is None:
        kind, source_id = metadata.get("source"), metadata.get("source_id")
        if not kind or not source_id:
            raise _bad(
                number,
                "a conversation without an id needs metadata 'source' and 'source_id' "
                "(what makes importing it twice a no-op)",
            )
        source = (kind, source_id)
    messages: dict[int, Message] = {}
    seen = 0
    for at, message_line in message_lines:
        seq, message = _message(at, message_line, raw_id)
        if seq <= seen:
            raise _bad(at, f"message seq {seq} after seq {seen}: seqs must increase")
        seen = seq
        if message is not None:
            messages[seq] = message
    last_seq = line.get("last_seq")
    if last_seq is None:
        last_seq = seen  # an export made before the format had it
    _count(last_seq, "last_seq", number)
    if last_seq < seen:
        raise _bad(number, f"last_seq {last_seq} is below message seq {seen}")
    return _Incoming(number, exported, conversation, last_seq, messages, source)


def _message(
    number: int, line: dict[str, Any], conversation_id: str | None
) -> tuple[int, Message | None]:
    """``(seq, the message)``; the message None for a deleted one."""
    if line.get("conversation_id") != conversation_id:
        raise _bad(number, f"conversation_id must be {conversation_id!r}, as its conversation's")
    seq = _count(line.get("seq"), "seq", number, minimum=1)
    raw_id = line.get("id")
    if conversation_id is None:
        if raw_id is not None:
            raise _bad(number, "a message of a conversation without an id has no id")
    elif raw_id != f"{conversation_id}-ms{seq:02d}":
        raise _bad(number, f"message id must be {conversation_id}-ms{seq:02d}, got {raw_id!r}")
    if line.get("deleted") is True:
        _only(line, ("conversation_id", "id", "seq", "deleted"), number)
        return seq, None
    _only(line, ("conversation_id", *_MESSAGE_FIELDS, "deleted"), number)
    if line.get("deleted") not in (None, False):
        raise _bad(number, "deleted must be true or false")
    try:
        check_role(line.get("role"))
        check_content(line.get("content"))
    except InvalidArgument as exc:
        raise _bad(number, str(exc)) from None
    status: MessageStatus = line.get("status")  # type: ignore[assignment]  # checked below
    if status not in _STATUSES:
        raise _bad(number, f"status must be one of {sorted(_STATUSES)}, got {status!r}")
    if status == "streaming":
        status = "interrupted"  # no writer of it is alive here
    completed_at = line.get("completed_at")
    if status in TERMINAL:
        if completed_at is not None:
            completed_at = _time(completed_at, "completed_at", number, empty=True)
    elif completed_at is not None:
        raise _bad(number, f"completed_at must be null for a message {status}")
    usage = line.get("usage")
    if usage is not None and not isinstance(usage, dict):
        raise _bad(number, "usage must be an object or null")
    tool_calls = line.get("tool_calls")
    if tool_calls is not None and not isinstance(tool_calls, list):
        raise _bad(number, "tool_calls must be a list or null")
    reply_to = line.get("reply_to")
    if reply_to is not None:
        _count(reply_to, "reply_to", number, minimum=1)
    message = Message(
        id=raw_id or "",  # the destination names it
        seq=seq,
        role=line["role"],
        content=line.get("content"),
        status=status,
        created_at=_time(line.get("created_at"), "created_at", number, empty=True),
        completed_at=completed_at,
        agent_id=_optional_text(line, "agent_id", number),
        finish_reason=_optional_text(line, "finish_reason", number),
        usage=usage,
        tool_calls=tool_calls,
        tool_call_id=_optional_text(line, "tool_call_id", number),
        name=_optional_text(line, "name", number),
        error=line.get("error"),
        token_count=_count(line.get("token_count", 0), "token_count", number),
        reply_to=reply_to,
    )
    return seq, message


# -- copy ---------------------------------------------------------------------------------------


def copy_store(
    source: Store,
    destination: Store,
    *,
    progress: Callable[[int, int], object] | None = None,
) -> ImportReport:
    """Copy every user and conversation of ``source`` into ``destination`` (any backends),
    verified: each conversation is rebuilt in the destination and compared with the
    source's rebuild, and each user's sessions must find its destination user
    (``TransferMismatch`` naming what differs). Resumable: run it again after an
    interruption and what is there already is skipped. ``progress(done, total)`` after each
    conversation."""
    total = sum(len(conversation_ids(source, u)) for u in source.users())
    done = 0

    def step(_: str) -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total)

    if progress is not None:
        progress(0, total)
    importer = _Importer(destination, None, True, ImportReport(), step)
    importer.run(export_lines(source))
    users = [UserId.parse(u) for u in source.users()]
    for record in source.backend.user_records(users):
        exported = UserId.parse(record.id)
        target = importer.users.get(exported, exported)
        for digest in record.sessions:
            found = destination.backend.find_user(digest)
            if found != str(target):
                raise TransferMismatch(
                    f"a session of user {exported} finds {found or 'no user'} in the "
                    f"destination, not {target}"
                )
    return importer.report
