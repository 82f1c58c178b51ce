"""A short run of the service load test (benchmarks/serve_load.py): concurrent valid and bad requests on loopback."""

from __future__ import annotations

import pytest
from conftest import benchmark_module

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install 'vaekit[serve]'")
pytest.importorskip("psutil", reason="psutil (a dev dependency) measures the server's memory")
pytest.importorskip("httpx2", reason="httpx2 (a dev dependency) is the load test's client")


@pytest.fixture(scope="module")
def serve_load():
    with benchmark_module("serve_load") as module:
        yield module


@pytest.mark.slow
def test_a_few_seconds_of_mixed_load_get_no_5xx_and_bounded_memory(serve_load, trained_run):
    result = serve_load.run_load_test(str(trained_run), duration=3.0, concurrency=6, max_rss_growth_mib=64.0)
    failed = [name for name, ok in result["checks"].items() if not ok]
    assert not failed, (failed, result["rows"], result["rss"], result["server_stderr"])
    kinds = {row["kind"]: row for row in result["rows"]}
    assert sum(row["count"] for row in kinds.values() if row["valid"]) > 30
    assert sum(row["count"] for row in kinds.values() if not row["valid"]) > 10
    assert all(int(status) < 500 for row in kinds.values() for status in row["statuses"])
    assert result["server_exit_code"] == 0

