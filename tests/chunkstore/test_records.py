"""Checksummed records: every truncation and every bit flip is detected."""

from __future__ import annotations

import zlib

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from chunkstore._records import CorruptRecord, decode, encode, encode_line

RECORD = {"v": 1, "messageId": "us01-co01-ms01", "seq": 1, "tokens": "héllo ✓", "tokenCount": 2}


def test_round_trip_and_plain_json() -> None:
    data = encode(RECORD)
    assert decode(data) == RECORD
    parsed = orjson.loads(data)  # still plain JSON, with the checksum as one more key
    assert parsed.pop("crc") == f"{zlib.crc32(data[: data.rindex(b',')]):08x}"
    assert parsed == RECORD


def test_encode_line_ends_in_newline_and_decodes() -> None:
    line = encode_line(RECORD)
    assert line.endswith(b"}\n")
    assert decode(line) == RECORD


def test_every_truncation_is_detected() -> None:
    data = encode_line(RECORD)
    for keep in range(len(data) - 1):  # keeping all but the newline is still whole
        with pytest.raises(CorruptRecord):
            decode(data[:keep])


def test_every_single_bit_flip_is_detected() -> None:
    data = encode(RECORD)
    for offset in range(len(data)):
        for bit in range(8):
            flipped = bytearray(data)
            flipped[offset] ^= 1 << bit
            with pytest.raises(CorruptRecord):
                decode(bytes(flipped))


def test_checksum_must_be_spelled_exactly() -> None:
    data = encode(RECORD)
    crc = data[-10:-2]
    for spelling in (b"zzzzzzzz", crc.upper().replace(b"2", b"X"), b" " + crc[1:]):
        with pytest.raises(CorruptRecord):
            decode(data[:-10] + spelling + data[-2:])
    # A checksum with hex letters: upper-casing one keeps its value but is still a flip.
    record = next(dict(RECORD, n=i) for i in range(100) if b"a" in encode(dict(RECORD, n=i))[-10:])
    data = encode(record)
    with pytest.raises(CorruptRecord):
        decode(data[:-10] + data[-10:-2].replace(b"a", b"A", 1) + data[-2:])


def test_empty_record_is_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        encode({})


def test_valid_checksum_over_invalid_json() -> None:
    head = b'{"a":'
    with pytest.raises(CorruptRecord, match="not JSON"):
        decode(head + b',"crc":"%08x"}' % zlib.crc32(head))


@given(
    st.dictionaries(
        st.text(max_size=8).filter(lambda k: k != "crc"),
        st.one_of(st.text(), st.integers(-(2**53), 2**53), st.booleans(), st.none()),
        min_size=1,
        max_size=6,
    )
)
def test_round_trip_any_record(record: dict[str, object]) -> None:
    assert decode(encode_line(record)) == record
