"""Sizes and the side-by-side report shared by every benchmark suite.

``BENCH_SMOKE=1`` shrinks every size and round count so the suites run in seconds (the smoke
test in ``tests/test_benchmarks_smoke.py`` uses it with ``--benchmark-disable``); otherwise the
sizes are the ones SPEC §6 names.

Each suite compares against its baseline *in the same run*: a test records its figures with
``results.record(...)`` and declares the comparisons that matter (``results.ratio``,
``results.delta``, ``results.limit``). At the end of the session the comparisons are printed as
one table (subject, baseline, ratio, SPEC target, met or not) and written, with the machine they
ran on, to ``.benchmarks/summary.md`` and ``.benchmarks/summary.json`` (``BENCH_SUMMARY=<dir>``
to put them elsewhere).
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

SMOKE = os.environ.get("BENCH_SMOKE", "") not in ("", "0")
ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Sizes:
    # test_rebuild: messages per conversation, and rounds for each size.
    rebuild_messages: tuple[int, ...]
    rebuild_rounds: dict[int, int]
    # test_rebuild_fresh_process: rounds (a process per side per round) for each size
    rebuild_fresh_rounds: dict[int, int]
    # test_write
    write_rounds: int
    reply_rounds: int
    # test_listing: conversations of the user, how many of them go through the API.
    listing_conversations: int
    listing_api_conversations: int
    listing_rounds: int
    # interleaved rounds of the SQLite backend's listing and lookup (each a few dozen µs)
    listing_paired_rounds: int
    # test_relay: concurrent streams, tokens per stream, rounds per concurrency.
    relay_concurrency: tuple[int, ...]
    relay_tokens: int
    relay_rounds: dict[int, int]
    stall_seconds: float
    stall_concurrency: tuple[int, ...]
    stall_rounds: dict[int, int]
    # test_relay, persistence on a database (DB_URL=sqlite:..., postgresql://...): concurrent
    # streams and rounds (informational rows: kept short)
    relay_db_concurrency: tuple[int, ...]
    relay_db_rounds: dict[int, int]
    # test_memory
    memory_tokens: tuple[int, ...]


FULL = Sizes(
    rebuild_messages=(10, 50, 500, 5000),
    rebuild_rounds={10: 300, 50: 200, 500: 40, 5000: 10},
    rebuild_fresh_rounds={10: 15, 50: 25, 500: 25, 5000: 11},
    write_rounds=300,
    reply_rounds=60,
    listing_conversations=10_000,
    listing_api_conversations=1_000,
    listing_rounds=60,
    listing_paired_rounds=400,
    relay_concurrency=(1, 50, 200),
    relay_tokens=400,
    relay_rounds={1: 40, 50: 8, 200: 5},
    stall_seconds=0.2,
    stall_concurrency=(1, 50),
    stall_rounds={1: 10, 50: 3},
    relay_db_concurrency=(50,),
    relay_db_rounds={50: 4},
    memory_tokens=(10_000, 100_000),
)

TINY = Sizes(
    rebuild_messages=(10,),
    rebuild_rounds={10: 2},
    rebuild_fresh_rounds={10: 1},
    write_rounds=2,
    reply_rounds=2,
    listing_conversations=1_000,
    listing_api_conversations=20,
    listing_rounds=2,
    listing_paired_rounds=2,
    relay_concurrency=(1, 4),
    relay_tokens=60,
    relay_rounds={1: 2, 4: 1},
    stall_seconds=0.01,
    stall_concurrency=(1,),
    stall_rounds={1: 1},
    relay_db_concurrency=(4,),
    relay_db_rounds={4: 1},
    memory_tokens=(1_000, 10_000),
)

SIZES = TINY if SMOKE else FULL


# -- PostgreSQL ----------------------------------------------------------------------------------

_PG_SUPPORT = str(ROOT / "tests" / "support")
_pg_durable = False


def postgres_database() -> str:
    """The URL of a new, empty database on the benchmark session's PostgreSQL server.

    The server is the tests' (``tests/support/pg_server.py``): ``CHUNKSTORE_TEST_POSTGRESQL_URL``
    if set, else one started with ``pgserver`` on first use (about 1 s), ONE per session. No
    server to be had: the calling benchmark is skipped with a loud reason (it fails under CI),
    as the tests do. A server started here runs with the tests' ``fsync=off``; the benchmarks
    put ``fsync`` and ``full_page_writes`` back to PostgreSQL's defaults (on), so that
    durability ``chunk`` costs a real WAL flush per commit, as on SQLite (``synchronous=FULL``).
    An external server is used as it is configured (``postgres_settings`` says how).
    """
    global _pg_durable
    if _PG_SUPPORT not in sys.path:
        sys.path.append(_PG_SUPPORT)
    import pg_server

    url: str = pg_server.fresh_database()
    if not _pg_durable and not os.environ.get(pg_server.ENV_URL):
        import psycopg

        with psycopg.connect(pg_server.admin_url(), autocommit=True) as conn:
            conn.execute("ALTER SYSTEM RESET fsync")
            conn.execute("ALTER SYSTEM RESET full_page_writes")
            conn.execute("SELECT pg_reload_conf()")
    _pg_durable = True
    return url


def postgres_settings(url: str) -> dict[str, str]:
    """The server settings a reader needs next to PostgreSQL figures (for ``extra_info``)."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT name, setting FROM pg_settings WHERE name IN "
            "('fsync', 'full_page_writes', 'synchronous_commit', 'server_version', "
            "'shared_buffers', 'wal_sync_method')"
        ).fetchall()
    return {f"pg_{name}": setting for name, setting in rows}


