"""The measuring side of ``test_relay``: starting the relay processes and the SSE client.

Shared with ``profile_hotspots.py relay``. The servers themselves are in ``_relay_servers``.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import aiohttp
import orjson

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
START_TIMEOUT = 30.0

__all__ = [
    "Round",
    "Server",
    "StreamTrace",
    "content_of",
    "event_loop",
    "make_session",
    "percentile",
    "run_round",
    "session_id",
    "start_server",
    "storage_drained",
    "summarize",
]


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    url: str  # base URL ending in /v1
    log: str
    store: str | None = None

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_server(args: list[str], log: str) -> Server:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with open(log, "wb") as errors:
        process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks._relay_servers", *args],
            stdout=subprocess.PIPE,
            stderr=errors,
            cwd=ROOT,
            env=env,
        )
    assert process.stdout is not None
    deadline = time.monotonic() + START_TIMEOUT
    line = b""
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if line.startswith(b"PORT ") or not line:
            break
    if not line.startswith(b"PORT "):
        process.kill()
        with open(log) as f:
            raise RuntimeError(f"{args[0]} did not start: {f.read()[-2000:]}")
    return Server(process, f"http://127.0.0.1:{int(line.split()[1])}/v1", log)


def session_id(i: int) -> str:
    return f"bench-session-{i}"


@dataclass
class StreamTrace:
    status: int
    start: float
    arrivals: list[tuple[float, int]]  # (time of a read, complete events in it)
    raw: bytes

    @property
    def events(self) -> int:
        return sum(n for _, n in self.arrivals)

    @property
    def storage_failed(self) -> bool:
        return b'"storage_failed":true' in self.raw

    @property
    def trailing_events(self) -> int:
        """Events the edge adds after the upstream's last one: ``[DONE]``, and the
        ``storage_failed`` chunk when storing the reply timed out or failed."""
        return 2 if self.storage_failed else 1

    def body_end(self) -> float:
        """When the upstream's last event (before the trailing ones) arrived."""
        wanted = self.events - self.trailing_events
        seen = 0
        for t, n in self.arrivals:
            seen += n
            if seen >= wanted:
                return t
        return self.arrivals[-1][0]

    def gaps(self) -> list[float]:
        """Seconds between consecutive events; the last one is the gap before ``[DONE]``."""
        out: list[float] = []
        previous: float | None = None
        for t, n in self.arrivals:
            if previous is not None:
                out.append(t - previous)
            out.extend([0.0] * (n - 1))
            previous = t
        return out


async def one_stream(session: aiohttp.ClientSession, url: str, i: int) -> StreamTrace:
    body = {
        "model": "bench",
        "stream": True,
        "messages": [{"role": "user", "content": f"Tell me a long story, number {i}."}],
    }
    start = time.perf_counter()
    async with session.post(
        f"{url}/chat/completions",
        data=orjson.dumps(body),
        headers={"Content-Type": "application/json", "x-session-id": session_id(i)},
    ) as resp:
        arrivals: list[tuple[float, int]] = []
        buf = b""
        raw = bytearray()
        async for data in resp.content.iter_any():
            t = time.perf_counter()
            buf += data
            cut = buf.rfind(b"\n\n")
            if cut < 0:
                continue
            complete, buf = buf[: cut + 2], buf[cut + 2 :]
            arrivals.append((t, complete.count(b"\n\n")))
            raw += complete
        return StreamTrace(resp.status, start, arrivals, bytes(raw))


@dataclass
class Round:
    start: float
    seconds: float
    traces: list[StreamTrace]


async def run_round(session: aiohttp.ClientSession, url: str, concurrency: int) -> Round:
    start = time.perf_counter()
    traces = await asyncio.gather(*(one_stream(session, url, i) for i in range(concurrency)))
    return Round(start, time.perf_counter() - start, list(traces))


