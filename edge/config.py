"""Configuration of the edge server: one frozen :class:`EdgeConfig`, read once at start.

The contract:

* Every setting has an environment variable and a matching command-line flag. The environment
  is read first; flags override it. A flag is the variable's name in lower case with dashes, the
  ``EDGE_`` prefix dropped (``EDGE_PORT`` -> ``--port``, ``EDGE_API_KEYS`` -> ``--api-keys``,
  ``CHUNK_TOKENS`` -> ``--chunk-tokens``). ``edge --help`` lists them all with their defaults.
* An empty value means "unset": an empty environment variable is ignored, and an empty flag
  (``--upstream-base-url=``) puts the setting back to its default even if the environment set it.
* Flags are parsed as text and go through the same validators as environment values, so a bad
  value reads the same wherever it came from: the message names the variable (or flag) and
  quotes the bad value, e.g. ``EDGE_PORT must be an integer from 0 to 65535, got 'abc'``.
* Validation is strict and happens before the server starts: integers are plain decimal digits
  (no ``1e3``, no ``12abc``, no surrounding spaces), booleans are one of
  ``true/false/1/0/yes/no/on/off`` (any case), and cross-field rules are checked too
  (``CHUNK_TOKENS`` must be a multiple of ``STREAM_BUNDLE_TOKENS``). Any failure is a
  :class:`ConfigError`; ``python -m edge`` turns it into one line on stderr and exit code 2.
* ``UPSTREAM_BASE_URL`` follows the OpenAI SDK's convention: it includes the API prefix
  (``https://api.openai.com/v1``), and the edge appends the path after ``/v1`` to it. It is stored
  without a trailing slash. Unset, the edge answers from its built-in demo upstream.
* ``STORE_THREADS`` (default 32) sizes the store's own thread pool: the threads that wait on the
  disk (chunk writes are ``fsync``-bound, not CPU-bound), so it is not tied to the number of
  cores. Every store call of the edge (the writes before an upstream call, history reads) is
  one job on that pool, separate from asyncio's default executor; chunk writes and seals are
  too with ``STORE_STREAM_THREADS=0``.
* ``STORE_STREAM_THREADS`` (default 16; ``0``: none) gives the chunk writes and seals of the
  replies being stored a lane of threads of their own (``chunkstore._lane.WriteLane``), so
  the writes before an upstream call (a new conversation, the user message, the reply's
  writer) never queue behind them: under load, or with a stalled disk, those queues were most
  of the time to first event. The lane hands results back to the event loop in batches, and
  runs on four threads while the disk keeps up, up to this many when writes wait.
* ``GIL_SWITCH_INTERVAL_US`` (default 200, with persistence on): the store's threads share the
  GIL with the event loop, and a thread that wants the GIL waits up to Python's switch interval
  (5 ms by default) before the holder is asked to let go. At 200 concurrent streams that wait
  was the p99 gap between two events (+5 to +9 ms over persistence off); at 200 µs it is
  +1 to +2 ms, for slightly more GIL hand-offs. ``0`` leaves the interpreter's setting alone.
* ``DB_URL`` names the store as ``chunkstore.Store`` takes it (``chunkstore._url``): the file
  store as ``file:./users`` (relative to the working directory), ``file:/abs/path`` or
  ``file:///abs/path`` (``filejson:`` is an alias), or one SQLite database as
  ``sqlite:./chat.db``. Paths are taken literally (no percent-decoding); a bare path is not a
  URL. :attr:`EdgeConfig.store_path` gives the path as a :class:`pathlib.Path`.

:class:`EdgeConfig` can also be built directly (tests do); its constructor runs the same checks on
the typed values, so an invalid config object cannot exist.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Final, Literal
from urllib.parse import urlsplit

from chunkstore import InvalidArgument, __version__, parse_store_url, redact_url

__all__ = [
    "DEFAULT_BACKGROUND_GENERATION",
    "DEFAULT_BACKGROUND_MAX_S",
    "DEFAULT_CHUNK_TOKENS",
    "DEFAULT_CLIENT_BODY_TIMEOUT_S",
    "DEFAULT_CLIENT_HEADER_TIMEOUT_S",
    "DEFAULT_DB_URL",
    "DEFAULT_DURABILITY",
    "DEFAULT_GIL_SWITCH_INTERVAL_US",
    "DEFAULT_HISTORY_BATCH_FLUSH_MS",
    "DEFAULT_HOST",
    "DEFAULT_LOG_FORMAT",
    "DEFAULT_LOG_LEVEL",
    "DEFAULT_MAX_REQUEST_BYTES",
    "DEFAULT_PERSIST_TRANSCRIPTS",
    "DEFAULT_PORT",
    "DEFAULT_RESUME_POLL_MS",
    "DEFAULT_RETENTION_INTERVAL_S",
    "DEFAULT_STORAGE_FINAL_TIMEOUT_MS",
    "DEFAULT_STORE_STREAM_THREADS",
    "DEFAULT_STORE_THREADS",
    "DEFAULT_STREAM_BUNDLE_TOKENS",
    "DEFAULT_STREAM_FLUSH_MS",
    "DEFAULT_UPSTREAM_MAX_BODY_BYTES",
    "DEFAULT_UPSTREAM_MAX_EVENT_BYTES",
    "DEFAULT_UPSTREAM_READ_TIMEOUT_S",
    "DURABILITY_MODES",
    "LOG_FORMATS",
    "LOG_LEVELS",
    "ConfigError",
    "Durability",
    "EdgeConfig",
    "LogFormat",
    "LogLevel",
    "build_parser",
    "load_config",
]

Durability = Literal["chunk", "message", "none"]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]
LogFormat = Literal["json", "text"]

DURABILITY_MODES: Final[tuple[Durability, ...]] = ("chunk", "message", "none")
LOG_LEVELS: Final[tuple[LogLevel, ...]] = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMATS: Final[tuple[LogFormat, ...]] = ("json", "text")

DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_PORT: Final = 8080
DEFAULT_DB_URL: Final = "file:./users"
DEFAULT_PERSIST_TRANSCRIPTS: Final = False
DEFAULT_STREAM_BUNDLE_TOKENS: Final = 20
DEFAULT_STREAM_FLUSH_MS: Final = 100
DEFAULT_CHUNK_TOKENS: Final = 60
DEFAULT_HISTORY_BATCH_FLUSH_MS: Final = 1000
DEFAULT_MAX_REQUEST_BYTES: Final = 10 * 1024 * 1024
DEFAULT_DURABILITY: Final[Durability] = "chunk"
DEFAULT_STORAGE_FINAL_TIMEOUT_MS: Final = 0
DEFAULT_STORE_THREADS: Final = 32
DEFAULT_STORE_STREAM_THREADS: Final = 16
DEFAULT_GIL_SWITCH_INTERVAL_US: Final = 200
DEFAULT_RETENTION_INTERVAL_S: Final = 3600
DEFAULT_UPSTREAM_READ_TIMEOUT_S: Final = 300
DEFAULT_UPSTREAM_MAX_EVENT_BYTES: Final = 1024 * 1024
DEFAULT_UPSTREAM_MAX_BODY_BYTES: Final = 16 * 1024 * 1024
DEFAULT_CLIENT_HEADER_TIMEOUT_S: Final = 20
DEFAULT_CLIENT_BODY_TIMEOUT_S: Final = 60
DEFAULT_BACKGROUND_GENERATION: Final = False
DEFAULT_BACKGROUND_MAX_S: Final = 600
DEFAULT_RESUME_POLL_MS: Final = 50
DEFAULT_LOG_LEVEL: Final[LogLevel] = "INFO"
DEFAULT_LOG_FORMAT: Final[LogFormat] = "json"


class ConfigError(ValueError):
    """A setting is missing, malformed or inconsistent; the message says which and why."""


@dataclass(frozen=True, slots=True)
class EdgeConfig:
    """Every setting of the edge server, validated on construction.

    Build it from the environment and command line with :func:`load_config`; tests build it
    directly. Secrets (``upstream_api_key``, ``edge_api_keys``) are left out of ``repr`` so a
    logged config does not leak them.
    """

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    upstream_base_url: str | None = None
    upstream_api_key: str | None = field(default=None, repr=False)
    db_url: str = DEFAULT_DB_URL
    persist_transcripts: bool = DEFAULT_PERSIST_TRANSCRIPTS
    stream_bundle_tokens: int = DEFAULT_STREAM_BUNDLE_TOKENS
    stream_flush_ms: int = DEFAULT_STREAM_FLUSH_MS
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS
    history_batch_flush_ms: int = DEFAULT_HISTORY_BATCH_FLUSH_MS
    max_conversations_per_session: int | None = None
    max_messages_per_conversation: int | None = None
    retention_days: float | None = None
    edge_api_keys: frozenset[str] = field(default=frozenset(), repr=False)
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    durability: Durability = DEFAULT_DURABILITY
    storage_final_timeout_ms: int = DEFAULT_STORAGE_FINAL_TIMEOUT_MS
    store_threads: int = DEFAULT_STORE_THREADS
    store_stream_threads: int = DEFAULT_STORE_STREAM_THREADS
    gil_switch_interval_us: int = DEFAULT_GIL_SWITCH_INTERVAL_US
    retention_interval_s: int = DEFAULT_RETENTION_INTERVAL_S
    upstream_read_timeout_s: int = DEFAULT_UPSTREAM_READ_TIMEOUT_S
    upstream_max_event_bytes: int = DEFAULT_UPSTREAM_MAX_EVENT_BYTES
    upstream_max_body_bytes: int = DEFAULT_UPSTREAM_MAX_BODY_BYTES
    client_header_timeout_s: int = DEFAULT_CLIENT_HEADER_TIMEOUT_S
    client_body_timeout_s: int = DEFAULT_CLIENT_BODY_TIMEOUT_S
    max_idle_connections: int | None = None
    background_generation: bool = DEFAULT_BACKGROUND_GENERATION
    background_max_s: int = DEFAULT_BACKGROUND_MAX_S
    resume_poll_ms: int = DEFAULT_RESUME_POLL_MS
    log_level: LogLevel = DEFAULT_LOG_LEVEL
    log_format: LogFormat = DEFAULT_LOG_FORMAT

    def __post_init__(self) -> None:
        if isinstance(self.upstream_base_url, str):
            # Stored without the trailing slash so paths can be appended with a plain "/".
            object.__setattr__(self, "upstream_base_url", self.upstream_base_url.rstrip("/"))
        for option in _OPTIONS:
            value = getattr(self, option.name)
            try:
                option.check(value)
            except ValueError as exc:
                raise ConfigError(f"{option.name} {exc}, got {option.shown(value)}") from None
        problem = _chunking_problem(self.chunk_tokens, self.stream_bundle_tokens)
        if problem:
            raise ConfigError(problem)

    def __repr__(self) -> str:
        # The generated repr, minus the secret fields, with URL passwords (DB_URL,
        # UPSTREAM_BASE_URL) hidden: a logged config must not leak them.
        shown = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in fields(self) if f.repr)
        return redact_url(f"EdgeConfig({shown})")

    @property
    def store_path(self) -> Path:
        """The path ``DB_URL`` points at: the file store's directory, or the SQLite database
        file (relative paths are relative to the working dir)."""
        return _store_location(self.db_url)

    @property
    def store_kind(self) -> str:
        """The backend ``DB_URL`` names: ``file``, ``sqlite`` or ``postgresql``."""
        return parse_store_url(self.db_url)[0]

    @property
    def store_location(self) -> str:
        """Where the store is, for people: the absolute path of a file store or a SQLite
        database, or a server's URL with its password hidden."""
        if self.store_kind in ("file", "sqlite"):
            return str(self.store_path.resolve())
        return redact_url(self.db_url)

    @property
    def uses_demo_upstream(self) -> bool:
        """True when no ``UPSTREAM_BASE_URL`` is set and the built-in demo upstream answers."""
        return self.upstream_base_url is None


