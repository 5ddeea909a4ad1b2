"""Who may see what: every stored conversation belongs to the user of one session.

A conversation id embeds its user id, so ownership is checked on the id itself before any
file is touched; another user's conversation is answered exactly like a missing one (404), so
ids cannot be probed.
"""

from __future__ import annotations

from aiohttp import web

from chunkstore import AsyncStore, ConversationId, InvalidId
from edge.errors import ApiError, conversation_not_found
from edge.keys import SESSION_ID, SESSION_USED, STORE

__all__ = ["owned_conversation", "require_store", "session_user"]


def require_store(request: web.Request) -> AsyncStore:
    store = request.app.get(STORE)
    if store is None:
        raise ApiError(
            501,
            "Conversation history is disabled on this edge (PERSIST_TRANSCRIPTS=false).",
            type="invalid_request_error",
            code="persistence_disabled",
        )
    return store


async def session_user(request: web.Request, *, create: bool) -> str | None:
    """The session's user id; with ``create`` a first-time session gets a user (and cookie)."""
    store = require_store(request)
    request[SESSION_USED] = True
    principal = request[SESSION_ID]
    if create:
        return await store.user_for(principal)
    return await store.find_user(principal)


def owned_conversation(user: str | None, conversation_id: str) -> str:
    """The canonical id if it is well-formed and belongs to ``user``; else 400 / 404."""
    try:
        conv = ConversationId.parse(conversation_id)
    except InvalidId:
        raise ApiError(400, "Malformed conversation id.", code="invalid_id") from None
    if user is None or str(conv.user_id) != user:
        raise conversation_not_found()
    return str(conv)
