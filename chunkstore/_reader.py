"""Reading a conversation's messages: the rebuild path.

One ``listdir`` of ``messages/`` says which messages exist; finished messages come from the
segment (one read for the whole conversation) or, failing that, from their sealed file; only
messages still streaming (or cut by a crash) are rebuilt from their chunk files, and only they
need a liveness probe of their writer lock.

Finished messages never change, so what has been rebuilt is kept in memory per conversation
(``ConversationCache``, LRU-bounded): a warm read costs one ``listdir``, one ``fstat`` of the
segment and a list. The cache is keyed by conversation id; ids are never reused, and the
``listdir`` runs on every read, so a deleted conversation is noticed at once.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from . import _fsio, _locks, _records
from ._exceptions import ConversationNotFound, StorageError
from ._ids import ConversationId, MessageId, parse_chunk_name
from ._layout import Layout
from ._models import Message
from ._rebuild import TERMINAL, rebuild_message
from ._segment import SegmentIndex

__all__ = ["ConversationReader", "MessageFiles", "list_message_files"]


@dataclass(slots=True)
class MessageFiles:
    """The files ``messages/`` holds for one message."""

    sealed: bool = False
    chunks: list[int] = field(default_factory=list)
    lock: bool = False


def list_message_files(names: list[str], conv: ConversationId) -> dict[int, MessageFiles]:
    """Group the names of a ``messages/`` directory by message seq (strangers are skipped)."""
    prefix = f"{conv}-ms"
    files: dict[int, MessageFiles] = {}
    for name in names:
        if not name.startswith(prefix):
            continue
        if name.endswith(".lock"):
            try:
                seq = MessageId.parse(name[:-5]).seq
            except ValueError:
                continue
            files.setdefault(seq, MessageFiles()).lock = True
            continue
        parsed = parse_chunk_name(name)
        if parsed is None:
            continue
        seq, chunk = parsed
        entry = files.get(seq)
        if entry is None:
            entry = files[seq] = MessageFiles()
        if chunk == 0:
            entry.sealed = True
        else:
            entry.chunks.append(chunk)
    return files


class ConversationCache:
    """What one process knows of one conversation's messages."""

    __slots__ = ("finished", "listing", "names", "segment")

    def __init__(self, segment_path: str) -> None:
        self.segment = SegmentIndex(segment_path)
        self.names: list[str] | None = None
        self.listing: dict[int, MessageFiles] = {}
        self.finished: dict[int, Message] = {}  # read from sealed files, not in the segment


class ConversationReader:
    def __init__(self, layout: Layout, cache_size: int) -> None:
        self._layout = layout
        self._cache_size = cache_size
        self._caches: OrderedDict[str, ConversationCache] = OrderedDict()
        # Readers run on many threads (AsyncStore); one lock keeps each cache consistent.
        self._lock = threading.Lock()

    def forget(self, conv: ConversationId) -> None:
        with self._lock:
            self._caches.pop(str(conv), None)

    def remember(self, conv: ConversationId, message: Message) -> None:
        """A finished message written by this process: skip reading it back later."""
        with self._lock:
            cache = self._caches.get(str(conv))
            if cache is not None:
                cache.finished[message.seq] = message

    def messages(self, conv: ConversationId, after_seq: int, limit: int | None) -> list[Message]:
        try:
            names = os.listdir(self._layout.messages_dir(conv))
        except (FileNotFoundError, NotADirectoryError):
            raise ConversationNotFound(f"no conversation {conv}") from None
        except OSError as exc:
            raise StorageError.wrap(exc, f"cannot list messages of {conv}") from exc
        with self._lock:
            cache = self._cache_for(conv)
            if names != cache.names:
                cache.listing = list_message_files(names, conv)
                cache.names = names
            listing = cache.listing
            cache.segment.refresh()
            seqs = sorted(s for s in listing if s > after_seq)
            if limit is not None:
                seqs = seqs[:limit]
            out: list[Message] = []
            for seq in seqs:
                message = cache.finished.get(seq) or cache.segment.get(seq)
                if message is None:
                    message = self._read_message(conv, seq, listing[seq])
                    if message.status in TERMINAL and not message.damaged:
                        cache.finished[seq] = message
                out.append(message)
            return out

    def _cache_for(self, conv: ConversationId) -> ConversationCache:
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
        self, mid: MessageId, chunks: list[int]
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