# --- validators ---------------------------------------------------------------------------------
#
# Each setting has a *parser* (text -> typed value) and a *check* (typed value -> None). Both raise
# ValueError with the requirement ("must be ..."); the caller prefixes the name of the variable,
# flag or field and appends the bad value, so every message has the same shape wherever the value
# came from. Parsers end by calling their check, so the rules live in one place.

_Parse = Callable[[str], object]
_Check = Callable[[Any], None]

_DECIMAL_INT = re.compile(r"-?[0-9]+")
_DECIMAL_NUMBER = re.compile(r"-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)")
_BOOLEANS: Final[Mapping[str, bool]] = {
    "true": True,
    "1": True,
    "yes": True,
    "on": True,
    "false": False,
    "0": False,
    "no": False,
    "off": False,
}
_URL_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")
_WHITESPACE = re.compile(r"\s")


def _integer(
    minimum: int, maximum: int | None = None, *, optional: bool = False
) -> tuple[_Parse, _Check]:
    if maximum is None:
        requirement = f"must be an integer >= {minimum}"
    else:
        requirement = f"must be an integer from {minimum} to {maximum}"
    if optional:
        requirement += " (or empty for no limit)"

    def check(value: object) -> None:
        if optional and value is None:
            return
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(requirement)
        if value < minimum or (maximum is not None and value > maximum):
            raise ValueError(requirement)

    def parse(raw: str) -> int:
        if not _DECIMAL_INT.fullmatch(raw):
            raise ValueError(requirement)
        value = int(raw)
        check(value)
        return value

    return parse, check


