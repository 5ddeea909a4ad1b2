"""PERSIST_TRANSCRIPTS=false: a whole session of traffic writes nothing under the store root."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import openai
from fake_upstream import FakeUpstream

from edge.app import create_app
from edge.config import EdgeConfig


async def test_a_full_workload_writes_zero_files(
    tmp_path: Path, fake_upstream: FakeUpstream, aiohttp_server: Any
) -> None:
    root = tmp_path / "users"
    config = EdgeConfig(
        persist_transcripts=False,
        db_url=f"file:{root}",
        upstream_base_url=fake_upstream.base_url,
        retention_days=1,
        retention_interval_s=1,
    )
    server = await aiohttp_server(create_app(config))
    client = openai.AsyncOpenAI(
        base_url=str(server.make_url("/v1")),
        api_key="x",
        max_retries=0,
        default_headers={"x-session-id": "s1"},
    )
    try:
        for model in ("tokens-130", "tools", "drop-10"):
            try:
                stream = await client.chat.completions.create(
                    model=model, messages=[{"role": "user", "content": "hi"}], stream=True
                )
                async for _ in stream:
                    pass
            except openai.APIError:
                assert model == "drop-10"
        await client.chat.completions.create(
            model="tokens-3",
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={"X-Conversation-ID": "us01-co01"},
        )
        await client.chat.completions.create(
            model="tokens-3",
            messages=[{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}],
        )
        await client.models.list()
        # History endpoints: 501 everywhere.
        async with aiohttp.ClientSession(headers={"x-session-id": "s1"}) as session:
            base = str(server.make_url(""))
            for method, path in [
                ("POST", "/v1/conversations"),
                ("GET", "/v1/conversations"),
                ("GET", "/v1/conversations/us01-co01"),
                ("GET", "/v1/conversations/us01-co01/messages"),
                ("PATCH", "/v1/conversations/us01-co01"),
                ("DELETE", "/v1/conversations/us01-co01"),
                ("POST", "/v1/conversations/us01-co01/restore"),
                ("GET", "/api/conversations"),
            ]:
                resp = await session.request(method, base.rstrip("/") + path, json={"title": "t"})
                assert resp.status == 501, (method, path)
                assert (await resp.json())["error"]["code"] == "persistence_disabled"
            for path in ("/healthz", "/metrics", "/openapi.json"):
                assert (await session.get(base.rstrip("/") + path)).status == 200
    finally:
        await client.close()
    assert not root.exists()
    assert list(tmp_path.iterdir()) == []
