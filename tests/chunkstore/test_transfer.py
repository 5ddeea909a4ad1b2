"""``_transfer`` and the file store's side of it: ``message_records`` is the exact inverse of
``rebuild_message`` (a property), and an imported conversation is indistinguishable on disk
from one written message by message (the format of users/README.md: sealed files, chunk files
of an interrupted message, tombstones, the segment, the user's counter, the session registry),
whole or absent after a crash mid-import.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest
from chunkstore_support import temp_files
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chunkstore import (
    ImportReport,
    InvalidArgument,
    Message,
    SkippedConversation,
    Store,
    UserNotFound,
    export_lines,
    import_lines,
)
from chunkstore._rebuild import message_records, rebuild_message
from chunkstore._transfer import dump_lines

# -- message_records is the inverse of rebuild_message ------------------------------------------

_text = st.text(max_size=20)
_times = st.sampled_from(
    ["", "2024-01-01T00:00:00.000000Z", "2024-01-01T00:00:01.500000Z", "2025-06-30T23:59:59Z"]
)
_json_scalars = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | _text
_json = st.recursive(
    _json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3),
    max_leaves=8,
)
_parts = st.lists(
    st.fixed_dictionaries({"type": st.just("text"), "text": _text})
    | st.fixed_dictionaries({"type": st.just("image_url"), "image_url": st.just({"url": "x"})}),
    max_size=3,
)


@st.composite
def messages(draw: st.DrawFn) -> Message:
    status = draw(st.sampled_from(["complete", "error", "interrupted", "streaming"]))
    final = status in ("complete", "error")
    created = draw(_times)
    return Message(
        id="us01-co02-ms03",
        seq=3,
        role=draw(st.sampled_from(["system", "developer", "user", "assistant", "tool"])),
        content=draw(_text | _parts | st.none()),
        status=status,
        created_at=created,
        completed_at=draw(st.none() | _times | st.just(created)) if final else None,
        agent_id=draw(st.none() | _text),
        finish_reason=draw(st.none() | _text),
        usage=draw(st.none() | st.dictionaries(_text, st.integers(0, 10**6), max_size=3)),
        tool_calls=draw(
            st.none() | st.lists(st.dictionaries(_text, _json, max_size=3), max_size=2)
        ),
        tool_call_id=draw(st.none() | _text),
        name=draw(st.none() | _text),
        error=draw(st.none() | _json),
        token_count=draw(st.integers(0, 10**6)),
        reply_to=draw(st.none() | st.integers(1, 10**18 - 1)),
    )


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(messages())
def test_message_records_is_the_inverse_of_rebuild(message: Message) -> None:
    records = message_records(message)
    rebuilt = rebuild_message(
        message.id, message.seq, records, writer_alive=message.status == "streaming"
    )
    assert rebuilt == message
    assert [r["seq"] for r in records] == list(range(1, len(records) + 1))
    assert all(r["messageId"] == message.id for r in records)
    # What the store writes: every record JSON (the records survive the round trip).
    assert json.loads(json.dumps(records)) == records


def test_records_of_a_final_message_end_in_its_terminal_record() -> None:
    message = Message("us01-co01-ms01", 1, "assistant", "hi", "complete", "t1", "t2")
    first, last = message_records(message)
    assert (first["status"], last["status"]) == ("streaming", "complete")
    assert (first["timestamp"], last["timestamp"]) == ("t1", "t2")
    (only,) = message_records(Message("us01-co01-ms01", 1, "user", "hi", "complete", "t", "t"))
    assert only["status"] == "complete"
    (cut,) = message_records(Message("us01-co01-ms01", 1, "assistant", "ha", "interrupted", "t"))
    assert cut["status"] == "streaming"


# -- the file store: an import is indistinguishable from a written conversation -----------------


def _digest(principal: str) -> str:
    return hashlib.sha256(principal.encode()).hexdigest()


def _written(store: Store) -> tuple[str, str]:
    """A user with a conversation of every kind of message; (user, conversation)."""
    user = store.user_for("alice")
    conv = store.create_conversation(user, "written", metadata={"a": "b"}, pinned=True)
    store.append_message(conv.id, "user", "question")
    with store.stream_message(conv.id, chunk_tokens=2, reply_to=1) as writer:
        for token in ("one ", "two ", "three"):
            writer.append(token)
        writer.finish(finish_reason="stop")
    gone = store.append_message(conv.id, "user", "deleted")
    store.delete_message(conv.id, gone.id)
    # One chunk: an import writes a message's content as one record (chunk boundaries are
    # not part of a Message), so the file names match the written ones exactly.
    cut = store.stream_message(conv.id, chunk_tokens=2)
    cut.append("cut ")
    cut.append("off")
    cut.abandon()
    return user, conv.id


def test_an_imported_conversation_has_the_files_of_a_written_one(tmp_path: Path) -> None:
    with Store(tmp_path / "a", durability="none") as source, Store(tmp_path / "b") as target:
        user, conv = _written(source)
        report = import_lines(target, export_lines(source))
        assert report.conversations_imported == 1
        names = lambda store: sorted(  # noqa: E731
            os.listdir(Path(store.root) / user / "data" / "conversations" / conv / "messages")
        )
        written, imported = names(source), names(target)
        assert imported == [n for n in written if not n.endswith(".lock")]
        assert f"{conv}-ms03.deleted" in imported  # the tombstone
        assert f"{conv}-ms04-001.json" in imported  # an interrupted message's chunks
        segment = Path(target.root) / user / "data" / "conversations" / conv / "segment.jsonl"
        assert len(segment.read_bytes().splitlines()) == 3  # the sealed ones, deleted included
        counter = json.loads((Path(target.root) / user / "user.json").read_bytes())
        assert counter["lastConversation"] == 1
        session = Path(target.root) / "sessions" / f"{_digest('alice')}.json"
        assert json.loads(session.read_bytes())["userId"] == user
        assert target.find_user("alice") == user
        assert target.check() == []
        assert temp_files(target.root) == []
        # A Store opened afterwards (nothing cached) reads the same.
        with Store(tmp_path / "b") as fresh:
            assert fresh.messages(conv, limit=None) == source.messages(conv, limit=None)
            assert fresh.get_conversation(conv) == source.get_conversation(conv)


def test_a_crash_mid_import_leaves_the_conversation_absent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Store(tmp_path / "a", durability="none") as source, Store(tmp_path / "b") as target:
        user, conv = _written(source)
        lines = list(export_lines(source))
        backend = type(target.backend)
        real = backend._write_messages

        def dies(self: Any, tmp: str, *args: Any) -> None:
            real(self, tmp, *args)
            raise KeyboardInterrupt  # after every file is written, before the rename

        monkeypatch.setattr(backend, "_write_messages", dies)
        with pytest.raises(KeyboardInterrupt):
            import_lines(target, lines)
        monkeypatch.undo()
        assert target.list_conversations(user, include_deleted=True).items == []
        assert temp_files(target.root) == []
        assert import_lines(target, lines).conversations_imported == 1
        assert target.messages(conv, limit=None) == source.messages(conv, limit=None)
        assert target.check() == []


def test_a_crash_between_sessions_and_user_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The session entries are written before the user directory: a crash between leaves
    entries naming a missing user, and the next import creates that user under them."""
    with Store(tmp_path / "a", durability="none") as source, Store(tmp_path / "b") as target:
        user, _ = _written(source)
        lines = list(export_lines(source))

        def dies(*args: Any, **kwargs: Any) -> Any:
            raise KeyboardInterrupt

        monkeypatch.setattr(type(target.backend), "_create_user", dies)
        with pytest.raises(KeyboardInterrupt):
            import_lines(target, lines)
        monkeypatch.undo()
        assert target.users() == []
        report = import_lines(target, lines)
        assert report.users_imported == 1 and report.mapped == {}
        assert target.find_user("alice") == user
        assert target.check() == []


