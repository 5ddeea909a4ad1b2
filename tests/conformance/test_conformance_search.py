"""Search (``Store.search``, ``AsyncStore.search``) on every backend: what matches (``_search``'s
rule), what does not, ranking, paging, scoping, and an index kept current by every write."""

from __future__ import annotations

import asyncio
import random

import pytest
from conformance_support import open_store

from chunkstore import (
    AsyncStore,
    Conversation,
    InvalidArgument,
    InvalidId,
    SearchPage,
    Store,
    copy_store,
)

PARTS = [
    {"type": "text", "text": "a photo of "},
    {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
    {"type": "text", "text": "Sintra palace"},
]


def ids(page: SearchPage) -> list[str]:
    return [hit.conversation.id for hit in page]


def test_finds_a_message_word_with_its_seq_and_a_snippet(store: Store, user: str) -> None:
    conv = store.create_conversation(user, title="Holidays")
    store.append_message(conv.id, "user", "Where should we eat tonight?")
    store.append_message(conv.id, "assistant", "Try the pastéis de nata in Belém, near Lisbon.")
    other = store.create_conversation(user, title="Work")
    store.append_message(other.id, "user", "the quarterly report is late")

    page = store.search(user, "lisbon")
    assert ids(page) == [conv.id]
    hit = page.items[0]
    assert hit.seq == 2
    assert "Lisbon" in hit.snippet
    assert hit.conversation == store.get_conversation(conv.id)
    assert page.next_cursor is None and not page.has_more and len(page) == 1


def test_words_match_as_prefixes_case_and_accents_as_written(store: Store, user: str) -> None:
    conv = store.create_conversation(user)
    store.append_message(conv.id, "user", "Café in LISBON, the bonfires of São João")
    for query in ("lis", "LISBON", "lisbon bon", "café", "CAFÉ", "são joão", "  lisbon,,,  "):
        assert ids(store.search(user, query)) == [conv.id], query
    for query in ("isbon", "lisbonx", "cafe x", "porto"):
        assert ids(store.search(user, query)) == [], query


def test_every_term_must_match_one_document(store: Store, user: str) -> None:
    conv = store.create_conversation(user, title="Lisbon")
    store.append_message(conv.id, "user", "a trip by train")
    both = store.create_conversation(user)
    store.append_message(both.id, "user", "a trip to Lisbon")
    # "lisbon" is in one conversation's title and "trip" in its message: not one document.
    assert ids(store.search(user, "lisbon trip")) == [both.id]


def test_finds_titles_seq_none_when_only_the_title_matches(store: Store, user: str) -> None:
    conv = store.create_conversation(user, title="Trip to Porto")
    store.append_message(conv.id, "user", "hello")
    page = store.search(user, "porto")
    assert ids(page) == [conv.id]
    assert page.items[0].seq is None
    assert page.items[0].snippet == "Trip to Porto"


def test_title_matches_rank_above_message_matches(store: Store, user: str) -> None:
    titled = store.create_conversation(user, title="Lisbon")
    store.append_message(titled.id, "user", "hello there")
    in_text = store.create_conversation(user, title="Misc")  # newer
    store.append_message(in_text.id, "user", "Lisbon")
    assert ids(store.search(user, "lisbon")) == [titled.id, in_text.id]


def test_equal_matches_come_newest_first(store: Store, user: str) -> None:
    convs = []
    for _ in range(4):
        conv = store.create_conversation(user)
        store.append_message(conv.id, "user", "the same words about lisbon")
        convs.append(conv.id)
    assert ids(store.search(user, "lisbon")) == convs[::-1]


def test_one_hit_per_conversation(store: Store, user: str) -> None:
    conv = store.create_conversation(user, title="lisbon")
    for _ in range(3):
        store.append_message(conv.id, "user", "lisbon again")
    assert ids(store.search(user, "lisbon")) == [conv.id]


def test_recency_not_relevance(store: Store, user: str) -> None:
    # _search's one ranking on every backend: kind (title, then message), then newest; how
    # often or how densely a document holds the word counts for nothing.
    dense = store.create_conversation(user, title="Lisbon, Lisbon, Lisbon")
    store.append_message(dense.id, "user", "lisbon lisbon lisbon lisbon lisbon")
    for _ in range(4):
        store.append_message(dense.id, "assistant", "Lisbon! Lisbon, lisbon.")
    sparse = store.create_conversation(user, title="a long title that mentions lisbon once")
    older = store.create_conversation(user)
    store.append_message(older.id, "user", "lisbon " * 5)
    newer = store.create_conversation(user)
    store.append_message(newer.id, "user", "words, words, words and one lisbon among many words")
    assert ids(store.search(user, "lisbon")) == [sparse.id, dense.id, newer.id, older.id]


def test_a_title_and_message_match_is_a_title_hit(store: Store, user: str) -> None:
    both = store.create_conversation(user, title="Lisbon")
    store.append_message(both.id, "user", "lisbon in the message too")
    text_only = store.create_conversation(user)  # newer
    store.append_message(text_only.id, "user", "lisbon")
    page = store.search(user, "lisbon")
    assert [(hit.conversation.id, hit.seq) for hit in page] == [(both.id, None), (text_only.id, 1)]
    assert page.items[0].snippet == "Lisbon"


def test_a_message_hit_reports_the_latest_matching_message(store: Store, user: str) -> None:
    conv = store.create_conversation(user, title="Holidays")
    store.append_message(conv.id, "user", "lisbon or porto?")
    store.append_message(conv.id, "assistant", "Lisbon, in May.")
    store.append_message(conv.id, "user", "thanks!")
    hit = store.search(user, "lisbon").items[0]
    assert (hit.seq, hit.snippet) == (2, "Lisbon, in May.")
    last = store.append_message(conv.id, "user", "lisbon it is")
    assert store.search(user, "lisbon").items[0].seq == 4
    store.delete_message(conv.id, last.id)
    assert store.search(user, "lisbon").items[0].seq == 2
    assert store.search(user, "porto").items[0].seq == 1


def test_soft_deleted_conversations_keep_their_place(store: Store, user: str) -> None:
    convs = []
    for title in ("Lisbon", None, "Lisbon", None):
        conv = store.create_conversation(user, title=title)
        store.append_message(conv.id, "user", "lisbon")
        convs.append(conv.id)
    for deleted in (convs[1], convs[2]):
        store.delete_conversation(deleted)
    everything = store.search(user, "lisbon", include_deleted=True)
    assert ids(everything) == [convs[2], convs[0], convs[3], convs[1]]
    assert [hit.conversation.deleted for hit in everything] == [True, False, False, True]
    assert ids(store.search(user, "lisbon")) == [convs[0], convs[3]]


def expected_ranking(
    titles: dict[str, bool], latest: dict[str, int | None], order: list[str]
) -> list[tuple[str, int | None]]:
    """_search's rule, from what a test wrote: title hits newest first, then message hits
    newest first with their latest matching seq (``order``: the conversations, oldest first)."""
    newest = order[::-1]
    ranked: list[tuple[str, int | None]] = [(c, None) for c in newest if titles.get(c)]
    ranked += [(c, latest[c]) for c in newest if not titles.get(c) and latest.get(c)]
    return ranked


def test_the_order_is_the_conversations_not_the_writes(store: Store, user: str) -> None:
    # Writes in a shuffled order (old conversations written last, titles set late, some
    # messages deleted, some conversations soft-deleted): an index that keeps documents in
    # write order must still rank by conversation number, on every page.
    rng = random.Random(7)
    order = [store.create_conversation(user).id for _ in range(40)]
    titles: dict[str, bool] = {}
    latest: dict[str, int | None] = {}
    seqs: dict[str, int] = dict.fromkeys(order, 0)
    writes = [(c, kind) for c in order for kind in ("text", "text", "other", "title")]
    rng.shuffle(writes)
    for conv, kind in writes:
        if kind == "title":
            match = rng.random() < 0.3
            store.update_conversation(conv, title="Lisbon days" if match else "Porto days")
            titles[conv] = match
            continue
        match = kind == "text" and rng.random() < 0.6
        message = store.append_message(conv, "user", "lisbon trip" if match else "a day off")
        seqs[conv] += 1
        if match and rng.random() < 0.2:
            store.delete_message(conv, message.id)
        elif match:
            latest[conv] = seqs[conv]
    hidden = set(rng.sample(order, 5))
    for conv in hidden:
        store.delete_conversation(conv)
    shown = [c for c in order if c not in hidden]
    for include_deleted, among in ((False, shown), (True, order)):
        expected = expected_ranking(titles, latest, among)
        assert len(expected) > 12
        found: list[tuple[str, int | None]] = []
        cursor = None
        while True:
            page = store.search(
                user, "lisbon", limit=4, cursor=cursor, include_deleted=include_deleted
            )
            found += [(hit.conversation.id, hit.seq) for hit in page]
            cursor = page.next_cursor
            if cursor is None:
                break
        assert found == expected
        whole = store.search(user, "lisbon", limit=100, include_deleted=include_deleted)
        assert [(hit.conversation.id, hit.seq) for hit in whole] == expected


def test_paging_walks_every_match_once(store: Store, user: str) -> None:
    expected = set()
    for i in range(7):
        conv = store.create_conversation(user)
        store.append_message(conv.id, "user", f"lisbon number {i}")
        expected.add(conv.id)
    seen: list[str] = []
    cursor = None
    for _ in range(10):
        page = store.search(user, "lisbon", limit=3, cursor=cursor)
        assert len(page) <= 3
        seen += ids(page)
        cursor = page.next_cursor
        if cursor is None:
            break
    assert sorted(seen) == sorted(expected)
    assert len(seen) == len(set(seen))


@pytest.mark.parametrize("query", ["", "   ", "!!! ???", "_", None, 42, "x" * 1001])
def test_bad_queries_are_rejected(store: Store, user: str, query: object) -> None:
    with pytest.raises(InvalidArgument):
        store.search(user, query)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "query",
    [
        '"lisbon',
        "lisbon*",
        "-lisbon",
        "lisbon AND",
        "NEAR(lisbon)",
        "title:lisbon",
        "c++",
        "^%'lisbon",
    ],
)
def test_engine_syntax_is_just_words(store: Store, user: str, query: str) -> None:
    conv = store.create_conversation(user)
    store.append_message(conv.id, "user", "lisbon and near title c NEAR")
    store.search(user, query)  # never an engine syntax error
    assert ids(store.search(user, "lisbon*")) == [conv.id]


