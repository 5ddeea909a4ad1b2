"""Conversation history endpoints (being written)."""

from __future__ import annotations

from aiohttp import web


def add_history_routes(app: web.Application) -> None:
    return None
