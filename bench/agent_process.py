"""`python -m bench.agent_process <run_agent options>`: `manage.py run_agent`, with the SDKs'
per-message INFO logging turned down and the database thread named for /proc.

With the site's default LOG_LEVEL=INFO, ably-python logs every protocol message it sends or
receives and httpx every request: at hundreds of messages a second that logging alone costs more
CPU than the relaying being measured. The benchmark keeps the agent's own INFO lines (one per
reply, which it reads) and measures the agent as it would run with those SDK loggers at WARNING.

Threads are named in /proc so the relay benchmark can split the agent's CPU by thread. On
Python 3.11 a thread's Python name never reaches the kernel (3.14 does this itself), so every
thread shows as `python` in /proc/<pid>/task/<tid>/comm. Here every thread started through
`threading` gives the kernel its Python name as it starts (`uvloop_0`: a worker of uvloop's
default executor, where `asyncio.to_thread` runs), and the agent's database thread is `agent-db`:
Django's one thread for sync code (asgiref's `SyncToAsync.single_thread_executor`), which
`conversations.agent.store.db` reaches through `sync_to_async(thread_sensitive=True)`. Naming it
only starts that executor's thread early; the agent's work runs as it would.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from pathlib import Path
from types import FrameType

# The name the relay benchmark looks for in /proc/<pid>/task/<tid>/comm (15 bytes at most).
DATABASE_THREAD_NAME = "agent-db"


def _name_in_proc(name: str) -> None:
    """This thread's name in /proc (the kernel keeps 15 bytes)."""
    encoded = name.encode()[:15].decode(errors="ignore")
    Path(f"/proc/self/task/{threading.get_native_id()}/comm").write_text(encoded)


def name_new_threads() -> None:
    """Every thread started from now on takes its Python name in /proc as it starts.

    `threading.setprofile` installs a profile function in each new thread before its `run()`;
    this one names the thread at its first event and removes itself, so it costs nothing after.
    """

    def name_then_stop_profiling(frame: FrameType, event: str, arg: object) -> None:
        sys.setprofile(None)
        with contextlib.suppress(OSError):
            _name_in_proc(threading.current_thread().name)

    threading.setprofile(name_then_stop_profiling)


def name_database_thread() -> None:
    """Give Django's thread for sync code its name in /proc (see the module docstring)."""
    from asgiref.sync import SyncToAsync

    SyncToAsync.single_thread_executor.submit(_name_in_proc, DATABASE_THREAD_NAME).result()


def main(argv: list[str]) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")
    import django

    django.setup()
    for name in ("ably", "httpx", "httpcore", "websockets"):
        logging.getLogger(name).setLevel(logging.WARNING)
    name_new_threads()
    name_database_thread()
    from django.core.management import call_command

    call_command("run_agent", *argv)


if __name__ == "__main__":
    main(sys.argv[1:])
