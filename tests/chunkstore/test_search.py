"""``_search``: the query rule and the snippet, engine-independent."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chunkstore import InvalidArgument
from chunkstore._search import (
    MAX_TERMS,
    SNIPPET_CHARS,
    matches,
    search_terms,
    snippet,
    words,
)


def test_terms_are_folded_distinct_words() -> None:
    assert search_terms("Lisbon, LISBON! São_João  c++") == ["lisbon", "são", "joão", "c"]
    assert search_terms("ﬁve") == ["five"]  # NFKC: the ligature is two letters
    assert search_terms("Straße") == ["strasse"]  # case-folded, not just lower-cased


@pytest.mark.parametrize("query", ["", " ", "!?", "_", None, b"x", "x" * 1001])
def test_queries_without_words_are_rejected(query: object) -> None:
    with pytest.raises(InvalidArgument):
        search_terms(query)


def test_too_many_terms() -> None:
    search_terms(" ".join(f"w{i}" for i in range(MAX_TERMS)))
    with pytest.raises(InvalidArgument):
        search_terms(" ".join(f"w{i}" for i in range(MAX_TERMS + 1)))


def test_matches_needs_every_term_as_a_word_start() -> None:
    assert matches("Lisbon's bonfires", ["lis", "bon"])
    assert not matches("Lisbon", ["isbon"])
    assert not matches("Lisbon", ["lisbon", "porto"])
    assert words("a_b C") == ["a", "b", "c"]


def test_short_text_is_the_snippet_on_one_line() -> None:
    assert snippet("  Trip\n to\tPorto ", ["porto"]) == "Trip to Porto"


def test_long_text_is_cut_around_the_first_match() -> None:
    before = " ".join(f"b{i}" for i in range(100))
    after = " ".join(f"a{i}" for i in range(100))
    text = snippet(f"{before} the Lisbon tram {after}", ["tram"])
    assert "Lisbon tram" in text
    assert text.startswith("…b") and text.endswith("…")
    assert len(text) <= SNIPPET_CHARS + 2


def test_a_match_near_the_start_or_end_keeps_that_edge() -> None:
    filler = " ".join(f"w{i}" for i in range(100))
    assert snippet(f"lisbon {filler}", ["lisbon"]).startswith("lisbon ")
    assert snippet(f"{filler} lisbon", ["lisbon"]).endswith(" lisbon")


def test_no_match_shows_the_start() -> None:
    filler = " ".join(f"w{i}" for i in range(100))
    assert snippet(filler, ["zzz"]).startswith("w0 w1")


@given(st.text(), st.lists(st.text(min_size=1), max_size=3))
def test_snippet_never_fails_and_is_bounded(text: str, terms: list[str]) -> None:
    out = snippet(text, terms)
    assert len(out) <= SNIPPET_CHARS + 2
    assert "\n" not in out


@given(st.text(max_size=200))
def test_a_document_matches_its_own_words(text: str) -> None:
    found = words(text)
    if found:
        assert matches(text, found[:MAX_TERMS])
