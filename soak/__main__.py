"""`python -m soak [SCENARIO ...] [--tiny] [--postgres]`: the long reliability scenarios, with figures.

- load:    200 conversations x 3 devices prompting non-stop for 240 s. Nothing may be lost or
           doubled; the agent's and the stand-ins' memory must stay flat.
- crash:   kill -9 the agent mid-reply 20 times under load, prompts arriving while it is dead.
           0 prompts lost, no reply `streaming` for more than 30 s, every device final.
- restart: the Ably stand-in restarted mid-reply 5 times; every reply ends whole everywhere.
- agents, dbfail, malformed, dupid, stopcrash, ablywipe, noheaders: issue 13's defects, each
           judged on every device against the database and a fresh reader of the channel
           (soak/faults.py, soak/oracle.py).
- scaleout: issue 15: 3 agents share 60 conversations x 2 devices under load; a 4th joins, one
           stops cleanly, one is killed mid-reply: 0 lost or doubled, 0 left streaming, and the
           time until the dead agent's conversations answer again (soak/scaleout.py).

The load phase runs 240 s (`SOAK_LOAD_SECONDS` changes it): memory is judged after 150 s, once
the Ably stand-in's 2-minute resume window has filled. `--tiny` shrinks every scenario to
seconds (pytest runs them so). Each scenario runs in its own Python process on its own scratch
SQLite database (`--postgres`: a scratch Postgres database); services are child processes so
their memory is their own. Each prints a table and a `SUMMARY <name>: ...` line, and exits
non-zero if a promise was broken.
"""

from __future__ import annotations

import subprocess
import sys
import time

from bench.common import PYTHON, REPO_ROOT, load_average, machine_description

SCENARIOS = {
    "load": "200 conversations x 3 devices for 240 s: loss, doubles, latency, memory",
    "crash": "kill -9 the agent mid-reply 20x under load",
    "restart": "restart the Ably stand-in mid-reply 5x",
    # Issue 13 (soak/faults.py): each judged on every device against the database and a reload.
    "agents": "3 agent processes, 200 conversations x 3 devices for 120 s: 0 lost",
    "dbfail": "3 agents, 50 conversations, the database failing during intake: 0 lost",
    "malformed": "a NUL prompt, malformed prompts, a prompt to a deleted conversation",
    "dupid": "a second agent with a running agent's id: refused; the reply stays whole",
    "stopcrash": "kill -9 the agent as it publishes `stop` (before/after it reached Ably)",
    "ablywipe": "kill -9 the Ably stand-in mid-reply, restart it empty, 5x",
    "noheaders": "a model that never sends headers: error within the stall timeout",
    # Issue 15 (soak/scaleout.py).
    "scaleout": "3 agents under load; a 4th joins, one stops, one is kill -9'd mid-reply",
}
OPTIONS = ("--tiny", "--postgres")
USAGE = (
    "usage: python -m soak [SCENARIO ...] [--tiny] [--postgres]\n"
    "  --postgres  run on a fresh Postgres database (SOAK_POSTGRES_SERVER, default "
    "postgres://postgres@127.0.0.1:5432) instead of SQLite\nscenarios:\n"
    + "\n".join(f"  {name:9} {about}" for name, about in SCENARIOS.items())
)


def main(argv: list[str]) -> int:
    names = [a for a in argv if not a.startswith("-")] or list(SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown or any(a.startswith("-") and a not in OPTIONS for a in argv):
        print(USAGE, file=sys.stderr)
        return 2
    print(f"# make soak: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(f"# machine: {machine_description()}; load average {load_average()}", flush=True)
    failed = []
    for name in names:
        started = time.monotonic()
        result = subprocess.run(
            [PYTHON, "-m", "soak.scenarios", name, *[a for a in argv if a in OPTIONS]],
            cwd=REPO_ROOT,
        )
        print(
            f"# {name}: exit {result.returncode} in {time.monotonic() - started:.0f} s", flush=True
        )
        if result.returncode != 0:
            failed.append(name)
    if failed:
        print(f"FAILED: {', '.join(failed)}", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
