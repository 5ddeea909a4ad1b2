"""The file store's search index: derived from the files, crash-safe, rebuilt when lost.

The files of format v1 stay the only truth; this index is an additive, derived file like
``segment.jsonl`` (``users/README.md``, "Search index", is the contract). One SQLite database
per user, ``<root>/.search/usNN.sqlite3`` (WAL), holds:

* ``docs``: one row per searchable document, its id ``conversation << 32 | seq`` (seq 0: the
  title; N: finished message N, ``complete`` or ``error``) and its text (``Message.text``);
* ``titles`` and ``messages``: FTS5 tables over those documents (rowid: the conversation for a
  title, the document id for a message), each document as its folded words
  (``_search.words`` joined by spaces) under the ``ascii`` tokenizer, which cuts only at those
  spaces: the engine never re-tokenizes, so it matches exactly the words ``_search`` defines;
* ``conversations``: ``(n, deleted)``, the soft-deletion flag searches filter on;
* ``meta``: the index version and whether the build finished.

**Ranking** (``_search``'s rule, the same on every backend): conversations whose title
matches come first, then those where only a message does; within each, the newest
conversation first; a message match shows the conversation's latest matching message. Both
FTS tables are walked in rowid order, newest first, and the walk stops once the page is full:
a search costs about a page's worth of rows whatever the number of matches (``_ranked``,
``_match_expression``).

**Kept current.** ``FileBackend`` calls a hook right after each write that changes what is
searchable (a finished message, a seal, a deleted message, a title, a soft or hard delete, a
restore), once the file write is done: the index is written after the files, never before.
Each hook is one ``BEGIN IMMEDIATE`` transaction that reads what it indexes from the files (or
checks they still say so), so two processes' updates of one conversation, applied in either
order, leave the index as the files are. A failed update never fails the user's write (the
message is stored): the conversation is kept pending in this process and re-read from its
files before the next search or index write.

**Crash safety without a scan on every open.** A process that writes holds a *lease*: a file
``.search/writers/<since>-<pid>-<random>.lock`` it keeps flocked until it closes, created
(durably) before its first write and whose name holds a time no later than the start of any
of its writes whose index update is not committed. The kernel drops the flock when the process
dies; every search lists the leases, and one no longer held means its holder died with some
index updates possibly missing. The finder re-reads every conversation (of every user with an
index) whose directory or ``messages/`` changed since that time, drops the conversations gone
from disk, and removes the lease. A live process moves its lease's time forward (a rename:
the flock stays; at most every ``_RENEW_NS``) when it has no write in flight, once the WAL of
every index it wrote is synced (commits are not synced one by one), so the conversations
re-read after a crash, or a power cut, are those written in the last seconds, not since the
process started.

**Rebuilt when lost.** A missing index, one of another version, one a build did not finish,
and a corrupt one are rebuilt from the files on the next search (in one transaction: a
concurrent writer's update waits for it, then applies on top). Anything planted in place of
the index (a FIFO, a symlink) is removed and the index rebuilt: it is derived, never read
through a link nor opened blocking.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import sqlite3
import stat
import threading
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import IO, TYPE_CHECKING

from . import _fsio, _locks
from ._exceptions import ChunkstoreError, ConversationNotFound, StorageError
from ._ids import ConversationId, MessageId, UserId, scan_conversation_numbers, tombstone_name
from ._models import Conversation, Message, Problem
from ._rebuild import TERMINAL
from ._search import SearchMatch, words

if TYPE_CHECKING:
    from ._file_store import FileBackend

_Update = Callable[[sqlite3.Connection], None]

__all__ = ["INDEX_DIR", "INDEX_VERSION", "Digest", "FileSearch", "digest", "searchable"]

INDEX_VERSION = 1
INDEX_DIR = ".search"
_WRITERS = "writers"
_SUFFIX = ".sqlite3"
# Files SQLite keeps next to a database: vetted like the database itself.
_COMPANIONS = ("", "-wal", "-shm", "-journal")
_INDEX_NAME = re.compile(r"us[1-9][0-9]*\.sqlite3\Z|us0[1-9]\.sqlite3\Z")
_LEASE_NAME = re.compile(r"(\d+)-\d+-[0-9a-f]+\.lock\Z")
_TITLE_SEQ = 0  # message seqs start at 1
# A document's id: its conversation number in the high bits, its seq (0: the title) in the low
# 32, so one conversation's documents are one range of ids and rowid order is newest first.
_SEQ_BITS = 32
_SEQ_MASK = (1 << _SEQ_BITS) - 1
_MAX_CONVERSATION = (1 << (63 - _SEQ_BITS)) - 1
# A directory's mtime can lag the change by the filesystem's timestamp granularity.
_MARGIN_NS = _fsio.SETTLED_NS
# How old a lease gets before a process with no write in flight moves its time forward.
_RENEW_NS = 10 * 10**9
# Per-user databases kept open by one process.
_OPEN_INDEXES = 32
_CORRUPT = (11, 26)  # SQLITE_CORRUPT, SQLITE_NOTADB

_SCHEMA = (
    "CREATE TABLE meta(key TEXT PRIMARY KEY, value INTEGER NOT NULL)",
    "CREATE TABLE conversations(n INTEGER PRIMARY KEY, deleted INTEGER NOT NULL)",
    "CREATE INDEX soft_deleted ON conversations(n) WHERE deleted = 1",
    "CREATE TABLE docs(id INTEGER PRIMARY KEY, text TEXT NOT NULL)",
    # detail=none: matching needs only which documents hold a word (no phrases, no NEAR), and
    # the index is a third the size. Titles and messages apart: titles rank first. Prefixes of
    # 1 to 3 characters are indexed (see _match_expression).
    "CREATE VIRTUAL TABLE titles USING fts5(body, tokenize='ascii', detail='none', prefix='1 2 3')",
    "CREATE VIRTUAL TABLE messages USING fts5(body, tokenize='ascii', detail='none',"
    " prefix='1 2 3')",
)
_TABLES = ("titles", "messages")
_INDEXED_PREFIX = 3
# A longer term is looked up in the vocabulary and matched as the words it starts, when they
# are at most this many; else as a prefix.
_EXPANDED_WORDS = 16


def _doc_id(n: int, seq: int) -> int:
    return (n << _SEQ_BITS) | seq


def _indexable(n: int, seq: int) -> bool:
    """Whether a document fits an id (conversation below 2**31, seq below 2**32; beyond,
    it is not searchable: no store holds that many)."""
    return n <= _MAX_CONVERSATION and seq <= _SEQ_MASK


# What the index should hold of one conversation: its soft-deletion flag (0 or 1) and, per
# searchable document (seq 0: the title), the CRC-32 of its text.
Digest = tuple[int, dict[int, int]]


def searchable(meta: Conversation, messages: Iterable[Message]) -> dict[int, str]:
    """seq -> text of a conversation's searchable documents: its title (seq 0) and its
    finished messages (``messages`` are those not deleted), each if it has a word."""
    docs = {}
    if meta.title and _body(meta.title):
        docs[_TITLE_SEQ] = meta.title
    for message in messages:
        if message.status in TERMINAL:
            text = message.text
            if _body(text):
                docs[message.seq] = text
    return docs


def digest(meta: Conversation, docs: Mapping[int, str]) -> Digest:
    return int(meta.deleted), {seq: _crc(text) for seq, text in docs.items()}


def _crc(text: str) -> int:
    return zlib.crc32(text.encode("utf-8", "surrogatepass"))


def _quoted(word: str) -> str:
    """A word as an FTS5 string: never syntax (terms hold only word characters; the doubling
    is belt and braces)."""
    return '"' + word.replace('"', '""') + '"'


def fts_query(terms: Sequence[str]) -> str:
    """The plain FTS5 query for ``terms``: each a quoted prefix, ANDed."""
    return " ".join(_quoted(term) + "*" for term in terms)


def _match_expression(conn: sqlite3.Connection, table: str, terms: Sequence[str]) -> str | None:
    """The FTS5 query for ``terms`` on ``table``, None if some term starts no word there.

    Why not ``"term"*`` alone: FTS5 answers a prefix query by merging the document lists of
    every word it starts into one list before the first row comes out, a cost in proportion
    to the matches (milliseconds for a common word at 10,000 conversations), where a word
    query streams and stops with the page. So a term of up to 3 characters uses the table's
    prefix index (one list, streamed); a longer one is looked up in the vocabulary and, if
    it starts a few words, becomes ``("w1" OR "w2" ...)`` of those words."""
    parts = []
    for term in terms:
        if len(term) <= _INDEXED_PREFIX:
            parts.append(_quoted(term) + "*")
            continue
        found = [
            word
            for (word,) in conn.execute(
                f"SELECT term FROM temp.{table}_vocab WHERE term >= ? AND term < ? LIMIT ?",
                (term, term + "\U0010ffff", _EXPANDED_WORDS + 1),
            )
        ]
        if not found:
            return None
        if len(found) > _EXPANDED_WORDS:
            parts.append(_quoted(term) + "*")
        else:
            parts.append("(" + " OR ".join(_quoted(word) for word in found) + ")")
    return " AND ".join(parts)


def _body(text: str) -> str:
    return " ".join(words(text))


def _is_corrupt(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in _CORRUPT


class _Stale(Exception):
    """The index needs rebuilding (missing, another version, unfinished, or corrupt)."""


class _UserIndex:
    """One user's database: a connection (thread-safe through ``lock``) and its file."""

    def __init__(self, path: str, conn: sqlite3.Connection, identity: tuple[int, int]) -> None:
        self.path = path
        self.conn = conn
        self.identity = identity
        self.lock = threading.RLock()

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self.conn.close()

    @contextlib.contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (``BEGIN IMMEDIATE``: reads inside it see the latest state,
        and writers of the index are serialized)."""
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def built(self) -> bool:
        try:
            rows = dict(self.conn.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return False
            raise
        return rows.get("version") == INDEX_VERSION and rows.get("built") == 1


class FileSearch:
    """The search index of one ``FileBackend`` (see the module docstring). Thread-safe."""

    def __init__(self, backend: FileBackend) -> None:
        self._backend = backend
        self._layout = backend._layout
        self.dir = os.path.join(backend.root, INDEX_DIR)
        self._writers_dir = os.path.join(self.dir, _WRITERS)
        self._lock = threading.Lock()  # guards everything below (no I/O under it but renames)
        self._indexes: OrderedDict[int, _UserIndex] = OrderedDict()
        self._inflight: dict[int, int] = {}  # thread ident -> when its current write began
        self._pending: set[ConversationId] = set()
        self._written: set[str] = set()  # indexes written since the lease's time last moved
        self._renewing = False
        self._lease: IO[bytes] | None = None
        self._lease_path = ""
        self._lease_since = 0
        self._token = f"{os.getpid()}-{secrets.token_hex(6)}"
        self._pid = os.getpid()

    def _forked(self) -> None:
        """In a child forked while this index was open: leave the parent's connections and
        lease alone (a SQLite connection must not cross a fork; closing it here could even
        drop locks SQLite relies on) and start afresh, with a lease of this process's own."""
        if os.getpid() == self._pid:
            return
        self._lock = threading.Lock()  # it may have been held by another thread at the fork
        self._indexes = OrderedDict()
        self._inflight = {}
        self._pending = set()
        self._written = set()
        self._renewing = False
        self._lease, self._lease_path, self._lease_since = None, "", 0
        self._token = f"{os.getpid()}-{secrets.token_hex(6)}"
        self._pid = os.getpid()

    # -- paths and planted files -------------------------------------------------------------

    def index_path(self, user: UserId) -> str:
        return os.path.join(self.dir, f"{user}{_SUFFIX}")

    def _vet_dir(self, path: str) -> None:
        """Make ``path`` a real directory: anything planted in its place (a symlink, a FIFO, a
        file) is removed first. Everything under ``.search`` is derived."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            st = None
        if st is not None and not stat.S_ISDIR(st.st_mode):
            os.unlink(path)
            st = None
        if st is None:
            with contextlib.suppress(FileExistsError):
                os.mkdir(path)

    def _vet_files(self, path: str) -> None:
        """Remove anything but a regular file found under the names SQLite opens for the
        database ``path`` (SQLite would follow a symlink and block on a FIFO). A directory
        there is not removed: StorageError, for a person to look at."""
        for suffix in _COMPANIONS:
            name = path + suffix
            try:
                st = os.lstat(name)
            except FileNotFoundError:
                continue
            if stat.S_ISREG(st.st_mode):
                continue
            if stat.S_ISDIR(st.st_mode):
                raise StorageError(
                    errno.EISDIR, f"{name} is a directory where the search index belongs"
                )
            os.unlink(name)

    # -- opening -----------------------------------------------------------------------------

    def _user_exists(self, user: UserId) -> bool:
        return not self._layout.user_has_symlink(user) and os.path.isdir(
            self._layout.conversations_dir(user)
        )

    def _open(self, user: UserId, create: bool) -> _UserIndex | None:
        """This process's connection to ``user``'s index (None if it has no index file and
        ``create`` is false). Reopened if the file was replaced (a rebuild elsewhere)."""
        self._forked()
        path = self.index_path(user)
        with self._lock:
            found = self._indexes.get(user.n)
            if found is not None:
                self._indexes.move_to_end(user.n)
        if found is not None:
            try:
                st = os.lstat(path)
                current = (st.st_dev, st.st_ino) if stat.S_ISREG(st.st_mode) else None
            except FileNotFoundError:
                current = None
            if current == found.identity:
                return found
            self._forget(user.n, found)
        if not create and not os.path.lexists(path):
            return None
        self._vet_dir(self.dir)
        self._vet_files(path)
        conn = sqlite3.connect(
            path,
            timeout=self._backend.lock_timeout,
            isolation_level=None,
            check_same_thread=False,
        )
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            # Commits are not synced one by one (a sync per write would double the cost of a
            # durable write): a lease's time moves past them only once the WAL holding them
            # is synced (``_finish_write``), so a power cut loses none that a lease does not
            # cover. In WAL mode, NORMAL never corrupts the database.
            conn.execute("PRAGMA synchronous=NORMAL")
            for table in _TABLES:  # this connection's views of the vocabularies
                conn.execute(
                    f"CREATE VIRTUAL TABLE temp.{table}_vocab USING fts5vocab(main, {table}, row)"
                )
            identity = _identity(path)
        except BaseException:
            conn.close()
            raise
        index = _UserIndex(path, conn, identity)
        with self._lock:
            self._indexes[user.n] = index
            while len(self._indexes) > _OPEN_INDEXES:
                _, old = self._indexes.popitem(last=False)
                old.close()
        return index

    def _forget(self, n: int, index: _UserIndex) -> None:
        with self._lock:
            if self._indexes.get(n) is index:
                del self._indexes[n]
        index.close()

    def _discard(self, user: UserId, index: _UserIndex | None) -> None:
        """Delete a corrupt index (all its files): the next open builds a new one."""
        if index is not None:
            self._forget(user.n, index)
        for suffix in _COMPANIONS:
            _fsio.unlink_quietly(self.index_path(user) + suffix)

    def _ready(self, user: UserId) -> _UserIndex:
        """``user``'s index, built from the files if it is missing, unfinished or of another
        version. (A corrupt one raises: the caller discards it and asks again.)"""
        index = self._open(user, create=True)
        assert index is not None
        with index.lock:
            if not index.built():
                self._build(user, index)
        return index

    def _build(self, user: UserId, index: _UserIndex) -> None:
        """Replace whatever the database holds by an index built from ``user``'s files, in one
        transaction (a concurrent writer's update waits for it, then applies on top)."""
        with index.write() as conn:
            if index.built():
                return  # another process built it while we waited
            tables = conn.execute(
                "SELECT name, sql FROM sqlite_master WHERE type = 'table'"
                " AND name NOT LIKE 'sqlite_%'"
            ).fetchall()
            # Virtual tables first: dropping one drops its shadow tables.
            tables.sort(key=lambda table: not (table[1] or "").startswith("CREATE VIRTUAL"))
            for name, _ in tables:
                with contextlib.suppress(sqlite3.OperationalError):
                    conn.execute(f'DROP TABLE IF EXISTS "{name.replace(chr(34), chr(34) * 2)}"')
            for statement in _SCHEMA:
                conn.execute(statement)
            for n in self._conversation_numbers(user):
                self._index_conversation(conn, ConversationId(user.n, n))
            conn.executemany(
                "INSERT INTO meta(key, value) VALUES (?, ?)",
                [("version", INDEX_VERSION), ("built", 1)],
            )

    def _conversation_numbers(self, user: UserId) -> list[int]:
        try:
            names = os.listdir(self._layout.conversations_dir(user))
        except (FileNotFoundError, NotADirectoryError):
            return []
        return sorted(scan_conversation_numbers(names, user))

    # -- what a conversation's documents are -------------------------------------------------

    def _documents(self, conv: ConversationId) -> tuple[Conversation, dict[int, str]] | None:
        """What the files say ``conv`` holds to search: its metadata, and seq -> text of its
        title (seq 0) and finished messages; None if it is gone."""
        backend = self._backend
        try:
            meta = backend.get_conversation(conv)
            messages = backend.messages(conv, 0, None)
        except ConversationNotFound:
            return None
        return meta, searchable(meta, messages)

    def _index_conversation(self, conn: sqlite3.Connection, conv: ConversationId) -> None:
        """Replace what the index holds of ``conv`` by what its files say. Caller is in a
        write transaction."""
        _drop_conversation(conn, conv.n)
        found = self._documents(conv)
        if found is None:
            return
        meta, docs = found
        conn.execute(
            "INSERT INTO conversations(n, deleted) VALUES (?, ?)", (conv.n, int(meta.deleted))
        )
        for seq, text in docs.items():
            _insert_doc(conn, conv.n, seq, text)

    # -- hooks: called by FileBackend around each write --------------------------------------

    def begin(self) -> None:
        """A write that may change what is searchable is about to touch the files: hold the
        lease (its time must not be later than this write) and note when it began, per thread
        (each thread makes one write at a time). A write that raises before its hook leaves
        its note until the thread's next write ends: the lease only stays older, which is
        safe."""
        self._forked()
        if self._lease is None:
            try:
                self._take_lease()
            except (OSError, ChunkstoreError):
                pass  # no lease: a crash of this process is caught by check --fix only
        with self._lock:
            self._inflight[threading.get_ident()] = time.time_ns()

    def message_finished(self, conv: ConversationId, message: Message) -> None:
        """A message was stored finished (appended whole, or sealed)."""
        seq, text = message.seq, message.text
        body = _body(text) if message.status in TERMINAL else ""
        if not body:
            self._end(conv, None)
            return

        def update(conn: sqlite3.Connection) -> None:
            # Read inside the transaction: a deletion of this message (its tombstone) or of
            # the conversation that came first must not be undone by this late insert.
            mid = MessageId(conv.user, conv.n, seq)
            tombstone = os.path.join(self._layout.messages_dir(conv), tombstone_name(mid))
            if not os.path.lexists(self._layout.sealed_file(mid)) or os.path.lexists(tombstone):
                return
            if not _has_conversation(conn, conv.n):
                # Its first document: the row (and title) come with it. Earlier messages are
                # indexed already (each had its update, or is pending or caught up later).
                try:
                    self._set_conversation(conn, conv, self._backend.get_conversation(conv))
                except ConversationNotFound:
                    return
            _drop_doc(conn, conv.n, seq)
            _insert_doc(conn, conv.n, seq, text, body)

        self._end(conv, update)

    def message_deleted(self, conv: ConversationId, seq: int) -> None:
        def update(conn: sqlite3.Connection) -> None:
            _drop_doc(conn, conv.n, seq)

        self._end(conv, update)

    def conversation_changed(self, conv: ConversationId, searchable: bool = True) -> None:
        """Its title or soft deletion may have changed (create, update, delete, restore)."""
        if not searchable:
            self._end(conv, None)
            return

        def update(conn: sqlite3.Connection) -> None:
            # From the file, inside the transaction: of two updates, the later one wins.
            try:
                meta = self._backend.get_conversation(conv)
            except ConversationNotFound:
                _drop_conversation(conn, conv.n)
                return
            self._set_conversation(conn, conv, meta)

        self._end(conv, update)

    def _set_conversation(
        self, conn: sqlite3.Connection, conv: ConversationId, meta: Conversation
    ) -> None:
        """Index ``conv``'s soft-deletion flag and title as ``meta`` says."""
        conn.execute(
            "INSERT OR REPLACE INTO conversations(n, deleted) VALUES (?, ?)",
            (conv.n, int(meta.deleted)),
        )
        _drop_doc(conn, conv.n, _TITLE_SEQ)
        if meta.title and _body(meta.title):
            _insert_doc(conn, conv.n, _TITLE_SEQ, meta.title)

    def conversation_imported(self, conv: ConversationId) -> None:
        """A whole conversation was put in place (``import_conversation``): index it as its
        files say."""
        self._end(conv, lambda conn: self._index_conversation(conn, conv))

    def conversation_removed(self, conv: ConversationId) -> None:
        def update(conn: sqlite3.Connection) -> None:
            if not os.path.lexists(self._layout.conversation_dir(conv)):
                _drop_conversation(conn, conv.n)

        self._end(conv, update)

    def _end(self, conv: ConversationId, update: _Update | None) -> None:
        """Apply ``update`` (a function of the connection, in a write transaction) to
        ``conv``'s user's index, if it has one; never raise. A failure leaves ``conv``
        pending (re-read from its files later) and this write in flight (the lease's time
        stays before it)."""
        ok = True
        if update is not None or self._pending:
            ok = self._apply(conv, update)
        if ok:
            self._finish_write()

    def _apply(self, conv: ConversationId, update: _Update | None) -> bool:
        try:
            self._retry_pending()
            if update is not None:
                index = self._open(UserId(conv.user), create=False)
                if index is not None:
                    with index.lock, index.write() as conn:
                        if index.built():
                            update(conn)
                    with self._lock:
                        self._written.add(index.path)
            return True
        except Exception:
            # Never the user's failure: the write is stored. Re-read it from the files later.
            with self._lock:
                self._pending.add(conv)
            return False

    def _retry_pending(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, set()
        try:
            for conv in sorted(pending, key=lambda c: (c.user, c.n)):
                self.reindex(conv)
                pending.discard(conv)
        finally:
            if pending:
                with self._lock:
                    self._pending |= pending

    def reindex(self, conv: ConversationId) -> None:
        """Re-read ``conv`` from its files into its user's index (if that index exists)."""
        index = self._open(UserId(conv.user), create=False)
        if index is None:
            return
        with index.lock, index.write() as conn:
            if index.built():
                self._index_conversation(conn, conv)

    def _finish_write(self) -> None:
        """This thread's write is indexed: the lease's time may move past it."""
        now = time.time_ns()
        with self._lock:
            self._inflight.pop(threading.get_ident(), None)
            if (
                self._lease is None
                or self._inflight
                or self._pending
                or self._renewing
                or now - self._lease_since < _RENEW_NS
            ):
                return
            # No write of this process is in flight: every write it made so far is committed
            # to the index, and every write from now on begins after ``now``.
            written, self._written = self._written, set()
            self._renewing = True
        try:
            if self._backend._durable:
                # Commits are not synced one by one (see _open): make those the lease covered
                # durable before it stops covering them.
                for path in written:
                    _fsync_file(path + "-wal")
            new = os.path.join(self._writers_dir, f"{now}-{self._token}.lock")
            with self._lock:
                if self._lease is not None:
                    os.rename(self._lease_path, new)  # the flock belongs to the open file
                    self._lease_path, self._lease_since = new, now
        except OSError:
            with self._lock:
                self._written |= written
        finally:
            with self._lock:
                self._renewing = False

    # -- leases ------------------------------------------------------------------------------

    def _take_lease(self) -> None:
        with self._lock:
            if self._lease is not None:
                return
            since = time.time_ns()
            self._vet_dir(self.dir)
            self._vet_dir(self._writers_dir)
            path = os.path.join(self._writers_dir, f"{since}-{self._token}.lock")
            handle = _locks.hold_writer_lock(path, self._backend.lock_timeout)
            if self._backend._durable:
                # The lease must outlive a power cut that the writes it covers outlive.
                os.fsync(handle.fileno())
                _fsio.fsync_dir(self._writers_dir)
            self._lease, self._lease_path, self._lease_since = handle, path, since

    def _dead_leases(self) -> list[tuple[str, int]]:
        try:
            names = os.listdir(self._writers_dir)
        except (FileNotFoundError, NotADirectoryError):
            return []
        dead = []
        for name in names:
            path = os.path.join(self._writers_dir, name)
            if path == self._lease_path:
                continue
            found = _LEASE_NAME.match(name)
            if found is None:
                if _fsio.is_temp_name(name):
                    continue  # a lease being created (flocked before it is linked)
                _fsio.unlink_quietly(path)  # planted: never a lease
                continue
            if not _locks.is_held(path):
                dead.append((path, int(found.group(1))))
        return dead

    def recover(self) -> None:
        """Catch up after every dead lease: re-read, in every user's index, the conversations
        changed since the dead process's lease time, then remove the lease."""
        for path, since in self._dead_leases():
            for user in self._indexed_users():
                self.catch_up(user, since - _MARGIN_NS)
            _fsio.unlink_quietly(path)

    def _indexed_users(self) -> list[UserId]:
        try:
            names = os.listdir(self.dir)
        except (FileNotFoundError, NotADirectoryError):
            return []
        return [UserId.parse(n[: -len(_SUFFIX)]) for n in names if _INDEX_NAME.match(n)]

    def catch_up(self, user: UserId, since: int) -> None:
        """Re-read ``user``'s conversations whose directory or ``messages/`` changed at or
        after ``since`` (ns), and drop those gone from disk."""
        index = self._open(user, create=False)
        if index is None:
            return
        with index.lock:
            if not index.built():
                return  # whoever builds it reads the files
            present = self._conversation_numbers(user)
            indexed = {n for (n,) in index.conn.execute("SELECT n FROM conversations")}
            changed = [n for n in present if self._changed_since(ConversationId(user.n, n), since)]
            for n in sorted((indexed - set(present)) | set(changed)):
                with index.write() as conn:
                    self._index_conversation(conn, ConversationId(user.n, n))

    def _changed_since(self, conv: ConversationId, since: int) -> bool:
        for path in (self._layout.conversation_dir(conv), self._layout.messages_dir(conv)):
            try:
                if os.lstat(path).st_mtime_ns >= since:
                    return True
            except OSError:
                return True
        return False

    # -- searching ---------------------------------------------------------------------------

    def search(
        self,
        user: UserId,
        terms: Sequence[str],
        *,
        limit: int,
        offset: int,
        include_deleted: bool,
    ) -> list[SearchMatch]:
        if not self._user_exists(user):
            return []
        try:
            self._retry_pending()
            self.recover()
        except (OSError, sqlite3.Error, ChunkstoreError):
            pass  # the search still answers from the index; the next one catches up
        try:
            return self._search(user, terms, limit, offset, include_deleted)
        except sqlite3.DatabaseError as exc:
            if not _is_corrupt(exc):
                raise StorageError(0, f"search index of {user} failed: {exc}") from exc
            self._discard(user, self._indexes.get(user.n))
            try:
                return self._search(user, terms, limit, offset, include_deleted)
            except sqlite3.Error as again:
                raise StorageError(0, f"search index of {user} failed: {again}") from again

    def _search(
        self, user: UserId, terms: Sequence[str], limit: int, offset: int, include_deleted: bool
    ) -> list[SearchMatch]:
        for attempt in range(2):
            index = self._ready(user)
            with index.lock:
                rows = _ranked(index.conn, terms, limit, offset, include_deleted)
            matches, drift = self._matches(user, rows, include_deleted)
            if not drift or attempt:
                return matches
            # The index disagrees with the files (a writer that does not keep it: an older
            # chunkstore, a hand edit): re-read those conversations and ask again.
            for conv in drift:
                self.reindex(conv)
        raise AssertionError("unreachable")

    def _matches(
        self, user: UserId, rows: Iterable[tuple[int, int, str]], include_deleted: bool
    ) -> tuple[list[SearchMatch], list[ConversationId]]:
        matches = []
        drift = []
        for n, seq, text in rows:
            conv = ConversationId(user.n, n)
            try:
                conversation = self._backend.get_conversation(conv)
            except ConversationNotFound:
                drift.append(conv)
                continue
            if conversation.deleted and not include_deleted:
                drift.append(conv)
                continue
            if seq == _TITLE_SEQ:
                if conversation.title != text:
                    drift.append(conv)
                    continue
                matches.append(SearchMatch(conversation, None, text))
            else:
                matches.append(SearchMatch(conversation, seq, text))
        return matches, drift

    # -- integrity ---------------------------------------------------------------------------

    def check(
        self, fix: bool, known: Mapping[ConversationId, Digest] | None = None
    ) -> list[Problem]:
        """Compare every user's index with the files (``index`` problems); ``fix`` re-reads the
        conversations that drifted, and replaces a corrupt or planted index by a rebuilt one.

        ``known``: the digests of conversations the caller already read (``check`` walks every
        conversation: ``_check`` hands them over, so none is read twice); others are read."""
        problems = []
        for user in self._indexed_users():
            path = self.index_path(user)
            try:
                problems += self._check_user(user, path, fix, known or {})
            except (sqlite3.DatabaseError, OSError, ChunkstoreError) as exc:
                if fix:
                    self._discard(user, self._indexes.get(user.n))
                detail = f"unreadable search index ({exc}): derived, rebuilt on the next search"
                problems.append(Problem(path, "index", detail, fixed=fix))
        return problems

    def _check_user(
        self, user: UserId, path: str, fix: bool, known: Mapping[ConversationId, Digest]
    ) -> list[Problem]:
        for suffix in _COMPANIONS:
            with contextlib.suppress(FileNotFoundError):
                if not stat.S_ISREG(os.lstat(path + suffix).st_mode):
                    raise StorageError(0, f"{path + suffix} is not a regular file")
        index = self._open(user, create=False)
        if index is None:
            return []
        with index.lock:
            if not index.built():
                return []  # built from the files on the next search
            stored: dict[int, dict[int, int]] = {}
            for doc, text in index.conn.execute("SELECT id, text FROM docs"):
                stored.setdefault(doc >> _SEQ_BITS, {})[doc & _SEQ_MASK] = _crc(text)
            flags = dict(index.conn.execute("SELECT n, deleted FROM conversations").fetchall())
            # The full-text tables must hold exactly the documents of docs.
            (out_of_step,) = index.conn.execute(_OUT_OF_STEP).fetchone()
        present = self._conversation_numbers(user)
        drift = sorted((set(flags) | set(stored)) - set(present))
        for n in present:
            conv = ConversationId(user.n, n)
            expected = known.get(conv)
            if expected is None:
                found = self._documents(conv)
                if found is None:
                    continue
                expected = digest(*found)
            deleted, docs = expected
            # A conversation without documents needs no row (a message's insert adds it).
            flag = flags.get(n, None if not docs else -1)
            if stored.get(n, {}) != docs or flag not in (None, deleted):
                drift.append(n)
        if not drift and not out_of_step:
            return []
        if out_of_step:
            if fix:
                with index.lock:
                    index.conn.execute("UPDATE meta SET value = 0 WHERE key = 'built'")
                self._ready(user)
            detail = "the full-text table disagrees with its documents: rebuilt"
        else:
            if fix:
                for n in drift:
                    self.reindex(ConversationId(user.n, n))
            shown = ", ".join(str(ConversationId(user.n, n)) for n in drift[:10])
            detail = (
                f"{len(drift)} conversation(s) out of date in the search index ({shown}); "
                "it is derived: check --fix re-reads them from the files"
            )
        return [Problem(path, "index", detail, fixed=fix)]

    # -- closing -----------------------------------------------------------------------------

    def close(self) -> None:
        """Close the databases and give up the lease (removed: nothing is left to catch up,
        unless an update failed, in which case the lease stays for the next opener)."""
        self._forked()
        with contextlib.suppress(Exception):
            self._retry_pending()
        with self._lock:
            indexes = list(self._indexes.values())
            self._indexes.clear()
            lease, self._lease = self._lease, None
            path = self._lease_path
            clean = not self._pending
        for index in indexes:
            index.close()
        if lease is not None:
            if clean:
                _fsio.unlink_quietly(path)
            _locks.release(lease)


def _identity(path: str) -> tuple[int, int]:
    """(device, inode) of the regular file ``path``: a connection is reused only while its
    file is still the one under that name. From ``lstat``, never by opening the file: closing
    any descriptor of a database drops every POSIX lock this process holds on it, SQLite's
    included (another process could then checkpoint and delete the WAL under our feet)."""
    st = os.lstat(path)
    if not stat.S_ISREG(st.st_mode):
        raise _fsio.NotRegularFile(path, _fsio.file_type(st.st_mode))
    return st.st_dev, st.st_ino


_OUT_OF_STEP = f"""
SELECT (SELECT count(*) FROM messages WHERE rowid NOT IN (SELECT id FROM docs))
     + (SELECT count(*) FROM titles WHERE (rowid << {_SEQ_BITS}) NOT IN (SELECT id FROM docs))
     + (SELECT count(*) FROM docs WHERE id & {_SEQ_MASK} != 0
            AND id NOT IN (SELECT rowid FROM messages))
     + (SELECT count(*) FROM docs WHERE id & {_SEQ_MASK} = 0
            AND (id >> {_SEQ_BITS}) NOT IN (SELECT rowid FROM titles))
"""


def _ranked(
    conn: sqlite3.Connection, terms: Sequence[str], limit: int, offset: int, include_deleted: bool
) -> list[tuple[int, int, str]]:
    """(conversation, seq, text) of the page ``offset``, ``limit`` of the ranking: the
    conversations whose title matches, newest first, then those where only a message
    matches, newest first, each with its latest matching message.

    Both walks go in rowid order, newest first (a document's id starts with its
    conversation's number) and stop once the page is full: a common word costs a page's worth
    of rows, not one per match. Soft-deleted conversations are few: filtered from a set."""
    need = offset + limit
    deleted: set[int] = set()
    if not include_deleted:
        deleted = {n for (n,) in conn.execute("SELECT n FROM conversations WHERE deleted = 1")}
    found: list[tuple[int, int]] = []
    seen: set[int] = set()
    for table, shift in zip(_TABLES, (0, _SEQ_BITS), strict=True):
        query = _match_expression(conn, table, terms)
        if query is None:
            continue
        sql = f"SELECT rowid FROM {table} WHERE {table} MATCH ? ORDER BY rowid DESC"
        cursor = conn.execute(sql, (query,))
        try:
            for (rowid,) in cursor:
                n = rowid >> shift
                if n in seen or n in deleted:
                    continue
                seen.add(n)
                found.append((n, rowid & _SEQ_MASK if shift else _TITLE_SEQ))
                if len(found) == need:
                    break
        finally:
            cursor.close()
        if len(found) == need:
            break
    page = found[offset:]
    texts = dict(
        conn.execute(
            f"SELECT id, text FROM docs WHERE id IN ({','.join('?' * len(page))})",
            [_doc_id(n, seq) for n, seq in page],
        ).fetchall()
    )
    return [(n, seq, texts.get(_doc_id(n, seq), "")) for n, seq in page]


def _fsync_file(path: str) -> None:
    """Sync ``path`` if it exists. (A WAL file: SQLite holds no POSIX lock on it, so closing
    our descriptor drops none of SQLite's locks, unlike one of the database itself.)"""
    try:
        fd, _ = _fsio.open_regular(path)
    except FileNotFoundError:
        return  # checkpointed into the database, which the checkpoint synced
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _has_conversation(conn: sqlite3.Connection, n: int) -> bool:
    return conn.execute("SELECT 1 FROM conversations WHERE n = ?", (n,)).fetchone() is not None


def _drop_doc(conn: sqlite3.Connection, n: int, seq: int) -> None:
    doc = _doc_id(n, seq) if _indexable(n, seq) else -1
    conn.execute("DELETE FROM docs WHERE id = ?", (doc,))
    if seq == _TITLE_SEQ:
        conn.execute("DELETE FROM titles WHERE rowid = ?", (n,))
    else:
        conn.execute("DELETE FROM messages WHERE rowid = ?", (doc,))


def _drop_conversation(conn: sqlite3.Connection, n: int) -> None:
    if n <= _MAX_CONVERSATION:
        first, last = _doc_id(n, 0), _doc_id(n, _SEQ_MASK)
        conn.execute("DELETE FROM docs WHERE id BETWEEN ? AND ?", (first, last))
        conn.execute("DELETE FROM messages WHERE rowid BETWEEN ? AND ?", (first, last))
        conn.execute("DELETE FROM titles WHERE rowid = ?", (n,))
    conn.execute("DELETE FROM conversations WHERE n = ?", (n,))


def _insert_doc(
    conn: sqlite3.Connection, n: int, seq: int, text: str, body: str | None = None
) -> None:
    """Index document ``seq`` of conversation ``n``; ``body`` is ``_body(text)`` if known."""
    if not _indexable(n, seq):
        return
    doc = _doc_id(n, seq)
    body = _body(text) if body is None else body
    conn.execute("INSERT INTO docs(id, text) VALUES (?, ?)", (doc, text))
    if seq == _TITLE_SEQ:
        conn.execute("INSERT INTO titles(rowid, body) VALUES (?, ?)", (n, body))
    else:
        conn.execute("INSERT INTO messages(rowid, body) VALUES (?, ?)", (doc, body))
