"""The ``chunkstore`` command line (also ``python -m chunkstore``): inspect and maintain a store.

Commands: ``ls``, ``show``, ``search``, ``rename``, ``rm``, ``restore``, ``whoami``, ``check``,
``sweep``, ``export``, ``import``, ``copy``. Run ``chunkstore --help`` or ``chunkstore COMMAND
--help`` for their options.

Conventions:

* Data goes to stdout (tables, or JSON Lines with ``--json`` / ``export``); notes, progress bars
  and errors go to stderr, so output can be piped. Progress bars show only when stderr is a
  terminal, and never with ``--quiet``.
* The store is ``--db-url`` (or ``$CHUNKSTORE_URL``): any URL ``Store`` takes (``file:DIR``,
  ``sqlite:FILE``, or a bare path); ``--root PATH`` (or ``$CHUNKSTORE_ROOT``) is the file store
  at PATH. The CLI never creates a store: a directory without a ``FORMAT`` file, or a missing
  database file, is an error. Two exceptions, because creating the destination is what a
  user restoring a backup or moving to another backend asks for: ``import`` creates its store,
  and ``copy`` its DST_URL, if plainly absent (a missing or empty directory, a missing SQLite
  file in an existing directory; never a directory holding other files, and never a
  PostgreSQL database, which is the operator's to create). It is created before the first
  line is read: an import that fails on its first line leaves an empty store behind.
* Exit codes: 0 success; 1 a chunkstore error (unknown id, storage failure...) or, for
  ``check``, problems that remain; 2 a usage error, or a root that is not a chunkstore store of a
  version this chunkstore reads. Errors are one line on stderr, never a traceback.
* Nothing is removed for good without ``--yes`` (``rm --hard``, ``sweep``): the CLI never
  prompts, so it behaves the same in a terminal, a script and CI.
* ``export`` writes the chunkstore export format (``_transfer``: JSON Lines, version 1): a
  header line, a ``{"type": "user", ...}`` line per user (its sessions as SHA-256 digests and
  its conversation counter), then its conversations, soft-deleted ones included, each a
  ``{"type": "conversation", ..., "last_seq"}`` line and a ``{"type": "message", ...}`` line
  per seq (a deleted message as ``{..., "deleted": true}``). ``show --json`` writes a
  conversation line and its messages' lines with every field of ``Conversation`` and
  ``Message`` (``damaged`` included); ``import`` reads both.
* ``import`` and ``copy`` are idempotent (what is there already is skipped; a conversation
  is written whole or not at all, so an interrupted run simply runs again), print every id
  they had to change (``old -> new``) as a note, every foreign conversation they skipped
  (always, even with ``--quiet``: never silently), and a summary line on stderr. A skipped
  conversation is not an error: the exit code stays 0.
* ``check`` also lists the messages that read back ``interrupted`` (their writer died before
  sealing them: a crash, a killed process). They are a valid state, not corruption: they are
  reported as information and never change the exit code.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import IO, Any, TypeVar

import orjson
from tqdm import tqdm  # type: ignore[import-untyped]

from ._exceptions import ChunkstoreError, InvalidArgument, StoreFormatError
from ._layout import FORMAT_VERSION
from ._models import Conversation, Message
from ._store import Store
from ._transfer import ImportReport, copy_store, export_lines, foreign_lines, import_lines
from ._url import parse_store_url
from ._validate import MAX_PAGE

__all__ = ["build_parser", "main"]

PROG = "chunkstore"
ROOT_ENV = "CHUNKSTORE_ROOT"
URL_ENV = "CHUNKSTORE_URL"
DEFAULT_ROOT = "users"

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2  # argparse's code for usage errors; also "this is not a store we can read"

T = TypeVar("T")
Write = Callable[[str], object]


class NotAStore(Exception):
    """The root is missing, has no FORMAT file, or holds a format this version cannot read."""


# -- parsing ------------------------------------------------------------------------------------


def _int_at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


_positive_int = _int_at_least(1)
_non_negative_int = _int_at_least(0)


def _positive_days(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of days, got {text}")
    return value


def _global_options(parser: argparse.ArgumentParser, default: Any) -> None:
    parser.add_argument(
        "--db-url",
        metavar="URL",
        default=default,
        help=f"the store: file:DIR, sqlite:FILE or a path (default: ${URL_ENV}, else --root)",
    )
    parser.add_argument(
        "--root",
        metavar="PATH",
        default=default,
        help=f"the file store's directory (default: ${ROOT_ENV}, else ./{DEFAULT_ROOT})",
    )
    parser.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        default=default if default is argparse.SUPPRESS else False,
        help="no progress bars and no notes on stderr (errors are still reported)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``chunkstore`` command (exposed for docs and tests)."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Inspect and maintain a chunkstore conversation store.",
        epilog=(
            "examples:\n"
            "  chunkstore ls                      users and their conversation counts\n"
            "  chunkstore ls us01 --all           a user's conversations, deleted ones too\n"
            "  chunkstore show us01-co02 --json   a conversation's metadata and messages\n"
            "  chunkstore rename us01-co02 Lisbon retitle a conversation\n"
            "  chunkstore rm us01-co02            soft delete (chunkstore restore undoes it)\n"
            "  chunkstore rm us01-co02 --hard -y  remove it for good\n"
            "  chunkstore whoami my-session       the user id of a session (x-session-id)\n"
            "  chunkstore search -u us01 lisbon   a user's conversations that mention it\n"
            "  chunkstore check --fix             verify the store, repair what is safe\n"
            "  chunkstore sweep --days 30         conversations a sweep would remove\n"
            "  chunkstore export -o backup.jsonl  everything, losslessly, as JSON Lines\n"
            "  chunkstore --db-url sqlite:new.db import backup.jsonl   ...and back (idempotent)\n"
            "  chunkstore import --chatgpt conversations.json --principal my-session\n"
            "  chunkstore copy file:./users sqlite:./chat.db           move to another backend"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _global_options(parser, None)
    parser.add_argument(
        "--version",
        action="version",
        version=f"%(prog)s {_version()} (store format version {FORMAT_VERSION})",
    )
    # The global options are accepted after the command too ("chunkstore ls --root x"). Their
    # defaults there are SUPPRESS so a command's parser never overwrites a value given before it.
    common = argparse.ArgumentParser(add_help=False)
    _global_options(common, argparse.SUPPRESS)

    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    ls = commands.add_parser(
        "ls",
        parents=[common],
        help="list users, or one user's conversations",
        description=(
            "Without USER: every user with their number of conversations. With USER: the "
            "user's conversations, newest first."
        ),
    )
    ls.add_argument("user", nargs="?", metavar="USER", help="a user id, e.g. us01")
    ls.add_argument("-a", "--all", action="store_true", help="include soft-deleted conversations")
    ls.add_argument("-n", "--limit", type=_positive_int, metavar="N", help="at most N rows")
    ls.add_argument("--json", action="store_true", help="JSON Lines instead of a table")
    ls.set_defaults(handler=_cmd_ls)

    show = commands.add_parser(
        "show",
        parents=[common],
        help="a conversation's metadata and messages",
        description="A conversation's metadata and its messages, rebuilt from their chunks.",
    )
    show.add_argument("conversation", metavar="CONV_ID", help="a conversation id, e.g. us01-co02")
    show.add_argument(
        "--after-seq",
        type=_non_negative_int,
        default=0,
        metavar="SEQ",
        help="only messages with a seq greater than SEQ (default: 0)",
    )
    show.add_argument(
        "-n", "--limit", type=_positive_int, metavar="N", help="at most N messages (default: all)"
    )
    show.add_argument(
        "--json",
        action="store_true",
        help=(
            'JSON Lines, as export writes them: a {"type": "conversation", ...} line with the '
            'metadata, then a {"type": "message", ...} line per message, with every field'
        ),
    )
    show.set_defaults(handler=_cmd_show)

    rename = commands.add_parser(
        "rename",
        parents=[common],
        help="change a conversation's title",
        description="Change a conversation's title ('' removes it).",
    )
    rename.add_argument("conversation", metavar="CONV_ID", help="a conversation id, e.g. us01-co02")
    rename.add_argument("title", metavar="TITLE", help="the new title ('' for none)")
    rename.set_defaults(handler=_cmd_rename)

    rm = commands.add_parser(
        "rm",
        parents=[common],
        help="delete conversations (soft: restorable; --hard --yes: for good)",
        description=(
            "Soft-delete conversations: hidden from listings (ls --all shows them), read-only, "
            "restorable with 'chunkstore restore'. With --hard, remove them and their messages "
            "for good; that needs --yes (the CLI never prompts). Every id is checked before "
            "anything is deleted."
        ),
    )
    rm.add_argument("conversations", nargs="+", metavar="CONV_ID", help="conversations to delete")
    rm.add_argument("--hard", action="store_true", help="remove for good (needs --yes)")
    rm.add_argument("-y", "--yes", action="store_true", help="confirm --hard")
    rm.set_defaults(handler=_cmd_rm)

    restore = commands.add_parser(
        "restore",
        parents=[common],
        help="undo a soft delete",
        description="Undo the soft delete of conversations (a hard delete cannot be undone).",
    )
    restore.add_argument(
        "conversations", nargs="+", metavar="CONV_ID", help="conversations to restore"
    )
    restore.set_defaults(handler=_cmd_restore)

    whoami = commands.add_parser(
        "whoami",
        parents=[common],
        help="the user id of a session id",
        description=(
            "Print the user id the store keeps for SESSION (the edge's x-session-id header or "
            "cf_session_id cookie). Exits 1 if the store has never seen it; nothing is created. "
            "SESSION '-' reads it from stdin (command lines are visible to other users)."
        ),
    )
    whoami.add_argument("session", metavar="SESSION", help="a session id, or '-' for stdin")
    whoami.set_defaults(handler=_cmd_whoami)

    search = commands.add_parser(
        "search",
        parents=[common],
        help="search a user's conversations",
        description=(
            "The user's conversations whose title or a finished message holds every word of "
            "QUERY (each as the start of a word: 'lis' finds Lisbon): title matches newest "
            "first, then message matches newest first, each with the matching message's seq "
            "(the latest; empty when the title matched) and a snippet. "
            "Nothing in QUERY is syntax. The user is --user, or the user of a session id "
            "(--principal; '-' reads it from stdin, as whoami does; nothing is created)."
        ),
    )
    who = search.add_mutually_exclusive_group(required=True)
    who.add_argument("-u", "--user", metavar="USER", help="a user id, e.g. us01")
    who.add_argument("-p", "--principal", metavar="P", help="a session id, or '-' for stdin")
    search.add_argument("query", metavar="QUERY", help="the words to find")
    search.add_argument(
        "-n", "--limit", type=_positive_int, default=20, metavar="N", help="at most N rows (20)"
    )
    search.add_argument(
        "-a", "--deleted", action="store_true", help="include soft-deleted conversations"
    )
    search.add_argument("--json", action="store_true", help="JSON Lines instead of a table")
    search.set_defaults(handler=_cmd_search)

    check = commands.add_parser(
        "check",
        parents=[common],
        help="verify the store's on-disk invariants",
        description=(
            "Walk the store and report every broken invariant. Exits 1 while problems remain. "
            "Also lists the messages that read back 'interrupted' (their writer died before "
            "sealing them): a valid state, not corruption, so they never change the exit code."
        ),
    )
    check.add_argument(
        "--fix",
        action="store_true",
        help=(
            "repair what is safe: leftover temp files, spare chunk files, derived segments, "
            "lock files that are not regular files, a conversation counter behind its "
            "conversations, a damaged conversation.json (rebuilt without its title, "
            "metadata, pin, participants and soft deletion: they are kept nowhere else)"
        ),
    )
    check.set_defaults(handler=_cmd_check)

    sweep = commands.add_parser(
        "sweep",
        parents=[common],
        help="remove conversations idle for N days (dry run unless --yes)",
        description=(
            "Retention sweep: hard-delete conversations with no activity for N days; pinned "
            "conversations are kept. Prints the ids removed, or that would be. Nothing is "
            "removed without --yes."
        ),
    )
    sweep.add_argument(
        "--days", type=_positive_days, required=True, metavar="N", help="idle for N days (> 0)"
    )
    mode = sweep.add_mutually_exclusive_group()
    mode.add_argument(
        "--dry-run", action="store_true", help="only list what would be removed (the default)"
    )
    mode.add_argument("-y", "--yes", action="store_true", help="really remove them")
    sweep.set_defaults(handler=_cmd_sweep)

    export = commands.add_parser(
        "export",
        parents=[common],
        help="export users and conversations, losslessly, as JSON Lines",
        description=(
            "Export to the chunkstore export format (JSON Lines, version 1): a header line, "
            'then per user a {"type": "user", ...} line (with its sessions: the SHA-256 '
            "digests of its principals, never the principals) and its conversations, each a "
            '{"type": "conversation", ...} line and one {"type": "message", ...} line per '
            'message in seq order (a deleted one as {..., "deleted": true}). Everything '
            "is kept: ids, seqs, statuses, times, tool calls, agent ids, usage, metadata, "
            "pins, soft-deleted conversations. 'chunkstore import' reads it back. Without "
            "CONV_ID or --user, every user."
        ),
    )
    export.add_argument(
        "conversations", nargs="*", metavar="CONV_ID", help="conversations to export (default: all)"
    )
    export.add_argument(
        "-u",
        "--user",
        dest="users",
        action="append",
        metavar="USER_ID",
        help="export this user's conversations (repeatable; not with CONV_ID)",
    )
    export.add_argument(
        "--jsonl",
        dest="format",
        action="store_const",
        const="jsonl",
        default="jsonl",
        help="JSON Lines output (the default, and for now the only format)",
    )
    export.add_argument(
        "-a",
        "--all",
        action="store_true",
        help="kept for old scripts: soft-deleted conversations are always exported now",
    )
    export.add_argument(
        "-o", "--output", default="-", metavar="FILE", help="write to FILE ('-': stdout, default)"
    )
    export.set_defaults(handler=_cmd_export)

    import_ = commands.add_parser(
        "import",
        parents=[common],
        help="import an export (or a ChatGPT / Open WebUI export); idempotent",
        description=(
            "Import FILE (the chunkstore export format; '-' reads stdin) into the store, "
            "creating the store if it does not exist yet (a file store directory that is "
            "missing or empty, a SQLite file that is missing; a PostgreSQL database must "
            "exist). Ids are kept; an id already taken by different content is imported "
            "under the next free number and the mapping is printed. Importing the same file "
            "twice changes nothing: what is there already is skipped. A user whose session "
            "is already known in the store is that user. With --chatgpt or --openwebui, "
            "FILE is that app's export (conversations.json): its conversations go to --user "
            "or --principal, each once (one already imported is skipped); any it cannot read "
            "is reported on stderr with the reason, and counted. Exit code 0 unless an "
            "error (a conversation skipped is not an error); 1 on an error, 2 for bad input."
        ),
    )
    import_.add_argument("file", nargs="?", metavar="FILE", help="the export to read ('-': stdin)")
    source = import_.add_mutually_exclusive_group()
    source.add_argument(
        "--chatgpt", metavar="FILE", help="a ChatGPT export's conversations.json to convert"
    )
    source.add_argument(
        "--openwebui", metavar="FILE", help="an Open WebUI export (JSON) to convert"
    )
    target = import_.add_mutually_exclusive_group()
    target.add_argument(
        "--user", metavar="USER_ID", help="the user that receives converted conversations"
    )
    target.add_argument(
        "--principal",
        metavar="P",
        help="the user of this principal (a session id; created if new) receives them",
    )
    import_.add_argument(
        "--verify",
        action="store_true",
        help="read every imported conversation back and compare it with the file",
    )
    import_.set_defaults(handler=_cmd_import, creates_store=True)

    copy = commands.add_parser(
        "copy",
        parents=[common],
        help="copy every user and conversation from one store to another (any backends)",
        description=(
            "Copy SRC_URL into DST_URL: file:DIR, sqlite:FILE, postgresql://... or a path, in "
            "any combination. DST_URL is created if it does not exist yet (as for import); "
            "SRC_URL must exist and is only read. Each conversation is copied whole (one "
            "atomic step), then read back from both stores and compared: a difference is an "
            "error naming it. An interrupted copy resumes: run it again and what is already "
            "there is skipped. Ids are kept unless taken by other data in DST_URL (then "
            "mapped, and printed). The global --db-url / --root are not used."
        ),
    )
    copy.add_argument("source", metavar="SRC_URL", help="the store to copy from")
    copy.add_argument("destination", metavar="DST_URL", help="the store to copy into")
    copy.set_defaults(handler=_cmd_copy, opens_urls=True)
    return parser


def _version() -> str:
    from . import __version__

    return __version__


# -- entry point --------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); return the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error (already printed)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    target = (
        args.db_url
        or (args.root and f"file:{args.root}")
        or os.environ.get(URL_ENV)
        or f"file:{os.environ.get(ROOT_ENV) or DEFAULT_ROOT}"
    )
    try:
        if getattr(args, "opens_urls", False):
            copy_handler: Callable[[argparse.Namespace], int] = args.handler
            return copy_handler(args)
        handler: Callable[[Store, argparse.Namespace], int] = args.handler
        if getattr(args, "creates_store", False):
            store = open_or_create_store(target, args)
        else:
            store = open_store(target)
        with contextlib.closing(store):
            return handler(store, args)
    except (NotAStore, StoreFormatError, InvalidArgument) as exc:
        _error(str(exc))
        return EXIT_USAGE
    except ChunkstoreError as exc:
        _error(str(exc))
        return EXIT_FAILURE
    except OSError as exc:
        if isinstance(exc, BrokenPipeError):
            _silence_stdout()  # the reader went away (| head): not an error worth a message
            return EXIT_FAILURE
        _error(_os_error_text(exc))
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130


def open_store(target: str) -> Store:
    """Open an existing store; never create one (an admin tool must not litter empty stores)."""
    kind, location = parse_store_url(target)
    if kind == "postgresql":
        # A server's database is the operator's to create: opening it only adds (or upgrades)
        # chunkstore's tables, and a database that does not exist is the driver's error.
        return Store(target)
    path = os.path.abspath(location)
    if kind == "sqlite":
        if not os.path.isfile(path):
            raise NotAStore(f"{path} is not a chunkstore database: no such file (see --db-url)")
        return Store(target)
    if not os.path.isdir(path):
        raise NotAStore(f"{path} is not a chunkstore store: no such directory (see --root)")
    if not os.path.isfile(os.path.join(path, "FORMAT")):
        raise NotAStore(f"{path} is not a chunkstore store: it has no FORMAT file (see --root)")
    return Store(path)


def open_or_create_store(target: str, args: argparse.Namespace) -> Store:
    """The store at ``target``, created if it does not exist yet: what a user restoring a
    backup or moving to another backend expects (``import``, and ``copy``'s destination).
    Only a store that is plainly absent is created (a missing or empty directory, a missing
    SQLite file whose directory exists); a directory holding other files is still refused,
    and a PostgreSQL database must exist (creating databases is the operator's job)."""
    try:
        return open_store(target)
    except NotAStore:
        pass
    kind, location = parse_store_url(target)
    path = os.path.abspath(location)
    if kind == "sqlite":
        if not os.path.isdir(os.path.dirname(path)):
            raise NotAStore(f"cannot create {path}: no such directory {os.path.dirname(path)}")
    elif os.path.isdir(path) and any(not n.startswith(".") for n in os.listdir(path)):
        raise NotAStore(f"{path} is not a chunkstore store: it has no FORMAT file (see --root)")
    store = Store(target)
    _note(args, f"created a new store at {path}")
    return store


def _error(message: str) -> None:
    print(f"{PROG}: error: {message}", file=sys.stderr)


def _os_error_text(exc: OSError) -> str:
    if exc.filename is not None and exc.strerror:
        return f"{exc.filename}: {exc.strerror}"
    return str(exc)


def _silence_stdout() -> None:
    # Python flushes stdout again at exit and would report the broken pipe a second time.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # pragma: no cover - stdout is not a real file
        pass


def _note(args: argparse.Namespace, message: str) -> None:
    if not args.quiet:
        print(message, file=sys.stderr)


def _progress(args: argparse.Namespace, items: Iterable[T], **kwargs: Any) -> Iterator[T]:
    disable = args.quiet or not sys.stderr.isatty()
    bar: Iterator[T] = tqdm(items, file=sys.stderr, disable=disable, leave=False, **kwargs)
    return bar


# -- output helpers -----------------------------------------------------------------------------


class _TextSink:
    """Bytes into a text stream that has no binary buffer (stdout replaced by a StringIO)."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def write(self, data: bytes) -> None:
        self.stream.write(data.decode())

    def close(self) -> None:
        self.stream.flush()


class _StdoutSink:
    """stdout's binary buffer, flushed (never closed) at the end."""

    def __init__(self, buffer: IO[bytes]) -> None:
        self.buffer = buffer

    def write(self, data: bytes) -> None:
        self.buffer.write(data)

    def close(self) -> None:
        self.buffer.flush()


def _open_output(path: str) -> _TextSink | _StdoutSink | IO[bytes]:
    if path != "-":
        return open(path, "wb")  # the caller closes it
    sys.stdout.flush()  # keep the order of anything already written as text
    buffer = getattr(sys.stdout, "buffer", None)
    return _TextSink(sys.stdout) if buffer is None else _StdoutSink(buffer)


def _json_line(obj: Any) -> str:
    return orjson.dumps(obj, option=orjson.OPT_APPEND_NEWLINE).decode()


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = []
    for row in [header, *rows]:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=True)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _one_line(text: str | None) -> str:
    return " ".join((text or "").split())


def _yes_no(flag: bool) -> str:
    return "yes" if flag else "no"


def _all_conversations(
    store: Store, user: str, include_deleted: bool, limit: int | None = None
) -> list[Conversation]:
    """A user's conversations, newest first, following the cursor across pages."""
    out: list[Conversation] = []
    cursor = None
    while limit is None or len(out) < limit:
        page_size = MAX_PAGE if limit is None else min(MAX_PAGE, limit - len(out))
        page = store.list_conversations(
            user, limit=page_size, cursor=cursor, include_deleted=include_deleted
        )
        out.extend(page.items)
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    return out


# -- commands -----------------------------------------------------------------------------------


# A conversation whose conversation.json is damaged: listed, marked, its messages readable.
_DAMAGED = "DAMAGED (unreadable conversation.json: see chunkstore check)"


def _cmd_ls(store: Store, args: argparse.Namespace) -> int:
    if args.user is None:
        return _ls_users(store, args)
    conversations = _all_conversations(store, args.user, args.all, args.limit)
    rows = []
    for conv in conversations:
        count = store.message_count(conv.id)
        if args.json:
            record = dataclasses.asdict(conv)
            record["deleted"] = conv.deleted
            record["message_count"] = count
            sys.stdout.write(_json_line(record))
        else:
            rows.append(
                [
                    conv.id,
                    conv.created_at,
                    str(count),
                    _yes_no(conv.pinned),
                    _yes_no(conv.deleted),
                    _DAMAGED if conv.damaged else _one_line(conv.title),
                ]
            )
    if not args.json:
        if rows:
            print(_table(["ID", "CREATED", "MESSAGES", "PINNED", "DELETED", "TITLE"], rows))
        else:
            _note(args, f"{args.user} has no conversations" + ("" if args.all else " (see --all)"))
    return EXIT_OK


def _ls_users(store: Store, args: argparse.Namespace) -> int:
    users = store.users()
    if args.limit is not None:
        users = users[: args.limit]
    rows = []
    for user in _progress(args, users, desc="users", unit="user"):
        conversations = _all_conversations(store, user, include_deleted=True)
        deleted = sum(1 for c in conversations if c.deleted)
        live = len(conversations) - deleted
        if args.json:
            sys.stdout.write(_json_line({"id": user, "conversations": live, "deleted": deleted}))
        else:
            rows.append([user, str(live), str(deleted)])
    if not args.json:
        if rows:
            print(_table(["USER", "CONVERSATIONS", "DELETED"], rows))
        else:
            _note(args, f"no users in {store.backend.describe()}")
    return EXIT_OK


def _cmd_show(store: Store, args: argparse.Namespace) -> int:
    conv = store.get_conversation(args.conversation)
    messages = store.messages(conv.id, after_seq=args.after_seq, limit=args.limit)
    if args.json:
        sys.stdout.write(_json_line(_conversation_record(conv)))
        for message in messages:
            sys.stdout.write(_json_line(_message_record(conv.id, message)))
    else:
        print(_describe_conversation(store, conv))
        for message in messages:
            print()
            print(_describe_message(message))
    if not messages:
        after = f" after seq {args.after_seq}" if args.after_seq else ""
        _note(args, f"{conv.id} has no messages{after}")
    elif args.limit is not None and len(messages) == args.limit:
        _note(args, f"more messages may follow: --after-seq {messages[-1].seq}")
    return EXIT_OK


def _conversation_record(conv: Conversation) -> dict[str, Any]:
    """A conversation as ``show --json`` and ``export`` write it."""
    return {"type": "conversation", **dataclasses.asdict(conv)}


def _message_record(conversation_id: str, message: Message) -> dict[str, Any]:
    """A message as ``show --json`` and ``export`` write it."""
    record: dict[str, Any] = {"type": "message", "conversation_id": conversation_id}
    record.update(dataclasses.asdict(message))
    return record


def _describe_conversation(store: Store, conv: Conversation) -> str:
    head = f"conversation {conv.id}" + (f" {_DAMAGED}" if conv.damaged else "")
    fields = [
        ("title", _one_line(conv.title) or "-"),
        ("user", conv.user_id),
        ("created_at", conv.created_at),
        ("updated_at", conv.updated_at),
        ("pinned", _yes_no(conv.pinned)),
        ("deleted_at", conv.deleted_at or "-"),
        ("participants", ", ".join(conv.participants) or "-"),
        ("metadata", ", ".join(f"{k}={v}" for k, v in conv.metadata.items()) or "-"),
        ("messages", str(store.message_count(conv.id))),
    ]
    return "\n".join([head] + [f"  {k + ':':<14}{v}" for k, v in fields])


def _describe_message(message: Message) -> str:
    head = [f"#{message.seq}", message.role, message.status]
    if message.agent_id is not None:
        head.append(f"agent={message.agent_id}")
    if message.finish_reason is not None:
        head.append(f"finish={message.finish_reason}")
    if message.damaged:
        head.append("DAMAGED")
    body = message.text
    if message.tool_calls:
        names = [_tool_name(call) for call in message.tool_calls]
        body += ("\n" if body else "") + f"[tool calls: {', '.join(names)}]"
    if message.error is not None:
        body += ("\n" if body else "") + f"[error: {message.error}]"
    lines = [" ".join(head)] + ["    " + line for line in body.splitlines()]
    return "\n".join(lines)


def _tool_name(call: Any) -> str:
    function = call.get("function") if isinstance(call, dict) else None
    name = function.get("name") if isinstance(function, dict) else None
    return str(name) if name else "?"


def _cmd_rename(store: Store, args: argparse.Namespace) -> int:
    conv = store.update_conversation(args.conversation, title=args.title or None)
    _note(args, f"{conv.id} renamed to {conv.title!r}" if conv.title else f"{conv.id}: no title")
    return EXIT_OK


def _cmd_rm(store: Store, args: argparse.Namespace) -> int:
    if args.hard and not args.yes:
        raise InvalidArgument(
            "rm --hard removes conversations and their messages for good (no restore): "
            "add --yes to confirm"
        )
    # Resolve every id before deleting anything: a typo fails the command, not its tail.
    conversations = [store.get_conversation(c) for c in args.conversations]
    for conv in conversations:
        if args.hard:
            store.delete_conversation(conv.id, hard=True)
            _note(args, f"removed {conv.id} for good")
        elif conv.deleted:
            _note(args, f"{conv.id} was already deleted (chunkstore restore {conv.id} undoes it)")
        else:
            store.delete_conversation(conv.id)
            _note(args, f"deleted {conv.id} (chunkstore restore {conv.id} undoes it)")
    return EXIT_OK


def _cmd_restore(store: Store, args: argparse.Namespace) -> int:
    conversations = [store.get_conversation(c) for c in args.conversations]
    for conv in conversations:
        if conv.deleted:
            store.restore_conversation(conv.id)
            _note(args, f"restored {conv.id}")
        else:
            _note(args, f"{conv.id} was not deleted")
    return EXIT_OK


def _cmd_whoami(store: Store, args: argparse.Namespace) -> int:
    session = sys.stdin.readline().strip() if args.session == "-" else args.session
    user = store.find_user(session) if session else None
    if user is None:
        # The session id is a credential of sorts: never echoed back.
        _error(f"no user for this session id in {store.backend.describe()} (nothing created)")
        return EXIT_FAILURE
    print(user)
    return EXIT_OK


def _cmd_search(store: Store, args: argparse.Namespace) -> int:
    user = args.user
    if user is None:
        principal = sys.stdin.readline().strip() if args.principal == "-" else args.principal
        user = store.find_user(principal) if principal else None
        if user is None:
            # A session id is a credential of sorts: never echoed back.
            _error(f"no user for this session id in {store.backend.describe()} (nothing created)")
            return EXIT_FAILURE
    rows = []
    found = 0
    cursor = None
    while found < args.limit:
        page = store.search(
            user,
            args.query,
            limit=min(MAX_PAGE, args.limit - found),
            cursor=cursor,
            include_deleted=args.deleted,
        )
        for hit in page:
            conv = hit.conversation
            if args.json:
                record = {"id": conv.id, "title": conv.title, "seq": hit.seq}
                record.update(snippet=hit.snippet, deleted=conv.deleted)
                sys.stdout.write(_json_line(record))
            else:
                seq = "" if hit.seq is None else str(hit.seq)
                rows.append([conv.id, seq, _one_line(conv.title), hit.snippet])
        found += len(page)
        cursor = page.next_cursor
        if cursor is None:
            break
    if not args.json:
        if rows:
            print(_table(["ID", "SEQ", "TITLE", "SNIPPET"], rows))
        else:
            _note(
                args,
                f"no conversation of {user} matches" + ("" if args.deleted else " (see --deleted)"),
            )
    return EXIT_OK


def _cmd_check(store: Store, args: argparse.Namespace) -> int:
    problems = store.check(fix=args.fix)
    for problem in problems:
        print(problem)
    interrupted = _interrupted_messages(store, args)
    for message in interrupted:
        print(
            f"interrupted: {message.id}: its writer stopped before sealing it; "
            f"{len(message.text)} character(s) kept (info: not a problem)"
        )
    remaining = sum(1 for p in problems if not p.fixed)
    fixed = len(problems) - remaining
    if not problems:
        print("store is clean: no problems found")
    elif args.fix:
        print(f"{len(problems)} problem(s): {fixed} fixed, {remaining} remaining")
    else:
        print(f"{len(problems)} problem(s) found (run with --fix to repair what is safe)")
    if interrupted:
        print(
            f"{len(interrupted)} interrupted message(s): their writer died (a crash, a killed "
            "process); what it made durable reads back. Not corruption: the exit code ignores them"
        )
    return EXIT_FAILURE if remaining else EXIT_OK


def _interrupted_messages(store: Store, args: argparse.Namespace) -> list[Message]:
    """Every message that reads back ``interrupted``, deleted conversations included."""
    conversations = [
        conv.id
        for user in store.users()
        for conv in reversed(_all_conversations(store, user, include_deleted=True))
    ]
    found: list[Message] = []
    for conversation_id in _progress(args, conversations, desc="messages", unit="conv"):
        try:
            messages = store.messages(conversation_id, limit=None)
        except (ChunkstoreError, OSError) as exc:  # what check() reported already
            _note(args, f"{conversation_id}: messages not read: {exc}")
            continue
        found.extend(m for m in messages if m.status == "interrupted")
    return found


def _cmd_sweep(store: Store, args: argparse.Namespace) -> int:
    dry_run = not args.yes
    removed = store.sweep_retention(days=args.days, dry_run=dry_run)
    for conversation_id in removed:
        print(conversation_id)
    days = f"{args.days:g}"
    if dry_run:
        _note(
            args,
            f"dry run: {len(removed)} conversation(s) idle for {days} days would be removed "
            "(pass --yes to remove them)",
        )
    else:
        _note(args, f"removed {len(removed)} conversation(s) idle for {days} days")
    return EXIT_OK


def _cmd_export(store: Store, args: argparse.Namespace) -> int:
    if args.conversations and args.users:
        raise InvalidArgument("give conversation ids or --user, not both")
    # Every id is resolved before anything is written: a typo fails the export, not its tail.
    lines = export_lines(store, users=args.users, conversations=args.conversations or None)
    to_stdout = args.output == "-"
    out = _open_output(args.output)
    conversations = messages = 0
    try:
        bar = _progress(args, lines, desc="export", unit="line")
        for line in bar:
            out.write(orjson.dumps(line, option=orjson.OPT_APPEND_NEWLINE))
            if line["type"] == "conversation":
                conversations += 1
            elif line["type"] == "message" and not line.get("deleted"):
                messages += 1
    except BaseException:
        out.close()
        if not to_stdout:
            # A half-written export looks like a whole one: leave none behind.
            with contextlib.suppress(OSError):
                os.unlink(args.output)
        raise
    out.close()
    where = "stdout" if to_stdout else args.output
    _note(args, f"exported {conversations} conversation(s), {messages} message(s) to {where}")
    return EXIT_OK


def _cmd_import(store: Store, args: argparse.Namespace) -> int:
    foreign = args.chatgpt or args.openwebui
    if foreign and args.file is not None:
        raise InvalidArgument("give FILE or --chatgpt/--openwebui FILE, not both")
    if not foreign and args.file is None:
        raise InvalidArgument("nothing to import: give FILE ('-' for stdin)")
    user = args.user
    if args.principal is not None:
        user = store.user_for(args.principal)
    report = ImportReport()
    bar = tqdm(
        file=sys.stderr,
        disable=args.quiet or not sys.stderr.isatty(),
        leave=False,
        desc="import",
        unit="conv",
    )
    try:
        if foreign:
            if user is None:
                raise InvalidArgument("--chatgpt/--openwebui need --user or --principal")
            items = _read_foreign(args)
            import_lines(
                store,
                foreign_lines(items, report),
                user=user,
                verify=args.verify,
                report=report,
                progress=lambda _: bar.update(),
            )
        else:
            with _open_input(args.file) as stream:
                import_lines(
                    store,
                    stream,
                    user=user,
                    verify=args.verify,
                    report=report,
                    progress=lambda _: bar.update(),
                )
    finally:
        bar.close()
        _report_transfer(args, report)
    _note(args, f"import: {report.summary()}")
    return EXIT_OK


def _read_foreign(args: argparse.Namespace) -> Iterable[Any]:
    """The conversations of another app's export, through ``chunkstore._foreign``."""
    from . import _foreign  # imported when used: most commands never convert

    path = args.chatgpt or args.openwebui
    with _open_input(path) as stream:
        raw = stream.read()
    try:
        # The stdlib parser, not orjson: it reads what the apps really write (lone surrogate
        # escapes, integers past 64 bits), which the converters then repair and note.
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise InvalidArgument(f"{path} is not JSON: {exc}") from None
    reader = _foreign.read_chatgpt if args.chatgpt else _foreign.read_openwebui
    items: Iterable[Any] = reader(data)
    return items


@contextlib.contextmanager
def _open_input(path: str) -> Iterator[IO[bytes] | _BytesOf]:
    if path == "-":
        yield sys.stdin.buffer if hasattr(sys.stdin, "buffer") else _BytesOf(sys.stdin)
        return
    with open(path, "rb") as stream:
        yield stream


class _BytesOf:
    """A text stdin (replaced by a StringIO in tests) read as bytes lines."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def __iter__(self) -> Iterator[bytes]:
        return (line.encode() for line in self.stream)

    def read(self) -> bytes:
        return self.stream.read().encode()


def _report_transfer(args: argparse.Namespace, report: ImportReport) -> None:
    """What an import or copy did that a person must know: every conversation skipped (always,
    even with --quiet: never silently) and every id mapped."""
    for skipped in report.skipped:
        print(f"{PROG}: {skipped}", file=sys.stderr)
    for old, new in report.mapped.items():
        _note(args, f"{old} -> {new} (its id was taken in the destination)")


def _cmd_copy(args: argparse.Namespace) -> int:
    source = open_store(args.source)
    with contextlib.closing(source):
        if _same_store(args.source, args.destination):
            raise InvalidArgument("SRC_URL and DST_URL are the same store")
        destination = open_or_create_store(args.destination, args)
        with contextlib.closing(destination):
            bar = tqdm(
                file=sys.stderr,
                disable=args.quiet or not sys.stderr.isatty(),
                leave=False,
                desc="copy",
                unit="conv",
            )

            def progress(done: int, total: int) -> None:
                bar.total = total
                bar.n = done
                bar.refresh()

            try:
                report = copy_store(source, destination, progress=progress)
            finally:
                bar.close()
            _report_transfer(args, report)
    _note(args, f"copy: {report.summary()}")
    return EXIT_OK


def _same_store(a: str, b: str) -> bool:
    kind_a, where_a = parse_store_url(a)
    kind_b, where_b = parse_store_url(b)
    if kind_a != kind_b:
        return False
    if kind_a == "postgresql":
        return where_a == where_b
    return os.path.realpath(where_a) == os.path.realpath(where_b)