def _positive_number(*, optional: bool) -> tuple[_Parse, _Check]:
    requirement = "must be a positive number"
    if optional:
        requirement += " (or empty to keep everything)"

    def check(value: object) -> None:
        if optional and value is None:
            return
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(requirement)
        if not math.isfinite(value) or value <= 0:
            raise ValueError(requirement)

    def parse(raw: str) -> float:
        if not _DECIMAL_NUMBER.fullmatch(raw):
            raise ValueError(requirement)
        value = float(raw)
        check(value)
        return value

    return parse, check


def _boolean() -> tuple[_Parse, _Check]:
    requirement = "must be one of true/false/1/0/yes/no/on/off"

    def check(value: object) -> None:
        if not isinstance(value, bool):
            raise ValueError(requirement)

    def parse(raw: str) -> bool:
        try:
            return _BOOLEANS[raw.lower()]
        except KeyError:
            raise ValueError(requirement) from None

    return parse, check


def _choice(choices: Sequence[str], *, upper: bool) -> tuple[_Parse, _Check]:
    requirement = "must be one of " + ", ".join(choices)

    def check(value: object) -> None:
        if value not in choices:
            raise ValueError(requirement)

    def parse(raw: str) -> str:
        value = raw.upper() if upper else raw.lower()
        check(value)
        return value

    return parse, check


