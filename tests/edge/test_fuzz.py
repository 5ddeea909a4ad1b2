"""Fuzzing every operation ``/openapi.json`` describes, with schemathesis, against a live edge.

The edge runs on a loopback port in a background thread with its own event loop (as
``tests/test_readme.py`` starts it): persistence on (``durability="none"``, a store in a temp
directory) and the scripted ``FakeUpstream`` (started on the same loop) as its upstream. One
edge serves every operation, so state accumulates the way it does in production: what one
case stores, later cases read, update, continue, delete and restore.

Generation is steered (by schemathesis hooks, so a failing case reproduces as printed) towards
inputs that reach deep code rather than stopping at the first 4xx:

* every case is sent with an ``x-session-id``; a well-formed generated one is often swapped for
  the fuzzed session, whose user owns the seeded conversations (a malformed one is kept, so
  the session check is fuzzed too);
* a well-formed conversation id (in a path, ``X-Conversation-ID`` or the body) is often
  swapped for one that session really owns, so history and continue answer 200s, not 404s;
* chat messages often get a role the edge stores, and the model often names a script of the
  fake upstream (tool calls, a stream cut short, an upstream 4xx), so odd content is stored and
  read back through the history API.

Checks: no 5xx ever, responses and their headers conform to the documented schemas, every
status code and content type is documented. ``STRESS=1`` runs 200 examples per operation
instead of 25; both are derandomized so CI sees the same cases every time.

The bugs fuzzing found are pinned at the end of the file as deterministic regression tests.
"""

from __future__ import annotations

import asyncio
import copy
import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests
import schemathesis
from aiohttp import web
from fake_upstream import FakeUpstream
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from edge.app import create_app
from edge.config import EdgeConfig
from edge.openapi import openapi_document

STRESS = os.environ.get("STRESS") == "1"
MAX_EXAMPLES = 200 if STRESS else 25
SESSION = "fuzz-session"
CHECKS = [
    not_a_server_error,
    response_schema_conformance,
    response_headers_conformance,
    status_code_conformance,
    content_type_conformance,
]
# FakeUpstream scripts (see fake_upstream.py). Never ``error-5xx`` or ``slow-*``: a relayed
# upstream 5xx is the upstream's failure, not the edge's, and slow streams only cost time.
_MODELS = ("tokens-3", "tools", "echo", "drop-2", "error-400", "error-429")
_STORED_ROLES = ("user", "assistant", "tool")
_CONVERSATION_ID = re.compile(r"us[0-9]{2,18}-co[0-9]{2,18}")
_SESSION_ID = re.compile(r"[A-Za-z0-9._~+/=:@-]{1,256}")

# The document is cached and shared with the app: schemathesis gets its own copy.
schema = schemathesis.openapi.from_dict(copy.deepcopy(openapi_document()))
schema.config.generation.update(max_examples=MAX_EXAMPLES)

# Conversations of the fuzzed session: seeded at start-up, then every 201 and every
# X-Conversation-ID the edge answers it with.
known_ids: list[str] = []


def _maybe_owned(generated: Any) -> st.SearchStrategy[Any]:
    """``generated``, or (when it is a well-formed id) one the fuzzed session owns."""
    if not isinstance(generated, str) or not _CONVERSATION_ID.fullmatch(generated):
        return st.just(generated)  # malformed on purpose (a negative case): keep it
    # Resolved when drawn, not when the strategy is built, so ids stored by earlier cases count.
    return st.integers(0, 1 << 16).map(
        # One in four stays as generated (unknown, or not this session's: a 404).
        lambda i: known_ids[i % len(known_ids)] if known_ids and i % 4 else generated
    )


def _header_name(headers: dict[str, Any], name: str) -> str | None:
    return next((key for key in headers if key.lower() == name), None)


@schema.hook
def flatmap_path_parameters(context: Any, path_parameters: dict[str, Any] | None) -> Any:
    if path_parameters and "conversation_id" in path_parameters:
        return _maybe_owned(path_parameters["conversation_id"]).map(
            lambda cid: {**path_parameters, "conversation_id": cid}
        )
    if path_parameters and "path" in path_parameters:
        # The relay: often a path the fake upstream serves, so a 200 is streamed through too.
        return st.sampled_from([path_parameters, {**path_parameters, "path": "models"}])
    return st.just(path_parameters)