def content_of(raw: bytes) -> tuple[str, bool, bool]:
    """(streamed text, saw [DONE], storage_failed flagged) of one stream's SSE bytes."""
    text = []
    done = failed = False
    for event in raw.split(b"\n\n"):
        # A stored stream's events start with their SSE id (``id: <message id>:<offset>``).
        _, found, payload = event.partition(b"data: ")
        if not found:
            continue
        if payload == b"[DONE]":
            done = True
            continue
        chunk = orjson.loads(payload)
        if (chunk.get("metadata") or {}).get("storage_failed"):
            failed = True
        for choice in chunk.get("choices") or []:
            content = (choice.get("delta") or {}).get("content")
            if content:
                text.append(content)
    return "".join(text), done, failed


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summarize(rounds: list[Round], tokens: int) -> dict[str, float]:
    all_gaps: list[float] = []
    stream_gaps: list[float] = []
    done_waits: list[float] = []
    ttfts: list[float] = []
    events: list[int] = []
    failed = 0
    for r in rounds:
        for trace in r.traces:
            if trace.status != 200 or not trace.arrivals:
                failed += 1
                continue
            gaps = trace.gaps()
            tail = trace.trailing_events
            all_gaps += gaps
            stream_gaps += gaps[:-tail]
            done_waits.append(sum(gaps[-tail:]))
            ttfts.append(trace.arrivals[0][0] - trace.start)
            events.append(trace.events - 1)  # without [DONE]
    throughput = []
    body_throughput = []
    for r in rounds:
        answered = [t for t in r.traces if t.status == 200 and t.arrivals]
        throughput.append(tokens * len(answered) / r.seconds)
        if answered:
            body = max(t.body_end() for t in answered) - r.start
            body_throughput.append(tokens * len(answered) / body)
    ms = 1000.0
    return {
        "tokens_per_s": statistics.median(throughput),
        # As if the stream ended with the upstream's last event: what throughput would be if
        # [DONE] did not wait for the reply to be stored.
        "body_tokens_per_s": statistics.median(body_throughput) if body_throughput else 0.0,
        "gap_p50_ms": percentile(all_gaps, 0.50) * ms,
        "gap_p99_ms": percentile(all_gaps, 0.99) * ms,
        "stream_gap_p50_ms": percentile(stream_gaps, 0.50) * ms,
        "stream_gap_p99_ms": percentile(stream_gaps, 0.99) * ms,
        "done_wait_p50_ms": percentile(done_waits, 0.50) * ms,
        "ttft_p50_ms": percentile(ttfts, 0.50) * ms,
        "ttft_p99_ms": percentile(ttfts, 0.99) * ms,
        "events_per_stream": statistics.median(events),
        "tokens_per_event": tokens / statistics.median(events),
        "failed_requests": failed,
    }


async def storage_drained(session: aiohttp.ClientSession, url: str) -> float:
    """``perf_counter()`` once the edge at ``url`` has no reply left to store (its
    ``edge_pending_replies`` gauge, polled every 10 ms)."""
    metrics_url = url.removesuffix("/v1") + "/metrics"
    while True:
        async with session.get(metrics_url) as resp:
            text = await resp.text()
        for line in text.splitlines():
            if line.startswith("edge_pending_replies "):
                if float(line.split()[1]) == 0:
                    return time.perf_counter()
                break
        else:
            raise AssertionError("the edge exports no edge_pending_replies gauge")
        await asyncio.sleep(0.01)


async def make_session() -> aiohttp.ClientSession:
    # No connection limit: every stream of a round is in flight at once.
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0),
        timeout=aiohttp.ClientTimeout(total=None, sock_read=120),
    )


@contextmanager
def event_loop() -> Iterator[asyncio.AbstractEventLoop]:
    """One event loop for several ``run_until_complete`` calls (``asyncio.Runner`` is 3.11+)."""
    loop = asyncio.new_event_loop()
    try:
        yield loop
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
