"""Performance suites (pytest-benchmark): ``make bench``. See ``benchmarks/README.md``.

A package so that ``benchmarks/test_relay.py`` and ``tests/edge/test_relay.py`` can be collected
in one session, and so the helper processes run as ``python -m benchmarks._relay_servers``.
"""
