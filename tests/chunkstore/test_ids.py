"""Hierarchical ids: canonical spelling only, numeric order, widths that grow."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chunkstore import InvalidId
from chunkstore._ids import ConversationId, MessageId, UserId, chunk_name, parse_chunk_name


def test_canonical_ids_round_trip() -> None:
    assert str(UserId.parse("us01")) == "us01"
    assert ConversationId.parse("us01-co12") == ConversationId(1, 12)
    assert MessageId.parse("us03-co12-ms02") == MessageId(3, 12, 2)
    assert str(MessageId(3, 12, 2)) == "us03-co12-ms02"


def test_width_grows_past_the_minimum() -> None:
    assert str(UserId(100)) == "us100"
    assert str(ConversationId(1, 100)) == "us01-co100"
    assert str(MessageId(1, 1, 1000)) == "us01-co01-ms1000"
    assert MessageId.parse("us01-co100-ms1000") == MessageId(1, 100, 1000)
    assert chunk_name("us01-co01-ms01", 1000) == "us01-co01-ms01-1000.json"


def test_ids_sort_numerically_not_as_strings() -> None:
    ids = [ConversationId.parse(s) for s in ("us01-co100", "us01-co99", "us01-co02")]
    assert [str(c) for c in sorted(ids)] == ["us01-co02", "us01-co99", "us01-co100"]


def test_parents() -> None:
    mid = MessageId.parse("us02-co05-ms07")
    assert str(mid.conversation_id) == "us02-co05"
    assert str(mid.conversation_id.user_id) == "us02"


@pytest.mark.parametrize(
    "text",
    [
        "us1",  # too narrow
        "us001",  # a second spelling of us01
        "us00",  # zero is not an id
        "US01",
        " us01",
        "us01 ",
        "us01\n",
        "us-01",
        "us٠١",  # Arabic-Indic digits match \d but are not canonical
        "us" + "1" * 19,  # more digits than any id has
        "us01-co01",  # a conversation id is not a user id
        "",
    ],
)
def test_invalid_user_ids(text: str) -> None:
    with pytest.raises(InvalidId):
        UserId.parse(text)


@pytest.mark.parametrize(
    "text",
    ["us01", "us01-co1", "us01-co001", "us01-co00", "us01-co01-ms01", "us01/co01", "us01-co01/"],
)
def test_invalid_conversation_ids(text: str) -> None:
    with pytest.raises(InvalidId):
        ConversationId.parse(text)


@pytest.mark.parametrize("text", ["us01-co01", "us01-co01-ms1", "us01-co01-ms01-001"])
def test_invalid_message_ids(text: str) -> None:
    with pytest.raises(InvalidId):
        MessageId.parse(text)


@pytest.mark.parametrize("value", [None, 1, 1.5, b"us01", ["us01"], UserId(1)])
def test_non_strings_are_invalid(value: object) -> None:
    for cls in (UserId, ConversationId, MessageId):
        with pytest.raises(InvalidId):
            cls.parse(value)


def test_very_long_ids_are_rejected_cheaply() -> None:
    with pytest.raises(InvalidId, match="too long"):
        UserId.parse("us" + "1" * 1_000_000)


@pytest.mark.parametrize(
    ("name", "parsed"),
    [
        ("us01-co01-ms02.json", (2, 0)),
        ("us01-co01-ms02-001.json", (2, 1)),
        ("us01-co01-ms02-1000.json", (2, 1000)),
        ("us01-co01-ms100-010.json", (100, 10)),
        ("us01-co01-ms02-01.json", None),
        ("us01-co01-ms02-0001.json", None),
        ("us01-co01-ms02-000.json", None),
        ("us1-co01-ms02.json", None),
        ("us01-co1-ms02.json", None),
        ("us01-co01-ms2.json", None),
        ("us01-co01-ms02.lock", None),
        (".us01-co01-ms02-001.json.tmp-abcdef", None),
        ("README", None),
    ],
)
def test_parse_chunk_name(name: str, parsed: tuple[int, int] | None) -> None:
    assert parse_chunk_name(name) == parsed


@given(st.integers(1, 10**18 - 1), st.integers(1, 10**18 - 1), st.integers(1, 10**18 - 1))
def test_every_id_has_one_spelling(u: int, c: int, m: int) -> None:
    mid = MessageId(u, c, m)
    assert MessageId.parse(str(mid)) == mid
    assert ConversationId.parse(str(mid.conversation_id)) == mid.conversation_id
    assert UserId.parse(str(UserId(u))) == UserId(u)
    assert parse_chunk_name(chunk_name(str(mid), 7)) == (m, 7)


@given(st.lists(st.integers(1, 10**6), min_size=2, max_size=20))
def test_sorting_ids_sorts_numbers(numbers: list[int]) -> None:
    ids = [ConversationId(1, n) for n in numbers]
    assert [c.n for c in sorted(ids)] == sorted(numbers)


def test_a_listing_scan_keeps_only_its_own_conversations_names() -> None:
    from chunkstore._ids import scan_message_files, scan_tombstones

    conv = ConversationId.parse("us01-co01")
    names = [
        "us01-co01-ms01.json",  # sealed
        "us01-co01-ms02-001.json",  # chunk
        "us01-co01-ms03.lock",  # writer lock
        "us01-co01-ms03-001.lock",  # a lock never has a chunk number
        "us01-co011-ms04.json",  # another conversation sharing the prefix
        "us01-co01-ms02-ms05.json",  # a message id inside a message id
        "xus01-co01-ms06.json",
        "us01-co01-ms07.json.tmp",
        "us01-co01-ms08.deleted",
        "us01-co011-ms09.deleted",
    ]
    assert scan_message_files(names, conv) == [(1, 0, False), (2, 1, False), (3, 0, True)]
    assert scan_tombstones(names, conv) == {8}
    assert scan_message_files([], conv) == []
