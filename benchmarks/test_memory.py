"""Memory across one long stream through ``Store.stream_message``: it must stay flat.

SPEC §6: memory stays flat during a 100,000-token stream. The stream is run at 10,000 and at
100,000 tokens, and two peaks are compared between them:

* **tracemalloc peak while streaming**: every Python allocation from opening the writer to the
  last ``append`` (chunk files written every 60 tokens). Flat means the writer holds only the
  unwritten tail, never the message.
* **peak RSS while streaming** (Linux ``VmHWM``, reset through ``/proc/self/clear_refs`` just
  before the stream), minus the RSS before it.

``finish()`` is measured separately (``seal_*``): sealing writes the whole message into one
file, so its peak grows with the message by design.

Durability "none": memory does not depend on fsync, and 100,000 tokens with an fsync per chunk
would only make the run slower.
"""

from __future__ import annotations

import gc
import re
import tracemalloc
from typing import Any

import pytest

from benchmarks.conftest import SIZES, Results
from chunkstore import Store

SUITE = "memory"
_STATUS = "/proc/self/status"


def _kib(field: str) -> int | None:
    try:
        with open(_STATUS) as f:
            match = re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) if match else None


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def stream(store: Store, conversation_id: str, tokens: int) -> dict[str, float]:
    """Stream ``tokens`` tokens; the peaks while streaming and while sealing, in KiB."""
    token_texts = [f" w{i % 1000}" for i in range(1000)]
    gc.collect()
    rss_before = _kib("VmRSS")
    can_reset = _reset_peak_rss()
    tracemalloc.start()
    writer = store.stream_message(conversation_id, role="assistant")
    for i in range(tokens):
        writer.append(token_texts[i % 1000])
    stream_retained, stream_peak = tracemalloc.get_traced_memory()
    rss_stream_peak = _kib("VmHWM") if can_reset else None
    tracemalloc.reset_peak()
    message = writer.finish("stop")
    _, seal_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert message.token_count == tokens
    figures = {
        "stream_tracemalloc_peak_kib": stream_peak / 1024,
        "stream_retained_kib": stream_retained / 1024,
        "seal_tracemalloc_peak_kib": seal_peak / 1024,
        "chunks": writer.chunks_written + 1,
    }
    if rss_before is not None and rss_stream_peak is not None:
        figures["stream_rss_growth_kib"] = max(0, rss_stream_peak - rss_before)
    return figures


@pytest.mark.parametrize("tokens", SIZES.memory_tokens)
def test_stream_memory(
    benchmark: Any, results: Results, tmp_path_factory: pytest.TempPathFactory, tokens: int
) -> None:
    benchmark.group = "memory of one stream"
    store = Store(
        tmp_path_factory.mktemp("memory") / "store", durability="none", flush_interval=None
    )
    conv = store.create_conversation(store.user_for("bench-memory"), title="long")
    figures = benchmark.pedantic(stream, args=(store, conv.id, tokens), rounds=1, iterations=1)
    results.record(benchmark, SUITE, "stream", f"{tokens:,} tokens", **figures)

    small, large = (f"{n:,} tokens" for n in SIZES.memory_tokens)
    growth = SIZES.memory_tokens[1] / SIZES.memory_tokens[0]
    results.ratio(
        SUITE,
        "stream",
        large,
        small,
        metric="stream_tracemalloc_peak_kib",
        op="<=",
        limit=2.0,
        target=f"flat (≤ 2x; {growth:.0f}x tokens)",
    )
    results.ratio(
        SUITE,
        "stream",
        large,
        small,
        metric="stream_rss_growth_kib",
        target="flat (RSS is page-granular: see KiB)",
    )
    results.ratio(SUITE, "stream", large, small, metric="stream_retained_kib")
    results.ratio(SUITE, "stream", large, small, metric="seal_tracemalloc_peak_kib")
