"""``chunkstore import`` and ``chunkstore copy`` (and the export they read), in process.

The lines themselves are ``_transfer``'s (tests/chunkstore/test_transfer.py and the
conformance suite); here: what a user sees — stores created when plainly absent, summaries
and mappings on stderr, skipped foreign conversations never silent, exit codes, progress bars
only on a terminal.
"""

from __future__ import annotations

import io
import sys
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from chunkstore import Store
from chunkstore.cli import main


class Ran:
    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err


Run = Callable[..., Ran]


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str]) -> Run:
    def call(*argv: str) -> Ran:
        code = main(list(argv))
        captured = capsys.readouterr()
        return Ran(code, captured.out, captured.err)

    return call


@pytest.fixture
def source(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path / "src", durability="none") as store:
        user = store.user_for("session-a")
        conv = store.create_conversation(user, "hello", pinned=True)
        store.append_message(conv.id, "user", "hi")
        with store.stream_message(conv.id, agent_id="bot", reply_to=1) as writer:
            writer.append("hello ")
            writer.append("back")
            writer.finish(finish_reason="stop")
        other = store.create_conversation(user, "soft-deleted")
        store.delete_conversation(other.id)
        yield store


def test_export_then_import_into_a_new_sqlite_database(
    source: Store, run: Run, tmp_path: Path
) -> None:
    backup = tmp_path / "backup.jsonl"
    assert run("--root", source.root, "export", "-o", str(backup)).code == 0
    url = f"sqlite:{tmp_path / 'new.db'}"
    r = run("--db-url", url, "import", str(backup))
    assert r.code == 0, r.err
    assert "created a new store at" in r.err
    assert "import: 1 user(s) created (0 already there), 2 conversation(s) imported" in r.err
    with Store(url) as target:
        assert target.find_user("session-a") == "us01"
        assert target.messages("us01-co01") == source.messages("us01-co01")
        assert target.get_conversation("us01-co02") == source.get_conversation("us01-co02")
    again = run("--db-url", url, "import", str(backup), "--verify")
    assert again.code == 0
    assert "0 conversation(s) imported" in again.err
    assert "2 conversation(s) already there (skipped)" in again.err
    assert "created a new store" not in again.err


