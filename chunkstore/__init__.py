"""chunkstore: a local-first, crash-safe conversation store for LLM chat apps.

Messages are persisted while they stream, as small append-only JSON chunk files, and rebuilt
from them on read. See ``users/README.md`` for the on-disk format (a contract) and the README
for the API.
"""

from ._async import AsyncMessageWriter, AsyncStore
from ._exceptions import (
    ChunkstoreError,
    ConversationDeleted,
    ConversationNotFound,
    InvalidArgument,
    InvalidId,
    LimitExceeded,
    LockTimeout,
    ReplyStreaming,
    StorageError,
    StoreFormatError,
    TransferMismatch,
    UserNotFound,
    WriterClosed,
)
from ._ids import ConversationId, MessageId, UserId
from ._layout import FORMAT_VERSION
from ._models import Conversation, ConversationPage, Message, Problem, SearchHit, SearchPage
from ._store import DURABILITY_MODES, Store
from ._transfer import (
    ImportReport,
    SkippedConversation,
    copy_store,
    export_lines,
    import_lines,
)
from ._turns import Turn
from ._url import parse_store_url, redact_url
from ._writer import MessageWriter

__version__ = "0.1.0"

__all__ = [
    "DURABILITY_MODES",
    "FORMAT_VERSION",
    "AsyncMessageWriter",
    "AsyncStore",
    "ChunkstoreError",
    "Conversation",
    "ConversationDeleted",
    "ConversationId",
    "ConversationNotFound",
    "ConversationPage",
    "ImportReport",
    "InvalidArgument",
    "InvalidId",
    "LimitExceeded",
    "LockTimeout",
    "Message",
    "MessageId",
    "MessageWriter",
    "Problem",
    "ReplyStreaming",
    "SearchHit",
    "SearchPage",
    "SkippedConversation",
    "StorageError",
    "Store",
    "StoreFormatError",
    "TransferMismatch",
    "Turn",
    "UserId",
    "UserNotFound",
    "WriterClosed",
    "__version__",
    "copy_store",
    "export_lines",
    "import_lines",
    "parse_store_url",
    "redact_url",
]
