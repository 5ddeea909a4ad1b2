"""``MessageWriter``: chunk files while streaming, time-budget flushes, sealing, closing."""

from __future__ import annotations

import types
from pathlib import Path

import pytest
from chunkstore_support import chunk_files, message_files, messages_dir

from chunkstore import (
    Conversation,
    InvalidArgument,
    StorageError,
    Store,
    WriterClosed,
    _writer,
)
from chunkstore._records import decode


def test_a_chunk_file_every_n_tokens(store: Store, conv: Conversation, root: str) -> None:
    w = store.stream_message(conv.id, chunk_tokens=3)
    assert (w.message_id, w.seq) == ("us01-co01-ms01", 1)
    for token in "abcdefg":
        w.append(token)
    assert w.chunks_written == 2
    assert chunk_files(root, w.message_id) == ["us01-co01-ms01-001.json", "us01-co01-ms01-002.json"]
    first = decode((messages_dir(root, conv.id) / "us01-co01-ms01-001.json").read_bytes())
    assert first["timestamp"].endswith("Z")
    del first["timestamp"]
    assert first == {
        "v": 1,
        "messageId": "us01-co01-ms01",
        "seq": 1,
        "tokens": "abc",
        "tokenCount": 3,
        "role": "assistant",
        "status": "streaming",
    }
    w.finish()


def test_the_store_default_is_60_tokens(root: str) -> None:
    store = Store(root, durability="none", flush_interval=None)
    conv = store.create_conversation(store.user_for("s"))
    with store.stream_message(conv.id) as w:
        for i in range(130):
            w.append(f"t{i} ")
        assert w.chunks_written == 2


@pytest.mark.parametrize("durability", ["chunk", "message", "none"])
def test_every_durability_writes_the_same_files(root: str, durability: str) -> None:
    store = Store(root, durability=durability, flush_interval=None)  # type: ignore[arg-type]
    conv = store.create_conversation(store.user_for("s"))
    with store.stream_message(conv.id, chunk_tokens=2) as w:
        for token in "abcde":
            w.append(token)
        assert w.chunks_written == 2
    assert message_files(root, conv.id) == ["us01-co01-ms01.json"]
    assert store.messages(conv.id)[0].content == "abcde"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


