"""``chunkstore search``: a user's conversations that match a query, as a table or JSON Lines.

Run against a SQLite store (the search itself is the conformance suite's, on every backend)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import orjson
import pytest

from chunkstore import Store
from chunkstore.cli import main


@pytest.fixture
def url(tmp_path: Path) -> str:
    """us01: "Lisbon trip" (a message about trams), a conversation about Porto (soft-deleted),
    and one about the weather."""
    target = f"sqlite:{tmp_path / 'chat.db'}"
    with Store(target, durability="none") as store:
        user = store.user_for("session-a")
        trip = store.create_conversation(user, title="Lisbon trip")
        store.append_message(trip.id, "user", "Which tram goes up to the castle?")
        porto = store.create_conversation(user, title="Porto")
        store.append_message(porto.id, "user", "the Lisbon to Porto train")
        store.delete_conversation(porto.id)
        weather = store.create_conversation(user, title="Weather")
        store.append_message(weather.id, "user", "rain in Lisbon\ntomorrow")
    return target


def run(url: str, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["--db-url", url, *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def lines(out: str) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in out.splitlines()]


def test_a_table_best_match_first(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(url, capsys, "search", "--user", "us01", "lisbon")
    assert code == 0 and err == ""
    header, first, second = out.splitlines()
    assert header.split() == ["ID", "SEQ", "TITLE", "SNIPPET"]
    assert first.split() == ["us01-co01", "Lisbon", "trip", "Lisbon", "trip"]  # the title
    assert second.split()[:2] == ["us01-co03", "1"]
    assert second.endswith("rain in Lisbon tomorrow")  # one line


def test_json_lines_and_deleted(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(url, capsys, "search", "-u", "us01", "lisbon", "--deleted", "--json")
    assert code == 0
    found = lines(out)
    assert [(r["id"], r["seq"], r["deleted"]) for r in found] == [
        ("us01-co01", None, False),
        ("us01-co03", 1, False),
        ("us01-co02", 1, True),
    ]
    assert found[2] == {
        "id": "us01-co02",
        "title": "Porto",
        "seq": 1,
        "snippet": "the Lisbon to Porto train",
        "deleted": True,
    }


def test_limit_follows_pages(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(url, capsys, "search", "-u", "us01", "lisbon", "-a", "-n", "2", "--json")
    assert code == 0 and [r["id"] for r in lines(out)] == ["us01-co01", "us01-co03"]


def test_by_principal(
    url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out, _ = run(url, capsys, "search", "--principal", "session-a", "tram", "--json")
    assert code == 0 and [(r["id"], r["seq"]) for r in lines(out)] == [("us01-co01", 1)]
    monkeypatch.setattr("sys.stdin", io.StringIO("session-a\n"))
    code, out, _ = run(url, capsys, "search", "-p", "-", "castle", "--json")
    assert code == 0 and len(lines(out)) == 1
    code, out, err = run(url, capsys, "search", "-p", "nobody-secret", "tram")
    assert code == 1 and out == "" and "no user for this session id" in err
    assert "nobody-secret" not in err  # a credential: never echoed
    with Store(url) as store:
        assert store.users() == ["us01"]  # nothing created


def test_no_match_is_a_note(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(url, capsys, "search", "-u", "us01", "madrid")
    assert (code, out) == (0, "")
    assert "no conversation of us01 matches (see --deleted)" in err
    code, out, err = run(url, capsys, "-q", "search", "-u", "us01", "madrid", "--deleted")
    assert (code, out, err) == (0, "", "")


def test_errors(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(url, capsys, "search", "-u", "us01", "!!!")  # bad input: a usage error
    assert code == 2 and "no words" in err and err.count("\n") == 1
    code, _, err = run(url, capsys, "search", "-u", "../x", "lisbon")
    assert code in (1, 2) and err.count("\n") == 1
    # Neither --user nor --principal: a usage error.
    assert main(["--db-url", url, "search", "lisbon"]) == 2
    assert "one of the arguments -u/--user -p/--principal is required" in capsys.readouterr().err
