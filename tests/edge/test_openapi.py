"""``/openapi.json``: a valid OpenAPI 3.1 document that covers every route of the app, and whose
response schemas real responses validate against."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient
from fake_upstream import MakeEdge
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate as validate_openapi
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from chunkstore import Store
from edge.app import create_app
from edge.config import EdgeConfig
from edge.openapi import openapi_document

Client = TestClient[Any, Any]
DOC_URI = "urn:edge:openapi"
S1 = {"x-session-id": "s1"}
_TEMPLATE = re.compile(r"\{[^}]*\}")


def normalized(path: str) -> str:
    """A path template with its parameter names erased: ``/v1/{tail}`` == ``/v1/{path}``."""
    return _TEMPLATE.sub("{}", path)


def pointer(*parts: str) -> str:
    return "".join("/" + p.replace("~", "~0").replace("/", "~1") for p in parts)


class Contract:
    """Validates responses against the document, resolving ``$ref`` s into its components."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc
        self.registry: Registry[Any] = Registry().with_resource(
            DOC_URI, DRAFT202012.create_resource(doc)
        )
        self.checked: set[tuple[str, str, str]] = set()

    def schema_pointer(self, path: str, method: str, status: int, media: str) -> str:
        responses = self.doc["paths"][path][method.lower()]["responses"]
        assert str(status) in responses, f"{method} {path} does not document {status}"
        location = pointer("paths", path, method.lower(), "responses", str(status))
        response = responses[str(status)]
        if "$ref" in response:
            location = response["$ref"].removeprefix("#")
            response = self.resolve(location)
        assert media in response["content"], f"{method} {path} {status} has no {media}"
        return location + pointer("content", media, "schema")

    def resolve(self, location: str) -> Any:
        node: Any = self.doc
        for part in location.strip("/").split("/"):
            node = node[part.replace("~1", "/").replace("~0", "~")]
        return node

    def validate(
        self, path: str, method: str, status: int, body: Any, media: str = "application/json"
    ) -> None:
        location = self.schema_pointer(path, method, status, media)
        validator = Draft202012Validator({"$ref": f"{DOC_URI}#{location}"}, registry=self.registry)
        errors = sorted(validator.iter_errors(body), key=lambda e: list(e.path))
        assert not errors, f"{method} {path} {status}: " + "; ".join(
            f"{list(e.path)}: {e.message}" for e in errors
        )
        self.checked.add((path, method.lower(), str(status)))

    async def check(
        self,
        client: Client,
        method: str,
        url: str,
        template: str,
        status: int,
        **kwargs: Any,
    ) -> Any:
        kwargs.setdefault("headers", S1)
        resp = await client.request(method, url, **kwargs)
        assert resp.status == status, await resp.text()
        assert resp.content_type == "application/json"
        body = await resp.json()
        self.validate(template, method, status, body)
        return body


@pytest.fixture
def contract() -> Contract:
    return Contract(openapi_document())


# -- the document -------------------------------------------------------------------------------


def test_the_document_is_valid_openapi_3_1() -> None:
    doc = openapi_document()
    assert doc["openapi"].startswith("3.1.")
    validate_openapi(doc)


def test_the_document_is_built_once() -> None:
    assert openapi_document() is openapi_document()


def test_every_route_of_the_app_is_documented(tmp_path: Path) -> None:
    app = create_app(EdgeConfig(persist_transcripts=True, db_url=f"file:{tmp_path}/users"))
    documented = {normalized(path): item for path, item in openapi_document()["paths"].items()}
    seen = set()
    for route in app.router.routes():
        assert route.resource is not None
        path = normalized(route.resource.canonical)
        assert path in documented, f"{route.method} {route.resource.canonical} is not documented"
        seen.add(path)
        if route.method == "HEAD":
            continue
        if route.method == "*":
            # The relay takes any method; a history path's "*" route only answers 405.
            if path == "/v1/{}":
                assert {"get", "post", "put", "patch", "delete"} <= set(documented[path])
            continue
        assert route.method.lower() in documented[path], f"{route.method} {path} undocumented"
    # ...and nothing is documented that the app does not serve.
    assert seen == set(documented)


