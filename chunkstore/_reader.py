"""Reading a conversation's messages: the rebuild path.

One ``listdir`` of ``messages/`` says which messages exist; finished messages come from the
segment (one read for the whole conversation) or, failing that, from their sealed file; only
messages still streaming (or cut by a crash) are rebuilt from their chunk files, and only they
need a liveness probe of their writer lock.

Finished messages never change, so what has been rebuilt is kept in memory per conversation
(``ConversationCache``, LRU-bounded). A warm read of a quiet conversation costs a ``stat`` of
``messages/`` and of the segment: the listing is reused while the directory's identity and
mtime are unchanged (and that mtime was already old when it was listed, so no later change can
hide behind the timestamp granularity). Only messages still streaming, or cut by a crash, are
read again on every call, with a liveness probe of their writer lock. The cache is keyed by
conversation id; ids are never reused, and a deleted conversation fails the ``stat`` at once.

Locking (readers run on many threads: ``AsyncStore``'s pool). No lock is held across one
conversation's I/O that another conversation needs: a slow disk, or a file that takes long to
read, holds up only the readers of that one conversation. The reader's own lock guards only
the LRU of caches (find, insert, evict: no I/O); each ``ConversationCache`` has its own lock,
held while that conversation is listed and read, so its cache stays consistent. A cache
evicted (or forgotten) while a read holds it is simply dropped when that read ends: the
read's answer is still right, it is just not kept.
"""

from __future__ import annotations

import bisect
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from . import _fsio, _locks, _records
from ._exceptions import ConversationNotFound, StorageError
from ._ids import SEALED_NAMES, ConversationId, MessageId, rebase_listing, scan_rebased
from ._layout import Layout
from ._models import Message
from ._rebuild import TERMINAL, rebuild_message
from ._segment import SegmentIndex

__all__ = [
    "ConversationReader",
    "MessageFiles",
    "conversation_io",
    "list_message_files",
    "scan_listing",
]


@contextmanager
def conversation_io(conv: ConversationId, action: str) -> Iterator[None]:
    """Map the OS errors of a conversation's files: absent → not found, others → storage."""
    try:
        yield
    except (FileNotFoundError, NotADirectoryError):
        raise ConversationNotFound(f"no conversation {conv}") from None
    except OSError as exc:
        raise StorageError.wrap(exc, f"cannot {action} of {conv}") from exc


@dataclass(frozen=True, slots=True)
class MessageFiles:
    """The files ``messages/`` holds for one message (immutable: listings share entries)."""

    sealed: bool = False
    chunks: tuple[int, ...] = ()
    lock: bool = False


_SEALED = MessageFiles(sealed=True)  # what nearly every message has


def list_message_files(names: list[str], conv: ConversationId) -> dict[int, MessageFiles]:
    """Group the names of a ``messages/`` directory by message seq (strangers are skipped)."""
    return scan_listing(names, conv)[0]


def scan_listing(
    names: list[str], conv: ConversationId
) -> tuple[dict[int, MessageFiles], set[int]]:
    """A ``messages/`` listing: seq -> the message's files, and the seqs with a tombstone."""
    rebased = rebase_listing(names, conv)
    sealed = SEALED_NAMES.findall(rebased)
    if len(sealed) == len(names):
        # Every name is a sealed file of this conversation (a quiet conversation): one regex
        # pass and one shared entry, no per-name Python work at all.
        return dict.fromkeys(map(int, sealed), _SEALED), set()
    scanned, tombstones = scan_rebased(rebased)
    # Nearly every message is one sealed file: those share one entry, found in one
    # comprehension (a Python loop building an entry per name was a tenth of a cold rebuild).
    files = {seq: _SEALED for seq, chunk, is_lock in scanned if not chunk and not is_lock}
    chunks: dict[int, list[int]] = {}
    locks: set[int] = set()
    for seq, chunk, is_lock in [entry for entry in scanned if entry[1] or entry[2]]:
        if is_lock:
            locks.add(seq)
        else:
            chunks.setdefault(seq, []).append(chunk)
    for seq in chunks.keys() | locks:
        files[seq] = MessageFiles(seq in files, tuple(chunks.get(seq, ())), seq in locks)
    return files, tombstones


