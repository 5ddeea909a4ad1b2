"""Which backend a ``Store`` target names: a small scheme table, no plugin registry.

=====================================  ===============================================
``users``, ``./users``, ``/srv/users``  the file store (format v1) in that directory
``file:PATH``, ``file:///abs/path``     the same (``filejson:`` is an alias)
``sqlite:PATH``, ``sqlite:///abs/path``  one SQLite database file
``postgresql://...``, ``postgres://...``  a PostgreSQL database (a libpq URI, kept whole)
=====================================  ===============================================

A target that starts with a scheme (``letters:``) is always a URL, never a path: an unknown
scheme is an error instead of a directory named ``sqlite:`` or ``postgresql:``. (A path that
must start with such a name can be written ``./name:...`` or as a ``file:`` URL.) Paths are
taken literally (no percent-decoding). Messages quote targets with any password hidden.
"""

from __future__ import annotations

import os
import re
from typing import Any

from ._backend import Backend
from ._exceptions import InvalidArgument

__all__ = ["SCHEMES", "open_backend", "parse_store_url", "redact_url"]

_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")
_WINDOWS_DRIVE = re.compile(r"[A-Za-z]:[\\/]")
_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^/@:\s]*:)[^/@\s]*(?P<at>@)")

#: Scheme → backend name.
SCHEMES = {"file": "file", "filejson": "file", "sqlite": "sqlite"}
#: Schemes of a database server: the whole URL goes to the driver.
_SERVERS = {"postgresql": "postgresql", "postgres": "postgresql"}


def redact_url(text: str) -> str:
    """``text`` with the password of every URL in it replaced by ``***``."""
    return _PASSWORD.sub(r"\g<head>***\g<at>", text)


def parse_store_url(target: str | os.PathLike[str]) -> tuple[str, str]:
    """``(backend, location)`` for a store target: ``("file", "./users")``,
    ``("sqlite", "./chat.db")``, ``("postgresql", "postgresql://...")``. ``InvalidArgument``
    (a ``ValueError``) for anything else."""
    if not isinstance(target, str):
        return "file", os.fspath(target)
    if not target or "\x00" in target:
        raise InvalidArgument("a store target must be a non-empty path or URL")
    match = _SCHEME.match(target)
    if match is None or _WINDOWS_DRIVE.match(target):
        return "file", target
    scheme = match.group(1).lower()
    rest = target[match.end() :]
    if scheme in _SERVERS:
        # libpq knows the scheme in lower case only.
        return _SERVERS[scheme], f"postgresql:{rest}"
    if scheme not in SCHEMES:
        raise InvalidArgument(
            f"unknown store URL scheme {scheme!r} in {redact_url(target)!r}: use a path, "
            "file:PATH, sqlite:PATH or postgresql://..."
        )
    if rest.startswith("//"):
        # scheme://localhost/abs or scheme:///abs: an authority, then an absolute path.
        authority, slash, path = rest[2:].partition("/")
        if authority not in ("", "localhost") or not slash:
            raise InvalidArgument(
                f"{redact_url(target)!r}: after {scheme}:// comes an absolute path "
                f"({scheme}:///abs/path), or use {scheme}:relative/path"
            )
        rest = "/" + path
    if not rest:
        raise InvalidArgument(f"{target!r} names no path (e.g. {scheme}:./data)")
    return SCHEMES[scheme], rest


def open_backend(target: str | os.PathLike[str], **options: Any) -> Backend:
    """The backend ``target`` names, opened with the front's ``options`` (``durability``,
    ``lock_timeout``, ``cache_conversations``)."""
    kind, location = parse_store_url(target)
    if kind == "postgresql":
        try:
            from ._postgres import PostgresBackend
        except ImportError as exc:
            raise InvalidArgument(
                f"the PostgreSQL backend needs psycopg ({exc}): "
                "pip install 'chunkstore[postgresql]'"
            ) from None
        return PostgresBackend(
            location, durability=options["durability"], lock_timeout=options["lock_timeout"]
        )
    if kind == "sqlite":
        from ._sqlite import SqliteBackend

        return SqliteBackend(
            location, durability=options["durability"], lock_timeout=options["lock_timeout"]
        )
    from ._file_store import FileBackend

    return FileBackend(location, **options)
