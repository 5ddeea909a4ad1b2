"""Listing conversations: probing from user.json's counter, the full-listing fallbacks, and the
stat-validated caches (``FileBackend._known_numbers``, ``FileBackend._metadata``).

Every listing is compared with a reference that knows nothing of counters or caches: list the
directory, keep the canonical names of real directories (never a symlink), read each
``conversation.json``, sort newest first.

The caches trust a directory or file only once its timestamps are older than the filesystem's
granularity (``_fsio.settled``); tests about warm caches wait for that (``settle``) before
warming, or they would only exercise the path that re-reads everything.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import pytest
from chunkstore_support import STRESS, conversation_dir, listing_mutator
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import chunkstore._file_store
from chunkstore import Store, UserNotFound
from chunkstore._exceptions import InvalidId
from chunkstore._fsio import SETTLED_FINE_NS, SETTLED_NS
from chunkstore._ids import ConversationId, UserId

EXAMPLES = 300 if STRESS else 25


# -- helpers ------------------------------------------------------------------------------------


def conversations_dir(root: str, user: str) -> Path:
    return Path(root, user, "data", "conversations")


def reference(root: str, user: str, include_deleted: bool = False) -> list[str]:
    """Every listable conversation of ``user``, newest first, from a plain directory walk."""
    uid = UserId.parse(user)
    found = []
    # os.scandir, not os.listdir: tests count the store's listdir calls.
    for name in (e.name for e in os.scandir(conversations_dir(root, user))):
        try:
            conv = ConversationId.parse(name)
        except InvalidId:
            continue
        path = conversations_dir(root, user) / name
        if conv.user != uid.n or path.is_symlink() or not path.is_dir():
            continue
        try:
            raw = (path / "conversation.json").read_bytes()
        except FileNotFoundError:
            continue
        if json.loads(raw)["deletedAt"] is not None and not include_deleted:
            continue
        found.append(conv)
    return [str(c) for c in sorted(found, reverse=True)]


def reference_page(
    root: str, user: str, limit: int, cursor: str | None, include_deleted: bool
) -> tuple[list[str], str | None]:
    listed = reference(root, user, include_deleted)
    if cursor is not None:
        before = ConversationId.parse(cursor).n
        listed = [c for c in listed if ConversationId.parse(c).n < before]
    page = listed[:limit]
    return page, (page[-1] if len(listed) > limit else None)


def page_ids(
    store: Store, user: str, limit: int, cursor: str | None = None, include_deleted: bool = False
) -> tuple[list[str], str | None]:
    page = store.list_conversations(user, limit, cursor, include_deleted)
    return [c.id for c in page], page.next_cursor


def walk(store: Store, user: str, limit: int, include_deleted: bool = False) -> list[str]:
    """Every page, following the cursors."""
    seen: list[str] = []
    cursor = None
    while True:
        ids, cursor = page_ids(store, user, limit, cursor, include_deleted)
        seen += ids
        if cursor is None:
            return seen


def assert_lists_like_reference(root: str, user: str, *stores: Store) -> None:
    for include_deleted in (False, True):
        expected = reference(root, user, include_deleted)
        for store in stores:
            assert walk(store, user, 3, include_deleted) == expected
            assert page_ids(store, user, 1000, None, include_deleted)[0] == expected


def settle(*paths: str | Path) -> None:
    """Wait until the last change under ``paths`` (not recursive: the paths and their entries)
    is older than the timestamp granularity, as a long-lived store would see it."""
    newest = 0
    for path in paths:
        newest = max(newest, os.lstat(path).st_ctime_ns)
        if os.path.isdir(path) and not os.path.islink(path):
            for entry in os.scandir(path):
                newest = max(newest, entry.stat(follow_symlinks=False).st_ctime_ns)
    margin = SETTLED_FINE_NS if newest % 1_000_000_000 else SETTLED_NS
    time.sleep(max(0.0, (newest + margin) / 1e9 - time.time()) + 0.02)


def encode_record(record: dict[str, object]) -> bytes:
    """A format v1 record (with its checksum) of any JSON, integers of any size too."""
    head = json.dumps(record, separators=(",", ":")).encode()[:-1]
    return head + b',"crc":"%08x"}\n' % zlib.crc32(head)


def set_counter(root: str, user: str, value: object, **changes: object) -> None:
    """Rewrite user.json (atomically, as the format requires) with another counter (``...``:
    none at all)."""
    path = Path(root, user, "user.json")
    record = json.loads(path.read_bytes())
    del record["crc"], record["lastConversation"]
    if value is not ...:
        record["lastConversation"] = value
    tmp = path.with_name(".user.json.tmp-test")
    tmp.write_bytes(encode_record({**record, **changes}))
    os.replace(tmp, path)


@contextmanager
def counting_listdir() -> Iterator[list[str]]:
    calls: list[str] = []
    real = os.listdir

    def listdir(path: str) -> list[str]:
        calls.append(path)
        return real(path)

    with mock.patch.object(chunkstore._file_store.os, "listdir", listdir):
        yield calls


@pytest.fixture
def many(store: Store, user: str) -> list[str]:
    return [store.create_conversation(user, title=str(i)).id for i in range(30)]


def fresh(root: str) -> Store:
    return Store(root, durability="none")


# -- probing from the counter ---------------------------------------------------------------------


def test_first_page_does_not_list_the_directory(root: str, user: str, many: list[str]) -> None:
    with counting_listdir() as calls:
        assert page_ids(fresh(root), user, 20) == (many[::-1][:20], many[10])
        ids, cursor = page_ids(fresh(root), user, 20, many[10])
        assert (ids, cursor) == (many[::-1][20:], None)
    assert calls == []


def test_probing_skips_hard_deleted_and_soft_deleted(
    store: Store, root: str, user: str, many: list[str]
) -> None:
    for i in (29, 28, 20, 13, 0):
        store.delete_conversation(many[i], hard=True)
    for i in (27, 19, 1):
        store.delete_conversation(many[i])
    with counting_listdir() as calls:
        assert_lists_like_reference(root, user, store, fresh(root))
    assert calls == []


def test_many_gaps_fall_back_to_one_listing(store: Store, root: str, user: str) -> None:
    ids = [store.create_conversation(user).id for _ in range(12)]
    with mock.patch.object(chunkstore._file_store, "_PROBE_MISSES", 4):
        for conv in ids[3:10]:
            store.delete_conversation(conv, hard=True)
        with counting_listdir() as calls:
            assert page_ids(fresh(root), user, 1) == ([ids[11]], ids[11])
            assert calls == []  # co12 and co11 (to know there is more): no gap
            assert page_ids(fresh(root), user, 3) == ([ids[11], ids[10], ids[2]], ids[2])
            assert len(calls) == 1  # after co11, 5 gaps in a row: listed instead
        assert_lists_like_reference(root, user, store, fresh(root))


@pytest.mark.parametrize(
    "counter",
    [..., "30", None, True, -1, 2.5, 10**18, 10**40, [30]],
    ids=["absent", "str", "null", "bool", "negative", "float", "too-big", "huge", "list"],
)
def test_an_unusable_counter_means_a_full_listing(
    root: str, user: str, many: list[str], counter: object
) -> None:
    set_counter(root, user, counter)
    with counting_listdir() as calls:
        assert_lists_like_reference(root, user, fresh(root))
    assert calls


def test_a_counter_behind_the_directories_is_not_trusted(
    root: str, user: str, many: list[str]
) -> None:
    set_counter(root, user, 12)  # as if user.json came back from an old backup
    with counting_listdir() as calls:
        assert page_ids(fresh(root), user, 2) == (many[::-1][:2], many[28])
    assert calls
    assert_lists_like_reference(root, user, fresh(root))


def test_a_counter_behind_a_gap_is_caught_by_the_link_count(
    store: Store, root: str, user: str, many: list[str]
) -> None:
    if os.stat(conversations_dir(root, user)).st_nlink < 2:
        pytest.skip("this filesystem keeps no subdirectory count in a directory's link count")
    store.delete_conversation(many[12], hard=True)  # co13 is a gap
    set_counter(root, user, 12)  # co13 is free, but 17 directories lie above 12
    assert page_ids(fresh(root), user, 2) == (many[::-1][:2], many[28])
    assert_lists_like_reference(root, user, fresh(root))


def test_a_counter_behind_is_caught_by_its_next_number(
    store: Store, root: str, user: str, many: list[str]
) -> None:
    for conv in many[:20]:
        store.delete_conversation(conv, hard=True)
    set_counter(root, user, 25)  # 10 directories, fewer than 25: the link count cannot tell
    assert page_ids(fresh(root), user, 2) == (many[::-1][:2], many[28])
    assert_lists_like_reference(root, user, fresh(root))


def test_a_counter_of_another_user_is_not_trusted(root: str, user: str, many: list[str]) -> None:
    set_counter(root, user, 10, id="us02")
    assert page_ids(fresh(root), user, 2) == (many[::-1][:2], many[28])


def test_a_corrupt_or_missing_user_json_means_a_full_listing(
    root: str, user: str, many: list[str]
) -> None:
    path = Path(root, user, "user.json")
    path.write_bytes(path.read_bytes()[:-5] + b'!!!"}\n')
    assert page_ids(fresh(root), user, 2) == (many[::-1][:2], many[28])
    path.unlink()
    assert page_ids(fresh(root), user, 2) == (many[::-1][:2], many[28])


def test_a_counter_ahead_of_the_directories(root: str, user: str, many: list[str]) -> None:
    set_counter(root, user, 40)  # a create that bumped the counter, then failed (or crashed)
    with counting_listdir() as calls:
        assert_lists_like_reference(root, user, fresh(root))
    assert calls == []


@pytest.mark.parametrize(
    ("cursor", "expected"),
    [
        ("us01-co999999999999999999", slice(None, 5)),  # above everything: the first page
        ("us01-co31", slice(None, 5)),  # the counter's next number
        ("us01-co30", slice(1, 6)),
        ("us01-co02", slice(-1, None)),
        ("us01-co01", slice(0, 0)),
    ],
)
def test_any_cursor_of_the_user(
    root: str, user: str, many: list[str], cursor: str, expected: slice
) -> None:
    newest_first = many[::-1]
    for store in (fresh(root), fresh(root)):
        ids, _ = page_ids(store, user, 5, cursor)
        assert ids == newest_first[expected]


def test_planted_names_are_never_followed(
    store: Store, root: str, user: str, many: list[str], tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "conversation.json").write_bytes(
        (conversation_dir(root, many[0]) / "conversation.json").read_bytes()
    )
    (outside / "messages").mkdir()
    cdir = conversations_dir(root, user)
    shutil.rmtree(cdir / many[25])
    (cdir / many[25]).symlink_to(outside, target_is_directory=True)  # inside the probed range
    shutil.rmtree(cdir / many[24])
    (cdir / many[24]).write_text("not a directory")
    (cdir / "us01-co31").symlink_to(outside, target_is_directory=True)  # above the counter
    (cdir / "us01-co5").mkdir()  # not a canonical name
    (cdir / ".us01-co32.tmp-999").mkdir()
    expected = [c for c in many[::-1] if c not in (many[25], many[24])]
    assert page_ids(fresh(root), user, 6)[0] == expected[:6]
    assert_lists_like_reference(root, user, store, fresh(root))
    (cdir / "us01-co31").unlink()
    assert_lists_like_reference(root, user, store, fresh(root))


@pytest.mark.parametrize("planted", ["data", "conversations"])
def test_a_symlinked_parent_is_not_followed(
    store: Store, root: str, user: str, many: list[str], tmp_path: Path, planted: str
) -> None:
    real = Path(root, user, "data") if planted == "data" else conversations_dir(root, user)
    moved = tmp_path / "moved"
    real.rename(moved)
    real.symlink_to(moved, target_is_directory=True)
    for s in (store, fresh(root)):
        with pytest.raises(UserNotFound):
            s.list_conversations(user)


def test_a_user_without_conversations_directory(root: str, user: str) -> None:
    shutil.rmtree(Path(root, user, "data"))
    assert page_ids(fresh(root), user, 5) == ([], None)
    Path(root, user, "data").write_text("a file where a directory belongs")
    assert page_ids(fresh(root), user, 5) == ([], None)


# -- create_conversation keeps the counter an upper bound --------------------------------------------


@pytest.mark.parametrize("damage", ["behind", "absent", "garbage", "corrupt"])
def test_create_after_a_damaged_counter_goes_past_every_number_on_disk(
    store: Store, root: str, user: str, many: list[str], damage: str
) -> None:
    store.delete_conversation(many[-1], hard=True)  # co30: the counter alone remembers it
    store.delete_conversation(many[0], hard=True)
    store.delete_conversation(many[20], hard=True)
    if damage == "corrupt":
        Path(root, user, "user.json").write_bytes(b"{torn")
    else:
        set_counter(root, user, {"behind": 5, "absent": ..., "garbage": "30"}[damage])
    created = store.create_conversation(user).id
    # Not co01 or co21 (free, but hard-deleted: ids are never reused). co30's number was only
    # in the damaged counter, so it cannot be known any more.
    assert created == "us01-co30"
    assert fresh(root).create_conversation(user).id == "us01-co31"
    assert page_ids(fresh(root), user, 3)[0] == ["us01-co31", "us01-co30", many[28]]


def test_create_after_a_lost_counter_skips_gaps_above_it(
    store: Store, root: str, user: str, many: list[str]
) -> None:
    store.delete_conversation(many[7], hard=True)  # co08
    set_counter(root, user, 5)  # an old user.json: co06 and co07 exist, co08 is a gap
    assert store.create_conversation(user).id == "us01-co31"
    assert_lists_like_reference(root, user, store, fresh(root))


# -- caches see what other stores (processes) change ----------------------------------------------


def test_warm_listing_sees_every_change_made_elsewhere(
    store: Store, root: str, user: str, many: list[str]
) -> None:
    store.delete_conversation(many[3])
    warm = fresh(root)
    settle(conversations_dir(root, user), *(conversation_dir(root, c) for c in many))
    assert_lists_like_reference(root, user, warm)  # every cache filled and trusted
    other = fresh(root)
    steps: list[Callable[[], object]] = [
        lambda: other.update_conversation(many[29], title="renamed"),
        lambda: other.delete_conversation(many[28]),
        lambda: other.restore_conversation(many[3]),
        lambda: other.delete_conversation(many[27], hard=True),
        lambda: other.create_conversation(user, title="new"),
        lambda: other.update_conversation(many[0], metadata={"k": "v"}),
        lambda: other.delete_conversation(many[1], hard=True),
        lambda: other.delete_conversation(many[29]),
    ]
    for step in steps:
        step()
        assert_lists_like_reference(root, user, warm)
        for conv in warm.list_conversations(user, 1000, include_deleted=True):
            assert conv == other.get_conversation(conv.id)


def test_warm_pages_in_any_order(store: Store, root: str, user: str, many: list[str]) -> None:
    for i in (25, 12, 11, 2):
        store.delete_conversation(many[i], hard=True)
    settle(
        conversations_dir(root, user), *(conversation_dir(root, c) for c in reference(root, user))
    )
    warm = fresh(root)
    newest_first = reference(root, user)
    for cursor in ("us01-co10", None, "us01-co20", "us01-co05", None, "us01-co28"):
        before = ConversationId.parse(cursor).n if cursor else 99
        expected = [c for c in newest_first if ConversationId.parse(c).n < before][:4]
        assert page_ids(warm, user, 4, cursor)[0] == expected


def test_warm_listing_sees_changes_by_another_process(
    store: Store, root: str, user: str, many: list[str]
) -> None:
    warm = fresh(root)
    settle(conversations_dir(root, user), *(conversation_dir(root, c) for c in many))
    assert_lists_like_reference(root, user, warm)
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        for step in range(6):
            pool.apply(listing_mutator, (root, user, many, step))
            assert_lists_like_reference(root, user, warm)
            for conv in warm.list_conversations(user, 1000, include_deleted=True):
                assert conv == fresh(root).get_conversation(conv.id)


def test_threads_listing_while_conversations_are_created(store: Store, user: str) -> None:
    created: list[str] = []
    done = threading.Event()
    errors: list[BaseException] = []

    def creator() -> None:
        try:
            for i in range(60):
                created.append(store.create_conversation(user, title=str(i)).id)
        finally:
            done.set()

    def lister() -> None:
        try:
            while not done.is_set():
                known = list(created)  # created before this listing began
                listed = [c.id for c in store.list_conversations(user, 1000)]
                numbers = [ConversationId.parse(c).n for c in listed]
                assert numbers == sorted(set(numbers), reverse=True)
                assert set(known) <= set(listed)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=creator)] + [
        threading.Thread(target=lister) for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert [c.id for c in store.list_conversations(user, 1000)] == created[::-1]


# -- properties -------------------------------------------------------------------------------------

counter_changes = st.sampled_from(["keep", "absent", "ahead", "behind", "garbage"])


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    created=st.integers(0, 25),
    hard=st.sets(st.integers(1, 25)),
    soft=st.sets(st.integers(1, 25)),
    counter=counter_changes,
    planted=st.sets(st.integers(1, 30), max_size=3),
    probe_misses=st.sampled_from([0, 2, 128]),
    settle_first=st.booleans(),
    queries=st.lists(
        st.tuples(st.integers(1, 8), st.one_of(st.none(), st.integers(1, 32)), st.booleans()),
        min_size=1,
        max_size=4,
    ),
)
def test_listing_matches_the_reference(
    tmp_path_factory: pytest.TempPathFactory,
    created: int,
    hard: set[int],
    soft: set[int],
    counter: str,
    planted: set[int],
    probe_misses: int,
    settle_first: bool,
    queries: list[tuple[int, int | None, bool]],
) -> None:
    root = str(tmp_path_factory.mktemp("listing"))
    writer = fresh(root)
    user = writer.user_for("p")
    ids = [writer.create_conversation(user).id for _ in range(created)]
    for n in sorted(soft):
        if n <= created:
            writer.delete_conversation(ids[n - 1])
    for n in sorted(hard):
        if n <= created:
            writer.delete_conversation(ids[n - 1], hard=True)
    cdir = conversations_dir(root, user)
    for n in planted:  # a symlink (over a conversation, or in a gap, or above the counter)
        name = cdir / str(ConversationId(1, n))
        if name.is_dir():
            shutil.rmtree(name)
        name.symlink_to(cdir.parent, target_is_directory=True)
    existing = [ConversationId.parse(c).n for c in reference(root, user, True)]
    if counter == "absent":
        set_counter(root, user, ...)
    elif counter == "ahead":
        set_counter(root, user, created + 7)
    elif counter == "behind" and existing:
        # One below an existing number: detectably stale (its next number exists).
        set_counter(root, user, existing[len(existing) // 2] - 1)
    elif counter == "garbage":
        set_counter(root, user, "12")
    warm = fresh(root)
    if settle_first:  # so that the warm store's caches are trusted, not just refilled
        settle(cdir, *(p for p in cdir.iterdir() if not p.is_symlink()))
    with mock.patch.object(chunkstore._file_store, "_PROBE_MISSES", probe_misses):
        for limit, before, include_deleted in queries:
            cursor = None if before is None else str(ConversationId(1, before))
            expected = reference_page(root, user, limit, cursor, include_deleted)
            assert page_ids(fresh(root), user, limit, cursor, include_deleted) == expected
            assert page_ids(warm, user, limit, cursor, include_deleted) == expected
        assert_lists_like_reference(root, user, warm, fresh(root))
        # Another store changes things; the warm one must see it at once.
        writer.create_conversation(user)
        listed = reference(root, user, include_deleted=True)
        writer.update_conversation(listed[-1], title="changed")
        writer.delete_conversation(listed[len(listed) // 2], hard=True)
        assert_lists_like_reference(root, user, warm)
