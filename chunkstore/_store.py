"""``Store``: the synchronous chunkstore API. ``AsyncStore`` wraps this class; there is no second
implementation.

Storage design (format v1, documented as a contract in ``users/README.md``): a directory per
user and per conversation, metadata files replaced atomically, and messages as immutable
files: a streamed message as chunk files written while it streams, sealed into one file when it
ends; every other message as one sealed file from the start. Message sequence numbers are
claimed under the conversation's file lock by creating the message's first file with
``O_EXCL``, so they are unique and gap-free across threads and processes.
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import itertools
import operator
import os
import shutil
import stat
import time
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from . import _fsio, _locks, _records
from ._exceptions import (
    ConversationDeleted,
    ConversationNotFound,
    InvalidArgument,
    InvalidId,
    LimitExceeded,
    StorageError,
    StoreFormatError,
    UserNotFound,
)
from ._ids import MAX_DIGITS, ConversationId, MessageId, UserId, scan_conversation_numbers
from ._layout import FORMAT_VERSION, Layout
from ._metadata import Damage, conversation_record, damaged_conversation, read_conversation_file
from ._models import Conversation, ConversationPage, Message, Problem
from ._reader import ConversationReader, conversation_io, list_message_files
from ._rebuild import message_to_line, rebuild_message
from ._writer import MessageWriter, utc_now

__all__ = ["DEFAULT_CHUNK_TOKENS", "DEFAULT_FLUSH_INTERVAL", "DURABILITY_MODES", "Store"]

Durability = Literal["chunk", "message", "none"]
DURABILITY_MODES: tuple[str, ...] = ("chunk", "message", "none")
DEFAULT_CHUNK_TOKENS = 60
DEFAULT_FLUSH_INTERVAL = 1.0
# Locks are held for milliseconds; a long bound only matters under extreme contention.
DEFAULT_LOCK_TIMEOUT = 30.0
DEFAULT_CACHE_CONVERSATIONS = 256

ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})
MAX_TITLE_CHARS = 512
MAX_PRINCIPAL_CHARS = 4096
# OpenAI's limits for conversation metadata: 16 pairs, 64-char keys, 512-char values.
MAX_METADATA_PAIRS = 16
MAX_METADATA_KEY = 64
MAX_METADATA_VALUE = 512
MAX_PAGE = 1000

_UNSET: Any = object()
_META_CACHE_SIZE = 8192
# Gaps a listing probes (one failed lstat each, ~3 us) before it lists the whole directory
# instead (~0.5 us per entry): a few hundred microseconds at most, against ~5 ms at 10,000.
_PROBE_MISSES = 128
_MAX_NUMBER = 10**MAX_DIGITS - 1


@dataclass(frozen=True, slots=True)
class _KnownNumbers:
    """What is known of which conversation numbers exist for one user.

    Every existing number >= ``floor`` is in ``numbers`` (newest first); below ``floor``
    nothing is known. A full listing knows all (floor 1); a trusted counter alone knows that
    nothing exists above it (floor counter + 1, no numbers); probing moves the floor down.

    Validation rule: these facts hold while the conversations directory keeps ``identity``
    (device, inode, mtime, ctime), because creating or removing a conversation renames a name
    into or out of it, which moves its mtime and ctime. They are kept across calls only if that
    ctime was ``settled`` (older than the filesystem's timestamp granularity) when the
    directory was looked at: then any later change must show as a new ctime.
    """

    identity: tuple[int, int, int, int]
    settled: bool
    floor: int
    numbers: list[int]

    def extended(self, floor: int, found: list[int]) -> _KnownNumbers:
        """These facts, plus a probe from ``self.floor - 1`` down to ``floor`` that found
        ``found`` (newest first)."""
        return _KnownNumbers(self.identity, self.settled, floor, self.numbers + found)


# Conversation numbers with the lstat of their directory, newest first (a generator: closed
# when done).
_Directories = Generator[tuple[int, os.stat_result], None, None]


def _counter_of(user_record: dict[str, Any], user: UserId) -> int | None:
    """The conversation counter of a user.json record; None if it has none that can be used
    (absent, not a count, too large for an id, or the record is another user's)."""
    counter = user_record.get("lastConversation")
    if user_record.get("id") != str(user) or type(counter) is not int:
        return None
    return counter if 0 <= counter < _MAX_NUMBER else None


def _dir_identity(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns)


def _lstat_or_none(path: str) -> os.stat_result | None:
    """``os.lstat``, None for a missing name (another error is a StorageError)."""
    try:
        return os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise StorageError.wrap(exc, f"cannot read {path}") from exc


class Store:
    """A conversation store rooted at a directory (created on first use).

    ``durability``: ``"chunk"`` (default) syncs every chunk file and its directory before
    ``append`` returns at a chunk boundary; ``"message"`` syncs only when a message is sealed;
    ``"none"`` never syncs (tests, throwaway data). Metadata files are always replaced
    atomically; ``"none"`` only skips their fsync.
    """

    def __init__(
        self,
        root: str | os.PathLike[str] = "users",
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
        _positive_int("chunk_tokens", chunk_tokens)
        for name, value in (
            ("max_conversations_per_user", max_conversations_per_user),
            ("max_messages_per_conversation", max_messages_per_conversation),
        ):
            if value is not None:
                _positive_int(name, value)
        self.root = os.path.abspath(os.fspath(root))
        self.durability: Durability = durability
        self.chunk_tokens = chunk_tokens
        self.flush_interval = flush_interval
        self.max_conversations_per_user = max_conversations_per_user
        self.max_messages_per_conversation = max_messages_per_conversation
        self.lock_timeout = lock_timeout
        self._layout = Layout(self.root)
        self._durable = durability != "none"
        self._reader = ConversationReader(self._layout, cache_conversations)
        self._next_seq_hint: dict[ConversationId, int] = {}
        # Stat-validated caches (validation rules: ``_KnownNumbers`` and ``_metadata``): which
        # conversation numbers exist, per user; and per conversation, by (user, conversation)
        # number, (directory identity, file identity, metadata), an identity being None when it
        # was not settled.
        self._numbers_cache: dict[UserId, _KnownNumbers] = {}
        self._meta_cache: dict[
            tuple[int, int],
            tuple[tuple[int, int, int, int] | None, tuple[int, int, int, int] | None, Conversation],
        ] = {}
        self._open_root()

    def __repr__(self) -> str:
        return f"Store({self.root!r}, durability={self.durability!r})"

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Nothing to release (files are opened per call); kept for symmetry with AsyncStore."""

    # -- the root -----------------------------------------------------------------------------

    def _open_root(self) -> None:
        try:
            raw = _fsio.read_bytes(self._layout.format_file)
        except FileNotFoundError:
            self._initialize_root()
            return
        except OSError as exc:
            raise StorageError.wrap(exc, f"cannot read {self._layout.format_file}") from exc
        try:
            fmt = _records.decode(raw)
        except ValueError:
            raise StoreFormatError(f"{self._layout.format_file} is corrupt") from None
        if fmt.get("format") != "chunkstore":
            raise StoreFormatError(f"{self.root} is not a chunkstore store")
        version = fmt.get("version")
        if version != FORMAT_VERSION:
            raise StoreFormatError(
                f"{self.root} holds chunkstore format version {version!r}; this chunkstore "
                f"reads version {FORMAT_VERSION} (upgrade chunkstore, or migrate the store)"
            )

    def _initialize_root(self) -> None:
        try:
            os.makedirs(self.root, exist_ok=True)
            strangers = [
                n for n in os.listdir(self.root) if not n.startswith(".") and n != "README.md"
            ]
        except OSError as exc:
            raise StorageError.wrap(exc, f"cannot create store at {self.root}") from exc
        if strangers:
            raise StoreFormatError(
                f"{self.root} is not empty and has no FORMAT file: refusing to use it as a store"
            )
        try:
            _fsio.create_exclusive(
                self._layout.format_file,
                _records.encode_line({"format": "chunkstore", "version": FORMAT_VERSION}),
                durable=self._durable,
            )
        except FileExistsError:
            pass  # another process initialized it first
        os.makedirs(self._layout.sessions_dir, exist_ok=True)

    # -- users --------------------------------------------------------------------------------

    def user_for(self, principal: str) -> str:
        """The user id for an external principal (a session id), created on first sight.

        Only a SHA-256 of the principal is stored, never the principal itself.
        """
        path = self._session_path(principal)
        found = self._read_session(path)
        if found is not None:
            return found
        os.makedirs(self._layout.sessions_dir, exist_ok=True)
        with _locks.exclusive(self._layout.registry_lock, self.lock_timeout):
            found = self._read_session(path)
            if found is not None:
                return found
            user = self._create_user()
            _fsio.replace_atomic(
                path, _records.encode_line({"userId": str(user)}), durable=self._durable
            )
        return str(user)

    def find_user(self, principal: str) -> str | None:
        """The user id for a principal already seen, or None (nothing is created)."""
        return self._read_session(self._session_path(principal))

    def _session_path(self, principal: str) -> str:
        if not isinstance(principal, str) or not principal:
            raise InvalidArgument("principal must be a non-empty string")
        if len(principal) > MAX_PRINCIPAL_CHARS:
            raise InvalidArgument(f"principal longer than {MAX_PRINCIPAL_CHARS} characters")
        digest = hashlib.sha256(principal.encode("utf-8", "surrogatepass")).hexdigest()
        return self._layout.session_file(digest)

    def _read_session(self, path: str) -> str | None:
        try:
            user_id = _records.decode(_fsio.read_bytes(path))["userId"]
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError) as exc:
            raise StorageError(0, f"session registry entry {path} is unreadable: {exc}") from exc
        return str(UserId.parse(user_id))

    def _create_user(self) -> UserId:
        numbers = [u.n for u in self._user_ids()]
        user = UserId(max(numbers, default=0) + 1)
        final = self._layout.user_dir(user)
        # Build the user directory under a temp name and rename it into place: a user either
        # exists whole (with user.json) or not at all.
        tmp = os.path.join(self.root, f".{user}{_fsio.TEMP_MARKER}{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            os.makedirs(os.path.join(tmp, "data", "conversations"))
            now = utc_now()
            record = {"v": 1, "id": str(user), "createdAt": now, "lastConversation": 0}
            _fsio.create_exclusive(
                os.path.join(tmp, "user.json"), _records.encode_line(record), durable=self._durable
            )
            os.rename(tmp, final)
            if self._durable:
                _fsio.fsync_dir(self.root)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise StorageError.wrap(exc, f"cannot create user {user}") from exc
        return user

    def _user_ids(self) -> list[UserId]:
        out = []
        for name in os.listdir(self.root):
            if name.startswith("us"):
                try:
                    out.append(UserId.parse(name))
                except InvalidId:
                    continue
        return sorted(out)

    def users(self) -> list[str]:
        """Every user id in the store, in numeric order."""
        return [str(u) for u in self._user_ids()]

    def _require_user(self, user_id: str) -> UserId:
        user = UserId.parse(user_id)
        user_dir = self._layout.user_dir(user)
        if self._layout.user_has_symlink(user) or not os.path.isdir(user_dir):
            raise UserNotFound(f"no user {user}")
        return user

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
        user = self._require_user(user_id)
        title = _check_title(title)
        meta = _check_metadata(metadata or {})
        people = _check_participants(participants or [])
        if not isinstance(pinned, bool):
            raise InvalidArgument("pinned must be a bool")
        with _locks.exclusive(self._layout.user_lock(user), self.lock_timeout):
            limit = self.max_conversations_per_user
            if limit is not None and len(self._conversation_numbers(user)) >= limit:
                raise LimitExceeded(f"user {user} has reached the limit of {limit} conversations")
            user_record = self._read_user(user)
            n = self._next_conversation_number(user, user_record)
            conv = ConversationId(user.n, n)
            user_record["lastConversation"] = n
            _fsio.replace_atomic(
                self._layout.user_file(user),
                _records.encode_line(user_record),
                durable=self._durable,
            )
            now = utc_now()
            conversation = Conversation(
                id=str(conv),
                user_id=str(user),
                title=title,
                created_at=now,
                updated_at=now,
                pinned=pinned,
                metadata=meta,
                participants=people,
            )
            self._create_conversation_dir(conv, conversation)
        return conversation

    def _next_conversation_number(self, user: UserId, user_record: dict[str, Any]) -> int:
        """The number for a new conversation. Caller holds the user lock.

        Ids are never reused, even after a hard delete: the counter in user.json only grows,
        and is moved on before the directory exists, so it bounds every existing number
        (listings rely on that: see ``_trusted_counter``). A counter that is missing, unusable
        or behind (its next number exists: user.json was lost, restored from a backup or
        written by hand) gives way to one past every existing number, from a full listing, so
        the counter written next bounds them all again.
        """
        counter = _counter_of(user_record, user)
        if counter is not None and not os.path.lexists(
            self._layout.conversation_dir(ConversationId(user.n, counter + 1))
        ):
            return counter + 1
        return max(counter or 0, max(self._conversation_numbers(user), default=0)) + 1

    def _create_conversation_dir(self, conv: ConversationId, conversation: Conversation) -> None:
        final = self._layout.conversation_dir(conv)
        parent = os.path.dirname(final)
        tmp = os.path.join(parent, f".{conv}{_fsio.TEMP_MARKER}{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            os.makedirs(os.path.join(tmp, "messages"))
            _fsio.create_exclusive(
                os.path.join(tmp, "conversation.json"),
                _records.encode_line(conversation_record(conversation)),
                durable=self._durable,
            )
            # Renamed into place whole: a conversation never exists without its metadata.
            os.rename(tmp, final)
            if self._durable:
                _fsio.fsync_dir(parent)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise StorageError.wrap(exc, f"cannot create conversation {conv}") from exc

    def _read_user(self, user: UserId) -> dict[str, Any]:
        try:
            return _records.decode(_fsio.read_bytes(self._layout.user_file(user)))
        except FileNotFoundError:
            raise UserNotFound(f"no user {user}") from None
        except (OSError, ValueError):
            # user.json only holds a counter the directory scan can recover; start afresh
            # (without a counter: _next_conversation_number recovers it).
            return {"v": 1, "id": str(user), "createdAt": utc_now()}

    # -- which conversations exist ------------------------------------------------------------
    #
    # A listing must not cost a scan of the user's whole conversations directory (~5 ms at
    # 10,000 entries). Conversation numbers come from the counter in user.json, which
    # create_conversation moves on (durably, under the user lock) *before* the directory is
    # renamed into place: every existing number is at most the counter. So page 1 probes the
    # numbers downward from the counter (page n from its cursor), one lstat each, and that lstat
    # is the one the page needs anyway to vet the directory. Gaps (hard deletes) cost one failed
    # lstat each; too many of them, or a counter that cannot be trusted, and the directory is
    # listed instead. What was learned is kept in a ``_KnownNumbers`` (see its validation rule).

    def _vetted_conversations_dir(self, user: UserId) -> os.stat_result | None:
        """The lstat of ``user``'s conversations directory, every directory on the way vetted.

        UserNotFound if the user's directory is missing, or if any of them is a symlink (the
        store never creates one: it was planted, and is never followed). None if the user has
        no conversations directory (nothing to list).
        """
        st = None
        for depth, path in enumerate(self._layout.conversations_dir_chain(user)):
            try:
                st = os.lstat(path)
            except (FileNotFoundError, NotADirectoryError):
                st = None
            except OSError as exc:
                raise StorageError.wrap(exc, f"cannot read the directory of {user}") from exc
            if st is not None and stat.S_ISLNK(st.st_mode):
                raise UserNotFound(f"no user {user}")
            if st is None or not stat.S_ISDIR(st.st_mode):
                if depth == 0:
                    raise UserNotFound(f"no user {user}")
                return None
        return st

    def _known_numbers(self, user: UserId, dir_st: os.stat_result, now: int) -> _KnownNumbers:
        """What is known of ``user``'s conversation numbers: the cached facts if the directory
        is unchanged, else the counter's bound, else (no trustworthy counter) a full listing."""
        identity = _dir_identity(dir_st)
        cached = self._numbers_cache.get(user)
        if cached is not None and cached.identity == identity:
            return cached
        counter = self._trusted_counter(user, dir_st)
        if counter is None:
            return self._list_numbers(user, dir_st, now)
        known = _KnownNumbers(identity, _fsio.settled(now, dir_st.st_ctime_ns), counter + 1, [])
        self._remember_numbers(user, known)
        return known

    def _trusted_counter(self, user: UserId, dir_st: os.stat_result) -> int | None:
        """user.json's conversation counter if it bounds every existing number, else None.

        The API keeps that invariant (see above), but a store can break it: user.json lost and
        recreated, restored from an old backup, written by hand, or a crash with durability
        "none" that kept the new directory but not the counter. Two cheap checks catch those:
        the directory must not have more subdirectories than the counter allows (its link
        count, where the filesystem keeps one: 2 + subdirectories), and the next number must
        not exist yet (a counter behind the directories is almost always caught there).
        """
        try:
            counter = _counter_of(
                _records.decode(_fsio.read_bytes(self._layout.user_file(user))), user
            )
        except (OSError, ValueError):
            return None
        if counter is None:
            return None
        if dir_st.st_nlink >= 2 and dir_st.st_nlink - 2 > counter:
            return None
        if os.path.lexists(self._layout.conversation_dir(ConversationId(user.n, counter + 1))):
            return None
        return counter

    def _list_numbers(self, user: UserId, dir_st: os.stat_result, now: int) -> _KnownNumbers:
        """Every conversation number of ``user``, from a full listing of the directory (whose
        lstat ``dir_st`` was taken before the listing: any later change shows as a new one)."""
        path = self._layout.conversations_dir(user)
        try:
            names = os.listdir(path)
        except (FileNotFoundError, NotADirectoryError):
            names = []
        except OSError as exc:
            raise StorageError.wrap(exc, f"cannot list the conversations of {user}") from exc
        numbers = scan_conversation_numbers(names, user)
        numbers.sort(reverse=True)
        known = _KnownNumbers(
            _dir_identity(dir_st), _fsio.settled(now, dir_st.st_ctime_ns), 1, numbers
        )
        self._remember_numbers(user, known)
        return known

    def _remember_numbers(self, user: UserId, known: _KnownNumbers) -> None:
        if known.settled:
            self._numbers_cache[user] = known

    def _conversation_numbers(self, user: UserId) -> list[int]:
        """All of the user's conversation numbers, newest first (cached like listings)."""
        now = time.time_ns()
        try:
            dir_st = os.stat(self._layout.conversations_dir(user))
        except FileNotFoundError:
            return []
        cached = self._numbers_cache.get(user)
        if cached is not None and cached.identity == _dir_identity(dir_st) and cached.floor <= 1:
            return cached.numbers
        return self._list_numbers(user, dir_st, now).numbers

    def _conversation_ids(self, user: UserId) -> list[ConversationId]:
        return [ConversationId(user.n, n) for n in self._conversation_numbers(user)]

    def _conversation_dirs(
        self, user: UserId, dir_st: os.stat_result, before: int | None, now: int
    ) -> _Directories:
        """``user``'s conversation directories numbered below ``before`` (None: all), newest
        first, each with its lstat. Close the iterator when done: what probing learned is kept
        for the next call then."""
        known = self._known_numbers(user, dir_st, now)
        yield from self._directories(user, known.numbers, before)
        below = known.floor if before is None else min(before, known.floor)
        yield from self._probe_directories(user, dir_st, known, below, now)

    def _directories(self, user: UserId, numbers: list[int], before: int | None) -> _Directories:
        """The directories among ``numbers`` (newest first) below ``before``. Names that are not
        directories (a planted symlink, a stray file) are skipped, never followed."""
        prefix = self._layout.conversation_dir_prefix(user)
        start = 0 if before is None else bisect.bisect_right(numbers, -before, key=operator.neg)
        for n in itertools.islice(numbers, start, None):
            st = _lstat_or_none(f"{prefix}{n:02d}")
            if st is not None and stat.S_ISDIR(st.st_mode):
                yield n, st

    def _probe_directories(
        self,
        user: UserId,
        dir_st: os.stat_result,
        known: _KnownNumbers,
        below: int,
        now: int,
    ) -> _Directories:
        """The directories numbered below ``below``, newest first, found by probing each number
        (``_directories`` for what they are); a full listing after too many gaps."""
        prefix = self._layout.conversation_dir_prefix(user)
        found: list[int] = []
        floor = below  # every number from here up to ``below`` has been probed
        misses = 0
        try:
            for n in range(below - 1, 0, -1):
                st = _lstat_or_none(f"{prefix}{n:02d}")
                if st is None:
                    misses += 1
                    if misses > _PROBE_MISSES:
                        break
                else:
                    found.append(n)
                floor = n
                if st is not None and stat.S_ISDIR(st.st_mode):
                    yield n, st
            else:
                return
        finally:
            # Probed right below what was known: the facts now reach down to ``floor``.
            if below == known.floor and floor < below:
                self._remember_numbers(user, known.extended(floor, found))
        # A long run of gaps (many hard deletes): listing costs less than probing on.
        listed = self._list_numbers(user, dir_st, now)
        yield from self._directories(user, listed.numbers, floor)

    # -- conversation metadata ----------------------------------------------------------------

    def get_conversation(self, conversation_id: str) -> Conversation:
        """Metadata of a conversation (soft-deleted ones too: see ``deleted_at``). If its
        ``conversation.json`` is damaged, the record rebuilt from its other files, flagged
        ``damaged`` (``_metadata``); writes to it work on that record."""
        return self._read_conversation(ConversationId.parse(conversation_id))

    def _read_conversation(self, conv: ConversationId) -> Conversation:
        layout = self._layout
        if layout.has_symlink(conv):
            raise ConversationNotFound(f"no conversation {conv}")
        now = time.time_ns()
        with conversation_io(conv, "read the metadata"):
            dir_st = os.lstat(layout.conversation_dir(conv))
        if not stat.S_ISDIR(dir_st.st_mode):
            raise ConversationNotFound(f"no conversation {conv}")
        return self._metadata(conv.user, conv.n, dir_st, now)

    def _metadata(self, user: int, n: int, dir_st: os.stat_result, now: int) -> Conversation:
        """The metadata of conversation ``n`` of user ``user``; ``dir_st`` is the lstat of its
        (vetted) directory, taken at or after ``now``.

        Cache validation rule. conversation.json is never modified in place, only replaced: a
        temp file is written in the conversation's directory and renamed over it (users/
        README.md). Both steps change the directory's names, so its mtime and ctime move: while
        the directory keeps its (device, inode, mtime, ctime), the cached metadata is current.
        Other changes move them too (a conversation's first message creates its lock file and
        segment); then the file's own (inode, mtime, ctime, size) decides: a replaced file is a
        new inode. Either identity is trusted only if its ctime was settled when it was taken
        (``_fsio.settled``): a change within the same clock tick could leave the timestamps as
        they were, and a freed inode number can come back.
        """
        key = (user, n)
        dir_identity = _dir_identity(dir_st)
        cached = self._meta_cache.get(key)
        if cached is not None and cached[0] == dir_identity:
            return cached[2]
        conv = ConversationId(user, n)
        path = self._layout.conversation_file(conv)
        with conversation_io(conv, "read the metadata"):
            file_st = os.lstat(path)
        file_identity = (file_st.st_ino, file_st.st_mtime_ns, file_st.st_ctime_ns, file_st.st_size)
        if cached is not None and cached[1] == file_identity:
            conversation = cached[2]
        else:
            conversation = self._decode_metadata(conv, path)
        if len(self._meta_cache) >= _META_CACHE_SIZE:
            self._meta_cache.clear()  # crude but bounded; the hot set refills at once
        self._meta_cache[key] = (
            dir_identity if _fsio.settled(now, dir_st.st_ctime_ns) else None,
            file_identity if _fsio.settled(now, file_st.st_ctime_ns) else None,
            conversation,
        )
        return conversation

    def _decode_metadata(self, conv: ConversationId, path: str) -> Conversation:
        """``conversation.json`` of ``conv``; if it is damaged (corrupt, not a record of
        ``conv``, not a regular file), the record rebuilt from the other files, flagged
        ``damaged``: one bad file never hides the conversation nor breaks its user's list
        (``_metadata``). A missing file is a missing conversation; a failing disk raises."""
        with conversation_io(conv, "read the metadata"):
            found = read_conversation_file(conv, path)
            if isinstance(found, Damage):
                return damaged_conversation(self._layout, conv)
        return found

    def list_conversations(
        self,
        user_id: str,
        limit: int = 50,
        cursor: str | None = None,
        include_deleted: bool = False,
    ) -> ConversationPage:
        """Newest first. ``cursor`` is the ``next_cursor`` of the previous page.

        Pages are stable while conversations are created: new ones sort before page 1, and the
        cursor is the id to continue after. A conversation whose ``conversation.json`` is
        damaged is listed flagged ``damaged`` (see ``get_conversation``), never dropped.
        """
        # Every argument is validated before the disk is touched: a hostile cursor must be
        # rejected before any directory is listed, like a hostile id.
        user = UserId.parse(user_id)
        _positive_int("limit", limit, maximum=MAX_PAGE)
        after = ConversationId.parse(cursor) if cursor is not None else None
        if after is not None and after.user != user.n:
            raise InvalidArgument("cursor does not belong to this user")
        now = time.time_ns()  # before any lstat: see _fsio.settled
        dir_st = self._vetted_conversations_dir(user)
        if dir_st is None:
            return ConversationPage([], None)
        items: list[Conversation] = []
        more = False
        before = after.n if after is not None else None
        with contextlib.closing(self._conversation_dirs(user, dir_st, before, now)) as found:
            for n, conv_st in found:
                try:
                    conversation = self._metadata(user.n, n, conv_st, now)
                except ConversationNotFound:
                    continue  # deleted while we listed
                if conversation.deleted and not include_deleted:
                    continue
                if len(items) == limit:
                    more = True
                    break
                items.append(conversation)
        return ConversationPage(items, items[-1].id if more else None)

    def update_conversation(
        self,
        conversation_id: str,
        *,
        title: str | None = _UNSET,
        pinned: bool = _UNSET,
        metadata: Mapping[str, str] = _UNSET,
    ) -> Conversation:
        """Change title, pinned and/or metadata (metadata is replaced whole, as in OpenAI's API)."""
        changes: dict[str, Any] = {}
        if title is not _UNSET:
            changes["title"] = _check_title(title)
        if pinned is not _UNSET:
            if not isinstance(pinned, bool):
                raise InvalidArgument("pinned must be a bool")
            changes["pinned"] = pinned
        if metadata is not _UNSET:
            changes["metadata"] = _check_metadata(metadata)
        return self._modify(ConversationId.parse(conversation_id), **changes)

    def _modify(self, conv: ConversationId, **changes: Any) -> Conversation:
        # Read-modify-write under the conversation lock: no concurrent update is lost.
        # A damaged conversation's record (rebuilt, ``_metadata``) is written whole, so the
        # update repairs it: what the damaged file held beyond that is lost either way.
        with self._conversation_lock(conv):
            current = self._read_conversation(conv)
            updated = _replace(current, updated_at=utc_now(), damaged=False, **changes)
            _fsio.replace_atomic(
                self._layout.conversation_file(conv),
                _records.encode_line(conversation_record(updated)),
                durable=self._durable,
            )
        return updated

    def _conversation_lock(self, conv: ConversationId) -> Any:
        if self._layout.has_symlink(conv) or not os.path.isdir(self._layout.conversation_dir(conv)):
            raise ConversationNotFound(f"no conversation {conv}")
        return _locks.exclusive(self._layout.conversation_lock(conv), self.lock_timeout)

    def delete_conversation(self, conversation_id: str, hard: bool = False) -> None:
        """Soft delete (hidden from listings, read-only, restorable) or ``hard`` (gone)."""
        conv = ConversationId.parse(conversation_id)
        if not hard:
            current = self._read_conversation(conv)
            if not current.deleted:
                self._modify(conv, deleted_at=utc_now())
            return
        self._remove_conversation(conv)

    def _remove_conversation(self, conv: ConversationId) -> None:
        if self._layout.has_symlink(conv):
            raise ConversationNotFound(f"no conversation {conv}")
        final = self._layout.conversation_dir(conv)
        parent = os.path.dirname(final)
        trash = os.path.join(
            parent, f".trash-{conv}{_fsio.TEMP_MARKER}{os.getpid()}-{time.time_ns()}"
        )
        try:
            # One rename makes the whole conversation disappear atomically; the slow recursive
            # delete happens on a name no reader looks at (check(fix=True) finishes it if we
            # crash).
            os.rename(final, trash)
        except FileNotFoundError:
            raise ConversationNotFound(f"no conversation {conv}") from None
        except OSError as exc:
            raise StorageError.wrap(exc, f"cannot delete {conv}") from exc
        self._reader.forget(conv)
        self._next_seq_hint.pop(conv, None)
        if self._durable:
            try:
                _fsio.fsync_dir(parent)
            except OSError as exc:
                # Without a durable rename, emptying the trash could let a power cut bring
                # the conversation back half-deleted: leave it whole for check(fix=True), and
                # report the failure as the StorageError callers expect, not a bare OSError.
                raise StorageError.wrap(exc, f"cannot sync the deletion of {conv}") from exc
        shutil.rmtree(trash, ignore_errors=True)

    def restore_conversation(self, conversation_id: str) -> Conversation:
        """Undo a soft delete."""
        return self._modify(ConversationId.parse(conversation_id), deleted_at=None)

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
        expired = []
        for user in self._user_ids():
            for conv in sorted(self._conversation_ids(user)):
                try:
                    conversation = self._read_conversation(conv)
                    activity = max(
                        _parse_time(conversation.updated_at),
                        datetime.fromtimestamp(
                            os.stat(self._layout.messages_dir(conv)).st_mtime, UTC
                        ),
                    )
                except (ConversationNotFound, FileNotFoundError):
                    continue
                except (StorageError, ValueError):
                    continue  # unreadable metadata: never delete what we cannot judge
                if conversation.damaged:
                    continue  # nor a conversation whose pin (and deletion) is unknown
                if conversation.pinned or activity >= cutoff:
                    continue
                expired.append(str(conv))
                if not dry_run:
                    try:
                        self._remove_conversation(conv)
                    except ConversationNotFound:
                        pass
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
    ) -> Message:
        """Store a complete message as one file (user, system, tool or assistant)."""
        conv = ConversationId.parse(conversation_id)
        _check_role(role)
        record: dict[str, Any] = {"v": 1, "seq": 1, "timestamp": "", "role": role}
        if isinstance(content, str):
            record["tokens"] = content
            record["tokenCount"] = 1 if content else 0
        elif content is None or isinstance(content, list):
            # Structured content (parts) is kept verbatim; ``tokens`` has its text for tools
            # that only read text.
            record["tokens"] = "".join(
                p.get("text", "") for p in content or [] if isinstance(p, dict)
            )
            record["tokenCount"] = 0
            record["content"] = content
        else:
            raise InvalidArgument("content must be a str, a list of parts, or None")
        if agent_id is not None:
            record["agentId"] = _check_short("agent_id", agent_id)
        record["status"] = "complete"
        if tool_calls:
            if not isinstance(tool_calls, list):
                raise InvalidArgument("tool_calls must be a list")
            record["toolCalls"] = tool_calls
        if tool_call_id is not None:
            record["toolCallId"] = _check_short("tool_call_id", tool_call_id)
        if name is not None:
            record["name"] = _check_short("name", name)
        if finish_reason is not None:
            record["finishReason"] = _check_short("finish_reason", finish_reason)
        if usage is not None:
            if not isinstance(usage, dict):
                raise InvalidArgument("usage must be a dict")
            record["usage"] = usage
        with self._conversation_lock(conv):
            mid = self._claim_seq(conv)
            record["messageId"] = str(mid)
            record["timestamp"] = utc_now()
            sealed = {"v": 1, "messageId": str(mid), "sealed": True, "records": [record]}
            _fsio.create_exclusive(
                self._layout.sealed_file(mid), _records.encode_line(sealed), durable=self._durable
            )
            self._next_seq_hint[conv] = mid.seq + 1
            message = rebuild_message(str(mid), mid.seq, [record], writer_alive=False)
            self._append_segment(conv, message)
        self._reader.remember(conv, message)
        return message

    def stream_message(
        self,
        conversation_id: str,
        role: str = "assistant",
        agent_id: str | None = None,
        *,
        chunk_tokens: int | None = None,
        flush_interval: float | None = _UNSET,
    ) -> MessageWriter:
        """Start a streamed message; write tokens with ``append`` and end with ``finish``."""
        conv = ConversationId.parse(conversation_id)
        _check_role(role)
        if agent_id is not None:
            _check_short("agent_id", agent_id)
        if chunk_tokens is not None:
            _positive_int("chunk_tokens", chunk_tokens)
        with self._conversation_lock(conv):
            mid = self._claim_seq(conv)
            try:
                handle = _locks.hold_writer_lock(self._layout.writer_lock(mid), self.lock_timeout)
            except FileExistsError:
                raise StorageError(0, f"message {mid} was claimed concurrently") from None
            except OSError as exc:
                raise StorageError.wrap(exc, f"cannot start message {mid}") from exc
            self._next_seq_hint[conv] = mid.seq + 1

        def on_sealed(message: Message) -> None:
            with self._conversation_lock(conv):
                self._append_segment(conv, message)
            self._reader.remember(conv, message)

        return MessageWriter(
            layout=self._layout,
            message_id=mid,
            role=role,
            agent_id=agent_id,
            chunk_tokens=chunk_tokens or self.chunk_tokens,
            flush_interval=self.flush_interval if flush_interval is _UNSET else flush_interval,
            durability=self.durability,
            lock_handle=handle,
            on_sealed=on_sealed,
        )

    def _claim_seq(self, conv: ConversationId) -> MessageId:
        """The next free message seq. Caller holds the conversation lock.

        Every message, from its claim on, has one of three files: its writer lock, its first
        chunk, or its sealed file. Probing those names from a hint (this process's last claim,
        or a full scan) finds the first free seq; another process's claims only move it on.
        """
        meta = self._read_conversation(conv)
        if meta.deleted:
            raise ConversationDeleted(f"conversation {conv} is deleted: restore it to write")
        seq = self._next_seq_hint.get(conv)
        if seq is None:
            names = os.listdir(self._layout.messages_dir(conv))
            seq = max(list_message_files(names, conv), default=0) + 1
        while self._seq_taken(MessageId(conv.user, conv.n, seq)):
            seq += 1
        limit = self.max_messages_per_conversation
        if limit is not None and seq > limit:
            raise LimitExceeded(f"conversation {conv} has reached the limit of {limit} messages")
        return MessageId(conv.user, conv.n, seq)

    def _seq_taken(self, mid: MessageId) -> bool:
        exists = os.path.lexists
        return (
            exists(self._layout.sealed_file(mid))
            or exists(self._layout.writer_lock(mid))
            or exists(self._layout.chunk_file(mid, 1))
        )

    def _append_segment(self, conv: ConversationId, message: Message) -> None:
        try:
            _fsio.append_to(
                self._layout.segment_file(conv), _records.encode_line(message_to_line(message))
            )
        except StorageError:
            pass  # derived data: the sealed file is the truth, readers fall back to it

    def messages(
        self, conversation_id: str, after_seq: int = 0, limit: int | None = 50
    ) -> list[Message]:
        """Rebuilt messages with ``seq > after_seq`` in seq order, at most ``limit`` (None: all)."""
        conv = ConversationId.parse(conversation_id)
        if not isinstance(after_seq, int) or isinstance(after_seq, bool) or after_seq < 0:
            raise InvalidArgument("after_seq must be an integer >= 0")
        if limit is not None:
            _positive_int("limit", limit)
        return self._reader.messages(conv, after_seq, limit)

    def message_count(self, conversation_id: str) -> int:
        conv = ConversationId.parse(conversation_id)
        if self._layout.has_symlink(conv):
            raise ConversationNotFound(f"no conversation {conv}")
        try:
            names = os.listdir(self._layout.messages_dir(conv))
        except FileNotFoundError:
            raise ConversationNotFound(f"no conversation {conv}") from None
        return len(list_message_files(names, conv))

    # -- integrity ----------------------------------------------------------------------------

    def check(self, fix: bool = False) -> list[Problem]:
        """Walk the store and report every broken invariant; ``fix`` repairs what is safe."""
        from ._check import check_store

        return check_store(self, self._layout, fix=fix)


# -- validation helpers -------------------------------------------------------------------------


def _positive_int(name: str, value: Any, *, maximum: int | None = None) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InvalidArgument(f"{name} must be a positive integer, got {value!r}")
    if maximum is not None and value > maximum:
        raise InvalidArgument(f"{name} must be at most {maximum}, got {value}")


def _check_title(title: Any) -> str | None:
    if title is None:
        return None
    if not isinstance(title, str):
        raise InvalidArgument("title must be a string")
    if len(title) > MAX_TITLE_CHARS:
        raise InvalidArgument(f"title longer than {MAX_TITLE_CHARS} characters")
    return title


def _check_metadata(metadata: Any) -> dict[str, str]:
    if not isinstance(metadata, Mapping):
        raise InvalidArgument("metadata must be an object of string keys and values")
    if len(metadata) > MAX_METADATA_PAIRS:
        raise InvalidArgument(f"metadata has more than {MAX_METADATA_PAIRS} keys")
    out = {}
    for key, value in metadata.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise InvalidArgument("metadata keys and values must be strings")
        if len(key) > MAX_METADATA_KEY or len(value) > MAX_METADATA_VALUE:
            raise InvalidArgument(
                f"metadata keys are at most {MAX_METADATA_KEY} characters and values "
                f"at most {MAX_METADATA_VALUE}"
            )
        out[key] = value
    return out


def _check_participants(participants: Any) -> list[str]:
    if not isinstance(participants, (list, tuple)) or not all(
        isinstance(p, str) and 0 < len(p) <= 256 for p in participants
    ):
        raise InvalidArgument("participants must be a list of non-empty strings")
    return list(participants)


def _check_role(role: Any) -> None:
    if role not in ROLES:
        raise InvalidArgument(f"role must be one of {sorted(ROLES)}, got {role!r}")


def _check_short(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value or len(value) > 256:
        raise InvalidArgument(f"{name} must be a non-empty string of at most 256 characters")
    return value


def _replace(c: Conversation, **changes: Any) -> Conversation:
    from dataclasses import replace

    return replace(c, **changes)


def _parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))
