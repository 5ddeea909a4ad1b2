"""The chunkstore exception tree.

Every error the store raises on purpose is a ``ChunkstoreError``, and each one also subclasses
the builtin a caller would naturally catch, so ``except KeyError`` keeps working for code that
does not know about chunkstore::

    ChunkstoreError
    ├── ConversationNotFound (KeyError)
    ├── UserNotFound (KeyError)
    ├── ConversationDeleted (PermissionError)   a soft-deleted conversation was written to
    ├── InvalidId (ValueError)                  an id that is not canonical; raised before any
    │                                           path is built
    ├── InvalidArgument (ValueError)            a bad argument (title too long, unknown role...)
    ├── LimitExceeded (ValueError)              max conversations / max messages reached
    ├── LockTimeout (TimeoutError)              a lock could not be taken in time
    ├── StoreFormatError (ValueError)           the store root is not a chunkstore of a known
    │                                           version
    ├── WriterClosed (RuntimeError)             a MessageWriter used after finish()/fail()
    ├── ReplyStreaming (RuntimeError)           the conversation's last reply is still streaming
    │                                           (``append_turn(refuse_while_streaming=True)``)
    ├── TransferMismatch (RuntimeError)         a copied conversation does not rebuild in the
    │                                           destination as in the source (``copy_store``)
    └── StorageError (OSError)                  the disk failed (ENOSPC, EIO...); ``errno`` is
                                                the underlying one
"""

from __future__ import annotations

__all__ = [
    "ChunkstoreError",
    "ConversationDeleted",
    "ConversationNotFound",
    "InvalidArgument",
    "InvalidId",
    "LimitExceeded",
    "LockTimeout",
    "ReplyStreaming",
    "StorageError",
    "StoreFormatError",
    "TransferMismatch",
    "UserNotFound",
    "WriterClosed",
]


class ChunkstoreError(Exception):
    """Base of every error chunkstore raises on purpose."""


class ConversationNotFound(ChunkstoreError, KeyError):
    """No conversation with that id exists (or it belongs to someone else)."""

    def __str__(self) -> str:  # KeyError would repr() the message; keep it readable
        return str(self.args[0]) if self.args else "conversation not found"


class UserNotFound(ChunkstoreError, KeyError):
    """No user with that id exists."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "user not found"


class ConversationDeleted(ChunkstoreError, PermissionError):
    """The conversation is soft-deleted: restore it before writing to it."""


class InvalidId(ChunkstoreError, ValueError):
    """An id is not in canonical form (``us01``, ``us01-co02``, ``us01-co02-ms03``)."""


class InvalidArgument(ChunkstoreError, ValueError):
    """An argument has the wrong type, size or value."""


class LimitExceeded(ChunkstoreError, ValueError):
    """A configured limit (conversations per user, messages per conversation) is reached."""


class LockTimeout(ChunkstoreError, TimeoutError):
    """A file lock could not be acquired within the timeout."""


class StoreFormatError(ChunkstoreError, ValueError):
    """The store root holds an unknown format or version."""


class WriterClosed(ChunkstoreError, RuntimeError):
    """A MessageWriter was used after it was finished or failed."""


class StorageError(ChunkstoreError, OSError):
    """A disk operation failed; ``errno`` and ``filename`` come from the underlying OSError."""

    @classmethod
    def wrap(cls, exc: OSError, action: str) -> StorageError:
        err = cls(exc.errno, f"{action}: {exc.strerror or exc}", exc.filename)
        err.__cause__ = exc
        return err


class ReplyStreaming(ChunkstoreError, RuntimeError):
    """The conversation's last reply is still streaming (its writer is alive, maybe in another
    process or on another machine): a turn that must see it whole has to wait."""

    def __init__(self, message: str = "a reply is still streaming", message_id: str = "") -> None:
        super().__init__(message)
        self.message_id = message_id


class TransferMismatch(ChunkstoreError, RuntimeError):
    """A conversation (or a user's sessions) copied or imported with verification does not
    read back in the destination as in the source: the message names it and what differs."""
