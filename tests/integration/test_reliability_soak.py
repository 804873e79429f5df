"""`python -m soak` works: its scenarios, shrunk to seconds, keep every promise.

The full scenarios (200 conversations x 3 devices, 20 kills, 5 stand-in restarts, issue 13's
defects at full size, on SQLite and Postgres) run with `make soak`; their figures are in
docs/reliability.md. The crash and restart scenarios have pytest counterparts of their own
(test_reliability_agent_crash.py, test_reliability_restart.py).

Issue 13's scenarios judge every device's final text against the database and a fresh reader of
the channel's history (soak/oracle.py). Here they run in `--tiny` mode, one subprocess each (each
starts its own stand-ins, agents and scratch database). On a Postgres run of the suite
(DATABASE_URL=postgres://...) the ones where the database matters run on a scratch Postgres
database of their own on that server. Time limits are not judged here (SOAK_TIMING=off): the
figures are printed, and `make soak` judges them.

Issue 15's `scaleout` (soak/scaleout.py) runs here too: agents joining, stopping and dying under
load, with a 2 s presence timeout instead of Ably's 15 s.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def soak_environment() -> tuple[dict[str, str], list[str]]:
    """The scenarios' environment, and `--postgres` when the suite itself runs on Postgres."""
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env["SOAK_TIMING"] = "off"
    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith(("postgres://", "postgresql://")):
        return env, []
    parts = urlsplit(url)
    credentials = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    env["SOAK_POSTGRES_SERVER"] = f"postgres://{credentials}{parts.hostname}:{parts.port or 5432}"
    return env, ["--postgres"]


def run_soak(*arguments: str, timeout: float, database_matters: bool = False) -> str:
    env, postgres = soak_environment()
    completed = subprocess.run(
        [sys.executable, "-m", "soak", *arguments, *(postgres if database_matters else [])],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    output = completed.stdout
    assert completed.returncode == 0, output[-4000:] + completed.stderr[-3000:]
    return output


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


@pytest.mark.slow
def test_three_agents_with_the_database_failing_during_intake_lose_no_prompt():
    # dbfail is the load shape with 3 agents plus the failing database: it covers `agents` too.
    output = run_soak("dbfail", "--tiny", timeout=170, database_matters=True)
    summary = re.search(
        r"SUMMARY dbfail: ok: \w+: (\d+) prompts, 0 lost .* 0 device replies not final, "
        r"0 answered twice, 0 device/DB disagreements, 0 reader/DB disagreements.*; "
        r"(\d+) lock rounds",
        output,
    )
    assert summary, output[-3000:]
    assert int(summary.group(1)) > 0 and int(summary.group(2)) > 0, summary.group(0)


@pytest.mark.slow
def test_nul_and_malformed_prompts_are_answered_or_refused_at_the_senders_devices():
    output = run_soak("malformed", "--tiny", timeout=170, database_matters=True)
    assert re.search(r"SUMMARY malformed: ok: \w+: \d+ cases, 0 failed", output), output[-3000:]
    for case in ("binary data", "object data", "no promptId", "bad promptId", "headers not an"):
        assert re.search(rf"{case}.*refusal on both devices", output), output[-3000:]


@pytest.mark.slow
def test_a_second_agent_with_a_running_agents_id_is_refused_and_the_reply_stays_whole():
    output = run_soak("dupid", "--tiny", timeout=170)
    assert "SUMMARY dupid: ok:" in output, output[-3000:]


@pytest.mark.slow
def test_kill_9_as_the_agent_publishes_stop_leaves_devices_and_database_agreeing():
    output = run_soak("stopcrash", "--tiny", timeout=170, database_matters=True)
    assert "SUMMARY stopcrash: ok:" in output, output[-3000:]


@pytest.mark.slow
def test_the_ably_stand_in_restarted_empty_mid_reply_leaves_every_device_whole():
    output = run_soak("ablywipe", "--tiny", timeout=170)
    assert "SUMMARY ablywipe: ok:" in output, output[-3000:]


@pytest.mark.slow
def test_a_model_that_never_sends_headers_ends_in_an_error_on_every_device():
    output = run_soak("noheaders", "--tiny", timeout=170)
    assert "SUMMARY noheaders: ok:" in output, output[-3000:]
    assert "error:1" in output, output[-3000:]


@pytest.mark.slow
def test_agents_joining_stopping_and_killed_mid_reply_lose_and_double_nothing():
    # Issue 15: 3 agents under load, a 4th joins, one is stopped, one kill -9'd mid-reply.
    output = run_soak("scaleout", "--tiny", timeout=240, database_matters=True)
    summary = re.search(
        r"SUMMARY scaleout: ok: \w+: (\d+) prompts, 0 lost .* 0 device replies not final, "
        r"0 answered twice, 0 device/DB disagreements, 0 reader/DB disagreements.*; "
        r"kill -9 -> its (\d+) streaming replies final in DB",
        output,
    )
    assert summary, output[-3000:]
    assert int(summary.group(1)) > 0 and int(summary.group(2)) > 0, summary.group(0)


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
