"""Server-Sent Events, in both directions.

Decoding follows the WHATWG HTML "server-sent events" interpretation rules, incrementally:
:class:`SSEDecoder` accepts the upstream body in whatever pieces the network delivers (a line,
a UTF-8 character or a ``\\r\\n`` pair may be split between two pieces) and returns the events
completed so far. Encoding is the small subset the edge emits: one ``data:`` line holding a
serialized JSON object, and the OpenAI end-of-stream marker :data:`DONE_EVENT`.

Memory is bounded by what the upstream is *allowed* to send, not by what it sends: a line, and
an event (all of its ``data:`` lines together, which the spec joins with ``\n``), may hold at
most ``max_event_bytes``. An upstream that streams lines without ever ending the event is cut
off there instead of being buffered whole.

Exceptions::

    ValueError
     └── SSEProtocolError   a line or an event longer than the decoder's max_event_bytes
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "DEFAULT_MAX_EVENT_BYTES",
    "DONE_EVENT",
    "SSEDecoder",
    "SSEEvent",
    "SSEProtocolError",
    "encode_data",
    "encode_event",
]

DEFAULT_MAX_EVENT_BYTES = 1024 * 1024
DONE_EVENT = b"data: [DONE]\n\n"

_BOM = b"\xef\xbb\xbf"
# CR, LF and the bytes of CRLF are ASCII, and UTF-8 never uses ASCII bytes inside a multi-byte
# sequence, so lines can be split on raw bytes and decoded only once they are complete.
_LINE_END = re.compile(rb"\r\n|\r|\n")
_ANY_NEWLINE = re.compile(r"\r\n|\r|\n")


class SSEProtocolError(ValueError):
    """The stream is not acceptable SSE: a line or an event exceeded ``max_event_bytes``.

    ``events`` holds the events the same :meth:`SSEDecoder.feed` call completed before the
    fault: they were valid, and a relay should pass them on before giving up.
    """

    def __init__(self, message: str, events: list[SSEEvent] | None = None) -> None:
        super().__init__(message)
        self.events: list[SSEEvent] = events or []


@dataclass(frozen=True, slots=True)
class SSEEvent:
    """One dispatched event.

    ``event`` is ``None`` for the default type (the spec's ``message``); ``id`` is the stream's
    last event id at dispatch time (it persists across events, as in the spec), ``None`` when
    none was ever set or it was reset with an empty ``id:`` field.
    """

    data: str
    event: str | None = None
    id: str | None = None


class SSEDecoder:
    """Incremental SSE decoder: :meth:`feed` bytes as they arrive, :meth:`close` at the end.

    A line or an event longer than ``max_event_bytes`` raises :class:`SSEProtocolError`, so a
    misbehaving upstream cannot make the edge buffer an unbounded line or event in memory.
    """

    __slots__ = (
        "_buf",
        "_data_bytes",
        "_data_lines",
        "_event_type",
        "_fields_pending",
        "_last_id",
        "_max_event_bytes",
        "_skip_lf",
        "_started",
    )

    def __init__(self, *, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> None:
        if max_event_bytes < 1:
            raise ValueError("max_event_bytes must be at least 1")
        self._max_event_bytes = max_event_bytes
        self._buf = bytearray()
        # A chunk may end right after "\r": the line is complete, but a "\n" starting the next
        # chunk belongs to the same CRLF terminator and must not count as an empty line.
        self._skip_lf = False
        self._started = False
        self._data_lines: list[str] = []
        self._data_bytes = 0  # the pending event's data so far, separators included
        self._event_type: str | None = None
        self._last_id: str | None = None
        self._fields_pending = False

    @property
    def has_partial(self) -> bool:
        """Whether bytes or fields of an unfinished event are pending.

        After :meth:`close`, ``True`` means the stream was cut in the middle of an event.
        """
        return bool(self._buf) or self._fields_pending

    @property
    def last_event_id(self) -> str | None:
        """The last event id seen so far (what a reconnecting client would send)."""
        return self._last_id

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """Consume the next piece of the body; return the events it completed, in order."""
        if not chunk:
            return []
        start = 0
        if self._skip_lf:
            self._skip_lf = False
            if chunk[:1] == b"\n":
                start = 1
        buf = self._buf
        # Whatever was buffered before holds no line end, so only the new bytes need scanning:
        # a long line fed in small pieces then costs linear, not quadratic, time.
        scan_from = len(buf)
        buf += memoryview(chunk)[start:]
        events: list[SSEEvent] = []
        pos = 0
        try:
            for match in _LINE_END.finditer(buf, scan_from):
                end = match.start()
                if end - pos > self._max_event_bytes:
                    raise SSEProtocolError(f"SSE line longer than {self._max_event_bytes} bytes")
                self._process_line(bytes(buf[pos:end]), events)
                pos = match.end()
                if match.group() == b"\r" and pos == len(buf):
                    self._skip_lf = True
            del buf[:pos]
            if len(buf) > self._max_event_bytes:
                raise SSEProtocolError(f"SSE line longer than {self._max_event_bytes} bytes")
        except SSEProtocolError as exc:
            exc.events = events
            raise
        return events

    def close(self) -> list[SSEEvent]:
        """End of stream. The spec discards an unfinished event, so this always returns ``[]``.

        Check :attr:`has_partial` afterwards to tell a clean end from a cut one.
        """
        return []

    def _process_line(self, raw: bytes, events: list[SSEEvent]) -> None:
        if not self._started:
            self._started = True
            if raw.startswith(_BOM):
                raw = raw[len(_BOM) :]
        if not raw:
            self._dispatch(events)
            return
        if raw[:1] == b":":
            return
        line = raw.decode("utf-8", errors="replace")
        name, colon, value = line.partition(":")
        if colon and value[:1] == " ":
            value = value[1:]
        if name == "data":
            # The value's bytes (after "data:") and the "\n" that will join it to the next line.
            self._data_bytes += len(raw) - 4
            if self._data_bytes > self._max_event_bytes:
                raise SSEProtocolError(f"SSE event longer than {self._max_event_bytes} bytes")
            self._data_lines.append(value)
        elif name == "event":
            self._event_type = value or None
        elif name == "id":
            if "\x00" not in value:
                self._last_id = value or None
        else:
            # "retry" only matters to a reconnecting browser; unknown fields are ignored by spec.
            return
        self._fields_pending = True

    def _dispatch(self, events: list[SSEEvent]) -> None:
        if self._data_lines:
            events.append(SSEEvent("\n".join(self._data_lines), self._event_type, self._last_id))
        self._data_lines = []
        self._data_bytes = 0
        self._event_type = None
        self._fields_pending = False


def encode_data(payload: bytes) -> bytes:
    """Frame one already-serialized, single-line JSON payload as an SSE event."""
    return b"data: " + payload + b"\n\n"


def encode_event(event: SSEEvent) -> bytes:
    """Frame any :class:`SSEEvent`; multi-line data becomes several ``data:`` lines.

    CR and CRLF inside ``data`` come back as LF after decoding: SSE has no way to carry them.
    """
    parts: list[str] = []
    if event.event is not None:
        parts.append(f"event: {_single_line(event.event, 'event')}\n")
    if event.id is not None:
        parts.append(f"id: {_single_line(event.id, 'id')}\n")
    parts.extend(f"data: {line}\n" for line in _ANY_NEWLINE.split(event.data))
    parts.append("\n")
    return "".join(parts).encode("utf-8")


def _single_line(value: str, field: str) -> str:
    if _ANY_NEWLINE.search(value):
        raise ValueError(f"SSE {field} must not contain a line break")
    return value
