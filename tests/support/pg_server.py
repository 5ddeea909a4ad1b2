"""A PostgreSQL server for the tests: ONE per test session; a fresh database for each test
that asks (``fresh_database``), a fresh schema for each conformance store (``fresh_schema``).

* ``CHUNKSTORE_TEST_POSTGRESQL_URL`` set: that server is used (its user must be allowed to
  ``CREATE DATABASE``); the databases made here are dropped at exit.
* Otherwise a server is started with ``pgserver`` (PostgreSQL binaries from PyPI, the ``test``
  extra) in a temporary directory on first use, tuned for tests (``fsync=off``: the tests kill
  processes, never the machine), and stopped and removed at exit. It listens on a Unix socket
  only.
* No server can be had: under CI (the ``CI`` environment variable set, as ``.ci/run`` runs)
  every test that needs one FAILS with the reason, never skipped; elsewhere it is skipped
  with a loud reason.

Imported by ``tests/conformance/conftest.py`` and ``tests/postgres/conftest.py`` (which put
``tests/support/`` on ``sys.path``), as the same module: one server for the whole session.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import os
import tempfile
import threading
import warnings
from urllib.parse import quote, urlsplit, urlunsplit

import pytest

ENV_URL = "CHUNKSTORE_TEST_POSTGRESQL_URL"

_lock = threading.Lock()
_admin_url: str | None = None
_failure: str | None = None
_created: list[str] = []
_numbers = itertools.count(1)
_schemas_url: str | None = None


def _start() -> str:
    """The URL of a database to run ``CREATE DATABASE`` on (starting a server if need be)."""
    import psycopg

    external = os.environ.get(ENV_URL)
    if external:
        with psycopg.connect(external, autocommit=True, connect_timeout=10) as conn:
            conn.execute("SELECT 1")
        return external
    # A short path: the server's Unix socket lives in it (at most ~100 bytes).
    pgdata = tempfile.mkdtemp(prefix="cspg-")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs: XDG_RUNTIME_DIR is not set
        try:
            import pgserver
        except ImportError as exc:
            raise RuntimeError(f"pgserver is not installed ({exc}): pip install -e '.[test]'") from exc
        server = pgserver.get_server(pgdata, cleanup_mode="delete")
    url: str = server.get_uri()
    with psycopg.connect(url, autocommit=True) as conn:
        # Only durability against a machine crash is given up: no test crashes the machine.
        conn.execute("ALTER SYSTEM SET fsync = off")
        conn.execute("ALTER SYSTEM SET full_page_writes = off")
        conn.execute("SELECT pg_reload_conf()")
    return url


def admin_url() -> str:
    """The server's URL; fails (under CI) or skips the calling test if there is none."""
    global _admin_url, _failure
    with _lock:
        if _admin_url is None and _failure is None:
            try:
                _admin_url = _start()
            except Exception as exc:
                _failure = f"no PostgreSQL server for the tests: {type(exc).__name__}: {exc}"
    if _admin_url is not None:
        return _admin_url
    assert _failure is not None
    if os.environ.get("CI"):
        pytest.fail(f"{_failure} (CI never skips the PostgreSQL tests)", pytrace=False)
    pytest.skip(
        f"!!! PostgreSQL tests SKIPPED: {_failure}. Install the test extra (pgserver) or set "
        f"{ENV_URL}; CI fails instead of skipping."
    )


def with_database(url: str, name: str) -> str:
    """``url`` naming database ``name`` instead (everything else kept)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


def fresh_database() -> str:
    """The URL of a new, empty database (``t_<pid>_<n>``) on the session's server."""
    import psycopg

    url = admin_url()
    name = f"t_{os.getpid()}_{next(_numbers)}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}".encode())
    with _lock:
        _created.append(name)
    return with_database(url, name)


def fresh_schema() -> str:
    """The URL of a new, empty store: a fresh schema (``s_<n>``, made the connections'
    ``search_path``) in one database of the session.

    The backend keeps every table, and its leases' namespace, in its current schema, so a
    schema is as fresh a store as a database, made in well under a millisecond where
    ``CREATE DATABASE`` takes about 0.2 s (the conformance suite makes a few hundred stores).
    """
    import psycopg

    global _schemas_url
    with _lock:
        base = _schemas_url
    if base is None:
        base = fresh_database()
        with _lock:
            _schemas_url = base
    name = f"s_{next(_numbers)}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {name}".encode())
    parts = urlsplit(base)
    option = "options=" + quote(f"-csearch_path={name}", safe="")
    query = f"{parts.query}&{option}" if parts.query else option
    return urlunsplit(parts._replace(query=query))


@atexit.register
def _drop_databases() -> None:
    """Drop what this session made on an external server (a started one is removed whole)."""
    if not (os.environ.get(ENV_URL) and _admin_url and _created):
        return
    import psycopg

    with contextlib.suppress(psycopg.Error), psycopg.connect(_admin_url, autocommit=True) as conn:
        for name in _created:
            with contextlib.suppress(psycopg.Error):
                conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)".encode())
