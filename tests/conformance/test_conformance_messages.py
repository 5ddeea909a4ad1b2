"""Messages: ``append_message``, ``stream_message`` (cadence, finish, fail, exceptions,
abandon, liveness), ``messages`` paging and ``message_count``, on every backend."""

from __future__ import annotations

from typing import Any

import pytest
from conformance_support import open_store

from chunkstore import (
    Conversation,
    InvalidArgument,
    Message,
    Store,
    WriterClosed,
)

PARTS = [
    {"type": "text", "text": "look at "},
    {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
    {"type": "text", "text": "this"},
]
TOOL_CALLS = [
    {
        "id": "call_1",
        "type": "function",
        "function": {"name": "weather", "arguments": '{"city": "Lisbon"}'},
    }
]
USAGE = {"prompt_tokens": 12, "completion_tokens": 10, "total_tokens": 22}


def reread(store_url: str, conversation_id: str) -> list[Message]:
    """The conversation's messages as a store opened afresh on the URL reads them."""
    with open_store(store_url) as fresh:
        return fresh.messages(conversation_id, limit=None)


# -- append_message -------------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["system", "developer", "user", "assistant", "tool"])
def test_every_role(store: Store, conv: Conversation, role: str) -> None:
    message = store.append_message(conv.id, role, f"as {role}")
    assert (message.role, message.content, message.status) == (role, f"as {role}", "complete")


@pytest.mark.parametrize(
    ("content", "text"),
    [
        ("hi", "hi"),
        ("", ""),
        ('emoji 🦜 \u202eRTL\u202c "quotes" \\ \n\ttabs \x00nul', None),
        (PARTS, "look at this"),
        ([], ""),
        (None, ""),
    ],
)
def test_content_round_trips(
    store: Store, conv: Conversation, store_url: str, content: Any, text: str | None
) -> None:
    message = store.append_message(conv.id, "user", content)
    assert message.content == content
    assert message.text == (content if text is None else text)
    assert message.status == "complete"
    assert store.messages(conv.id) == [message]
    assert reread(store_url, conv.id) == [message]


def test_every_field_round_trips(store: Store, conv: Conversation, store_url: str) -> None:
    call = store.append_message(
        conv.id,
        "assistant",
        None,
        agent_id="planner",
        tool_calls=TOOL_CALLS,
        finish_reason="tool_calls",
        usage=USAGE,
    )
    result = store.append_message(
        conv.id, "tool", '{"temp": 21}', tool_call_id="call_1", name="weather"
    )
    assert (call.agent_id, call.tool_calls, call.finish_reason, call.usage) == (
        "planner",
        TOOL_CALLS,
        "tool_calls",
        USAGE,
    )
    assert call.content is None
    assert (result.tool_call_id, result.name, result.content) == (
        "call_1",
        "weather",
        '{"temp": 21}',
    )
    assert call.to_openai() == {"role": "assistant", "content": None, "tool_calls": TOOL_CALLS}
    assert result.to_openai() == {
        "role": "tool",
        "content": '{"temp": 21}',
        "tool_call_id": "call_1",
        "name": "weather",
    }
    for messages in (store.messages(conv.id), reread(store_url, conv.id)):
        assert messages == [call, result]
    for message in (call, result):
        assert message.id == f"{conv.id}-ms{message.seq:02d}"
        assert message.created_at and message.completed_at
        assert message.error is None and not message.damaged
    assert store.get_conversation(conv.id).updated_at >= conv.updated_at


def test_seqs_count_from_one(store: Store, conv: Conversation) -> None:
    seqs = [store.append_message(conv.id, "user", str(i)).seq for i in range(1, 12)]
    assert seqs == list(range(1, 12))
    ids = [m.id for m in store.messages(conv.id, limit=None)]
    assert ids[0] == f"{conv.id}-ms01"
    assert len(set(ids)) == 11


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        (("robot", "x"), {}),
        ((None, "x"), {}),
        (("user", 42), {}),
        (("user", {"text": "x"}), {}),
        (("user", "x"), {"usage": "lots"}),
        (("user", "x"), {"tool_calls": "call"}),
        (("user", "x"), {"agent_id": 7}),
    ],
)
def test_invalid_messages(store: Store, conv: Conversation, args: tuple, kwargs: dict) -> None:
    with pytest.raises(InvalidArgument):
        store.append_message(conv.id, *args, **kwargs)
    assert store.message_count(conv.id) == 0
    assert store.append_message(conv.id, "user", "ok").seq == 1  # no seq was used up


