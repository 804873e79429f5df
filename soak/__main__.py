"""`python -m soak [load|crash|restart ...] [--tiny]`: the long reliability scenarios, with figures.

- load:    200 conversations x 3 devices prompting non-stop for 240 s. Nothing may be lost or
           doubled; the agent's and the stand-ins' memory must stay flat.
- crash:   kill -9 the agent mid-reply 20 times under load, prompts arriving while it is dead.
           0 prompts lost, no reply `streaming` for more than 30 s, every device final.
- restart: the Ably stand-in restarted mid-reply 5 times; every reply ends whole everywhere.

The load phase runs 240 s (`SOAK_LOAD_SECONDS` changes it): memory is judged after 150 s, once
the Ably stand-in's 2-minute resume window has filled. `--tiny` shrinks every scenario to
seconds (a pytest test runs it). Each scenario runs in its own Python process on its own
scratch SQLite database; services are child processes so their memory is their own. Each
prints a table and a `SUMMARY <name>: ...` line, and exits non-zero if a promise was broken.
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
}
USAGE = "usage: python -m soak [SCENARIO ...] [--tiny]\nscenarios:\n" + "\n".join(
    f"  {name:8} {about}" for name, about in SCENARIOS.items()
)


def main(argv: list[str]) -> int:
    tiny = "--tiny" in argv
    names = [a for a in argv if not a.startswith("-")] or list(SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown or any(a.startswith("-") and a != "--tiny" for a in argv):
        print(USAGE, file=sys.stderr)
        return 2
    print(f"# make soak: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(f"# machine: {machine_description()}; load average {load_average()}", flush=True)
    failed = []
    for name in names:
        started = time.monotonic()
        result = subprocess.run(
            [PYTHON, "-m", "soak.scenarios", name, *(["--tiny"] if tiny else [])], cwd=REPO_ROOT
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
