"""`python -m soak` works: its load scenario, shrunk to seconds, keeps every promise.

The full scenarios (200 conversations x 3 devices for 60 s, 20 kills, 5 stand-in restarts) run
with `make soak`; their figures are in docs/reliability.md. The crash and restart scenarios have
pytest counterparts of their own (test_reliability_agent_crash.py, test_reliability_restart.py).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_the_tiny_load_soak_loses_nothing_and_prints_its_figures():
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    completed = subprocess.run(
        [sys.executable, "-m", "soak", "load", "--tiny"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=170,
    )
    output = completed.stdout
    assert completed.returncode == 0, output[-3000:] + completed.stderr[-3000:]
    summary = re.search(r"SUMMARY load: ok: (\d+) prompts, 0 lost, 0 wrong, 0 errors", output)
    assert summary and int(summary.group(1)) > 0, output[-2000:]
    assert "## memory (RSS MiB)" in output


def test_an_unknown_scenario_is_a_usage_error():
    completed = subprocess.run(
        [sys.executable, "-m", "soak", "nonsense"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert completed.returncode == 2
    assert "usage: python -m soak" in completed.stderr
