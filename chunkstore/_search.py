"""Full-text search: what a query means, the same on every backend.

A query is reduced to *terms*: its words (runs of letters and digits, Unicode-aware; ``_`` and
every punctuation mark separate words), NFKC-normalized and case-folded. A conversation matches
when one of its *documents* — its title, or the text of one finished message (``complete`` or
``error``; ``Message.text``: structured parts' text joined) — holds every term as the beginning
of one of its words: ``lis bon`` finds "Lisbon's bonfires", ``lisbon trip`` needs both words in
the same message or in the title. Nothing in a query is syntax: quotes, ``*``, ``-``, ``AND``,
``NEAR`` and ``:`` are words or separators, so any string is a valid query.

Messages still streaming or ``interrupted`` are not searchable (a reply becomes findable when it
is finished); deleted messages and hard-deleted conversations are gone from the results;
soft-deleted conversations are left out unless asked for. Results are scoped to one user.

Ranking is one rule on every backend, not an engine's relevance score: the conversations
whose title matches come first, newest (highest conversation number) first; then those where
only a message matches, newest first. Each conversation appears once: a title hit (``seq``
None) if its title matches, whether or not a message does too, else its latest (highest seq)
matching message. How often, or how densely, a document holds the terms counts for nothing;
soft-deleted conversations, when asked for, keep their place. Why this rule: the same query
answers in the same order on every backend (a ``copy`` to another backend does not reorder
a user's results); recency is what a chat history's reader expects; and every engine can
walk its index newest first and stop once the page is full, so a word that nearly every
conversation holds costs about a page's worth of rows (SPEC §6's 50 ms over 10,000
conversations), where a relevance score must first be computed for every match.

Backends implement ``Backend.search`` over the terms this module produces and return
``SearchMatch``es; the front turns them into ``SearchHit``s with the one snippet rule below, so
snippets read the same whatever the engine.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

from ._exceptions import InvalidArgument
from ._models import Conversation

__all__ = [
    "MAX_QUERY_CHARS",
    "MAX_TERMS",
    "SNIPPET_CHARS",
    "SearchMatch",
    "matches",
    "search_terms",
    "snippet",
    "words",
]

MAX_QUERY_CHARS = 1000
# More terms than this only narrow a search that already found what it can; each term costs
# the engines an index lookup.
MAX_TERMS = 16
SNIPPET_CHARS = 160

# A word: letters, marks and digits; ``_`` separates, as it does for FTS5's unicode61 tokenizer
# and PostgreSQL's default parser, so the three engines cut text at the same places.
_WORD = re.compile(r"[^\W_]+")
_SPACE = re.compile(r"\s+")


@dataclass(frozen=True, slots=True)
class SearchMatch:
    """What a backend found: the conversation, the matching message's seq (None for the
    title) and that document's text (the snippet is cut from it)."""

    conversation: Conversation
    seq: int | None
    text: str


def fold(text: str) -> str:
    """The form terms and documents are compared in: NFKC, case-folded."""
    return unicodedata.normalize("NFKC", text).casefold()


def words(text: str) -> list[str]:
    """The folded words of a document, in order."""
    return _WORD.findall(fold(text))


def search_terms(query: object) -> list[str]:
    """The terms of a query (distinct, in order); ``InvalidArgument`` if it has none."""
    if not isinstance(query, str):
        raise InvalidArgument("query must be a string")
    if len(query) > MAX_QUERY_CHARS:
        raise InvalidArgument(f"query longer than {MAX_QUERY_CHARS} characters")
    terms = list(dict.fromkeys(words(query)))
    if not terms:
        raise InvalidArgument("query has no words to search for")
    if len(terms) > MAX_TERMS:
        raise InvalidArgument(f"query has more than {MAX_TERMS} words")
    return terms


def matches(text: str, terms: Sequence[str]) -> bool:
    """Whether one document holds every term as the start of one of its words (the reference
    rule the engines implement with their indexes)."""
    found = words(text)
    return all(any(word.startswith(term) for word in found) for term in terms)


def snippet(text: str, terms: Sequence[str], width: int = SNIPPET_CHARS) -> str:
    """About ``width`` characters of ``text`` around the first word a term starts, on one line,
    cut at word boundaries, with ``…`` where text was left out."""
    flat = _SPACE.sub(" ", text).strip()
    start = _first_match(flat, terms)
    if len(flat) <= width:
        return flat
    # A third of the window before the match: the reader sees what leads to it.
    begin = max(0, min(start - width // 3, len(flat) - width))
    end = min(len(flat), begin + width)
    if begin > 0:
        cut = flat.find(" ", begin, start if start > begin else end)
        begin = cut + 1 if cut != -1 else begin
    if end < len(flat):
        cut = flat.rfind(" ", max(begin, start), end)
        end = cut if cut > begin else end
    return ("…" if begin > 0 else "") + flat[begin:end].strip() + ("…" if end < len(flat) else "")


def _first_match(flat: str, terms: Sequence[str]) -> int:
    """Where the first word that starts with a term begins in ``flat`` (0 if none does)."""
    for found in _WORD.finditer(flat):
        word = fold(found.group())
        if any(word.startswith(term) for term in terms):
            return found.start()
    return 0
