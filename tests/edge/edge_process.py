"""A real ``python -m edge`` process for the tests that need one (signals, several instances,
resuming across processes): started on port 0, its URL read from the banner it prints."""

from __future__ import annotations

import asyncio
import os
import re
import sys

_URL = re.compile(rb"http://127\.0\.0\.1:\d+")


async def launch_edge(**settings: str) -> tuple[asyncio.subprocess.Process, str]:
    """Start the edge with ``settings`` (environment variables) on top of this process's
    environment, on a free port; return the process and its base URL once it listens."""
    env = {**os.environ, "EDGE_PORT": "0", "EDGE_LOG_LEVEL": "WARNING", **settings}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "edge",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 60)
    match = _URL.search(line)
    assert match, line
    return proc, match.group().decode()
