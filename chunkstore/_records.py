"""Record encoding: one JSON object per file (or per segment line) with a trailing checksum.

Every record chunkstore writes ends in ``,"crc":"<8 hex>"}``: the CRC-32 of all the bytes before
that suffix. The suffix sits at a fixed distance from the end, so a reader verifies a record on
the raw bytes (no second serialization) before parsing it, and a truncated or bit-flipped file
is detected instead of being silently misread. The file is still plain JSON.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator
from typing import Any

import orjson

try:
    # zlib-ng's CRC-32 (the same checksum: the polynomial and bytes are zlib's) runs at several
    # times the speed of the system zlib's on x86-64 and ARM (PCLMULQDQ / PMULL); checking the
    # checksum of every record is a tenth of a cold rebuild with zlib's. Optional: the
    # ``speedups`` extra installs it, and without it the standard library's is used.
    from zlib_ng.zlib_ng import crc32
except ImportError:  # the fallback: tests/chunkstore/test_records.py reads records with it
    from zlib import crc32

__all__ = [
    "CorruptRecord",
    "decode",
    "decode_line",
    "decode_lines",
    "decode_stream",
    "encode",
    "encode_line",
]

_SUFFIX_LEN = len(b',"crc":"00000000"}')
_SUFFIX_HEAD = b',"crc":"'
_LINE_SUFFIX = b',"crc":"%08x"}\n'  # a segment line's end, ``%`` its checksum


class CorruptRecord(ValueError):
    """Bytes that are not a whole, checksummed record."""


def encode(record: dict[str, Any]) -> bytes:
    """Serialize ``record`` (which must not have a ``crc`` key) with its checksum."""
    if not record:
        # ``{}`` would become ``{,"crc":...}``, which is not JSON: refuse rather than write a
        # record that can never be read back.
        raise ValueError("cannot encode an empty record")
    body = orjson.dumps(record)
    head = body[:-1]  # without the closing brace
    return head + b',"crc":"%08x"}' % crc32(head)


def encode_line(record: dict[str, Any]) -> bytes:
    return encode(record) + b"\n"


def decode(data: bytes) -> dict[str, Any]:
    """Verify and parse one record; trailing whitespace (the newline) is allowed."""
    data = data.rstrip(b"\n")
    if len(data) <= _SUFFIX_LEN or data[-_SUFFIX_LEN:-10] != _SUFFIX_HEAD or data[-2:] != b'"}':
        raise CorruptRecord("record is truncated or has no checksum")
    # Compare the checksum's exact spelling, not its value: int("A", 16) == int("a", 16), so
    # parsing it would let a bit flip that turns a hex letter upper-case go undetected.
    if b"%08x" % crc32(data[:-_SUFFIX_LEN]) != data[-10:-2]:
        raise CorruptRecord("record checksum mismatch")
    try:
        record = orjson.loads(data)
    except orjson.JSONDecodeError as exc:  # a collision with a valid CRC is astronomically rare
        raise CorruptRecord(f"record is not JSON: {exc}") from None
    if not isinstance(record, dict):
        raise CorruptRecord("record is not a JSON object")
    del record["crc"]
    return record


def decode_line(line: bytes) -> dict[str, Any] | None:
    """``decode`` for one whole line (newline included), or None if it fails: the per-line
    check of ``decode_lines``, for a reader that parses a segment's lines one by one."""
    cut = len(line) - _SUFFIX_LEN - 1
    if cut <= 0 or line[cut:] != _LINE_SUFFIX % crc32(line[:cut]):
        return None
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(record, dict):
        return None
    del record["crc"]
    return record


def decode_lines(data: bytes) -> Iterator[dict[str, Any]]:
    """``decode`` for every line of ``data`` in order, skipping the lines that fail it.

    The bulk form, for a whole segment: ``BytesIO`` finds the lines in C and hands out one
    short-lived copy at a time (splitting all lines up front allocates the whole file again,
    and on a VM fresh memory costs a page fault per 4 KiB). A last line without its newline
    is not whole and is skipped.
    """
    return decode_stream(io.BytesIO(data))


def decode_stream(lines: Iterable[bytes]) -> Iterator[dict[str, Any]]:
    """``decode_lines`` for lines as they come (a ``BytesIO`` positioned where they start, a
    slice of one): the caller can tell where the lines it took end."""
    loads, suffix_len, suffix = orjson.loads, _SUFFIX_LEN + 1, _LINE_SUFFIX
    for line in lines:
        # The checks of ``decode`` in one comparison: the line must end in exactly the suffix
        # its checksum spells (lower-case hex, closing brace, newline).
        if line[-suffix_len:] != suffix % crc32(line[:-suffix_len]):
            continue
        try:
            record = loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(record, dict):
            del record["crc"]
            yield record