def test_time_budget_flushes_a_partial_chunk(
    root: str, conv: Conversation, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock()
    monkeypatch.setattr(_writer, "time", types.SimpleNamespace(monotonic=clock.monotonic))
    store = Store(root, durability="none", flush_interval=0.5)
    w = store.stream_message(conv.id, chunk_tokens=60)
    w.append("slow ")
    clock.now += 0.4
    w.append("stream ")
    assert w.chunks_written == 0  # within budget: still buffered
    clock.now += 0.2
    w.append("here")
    assert w.chunks_written == 1  # budget passed: the buffer went out as a short chunk
    assert store.messages(conv.id)[0].content == "slow stream here"
    assert store.messages(conv.id)[0].status == "streaming"
    w.append("!")
    assert w.chunks_written == 1  # the budget restarts at each chunk
    w.finish()


def test_per_stream_flush_interval_overrides_the_store(
    store: Store, conv: Conversation
) -> None:
    with store.stream_message(conv.id, chunk_tokens=60, flush_interval=0.0) as w:
        w.append("a")
        w.append("b")
        assert w.chunks_written == 2


def test_explicit_flush(store: Store, conv: Conversation, root: str) -> None:
    w = store.stream_message(conv.id, chunk_tokens=10)
    w.flush()  # nothing buffered: nothing written
    assert w.chunks_written == 0
    w.append("x")
    w.flush()
    assert w.chunks_written == 1
    assert store.messages(conv.id)[0].content == "x"
    w.finish()


def test_finish_seals_into_one_file(store: Store, conv: Conversation, root: str) -> None:
    usage = {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}
    calls = [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    w = store.stream_message(conv.id, agent_id="critic", chunk_tokens=2)
    for token in ["Hel", "lo", ", ", "wor", "ld"]:
        w.append(token)
    assert w.result is None
    message = w.finish(finish_reason="tool_calls", usage=usage, tool_calls=calls)
    assert w.closed
    assert w.result == message
    assert message_files(root, conv.id) == ["us01-co01-ms01.json"]  # no chunks, no lock
    assert (message.content, message.status, message.finish_reason) == (
        "Hello, world",
        "complete",
        "tool_calls",
    )
    assert (message.usage, message.tool_calls, message.agent_id) == (usage, calls, "critic")
    assert message.token_count == 5
    assert message.completed_at is not None
    sealed = decode((messages_dir(root, conv.id) / "us01-co01-ms01.json").read_bytes())
    assert sealed["sealed"] is True
    assert [r["seq"] for r in sealed["records"]] == [1, 2, 3]
    assert [r["status"] for r in sealed["records"]] == ["streaming", "streaming", "complete"]
    assert store.messages(conv.id) == [message]
    assert Store(root, durability="none").messages(conv.id) == [message]


def test_finish_without_tokens(store: Store, conv: Conversation) -> None:
    message = store.stream_message(conv.id).finish(finish_reason=None)
    assert (message.content, message.status, message.finish_reason) == ("", "complete", None)


def test_fail_keeps_partial_content(store: Store, conv: Conversation) -> None:
    w = store.stream_message(conv.id, chunk_tokens=2)
    for token in "abc":
        w.append(token)
    message = w.fail("upstream went away", usage={"total_tokens": 3})
    assert (message.status, message.content, message.error) == ("error", "abc", "upstream went away")
    assert message.usage == {"total_tokens": 3}
    assert store.messages(conv.id) == [message]


def test_fail_with_an_object(store: Store, conv: Conversation) -> None:
    message = store.stream_message(conv.id).fail(ValueError("bad"))
    assert message.error == "ValueError('bad')"
    message = store.stream_message(conv.id).fail({"code": 1})
    assert message.error == {"code": 1}


def test_exception_in_with_block_finalizes_as_error(store: Store, conv: Conversation) -> None:
    with pytest.raises(ConnectionResetError), store.stream_message(conv.id, chunk_tokens=2) as w:
        for token in "part":
            w.append(token)
        raise ConnectionResetError("client aborted")
    (message,) = store.messages(conv.id)
    assert (message.status, message.content) == ("error", "part")
    assert message.error == {"type": "ConnectionResetError", "message": "client aborted"}


def test_with_block_finishes_on_normal_exit(store: Store, conv: Conversation) -> None:
    with store.stream_message(conv.id) as w:
        w.append("done")
    assert w.result is not None
    assert w.result.status == "complete"


def test_closed_writer_refuses_everything(store: Store, conv: Conversation) -> None:
    w = store.stream_message(conv.id)
    w.finish()
    for call in (lambda: w.append("x"), w.flush, w.finish, w.fail, lambda: w.add("x")):
        with pytest.raises(WriterClosed) as info:
            call()
        assert isinstance(info.value, RuntimeError)
    w.abandon()  # no-op
    w.__exit__(None, None, None)  # no-op


def test_tokens_must_be_strings(store: Store, conv: Conversation) -> None:
    with store.stream_message(conv.id) as w:
        with pytest.raises(InvalidArgument):
            w.append(b"bytes")  # type: ignore[arg-type]
        w.append("ok")
    assert w.result is not None
    assert w.result.content == "ok"


@pytest.mark.parametrize(
    "kwargs", [{"role": "robot"}, {"agent_id": ""}, {"chunk_tokens": 0}, {"chunk_tokens": 2.0}]
)
def test_stream_validation(store: Store, conv: Conversation, kwargs: dict[str, object]) -> None:
    with pytest.raises(InvalidArgument):
        store.stream_message(conv.id, **kwargs)  # type: ignore[arg-type]
    assert store.message_count(conv.id) == 0


def test_add_then_seal_writes_the_overflow_first(store: Store, conv: Conversation) -> None:
    w = store.stream_message(conv.id, chunk_tokens=2)
    due = [w.add(t) for t in "abcdefg"]  # buffered without I/O, as the async facade does
    assert due[:2] == [False, True]
    assert w.chunks_written == 0
    message = w.finish()
    assert message.content == "abcdefg"
    assert message.token_count == 7


def test_abandon_reads_back_interrupted(store: Store, conv: Conversation, root: str) -> None:
    w = store.stream_message(conv.id, chunk_tokens=2)
    for token in "abc":
        w.append(token)
    w.abandon()  # what a crash does, but flushing first
    assert w.closed
    (message,) = store.messages(conv.id)
    assert (message.status, message.content) == ("interrupted", "abc")
    assert "us01-co01-ms01.lock" in message_files(root, conv.id)  # still claims the seq
    assert store.append_message(conv.id, "user", "next").seq == 2
    assert store.check() == []


def test_seal_fails_if_a_chunk_vanished(store: Store, conv: Conversation, root: str) -> None:
    w = store.stream_message(conv.id, chunk_tokens=1)
    w.append("a")
    (messages_dir(root, conv.id) / "us01-co01-ms01-001.json").unlink()
    with pytest.raises(StorageError):
        w.finish()
    assert w.closed


def test_existing_chunk_file_is_never_overwritten(
    store: Store, conv: Conversation, root: str
) -> None:
    w = store.stream_message(conv.id, chunk_tokens=1)
    path = messages_dir(root, conv.id) / "us01-co01-ms01-001.json"
    path.write_bytes(b"someone else's")
    with pytest.raises(StorageError, match="already exists"):
        w.append("a")
    assert path.read_bytes() == b"someone else's"
    with pytest.raises(StorageError):
        w.abandon()  # abandon flushes first, and reports that it could not ...
    assert w.closed  # ... but closes the writer all the same


def test_memory_holds_only_the_unwritten_tail(store: Store, conv: Conversation) -> None:
    with store.stream_message(conv.id, chunk_tokens=5) as w:
        for i in range(1000):
            w.append(str(i % 10))
            assert len(w._pending) < 5
    assert w.result is not None
    assert w.result.token_count == 1000


def test_sealing_path_is_a_plain_file(store: Store, conv: Conversation, root: str) -> None:
    with store.stream_message(conv.id) as w:
        w.append("x")
    assert Path(messages_dir(root, conv.id) / f"{w.message_id}.json").is_file()


def test_a_failed_tail_at_the_seal_releases_the_message(
    store: Store, conv: Conversation, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A seal with more than a chunk buffered writes the tail as chunks first; when one of
    those writes fails, the seal is never reached, and the message must still be released
    (read ``interrupted``, not ``streaming`` for the life of the process)."""
    import chunkstore._fsio as fsio

    w = store.stream_message(conv.id, chunk_tokens=2)
    for token in "abcde":
        w.add(token)  # buffered, never flushed: all five go to the seal
    real = fsio.create_exclusive

    def failing(path: str, data: bytes, *, durable: bool) -> None:
        if "-ms01-" in path:
            raise StorageError(28, "No space left on device", path)
        real(path, data, durable=durable)

    monkeypatch.setattr(fsio, "create_exclusive", failing)
    # Held elsewhere too (the edge's write lane holds its jobs): dropping the writer's own
    # reference must not be what releases the lock.
    sink = w._sink
    with pytest.raises(StorageError):
        w.finish()
    assert w.closed and sink is not None
    monkeypatch.undo()
    (message,) = store.messages(conv.id)
    assert message.status == "interrupted"
    store.append_message(conv.id, "user", "the conversation goes on")
