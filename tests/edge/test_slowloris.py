"""Slowloris against ``python -m edge`` under a low open-file limit (issue #10).

The edge runs as a process with ``RLIMIT_NOFILE`` = 256; the test opens more connections than
that, each sending half a request head and then nothing. Without read deadlines and the cap on
waiting connections they were kept forever, the process ran out of descriptors, and nobody else
could connect. Counts are bounded; times are only generous guards against a hang.
"""

from __future__ import annotations

import asyncio
import os
import re
import resource
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress

import pytest
from raw_http import Conn, get

NOFILE = 256
ATTACKERS = 300  # more than the whole descriptor limit of the edge
HALF_HEAD = b"GET /healthz HTTP/1.1\r\nHost: edge\r\nX-Slow: "
SERVED_WITHIN_S = 30.0
CLOSED_WITHIN_S = 20.0


@pytest.fixture(autouse=True)
async def close_conns() -> AsyncIterator[None]:
    yield
    await Conn.close_all()


def _limit_descriptors() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = NOFILE if hard == resource.RLIM_INFINITY else min(NOFILE, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))


@asynccontextmanager
async def edge_process(**env: str) -> AsyncIterator[int]:
    environ = {
        **{key: value for key, value in os.environ.items() if key != "MAX_IDLE_CONNECTIONS"},
        "EDGE_HOST": "127.0.0.1",
        "EDGE_PORT": "0",
        "PERSIST_TRANSCRIPTS": "false",
        "EDGE_LOG_LEVEL": "ERROR",
        **env,
    }
    environ.pop("UPSTREAM_BASE_URL", None)  # the built-in demo: no other process needed
    preexec: Callable[[], None] = _limit_descriptors
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "edge",
        env=environ,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        preexec_fn=preexec,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        match = re.search(rb"http://127\.0\.0\.1:(\d+)", line)
        assert match, line
        yield int(match.group(1))
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 30)


async def open_half_requests(port: int, count: int) -> list[Conn]:
    conns = []
    for _ in range(count):
        conn = await Conn.open(port)
        with suppress(ConnectionError):  # the edge may already have closed it
            await conn.send(HALF_HEAD)
        conns.append(conn)
    return conns


async def healthz_answered(port: int) -> bool:
    try:
        conn = await asyncio.wait_for(Conn.open(port), 5)
        try:
            await conn.send(get("/healthz", "Connection: close"))
            status, _, _ = await asyncio.wait_for(conn.response(), 5)
            return status == 200
        finally:
            conn.close()
    except (OSError, TimeoutError, asyncio.IncompleteReadError):
        return False


async def served_within(port: int, bound_s: float) -> tuple[float, int]:
    """Retry GET /healthz until answered; how long it took and how many tries."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    tries = 0
    while loop.time() - started < bound_s:
        tries += 1
        if await healthz_answered(port):
            return loop.time() - started, tries
        await asyncio.sleep(0.2)
    raise AssertionError(f"GET /healthz not answered within {bound_s} s ({tries} tries)")


async def is_closed(conn: Conn) -> bool:
    return await conn.closed() == b""


async def test_more_half_requests_than_descriptors_do_not_lock_clients_out(
    record_property: Callable[[str, object], None],
) -> None:
    async with edge_process(CLIENT_HEADER_TIMEOUT_S="2") as port:
        attackers = await open_half_requests(port, ATTACKERS)
        took, tries = await served_within(port, SERVED_WITHIN_S)
        record_property("healthz_served_after_s", round(took, 3))
        record_property("healthz_tries", tries)
        # Every half request is closed: the oldest by the cap (128 = half the limit) as soon
        # as newer ones came, the others by the 2 s header deadline.
        closed = await asyncio.wait_for(
            asyncio.gather(*(is_closed(conn) for conn in attackers)), CLOSED_WITHIN_S
        )
        assert all(closed)
        assert await healthz_answered(port)


async def test_the_cap_closes_the_oldest_half_requests_long_before_their_deadline() -> None:
    # A 60 s header deadline: whatever is closed within this test was closed by the cap.
    async with edge_process(CLIENT_HEADER_TIMEOUT_S="60") as port:
        attackers = await open_half_requests(port, ATTACKERS)
        await served_within(port, SERVED_WITHIN_S)
        cap = NOFILE // 2
        # The oldest ATTACKERS - cap were closed for newer ones (each /healthz try closed one
        # more); wait for those, then every survivor is still open: finishing its head gets it
        # served.
        closed = 0
        pending = {asyncio.ensure_future(conn.closed()): conn for conn in attackers}
        survivors = list(attackers)
        while closed < ATTACKERS - cap:
            done, _ = await asyncio.wait(
                pending, timeout=CLOSED_WITHIN_S, return_when=asyncio.FIRST_COMPLETED
            )
            assert done, f"only {closed} connections closed by the cap"
            for task in done:
                assert task.result() == b""
                survivors.remove(pending.pop(task))
                closed += 1
        for task in pending:
            task.cancel()
        served = 0
        for conn in survivors:
            with suppress(ConnectionError, asyncio.IncompleteReadError, TimeoutError):
                await conn.send(b"1\r\nConnection: close\r\n\r\n")
                status, _, _ = await asyncio.wait_for(conn.response(), 5)
                served += status == 200
        assert 0 < served <= cap
        assert closed + len(survivors) == ATTACKERS
