"""``Store``: the root, users and the session registry, conversations, limits, deletion,
retention, updates and listing."""

from __future__ import annotations

import errno
import os
import shutil
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from chunkstore_support import conversation_dir, message_files, messages_dir, temp_files

from chunkstore import (
    Conversation,
    ConversationDeleted,
    ConversationNotFound,
    InvalidArgument,
    InvalidId,
    LimitExceeded,
    Store,
    StoreFormatError,
    UserNotFound,
)
from chunkstore._records import decode, encode_line

FUTURE = datetime.now(UTC) + timedelta(days=365)


def open_store(root: str, **options: object) -> Store:
    return Store(root, durability="none", flush_interval=None, **options)  # type: ignore[arg-type]


# -- the root -------------------------------------------------------------------------------------


def test_new_root_gets_a_format_file(root: str) -> None:
    Store(root)  # the default durability syncs: exercise it once
    assert decode(Path(root, "FORMAT").read_bytes()) == {"format": "chunkstore", "version": 1}
    assert Path(root, "sessions").is_dir()
    Store(root, durability="message")  # reopening is fine


def test_root_with_only_a_readme_or_dotfiles_is_adopted(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("the format")
    (tmp_path / ".gitkeep").write_text("")
    open_store(str(tmp_path))
    assert (tmp_path / "FORMAT").exists()


def test_root_with_strangers_is_refused(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(StoreFormatError):
        open_store(str(tmp_path))
    assert not (tmp_path / "FORMAT").exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"garbage", "corrupt"),
        (encode_line({"format": "sqlite", "version": 1}), "not a chunkstore"),
        (encode_line({"format": "chunkstore", "version": 2}), "version 2"),
    ],
)
def test_unknown_format_is_refused(tmp_path: Path, content: bytes, message: str) -> None:
    (tmp_path / "FORMAT").write_bytes(content)
    with pytest.raises(StoreFormatError, match=message):
        open_store(str(tmp_path))


def test_unreadable_format_file_is_a_storage_error(tmp_path: Path) -> None:
    (tmp_path / "FORMAT").mkdir()
    with pytest.raises(OSError):
        open_store(str(tmp_path))