def test_an_imported_number_below_the_counter_keeps_the_counter(store: Store) -> None:
    user = store.user_for("alice")
    for _ in range(3):
        store.create_conversation(user)
    store.delete_conversation(f"{user}-co02", hard=True)
    lines = list(export_lines(store, conversations=[f"{user}-co03"]))
    store.delete_conversation(f"{user}-co03", hard=True)
    # Restoring a conversation from its export brings back its own id.
    report = import_lines(store, lines)
    assert report.conversations_imported == 1 and report.mapped == {}
    assert store.create_conversation(user).id == f"{user}-co04"
    assert store.check() == []


def test_import_into_a_user_whose_counter_is_unreadable(store: Store) -> None:
    user = store.user_for("alice")
    conv = store.create_conversation(user, "kept")
    lines = list(export_lines(store))
    store.delete_conversation(conv.id, hard=True)
    (Path(store.root) / user / "user.json").write_text("not a record")
    assert import_lines(store, lines).conversations_imported == 1
    assert store.get_conversation(conv.id).title == "kept"
    assert store.create_conversation(user).id == f"{user}-co02"


def test_user_records_refuses_a_missing_user_and_reads_every_session(store: Store) -> None:
    from chunkstore import UserId

    user = store.user_for("alice")
    store.user_for("bob")
    assert store.backend.add_sessions(UserId.parse(user), [_digest("alice-2")]) == 1
    assert store.backend.add_sessions(UserId.parse(user), [_digest("alice-2")]) == 0
    (record,) = store.backend.user_records([UserId.parse(user)])
    assert record.sessions == sorted([_digest("alice"), _digest("alice-2")])
    with pytest.raises(UserNotFound):
        store.backend.user_records([UserId(9)])
    with pytest.raises(UserNotFound):
        store.backend.add_sessions(UserId(9), [])