def _token(what: str, *, optional: bool) -> tuple[_Parse, _Check]:
    """A single word: a host name or a secret. Whitespace would break the socket or the header."""
    requirement = f"must be a {what} without whitespace"

    def check(value: object) -> None:
        if optional and value is None:
            return
        if not isinstance(value, str) or not value or _WHITESPACE.search(value):
            raise ValueError(requirement)

    def parse(raw: str) -> str:
        check(raw)
        return raw

    return parse, check


def _upstream_url() -> tuple[_Parse, _Check]:
    requirement = "must be an absolute http:// or https:// URL such as 'https://api.openai.com/v1'"

    def check(value: object) -> None:
        if value is None:
            return
        if not isinstance(value, str) or _WHITESPACE.search(value):
            raise ValueError(requirement)
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 -- raises ValueError on a malformed port
        except ValueError:
            raise ValueError(requirement) from None
        if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
            raise ValueError(requirement)
        if parts.query or parts.fragment:
            raise ValueError(requirement + " (no query string or fragment)")

    def parse(raw: str) -> str:
        value = raw.rstrip("/")
        check(value)
        return value

    return parse, check


def _store_location(url: str) -> Path:
    """The path a ``DB_URL`` names; raises ValueError("must ...") for anything else."""
    if not _URL_SCHEME.match(url):
        raise ValueError("must be a URL such as 'file:./users' or 'sqlite:./chat.db'")
    try:
        _kind, location = parse_store_url(url)
    except InvalidArgument as exc:
        raise ValueError(
            f"must be a store URL such as 'file:./users' or 'sqlite:./chat.db' ({exc})"
        ) from None
    return Path(location)


