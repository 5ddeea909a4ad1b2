"""Tests for edge.config (environment, flags, validation) and the ``python -m edge`` entry point."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import types
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

import chunkstore
import edge.__main__ as edge_main
from edge.config import (
    DEFAULT_CHUNK_TOKENS,
    DEFAULT_DB_URL,
    DEFAULT_DURABILITY,
    DEFAULT_GIL_SWITCH_INTERVAL_US,
    DEFAULT_HISTORY_BATCH_FLUSH_MS,
    DEFAULT_HOST,
    DEFAULT_LOG_FORMAT,
    DEFAULT_LOG_LEVEL,
    DEFAULT_MAX_REQUEST_BYTES,
    DEFAULT_PERSIST_TRANSCRIPTS,
    DEFAULT_PORT,
    DEFAULT_RETENTION_INTERVAL_S,
    DEFAULT_STORAGE_FINAL_TIMEOUT_MS,
    DEFAULT_STORE_STREAM_THREADS,
    DEFAULT_STORE_THREADS,
    DEFAULT_STREAM_BUNDLE_TOKENS,
    DEFAULT_STREAM_FLUSH_MS,
    ConfigError,
    EdgeConfig,
    build_parser,
    load_config,
)

REPO_ROOT = Path(__file__).resolve().parents[2]

ENV_VARS = (
    "EDGE_HOST",
    "EDGE_PORT",
    "UPSTREAM_BASE_URL",
    "UPSTREAM_API_KEY",
    "DB_URL",
    "PERSIST_TRANSCRIPTS",
    "STREAM_BUNDLE_TOKENS",
    "STREAM_FLUSH_MS",
    "CHUNK_TOKENS",
    "HISTORY_BATCH_FLUSH_MS",
    "MAX_CONVERSATIONS_PER_SESSION",
    "MAX_MESSAGES_PER_CONVERSATION",
    "RETENTION_DAYS",
    "EDGE_API_KEYS",
    "MAX_REQUEST_BYTES",
    "STORE_DURABILITY",
    "STORAGE_FINAL_TIMEOUT_MS",
    "STORE_THREADS",
    "STORE_STREAM_THREADS",
    "GIL_SWITCH_INTERVAL_US",
    "RETENTION_INTERVAL_S",
    "EDGE_LOG_LEVEL",
    "EDGE_LOG_FORMAT",
    "UPSTREAM_READ_TIMEOUT_S",
    "UPSTREAM_MAX_EVENT_BYTES",
    "UPSTREAM_MAX_BODY_BYTES",
    "CLIENT_HEADER_TIMEOUT_S",
    "CLIENT_BODY_TIMEOUT_S",
    "MAX_IDLE_CONNECTIONS",
    "BACKGROUND_GENERATION",
    "BACKGROUND_MAX_S",
    "RESUME_POLL_MS",
)


def test_every_setting_is_listed_here() -> None:
    """A setting added to edge/config.py without being added above would escape the tests of
    its help text and of "empty means default"."""
    from edge.config import build_parser

    documented = {
        text.split("env ")[1].split(";")[0]
        for text in (action.help or "" for action in build_parser()._actions)
        if "env " in text
    }
    assert documented == set(ENV_VARS)


def config_error(environ: dict[str, str], argv: Sequence[str] = ()) -> str:
    """The message of the ConfigError that loading this environment and argv raises."""
    with pytest.raises(ConfigError) as info:
        load_config(argv, environ)
    return str(info.value)


# --- defaults -----------------------------------------------------------------------------------


def test_defaults() -> None:
    config = load_config([], {})
    assert config == EdgeConfig()
    assert config.host == DEFAULT_HOST == "127.0.0.1"
    assert config.port == DEFAULT_PORT == 8080
    assert config.upstream_base_url is None
    assert config.uses_demo_upstream
    assert config.upstream_api_key is None
    assert config.db_url == DEFAULT_DB_URL == "file:./users"
    assert config.persist_transcripts is DEFAULT_PERSIST_TRANSCRIPTS is False
    assert config.stream_bundle_tokens == DEFAULT_STREAM_BUNDLE_TOKENS == 20
    assert config.stream_flush_ms == DEFAULT_STREAM_FLUSH_MS == 100
    assert config.chunk_tokens == DEFAULT_CHUNK_TOKENS == 60
    assert config.history_batch_flush_ms == DEFAULT_HISTORY_BATCH_FLUSH_MS == 1000
    assert config.max_conversations_per_session is None
    assert config.max_messages_per_conversation is None
    assert config.retention_days is None
    assert config.edge_api_keys == frozenset()
    assert config.max_request_bytes == DEFAULT_MAX_REQUEST_BYTES == 10 * 1024 * 1024
    assert config.durability == DEFAULT_DURABILITY == "chunk"
    assert config.storage_final_timeout_ms == DEFAULT_STORAGE_FINAL_TIMEOUT_MS == 0
    assert config.store_threads == DEFAULT_STORE_THREADS == 32
    assert config.store_stream_threads == DEFAULT_STORE_STREAM_THREADS == 16
    assert config.gil_switch_interval_us == DEFAULT_GIL_SWITCH_INTERVAL_US == 200
    assert config.retention_interval_s == DEFAULT_RETENTION_INTERVAL_S == 3600
    assert config.log_level == DEFAULT_LOG_LEVEL == "INFO"
    assert config.log_format == DEFAULT_LOG_FORMAT == "json"


def test_reads_os_environ_and_sys_argv_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("EDGE_PORT", "9001")
    monkeypatch.setattr(sys, "argv", ["edge", "--host", "0.0.0.0"])
    config = load_config()
    assert (config.host, config.port) == ("0.0.0.0", 9001)


def test_config_is_frozen_and_slotted() -> None:
    config = EdgeConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.port = 1  # type: ignore[misc]
    assert not hasattr(config, "__dict__")


def test_repr_hides_secrets() -> None:
    config = EdgeConfig(upstream_api_key="sk-secret", edge_api_keys=frozenset({"client-secret"}))
    assert "sk-secret" not in repr(config)
    assert "client-secret" not in repr(config)


# --- every variable -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "raw", "field", "expected"),
    [
        ("EDGE_HOST", "0.0.0.0", "host", "0.0.0.0"),
        ("EDGE_HOST", "::1", "host", "::1"),
        ("EDGE_PORT", "0", "port", 0),
        ("EDGE_PORT", "65535", "port", 65535),
        ("UPSTREAM_BASE_URL", "https://api.openai.com/v1", "upstream_base_url",
         "https://api.openai.com/v1"),
        ("UPSTREAM_BASE_URL", "http://127.0.0.1:9000/v1/", "upstream_base_url",
         "http://127.0.0.1:9000/v1"),
        ("UPSTREAM_BASE_URL", "HTTPS://example.com", "upstream_base_url", "HTTPS://example.com"),
        ("UPSTREAM_API_KEY", "sk-abc", "upstream_api_key", "sk-abc"),
        ("DB_URL", "file:/var/lib/edge", "db_url", "file:/var/lib/edge"),
        ("PERSIST_TRANSCRIPTS", "true", "persist_transcripts", True),
        ("STREAM_BUNDLE_TOKENS", "5", "stream_bundle_tokens", 5),
        ("STREAM_FLUSH_MS", "250", "stream_flush_ms", 250),
        ("CHUNK_TOKENS", "120", "chunk_tokens", 120),
        ("HISTORY_BATCH_FLUSH_MS", "2000", "history_batch_flush_ms", 2000),
        ("MAX_CONVERSATIONS_PER_SESSION", "50", "max_conversations_per_session", 50),
        ("MAX_MESSAGES_PER_CONVERSATION", "1", "max_messages_per_conversation", 1),
        ("RETENTION_DAYS", "30", "retention_days", 30.0),
        ("RETENTION_DAYS", "0.5", "retention_days", 0.5),
        ("EDGE_API_KEYS", "k1", "edge_api_keys", frozenset({"k1"})),
        ("EDGE_API_KEYS", " k1 , k2,,k3, ", "edge_api_keys", frozenset({"k1", "k2", "k3"})),
        ("MAX_REQUEST_BYTES", "1024", "max_request_bytes", 1024),
        ("STORE_DURABILITY", "message", "durability", "message"),
        ("STORE_DURABILITY", "NONE", "durability", "none"),
        ("STORAGE_FINAL_TIMEOUT_MS", "100", "storage_final_timeout_ms", 100),
        ("STORE_THREADS", "1", "store_threads", 1),
        ("STORE_THREADS", "128", "store_threads", 128),
        ("STORE_STREAM_THREADS", "0", "store_stream_threads", 0),
        ("STORE_STREAM_THREADS", "4", "store_stream_threads", 4),
        ("GIL_SWITCH_INTERVAL_US", "0", "gil_switch_interval_us", 0),
        ("GIL_SWITCH_INTERVAL_US", "1000", "gil_switch_interval_us", 1000),
        ("RETENTION_INTERVAL_S", "60", "retention_interval_s", 60),
        ("EDGE_LOG_LEVEL", "debug", "log_level", "DEBUG"),
        ("EDGE_LOG_LEVEL", "Warning", "log_level", "WARNING"),
        ("EDGE_LOG_FORMAT", "text", "log_format", "text"),
        ("EDGE_LOG_FORMAT", "JSON", "log_format", "json"),
    ],
)  # fmt: skip
def test_each_variable_is_parsed(env: str, raw: str, field: str, expected: object) -> None:
    config = load_config([], {env: raw})
    assert getattr(config, field) == expected
    # Every other setting keeps its default.
    for other in dataclasses.fields(EdgeConfig):
        if other.name != field:
            assert getattr(config, other.name) == other.default


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("true", True), ("TRUE", True), ("1", True), ("yes", True), ("Yes", True), ("on", True),
        ("false", False), ("False", False), ("0", False), ("no", False), ("OFF", False),
    ],
)  # fmt: skip
def test_boolean_spellings(raw: str, expected: bool) -> None:
    assert load_config([], {"PERSIST_TRANSCRIPTS": raw}).persist_transcripts is expected


def test_empty_env_values_count_as_unset() -> None:
    assert load_config([], dict.fromkeys(ENV_VARS, "")) == EdgeConfig()


def test_unrelated_env_is_ignored() -> None:
    assert load_config([], {"PATH": "/bin", "PORT": "abc", "HOST": " "}) == EdgeConfig()


# --- flags --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "field", "expected"),
    [
        (["--host", "0.0.0.0"], "host", "0.0.0.0"),
        (["--port", "9000"], "port", 9000),
        (["--port=9000"], "port", 9000),
        (["--upstream-base-url", "http://up.example/v1/"], "upstream_base_url",
         "http://up.example/v1"),
        (["--upstream-api-key", "sk-x"], "upstream_api_key", "sk-x"),
        (["--db-url", "file:///srv/edge"], "db_url", "file:///srv/edge"),
        (["--persist-transcripts"], "persist_transcripts", True),
        (["--no-persist-transcripts"], "persist_transcripts", False),
        (["--stream-bundle-tokens", "10"], "stream_bundle_tokens", 10),
        (["--stream-flush-ms", "5"], "stream_flush_ms", 5),
        (["--chunk-tokens", "20"], "chunk_tokens", 20),
        (["--history-batch-flush-ms", "10"], "history_batch_flush_ms", 10),
        (["--max-conversations-per-session", "3"], "max_conversations_per_session", 3),
        (["--max-messages-per-conversation", "4"], "max_messages_per_conversation", 4),
        (["--retention-days", "7"], "retention_days", 7.0),
        (["--api-keys", "a,b"], "edge_api_keys", frozenset({"a", "b"})),
        (["--max-request-bytes", "2048"], "max_request_bytes", 2048),
        (["--store-durability", "none"], "durability", "none"),
        (["--storage-final-timeout-ms", "1"], "storage_final_timeout_ms", 1),
        (["--store-threads", "8"], "store_threads", 8),
        (["--retention-interval-s", "1"], "retention_interval_s", 1),
        (["--log-level", "error"], "log_level", "ERROR"),
        (["--log-format", "text"], "log_format", "text"),
    ],
)  # fmt: skip
def test_each_flag_is_parsed(argv: list[str], field: str, expected: object) -> None:
    assert getattr(load_config(argv, {}), field) == expected


def test_flags_override_env() -> None:
    environ = {
        "EDGE_HOST": "10.0.0.1",
        "EDGE_PORT": "1111",
        "PERSIST_TRANSCRIPTS": "true",
        "UPSTREAM_BASE_URL": "http://env.example/v1",
        "STORE_DURABILITY": "message",
    }
    config = load_config(["--port", "2222", "--no-persist-transcripts"], environ)
    assert config.port == 2222
    assert config.persist_transcripts is False
    # What no flag overrides still comes from the environment.
    assert config.host == "10.0.0.1"
    assert config.upstream_base_url == "http://env.example/v1"
    assert config.durability == "message"


def test_empty_flag_resets_to_default() -> None:
    environ = {"UPSTREAM_BASE_URL": "http://env.example/v1", "EDGE_PORT": "1111"}
    config = load_config(["--upstream-base-url=", "--port="], environ)
    assert config.upstream_base_url is None
    assert config.port == DEFAULT_PORT


def test_chunk_multiple_uses_the_combined_values() -> None:
    # The env sets a bundle size the default chunk size is not a multiple of; the flag fixes it.
    config = load_config(["--chunk-tokens", "75"], {"STREAM_BUNDLE_TOKENS": "25"})
    assert (config.stream_bundle_tokens, config.chunk_tokens) == (25, 75)


def test_help_documents_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        load_config(["--help"], {})
    assert info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # undo argparse's line wrapping
    for env in ENV_VARS:
        assert f"env {env};" in text
    for flag in (
        "--host",
        "--port",
        "--api-keys",
        "--log-level",
        "--log-format",
        "--version",
        "--store-durability",
        "--persist-transcripts",
        "--no-persist-transcripts",
        "--retention-interval-s",
    ):
        assert flag in text
    assert "default: 8080" in text
    assert "default: file:./users" in text
    assert "10 MiB" in text


def test_parser_has_one_flag_per_field() -> None:
    dests = {
        action.dest for action in build_parser()._actions if action.dest not in ("help", "version")
    }
    assert dests == {field.name for field in dataclasses.fields(EdgeConfig)}


@pytest.mark.parametrize("argv", [["--nope"], ["--port"], ["--persist-transcripts=yes"]])
def test_argparse_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        load_config(argv, {})
    assert info.value.code == 2
    assert "usage: edge" in capsys.readouterr().err


# --- validation errors --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "raw", "message"),
    [
        ("EDGE_PORT", "abc", "EDGE_PORT must be an integer from 0 to 65535, got 'abc'"),
        ("EDGE_PORT", "65536", "EDGE_PORT must be an integer from 0 to 65535, got '65536'"),
        ("EDGE_PORT", "-1", "EDGE_PORT must be an integer from 0 to 65535, got '-1'"),
        ("EDGE_PORT", "1e3", "EDGE_PORT must be an integer from 0 to 65535, got '1e3'"),
        ("EDGE_PORT", "80.0", "EDGE_PORT must be an integer from 0 to 65535, got '80.0'"),
        ("EDGE_PORT", " 8080", "EDGE_PORT must be an integer from 0 to 65535, got ' 8080'"),
        ("EDGE_PORT", "+8080", "EDGE_PORT must be an integer from 0 to 65535, got '+8080'"),
        ("EDGE_PORT", "8_080", "EDGE_PORT must be an integer from 0 to 65535, got '8_080'"),
        ("EDGE_PORT", "\uff18\uff10", "EDGE_PORT must be an integer from 0 to 65535"),
        ("STREAM_BUNDLE_TOKENS", "12abc",
         "STREAM_BUNDLE_TOKENS must be an integer >= 1, got '12abc'"),
        ("STREAM_BUNDLE_TOKENS", "0", "STREAM_BUNDLE_TOKENS must be an integer >= 1, got '0'"),
        ("STREAM_FLUSH_MS", " ", "STREAM_FLUSH_MS must be an integer >= 1, got ' '"),
        ("CHUNK_TOKENS", "-60", "CHUNK_TOKENS must be an integer >= 1, got '-60'"),
        ("HISTORY_BATCH_FLUSH_MS", "0", "HISTORY_BATCH_FLUSH_MS must be an integer >= 1"),
        ("MAX_CONVERSATIONS_PER_SESSION", "0",
         "MAX_CONVERSATIONS_PER_SESSION must be an integer >= 1 (or empty for no limit), got '0'"),
        ("MAX_MESSAGES_PER_CONVERSATION", "many",
         "MAX_MESSAGES_PER_CONVERSATION must be an integer >= 1"),
        ("MAX_REQUEST_BYTES", "10MiB", "MAX_REQUEST_BYTES must be an integer >= 1, got '10MiB'"),
        ("STORAGE_FINAL_TIMEOUT_MS", "-1", "STORAGE_FINAL_TIMEOUT_MS must be an integer >= 0"),
        ("STORE_THREADS", "0", "STORE_THREADS must be an integer >= 1, got '0'"),
        (
            "GIL_SWITCH_INTERVAL_US",
            "-1",
            "GIL_SWITCH_INTERVAL_US must be an integer from 0 to 1000000, got '-1'",
        ),
        ("STORE_THREADS", "many", "STORE_THREADS must be an integer >= 1, got 'many'"),
        ("STORE_STREAM_THREADS", "-1", "STORE_STREAM_THREADS must be an integer >= 0, got '-1'"),
        ("RETENTION_INTERVAL_S", "1h", "RETENTION_INTERVAL_S must be an integer >= 1, got '1h'"),
        ("RETENTION_DAYS", "0", "RETENTION_DAYS must be a positive number"),
        ("RETENTION_DAYS", "-1", "RETENTION_DAYS must be a positive number"),
        ("RETENTION_DAYS", "nan", "RETENTION_DAYS must be a positive number"),
        ("RETENTION_DAYS", "inf", "RETENTION_DAYS must be a positive number"),
        ("RETENTION_DAYS", "1e3", "RETENTION_DAYS must be a positive number"),
        ("PERSIST_TRANSCRIPTS", "maybe",
         "PERSIST_TRANSCRIPTS must be one of true/false/1/0/yes/no/on/off, got 'maybe'"),
        ("PERSIST_TRANSCRIPTS", " true", "PERSIST_TRANSCRIPTS must be one of"),
        ("STORE_DURABILITY", "fsync",
         "STORE_DURABILITY must be one of chunk, message, none, got 'fsync'"),
        ("EDGE_LOG_LEVEL", "TRACE",
         "EDGE_LOG_LEVEL must be one of DEBUG, INFO, WARNING, ERROR, got 'TRACE'"),
        ("EDGE_LOG_FORMAT", "logfmt", "EDGE_LOG_FORMAT must be one of json, text, got 'logfmt'"),
        ("EDGE_HOST", "local host", "EDGE_HOST must be a host name without whitespace"),
        ("UPSTREAM_API_KEY", "sk abc", "UPSTREAM_API_KEY must be a key without whitespace"),
        ("EDGE_API_KEYS", " , ,", "EDGE_API_KEYS must list at least one key"),
        ("EDGE_API_KEYS", "a b,c", "EDGE_API_KEYS must be a comma-separated list of keys"),
    ],
)  # fmt: skip
def test_bad_values_are_rejected_with_a_clear_message(env: str, raw: str, message: str) -> None:
    assert config_error({env: raw}).startswith(message)


@pytest.mark.parametrize(
    "raw",
    [
        "api.openai.com/v1",
        "ftp://example.com/v1",
        "http://",
        "http:///v1",
        "https://example.com:port/v1",
        "https://exa mple.com/v1",
        "https://example.com/v1?key=1",
        "https://example.com/v1#frag",
        "/v1",
    ],
)
def test_bad_upstream_url(raw: str) -> None:
    message = config_error({"UPSTREAM_BASE_URL": raw})
    assert message.startswith(
        "UPSTREAM_BASE_URL must be an absolute http:// or https:// URL such as "
        "'https://api.openai.com/v1'"
    )
    assert repr(raw) in message


@pytest.mark.parametrize("raw", ["redis://localhost", "mysql://db/edge", "data:users"])
def test_unknown_db_url_scheme(raw: str) -> None:
    message = config_error({"DB_URL": raw})
    assert message.startswith("DB_URL must be a store URL")
    assert "unknown store URL scheme" in message
    assert repr(raw) in message


@pytest.mark.parametrize("raw", ["postgresql://user@db/edge", "postgres://db/edge"])
def test_a_postgresql_url_is_kept_whole(raw: str) -> None:
    assert load_config([], {"DB_URL": raw}).db_url == raw


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("sqlite:./chat.db", Path("chat.db")),
        ("SQLITE:edge.db", Path("edge.db")),
        ("sqlite:///tmp/edge.db", Path("/tmp/edge.db")),
        ("filejson:./users", Path("users")),
    ],
)
def test_every_store_scheme_is_accepted(raw: str, expected: Path) -> None:
    config = load_config([], {"DB_URL": raw})
    assert config.db_url == raw
    assert config.store_path == expected


@pytest.mark.parametrize(
    "raw", ["./users", "file:", "file://", "file://relative/path", "file://otherhost/abs", "users"]
)
def test_malformed_file_url(raw: str) -> None:
    message = config_error({"DB_URL": raw})
    assert message.startswith("DB_URL must be")
    assert repr(raw) in message


def test_chunk_tokens_must_be_a_multiple_of_the_bundle() -> None:
    assert config_error({"CHUNK_TOKENS": "50"}) == (
        "CHUNK_TOKENS (50) must be a multiple of STREAM_BUNDLE_TOKENS (20)"
    )
    assert config_error({}, ["--stream-bundle-tokens", "7"]) == (
        "CHUNK_TOKENS (60) must be a multiple of STREAM_BUNDLE_TOKENS (7)"
    )
    assert load_config([], {"CHUNK_TOKENS": "20"}).chunk_tokens == 20


def test_flag_errors_name_the_flag_and_read_like_env_errors() -> None:
    assert (
        config_error({}, ["--port", "abc"])
        == "--port must be an integer from 0 to 65535, got 'abc'"
    )
    assert config_error({}, ["--api-keys", ","]).startswith("--api-keys must list at least one key")
    assert config_error({}, ["--db-url", "nosuch:x.db"]).startswith("--db-url must be a store URL")
    # A good flag does not excuse a bad environment value: both are validated.
    assert config_error({"EDGE_PORT": "abc"}, ["--port", "80"]).startswith("EDGE_PORT must be")


def test_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)


# --- constructing EdgeConfig directly -----------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"port": 70000}, "port must be an integer from 0 to 65535, got 70000"),
        ({"port": True}, "port must be an integer"),
        ({"port": "8080"}, "port must be an integer"),
        ({"stream_flush_ms": 0}, "stream_flush_ms must be an integer >= 1, got 0"),
        ({"store_threads": 0}, "store_threads must be an integer >= 1, got 0"),
        ({"persist_transcripts": "yes"}, "persist_transcripts must be one of"),
        ({"upstream_base_url": "example.com"}, "upstream_base_url must be an absolute"),
        ({"db_url": "nosuch:x"}, "db_url must be a store URL"),
        ({"db_url": 3}, "db_url must be a URL such as 'file:./users'"),
        ({"durability": "always"}, "durability must be one of chunk, message, none"),
        ({"log_level": "info"}, "log_level must be one of DEBUG"),
        ({"retention_days": 0.0}, "retention_days must be a positive number"),
        ({"retention_days": float("nan")}, "retention_days must be a positive number"),
        ({"retention_days": "7"}, "retention_days must be a positive number"),
        ({"edge_api_keys": {"a"}}, "edge_api_keys must be a comma-separated list"),
        ({"edge_api_keys": frozenset({""})}, "edge_api_keys must be a comma-separated list"),
        ({"host": ""}, "host must be a host name"),
        ({"chunk_tokens": 30}, "CHUNK_TOKENS (30) must be a multiple of STREAM_BUNDLE_TOKENS (20)"),
    ],
)  # fmt: skip
def test_direct_construction_is_validated(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        EdgeConfig(**kwargs)
    assert str(info.value).startswith(message)


def test_direct_construction_strips_trailing_slash() -> None:
    config = EdgeConfig(upstream_base_url="http://127.0.0.1:1234/v1//")
    assert config.upstream_base_url == "http://127.0.0.1:1234/v1"
    assert not config.uses_demo_upstream
    assert EdgeConfig(retention_days=2).retention_days == 2


# --- store_path ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("db_url", "expected"),
    [
        ("file:./users", Path("users")),
        ("file:users", Path("users")),
        ("file:data/store", Path("data/store")),
        ("file:/var/lib/edge", Path("/var/lib/edge")),
        ("file:///var/lib/edge", Path("/var/lib/edge")),
        ("file://localhost/var/lib/edge", Path("/var/lib/edge")),
        ("FILE:/x", Path("/x")),
    ],
)
def test_store_path(db_url: str, expected: Path) -> None:
    assert load_config([], {"DB_URL": db_url}).store_path == expected
    assert EdgeConfig(db_url=db_url).store_path == expected


def test_store_path_of_tmp_dir(tmp_path: Path) -> None:
    assert EdgeConfig(db_url=f"file:{tmp_path}").store_path == tmp_path
    assert EdgeConfig(db_url=f"file://{tmp_path}").store_path == tmp_path
    assert EdgeConfig().store_path == Path("users")


# --- python -m edge -----------------------------------------------------------------------------


def fake_app_module(created: list[EdgeConfig]) -> types.ModuleType:
    module = types.ModuleType("edge.app")

    def create_app(config: EdgeConfig) -> web.Application:
        created.append(config)
        return web.Application()

    module.create_app = create_app  # type: ignore[attr-defined]
    return module


def fake_run_app(calls: list[dict[str, Any]]) -> Callable[..., None]:
    def run_app(app: web.Application, **kwargs: Any) -> None:
        calls.append(kwargs)
        kwargs["print"](
            "======== Running on http://127.0.0.1:43210 ========\n(Press CTRL+C to quit)"
        )

    return run_app


@pytest.mark.parametrize("persist", [False, True])
def test_main_runs_the_app_with_a_banner(
    persist: bool,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    created: list[EdgeConfig] = []
    calls: list[dict[str, Any]] = []
    levels: list[object] = []
    monkeypatch.setitem(sys.modules, "edge.app", fake_app_module(created))
    monkeypatch.setattr(edge_main, "run_app", fake_run_app(calls))
    monkeypatch.setattr(edge_main, "configure_logging", lambda *args: levels.append(args))
    argv = ["--port", "0", "--db-url", f"file:{tmp_path}", "--log-level", "debug"]
    if persist:
        argv += ["--persist-transcripts", "--upstream-base-url", "http://up.example/v1"]

    edge_main.main(argv)

    assert [config.port for config in created] == [0]
    assert calls[0]["host"] == "127.0.0.1"
    assert calls[0]["port"] == 0
    assert levels == [("DEBUG", "json")]
    out = capsys.readouterr().out
    assert "edge listening on http://127.0.0.1:43210" in out
    if persist:
        assert f"persistence: on, file store at {tmp_path}" in out
        assert "upstream:    http://up.example/v1" in out
    else:
        # The bare command's default differs from `make run`'s: the banner says so, and how.
        assert "persistence: off (a pure proxy: nothing is stored" in out
        assert "`make run` turns it on: PERSIST_TRANSCRIPTS=true or --persist-transcripts" in out
        assert "built-in demo" in out


def test_banner_falls_back_to_the_configured_address(capsys: pytest.CaptureFixture[str]) -> None:
    edge_main._banner_printer(EdgeConfig(port=9999))("")
    assert "edge listening on http://127.0.0.1:9999" in capsys.readouterr().out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        load_config(["--version"], {})
    assert info.value.code == 0
    assert capsys.readouterr().out == f"edge {chunkstore.__version__}\n"
    result = run_edge(["--version"])
    assert (result.returncode, result.stdout, result.stderr) == (
        0,
        f"edge {chunkstore.__version__}\n",
        "",
    )


def test_main_reports_config_errors(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("EDGE_PORT", "abc")
    with pytest.raises(SystemExit) as info:
        edge_main.main([])
    assert info.value.code == 2
    assert capsys.readouterr().err == (
        "edge: configuration error: EDGE_PORT must be an integer from 0 to 65535, got 'abc'\n"
    )


def run_edge(argv: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    environ = {key: value for key, value in os.environ.items() if key not in ENV_VARS}
    environ["PYTHONPATH"] = os.pathsep.join(
        [str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    environ.update(env)
    return subprocess.run(
        [sys.executable, "-m", "edge", *argv],
        cwd=REPO_ROOT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_process_exits_2_on_bad_env_value() -> None:
    result = run_edge([], EDGE_PORT="abc")
    assert result.returncode == 2
    assert result.stderr == (
        "edge: configuration error: EDGE_PORT must be an integer from 0 to 65535, got 'abc'\n"
    )
    assert result.stdout == ""


def test_process_exits_2_on_bad_flag() -> None:
    result = run_edge(["--db-url", "redis://u:hunter2@localhost/0"])
    assert result.returncode == 2
    assert result.stderr.startswith("edge: configuration error: --db-url must be a store URL")
    assert "unknown store URL scheme 'redis'" in result.stderr
    assert "hunter2" not in result.stderr
    assert "Traceback" not in result.stderr

    result = run_edge(["--no-such-flag"])
    assert result.returncode == 2
    assert "unrecognized arguments: --no-such-flag" in result.stderr
    assert "Traceback" not in result.stderr


# --- secrets never shown -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "env",
    [
        {"DB_URL": "redis://edge:hunter2@db:5432/edge"},
        {"DB_URL": "mysql://edge:hunter2@db/edge?sslmode=require"},
        {"UPSTREAM_BASE_URL": "ftp://edge:hunter2@proxy/v1"},
        {"UPSTREAM_BASE_URL": "https://edge:hunter2@proxy/v1?x=1"},
        {"UPSTREAM_API_KEY": "hunter2 with spaces"},
        {"EDGE_API_KEYS": "hunter2 x, y"},
    ],
)
def test_no_error_message_shows_a_password(env: dict[str, str]) -> None:
    message = config_error(env)
    assert "hunter2" not in message
    (name,) = env
    assert message.startswith(name)


def test_no_flag_error_shows_a_password() -> None:
    with pytest.raises(ConfigError) as raised:
        load_config(["--db-url", "redis://u:hunter2@h/db"], {})
    assert "hunter2" not in str(raised.value)
    assert "u:***@h" in str(raised.value)


def test_the_repr_shows_no_password_and_no_key() -> None:
    config = EdgeConfig(
        upstream_base_url="https://edge:hunter2@proxy/v1",
        upstream_api_key="sk-hunter2",
        edge_api_keys=frozenset({"hunter2-client"}),
    )
    text = repr(config)
    assert "hunter2" not in text
    assert "https://edge:***@proxy/v1" in text
    assert text.startswith("EdgeConfig(host='127.0.0.1'")


def test_the_banner_shows_no_upstream_password() -> None:
    config = EdgeConfig(upstream_base_url="https://edge:hunter2@proxy/v1")
    banner = edge_main._format_banner(config, ["http://127.0.0.1:8080"])
    assert "hunter2" not in banner
    assert "https://edge:***@proxy/v1" in banner