def test_bad_arguments(store: Store, user: str) -> None:
    with pytest.raises(InvalidArgument):
        store.search(user, "x", limit=0)
    with pytest.raises(InvalidArgument):
        store.search(user, "x", cursor="not-a-cursor")
    with pytest.raises(InvalidId):
        store.search("../us01", "x")


def test_scoped_to_the_user(store: Store, user: str) -> None:
    mine = store.create_conversation(user)
    store.append_message(mine.id, "user", "lisbon")
    other = store.user_for("someone-else")
    theirs = store.create_conversation(other, title="lisbon")
    store.append_message(theirs.id, "user", "lisbon")
    assert ids(store.search(user, "lisbon")) == [mine.id]
    assert ids(store.search(other, "lisbon")) == [theirs.id]
    assert ids(store.search("us99", "lisbon")) == []  # an unknown user has no matches


def test_soft_deleted_left_out_unless_asked_hard_deleted_gone(store: Store, user: str) -> None:
    conv = store.create_conversation(user, title="lisbon")
    store.append_message(conv.id, "user", "lisbon")
    store.delete_conversation(conv.id)
    assert ids(store.search(user, "lisbon")) == []
    page = store.search(user, "lisbon", include_deleted=True)
    assert ids(page) == [conv.id] and page.items[0].conversation.deleted
    store.restore_conversation(conv.id)
    assert ids(store.search(user, "lisbon")) == [conv.id]
    store.delete_conversation(conv.id, hard=True)
    assert ids(store.search(user, "lisbon", include_deleted=True)) == []


