"""What every benchmark shares: tables, percentiles, process accounting, services, the database.

Benchmarks start their servers as separate processes (never threads of the driver), so a
process's CPU time and RSS belong to one component, and the driver's own work (subscribers,
load generators) does not steal the measured component's interpreter.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
# The stand-in's development key (chatsite.settings.DEV_ABLY_API_KEY).
DEV_ABLY_KEY = "devapp.devkey:dev-secret-change-me"


class BenchError(RuntimeError):
    """A benchmark could not run (a service did not start, a run timed out)."""


# --- figures ----------------------------------------------------------------------------------


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile; NaN for no values (printed as "-")."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def fmt(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        if math.isinf(value):
            return "inf"
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[str(h) for h in headers], *[[fmt(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    print(f"\n## {title}")
    for index, row in enumerate(cells):
        print("  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True)))
        if index == 0:
            print("  ".join("-" * width for width in widths))
    sys.stdout.flush()


def note(text: str) -> None:
    print(text, flush=True)


@dataclass
class BenchResult:
    """A benchmark's figures: the table it printed, its summary line, numbers for tests."""

    name: str
    summary: str
    figures: dict[str, Any] = field(default_factory=dict)

    def finish(self) -> BenchResult:
        # The summary is the last line a benchmark prints (the runner and docs rely on it).
        print(f"SUMMARY {self.name}: {self.summary}", flush=True)
        return self


def write_json(path: str | None, result: BenchResult) -> None:
    if path:
        Path(path).write_text(json.dumps({"name": result.name, **result.figures}, default=str))


def machine_description() -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"{os.cpu_count()} CPUs ({cpu}), Python {platform.python_version()}, {platform.system()}"


def load_average() -> str:
    with contextlib.suppress(OSError):
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return "-"


# --- processes --------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # After the command name: field 14 (utime) and 15 (stime) of stat(5) are at 11 and 12.
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def thread_cpu_seconds(pid: int) -> dict[int, tuple[str, float]]:
    """Each live thread of a process: thread id -> (its name in /proc, CPU seconds so far).

    From the scheduler's nanosecond count (`/proc/<pid>/task/<tid>/schedstat`) where the kernel
    keeps one, else from the clock ticks of `stat` (10 ms steps: too coarse for a short run).
    The main thread's id is the process id. A thread that has exited is missing here, but its
    time stays in `cpu_seconds(pid)`.
    """
    threads: dict[int, tuple[str, float]] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):  # it exited between the listing and the read
            name = (task / "comm").read_text().strip()
            try:
                seconds = int((task / "schedstat").read_text().split()[0]) / 1e9
            except (OSError, IndexError, ValueError):
                fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
                seconds = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
            threads[int(task.name)] = (name, seconds)
    return threads


def rss_bytes(pid: int) -> int:
    fields = Path(f"/proc/{pid}/statm").read_text().split()
    return int(fields[1]) * PAGE_SIZE


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        if process.poll() is not None:
            raise BenchError(f"{process.args!r} exited {process.returncode}:\n{tail(log)}")
        if time.monotonic() > deadline:
            raise BenchError(f"{process.args!r} did not listen on {port}:\n{tail(log)}")
        time.sleep(0.05)


def tail(path: Path, lines: int = 30) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


class Service:
    """A child process with its output in a log file; stopped with SIGTERM, then SIGKILL."""

    def __init__(
        self, name: str, args: list[str], workdir: Path, env: dict[str, str] | None = None
    ) -> None:
        self.name = name
        self.log_path = workdir / f"{name}.log"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            args,
            cwd=REPO_ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            stdin=subprocess.PIPE,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def command(self, line: str) -> None:
        """Send one line to the process's standard input."""
        assert self.process.stdin is not None
        self.process.stdin.write(line.encode() + b"\n")
        self.process.stdin.flush()

    def wait_for_output(self, marker: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while marker not in self.output():
            if self.process.poll() is not None:
                raise BenchError(
                    f"{self.name} exited {self.process.returncode}:\n{tail(self.log_path)}"
                )
            if time.monotonic() > deadline:
                raise BenchError(f"{self.name} did not print {marker!r}:\n{tail(self.log_path)}")
            time.sleep(0.05)

    def stop(self, timeout: float = 10.0) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self._log.close()


def start_ably(workdir: Path, **limits: int) -> tuple[Service, int]:
    port = free_port()
    args = [PYTHON, "-m", "emulators.ably", "--port", str(port), "--log-level", "warning"]
    for option, value in limits.items():
        args += [f"--{option.replace('_', '-')}", str(value)]
    service = Service("ably", args, workdir)
    wait_for_port(port, service.process, 30, service.log_path)
    return service, port


@contextlib.contextmanager
def services() -> Iterator[list[Service]]:
    """Every service appended to the list is stopped on exit, last started first."""
    started: list[Service] = []
    try:
        yield started
    finally:
        for service in reversed(started):
            service.stop()


@contextlib.contextmanager
def workdir(prefix: str) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=f"bench-{prefix}-"))
    try:
        yield path
    finally:
        if not os.environ.get("BENCH_KEEP_LOGS"):
            shutil.rmtree(path, ignore_errors=True)


# --- Django and the database ------------------------------------------------------------------


def setup_django(database_path: Path, **environment: str) -> dict[str, str]:
    """Configure Django in this process on a fresh SQLite file and migrate it.

    Returns the environment child processes (the agent, gunicorn) need to use the same database
    and stand-ins. Called once per driver process; Django cannot be re-pointed after setup.
    """
    env = {
        "DJANGO_SETTINGS_MODULE": "chatsite.settings",
        "DATABASE_URL": f"sqlite:///{database_path}",
        "DEBUG": "false",
        "LOG_LEVEL": "WARNING",
        **environment,
    }
    os.environ.update(env)
    import django
    from django.conf import settings

    if settings.configured:
        current = settings.DATABASES["default"]["NAME"]
        if str(current) != str(database_path):
            raise BenchError(
                "Django is already configured in this process; run benchmarks through "
                "`python -m bench`, not inside a process that set Django up"
            )
    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0, interactive=False)
    return env


def bulk_users(count: int, prefix: str) -> list[Any]:
    """`count` users with unusable passwords (no hashing cost), created in one statement."""
    from django.contrib.auth import get_user_model

    User = get_user_model()  # noqa: N806 - Django's idiom
    users = [User(username=f"{prefix}{index}", password="!") for index in range(count)]
    User.objects.bulk_create(users, batch_size=500)
    return list(User.objects.filter(username__startswith=prefix).order_by("pk"))
