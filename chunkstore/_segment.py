"""The per-conversation segment: a derived, append-only index of finished messages.

Rebuilding a conversation from one file per message costs one ``open`` per message; the segment
turns that into one read. Each line is a finished message, already merged, checksummed like
every record (``_records``), and starting with ``{"seq":N,`` so a reader can index lines by seq
without parsing them and parse only the page it was asked for.

It is *derived*: the sealed message files are the truth and the segment can be deleted at any
time (``check(fix=True)`` rebuilds it). That is why appends are not fsynced, and why a torn or
corrupt line is simply skipped: the reader falls back to the message's own file. A segment
that is not a regular file (a planted FIFO, directory or symlink) is never opened blocking
(``_fsio.open_regular``) and is bypassed the same way.

``SegmentIndex`` keeps what was read in memory, keyed by the file's identity (device, inode)
and the offset read so far; the file only ever grows, so a warm read costs one ``fstat`` and
reads only new lines. New bytes are kept whole until someone asks: ``get`` indexes them by seq
and parses the lines it is asked for (a page), ``parse_all`` parses every line in one pass (a
whole conversation), skipping the per-line index a page needs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from . import _fsio, _records
from ._models import Message
from ._rebuild import message_from_line

__all__ = ["SegmentIndex", "seq_of_line"]

_PREFIX = b'{"seq":'


def seq_of_line(line: bytes) -> int | None:
    if not line.startswith(_PREFIX):
        return None
    end = line.find(b",", len(_PREFIX))
    try:
        return int(line[len(_PREFIX) : end])
    except ValueError:
        return None


class SegmentIndex:
    """What one conversation's segment holds: seq → message, parsed on first use.

    Every line read is in exactly one of three places, oldest first: ``_lines`` (indexed by
    seq, not parsed), ``_unread`` (whole lines as read, not even indexed yet) or, once parsed,
    ``_messages``. A line for a seq supersedes what an earlier line gave.
    """

    __slots__ = ("_identity", "_lines", "_messages", "_offset", "_unread", "path")

    def __init__(self, path: str) -> None:
        self.path = path
        self._identity: tuple[int, int] | None = None
        self._offset = 0
        self._unread: list[bytes] = []
        self._lines: dict[int, bytes] = {}
        self._messages: dict[int, Message] = {}

    def refresh(self) -> None:
        """Read whatever was appended since the last call (or everything, if replaced)."""
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            self._reset(None)
            return
        if (st.st_dev, st.st_ino) == self._identity and st.st_size == self._offset:
            return  # the warm path: nothing appended
        try:
            fd, st = _fsio.open_regular(self.path)
        except OSError:
            # Gone, or not a regular file (a planted FIFO, directory or symlink), or unreadable:
            # the segment is derived, so it is bypassed like a corrupt one and every message
            # comes from its own file. (A refused name keeps no identity: it is tried again.)
            self._reset(None)
            return
        try:
            identity = (st.st_dev, st.st_ino)
            if identity != self._identity or st.st_size < self._offset:
                self._reset(identity)
            if st.st_size == self._offset:
                return
            data = os.pread(fd, st.st_size - self._offset, self._offset)
        finally:
            os.close(fd)
        # Only whole lines count; a partial last line is an append in progress (or a torn
        # one) and is read again next time.
        end = data.rfind(b"\n") + 1
        if end:
            self._unread.append(data if end == len(data) else data[:end])
            self._offset += end

    def _reset(self, identity: tuple[int, int] | None) -> None:
        self._identity = identity
        self._offset = 0
        self._unread = []
        self._lines = {}
        self._messages = {}

    def parse_all(self) -> Mapping[int, Message]:
        """Parse every line not parsed yet, for a reader about to ask for most messages, and
        return seq → message (what ``get`` would say, until the next ``refresh``).

        One pass over the bytes as read, verifying and parsing each line and keying the message
        by the seq it holds; lines that fail are skipped (the seq is then missing, and the
        reader falls back to the message's own file).
        """
        messages = self._messages
        if not self._unread and not self._lines:
            return messages  # the warm path: everything read is parsed
        for seq, line in list(self._lines.items()):  # older than anything unread
            self._parse(seq, line)
        for data in self._unread:
            for record in _records.decode_lines(data):
                try:
                    message = message_from_line(record)
                except (KeyError, TypeError, ValueError):
                    continue
                messages[message.seq] = message
        self._unread = []
        return messages

    def _index_unread(self) -> None:
        lines = self._lines
        messages = self._messages
        for data in self._unread:
            for line in data.splitlines():
                seq = seq_of_line(line)
                if seq is not None:
                    lines[seq] = line
                    messages.pop(seq, None)
        self._unread = []

    def _parse(self, seq: int, line: bytes) -> Message | None:
        del self._lines[seq]
        try:
            record: dict[str, Any] = _records.decode(line)
            message = message_from_line(record)
        except (ValueError, KeyError, TypeError):
            return None  # a corrupt line: fall back to the message's own file
        if message.seq != seq:
            return None
        self._messages[seq] = message
        return message

    def get(self, seq: int) -> Message | None:
        """The finished message ``seq`` if the segment has an intact line for it."""
        if self._unread:
            self._index_unread()
        message = self._messages.get(seq)
        if message is not None:
            return message
        line = self._lines.get(seq)
        if line is None:
            return None
        return self._parse(seq, line)

    def __contains__(self, seq: int) -> bool:
        """Whether a line for ``seq`` was read and is not known to be corrupt."""
        if self._unread:
            self._index_unread()
        return seq in self._messages or seq in self._lines