def test_root_that_cannot_be_created(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(OSError):
        open_store(str(tmp_path / "file" / "users"))


@pytest.mark.parametrize(
    "options",
    [
        {"durability": "always"},
        {"chunk_tokens": 0},
        {"chunk_tokens": True},
        {"chunk_tokens": 1.5},
        {"max_conversations_per_user": 0},
        {"max_messages_per_conversation": -1},
    ],
)
def test_invalid_options(root: str, options: dict[str, object]) -> None:
    with pytest.raises(InvalidArgument):
        Store(root, **options)  # type: ignore[arg-type]


def test_repr_and_context_manager(root: str) -> None:
    with Store(root, durability="none") as store:
        assert repr(store) == f"Store({os.path.abspath(root)!r}, durability='none')"


# -- users ----------------------------------------------------------------------------------------


def test_user_for_is_stable_and_distinct(store: Store, root: str) -> None:
    a = store.user_for("session-a")
    b = store.user_for("session-b")
    assert (a, b) == ("us01", "us02")
    assert store.user_for("session-a") == a
    assert open_store(root).user_for("session-b") == b  # persisted, seen by a fresh store
    assert store.users() == ["us01", "us02"]


def test_registry_never_stores_the_principal(store: Store, root: str) -> None:
    secret = "session-secret-1f6e0c"
    store.user_for(secret)
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            assert secret not in name
            assert secret.encode() not in Path(dirpath, name).read_bytes()


@pytest.mark.parametrize("principal", ["", None, 42, "x" * 4097])
def test_invalid_principals(store: Store, principal: object) -> None:
    with pytest.raises(InvalidArgument):
        store.user_for(principal)  # type: ignore[arg-type]


def test_hostile_principal_is_only_hashed(store: Store, root: str) -> None:
    assert store.user_for("../../etc/passwd\x00") == "us01"
    assert sorted(os.listdir(root)) == ["FORMAT", "sessions", "us01"]


def test_unreadable_registry_entry(store: Store, root: str) -> None:
    store.user_for("s")
    (entry,) = [p for p in Path(root, "sessions").iterdir() if p.suffix == ".json"]
    entry.write_bytes(b"torn")
    with pytest.raises(OSError, match="unreadable"):
        store.user_for("s")


def test_concurrent_first_sight_creates_one_user(root: str) -> None:
    stores = [open_store(root) for _ in range(4)]
    results: list[str] = []
    threads = [
        threading.Thread(target=lambda s=s: results.append(s.user_for("same"))) for s in stores
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == ["us01"] * 4
    assert stores[0].users() == ["us01"]


def test_unknown_user(store: Store) -> None:
    with pytest.raises(UserNotFound) as info:
        store.create_conversation("us09")
    assert isinstance(info.value, KeyError)
    assert str(info.value) == "no user us09"
    with pytest.raises(UserNotFound):
        store.list_conversations("us09")


# -- conversations --------------------------------------------------------------------------------


def test_create_and_get(store: Store, user: str, root: str) -> None:
    conv = store.create_conversation(
        user, title="Trip", metadata={"k": "v"}, participants=["alice", "bot"], pinned=True
    )
    assert conv.id == "us01-co01"
    assert (conv.user_id, conv.title, conv.pinned) == (user, "Trip", True)
    assert conv.created_at == conv.updated_at
    assert conv.created_at.endswith("Z")
    assert not conv.deleted
    assert store.get_conversation(conv.id) == conv
    assert open_store(root).get_conversation(conv.id) == conv
    assert sorted(os.listdir(conversation_dir(root, conv.id))) == ["conversation.json", "messages"]
    assert store.create_conversation(user).id == "us01-co02"


def test_conversation_ids_grow_past_99(store: Store, user: str) -> None:
    for _ in range(99):
        store.create_conversation(user)
    assert store.create_conversation(user).id == "us01-co100"
    assert store.list_conversations(user, limit=2).items[0].id == "us01-co100"


def test_unknown_conversation(store: Store, user: str) -> None:
    for call in (
        lambda: store.get_conversation("us01-co07"),
        lambda: store.update_conversation("us01-co07", title="x"),
        lambda: store.delete_conversation("us01-co07"),
        lambda: store.delete_conversation("us01-co07", hard=True),
        lambda: store.restore_conversation("us01-co07"),
        lambda: store.append_message("us01-co07", "user", "x"),
        lambda: store.stream_message("us01-co07"),
        lambda: store.messages("us01-co07"),
        lambda: store.message_count("us01-co07"),
    ):
        with pytest.raises(ConversationNotFound):
            call()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"title": 5},
        {"title": "x" * 513},
        {"metadata": {"k": 1}},
        {"metadata": {1: "v"}},
        {"metadata": {"k" * 65: "v"}},
        {"metadata": {"k": "v" * 513}},
        {"metadata": {str(i): "v" for i in range(17)}},
        {"metadata": ["k", "v"]},
        {"participants": "alice"},
        {"participants": [""]},
        {"participants": [3]},
        {"pinned": "yes"},
    ],
)
def test_create_validation(store: Store, user: str, kwargs: dict[str, object]) -> None:
    with pytest.raises(InvalidArgument):
        store.create_conversation(user, **kwargs)  # type: ignore[arg-type]
    assert store.list_conversations(user).items == []


def test_corrupt_conversation_metadata_reads_back_damaged(
    store: Store, conv: Conversation, root: str
) -> None:
    # Issue #10 item 7: a damaged conversation.json no longer raises (it broke the user's
    # whole list); the conversation comes back flagged (test_damaged_conversation.py).
    (conversation_dir(root, conv.id) / "conversation.json").write_bytes(b"{}")
    damaged = store.get_conversation(conv.id)
    assert damaged.damaged and (damaged.id, damaged.title) == (conv.id, None)
    assert [p.kind for p in store.check()] == ["corrupt"]


def test_corrupt_user_record_does_not_reuse_ids(store: Store, user: str, root: str) -> None:
    store.create_conversation(user)
    store.create_conversation(user)
    Path(root, user, "user.json").write_bytes(b"torn")
    assert store.create_conversation(user).id == "us01-co03"  # the directory scan recovers


# -- limits ---------------------------------------------------------------------------------------


def test_conversation_limit(root: str) -> None:
    store = open_store(root, max_conversations_per_user=2)
    user = store.user_for("s")
    store.create_conversation(user)
    store.create_conversation(user)
    with pytest.raises(LimitExceeded) as info:
        store.create_conversation(user)
    assert isinstance(info.value, ValueError)
    other = store.user_for("other")
    store.create_conversation(other)  # per user