def _db_url() -> tuple[_Parse, _Check]:
    def check(value: object) -> None:
        if not isinstance(value, str):
            raise ValueError("must be a URL such as 'file:./users' or 'sqlite:./chat.db'")
        _store_location(value)

    def parse(raw: str) -> str:
        check(raw)
        return raw

    return parse, check


def _key_list() -> tuple[_Parse, _Check]:
    requirement = "must be a comma-separated list of keys without whitespace inside a key"

    def check(value: object) -> None:
        if not isinstance(value, frozenset):
            raise ValueError(requirement)
        for key in value:
            if not isinstance(key, str) or not key or _WHITESPACE.search(key):
                raise ValueError(requirement)

    def parse(raw: str) -> frozenset[str]:
        keys = frozenset(key.strip() for key in raw.split(",") if key.strip())
        if not keys:
            # A value made only of commas and spaces is almost certainly a templating mistake;
            # reading it as "no keys" would silently switch client authentication off.
            raise ValueError("must list at least one key (leave it empty to disable auth)")
        check(keys)
        return keys

    return parse, check


def _chunking_problem(chunk_tokens: int, stream_bundle_tokens: int) -> str | None:
    # A chunk file must hold whole bundles: the relay hands complete bundles to the writer, and a
    # chunk boundary inside a bundle would split one client event across two files.
    if chunk_tokens % stream_bundle_tokens:
        return (
            f"CHUNK_TOKENS ({chunk_tokens}) must be a multiple of "
            f"STREAM_BUNDLE_TOKENS ({stream_bundle_tokens})"
        )
    return None


# --- the table of settings ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Option:
    name: str  # the EdgeConfig field
    env: str
    help: str
    metavar: str
    rule: tuple[_Parse, _Check]
    default_text: str | None = None  # how --help shows the default, when str(default) won't do
    switch: bool = False  # a boolean: --flag / --no-flag instead of --flag VALUE
    secret: bool = False  # never quoted back in a message

    def shown(self, value: object) -> str:
        """``value`` as an error message may quote it: secrets hidden, URL passwords too."""
        if self.secret:
            return "a value that is not shown (it is a secret)"
        return redact_url(repr(value))

    @property
    def flag(self) -> str:
        return "--" + self.env.removeprefix("EDGE_").lower().replace("_", "-")

    @property
    def parse(self) -> _Parse:
        return self.rule[0]

    @property
    def check(self) -> _Check:
        return self.rule[1]


