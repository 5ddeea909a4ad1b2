"""Test-wide workaround for a CPython 3.11 race under coverage's thread tracing.

``make test`` measures coverage with ``concurrency = ["thread"]``, so every new thread installs
coverage's trace function in ``threading._bootstrap_inner`` (``sys.settrace(_trace_hook)``).
In CPython before 3.12 that call fails with ``RuntimeError: Cannot install a trace function
while another trace function is being installed`` when another thread is installing one at the
same moment: the guard is process-wide (python/cpython#98257). The new thread then dies before
running its target, which pytest reports as an unraisable exception in whatever test started
it (seen once, in a test that starts 50 streams at once). Retrying the install is what the
thread would have done had it started a moment later; the product's code is not involved.
Python 3.12+ has no such guard (coverage uses ``sys.monitoring`` there), so nothing changes.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import Any

_RACE = "another trace function is being installed"


class _SysWithRetriedTraceInstall:
    """``sys`` as ``threading`` sees it, with ``settrace``/``setprofile`` retried on the race."""

    def __getattr__(self, name: str) -> Any:
        return getattr(sys, name)

    @staticmethod
    def _retried(install: Callable[[Any], None], func: Any) -> None:
        for _ in range(1000):
            try:
                install(func)
                return
            except RuntimeError as exc:
                if _RACE not in str(exc):
                    raise
                time.sleep(0.001)
        install(func)

    def settrace(self, func: Any) -> None:
        self._retried(sys.settrace, func)

    def setprofile(self, func: Any) -> None:
        self._retried(sys.setprofile, func)


if sys.version_info < (3, 12):
    threading._sys = _SysWithRetriedTraceInstall()  # type: ignore[attr-defined]
