"""The derived per-conversation segment and its incremental in-memory index."""

from __future__ import annotations

import os
import zlib
from pathlib import Path

from chunkstore._rebuild import message_to_line, rebuild_message
from chunkstore._records import decode, decode_line, encode_line
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
    # A line whose prefix says 6 while its record says 5 (a duplicate key: JSON keeps the
    # last one), with a valid checksum: dropped, whether it is found ahead or indexed.
    body = line(5)[: -len(b',"crc":"00000000"}\n')]
    head = b'{"seq":6,' + body[1:]
    misplaced = head + b',"crc":"%08x"}\n' % zlib.crc32(head)
    assert seq_of_line(misplaced) == 6 and decode(misplaced)["seq"] == 5
    path = tmp_path / "segment.jsonl"
    path.write_bytes(misplaced)
    index = SegmentIndex(str(path))
    index.refresh()
    assert index.get(6) is None  # found ahead
    assert 6 not in index and 5 not in index
    path.write_bytes(line(1))
    index = SegmentIndex(str(path))
    index.refresh()
    assert index.get(1) is not None
    with open(path, "ab") as f:
        f.write(misplaced)
    index.refresh()
    assert index.get(6) is None  # appended: indexed by its prefix, dropped when parsed
    assert 6 not in index


def test_lines_are_found_ahead_in_any_order(tmp_path: Path) -> None:
    path = tmp_path / "segment.jsonl"
    order = [1, 2, 4, 3, 7, 5, 6, 9, 8]
    path.write_bytes(b"".join(line(seq, f"m{seq}") for seq in order))
    index = SegmentIndex(str(path))
    index.refresh()
    assert index.get(2).content == "m2"  # line 1 skipped by the search: indexed
    assert index._lines.keys() == {1}
    assert index.get(3).content == "m3"  # line 4 skipped
    assert index.get(10) is None  # not there: what was ahead is indexed, no second search
    assert not index._ahead and index._lines.keys() == {1, 4, 5, 6, 7, 8, 9}
    assert [index.get(seq).content for seq in range(1, 10)] == [f"m{s}" for s in range(1, 10)]
    assert not index._lines


def test_a_page_reads_only_its_own_lines(tmp_path: Path) -> None:
    path = tmp_path / "segment.jsonl"
    path.write_bytes(b"".join(line(seq, f"m{seq}") for seq in range(1, 201)))
    index = SegmentIndex(str(path))
    index.refresh()
    assert [index.get(seq).content for seq in range(101, 151)] == [f"m{s}" for s in range(101, 151)]
    assert index._lines.keys() == set(range(1, 101))  # skipped by one search, indexed
    assert len(index._messages) == 50  # nothing beyond the page was parsed
    assert index.get(151).content == "m151" and len(index._lines) == 100


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


def test_read_ahead_parses_a_page_in_one_run(tmp_path: Path) -> None:
    path = tmp_path / "segment.jsonl"
    order = [1, 2, 3, 5, 4, 6, 7, 8]
    path.write_bytes(b"".join(line(seq, f"m{seq}") for seq in order))
    index = SegmentIndex(str(path))
    index.refresh()
    index.read_ahead(1, 3)
    assert sorted(index._messages) == [1, 2, 3] and index._ahead_pos > 0
    index.read_ahead(4, 2)  # line 5 skipped by the search (indexed), then lines 4 and 6
    assert sorted(index._messages) == [1, 2, 3, 4, 6] and index._lines.keys() == {5}
    index.read_ahead(9, 5)  # not ahead: nothing done, ``get`` will say
    assert sorted(index._messages) == [1, 2, 3, 4, 6]
    index.read_ahead(7, 5)  # more than is left: up to the end
    assert not index._ahead
    assert [index.get(seq).content for seq in range(1, 9)] == [f"m{s}" for s in range(1, 9)]
    index.read_ahead(1, 2)  # nothing ahead any more: a no-op
    assert index.get(9) is None


def test_read_ahead_skips_corrupt_lines_and_leaves_appends_to_get(tmp_path: Path) -> None:
    path = tmp_path / "segment.jsonl"
    bad = bytearray(line(2, "bad"))
    bad[30] ^= 1
    path.write_bytes(line(1, "one") + bytes(bad) + line(3, "three"))
    index = SegmentIndex(str(path))
    index.refresh()
    index.read_ahead(1, 3)
    assert index.get(2) is None and index.get(3).content == "three"
    path.write_bytes(line(1, "one") + line(2, "two"))
    index = SegmentIndex(str(path))
    index.refresh()
    with open(path, "ab") as f:
        f.write(line(1, "new"))
    index.refresh()
    index.read_ahead(1, 2)  # an append is pending: left to get, which indexes it first
    assert index.get(1).content == "new" and index.get(2).content == "two"


def checksummed(head: bytes) -> bytes:
    """A line with a valid checksum whatever ``head`` holds (what a bug or a hand could write)."""
    return head + b',"crc":"%08x"}\n' % zlib.crc32(head)


def test_checksummed_lines_that_are_no_message_are_dropped(tmp_path: Path) -> None:
    not_json = checksummed(b'{"seq":2,"id":')
    no_id = checksummed(b'{"seq":3,"role":"user","status":"complete"')
    assert decode_line(not_json) is None and decode_line(no_id) is not None
    path = tmp_path / "segment.jsonl"
    path.write_bytes(line(1) + not_json + no_id + line(4))
    for read in ("whole", "ahead", "page"):
        index = SegmentIndex(str(path))
        index.refresh()
        if read == "whole":
            assert sorted(index.parse_all()) == [1, 4]
        elif read == "page":
            index.read_ahead(1, 4)
        assert [seq for seq in range(1, 5) if index.get(seq) is not None] == [1, 4]
