"""Users, conversations (create, get, list, update, delete, restore), limits, retention and
``check``: the same behaviour on every backend."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from conformance_support import open_store

from chunkstore import (
    ChunkstoreError,
    Conversation,
    ConversationDeleted,
    ConversationNotFound,
    InvalidArgument,
    LimitExceeded,
    Store,
    UserNotFound,
)

FUTURE = datetime.now(UTC) + timedelta(days=365)
USER_ID = re.compile(r"us\d{2,}")
CONVERSATION_ID = re.compile(r"us\d{2,}-co\d{2,}")


def number(conversation_id: str) -> int:
    return int(conversation_id.rsplit("-co", 1)[1])


# -- users ----------------------------------------------------------------------------------------


def test_user_for_creates_once(store: Store, store_url: str) -> None:
    assert store.users() == []
    assert store.find_user("session-a") is None
    assert store.users() == []  # find_user creates nothing
    a = store.user_for("session-a")
    b = store.user_for("session-b")
    assert USER_ID.fullmatch(a) and USER_ID.fullmatch(b)
    assert (a, b) == ("us01", "us02")
    assert a != b
    assert store.user_for("session-a") == a
    assert store.find_user("session-a") == a
    assert store.users() == [a, b]
    with open_store(store_url) as other:  # persisted: a second store on the URL sees them
        assert other.find_user("session-b") == b
        assert other.user_for("session-a") == a
        assert other.users() == [a, b]


@pytest.mark.parametrize("principal", ["", None, 42, "x" * 4097])
def test_invalid_principals(store: Store, principal: object) -> None:
    for call in (store.user_for, store.find_user):
        with pytest.raises(InvalidArgument):
            call(principal)  # type: ignore[arg-type]
    assert store.users() == []


def test_hostile_principal_is_just_a_key(store: Store) -> None:
    user = store.user_for("../../etc/passwd\x00")
    assert store.find_user("../../etc/passwd\x00") == user
    assert store.users() == [user]


def test_unknown_user(store: Store, user: str) -> None:
    with pytest.raises(UserNotFound) as info:
        store.create_conversation("us99")
    assert isinstance(info.value, KeyError)
    assert isinstance(info.value, ChunkstoreError)


# -- create, get, list ----------------------------------------------------------------------------


def test_create_and_get(store: Store, user: str, store_url: str) -> None:
    conv = store.create_conversation(
        user, title="Trip", metadata={"topic": "travel"}, participants=["agent-1"], pinned=True
    )
    assert CONVERSATION_ID.fullmatch(conv.id)
    assert conv.id == f"{user}-co01"
    assert (conv.user_id, conv.title, conv.pinned) == (user, "Trip", True)
    assert conv.metadata == {"topic": "travel"}
    assert conv.participants == ["agent-1"]
    assert conv.deleted_at is None and not conv.deleted and not conv.damaged
    assert conv.created_at == conv.updated_at
    assert store.get_conversation(conv.id) == conv
    with open_store(store_url) as other:
        assert other.get_conversation(conv.id) == conv
    plain = store.create_conversation(user)
    assert (plain.title, plain.pinned, plain.metadata, plain.participants) == (None, False, {}, [])


@pytest.mark.parametrize(
    "options",
    [
        {"title": 42},
        {"title": "x" * 513},
        {"metadata": {"k": 1}},
        {"metadata": {f"k{i}": "v" for i in range(17)}},
        {"metadata": {"k" * 65: "v"}},
        {"pinned": "yes"},
    ],
)
def test_invalid_conversation_arguments(store: Store, user: str, options: dict) -> None:
    with pytest.raises(InvalidArgument):
        store.create_conversation(user, **options)
    assert store.list_conversations(user, include_deleted=True).items == []


def test_list_newest_first(store: Store, user: str) -> None:
    ids = [store.create_conversation(user, title=f"c{i}").id for i in range(5)]
    other = store.user_for("other")
    store.create_conversation(other)  # another user's conversation is never listed
    page = store.list_conversations(user)
    assert [c.id for c in page] == ids[::-1]
    assert [c.title for c in page] == [f"c{i}" for i in range(4, -1, -1)]
    assert page.next_cursor is None and not page.has_more
    assert len(page) == 5
    assert store.list_conversations(store.user_for("nobody yet")).items == []


def test_paging_is_stable_while_creating(store: Store, user: str) -> None:
    ids = [store.create_conversation(user).id for i in range(7)]
    first = store.list_conversations(user, limit=3)
    assert [c.id for c in first] == ids[:-4:-1]
    assert first.has_more
    created = [store.create_conversation(user).id for _ in range(2)]  # sorts before page 1
    seen = [c.id for c in first]
    cursor = first.next_cursor
    while cursor is not None:
        page = store.list_conversations(user, limit=3, cursor=cursor)
        seen += [c.id for c in page]
        created.append(store.create_conversation(user).id)
        cursor = page.next_cursor
    assert seen == ids[::-1]  # each once, in order, none of the new ones
    everything = store.list_conversations(user, limit=100)
    assert [c.id for c in everything] == created[::-1] + ids[::-1]


def test_paging_exactly_full_pages(store: Store, user: str) -> None:
    ids = [store.create_conversation(user).id for _ in range(4)]
    first = store.list_conversations(user, limit=2)
    second = store.list_conversations(user, limit=2, cursor=first.next_cursor)
    assert [c.id for c in first] + [c.id for c in second] == ids[::-1]
    if second.next_cursor is not None:  # a cursor at the very end is allowed: then empty
        assert store.list_conversations(user, limit=2, cursor=second.next_cursor).items == []


def test_list_include_deleted(store: Store, user: str) -> None:
    ids = [store.create_conversation(user).id for _ in range(4)]
    store.delete_conversation(ids[1])
    store.delete_conversation(ids[2])
    assert [c.id for c in store.list_conversations(user)] == [ids[3], ids[0]]
    listed = store.list_conversations(user, include_deleted=True)
    assert [c.id for c in listed] == ids[::-1]
    assert [c.deleted for c in listed] == [False, True, True, False]
    first = store.list_conversations(user, limit=1)
    second = store.list_conversations(user, limit=1, cursor=first.next_cursor)
    assert [c.id for c in first] + [c.id for c in second] == [ids[3], ids[0]]


@pytest.mark.parametrize("limit", [0, -1, 1001, "10", True, None])
def test_invalid_list_limit(store: Store, user: str, limit: object) -> None:
    with pytest.raises(InvalidArgument):
        store.list_conversations(user, limit=limit)  # type: ignore[arg-type]


def test_cursor_of_another_user(store: Store, user: str) -> None:
    other = store.user_for("other")
    theirs = store.create_conversation(other)
    with pytest.raises(ValueError):
        store.list_conversations(user, cursor=theirs.id)


# -- update ---------------------------------------------------------------------------------------


def test_update_replaces_what_it_is_given(store: Store, conv: Conversation, store_url: str) -> None:
    one = store.update_conversation(conv.id, metadata={"a": "1", "b": "2"})
    assert one.metadata == {"a": "1", "b": "2"}
    assert (one.title, one.pinned) == ("Test", False)
    assert one.updated_at >= conv.updated_at
    assert one.created_at == conv.created_at
    two = store.update_conversation(conv.id, metadata={"c": "3"})
    assert two.metadata == {"c": "3"}  # replaced whole, not merged
    three = store.update_conversation(conv.id, title="Lisbon", pinned=True)
    assert (three.title, three.pinned, three.metadata) == ("Lisbon", True, {"c": "3"})
    four = store.update_conversation(conv.id, title=None, pinned=False, metadata={})
    assert (four.title, four.pinned, four.metadata) == (None, False, {})
    assert store.get_conversation(conv.id) == four
    with open_store(store_url) as other:
        assert other.get_conversation(conv.id) == four
    assert [c.id for c in store.list_conversations(conv.user_id)] == [conv.id]


def test_update_listing_shows_the_change(store: Store, conv: Conversation) -> None:
    store.update_conversation(conv.id, title="renamed")
    assert [c.title for c in store.list_conversations(conv.user_id)] == ["renamed"]


@pytest.mark.parametrize(
    "changes", [{"title": 1}, {"pinned": 1}, {"metadata": {"k": 2}}, {"metadata": "k"}]
)
def test_invalid_update(store: Store, conv: Conversation, changes: dict) -> None:
    with pytest.raises(InvalidArgument):
        store.update_conversation(conv.id, **changes)
    assert store.get_conversation(conv.id) == conv


# -- soft delete, restore, hard delete ------------------------------------------------------------


def test_soft_delete_and_restore(store: Store, conv: Conversation) -> None:
    store.append_message(conv.id, "user", "hi")
    store.delete_conversation(conv.id)
    deleted = store.get_conversation(conv.id)
    assert deleted.deleted and deleted.deleted_at is not None
    store.delete_conversation(conv.id)  # deleting twice is fine
    assert store.get_conversation(conv.id).deleted_at == deleted.deleted_at
    assert [m.content for m in store.messages(conv.id)] == ["hi"]  # still readable
    assert store.message_count(conv.id) == 1
    with pytest.raises(ConversationDeleted) as info:
        store.append_message(conv.id, "user", "more")
    assert isinstance(info.value, PermissionError)
    with pytest.raises(ConversationDeleted):
        store.stream_message(conv.id)
    assert store.message_count(conv.id) == 1
    restored = store.restore_conversation(conv.id)
    assert not restored.deleted and restored.deleted_at is None
    assert store.get_conversation(conv.id) == restored
    assert store.append_message(conv.id, "user", "back").seq == 2
    assert not store.restore_conversation(conv.id).deleted  # restoring twice is fine


def test_hard_delete(store: Store, user: str, store_url: str) -> None:
    keep = store.create_conversation(user)
    gone = store.create_conversation(user)
    store.append_message(gone.id, "user", "secret")
    with store.stream_message(gone.id) as w:
        w.append("reply")
    store.delete_conversation(gone.id, hard=True)
    calls: list[Callable[[Store], object]] = [
        lambda s: s.get_conversation(gone.id),
        lambda s: s.messages(gone.id),
        lambda s: s.message_count(gone.id),
        lambda s: s.append_message(gone.id, "user", "x"),
        lambda s: s.stream_message(gone.id),
        lambda s: s.update_conversation(gone.id, title="x"),
        lambda s: s.restore_conversation(gone.id),
        lambda s: s.delete_conversation(gone.id),
        lambda s: s.delete_conversation(gone.id, hard=True),
    ]
    with open_store(store_url) as fresh:
        for reader in (store, fresh):
            for call in calls:
                with pytest.raises(ConversationNotFound) as info:
                    call(reader)
                assert isinstance(info.value, KeyError)
    assert [c.id for c in store.list_conversations(user, include_deleted=True)] == [keep.id]
    assert store.check() == []


def test_hard_delete_of_a_soft_deleted_conversation(store: Store, conv: Conversation) -> None:
    store.delete_conversation(conv.id)
    store.delete_conversation(conv.id, hard=True)
    with pytest.raises(ConversationNotFound):
        store.get_conversation(conv.id)


def test_ids_are_never_reused(store: Store, user: str, store_url: str) -> None:
    first = store.create_conversation(user)
    second = store.create_conversation(user)
    store.delete_conversation(second.id, hard=True)
    third = store.create_conversation(user)
    assert number(third.id) > number(second.id) > number(first.id)
    store.delete_conversation(third.id, hard=True)
    with open_store(store_url) as fresh:  # nor by a store opened after the delete
        fourth = fresh.create_conversation(user)
    assert number(fourth.id) > number(third.id)
    seen = {first.id, second.id, third.id, fourth.id}
    assert len(seen) == 4


def test_missing_conversation(store: Store, user: str) -> None:
    for call in (
        lambda: store.get_conversation(f"{user}-co42"),
        lambda: store.delete_conversation(f"{user}-co42"),
        lambda: store.messages("us77-co01"),
        lambda: store.append_message("us77-co01", "user", "x"),
    ):
        with pytest.raises(ConversationNotFound):
            call()


# -- limits ---------------------------------------------------------------------------------------


def test_conversation_limit(store_url: str) -> None:
    store = open_store(store_url, max_conversations_per_user=2)
    user = store.user_for("s")
    first = store.create_conversation(user)
    second = store.create_conversation(user)
    store.delete_conversation(second.id)  # a soft-deleted conversation still counts
    with pytest.raises(LimitExceeded) as info:
        store.create_conversation(user)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, ChunkstoreError)
    assert len(store.list_conversations(user, include_deleted=True)) == 2
    store.create_conversation(store.user_for("other"))  # the limit is per user
    store.delete_conversation(first.id, hard=True)  # a hard-deleted one does not
    store.create_conversation(user)
    with pytest.raises(LimitExceeded):
        store.create_conversation(user)
    store.close()


def test_message_limit(store_url: str) -> None:
    store = open_store(store_url, max_messages_per_conversation=3)
    conv = store.create_conversation(store.user_for("s"))
    store.append_message(conv.id, "user", "1")
    with store.stream_message(conv.id) as w:
        w.append("2")
    store.append_message(conv.id, "user", "3")
    with pytest.raises(LimitExceeded) as info:
        store.append_message(conv.id, "user", "4")
    assert isinstance(info.value, ValueError)
    with pytest.raises(LimitExceeded):
        store.stream_message(conv.id)
    assert store.message_count(conv.id) == 3
    assert [m.content for m in store.messages(conv.id)] == ["1", "2", "3"]
    other = store.create_conversation(conv.user_id)  # the limit is per conversation
    store.append_message(other.id, "user", "1")
    store.close()


@pytest.mark.parametrize(
    "options",
    [
        {"durability": "always"},
        {"chunk_tokens": 0},
        {"chunk_tokens": 1.5},
        {"max_conversations_per_user": 0},
        {"max_messages_per_conversation": -1},
    ],
)
def test_invalid_options(store_url: str, options: dict) -> None:
    with pytest.raises(InvalidArgument):
        Store(store_url, **options)


@pytest.mark.parametrize("durability", ["chunk", "message", "none"])
def test_every_durability_mode(make_url: Callable[[], str], durability: str) -> None:
    url = make_url()
    with Store(url, durability=durability, chunk_tokens=2, flush_interval=None) as store:
        conv = store.create_conversation(store.user_for("s"))
        store.append_message(conv.id, "user", "hi")
        with store.stream_message(conv.id) as w:
            for token in "abcde":
                w.append(token)
    with open_store(url) as fresh:
        assert [m.content for m in fresh.messages(conv.id)] == ["hi", "abcde"]


# -- retention ------------------------------------------------------------------------------------


def test_sweep_retention(store: Store, user: str) -> None:
    old = store.create_conversation(user, title="old")
    store.append_message(old.id, "user", "hi")
    pinned = store.create_conversation(user, title="pinned", pinned=True)
    deleted = store.create_conversation(user, title="soft-deleted")
    store.delete_conversation(deleted.id)
    assert store.sweep_retention(days=30) == []  # nothing is 30 days old today
    assert store.sweep_retention(days=30, dry_run=False) == []

    expected = [old.id, deleted.id]
    assert store.sweep_retention(days=30, now=FUTURE) == expected  # dry run is the default
    assert store.sweep_retention(days=30, dry_run=True, now=FUTURE) == expected
    assert store.get_conversation(old.id) == old  # ... and changes nothing
    assert [m.content for m in store.messages(old.id)] == ["hi"]
    assert store.sweep_retention(days=30, dry_run=False, now=FUTURE) == expected
    for gone in expected:
        with pytest.raises(ConversationNotFound):
            store.get_conversation(gone)
    assert store.get_conversation(pinned.id).pinned
    assert store.sweep_retention(days=30, dry_run=False, now=FUTURE) == []  # idempotent
    assert [c.id for c in store.list_conversations(user, include_deleted=True)] == [pinned.id]
    assert store.check() == []


def test_sweep_spans_users(store: Store) -> None:
    a = store.create_conversation(store.user_for("a"))
    b = store.create_conversation(store.user_for("b"))
    assert sorted(store.sweep_retention(days=1, now=FUTURE)) == sorted([a.id, b.id])


def test_unpinning_makes_a_conversation_sweepable(store: Store, user: str) -> None:
    conv = store.create_conversation(user, pinned=True)
    assert store.sweep_retention(days=1, now=FUTURE) == []
    store.update_conversation(conv.id, pinned=False)
    assert store.sweep_retention(days=1, now=FUTURE) == [conv.id]


@pytest.mark.parametrize("days", [0, -1, "30", True, None])
def test_sweep_validation(store: Store, days: object) -> None:
    with pytest.raises(InvalidArgument):
        store.sweep_retention(days=days)  # type: ignore[arg-type]


# -- check ----------------------------------------------------------------------------------------


def test_check_is_clean_on_a_healthy_store(store: Store, user: str) -> None:
    assert store.check() == []
    conv = store.create_conversation(user, title="x", metadata={"k": "v"})
    store.append_message(conv.id, "user", "hi")
    with store.stream_message(conv.id, chunk_tokens=2) as w:
        for token in "hello":
            w.append(token)
    failed = store.stream_message(conv.id, chunk_tokens=2)
    failed.append("a")
    failed.fail("upstream died")
    abandoned = store.stream_message(conv.id, chunk_tokens=2)
    for token in "abc":
        abandoned.append(token)
    abandoned.abandon()  # interrupted messages are a valid state, not a problem
    live = store.stream_message(conv.id, chunk_tokens=2)
    for token in "abc":
        live.append(token)
    soft = store.create_conversation(user)
    store.delete_conversation(soft.id)
    hard = store.create_conversation(user)
    store.append_message(hard.id, "user", "bye")
    store.delete_conversation(hard.id, hard=True)
    assert store.check() == []
    assert store.check(fix=True) == []
    live.finish()
    assert store.check() == []
