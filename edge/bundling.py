"""Bundling of streamed content deltas: pure logic, no I/O, no clock.

A *token* is one upstream content delta: a ``chat.completion.chunk`` whose only choice carries a
non-empty ``delta.content`` and nothing else (no role, tool call, refusal, finish_reason,
logprobs or usage). :class:`Bundler` merges runs of such chunks into one chunk of
``bundle_tokens`` tokens, so the client receives a twentieth of the events (and of the SSE and
JSON framing) without losing a character.

Rules, and why:

- The very first content delta of the stream goes out alone, at once: time to first token is
  what a user perceives as latency, and it must not wait for nineteen more tokens.
- Every other chunk (role, tool_calls, finish_reason, usage, empty or several choices, or any
  field the bundler does not understand) is a *non-content* event: the pending bundle is emitted
  first, then the chunk unchanged. Clients rebuild the message by applying chunks in order, so a
  finish_reason or usage chunk overtaking content still pending would truncate the answer, and a
  tool-call delta reordered around text would misplace it.
- A bundle never mixes choices: a content delta for another choice index (``n > 1`` streams)
  emits the pending bundle first.
- The bundle keeps the latest upstream chunk's top-level fields (id, object, created, model,
  system_fingerprint, service_tier, ...) so every outgoing event is a valid chunk.

Time is the caller's concern: it watches :attr:`Bundler.pending_tokens` and calls
:meth:`Bundler.flush` when ``STREAM_FLUSH_MS`` passes, and at the end of the stream.
"""

from __future__ import annotations

from typing import Any

__all__ = ["DEFAULT_BUNDLE_TOKENS", "Bundler", "is_content_delta"]

DEFAULT_BUNDLE_TOKENS = 20

# Choice keys a plain content delta may carry with a non-null value. Anything else non-null on
# the choice (e.g. Azure's content_filter_results) would be lost by merging, so such a chunk is
# passed through as a non-content event instead.
_CONTENT_CHOICE_KEYS = frozenset({"index", "delta"})


def is_content_delta(chunk: dict[str, Any]) -> bool:
    """Whether ``chunk`` is one plain content token that may be merged with its neighbours."""
    if chunk.get("usage") is not None:
        return False
    choices = chunk.get("choices")
    if not isinstance(choices, list) or len(choices) != 1:
        return False
    choice = choices[0]
    if not isinstance(choice, dict):
        return False
    delta = choice.get("delta")
    if not isinstance(delta, dict):
        return False
    content = delta.get("content")
    if not isinstance(content, str) or not content:
        return False
    if any(value is not None for key, value in delta.items() if key != "content"):
        return False
    return all(value is None for key, value in choice.items() if key not in _CONTENT_CHOICE_KEYS)


class Bundler:
    """Turns upstream ``chat.completion.chunk`` dicts into the chunks to send to the client."""

    __slots__ = (
        "_bundle_tokens",
        "_events_out",
        "_pending",
        "_pending_index",
        "_pending_last",
        "_tokens_seen",
    )

    def __init__(self, bundle_tokens: int = DEFAULT_BUNDLE_TOKENS) -> None:
        if bundle_tokens < 1:
            raise ValueError("bundle_tokens must be at least 1")
        self._bundle_tokens = bundle_tokens
        self._pending: list[str] = []
        self._pending_index: Any = None
        self._pending_last: dict[str, Any] | None = None
        self._tokens_seen = 0
        self._events_out = 0

    @property
    def bundle_tokens(self) -> int:
        return self._bundle_tokens

    @property
    def pending_tokens(self) -> int:
        """Content deltas held back; the caller arms its flush timer while this is non-zero."""
        return len(self._pending)

    @property
    def tokens_seen(self) -> int:
        """Content deltas fed so far."""
        return self._tokens_seen

    @property
    def events_out(self) -> int:
        """Chunks returned so far, by :meth:`feed` and :meth:`flush` together."""
        return self._events_out

    def feed(self, chunk: dict[str, Any]) -> list[dict[str, Any]]:
        """Consume one upstream chunk; return the chunks to send now, in order."""
        if not is_content_delta(chunk):
            out = self._take_bundle()
            out.append(chunk)
            self._events_out += 1
            return out

        self._tokens_seen += 1
        if self._tokens_seen == 1:
            self._events_out += 1
            return [chunk]

        choice = chunk["choices"][0]
        index = choice.get("index", 0)
        out = self._take_bundle() if self._pending and index != self._pending_index else []
        self._pending.append(choice["delta"]["content"])
        self._pending_index = index
        self._pending_last = chunk
        if len(self._pending) >= self._bundle_tokens:
            out.extend(self._take_bundle())
        return out

    def flush(self) -> list[dict[str, Any]]:
        """The pending bundle as one chunk, or ``[]``: for the flush timer and end of stream."""
        return self._take_bundle()

    def _take_bundle(self) -> list[dict[str, Any]]:
        last = self._pending_last
        if last is None:
            return []
        merged = dict(last)
        merged["choices"] = [
            {
                "index": self._pending_index,
                "delta": {"content": "".join(self._pending)},
                "finish_reason": None,
                "logprobs": None,
            }
        ]
        self._pending = []
        self._pending_index = None
        self._pending_last = None
        self._events_out += 1
        return [merged]
