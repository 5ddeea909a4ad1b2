"""Tests for edge.demo: the built-in upstream speaks OpenAI well enough for the official SDK."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai
import orjson
import pytest
from aiohttp import web

from edge.demo import DEMO_MODEL, create_demo_app, demo_reply, start_demo_upstream
from edge.sse import SSEDecoder


@pytest.fixture
async def demo() -> AsyncIterator[str]:
    runner, base_url = await start_demo_upstream(token_delay=0)
    try:
        yield base_url
    finally:
        await runner.cleanup()


async def read_stream(response: aiohttp.ClientResponse) -> tuple[list[Any], bool]:
    """Decoded chunks, and whether ``[DONE]`` ended the stream."""
    decoder = SSEDecoder()
    chunks: list[Any] = []
    done = False
    async for piece in response.content.iter_any():
        for event in decoder.feed(piece):
            assert not done, "nothing may follow [DONE]"
            if event.data == "[DONE]":
                done = True
            else:
                chunks.append(orjson.loads(event.data))
    decoder.close()
    assert not decoder.has_partial
    return chunks, done


def user(text: Any) -> list[dict[str, Any]]:
    return [{"role": "system", "content": "be brief"}, {"role": "user", "content": text}]


async def test_base_url_and_ephemeral_port(demo: str) -> None:
    assert demo.startswith("http://127.0.0.1:")
    assert demo.endswith("/v1")
    assert int(demo.removeprefix("http://127.0.0.1:").removesuffix("/v1")) > 0


async def test_stream_shape(demo: str) -> None:
    body = {
        "model": "my-model",
        "messages": user("hello there"),
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{demo}/chat/completions", json=body) as response,
    ):
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        chunks, done = await read_stream(response)

    assert done
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["id"].startswith("chatcmpl-demo-")
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert all(c["model"] == "my-model" for c in chunks)
    assert all(isinstance(c["created"], int) for c in chunks)

    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    tokens = [c["choices"][0]["delta"]["content"] for c in chunks[1:-2]]
    assert all(set(c["choices"][0]["delta"]) == {"content"} for c in chunks[1:-2])
    text = "".join(tokens)
    assert text == demo_reply(user("hello there"))
    assert text.startswith("[demo upstream] You said: hello there — ")
    assert "UPSTREAM_BASE_URL" in text
    # Word tokens carry their leading space, as real tokenizers do.
    assert tokens[1].startswith(" ") and not tokens[0].startswith(" ")

    finish = chunks[-2]
    assert finish["choices"][0]["delta"] == {}
    assert finish["choices"][0]["finish_reason"] == "stop"
    usage_chunk = chunks[-1]
    assert usage_chunk["choices"] == []
    usage = usage_chunk["usage"]
    assert usage["completion_tokens"] == len(tokens)
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


async def test_stream_without_usage_and_default_model(demo: str) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{demo}/chat/completions", json={"messages": user("x"), "stream": True}
        ) as response,
    ):
        chunks, done = await read_stream(response)
    assert done
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert all("usage" not in c for c in chunks)
    assert chunks[0]["model"] == DEMO_MODEL


async def test_quotes_last_user_message_text_parts_truncated(demo: str) -> None:
    long_text = "word " * 100
    messages = [
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "reply"},
        {"role": "user", "content": [{"type": "text", "text": long_text}, {"type": "image_url"}]},
    ]
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{demo}/chat/completions", json={"messages": messages}) as response,
    ):
        completion = await response.json()
    content = completion["choices"][0]["message"]["content"]
    quoted = content.removeprefix("[demo upstream] You said: ").split(" — ")[0]
    assert quoted == " ".join(long_text.split())[:200]
    assert "first" not in content


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"{not json", "invalid_json"),
        (b"[]", "invalid_type"),
        (b'{"model": "demo"}', "missing_required_parameter"),
        (b'{"messages": []}', "invalid_type"),
    ],
)
async def test_bad_requests(demo: str, raw: bytes, code: str) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{demo}/chat/completions", data=raw, headers={"Content-Type": "application/json"}
        ) as response,
    ):
        assert response.status == 400
        body = await response.json()
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["code"] == code
    assert body["error"]["message"]


async def test_models(demo: str) -> None:
    async with aiohttp.ClientSession() as session, session.get(f"{demo}/models") as response:
        assert response.status == 200
        listing = await response.json()
    assert listing["object"] == "list"
    assert [m["id"] for m in listing["data"]] == ["demo"]
    assert "demo" in listing["data"][0]["owned_by"]


async def test_openai_sdk_non_streaming(demo: str) -> None:
    async with openai.AsyncOpenAI(base_url=demo, api_key="x") as client:
        completion = await client.chat.completions.create(
            model="demo", messages=[{"role": "user", "content": "Hi SDK"}]
        )
    assert completion.object == "chat.completion"
    assert completion.id.startswith("chatcmpl-demo-")
    choice = completion.choices[0]
    assert choice.finish_reason == "stop"
    assert choice.message.role == "assistant"
    assert choice.message.content == demo_reply([{"role": "user", "content": "Hi SDK"}])
    assert completion.usage is not None
    assert completion.usage.total_tokens > 0


async def test_openai_sdk_streaming(demo: str) -> None:
    async with openai.AsyncOpenAI(base_url=demo, api_key="x") as client:
        stream = await client.chat.completions.create(
            model="demo",
            messages=[{"role": "user", "content": "Hi stream"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        text = ""
        finish_reasons = []
        usage = None
        async for event in stream:
            if event.usage is not None:
                usage = event.usage
            for choice in event.choices:
                text += choice.delta.content or ""
                if choice.finish_reason:
                    finish_reasons.append(choice.finish_reason)
    assert text == demo_reply([{"role": "user", "content": "Hi stream"}])
    assert finish_reasons == ["stop"]
    assert usage is not None and usage.completion_tokens > 0


async def test_openai_sdk_lists_models(demo: str) -> None:
    async with openai.AsyncOpenAI(base_url=demo, api_key="x") as client:
        models = [m.id async for m in client.models.list()]
    assert models == ["demo"]


async def test_app_factory_with_token_delay() -> None:
    app = create_demo_app(token_delay=0.01)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"http://127.0.0.1:{port}/v1/chat/completions",
                json={"messages": user("hi"), "stream": True},
            ) as response,
        ):
            chunks, done = await read_stream(response)
        assert done
        assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    finally:
        await runner.cleanup()


def test_negative_delay_rejected() -> None:
    with pytest.raises(ValueError):
        create_demo_app(token_delay=-1)
