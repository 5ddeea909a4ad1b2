"""Operations: ``/healthz``, ``/metrics``, structured logs, and ``EDGE_API_KEYS``."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient
from fake_upstream import FakeUpstream, MakeEdge
from prometheus_client.parser import text_string_to_metric_families

import chunkstore._fsio
import edge.app
from edge.logs import JsonFormatter

Client = TestClient[Any, Any]
SESSION = "ops-session-7f3a9c"
SECRET = "zebra-marker-content"
HEADERS = {"x-session-id": SESSION}


async def stream_chat(client: Client, model: str, headers: dict[str, str] | None = None) -> str:
    """A persisted streamed turn (new conversation); returns its id."""
    resp = await client.post(
        "/v1/chat/completions",
        json={
            "model": model,
            "stream": True,
            "messages": [{"role": "user", "content": SECRET}],
        },
        headers=headers or HEADERS,
    )
    assert resp.status == 200
    assert (await resp.read()).endswith(b"data: [DONE]\n\n")
    return resp.headers["X-Conversation-ID"]


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(metrics: dict[Any, float], name: str, **labels: str) -> float:
    return metrics[(name, tuple(sorted(labels.items())))]


# -- /healthz -----------------------------------------------------------------------------------


async def test_healthz_with_persistence(make_edge: MakeEdge) -> None:
    client = await make_edge()
    resp = await client.get("/healthz")
    assert resp.status == 200
    assert await resp.json() == {
        "status": "ok",
        "checks": {
            "persistence": True,
            "upstream": "configured",
            "upstream_reachable": True,
            "store_writable": True,
        },
    }


class _FullDisk:
    """``os`` as the store's file primitives see it, on a disk that is full: files can still be
    created (that takes an inode), but no data block can be written."""

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    @staticmethod
    def write(fd: int, data: bytes) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


async def test_healthz_is_503_on_a_full_disk(
    make_edge: MakeEdge, store_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = await make_edge()
    monkeypatch.setattr(chunkstore._fsio, "os", _FullDisk())
    resp = await client.get("/healthz")
    assert resp.status == 503
    body = await resp.json()
    assert body["status"] == "degraded" and body["checks"]["store_writable"] is False
    monkeypatch.undo()
    assert [p.name for p in store_root.iterdir() if p.name.startswith(".")] == []  # no probe left


async def test_healthz_without_persistence_touches_no_disk(
    make_edge: MakeEdge, store_root: Path
) -> None:
    client = await make_edge(persist_transcripts=False)
    resp = await client.get("/healthz")
    assert resp.status == 200
    assert (await resp.json())["checks"] == {
        "persistence": False,
        "upstream": "configured",
        "upstream_reachable": True,
    }
    assert not store_root.exists()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_healthz_reports_an_unreachable_upstream_and_stays_live(
    make_edge: MakeEdge, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="edge")
    url = f"http://probe:pw-7d1c@127.0.0.1:{closed_port()}/v1"
    client = await make_edge(upstream_base_url=url)
    resp = await client.get("/healthz")
    # Liveness: the edge itself is fine; restarting it would not bring the upstream back.
    assert resp.status == 200
    body = await resp.json()
    assert body["status"] == "ok"
    assert body["checks"]["upstream_reachable"] is False
    assert body["checks"]["store_writable"] is True
    warnings = [r.getMessage() for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(warnings) == 1 and "pw-7d1c" not in warnings[0]


async def test_healthz_gives_up_on_a_silent_upstream_quickly(
    make_edge: MakeEdge, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(edge.app, "UPSTREAM_PROBE_TIMEOUT_S", 0.2)
    with socket.socket() as silent:  # accepts connections (the kernel does), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        client = await make_edge(upstream_base_url=f"http://127.0.0.1:{silent.getsockname()[1]}")
        started = time.monotonic()
        resp = await client.get("/healthz")
        assert time.monotonic() - started < 2
    assert resp.status == 200
    assert (await resp.json())["checks"]["upstream_reachable"] is False


async def test_healthz_probes_the_upstream_once_per_interval(
    make_edge: MakeEdge, fake_upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = await make_edge()

    def probes() -> int:
        return sum(1 for r in fake_upstream.requests if r.path == "/v1/models")

    answers = await asyncio.gather(*(client.get("/healthz") for _ in range(10)))
    assert {a.status for a in answers} == {200}
    assert probes() == 1  # concurrent checks share one probe
    await client.get("/healthz")
    assert probes() == 1  # then its answer is reused for a few seconds
    monkeypatch.setattr(edge.app, "UPSTREAM_PROBE_TTL_S", 0.0)
    await client.get("/healthz")
    assert probes() == 2
    # The probe sends no credentials upstream.
    assert all("Authorization" not in r.headers for r in fake_upstream.requests)


async def test_a_request_that_starts_a_session_says_so(make_edge: MakeEdge) -> None:
    client = await make_edge()
    resp = await client.post("/v1/conversations")
    assert resp.status == 201
    assert resp.headers["X-Session-Created"] == "true"
    assert resp.headers["Set-Cookie"].startswith("cf_session_id=")
    # The cookie now names the session: the same client does not start another one.
    resp = await client.get("/v1/conversations")
    assert "X-Session-Created" not in resp.headers
    resp = await client.post("/v1/conversations", headers={"x-session-id": "given"})
    assert "X-Session-Created" not in resp.headers
    client.session.cookie_jar.clear()
    resp = await client.get("/healthz")  # no session needed, none started
    assert "X-Session-Created" not in resp.headers and "Set-Cookie" not in resp.headers
    resp = await client.post(
        "/v1/chat/completions",
        json={"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]},
    )
    await resp.read()
    assert resp.headers["X-Session-Created"] == "true"


async def test_healthz_is_503_when_the_store_is_not_writable(
    make_edge: MakeEdge, store_root: Path
) -> None:
    client = await make_edge()
    # Tests may run as root, for whom permission bits are no obstacle: take the store away.
    shutil.rmtree(store_root)
    resp = await client.get("/healthz")
    assert resp.status == 503
    body = await resp.json()
    assert body["status"] == "degraded"
    assert body["checks"]["store_writable"] is False


# -- /metrics -----------------------------------------------------------------------------------


async def test_metrics_exposition(make_edge: MakeEdge) -> None:
    client = await make_edge()
    cid = await stream_chat(client, "tokens-130")
    resp = await client.get(f"/v1/conversations/{cid}/messages", headers=HEADERS)
    assert resp.status == 200
    assert (await client.get(f"/api/conversations/{cid}", headers=HEADERS)).status == 200
    assert (await client.get("/v1/conversations?limit=0", headers=HEADERS)).status == 400

    resp = await client.get("/metrics")
    assert resp.status == 200
    assert resp.content_type == "text/plain"
    text = await resp.text()
    metrics = samples(text)

    def requests(route: str, method: str, status: str) -> float:
        return value(metrics, "edge_requests_total", route=route, method=method, status=status)

    assert requests("/v1/chat/completions", "POST", "200") == 1
    assert requests("/v1/conversations/{conversation_id}/messages", "GET", "200") == 1
    assert requests("/api/conversations/{conversation_id}", "GET", "200") == 1
    assert value(metrics, "edge_active_streams") == 0
    # The reads above waited for the reply to be stored: nothing is left pending.
    assert value(metrics, "edge_pending_replies") == 0
    assert value(metrics, "edge_streams_total", outcome="complete") == 1
    # 130 tokens at CHUNK_TOKENS=60: two full chunks, the rest flushed or sealed.
    assert value(metrics, "edge_chunks_written_total") >= 3
    assert value(metrics, "edge_storage_failures_total") == 0
    # One rebuild per read: the messages page and the conversation's first page.
    assert value(metrics, "edge_rebuild_seconds_count") == 2
    assert value(metrics, "edge_rebuild_seconds_bucket", le="+Inf") == 2
    assert "# TYPE edge_rebuild_seconds histogram" in text
    # Labels carry routes and statuses only: no content, no ids, no sessions.
    for leak in ("tok0", "tok129", SECRET, cid, SESSION):
        assert leak not in text


async def test_metrics_label_errors_with_their_status(make_edge: MakeEdge) -> None:
    client = await make_edge()
    assert (await client.get("/v1/conversations?limit=0", headers=HEADERS)).status == 400
    assert (await client.get("/v1/conversations/us01-co01", headers=HEADERS)).status == 404
    metrics = samples(await (await client.get("/metrics")).text())
    for route, status in [
        ("/v1/conversations", "400"),
        ("/v1/conversations/{conversation_id}", "404"),
    ]:
        labels = {"route": route, "method": "GET", "status": status}
        assert value(metrics, "edge_requests_total", **labels) == 1


async def test_metrics_count_unmatched_paths_under_one_label(make_edge: MakeEdge) -> None:
    client = await make_edge()
    for path in ("/nope", "/nope/us01-co01", "/secret-path"):
        assert (await client.get(path)).status == 404
    text = await (await client.get("/metrics")).text()
    assert "secret-path" not in text and "us01-co01" not in text


# -- structured logs ----------------------------------------------------------------------------


async def test_chunk_writes_and_rebuilds_are_logged_as_json_without_content(
    make_edge: MakeEdge, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="edge.store")
    client = await make_edge()
    # Tokens 5 ms apart: chunks fall due while the reply streams (a reply that arrives at once
    # is stored by its seal alone, in one job).
    cid = await stream_chat(client, "slow-200-5")
    resp = await client.get(f"/v1/conversations/{cid}/messages?limit=1", headers=HEADERS)
    assert resp.status == 200

    formatter = JsonFormatter()
    lines = [formatter.format(r) for r in caplog.records if r.name == "edge.store"]
    events = [orjson.loads(line) for line in lines]

    writes = [e for e in events if e["event"] == "chunk_write"]
    assert len(writes) >= 2
    for event in writes:
        assert event["conversation_id"] == cid
        assert event["message_id"].startswith(f"{cid}-ms")
        assert event["tokens"] > 0
        assert isinstance(event["chunk"], int)
        assert isinstance(event["duration_ms"], float)
        assert event["level"] == "INFO" and event["logger"] == "edge.store"
    assert sum(e["tokens"] for e in writes) <= 200
    (sealed,) = [e for e in events if e["event"] == "message_sealed"]
    assert sealed["tokens"] == 200 and sealed["chunks"] >= len(writes) + 1

    rebuilds = [e for e in events if e["event"] == "rebuild"]
    assert len(rebuilds) == 1
    assert rebuilds[0]["conversation_id"] == cid
    assert rebuilds[0]["messages"] == 1
    assert rebuilds[0]["after_seq"] == 0
    assert isinstance(rebuilds[0]["duration_ms"], float)

    for line in lines:
        for leak in ("tok0", "tok12", SECRET, SESSION):
            assert leak not in line


async def test_every_request_is_one_access_event_without_its_query_string(
    make_edge: MakeEdge, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="edge.access")
    client = await make_edge()
    await stream_chat(client, "tokens-130")
    assert (await client.get("/v1/models?api_key=sk-query-secret")).status == 200
    assert (await client.get("/nowhere")).status == 404
    assert (await client.delete("/healthz")).status == 405

    formatter = JsonFormatter()
    lines = [formatter.format(r) for r in caplog.records if r.name == "edge.access"]
    events = [orjson.loads(line) for line in lines]
    assert [(e["method"], e["path"], e["status"]) for e in events] == [
        ("POST", "/v1/chat/completions", 200),
        ("GET", "/v1/models", 200),
        ("GET", "/nowhere", 404),
        ("DELETE", "/healthz", 405),
    ]
    for event in events:
        assert event["event"] == "access" and event["logger"] == "edge.access"
        assert isinstance(event["duration_ms"], float) and event["duration_ms"] >= 0
    for line in lines:
        for leak in ("sk-query-secret", SECRET, SESSION):
            assert leak not in line


# -- EDGE_API_KEYS ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer wrong", "Bearer ", "Basic k1", "k1", "Bearer k1x", "Bearer K1"],
)
async def test_a_missing_or_wrong_key_is_401(
    make_edge: MakeEdge, fake_upstream: FakeUpstream, authorization: str | None
) -> None:
    client = await make_edge(edge_api_keys=frozenset({"k1", "k2"}))
    headers = dict(HEADERS)
    if authorization is not None:
        headers["Authorization"] = authorization
    for method, path in [
        ("GET", "/v1/conversations"),
        ("POST", "/v1/conversations"),
        ("POST", "/v1/chat/completions"),
        ("GET", "/v1/models"),
        ("GET", "/metrics"),
        ("GET", "/openapi.json"),
    ]:
        resp = await client.request(method, path, headers=headers)
        assert resp.status == 401, f"{method} {path}"
        body = await resp.json()
        assert body["error"]["code"] == "invalid_api_key"
        assert body["error"]["type"] == "invalid_request_error"
        assert set(body["error"]) == {"message", "type", "param", "code"}
    assert fake_upstream.requests == []


async def test_the_right_key_passes_and_is_never_forwarded(
    make_edge: MakeEdge, fake_upstream: FakeUpstream
) -> None:
    client = await make_edge(edge_api_keys=frozenset({"k1", "k2"}))
    assert (await client.get("/healthz")).status == 200  # open without a key
    for key in ("k1", "k2"):
        headers = {**HEADERS, "Authorization": f"Bearer {key}"}
        resp = await client.post("/v1/conversations", headers=headers)
        assert resp.status == 201
        cid = await stream_chat(client, "tokens-3", headers)
        sent = {k.lower(): v for k, v in fake_upstream.requests[-1].headers.items()}
        assert "authorization" not in sent
        assert "x-session-id" not in sent
        resp = await client.get(f"/v1/conversations/{cid}/messages", headers=headers)
        assert resp.status == 200
        resp = await client.get("/v1/models", headers=headers)
        assert resp.status == 200
        sent = {k.lower(): v for k, v in fake_upstream.requests[-1].headers.items()}
        assert fake_upstream.requests[-1].path == "/v1/models"
        assert "authorization" not in sent


async def test_the_upstream_key_replaces_the_edge_key(
    make_edge: MakeEdge, fake_upstream: FakeUpstream
) -> None:
    client = await make_edge(edge_api_keys=frozenset({"k1"}), upstream_api_key="sk-upstream")
    await stream_chat(client, "tokens-3", {**HEADERS, "Authorization": "Bearer k1"})
    sent = {k.lower(): v for k, v in fake_upstream.requests[-1].headers.items()}
    assert sent["authorization"] == "Bearer sk-upstream"
