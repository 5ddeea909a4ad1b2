"""``GET /v1/conversations?q=``: search through the edge, driven by the official OpenAI SDK
(its generic ``get``: the SDK has no conversation listing), every response validated against
the edge's OpenAPI document. On a SQLite store (the search itself is the conformance suite's,
on every backend)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import openai
import pytest
from fake_upstream import MakeEdge
from test_conversations_api import Recorder

import chunkstore
from edge.openapi import openapi_document

SESSION = {"x-session-id": "searcher"}


@pytest.fixture
async def sdk(
    make_edge: MakeEdge, recorder: Recorder, tmp_path: Path
) -> AsyncIterator[openai.AsyncOpenAI]:
    client = await make_edge(db_url=f"sqlite:{tmp_path / 'chat.db'}")
    http = openai.DefaultAsyncHttpxClient(event_hooks={"response": [recorder]})
    api = openai.AsyncOpenAI(
        base_url=str(client.make_url("/v1")),
        api_key="sk-test",
        max_retries=0,
        default_headers=SESSION,
        http_client=http,
    )
    try:
        yield api
    finally:
        await api.close()


@pytest.fixture
async def recorder() -> Recorder:
    return Recorder()


async def search(sdk: openai.AsyncOpenAI, **params: Any) -> dict[str, Any]:
    page: dict[str, Any] = await sdk.get(
        "/conversations", cast_to=dict[str, Any], options={"params": params}
    )
    return page


def ids(page: dict[str, Any]) -> list[str]:
    return [c["id"] for c in page["data"]]


async def user_message(sdk: openai.AsyncOpenAI, text: str, title: str | None = None) -> str:
    conv = await sdk.conversations.create(
        items=[{"type": "message", "role": "user", "content": text}],
        metadata=None,
        extra_body={"title": title} if title else None,
    )
    return conv.id


async def test_search_finds_titles_and_messages_with_their_match(
    sdk: openai.AsyncOpenAI, recorder: Recorder
) -> None:
    trip = await user_message(sdk, "a trip by tram", title="Lisbon")
    rain = await user_message(sdk, "Rain in Lisbon tomorrow?", title="Weather")
    await user_message(sdk, "nothing to see")
    page = await search(sdk, q="lisbon")
    assert ids(page) == [trip, rain]  # the title match first
    assert page["data"][0]["match"] == {"snippet": "Lisbon", "seq": None, "message_id": None}
    assert page["data"][1]["match"] == {
        "snippet": "Rain in Lisbon tomorrow?",
        "seq": 1,
        "message_id": f"{rain}-ms01",
    }
    assert page["data"][1]["object"] == "conversation"
    assert (page["first_id"], page["last_id"], page["has_more"]) == (trip, rain, False)
    assert ids(await search(sdk, q="TRA by")) == [trip]
    assert ids(await search(sdk, q="lisbon tram")) == []  # title and message: two documents
    assert ids(await search(sdk, q='"tram*" AND -x:')) == []  # syntax is just words
    assert ("GET", "/v1/conversations", 200) in recorder.seen


async def test_paging_with_after_and_offset(sdk: openai.AsyncOpenAI) -> None:
    made = [await user_message(sdk, f"porto number {i}", title="Same") for i in range(5)]
    newest_first = made[::-1]
    first = await search(sdk, q="porto", limit=2)
    assert ids(first) == newest_first[:2] and first["has_more"] is True
    second = await search(sdk, q="porto", limit=2, after=first["last_id"])
    assert ids(second) == newest_first[2:4]
    third = await search(sdk, q="porto", limit=2, after=second["last_id"])
    assert ids(third) == newest_first[4:] and third["has_more"] is False
    assert ids(await search(sdk, q="porto", limit=2, offset=3)) == newest_first[3:5]
    # A conversation no longer among the results: nothing more to add.
    await sdk.conversations.delete(newest_first[1])
    gone = await search(sdk, q="porto", after=newest_first[1])
    assert (ids(gone), gone["has_more"]) == ([], False)
    deleted = await search(sdk, q="porto", include_deleted="true")
    assert newest_first[1] in ids(deleted)


@pytest.mark.parametrize("q", ["", "!!!", "_", "x" * 1001])
async def test_a_query_without_words_is_a_400(sdk: openai.AsyncOpenAI, q: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await search(sdk, q=q)
    assert caught.value.status_code == 400
    body: Any = caught.value.body
    assert body["param"] == "q" and body["code"] == "invalid_value"


async def test_bad_paging_arguments(sdk: openai.AsyncOpenAI) -> None:
    await user_message(sdk, "porto")
    for params in ({"after": "nope"}, {"after": "us09-co01"}, {"limit": "0"}):
        with pytest.raises(openai.BadRequestError):
            await search(sdk, q="porto", **params)


async def test_a_session_without_a_user_finds_nothing(
    sdk: openai.AsyncOpenAI, make_edge: MakeEdge
) -> None:
    page = await search(sdk, q="anything")
    assert page == {
        "object": "list",
        "data": [],
        "first_id": None,
        "last_id": None,
        "has_more": False,
    }


@pytest.mark.parametrize("seal_delay", [0.0, 0.3])
async def test_a_streamed_reply_is_found_right_after_it_finishes(
    sdk: openai.AsyncOpenAI, monkeypatch: pytest.MonkeyPatch, seal_delay: float
) -> None:
    # ``[DONE]`` does not wait for the seal; a slow one (0.3 s here) must not hide the reply
    # from the search that follows.
    real_finish = chunkstore.MessageWriter.finish

    def slow_finish(self: chunkstore.MessageWriter, *args: Any, **kwargs: Any) -> Any:
        time.sleep(seal_delay)
        return real_finish(self, *args, **kwargs)

    monkeypatch.setattr(chunkstore.MessageWriter, "finish", slow_finish)
    conv = await user_message(sdk, "hello", title="Counting")
    stream = await sdk.chat.completions.create(
        model="tokens-4",
        messages=[{"role": "user", "content": "count"}],
        stream=True,
        extra_headers={"X-Conversation-ID": conv},
    )
    text = "".join(
        [chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices]
    )
    assert text == "tok0 tok1 tok2 tok3 "
    # The next request after the stream's end: the search waits (bounded) for the session's
    # replies whose stream ended to be stored, and the index is current with each.
    page = await search(sdk, q="tok3")
    assert ids(page) == [conv]
    match = page["data"][0]["match"]
    assert match["snippet"] == "tok0 tok1 tok2 tok3" and match["seq"] == 3


def test_the_document_lists_q_so_the_page_searches_on_the_server() -> None:
    doc = openapi_document()
    listing = doc["paths"]["/v1/conversations"]["get"]
    refs = [p["$ref"].rsplit("/", 1)[-1] for p in listing["parameters"]]
    assert "Query" in refs
    assert doc["components"]["parameters"]["Query"]["name"] == "q"