@schema.hook
def flatmap_headers(context: Any, headers: dict[str, Any] | None) -> Any:
    if not headers:
        return st.just(headers)
    strategy = st.just(dict(headers))
    session = _header_name(headers, "x-session-id")
    if session is not None and _SESSION_ID.fullmatch(str(headers[session])):
        # A valid generated session sees an empty history; the fuzzed one sees the seeded one.
        strategy = strategy.flatmap(lambda h: st.sampled_from([h, *[{**h, session: SESSION}] * 3]))
    conversation = _header_name(headers, "x-conversation-id")
    if conversation is not None:
        strategy = strategy.flatmap(
            lambda h: _maybe_owned(h[conversation]).map(lambda cid: {**h, conversation: cid})
        )
    return strategy


def _steer_message(message: Any) -> st.SearchStrategy[Any]:
    if not isinstance(message, dict) or not isinstance(message.get("role"), str):
        return st.just(message)
    roles = st.sampled_from([message["role"], *_STORED_ROLES])
    return roles.map(lambda role: {**message, "role": role})


@schema.hook
def flatmap_body(context: Any, body: Any) -> Any:
    operation = context.operation
    if operation is None or operation.path != "/v1/chat/completions" or not isinstance(body, dict):
        return st.just(body)
    strategy = st.just(dict(body))
    if isinstance(body.get("model"), str):
        models = st.sampled_from([body["model"], *_MODELS])
        strategy = strategy.flatmap(lambda b: models.map(lambda m: {**b, "model": m}))
    if isinstance(body.get("messages"), list):
        messages = st.tuples(*map(_steer_message, body["messages"])).map(list)
        strategy = strategy.flatmap(lambda b: messages.map(lambda ms: {**b, "messages": ms}))
    if "conversation_id" in body:
        strategy = strategy.flatmap(
            lambda b: _maybe_owned(b["conversation_id"]).map(
                lambda cid: {**b, "conversation_id": cid}
            )
        )
    return strategy


def _remember(created: bool, conversation: str | None, body: bytes) -> None:
    """Note a conversation of the fuzzed session: a 201's id, or an X-Conversation-ID."""
    if created:
        conversation = orjson.loads(body)["id"]
    if (
        isinstance(conversation, str)
        and conversation.startswith("us01-")  # the fuzzed session's user (the first one)
        and conversation not in known_ids
    ):
        known_ids.append(conversation)


def _seed(base_url: str) -> None:
    """Conversations with every kind of message for the fuzzed session, the store's user us01."""
    with requests.Session() as http:
        http.headers["x-session-id"] = SESSION

        def post(path: str, body: Any, **headers: str) -> requests.Response:
            response = http.post(base_url + path, json=body, headers=headers, timeout=30)
            assert response.status_code in (200, 201), response.text
            conversation = response.headers.get("X-Conversation-ID")
            _remember(response.status_code == 201, conversation, response.content)
            return response

        post("/v1/conversations", {"title": "seeded", "metadata": {"k": "v"}, "pinned": True})
        hello = {"role": "user", "content": "hello"}
        first = post("/v1/chat/completions", {"model": "tokens-3", "messages": [hello]})
        again = {"role": "user", "content": "again"}
        post(
            "/v1/chat/completions",
            {"model": "tools", "stream": True, "messages": [again]},
            **{"X-Conversation-ID": first.headers["X-Conversation-ID"]},
        )
        parts = {"role": "user", "content": [{"type": "text", "text": "parts"}]}
        post("/v1/chat/completions", {"model": "drop-2", "stream": True, "messages": [parts]})
        deleted = post("/v1/conversations", {"title": "deleted"}).json()["id"]
        response = http.delete(f"{base_url}/v1/conversations/{deleted}", timeout=30)
        assert response.status_code == 200, response.text
    assert all(cid.startswith("us01-") for cid in known_ids), known_ids