@pytest.fixture(scope="module")
def postgres_url() -> str:
    """A fresh database for the module's PostgreSQL benchmarks (see ``postgres_database``)."""
    return postgres_database()


# -- paired timing -------------------------------------------------------------------------------


def paired(
    subject: tuple[Callable[[], Any], Callable[[Any], Any]],
    baseline: tuple[Callable[[], Any], Callable[[Any], Any]],
    rounds: int,
) -> dict[str, float]:
    """Time ``subject`` and ``baseline`` alternately, ``rounds`` times each: (setup, run) pairs,
    only ``run`` timed. On a shared machine load drifts over minutes; interleaving makes any
    drift hit both sides alike, so the ratio of the two medians is the robust comparison.
    """
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(rounds):
        for (setup, run), out in zip((subject, baseline), times, strict=True):
            arg = setup()
            start = time.perf_counter()
            result = run(arg)
            out.append(time.perf_counter() - start)
            # Freed outside the timed region on both sides: SQLite's rows would otherwise be
            # freed inside it, while chunkstore's messages live on in its store's cache.
            del result
            close = getattr(arg, "close", None)
            if close is not None:
                close()
    a, b = (sorted(t)[len(t) // 2] for t in times)
    return {"paired_subject_s": a, "paired_baseline_s": b, "paired_ratio": a / b}


# -- the report ----------------------------------------------------------------------------------


@dataclass
class Check:
    """One line of the report: ``subject`` against ``baseline`` (or against a fixed limit)."""

    suite: str
    case: str
    subject: str
    baseline: str | None
    metric: str
    kind: str  # "ratio" (subject / baseline), "delta" (subject - baseline), "value" (subject)
    op: str | None = None  # "<=", "<", ">=": how the figure must compare with ``limit``
    limit: float | None = None
    target: str = ""  # the SPEC §6 target, as written in the table
    figure: float | None = None
    subject_value: float | None = None
    baseline_value: float | None = None

    @property
    def met(self) -> bool | None:
        if self.figure is None or self.op is None or self.limit is None:
            return None
        return _OPS[self.op](self.figure, self.limit)


_OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": lambda a, b: a <= b,
    "<": lambda a, b: a < b,
    ">=": lambda a, b: a >= b,
}


@dataclass
class Results:
    values: dict[tuple[str, str, str], dict[str, float]] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)

    def record(
        self, benchmark: Any, suite: str, case: str, variant: str, **metrics: float
    ) -> dict[str, float]:
        """Keep ``variant``'s figures: the benchmark's median (seconds) plus ``metrics``.

        With ``--benchmark-disable`` there is no median; the other figures are still kept.
        """
        stats = getattr(benchmark, "stats", None)
        if stats is not None:
            metrics = {"median": stats.stats.median, "min": stats.stats.min, **metrics}
        benchmark.extra_info.update(
            {k: v for k, v in metrics.items() if k not in ("median", "min")}
        )
        self.values.setdefault((suite, case, variant), {}).update(metrics)
        return metrics

    def record_pair(
        self,
        benchmark: Any,
        suite: str,
        case: str,
        subject: str,
        baseline: str,
        figures: dict[str, float],
        *,
        op: str | None = None,
        limit: float | None = None,
        target: str = "",
    ) -> None:
        """Keep the figures of one ``paired`` run as two variants' ``paired_median_s`` (each
        side's median over the interleaved rounds), and declare their ratio: one report row
        with both medians, the ratio and the target."""
        benchmark.extra_info.update(figures)
        for variant, key in ((subject, "paired_subject_s"), (baseline, "paired_baseline_s")):
            self.values.setdefault((suite, case, variant), {})["paired_median_s"] = figures[key]
        self.ratio(
            suite,
            case,
            subject,
            baseline,
            metric="paired_median_s",
            op=op,
            limit=limit,
            target=target,
        )

    def ratio(
        self,
        suite: str,
        case: str,
        subject: str,
        baseline: str,
        *,
        metric: str = "median",
        op: str | None = None,
        limit: float | None = None,
        target: str = "",
    ) -> None:
        self._add(Check(suite, case, subject, baseline, metric, "ratio", op, limit, target))

    def delta(
        self,
        suite: str,
        case: str,
        subject: str,
        baseline: str,
        *,
        metric: str,
        op: str | None = None,
        limit: float | None = None,
        target: str = "",
    ) -> None:
        self._add(Check(suite, case, subject, baseline, metric, "delta", op, limit, target))

    def limit(
        self,
        suite: str,
        case: str,
        subject: str,
        *,
        metric: str = "median",
        op: str | None = None,
        limit: float | None = None,
        target: str = "",
    ) -> None:
        self._add(Check(suite, case, subject, None, metric, "value", op, limit, target))

    def _add(self, check: Check) -> None:
        key = (check.suite, check.case, check.subject, check.baseline, check.metric, check.kind)
        if all(
            (c.suite, c.case, c.subject, c.baseline, c.metric, c.kind) != key for c in self.checks
        ):
            self.checks.append(check)

    def evaluate(self) -> list[Check]:
        for c in self.checks:
            subject = self.values.get((c.suite, c.case, c.subject), {}).get(c.metric)
            base = (
                self.values.get((c.suite, c.case, c.baseline), {}).get(c.metric)
                if c.baseline is not None
                else None
            )
            c.subject_value, c.baseline_value, c.figure = subject, base, None
            if subject is None:
                continue
            if c.kind == "value":
                c.figure = subject
            elif base is None:
                continue
            elif c.kind == "ratio":
                c.figure = subject / base if base else None
            else:
                c.figure = subject - base
        return self.checks


