"""``Store.check()``: walk the store and report every broken invariant.

Invariants of format v1:

* the root has a readable ``FORMAT``; every ``sessions/*.json`` names an existing user;
* every ``usNN/`` has a readable ``user.json``; every conversation directory is named by a
  canonical id of its user and has a readable ``conversation.json``: a valid record with that
  id (a damaged one reads back as a rebuilt record flagged ``damaged``, see ``_metadata``);
* ``messages/`` holds only files of that conversation; every record passes its checksum and
  names its own message (a tombstone ``<messageId>.deleted`` too, and its message exists);
  message seqs run 1..N without a gap; a streamed message's chunks run 1..k without a gap; a
  sealed message has no leftover chunk files;
* every name the store keeps a regular file under holds one (never a FIFO, directory, device,
  socket or symlink: those are never opened, see ``_fsio.open_regular``), and every directory
  of the layout is a real directory;
* no temp files or trash directories are left behind; every segment line matches its message;
* ``user.json``'s ``lastConversation`` is at least every conversation number of the user (the
  counter bounds them: listings probe downward from it).

Interrupted messages (a writer that crashed) are a valid state, not a problem: they read back
``interrupted`` with their durable prefix.

``fix=True`` repairs only what is derived or leftover: temp files and trash are removed, chunk
files already covered by a sealed file are removed, the segment is rebuilt (replacing a planted
non-regular segment), a planted non-regular lock file is removed (no process can hold it; the
next lock creates a regular one), and a counter found behind is moved up to the highest
existing number (never down: numbers of hard-deleted conversations above it are not reused),
and a damaged ``conversation.json`` is replaced (atomically, under the conversation's lock) by
the minimal record ``_metadata.damaged_conversation`` rebuilds: id and user from the directory,
times from the first message; title, metadata, pin, participants and a soft deletion are lost
(they are kept nowhere else). It never deletes a message's only copy, nor anything planted in
place of a message file or of ``user.json``: those are reported for a person to look at.
"""

from __future__ import annotations

import os
import shutil
import stat
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from . import _fsio, _locks, _records
from ._exceptions import ChunkstoreError, InvalidId
from ._file_search import Digest, digest, searchable
from ._ids import ConversationId, MessageId, UserId, scan_tombstones, tombstone_name
from ._layout import Layout
from ._metadata import (
    LOST_FIELDS,
    Damage,
    conversation_record,
    damaged_conversation,
    read_conversation_file,
)
from ._models import Conversation, Problem
from ._reader import list_message_files
from ._rebuild import TERMINAL, message_to_line, rebuild_message

if TYPE_CHECKING:
    from ._file_store import FileBackend

__all__ = ["Problem", "check_store"]


