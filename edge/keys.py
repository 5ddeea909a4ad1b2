"""Typed application keys (``web.AppKey``) and request keys shared by the edge's modules."""

from __future__ import annotations

from aiohttp import ClientSession, web

from chunkstore import AsyncStore
from edge.config import EdgeConfig
from edge.metrics import Metrics
from edge.persist import PendingReplies

__all__ = [
    "CONFIG",
    "METRICS",
    "PENDING_REPLIES",
    "SESSION_ID",
    "SESSION_IS_NEW",
    "SESSION_USED",
    "STORE",
    "UPSTREAM_SESSION",
    "UPSTREAM_URL",
]

CONFIG = web.AppKey("config", EdgeConfig)
METRICS = web.AppKey("metrics", Metrics)
# None while persistence is off: nothing may touch the disk then.
STORE = web.AppKey("store", AsyncStore)
UPSTREAM_SESSION = web.AppKey("upstream_session", ClientSession)
UPSTREAM_URL = web.AppKey("upstream_url", str)
# Replies still being stored: readers of their conversation wait for them; shutdown too.
PENDING_REPLIES = web.AppKey("pending_replies", PendingReplies)

# Per-request values set by the session middleware (and whether a handler used the session,
# which is when a new session gets its cookie).
SESSION_ID = web.RequestKey("session_id", str)
SESSION_IS_NEW = web.RequestKey("session_is_new", bool)
SESSION_USED = web.RequestKey("session_used", bool)
