"""``GET /v1/conversations/export``: the session's data, for "download my data".

The body is the chunkstore export format (``chunkstore._transfer``: JSON Lines, a header line,
the session's user line, then every conversation, soft-deleted ones
included, with every message), streamed as ``application/x-ndjson`` with a
``Content-Disposition`` attachment filename, so a browser or a desktop app saves it as a file
that ``chunkstore import`` reads back. It is scoped to the session like every history route:
only the session's own user is ever exported, and a session the store has never seen gets
the header line alone (nothing is created).

The export is produced on the store's threads a batch of lines at a time (a conversation
rebuild reads many files: one thread hop per line would cost more than the reads), and
written as it is made: memory stays bounded by a batch, whatever the user holds. The
header's ``source`` says ``chunkstore edge``, never the store's path or URL (a client has no
business knowing where the server keeps its data), and the user line's ``sessions`` is empty:
the digests of the user's principals (its API keys, session ids) are the server's means of
finding the user, not the user's data, and a file a client keeps must not carry them.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web

from chunkstore import export_lines
from edge.scope import require_store, session_user

__all__ = ["EXPORT_CONTENT_TYPE", "export_conversations"]

EXPORT_CONTENT_TYPE = "application/x-ndjson"
# Lines produced per job on the store's threads (a line is a conversation or a message).
_BATCH = 256


async def export_conversations(request: web.Request) -> web.StreamResponse:
    store = require_store(request)
    user = await session_user(request, create=False)
    day = datetime.now(UTC).strftime("%Y%m%d")
    name = f"chunkstore-export-{user or 'empty'}-{day}.jsonl"
    if user is None:
        lines: Iterator[dict[str, Any]] = export_lines(
            store.store, users=[], source="chunkstore edge", sessions=False
        )
    else:
        # Ids resolved on a thread: a listing reads the disk.
        lines = await store.run(
            export_lines, store.store, users=[user], source="chunkstore edge", sessions=False
        )
    response = web.StreamResponse(
        headers={
            "Content-Type": EXPORT_CONTENT_TYPE,
            "Content-Disposition": f'attachment; filename="{name}"',
            "Cache-Control": "no-store",
        }
    )
    await response.prepare(request)
    while True:
        batch = await store.run(_next_batch, lines)
        if not batch:
            break
        await response.write(batch)
    await response.write_eof()
    return response


def _next_batch(lines: Iterator[dict[str, Any]]) -> bytes:
    dumps, newline = orjson.dumps, orjson.OPT_APPEND_NEWLINE
    return b"".join(dumps(line, option=newline) for line in itertools.islice(lines, _BATCH))