# -- stream_message -------------------------------------------------------------------------------


def test_stream_cadence(store: Store, conv: Conversation, store_url: str) -> None:
    tokens = [f"t{i} " for i in range(10)]
    with open_store(store_url) as second:  # another store on the same URL, opened before
        w = store.stream_message(conv.id, chunk_tokens=3)
        assert w.message_id == f"{conv.id}-ms01" and w.seq == 1
        for i, token in enumerate(tokens, 1):
            w.append(token)
            assert w.chunks_written == i // 3
        for reader in (store, second):  # a live writer's message reads ``streaming``
            (live,) = reader.messages(conv.id)
            assert live.status == "streaming"
            assert live.content == "".join(tokens[:9])  # the written chunks
            assert live.token_count == 9
            assert reader.message_count(conv.id) == 1
        w.flush()
        (live,) = second.messages(conv.id)
        assert (live.status, live.content, live.token_count) == ("streaming", "".join(tokens), 10)
        message = w.finish()
        assert w.closed
        assert (message.status, message.content, message.token_count) == (
            "complete",
            "".join(tokens),
            10,
        )
        assert message.finish_reason == "stop"
        assert second.messages(conv.id) == [message]
    assert reread(store_url, conv.id) == [message]


def test_stream_finish_with_usage_and_tool_calls(
    store: Store, conv: Conversation, store_url: str
) -> None:
    with store.stream_message(conv.id, role="assistant", agent_id="researcher") as w:
        w.append("Let me check.")
        message = w.finish(finish_reason="tool_calls", usage=USAGE, tool_calls=TOOL_CALLS)
    assert w.closed
    assert (message.content, message.status, message.agent_id) == (
        "Let me check.",
        "complete",
        "researcher",
    )
    assert (message.finish_reason, message.usage, message.tool_calls) == (
        "tool_calls",
        USAGE,
        TOOL_CALLS,
    )
    assert reread(store_url, conv.id) == [message]


def test_stream_with_nothing_appended(store: Store, conv: Conversation) -> None:
    with store.stream_message(conv.id) as w:
        pass
    (message,) = store.messages(conv.id)
    assert (message.content, message.status, message.token_count) == ("", "complete", 0)
    assert message.id == w.message_id


def test_stream_fail_keeps_partial_content(
    store: Store, conv: Conversation, store_url: str
) -> None:
    w = store.stream_message(conv.id, chunk_tokens=2)
    for token in ["par", "tial", " rep"]:
        w.append(token)
    message = w.fail("upstream timed out", usage={"completion_tokens": 3})
    assert (message.status, message.content, message.error) == (
        "error",
        "partial rep",
        "upstream timed out",
    )
    assert message.usage == {"completion_tokens": 3}
    assert reread(store_url, conv.id) == [message]
    with pytest.raises(WriterClosed):
        w.append("more")
    with pytest.raises(WriterClosed):
        w.finish()


def test_exception_inside_with_is_an_error(
    store: Store, conv: Conversation, store_url: str
) -> None:
    with (
        pytest.raises(RuntimeError, match="client went away"),
        store.stream_message(conv.id, chunk_tokens=2) as w,
    ):
        for token in ["a", "b", "c"]:
            w.append(token)
        raise RuntimeError("client went away")
    assert w.closed
    for messages in (store.messages(conv.id), reread(store_url, conv.id)):
        (message,) = messages
        assert (message.status, message.content) == ("error", "abc")
        assert message.error == {"type": "RuntimeError", "message": "client went away"}


def test_abandon_reads_interrupted(store: Store, conv: Conversation, store_url: str) -> None:
    w = store.stream_message(conv.id, chunk_tokens=2)
    for token in ["a", "b", "c"]:
        w.append(token)
    w.abandon()
    w.abandon()  # idempotent
    assert w.closed
    for messages in (store.messages(conv.id), reread(store_url, conv.id)):
        (message,) = messages
        assert (message.status, message.content, message.token_count) == ("interrupted", "abc", 3)
        assert not message.damaged
    # The conversation stays writable, after the interrupted message.
    assert store.append_message(conv.id, "user", "next").seq == 2
    assert store.check() == []


