"""Typed application keys (``web.AppKey``) and request keys shared by the edge's modules."""

from __future__ import annotations

import asyncio

from aiohttp import ClientSession, web

from chunkstore import AsyncStore
from edge.config import EdgeConfig
from edge.metrics import Metrics

__all__ = [
    "CONFIG",
    "INFLIGHT",
    "METRICS",
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
# Persistence tasks of streams in flight, finalized on shutdown.
INFLIGHT = web.AppKey("inflight", set[asyncio.Task[None]])

# Per-request values set by the session middleware (and whether a handler used the session,
# which is when a new session gets its cookie).
SESSION_ID = web.RequestKey("session_id", str)
SESSION_IS_NEW = web.RequestKey("session_is_new", bool)
SESSION_USED = web.RequestKey("session_used", bool)
