"""A bare path, ``file:PATH`` and ``filejson:PATH`` name the same file store; ``AsyncStore``
opens the same URLs."""

from __future__ import annotations

from pathlib import Path

import pytest
from conformance_support import open_store

from chunkstore import AsyncStore


@pytest.mark.parametrize("scheme", ["file", "filejson"])
def test_file_urls_name_the_bare_path(tmp_path: Path, scheme: str) -> None:
    path = tmp_path / "store"
    with open_store(str(path)) as bare:
        conv = bare.create_conversation(bare.user_for("s"), title="by path")
        bare.append_message(conv.id, "user", "hi")
    with open_store(f"{scheme}:{path}") as by_url:
        assert by_url.find_user("s") == conv.user_id
        assert by_url.get_conversation(conv.id).title == "by path"
        assert [m.content for m in by_url.messages(conv.id)] == ["hi"]
        by_url.append_message(conv.id, "user", "via url")
    with open_store(str(path)) as bare:
        assert [m.content for m in bare.messages(conv.id)] == ["hi", "via url"]


async def test_async_store_opens_every_backend_url(store_url: str) -> None:
    async with await AsyncStore.open(store_url, durability="none") as store:
        conv = await store.create_conversation(await store.user_for("s"))
        await store.append_message(conv.id, "user", "hi")
    with open_store(store_url) as sync:
        assert [m.content for m in sync.messages(conv.id)] == ["hi"]
