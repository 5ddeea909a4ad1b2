"""The file store's sink seals from the records it kept in memory while the message is small,
and from the chunk files once it is not: the sealed message is the same either way."""

from __future__ import annotations

from pathlib import Path

import pytest

from chunkstore import Store, _file_store, _fsio


def _stream(store: Store, conv: str, tokens: list[str]) -> str:
    with store.stream_message(conv, chunk_tokens=3, flush_interval=None) as writer:
        for token in tokens:
            writer.append(token)
    assert writer.result is not None
    return writer.result.content


@pytest.mark.parametrize("keep_chars", [0, 10, 10_000])
def test_the_seal_has_every_chunk_whether_kept_or_read_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, keep_chars: int
) -> None:
    monkeypatch.setattr(_file_store, "_KEEP_CHARS", keep_chars)
    reads: list[str] = []
    real = _fsio.read_bytes

    def counting(path: str) -> bytes:
        reads.append(path)
        return real(path)

    store = Store(tmp_path / "users", durability="none")
    conv = store.create_conversation(store.user_for("s")).id
    tokens = [f"t{i} " for i in range(20)]
    monkeypatch.setattr(_fsio, "read_bytes", counting)
    assert _stream(store, conv, tokens) == "".join(tokens)
    chunk_reads = [p for p in reads if p.endswith(tuple(f"-{n:03}.json" for n in range(1, 8)))]
    # 20 tokens in chunks of 3: six chunk files before the sealing record.
    assert len(chunk_reads) == (0 if keep_chars == 10_000 else 6)
    monkeypatch.setattr(_fsio, "read_bytes", real)
    reread = Store(tmp_path / "users", durability="none")
    assert reread.messages(conv)[-1].content == "".join(tokens)