def test_import_to_a_missing_user_or_without_a_target(store: Store) -> None:
    with pytest.raises(UserNotFound):
        import_lines(store, [], user="us07")
    foreign = {
        "type": "conversation",
        "id": None,
        "user_id": None,
        "title": None,
        "created_at": "2024-01-01T00:00:00Z",
        "updated_at": "2024-01-01T00:00:00Z",
        "metadata": {"source": "chatgpt"},
        "last_seq": 0,
    }
    user = store.user_for("x")
    # A converted conversation that does not hold is reported, not imported, not fatal.
    (skipped,) = import_lines(store, [foreign], user=user).skipped
    assert "needs metadata 'source' and 'source_id'" in skipped.reason
    assert store.list_conversations(user).items == []


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"status": "done"}, "status must be one of"),
        ({"status": "interrupted", "completed_at": "2024-01-01T00:00:00Z"}, "completed_at"),
        ({"created_at": "yesterday"}, "ISO 8601"),
        ({"usage": [1]}, "usage must be an object"),
        ({"tool_calls": {"a": 1}}, "tool_calls must be a list"),
        ({"reply_to": 0}, "reply_to must be an integer >= 1"),
        ({"agent_id": 5}, "agent_id must be a string"),
        ({"role": "robot"}, "role must be one of"),
        ({"content": [1]}, "content must be"),
        ({"id": "us01-co01-ms07"}, "message id must be us01-co01-ms01"),
        ({"conversation_id": "us01-co02"}, "conversation_id must be"),
        ({"surprise": 1}, "unknown field"),
        ({"deleted": "yes"}, "deleted must be true or false"),
        ({"token_count": -1}, "token_count must be an integer"),
    ],
)
def test_a_bad_message_line_is_refused_with_its_number(
    store: Store, change: dict[str, Any], message: str
) -> None:
    user = store.user_for("alice")
    conv = store.create_conversation(user, "c")
    store.append_message(conv.id, "user", "hi")
    lines = list(export_lines(store))
    store.delete_conversation(conv.id, hard=True)
    lines[3] = {**lines[3], **change}
    with pytest.raises(InvalidArgument, match=f"line 4: .*{message}"):
        import_lines(store, lines)
    assert store.list_conversations(user, include_deleted=True).items == []


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"pinned": "yes"}, "pinned must be true or false"),
        ({"title": "x" * 600}, "title"),
        ({"last_seq": 0}, "last_seq 0 is below message seq 1"),
        ({"id": "us01-co1"}, "not a conversation id"),
        ({"id": None}, "has no user_id"),
        ({"deleted_at": 5}, "deleted_at must be an ISO 8601 time"),
    ],
)
def test_a_bad_conversation_line_is_refused_with_its_number(
    store: Store, change: dict[str, Any], message: str
) -> None:
    user = store.user_for("alice")
    conv = store.create_conversation(user, "c")
    store.append_message(conv.id, "user", "hi")
    lines = [json.dumps(line) for line in export_lines(store)]
    store.delete_conversation(conv.id, hard=True)
    lines[2] = json.dumps({**json.loads(lines[2]), **change})
    with pytest.raises(InvalidArgument, match=f"line 3: .*{message}"):
        import_lines(store, ["", *lines[1:]])


def test_messages_must_be_in_seq_order(store: Store) -> None:
    user = store.user_for("alice")
    conv = store.create_conversation(user, "c")
    store.append_message(conv.id, "user", "one")
    store.append_message(conv.id, "user", "two")
    lines = list(export_lines(store))
    store.delete_conversation(conv.id, hard=True)
    lines[3], lines[4] = lines[4], lines[3]
    with pytest.raises(InvalidArgument, match="line 5: message seq 1 after seq 2"):
        import_lines(store, lines)
    with pytest.raises(InvalidArgument, match="appears twice"):
        import_lines(store, [lines[1], lines[1]])
    with pytest.raises(InvalidArgument, match="not a JSON object"):
        import_lines(store, [b"[1]"])


def test_dump_lines_mark_every_seq_not_live_as_deleted(store: Store) -> None:
    user = store.user_for("alice")
    conv = store.create_conversation(user)
    for text in ("a", "b", "c"):
        store.append_message(conv.id, "user", text)
    store.delete_message(conv.id, f"{conv.id}-ms02")
    lines = dump_lines(store.backend.dump_conversation(_cid(conv.id)))
    assert [(line.get("seq"), line.get("deleted", False)) for line in lines[1:]] == [
        (1, False),
        (2, True),
        (3, False),
    ]
    assert lines[0]["last_seq"] == 3


def _cid(text: str) -> Any:
    from chunkstore import ConversationId

    return ConversationId.parse(text)


def test_report_summary_and_skipped_text() -> None:
    report = ImportReport(users_imported=1, conversations_imported=2, messages_imported=5)
    report.skipped.append(SkippedConversation("abc", "A title", "no messages"))
    assert report.summary().startswith("1 user(s) created (0 already there), 2 conversation(s)")
    assert "1 foreign conversation(s) skipped" in report.summary()
    assert str(report.skipped[0]) == "skipped abc ('A title'): no messages"
    assert str(SkippedConversation(None, None, "why")) == "skipped ?: why"
    report.conversations_verified = 2
    assert report.summary().endswith("2 conversation(s) verified")