class ConversationCache:
    """What one process knows of one conversation's messages."""

    __slots__ = (
        "deleted",
        "dir_identity",
        "finished",
        "listing",
        "lock",
        "names",
        "segment",
        "seqs",
        "settled",
    )

    def __init__(self, segment_path: str) -> None:
        # Held while this conversation is listed and read (never with the reader's lock).
        self.lock = threading.Lock()
        self.segment = SegmentIndex(segment_path)
        self.names: list[str] | None = None
        self.listing: dict[int, MessageFiles] = {}
        self.seqs: list[int] = []  # the listing's seqs, sorted, without deleted ones
        self.deleted: set[int] = set()  # seqs with a tombstone (``<messageId>.deleted``)
        self.finished: dict[int, Message] = {}  # read from sealed files, not in the segment
        # (device, inode, mtime) of messages/ when it was listed, and whether its mtime was
        # old enough then that any later change must show as a new mtime (see ``_fsio.settled``).
        self.dir_identity: tuple[int, int, int] | None = None
        self.settled = False


class ConversationReader:
    def __init__(self, layout: Layout, cache_size: int) -> None:
        self._layout = layout
        self._cache_size = cache_size
        self._caches: OrderedDict[str, ConversationCache] = OrderedDict()
        # Guards ``_caches`` only, never held across I/O (see the module docstring).
        self._lock = threading.Lock()

    def forget(self, conv: ConversationId) -> None:
        with self._lock:
            self._caches.pop(str(conv), None)

    def remember(self, conv: ConversationId, message: Message) -> None:
        """A finished message written by this process: skip reading it back later."""
        with self._lock:
            cache = self._caches.get(str(conv))
        if cache is not None:
            # Under the conversation's lock, but without waiting for it: a writer is never
            # held up by a slow reader, and a message not remembered is just read back later.
            if cache.lock.acquire(blocking=False):
                try:
                    cache.finished[message.seq] = message
                finally:
                    cache.lock.release()

    def messages(self, conv: ConversationId, after_seq: int, limit: int | None) -> list[Message]:
        mdir = self._layout.messages_dir(conv)
        now = time.time_ns()
        with conversation_io(conv, "list messages"):
            st = os.stat(mdir)
        identity = (st.st_dev, st.st_ino, st.st_mtime_ns)
        with self._lock:
            cache = self._cache_for(conv)
        with cache.lock:
            if identity != cache.dir_identity or not cache.settled:
                self._relist(conv, cache, mdir, identity, now)
            cache.segment.refresh()
            seqs = cache.seqs
            if after_seq:
                seqs = seqs[bisect.bisect_right(seqs, after_seq) :]
            if limit is not None:
                seqs = seqs[:limit]
            listing = cache.listing
            finished = cache.finished
            segment = cache.segment
            parsed: Mapping[int, Message]
            from_segment: Callable[[int], Message | None]
            if 2 * len(seqs) >= len(cache.seqs):
                # Most of the conversation: one pass over the segment beats indexing it by seq
                # first (a page of a long conversation still parses only its own lines).
                parsed = segment.parse_all()
                from_segment = parsed.get
            else:
                if seqs:
                    # A page: its lines usually follow each other in the segment.
                    segment.read_ahead(seqs[0], len(seqs))
                parsed = segment.parsed()
                from_segment = segment.get
            if all(map(parsed.__contains__, seqs)):
                # Every message asked for is in the segment (the usual case): no Python per
                # message. The segment's line and ``finished`` (sealed files, this process's
                # own writes) hold the same finished message, so either may answer.
                return list(map(parsed.__getitem__, seqs))
            out: list[Message] = []
            for seq in seqs:
                message = finished.get(seq) or from_segment(seq)
                if message is None:
                    message = self._read_message(conv, seq, listing[seq])
                    if message.status in TERMINAL and not message.damaged:
                        cache.finished[seq] = message
                out.append(message)
            return out

    def _relist(
        self,
        conv: ConversationId,
        cache: ConversationCache,
        mdir: str,
        identity: tuple[int, int, int],
        now: int,
    ) -> None:
        """List ``messages/`` again: it changed, or it changed too recently to trust its mtime."""
        if cache.dir_identity is None or cache.dir_identity[:2] != identity[:2]:
            # A directory we have not vetted: the store never creates links, so a symlink on
            # the way is planted and could lead outside the root.
            if self._layout.has_symlink(conv):
                raise ConversationNotFound(f"no conversation {conv}")
        with conversation_io(conv, "list messages"):
            names = os.listdir(mdir)
        if names != cache.names:
            listing, deleted = scan_listing(names, conv)
            cache.listing = listing
            # Seqs are claimed gap-free, so the listing is nearly always exactly 1..n (n distinct
            # positive seqs whose largest is n): no need to sort what the directory order shuffled.
            n = len(listing)
            seqs = list(range(1, n + 1)) if n and max(listing) == n else sorted(listing)
            # A deleted message keeps its files; its tombstone hides it from every read.
            cache.deleted = deleted
            cache.seqs = [seq for seq in seqs if seq not in deleted] if deleted else seqs
            cache.names = names
        cache.dir_identity = identity
        # Until the mtime is older than the timestamp granularity, list on every read.
        cache.settled = _fsio.settled(now, identity[2])

    def _cache_for(self, conv: ConversationId) -> ConversationCache:
        """The cache of ``conv``, created if missing, made the most recent. Caller holds
        ``self._lock`` (and no conversation's lock)."""
        key = str(conv)
        cache = self._caches.get(key)
        if cache is None:
            cache = self._caches[key] = ConversationCache(self._layout.segment_file(conv))
            if len(self._caches) > self._cache_size:
                self._caches.popitem(last=False)
        else:
            self._caches.move_to_end(key)
        return cache

    def _read_message(self, conv: ConversationId, seq: int, files: MessageFiles) -> Message:
        mid = MessageId(conv.user, conv.n, seq)
        if files.sealed:
            message = self._read_sealed(mid)
            if message is not None:
                return message
        records, damaged, vanished = self._read_chunks(mid, files.chunks)
        if vanished:
            # The writer sealed the message while we listed it: the sealed file has it all.
            sealed = self._read_sealed(mid)
            if sealed is not None:
                return sealed
        last_status = records[-1].get("status") if records else None
        alive = False
        if last_status not in TERMINAL:
            alive = files.lock and _locks.is_held(self._layout.writer_lock(mid))
            if not alive:
                # A writer that sealed between our listdir and the probe left a sealed file.
                sealed = self._read_sealed(mid)
                if sealed is not None:
                    return sealed
        # Reaching here with a sealed file listed means it was unreadable (a sealed file is
        # never removed): whatever the leftover chunks give back, the message is damaged.
        damaged = damaged or files.sealed
        return rebuild_message(str(mid), seq, records, writer_alive=alive, damaged=damaged)

    def _read_sealed(self, mid: MessageId) -> Message | None:
        try:
            sealed = _records.decode(_fsio.read_bytes(self._layout.sealed_file(mid)))
            records: list[dict[str, Any]] = sealed["records"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return rebuild_message(str(mid), mid.seq, records, writer_alive=False)

    def _read_chunks(
        self, mid: MessageId, chunks: tuple[int, ...]
    ) -> tuple[list[dict[str, Any]], bool, bool]:
        records: list[dict[str, Any]] = []
        damaged = vanished = False
        for n in sorted(chunks):
            try:
                records.append(_records.decode(_fsio.read_bytes(self._layout.chunk_file(mid, n))))
            except FileNotFoundError:
                vanished = True
            except (OSError, ValueError):
                damaged = True
        return records, damaged, vanished