class _Checker:
    def __init__(
        self,
        store: FileBackend,
        layout: Layout,
        fix: bool,
        documents: dict[ConversationId, Digest] | None = None,
    ) -> None:
        self.store = store
        self.layout = layout
        self.fix = fix
        self.problems: list[Problem] = []
        # What the search index should hold of each conversation walked (``_file_search``
        # compares it with the index afterwards, without reading the conversation again).
        self.documents = documents

    def report(self, path: str, kind: str, detail: str, fixed: bool = False) -> None:
        self.problems.append(Problem(path, kind, detail, fixed))

    def leftover(self, path: str, what: str) -> None:
        """A temp file or trash directory: garbage from a crash, always safe to remove."""
        if self.fix:
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                _fsio.unlink_quietly(path)
        self.report(path, "temp-file", what, fixed=self.fix)

    def decode(self, path: str) -> dict[str, Any] | None:
        try:
            return _records.decode(_fsio.read_bytes(path))
        except FileNotFoundError:
            self.report(path, "missing", "file is missing")
        except _fsio.NotRegularFile as exc:
            self.not_a_file(path, exc)
        except (OSError, ValueError) as exc:
            self.report(path, "corrupt", str(exc))
        return None

    def not_a_file(
        self,
        path: str,
        exc: _fsio.NotRegularFile,
        repair: str = "",
        hint: str = "never opened, read as damage; look at it and remove it by hand",
    ) -> None:
        """Something planted where the store keeps a regular file: never opened (see
        ``_fsio.open_regular``) and read as damage. ``repair`` says what ``fix`` did about it;
        without one, ``hint`` is the next step."""
        detail = f"{exc.strerror}: {repair or hint}"
        self.report(path, "not-a-file", detail, fixed=bool(repair))

    def lock_file(self, path: str) -> None:
        """A lock file (registry, user, conversation) must be a regular file or absent: a
        planted one is refused by every lock (``_locks.exclusive``). No process can hold a
        lock on it, so ``fix`` removes it and the next lock creates a regular file."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if stat.S_ISREG(st.st_mode):
            return
        repair = ""
        if self.fix and not stat.S_ISDIR(st.st_mode):  # nothing here removes a directory
            _fsio.unlink_quietly(path)
            repair = "removed (the next lock creates a regular file)"
        hint = "every lock on it is refused; check --fix removes it"
        self.not_a_file(path, _fsio.NotRegularFile(path, _file_type(st)), repair, hint)

    def directory(self, path: str) -> bool:
        """Whether ``path`` is a real directory; anything else in its place (a FIFO, a file, a
        symlink, which is never followed) is reported, for a person to look at."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return False
        if stat.S_ISDIR(st.st_mode):
            return True
        detail = f"{_file_type(st)}, not a directory: never followed; look at it, remove it"
        self.report(path, "not-a-directory", detail)
        return False

    def run(self) -> list[Problem]:
        root = self.layout.root
        fmt = self.decode(self.layout.format_file)
        if fmt is not None and fmt.get("version") != 1:
            self.report(self.layout.format_file, "format", f"unknown version {fmt.get('version')}")
        users = set()
        for name in sorted(os.listdir(root)):
            path = os.path.join(root, name)
            if _fsio.is_temp_name(name):
                self.leftover(path, "unfinished user directory")
            elif name in ("FORMAT", "README.md", "sessions") or name.startswith("."):
                continue
            else:
                try:
                    user = UserId.parse(name)
                except InvalidId:
                    self.report(path, "stranger", "not part of the store")
                    continue
                users.add(name)
                self.check_user(user)
        self.check_sessions(users)
        return self.problems

    def check_sessions(self, users: set[str]) -> None:
        sessions = self.layout.sessions_dir
        if not os.path.isdir(sessions):
            return
        self.lock_file(self.layout.registry_lock)
        for name in sorted(os.listdir(sessions)):
            path = os.path.join(sessions, name)
            if _fsio.is_temp_name(name):
                self.leftover(path, "unfinished session entry")
            elif name.endswith(".json"):
                record = self.decode(path)
                if record is not None and record.get("userId") not in users:
                    missing = record.get("userId")
                    self.report(path, "orphan", f"session names missing user {missing}")

    def check_user(self, user: UserId) -> None:
        record = self.decode(self.layout.user_file(user))
        self.lock_file(self.layout.user_lock(user))
        conversations = self.layout.conversations_dir(user)
        if not os.path.isdir(conversations):
            self.report(conversations, "missing", "user has no conversations directory")
            return
        highest = 0
        for name in sorted(os.listdir(conversations)):
            path = os.path.join(conversations, name)
            if _fsio.is_temp_name(name):
                self.leftover(path, "unfinished create or delete")
                continue
            try:
                conv = ConversationId.parse(name)
            except InvalidId:
                self.report(path, "stranger", "not a conversation directory")
                continue
            if conv.user != user.n:
                self.report(path, "stranger", f"conversation of another user in {user}")
                continue
            highest = max(highest, conv.n)
            if self.directory(path):
                self.check_conversation(conv)
        if record is not None:
            self.check_counter(user, record, highest)

    def check_counter(self, user: UserId, record: dict[str, Any], highest: int) -> None:
        counter = record.get("lastConversation")
        if highest == 0 or (type(counter) is int and counter >= highest):
            return
        path = self.layout.user_file(user)
        detail = f"lastConversation is {counter!r}, but conversation {highest} exists"
        if self.fix:
            # Under the user lock, from a fresh read: a create may have moved it on meanwhile.
            with _locks.exclusive(self.layout.user_lock(user), self.store.lock_timeout):
                current = _records.decode(_fsio.read_bytes(path))
                known = current.get("lastConversation")
                if type(known) is not int or known < highest:
                    current["lastConversation"] = highest
                    _fsio.replace_atomic(path, _records.encode_line(current), durable=True)
        self.report(path, "counter", detail, fixed=self.fix)

    def check_conversation(self, conv: ConversationId) -> None:
        conv_dir = self.layout.conversation_dir(conv)
        for name in os.listdir(conv_dir):
            if _fsio.is_temp_name(name):
                self.leftover(os.path.join(conv_dir, name), "unfinished metadata write")
        self.lock_file(self.layout.conversation_lock(conv))  # before a fix takes the lock
        self.check_metadata(conv)
        mdir = self.layout.messages_dir(conv)
        if not os.path.lexists(mdir):
            self.report(mdir, "missing", "conversation has no messages directory")
            return
        if not self.directory(mdir):
            return
        names = sorted(os.listdir(mdir))
        prefix = f"{conv}-ms"
        for name in names:
            path = os.path.join(mdir, name)
            if _fsio.is_temp_name(name):
                self.leftover(path, "unfinished message write")
            elif not name.startswith(prefix):
                self.report(path, "stranger", "not a file of this conversation")
        files = list_message_files(names, conv)
        if files:
            missing = sorted(set(range(1, max(files) + 1)) - set(files))
            if missing:
                self.report(mdir, "gap", f"message seqs missing: {missing[:20]}")
        self.check_tombstones(conv, names, files)
        finished = []
        for seq in sorted(files):
            message = self.check_message(MessageId(conv.user, conv.n, seq), files[seq])
            if message is not None:
                finished.append(message)
        self.check_segment(conv, finished)
        if self.documents is not None:
            tombstones = scan_tombstones(names, conv)
            try:
                meta = self.store.get_conversation(conv)
            except ChunkstoreError:
                return  # the index check reads it again, and says what it finds
            kept = [m for m in finished if m.seq not in tombstones]
            self.documents[conv] = digest(meta, searchable(meta, kept))

    def check_tombstones(self, conv: ConversationId, names: list[str], files: Any) -> None:
        """``<messageId>.deleted``: a readable record naming its message, of a message whose
        files exist. Its presence is what deletes the message, whatever it holds, so nothing
        here is fixed: a corrupt one still hides its message, and an orphan (no such
        message) only keeps its seq from being handed out."""
        mdir = self.layout.messages_dir(conv)
        for seq in sorted(scan_tombstones(names, conv)):
            mid = MessageId(conv.user, conv.n, seq)
            path = os.path.join(mdir, tombstone_name(mid))
            record = self.decode(path)
            if record is not None and record.get("messageId") != str(mid):
                self.report(path, "mismatch", "tombstone names another message")
            if seq not in files:
                self.report(path, "orphan", f"tombstone of {mid}, which has no files")

    def check_metadata(self, conv: ConversationId) -> None:
        """``conversation.json``: a damaged one (``_metadata``) reads back as a rebuilt record
        flagged ``damaged``; ``fix`` writes that record back, atomically, under the
        conversation's lock. (A directory in its place is left for a person.)"""
        path = self.layout.conversation_file(conv)
        try:
            found = read_conversation_file(conv, path)
        except FileNotFoundError:
            self.report(path, "missing", "file is missing")
            return
        except OSError as exc:  # a failing disk, not damage: nothing to rebuild from it
            self.report(path, "corrupt", str(exc))
            return
        if not isinstance(found, Damage):
            return
        if os.path.isdir(path) and not os.path.islink(path):
            self.report(path, found.kind, f"{found.detail}: look at it and remove it by hand")
            return
        fixed = self.fix and self.rebuild_metadata(conv, path)
        if fixed:
            detail = f"rebuilt a minimal record from the messages ({LOST_FIELDS} are lost)"
        else:
            detail = (
                "the conversation reads back damaged, without its "
                f"{LOST_FIELDS}; check --fix writes a minimal record (id, user, times from "
                "its messages), or an update sets them again"
            )
        self.report(path, found.kind, f"{found.detail}: {detail}", fixed=fixed)

    def rebuild_metadata(self, conv: ConversationId, path: str) -> bool:
        try:
            with _locks.exclusive(self.layout.conversation_lock(conv), self.store.lock_timeout):
                # From a fresh read: an update may have written a whole record meanwhile.
                if isinstance(read_conversation_file(conv, path), Conversation):
                    return True
                rebuilt = replace(damaged_conversation(self.layout, conv), damaged=False)
                _fsio.replace_atomic(
                    path, _records.encode_line(conversation_record(rebuilt)), durable=True
                )
        except OSError:
            return False  # reported as not fixed: the next check says it again
        self.store._meta_cache.pop((conv.user, conv.n), None)
        return True

    def check_message(self, mid: MessageId, files: Any) -> Any:
        records: list[dict[str, Any]] = []
        if files.sealed:
            sealed = self.decode(self.layout.sealed_file(mid))
            if sealed is not None:
                records = sealed.get("records") or []
                if files.chunks:
                    # Sealing crashed after the sealed file was durable: the chunks are spare.
                    if self.fix:
                        for n in files.chunks:
                            _fsio.unlink_quietly(self.layout.chunk_file(mid, n))
                    self.report(
                        self.layout.messages_dir(mid.conversation_id),
                        "leftover-chunks",
                        f"{mid} is sealed but still has chunk files",
                        fixed=self.fix,
                    )
                if files.lock and not _locks.is_held(self.layout.writer_lock(mid)):
                    if self.fix:
                        _fsio.unlink_quietly(self.layout.writer_lock(mid))
                    self.report(self.layout.writer_lock(mid), "stale-lock", "sealed", self.fix)
        else:
            if files.lock:
                # No live writer can hold a planted lock file: the message reads back
                # ``interrupted``. Only reported: the lock file is what claims its seq.
                self.planted(self.layout.writer_lock(mid))
            for n in sorted(files.chunks):
                record = self.decode(self.layout.chunk_file(mid, n))
                if record is not None:
                    records.append(record)
            if files.chunks and sorted(files.chunks) != list(range(1, len(files.chunks) + 1)):
                self.report(
                    self.layout.messages_dir(mid.conversation_id),
                    "gap",
                    f"{mid} chunks are not 1..k: {sorted(files.chunks)[:20]}",
                )
        for record in records:
            if record.get("messageId") != str(mid):
                self.report(
                    self.layout.sealed_file(mid), "mismatch", "record names another message"
                )
                return None
        message = rebuild_message(str(mid), mid.seq, records, writer_alive=False)
        return message if files.sealed and message.status in TERMINAL else None

    def planted(self, path: str) -> None:
        """Report ``path`` if something other than a regular file is there (never opened)."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if not stat.S_ISREG(st.st_mode):
            self.not_a_file(path, _fsio.NotRegularFile(path, _file_type(st)))

    def check_segment(self, conv: ConversationId, finished: list[Any]) -> None:
        path = self.layout.segment_file(conv)
        expected = {m.seq: message_to_line(m) for m in finished}
        bad = []
        stale = False
        try:
            data = _fsio.read_bytes(path)
        except FileNotFoundError:
            data = b""
        except _fsio.NotRegularFile as exc:
            # Derived data: a planted FIFO or symlink is replaced by a rebuilt segment (a
            # directory is left for a person to look at: nothing here removes a directory).
            replaceable = not os.path.isdir(path) or os.path.islink(path)
            repair = ""
            if self.fix and replaceable:
                _fsio.unlink_quietly(path)
                repair = "replaced by a segment rebuilt from the sealed files"
            hint = "bypassed (derived data); check --fix replaces it" if replaceable else ""
            self.not_a_file(path, exc, repair, hint or "bypassed; look at it, remove it by hand")
            if not replaceable:
                return
            data = b""
            stale = True
        seen = set()
        # Only whole lines are judged: a torn last line is what a crash mid-append leaves (the
        # next append cuts it), so it is rebuilt silently below rather than reported.
        whole = data[: data.rfind(b"\n") + 1]
        for line in whole.splitlines():
            try:
                record = _records.decode(line)
            except ValueError:
                bad.append("corrupt line")
                continue
            seq = record.get("seq")
            if seq in expected and record != expected[seq]:
                bad.append(f"line for seq {seq} disagrees with the sealed file")
            seen.add(seq)
        stale = stale or bool(bad) or len(whole) != len(data)
        if bad:
            self.report(path, "segment", "; ".join(bad[:5]), fixed=self.fix)
        if self.fix and (stale or set(expected) - seen):
            payload = b"".join(_records.encode_line(expected[s]) for s in sorted(expected))
            _fsio.replace_atomic(path, payload, durable=False)
            self.store._reader.forget(conv)


def _file_type(st: os.stat_result) -> str:
    return "a symbolic link" if stat.S_ISLNK(st.st_mode) else _fsio.file_type(st.st_mode)


def check_store(
    store: FileBackend,
    layout: Layout,
    fix: bool,
    documents: dict[ConversationId, Digest] | None = None,
) -> list[Problem]:
    """Every problem of the store's files; ``documents``, if given, receives what the search
    index should hold of each conversation walked."""
    return _Checker(store, layout, fix, documents).run()