def test_a_new_title_replaces_the_old(store: Store, user: str) -> None:
    conv = store.create_conversation(user, title="Lisbon")
    store.update_conversation(conv.id, title="Porto")
    assert ids(store.search(user, "lisbon")) == []
    assert ids(store.search(user, "porto")) == [conv.id]
    store.update_conversation(conv.id, title=None)
    assert ids(store.search(user, "porto")) == []


def test_a_deleted_message_is_not_found(store: Store, user: str) -> None:
    conv = store.create_conversation(user)
    gone = store.append_message(conv.id, "user", "secret lisbon plans")
    store.append_message(conv.id, "user", "lisbon")
    assert store.search(user, "secret").items[0].seq == 1
    store.delete_message(conv.id, gone.id)
    assert ids(store.search(user, "secret")) == []
    assert store.search(user, "lisbon").items[0].seq == 2


def test_a_reply_is_findable_once_finished(store: Store, user: str) -> None:
    conv = store.create_conversation(user)
    writer = store.stream_message(conv.id, chunk_tokens=2)
    for token in ["Lis", "bon ", "is ", "lovely ", "in ", "May"]:
        writer.append(token)
    assert ids(store.search(user, "lovely")) == []  # still streaming: chunks are not indexed
    writer.finish()
    page = store.search(user, "lovely")
    assert ids(page) == [conv.id] and page.items[0].seq == 1
    assert page.items[0].snippet == "Lisbon is lovely in May"