def test_the_documented_headers_and_components() -> None:
    doc = openapi_document()
    components = doc["components"]
    for name in ("Conversation", "ConversationList", "Message", "MessageList", "Deleted", "Error"):
        assert name in components["schemas"]
    parameters = {(p["in"], p["name"]) for p in components["parameters"].values()}
    assert {
        ("header", "X-Conversation-ID"),
        ("header", "x-session-id"),
        ("header", "X-Agent-ID"),
        ("cookie", "cf_session_id"),
    } <= parameters
    chat = doc["paths"]["/v1/chat/completions"]["post"]
    assert "X-Conversation-ID" in chat["responses"]["200"]["headers"]
    assert set(chat["responses"]["200"]["content"]) == {"application/json", "text/event-stream"}
    assert set(doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"]) == {"text/plain"}
    for path in ("/v1/conversations", "/api/conversations"):
        assert {"get", "post"} <= set(doc["paths"][path])


async def test_the_served_document_is_the_built_one(make_edge: MakeEdge) -> None:
    client = await make_edge()
    resp = await client.get("/openapi.json")
    assert resp.status == 200 and resp.content_type == "application/json"
    assert orjson.loads(await resp.read()) == orjson.loads(orjson.dumps(openapi_document()))


# -- real responses against the schemas ---------------------------------------------------------


async def test_history_responses_match_their_schemas(
    make_edge: MakeEdge, store_root: Path, contract: Contract
) -> None:
    client = await make_edge(max_conversations_per_session=2)
    c = contract
    created = await c.check(
        client,
        "POST",
        "/v1/conversations",
        "/v1/conversations",
        201,
        json={"title": "t", "metadata": {"k": "v"}},
    )
    cid = created["id"]
    await c.check(client, "POST", "/api/conversations", "/api/conversations", 201)

    # Messages of every kind: relayed (user, assistant with usage), tool calls, streaming.
    resp = await client.post(
        "/v1/chat/completions",
        json={"model": "tokens-3", "messages": [{"role": "user", "content": "hi"}]},
        headers={**S1, "X-Conversation-ID": cid},
    )
    assert resp.status == 200
    c.validate("/v1/chat/completions", "POST", 200, await resp.json())
    resp = await client.post(
        "/v1/chat/completions",
        json={"model": "tools", "stream": True, "messages": [{"role": "user", "content": "w"}]},
        headers={**S1, "X-Conversation-ID": cid},
    )
    assert resp.content_type == "text/event-stream"
    await resp.read()
    store = Store(store_root, durability="none")
    store.append_message(cid, "user", [{"type": "text", "text": "parts"}])
    writer = store.stream_message(cid, flush_interval=None)
    writer.append("so far")
    writer.flush()
    try:
        item = f"/v1/conversations/{cid}"
        messages = await c.check(
            client, "GET", f"{item}/messages", "/v1/conversations/{conversation_id}/messages", 200
        )
        statuses = {m["status"] for m in messages["data"]}
        assert statuses == {"complete", "streaming"}
        assert any(m["tool_calls"] for m in messages["data"])
        await c.check(
            client,
            "GET",
            f"/api/conversations/{cid}/messages?after_seq=2&limit=2",
            "/api/conversations/{conversation_id}/messages",
            200,
        )
        await c.check(client, "GET", item, "/v1/conversations/{conversation_id}", 200)
    finally:
        writer.finish()

    await c.check(client, "GET", "/v1/conversations?limit=1", "/v1/conversations", 200)
    await c.check(client, "GET", "/api/conversations?offset=5", "/api/conversations", 200)
    await c.check(
        client,
        "PATCH",
        item,
        "/v1/conversations/{conversation_id}",
        200,
        json={"pinned": True, "title": None},
    )
    await c.check(
        client, "POST", item, "/v1/conversations/{conversation_id}", 200, json={"metadata": None}
    )
    await c.check(client, "DELETE", item, "/v1/conversations/{conversation_id}", 200)
    # OpenAI's retrieve of a deleted conversation is a 404; include_deleted still reaches it.
    await c.check(client, "GET", item, "/v1/conversations/{conversation_id}", 404)
    deleted = await c.check(
        client, "GET", f"{item}?include_deleted=1", "/v1/conversations/{conversation_id}", 200
    )
    assert isinstance(deleted["deleted_at"], int)
    await c.check(client, "GET", "/v1/conversations?include_deleted=1", "/v1/conversations", 200)
    await c.check(
        client, "POST", f"{item}/restore", "/v1/conversations/{conversation_id}/restore", 200
    )
    await c.check(client, "DELETE", f"{item}?hard=1", "/v1/conversations/{conversation_id}", 200)

    # Errors.
    await c.check(client, "GET", item, "/v1/conversations/{conversation_id}", 404)
    await c.check(
        client, "GET", "/v1/conversations/nope", "/v1/conversations/{conversation_id}", 400
    )
    await c.check(client, "GET", "/v1/conversations?limit=0", "/v1/conversations", 400)
    await c.check(
        client,
        "PATCH",
        "/api/conversations/us01-co02",
        "/api/conversations/{conversation_id}",
        400,
        json={},
    )
    await c.check(client, "POST", "/v1/conversations", "/v1/conversations", 201)
    await c.check(client, "POST", "/v1/conversations", "/v1/conversations", 422)
    await c.check(
        client, "POST", "/v1/chat/completions", "/v1/chat/completions", 400, data=b"{nope"
    )
    assert len(c.checked) >= 15


async def test_operational_and_disabled_responses_match_their_schemas(
    make_edge: MakeEdge, contract: Contract
) -> None:
    c = contract
    off = await make_edge(persist_transcripts=False)
    await c.check(off, "GET", "/v1/conversations", "/v1/conversations", 501)
    await c.check(
        off,
        "GET",
        "/api/conversations/us01-co01/messages",
        "/api/conversations/{conversation_id}/messages",
        501,
    )
    health = await c.check(off, "GET", "/healthz", "/healthz", 200)
    assert health["checks"]["persistence"] is False

    on = await make_edge(edge_api_keys=frozenset({"k1"}))
    health = await c.check(on, "GET", "/healthz", "/healthz", 200)
    assert health["checks"]["store_writable"] is True
    await c.check(on, "GET", "/v1/conversations", "/v1/conversations", 401)
    await c.check(on, "GET", "/openapi.json", "/openapi.json", 401)
    await c.check(
        on, "GET", "/openapi.json", "/openapi.json", 200, headers={"Authorization": "Bearer k1"}
    )
    resp = await on.get("/metrics", headers={"Authorization": "Bearer k1"})
    assert resp.status == 200 and resp.content_type == "text/plain"
    contract.schema_pointer("/metrics", "GET", 200, "text/plain")