_RESULTS = pytest.StashKey[Results]()


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_RESULTS] = Results()


@pytest.fixture(scope="session")
def results(pytestconfig: pytest.Config) -> Results:
    return pytestconfig.stash[_RESULTS]


@pytest.fixture(scope="session")
def sizes() -> Sizes:
    return SIZES


# -- formatting ----------------------------------------------------------------------------------


def fmt_value(metric: str, value: float | None) -> str:
    if value is None:
        return "n/a"
    if metric in ("median", "min"):
        return fmt_seconds(value)
    if metric.endswith("_ms"):
        return f"{value:.2f} ms"
    if metric.endswith("_per_s"):
        return f"{value:,.0f}/s"
    if metric.endswith("_ratio"):
        return f"{value:.3g}x"
    if metric.endswith("_s"):
        return fmt_seconds(value)
    if metric.endswith("_kib"):
        return f"{value:,.0f} KiB"
    return f"{value:.3g}"


def fmt_seconds(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def fmt_figure(check: Check) -> str:
    if check.figure is None:
        return "n/a"
    if check.kind == "ratio":
        return f"{check.figure:.3g}x"
    if check.kind == "delta":
        sign = "+" if check.figure >= 0 else ""
        return sign + fmt_value(check.metric, check.figure)
    return fmt_value(check.metric, check.figure)


METRIC_LABELS = {
    "median": "time (median)",
    "tokens_per_s": "throughput",
    "body_tokens_per_s": "throughput to last upstream event",
    "sustained_tokens_per_s": "sustained throughput (until storage idle)",
    "storage_drain_ms": "storing still running after the last [DONE]",
    "gap_p50_ms": "inter-event p50",
    "gap_p99_ms": "inter-event p99",
    "stream_gap_p50_ms": "inter-event p50, stream body",
    "stream_gap_p99_ms": "inter-event p99, stream body",
    "done_wait_p50_ms": "wait for [DONE] p50",
    "failed_requests": "failed requests",
    "paired_ratio": "ratio, interleaved rounds",
    "paired_median_s": "time (median), interleaved rounds",
    "ttft_p50_ms": "first event p50",
    "ttft_p99_ms": "first event p99",
    "tokens_per_event": "tokens per event",
    "storage_failed_streams": "storage_failed streams",
    "stream_tracemalloc_peak_kib": "tracemalloc peak, streaming",
    "stream_retained_kib": "allocated at end of stream",
    "seal_tracemalloc_peak_kib": "tracemalloc peak, finish()",
    "stream_rss_growth_kib": "RSS growth, streaming",
}


def report_rows(checks: list[Check]) -> list[list[str]]:
    rows = []
    for c in checks:
        met = {True: "yes", False: "**NO**", None: "—"}[c.met]
        rows.append(
            [
                c.suite,
                c.case,
                c.subject,
                METRIC_LABELS.get(c.metric, c.metric),
                fmt_value(c.metric, c.subject_value),
                c.baseline or "—",
                fmt_value(c.metric, c.baseline_value) if c.baseline else "—",
                fmt_figure(c),
                c.target or "—",
                met,
            ]
        )
    return rows


HEADER = [
    "suite",
    "case",
    "subject",
    "metric",
    "value",
    "baseline",
    "baseline value",
    "vs baseline",
    "target",
    "met",
]


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def describe_machine() -> dict[str, str]:
    """What a reader needs to compare these figures with their own."""
    cpu = "unknown"
    try:
        match = re.search(r"model name\s*:\s*(.*)", Path("/proc/cpuinfo").read_text())
        if match:
            cpu = match.group(1).strip()
    except OSError:
        pass
    try:
        fs = (
            subprocess.run(["df", "-T", "/tmp"], capture_output=True, text=True, check=False)
            .stdout.splitlines()[-1]
            .split()[1]
        )
    except (OSError, IndexError):
        fs = "unknown"
    try:
        commit = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            check=False,
            cwd=ROOT,
        ).stdout.strip()
    except OSError:
        commit = "unknown"
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "commit": commit or "unknown",
        "python": sys.version.split()[0],
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "kernel": platform.release(),
        "tmp_filesystem": fs,
        "smoke": str(SMOKE),
    }


