"""OpenAI's Conversations API, driven by the real SDK (``client.conversations``): every call
parses into the SDK's models, and every response the edge gives (errors included) is validated
against the edge's OpenAPI document."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest
from aiohttp.test_utils import TestClient
from fake_upstream import FakeUpstream, MakeEdge
from openai.types.conversations import Conversation, ConversationDeletedResource, Message
from openai.types.responses import ResponseFunctionToolCallItem
from openai.types.responses.response_function_tool_call_output_item import (
    ResponseFunctionToolCallOutputItem,
)
from test_openapi import Contract

from chunkstore import Store
from edge.openapi import openapi_document

Client = TestClient[Any, Any]
SESSION = {"x-session-id": "sdk"}


class Recorder:
    """Every response the SDK receives, validated against the OpenAPI document."""

    def __init__(self) -> None:
        self.contract = Contract(openapi_document())
        paths = [p for p in self.contract.doc["paths"] if p != "/v1/{path}"]
        self.templates = [(re.compile(re.sub(r"\{[^}]*\}", "[^/]+", p) + "$"), p) for p in paths]
        self.seen: list[tuple[str, str, int]] = []

    def template(self, path: str) -> str:
        matches = [t for pattern, t in self.templates if pattern.match(path)]
        assert matches, f"undocumented path {path}"
        return min(matches, key=lambda t: t.count("{"))

    async def __call__(self, response: Any) -> None:
        await response.aread()
        method = response.request.method
        template = self.template(response.request.url.path)
        if response.headers["Content-Type"].startswith("application/json"):
            body = orjson.loads(response.content)
            self.contract.validate(template, method, response.status_code, body)
        else:  # a chat stream: its events are the upstream's
            assert template == "/v1/chat/completions"
        self.seen.append((method, template, response.status_code))


@pytest.fixture
async def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
async def sdk(make_edge: MakeEdge, recorder: Recorder) -> AsyncIterator[openai.AsyncOpenAI]:
    client = await make_edge()
    http = openai.DefaultAsyncHttpxClient(event_hooks={"response": [recorder]})
    api = openai.AsyncOpenAI(
        base_url=str(client.make_url("/v1")),
        api_key="sk-test",
        max_retries=0,
        default_headers=SESSION,
        http_client=http,
    )
    api._edge_client = client  # type: ignore[attr-defined]
    try:
        yield api
    finally:
        await api.close()


def edge_of(sdk: openai.AsyncOpenAI) -> Client:
    client: Client = sdk._edge_client  # type: ignore[attr-defined]
    return client


def text_of(item: Any) -> str:
    assert isinstance(item, Message)
    return "".join(getattr(part, "text", "") for part in item.content)


# -- conversations ------------------------------------------------------------------------------


async def test_create_retrieve_update_delete(sdk: openai.AsyncOpenAI, recorder: Recorder) -> None:
    created = await sdk.conversations.create(
        metadata={"topic": "trip"},
        items=[
            {"type": "message", "role": "user", "content": "Plan a trip to Lisbon"},
            {"role": "assistant", "content": "Three days?"},
        ],
    )
    assert isinstance(created, Conversation)
    assert created.object == "conversation" and created.metadata == {"topic": "trip"}
    assert created.created_at > 0
    fetched = await sdk.conversations.retrieve(created.id)
    assert (fetched.id, fetched.created_at) == (created.id, created.created_at)
    # Our own fields come along (OpenAI's models keep extra fields).
    assert fetched.to_dict()["title"] == "Plan a trip to Lisbon"
    updated = await sdk.conversations.update(created.id, metadata={"topic": "lisbon"})
    assert updated.metadata == {"topic": "lisbon"}

    items = await sdk.conversations.items.list(created.id, order="asc")
    assert [text_of(i) for i in items.data] == ["Plan a trip to Lisbon", "Three days?"]

    deleted = await sdk.conversations.delete(created.id)
    assert isinstance(deleted, ConversationDeletedResource)
    assert (deleted.id, deleted.deleted, deleted.object) == (
        created.id,
        True,
        "conversation.deleted",
    )
    with pytest.raises(openai.NotFoundError):
        await sdk.conversations.retrieve(created.id)
    with pytest.raises(openai.NotFoundError):
        await sdk.conversations.update(created.id, metadata={"k": "v"})
    with pytest.raises(openai.NotFoundError):
        await sdk.conversations.items.list(created.id)
    with pytest.raises(openai.NotFoundError):
        await sdk.conversations.items.create(created.id, items=[{"role": "user", "content": "x"}])

    # Beyond OpenAI: the soft delete is listed with include_deleted, and restored.
    listing: Any = await sdk.get(
        "/conversations", cast_to=object, options={"params": {"include_deleted": "1"}}
    )
    assert [c["id"] for c in listing["data"]] == [created.id]
    assert isinstance(listing["data"][0]["deleted_at"], int)
    restored: Any = await sdk.post(f"/conversations/{created.id}/restore", cast_to=object)
    assert restored["deleted_at"] is None
    assert (await sdk.conversations.retrieve(created.id)).id == created.id
    assert len((await sdk.conversations.items.list(created.id)).data) == 2
    assert ("DELETE", "/v1/conversations/{conversation_id}", 200) in recorder.seen
    assert ("GET", "/v1/conversations/{conversation_id}", 404) in recorder.seen


async def test_create_takes_at_most_20_items_all_or_nothing(
    sdk: openai.AsyncOpenAI, store_root: Path
) -> None:
    twenty = [{"role": "user", "content": f"m{i}"} for i in range(20)]
    created = await sdk.conversations.create(items=twenty)  # type: ignore[arg-type]
    page = await sdk.conversations.items.list(created.id, limit=100)
    assert len(page.data) == 20
    with pytest.raises(openai.BadRequestError) as caught:
        await sdk.conversations.create(items=twenty + twenty[:1])  # type: ignore[arg-type]
    assert caught.value.body["param"] == "items"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as caught:
        await sdk.conversations.create(
            items=[
                {"role": "user", "content": "fine"},
                {"type": "web_search_call", "id": "ws_1", "status": "completed"},  # type: ignore[list-item]
            ]
        )
    assert caught.value.code == "unsupported_item_type"
    listing: Any = await sdk.get("/conversations", cast_to=object)
    assert [c["id"] for c in listing["data"]] == [created.id]  # nothing half-created


async def test_a_limit_reached_midway_stores_none_of_the_items(
    make_edge: MakeEdge, recorder: Recorder
) -> None:
    client = await make_edge(max_messages_per_conversation=3)
    async with openai.AsyncOpenAI(
        base_url=str(client.make_url("/v1")),
        api_key="k",
        max_retries=0,
        default_headers=SESSION,
        http_client=openai.DefaultAsyncHttpxClient(event_hooks={"response": [recorder]}),
    ) as api:
        conversation = await api.conversations.create(items=[{"role": "user", "content": "1"}])
        with pytest.raises(openai.UnprocessableEntityError):
            await api.conversations.items.create(
                conversation.id,
                items=[{"role": "user", "content": c} for c in "234"],  # type: ignore[misc]
            )
        page = await api.conversations.items.list(conversation.id)
        assert [text_of(i) for i in page.data] == ["1"]
        with pytest.raises(openai.UnprocessableEntityError):
            await api.conversations.create(
                items=[{"role": "user", "content": c} for c in "1234"]  # type: ignore[misc]
            )
        listing: Any = await api.get("/conversations", cast_to=object)
        assert [c["id"] for c in listing["data"]] == [conversation.id]


# -- items --------------------------------------------------------------------------------------


async def test_items_have_openai_shapes_and_ids_that_map_to_messages(
    sdk: openai.AsyncOpenAI,
) -> None:
    conversation = await sdk.conversations.create()
    created = await sdk.conversations.items.create(
        conversation.id,
        items=[
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "w?"}]},
            {
                "type": "message",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "Checking.", "annotations": []}],
            },
            {"type": "function_call", "call_id": "call_1", "name": "weather", "arguments": "{}"},
            {"type": "function_call", "call_id": "call_2", "name": "time", "arguments": '{"a":1}'},
            {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
            {"role": "developer", "content": "be brief"},
        ],
    )
    cid = conversation.id
    assert [i.id for i in created.data] == [
        f"msg_{cid}-ms01",
        f"msg_{cid}-ms02",
        f"fc_{cid}-ms02_1",
        f"fc_{cid}-ms02_2",
        f"fco_{cid}-ms03",
        f"msg_{cid}-ms04",
    ]
    assert (created.first_id, created.last_id, created.has_more) == (
        f"msg_{cid}-ms01",
        f"msg_{cid}-ms04",
        False,
    )
    user, assistant, call1, call2, output, developer = created.data
    assert isinstance(user, Message) and user.role == "user" and user.status == "completed"
    assert user.content[0].type == "input_text" and text_of(user) == "w?"
    assert isinstance(assistant, Message) and assistant.content[0].type == "output_text"
    assert isinstance(call1, ResponseFunctionToolCallItem)
    assert (call1.call_id, call1.name, call1.arguments, call1.status) == (
        "call_1",
        "weather",
        "{}",
        "completed",
    )
    assert isinstance(call2, ResponseFunctionToolCallItem) and call2.arguments == '{"a":1}'
    assert isinstance(output, ResponseFunctionToolCallOutputItem)
    assert (output.call_id, output.output) == ("call_1", "sunny")
    assert isinstance(developer, Message) and developer.role == "developer"
    # Ours: each item's message seq, and what a reply answers.
    assert [i.to_dict()["seq"] for i in created.data] == [1, 2, 2, 2, 3, 4]
    assert [i.to_dict()["reply_to"] for i in created.data] == [None, 1, 1, 1, None, None]

    for item in created.data:
        assert await sdk.conversations.items.retrieve(item.id, conversation_id=cid) == item
    # The history API sees the same messages.
    messages: Any = await sdk.get(f"/conversations/{cid}/messages", cast_to=object)
    assert [(m["role"], m["content"]) for m in messages["data"]] == [
        ("user", "w?"),
        ("assistant", "Checking."),
        ("tool", "sunny"),
        ("developer", "be brief"),
    ]
    assert messages["data"][1]["tool_calls"][1]["function"] == {
        "name": "time",
        "arguments": '{"a":1}',
    }


async def test_list_orders_pages_and_after(sdk: openai.AsyncOpenAI) -> None:
    conversation = await sdk.conversations.create(
        items=[{"role": "user", "content": f"m{i}"} for i in range(7)]  # type: ignore[misc]
    )
    cid = conversation.id
    newest = await sdk.conversations.items.list(cid)  # OpenAI's default: desc, 20
    assert [text_of(i) for i in newest.data] == [f"m{i}" for i in range(6, -1, -1)]
    assert newest.has_more is False
    page = await sdk.conversations.items.list(cid, limit=3, order="asc")
    assert [text_of(i) for i in page.data] == ["m0", "m1", "m2"] and page.has_more
    page = await sdk.conversations.items.list(cid, limit=3, order="asc", after=page.data[-1].id)
    assert [text_of(i) for i in page.data] == ["m3", "m4", "m5"]
    page = await sdk.conversations.items.list(cid, limit=3, after=f"msg_{cid}-ms04")
    assert [text_of(i) for i in page.data] == ["m2", "m1", "m0"] and page.has_more is False
    # The SDK's auto-pagination walks every page.
    walked = [text_of(i) async for i in sdk.conversations.items.list(cid, limit=2)]
    assert walked == [f"m{i}" for i in range(6, -1, -1)]
    walked = [text_of(i) async for i in sdk.conversations.items.list(cid, limit=2, order="asc")]
    assert walked == [f"m{i}" for i in range(7)]
    included = await sdk.conversations.items.list(
        cid, include=["message.output_text.logprobs", "message.input_image.image_url"]
    )
    assert len(included.data) == 7


async def test_pages_split_a_message_between_its_items(sdk: openai.AsyncOpenAI) -> None:
    conversation = await sdk.conversations.create(
        items=[
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": "a"},
            {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "1"},
            {"type": "function_call", "call_id": "c2", "name": "g", "arguments": "2"},
            {"type": "function_call_output", "call_id": "c1", "output": "r1"},
        ]
    )
    cid = conversation.id
    every = [i.id async for i in sdk.conversations.items.list(cid, limit=1, order="asc")]
    assert every == [
        f"msg_{cid}-ms01",
        f"msg_{cid}-ms02",
        f"fc_{cid}-ms02_1",
        f"fc_{cid}-ms02_2",
        f"fco_{cid}-ms03",
    ]
    backwards = [i.id async for i in sdk.conversations.items.list(cid, limit=2)]
    assert backwards == every[::-1]


async def test_delete_an_item_and_its_message(sdk: openai.AsyncOpenAI, store_root: Path) -> None:
    conversation = await sdk.conversations.create(
        items=[{"role": "user", "content": c} for c in ("one", "two", "three")]  # type: ignore[misc]
    )
    cid = conversation.id
    after = await sdk.conversations.items.delete(f"msg_{cid}-ms02", conversation_id=cid)
    assert isinstance(after, Conversation) and after.id == cid
    page = await sdk.conversations.items.list(cid, order="asc")
    assert [text_of(i) for i in page.data] == ["one", "three"]
    with pytest.raises(openai.NotFoundError):
        await sdk.conversations.items.retrieve(f"msg_{cid}-ms02", conversation_id=cid)
    with pytest.raises(openai.NotFoundError):
        await sdk.conversations.items.delete(f"msg_{cid}-ms02", conversation_id=cid)
    # The seq is not reused: the next item is ms04.
    added = await sdk.conversations.items.create(cid, items=[{"role": "user", "content": "four"}])
    assert added.data[0].id == f"msg_{cid}-ms04"
    # A message still streaming cannot be deleted yet (409), then it can.
    store = Store(store_root, durability="none")
    writer = store.stream_message(cid, flush_interval=None)
    writer.append("partial")
    writer.flush()
    try:
        item = (await sdk.conversations.items.list(cid)).data[0]
        assert isinstance(item, Message) and item.status == "in_progress"
        with pytest.raises(openai.ConflictError):
            await sdk.conversations.items.delete(item.id, conversation_id=cid)
    finally:
        writer.finish()
    await sdk.conversations.items.delete(f"msg_{cid}-ms05", conversation_id=cid)
    assert [text_of(i) for i in (await sdk.conversations.items.list(cid)).data] == [
        "four",
        "three",
        "one",
    ]


@pytest.mark.parametrize(
    "item_id",
    [
        "msg_us01-co01-ms09",  # no such message
        "msg_us01-co02-ms01",  # another conversation's
        "msg_us02-co01-ms01",  # another user's
        "fco_us01-co01-ms01",  # a user message has no output item
        "fc_us01-co01-ms01_1",  # nor tool calls
        "msg_us01-co01-ms1",  # not canonical
        "msg_us01-co01-ms01_1",
        "fc_us01-co01-ms01",
        "fc_us01-co01-ms01_01",
        "us01-co01-ms01",
        "msg_us01-co01-ms01%2F..",
        "x" * 300,
    ],
)
async def test_unknown_foreign_and_malformed_item_ids_are_404(
    sdk: openai.AsyncOpenAI, item_id: str
) -> None:
    await sdk.conversations.create(items=[{"role": "user", "content": "hi"}])
    await sdk.conversations.create(items=[{"role": "user", "content": "other"}])
    with pytest.raises(openai.NotFoundError) as caught:
        await sdk.conversations.items.retrieve(item_id, conversation_id="us01-co01")
    assert caught.value.code == "not_found"
    with pytest.raises(openai.NotFoundError):
        await sdk.conversations.items.delete(item_id, conversation_id="us01-co01")
    page = await sdk.conversations.items.list("us01-co01")
    assert [text_of(i) for i in page.data] == ["hi"]


async def test_another_session_reaches_no_item(sdk: openai.AsyncOpenAI) -> None:
    conversation = await sdk.conversations.create(items=[{"role": "user", "content": "mine"}])
    other = sdk.with_options(default_headers={"x-session-id": "someone-else"})
    item_id = f"msg_{conversation.id}-ms01"
    for call in (
        lambda: other.conversations.items.list(conversation.id),
        lambda: other.conversations.items.retrieve(item_id, conversation_id=conversation.id),
        lambda: other.conversations.items.delete(item_id, conversation_id=conversation.id),
        lambda: other.conversations.items.create(
            conversation.id, items=[{"role": "user", "content": "x"}]
        ),
        lambda: other.conversations.retrieve(conversation.id),
    ):
        with pytest.raises(openai.NotFoundError):
            await call()
    assert len((await sdk.conversations.items.list(conversation.id)).data) == 1


BAD_QUERIES: list[tuple[dict[str, Any], str]] = [
    ({"order": "sideways"}, "order"),
    ({"limit": 0}, "limit"),
    ({"limit": 101}, "limit"),
    ({"after": "msg_us01-co02-ms01"}, "after"),
    ({"after": "nope"}, "after"),
    ({"include": ["everything"]}, "include"),
]


@pytest.mark.parametrize(("query", "param"), BAD_QUERIES)
async def test_bad_list_queries_are_400(
    sdk: openai.AsyncOpenAI, query: dict[str, Any], param: str
) -> None:
    conversation = await sdk.conversations.create()
    with pytest.raises(openai.BadRequestError) as caught:
        await sdk.conversations.items.list(conversation.id, **query)
    assert caught.value.body["param"] == param  # type: ignore[index]


@pytest.mark.parametrize(
    ("items", "param"),
    [
        ([], "items"),
        ([{"role": "robot", "content": "x"}], "items[0].role"),
        ([{"role": {}, "content": "x"}], "items[0].role"),  # found by the fuzzer: was a 500
        ([{"role": "user", "content": 5}], "items[0].content"),
        ([{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}], None),
        ([{"type": "function_call", "name": "f", "arguments": "{}"}], "items[0].call_id"),
        ([{"type": "function_call_output", "call_id": "c", "output": 5}], "items[0].output"),
        (["text"], "items[0]"),
    ],
)
async def test_bad_items_are_400_and_store_nothing(
    sdk: openai.AsyncOpenAI, items: list[Any], param: str | None
) -> None:
    conversation = await sdk.conversations.create()
    with pytest.raises(openai.BadRequestError) as caught:
        await sdk.conversations.items.create(conversation.id, items=items)
    if param is not None:
        assert caught.value.body["param"] == param  # type: ignore[index]
    assert (await sdk.conversations.items.list(conversation.id)).data == []


# -- two views of one conversation --------------------------------------------------------------


async def test_chat_turns_are_items(sdk: openai.AsyncOpenAI) -> None:
    first = await sdk.chat.completions.with_raw_response.create(
        model="tokens-2", messages=[{"role": "user", "content": "hello"}]
    )
    cid = first.headers["X-Conversation-ID"]
    stream = await sdk.chat.completions.create(
        model="tools",
        stream=True,
        messages=[{"role": "user", "content": "weather?"}],
        extra_headers={"X-Conversation-ID": cid},
    )
    async for _ in stream:
        pass
    page = await sdk.conversations.items.list(cid, order="asc")
    kinds = [(i.type, getattr(i, "role", None)) for i in page.data]
    assert kinds == [
        ("message", "user"),
        ("message", "assistant"),
        ("message", "user"),
        ("function_call", None),
    ]
    assert text_of(page.data[1]) == "tok0 tok1 "
    call = page.data[3]
    assert isinstance(call, ResponseFunctionToolCallItem) and call.name == "get_weather"
    assert [i.to_dict()["reply_to"] for i in page.data] == [None, 1, None, 3]


async def test_items_are_the_history_the_next_chat_turn_replays(
    sdk: openai.AsyncOpenAI, fake_upstream: FakeUpstream
) -> None:
    conversation = await sdk.conversations.create(
        items=[
            {"role": "user", "content": "What's the weather?"},
            {"type": "function_call", "call_id": "call_9", "name": "weather", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "call_9", "output": "sunny"},
            {"role": "assistant", "content": "It is sunny."},
        ]
    )
    cid = conversation.id
    await sdk.conversations.items.create(
        cid, items=[{"role": "user", "content": "Thanks. And tomorrow?"}]
    )
    await sdk.conversations.items.delete(f"msg_{cid}-ms04", conversation_id=cid)
    completion = await sdk.chat.completions.create(
        model="echo",
        messages=[{"role": "user", "content": "Answer briefly."}],
        extra_headers={"X-Conversation-ID": cid},
    )
    sent = orjson.loads(completion.choices[0].message.content or "")
    assert sent == [
        {"role": "user", "content": "What's the weather?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_9",
                    "type": "function",
                    "function": {"name": "weather", "arguments": "{}"},
                }
            ],
        },
        {"role": "tool", "content": "sunny", "tool_call_id": "call_9"},
        {"role": "user", "content": "Thanks. And tomorrow?"},
        {"role": "user", "content": "Answer briefly."},
    ]
    page = await sdk.conversations.items.list(cid, limit=1)
    reply = page.data[0]
    assert text_of(reply) == completion.choices[0].message.content
    assert reply.to_dict()["reply_to"] == 6


async def test_every_call_was_validated_against_the_document(
    sdk: openai.AsyncOpenAI, recorder: Recorder
) -> None:
    conversation = await sdk.conversations.create(items=[{"role": "user", "content": "x"}])
    await sdk.conversations.items.create(conversation.id, items=[{"role": "user", "content": "y"}])
    await sdk.conversations.items.list(conversation.id)
    await sdk.conversations.items.retrieve(
        f"msg_{conversation.id}-ms01", conversation_id=conversation.id
    )
    await sdk.conversations.items.delete(
        f"msg_{conversation.id}-ms01", conversation_id=conversation.id
    )
    with pytest.raises(openai.NotFoundError):
        await sdk.conversations.items.retrieve("nope", conversation_id=conversation.id)
    templates = {t for _, t, _ in recorder.seen}
    assert {
        "/v1/conversations",
        "/v1/conversations/{conversation_id}/items",
        "/v1/conversations/{conversation_id}/items/{item_id}",
    } <= templates
    assert len(recorder.seen) == 6
