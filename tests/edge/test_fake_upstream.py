"""Light checks of the fake upstream's modes, so end-to-end failures point at the edge."""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson
import pytest
from fake_upstream import TOOL_ARGUMENT_FRAGMENTS, TOOL_CALL_ID, FakeUpstream

from edge.sse import SSEDecoder


async def stream(
    upstream: FakeUpstream, model: str, **extra: Any
) -> tuple[list[dict[str, Any]], bool, bool]:
    """Chunks, whether [DONE] arrived, and whether the body ended cleanly."""
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    decoder = SSEDecoder()
    chunks: list[dict[str, Any]] = []
    done = False
    clean = True
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{upstream.base_url}/chat/completions", json={**body, **extra}) as response,
    ):
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        try:
            async for piece in response.content.iter_any():
                for event in decoder.feed(piece):
                    if event.data == "[DONE]":
                        done = True
                    else:
                        chunks.append(orjson.loads(event.data))
        except aiohttp.ClientPayloadError:
            clean = False
    return chunks, done, clean


def text_of(chunks: list[dict[str, Any]]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


async def test_tokens_n_with_usage(fake_upstream: FakeUpstream) -> None:
    chunks, done, clean = await stream(
        fake_upstream, "tokens-130", stream_options={"include_usage": True}
    )
    assert done and clean
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert text_of(chunks) == "".join(f"tok{i} " for i in range(130))
    assert len(chunks) == 1 + 130 + 2
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == 130
    assert len({c["id"] for c in chunks}) == 1


async def test_default_model_is_five_tokens(fake_upstream: FakeUpstream) -> None:
    chunks, done, _ = await stream(fake_upstream, "whatever")
    assert done
    assert text_of(chunks) == "tok0 tok1 tok2 tok3 tok4 "
    assert all("usage" not in c for c in chunks)


async def test_slow(fake_upstream: FakeUpstream) -> None:
    chunks, done, _ = await stream(fake_upstream, "slow-3-10")
    assert done
    assert text_of(chunks) == "tok0 tok1 tok2 "


async def test_drop_cuts_the_connection(fake_upstream: FakeUpstream) -> None:
    chunks, done, clean = await stream(fake_upstream, "drop-4")
    assert not done
    assert not clean
    assert text_of(chunks) == "tok0 tok1 tok2 tok3 "
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks)


async def test_tools(fake_upstream: FakeUpstream) -> None:
    chunks, done, _ = await stream(fake_upstream, "tools")
    assert done
    calls = [
        c["choices"][0]["delta"]["tool_calls"][0]
        for c in chunks
        if c["choices"][0]["delta"].get("tool_calls")
    ]
    assert calls[0]["id"] == TOOL_CALL_ID
    assert calls[0]["type"] == "function"
    assert calls[0]["function"] == {"name": "get_weather", "arguments": ""}
    assert all(call["index"] == 0 for call in calls)
    arguments = "".join(call["function"]["arguments"] for call in calls)
    assert orjson.loads(arguments) == {"location": "Paris, FR", "unit": "celsius"}
    assert len(calls) == 1 + len(TOOL_ARGUMENT_FRAGMENTS)
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


@pytest.mark.parametrize("status", [400, 429, 500, 503])
async def test_error_status(fake_upstream: FakeUpstream, status: int) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{fake_upstream.base_url}/chat/completions",
            json={"model": f"error-{status}", "messages": [], "stream": True},
        ) as response,
    ):
        assert response.status == status
        assert response.content_type == "application/json"
        body = await response.json()
    assert set(body["error"]) >= {"message", "type", "code"}


async def test_echo_streams_received_messages(fake_upstream: FakeUpstream) -> None:
    messages = [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "ünïcode and a long enough text to need several tokens"},
    ]
    chunks, done, _ = await stream(fake_upstream, "echo", messages=messages)
    assert done
    assert len(chunks) > 4
    assert orjson.loads(text_of(chunks)) == messages


async def test_non_streaming(fake_upstream: FakeUpstream) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"{fake_upstream.base_url}/chat/completions",
            json={"model": "tokens-3", "messages": [{"role": "user", "content": "x"}]},
        ) as response:
            completion = await response.json()
        async with session.post(
            f"{fake_upstream.base_url}/chat/completions",
            json={"model": "tools", "messages": [{"role": "user", "content": "x"}]},
        ) as response:
            tool_completion = await response.json()
    assert completion["object"] == "chat.completion"
    assert completion["choices"][0]["message"]["content"] == "tok0 tok1 tok2 "
    assert completion["choices"][0]["finish_reason"] == "stop"
    assert completion["usage"]["total_tokens"] > 0
    tool_message = tool_completion["choices"][0]["message"]
    assert tool_message["content"] is None
    assert tool_message["tool_calls"][0]["function"]["name"] == "get_weather"
    assert tool_completion["choices"][0]["finish_reason"] == "tool_calls"


async def test_records_requests_and_lists_models(fake_upstream: FakeUpstream) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(
            f"{fake_upstream.base_url}/models", headers={"Authorization": "Bearer k"}
        ) as response:
            listing = await response.json()
        async with session.post(
            f"{fake_upstream.base_url}/chat/completions",
            json={"model": "tokens-1", "messages": [{"role": "user", "content": "x"}]},
            headers={"X-Probe": "1"},
        ) as response:
            await response.read()
    assert [m["id"] for m in listing["data"]] == ["fake"]
    first, second = fake_upstream.requests
    assert (first.method, first.path, first.json) == ("GET", "/v1/models", None)
    assert first.headers["Authorization"] == "Bearer k"
    assert (second.method, second.path) == ("POST", "/v1/chat/completions")
    assert second.json["model"] == "tokens-1"
    assert second.headers["X-Probe"] == "1"
    assert fake_upstream.chat_requests == [second]
