"""``reply_to``: a reply records the seq of the message it answers (record field ``replyTo``)."""

from __future__ import annotations

import os

import pytest

from chunkstore import AsyncStore, Conversation, InvalidArgument, Store
from chunkstore._records import decode


def test_append_message_records_and_returns_reply_to(store: Store, conv: Conversation) -> None:
    question = store.append_message(conv.id, "user", "hi")
    assert question.reply_to is None
    answer = store.append_message(conv.id, "assistant", "hello", reply_to=question.seq)
    assert answer.reply_to == question.seq == 1
    assert [m.reply_to for m in store.messages(conv.id)] == [None, 1]


def test_a_streamed_reply_carries_reply_to_on_every_record(
    store: Store, conv: Conversation, root: str
) -> None:
    store.append_message(conv.id, "user", "one")
    store.append_message(conv.id, "user", "two")
    with store.stream_message(conv.id, chunk_tokens=2, reply_to=2) as writer:
        for token in "abcde":
            writer.append(token)
        chunk = os.path.join(
            root, "us01", "data", "conversations", conv.id, "messages", f"{conv.id}-ms03-001.json"
        )
        with open(chunk, "rb") as f:
            assert decode(f.read())["replyTo"] == 2
        # While streaming, the rebuilt message already says what it answers.
        assert store.messages(conv.id)[-1].reply_to == 2
    sealed = store.messages(conv.id)[-1]
    assert (sealed.status, sealed.content, sealed.reply_to) == ("complete", "abcde", 2)


def test_reply_to_survives_a_cold_read_from_sealed_files_and_the_segment(
    root: str, conv: Conversation, store: Store
) -> None:
    store.append_message(conv.id, "user", "q")
    store.append_message(conv.id, "assistant", "a", reply_to=1)
    with store.stream_message(conv.id, reply_to=1) as writer:
        writer.append("b")
    segment = os.path.join(root, "us01", "data", "conversations", conv.id, "segment.jsonl")
    for keep_segment in (True, False):
        if not keep_segment:
            os.remove(segment)
        with Store(root, durability="none") as cold:
            assert [m.reply_to for m in cold.messages(conv.id)] == [None, 1, 1]
    assert store.check() == []


def test_records_without_reply_to_read_back_none(store: Store, conv: Conversation) -> None:
    with store.stream_message(conv.id) as writer:
        writer.append("x")
    assert store.messages(conv.id)[0].reply_to is None


@pytest.mark.parametrize("bad", [0, -1, True, "1", 1.0, 10**18])
def test_reply_to_is_validated_before_anything_is_stored(
    store: Store, conv: Conversation, bad: object
) -> None:
    with pytest.raises(InvalidArgument):
        store.append_message(conv.id, "assistant", "x", reply_to=bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument):
        store.stream_message(conv.id, reply_to=bad)  # type: ignore[arg-type]
    assert store.message_count(conv.id) == 0


async def test_the_async_store_passes_reply_to_through(root: str) -> None:
    async with AsyncStore(root, durability="none") as astore:
        user = await astore.user_for("s")
        conv = await astore.create_conversation(user)
        question = await astore.append_message(conv.id, "user", "q")
        answer = await astore.append_message(conv.id, "assistant", "a", reply_to=question.seq)
        async with astore.stream_message(conv.id, reply_to=question.seq) as writer:
            await writer.append("b")
        assert answer.reply_to == 1
        assert [m.reply_to for m in await astore.messages(conv.id)] == [None, 1, 1]
