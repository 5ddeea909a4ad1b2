"""Rebuilding a message from its records: pure functions, no I/O."""

from __future__ import annotations

from typing import Any

from chunkstore._rebuild import message_from_line, message_to_line, rebuild_message

MID = "us01-co01-ms02"


def chunk(seq: int, tokens: str, status: str = "streaming", **extra: Any) -> dict[str, Any]:
    record = {
        "v": 1,
        "messageId": MID,
        "seq": seq,
        "tokens": tokens,
        "tokenCount": len(tokens),
        "timestamp": f"2024-01-01T00:00:0{seq}Z",
        "role": "assistant",
        "status": status,
    }
    record.update(extra)
    return record


def test_records_in_any_order_rebuild_in_seq_order() -> None:
    records = [chunk(3, "c", "complete", finishReason="stop"), chunk(1, "a"), chunk(2, "b")]
    m = rebuild_message(MID, 2, records, writer_alive=False)
    assert (m.content, m.status, m.finish_reason, m.token_count) == ("abc", "complete", "stop", 3)
    assert m.created_at == "2024-01-01T00:00:01Z"
    assert m.completed_at == "2024-01-01T00:00:03Z"
    assert not m.damaged


def test_error_keeps_partial_content() -> None:
    records = [chunk(1, "par"), chunk(2, "tial", "error", error="boom", usage={"total_tokens": 4})]
    m = rebuild_message(MID, 2, records, writer_alive=True)
    assert (m.content, m.status, m.error, m.usage) == ("partial", "error", "boom", {"total_tokens": 4})


def test_no_terminal_record_is_streaming_or_interrupted() -> None:
    records = [chunk(1, "a"), chunk(2, "b")]
    assert rebuild_message(MID, 2, records, writer_alive=True).status == "streaming"
    m = rebuild_message(MID, 2, records, writer_alive=False)
    assert (m.status, m.content, m.completed_at) == ("interrupted", "ab", None)


def test_no_records_at_all() -> None:
    assert rebuild_message(MID, 2, [], writer_alive=True).status == "streaming"
    m = rebuild_message(MID, 2, [], writer_alive=False, damaged=True)
    assert (m.status, m.content, m.damaged) == ("interrupted", "", True)


def test_hole_marks_damaged_but_keeps_the_rest() -> None:
    m = rebuild_message(MID, 2, [chunk(1, "a"), chunk(3, "c")], writer_alive=False)
    assert m.damaged
    assert m.content == "ac"


def test_foreign_or_malformed_records_are_dropped_and_mark_damaged() -> None:
    stranger = dict(chunk(1, "x"), messageId="us01-co01-ms09")
    m = rebuild_message(MID, 2, [stranger], writer_alive=False)
    assert m.content == ""
    assert m.damaged
    m = rebuild_message(MID, 2, [chunk(1, "a"), dict(chunk(2, "b"), seq="2")], writer_alive=False)
    assert m.content == "a"
    assert m.damaged


def test_structured_content_and_tool_fields_kept_verbatim() -> None:
    parts = [{"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {"url": "x"}}]
    record = chunk(1, "hi", "complete", content=parts, agentId="bot", toolCallId="c1", name="n")
    m = rebuild_message(MID, 2, [record], writer_alive=False)
    assert m.content == parts
    assert m.text == "hi"
    assert (m.agent_id, m.tool_call_id, m.name) == ("bot", "c1", "n")
    assert m.to_openai() == {"role": "assistant", "content": parts, "tool_call_id": "c1", "name": "n"}


def test_tool_calls_only_message() -> None:
    calls = [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    record = chunk(1, "", "complete", content=None, toolCalls=calls, finishReason="tool_calls")
    m = rebuild_message(MID, 2, [record], writer_alive=False)
    assert m.content is None
    assert m.text == ""
    assert m.to_openai() == {"role": "assistant", "content": None, "tool_calls": calls}


def test_segment_line_round_trip() -> None:
    records = [chunk(1, "a", agentId="bot"), chunk(2, "b", "complete", usage={"t": 1})]
    m = rebuild_message(MID, 2, records, writer_alive=False)
    line = message_to_line(m)
    assert next(iter(line)) == "seq"  # readers find the seq without parsing the line
    assert "toolCalls" not in line  # None fields are left out
    assert message_from_line(line) == m
