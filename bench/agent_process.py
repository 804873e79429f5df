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

With BENCH_COUNT_RECEIVED=1 (the relay benchmark's K-agent runs) the process also counts what
its Ably connections delivered on conversation (`ai:`) channels: the messages and the presence
messages in every protocol message the SDK hands a channel. The Ably stand-in does not count its
own traffic (like Ably, its stats are an app-wide surface), so the count is taken where the
messages land. The line `bench received messages=M presence=P` is printed when the benchmark
writes `counts` on standard input (a thread blocked on stdin until then: nothing runs per
message but the count itself).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

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


COUNT_RECEIVED_ENV = "BENCH_COUNT_RECEIVED"
RECEIVED_LINE_PREFIX = "bench received "
CONVERSATION_CHANNEL_PREFIX = "ai:"


def count_received() -> dict[str, int]:
    """Count the messages and presence messages delivered on `ai:` channels; the counts."""
    from ably.realtime.channel import RealtimeChannel
    from ably.transport.websockettransport import ProtocolMessageAction

    presence_actions = (ProtocolMessageAction.PRESENCE, ProtocolMessageAction.SYNC)
    counts = {"messages": 0, "presence": 0}
    deliver = RealtimeChannel._on_message

    def counting(channel: RealtimeChannel, proto_msg: dict[str, Any]) -> None:
        if channel.name.startswith(CONVERSATION_CHANNEL_PREFIX):
            action = proto_msg.get("action")
            if action == ProtocolMessageAction.MESSAGE:
                counts["messages"] += len(proto_msg.get("messages") or ())
            elif action in presence_actions:
                counts["presence"] += len(proto_msg.get("presence") or ())
        deliver(channel, proto_msg)

    RealtimeChannel._on_message = counting
    return counts


def answer_counts_on_stdin(counts: dict[str, int]) -> None:
    """Print the counts each time `counts` arrives on standard input."""

    def answer() -> None:
        for line in sys.stdin:
            if line.strip() == "counts":
                print(
                    f"{RECEIVED_LINE_PREFIX}messages={counts['messages']} "
                    f"presence={counts['presence']}",
                    flush=True,
                )

    threading.Thread(target=answer, name="bench-counts", daemon=True).start()


def main(argv: list[str]) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")
    import django

    django.setup()
    for name in ("ably", "httpx", "httpx2", "httpcore", "websockets"):
        logging.getLogger(name).setLevel(logging.WARNING)
    name_new_threads()
    name_database_thread()
    if os.environ.get(COUNT_RECEIVED_ENV) == "1":
        answer_counts_on_stdin(count_received())
    from django.core.management import call_command

    call_command("run_agent", *argv)


if __name__ == "__main__":
    main(sys.argv[1:])
