"""Reading conversations: liveness, pagination, the warm cache, and damaged files."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from chunkstore_support import (
    conversation_dir,
    flip_bit,
    message_files,
    messages_dir,
    truncate,
)

from chunkstore import Conversation, ConversationNotFound, Message, Store
from chunkstore._ids import ConversationId, scan_message_files, scan_tombstones
from chunkstore._reader import MessageFiles, list_message_files, scan_listing


def fresh(root: str) -> Store:
    """Another store on the same root: a cold cache, as another process would have."""
    return Store(root, durability="none", flush_interval=None)


def contents(store: Store, conv_id: str) -> list[str]:
    return [m.content for m in store.messages(conv_id, limit=None)]


# -- liveness -------------------------------------------------------------------------------------


def test_streaming_while_the_writer_lives_then_interrupted(
    store: Store, conv: Conversation, root: str
) -> None:
    w = store.stream_message(conv.id, chunk_tokens=2)
    (message,) = store.messages(conv.id)
    assert (message.status, message.content) == ("streaming", "")  # claimed, nothing written
    for token in "abcde":
        w.append(token)
    assert [(m.status, m.content) for m in store.messages(conv.id)] == [("streaming", "abcd")]
    assert [(m.status, m.content) for m in fresh(root).messages(conv.id)] == [("streaming", "abcd")]
    w.abandon()
    for reader in (store, fresh(root)):
        (message,) = reader.messages(conv.id)
        assert (message.status, message.content) == ("interrupted", "abcde")
        assert message.completed_at is None
        assert not message.damaged


def test_liveness_seen_from_another_thread(store: Store, conv: Conversation, root: str) -> None:
    w = store.stream_message(conv.id, chunk_tokens=1)
    w.append("x")
    seen: list[str] = []
    t = threading.Thread(target=lambda: seen.append(fresh(root).messages(conv.id)[0].status))
    t.start()
    t.join()
    assert seen == ["streaming"]
    w.finish()


def test_streaming_message_becomes_complete(store: Store, conv: Conversation, root: str) -> None:
    reader = fresh(root)
    w = store.stream_message(conv.id, chunk_tokens=1)
    w.append("a")
    assert reader.messages(conv.id)[0].status == "streaming"
    w.append("b")
    assert reader.messages(conv.id)[0].content == "ab"
    w.finish()
    assert [(m.status, m.content) for m in reader.messages(conv.id)] == [("complete", "ab")]


# -- pagination -----------------------------------------------------------------------------------


def test_pages_are_stable_and_non_overlapping(store: Store, conv: Conversation) -> None:
    for i in range(1, 11):
        if i % 3 == 0:
            with store.stream_message(conv.id, chunk_tokens=1) as w:
                w.append(f"m{i}")
        else:
            store.append_message(conv.id, "user", f"m{i}")
    pages = []
    after = 0
    while True:
        page = store.messages(conv.id, after_seq=after, limit=3)
        if not page:
            break
        pages.append([m.seq for m in page])
        after = page[-1].seq
        if len(pages) <= 2:
            store.append_message(conv.id, "user", "late")  # new messages only go to the end
    assert pages == [[1, 2, 3], [4, 5, 6], [7, 8, 9], [10, 11, 12]]
    seqs = [s for page in pages for s in page]
    assert seqs == sorted(set(seqs))  # no overlap, no reordering
    assert store.messages(conv.id, after_seq=2, limit=2) == store.messages(conv.id, limit=None)[2:4]


def test_limit_none_and_beyond_the_end(store: Store, conv: Conversation) -> None:
    for i in range(60):
        store.append_message(conv.id, "user", str(i))
    assert len(store.messages(conv.id)) == 50  # the default page
    assert len(store.messages(conv.id, limit=None)) == 60
    assert store.messages(conv.id, after_seq=60) == []
    assert store.messages(conv.id, after_seq=1000) == []


def test_empty_conversation(store: Store, conv: Conversation) -> None:
    assert store.messages(conv.id) == []


# -- the warm cache -------------------------------------------------------------------------------


def test_warm_cache_sees_new_messages_from_anywhere(
    store: Store, conv: Conversation, root: str
) -> None:
    store.append_message(conv.id, "user", "one")
    assert contents(store, conv.id) == ["one"]
    store.append_message(conv.id, "user", "two")
    assert contents(store, conv.id) == ["one", "two"]
    other = fresh(root)  # another process, in effect
    other.append_message(conv.id, "user", "three")
    with other.stream_message(conv.id) as w:
        w.append("four")
    assert contents(store, conv.id) == ["one", "two", "three", "four"]
    assert store.messages(conv.id, limit=None) == other.messages(conv.id, limit=None)


def test_warm_cache_without_a_segment(store: Store, conv: Conversation, root: str) -> None:
    for i in range(3):
        store.append_message(conv.id, "user", str(i))
    (conversation_dir(root, conv.id) / "segment.jsonl").unlink()
    reader = fresh(root)
    assert contents(reader, conv.id) == ["0", "1", "2"]  # from the sealed files
    store.append_message(conv.id, "user", "3")
    assert contents(reader, conv.id) == ["0", "1", "2", "3"]


def test_warm_cache_notices_a_hard_delete_elsewhere(
    store: Store, conv: Conversation, root: str
) -> None:
    store.append_message(conv.id, "user", "x")
    store.messages(conv.id)
    fresh(root).delete_conversation(conv.id, hard=True)
    with pytest.raises(ConversationNotFound):
        store.messages(conv.id)


def test_cache_is_bounded(root: str) -> None:
    store = Store(root, durability="none", cache_conversations=1)
    user = store.user_for("s")
    convs = [store.create_conversation(user) for _ in range(3)]
    for i, c in enumerate(convs):
        store.append_message(c.id, "user", f"in {i}")
    for _ in range(2):
        for i, c in enumerate(convs):
            assert contents(store, c.id) == [f"in {i}"]
    assert len(store.backend._reader._caches) == 1


# -- damaged files --------------------------------------------------------------------------------


def interrupted_message(store: Store, conv_id: str, tokens: str, chunk_tokens: int = 2) -> str:
    w = store.stream_message(conv_id, chunk_tokens=chunk_tokens)
    for token in tokens:
        w.append(token)
    w.abandon()
    return w.message_id


def surround(store: Store, conv_id: str) -> None:
    store.append_message(conv_id, "user", "before")


@pytest.mark.parametrize(
    "damage",
    [
        lambda p: flip_bit(p, 40),  # inside the tokens
        lambda p: flip_bit(p, -5, 2),  # inside the checksum
        lambda p: truncate(p, 20),
        lambda p: truncate(p, 0),
        lambda p: p.unlink(),
    ],
    ids=["bit-flip-body", "bit-flip-crc", "truncated", "empty", "missing"],
)
def test_damaged_chunk_keeps_the_rest(
    store: Store, conv: Conversation, root: str, damage: object
) -> None:
    surround(store, conv.id)
    mid = interrupted_message(store, conv.id, "aabbcc")
    store.append_message(conv.id, "user", "after")
    damage(messages_dir(root, conv.id) / f"{mid}-002.json")  # type: ignore[operator]
    for reader in (store, fresh(root)):
        before, broken, after = reader.messages(conv.id)
        assert (before.content, after.content) == ("before", "after")
        assert not before.damaged and not after.damaged
        assert broken.damaged
        assert broken.content == "aacc"  # what is readable
        assert broken.status == "interrupted"
    assert any(p.kind in ("corrupt", "gap") for p in store.check())


@pytest.mark.parametrize(
    "damage",
    [lambda p: flip_bit(p, 30), lambda p: truncate(p, 50), lambda p: p.write_bytes(b"")],
    ids=["bit-flip", "truncated", "empty"],
)
def test_damaged_sealed_file_keeps_the_rest(
    store: Store, conv: Conversation, root: str, damage: object
) -> None:
    surround(store, conv.id)
    with store.stream_message(conv.id) as w:
        w.append("lost")
    store.append_message(conv.id, "user", "after")
    damage(messages_dir(root, conv.id) / f"{w.message_id}.json")  # type: ignore[operator]
    (conversation_dir(root, conv.id) / "segment.jsonl").unlink()  # no derived copy either
    before, broken, after = fresh(root).messages(conv.id)
    assert (before.content, after.content) == ("before", "after")
    assert broken.damaged
    assert broken.content == ""
    assert [p.kind for p in store.check()] == ["corrupt"]


def test_damaged_sealed_file_is_served_from_the_segment(
    store: Store, conv: Conversation, root: str
) -> None:
    message = store.append_message(conv.id, "user", "safe")
    flip_bit(messages_dir(root, conv.id) / f"{message.id}.json", 30)
    assert fresh(root).messages(conv.id) == [message]  # the derived copy is intact
    assert [p.kind for p in store.check()] == ["corrupt"]


def test_corrupt_segment_line_falls_back_to_the_sealed_file(
    store: Store, conv: Conversation, root: str
) -> None:
    first = store.append_message(conv.id, "user", "first")
    second = store.append_message(conv.id, "user", "second")
    flip_bit(conversation_dir(root, conv.id) / "segment.jsonl", 30)
    assert fresh(root).messages(conv.id) == [first, second]


def test_corrupt_segment_line_falls_back_on_a_page_and_on_a_whole_read(
    store: Store, conv: Conversation, root: str
) -> None:
    # A page of a long conversation parses only its own lines; a whole read parses them all
    # in one pass. Both skip the corrupt line.
    messages = [store.append_message(conv.id, "user", f"m{i}") for i in range(8)]
    flip_bit(conversation_dir(root, conv.id) / "segment.jsonl", 30)
    assert fresh(root).messages(conv.id, limit=2) == messages[:2]
    assert fresh(root).messages(conv.id, limit=None) == messages
    reader = fresh(root)
    assert reader.messages(conv.id, limit=2) == messages[:2]
    assert reader.messages(conv.id, limit=None) == messages


def test_sealed_file_wins_over_leftover_chunks(store: Store, conv: Conversation, root: str) -> None:
    mdir = messages_dir(root, conv.id)
    w = store.stream_message(conv.id, chunk_tokens=1)
    w.append("a")
    w.append("b")
    saved = {n: (mdir / n).read_bytes() for n in message_files(root, conv.id) if n.endswith("json")}
    w.finish()
    for name, data in saved.items():  # as if sealing crashed before removing the chunks
        (mdir / name).write_bytes(data)
    (conversation_dir(root, conv.id) / "segment.jsonl").unlink()
    (message,) = fresh(root).messages(conv.id)
    assert (message.status, message.content, message.damaged) == ("complete", "ab", False)


def sealed_with_leftover_chunk(store: Store, conv: Conversation, root: str) -> tuple[Path, Any]:
    """A one-token message sealed, with its chunk file put back (a crash right after sealing):
    the messages directory and the finished writer."""
    mdir = messages_dir(root, conv.id)
    w = store.stream_message(conv.id, chunk_tokens=1)
    w.append("a")
    saved = (mdir / f"{w.message_id}-001.json").read_bytes()
    w.finish()
    (mdir / f"{w.message_id}-001.json").write_bytes(saved)
    return mdir, w


def test_corrupt_sealed_file_with_leftover_chunks_is_damaged(
    store: Store, conv: Conversation, root: str
) -> None:
    mdir, w = sealed_with_leftover_chunk(store, conv, root)
    flip_bit(mdir / f"{w.message_id}.json", 30)
    (conversation_dir(root, conv.id) / "segment.jsonl").unlink()
    (message,) = fresh(root).messages(conv.id)
    assert message.content == "a"  # the leftover chunk is all that is readable
    assert message.damaged


def test_message_files_are_grouped_by_seq() -> None:
    names = [
        "us01-co01-ms03-002.json",
        "us01-co01-ms01.json",
        "us01-co01-ms03.lock",
        "us01-co01-ms02.json",
        "us01-co01-ms02-001.json",
        "us01-co01-ms03-001.json",
        "us01-co01-ms04.lock",
        "us01-co01-ms05.json",
        "us01-co01-ms05.lock",
        "us01-co01-ms06-001.lock",  # not a name the store makes
        "us01-co02-ms07.json",  # another conversation's
        ".us01-co01-ms08.json.tmp-x",
    ]
    files = list_message_files(names, ConversationId.parse("us01-co01"))
    assert sorted(files[3].chunks) == [1, 2]  # in listing order
    assert files == {
        1: MessageFiles(sealed=True),
        2: MessageFiles(sealed=True, chunks=(1,)),
        3: MessageFiles(chunks=files[3].chunks, lock=True),
        4: MessageFiles(lock=True),
        5: MessageFiles(sealed=True, lock=True),
    }
    with pytest.raises(AttributeError):  # entries are shared between messages: immutable
        files[1].lock = True  # type: ignore[misc]


def test_a_listing_of_sealed_files_only_and_one_with_tombstones() -> None:
    conv = ConversationId.parse("us01-co01")
    sealed = ["us01-co01-ms02.json", "us01-co01-ms01.json", "us01-co01-ms100.json"]
    assert scan_listing(sealed, conv) == (
        dict.fromkeys([2, 1, 100], MessageFiles(sealed=True)),
        set(),
    )
    assert scan_listing([], conv) == ({}, set())
    names = [
        *sealed,
        "us01-co01-ms02.deleted",
        "us01-co01-ms03-001.deleted",  # not a name the store makes
        "us01-co01-ms4.deleted",  # not canonical
        "us01-co02-ms05.deleted",  # another conversation's
    ]
    files, tombstones = scan_listing(names, conv)
    assert files == dict.fromkeys([2, 1, 100], MessageFiles(sealed=True)) and tombstones == {2}
    assert scan_tombstones(names, conv) == {2} and scan_tombstones(sealed, conv) == set()


@pytest.mark.parametrize(
    "stranger",
    [
        "05.json",  # what is left of a name once its conversation's prefix is taken away
        "x-ms05.json",
        "us01-co01-ms05.json.tmp",
        "us01-co01-ms05.jsonx",
        "us01-co01-us01-co01-ms05.json",
        "us01-co01-ms05-1.json",
        "us01-co01-ms00.json",
        "us01-co01-ms5.json",
        "us01-co010-ms05.json",
        "us01-co1-ms05.json",
    ],
)
def test_no_stranger_passes_for_a_message_file(stranger: str) -> None:
    # (No file name holds "/" or NUL: ``rebase_listing`` relies on that.)
    conv = ConversationId.parse("us01-co01")
    for names in ([stranger], [stranger, "us01-co01-ms01.json"], ["us01-co01-ms01.json", stranger]):
        assert scan_listing(names, conv) == (
            {1: MessageFiles(sealed=True)} if len(names) > 1 else {},
            set(),
        )
        assert all(seq == 1 for seq, _, _ in scan_message_files(names, conv))


def test_strangers_in_the_messages_directory_are_ignored(
    store: Store, conv: Conversation, root: str
) -> None:
    store.append_message(conv.id, "user", "x")
    mdir = messages_dir(root, conv.id)
    for name in ("notes.txt", "us01-co01-msXX.json", "us01-co01-ms9.lock", "us01-co02-ms01.json"):
        (mdir / name).write_text("?")
    (mdir / ".us01-co01-ms02.json.tmp-0123456789ab").write_text("half")
    assert contents(fresh(root), conv.id) == ["x"]


def test_misplaced_sealed_file_is_damaged(store: Store, conv: Conversation, root: str) -> None:
    store.append_message(conv.id, "user", "one")
    mdir = messages_dir(root, conv.id)
    shutil.copy(mdir / "us01-co01-ms01.json", mdir / "us01-co01-ms02.json")
    (conversation_dir(root, conv.id) / "segment.jsonl").unlink()
    first, copy = fresh(root).messages(conv.id)
    assert first.content == "one"
    assert copy.damaged
    assert "mismatch" in [p.kind for p in store.check()]


# -- races between listing and reading ----------------------------------------------------------


def test_chunks_vanishing_under_the_reader_fall_back_to_the_sealed_file(
    store: Store, conv: Conversation
) -> None:
    with store.stream_message(conv.id, chunk_tokens=1) as w:
        w.append("a")
        w.append("b")
    cid = ConversationId.parse(conv.id)
    # The listing saw chunk files that the writer removed right after sealing.
    stale = MessageFiles(sealed=False, chunks=[1, 2], lock=True)
    message = store.backend._reader._read_message(cid, w.seq, stale)
    assert (message.status, message.content) == ("complete", "ab")


def test_writer_sealing_between_listing_and_probe(
    store: Store, conv: Conversation, root: str
) -> None:
    _, w = sealed_with_leftover_chunk(store, conv, root)
    cid = ConversationId.parse(conv.id)
    # The listing saw the chunk and the lock, not yet the sealed file; the lock is gone now.
    message = store.backend._reader._read_message(cid, w.seq, MessageFiles(chunks=[1], lock=True))
    assert (message.status, message.content) == ("complete", "a")


def test_messages_of_a_conversation_whose_directory_is_a_file(
    store: Store, conv: Conversation, root: str
) -> None:
    mdir = messages_dir(root, conv.id)
    shutil.rmtree(mdir)
    Path(mdir).write_text("not a directory")
    with pytest.raises(ConversationNotFound):
        store.messages(conv.id)


def test_unreadable_messages_directory_is_a_storage_error(
    store: Store, conv: Conversation, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno
    import types

    from chunkstore import StorageError, _reader

    def listdir(path: str) -> list[str]:
        raise OSError(errno.EIO, "I/O error", path)

    real = _reader.os
    proxy = types.SimpleNamespace(
        **{n: getattr(real, n) for n in dir(real) if not n.startswith("__")}
    )
    proxy.listdir = listdir
    monkeypatch.setattr(_reader, "os", proxy)
    with pytest.raises(StorageError) as info:
        store.messages(conv.id)
    assert info.value.errno == errno.EIO


# -- concurrency: one conversation's I/O never holds up another -----------------------------------

HANG_S = 10.0  # a hang detector, not a timing assertion


@pytest.fixture
def blocked_read(store: Store, root: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """``with blocked_read(conv_id):`` a thread reads ``conv_id``, and blocks inside its file
    I/O (a slow disk, an NFS hiccup...) until the ``with`` block ends; every other file reads
    normally. Set everything up before: the test's own thread must not touch the store's
    reader while the read is blocked, or a regression would hang it rather than fail."""
    from chunkstore import _fsio

    real = _fsio.read_bytes
    release = threading.Event()
    threads: list[threading.Thread] = []

    @contextmanager
    def block(conv_id: str) -> Iterator[None]:
        (conversation_dir(root, conv_id) / "segment.jsonl").unlink()  # sealed files are read
        entered = threading.Event()

        def read_bytes(path: str) -> bytes:
            if f"{conv_id}-ms" in path:
                entered.set()
                release.wait(HANG_S * 3)
            return real(path)

        monkeypatch.setattr(_fsio, "read_bytes", read_bytes)
        results: list[list[Message]] = []
        blocked = threading.Thread(target=lambda: results.append(store.messages(conv_id)))
        blocked.daemon = True
        threads.append(blocked)
        blocked.start()
        assert entered.wait(HANG_S), "the read never reached the conversation's files"
        yield
        assert not release.is_set(), "the read was released before the block ended"
        release.set()
        blocked.join(HANG_S)
        assert not blocked.is_alive()
        assert [m.content for m in results[0]] == ["slow"]

    yield block
    release.set()
    for thread in threads:
        thread.join(HANG_S)


def test_a_blocked_read_holds_up_no_other_conversation(
    store: Store, conv: Conversation, blocked_read: Any
) -> None:
    store.append_message(conv.id, "user", "slow")
    other = store.create_conversation(conv.user_id)
    foreign = store.create_conversation(store.user_for("another session"))
    store.append_message(other.id, "user", "mine")
    store.append_message(foreign.id, "user", "theirs")
    done: list[object] = []

    def meanwhile() -> None:
        done.append([m.content for m in store.messages(other.id)])
        done.append([m.content for m in store.messages(foreign.id)])
        store.append_message(other.id, "assistant", "a new turn")
        done.append([m.content for m in store.messages(other.id)])
        done.append([c.id for c in store.list_conversations(conv.user_id)])

    with blocked_read(conv.id):
        thread = threading.Thread(target=meanwhile, daemon=True)
        thread.start()
        thread.join(HANG_S)
        assert not thread.is_alive(), "a read of another conversation waited for the blocked one"
    assert done == [["mine"], ["theirs"], ["mine", "a new turn"], [other.id, conv.id]]


async def test_a_blocked_read_holds_up_no_other_turn_through_async_store(
    store: Store, conv: Conversation, blocked_read: Any
) -> None:
    import asyncio

    from chunkstore import AsyncStore

    store.append_message(conv.id, "user", "slow")
    other = store.create_conversation(conv.user_id)
    async with AsyncStore(store, max_workers=4) as astore:

        async def turn() -> list[str]:
            await astore.append_message(other.id, "user", "question")
            async with astore.stream_message(other.id) as w:
                await w.append("answer")
            return [m.content for m in await astore.messages(other.id)]

        with blocked_read(conv.id):
            assert await asyncio.wait_for(turn(), HANG_S) == ["question", "answer"]


def test_concurrent_readers_of_one_conversation_and_many(root: str) -> None:
    """Threads reading the same and different conversations, with writes in between and a
    cache smaller than the working set (evictions while reads are in flight): every read is
    a consistent prefix of what was written."""
    store = Store(root, durability="none", flush_interval=None, cache_conversations=2)
    user = store.user_for("s")
    convs = [store.create_conversation(user).id for _ in range(4)]
    written = {c: 0 for c in convs}
    errors: list[BaseException] = []
    stop = threading.Event()

    def read(conv_id: str) -> None:
        try:
            while not stop.is_set():
                before = written[conv_id]
                got = [m.content for m in store.messages(conv_id, limit=None)]
                assert got == [f"{conv_id} {i}" for i in range(len(got))]
                assert len(got) >= before
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
            stop.set()

    readers = [threading.Thread(target=read, args=(c,)) for c in convs for _ in range(2)]
    for t in readers:
        t.start()
    try:
        for i in range(25):
            for c in convs:
                store.append_message(c, "user", f"{c} {i}")
                written[c] = i + 1
    finally:
        stop.set()
        for t in readers:
            t.join(HANG_S)
    assert not errors, errors[0]
    for c in convs:
        assert len(store.messages(c, limit=None)) == 25
