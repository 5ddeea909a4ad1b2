"""Turns: continuing a conversation with what a chat client sends.

Chat clients either resend the whole conversation with every request (OpenAI style) or only
the new turn; some trim the oldest messages. ``plan_turn`` finds the longest overlap between
the end of the stored history and the start of what was sent: that part is already stored and
must not be stored (or replayed upstream) twice. Pure functions, no I/O: ``Store.append_turn``
runs them between one read and one write.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from ._models import Message

__all__ = ["QUESTION_ROLES", "STORED_ROLES", "Turn", "merge_history", "replayable"]

#: The roles a turn stores; others (``system``, ``developer``) are instructions, never stored.
STORED_ROLES = frozenset({"user", "assistant", "tool"})
#: The roles a reply answers.
QUESTION_ROLES = frozenset({"user", "tool"})


@dataclass(frozen=True, slots=True)
class Turn:
    """What ``Store.append_turn`` did: the history before the turn (replayable messages, in
    OpenAI's chat form), the messages sent that were new (all of them, stored or not), the
    messages it stored, and the seq a reply to this turn answers (``answers``: the
    conversation's last user or tool message once the turn is stored, whether this turn
    stored it or an earlier attempt of the same turn did)."""

    history: list[dict[str, Any]]
    new: list[dict[str, Any]]
    stored: list[Message]
    answers: int | None = None


def replayable(message: Message) -> bool:
    """Whether a stored message means anything to a model (text or tool calls)."""
    return bool(message.content) or bool(message.tool_calls)


def _message_key(message: Mapping[str, Any]) -> bytes:
    """What makes two messages "the same" for de-duplicating resent history."""
    calls = message.get("tool_calls") or None
    call_ids = (
        [c.get("id") for c in calls if isinstance(c, dict)] if isinstance(calls, list) else None
    )
    return orjson.dumps(
        [message.get("role"), message.get("content"), call_ids, message.get("tool_call_id")],
        option=orjson.OPT_SORT_KEYS,
    )


def merge_history(history: Sequence[Mapping[str, Any]], sent: Sequence[Mapping[str, Any]]) -> int:
    """How many of ``sent``'s leading messages the stored ``history`` already ends with."""
    if not history or not sent:
        return 0
    history_keys = [_message_key(m) for m in history]
    sent_keys = [_message_key(m) for m in sent[: len(history)]]
    for k in range(min(len(history_keys), len(sent_keys)), 0, -1):
        if history_keys[-k:] == sent_keys[:k]:
            return k
    return 0
