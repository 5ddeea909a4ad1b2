"""The history API (``edge/history.py``) end to end: a real app, a real store on disk, and the
fake upstream for conversations written through ``/v1/chat/completions``."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest
from aiohttp.test_utils import TestClient
from fake_upstream import FakeUpstream, MakeEdge

from chunkstore import Store

Client = TestClient[Any, Any]
PREFIXES = ("/v1/conversations", "/api/conversations")


def session(name: str = "s1") -> dict[str, str]:
    return {"x-session-id": name}


async def create(client: Client, who: str = "s1", **body: Any) -> dict[str, Any]:
    resp = await client.post("/v1/conversations", json=body, headers=session(who))
    assert resp.status == 201, await resp.text()
    created: dict[str, Any] = await resp.json()
    return created


async def get_json(
    client: Client, path: str, who: str = "s1", status: int = 200, **params: str
) -> Any:
    resp = await client.get(path, headers=session(who), params=params)
    assert resp.status == status, await resp.text()
    return await resp.json()


def assert_error(body: Any, code: str | None = None, param: str | None = None) -> None:
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    assert "Traceback" not in error["message"]
    if code is not None:
        assert error["code"] == code
    if param is not None:
        assert error["param"] == param


def stored_files(root: Path) -> list[str]:
    if not root.exists():
        return []
    return [os.path.join(d, f) for d, _, files in os.walk(root) for f in files]


def user_dirs(root: Path) -> list[str]:
    return sorted(n for n in os.listdir(root) if n.startswith("us")) if root.exists() else []


# -- create -------------------------------------------------------------------------------------


async def test_create_returns_the_conversation_object(make_edge: MakeEdge) -> None:
    client = await make_edge()
    resp = await client.post(
        "/v1/conversations",
        json={"title": "Trip", "metadata": {"topic": "travel"}, "pinned": True},
        headers=session(),
    )
    assert resp.status == 201
    assert resp.content_type == "application/json"
    body = await resp.json()
    assert body["object"] == "conversation"
    assert body["id"] == "us01-co01"
    assert body["title"] == "Trip"
    assert body["metadata"] == {"topic": "travel"}
    assert body["pinned"] is True
    assert body["deleted_at"] is None
    assert isinstance(body["created_at"], int) and body["created_at"] > 0
    assert body["updated_at"] >= body["created_at"]


async def test_create_without_a_body_uses_defaults(make_edge: MakeEdge) -> None:
    client = await make_edge()
    resp = await client.post("/v1/conversations", headers=session())
    assert resp.status == 201
    body = await resp.json()
    assert (body["title"], body["metadata"], body["pinned"]) == (None, {}, False)


async def test_a_new_session_gets_a_user_and_a_cookie_on_create(make_edge: MakeEdge) -> None:
    client = await make_edge()
    resp = await client.post("/v1/conversations")
    assert resp.status == 201
    cookie = resp.headers["Set-Cookie"]
    assert cookie.startswith("cf_session_id=") and "HttpOnly" in cookie
    # The cookie is the session from now on: the same client sees its conversation.
    listing = await (await client.get("/v1/conversations")).json()
    assert [c["id"] for c in listing["data"]] == [(await resp.json())["id"]]


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        (b"{not json", None),
        (b"[1, 2]", None),
        (b'"title"', None),
        (b'{"title": 5}', "title"),
        (b'{"title": "' + b"x" * 513 + b'"}', "title"),
        (b'{"pinned": "yes"}', "pinned"),
        (b'{"pinned": null}', "pinned"),
        (b'{"metadata": ["a"]}', "metadata"),
        (b'{"metadata": {"k": 1}}', "metadata"),
        (b'{"metadata": {"' + b"k" * 65 + b'": "v"}}', "metadata"),
        (b'{"metadata": {"k": "' + b"v" * 513 + b'"}}', "metadata"),
        (b'{"items": "x"}', "items"),
        (b'{"items": [{"role": "robot", "content": "x"}]}', "items[0].role"),
    ],
)
async def test_create_rejects_bad_bodies(
    make_edge: MakeEdge, store_root: Path, raw: bytes, param: str | None
) -> None:
    client = await make_edge()
    resp = await client.post(
        "/v1/conversations",
        data=raw,
        headers={**session(), "Content-Type": "application/json"},
    )
    assert resp.status == 400
    assert_error(await resp.json(), param=param)
    assert user_dirs(store_root) == []


async def test_create_accepts_metadata_at_the_limits(make_edge: MakeEdge) -> None:
    client = await make_edge()
    metadata = {f"{i:02d}" + "k" * 62: "v" * 512 for i in range(16)}
    body = await create(client, title="t" * 512, metadata=metadata)
    assert body["metadata"] == metadata
    too_many = {str(i): "v" for i in range(17)}
    resp = await client.post("/v1/conversations", json={"metadata": too_many}, headers=session())
    assert resp.status == 400


async def test_the_conversation_limit_is_a_422(make_edge: MakeEdge) -> None:
    client = await make_edge(max_conversations_per_session=2)
    await create(client)
    await create(client)
    resp = await client.post("/v1/conversations", headers=session())
    assert resp.status == 422
    assert_error(await resp.json(), code="limit_exceeded")
    # Another session has its own allowance.
    await create(client, "s2")


# -- list ---------------------------------------------------------------------------------------


async def test_list_is_newest_first_in_pages_without_overlap_or_gap(make_edge: MakeEdge) -> None:
    client = await make_edge()
    ids = [(await create(client, title=f"c{i}"))["id"] for i in range(7)]
    seen: list[str] = []
    after: str | None = None
    pages = 0
    while True:
        params = {"limit": "3"} | ({"after": after} if after else {})
        page = await get_json(client, "/v1/conversations", **params)
        assert page["object"] == "list"
        assert len(page["data"]) <= 3
        assert page["first_id"] == page["data"][0]["id"]
        assert page["last_id"] == page["data"][-1]["id"]
        seen += [c["id"] for c in page["data"]]
        pages += 1
        if not page["has_more"]:
            break
        after = page["last_id"]
    assert pages == 3
    assert seen == ids[::-1]


async def test_list_defaults_to_twenty(make_edge: MakeEdge, store_root: Path) -> None:
    client = await make_edge()
    await create(client)
    store = Store(store_root, durability="none")
    user = store.find_user("s1")
    assert user is not None
    for _ in range(22):
        store.create_conversation(user)
    page = await get_json(client, "/v1/conversations")
    assert len(page["data"]) == 20 and page["has_more"] is True
    page = await get_json(client, "/v1/conversations", limit="100")
    assert len(page["data"]) == 23 and page["has_more"] is False


async def test_an_exact_last_page_has_no_more(make_edge: MakeEdge) -> None:
    client = await make_edge()
    for _ in range(4):
        await create(client)
    first = await get_json(client, "/v1/conversations", limit="2")
    assert first["has_more"] is True
    second = await get_json(client, "/v1/conversations", limit="2", after=first["last_id"])
    assert len(second["data"]) == 2 and second["has_more"] is False
    third = await get_json(client, "/v1/conversations", limit="2", after=second["last_id"])
    assert third == {
        "object": "list",
        "data": [],
        "first_id": None,
        "last_id": None,
        "has_more": False,
    }


async def test_the_cursor_is_stable_while_conversations_are_created(make_edge: MakeEdge) -> None:
    client = await make_edge()
    original = [(await create(client))["id"] for _ in range(6)]
    page = await get_json(client, "/v1/conversations", limit="2")
    seen = [c["id"] for c in page["data"]]
    while page["has_more"]:
        # New conversations sort before page 1: they never shift the pages still to come.
        await create(client)
        page = await get_json(client, "/v1/conversations", limit="2", after=page["last_id"])
        seen += [c["id"] for c in page["data"]]
    assert seen == original[::-1]
    newest = await get_json(client, "/v1/conversations", limit="3")
    assert [c["id"] for c in newest["data"]] == ["us01-co08", "us01-co07", "us01-co06"]


async def test_the_cursor_survives_a_hard_delete_of_its_conversation(make_edge: MakeEdge) -> None:
    client = await make_edge()
    ids = [(await create(client))["id"] for _ in range(5)]
    page = await get_json(client, "/v1/conversations", limit="2")
    resp = await client.delete(f"/v1/conversations/{page['last_id']}?hard=true", headers=session())
    assert resp.status == 200
    rest = await get_json(client, "/v1/conversations", limit="10", after=page["last_id"])
    assert [c["id"] for c in rest["data"]] == ids[:3][::-1]


async def test_offset_paging(make_edge: MakeEdge) -> None:
    client = await make_edge()
    ids = [(await create(client))["id"] for _ in range(5)][::-1]
    pages = [
        await get_json(client, "/v1/conversations", limit="2", offset=str(offset))
        for offset in (0, 2, 4)
    ]
    assert [c["id"] for p in pages for c in p["data"]] == ids
    assert [p["has_more"] for p in pages] == [True, True, False]
    beyond = await get_json(client, "/v1/conversations", limit="2", offset="5")
    assert beyond["data"] == [] and beyond["has_more"] is False
    far = await get_json(client, "/v1/conversations", offset="1000000")
    assert far["data"] == []


async def test_offset_skips_soft_deleted_conversations_unless_included(
    make_edge: MakeEdge,
) -> None:
    client = await make_edge()
    ids = [(await create(client))["id"] for _ in range(4)]
    await client.delete(f"/v1/conversations/{ids[2]}", headers=session())
    visible = await get_json(client, "/v1/conversations", offset="1")
    assert [c["id"] for c in visible["data"]] == [ids[1], ids[0]]
    everything = await get_json(client, "/v1/conversations", offset="1", include_deleted="1")
    assert [c["id"] for c in everything["data"]] == [ids[2], ids[1], ids[0]]


async def test_reads_by_a_new_session_create_no_user(make_edge: MakeEdge, store_root: Path) -> None:
    client = await make_edge()
    listing = await get_json(client, "/v1/conversations", "newcomer")
    assert listing == {
        "object": "list",
        "data": [],
        "first_id": None,
        "last_id": None,
        "has_more": False,
    }
    await get_json(client, "/v1/conversations/us01-co01", "newcomer", status=404)
    await get_json(client, "/v1/conversations/us01-co01/messages", "newcomer", status=404)
    resp = await client.patch(
        "/v1/conversations/us01-co01", json={"title": "x"}, headers=session("newcomer")
    )
    assert resp.status == 404
    assert user_dirs(store_root) == []


# -- get and messages ---------------------------------------------------------------------------


async def test_get_returns_metadata_and_the_first_page_of_messages(
    make_edge: MakeEdge, store_root: Path
) -> None:
    client = await make_edge()
    conversation = await create(client, title="long")
    store = Store(store_root, durability="none")
    for i in range(25):
        store.append_message(conversation["id"], "user" if i % 2 == 0 else "assistant", f"m{i}")
    body = await get_json(client, f"/v1/conversations/{conversation['id']}")
    assert {k: body[k] for k in conversation} == conversation
    messages = body["messages"]
    assert messages["object"] == "list"
    assert [m["seq"] for m in messages["data"]] == list(range(1, 21))
    assert messages["has_more"] is True
    assert (messages["first_seq"], messages["last_seq"]) == (1, 20)
    rest = await get_json(
        client, f"/v1/conversations/{conversation['id']}/messages", after_seq="20"
    )
    assert [m["content"] for m in rest["data"]] == [f"m{i}" for i in range(20, 25)]
    assert rest["has_more"] is False


async def test_a_damaged_conversation_is_listed_flagged_and_stays_readable(
    make_edge: MakeEdge, store_root: Path
) -> None:
    """Issue #10 item 7: one flipped byte in a conversation.json used to make the whole list
    a 503. The conversation is listed and returned with ``damaged: true`` instead (only it),
    its messages stay readable, and the conversation can be continued."""
    client = await make_edge()
    first = await create(client, title="first")
    victim = await create(client, title="victim", metadata={"k": "v"})
    last = await create(client, title="last")
    store = Store(store_root, durability="none")
    store.append_message(victim["id"], "user", "still here")
    meta = store_root / "us01" / "data" / "conversations" / victim["id"] / "conversation.json"
    data = bytearray(meta.read_bytes())
    data[30] ^= 1
    meta.write_bytes(bytes(data))
    listed = await get_json(client, "/v1/conversations")
    assert [c["id"] for c in listed["data"]] == [last["id"], victim["id"], first["id"]]
    assert [c["damaged"] for c in listed["data"]] == [False, True, False]
    flagged = listed["data"][1]
    assert (flagged["title"], flagged["metadata"], flagged["pinned"]) == (None, {}, False)
    assert isinstance(flagged["created_at"], int) and flagged["created_at"] > 0
    body = await get_json(client, f"/v1/conversations/{victim['id']}")
    assert body["damaged"] is True
    assert [m["content"] for m in body["messages"]["data"]] == ["still here"]
    assert first["damaged"] is False  # every conversation object carries the flag
    resp = await client.post(
        "/v1/chat/completions",
        json={"model": "m", "messages": [{"role": "user", "content": "go on"}]},
        headers={**session(), "X-Conversation-ID": victim["id"]},
    )
    assert resp.status == 200, await resp.text()
    await resp.read()
    messages = await get_json(client, f"/v1/conversations/{victim['id']}/messages")
    assert [m["content"] for m in messages["data"]][:2] == ["still here", "go on"]
    # An update writes a whole record again: no longer damaged.
    resp = await client.patch(
        f"/v1/conversations/{victim['id']}", json={"title": "renamed"}, headers=session()
    )
    assert resp.status == 200
    assert (await resp.json())["damaged"] is False


async def test_message_pages_are_stable_and_gap_free(make_edge: MakeEdge, store_root: Path) -> None:
    client = await make_edge()
    cid = (await create(client))["id"]
    store = Store(store_root, durability="none")
    for i in range(23):
        store.append_message(cid, "user", f"m{i}")
    seqs: list[int] = []
    after = 0
    while True:
        page = await get_json(
            client, f"/v1/conversations/{cid}/messages", after_seq=str(after), limit="5"
        )
        seqs += [m["seq"] for m in page["data"]]
        if len(seqs) == 10:
            # Messages arriving between pages are appended after the last seq: no shift.
            store.append_message(cid, "assistant", "late")
        if not page["has_more"]:
            break
        after = page["last_seq"]
    assert seqs == list(range(1, 25))


async def test_messages_of_an_empty_conversation(make_edge: MakeEdge) -> None:
    client = await make_edge()
    cid = (await create(client))["id"]
    page = await get_json(client, f"/v1/conversations/{cid}/messages")
    assert page == {
        "object": "list",
        "data": [],
        "first_seq": None,
        "last_seq": None,
        "has_more": False,
    }


async def test_messages_written_through_the_relay_show_up(make_edge: MakeEdge) -> None:
    client = await make_edge()
    resp = await client.post(
        "/v1/chat/completions",
        json={"model": "tokens-3", "messages": [{"role": "user", "content": "Hello there"}]},
        headers=session(),
    )
    assert resp.status == 200
    cid = resp.headers["X-Conversation-ID"]
    resp = await client.post(
        "/v1/chat/completions",
        json={
            "model": "tokens-130",
            "stream": True,
            "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": "And more"}],
        },
        headers={**session(), "X-Conversation-ID": cid, "X-Agent-ID": "planner"},
    )
    assert resp.status == 200
    assert (await resp.read()).endswith(b"data: [DONE]\n\n")

    listing = await get_json(client, "/v1/conversations")
    assert [(c["id"], c["title"]) for c in listing["data"]] == [(cid, "Hello there")]
    page = await get_json(client, f"/v1/conversations/{cid}/messages")
    data = page["data"]
    assert [(m["seq"], m["role"], m["status"]) for m in data] == [
        (1, "user", "complete"),
        (2, "assistant", "complete"),
        (3, "user", "complete"),
        (4, "assistant", "complete"),
    ]
    assert data[0]["content"] == "Hello there"
    assert data[1]["content"] == "tok0 tok1 tok2 "
    assert data[1]["agent_id"] == "tokens-3"
    assert data[1]["finish_reason"] == "stop"
    assert data[1]["usage"]["completion_tokens"] == 5
    assert data[3]["content"] == "".join(f"tok{i} " for i in range(130))
    assert data[3]["agent_id"] == "planner"
    assert data[3]["usage"]["completion_tokens"] == 130
    for message in data:
        assert message["object"] == "conversation.message"
        assert message["id"] == f"{cid}-ms{message['seq']:02d}"
        assert message["damaged"] is False
        assert isinstance(message["created_at"], int)
        assert message["tool_calls"] is None and message["tool_call_id"] is None


async def test_tool_calls_are_returned_with_their_messages(make_edge: MakeEdge) -> None:
    client = await make_edge()
    resp = await client.post(
        "/v1/chat/completions",
        json={"model": "tools", "stream": True, "messages": [{"role": "user", "content": "w?"}]},
        headers=session(),
    )
    await resp.read()
    cid = resp.headers["X-Conversation-ID"]
    reply = (await get_json(client, f"/v1/conversations/{cid}/messages"))["data"][1]
    assert reply["finish_reason"] == "tool_calls"
    assert reply["tool_calls"][0]["function"]["name"] == "get_weather"


async def test_a_message_still_streaming_shows_its_text_so_far(
    make_edge: MakeEdge, store_root: Path
) -> None:
    client = await make_edge()
    cid = (await create(client))["id"]
    store = Store(store_root, durability="none")
    writer = store.stream_message(cid, agent_id="bot", chunk_tokens=1000, flush_interval=None)
    try:
        for token in ("Hel", "lo, ", "wor"):
            writer.append(token)
        writer.flush()
        message = (await get_json(client, f"/v1/conversations/{cid}/messages"))["data"][0]
        assert (message["status"], message["content"]) == ("streaming", "Hello, wor")
        assert message["agent_id"] == "bot" and message["finish_reason"] is None

        writer.append("ld")
        writer.flush()
        detail = await get_json(client, f"/v1/conversations/{cid}")
        assert detail["messages"]["data"][0]["content"] == "Hello, world"

        writer.finish("stop")
        message = (await get_json(client, f"/v1/conversations/{cid}/messages"))["data"][0]
        assert (message["status"], message["content"]) == ("complete", "Hello, world")
        assert message["finish_reason"] == "stop"
    finally:
        if not writer.closed:
            writer.abandon()


# -- update -------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["PATCH", "POST"])
@pytest.mark.parametrize("prefix", PREFIXES)
async def test_update_title_pinned_and_metadata(
    make_edge: MakeEdge, method: str, prefix: str
) -> None:
    client = await make_edge()
    conversation = await create(client, title="old", metadata={"a": "1", "b": "2"})
    path = f"{prefix}/{conversation['id']}"
    resp = await client.request(
        method,
        path,
        json={"title": "new", "pinned": True, "metadata": {"c": "3"}},
        headers=session(),
    )
    assert resp.status == 200
    body = await resp.json()
    assert (body["title"], body["pinned"], body["metadata"]) == ("new", True, {"c": "3"})
    assert body["created_at"] == conversation["created_at"]
    # Only what is sent changes; null clears the title.
    resp = await client.request(method, path, json={"title": None}, headers=session())
    body = await resp.json()
    assert (body["title"], body["pinned"], body["metadata"]) == (None, True, {"c": "3"})
    fetched = await get_json(client, path)
    assert (fetched["title"], fetched["pinned"], fetched["metadata"]) == (None, True, {"c": "3"})


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        (b"", None),
        (b"{}", None),
        (b"null", None),
        (b"{bad", None),
        (b'{"name": "x"}', "name"),
        (b'{"title": ["x"]}', "title"),
        (b'{"pinned": 1}', "pinned"),
        (b'{"metadata": "k=v"}', "metadata"),
        (b'{"metadata": {"k": null}}', "metadata"),
    ],
)
async def test_update_rejects_bad_bodies(
    make_edge: MakeEdge, raw: bytes, param: str | None
) -> None:
    client = await make_edge()
    conversation = await create(client, title="keep")
    path = f"/v1/conversations/{conversation['id']}"
    resp = await client.patch(
        path, data=raw, headers={**session(), "Content-Type": "application/json"}
    )
    assert resp.status == 400
    assert_error(await resp.json(), param=param)
    assert (await get_json(client, path))["title"] == "keep"


# -- delete and restore -------------------------------------------------------------------------


async def test_soft_delete_restore_and_hard_delete(make_edge: MakeEdge, store_root: Path) -> None:
    client = await make_edge()
    keep = await create(client, title="keep")
    gone = await create(client, title="gone")
    path = f"/v1/conversations/{gone['id']}"

    resp = await client.delete(path, headers=session())
    assert resp.status == 200
    assert await resp.json() == {
        "id": gone["id"],
        "object": "conversation.deleted",
        "deleted": True,
    }
    # Hidden from the listing, gone for OpenAI's retrieve and update (404, as OpenAI's
    # deleted conversations), still readable with include_deleted, and listed with it.
    listing = await get_json(client, "/v1/conversations")
    assert [c["id"] for c in listing["data"]] == [keep["id"]]
    await get_json(client, path, status=404)
    resp = await client.post(path, json={"title": "x"}, headers=session())
    assert resp.status == 404
    fetched = await get_json(client, path, include_deleted="1")
    assert isinstance(fetched["deleted_at"], int)
    assert fetched["title"] == "gone"
    resp = await client.patch(f"{path}?include_deleted=1", json={"pinned": True}, headers=session())
    assert resp.status == 200 and (await resp.json())["pinned"] is True
    for flag in ("1", "true", "TRUE"):
        listing = await get_json(client, "/v1/conversations", include_deleted=flag)
        assert [c["id"] for c in listing["data"]] == [gone["id"], keep["id"]]
    listing = await get_json(client, "/v1/conversations", include_deleted="0")
    assert [c["id"] for c in listing["data"]] == [keep["id"]]
    # Deleting again is harmless.
    assert (await client.delete(path, headers=session())).status == 200

    resp = await client.post(f"{path}/restore", headers=session())
    assert resp.status == 200
    restored = await resp.json()
    assert restored["deleted_at"] is None and restored["title"] == "gone"
    listing = await get_json(client, "/v1/conversations")
    assert [c["id"] for c in listing["data"]] == [gone["id"], keep["id"]]

    resp = await client.delete(f"{path}?hard=true", headers=session())
    assert resp.status == 200
    assert await resp.json() == {
        "id": gone["id"],
        "object": "conversation.deleted",
        "deleted": True,
    }
    await get_json(client, path, status=404)
    await get_json(client, f"{path}/messages", status=404)
    listing = await get_json(client, "/v1/conversations", include_deleted="1")
    assert [c["id"] for c in listing["data"]] == [keep["id"]]
    assert (await client.delete(f"{path}?hard=true", headers=session())).status == 404
    assert (await client.delete(path, headers=session())).status == 404
    assert (await client.post(f"{path}/restore", headers=session())).status == 404
    assert not any(gone["id"] in f for f in stored_files(store_root))


async def test_a_soft_deleted_conversation_cannot_be_continued(make_edge: MakeEdge) -> None:
    client = await make_edge()
    cid = (await create(client))["id"]
    await client.delete(f"/v1/conversations/{cid}", headers=session())
    resp = await client.post(
        "/v1/chat/completions",
        json={"model": "tokens-2", "messages": [{"role": "user", "content": "hi"}]},
        headers={**session(), "X-Conversation-ID": cid},
    )
    assert resp.status == 422
    await client.post(f"/v1/conversations/{cid}/restore", headers=session())
    resp = await client.post(
        "/v1/chat/completions",
        json={"model": "tokens-2", "messages": [{"role": "user", "content": "hi"}]},
        headers={**session(), "X-Conversation-ID": cid},
    )
    assert resp.status == 200


# -- scoping ------------------------------------------------------------------------------------


async def _every_request(client: Client, cid: str, who: str) -> list[tuple[str, int, Any]]:
    base = f"/v1/conversations/{cid}"
    calls: list[tuple[str, str, dict[str, Any]]] = [
        ("GET", base, {}),
        ("PATCH", base, {"json": {"title": "mine now"}}),
        ("POST", base, {"json": {"pinned": True}}),
        ("DELETE", base, {}),
        ("DELETE", f"{base}?hard=true", {}),
        ("POST", f"{base}/restore", {}),
        ("GET", f"{base}/messages", {}),
        ("GET", f"/api/conversations/{cid}", {}),
        ("GET", f"/api/conversations/{cid}/messages", {}),
    ]
    out = []
    for method, path, kwargs in calls:
        resp = await client.request(method, path, headers=session(who), **kwargs)
        out.append((f"{method} {path}", resp.status, await resp.json()))
    return out


@pytest.mark.parametrize("has_user", [True, False])
async def test_another_session_sees_and_touches_nothing(
    make_edge: MakeEdge, store_root: Path, has_user: bool
) -> None:
    client = await make_edge()
    mine = await create(client, title="private", metadata={"k": "v"})
    store = Store(store_root, durability="none")
    store.append_message(mine["id"], "user", "secret words")
    if has_user:
        await create(client, "other")
    missing = (await client.get("/v1/conversations/us01-co99", headers=session())).status
    assert missing == 404
    not_found = await (await client.get("/v1/conversations/us01-co99", headers=session())).json()

    for call, status, body in await _every_request(client, mine["id"], "other"):
        assert status == 404, call
        assert body == not_found, call  # indistinguishable from a missing conversation
    listing = await get_json(client, "/v1/conversations", "other", include_deleted="1")
    assert [c["id"] for c in listing["data"]] == (["us02-co01"] if has_user else [])
    # The cursor of another user is refused, not followed.
    resp = await client.get(
        "/v1/conversations", params={"after": "us01-co99"}, headers=session("other")
    )
    assert resp.status == (400 if has_user else 200)

    # Untouched for its owner.
    detail = await get_json(client, f"/v1/conversations/{mine['id']}")
    assert (detail["title"], detail["pinned"], detail["deleted_at"]) == ("private", False, None)
    assert detail["messages"]["data"][0]["content"] == "secret words"


# -- persistence off ----------------------------------------------------------------------------


async def test_every_endpoint_is_501_with_persistence_off(
    make_edge: MakeEdge, store_root: Path, tmp_path: Path
) -> None:
    client = await make_edge(persist_transcripts=False)
    calls: list[tuple[str, str, dict[str, Any]]] = []
    for prefix in PREFIXES:
        item = f"{prefix}/us01-co01"
        calls += [
            ("POST", prefix, {"json": {"title": "x"}}),
            ("POST", prefix, {"data": b"{bad json"}),
            ("GET", prefix, {}),
            ("GET", f"{prefix}?limit=0", {}),
            ("GET", item, {}),
            ("GET", f"{prefix}/not-an-id", {}),
            ("GET", f"{item}/messages", {}),
            ("PATCH", item, {"json": {"title": "x"}}),
            ("POST", item, {"json": {"title": "x"}}),
            ("DELETE", item, {}),
            ("DELETE", f"{item}?hard=true", {}),
            ("POST", f"{item}/restore", {}),
        ]
    for method, path, kwargs in calls:
        resp = await client.request(method, path, headers=session(), **kwargs)
        assert resp.status == 501, f"{method} {path}"
        assert_error(await resp.json(), code="persistence_disabled")
    # Chat still works as a pure proxy, and nothing at all was written.
    resp = await client.post(
        "/v1/chat/completions",
        json={"model": "tokens-2", "messages": [{"role": "user", "content": "hi"}]},
        headers=session(),
    )
    assert resp.status == 200 and "X-Conversation-ID" not in resp.headers
    assert not store_root.exists()
    assert stored_files(tmp_path) == []


# -- alias --------------------------------------------------------------------------------------


async def test_the_api_alias_serves_the_same_history(make_edge: MakeEdge) -> None:
    client = await make_edge()
    resp = await client.post("/api/conversations", json={"title": "via alias"}, headers=session())
    assert resp.status == 201
    created = await resp.json()
    v1 = await get_json(client, "/v1/conversations")
    api = await get_json(client, "/api/conversations")
    assert v1 == api and v1["data"] == [created]
    assert await get_json(client, f"/api/conversations/{created['id']}") == await get_json(
        client, f"/v1/conversations/{created['id']}"
    )
    page = await get_json(client, f"/api/conversations/{created['id']}/messages")
    assert page["data"] == []
    resp = await client.delete(f"/api/conversations/{created['id']}", headers=session())
    assert (await resp.json())["deleted"] is True
    resp = await client.post(f"/api/conversations/{created['id']}/restore", headers=session())
    assert (await resp.json())["deleted_at"] is None


# -- hostile input ------------------------------------------------------------------------------

HOSTILE_IDS = [
    ("..%2F..%2Fetc", 400),
    ("..%2F..%2Fus01%2Fuser.json", 400),
    ("us01-co01%00", 400),
    ("US01-CO01", 400),
    ("us1-co1", 400),
    ("us01-co001", 400),
    ("us00-co01", 400),
    ("us01-co01-ms01", 400),
    ("%20us01-co01", 400),
    ("us01-co" + "1" * 5000, 400),
    ("us" + "9" * 18 + "-co" + "9" * 18, 404),
    ("us01-co42", 404),
    ("us02-co01", 404),
]


@pytest.mark.parametrize(("conversation_id", "expected"), HOSTILE_IDS)
async def test_hostile_conversation_ids(
    make_edge: MakeEdge, store_root: Path, conversation_id: str, expected: int
) -> None:
    client = await make_edge()
    await create(client)
    before = sorted(stored_files(store_root))
    base = f"/v1/conversations/{conversation_id}"
    for method, path in [
        ("GET", base),
        ("PATCH", base),
        ("POST", base),
        ("DELETE", base),
        ("DELETE", f"{base}?hard=true"),
        ("POST", f"{base}/restore"),
        ("GET", f"{base}/messages"),
        ("GET", f"/api/conversations/{conversation_id}"),
    ]:
        resp = await client.request(method, path, json={"title": "x"}, headers=session())
        assert resp.status == expected, f"{method} {path}"
        assert_error(await resp.json())
    assert sorted(stored_files(store_root)) == before


@pytest.mark.parametrize(
    ("path", "param"),
    [
        ("/v1/conversations?limit=0", "limit"),
        ("/v1/conversations?limit=101", "limit"),
        ("/v1/conversations?limit=abc", "limit"),
        ("/v1/conversations?limit=-1", "limit"),
        ("/v1/conversations?limit=1.5", "limit"),
        ("/v1/conversations?limit=%2B5", "limit"),
        ("/v1/conversations?limit=", "limit"),
        ("/v1/conversations?limit=" + "9" * 40, "limit"),
        ("/v1/conversations?offset=x", "offset"),
        ("/v1/conversations?offset=-1", "offset"),
        ("/v1/conversations?offset=" + "9" * 30, "offset"),
        ("/v1/conversations?offset=1&after=us01-co01", "offset"),
        ("/v1/conversations?after=nope", "after"),
        ("/v1/conversations?after=us02-co01", "after"),
        ("/v1/conversations?include_deleted=maybe", "include_deleted"),
        ("/v1/conversations/us01-co01/messages?after_seq=-1", "after_seq"),
        ("/v1/conversations/us01-co01/messages?after_seq=x", "after_seq"),
        ("/v1/conversations/us01-co01/messages?after_seq=" + "9" * 19, "after_seq"),
        ("/v1/conversations/us01-co01/messages?after_seq=" + "9" * 200, "after_seq"),
        ("/v1/conversations/us01-co01/messages?limit=0", "limit"),
        ("/v1/conversations/us01-co01/messages?limit=1000", "limit"),
        ("/v1/conversations/us01-co01/messages?limit=%D9%A3", "limit"),  # Arabic-Indic 3
        ("/api/conversations/us01-co01/messages?limit=abc", "limit"),
    ],
)
async def test_bad_query_values_are_400(make_edge: MakeEdge, path: str, param: str) -> None:
    client = await make_edge()
    await create(client)
    resp = await client.get(path, headers=session())
    assert resp.status == 400
    assert_error(await resp.json(), code="invalid_value", param=param)


async def test_bad_hard_flag_is_400_and_deletes_nothing(make_edge: MakeEdge) -> None:
    client = await make_edge()
    cid = (await create(client))["id"]
    resp = await client.delete(f"/v1/conversations/{cid}?hard=yes please", headers=session())
    assert resp.status == 400
    assert_error(await resp.json(), param="hard")
    assert (await get_json(client, f"/v1/conversations/{cid}"))["deleted_at"] is None


async def test_other_methods_on_history_paths_are_405_and_never_relayed(
    make_edge: MakeEdge, fake_upstream: FakeUpstream
) -> None:
    client = await make_edge()
    cid = (await create(client))["id"]
    for method, path in [
        ("PUT", "/v1/conversations"),
        ("DELETE", "/v1/conversations"),
        ("PUT", f"/v1/conversations/{cid}"),
        ("DELETE", f"/v1/conversations/{cid}/messages"),
        ("GET", f"/v1/conversations/{cid}/restore"),
        ("PATCH", "/api/conversations"),
    ]:
        resp = await client.request(method, path, headers=session())
        assert resp.status == 405, f"{method} {path}"
        assert_error(await resp.json(), code="method_not_allowed")
        assert method not in resp.headers["Allow"]
    assert fake_upstream.requests == []


# -- an SDK client ------------------------------------------------------------------------------


async def test_the_openai_sdk_can_use_the_history_api(make_edge: MakeEdge) -> None:
    client = await make_edge()
    sdk = openai.AsyncOpenAI(
        base_url=str(client.make_url("/v1")),
        api_key="sk-test",
        max_retries=0,
        default_headers=session("sdk"),
    )
    try:
        # OpenAI's own Conversations resource parses the edge's objects.
        conversation = await sdk.conversations.create(metadata={"source": "sdk"})
        assert conversation.object == "conversation"
        assert conversation.metadata == {"source": "sdk"}
        fetched = await sdk.conversations.retrieve(conversation.id)
        assert fetched.id == conversation.id and fetched.created_at == conversation.created_at
        updated = await sdk.conversations.update(conversation.id, metadata={"source": "edited"})
        assert updated.metadata == {"source": "edited"}

        # The low-level methods reach the rest.
        created: Any = await sdk.post("/conversations", cast_to=object, body={"title": "raw"})
        assert created["title"] == "raw"
        listing: Any = await sdk.get("/conversations", cast_to=object)
        assert [c["id"] for c in listing["data"]] == [created["id"], conversation.id]
        patched: Any = await sdk.patch(
            f"/conversations/{created['id']}", cast_to=object, body={"pinned": True}
        )
        assert patched["pinned"] is True

        completion = await sdk.chat.completions.create(
            model="tokens-2", messages=[{"role": "user", "content": "hi"}]
        )
        assert completion.choices[0].message.content == "tok0 tok1 "
        listing = await sdk.get("/conversations", cast_to=object)
        newest = listing["data"][0]["id"]
        messages: Any = await sdk.get(f"/conversations/{newest}/messages", cast_to=object)
        assert [m["role"] for m in messages["data"]] == ["user", "assistant"]

        deleted = await sdk.conversations.delete(conversation.id)
        assert deleted.deleted is True and deleted.object == "conversation.deleted"
        with pytest.raises(openai.NotFoundError) as caught:
            await sdk.conversations.retrieve("us42-co01")
        assert caught.value.code == "not_found"
        with pytest.raises(openai.BadRequestError):
            await sdk.conversations.retrieve("conv_123")
    finally:
        await sdk.close()


# -- titles and reply_to ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "title"),
    [
        ("Short question", "Short question"),
        ("  spaced \n\t out  ", "spaced out"),
        ("word " * 16, ("word " * 16).strip()),  # 79 characters: fits
        ("x" * 80, "x" * 80),
        (
            "Plan a three day trip to Lisbon with a day in Sintra and good seafood restaurants "
            "near the river",
            "Plan a three day trip to Lisbon with a day in Sintra and good seafood\u2026",
        ),
        ("y" * 200, "y" * 79 + "\u2026"),  # one word longer than a title: cut mid-word
        ("a" * 78 + " bcdef", "a" * 78 + "\u2026"),
        ("abc, " * 30, ("abc, " * 16).rstrip(", ") + "\u2026"),
    ],
)
async def test_titles_are_cut_at_a_word_boundary(
    make_edge: MakeEdge, text: str, title: str
) -> None:
    client = await make_edge()
    resp = await client.post(
        "/v1/chat/completions",
        json={"model": "tokens-1", "messages": [{"role": "user", "content": text}]},
        headers=session(),
    )
    assert resp.status == 200
    cid = resp.headers["X-Conversation-ID"]
    got = (await get_json(client, f"/v1/conversations/{cid}"))["title"]
    assert got == title
    assert len(got) <= 80


async def test_replies_record_the_seq_they_answer(make_edge: MakeEdge) -> None:
    client = await make_edge()
    resp = await client.post(
        "/v1/chat/completions",
        json={"model": "tokens-2", "messages": [{"role": "user", "content": "first"}]},
        headers=session(),
    )
    cid = resp.headers["X-Conversation-ID"]
    headers = {**session(), "X-Conversation-ID": cid}
    resp = await client.post(
        "/v1/chat/completions",
        json={"model": "tools", "stream": True, "messages": [{"role": "user", "content": "w?"}]},
        headers=headers,
    )
    await resp.read()
    call_id = (await get_json(client, f"/v1/conversations/{cid}/messages"))["data"][3][
        "tool_calls"
    ][0]["id"]
    # A tool result is what the next reply answers.
    resp = await client.post(
        "/v1/chat/completions",
        json={
            "model": "tokens-2",
            "stream": True,
            "messages": [{"role": "tool", "tool_call_id": call_id, "content": "sunny"}],
        },
        headers=headers,
    )
    await resp.read()
    # A retry whose question an earlier, failed attempt stored answers that question.
    for model, status in (("error-500", 500), ("tokens-2", 200)):
        resp = await client.post(
            "/v1/chat/completions",
            json={"model": model, "messages": [{"role": "user", "content": "again"}]},
            headers=headers,
        )
        assert resp.status == status
    data = (await get_json(client, f"/v1/conversations/{cid}/messages"))["data"]
    assert [(m["seq"], m["role"], m["reply_to"]) for m in data] == [
        (1, "user", None),
        (2, "assistant", 1),
        (3, "user", None),
        (4, "assistant", 3),
        (5, "tool", None),
        (6, "assistant", 5),
        (7, "user", None),
        (8, "assistant", 7),
    ]


async def test_concurrent_turns_pair_each_reply_with_its_question(make_edge: MakeEdge) -> None:
    """Two turns sent at once may be stored ``user, user, assistant, assistant``: each reply
    says which question it answers."""
    client = await make_edge()
    cid = (await create(client))["id"]
    headers = {**session(), "X-Conversation-ID": cid}

    async def ask(question: str) -> None:
        resp = await client.post(
            "/v1/chat/completions",
            json={
                "model": "echo",
                "stream": True,
                "messages": [{"role": "user", "content": question}],
            },
            headers=headers,
        )
        assert resp.status == 200
        await resp.read()

    await asyncio.gather(ask("question A"), ask("question B"), ask("question C"))
    data = (await get_json(client, f"/v1/conversations/{cid}/messages"))["data"]
    by_seq = {m["seq"]: m for m in data}
    replies = [m for m in data if m["role"] == "assistant"]
    assert len(replies) == 3
    answered = set()
    for reply in replies:
        question = by_seq[reply["reply_to"]]
        assert question["role"] == "user"
        # The echo model answers with the messages it was sent: its question came last.
        sent = orjson.loads(reply["content"])
        assert sent[-1] == {"role": "user", "content": question["content"]}
        answered.add(question["content"])
    assert answered == {"question A", "question B", "question C"}
