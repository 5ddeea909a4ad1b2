"""A new conversation and its first turn are stored by one job on the store's pool; a turn that
cannot be stored, or a request cancelled while the job runs, leaves no conversation behind."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import make_mocked_request
from fake_upstream import MakeEdge

import chunkstore
from chunkstore import StorageError, Store
from edge import relay
from edge.keys import STORE

BODY = {"model": "m", "messages": [{"role": "user", "content": "hello"}]}
SESSION = {"x-session-id": "s-new"}


def _conversations(root: Path) -> list[Path]:
    return sorted(root.glob("us*/data/conversations/us*-co*"))


async def test_a_turn_that_cannot_be_stored_removes_its_new_conversation(
    make_edge: MakeEdge, store_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = await make_edge()

    def failing(self: Store, *args: Any, **kwargs: Any) -> Any:
        raise StorageError(28, "disk full")

    monkeypatch.setattr(chunkstore.Store, "append_turn", failing)
    resp = await client.post("/v1/chat/completions", json=BODY, headers=SESSION)
    assert resp.status >= 500
    assert (await resp.json())["error"]
    assert _conversations(store_root) == []


async def test_both_writes_are_one_job(make_edge: MakeEdge, store_root: Path) -> None:
    client = await make_edge()
    store = client.app[STORE]
    jobs: list[object] = []
    real = store.run

    async def counting(func: Any, /, *args: Any, **kwargs: Any) -> Any:
        jobs.append(func)
        return await real(func, *args, **kwargs)

    store.run = counting  # type: ignore[method-assign]
    resp = await client.post("/v1/chat/completions", json=BODY, headers=SESSION)
    assert resp.status == 200
    assert jobs.count(relay._start_conversation) == 1
    assert len(_conversations(store_root)) == 1


async def test_a_request_cancelled_while_its_conversation_is_created_leaves_none(
    make_edge: MakeEdge, store_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = await make_edge()
    store = client.app[STORE]
    user = await store.user_for("s-cancelled")
    started = threading.Event()
    go_on = threading.Event()
    real = chunkstore.Store.append_turn

    def slow(self: Store, *args: Any, **kwargs: Any) -> Any:
        started.set()
        go_on.wait(30)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(chunkstore.Store, "append_turn", slow)

    request = make_mocked_request("POST", "/v1/chat/completions", headers=SESSION, app=client.app)
    monkeypatch.setattr(relay, "session_user", lambda request, create: _user(user))

    async def plan() -> None:
        await relay._plan_turn(request, store, dict(BODY), None)

    task = asyncio.create_task(plan())
    await asyncio.to_thread(started.wait, 30)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(_conversations(store_root)) == 1  # the job runs on after the cancel
    go_on.set()
    for _ in range(500):  # then what it created is removed
        if not _conversations(store_root):
            break
        await asyncio.sleep(0.01)
    assert _conversations(store_root) == []
    assert not relay._ROLL_BACKS


async def _user(user: str) -> str:
    return user


async def test_a_cancelled_creation_that_failed_leaves_nothing_to_remove() -> None:
    loop = asyncio.get_running_loop()
    failed: asyncio.Future[Any] = loop.create_future()
    failed.set_exception(StorageError(5, "io"))
    cancelled: asyncio.Future[Any] = loop.create_future()
    cancelled.cancel()
    relay._roll_back_started(None, None, failed)  # type: ignore[arg-type]
    relay._roll_back_started(None, None, cancelled)  # type: ignore[arg-type]
    assert not relay._ROLL_BACKS
