"""Where everything lives under the store root (format version 1).

::

    <root>/
      FORMAT                                  {"format": "chunkstore", "version": 1}
      sessions/<sha256 of principal>.json     {"userId": "us01"}: the session registry
      us01/
        user.json                             user record (replaced atomically)
        data/conversations/
          us01-co12/
            conversation.json                 metadata (replaced atomically)
            segment.jsonl                     derived: one line per finished message
            messages/
              us01-co12-ms01.json             a sealed (complete) message: all its records
              us01-co12-ms02-001.json         chunk 1 of a streamed message
              us01-co12-ms02.lock             held by the live writer of ms02

Paths are built only from parsed ids (``_ids``), so nothing here can escape the root. Paths are
plain strings: the read path builds thousands of them and ``pathlib`` would be the slowest part.
"""

from __future__ import annotations

import os

from ._ids import ConversationId, MessageId, UserId

__all__ = ["FORMAT_VERSION", "Layout"]

FORMAT_VERSION = 1
_SEP = os.sep


class Layout:
    __slots__ = ("root",)

    def __init__(self, root: str) -> None:
        self.root = root

    @property
    def format_file(self) -> str:
        return os.path.join(self.root, "FORMAT")

    @property
    def sessions_dir(self) -> str:
        return os.path.join(self.root, "sessions")

    @property
    def registry_lock(self) -> str:
        return os.path.join(self.root, "sessions", ".lock")

    def session_file(self, principal_hash: str) -> str:
        return os.path.join(self.root, "sessions", principal_hash + ".json")

    def user_dir(self, user: UserId) -> str:
        return os.path.join(self.root, str(user))

    def user_file(self, user: UserId) -> str:
        return os.path.join(self.root, str(user), "user.json")

    def user_lock(self, user: UserId) -> str:
        return os.path.join(self.root, str(user), ".lock")

    def conversations_dir(self, user: UserId) -> str:
        return self.conversations_dir_chain(user)[-1]

    def conversations_dir_chain(self, user: UserId) -> tuple[str, str, str]:
        """The directories on the way to ``user``'s conversations, outermost first: each must be
        checked for a planted symlink (see ``has_symlink``)."""
        user_dir = f"{self.root}{_SEP}us{user.n:02d}"
        data = f"{user_dir}{_SEP}data"
        return user_dir, data, f"{data}{_SEP}conversations"

    def user_has_symlink(self, user: UserId) -> bool:
        """Whether a directory on the way to ``user``'s conversations is a symlink."""
        return any(os.path.islink(path) for path in self.conversations_dir_chain(user))

    def has_symlink(self, conv: ConversationId) -> bool:
        """Whether a directory on the way to ``conv``'s messages is a symlink.

        The store never creates links, so one is planted: following it could read or write
        outside the root, and the conversation is treated as missing instead.
        """
        path = self.root
        for part in (f"us{conv.user:02d}", "data", "conversations", str(conv), "messages"):
            path = os.path.join(path, part)
            if os.path.islink(path):
                return True
        return False

    def conversation_dir(self, conv: ConversationId) -> str:
        # Concatenation, not os.path.join: listings build this for every item they show.
        return f"{self.root}{_SEP}us{conv.user:02d}{_SEP}data{_SEP}conversations{_SEP}{conv}"

    def conversation_dir_prefix(self, user: UserId) -> str:
        """``conversation_dir`` of ``user``'s conversation ``n`` is this + ``f"{n:02d}"``:
        listings build one per number they probe, without making a ConversationId."""
        return (
            f"{self.root}{_SEP}us{user.n:02d}{_SEP}data{_SEP}conversations{_SEP}us{user.n:02d}-co"
        )

    def conversation_file(self, conv: ConversationId) -> str:
        return f"{self.conversation_dir(conv)}{_SEP}conversation.json"

    def conversation_lock(self, conv: ConversationId) -> str:
        return os.path.join(self.conversation_dir(conv), ".lock")

    def segment_file(self, conv: ConversationId) -> str:
        return os.path.join(self.conversation_dir(conv), "segment.jsonl")

    def messages_dir(self, conv: ConversationId) -> str:
        return os.path.join(self.conversation_dir(conv), "messages")

    def sealed_file(self, message: MessageId) -> str:
        return os.path.join(self.messages_dir(message.conversation_id), f"{message}.json")

    def chunk_file(self, message: MessageId, chunk: int) -> str:
        return os.path.join(
            self.messages_dir(message.conversation_id), f"{message}-{chunk:03d}.json"
        )

    def writer_lock(self, message: MessageId) -> str:
        return os.path.join(self.messages_dir(message.conversation_id), f"{message}.lock")