_OPTIONS: Final[tuple[_Option, ...]] = (
    _Option("host", "EDGE_HOST", "interface to bind", "HOST", _token("host name", optional=False)),
    _Option(
        "port", "EDGE_PORT", "TCP port to bind (0 picks a free one)", "PORT", _integer(0, 65535)
    ),
    _Option(
        "upstream_base_url",
        "UPSTREAM_BASE_URL",
        "OpenAI-compatible API to relay to, including its /v1 prefix",
        "URL",
        _upstream_url(),
        "unset, so the built-in demo upstream answers",
    ),
    _Option(
        "upstream_api_key",
        "UPSTREAM_API_KEY",
        "key sent upstream instead of the client's Authorization header "
        "(prefer the variable: command lines are visible to other users)",
        "KEY",
        _token("key", optional=True),
        "unset, so the client's header passes through",
        secret=True,
    ),
    _Option(
        "db_url",
        "DB_URL",
        "where conversations are stored: file:DIR (the file store) or sqlite:FILE",
        "URL",
        _db_url(),
    ),
    _Option(
        "persist_transcripts",
        "PERSIST_TRANSCRIPTS",
        "store conversations and serve the history API (off: a pure proxy)",
        "BOOL",
        _boolean(),
        switch=True,
    ),
    _Option(
        "stream_bundle_tokens",
        "STREAM_BUNDLE_TOKENS",
        "content deltas relayed to the client per event",
        "N",
        _integer(1),
    ),
    _Option(
        "stream_flush_ms",
        "STREAM_FLUSH_MS",
        "relay a partial bundle after this many milliseconds",
        "MS",
        _integer(1),
    ),
    _Option(
        "chunk_tokens",
        "CHUNK_TOKENS",
        "content deltas per stored chunk file (a multiple of STREAM_BUNDLE_TOKENS)",
        "N",
        _integer(1),
    ),
    _Option(
        "history_batch_flush_ms",
        "HISTORY_BATCH_FLUSH_MS",
        "write a partial chunk after this many milliseconds",
        "MS",
        _integer(1),
    ),
    _Option(
        "max_conversations_per_session",
        "MAX_CONVERSATIONS_PER_SESSION",
        "conversations one session may create",
        "N",
        _integer(1, optional=True),
        "no limit",
    ),
    _Option(
        "max_messages_per_conversation",
        "MAX_MESSAGES_PER_CONVERSATION",
        "messages one conversation may hold",
        "N",
        _integer(1, optional=True),
        "no limit",
    ),
    _Option(
        "retention_days",
        "RETENTION_DAYS",
        "days after which the retention sweep removes an unpinned conversation (fractions ok)",
        "DAYS",
        _positive_number(optional=True),
        "keep everything",
    ),
    _Option(
        "edge_api_keys",
        "EDGE_API_KEYS",
        "comma-separated bearer keys clients must present",
        "KEYS",
        _key_list(),
        "none, so clients need no key",
        secret=True,
    ),
    _Option(
        "max_request_bytes",
        "MAX_REQUEST_BYTES",
        "largest request body accepted (larger: 413)",
        "BYTES",
        _integer(1),
        f"{DEFAULT_MAX_REQUEST_BYTES} (10 MiB)",
    ),
    _Option(
        "durability",
        "STORE_DURABILITY",
        "when stored data is fsynced: after every chunk, once per message, or never",
        "{" + ",".join(DURABILITY_MODES) + "}",
        _choice(DURABILITY_MODES, upper=False),
    ),
    _Option(
        "storage_final_timeout_ms",
        "STORAGE_FINAL_TIMEOUT_MS",
        "how long [DONE] may wait for the reply to be sealed (0: never; storage_failed then "
        "reports the failures known when the stream ends)",
        "MS",
        _integer(0),
    ),
    _Option(
        "store_threads",
        "STORE_THREADS",
        "threads that wait on the disk for the store (chunk writes, reads); "
        "not tied to the number of cores",
        "N",
        _integer(1),
    ),
    _Option(
        "store_stream_threads",
        "STORE_STREAM_THREADS",
        "threads of the lane the replies' chunk writes and seals run on, apart from the "
        "store's other calls (0: on the store's pool with everything else)",
        "N",
        _integer(0),
    ),
    _Option(
        "gil_switch_interval_us",
        "GIL_SWITCH_INTERVAL_US",
        "with persistence on: how long the event loop may wait for the GIL held by a store "
        "thread (sys.setswitchinterval; 0 keeps Python's 5000)",
        "US",
        _integer(0, 1_000_000),
    ),
    _Option(
        "retention_interval_s",
        "RETENTION_INTERVAL_S",
        "seconds between two retention sweeps",
        "SECONDS",
        _integer(1),
    ),
    _Option(
        "upstream_read_timeout_s",
        "UPSTREAM_READ_TIMEOUT_S",
        "end a stream (or a non-streamed request) whose upstream sends nothing for this many "
        "seconds; only that request is affected",
        "SECONDS",
        _integer(1),
    ),
    _Option(
        "upstream_max_event_bytes",
        "UPSTREAM_MAX_EVENT_BYTES",
        "largest server-sent event (all its lines) accepted from the upstream; "
        "a larger one ends that stream with an error",
        "BYTES",
        _integer(1),
        f"{DEFAULT_UPSTREAM_MAX_EVENT_BYTES} (1 MiB)",
    ),
    _Option(
        "upstream_max_body_bytes",
        "UPSTREAM_MAX_BODY_BYTES",
        "largest non-streamed chat completion body accepted from the upstream (larger: 502)",
        "BYTES",
        _integer(1),
        f"{DEFAULT_UPSTREAM_MAX_BODY_BYTES} (16 MiB)",
    ),
    _Option(
        "client_header_timeout_s",
        "CLIENT_HEADER_TIMEOUT_S",
        "close a client connection that has not sent a complete request head within this many "
        "seconds (idle keep-alive connections included)",
        "SECONDS",
        _integer(1),
    ),
    _Option(
        "client_body_timeout_s",
        "CLIENT_BODY_TIMEOUT_S",
        "answer 408 to a client that has not sent its whole request body within this many seconds",
        "SECONDS",
        _integer(1),
    ),
    _Option(
        "max_idle_connections",
        "MAX_IDLE_CONNECTIONS",
        "client connections that may wait for a request head at once; past it the oldest is "
        "closed, so a new client is always served",
        "N",
        _integer(1, optional=True),
        "half the process's open-file limit",
    ),
    _Option(
        "background_generation",
        "BACKGROUND_GENERATION",
        "let a request ask (X-Background-Generation: true) that its reply be finished and "
        "stored even if the client disconnects",
        "BOOL",
        _boolean(),
        switch=True,
    ),
    _Option(
        "background_max_s",
        "BACKGROUND_MAX_S",
        "how long a reply may go on after its client disconnected (then it is cut and "
        "stored as an error)",
        "SECONDS",
        _integer(1),
    ),
    _Option(
        "resume_poll_ms",
        "RESUME_POLL_MS",
        "how often a resumed stream of a reply another instance produces reads the store",
        "MS",
        _integer(1, 60_000),
    ),
    _Option(
        "log_level",
        "EDGE_LOG_LEVEL",
        "logging threshold",
        "{" + ",".join(LOG_LEVELS) + "}",
        _choice(LOG_LEVELS, upper=True),
    ),
    _Option(
        "log_format",
        "EDGE_LOG_FORMAT",
        "log lines (access log, store events, messages): one JSON object each, or plain text",
        "{" + ",".join(LOG_FORMATS) + "}",
        _choice(LOG_FORMATS, upper=False),
    ),
)


