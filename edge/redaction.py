"""Keeping secrets out of text: no message, log line or repr shows a password.

URLs may carry credentials (``postgresql://user:secret@host/db``, an upstream behind
``https://user:secret@proxy/v1``). Anything that shows a URL, or an error message that may
quote one, goes through :func:`redact_url` first.
"""

from __future__ import annotations

import re

__all__ = ["REDACTED", "redact_url"]

REDACTED = "***"

# scheme://user:password@ — the password is whatever lies between the first ":" of the
# authority and the "@" that ends it (it cannot contain "/" or "@" unencoded).
_USERINFO_PASSWORD = re.compile(
    r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^/@:\s]*:)(?P<password>[^/@\s]*)(?P<at>@)"
)


def redact_url(text: str) -> str:
    """``text`` with the password of every URL in it replaced by ``***``."""
    return _USERINFO_PASSWORD.sub(rf"\g<head>{REDACTED}\g<at>", text)
