"""The emulator fan-out benchmark, once in its tiny configuration: every published message
reaches every subscriber exactly once (counts, not timings)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.integration.test_bench_agent_relay import REPO_ROOT, run_bench


@pytest.mark.slow
def test_fanout_tiny_delivers_each_message_to_every_subscriber(tmp_path):
    _, figures = run_bench("ably_fanout", tmp_path)
    assert figures["published"] > 0
    assert (
        figures["delivered"] == figures["expected"] == figures["published"] * figures["subscribers"]
    )
    assert figures["paced_delivered"] == figures["paced_published"] * figures["subscribers"]
    assert figures["paced_p50_ms"] > 0


def test_runner_rejects_an_unknown_benchmark_with_usage():
    completed = subprocess.run(
        [sys.executable, "-m", "bench", "no_such_bench"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert completed.returncode == 2
    assert "unknown benchmark 'no_such_bench'" in completed.stderr
    assert "agent_relay" in completed.stderr
