"""The processes ``test_relay`` measures: ``python -m benchmarks._relay_servers KIND [options]``.

Each server binds 127.0.0.1 on a free port, prints ``PORT <n>`` on stdout and serves until
SIGTERM. They run as separate processes so that the client doing the measuring, the upstream
and the relay under test do not share one event loop and one GIL (on a 2-core machine they
still share the cores: see the README).

* ``upstream``: an OpenAI-compatible ``/v1/chat/completions`` that streams ``--tokens`` content
  deltas with no delay (a role chunk, the tokens, a finish chunk, a usage chunk, ``[DONE]``),
  one ``write`` per event. The events are encoded once at start so the upstream is never the
  bottleneck.
* ``passthrough``: the minimal aiohttp relay: reads the upstream's SSE bytes and writes them to
  the client unchanged (no parsing, no bundling, no storage). Default ``ClientSession``, like
  the edge's.
* ``edge``: the real edge (``edge.app.create_app``), persistence on (``--store DIR``, durability
  ``--durability``, default "chunk"; ``--store-threads N`` for ``STORE_THREADS``,
  ``--store-stream-threads N`` for ``STORE_STREAM_THREADS``) or off; with
  ``--db-url URL``: persistence on into the store ``URL`` names instead, as the edge's
  ``DB_URL`` (``sqlite:PATH``, ``postgresql://...``); with
  ``--fsync-stall S`` every ``os.fsync`` chunkstore makes sleeps ``S`` seconds first (the proxy
  replaces ``chunkstore._fsio.os``, the module every chunkstore write goes through).
  ``--profile FILE`` dumps a cProfile of the event loop thread at exit
  (``benchmarks/profile_hotspots.py relay`` uses it).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import time
from typing import Any

import aiohttp
import orjson
from aiohttp import web

__all__ = ["expected_content", "main"]

MODEL = "bench-upstream"


def token_text(i: int) -> str:
    return f" t{i}"


def expected_content(tokens: int) -> str:
    return "".join(token_text(i) for i in range(tokens))


def _event(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def upstream_events(tokens: int) -> list[bytes]:
    base = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 0, "model": MODEL}

    def choice(delta: dict[str, Any], finish: str | None = None) -> list[dict[str, Any]]:
        return [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]

    events = [_event({**base, "choices": choice({"role": "assistant", "content": ""})})]
    events += [
        _event({**base, "choices": choice({"content": token_text(i)})}) for i in range(tokens)
    ]
    events.append(_event({**base, "choices": choice({}, "stop")}))
    usage = {"prompt_tokens": 10, "completion_tokens": tokens, "total_tokens": tokens + 10}
    events.append(_event({**base, "choices": [], "usage": usage}))
    events.append(b"data: [DONE]\n\n")
    return events


def upstream_app(tokens: int) -> web.Application:
    events = upstream_events(tokens)

    async def chat(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        for event in events:
            await response.write(event)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    return app


def passthrough_app(upstream: str) -> web.Application:
    session_key = web.AppKey("session", aiohttp.ClientSession)

    async def session_ctx(app: web.Application) -> Any:
        app[session_key] = aiohttp.ClientSession()
        yield
        await app[session_key].close()

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        async with request.app[session_key].post(
            f"{upstream}/chat/completions",
            data=body,
            headers={"Content-Type": "application/json"},
        ) as up:
            out = web.StreamResponse(
                status=up.status,
                headers={"Content-Type": up.headers.get("Content-Type", "text/event-stream")},
            )
            await out.prepare(request)
            async for data in up.content.iter_any():
                await out.write(data)
            await out.write_eof()
            return out

    app = web.Application()
    app.cleanup_ctx.append(session_ctx)
    app.router.add_post("/v1/chat/completions", chat)
    return app


class StallingOS:
    """``os`` with a slow ``fsync``: a disk that stalls on every flush."""

    def __init__(self, real: Any, stall: float) -> None:
        self._real = real
        self._stall = stall

    def fsync(self, fd: int) -> None:
        time.sleep(self._stall)
        self._real.fsync(fd)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def edge_app(
    upstream: str,
    store: str | None,
    stall: float,
    durability: str = "chunk",
    store_threads: int | None = None,
    db_url: str | None = None,
    stream_threads: int | None = None,
) -> web.Application:
    if stall > 0:
        from chunkstore import _fsio

        _fsio.os = StallingOS(os, stall)  # type: ignore[attr-defined,assignment]
    from edge.app import create_app
    from edge.config import EdgeConfig

    config = EdgeConfig(
        upstream_base_url=upstream,
        persist_transcripts=store is not None or db_url is not None,
        db_url=db_url or (f"file:{store}" if store else "file:./users"),
        durability=durability,  # type: ignore[arg-type]
        **({} if store_threads is None else {"store_threads": store_threads}),
        **({} if stream_threads is None else {"store_stream_threads": stream_threads}),
    )
    return create_app(config)


async def serve(app: web.Application, profile: str | None = None) -> None:
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
    await site.start()
    port = runner.addresses[0][1]
    print(f"PORT {port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    profiler = None
    if profile:
        import cProfile

        # The event loop's thread only: that is where relay latency comes from (storage work
        # runs in worker threads).
        profiler = cProfile.Profile()
        profiler.enable()
    await stop.wait()
    if profiler is not None and profile:
        profiler.disable()
        profiler.dump_stats(profile)
    await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks._relay_servers")
    parser.add_argument("kind", choices=["upstream", "passthrough", "edge"])
    parser.add_argument("--tokens", type=int, default=400)
    parser.add_argument("--upstream", help="the upstream base URL, ending in /v1")
    parser.add_argument("--store", help="edge: persist into this directory (else: off)")
    parser.add_argument("--db-url", help="edge: persist into this DB_URL (else: off)")
    parser.add_argument("--fsync-stall", type=float, default=0.0)
    parser.add_argument("--durability", default="chunk", choices=["chunk", "message", "none"])
    parser.add_argument("--store-threads", type=int, help="edge: STORE_THREADS (default: its own)")
    parser.add_argument(
        "--store-stream-threads", type=int, help="edge: STORE_STREAM_THREADS (default: its own)"
    )
    parser.add_argument("--profile", help="write a cProfile of the event loop here at exit")
    args = parser.parse_args(argv)
    if args.kind == "upstream":
        app = upstream_app(args.tokens)
    elif args.kind == "passthrough":
        app = passthrough_app(args.upstream)
    else:
        app = edge_app(
            args.upstream,
            args.store,
            args.fsync_stall,
            args.durability,
            args.store_threads,
            args.db_url,
            args.store_stream_threads,
        )
    asyncio.run(serve(app, args.profile))


if __name__ == "__main__":
    main()
