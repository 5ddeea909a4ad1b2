"""Export, import and copy (``chunkstore._transfer``) on every backend, and between them.

The round trip the issue asks for: a store holding every kind of message (streamed in many
chunks, tool calls, agent ids, usage, errors, interrupted, deleted messages, soft-deleted and
pinned conversations, metadata, reply_to) copied file → SQLite → PostgreSQL → file rebuilds
identically: ``messages()`` and ``get_conversation()`` equal, the same principal finds the same
user id. Then per backend: importing twice changes nothing, a clash is mapped and reported, an
interrupted copy resumes, an imported conversation goes on (seqs, numbers never reused), and
``check()`` finds nothing to say about what an import wrote.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pg_server  # on sys.path through this directory's conftest
import pytest
from conformance_support import open_store

from chunkstore import (
    ChunkstoreError,
    InvalidArgument,
    Store,
    TransferMismatch,
    UserId,
    copy_store,
    export_lines,
    import_lines,
)
from chunkstore._transfer import foreign_lines

PRINCIPALS = ("alice-session", "alice-phone", "bob-session", "carol-session")


def fill(store: Store) -> dict[str, str]:
    """Every kind of message and conversation; the principals' user ids."""
    alice = store.user_for("alice-session")
    bob = store.user_for("bob-session")
    carol = store.user_for("carol-session")  # a user without conversations
    # Alice's phone session is a second principal of the same user.
    alice_phone_digest = _digest("alice-phone")
    store.backend.add_sessions(_uid(alice), [alice_phone_digest])

    rich = store.create_conversation(
        alice,
        "Trip to Porto — ünïcode ✈",
        metadata={"project": "travel", "lang": "pt"},
        participants=["planner", "critic"],
        pinned=True,
    )
    store.append_message(rich.id, "system", "You are terse.")
    question = store.append_message(rich.id, "user", "Plan a trip")
    with store.stream_message(
        rich.id, agent_id="planner", chunk_tokens=3, reply_to=question.seq
    ) as writer:
        for i in range(20):
            writer.append(f"tok{i} ")
        writer.finish(finish_reason="stop", usage={"prompt_tokens": 7, "completion_tokens": 20})
    store.append_message(
        rich.id,
        "assistant",
        None,
        agent_id="critic",
        tool_calls=[
            {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
        ],
        finish_reason="tool_calls",
    )
    store.append_message(rich.id, "tool", "42", tool_call_id="call_1", name="f")
    store.append_message(
        rich.id,
        "user",
        [{"type": "text", "text": "structured"}, {"type": "image_url", "image_url": {"url": "x"}}],
    )
    failed = store.stream_message(rich.id, agent_id="planner", chunk_tokens=2)
    failed.append("half ")
    failed.append("an answer")
    failed.fail({"code": "upstream_timeout", "message": "slow"})
    doomed = store.append_message(rich.id, "user", "delete me")
    store.delete_message(rich.id, doomed.id)
    cut = store.stream_message(rich.id, chunk_tokens=2)
    for token in ("cut ", "short ", "here"):
        cut.append(token)
    cut.flush()
    cut.abandon()  # the writer goes away without sealing: interrupted
    store.append_message(rich.id, "user", "after the interruption", reply_to=question.seq)

    gone = store.create_conversation(alice, "soft-deleted")
    store.append_message(gone.id, "user", "hidden")
    store.delete_conversation(gone.id)

    removed = store.create_conversation(alice, "hard-deleted: its number stays spent")
    store.delete_conversation(removed.id, hard=True)

    store.create_conversation(bob, None)  # empty, untitled
    last_deleted = store.create_conversation(bob, "ends in a deleted message")
    store.append_message(last_deleted.id, "user", "one")
    tail = store.append_message(last_deleted.id, "user", "two")
    store.delete_message(last_deleted.id, tail.id)
    return {"alice": alice, "bob": bob, "carol": carol}


def _uid(user: str) -> UserId:
    return UserId.parse(user)


def _digest(principal: str) -> str:
    return hashlib.sha256(principal.encode()).hexdigest()


def snapshot(store: Store) -> dict[str, Any]:
    """Everything a reader can see: users, conversations (deleted ones too) and messages."""
    out: dict[str, Any] = {"users": store.users()}
    for user in store.users():
        page = store.list_conversations(user, limit=1000, include_deleted=True)
        for conv in page.items:
            out[conv.id] = (
                store.get_conversation(conv.id),
                store.messages(conv.id, limit=None),
                store.message_count(conv.id),
            )
    out["principals"] = {p: store.find_user(p) for p in PRINCIPALS}
    return out


def test_file_sqlite_postgresql_file_rebuilds_identically(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    urls = [
        str(tmp_path_factory.mktemp("file") / "store"),
        f"sqlite:{tmp_path_factory.mktemp('sqlite') / 'chat.db'}",
        pg_server.fresh_schema(),
        str(tmp_path_factory.mktemp("file") / "store"),
    ]
    stores = [open_store(url) for url in urls]
    try:
        fill(stores[0])
        before = snapshot(stores[0])
        for source, destination in itertools.pairwise(stores):
            report = copy_store(source, destination)
            assert report.mapped == {}
            assert report.conversations_verified == report.conversations_imported == 4
            assert snapshot(destination) == before
            assert destination.check() == []
        # The lines themselves, but for the header's time and source, are the same too.
        first = list(export_lines(stores[0]))[1:]
        last = list(export_lines(stores[-1]))[1:]
        assert first == last
    finally:
        for store in stores:
            store.close()


def test_import_twice_changes_nothing(make_url: Callable[[], str]) -> None:
    with open_store(make_url()) as source, open_store(make_url()) as target:
        fill(source)
        lines = list(export_lines(source))
        first = import_lines(target, lines)
        assert first.conversations_imported == 4 and first.users_imported == 3
        after_first = snapshot(target)
        second = import_lines(target, lines)
        assert second.conversations_imported == 0 and second.users_imported == 0
        assert second.conversations_identical == 4 and second.users_existing == 3
        assert second.mapped == {}
        assert snapshot(target) == after_first == snapshot(source)
        assert target.check() == []


def test_an_imported_conversation_goes_on(make_url: Callable[[], str]) -> None:
    with open_store(make_url()) as source, open_store(make_url()) as target:
        users = fill(source)
        import_lines(target, export_lines(source))
        alice = target.find_user("alice-session")
        assert alice == users["alice"]
        rich = target.list_conversations(alice, include_deleted=True).items[-1]
        # The seq after the last claimed one (the interrupted and deleted ones stay claimed).
        last = source.messages(rich.id, limit=None)[-1].seq
        assert target.append_message(rich.id, "user", "more").seq == last + 1
        # Numbers are never reused: alice had three (the third hard-deleted).
        assert target.create_conversation(alice).id == f"{alice}-co04"
        # Deleted messages stay deleted, and their seqs claimed.
        bob_conv = f"{users['bob']}-co02"
        assert [m.seq for m in target.messages(bob_conv)] == [1]
        assert target.append_message(bob_conv, "user", "three").seq == 3
        # A new principal gets a new user, after every imported one.
        assert target.user_for("dave") == "us04"
        assert target.check() == []


def test_a_clash_is_mapped_and_reported_once(make_url: Callable[[], str]) -> None:
    with open_store(make_url()) as source, open_store(make_url()) as target:
        alice = source.user_for("alice-session")
        conv = source.create_conversation(alice, "from the source")
        source.append_message(conv.id, "user", "hello")
        # The target already has us01-co01 for the same person, with other content.
        assert target.user_for("alice-session") == alice
        mine = target.create_conversation(alice, "already here")
        assert mine.id == conv.id
        lines = list(export_lines(source))
        report = import_lines(target, lines, verify=True)
        assert report.mapped == {conv.id: f"{alice}-co02"}
        assert target.get_conversation(conv.id).title == "already here"
        copied = target.get_conversation(f"{alice}-co02")
        assert copied.title == "from the source"
        assert copied.created_at == conv.created_at
        assert [m.text for m in target.messages(copied.id)] == ["hello"]
        again = import_lines(target, lines)
        assert again.conversations_imported == 0 and again.conversations_identical == 1
        assert again.mapped == {conv.id: f"{alice}-co02"}
        assert len(target.list_conversations(alice)) == 2


def test_a_user_number_taken_by_someone_else_is_mapped(make_url: Callable[[], str]) -> None:
    with open_store(make_url()) as source, open_store(make_url()) as target:
        alice = source.user_for("alice-session")
        source.create_conversation(alice, "alice's")
        assert target.user_for("zed-session") == alice  # us01 is someone else there
        report = import_lines(target, export_lines(source))
        moved = target.find_user("alice-session")
        assert moved == "us02" and report.mapped[alice] == moved
        assert report.mapped[f"{alice}-co01"] == f"{moved}-co01"
        assert target.list_conversations(alice).items == []  # zed sees nothing of alice's
        assert import_lines(target, export_lines(source)).conversations_imported == 0


def test_an_interrupted_copy_resumes(make_url: Callable[[], str]) -> None:
    with open_store(make_url()) as source, open_store(make_url()) as target:
        fill(source)

        class Boom(Exception):
            pass

        def fail_after_two(done: int, total: int) -> None:
            assert total == 4
            if done == 2:
                raise Boom

        with pytest.raises(Boom):
            copy_store(source, target, progress=fail_after_two)
        assert target.check() == []
        seen: list[tuple[int, int]] = []
        report = copy_store(source, target, progress=lambda d, t: seen.append((d, t)))
        assert seen[0] == (0, 4) and seen[-1] == (4, 4)
        assert report.conversations_identical == 2 and report.conversations_imported == 2
        assert snapshot(target) == snapshot(source)


def test_copy_verifies_and_names_the_conversation(
    make_url: Callable[[], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with open_store(make_url()) as source, open_store(make_url()) as target:
        alice = source.user_for("alice-session")
        conv = source.create_conversation(alice, "checked")
        source.append_message(conv.id, "user", "the words")
        real = type(target.backend).import_conversation

        def lossy(self: Any, user: Any, number: Any, data: Any) -> Any:
            from dataclasses import replace

            return real(
                self,
                user,
                number,
                replace(data, conversation=replace(data.conversation, title="oops")),
            )

        monkeypatch.setattr(type(target.backend), "import_conversation", lossy)
        with pytest.raises(TransferMismatch, match=f"{conv.id}.*title"):
            copy_store(source, target)


def test_foreign_conversations_go_to_the_given_user_once(make_url: Callable[[], str]) -> None:
    with open_store(make_url()) as target:
        user = target.user_for("importer")
        converted: list[Any] = [
            [
                {
                    "type": "conversation",
                    "id": None,
                    "user_id": None,
                    "title": "From ChatGPT",
                    "created_at": "2024-01-02T03:04:05.000000Z",
                    "updated_at": "2024-01-02T03:05:00.000000Z",
                    "pinned": False,
                    "metadata": {"source": "chatgpt", "source_id": "abc"},
                    "participants": [],
                    "deleted_at": None,
                    "last_seq": 2,
                },
                {
                    "type": "message",
                    "conversation_id": None,
                    "id": None,
                    "seq": 1,
                    "role": "user",
                    "content": "hi",
                    "status": "complete",
                    "created_at": "2024-01-02T03:04:05.000000Z",
                    "completed_at": "2024-01-02T03:04:05.000000Z",
                    "token_count": 1,
                },
                {
                    "type": "message",
                    "conversation_id": None,
                    "id": None,
                    "seq": 2,
                    "role": "assistant",
                    "content": "hello",
                    "status": "complete",
                    "created_at": "2024-01-02T03:04:06.000000Z",
                    "completed_at": "2024-01-02T03:04:09.000000Z",
                    "finish_reason": "stop",
                    "token_count": 1,
                },
            ],
            _Skipped("xyz", "Empty one", "no messages"),
        ]
        from chunkstore import ImportReport

        report = ImportReport()
        import_lines(
            target, foreign_lines(converted, report), user=user, report=report, verify=True
        )
        assert report.conversations_imported == 1 and report.messages_imported == 2
        assert [(s.source_id, s.reason) for s in report.skipped] == [("xyz", "no messages")]
        (conv,) = target.list_conversations(user).items
        assert conv.id == f"{user}-co01" and conv.metadata["source_id"] == "abc"
        messages = target.messages(conv.id)
        assert [(m.role, m.text, m.completed_at) for m in messages] == [
            ("user", "hi", "2024-01-02T03:04:05.000000Z"),
            ("assistant", "hello", "2024-01-02T03:04:09.000000Z"),
        ]
        again = ImportReport()
        import_lines(target, foreign_lines(converted, again), user=user, report=again)
        assert again.conversations_imported == 0 and again.conversations_identical == 1
        with pytest.raises(InvalidArgument, match="needs a target user"):
            import_lines(target, foreign_lines(converted, ImportReport()))
        # A converted conversation that does not hold is skipped and reported, the rest go in.
        broken = [
            {
                **converted[0][0],
                "last_seq": 0,
                "metadata": {"source": "chatgpt", "source_id": "bad"},
            },
            *converted[0][1:],
        ]
        fixed = ImportReport()
        import_lines(target, foreign_lines([broken], fixed), user=user, report=fixed)
        (skipped,) = fixed.skipped
        assert (skipped.source_id, skipped.title) == ("bad", "From ChatGPT")
        assert "last_seq 0 is below message seq 2" in skipped.reason
        assert fixed.conversations_imported == 0
        assert target.check() == []


class _Skipped:
    def __init__(self, source_id: str, title: str, reason: str) -> None:
        self.source_id, self.title, self.reason = source_id, title, reason


def test_bad_lines_are_refused_by_number(store: Store) -> None:
    header = {"type": "export", "format": "chunkstore-export", "version": 1}
    cases: list[tuple[list[Any], str]] = [
        ([{**header, "version": 2}], "line 1: unknown export format"),
        ([b"{not json"], "line 1: not JSON"),
        ([header, header], "line 2: the export header must be the first line"),
        ([header, {"type": "message"}], "line 2: a message line before"),
        ([header, {"type": "nope"}], "unknown line type"),
        ([header, {"type": "user", "id": "us1", "created_at": "x", "sessions": []}], "not a"),
        (
            [
                header,
                {
                    "type": "user",
                    "id": "us01",
                    "created_at": "2024-01-01T00:00:00Z",
                    "sessions": ["../x"],
                },
            ],
            "SHA-256",
        ),
        (
            [header, {"type": "conversation", "id": "us01-co01", "user_id": "us02"}],
            "user_id must be us01",
        ),
    ]
    for lines, message in cases:
        with pytest.raises(ChunkstoreError, match=message):
            import_lines(store, lines)
    assert store.users() == []


def test_export_of_chosen_conversations_and_users(store: Store) -> None:
    users = fill(store)
    bob_lines = list(export_lines(store, users=[users["bob"]]))
    assert [line["type"] for line in bob_lines[:3]] == ["export", "user", "conversation"]
    assert {line["id"] for line in bob_lines if line["type"] == "user"} == {users["bob"]}
    one = list(export_lines(store, conversations=[f"{users['alice']}-co02"]))
    assert [line["type"] for line in one] == ["export", "user", "conversation", "message"]
    assert one[1]["sessions"] == sorted([_digest("alice-session"), _digest("alice-phone")])
    with pytest.raises(ChunkstoreError):
        export_lines(store, conversations=["us09-co01"])
    with pytest.raises(ChunkstoreError):
        export_lines(store, users=["us09"])


def test_old_exports_without_header_or_user_lines_import(store: Store, tmp_path: Path) -> None:
    lines = [
        {
            "type": "conversation",
            "id": "us03-co02",
            "user_id": "us03",
            "title": "old",
            "created_at": "2024-01-01T00:00:00.000000Z",
            "updated_at": "2024-01-01T00:00:00.000000Z",
            "pinned": False,
            "metadata": {},
            "participants": [],
            "deleted_at": None,
            "damaged": False,
        },
        {
            "type": "message",
            "conversation_id": "us03-co02",
            "id": "us03-co02-ms01",
            "seq": 1,
            "role": "user",
            "content": "hi",
            "status": "streaming",
            "created_at": "2024-01-01T00:00:00.000000Z",
            "completed_at": None,
            "token_count": 1,
            "damaged": False,
        },
    ]
    report = import_lines(store, lines)
    assert report.users_imported == 1 and report.conversations_imported == 1
    (message,) = store.messages("us03-co02")
    assert message.status == "interrupted"  # no writer of it is alive here
    assert store.users() == ["us03"]
    assert store.check() == []


def test_retention_sees_the_imported_times(make_url: Callable[[], str]) -> None:
    """An old conversation imported today is as old as it was: a sweep judges it by its own
    times (the file store's ``messages/`` mtime, the SQL backends' ``last_message_at``)."""
    with open_store(make_url()) as target:
        user = target.user_for("importer")
        lines = [
            {
                "type": "conversation",
                "id": None,
                "user_id": None,
                "title": "old",
                "created_at": "2024-01-01T00:00:00.000000Z",
                "updated_at": "2024-01-01T00:00:00.000000Z",
                "metadata": {"source": "chatgpt", "source_id": "old"},
                "last_seq": 1,
            },
            {
                "type": "message",
                "conversation_id": None,
                "id": None,
                "seq": 1,
                "role": "user",
                "content": "long ago",
                "status": "complete",
                "created_at": "2024-02-01T00:00:00.000000Z",
                "completed_at": "2024-02-01T00:00:00.000000Z",
            },
        ]
        import_lines(target, lines, user=user)
        expired = target.sweep_retention(days=30, now=datetime(2024, 3, 15, tzinfo=UTC))
        assert expired == [f"{user}-co01"]
        assert target.sweep_retention(days=30, now=datetime(2024, 2, 20, tzinfo=UTC)) == []


def test_the_seam_refuses_what_is_taken_or_missing(store: Store) -> None:
    """The backend methods an import stands on: a taken number is None (nothing written), a
    missing user or conversation the usual errors, a digest keeps its user."""
    from chunkstore import ConversationId, ConversationNotFound, UserNotFound
    from chunkstore._backend import ConversationImport

    backend = store.backend
    alice = store.user_for("alice")
    taken = UserId.parse(alice)
    assert backend.import_user(taken, created_at="2024-01-01T00:00:00Z", sessions=[]) is None
    assert store.users() == [alice]
    # A digest already registered keeps its user; the new user gets the others.
    new = backend.import_user(
        UserId(5),
        created_at="2024-01-01T00:00:00Z",
        sessions=[_digest("alice"), _digest("eve")],
        last_conversation=7,
    )
    assert new == "us05"
    assert (store.find_user("alice"), store.find_user("eve")) == (alice, "us05")
    (record,) = backend.user_records([UserId(5)])
    assert (record.sessions, record.last_conversation) == ([_digest("eve")], 7)
    assert store.create_conversation("us05").id == "us05-co08"
    assert store.user_for("frank") == "us06"
    empty = ConversationImport(store.get_conversation("us05-co08"), 0, [])
    for call in (
        lambda: backend.user_records([UserId(9)]),
        lambda: backend.add_sessions(UserId(9), [_digest("x")]),
        lambda: backend.import_conversation(UserId(9), None, empty),
        lambda: backend.import_conversation(UserId(9), 3, empty),
    ):
        with pytest.raises(UserNotFound):
            call()
    assert backend.import_conversation(UserId(5), 8, empty) is None
    assert backend.import_conversation(UserId(5), None, empty) == "us05-co09"
    with pytest.raises(ConversationNotFound):
        backend.dump_conversation(ConversationId(5, 42))
