"""The public surface: ``chunkstore.__all__`` and the exception tree."""

from __future__ import annotations

import errno
import importlib
from pathlib import Path

import pytest

import chunkstore
from chunkstore import (
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

MODULES = [
    "_async",
    "_check",
    "_exceptions",
    "_fsio",
    "_ids",
    "_layout",
    "_locks",
    "_models",
    "_reader",
    "_rebuild",
    "_records",
    "_segment",
    "_store",
    "_transfer",
    "_writer",
]


def isort_key(name: str) -> tuple[int, str]:
    """The order ruff's RUF022 keeps ``__all__`` in: CONSTANTS, then Classes, then functions."""
    if name.isupper():
        return (0, name)
    if name[0].isupper():
        return (1, name)
    return (2, name)


def test_all_is_sorted_and_unique() -> None:
    assert chunkstore.__all__ == sorted(chunkstore.__all__, key=isort_key)
    assert len(set(chunkstore.__all__)) == len(chunkstore.__all__)


def test_every_name_in_all_is_importable() -> None:
    for name in chunkstore.__all__:
        assert getattr(chunkstore, name) is not None
    namespace: dict[str, object] = {}
    exec("from chunkstore import *", namespace)
    assert set(chunkstore.__all__) <= set(namespace)


@pytest.mark.parametrize("module", MODULES)
def test_private_modules_export_what_they_list(module: str) -> None:
    mod = importlib.import_module(f"chunkstore.{module}")
    for name in mod.__all__:
        assert hasattr(mod, name), f"chunkstore.{module}.{name}"


def test_typed_marker_and_version() -> None:
    assert (Path(chunkstore.__file__).parent / "py.typed").exists()
    assert chunkstore.__version__.count(".") == 2
    assert chunkstore.FORMAT_VERSION == 1
    assert chunkstore.DURABILITY_MODES == ("chunk", "message", "none")


@pytest.mark.parametrize(
    ("error", "builtin"),
    [
        (ConversationNotFound, KeyError),
        (UserNotFound, KeyError),
        (ConversationDeleted, PermissionError),
        (InvalidId, ValueError),
        (InvalidArgument, ValueError),
        (LimitExceeded, ValueError),
        (LockTimeout, TimeoutError),
        (StoreFormatError, ValueError),
        (WriterClosed, RuntimeError),
        (ReplyStreaming, RuntimeError),
        (StorageError, OSError),
        (TransferMismatch, RuntimeError),
    ],
)
def test_error_tree(error: type[Exception], builtin: type[Exception]) -> None:
    assert issubclass(error, ChunkstoreError)
    assert issubclass(error, builtin)
    assert error.__name__ in chunkstore.__all__
    with pytest.raises(builtin):
        raise error("x")


def test_every_exported_error_is_in_the_tree() -> None:
    errors = [
        getattr(chunkstore, n)
        for n in chunkstore.__all__
        if isinstance(getattr(chunkstore, n), type) and issubclass(getattr(chunkstore, n), Exception)
    ]
    assert len(errors) == 13
    assert all(issubclass(e, ChunkstoreError) for e in errors)


def test_key_errors_read_plainly() -> None:
    assert str(ConversationNotFound("no conversation us01-co01")) == "no conversation us01-co01"
    assert str(ConversationNotFound()) == "conversation not found"
    assert str(UserNotFound()) == "user not found"


def test_storage_error_keeps_errno_and_cause() -> None:
    cause = OSError(errno.ENOSPC, "No space left on device", "/x")
    err = StorageError.wrap(cause, "cannot write /x")
    assert err.errno == errno.ENOSPC
    assert err.filename == "/x"
    assert err.__cause__ is cause
    assert "No space left" in str(err)
