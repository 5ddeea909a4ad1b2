"""``FileBackend``: the embedded file store, format v1 (the default backend of ``Store``).

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
import itertools
import operator
import os
import shutil
import stat
import time
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import IO, Any

from . import _fsio, _locks, _records
from ._backend import ConversationDump, ConversationImport, UserRecord
from ._exceptions import (
    ConversationDeleted,
    ConversationNotFound,
    InvalidArgument,
    InvalidId,
    LimitExceeded,
    StorageError,
    StoreFormatError,
    UserNotFound,
    WriterClosed,
)
from ._file_search import FileSearch
from ._ids import (
    MAX_DIGITS,
    ConversationId,
    MessageId,
    UserId,
    chunk_name,
    scan_conversation_numbers,
    scan_tombstones,
    tombstone_name,
)
from ._layout import FORMAT_VERSION, Layout
from ._metadata import Damage, conversation_record, damaged_conversation, read_conversation_file
from ._models import Conversation, ConversationPage, Message, Problem
from ._reader import ConversationReader, conversation_io, list_message_files
from ._rebuild import TERMINAL, message_to_line, rebuild_message
from ._search import SearchMatch
from ._writer import utc_now

__all__ = ["FileBackend", "FileSink"]

_META_CACHE_SIZE = 8192
# Gaps a listing probes (one failed lstat each, ~3 us) before it lists the whole directory
# instead (~0.5 us per entry): a few hundred microseconds at most, against ~5 ms at 10,000.
_PROBE_MISSES = 128
_MAX_NUMBER = 10**MAX_DIGITS - 1
# The conversation fields the search index holds (a title; a soft deletion filters).
_SEARCHED = frozenset({"title", "deleted_at"})


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


class FileBackend:
    """The file store rooted at a directory (created on first use); see ``_backend.Backend``.

    ``durability``: ``"chunk"`` syncs every chunk file and its directory before a chunk write
    returns; ``"message"`` syncs only when a message is sealed; ``"none"`` never syncs.
    Metadata files are always replaced atomically; ``"none"`` only skips their fsync.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        durability: str,
        lock_timeout: float,
        cache_conversations: int,
    ) -> None:
        self.root = os.path.abspath(os.fspath(root))
        self.durability = durability
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
        # The derived search index (``_file_search``): each write below that changes what is
        # searchable calls ``begin()`` before touching the files and a hook once they are written.
        self._search = FileSearch(self)

    def describe(self) -> str:
        return self.root

    def close(self) -> None:
        """Files are opened per call, locks per operation: only the search index's databases
        and its lease are held."""
        self._search.close()

    def ping(self) -> None:
        # An empty file can be created on a full disk (it needs an inode, not a block): the
        # probe writes a block's worth and syncs it, then goes.
        probe = os.path.join(self.root, f".ping{_fsio.TEMP_MARKER}{os.getpid()}-{time.time_ns()}")
        try:
            _fsio.create_exclusive(probe, b"\0" * 4096, durable=True)
        except FileExistsError as exc:
            raise StorageError.wrap(exc, f"cannot write into {self.root}") from exc
        finally:
            _fsio.unlink_quietly(probe)

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

    def user_for(self, principal_digest: str) -> str:
        path = self._layout.session_file(principal_digest)
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

    def find_user(self, principal_digest: str) -> str | None:
        return self._read_session(self._layout.session_file(principal_digest))

    def _read_session(self, path: str) -> str | None:
        try:
            user_id = _records.decode(_fsio.read_bytes(path))["userId"]
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError) as exc:
            raise StorageError(0, f"session registry entry {path} is unreadable: {exc}") from exc
        return str(UserId.parse(user_id))

    def _create_user(
        self, user: UserId | None = None, created_at: str | None = None, counter: int = 0
    ) -> UserId:
        """Create user ``user`` (default: one past the highest). Caller holds the registry
        lock; ``user`` must not exist (its rename would fail if it did)."""
        if user is None:
            user = UserId(max((u.n for u in self._user_ids()), default=0) + 1)
        final = self._layout.user_dir(user)
        # Build the user directory under a temp name and rename it into place: a user either
        # exists whole (with user.json) or not at all.
        tmp = os.path.join(self.root, f".{user}{_fsio.TEMP_MARKER}{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            os.makedirs(os.path.join(tmp, "data", "conversations"))
            record = {
                "v": 1,
                "id": str(user),
                "createdAt": created_at or utc_now(),
                "lastConversation": counter,
            }
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

    def user_records(self, users: Sequence[UserId]) -> list[UserRecord]:
        """One pass over the session registry (``sessions/<digest>.json``), then each user's
        ``user.json``. An unreadable registry entry is an error, not skipped: it may be one of
        these users' sessions, and a copy without it would lock that session out."""
        for user in users:
            self._require_user(user)
        wanted = {str(u) for u in users}
        sessions: dict[str, list[str]] = {name: [] for name in wanted}
        try:
            names = sorted(os.listdir(self._layout.sessions_dir))
        except FileNotFoundError:
            names = []
        for name in names:
            digest, _, ext = name.partition(".")
            if ext != "json" or not _is_digest(digest):
                continue  # temp files, the registry's lock
            found = self._read_session(os.path.join(self._layout.sessions_dir, name))
            if found in wanted:
                sessions[found].append(digest)
        out = []
        for user in users:
            record = self._read_user(user)
            created = record.get("createdAt")
            counter = _counter_of(record, user) or 0
            highest = max(self._conversation_numbers(user), default=0)
            out.append(
                UserRecord(
                    str(user),
                    created if isinstance(created, str) else "",
                    sessions[str(user)],
                    max(counter, highest),
                )
            )
        return out

    def import_user(
        self,
        user: UserId | None,
        *,
        created_at: str,
        sessions: Sequence[str],
        last_conversation: int = 0,
    ) -> str | None:
        """Under the registry lock: the session entries first, then the user directory,
        renamed into place whole. A crash in between leaves entries naming a user that does
        not exist (``check`` reports them as orphans); the next import of that user finds
        the number free and creates it, and the entries name it again."""
        os.makedirs(self._layout.sessions_dir, exist_ok=True)
        with _locks.exclusive(self._layout.registry_lock, self.lock_timeout):
            if user is None:
                user = UserId(max((u.n for u in self._user_ids()), default=0) + 1)
            elif os.path.lexists(self._layout.user_dir(user)):
                return None
            existing = set(self._user_ids())
            for digest in sessions:
                path = self._layout.session_file(digest)
                if os.path.lexists(path):
                    try:
                        owner = self._read_session(path)
                    except StorageError:
                        owner = None  # a broken entry is no registration: replaced
                    if owner is not None and UserId.parse(owner) in existing:
                        continue  # a digest keeps its user
                _fsio.replace_atomic(
                    path, _records.encode_line({"userId": str(user)}), durable=self._durable
                )
            self._create_user(user, created_at, last_conversation)
        return str(user)

    def add_sessions(self, user: UserId, sessions: Sequence[str]) -> int:
        self._require_user(user)
        os.makedirs(self._layout.sessions_dir, exist_ok=True)
        added = 0
        with _locks.exclusive(self._layout.registry_lock, self.lock_timeout):
            for digest in sessions:
                path = self._layout.session_file(digest)
                if self._read_session(path) is None:
                    _fsio.replace_atomic(
                        path, _records.encode_line({"userId": str(user)}), durable=self._durable
                    )
                    added += 1
        return added

    def _require_user(self, user: UserId) -> UserId:
        user_dir = self._layout.user_dir(user)
        if self._layout.user_has_symlink(user) or not os.path.isdir(user_dir):
            raise UserNotFound(f"no user {user}")
        return user

    # -- conversations ------------------------------------------------------------------------

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
        self._require_user(user)
        self._search.begin()
        with _locks.exclusive(self._layout.user_lock(user), self.lock_timeout):
            limit = max_conversations
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
                metadata=metadata,
                participants=participants,
            )
            self._create_conversation_dir(conv, conversation)
        self._search.conversation_changed(conv, searchable=title is not None)
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

    def _create_conversation_dir(
        self,
        conv: ConversationId,
        conversation: Conversation,
        fill: Callable[[str], None] | None = None,
    ) -> None:
        """Build the conversation's directory under a temp name (``fill`` adds files to it)
        and rename it into place whole."""
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
            if fill is not None:
                fill(tmp)
            # Renamed into place whole: a conversation never exists without its metadata.
            os.rename(tmp, final)
            if self._durable:
                _fsio.fsync_dir(parent)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise StorageError.wrap(exc, f"cannot create conversation {conv}") from exc
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

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

    def get_conversation(self, conv: ConversationId) -> Conversation:
        """Metadata of a conversation (soft-deleted ones too: see ``deleted_at``). If its
        ``conversation.json`` is damaged, the record rebuilt from its other files, flagged
        ``damaged`` (``_metadata``); writes to it work on that record."""
        return self._read_conversation(conv)

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
        user: UserId,
        *,
        limit: int,
        before: ConversationId | None,
        include_deleted: bool,
    ) -> ConversationPage:
        """Newest first. A conversation whose ``conversation.json`` is damaged is listed
        flagged ``damaged`` (see ``get_conversation``), never dropped."""
        after = before
        now = time.time_ns()  # before any lstat: see _fsio.settled
        dir_st = self._vetted_conversations_dir(user)
        if dir_st is None:
            return ConversationPage([], None)
        items: list[Conversation] = []
        more = False
        below = after.n if after is not None else None
        with contextlib.closing(self._conversation_dirs(user, dir_st, below, now)) as found:
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

    def update_conversation(self, conv: ConversationId, changes: Mapping[str, Any]) -> Conversation:
        # Read-modify-write under the conversation lock: no concurrent update is lost.
        # A damaged conversation's record (rebuilt, ``_metadata``) is written whole, so the
        # update repairs it: what the damaged file held beyond that is lost either way.
        self._search.begin()
        with self._conversation_lock(conv):
            current = self._read_conversation(conv)
            updated = replace(current, updated_at=utc_now(), damaged=False, **changes)
            _fsio.replace_atomic(
                self._layout.conversation_file(conv),
                _records.encode_line(conversation_record(updated)),
                durable=self._durable,
            )
        self._search.conversation_changed(conv, searchable=bool(_SEARCHED & changes.keys()))
        return updated

    def _conversation_lock(self, conv: ConversationId) -> Any:
        if self._layout.has_symlink(conv) or not os.path.isdir(self._layout.conversation_dir(conv)):
            raise ConversationNotFound(f"no conversation {conv}")
        return _locks.exclusive(self._layout.conversation_lock(conv), self.lock_timeout)

    def dump_conversation(self, conv: ConversationId) -> ConversationDump:
        conversation = self._read_conversation(conv)
        messages = self._reader.messages(conv, 0, None)
        with conversation_io(conv, "list the messages"):
            names = os.listdir(self._layout.messages_dir(conv))
        # Every claimed seq has a file (users/README.md), a deleted one its tombstone too.
        claimed = max(list_message_files(names, conv), default=0)
        last_seq = max(claimed, max(scan_tombstones(names, conv), default=0))
        if messages:
            last_seq = max(last_seq, messages[-1].seq)
        return ConversationDump(conversation, last_seq, messages)

    def import_conversation(
        self, user: UserId, number: int | None, data: ConversationImport
    ) -> str | None:
        """As ``create_conversation``: under the user lock, the counter moved up durably
        first, then the conversation's directory built whole under a temp name (metadata,
        every message file, tombstones, the segment) and renamed into place in one step, so
        it is indistinguishable from one written message by message, and a crash leaves it
        whole or absent (a temp directory ``check --fix`` removes)."""
        self._require_user(user)
        self._search.begin()
        with _locks.exclusive(self._layout.user_lock(user), self.lock_timeout):
            user_record = self._read_user(user)
            if number is None:
                number = self._next_conversation_number(user, user_record)
            elif os.path.lexists(self._layout.conversation_dir(ConversationId(user.n, number))):
                return None
            conv = ConversationId(user.n, number)
            counter = _counter_of(user_record, user)
            if counter is None:
                counter = max(self._conversation_numbers(user), default=0)
            if counter < number or user_record.get("lastConversation") != counter:
                user_record["lastConversation"] = max(counter, number)
                _fsio.replace_atomic(
                    self._layout.user_file(user),
                    _records.encode_line(user_record),
                    durable=self._durable,
                )
            conversation = replace(
                data.conversation, id=str(conv), user_id=str(user), damaged=False
            )
            self._create_conversation_dir(
                conv, conversation, lambda tmp: self._write_messages(tmp, conv, data)
            )
        self._reader.forget(conv)
        self._next_seq_hint.pop(conv, None)
        self._search.conversation_imported(conv)
        return str(conv)

    def _write_messages(self, tmp: str, conv: ConversationId, data: ConversationImport) -> None:
        """The files of ``data``'s messages, into the conversation directory ``tmp`` that is
        not in place yet: a final message as its sealed file, one that is not as its chunk
        files (no writer lock: it reads back ``interrupted``), a deleted one with its
        tombstone; and the segment of the sealed ones."""
        mdir = os.path.join(tmp, "messages")
        durable = self._durable
        segment: list[bytes] = []
        now = utc_now()
        for item in data.messages:
            mid = MessageId(conv.user, conv.n, item.seq)
            records = [{**r, "messageId": str(mid)} for r in item.records]
            if records[-1].get("status") in TERMINAL:
                sealed = {"v": 1, "messageId": str(mid), "sealed": True, "records": records}
                _fsio.create_exclusive(
                    os.path.join(mdir, f"{mid}.json"), _records.encode_line(sealed), durable=durable
                )
                message = rebuild_message(str(mid), mid.seq, records, writer_alive=False)
                segment.append(_records.encode_line(message_to_line(message)))
            else:
                for record in records:
                    _fsio.create_exclusive(
                        os.path.join(mdir, chunk_name(mid, record["seq"])),
                        _records.encode_line(record),
                        durable=durable,
                    )
            if item.deleted:
                tombstone = {"v": 1, "messageId": str(mid), "deleted": True, "deletedAt": now}
                _fsio.create_exclusive(
                    os.path.join(mdir, tombstone_name(mid)),
                    _records.encode_line(tombstone),
                    durable=durable,
                )
        if segment:
            # Derived (never synced when appended either): only what a reader would rebuild.
            segment_name = os.path.basename(self._layout.segment_file(conv))
            _fsio.create_exclusive(
                os.path.join(tmp, segment_name), b"".join(segment), durable=False
            )
        # Retention reads a conversation's last message time from the mtime of ``messages/``
        # (``expired``): it must say when the messages were written, not when they were
        # imported, as the SQL backends' ``last_message_at`` does.
        latest = max(
            (
                r["timestamp"]
                for item in data.messages
                for r in item.records
                if isinstance(r.get("timestamp"), str) and r["timestamp"]
            ),
            default=data.conversation.created_at,
        )
        with contextlib.suppress(ValueError, OverflowError):
            stamp = _parse_time(latest).timestamp()
            os.utime(mdir, (stamp, stamp))
        if durable:
            _fsio.fsync_dir(mdir)

    def remove_conversation(self, conv: ConversationId) -> None:
        if self._layout.has_symlink(conv):
            raise ConversationNotFound(f"no conversation {conv}")
        final = self._layout.conversation_dir(conv)
        parent = os.path.dirname(final)
        self._search.begin()
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
        self._search.conversation_removed(conv)

    def expired(self, cutoff: datetime) -> list[str]:
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
        return expired

    # -- messages -----------------------------------------------------------------------------

    def append_message(
        self, conv: ConversationId, record: dict[str, Any], *, max_messages: int | None
    ) -> Message:
        self._search.begin()
        with self._conversation_lock(conv):
            mid = self._claim_seq(conv, max_messages)
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
        self._search.message_finished(conv, message)
        return message

    def open_stream(self, conv: ConversationId, *, role: str, max_messages: int | None) -> FileSink:
        # The role is in every chunk record: the files need nothing more.
        with self._conversation_lock(conv):
            mid = self._claim_seq(conv, max_messages)
            try:
                handle = _locks.hold_writer_lock(self._layout.writer_lock(mid), self.lock_timeout)
            except FileExistsError:
                raise StorageError(0, f"message {mid} was claimed concurrently") from None
            except OSError as exc:
                raise StorageError.wrap(exc, f"cannot start message {mid}") from exc
            self._next_seq_hint[conv] = mid.seq + 1
        return FileSink(self, mid, handle)

    def _sealed(self, conv: ConversationId, message: Message) -> None:
        """A streamed message was sealed by this process: index it, and remember it."""
        with self._conversation_lock(conv):
            self._append_segment(conv, message)
        self._reader.remember(conv, message)
        self._search.message_finished(conv, message)

    def _claim_seq(self, conv: ConversationId, limit: int | None) -> MessageId:
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
        if limit is not None and seq > limit:
            raise LimitExceeded(f"conversation {conv} has reached the limit of {limit} messages")
        return MessageId(conv.user, conv.n, seq)

    def _seq_taken(self, mid: MessageId) -> bool:
        exists = os.path.lexists
        return (
            exists(self._layout.sealed_file(mid))
            or exists(self._layout.writer_lock(mid))
            or exists(self._layout.chunk_file(mid, 1))
            # A deleted message keeps its files, so this only matters for a stray tombstone:
            # never hand out a seq a tombstone would hide.
            or exists(self._tombstone(mid))
        )

    def _tombstone(self, mid: MessageId) -> str:
        return os.path.join(self._layout.messages_dir(mid.conversation_id), tombstone_name(mid))

    def _append_segment(self, conv: ConversationId, message: Message) -> None:
        try:
            _fsio.append_to(
                self._layout.segment_file(conv), _records.encode_line(message_to_line(message))
            )
        except StorageError:
            pass  # derived data: the sealed file is the truth, readers fall back to it

    def messages(self, conv: ConversationId, after_seq: int, limit: int | None) -> list[Message]:
        return self._reader.messages(conv, after_seq, limit)

    def message_count(self, conv: ConversationId) -> int:
        if self._layout.has_symlink(conv):
            raise ConversationNotFound(f"no conversation {conv}")
        try:
            names = os.listdir(self._layout.messages_dir(conv))
        except FileNotFoundError:
            raise ConversationNotFound(f"no conversation {conv}") from None
        files = list_message_files(names, conv)
        return len(files.keys() - scan_tombstones(names, conv))

    def delete_message(self, conv: ConversationId, seq: int) -> bool:
        """Write the message's tombstone, ``<messageId>.deleted``: format v1 files are never
        modified nor removed one by one, so a deletion is one more immutable file (created
        with ``O_EXCL``, under the conversation's lock). Readers skip a tombstoned seq; its
        files stay (they keep the seq claimed) until the conversation is hard-deleted."""
        mid = MessageId(conv.user, conv.n, seq)
        self._search.begin()
        with self._conversation_lock(conv):
            if self._read_conversation(conv).deleted:
                raise ConversationDeleted(f"conversation {conv} is deleted: restore it to write")
            layout = self._layout
            exists = os.path.lexists
            if exists(self._tombstone(mid)):
                return False
            sealed = exists(layout.sealed_file(mid))
            if not sealed and not exists(layout.chunk_file(mid, 1)):
                if not exists(layout.writer_lock(mid)):
                    return False  # never claimed
            # Not sealed: streaming while its writer holds the lock (a crashed writer's
            # message is interrupted, final, and can go). The writer takes its lock under
            # this conversation lock, so it cannot start between this probe and the write.
            if not sealed and _locks.is_held(layout.writer_lock(mid)):
                raise InvalidArgument(
                    f"message {mid} is still streaming: it can be deleted once it ends"
                )
            record = {"v": 1, "messageId": str(mid), "deleted": True, "deletedAt": utc_now()}
            try:
                _fsio.create_exclusive(
                    self._tombstone(mid), _records.encode_line(record), durable=self._durable
                )
            except FileExistsError:
                return False
        self._reader.forget(conv)
        self._search.message_deleted(conv, seq)
        return True

    # -- search -------------------------------------------------------------------------------

    def search(
        self,
        user: UserId,
        terms: Sequence[str],
        *,
        limit: int,
        offset: int,
        include_deleted: bool,
    ) -> list[SearchMatch]:
        """From the derived index (``_file_search``), caught up with the files first."""
        return self._search.search(
            user, terms, limit=limit, offset=offset, include_deleted=include_deleted
        )

    # -- integrity ----------------------------------------------------------------------------

    def check(self, fix: bool) -> list[Problem]:
        """Walk the store and report every broken invariant; ``fix`` repairs what is safe."""
        from ._check import check_store

        documents: dict[ConversationId, Any] = {}
        problems = check_store(self, self._layout, fix=fix, documents=documents)
        return problems + self._search.check(fix, documents)


