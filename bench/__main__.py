"""`python -m bench` runs every benchmark in turn; `python -m bench NAME [--tiny] [--json F]` one.

Each benchmark runs in its own Python process: each sets Django up on its own scratch database,
and a fresh interpreter keeps one benchmark's leftovers (threads, memory) out of the next.
Each prints a table whose last line is `SUMMARY <name>: ...`; the full run ends with all the
summary lines together.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
import time
from pathlib import Path

from bench.common import PYTHON, REPO_ROOT, load_average, machine_description

BENCHMARKS = {
    "agent_relay": "Agent relay vs the naive publisher",
    "token_endpoint": "/ably/token under gunicorn, beside a TokenRequest exchange",
    "pages": "Conversation page render, and token-to-paint in Chromium",
    "ably_fanout": "Ably stand-in fan-out: 1 publisher -> 1,000 subscribers",
}
# Benchmark name -> module, where they differ.
MODULES = {"ably_fanout": "bench.fanout"}
USAGE = (
    "usage: python -m bench [--tiny] [--write-docs docs/benchmarks.md]   run every benchmark\n"
    "       python -m bench NAME [--tiny] [--json FILE]\n"
    "benchmarks:\n" + "\n".join(f"  {name:15} {about}" for name, about in BENCHMARKS.items())
)


RESULTS_START = "<!-- bench results: start -->"
RESULTS_END = "<!-- bench results: end -->"


def write_docs(path: Path, output: list[str]) -> None:
    """Replace the results block of docs/benchmarks.md with this run's output."""
    text = path.read_text()
    if RESULTS_START not in text or RESULTS_END not in text:
        raise SystemExit(f"{path} has no {RESULTS_START} ... {RESULTS_END} block")
    head, rest = text.split(RESULTS_START, 1)
    _, tail = rest.split(RESULTS_END, 1)
    block = "\n```text\n" + "".join(output).strip("\n") + "\n```\n"
    path.write_text(f"{head}{RESULTS_START}{block}{RESULTS_END}{tail}")


def run_all(extra: list[str], docs: Path | None = None) -> int:
    output: list[str] = []

    def say(line: str) -> None:
        output.append(line + "\n")
        print(line, flush=True)

    say(f"# make bench: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    say(f"# machine: {machine_description()}; load average at start {load_average()}")
    summaries: list[str] = []
    failed = 0
    for name in BENCHMARKS:
        started = time.monotonic()
        # Streamed line by line: a benchmark reports progress while it runs.
        process = subprocess.Popen(
            [PYTHON, "-m", "bench", name, *extra],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert process.stdout is not None
        lines = []
        for line in process.stdout:
            output.append(line)
            sys.stdout.write(line)
            sys.stdout.flush()
            if line.startswith("SUMMARY "):
                lines.append(line.rstrip("\n"))
        process.wait()
        took = time.monotonic() - started
        if process.returncode != 0 or not lines:
            failed += 1
            summaries.append(f"FAILED {name} (exit {process.returncode}) after {took:.0f}s")
        else:
            summaries.append(f"{lines[-1]} [{took:.0f}s]")
    say(f"\n# load average at end {load_average()}")
    say("\n## Summary")
    for line in summaries:
        say(line)
    if docs is not None:
        write_docs(docs, output)
    return 1 if failed else 0


def main(argv: list[str]) -> int:
    if not argv or argv[0].startswith("-"):
        docs = None
        if "--write-docs" in argv:
            at = argv.index("--write-docs")
            if at + 1 >= len(argv):
                print(USAGE, file=sys.stderr)
                return 2
            docs = Path(argv[at + 1])
            argv = argv[:at] + argv[at + 2 :]
        if any(a != "--tiny" for a in argv):
            print(USAGE, file=sys.stderr)
            return 2
        return run_all(argv, docs)
    name, rest = argv[0], argv[1:]
    if name not in BENCHMARKS:
        print(f"unknown benchmark {name!r}\n{USAGE}", file=sys.stderr)
        return 2
    module = importlib.import_module(MODULES.get(name, f"bench.{name}"))
    module.main(rest)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