def test_message_limit(root: str) -> None:
    store = open_store(root, max_messages_per_conversation=3)
    conv = store.create_conversation(store.user_for("s"))
    store.append_message(conv.id, "user", "1")
    with store.stream_message(conv.id) as w:
        w.append("2")
    store.append_message(conv.id, "user", "3")
    with pytest.raises(LimitExceeded):
        store.append_message(conv.id, "user", "4")
    with pytest.raises(LimitExceeded):
        store.stream_message(conv.id)
    assert store.message_count(conv.id) == 3


# -- soft and hard delete, restore ------------------------------------------------------------


def test_soft_delete_hides_and_freezes(store: Store, user: str, conv: Conversation) -> None:
    store.append_message(conv.id, "user", "hi")
    other = store.create_conversation(user)
    store.delete_conversation(conv.id)
    deleted = store.get_conversation(conv.id)
    assert deleted.deleted
    assert deleted.deleted_at is not None
    assert [c.id for c in store.list_conversations(user)] == [other.id]
    assert [c.id for c in store.list_conversations(user, include_deleted=True)] == [
        other.id,
        conv.id,
    ]
    with pytest.raises(ConversationDeleted) as info:
        store.append_message(conv.id, "user", "more")
    assert isinstance(info.value, PermissionError)
    with pytest.raises(ConversationDeleted):
        store.stream_message(conv.id)
    assert [m.content for m in store.messages(conv.id)] == ["hi"]  # still readable
    store.delete_conversation(conv.id)  # idempotent: the deletion time stays
    assert store.get_conversation(conv.id).deleted_at == deleted.deleted_at


def test_restore(store: Store, user: str, conv: Conversation) -> None:
    store.delete_conversation(conv.id)
    restored = store.restore_conversation(conv.id)
    assert not restored.deleted
    assert store.get_conversation(conv.id) == restored
    assert [c.id for c in store.list_conversations(user)] == [conv.id]
    assert store.append_message(conv.id, "user", "back").seq == 1
    assert not store.restore_conversation(conv.id).deleted  # restoring a live one is harmless


def test_hard_delete(store: Store, user: str, conv: Conversation, root: str) -> None:
    store.append_message(conv.id, "user", "hi")
    store.messages(conv.id)  # warm the cache
    store.delete_conversation(conv.id, hard=True)
    assert not conversation_dir(root, conv.id).exists()
    assert temp_files(root) == []  # the trash is gone too
    with pytest.raises(ConversationNotFound):
        store.get_conversation(conv.id)
    with pytest.raises(ConversationNotFound):
        store.messages(conv.id)
    with pytest.raises(ConversationNotFound):
        store.delete_conversation(conv.id, hard=True)
    with pytest.raises(ConversationNotFound):
        store.restore_conversation(conv.id)
    assert store.list_conversations(user, include_deleted=True).items == []
    # Ids are never reused, even for the newest conversation.
    assert store.create_conversation(user).id == "us01-co02"
    assert store.check() == []


def test_hard_delete_of_a_soft_deleted_conversation(store: Store, conv: Conversation) -> None:
    store.delete_conversation(conv.id)
    store.delete_conversation(conv.id, hard=True)
    with pytest.raises(ConversationNotFound):
        store.get_conversation(conv.id)


def test_durable_hard_delete(root: str) -> None:
    store = Store(root, durability="chunk")
    conv = store.create_conversation(store.user_for("s"))
    store.delete_conversation(conv.id, hard=True)
    assert store.list_conversations("us01").items == []


# -- retention ------------------------------------------------------------------------------------


def test_sweep_retention(store: Store, user: str) -> None:
    old = store.create_conversation(user, title="old")
    pinned = store.create_conversation(user, title="pinned", pinned=True)
    deleted = store.create_conversation(user, title="soft-deleted")
    store.delete_conversation(deleted.id)
    assert store.sweep_retention(days=30) == []  # nothing is 30 days old today

    expected = [old.id, deleted.id]
    assert store.sweep_retention(days=30, now=FUTURE) == expected  # dry run is the default
    assert store.get_conversation(old.id) == old  # ... and changes nothing
    assert store.sweep_retention(days=30, dry_run=False, now=FUTURE) == expected
    with pytest.raises(ConversationNotFound):
        store.get_conversation(old.id)
    assert store.get_conversation(pinned.id).pinned
    assert store.sweep_retention(days=30, dry_run=False, now=FUTURE) == []  # idempotent
    assert store.check() == []


def test_sweep_counts_recent_messages_as_activity(store: Store, user: str) -> None:
    conv = store.create_conversation(user)
    later = datetime.now(UTC) + timedelta(days=20)
    assert store.sweep_retention(days=10, now=later) == [conv.id]
    os.utime(messages_dir(store.root, conv.id), (later.timestamp(), later.timestamp()))
    assert store.sweep_retention(days=10, now=later) == []


