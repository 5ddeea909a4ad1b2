"""The derived per-conversation segment and its incremental in-memory index."""

from __future__ import annotations

import os
from pathlib import Path

from chunkstore._rebuild import message_to_line, rebuild_message
from chunkstore._records import encode_line
from chunkstore._segment import SegmentIndex, seq_of_line


def line(seq: int, text: str = "x") -> bytes:
    record = {
        "v": 1,
        "messageId": f"us01-co01-ms{seq:02d}",
        "seq": 1,
        "tokens": text,
        "tokenCount": 1,
        "timestamp": "t",
        "role": "user",
        "status": "complete",
    }
    message = rebuild_message(f"us01-co01-ms{seq:02d}", seq, [record], writer_alive=False)
    return encode_line(message_to_line(message))


def test_seq_of_line() -> None:
    assert seq_of_line(line(12)) == 12
    assert seq_of_line(b'{"id":1}') is None
    assert seq_of_line(b'{"seq":x,') is None


def test_missing_file_is_empty(tmp_path: Path) -> None:
    index = SegmentIndex(str(tmp_path / "segment.jsonl"))
    index.refresh()
    assert index.get(1) is None
    assert 1 not in index


def test_reads_only_whole_lines_and_then_what_was_appended(tmp_path: Path) -> None:
    path = tmp_path / "segment.jsonl"
    second = line(2, "two")
    path.write_bytes(line(1, "one") + second[:10])  # an append in progress
    index = SegmentIndex(str(path))
    index.refresh()
    assert index.get(1).content == "one"
    assert 2 not in index
    with open(path, "ab") as f:
        f.write(second[10:])
    index.refresh()
    assert index.get(2).content == "two"
    first = index.get(1)
    index.refresh()  # nothing new: the parsed message is kept
    assert index.get(1) is first


def test_replaced_or_shrunk_file_is_read_afresh(tmp_path: Path) -> None:
    path = tmp_path / "segment.jsonl"
    path.write_bytes(line(1) + line(2))
    index = SegmentIndex(str(path))
    index.refresh()
    assert 2 in index
    tmp = tmp_path / "new"
    tmp.write_bytes(line(1, "new"))
    os.replace(tmp, path)  # another inode
    index.refresh()
    assert 2 not in index
    assert index.get(1).content == "new"
    with open(path, "r+b") as f:  # same inode, shorter
        f.truncate(0)
    index.refresh()
    assert 1 not in index
    path.unlink()
    index.refresh()
    assert index.get(1) is None


def test_corrupt_or_misplaced_lines_are_dropped(tmp_path: Path) -> None:
    path = tmp_path / "segment.jsonl"
    bad = bytearray(line(1, "abc"))
    bad[-6] ^= 1  # inside the checksum
    misplaced = line(3).replace(b'"seq":3', b'"seq":4', 1)  # checksum then fails too
    path.write_bytes(bytes(bad) + misplaced + b"garbage\n" + line(2))
    index = SegmentIndex(str(path))
    index.refresh()
    assert index.get(1) is None
    assert 1 not in index
    assert index.get(4) is None
    assert index.get(2).seq == 2


def test_line_whose_seq_disagrees_with_its_place(tmp_path: Path) -> None:
    path = tmp_path / "segment.jsonl"
    path.write_bytes(line(5))
    index = SegmentIndex(str(path))
    index.refresh()
    assert 5 in index  # indexed by seq, not parsed yet
    index._lines[6] = index._lines.pop(5)  # as if the prefix said 6 but the record says 5
    assert index.get(6) is None
    assert 6 not in index


def test_parse_all_keeps_intact_lines_by_their_seq(tmp_path: Path) -> None:
    path = tmp_path / "segment.jsonl"
    bad = bytearray(line(2, "bad"))
    bad[30] ^= 1
    third = line(3, "three")
    path.write_bytes(line(1, "one") + bytes(bad) + b"garbage\n" + third[:10])
    index = SegmentIndex(str(path))
    index.refresh()
    parsed = index.parse_all()
    assert {seq: m.content for seq, m in parsed.items()} == {1: "one"}
    assert index.get(1) is parsed[1]
    assert index.get(2) is None  # the reader falls back to the message's own file
    assert 2 not in index
    with open(path, "ab") as f:
        f.write(third[10:])
    index.refresh()
    assert {seq: m.content for seq, m in index.parse_all().items()} == {1: "one", 3: "three"}


def test_parse_all_and_get_agree(tmp_path: Path) -> None:
    path = tmp_path / "segment.jsonl"
    path.write_bytes(b"".join(line(seq, f"m{seq}") for seq in (3, 1, 2)))
    paged, whole = SegmentIndex(str(path)), SegmentIndex(str(path))
    paged.refresh()
    whole.refresh()
    parsed = whole.parse_all()
    assert sorted(parsed) == [1, 2, 3]
    for seq in (1, 2, 3, 4):
        assert paged.get(seq) == parsed.get(seq)
        assert (seq in paged) == (seq in whole)


def test_a_later_line_for_a_seq_wins_whichever_way_it_is_read(tmp_path: Path) -> None:
    path = tmp_path / "segment.jsonl"
    path.write_bytes(line(1, "old") + line(2, "two"))
    index = SegmentIndex(str(path))
    index.refresh()
    assert index.get(2).content == "two"  # line 1 indexed, not parsed
    with open(path, "ab") as f:
        f.write(line(1, "new"))
    index.refresh()
    assert index.parse_all()[1].content == "new"  # the indexed older line came first
    with open(path, "ab") as f:
        f.write(line(2, "newer"))
    index.refresh()
    assert index.get(2).content == "newer"  # the parsed older message is superseded
    with open(path, "ab") as f:
        f.write(line(1, "newest"))
    index.refresh()
    assert index.parse_all()[1].content == "newest"