def test_import_from_stdin_into_a_missing_file_store(
    source: Store, run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    exported = run("--root", source.root, "-q", "export").out
    monkeypatch.setattr(sys, "stdin", io.StringIO(exported))
    r = run("--root", str(tmp_path / "fresh"), "-q", "import", "-")
    assert (r.code, r.err) == (0, "")
    with Store(tmp_path / "fresh") as target:
        assert target.messages("us01-co01") == source.messages("us01-co01")
        assert target.check() == []


def test_import_refuses_what_it_must_not_create(source: Store, run: Run, tmp_path: Path) -> None:
    backup = tmp_path / "backup.jsonl"
    run("--root", source.root, "-q", "export", "-o", str(backup))
    stranger = tmp_path / "documents"
    stranger.mkdir()
    (stranger / "taxes.pdf").write_text("x")
    r = run("--root", str(stranger), "import", str(backup))
    assert r.code == 2 and "it has no FORMAT file" in r.err
    assert sorted(p.name for p in stranger.iterdir()) == ["taxes.pdf"]
    r = run("--db-url", f"sqlite:{tmp_path / 'nowhere' / 'x.db'}", "import", str(backup))
    assert r.code == 2 and "no such directory" in r.err
    # An empty directory is a store waiting to be made.
    (tmp_path / "empty").mkdir()
    assert run("--root", str(tmp_path / "empty"), "import", str(backup)).code == 0


def test_import_errors_name_the_line(run: Run, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"type":"export","format":"chunkstore-export","version":1}\n{oops\n')
    r = run("--root", str(tmp_path / "s"), "import", str(bad))
    assert r.code == 2
    assert "chunkstore: error: line 2: not JSON" in r.err
    newer = tmp_path / "newer.jsonl"
    newer.write_bytes(b'{"type":"export","format":"chunkstore-export","version":9}\n')
    r = run("--root", str(tmp_path / "s"), "import", str(newer))
    assert r.code == 2 and "version 9" in r.err
    r = run("--root", str(tmp_path / "s"), "import", str(tmp_path / "missing.jsonl"))
    assert r.code == 1 and "No such file" in r.err
    assert run("--root", str(tmp_path / "s"), "import").code == 2
    r = run("--root", str(tmp_path / "s"), "import", str(bad), "--chatgpt", str(bad))
    assert r.code == 2 and "not both" in r.err


def test_a_clash_is_printed(source: Store, run: Run, tmp_path: Path) -> None:
    backup = tmp_path / "backup.jsonl"
    run("--root", source.root, "-q", "export", "-o", str(backup))
    with Store(tmp_path / "dst") as target:
        user = target.user_for("session-a")
        target.create_conversation(user, "mine")
    r = run("--root", str(tmp_path / "dst"), "import", str(backup))
    assert r.code == 0
    # us01-co01 is taken, so it becomes the next free number, which then pushes the
    # exported us01-co02 on: every mapping is printed.
    assert "us01-co01 -> us01-co02 (its id was taken in the destination)\n" in r.err
    assert "us01-co02 -> us01-co03 (its id was taken in the destination)\n" in r.err
    assert "2 id(s) mapped" in r.err


def test_copy_between_backends_resumes_and_verifies(
    source: Store, run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:{tmp_path / 'copy.db'}"
    r = run("copy", source.root, url)
    assert r.code == 0, r.err
    assert "copy: 1 user(s) created" in r.err and "2 conversation(s) verified" in r.err
    r = run("copy", f"file:{source.root}", url, "-q")
    assert (r.code, r.err) == (0, "")
    back = tmp_path / "back"
    assert run("copy", url, str(back), "-q").code == 0
    with Store(back) as target:
        assert target.messages("us01-co01") == source.messages("us01-co01")
    # A progress bar on a terminal only.
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert "conv" in run("copy", source.root, str(tmp_path / "third")).err
    assert run("copy", "-q", source.root, str(tmp_path / "fourth")).err == ""


def test_copy_refuses_a_missing_source_and_itself(source: Store, run: Run, tmp_path: Path) -> None:
    r = run("copy", str(tmp_path / "nothing"), str(tmp_path / "dst"))
    assert r.code == 2 and "no such directory" in r.err
    assert not (tmp_path / "dst").exists()
    r = run("copy", source.root, f"file:{source.root}")
    assert r.code == 2 and "the same store" in r.err
    r = run("copy", f"sqlite:{tmp_path / 'a.db'}", f"sqlite:{tmp_path / 'b.db'}")
    assert r.code == 2 and "no such file" in r.err


# -- --chatgpt / --openwebui, through chunkstore._foreign -------------------------------------------


def _converted(source_id: str, title: str) -> list[dict[str, Any]]:
    return [
        {
            "type": "conversation",
            "id": None,
            "user_id": None,
            "title": title,
            "created_at": "2024-03-01T10:00:00.000000Z",
            "updated_at": "2024-03-01T10:01:00.000000Z",
            "pinned": False,
            "metadata": {"source": "chatgpt", "source_id": source_id},
            "participants": [],
            "deleted_at": None,
            "last_seq": 1,
        },
        {
            "type": "message",
            "conversation_id": None,
            "id": None,
            "seq": 1,
            "role": "user",
            "content": f"{title}?",
            "status": "complete",
            "created_at": "2024-03-01T10:00:00.000000Z",
            "completed_at": "2024-03-01T10:00:00.000000Z",
            "agent_id": None,
            "finish_reason": None,
            "usage": None,
            "tool_calls": None,
            "tool_call_id": None,
            "name": None,
            "error": None,
            "token_count": 1,
            "reply_to": None,
        },
    ]


class _Skipped:
    def __init__(self, source_id: str | None, title: str | None, reason: str) -> None:
        self.source_id, self.title, self.reason = source_id, title, reason


@pytest.fixture
def foreign(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """A stand-in ``chunkstore._foreign`` (written by another engineer): each reader checks
    it was given the parsed JSON and yields two conversations and one skipped."""
    seen: list[Any] = []

    def reader(data: object) -> Iterator[Any]:
        seen.append(data)
        yield _converted("c-1", "First")
        yield _Skipped("c-2", "Empty", "no messages")
        yield _converted("c-3", "Third")

    module = types.ModuleType("chunkstore._foreign")
    module.read_chatgpt = reader  # type: ignore[attr-defined]
    module.read_openwebui = reader  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "chunkstore._foreign", module)
    import chunkstore

    monkeypatch.setattr(chunkstore, "_foreign", module, raising=False)
    return seen


def test_chatgpt_import_reports_every_skip_and_is_idempotent(
    foreign: list[Any], run: Run, tmp_path: Path
) -> None:
    export = tmp_path / "conversations.json"
    export.write_bytes(orjson.dumps([{"id": "c-1"}]))
    root = str(tmp_path / "store")
    r = run("--root", root, "-q", "import", "--chatgpt", str(export), "--principal", "me")
    assert r.code == 0
    assert foreign == [[{"id": "c-1"}]]
    # Never silent, even with --quiet.
    assert r.err == "chunkstore: skipped c-2 ('Empty'): no messages\n"
    with Store(root) as store:
        user = store.find_user("me")
        assert user is not None
        titles = [c.title for c in store.list_conversations(user)]
        assert titles == ["Third", "First"]
    r = run("--root", root, "import", "--openwebui", str(export), "--user", "us01")
    assert r.code == 0
    assert "0 conversation(s) imported" in r.err
    assert "2 conversation(s) already there (skipped)" in r.err
    assert "1 foreign conversation(s) skipped" in r.err


def test_chatgpt_import_needs_a_user_and_json(foreign: list[Any], run: Run, tmp_path: Path) -> None:
    export = tmp_path / "conversations.json"
    export.write_bytes(b"[]")
    root = str(tmp_path / "store")
    r = run("--root", root, "import", "--chatgpt", str(export))
    assert r.code == 2 and "--user or --principal" in r.err
    export.write_bytes(b"not json")
    r = run("--root", root, "import", "--chatgpt", str(export), "--principal", "me")
    assert r.code == 2 and "is not JSON" in r.err
    export.write_bytes(b"[]")
    r = run("--root", root, "import", "--chatgpt", str(export), "--user", "us09")
    assert r.code == 1 and "no user us09" in r.err


# -- the real converters, end to end ----------------------------------------------------------------

DATA = Path(__file__).parent / "data"


@pytest.mark.parametrize(
    ("flag", "fixture"),
    [("--chatgpt", "chatgpt_conversations.json"), ("--openwebui", "openwebui_chats.json")],
)
def test_real_exports_import_every_conversation_or_say_why(
    run: Run, tmp_path: Path, flag: str, fixture: str
) -> None:
    from chunkstore import _foreign

    data = orjson.loads((DATA / fixture).read_bytes())
    reader = _foreign.read_chatgpt if flag == "--chatgpt" else _foreign.read_openwebui
    converted = [item for item in reader(data) if isinstance(item, list)]
    skipped = [item for item in reader(data) if isinstance(item, _foreign.Skipped)]
    assert converted and skipped  # the fixtures hold both kinds
    root = str(tmp_path / "store")
    r = run("--root", root, "import", flag, str(DATA / fixture), "--principal", "me")
    assert r.code == 0, r.err
    for item in skipped:  # every skip is reported, with its reason
        assert item.reason in r.err
    with Store(root) as store:
        user = store.find_user("me")
        assert user is not None
        stored = list(store.list_conversations(user, limit=1000))
        assert len(stored) == len(converted)
        by_source = {c.metadata["source_id"]: c for c in stored}
        for lines in converted:
            head, messages = lines[0], lines[1:]
            conv = by_source[head["metadata"]["source_id"]]
            assert conv.title == head["title"]
            got = store.messages(conv.id, limit=None)
            assert [(m.role, m.content) for m in got] == [
                (m["role"], m["content"]) for m in messages
            ]
        assert store.check() == []
    # Importing the same file again changes nothing.
    r = run("--root", root, "import", flag, str(DATA / fixture), "--principal", "me")
    assert r.code == 0
    assert "0 conversation(s) imported" in r.err
