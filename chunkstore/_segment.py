"""The per-conversation segment: a derived, append-only index of finished messages.

Rebuilding a conversation from one file per message costs one ``open`` per message; the segment
turns that into one read. Each line is a finished message, already merged, checksummed like
every record (``_records``), and starting with ``{"seq":N,`` so a reader can find the line of
a seq without parsing the others, and parse only the page it was asked for.

It is *derived*: the sealed message files are the truth and the segment can be deleted at any
time (``check(fix=True)`` rebuilds it). That is why appends are not fsynced, and why a torn or
corrupt line is simply skipped: the reader falls back to the message's own file. A segment
that is not a regular file (a planted FIFO, directory or symlink) is never opened blocking
(``_fsio.open_regular``) and is bypassed the same way.

``SegmentIndex`` keeps what was read in memory, keyed by the file's identity (device, inode)
and the offset read so far; the file only ever grows, so a warm read costs one ``fstat`` and
reads only new lines. Nothing is parsed before someone asks:

* the first read of the file (the whole of it, in a new process) is kept as it was read and
  parsed *forward*: ``get(seq)`` looks at the next line, and if it is not ``seq``'s, finds
  ``seq``'s with one byte search (``\\n{"seq":N,`` can only start a line: JSON escapes every
  newline inside a string). Lines in seq order, as a conversation's nearly always are, are
  thus read page after page without ever being indexed; the lines a search skipped are
  indexed then, so each line is looked at once;
* what is appended later is indexed by seq on the next ``get`` (a new message or two);
* ``parse_all`` parses every line not parsed yet in one pass (a whole conversation).

A line for a seq supersedes what an earlier line gave. (Lines of a finished message are all
alike, since its sealed file never changes; only a hand-edited segment holds two different
lines for one seq, and then a page may show the earlier one until the later one is parsed.)
"""

from __future__ import annotations