def test_sweep_skips_unreadable_metadata(store: Store, conv: Conversation, root: str) -> None:
    (conversation_dir(root, conv.id) / "conversation.json").write_bytes(b"torn")
    assert store.sweep_retention(days=1, dry_run=False, now=FUTURE) == []
    assert conversation_dir(root, conv.id).exists()


@pytest.mark.parametrize("days", [0, -1, "30", True, None])
def test_sweep_validation(store: Store, days: object) -> None:
    with pytest.raises(InvalidArgument):
        store.sweep_retention(days=days)  # type: ignore[arg-type]


# -- update ---------------------------------------------------------------------------------------


def test_update(store: Store, conv: Conversation, root: str) -> None:
    updated = store.update_conversation(conv.id, title="New", pinned=True, metadata={"a": "1"})
    assert (updated.title, updated.pinned, updated.metadata) == ("New", True, {"a": "1"})
    assert updated.updated_at >= conv.updated_at
    assert updated.created_at == conv.created_at
    # metadata is replaced whole; omitted fields stay; None clears the title
    updated = store.update_conversation(conv.id, metadata={"b": "2"}, title=None)
    assert (updated.title, updated.pinned, updated.metadata) == (None, True, {"b": "2"})
    assert open_store(root).get_conversation(conv.id) == updated


@pytest.mark.parametrize(
    "kwargs",
    [
        {"title": 1},
        {"title": "x" * 600},
        {"pinned": 1},
        {"pinned": None},
        {"metadata": None},
        {"metadata": {"k": 2}},
        {"metadata": {str(i): "v" for i in range(17)}},
    ],
)
def test_update_validation_changes_nothing(
    store: Store, conv: Conversation, kwargs: dict[str, object]
) -> None:
    with pytest.raises(InvalidArgument):
        store.update_conversation(conv.id, **kwargs)  # type: ignore[arg-type]
    assert store.get_conversation(conv.id) == conv


