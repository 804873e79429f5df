"""The agent's database work per reply, alone: CPU milliseconds and queries (issue 14).

Runs, in one thread, what the agent's database thread runs for one reply to a new conversation
(attach: `conversation_exists`; first prompt: `sender_may_write`; then `record_prompt`,
`claim_with_context` and `finish_reply`), each wrapped as `store.db()` wraps it, for N
conversations, and prints the thread's CPU time and the queries per reply and per unit. Far
quicker and steadier than `bench.agent_relay` (whose "DB CPU ms/reply" column is the figure
this reproduces), so a change to the agent's queries can be measured in seconds:

    python -m bench.agent_db [N]                    # SQLite, a scratch file
    DATABASE_URL=postgres://... python -m bench.agent_db [N]   # an existing, empty database

Not part of `python -m bench`: it has no baseline to compare with, only before and after.
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

from bench import common

DEFAULT_REPLIES = 300
WARM_UP = 20


def run(replies: int) -> dict[str, Any]:
    from django.contrib.auth import get_user_model
    from django.db import close_old_connections, connection

    from conversations import actions, events, realtime
    from conversations.agent import store
    from conversations.models import Conversation

    user = get_user_model().objects.create(username=f"agent-db-{uuid.uuid4().hex[:8]}")
    client_id = realtime.client_id_for_user(user)
    total = replies + WARM_UP
    conversations = [Conversation(owner=user) for _ in range(total)]
    Conversation.objects.bulk_create(conversations)

    queries: Counter[str] = Counter()
    cpu: dict[str, float] = {}
    current = [""]

    def count(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        queries[current[0]] += 1
        return execute(sql, params, many, context)

    def unit(name: str, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        # As `store.db()` runs it.
        current[0] = name
        started = time.thread_time()
        close_old_connections()
        try:
            return function(*args, **kwargs)
        finally:
            close_old_connections()
            cpu[name] = cpu.get(name, 0.0) + time.thread_time() - started

    def one_reply(conversation: Conversation) -> None:
        conversation_id = str(conversation.pk)
        unit("attach", store.conversation_exists, conversation_id)
        unit("may_write", store.sender_may_write, conversation_id, client_id)
        intake = unit(
            "intake",
            store.record_prompt,
            conversation_id,
            prompt_id=str(uuid.uuid4()),
            text="Tell me something worth knowing about the sea.",
            client_id=client_id,
            parent_id=None,
            edit_of=None,
            attachment_ids=[],
        )
        prompt = intake.prompt
        assert prompt is not None and intake.path is not None
        claim = unit(
            "claim",
            store.claim_with_context,
            prompt,
            response_id=str(uuid.uuid4()),
            model="claude-bench",
            agent_id="bench-agent-db",
            request_id=None,
            wait_for_earlier=True,
            default_system="You are a helpful assistant.",
            token_budget=100_000,
            rate_window_start=store.now(),
        )
        assert claim.reply is not None and claim.context is not None
        finished = unit(
            "finish",
            actions.finish_reply,
            claim.reply,
            status=events.Status.COMPLETE,
            text="word " * 300,
            stop_reason="end_turn",
            input_tokens=20,
            output_tokens=300,
            first_token_at=store.now(),
            publish=lambda channel, event: None,
        )
        assert finished

    with connection.execute_wrapper(count):
        for conversation in conversations[:WARM_UP]:
            one_reply(conversation)
        queries.clear()
        cpu.clear()
        wall = time.perf_counter()
        for conversation in conversations[WARM_UP:]:
            one_reply(conversation)
        wall = time.perf_counter() - wall
    names = ["attach", "may_write", "intake", "claim", "finish"]
    return {
        "vendor": connection.vendor,
        "replies": replies,
        "cpu_ms_per_reply": sum(cpu.values()) / replies * 1e3,
        "wall_ms_per_reply": wall / replies * 1e3,
        "queries_per_reply": sum(queries.values()) / replies,
        "by_unit": {
            name: (cpu.get(name, 0.0) / replies * 1e3, queries[name] / replies) for name in names
        },
    }


def main() -> None:
    replies = int(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_REPLIES
    url = os.environ.get("DATABASE_URL", "")
    if url.startswith("postgres"):
        import django

        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")
        os.environ.setdefault("LOG_LEVEL", "WARNING")
        django.setup()
        from django.core.management import call_command

        call_command("migrate", verbosity=0, interactive=False)
        result = run(replies)
    else:
        with common.workdir("agent-db") as workdir:
            common.setup_django(workdir / "bench.sqlite3")
            result = run(replies)
    rows = [[name, cpu_ms, count] for name, (cpu_ms, count) in result["by_unit"].items()] + [
        ["total", result["cpu_ms_per_reply"], result["queries_per_reply"]]
    ]
    common.print_table(
        f"Agent DB work per reply, {result['vendor']}, {replies} replies",
        ["unit", "CPU ms", "queries"],
        rows,
    )
    print(
        f"SUMMARY agent_db ({result['vendor']}): {result['cpu_ms_per_reply']:.2f} CPU ms/reply, "
        f"{result['queries_per_reply']:.1f} queries/reply, "
        f"{result['wall_ms_per_reply']:.2f} wall ms/reply",
        flush=True,
    )


if __name__ == "__main__":
    main()
