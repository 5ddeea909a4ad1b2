"""``GET /v1/conversations/export`` (``edge/export.py``): "download my data" — the session's
own conversations in the chunkstore export format, streamed as an attachment, importable."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient
from fake_upstream import MakeEdge

from chunkstore import Store, import_lines

Client = TestClient[Any, Any]


def session(name: str) -> dict[str, str]:
    return {"x-session-id": name}


async def chat(client: Client, who: str, text: str, conversation: str | None = None) -> str:
    headers = session(who)
    if conversation is not None:
        headers["X-Conversation-ID"] = conversation
    resp = await client.post(
        "/v1/chat/completions",
        json={"model": "m", "messages": [{"role": "user", "content": text}]},
        headers=headers,
    )
    assert resp.status == 200, await resp.text()
    await resp.read()
    return resp.headers["X-Conversation-ID"]


async def download(client: Client, path: str, who: str) -> tuple[Any, list[dict[str, Any]]]:
    resp = await client.get(path, headers=session(who))
    assert resp.status == 200, await resp.text()
    body = await resp.read()
    return resp, [orjson.loads(line) for line in body.splitlines()]


@pytest.mark.parametrize("prefix", ["/v1/conversations", "/api/conversations"])
async def test_export_is_the_sessions_data_as_an_attachment(
    make_edge: MakeEdge, store_root: Path, tmp_path: Path, prefix: str
) -> None:
    client = await make_edge()
    mine = await chat(client, "alice", "hello")
    await chat(client, "alice", "and more", conversation=mine)
    gone = await chat(client, "alice", "to delete")
    resp = await client.delete(f"/v1/conversations/{gone}", headers=session("alice"))
    assert resp.status == 200
    await chat(client, "bob", "bob's secret")

    resp, lines = await download(client, f"{prefix}/export", "alice")
    assert resp.headers["Content-Type"] == "application/x-ndjson"
    disposition = resp.headers["Content-Disposition"]
    assert disposition.startswith('attachment; filename="chunkstore-export-us01-')
    assert disposition.endswith('.jsonl"')
    assert resp.headers["Cache-Control"] == "no-store"
    header, user, *rest = lines
    assert (header["type"], header["format"], header["version"]) == (
        "export",
        "chunkstore-export",
        1,
    )
    assert header["source"] == "chunkstore edge"  # never the server's path
    assert str(store_root) not in orjson.dumps(lines).decode()
    assert user["id"] == "us01"
    # The digests of the user's principals are the server's, never in a client's file.
    assert user["sessions"] == []
    assert hashlib.sha256(b"alice").hexdigest() not in orjson.dumps(lines).decode()
    conversations = [line for line in rest if line["type"] == "conversation"]
    assert [c["id"] for c in conversations] == [mine, gone]  # soft-deleted ones too
    assert conversations[1]["deleted_at"] is not None
    texts = [line["content"] for line in rest if line["type"] == "message"]
    assert "hello" in texts and "and more" in texts
    assert "bob's secret" not in orjson.dumps(lines).decode()

    # What was downloaded imports into a new store whole (under its user number: no session
    # came with it).
    with Store(tmp_path / "restored", durability="none") as restored:
        report = import_lines(restored, lines, verify=True)
        assert report.conversations_imported == 2
        assert restored.users() == ["us01"] and restored.find_user("alice") is None
        with Store(store_root, durability="none") as original:
            assert restored.messages(mine, limit=None) == original.messages(mine, limit=None)


async def test_an_unknown_session_gets_the_header_alone(
    make_edge: MakeEdge, store_root: Path
) -> None:
    client = await make_edge()
    await chat(client, "alice", "hello")
    resp, lines = await download(client, "/v1/conversations/export", "stranger")
    assert [line["type"] for line in lines] == ["export"]
    assert 'filename="chunkstore-export-empty-' in resp.headers["Content-Disposition"]
    with Store(store_root, durability="none") as store:
        assert store.find_user("stranger") is None  # nothing created


async def test_export_streams_many_lines(make_edge: MakeEdge, store_root: Path) -> None:
    client = await make_edge()
    cid = await chat(client, "alice", "first")
    with Store(store_root, durability="none") as store:
        for i in range(600):  # more than one batch of lines
            store.append_message(cid, "user", f"m{i}")
    _, lines = await download(client, "/v1/conversations/export", "alice")
    messages = [line for line in lines if line["type"] == "message"]
    assert len(messages) == 602 and messages[-1]["content"] == "m599"
    assert [m["seq"] for m in messages] == list(range(1, 603))


async def test_export_without_persistence_and_other_methods(make_edge: MakeEdge) -> None:
    client = await make_edge(persist_transcripts=False)
    resp = await client.get("/v1/conversations/export", headers=session("alice"))
    assert resp.status == 501
    client = await make_edge()
    resp = await client.post("/v1/conversations/export", headers=session("alice"))
    assert resp.status == 405
