"""Tests for edge.bundling: what goes out when, and that no content is lost or reordered."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge.bundling import Bundler, is_content_delta

Chunk = dict[str, Any]


def chunk(
    delta: dict[str, Any] | None = None,
    *,
    finish_reason: str | None = None,
    n: int = 0,
    index: int = 0,
    **extra: Any,
) -> Chunk:
    return {
        "id": f"chatcmpl-{n}",
        "object": "chat.completion.chunk",
        "created": 1700000000 + n,
        "model": "m",
        "system_fingerprint": f"fp_{n}",
        "choices": [
            {"index": index, "delta": delta or {}, "logprobs": None, "finish_reason": finish_reason}
        ],
        **extra,
    }


def token(text: str, n: int = 0, index: int = 0) -> Chunk:
    return chunk({"content": text}, n=n, index=index)


ROLE = chunk({"role": "assistant", "content": ""})
FINISH = chunk({}, finish_reason="stop")
USAGE: Chunk = {
    "id": "chatcmpl-u",
    "object": "chat.completion.chunk",
    "created": 1,
    "model": "m",
    "choices": [],
    "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
}
TOOL = chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"a'}}]})


def contents(chunks: list[Chunk]) -> str:
    return "".join(
        c["choices"][0]["delta"].get("content") or ""
        for c in chunks
        if len(c.get("choices") or []) == 1
    )


def feed_all(bundler: Bundler, chunks: list[Chunk]) -> list[Chunk]:
    out: list[Chunk] = []
    for c in chunks:
        out += bundler.feed(c)
    return out


@pytest.mark.parametrize(
    ("candidate", "expected"),
    [
        (token("a"), True),
        (chunk({"content": "a", "role": None, "tool_calls": None, "refusal": None}), True),
        (ROLE, False),
        (chunk({"role": "assistant", "content": "hi"}), False),
        (chunk({"content": ""}), False),
        (chunk({"content": None}), False),
        (chunk({"content": "a"}, finish_reason="stop"), False),
        (chunk({"content": "a", "refusal": "no"}), False),
        (TOOL, False),
        (FINISH, False),
        (USAGE, False),
        ({**token("a"), "usage": {"total_tokens": 1}}, False),
        ({**token("a"), "usage": None}, True),
        ({**token("a"), "choices": [token("a")["choices"][0]] * 2}, False),
        ({**token("a"), "choices": []}, False),
        (
            {"choices": [{"index": 0, "delta": {"content": "a"}, "logprobs": {"content": []}}]},
            False,
        ),
        ({"choices": [{"index": 0, "delta": {"content": "a"}, "extra": {"x": 1}}]}, False),
        ({"choices": [{"index": 0, "delta": {"content": "a"}}]}, True),
        ({"choices": "nope"}, False),
        ({}, False),
    ],
)
def test_is_content_delta(candidate: Chunk, expected: bool) -> None:
    assert is_content_delta(candidate) is expected


def test_first_delta_goes_out_alone_and_unchanged() -> None:
    bundler = Bundler(3)
    first = token("Hello")
    assert bundler.feed(first) == [first]
    assert bundler.feed(token("world")) == []  # the second is held
    assert bundler.pending_tokens == 1


def test_bundles_of_n() -> None:
    bundler = Bundler(4)
    out = feed_all(bundler, [token(f"t{i} ", n=i) for i in range(9)])
    # 1 alone, then 8 held tokens make two bundles of 4.
    assert [c["choices"][0]["delta"]["content"] for c in out] == [
        "t0 ",
        "t1 t2 t3 t4 ",
        "t5 t6 t7 t8 ",
    ]
    assert bundler.pending_tokens == 0
    assert bundler.tokens_seen == 9
    assert bundler.events_out == 3


def test_bundle_keeps_latest_top_level_fields_and_choice_index() -> None:
    bundler = Bundler(2)
    bundler.feed(token("a", n=0, index=3))
    out = feed_all(
        bundler,
        [{**token("b", n=1, index=3), "service_tier": "default"}, token("c", n=2, index=3)],
    )
    assert out == [
        {
            "id": "chatcmpl-2",
            "object": "chat.completion.chunk",
            "created": 1700000002,
            "model": "m",
            "system_fingerprint": "fp_2",
            "choices": [
                {"index": 3, "delta": {"content": "bc"}, "finish_reason": None, "logprobs": None}
            ],
        }
    ]


def test_bundle_does_not_mutate_upstream_chunks() -> None:
    bundler = Bundler(2)
    chunks = [token("a"), token("b"), token("c")]
    snapshot = [dict(c, choices=[dict(c["choices"][0])]) for c in chunks]
    feed_all(bundler, chunks)
    assert chunks == snapshot


def test_non_content_events_flush_pending_bundle_first_in_order() -> None:
    bundler = Bundler(20)
    stream = [
        ROLE,
        token("a"),
        token("b"),
        token("c"),
        TOOL,
        token("d"),
        FINISH,
        USAGE,
    ]
    out = feed_all(bundler, stream)
    assert out[0] is ROLE
    assert out[1]["choices"][0]["delta"]["content"] == "a"
    assert out[2]["choices"][0]["delta"] == {"content": "bc"}
    assert out[3] is TOOL
    assert out[4]["choices"][0]["delta"] == {"content": "d"}
    assert out[5] is FINISH
    assert out[6] is USAGE
    assert len(out) == 7
    assert bundler.flush() == []
    assert bundler.events_out == 7


def test_role_chunk_with_content_is_not_bundled() -> None:
    bundler = Bundler(5)
    role_with_text = chunk({"role": "assistant", "content": "Hi"})
    assert bundler.feed(role_with_text) == [role_with_text]
    # The first *content delta* still goes out at once.
    assert bundler.feed(token("x")) == [token("x")]


def test_flush_returns_pending_bundle_once() -> None:
    bundler = Bundler(10)
    feed_all(bundler, [token("a"), token("b"), token("c")])
    assert bundler.pending_tokens == 2
    flushed = bundler.flush()
    assert [c["choices"][0]["delta"]["content"] for c in flushed] == ["bc"]
    assert bundler.pending_tokens == 0
    assert bundler.flush() == []
    assert bundler.events_out == 2


def test_flush_with_nothing_seen() -> None:
    bundler = Bundler()
    assert bundler.flush() == []
    assert (bundler.tokens_seen, bundler.events_out, bundler.pending_tokens) == (0, 0, 0)


def test_bundle_of_one_passes_every_token() -> None:
    bundler = Bundler(1)
    out = feed_all(bundler, [token(str(i)) for i in range(5)])
    assert [c["choices"][0]["delta"]["content"] for c in out] == ["0", "1", "2", "3", "4"]
    assert bundler.pending_tokens == 0


def test_different_choice_index_starts_a_new_bundle() -> None:
    bundler = Bundler(10)
    out = feed_all(
        bundler, [token("a"), token("b", index=0), token("c", index=1), token("d", index=1)]
    )
    out += bundler.flush()
    assert [(c["choices"][0]["index"], c["choices"][0]["delta"]["content"]) for c in out] == [
        (0, "a"),
        (0, "b"),
        (1, "cd"),
    ]


def test_bundle_tokens_must_be_positive() -> None:
    with pytest.raises(ValueError):
        Bundler(0)


_texts = st.text(min_size=1, max_size=6)
_non_content = st.sampled_from([ROLE, TOOL, FINISH, USAGE])
_streams = st.lists(st.one_of(_texts.map(token), _non_content), max_size=120)


def check_invariants(stream: list[Chunk], out: list[Chunk], bundler: Bundler) -> tuple[int, int]:
    assert contents(out) == contents(stream)
    tokens = sum(1 for c in stream if is_content_delta(c))
    assert bundler.tokens_seen == tokens
    assert bundler.events_out == len(out)
    assert bundler.pending_tokens == 0
    # Non-content chunks come out unchanged and in their original order.
    assert [c for c in out if not is_content_delta(c)] == [
        c for c in stream if not is_content_delta(c)
    ]
    assert all(c["choices"][0]["delta"]["content"] for c in out if is_content_delta(c))
    return tokens, len(stream) - tokens


@given(
    texts=st.lists(_texts, max_size=200),
    include_usage=st.booleans(),
    bundle_tokens=st.integers(min_value=1, max_value=25),
)
def test_provider_shaped_stream(texts: list[str], include_usage: bool, bundle_tokens: int) -> None:
    stream = [ROLE, *map(token, texts), FINISH, *([USAGE] if include_usage else [])]
    bundler = Bundler(bundle_tokens)
    out = feed_all(bundler, stream) + bundler.flush()
    tokens, non_content = check_invariants(stream, out, bundler)
    assert len(out) <= math.ceil(tokens / bundle_tokens) + non_content + 1


@given(stream=_streams, bundle_tokens=st.integers(min_value=1, max_value=25))
def test_any_interleaving(stream: list[Chunk], bundle_tokens: int) -> None:
    bundler = Bundler(bundle_tokens)
    out = feed_all(bundler, stream) + bundler.flush()
    tokens, non_content = check_invariants(stream, out, bundler)
    # Each non-content event may cut a bundle short, on top of passing through itself.
    held = max(tokens - 1, 0)
    assert len(out) <= min(tokens, 1) + math.ceil(held / bundle_tokens) + 2 * non_content