def test_writers_interleave(store: Store, conv: Conversation, store_url: str) -> None:
    first = store.stream_message(conv.id, chunk_tokens=1)
    second = store.stream_message(conv.id, role="assistant", agent_id="b", chunk_tokens=1)
    third = store.append_message(conv.id, "user", "meanwhile")
    assert (first.seq, second.seq, third.seq) == (1, 2, 3)
    first.append("one")
    second.append("two")
    second.finish()
    assert [m.status for m in store.messages(conv.id)] == ["streaming", "complete", "complete"]
    first.finish()
    messages = reread(store_url, conv.id)
    assert [(m.seq, m.content, m.agent_id) for m in messages] == [
        (1, "one", None),
        (2, "two", "b"),
        (3, "meanwhile", None),
    ]


@pytest.mark.parametrize(
    "kwargs", [{"role": "robot"}, {"chunk_tokens": 0}, {"chunk_tokens": "3"}, {"agent_id": 1}]
)
def test_invalid_streams(store: Store, conv: Conversation, kwargs: dict) -> None:
    with pytest.raises(InvalidArgument):
        store.stream_message(conv.id, **kwargs)
    assert store.message_count(conv.id) == 0


def test_tokens_must_be_strings(store: Store, conv: Conversation) -> None:
    with store.stream_message(conv.id) as w:
        with pytest.raises(InvalidArgument):
            w.append(b"bytes")  # type: ignore[arg-type]
        w.append("ok")
    assert store.messages(conv.id)[0].content == "ok"


# -- reading: messages() and message_count() ------------------------------------------------------


def test_message_pages_are_stable_and_disjoint(store: Store, conv: Conversation) -> None:
    for i in range(1, 13):
        if i % 3:
            store.append_message(conv.id, "user", f"m{i}")
        else:
            with store.stream_message(conv.id, chunk_tokens=2) as w:
                for token in ("m", str(i)):
                    w.append(token)
    assert store.message_count(conv.id) == 12
    seen: list[Message] = []
    after = 0
    while page := store.messages(conv.id, after_seq=after, limit=5):
        assert len(page) <= 5
        assert [m.seq for m in page] == list(range(after + 1, after + 1 + len(page)))
        seen += page
        after = page[-1].seq
        if after == 5:  # appending between pages only adds at the end
            store.append_message(conv.id, "user", "m13")
    assert [m.content for m in seen] == [f"m{i}" for i in range(1, 14)]
    assert store.messages(conv.id, limit=None) == seen
    assert store.messages(conv.id) == seen  # the default page (50) holds them all
    assert store.messages(conv.id, after_seq=13) == []
    assert store.messages(conv.id, after_seq=99) == []
    assert store.messages(conv.id, after_seq=12, limit=1) == [seen[-1]]
    assert store.message_count(conv.id) == 13


def test_default_limit_is_fifty(store: Store, conv: Conversation) -> None:
    for i in range(55):
        store.append_message(conv.id, "user", str(i))
    assert len(store.messages(conv.id)) == 50
    assert len(store.messages(conv.id, limit=None)) == 55


@pytest.mark.parametrize(
    "kwargs",
    [{"after_seq": -1}, {"after_seq": "1"}, {"after_seq": True}, {"limit": 0}, {"limit": "5"}],
)
def test_invalid_pages(store: Store, conv: Conversation, kwargs: dict) -> None:
    with pytest.raises(InvalidArgument):
        store.messages(conv.id, **kwargs)


def test_message_count_includes_live_and_interrupted(store: Store, conv: Conversation) -> None:
    assert store.message_count(conv.id) == 0
    store.append_message(conv.id, "user", "q")
    live = store.stream_message(conv.id)
    assert store.message_count(conv.id) == 2
    abandoned = store.stream_message(conv.id)
    abandoned.abandon()
    assert store.message_count(conv.id) == 3
    live.finish()
    assert store.message_count(conv.id) == 3
    assert [m.status for m in store.messages(conv.id)] == ["complete", "complete", "interrupted"]