def _default_text(option: _Option) -> str:
    if option.default_text is not None:
        return option.default_text
    default = next(f.default for f in fields(EdgeConfig) if f.name == option.name)
    if isinstance(default, bool):
        return "true" if default else "false"
    return str(default)


def build_parser() -> argparse.ArgumentParser:
    """The command line: one flag per setting; every flag defaults to "not given" (None)."""
    parser = argparse.ArgumentParser(
        prog="edge",
        description=(
            "An OpenAI-compatible proxy that persists conversations while they stream. "
            "Every option can also be set through the environment variable shown with it; "
            "a flag overrides the variable, and an empty value means the default."
        ),
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    for option in _OPTIONS:
        # argparse %-formats help strings, hence the escaping.
        text = f"{option.help} [env {option.env}; default: {_default_text(option)}]"
        text = text.replace("%", "%%")
        if option.switch:
            parser.add_argument(
                option.flag,
                dest=option.name,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=text,
            )
        else:
            parser.add_argument(
                option.flag, dest=option.name, metavar=option.metavar, default=None, help=text
            )
    return parser


def load_config(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> EdgeConfig:
    """Read the environment, then the flags in ``argv``, and return the validated config.

    ``argv`` defaults to ``sys.argv[1:]`` and ``environ`` to ``os.environ``. Raises
    :class:`ConfigError` for a bad value; argparse itself exits with code 2 on a usage error
    (unknown flag, missing flag argument).
    """
    if environ is None:
        environ = os.environ
    args = build_parser().parse_args(sys.argv[1:] if argv is None else list(argv))

    values: dict[str, Any] = {}
    for option in _OPTIONS:
        raw = environ.get(option.env, "")
        if raw != "":
            values[option.name] = _parse(option, option.env, raw)
        given: str | bool | None = getattr(args, option.name)
        if isinstance(given, bool):
            values[option.name] = given
        elif given == "":
            values.pop(option.name, None)
        elif given is not None:
            values[option.name] = _parse(option, option.flag, given)

    # Checked here rather than left to EdgeConfig so the message names the variables, not fields.
    problem = _chunking_problem(
        values.get("chunk_tokens", DEFAULT_CHUNK_TOKENS),
        values.get("stream_bundle_tokens", DEFAULT_STREAM_BUNDLE_TOKENS),
    )
    if problem:
        raise ConfigError(problem)
    return EdgeConfig(**values)


def _parse(option: _Option, name: str, raw: str) -> object:
    try:
        return option.parse(raw)
    except ValueError as exc:
        raise ConfigError(f"{name} {exc}, got {option.shown(raw)}") from None