def test_failed_replies_are_findable_interrupted_ones_are_not(store: Store, user: str) -> None:
    conv = store.create_conversation(user)
    with store.stream_message(conv.id) as writer:
        writer.append("partial lisbon answer")
        writer.fail("upstream went away")
    cut = store.stream_message(conv.id)
    cut.append("interrupted porto answer")
    cut.flush()
    cut.abandon()
    assert store.search(user, "lisbon").items[0].seq == 1
    assert ids(store.search(user, "porto")) == []


def test_structured_content_is_searched_by_its_text(store: Store, user: str) -> None:
    conv = store.create_conversation(user)
    store.append_message(conv.id, "user", PARTS)
    tool_only = store.create_conversation(user)
    store.append_message(
        tool_only.id,
        "assistant",
        None,
        tool_calls=[
            {"id": "c1", "type": "function", "function": {"name": "sintra", "arguments": "{}"}}
        ],
    )
    page = store.search(user, "sintra palace")
    assert ids(page) == [conv.id]
    assert page.items[0].snippet == "a photo of Sintra palace"


def test_long_messages_get_a_short_snippet_around_the_match(store: Store, user: str) -> None:
    conv = store.create_conversation(user)
    filler = " ".join(f"word{i}" for i in range(400))
    store.append_message(conv.id, "assistant", f"{filler} the Lisbon tram {filler}")
    text = store.search(user, "tram").items[0].snippet
    assert "Lisbon tram" in text
    assert text.startswith("…") and text.endswith("…")
    assert len(text) <= 170


def test_the_index_survives_reopening(store_url: str) -> None:
    with open_store(store_url) as store:
        user = store.user_for("session-test")
        conv = store.create_conversation(user, title="Lisbon")
        store.append_message(conv.id, "user", "pastel de nata")
    with open_store(store_url) as fresh:
        assert ids(fresh.search(user, "nata")) == [conv.id]
        assert ids(fresh.search(user, "lisbon")) == [conv.id]


def test_writes_from_another_store_are_found(store_url: str) -> None:
    with open_store(store_url) as reader, open_store(store_url) as writer:
        user = reader.user_for("session-test")
        assert ids(reader.search(user, "lisbon")) == []
        conv = writer.create_conversation(user)
        writer.append_message(conv.id, "user", "lisbon")
        assert ids(reader.search(user, "lisbon")) == [conv.id]


def test_many_conversations(store: Store, user: str) -> None:
    convs = []
    for i in range(60):
        conv = store.create_conversation(user, title=f"chat {i}")
        store.append_message(conv.id, "user", "lisbon" if i % 3 == 0 else "porto")
        convs.append(conv.id)
    found = ids(store.search(user, "lisbon", limit=100))
    assert found == [c for i, c in enumerate(convs) if i % 3 == 0][::-1]
    assert ids(store.search(user, "chat", limit=5)) == convs[::-1][:5]


def test_async_facade(store_url: str) -> None:
    async def main() -> list[str]:
        async with await AsyncStore.open(store_url, durability="none") as astore:
            user = await astore.user_for("session-test")
            conv: Conversation = await astore.create_conversation(user)
            await astore.append_message(conv.id, "user", "lisbon")
            page = await astore.search(user, "lisbon", limit=5)
            return ids(page)

    assert len(asyncio.run(main())) == 1


def test_imported_conversations_are_found(store: Store, user: str, make_url: object) -> None:
    conv = store.create_conversation(user, title="Lisbon")
    store.append_message(conv.id, "user", "pastel de nata")
    gone = store.append_message(conv.id, "user", "secret porto plans")
    store.delete_message(conv.id, gone.id)
    with open_store(make_url()) as destination:  # type: ignore[operator]
        copy_store(store, destination)
        twin = destination.find_user("session-test")
        assert twin is not None
        assert ids(destination.search(twin, "nata")) == [conv.id]
        assert destination.search(twin, "lisbon").items[0].seq is None
        assert ids(destination.search(twin, "porto")) == []


def test_a_copy_ranks_as_its_source(store: Store, user: str, make_url: object) -> None:
    # One ranking on every backend: a copy (to any backend) answers in the same order.
    for i in range(6):
        conv = store.create_conversation(user, title="Lisbon notes" if i % 3 == 0 else None)
        store.append_message(conv.id, "user", "lisbon " * (6 - i))
        store.append_message(conv.id, "assistant", "porto" if i % 2 else "lisbon again")
    source = [(hit.conversation.id, hit.seq) for hit in store.search(user, "lisbon")]
    with open_store(make_url()) as destination:  # type: ignore[operator]
        copy_store(store, destination)
        twin = destination.find_user("session-test")
        assert twin is not None
        copied = [(hit.conversation.id, hit.seq) for hit in destination.search(twin, "lisbon")]
    assert copied == source