def test_concurrent_updates_lose_nothing(store: Store, conv: Conversation, root: str) -> None:
    stores = [open_store(root) for _ in range(4)]

    def pin_and_title(i: int) -> None:
        for _ in range(10):
            stores[i].update_conversation(conv.id, metadata={"last": str(i)})

    threads = [threading.Thread(target=pin_and_title, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.get_conversation(conv.id).metadata["last"] in {"0", "1", "2", "3"}
    assert store.check() == []


# -- listing --------------------------------------------------------------------------------------


def test_list_pagination_newest_first(store: Store, user: str) -> None:
    ids = [store.create_conversation(user, title=str(i)).id for i in range(7)]
    page = store.list_conversations(user, limit=3)
    assert [c.id for c in page] == ids[::-1][:3]
    assert page.has_more
    assert len(page) == 3
    seen = [c.id for c in page]
    while page.next_cursor:
        page = store.list_conversations(user, limit=3, cursor=page.next_cursor)
        seen += [c.id for c in page.items]
    assert seen == ids[::-1]
    assert not page.has_more


def test_list_cursor_is_stable_while_conversations_are_created(store: Store, user: str) -> None:
    ids = [store.create_conversation(user).id for _ in range(6)]
    first = store.list_conversations(user, limit=2)
    created = [store.create_conversation(user).id for _ in range(3)]
    second = store.list_conversations(user, limit=2, cursor=first.next_cursor)
    store.create_conversation(user)
    third = store.list_conversations(user, limit=2, cursor=second.next_cursor)
    assert [c.id for page in (first, second, third) for c in page] == ids[::-1]
    assert third.next_cursor is None
    # the new ones are on a fresh page 1, newest first
    assert [c.id for c in store.list_conversations(user, limit=4)][1:] == created[::-1]


def test_list_skips_deleted_but_fills_the_page(store: Store, user: str) -> None:
    ids = [store.create_conversation(user).id for _ in range(5)]
    store.delete_conversation(ids[3])
    store.delete_conversation(ids[2])
    page = store.list_conversations(user, limit=2)
    assert [c.id for c in page] == [ids[4], ids[1]]
    assert page.has_more
    page = store.list_conversations(user, limit=2, cursor=page.next_cursor)
    assert [c.id for c in page] == [ids[0]]
    assert not page.has_more


def test_list_exact_fit_has_no_more(store: Store, user: str) -> None:
    for _ in range(2):
        store.create_conversation(user)
    page = store.list_conversations(user, limit=2)
    assert len(page) == 2
    assert page.next_cursor is None


def test_list_is_per_user(store: Store, user: str) -> None:
    mine = store.create_conversation(user)
    other = store.user_for("someone-else")
    theirs = store.create_conversation(other)
    assert [c.id for c in store.list_conversations(user)] == [mine.id]
    assert [c.id for c in store.list_conversations(other)] == [theirs.id]
    with pytest.raises(InvalidArgument):
        store.list_conversations(user, cursor=theirs.id)


@pytest.mark.parametrize("limit", [0, -1, 1001, True, "5"])
def test_list_limit_validation(store: Store, user: str, limit: object) -> None:
    with pytest.raises(InvalidArgument):
        store.list_conversations(user, limit=limit)  # type: ignore[arg-type]


def test_list_bad_cursor(store: Store, user: str) -> None:
    with pytest.raises(InvalidId):
        store.list_conversations(user, cursor="garbage")


# -- append_message -------------------------------------------------------------------------------


def test_append_message_variants(store: Store, conv: Conversation, root: str) -> None:
    calls = [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    parts = [{"type": "text", "text": "look"}, {"type": "image_url", "image_url": {"url": "u"}}]
    store.append_message(conv.id, "system", "be brief")
    store.append_message(conv.id, "user", parts)
    store.append_message(conv.id, "assistant", None, tool_calls=calls, agent_id="planner")
    store.append_message(conv.id, "tool", "42", tool_call_id="c1", name="f")
    store.append_message(conv.id, "user", "")
    messages = open_store(root).messages(conv.id)
    assert [m.seq for m in messages] == [1, 2, 3, 4, 5]
    assert [m.id for m in messages][-1] == "us01-co01-ms05"
    assert all(m.status == "complete" and not m.damaged for m in messages)
    assert [m.to_openai() for m in messages] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": parts},
        {"role": "assistant", "content": None, "tool_calls": calls},
        {"role": "tool", "content": "42", "tool_call_id": "c1", "name": "f"},
        {"role": "user", "content": ""},
    ]
    assert messages[1].text == "look"
    assert messages[2].agent_id == "planner"
    assert messages[0].token_count == 1
    assert messages[4].token_count == 0
    assert message_files(root, conv.id) == [f"us01-co01-ms0{i}.json" for i in range(1, 6)]
    assert store.message_count(conv.id) == 5


@pytest.mark.parametrize(
    "kwargs",
    [
        {"role": "robot", "content": "x"},
        {"role": "user", "content": 5},
        {"role": "user", "content": {"text": "x"}},
        {"role": "user", "content": "x", "agent_id": ""},
        {"role": "user", "content": "x", "agent_id": "a" * 257},
        {"role": "user", "content": "x", "tool_call_id": 3},
        {"role": "user", "content": "x", "name": ""},
        {"role": "assistant", "content": None, "tool_calls": {"id": "c1"}},
    ],
)
def test_append_validation(store: Store, conv: Conversation, kwargs: dict[str, object]) -> None:
    with pytest.raises(InvalidArgument):
        store.append_message(conv.id, **kwargs)  # type: ignore[arg-type]
    assert store.message_count(conv.id) == 0


@pytest.mark.parametrize("kwargs", [{"after_seq": -1}, {"after_seq": True}, {"limit": 0}])
def test_messages_validation(store: Store, conv: Conversation, kwargs: dict[str, object]) -> None:
    with pytest.raises(InvalidArgument):
        store.messages(conv.id, **kwargs)  # type: ignore[arg-type]


def test_message_ids_grow_past_99(store: Store, conv: Conversation) -> None:
    for i in range(100):
        store.append_message(conv.id, "user", str(i))
    last = store.messages(conv.id, after_seq=99)[0]
    assert (last.id, last.content) == ("us01-co01-ms100", "99")


def test_threads_claim_unique_gap_free_seqs(store: Store, conv: Conversation, root: str) -> None:
    stores = [store, open_store(root), open_store(root)]

    def write(i: int) -> None:
        s = stores[i % 3]
        for j in range(10):
            if j % 2:
                s.append_message(conv.id, "user", f"{i}-{j}")
            else:
                with s.stream_message(conv.id, chunk_tokens=1) as w:
                    w.append(f"{i}-")
                    w.append(str(j))

    threads = [threading.Thread(target=write, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    messages = store.messages(conv.id, limit=None)
    assert [m.seq for m in messages] == list(range(1, 61))
    assert sorted(m.content for m in messages) == sorted(f"{i}-{j}" for i in range(6) for j in range(10))
    assert store.check() == []


# -- less travelled paths -------------------------------------------------------------------------


def test_find_user_never_creates(store: Store) -> None:
    assert store.find_user("unseen") is None
    assert store.users() == []
    user = store.user_for("seen")
    assert store.find_user("seen") == user
    with pytest.raises(InvalidArgument):
        store.find_user("")


def test_append_message_with_finish_reason_and_usage(store: Store, conv: Conversation) -> None:
    usage = {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}
    message = store.append_message(
        conv.id, "assistant", "done", finish_reason="length", usage=usage
    )
    assert (message.finish_reason, message.usage) == ("length", usage)
    assert store.messages(conv.id) == [message]
    with pytest.raises(InvalidArgument):
        store.append_message(conv.id, "assistant", "x", usage=[1])  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument):
        store.append_message(conv.id, "assistant", "x", finish_reason="")
    assert store.check() == []


def test_strangers_are_not_users_or_conversations(store: Store, user: str, root: str) -> None:
    conv = store.create_conversation(user)
    Path(root, "us1").mkdir()
    Path(root, "usXY").mkdir()
    parent = conversation_dir(root, conv.id).parent
    (parent / "us01-co1").mkdir()
    (parent / "us01-coXY").mkdir()
    assert store.users() == [user]
    assert [c.id for c in store.list_conversations(user)] == [conv.id]
    assert store.create_conversation(user).id == "us01-co02"


def test_user_directory_without_user_record(store: Store, user: str, root: str) -> None:
    Path(root, user, "user.json").unlink()
    with pytest.raises(UserNotFound):
        store.create_conversation(user)


def test_user_without_conversations_directory_lists_nothing(
    store: Store, user: str, root: str
) -> None:
    shutil.rmtree(Path(root, user, "data"))
    assert store.list_conversations(user).items == []


def test_unreadable_conversation_metadata(
    store: Store, conv: Conversation, root: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = conversation_dir(root, conv.id) / "conversation.json"
    path.unlink()
    path.mkdir()  # not a file: damage (never opened), the conversation comes back flagged
    assert store.get_conversation(conv.id).damaged
    path.rmdir()
    path.write_bytes(b"")
    from chunkstore import StorageError, _fsio

    def failing_disk(_: str) -> bytes:
        raise OSError(errno.EIO, "I/O error")

    cold = Store(root, durability="none")
    monkeypatch.setattr(_fsio, "read_bytes", failing_disk)
    with pytest.raises(StorageError):  # a failing disk is still an error, never damage
        cold.get_conversation(conv.id)


def test_sweep_skips_a_conversation_without_messages(
    store: Store, conv: Conversation, root: str
) -> None:
    shutil.rmtree(messages_dir(root, conv.id))
    assert store.sweep_retention(days=1, now=FUTURE) == []


def test_two_processes_initializing_one_root(root: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from chunkstore import _fsio

    real = _fsio.create_exclusive

    def lose_the_race(path: str, data: bytes, *, durable: bool) -> None:
        real(path, data, durable=durable)  # the other process wins ...
        raise FileExistsError(path)  # ... and we find its FORMAT file

    monkeypatch.setattr(_fsio, "create_exclusive", lose_the_race)
    open_store(root)
    monkeypatch.undo()
    assert open_store(root).users() == []


def test_a_seq_claimed_under_our_feet(
    store: Store, conv: Conversation, root: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from chunkstore._file_store import FileBackend
    from chunkstore._ids import ConversationId

    store.append_message(conv.id, "user", "first")  # this process now expects seq 2 next
    # Another process claims seq 2 between our probe and our O_EXCL create.
    monkeypatch.setattr(FileBackend, "_seq_taken", lambda self, mid: False)
    assert store.backend._next_seq_hint[ConversationId.parse(conv.id)] == 2
    (messages_dir(root, conv.id) / "us01-co01-ms02.lock").write_bytes(b"")
    with pytest.raises(OSError, match="claimed concurrently"):
        store.stream_message(conv.id)


def test_writer_lock_that_cannot_be_created(
    store: Store, conv: Conversation, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    from chunkstore import StorageError, _locks

    def broken(path: str, timeout: float) -> None:
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(_locks, "hold_writer_lock", broken)
    with pytest.raises(StorageError) as info:
        store.stream_message(conv.id)
    assert info.value.errno == errno.EIO
