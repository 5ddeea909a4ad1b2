"""Argument validation shared by every backend: each limit and rule is declared once, here.

The front (``Store``) calls these before any backend is touched, so a backend only ever sees
valid values, and every backend rejects bad input with the same ``InvalidArgument`` message.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ._exceptions import InvalidArgument

__all__ = [
    "DURABILITY_MODES",
    "MAX_METADATA_KEY",
    "MAX_METADATA_PAIRS",
    "MAX_METADATA_VALUE",
    "MAX_PAGE",
    "MAX_PRINCIPAL_CHARS",
    "MAX_TITLE_CHARS",
    "ROLES",
    "check_content",
    "check_metadata",
    "check_participants",
    "check_principal",
    "check_role",
    "check_short",
    "check_title",
    "positive_int",
]

DURABILITY_MODES: tuple[str, ...] = ("chunk", "message", "none")
ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})
MAX_TITLE_CHARS = 512
MAX_PRINCIPAL_CHARS = 4096
# OpenAI's limits for conversation metadata: 16 pairs, 64-char keys, 512-char values.
MAX_METADATA_PAIRS = 16
MAX_METADATA_KEY = 64
MAX_METADATA_VALUE = 512
MAX_PAGE = 1000


def positive_int(name: str, value: Any, *, maximum: int | None = None) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InvalidArgument(f"{name} must be a positive integer, got {value!r}")
    if maximum is not None and value > maximum:
        raise InvalidArgument(f"{name} must be at most {maximum}, got {value}")


def check_principal(principal: Any) -> str:
    if not isinstance(principal, str) or not principal:
        raise InvalidArgument("principal must be a non-empty string")
    if len(principal) > MAX_PRINCIPAL_CHARS:
        raise InvalidArgument(f"principal longer than {MAX_PRINCIPAL_CHARS} characters")
    return principal


def check_title(title: Any) -> str | None:
    if title is None:
        return None
    if not isinstance(title, str):
        raise InvalidArgument("title must be a string")
    if len(title) > MAX_TITLE_CHARS:
        raise InvalidArgument(f"title longer than {MAX_TITLE_CHARS} characters")
    return title


def check_metadata(metadata: Any) -> dict[str, str]:
    if not isinstance(metadata, Mapping):
        raise InvalidArgument("metadata must be an object of string keys and values")
    if len(metadata) > MAX_METADATA_PAIRS:
        raise InvalidArgument(f"metadata has more than {MAX_METADATA_PAIRS} keys")
    out = {}
    for key, value in metadata.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise InvalidArgument("metadata keys and values must be strings")
        if len(key) > MAX_METADATA_KEY or len(value) > MAX_METADATA_VALUE:
            raise InvalidArgument(
                f"metadata keys are at most {MAX_METADATA_KEY} characters and values "
                f"at most {MAX_METADATA_VALUE}"
            )
        out[key] = value
    return out


def check_participants(participants: Any) -> list[str]:
    if not isinstance(participants, (list, tuple)) or not all(
        isinstance(p, str) and 0 < len(p) <= 256 for p in participants
    ):
        raise InvalidArgument("participants must be a list of non-empty strings")
    return list(participants)


def check_role(role: Any) -> None:
    if role not in ROLES:
        raise InvalidArgument(f"role must be one of {sorted(ROLES)}, got {role!r}")


def check_short(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value or len(value) > 256:
        raise InvalidArgument(f"{name} must be a non-empty string of at most 256 characters")
    return value


def check_content(content: Any) -> None:
    """A message's content: text, a list of parts (objects; a part's ``text``, if any, is a
    string), or None."""
    if content is None or isinstance(content, str):
        return
    if isinstance(content, list) and all(
        isinstance(p, dict) and isinstance(p.get("text", ""), str) for p in content
    ):
        return
    raise InvalidArgument(
        "content must be a str, a list of parts (objects whose 'text' is a string), or None"
    )