import io
import itertools
import os
from collections.abc import Mapping

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

    Every line read is in exactly one of four places, oldest first: ``_lines`` (indexed by
    seq, not parsed), ``_ahead`` from ``_ahead_pos`` on (the first bytes read, neither indexed
    nor parsed yet), ``_unread`` (whole lines appended since, not even indexed yet) or, once
    parsed, ``_messages``. A line for a seq supersedes what an earlier line gave.
    """

    __slots__ = (
        "_ahead",
        "_ahead_pos",
        "_identity",
        "_lines",
        "_messages",
        "_offset",
        "_unread",
        "path",
    )

    def __init__(self, path: str) -> None:
        self.path = path
        self._identity: tuple[int, int] | None = None
        self._offset = 0
        self._ahead = b""
        self._ahead_pos = 0
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
            whole = data if end == len(data) else data[:end]
            if self._offset or self._ahead:
                self._unread.append(whole)
            else:
                self._ahead, self._ahead_pos = whole, 0  # the first read: parsed forward
            self._offset += end

    def _reset(self, identity: tuple[int, int] | None) -> None:
        self._identity = identity
        self._offset = 0
        self._ahead = b""
        self._ahead_pos = 0
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
        if not self._ahead and not self._unread and not self._lines:
            return messages  # the warm path: everything read is parsed
        for seq, line in list(self._lines.items()):  # older than anything unread
            self._parse(seq, line)
        if self._ahead:
            self._parse_run(self._ahead, self._ahead_pos, None)
        for data in self._unread:
            self._parse_run(data, 0, None)
        self._ahead, self._ahead_pos, self._unread = b"", 0, []
        return messages

    def _parse_run(self, data: bytes, start: int, count: int | None) -> int:
        """Verify and parse ``count`` lines (None: all) of ``data`` from ``start`` in one loop,
        keying each message by the seq it holds (newer than anything parsed or indexed so
        far); where the lines taken end."""
        messages = self._messages
        indexed = self._lines
        buffer = io.BytesIO(data)  # shares ``data``'s bytes: nothing is copied but each line
        buffer.seek(start)
        lines = buffer if count is None else itertools.islice(buffer, count)
        for record in _records.decode_stream(lines):
            try:
                message = message_from_line(record)
            except (KeyError, TypeError, ValueError):
                continue
            messages[message.seq] = message
            if indexed:
                indexed.pop(message.seq, None)
        return buffer.tell()

    def read_ahead(self, seq: int, count: int) -> None:
        """Parse the ``count`` lines that start with ``seq``'s, if it is ahead, in one loop: a
        page whose seqs follow each other in the file (nearly always) is then parsed at the
        speed of ``parse_all``, without a call per line. Anything else is left to ``get``."""
        data, pos = self._ahead, self._ahead_pos
        if not data or self._unread:
            return
        key = b'{"seq":%d,' % seq
        if not data.startswith(key, pos):
            start = data.find(b"\n" + key, pos) + 1
            if not start:
                return
            self._index(data[pos:start])
            pos = start
        end = self._parse_run(data, pos, count)
        if end >= len(data):
            self._ahead, self._ahead_pos = b"", 0
        else:
            self._ahead_pos = end

    def _index(self, data: bytes) -> None:
        """Index whole lines by seq: newer than anything indexed or parsed so far."""
        lines = self._lines
        messages = self._messages
        for line in data.splitlines(keepends=True):
            seq = seq_of_line(line)
            if seq is not None:
                lines[seq] = line
                messages.pop(seq, None)

    def _index_unread(self) -> None:
        # What is ahead is older than any append: indexed first, so an append supersedes it.
        if self._ahead:
            self._index(self._ahead[self._ahead_pos :])
            self._ahead, self._ahead_pos = b"", 0
        for data in self._unread:
            self._index(data)
        self._unread = []

    def _parse(self, seq: int, line: bytes) -> Message | None:
        del self._lines[seq]
        return self._parse_line(seq, line)

    def _parse_line(self, seq: int, line: bytes) -> Message | None:
        record = _records.decode_line(line)
        if record is None:
            return None  # a corrupt line: fall back to the message's own file
        try:
            message = message_from_line(record)
        except (KeyError, TypeError, ValueError):
            return None
        if message.seq != seq:
            return None
        self._messages[seq] = message
        return message

    def _find_ahead(self, seq: int) -> Message | None:
        """Parse ``seq``'s line if it is ahead: the next line, or one found by a byte search
        (the lines skipped are indexed, the search goes on from its line next time)."""
        data, pos = self._ahead, self._ahead_pos
        key = b'{"seq":%d,' % seq
        if data.startswith(key, pos):
            start = pos
        else:
            start = data.find(b"\n" + key, pos) + 1
            if not start:
                # Not ahead at all (a message missing from the segment): index what is ahead,
                # so the next seq missing from it costs no second search of the same bytes.
                self._index_unread()
                return None
            self._index(data[pos:start])
        end = data.index(b"\n", start) + 1
        if end == len(data):
            self._ahead, self._ahead_pos = b"", 0
        else:
            self._ahead_pos = end
        self._lines.pop(seq, None)  # older than this line
        return self._parse_line(seq, data[start:end])

    def parsed(self) -> Mapping[int, Message]:
        """The messages parsed so far, seq → message: what ``get`` would say for them (lines
        appended since are indexed first, so none of these is superseded)."""
        if self._unread:
            self._index_unread()
        return self._messages

    def get(self, seq: int) -> Message | None:
        """The finished message ``seq`` if the segment has an intact line for it."""
        if self._unread:
            self._index_unread()
        message = self._messages.get(seq)
        if message is not None:
            return message
        line = self._lines.get(seq)
        if line is not None:
            return self._parse(seq, line)
        if self._ahead:
            return self._find_ahead(seq)
        return None

    def __contains__(self, seq: int) -> bool:
        """Whether an intact line for ``seq`` was read (parsing it if need be)."""
        return self.get(seq) is not None
