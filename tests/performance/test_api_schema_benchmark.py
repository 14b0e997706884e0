"""Benchmark: schemathesis' full run against a real `robopt serve`: at least 1,000 generated requests over every
operation and phase with every check; prints the counts (requests, per status class and phase, failures by
check). Fails only on a broken run: too few requests, or a failure the bounded test (test_api_schema) missed.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.server.api_support import server_env, start_server

pytestmark = pytest.mark.performance
pytest.importorskip("schemathesis", reason="the dev extra is not installed (pip install -e '.[dev]')")
MIN_REQUESTS = 1000


def test_schemathesis_full_run_prints_counts(tmp_path: Path) -> None:
    from tests.server.api_schema_support import run_schemathesis

    server = start_server(server_env(tmp_path / "data"), tmp_path / "server.log")
    try:
        started = time.perf_counter()
        tally = run_schemathesis(server, max_examples=25, seed=16, max_steps=10)
        elapsed = time.perf_counter() - started
    finally:
        server.stop()
    print(f"\nschemathesis full run: {elapsed:.1f} s\n{tally.summary()}")
    for line in sorted(set(tally.failures)):
        print("  " + line)
    assert tally.requests >= MIN_REQUESTS, tally.summary()
    assert not tally.failures and not tally.errors, tally.summary()
