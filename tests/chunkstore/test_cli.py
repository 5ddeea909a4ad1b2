"""The ``chunkstore`` command line, driven through ``main([...])`` against a store in tmp_path."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import os
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from chunkstore import StorageError, Store, _records
from chunkstore.cli import build_parser, main


@dataclasses.dataclass
class Result:
    code: int
    out: str
    err: str

    def json_lines(self) -> list[dict[str, Any]]:
        return [orjson.loads(line) for line in self.out.splitlines()]


Run = Callable[..., Result]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "users"


@pytest.fixture
def store(root: Path) -> Store:
    """us01: three conversations (co02 pinned, co03 soft-deleted); us02: none."""
    s = Store(root, durability="none")
    user = s.user_for("session-a")
    trip = s.create_conversation(
        user, title="Trip\nto Rome", metadata={"topic": "travel"}, participants=["guide"]
    )
    s.append_message(trip.id, role="user", content="hi")
    with s.stream_message(trip.id, role="assistant", agent_id="guide") as w:
        for token in ["Hel", "lo\n", "there"]:
            w.append(token)
        w.finish(finish_reason="stop", usage={"total_tokens": 3})
    s.append_message(
        trip.id,
        role="assistant",
        content=None,
        tool_calls=[
            {"id": "c1", "type": "function", "function": {"name": "weather"}},
            {"id": "c2", "type": "custom"},
        ],
    )
    with s.stream_message(trip.id) as w:
        w.append("partial")
        w.fail("upstream went away")
    pinned = s.create_conversation(user, title="Pinned", pinned=True)
    s.append_message(pinned.id, role="user", content="keep me")
    gone = s.create_conversation(user, title="Gone")
    s.delete_conversation(gone.id)
    s.user_for("session-b")
    return s


@pytest.fixture
def cli(root: Path, capsys: pytest.CaptureFixture[str]) -> Run:
    """``cli("ls", "--json")`` runs ``chunkstore --root <root> ls --json`` in process."""

    def run(*args: str) -> Result:
        code = main(["--root", str(root), *args])
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run


# -- ls -----------------------------------------------------------------------------------------


def test_ls_users_table(store: Store, cli: Run) -> None:
    r = cli("ls")
    assert r.code == 0
    assert r.out.splitlines() == [
        "USER  CONVERSATIONS  DELETED",
        "us01  2              1",
        "us02  0              0",
    ]


def test_ls_users_json_and_limit(store: Store, cli: Run) -> None:
    r = cli("ls", "--json")
    assert r.code == 0
    assert r.json_lines() == [
        {"id": "us01", "conversations": 2, "deleted": 1},
        {"id": "us02", "conversations": 0, "deleted": 0},
    ]
    assert cli("ls", "--json", "--limit", "1").json_lines() == [
        {"id": "us01", "conversations": 2, "deleted": 1}
    ]


def test_ls_empty_store(root: Path, cli: Run) -> None:
    Store(root, durability="none")
    r = cli("ls")
    assert (r.code, r.out) == (0, "")
    assert "no users" in r.err
    assert cli("--quiet", "ls").err == ""


def test_ls_user_newest_first_without_deleted(store: Store, cli: Run) -> None:
    r = cli("ls", "us01")
    assert r.code == 0
    header, *rows = r.out.splitlines()
    assert header.split() == ["ID", "CREATED", "MESSAGES", "PINNED", "DELETED", "TITLE"]
    assert [row.split()[0] for row in rows] == ["us01-co02", "us01-co01"]
    co02, co01 = (row.split() for row in rows)
    assert co02[2:] == ["1", "yes", "no", "Pinned"]
    # A newline in a title never breaks the table.
    assert co01[2:] == ["4", "no", "no", "Trip", "to", "Rome"]
    assert co01[1] == store.get_conversation("us01-co01").created_at


def test_ls_user_all_and_limit(store: Store, cli: Run) -> None:
    ids = [row.split()[0] for row in cli("ls", "us01", "--all").out.splitlines()[1:]]
    assert ids == ["us01-co03", "us01-co02", "us01-co01"]
    ids = [row.split()[0] for row in cli("ls", "us01", "-a", "-n", "2").out.splitlines()[1:]]
    assert ids == ["us01-co03", "us01-co02"]


def test_ls_user_json(store: Store, cli: Run) -> None:
    r = cli("ls", "us01", "--all", "--json")
    assert r.code == 0
    lines = r.json_lines()
    assert [line["id"] for line in lines] == ["us01-co03", "us01-co02", "us01-co01"]
    trip = lines[2]
    expected = dataclasses.asdict(store.get_conversation("us01-co01"))
    assert trip == {**expected, "deleted": False, "message_count": 4}
    assert trip["title"] == "Trip\nto Rome"
    assert lines[0]["deleted"] is True and lines[0]["deleted_at"] is not None
    assert lines[1]["pinned"] is True


def test_ls_user_pages_past_one_listing_page(root: Path, cli: Run, monkeypatch: Any) -> None:
    s = Store(root, durability="none")
    user = s.user_for("many")
    for i in range(5):
        s.create_conversation(user, title=f"c{i}")
    monkeypatch.setattr("chunkstore.cli.MAX_PAGE", 2)  # follow the cursor across pages
    assert len(cli("ls", user, "--json").json_lines()) == 5
    assert len(cli("ls", user, "--json", "--limit", "3").json_lines()) == 3


def test_ls_user_without_conversations(store: Store, cli: Run) -> None:
    r = cli("ls", "us02")
    assert (r.code, r.out) == (0, "")
    assert "us02 has no conversations" in r.err


@pytest.mark.parametrize(
    ("user", "message"),
    [("us09", "no user us09"), ("../etc", "not a user id"), ("us1", "not a user id")],
)
def test_ls_bad_user(store: Store, cli: Run, user: str, message: str) -> None:
    r = cli("ls", user)
    assert r.code == 1
    assert r.out == ""
    assert r.err.startswith("chunkstore: error: ")
    assert message in r.err
    assert len(r.err.splitlines()) == 1
    assert "Traceback" not in r.err


# -- show ---------------------------------------------------------------------------------------


def test_show_text(store: Store, cli: Run) -> None:
    r = cli("show", "us01-co01")
    assert r.code == 0
    assert r.err == ""
    out = r.out
    assert out.startswith("conversation us01-co01\n")
    assert "  title:        Trip to Rome\n" in out
    assert "  user:         us01\n" in out
    assert "  pinned:       no\n" in out
    assert "  participants: guide\n" in out
    assert "  metadata:     topic=travel\n" in out
    assert "  messages:     4\n" in out
    assert "#1 user complete\n    hi\n" in out
    assert "#2 assistant complete agent=guide finish=stop\n    Hello\n    there\n" in out
    assert "#3 assistant complete\n    [tool calls: weather, ?]\n" in out
    assert "#4 assistant error\n    partial\n    [error: " in out
    assert "upstream went away" in out


def test_show_json_is_the_metadata_then_every_message(store: Store, cli: Run) -> None:
    r = cli("show", "us01-co01", "--json")
    assert r.code == 0
    assert r.err == ""
    head, *messages = r.json_lines()
    conv = store.get_conversation("us01-co01")
    assert head == {"type": "conversation", **dataclasses.asdict(conv)}
    expected = [dataclasses.asdict(m) for m in store.messages("us01-co01", limit=None)]
    assert messages == [{"type": "message", "conversation_id": "us01-co01", **m} for m in expected]
    assert [line["seq"] for line in messages] == [1, 2, 3, 4]
    assert messages[1]["agent_id"] == "guide"
    assert messages[1]["usage"] == {"total_tokens": 3}
    # Export writes these lines plus what a lossless copy needs (a header, the user line,
    # last_seq); import reads both: show --json's lines are an export without a header.
    exported = cli("-q", "export", "us01-co01").json_lines()
    assert [line["type"] for line in exported][:3] == ["export", "user", "conversation"]
    assert exported[3:] == [{k: v for k, v in m.items() if k != "damaged"} for m in messages]


def test_show_says_when_a_conversation_has_no_messages(store: Store, cli: Run) -> None:
    for args in (["--json"], []):
        r = cli("show", "us01-co03", *args)
        assert r.code == 0
        assert r.err == "us01-co03 has no messages\n"
    r = cli("show", "us01-co03", "--json")
    assert [line["type"] for line in r.json_lines()] == ["conversation"]
    r = cli("show", "us01-co01", "--json", "--after-seq", "4")
    assert [line["type"] for line in r.json_lines()] == ["conversation"]
    assert r.err == "us01-co01 has no messages after seq 4\n"
    assert cli("-q", "show", "us01-co03").err == ""


def test_show_pages_with_after_seq_and_limit(store: Store, cli: Run) -> None:
    r = cli("show", "us01-co01", "--json", "--after-seq", "1", "--limit", "2")
    assert [line.get("seq") for line in r.json_lines()] == [None, 2, 3]
    assert "--after-seq 3" in r.err  # where the next page starts
    r = cli("show", "us01-co01", "--after-seq", "3")
    assert "#4 assistant error" in r.out and "#1 " not in r.out
    assert r.err == ""


def test_show_soft_deleted_and_empty(store: Store, cli: Run) -> None:
    r = cli("show", "us01-co03")
    assert r.code == 0
    assert "  deleted_at:   20" in r.out
    assert "  participants: -\n" in r.out
    assert "  metadata:     -\n" in r.out
    assert "#" not in r.out


def test_show_damaged_message(store: Store, root: Path, cli: Run) -> None:
    sealed = root / "us01/data/conversations/us01-co02/messages/us01-co02-ms01.json"
    sealed.write_bytes(sealed.read_bytes()[:-5])  # truncated: the checksum fails
    (sealed.parent.parent / "segment.jsonl").unlink()  # derived; else it still has the message
    r = cli("show", "us01-co02")
    assert r.code == 0
    assert "#1 " in r.out and "DAMAGED" in r.out
    r = cli("check")
    assert r.code == 1
    assert "corrupt: " in r.out and "us01-co02-ms01.json" in r.out


@pytest.mark.parametrize(
    ("conv", "message"),
    [
        ("us01-co99", "no conversation us01-co99"),
        ("us07-co01", "no conversation us07-co01"),
        ("bad", "not a conversation id: 'bad'"),
        ("us01-co01/../../x", "not a conversation id"),
    ],
)
def test_show_bad_id(store: Store, cli: Run, conv: str, message: str) -> None:
    r = cli("show", conv)
    assert r.code == 1
    assert r.out == ""
    assert r.err.startswith("chunkstore: error: ") and message in r.err
    assert len(r.err.splitlines()) == 1


@pytest.mark.parametrize(
    "args", [["--limit", "0"], ["--limit", "x"], ["--after-seq", "-1"], ["--after-seq", "x"]]
)
def test_show_bad_numbers_are_usage_errors(store: Store, cli: Run, args: list[str]) -> None:
    r = cli("show", "us01-co01", *args)
    assert r.code == 2
    assert "usage: chunkstore show" in r.err


# -- rename, rm, restore, whoami ----------------------------------------------------------------


def test_rename(store: Store, cli: Run) -> None:
    r = cli("rename", "us01-co01", "Lisbon")
    assert (r.code, r.out, r.err) == (0, "", "us01-co01 renamed to 'Lisbon'\n")
    assert store.get_conversation("us01-co01").title == "Lisbon"
    r = cli("rename", "us01-co01", "")  # no title
    assert (r.code, r.err) == (0, "us01-co01: no title\n")
    assert store.get_conversation("us01-co01").title is None
    r = cli("rename", "us01-co09", "x")
    assert (r.code, r.err) == (1, "chunkstore: error: no conversation us01-co09\n")
    r = cli("rename", "us01-co01", "x" * 100_000)
    assert r.code == 2 and "title longer than" in r.err


def test_rm_is_soft_and_restore_undoes_it(store: Store, cli: Run) -> None:
    r = cli("rm", "us01-co01", "us01-co02")
    assert (r.code, r.out) == (0, "")
    assert r.err.splitlines() == [
        "deleted us01-co01 (chunkstore restore us01-co01 undoes it)",
        "deleted us01-co02 (chunkstore restore us01-co02 undoes it)",
    ]
    assert store.get_conversation("us01-co01").deleted
    assert cli("ls", "us01", "--json").out == ""
    assert "already deleted" in cli("rm", "us01-co01").err
    r = cli("restore", "us01-co01", "us01-co02")
    assert r.code == 0
    assert r.err.splitlines() == ["restored us01-co01", "restored us01-co02"]
    assert not store.get_conversation("us01-co01").deleted
    assert store.message_count("us01-co01") == 4
    assert cli("restore", "us01-co01").err == "us01-co01 was not deleted\n"


def test_rm_checks_every_id_first(store: Store, cli: Run) -> None:
    r = cli("rm", "us01-co01", "us01-co99")
    assert (r.code, r.err) == (1, "chunkstore: error: no conversation us01-co99\n")
    assert not store.get_conversation("us01-co01").deleted
    assert cli("restore", "us01-co01", "bad").code == 1
    assert cli("rm").code == 2  # at least one id


def test_rm_hard_needs_yes(store: Store, cli: Run) -> None:
    r = cli("rm", "us01-co01", "--hard")
    assert (r.code, r.out) == (2, "")
    assert r.err == (
        "chunkstore: error: rm --hard removes conversations and their messages for good "
        "(no restore): add --yes to confirm\n"
    )
    assert store.message_count("us01-co01") == 4
    r = cli("rm", "us01-co01", "us01-co03", "--hard", "--yes")
    assert r.code == 0
    assert r.err.splitlines() == ["removed us01-co01 for good", "removed us01-co03 for good"]
    ids = [line["id"] for line in cli("ls", "us01", "--all", "--json").json_lines()]
    assert ids == ["us01-co02"]
    r = cli("restore", "us01-co01")
    assert (r.code, r.err) == (1, "chunkstore: error: no conversation us01-co01\n")
    assert cli("-q", "rm", "us01-co02", "--hard", "-y").err == ""


def test_whoami(store: Store, cli: Run, monkeypatch: Any) -> None:
    r = cli("whoami", "session-b")
    assert (r.code, r.out, r.err) == (0, "us02\n", "")
    monkeypatch.setattr(sys, "stdin", io.StringIO("session-a\n"))
    assert cli("whoami", "-").out == "us01\n"
    r = cli("whoami", "never-seen-7c1e")
    assert (r.code, r.out) == (1, "")
    assert r.err.startswith("chunkstore: error: no user for this session id in ")
    assert "never-seen-7c1e" not in r.err  # a session id is a credential: never echoed
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    assert cli("whoami", "-").code == 1
    assert store.users() == ["us01", "us02"]  # nothing created


def test_every_command_takes_db_url(
    store: Store, root: Path, tmp_path: Path, capsys: Any, monkeypatch: Any
) -> None:
    monkeypatch.setenv("CHUNKSTORE_URL", f"file:{tmp_path / 'nowhere'}")
    monkeypatch.delenv("CHUNKSTORE_ROOT", raising=False)
    url = f"file:{root}"
    commands = [
        ["ls"],
        ["ls", "us01", "--all"],
        ["show", "us01-co01", "--json"],
        ["rename", "us01-co02", "Renamed"],
        ["rm", "us01-co02"],
        ["restore", "us01-co02"],
        ["whoami", "session-a"],
        ["check"],
        ["sweep", "--days", "30"],
        ["export", "-o", str(tmp_path / "x.jsonl")],
        ["rm", "us01-co02", "--hard", "--yes"],
    ]
    for argv in commands:
        # The environment names a store that does not exist: only the URL reaches this one.
        assert main([*argv, "--db-url", url]) == 0, (argv, capsys.readouterr().err)
    capsys.readouterr()
    assert store.users() == ["us01", "us02"]
    assert [c.id for c in store.list_conversations("us01", include_deleted=True)] == [
        "us01-co03",
        "us01-co01",
    ]


# -- check: interrupted messages ----------------------------------------------------------------


def test_check_reports_interrupted_messages_without_failing(store: Store, cli: Run) -> None:
    writer = store.stream_message("us01-co02", role="assistant")
    writer.append("half a rep")
    writer.flush()
    writer.abandon()  # what a crash leaves: unsealed chunks, no live writer
    assert store.messages("us01-co02", limit=None)[-1].status == "interrupted"
    r = cli("check")
    assert r.code == 0
    assert r.out.splitlines() == [
        "interrupted: us01-co02-ms02: its writer stopped before sealing it; "
        "10 character(s) kept (info: not a problem)",
        "store is clean: no problems found",
        "1 interrupted message(s): their writer died (a crash, a killed process); what it made "
        "durable reads back. Not corruption: the exit code ignores them",
    ]
    # Beside a real problem, the exit code is the problem's alone.
    (root := Path(store.root)).joinpath("stray.txt").write_text("x")
    r = cli("check")
    assert r.code == 1
    assert "stranger: " in r.out and "interrupted: us01-co02-ms02" in r.out
    root.joinpath("stray.txt").unlink()
    assert cli("check", "--fix").code == 0


# -- check --------------------------------------------------------------------------------------


def test_check_clean(store: Store, cli: Run) -> None:
    r = cli("check")
    assert r.code == 0
    assert r.out == "store is clean: no problems found\n"


def test_check_reports_and_fixes(store: Store, root: Path, cli: Run) -> None:
    messages = root / "us01/data/conversations/us01-co01/messages"
    (messages / ".us01-co01-ms09.json.tmp-abc123").write_bytes(b"half")
    r = cli("check")
    assert r.code == 1
    assert "temp-file: " in r.out and ".tmp-abc123" in r.out
    assert "1 problem(s) found (run with --fix" in r.out
    r = cli("check", "--fix")
    assert r.code == 0
    assert "(fixed)" in r.out
    assert "1 problem(s): 1 fixed, 0 remaining" in r.out
    assert not (messages / ".us01-co01-ms09.json.tmp-abc123").exists()
    assert cli("check").code == 0


def test_check_unfixable_problem_stays_an_error(store: Store, root: Path, cli: Run) -> None:
    (root / "stray.txt").write_text("not ours")
    r = cli("check", "--fix")
    assert r.code == 1
    assert "stranger: " in r.out and "stray.txt" in r.out
    assert "0 fixed, 1 remaining" in r.out
    assert (root / "stray.txt").exists()


# -- sweep --------------------------------------------------------------------------------------


@pytest.fixture
def ten_days_later(monkeypatch: Any) -> None:
    """Run sweeps as if ten days had passed (``sweep_retention`` takes the clock as ``now``)."""
    later = datetime.now(UTC) + timedelta(days=10)
    original = Store.sweep_retention
    monkeypatch.setattr(Store, "sweep_retention", functools.partialmethod(original, now=later))


def test_sweep_is_a_dry_run_by_default(store: Store, cli: Run, ten_days_later: None) -> None:
    for args in ([], ["--dry-run"]):
        r = cli("sweep", "--days", "5", *args)
        assert r.code == 0
        # Pinned us01-co02 is kept; the soft-deleted us01-co03 is swept too.
        assert r.out.splitlines() == ["us01-co01", "us01-co03"]
        assert "dry run: 2 conversation(s) idle for 5 days would be removed" in r.err
        assert "--yes" in r.err
    assert len(store.list_conversations("us01", include_deleted=True)) == 3


def test_sweep_yes_removes(store: Store, cli: Run, ten_days_later: None) -> None:
    assert cli("sweep", "--days", "20", "--yes").out == ""  # nothing that old
    r = cli("sweep", "--days", "5", "--yes")
    assert r.code == 0
    assert r.out.splitlines() == ["us01-co01", "us01-co03"]
    assert "removed 2 conversation(s) idle for 5 days" in r.err
    assert [c.id for c in store.list_conversations("us01", include_deleted=True)] == ["us01-co02"]
    r = cli("-q", "sweep", "--days", "5", "-y")  # idempotent
    assert (r.code, r.out, r.err) == (0, "", "")


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["--days", "0"],
        ["--days", "-3"],
        ["--days", "soon"],
        ["--days", "nan"],
        ["--days", "1", "--dry-run", "--yes"],
    ],
)
def test_sweep_usage_errors(store: Store, cli: Run, args: list[str]) -> None:
    r = cli("sweep", *args)
    assert r.code == 2
    assert "usage: chunkstore sweep" in r.err
    assert "Traceback" not in r.err


# -- export -------------------------------------------------------------------------------------


def _expected_export(store: Store, conversation_ids: list[str]) -> list[dict[str, Any]]:
    """The lines of the conversations (without the header and user lines)."""
    lines: list[dict[str, Any]] = []
    for cid in conversation_ids:
        conv = dataclasses.asdict(store.get_conversation(cid))
        del conv["damaged"]
        messages = store.messages(cid, limit=None)
        lines.append({"type": "conversation", **conv, "last_seq": messages[-1].seq})
        for m in messages:
            message = dataclasses.asdict(m)
            del message["damaged"]
            lines.append({"type": "message", "conversation_id": cid, **message})
    return lines


def test_export_all_to_stdout(store: Store, cli: Run) -> None:
    r = cli("export", "--jsonl")
    assert r.code == 0
    header, user_a, *conversations, user_b = r.json_lines()
    assert (header["type"], header["format"], header["version"]) == (
        "export",
        "chunkstore-export",
        1,
    )
    assert (user_a["id"], user_b["id"]) == ("us01", "us02")
    assert user_a["sessions"] == [hashlib.sha256(b"session-a").hexdigest()]
    # Soft-deleted conversations too: an export loses nothing (--all is kept for old scripts).
    assert conversations[:-1] == _expected_export(store, ["us01-co01", "us01-co02"])
    assert conversations[-1]["id"] == "us01-co03" and conversations[-1]["deleted_at"]
    assert "exported 3 conversation(s), 5 message(s) to stdout" in r.err
    assert cli("export", "--all", "-o", "-").json_lines()[1:] == r.json_lines()[1:]


def test_export_ids_to_file(store: Store, cli: Run, tmp_path: Path) -> None:
    target = tmp_path / "out.jsonl"
    r = cli("export", "us01-co02", "us01-co03", "--jsonl", "-o", str(target))
    assert r.code == 0
    assert r.out == ""
    assert str(target) in r.err
    lines = [orjson.loads(line) for line in target.read_bytes().splitlines()]
    assert lines[2:4] == _expected_export(store, ["us01-co02"])
    assert lines[3]["content"] == "keep me"
    assert [line["type"] for line in lines] == [
        "export",
        "user",
        "conversation",
        "message",
        "conversation",
    ]


def test_export_one_user(store: Store, cli: Run) -> None:
    lines = cli("export", "--user", "us02").json_lines()
    assert [line["type"] for line in lines] == ["export", "user"]
    r = cli("export", "us01-co01", "--user", "us02")
    assert r.code == 2 and "not both" in r.err


def test_export_stdout_without_a_binary_buffer(
    store: Store, root: Path, monkeypatch: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    text = io.StringIO()
    monkeypatch.setattr(sys, "stdout", text)
    assert main(["--root", str(root), "-q", "export", "us01-co02"]) == 0
    lines = [orjson.loads(line) for line in text.getvalue().splitlines()]
    assert lines[2:] == _expected_export(store, ["us01-co02"])


def test_export_bad_id_writes_nothing(store: Store, cli: Run, tmp_path: Path) -> None:
    target = tmp_path / "out.jsonl"
    r = cli("export", "us01-co01", "us01-co42", "-o", str(target))
    assert r.code == 1
    assert "no conversation us01-co42" in r.err
    assert not target.exists()


def test_export_unwritable_output(store: Store, cli: Run, tmp_path: Path) -> None:
    r = cli("export", "-o", str(tmp_path / "no-such-dir" / "out.jsonl"))
    assert r.code == 1
    assert r.err.startswith("chunkstore: error: ")
    assert "No such file or directory" in r.err
    assert len(r.err.splitlines()) == 1


def test_export_failure_leaves_no_partial_file(
    store: Store, cli: Run, tmp_path: Path, monkeypatch: Any
) -> None:
    def broken(self: Store, *args: Any, **kwargs: Any) -> Any:
        raise StorageError(5, "disk on fire")

    monkeypatch.setattr(type(store.backend), "dump_conversation", broken)
    target = tmp_path / "out.jsonl"
    r = cli("export", "-o", str(target))
    assert r.code == 1
    assert "disk on fire" in r.err
    assert not target.exists()


def test_progress_bar_only_on_a_terminal(store: Store, cli: Run, monkeypatch: Any) -> None:
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert "line" in cli("export").err  # tqdm's bar: "export: ... 11 [..., line/s]"
    assert "user" in cli("ls").err
    assert cli("--quiet", "export").err == ""
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    assert cli("export").err.count("\n") == 1  # just the summary note


# -- roots and errors ---------------------------------------------------------------------------


def test_not_a_store(tmp_path: Path, cli: Run, capsys: pytest.CaptureFixture[str]) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "notes.txt").write_text("hello")
    for root, reason in [
        (plain, "it has no FORMAT file"),
        (tmp_path / "missing", "no such directory"),
    ]:
        code = main(["--root", str(root), "ls"])
        err = capsys.readouterr().err
        assert code == 2
        assert (
            err == f"chunkstore: error: {root} is not a chunkstore store: {reason} (see --root)\n"
        )
    assert not (tmp_path / "missing").exists()  # the CLI never creates a store
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["--root", str(empty), "check"]) == 2
    assert os.listdir(empty) == []


def test_unknown_store_format(root: Path, cli: Run) -> None:
    Store(root, durability="none")
    (root / "FORMAT").write_bytes(_records.encode_line({"format": "chunkstore", "version": 99}))
    r = cli("ls")
    assert r.code == 2
    assert "version 99" in r.err and len(r.err.splitlines()) == 1
    (root / "FORMAT").write_bytes(b'{"format": "chunkstore", "version": 1}')  # no checksum
    r = cli("ls")
    assert r.code == 2
    assert "FORMAT is corrupt" in r.err


def test_root_from_env_default_and_after_the_command(
    store: Store, root: Path, tmp_path: Path, monkeypatch: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.delenv("CHUNKSTORE_ROOT", raising=False)
    assert main(["ls"]) == 2  # ./users does not exist here
    assert str(elsewhere / "users") in capsys.readouterr().err
    monkeypatch.chdir(tmp_path)  # ./users is the store
    assert main(["ls", "--json"]) == 0
    assert "us01" in capsys.readouterr().out
    monkeypatch.setenv("CHUNKSTORE_ROOT", str(root))
    monkeypatch.chdir(elsewhere)
    assert main(["ls", "us01", "--json"]) == 0
    assert "us01-co01" in capsys.readouterr().out
    # --root wins over the environment, before or after the command.
    monkeypatch.setenv("CHUNKSTORE_ROOT", str(elsewhere))
    assert main(["ls", "--root", str(root), "--json"]) == 0
    assert main(["--root", str(root), "ls", "-q"]) == 0
    capsys.readouterr()


def test_help_version_and_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: chunkstore")
    for command in (
        "ls",
        "show",
        "rename",
        "rm",
        "restore",
        "whoami",
        "check",
        "sweep",
        "export",
        "import",
        "copy",
    ):
        assert command in out
    assert main(["--version"]) == 0
    assert "store format version 1" in capsys.readouterr().out
    assert main([]) == 2  # a command is required
    assert "required" in capsys.readouterr().err
    assert main(["frobnicate"]) == 2
    assert "invalid choice" in capsys.readouterr().err
    assert build_parser().prog == "chunkstore"


def test_broken_pipe_and_interrupt_are_quiet(store: Store, cli: Run, monkeypatch: Any) -> None:
    def pipe_closed(self: Store) -> list[str]:
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(Store, "users", pipe_closed)
    r = cli("ls")
    assert (r.code, r.err) == (1, "")

    def interrupted(self: Store) -> list[str]:
        raise KeyboardInterrupt

    monkeypatch.setattr(Store, "users", interrupted)
    r = cli("ls")
    assert r.code == 130
    assert "Traceback" not in r.err

    def os_error(self: Store) -> list[str]:
        raise OSError("the disk said no")

    monkeypatch.setattr(Store, "users", os_error)
    assert cli("ls").err == "chunkstore: error: the disk said no\n"


@pytest.mark.parametrize(
    "command",
    [
        [str(Path(sys.executable).with_name("chunkstore"))],
        [sys.executable, "-m", "chunkstore"],
    ],
    ids=["console-script", "python-m"],
)
def test_installed_command(command: list[str], store: Store, root: Path) -> None:
    env = {**os.environ, "CHUNKSTORE_ROOT": str(root)}
    done = subprocess.run(
        [*command, "--help"], capture_output=True, text=True, env=env, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: chunkstore")
    done = subprocess.run(
        [*command, "show", "us01-co99"], capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode == 1
    assert done.stderr == "chunkstore: error: no conversation us01-co99\n"
    done = subprocess.run(
        [*command, "ls", "--json"], capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode == 0
    assert orjson.loads(done.stdout.splitlines()[0])["id"] == "us01"


def test_db_url_names_the_store_and_wins_over_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from chunkstore import Store
    from chunkstore.cli import main

    store = Store(tmp_path / "a", durability="none")
    user = store.user_for("s")
    store.create_conversation(user, title="Found by URL")
    monkeypatch.setenv("CHUNKSTORE_URL", f"file:{tmp_path / 'nowhere'}")
    assert main(["ls", user, "--db-url", f"file:{tmp_path / 'a'}"]) == 0
    assert "Found by URL" in capsys.readouterr().out
    assert main(["ls"]) == 2  # the environment's store does not exist
    assert "nowhere" in capsys.readouterr().err


def test_an_unknown_scheme_or_a_missing_database_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from chunkstore.cli import main

    assert main(["ls", "--db-url", "redis://u:hunter2@h/0"]) == 2
    err = capsys.readouterr().err
    assert "unknown store URL scheme" in err and "hunter2" not in err
    assert main(["ls", "--db-url", f"sqlite:{tmp_path / 'missing.db'}"]) == 2
    assert "no such file" in capsys.readouterr().err
    assert not (tmp_path / "missing.db").exists()  # never created by the CLI


def test_the_new_commands_on_a_sqlite_store(tmp_path: Path, capsys: Any) -> None:
    url = f"sqlite:{tmp_path / 'chat.db'}"
    s = Store(url, durability="none")
    user = s.user_for("sqlite-session")
    conv = s.create_conversation(user, title="T")
    writer = s.stream_message(conv.id)
    writer.append("part")
    writer.flush()
    writer.abandon()
    s.close()
    for argv in (["rename", conv.id, "U"], ["rm", conv.id], ["restore", conv.id]):
        assert main(["--db-url", url, *argv]) == 0, capsys.readouterr().err
    assert main(["--db-url", url, "whoami", "sqlite-session"]) == 0
    assert capsys.readouterr().out == f"{user}\n"
    assert main(["--db-url", url, "check"]) == 0
    assert f"interrupted: {conv.id}-ms01" in capsys.readouterr().out
    assert main(["--db-url", url, "show", conv.id, "--json"]) == 0
    assert orjson.loads(capsys.readouterr().out.splitlines()[0])["title"] == "U"
    assert main(["--db-url", url, "rm", conv.id, "--hard", "--yes"]) == 0
    assert main(["--db-url", url, "show", conv.id]) == 1
