"""The file store's search index (``_file_search``): derived, crash-safe, rebuilt when lost.

What the conformance suite cannot see: where the index lives and that the rest of the store
ignores it; that it is rebuilt when missing, corrupt, of another version or planted over; that
a failed index update never fails a write; that writes it did not see (an older chunkstore, a
process SIGKILLed between the file write and the index write) are caught up; and that
``check`` reports and repairs drift.
"""

from __future__ import annotations

import os
import random
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from chunkstore_support import STRESS

from chunkstore import Store, _file_search
from chunkstore._file_search import INDEX_DIR, FileSearch
from chunkstore._file_store import FileBackend


def backend(store: Store) -> FileBackend:
    found = store._backend
    assert isinstance(found, FileBackend)
    return found


def ids(store: Store, user: str, query: str, **kwargs: Any) -> list[str]:
    return [hit.conversation.id for hit in store.search(user, query, **kwargs)]


def index_file(root: str, user: str = "us01") -> Path:
    return Path(root, INDEX_DIR, f"{user}.sqlite3")


def index_problems(store: Store, fix: bool = False) -> list[Any]:
    return [p for p in store.check(fix=fix) if p.kind == "index"]


def quiet_store(root: str) -> Store:
    """A store that writes like an older chunkstore: files only, the index never updated."""
    store = Store(root, durability="none", flush_interval=None)
    search = backend(store)._search
    for hook in ("message_finished", "message_deleted", "conversation_changed"):
        setattr(search, hook, lambda *args, **kwargs: None)
    search.conversation_removed = lambda *args, **kwargs: None  # type: ignore[method-assign]
    return store


@pytest.fixture
def lisbon(store: Store, user: str) -> str:
    conv = store.create_conversation(user, title="Trip")
    store.append_message(conv.id, "user", "pastel de nata in Lisbon")
    assert ids(store, user, "lisbon") == [conv.id]  # the index exists from here on
    return conv.id


# -- where it lives -------------------------------------------------------------------------


def test_the_index_is_a_hidden_per_user_file_the_store_ignores(
    store: Store, user: str, root: str, lisbon: str
) -> None:
    assert index_file(root).is_file()
    assert store.users() == [user]
    assert store.check() == []
    assert backend(store).expired(datetime(2999, 1, 1, tzinfo=UTC)) == [lisbon]
    assert {"us01.sqlite3", "writers"} <= set(os.listdir(Path(root, INDEX_DIR)))


def test_no_index_for_an_unknown_user(store: Store, root: str) -> None:
    assert ids(store, "us07", "lisbon") == []
    assert not index_file(root, "us07").exists()


def test_writes_before_the_first_search_need_no_index(store: Store, user: str, root: str) -> None:
    conv = store.create_conversation(user, title="Lisbon")
    store.append_message(conv.id, "user", "porto")
    assert not index_file(root).exists()  # built from the files on the first search
    assert ids(store, user, "porto") == [conv.id]


# -- rebuilt when lost ----------------------------------------------------------------------


def test_a_deleted_index_is_rebuilt(root: str, lisbon: str, user: str) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{index_file(root)}{suffix}").unlink(missing_ok=True)
    with Store(root, durability="none") as fresh:
        assert ids(fresh, user, "nata") == [lisbon]
        assert ids(fresh, user, "trip") == [lisbon]


def test_deleted_while_open_is_rebuilt(store: Store, root: str, lisbon: str, user: str) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{index_file(root)}{suffix}").unlink(missing_ok=True)
    assert ids(store, user, "nata") == [lisbon]


def test_a_corrupt_index_is_rebuilt(store: Store, root: str, lisbon: str, user: str) -> None:
    store.close()
    path = index_file(root)
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    path.write_bytes(b"this is not a database" * 300)
    with Store(root, durability="none") as fresh:
        assert ids(fresh, user, "lisbon") == [lisbon]


def test_an_index_of_another_version_is_rebuilt(root: str, lisbon: str, user: str) -> None:
    with sqlite3.connect(index_file(root)) as conn:
        conn.execute("UPDATE meta SET value = 99 WHERE key = 'version'")
        conn.execute("CREATE TABLE from_the_future(x)")
    with Store(root, durability="none") as fresh:
        assert ids(fresh, user, "lisbon") == [lisbon]
    with sqlite3.connect(index_file(root)) as conn:
        assert dict(conn.execute("SELECT key, value FROM meta")) == {"version": 1, "built": 1}
        tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master")}
        assert "from_the_future" not in tables