def _is_digest(text: str) -> bool:
    """A session entry's name: a SHA-256 hex digest (what ``Store`` hashes principals to)."""
    return len(text) == 64 and all(c in "0123456789abcdef" for c in text)


def _parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


class FileSink:
    """A streamed message of the file store: its chunk files, then its sealed file.

    Holds the message's writer lock (flocked) from its claim to its seal: that lock is how
    readers tell ``streaming`` from ``interrupted``, and the kernel drops it if the process
    dies. Sealing reads the written chunks back (from the page cache), writes all the records
    into one ``<id>.json`` durably *before* the chunk files go, so a crash in between loses
    nothing (the sealed file wins over leftover chunks).
    """

    def __init__(self, backend: FileBackend, message_id: MessageId, lock: IO[bytes]) -> None:
        self._backend = backend
        self._layout = backend._layout
        self._id = message_id
        self._lock: IO[bytes] | None = lock
        self._chunks = 0
        self._sealed = False

    @property
    def message_id(self) -> MessageId:
        return self._id

    def write_chunk(self, record: dict[str, Any], *, durable: bool) -> None:
        self._check_open()
        path = self._layout.chunk_file(self._id, record["seq"])
        try:
            _fsio.create_exclusive(path, _records.encode_line(record), durable=durable)
        except FileExistsError as exc:
            raise StorageError.wrap(exc, f"chunk already exists: {path}") from exc
        self._chunks = max(self._chunks, record["seq"])

    def seal(self, last: dict[str, Any], *, durable: bool) -> Message:
        self._check_open()
        self._backend._search.begin()
        try:
            records = self._read_back() + [last]
            sealed = {"v": 1, "messageId": str(self._id), "sealed": True, "records": records}
            # The sealed file must be durable before the chunk files go, or a crash in between
            # could lose the message; once it exists it wins over any leftover chunk.
            _fsio.create_exclusive(
                self._layout.sealed_file(self._id), _records.encode_line(sealed), durable=durable
            )
            self._sealed = True
            for n in range(1, self._chunks + 1):
                _fsio.unlink_quietly(self._layout.chunk_file(self._id, n))
            message = rebuild_message(str(self._id), self._id.seq, records, writer_alive=False)
            self._backend._sealed(self._id.conversation_id, message)
        finally:
            self.release()
        return message

    def _read_back(self) -> list[dict[str, Any]]:
        records = []
        for n in range(1, self._chunks + 1):
            path = self._layout.chunk_file(self._id, n)
            try:
                records.append(_records.decode(_fsio.read_bytes(path)))
            except OSError as exc:
                raise StorageError.wrap(exc, f"cannot read back {path}") from exc
        return records

    def release(self) -> None:
        handle, self._lock = self._lock, None
        if handle is None:
            return
        # Remove the lock file only once the message is sealed: until a sealed or chunk file
        # exists, its presence is what keeps the seq claimed.
        if self._sealed:
            _fsio.unlink_quietly(self._layout.writer_lock(self._id))
        _locks.release(handle)

    def _check_open(self) -> None:
        if self._lock is None:
            raise WriterClosed(f"message {self._id} is already finished")
