"""Checksummed records: every truncation and every bit flip is detected."""

from __future__ import annotations

import io
import zlib

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from chunkstore._records import CorruptRecord, decode, decode_lines, encode, encode_line

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


def _decode_or_none(line: bytes) -> dict[str, object] | None:
    try:
        return decode(line)
    except CorruptRecord:
        return None


def test_decode_lines_keeps_the_intact_lines_in_order() -> None:
    first, second = dict(RECORD, n=1), dict(RECORD, n=2)
    flipped = bytearray(encode_line(RECORD))
    flipped[20] ^= 4
    upper = next(line for i in range(100) if b"a" in (line := encode_line(dict(RECORD, n=i)))[-11:])
    upper = upper[:-11] + upper[-11:-3].replace(b"a", b"A", 1) + upper[-3:]
    head = b'{"a":'
    not_json = head + b',"crc":"%08x"}\n' % zlib.crc32(head)
    data = b"".join(
        [
            encode_line(first),
            bytes(flipped),
            b"garbage\n",
            b"\n",
            upper,
            not_json,
            encode_line(second),
            encode_line(RECORD).rstrip(b"\n"),  # a last line without its newline: not whole
        ]
    )
    assert list(decode_lines(data)) == [first, second]
    assert list(decode_lines(b"")) == []


def test_decode_lines_agrees_with_decode_on_every_bit_flip() -> None:
    data = encode_line(RECORD) + encode_line(dict(RECORD, n=2))
    for offset in range(len(data)):
        for bit in range(8):
            flipped = bytearray(data)
            flipped[offset] ^= 1 << bit
            whole = [line for line in io.BytesIO(flipped) if line.endswith(b"\n")]
            expected = [r for r in map(_decode_or_none, whole) if r is not None]
            assert list(decode_lines(bytes(flipped))) == expected
            assert len(expected) <= 1  # the flipped line is never among them


@given(
    st.lists(
        st.dictionaries(
            st.text(max_size=8).filter(lambda k: k != "crc"),
            st.one_of(st.text(), st.integers(-(2**53), 2**53), st.none()),
            min_size=1,
            max_size=4,
        ),
        max_size=5,
    )
)
def test_decode_lines_round_trip(records: list[dict[str, object]]) -> None:
    assert list(decode_lines(b"".join(map(encode_line, records)))) == records


def test_the_standard_zlib_reads_what_zlib_ng_wrote_and_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The ``speedups`` extra only changes how fast the checksum is computed, never its value:
    a store written with zlib-ng is read without it, and the other way round."""
    import importlib.util
    import sys
    import zlib

    from chunkstore import _records

    record = {"seq": 1, "tokens": "héllo " * 50, "n": [1, 2]}
    written = encode_line(record)
    assert written.endswith(
        b',"crc":"%08x"}\n' % zlib.crc32(written[: -len(b',"crc":"00000000"}\n')])
    )
    # A second copy of the module, loaded while zlib-ng cannot be imported (chunkstore's own
    # stays as it is: reloading it would replace CorruptRecord under every other module).
    monkeypatch.setitem(sys.modules, "zlib_ng.zlib_ng", None)
    spec = importlib.util.spec_from_file_location("records_without_zlib_ng", _records.__file__)
    assert spec is not None and spec.loader is not None
    fallback = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fallback)
    assert fallback.crc32 is zlib.crc32
    assert fallback.decode(written) == record
    assert list(fallback.decode_lines(written * 2)) == [record, record]
    assert decode(fallback.encode_line(record)) == record
