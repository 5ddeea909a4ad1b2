"""Tests for edge.sse: the incremental decoder against the WHATWG rules, and the encoders."""

from __future__ import annotations

import itertools

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge.sse import (
    DONE_EVENT,
    SSEDecoder,
    SSEEvent,
    SSEProtocolError,
    encode_data,
    encode_event,
)


def decode_all(raw: bytes, pieces: int = 1) -> tuple[list[SSEEvent], SSEDecoder]:
    decoder = SSEDecoder()
    events: list[SSEEvent] = []
    step = max(1, len(raw) // pieces) if pieces > 1 else len(raw) or 1
    for i in range(0, len(raw), step):
        events += decoder.feed(raw[i : i + step])
    events += decoder.close()
    return events, decoder


def test_single_data_event() -> None:
    events, decoder = decode_all(b"data: hello\n\n")
    assert events == [SSEEvent("hello")]
    assert not decoder.has_partial


@pytest.mark.parametrize("newline", [b"\n", b"\r\n", b"\r"])
def test_line_endings(newline: bytes) -> None:
    raw = newline.join([b"data: a", b"data: b", b"", b"event: e", b"data: c", b"", b""])
    events, _ = decode_all(raw)
    assert events == [SSEEvent("a\nb"), SSEEvent("c", event="e")]


def test_mixed_line_endings_in_one_stream() -> None:
    events, _ = decode_all(b"data: a\r\ndata: b\rdata: c\n\r\ndata: d\r\r")
    assert events == [SSEEvent("a\nb\nc"), SSEEvent("d")]


def test_crlf_split_between_feeds_is_one_line_end() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: x\r") == []
    # Had the "\n" counted as a second line end, the event would dispatch here.
    assert decoder.feed(b"\n") == []
    assert decoder.feed(b"\r") == [SSEEvent("x")]
    assert decoder.feed(b"\n") == []
    assert decoder.feed(b"data: y\n\n") == [SSEEvent("y")]


def test_multibyte_character_split_between_feeds() -> None:
    raw = "data: héllo → 世界 🙂\n\n".encode()
    decoder = SSEDecoder()
    events = []
    for byte in raw:
        events += decoder.feed(bytes([byte]))
    assert events == [SSEEvent("héllo → 世界 🙂")]


def test_only_one_leading_space_is_removed() -> None:
    events, _ = decode_all(b"data:no space\n\ndata:  two spaces\n\ndata:\n\n")
    assert events == [SSEEvent("no space"), SSEEvent(" two spaces"), SSEEvent("")]


def test_field_without_colon_has_empty_value() -> None:
    events, _ = decode_all(b"data\ndata\n\n")
    assert events == [SSEEvent("\n")]


def test_comments_and_unknown_fields_are_ignored() -> None:
    raw = b": keep-alive\n\nretry: 1000\nfoo: bar\ndata: x\n: in the middle\n\n"
    events, _ = decode_all(raw)
    assert events == [SSEEvent("x")]


def test_blank_line_without_data_dispatches_nothing() -> None:
    events, _ = decode_all(b"\n\n\nevent: lonely\n\nid: 1\n\ndata: after\n\n")
    # The event type is reset with the discarded event; the id persists.
    assert events == [SSEEvent("after", id="1")]


def test_id_persists_and_resets() -> None:
    raw = b"id: 7\ndata: a\n\ndata: b\n\nid\ndata: c\n\nid: x\x00y\ndata: d\n\n"
    events, decoder = decode_all(raw)
    assert [e.id for e in events] == ["7", "7", None, None]
    assert decoder.last_event_id is None


def test_leading_bom_is_stripped_once() -> None:
    events, _ = decode_all(b"\xef\xbb\xbfdata: a\n\n\xef\xbb\xbfdata: b\n\n")
    # Only the stream's first BOM is special: the second makes an unknown field name.
    assert events == [SSEEvent("a")]


def test_invalid_utf8_is_replaced() -> None:
    events, _ = decode_all(b"data: \xff\xfe ok\n\n")
    assert events == [SSEEvent("\ufffd\ufffd ok")]


def test_trailing_event_without_blank_line_is_discarded() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: one\n\ndata: cut") == [SSEEvent("one")]
    assert decoder.close() == []
    assert decoder.has_partial


def test_complete_lines_without_dispatch_are_partial() -> None:
    decoder = SSEDecoder()
    decoder.feed(b"data: one\n")
    assert decoder.close() == []
    assert decoder.has_partial


def test_clean_end_is_not_partial() -> None:
    decoder = SSEDecoder()
    decoder.feed(b": hello\n\ndata: one\n\n" + DONE_EVENT + b": bye\n")
    assert decoder.close() == []
    assert not decoder.has_partial


def test_line_too_long_raises() -> None:
    decoder = SSEDecoder(max_event_bytes=16)
    assert decoder.feed(b"data: 0123456789\n\n") == [SSEEvent("0123456789")]
    with pytest.raises(SSEProtocolError):
        decoder.feed(b"data: " + b"x" * 20 + b"\n")


def test_unterminated_line_too_long_raises_before_the_end_arrives() -> None:
    decoder = SSEDecoder(max_event_bytes=1024)
    decoder.feed(b"data: " + b"x" * 1000)
    with pytest.raises(SSEProtocolError):
        decoder.feed(b"x" * 100)
    assert issubclass(SSEProtocolError, ValueError)


def test_an_event_of_many_lines_is_bounded_as_a_whole() -> None:
    # Each line is short, but the event never ends: the decoder must not buffer it all.
    decoder = SSEDecoder(max_event_bytes=1024)
    with pytest.raises(SSEProtocolError, match="event longer"):
        for _ in range(1000):
            decoder.feed(b"data: " + b"x" * 50 + b"\n")


def test_an_event_just_under_the_bound_passes_and_the_count_restarts() -> None:
    decoder = SSEDecoder(max_event_bytes=64)
    line = b"data: " + b"y" * 20 + b"\n"  # 22 bytes counted: the value and a separator
    for _ in range(3):
        assert decoder.feed(line + line + b"\n") == [SSEEvent("y" * 20 + "\n" + "y" * 20)]


def test_encode_data_and_done() -> None:
    payload = orjson.dumps({"a": "b\nc"})
    assert encode_data(payload) == b'data: {"a":"b\\nc"}\n\n'
    events, _ = decode_all(encode_data(payload) + DONE_EVENT)
    assert [orjson.loads(events[0].data), events[1].data] == [{"a": "b\nc"}, "[DONE]"]


def test_encode_event_rejects_line_breaks_in_fields() -> None:
    with pytest.raises(ValueError):
        encode_event(SSEEvent("x", event="a\nb"))


_field = st.text(st.characters(codec="utf-8", exclude_characters="\r\n\x00"), min_size=1)
_data = st.text(st.characters(codec="utf-8", exclude_characters="\r"))
_events = st.lists(
    st.builds(SSEEvent, data=_data, event=st.none() | _field, id=st.none() | _field),
    max_size=8,
)


@given(events=_events, cuts=st.lists(st.integers(min_value=0), max_size=12))
def test_round_trip_split_anywhere(events: list[SSEEvent], cuts: list[int]) -> None:
    raw = b"".join(encode_event(event) for event in events)
    positions = sorted({cut % (len(raw) + 1) for cut in cuts} | {0, len(raw)})
    decoder = SSEDecoder()
    decoded: list[SSEEvent] = []
    for start, end in itertools.pairwise(positions):
        decoded += decoder.feed(raw[start:end])
    decoded += decoder.close()

    expected = []
    last_id = None
    for event in events:
        # The last event id outlives the event that set it, by spec.
        last_id = event.id if event.id is not None else last_id
        expected.append(SSEEvent(event.data, event.event, last_id))
    assert decoded == expected
    assert not decoder.has_partial


def test_the_events_completed_before_a_fault_travel_with_it() -> None:
    decoder = SSEDecoder(max_event_bytes=64)
    with pytest.raises(SSEProtocolError) as raised:
        decoder.feed(b"data: ok\n\ndata: " + b"z" * 100 + b"\n")
    assert raised.value.events == [SSEEvent("ok")]
