"""The benchmark suites still run: each module once, at tiny sizes, with timing disabled.

``BENCH_SMOKE=1`` shrinks every size (``benchmarks/conftest.py``) and ``--benchmark-disable``
runs each benchmarked function once, so this checks that the fixtures build, every variant
returns the same data as its baseline (the suites assert that), and the relay processes start
and stop. It asserts nothing about time: figures come from ``make bench``.

Each module runs in its own interpreter: the relay suite starts servers and the memory suite
uses tracemalloc, neither of which should leak into the test session.

The PostgreSQL variants run on a server the module starts itself (``tests/support/pg_server.py``
through ``benchmarks/conftest.postgres_database``, about 1 s) or on
``CHUNKSTORE_TEST_POSTGRESQL_URL``. Only when no server can be had are they skipped, loudly
(the reason is in the output, ``-rs``), as the tests' own PostgreSQL cases are; under CI they
fail instead.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MODULES = sorted(p.name for p in (ROOT / "benchmarks").glob("test_*.py"))


def test_every_suite_is_smoked() -> None:
    assert set(MODULES) >= {
        "test_listing.py",
        "test_memory.py",
        "test_rebuild.py",
        "test_relay.py",
        "test_write.py",
    }


@pytest.mark.parametrize("module", MODULES)
def test_benchmark_module_runs(module: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "COV_CORE_"))}
    env["BENCH_SMOKE"] = "1"
    env["BENCH_SUMMARY"] = str(tmp_path)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            f"benchmarks/{module}",
            "--benchmark-disable",
            "-q",
            "-rs",
            "-p",
            "no:cacheprovider",
            "--basetemp",
            str(tmp_path / "basetemp"),
            "-o",
            "addopts=",
            # Plugins the benchmarks do not use; schemathesis alone costs seconds to load.
            *("-p", "no:schemathesis", "-p", "no:hypothesispytest", "-p", "no:cov"),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout
