"""The agent relay benchmark, once in its tiny configuration, so it cannot rot.

Not a timing test: it checks the benchmark ran end to end and its figures are sane (every reply
arrived whole at every device, latencies were measured, the ratios were computed, the agent's
CPU was split by thread, its stream floor read every stream whole and its relay floor put every
reply whole on its channel).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def run_bench(name: str, tmp_path: Path, *extra: str, timeout: float = 170) -> tuple[str, dict]:
    output = tmp_path / f"{name}.json"
    completed = subprocess.run(
        [sys.executable, "-m", "bench", name, "--tiny", "--json", str(output), *extra],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    lines = [line for line in completed.stdout.splitlines() if line.strip()]
    assert lines[-1].startswith(f"SUMMARY {name}: "), completed.stdout[-2000:]
    return completed.stdout, json.loads(output.read_text())


@pytest.mark.slow
@pytest.mark.timeout(200)
def test_agent_relay_tiny_delivers_every_reply_intact(tmp_path):
    stdout, figures = run_bench("agent_relay", tmp_path)
    agent_runs = [run for run in figures["runs"] if run["publisher"] == "agent"]
    naive_runs = [run for run in figures["runs"] if run["publisher"] == "naive"]
    assert agent_runs and naive_runs
    for run in agent_runs:
        assert (run["lost"], run["duplicated"], run["reordered"]) == (0, 0, 0), run
        assert run["incomplete"] == 0, run
        assert run["deltas_measured"] > 0
        assert run["p50_ms"] > 0 and math.isfinite(run["p99_ms"])
        # start + the response create + at least one append + stop.
        assert run["published_per_reply"] >= 4
        assert run["tokens"] > 0 and run["cpu_us_per_token"] > 0
        # The CPU split by thread and the floor beside it: present and numbers (never judged).
        for key in (
            "loop_us_per_token",
            "db_us_per_token",
            "other_us_per_token",
            "db_cpu_ms_per_reply",
            "floor_us_per_token",
            "agent_floor_ratio",
            "relay_floor_us_per_token",
            "agent_relay_floor_ratio",
            "loop_lag_ms",
        ):
            assert math.isfinite(run[key]), (key, run)
        assert all(math.isfinite(us) for us in run["other_us_per_token_by_thread"].values())
        # The database thread was found by its name (else its CPU would hide in "other").
        assert not any("agent-db" in note for note in run["notes"]), run["notes"]
    # The floor read every stream whole, at every N the agent ran.
    floors = {floor["conversations"]: floor for floor in figures["floor_runs"]}
    assert set(floors) == {run["conversations"] for run in agent_runs}
    for n, floor in floors.items():
        assert floor["intact"] == n and not floor["errors"], floor
        assert floor["tokens"] > 0
    assert math.isfinite(figures["agent_floor_ratio"])
    # The relay floor: every reply read, published and folded whole by both devices.
    relay_floors = {floor["conversations"]: floor for floor in figures["relay_floor_runs"]}
    assert set(relay_floors) == set(floors)
    for n, floor in relay_floors.items():
        assert floor["intact"] == n and not floor["errors"], floor
        # start + the response create + stop at least.
        assert floor["tokens"] > 0 and floor["published_per_reply"] >= 3
    assert math.isfinite(figures["agent_relay_floor_ratio"])
    # One naive conversation stays under 50 msg/s and arrives whole.
    first_naive = naive_runs[0]
    assert first_naive["conversations"] == 1
    assert (first_naive["lost"], first_naive["duplicated"]) == (0, 0)
    assert first_naive["within_limits"]
    assert figures["naive_max_n"] >= 1
    assert "lost/dup/reord" in stdout
    for column in (
        "floor us/token",
        "x floor",
        "relay floor us/token",
        "x relay floor",
        "DB CPU ms/reply",
        "worst loop lag ms",
    ):
        assert column in stdout


@pytest.mark.slow
@pytest.mark.timeout(200)
def test_agent_relay_tiny_with_two_agents_reports_each_agents_share(tmp_path):
    """Issue 15's figure: two agent processes over the same conversations, each measured on its
    own. Every conversation is answered exactly once, by one of them, and every reply arrives
    whole; each agent's share is reported (not judged: a handful of conversations need not
    split evenly by hashing)."""
    stdout, figures = run_bench("agent_relay", tmp_path, "--share-k", "2")
    (run,) = figures["share_runs"]
    n = run["conversations"]
    assert run["agents"] == 2
    assert run["answered_once"] == n, run
    assert (run["lost"], run["duplicated"], run["reordered"]) == (0, 0, 0), run
    assert run["incomplete"] == 0 and run["wrong_text"] == 0, run
    agents = run["per_agent"]
    assert len({agent["agent_id"] for agent in agents}) == 2
    # Between them the agents held and answered each conversation once.
    assert sum(agent["attached"] for agent in agents) == n
    assert sum(agent["replies"] for agent in agents) == n
    # Each heard at least the prompts of the conversations it answered.
    for agent in agents:
        assert agent["messages_received"] >= agent["replies"], agent
    for measure in ("attached", "messages_received", "replies", "cpu_seconds"):
        shares = [agent[f"{measure}_share"] for agent in agents]
        assert all(math.isfinite(share) for share in shares), (measure, agents)
        assert measure in run["shares_within_tolerance"]
    # Of the work: the channels and replies split between them, nothing held twice.
    for measure in ("attached", "replies", "cpu_seconds"):
        assert math.isclose(sum(agent[f"{measure}_share"] for agent in agents), 1.0), agents
    assert "within 1/K +- 10%" in stdout
