"""Hierarchical ids: ``us01``, ``us01-co12``, ``us01-co12-ms02``, chunk ``us01-co12-ms02-001``.

Each level is a prefix and a number zero-padded to a minimum width (2, 2, 2, 3) that simply grows
wider past it (``co100``, ``ms1000``). Parsing is strict: only the canonical spelling of a
positive number is accepted (``us1`` and ``us001`` are both invalid), so every id has exactly one
spelling and therefore exactly one path. Ids are compared as integers, never as strings.

Parsing happens before any path is built from an id: an id that parses can only contain
``[a-z0-9-]``, which rules out ``..``, separators, NUL and absolute paths by construction.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ._exceptions import InvalidId

__all__ = [
    "ConversationId",
    "MessageId",
    "UserId",
    "chunk_name",
    "parse_chunk_name",
    "parse_message_file",
    "parse_number",
]

# No id has more digits than this: a bound keeps hostile input ("us" + 10**6 digits) cheap.
MAX_DIGITS = 18

_USER = re.compile(r"us(\d{2,18})")
_CONVERSATION = re.compile(r"us(\d{2,18})-co(\d{2,18})")
_MESSAGE = re.compile(r"us(\d{2,18})-co(\d{2,18})-ms(\d{2,18})")


def _number(digits: str, width: int, text: str) -> int:
    n = int(digits)
    if n < 1 or digits != f"{n:0{width}d}":
        raise InvalidId(f"not a canonical id: {text!r}")
    return n


def _check_text(text: object, kind: str) -> str:
    if not isinstance(text, str):
        raise InvalidId(f"{kind} id must be a string, got {type(text).__name__}")
    if len(text) > 64:
        raise InvalidId(f"{kind} id too long ({len(text)} characters)")
    return text


@dataclass(frozen=True, slots=True, order=True)
class UserId:
    n: int

    @classmethod
    def parse(cls, text: object) -> UserId:
        s = _check_text(text, "user")
        m = _USER.fullmatch(s)
        if m is None:
            raise InvalidId(f"not a user id: {s!r} (expected like 'us01')")
        return cls(_number(m[1], 2, s))

    def __str__(self) -> str:
        return f"us{self.n:02d}"


@dataclass(frozen=True, slots=True, order=True)
class ConversationId:
    user: int
    n: int

    @classmethod
    def parse(cls, text: object) -> ConversationId:
        s = _check_text(text, "conversation")
        m = _CONVERSATION.fullmatch(s)
        if m is None:
            raise InvalidId(f"not a conversation id: {s!r} (expected like 'us01-co01')")
        return cls(_number(m[1], 2, s), _number(m[2], 2, s))

    @property
    def user_id(self) -> UserId:
        return UserId(self.user)

    def __str__(self) -> str:
        return f"us{self.user:02d}-co{self.n:02d}"


@dataclass(frozen=True, slots=True, order=True)
class MessageId:
    user: int
    conversation: int
    seq: int

    @classmethod
    def parse(cls, text: object) -> MessageId:
        s = _check_text(text, "message")
        m = _MESSAGE.fullmatch(s)
        if m is None:
            raise InvalidId(f"not a message id: {s!r} (expected like 'us01-co01-ms01')")
        return cls(_number(m[1], 2, s), _number(m[2], 2, s), _number(m[3], 2, s))

    @property
    def conversation_id(self) -> ConversationId:
        return ConversationId(self.user, self.conversation)

    def __str__(self) -> str:
        return f"us{self.user:02d}-co{self.conversation:02d}-ms{self.seq:02d}"


def chunk_name(message_id: MessageId | str, seq: int) -> str:
    """The file name of chunk ``seq`` of a streamed message: ``us01-co01-ms02-001.json``."""
    return f"{message_id}-{seq:03d}.json"


def parse_chunk_name(name: str) -> tuple[int, int] | None:
    """``(message seq, chunk seq)`` for a whole file name in ``messages/``; chunk seq 0 is the
    sealed file. None for anything else (temp files, lock files, strangers)."""
    head, marker, rest = name.partition("-ms")
    try:
        ConversationId.parse(head)
    except InvalidId:
        return None
    parsed = parse_message_file(rest) if marker else None
    if parsed is None or parsed[2]:
        return None
    return parsed[0], parsed[1]


def parse_number(text: str, width: int) -> int | None:
    """The number ``text`` spells canonically at minimum ``width``, else None."""
    return int(text) if _canonical_digits(text, width) else None


def _canonical_digits(text: str, width: int) -> bool:
    """``text`` is the one spelling of a positive number at minimum ``width`` (no regex: this
    runs once per file name on the rebuild path)."""
    n = len(text)
    if not (text.isascii() and text.isdigit()) or n < width or n > MAX_DIGITS:
        return False
    return text[0] != "0" if n > width else text != "0" * width


def parse_message_file(rest: str) -> tuple[int, int, bool] | None:
    """``(message seq, chunk seq, is_lock)`` for the part of a ``messages/`` file name after
    ``<conversation id>-ms``: ``02.json`` (sealed: chunk 0), ``02-001.json``, ``02.lock``.

    None for anything else (temp files, strangers), which readers skip and ``check`` reports.
    """
    if rest.endswith(".json"):
        is_lock = False
    elif rest.endswith(".lock"):
        is_lock = True
    else:
        return None
    seq_text, dash, chunk_text = rest[:-5].partition("-")
    if not _canonical_digits(seq_text, 2):
        return None
    if not dash:
        return int(seq_text), 0, is_lock
    if is_lock or not _canonical_digits(chunk_text, 3):
        return None
    return int(seq_text), int(chunk_text), False