@pytest.mark.parametrize("planted", ["fifo", "symlink"])
def test_something_planted_as_the_index_is_replaced_never_followed(
    root: str, lisbon: str, user: str, tmp_path: Path, planted: str
) -> None:
    path = index_file(root)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    outside = tmp_path / "outside.db"
    outside.write_bytes(b"")
    if planted == "fifo":
        os.mkfifo(path)
        os.mkfifo(f"{path}-wal")
    else:
        path.symlink_to(outside)
    with Store(root, durability="none") as fresh:
        assert ids(fresh, user, "lisbon") == [lisbon]  # no hang, no link followed
    assert path.is_file() and not path.is_symlink()
    assert outside.read_bytes() == b""


def test_a_symlink_planted_as_the_index_directory(
    root: str, lisbon: str, user: str, tmp_path: Path
) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    index_dir = Path(root, INDEX_DIR)
    index_dir.rename(tmp_path / "moved")
    index_dir.symlink_to(outside)
    with Store(root, durability="none") as fresh:
        assert ids(fresh, user, "lisbon") == [lisbon]
    assert index_dir.is_dir() and not index_dir.is_symlink()
    assert list(outside.iterdir()) == []


def test_a_directory_planted_as_the_index_is_an_error(root: str, lisbon: str, user: str) -> None:
    path = index_file(root)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    path.mkdir()
    with Store(root, durability="none") as fresh:
        with pytest.raises(Exception, match="directory"):
            fresh.search(user, "lisbon")
        problems = index_problems(fresh)
        assert problems and "not a regular file" in problems[0].detail


# -- a failed update never fails the write ---------------------------------------------------


def test_a_failing_index_never_fails_a_write_and_catches_up(
    store: Store, user: str, lisbon: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self: Any) -> Any:
        raise sqlite3.OperationalError("database is locked")

    with monkeypatch.context() as patched:
        patched.setattr(_file_search._UserIndex, "write", broken)
        message = store.append_message(lisbon, "user", "the Porto tram")
        with store.stream_message(lisbon) as writer:
            writer.append("Sintra palace")
        store.update_conversation(lisbon, title="Coimbra")
        assert message.status == "complete"
        assert backend(store)._search._pending
    # Caught up from the files before the next search.
    assert ids(store, user, "tram") == [lisbon]
    assert ids(store, user, "sintra") == [lisbon]
    assert ids(store, user, "coimbra") == [lisbon]
    assert ids(store, user, "trip") == []
    assert not backend(store)._search._pending