@pytest.fixture(scope="module")
def live_edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The edge's base URL: persistence on, the fake upstream, served from a background loop."""
    root: Path = tmp_path_factory.mktemp("fuzz") / "users"
    loop = asyncio.new_event_loop()
    upstream = FakeUpstream()
    upstream_url = loop.run_until_complete(upstream.start())
    config = EdgeConfig(
        persist_transcripts=True,
        db_url=f"file:{root}",
        durability="none",
        upstream_base_url=upstream_url,
        port=0,
    )
    runner = web.AppRunner(create_app(config), access_log=None)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    base_url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    known_ids.clear()
    try:
        _seed(base_url)
        yield base_url
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(30)
        asyncio.run_coroutine_threadsafe(upstream.close(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


@pytest.fixture(scope="module")
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


def _call(case: Any, base_url: str, http: requests.Session) -> tuple[Any, dict[str, str]]:
    sent = {name.lower() for name in case.headers or {}}
    headers = {} if "x-session-id" in sent else {"x-session-id": SESSION}
    http.cookies.clear()  # no session cookie carried over from an earlier case
    response = case.call(base_url=base_url, session=http, headers=headers, timeout=30)
    conversation = response.headers.get("x-conversation-id", [None])[0]
    created = case.operation.method.upper() == "POST" and case.operation.path.endswith(
        "/conversations"
    )
    _remember(created and response.status_code == 201, conversation, response.content)
    return response, headers


def _is_event_stream(response: Any) -> bool:
    return any(
        value.split(";")[0].strip().lower() == "text/event-stream"
        for value in response.headers.get("content-type", [])
    )


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
def test_every_operation(case: Any, live_edge: str, http: requests.Session) -> None:
    response, headers = _call(case, live_edge, http)
    case.validate_response(response, checks=CHECKS, headers=headers)


def test_streamed_events_match_the_document(live_edge: str, http: requests.Session) -> None:
    operation = schema["/v1/chat/completions"]["POST"]
    case = operation.Case(
        body={"model": "tokens-3", "stream": True, "messages": [{"role": "user", "content": "hi"}]},
        media_type="application/json",
    )
    response, headers = _call(case, live_edge, http)
    assert _is_event_stream(response)
    case.validate_response(response, checks=[response_schema_conformance], headers=headers)


# -- what fuzzing found, pinned -------------------------------------------------------------------
# Deterministic reproductions of the bugs the fuzzing above found (all fixed), kept as
# regression tests.


def _chat(http: requests.Session, base_url: str, session: str, body: Any) -> requests.Response:
    http.cookies.clear()
    return http.post(
        f"{base_url}/v1/chat/completions", json=body, headers={"x-session-id": session}, timeout=30
    )


@pytest.mark.parametrize(
    "message",
    [
        {"role": "user", "content": [1, "x", None, []]},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": 5, "type": 1, "function": "f"}],
        },
    ],
    ids=["content-parts", "tool-calls"],
)
def test_stored_messages_match_the_document(
    message: dict[str, Any], live_edge: str, http: requests.Session
) -> None:
    session = f"odd-{message['role']}"
    response = _chat(http, live_edge, session, {"model": "tokens-3", "messages": [message]})
    if response.status_code == 400:
        return  # rejected up front: nothing stored that the history could not describe
    assert response.status_code == 200, response.text
    conversation = response.headers["X-Conversation-ID"]
    operation = schema["/v1/conversations/{conversation_id}/messages"]["GET"]
    case = operation.Case(path_parameters={"conversation_id": conversation})
    headers = {"x-session-id": session}
    read = case.call(base_url=live_edge, session=http, headers=headers, timeout=30)
    assert read.status_code == 200
    case.validate_response(read, checks=[response_schema_conformance], headers=headers)


def test_a_rejected_turn_stores_nothing(live_edge: str, http: requests.Session) -> None:
    session = "rejected-turn"
    messages = [
        {"role": "user", "content": "kept?"},
        {"role": "tool", "content": "result", "tool_call_id": ""},
    ]
    response = _chat(http, live_edge, session, {"model": "tokens-3", "messages": messages})
    assert response.status_code == 400, response.text
    listing = http.get(
        f"{live_edge}/v1/conversations", headers={"x-session-id": session}, timeout=30
    )
    assert listing.json()["data"] == []


def test_an_empty_model_still_stores_the_reply(live_edge: str, http: requests.Session) -> None:
    session = "empty-model"
    hello = {"role": "user", "content": "hello"}
    response = _chat(http, live_edge, session, {"model": "", "messages": [hello]})
    assert response.status_code == 200, response.text
    assert "metadata" not in response.json()
    conversation = response.headers["X-Conversation-ID"]
    read = http.get(
        f"{live_edge}/v1/conversations/{conversation}/messages",
        headers={"x-session-id": session},
        timeout=30,
    )
    assert [m["role"] for m in read.json()["data"]] == ["user", "assistant"]