def pytest_benchmark_update_machine_info(
    config: pytest.Config, machine_info: dict[str, Any]
) -> None:
    info = describe_machine()
    machine_info["cpu_model"] = info["cpu"]
    machine_info["tmp_filesystem"] = info["tmp_filesystem"]


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    results = config.stash.get(_RESULTS, None)
    if results is None or not results.checks:
        return
    checks = results.evaluate()
    if all(c.subject_value is None for c in checks):
        return
    info = describe_machine()
    rows = report_rows(checks)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(HEADER)]
    tr = terminalreporter
    tr.write_sep("=", "chunkstore vs baselines (same run)")
    tr.write_line(", ".join(f"{k}: {v}" for k, v in info.items()))
    tr.write_line("  ".join(h.ljust(w) for h, w in zip(HEADER, widths, strict=True)))
    for r in rows:
        tr.write_line("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)))
    if config.getoption("benchmark_disable", False):
        return
    out = Path(os.environ.get("BENCH_SUMMARY") or ROOT / ".benchmarks")
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.md").write_text(
        "\n".join(f"- {k}: {v}" for k, v in info.items())
        + "\n\n"
        + markdown_table(HEADER, rows)
        + "\n"
    )
    payload = {
        "machine": info,
        "values": [
            {"suite": s, "case": c, "variant": v, **m} for (s, c, v), m in results.values.items()
        ],
        "checks": [
            {
                "suite": c.suite,
                "case": c.case,
                "subject": c.subject,
                "baseline": c.baseline,
                "metric": c.metric,
                "kind": c.kind,
                "figure": c.figure,
                "subject_value": c.subject_value,
                "baseline_value": c.baseline_value,
                "target": c.target,
                "met": c.met,
            }
            for c in checks
        ],
    }
    (out / "summary.json").write_text(json.dumps(payload, indent=1))
    tr.write_line(f"written: {out / 'summary.md'}, {out / 'summary.json'}")