def test_an_update_failing_until_close_leaves_the_lease_for_the_next_opener(
    root: str, user: str, lisbon: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    writers = Path(root, INDEX_DIR, "writers")
    before = set(os.listdir(writers))
    store = Store(root, durability="none")
    monkeypatch.setattr(FileSearch, "reindex", lambda self, conv: 1 / 0)

    def broken(self: Any) -> Any:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(_file_search._UserIndex, "write", broken)
    store.append_message(lisbon, "user", "the Porto tram")
    store.close()
    monkeypatch.undo()
    assert len(set(os.listdir(writers)) - before) == 1  # kept: not caught up
    with Store(root, durability="none") as fresh:
        assert ids(fresh, user, "tram") == [lisbon]
    assert set(os.listdir(writers)) == before


# -- writes the index did not see -----------------------------------------------------------


def test_an_older_chunkstore_writing_is_repaired_by_check_fix(
    root: str, user: str, lisbon: str
) -> None:
    with quiet_store(root) as older:
        conv = older.create_conversation(user, title="Porto")
        older.append_message(conv.id, "user", "francesinha")
        older.append_message(lisbon, "user", "bacalhau")
    with Store(root, durability="none") as store:
        assert ids(store, user, "francesinha") == []  # not seen: the index is stale
        problems = index_problems(store)
        assert len(problems) == 1 and "2 conversation(s)" in problems[0].detail
        assert not problems[0].fixed
        assert [p.fixed for p in index_problems(store, fix=True)] == [True]
        assert index_problems(store) == []
        assert ids(store, user, "francesinha") == [conv.id]
        assert ids(store, user, "bacalhau") == [lisbon]
        assert ids(store, user, "porto") == [conv.id]


def test_search_heals_hits_the_files_contradict(root: str, user: str, lisbon: str) -> None:
    with quiet_store(root) as older:
        older.update_conversation(lisbon, title="Braga")
        gone = older.create_conversation(user)
    with Store(root, durability="none") as store:
        store.append_message(gone.id, "user", "lisbon too")
        with quiet_store(root) as older:
            older.delete_conversation(lisbon)
            older.delete_conversation(gone.id, hard=True)
        assert ids(store, user, "lisbon") == []  # soft-deleted and gone: re-read, left out
        assert ids(store, user, "trip") == []  # the old title
        assert ids(store, user, "braga", include_deleted=True) == [lisbon]
        assert index_problems(store) == []


def test_check_reports_and_replaces_a_corrupt_index(root: str, user: str, lisbon: str) -> None:
    path = index_file(root)
    with Store(root, durability="none") as store:
        store.close()
        for suffix in ("-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        path.write_bytes(b"garbage" * 1000)
        (problem,) = index_problems(store, fix=True)
        assert problem.fixed and "unreadable" in problem.detail
    assert not path.exists()
    with Store(root, durability="none") as store:
        assert ids(store, user, "lisbon") == [lisbon]
        assert index_problems(store) == []


def test_check_rebuilds_an_fts_table_out_of_step(root: str, user: str, lisbon: str) -> None:
    with sqlite3.connect(index_file(root)) as conn:
        conn.execute("DELETE FROM messages")
    with Store(root, durability="none") as store:
        (problem,) = index_problems(store, fix=True)
        assert "full-text" in problem.detail
        assert ids(store, user, "lisbon") == [lisbon]
        assert index_problems(store) == []


# -- several processes and threads ----------------------------------------------------------

WRITER = textwrap.dedent(
    """
    import sys
    from chunkstore import Store

    root, conv_id, worker, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    with Store(root, durability="none", chunk_tokens=2, flush_interval=None) as store:
        for i in range(count):
            if i % 2:
                with store.stream_message(conv_id) as writer:
                    writer.append(f"streamed w{worker}x{i} ")
                    writer.append("done")
            else:
                store.append_message(conv_id, "user", f"appended w{worker}x{i}")
            store.search(store.get_conversation(conv_id).user_id, f"w{worker}x{i}")
    """
)


def test_processes_writing_and_searching_at_once(root: str, user: str, lisbon: str) -> None:
    workers, count = (4, 100) if STRESS else (3, 12)
    children = [
        subprocess.Popen([sys.executable, "-c", WRITER, root, lisbon, str(w), str(count)])
        for w in range(workers)
    ]
    with Store(root, durability="none") as reader:
        while any(child.poll() is None for child in children):
            reader.search(user, "w0x")
        assert [child.wait() for child in children] == [0] * workers
        for w in range(workers):
            for i in range(count):
                page = reader.search(user, f"w{w}x{i}")
                assert [hit.conversation.id for hit in page] == [lisbon], (w, i)
        assert reader.check() == []


def test_threads_writing_and_searching_at_once(store: Store, user: str) -> None:
    convs = [store.create_conversation(user).id for _ in range(4)]
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(15):
                store.append_message(convs[n], "user", f"thread t{n}n{i}")
                store.search(user, f"t{n}n{i}")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    for n in range(4):
        assert ids(store, user, f"t{n}n14") == [convs[n]]


# -- crashes --------------------------------------------------------------------------------

# Writes forever, printing each acknowledged write; SIGKILLs itself at its ``kill_at``-th index
# update, between the file write (done) and the index write (not done), if ``kill_at`` > 0.
CRASHER = textwrap.dedent(
    """
    import os, signal, sys
    from chunkstore import Store, _file_search

    root, durability, kill_at, run = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    convs = sys.argv[5:]
    calls = 0
    real = _file_search.FileSearch._apply

    def apply(self, conv, update):
        global calls
        calls += 1
        if calls == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(self, conv, update)

    _file_search.FileSearch._apply = apply
    store = Store(root, durability=durability, chunk_tokens=2, flush_interval=None)
    print("ready", flush=True)
    i = 0
    while True:
        conv = convs[i % len(convs)]
        if i % 5 == 4:
            store.update_conversation(conv, title=f"r{run}title{i}z")
        elif i % 5 == 3:
            with store.stream_message(conv) as writer:
                writer.append(f"r{run}stream{i}z ")
                writer.append("words")
        elif i % 5 == 2 and i > 10:
            store.delete_message(conv, store.messages(conv, limit=1)[0].id)
        else:
            store.append_message(conv, "user", f"r{run}word{i}z")
        print(i, flush=True)
        i += 1
    """
)

KILLS = 100 if STRESS else 6


def assert_index_matches_files(store: Store, user: str) -> None:
    """Every finished message and title on disk is found by its first word (unique), and
    ``check`` finds the index in step with the files."""
    for conv in store.list_conversations(user, limit=100):
        for message in store.messages(conv.id, limit=None):
            if message.status in ("complete", "error"):
                word = message.text.split()[0]
                hits = {(h.conversation.id, h.seq) for h in store.search(user, word, limit=100)}
                assert (conv.id, message.seq) in hits, (conv.id, message.seq, word)
        if conv.title:
            assert conv.id in ids(store, user, conv.title, limit=100)
    assert index_problems(store) == []


@pytest.mark.parametrize("durability", ["none", "chunk"])
def test_sigkill_between_the_file_write_and_the_index_write(root: str, durability: str) -> None:
    rng = random.Random(17)
    with Store(root, durability="none") as setup:
        user = setup.user_for("crash")
        convs = [setup.create_conversation(user, title="start").id for _ in range(3)]
        setup.search(user, "start")  # the index exists: the writer must keep it current
    # A reader opened before the crashes: it must catch up without reopening.
    with Store(root, durability="none") as reader:
        for kill in range(KILLS):
            kill_at = rng.randint(1, 12) if kill % 2 == 0 else 0
            child = subprocess.Popen(
                [sys.executable, "-c", CRASHER, root, durability, str(kill_at), str(kill), *convs],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            assert child.stdout is not None
            assert child.stdout.readline() == b"ready\n"
            if kill_at == 0:  # a kill at a random moment instead
                for _ in range(rng.randint(1, 15)):
                    child.stdout.readline()
                child.kill()
            assert child.wait() == -9, child.stderr.read() if child.stderr else None
            child.stdout.close()
            assert child.stderr is not None
            child.stderr.close()
            assert_index_matches_files(reader, user)
    with Store(root, durability="none") as fresh:
        assert_index_matches_files(fresh, user)
    assert os.listdir(Path(root, INDEX_DIR, "writers")) == []  # every dead lease caught up


def test_a_dead_lease_catches_up_only_what_changed_since_its_time(
    root: str, user: str, lisbon: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Store(root, durability="none") as store:
        old = [store.create_conversation(user, title=f"old {i}").id for i in range(5)]
    # Written an hour ago, as far as their directories' mtimes tell.
    hour_ago = time.time() - 3600
    for conv in [lisbon, *old]:
        conv_dir = Path(root, user, "data", "conversations", conv)
        for path in (conv_dir, conv_dir / "messages"):
            os.utime(path, (hour_ago, hour_ago))
    monkeypatch.setattr(_file_search, "_RENEW_NS", 0)
    crashed = Store(root, durability="none")
    crashed.append_message(old[0], "user", "moves the lease on")
    lease = os.listdir(Path(root, INDEX_DIR, "writers"))
    since = int(lease[0].split("-")[0])
    with monkeypatch.context() as patched:
        patched.setattr(FileSearch, "_apply", lambda self, conv, update: False)
        crashed.append_message(old[1], "user", "lost update")
    # The process dies without closing: its lease is no longer held.
    lease_handle = backend(crashed)._search._lease
    assert lease_handle is not None
    lease_handle.close()
    read: list[str] = []
    real = FileSearch._index_conversation

    def spy(self: FileSearch, conn: Any, conv: Any) -> None:
        read.append(str(conv))
        real(self, conn, conv)

    monkeypatch.setattr(FileSearch, "_index_conversation", spy)
    with Store(root, durability="none") as store:
        assert ids(store, user, "lost") == [old[1]]
    assert sorted(set(read)) == [old[0], old[1]]  # only those changed since the lease's time
    assert since > 0


def test_the_lease_moves_forward_only_with_no_write_in_flight(
    store: Store, lisbon: str, root: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_file_search, "_RENEW_NS", 0)
    search = backend(store)._search
    store.append_message(lisbon, "user", "one")
    first = search._lease_since
    search.begin()  # another thread's write in flight: the lease must stay before it
    other = threading.Thread(target=store.append_message, args=(lisbon, "user", "two"))
    other.start()
    other.join()
    assert search._lease_since == first
    store.append_message(lisbon, "user", "three")
    assert search._lease_since > first
    assert [n.split("-")[0] for n in os.listdir(Path(root, INDEX_DIR, "writers"))] == [
        str(search._lease_since)
    ]


def test_close_removes_the_lease(root: str, lisbon: str) -> None:
    assert os.listdir(Path(root, INDEX_DIR, "writers")) != []
    with Store(root, durability="none") as store:
        store.append_message(lisbon, "user", "x")
    # The fixture's store still holds its own lease; this one's is gone.
    assert len(os.listdir(Path(root, INDEX_DIR, "writers"))) == 1


def test_the_fts_query_quotes_every_term() -> None:
    assert _file_search.fts_query(["lisbon", 'a"b']) == '"lisbon"* "a""b"*'


def test_prefixes_short_long_expanded_and_not(store: Store, user: str) -> None:
    many = store.create_conversation(user)
    store.append_message(many.id, "user", " ".join(f"lisbon{i}" for i in range(40)))
    accents = store.create_conversation(user)
    store.append_message(accents.id, "user", "São João ÉVORA ﬁve")
    for query in ("l", "li", "lis", "lisb", "lisbon", "lisbon3", "lisbon39"):  # 40 words: a prefix
        assert ids(store, user, query) == [many.id], query
    for query in ("sã", "são", "joã", "joão", "évo", "évora", "fi", "five"):
        assert ids(store, user, query) == [accents.id], query
    for query in ("lisbonx", "lisbon399", "joãoo", "sa", "evora"):
        assert ids(store, user, query) == [], query
    assert ids(store, user, "lisbon1 lisbon2") == [many.id]


def test_durable_leases_and_renewals_sync(
    root: str, lisbon: str, user: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[str] = []
    real_fsync = _file_search._fsync_file
    monkeypatch.setattr(
        _file_search, "_fsync_file", lambda path: (synced.append(path), real_fsync(path))
    )
    monkeypatch.setattr(_file_search, "_RENEW_NS", 0)
    with Store(root, durability="chunk") as store:
        store.append_message(lisbon, "user", "first")
        search = backend(store)._search
        first = search._lease_since
        store.append_message(lisbon, "user", "second")
        assert search._lease_since > first
        assert synced and all(path.endswith("us01.sqlite3-wal") for path in synced)
        assert ids(store, user, "second") == [lisbon]


def test_many_users_share_a_bounded_pool_of_connections(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_file_search, "_OPEN_INDEXES", 2)
    users = [store.user_for(f"p{i}") for i in range(4)]
    convs = [store.create_conversation(u, title=f"mine {u}").id for u in users]
    for _ in range(2):
        for u, conv in zip(users, convs, strict=True):
            assert ids(store, u, "mine") == [conv]
    assert len(backend(store)._search._indexes) == 2


def test_a_lost_lease_is_not_fatal(
    store: Store, user: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: Any) -> Any:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(_file_search._locks, "hold_writer_lock", refuse)
    fresh = Store(store._backend.root, durability="none")  # type: ignore[attr-defined]
    conv = fresh.create_conversation(user, title="no lease")
    assert backend(fresh)._search._lease is None
    assert ids(fresh, user, "lease") == [conv.id]
    fresh.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX")
def test_a_forked_child_uses_its_own_connections_and_lease(
    store: Store, user: str, lisbon: str, root: str
) -> None:
    parent_lease = backend(store)._search._lease_path
    store.append_message(lisbon, "user", "before the fork")
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit status
        code = 1
        try:
            store.append_message(lisbon, "user", "from the child")
            ok = ids(store, user, "child") == [lisbon] and ids(store, user, "before") == [lisbon]
            ok = ok and backend(store)._search._lease_path != parent_lease
            store.close()
            code = 0 if ok else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert ids(store, user, "child") == [lisbon]
    assert ids(store, user, "fork") == [lisbon]
    assert os.path.exists(parent_lease)
    assert index_problems(store) == []
