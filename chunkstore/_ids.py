"""Hierarchical ids: ``us01``, ``us01-co12``, ``us01-co12-ms02``, chunk ``us01-co12-ms02-001``.

Each level is a prefix and a number zero-padded to a minimum width (2, 2, 2, 3) that simply grows
wider past it (``co100``, ``ms1000``). Parsing is strict: only the canonical spelling of a
positive number is accepted (``us1`` and ``us001`` are both invalid), so every id has exactly one
spelling and therefore exactly one path. Ids are compared as integers, never as strings.

Parsing happens before any path is built from an id: an id that parses can only contain
``[a-z0-9-]``, which rules out ``..``, separators, NUL and absolute paths by construction.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from ._exceptions import InvalidId

__all__ = [
    "SEALED_NAMES",
    "ConversationId",
    "MessageId",
    "UserId",
    "chunk_name",
    "parse_chunk_name",
    "parse_message_file",
    "rebase_listing",
    "scan_conversation_numbers",
    "scan_message_files",
    "scan_rebased",
    "scan_tombstones",
    "tombstone_name",
    "user_id_text",
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


def user_id_text(n: int) -> str:
    """``str(UserId(n))`` without building the object, for hot loops that spell ids from row
    numbers: a conversation id is this plus ``f"-co{n:02d}"``, a message id that plus
    ``f"-ms{seq:02d}"`` (the spelling of ``__str__`` below)."""
    return f"us{n:02d}"


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


# The grammar of the names inside a store, as regular expressions so a whole directory listing
# is parsed in one pass of the regex engine (a Python loop per name was the slowest part of a
# rebuild). A canonical number: two digits but not 00, or more with no leading zero.
_N2 = r"(0[1-9]|[1-9][0-9]{1,17})"
_N3 = r"(00[1-9]|0[1-9][0-9]|[1-9][0-9]{2,17})"
# After "<conversation id>-ms": "02.json" (sealed), "02-001.json" (chunk), "02.lock" (writer).
_MESSAGE_FILE_SUFFIX = _N2 + r"(?:-" + _N3 + r")?\.(json|lock)"
_SUFFIX = re.compile(_MESSAGE_FILE_SUFFIX)


def parse_message_file(rest: str) -> tuple[int, int, bool] | None:
    """``(message seq, chunk seq, is_lock)`` for the part of a ``messages/`` file name after
    ``<conversation id>-ms``; chunk seq 0 is the sealed file. None for anything else."""
    m = _SUFFIX.fullmatch(rest)
    if m is None or (m[3] == "lock" and m[2]):
        return None
    return int(m[1]), int(m[2] or 0), m[3] == "lock"


@functools.lru_cache(maxsize=4096)
def _names_pattern(prefix: str, suffix: str) -> re.Pattern[str]:
    # Names are joined with NUL, the one character no file name can hold.
    return re.compile(r"(?:^|\0)" + re.escape(prefix) + suffix + r"(?=\0|$)")


# A ``messages/`` listing is scanned with patterns that do not depend on the conversation:
# ``rebase_listing`` joins the names with NUL and turns each "<conversation id>-ms" that starts a
# name into "/", a character no file name can hold, so a match starting at "/" is a name of this
# conversation and nothing else. Compiled once at import: a pattern per conversation cost a
# regex compile (~0.15 ms, two per conversation) on the first read of each one in a process.
_AFTER = r"(?=[\0/]|$)"  # the end of a name: the next one starts with NUL or "/" (rebased)
_LISTED = re.compile(r"/" + _N2 + r"(?:-" + _N3 + r")?\.(json|lock|deleted)" + _AFTER)
# Sealed files only, their seq alone: what nearly every name of a quiet conversation is.
SEALED_NAMES = re.compile(r"/" + _N2 + r"\.json" + _AFTER)


def rebase_listing(names: list[str], conv: ConversationId) -> str:
    """``names`` joined for ``SEALED_NAMES`` and ``scan_rebased``: each name of ``conv``'s
    messages (``<conv>-ms...``) starts with "/" instead of that prefix, strangers keep theirs."""
    return ("\0" + "\0".join(names)).replace(f"\0{conv}-ms", "/")


def scan_rebased(rebased: str) -> tuple[list[tuple[int, int, bool]], set[int]]:
    """Every message file of a ``rebase_listing`` (``(seq, chunk seq, is_lock)``, as
    ``scan_message_files`` gives them) and the seqs of its tombstones, in one pass."""
    files = []
    tombstones = set()
    for seq, chunk, ext in _LISTED.findall(rebased):
        if ext == "json":
            files.append((int(seq), int(chunk or 0), False))
        elif chunk:
            continue  # "<id>-001.lock" or "<id>-001.deleted": nothing of ours
        elif ext == "lock":
            files.append((int(seq), 0, True))
        else:
            tombstones.add(int(seq))
    return files, tombstones


def scan_message_files(names: list[str], conv: ConversationId) -> list[tuple[int, int, bool]]:
    """``parse_message_file`` for every name of ``conv``'s ``messages/`` listing, in one pass."""
    return scan_rebased(rebase_listing(names, conv))[0]


def tombstone_name(message_id: MessageId) -> str:
    """The file name of a deleted message's tombstone: ``us01-co01-ms02.deleted``."""
    return f"{message_id}{TOMBSTONE_SUFFIX}"


TOMBSTONE_SUFFIX = ".deleted"
# Not one of the names ``scan_message_files`` returns, on purpose: it (and so every reader of
# format v1 written before tombstones existed) skips ``.deleted`` names, and a tombstone never
# claims a seq on its own: the message's own files stay, and keep claiming it.


def scan_tombstones(names: list[str], conv: ConversationId) -> set[int]:
    """The seqs of ``conv``'s deleted messages: the ``<messageId>.deleted`` names of its
    ``messages/`` listing, in one pass."""
    rebased = rebase_listing(names, conv)
    if TOMBSTONE_SUFFIX not in rebased:
        return set()
    return scan_rebased(rebased)[1]


def scan_conversation_numbers(names: list[str], user: UserId) -> list[int]:
    """The numbers of ``user``'s conversation directories in a listing, in one pass."""
    pattern = _names_pattern(f"{user}-co", _N2)
    return list(map(int, pattern.findall("\0".join(names))))
