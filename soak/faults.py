"""Issue 13's scenarios: each defect the outside reliability run found, run on purpose.

Every scenario ends in `oracle.judge`: every device's final state against the database and a
fresh reader of the channel's history, not only devices against each other.

- agents:    3 agent processes under the load scenario's shape (every conversation prompting
             again as soon as its reply is final): every prompt stored and answered exactly once.
- dbfail:    the same with the database failing during intake: on SQLite an outside process
             holds the write lock for longer than the agents' busy timeout, at intervals; on
             Postgres a side connection locks the message table and then terminates the agents'
             connections (pg_terminate_backend).
- malformed: a prompt with a NUL character (stored and answered, or refused clearly), and
             malformed prompts (binary data, object data, no or a bad promptId, headers not an
             object, a prompt to a deleted conversation): each gets a `refusal` at the sender's
             devices, and the conversation still works.
- dupid:     a second agent started with the first one's --agent-id while the first streams: it
             refuses to start; the first one's reply ends whole everywhere.
- stopcrash: kill -9 of the agent at the moment it publishes `stop` (held by a proxy in front of
             the stand-in: `soak.proxy.StopTrap`), before and after `stop` reached Ably.
- ablywipe:  the Ably stand-in killed (kill -9) mid-reply and started again with empty state:
             devices get the whole text; seconds from the restart until every device is final.
- noheaders: a model that never sends response headers: devices get an error within the
             agent's stall timeout.

`--postgres` (see `soak.scenarios.run`) runs any of them on a fresh Postgres database.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from ably.util.exceptions import AblyException
from websockets.exceptions import ConnectionClosed

from bench import common
from bench.common import PYTHON, Service, percentile, print_table
from soak import oracle
from soak.oracle import VERDICT_HEADERS, Sent

REPLY_WAIT = 60.0
# A refusal (or any clear answer to a bad prompt) must reach the sender's devices within this.
REFUSAL_WAIT = 15.0
# After a kill or an outage every device must be final within this (issue 8's limit).
MAX_UNSETTLED_SECONDS = 30.0
FILLER = " ".join(f"w{i}" for i in range(40))


def timing_judged() -> bool:
    """Whether time limits fail a scenario. The pytest runs set SOAK_TIMING=off: tests judge
    behaviour, not speed on a shared machine; the figures are printed either way."""
    return os.environ.get("SOAK_TIMING", "on") != "off"


def words(prefix: str, count: int) -> str:
    return " ".join(f"{prefix}{i}" for i in range(count))


# --- stack helpers ------------------------------------------------------------------------------


def agent_args(agent_id: str | None, *extra: str) -> list[str]:
    identity = ["--agent-id", agent_id] if agent_id else []
    return [
        PYTHON,
        "-m",
        "bench.agent_process",
        *identity,
        "--connections",
        "4",
        "--no-titles",
        "--discovery-interval",
        "1",
        "--retry-base-delay",
        "0.1",
        *extra,
    ]


def launch(
    stack: Any,
    agent_id: str | None,
    *extra: str,
    env: dict[str, str] | None = None,
    wait: bool = True,
) -> Service:
    """An agent process (not waited for unless `wait`), stopped with the stack."""
    stack.agents += 1
    merged = {
        **stack.env,
        "LOG_LEVEL": "INFO",
        "PROMPT_RATE_LIMIT_PER_MINUTE": "0",
        **(env or {}),
    }
    agent = Service(f"agent-{stack.agents}", agent_args(agent_id, *extra), stack.workdir, merged)
    stack.services.append(agent)
    if wait:
        agent.wait_for_output(" ready: ", 90)
    return agent


async def launch_many(stack: Any, count: int, prefix: str, **kwargs: Any) -> list[Service]:
    """`count` agents with distinct ids, started together (each takes seconds to boot)."""
    agents = [
        launch(stack, f"{prefix}-{i}-{uuid.uuid4().hex[:4]}", wait=False, **kwargs)
        for i in range(count)
    ]
    await asyncio.gather(*(asyncio.to_thread(a.wait_for_output, " ready: ", 120) for a in agents))
    return agents


def relaunch_until_ready(
    stack: Any, agent_id: str, timeout: float = 60.0, **kwargs: Any
) -> tuple[Service, int, float]:
    """Start `agent_id` again after a kill: (the agent, attempts, seconds until ready).

    A process refused because its id still looks live (a lease not yet lapsed) is retried:
    that wait is part of the figure.
    """
    began = time.monotonic()
    attempts = 0
    while True:
        attempts += 1
        agent = launch(stack, agent_id, wait=False, **kwargs)
        try:
            agent.wait_for_output(" ready: ", 90)
            return agent, attempts, time.monotonic() - began
        except common.BenchError:
            if time.monotonic() - began > timeout:
                raise
            time.sleep(0.5)


@dataclass
class Conversation:
    conversation_id: str
    owner: Any
    devices: list[Any]


async def open_conversations(
    stack: Any, count: int, devices_each: int, *, recovering: bool = False
) -> list[Conversation]:
    """`count` users with one conversation each, `devices_each` attached devices apiece."""
    from asgiref.sync import sync_to_async

    from conversations import realtime
    from conversations.models import Conversation as ConversationRow
    from soak.devices import Device, Endpoint, RecoveringDevice

    def create() -> list[tuple[Any, Any, list[str]]]:
        users = common.bulk_users(count, f"soak{uuid.uuid4().hex[:6]}-")
        made = []
        for user in users:
            conversation = ConversationRow.objects.create(owner=user)
            tokens = [realtime.create_token(user, conversation) for _ in range(devices_each)]
            made.append((user, conversation, tokens))
        return made

    made = await sync_to_async(create)()
    semaphore = asyncio.Semaphore(50)

    async def attach(user: Any, conversation_id: Any, token: str) -> Any:
        async with semaphore:
            if recovering:
                device = RecoveringDevice(user, conversation_id, stack.ably_endpoint, token)
            else:
                device = Device(user, conversation_id, Endpoint(stack.ably_endpoint), token)
            return await device.attach()

    opened = []
    for user, conversation, tokens in made:
        devices = await asyncio.gather(*(attach(user, conversation.pk, t) for t in tokens))
        opened.append(Conversation(str(conversation.pk), user, list(devices)))
    return opened


async def close_all(conversations: list[Conversation]) -> None:
    await asyncio.gather(
        *(d.close() for c in conversations for d in c.devices), return_exceptions=True
    )


async def prompt(conversation: Conversation, text: str, **kwargs: Any) -> Sent:
    """The first device asks for exactly `text`; every device is expected to show it."""
    prompt_id = await conversation.devices[0].prompt(f"Say exactly: {text}")
    return Sent(
        conversation.conversation_id,
        prompt_id,
        conversation.devices,
        conversation.owner,
        expected=text,
        **kwargs,
    )


def log_counts(agents: list[Service], patterns: dict[str, str]) -> dict[str, int]:
    """How many agent log lines mention each pattern (e.g. the database errors it met)."""
    counts = dict.fromkeys(patterns, 0)
    for agent in agents:
        with contextlib.suppress(OSError):
            for line in agent.output().splitlines():
                lowered = line.lower()
                for name, pattern in patterns.items():
                    if pattern in lowered:
                        counts[name] += 1
    return counts


def report_verdict(title: str, verdict: oracle.Verdict, extra: dict[str, Any]) -> None:
    print_table(title, [*VERDICT_HEADERS, *extra], [[*verdict.row(), *extra.values()]])
    for problem in verdict.problems:
        common.note(f"  problem: {problem}")


# --- agents and dbfail: several agents under load -----------------------------------------------


@dataclass
class LoadRun:
    sent: list[Sent] = field(default_factory=list)
    totals: list[float] = field(default_factory=list)
    late: int = 0
    elapsed: float = 0.0


async def converse(conversations: list[Conversation], seconds: float) -> LoadRun:
    """Every conversation prompts again as soon as its reply is final on all its devices."""
    run = LoadRun()
    deadline = time.monotonic() + seconds

    async def one(index: int, conversation: Conversation) -> None:
        turn = 0
        while time.monotonic() < deadline:
            item = await prompt(conversation, f"c{index} t{turn} {FILLER}")
            run.sent.append(item)
            try:
                for device in conversation.devices:
                    await device.final_reply(item.prompt_id, REPLY_WAIT)
                run.totals.append(time.monotonic() - item.sent_at)
            except TimeoutError:
                run.late += 1  # judged at the end, after the drain
            turn += 1

    started = time.monotonic()
    await asyncio.gather(*(one(i, c) for i, c in enumerate(conversations)))
    run.elapsed = time.monotonic() - started
    return run


def sqlite_path(stack: Any) -> Path | None:
    url = stack.env.get("DATABASE_URL", "")
    return Path(url.removeprefix("sqlite:///")) if url.startswith("sqlite:///") else None


class DatabaseSaboteur:
    """Makes the database fail for the agents, `hold` seconds at a time, every `every` seconds.

    SQLite: an outside connection takes the write lock (BEGIN IMMEDIATE) and sits on it longer
    than the agents' busy timeout, so their writes fail with `database is locked`.
    Postgres: a side connection takes LOCK TABLE on the message table (the agents' queries on it
    queue up behind it), then terminates every other connection to the database
    (pg_terminate_backend), so the queued queries fail.
    """

    def __init__(self, stack: Any, hold: float, every: float) -> None:
        self.sqlite = sqlite_path(stack)
        self.database_url = stack.env["DATABASE_URL"]
        self.hold = hold
        self.every = every
        self.rounds = 0
        self.terminated = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="saboteur", daemon=True)

    def start(self) -> DatabaseSaboteur:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(self.hold + 10)

    def _run(self) -> None:
        while not self._stop.wait(self.every - self.hold):
            if self.sqlite is not None:
                self._lock_sqlite()
            else:
                self._lock_postgres()
            self.rounds += 1

    def _lock_sqlite(self) -> None:
        connection = sqlite3.connect(self.sqlite, timeout=60, isolation_level=None)
        try:
            connection.execute("BEGIN IMMEDIATE")
            self._stop.wait(self.hold)
            connection.execute("ROLLBACK")
        finally:
            connection.close()

    def _lock_postgres(self) -> None:
        import psycopg

        from conversations.models import Message

        url = self.database_url.replace("postgres://", "postgresql://", 1)
        with psycopg.connect(url) as connection:
            connection.execute(f"LOCK TABLE {Message._meta.db_table} IN ACCESS EXCLUSIVE MODE")
            self._stop.wait(self.hold)
            rows = connection.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                "AND backend_type = 'client backend'"
            ).fetchall()
            self.terminated += sum(1 for (done,) in rows if done)
            connection.commit()


async def agents_under_load(stack: Any, tiny: bool, *, sabotage: bool) -> tuple[bool, str]:
    name = "dbfail" if sabotage else "agents"
    conversations_count, devices_each, seconds = (4, 2, 8) if tiny else (200, 3, 120)
    if sabotage and not tiny:
        conversations_count, seconds = 50, 90
    seconds = float(os.environ.get("SOAK_LOAD_SECONDS", seconds))
    env: dict[str, str] = {}
    hold, every = (2.5, 4.0) if tiny else (3.0, 6.0)
    # SOAK_LOCK_HOLD / SOAK_LOCK_EVERY: e.g. a hold longer than SQLite's default 5 s busy
    # timeout fails the writes of an agent that has no SQLITE_BUSY_TIMEOUT setting (the old one).
    hold = float(os.environ.get("SOAK_LOCK_HOLD", hold))
    every = max(hold + 0.5, float(os.environ.get("SOAK_LOCK_EVERY", every)))
    if sabotage:
        # Below the lock holder's `hold`, so a write that waits for the lock fails (SQLite).
        env["SQLITE_BUSY_TIMEOUT"] = "1"
    agents = await launch_many(stack, 3, name, env=env)
    conversations = await open_conversations(stack, conversations_count, devices_each)
    common.note(f"{conversations_count} conversations x {devices_each} devices, 3 agents")
    saboteur = DatabaseSaboteur(stack, hold, every).start() if sabotage else None
    try:
        run = await converse(conversations, seconds)
    finally:
        if saboteur is not None:
            await asyncio.to_thread(saboteur.stop)
    await oracle.wait_final(run.sent, 30 if tiny else 180)
    verdict, _ = await oracle.judge(run.sent, stack.ably_endpoint)
    await close_all(conversations)
    logged = log_counts(
        agents,
        {
            "db locked": "database is locked",
            "db connection lost": "terminating connection",
            "tracebacks": "traceback",
        },
    )
    extra: dict[str, Any] = {
        "prompts/s": len(run.sent) / run.elapsed if run.elapsed else 0.0,
        "late >60s": run.late,
        "reply p50 s": percentile(run.totals, 0.5),
        "reply p95 s": percentile(run.totals, 0.95),
    }
    if saboteur is not None:
        extra["lock rounds"] = saboteur.rounds
        extra["backends killed"] = saboteur.terminated
    extra.update({f"log: {k}": v for k, v in logged.items()})
    report_verdict(
        f"{name}: 3 agents, {conversations_count} conversations x {devices_each} devices, "
        f"{seconds:.0f} s on {stack.database}",
        verdict,
        extra,
    )
    # The sabotage must have made the database fail, or this run proved nothing.
    bitten = saboteur is None or (
        saboteur.rounds > 0 and (logged["db locked"] > 0 or saboteur.terminated > 0)
    )
    summary = f"{stack.database}: {verdict.summary()}"
    if saboteur is not None:
        summary += (
            f"; {saboteur.rounds} lock rounds, {logged['db locked']} 'database is locked', "
            f"{saboteur.terminated} connections terminated"
        )
    return verdict.ok and bitten, summary


# --- malformed: NUL and hostile prompts ---------------------------------------------------------


async def wait_refusal(device: Any, after: int, prompt_id: str | None, timeout: float) -> Any:
    """The first `refusal` from the agent this device received after message index `after`."""
    from conversations import events

    def find() -> Any:
        for message in device.received[after:]:
            if message.name != events.Name.REFUSAL:
                continue
            if message.client_id != device.agent_client_id:
                continue
            headers = (message.extras or {}).get("headers") or {}
            if prompt_id is None or headers.get("promptId") == prompt_id:
                return message
        return None

    return await device.wait_for(find, timeout)


async def malformed(stack: Any, tiny: bool) -> tuple[bool, str]:
    from asgiref.sync import sync_to_async

    from conversations import actions, events
    from conversations.models import Conversation as ConversationRow, Message

    launch(stack, f"soak-malformed-{uuid.uuid4().hex[:4]}")
    conversations = await open_conversations(stack, 2, 2)
    main, doomed = conversations
    sender = main.devices[0]
    rows: list[list[Any]] = []
    failures = 0

    # A NUL in the prompt (Postgres rejects it in text columns): stored and answered, or refused.
    nul_item = await prompt(main, "hello\x00world")
    nul_item.expected = None
    nul_item.accept = frozenset({"complete", "error"})
    mark = len(sender.received)

    def answered_or_refused() -> Any:
        reply = sender.reply_for(nul_item.prompt_id)
        if reply is not None and reply.final:
            return reply
        return next(
            (
                m
                for m in sender.received[mark:]
                if m.name == events.Name.REFUSAL
                and m.client_id == sender.agent_client_id
                and ((m.extras or {}).get("headers") or {}).get("promptId") == nul_item.prompt_id
            ),
            None,
        )

    try:
        outcome_of_nul = await sender.wait_for(answered_or_refused, REPLY_WAIT)
    except TimeoutError:
        failures += 1
        outcome = "NOTHING (lost)"
    else:
        if getattr(outcome_of_nul, "name", None) == events.Name.REFUSAL:
            outcome = f"refused: {outcome_of_nul.data!r}"
        else:
            outcome = f"answered ({outcome_of_nul.status}, {outcome_of_nul.text!r})"
            verdict, _ = await oracle.judge([nul_item], stack.ably_endpoint)
            if not verdict.ok:
                failures += 1
                outcome += "; " + "; ".join(verdict.problems)
    stored = await sync_to_async(
        lambda: list(
            Message.objects.filter(prompt_id=nul_item.prompt_id).values_list("role", "text")
        )
    )()
    rows.append(["NUL in the text", outcome, f"rows {stored!r}"[:80]])

    cases: list[tuple[str, Any, Any, str | None]] = []
    for label, data, headers in [
        ("binary data", b"\x00\x01binary", "uuid"),
        ("object data", {"text": "Say exactly: object"}, "uuid"),
        ("no promptId", "Say exactly: no id", None),
        ("bad promptId", "Say exactly: bad id", "not-a-uuid"),
        ("headers not an object", "Say exactly: bad headers", "string"),
    ]:
        prompt_id = str(uuid.uuid4()) if headers == "uuid" else None
        if headers == "uuid":
            extras: Any = {"headers": {"promptId": prompt_id}}
        elif headers is None:
            extras = {"headers": {}}
        elif headers == "string":
            extras = {"headers": "promptId"}
        else:
            extras = {"headers": {"promptId": headers}}
        cases.append((label, data, extras, prompt_id))
    for label, data, extras, prompt_id in cases:
        marks = [len(d.received) for d in main.devices]
        sent_at = time.monotonic()
        await sender.publish_raw("prompt", data, extras)
        try:
            refusals = [
                await wait_refusal(d, m, prompt_id, REFUSAL_WAIT)
                for d, m in zip(main.devices, marks, strict=True)
            ]
            rows.append(
                [
                    label,
                    f"refusal on both devices after {(time.monotonic() - sent_at) * 1000:.0f} ms",
                    repr(refusals[0].data)[:80],
                ]
            )
        except TimeoutError:
            failures += 1
            rows.append([label, f"NO refusal within {REFUSAL_WAIT:.0f} s", "silently dropped"])

    # A prompt to a deleted conversation: the device still holds its token.
    doomed_sender = doomed.devices[0]
    await sync_to_async(
        lambda: actions.delete_conversation(ConversationRow.objects.get(pk=doomed.conversation_id))
    )()
    marks = [len(d.received) for d in doomed.devices]
    prompt_id = str(uuid.uuid4())
    sent_at = time.monotonic()
    try:
        await doomed_sender.prompt("Say exactly: into the void", prompt_id)
        refusal = await wait_refusal(doomed_sender, marks[0], prompt_id, REFUSAL_WAIT)
        rows.append(
            [
                "deleted conversation",
                f"refusal after {(time.monotonic() - sent_at) * 1000:.0f} ms",
                repr(refusal.data)[:80],
            ]
        )
    except TimeoutError:
        failures += 1
        rows.append(["deleted conversation", f"NO refusal within {REFUSAL_WAIT:.0f} s", "-"])
    except (AblyException, ConnectionClosed) as error:
        # Ably refusing the publish is a clear answer too: the token was revoked with the
        # conversation, so the SDK fails the connection (or it closes under the publish).
        code = getattr(error, "code", "?")
        rows.append(["deleted conversation", f"publish refused by Ably ({code})", str(error)[:80]])

    # Nothing is stuck: the conversation answers the next prompt, the same everywhere.
    after = await prompt(main, "still here")
    await oracle.wait_final([after], REPLY_WAIT)
    verdict, _ = await oracle.judge([after], stack.ably_endpoint)
    rows.append(
        ["a normal prompt afterwards", "ok" if verdict.ok else "FAILED", verdict.summary()[:80]]
    )
    failures += 0 if verdict.ok else 1
    stray = await sync_to_async(
        lambda: Message.objects.filter(conversation_id=main.conversation_id).count()
    )()
    await close_all(conversations)
    print_table(f"malformed prompts on {stack.database}", ["prompt", "outcome", "detail"], rows)
    return failures == 0, (
        f"{stack.database}: {len(rows)} cases, {failures} failed; {stray} rows stored in the "
        "conversation (4 expected: the NUL prompt and its reply, the last prompt and its reply)"
    )


# --- dupid: a second agent with the same id -----------------------------------------------------


# A round proves something only if the second agent is decided while the first one's reply still
# streams, and a loaded machine can take 20 s to start a Python process: the replies here are
# paced slower, and a round that missed its moment (a precondition of the test, not a product
# failure) is played again.
DUPID_TOKENS_PER_SECOND = 80.0
DUPID_ATTEMPTS_PER_ROUND = 3


async def _set_pacing(anthropic_url: str, tokens_per_second: float) -> float:
    """Set the Anthropic stand-in's pace; returns the previous one."""
    async with httpx.AsyncClient(base_url=anthropic_url, timeout=10) as client:
        before = (await client.post("/_emulator/pacing", json={})).json()["tokens_per_second"]
        response = await client.post(
            "/_emulator/pacing", json={"tokens_per_second": tokens_per_second}
        )
        response.raise_for_status()
    return float(before)


async def duplicate_id(stack: Any, tiny: bool) -> tuple[bool, str]:
    agent_id = f"soak-dupid-{uuid.uuid4().hex[:4]}"
    first = launch(stack, agent_id)
    conversations = await open_conversations(stack, 1, 2)
    conversation = conversations[0]
    usual_pace = await _set_pacing(stack.anthropic_url, DUPID_TOKENS_PER_SECOND)
    try:
        rows, ok = await _duplicate_id_rounds(stack, agent_id, conversation, tiny)
    finally:
        await _set_pacing(stack.anthropic_url, usual_pace)
    await close_all(conversations)
    alive = first.process.poll() is None
    print_table(
        f"dupid: a second agent with the first one's id, on {stack.database}",
        [
            "round",
            "second agent",
            "decided while the first streamed",
            "first one's reply everywhere",
        ],
        rows,
    )
    return ok and alive, f"{stack.database}: {len(rows)} rounds, " + "; ".join(
        f"{r[1]} / {r[3]}" for r in rows
    )


async def _duplicate_id_rounds(
    stack: Any, agent_id: str, conversation: Any, tiny: bool
) -> tuple[list[list[Any]], bool]:
    rounds = 1 if tiny else 3
    rows: list[list[Any]] = []
    ok = True
    round_index = attempt = 0
    while round_index < rounds:
        attempt += 1
        item = await prompt(conversation, words(f"r{round_index}a{attempt}x", 400 if tiny else 900))
        await conversation.devices[1].streaming(item.prompt_id, REPLY_WAIT)
        began = time.monotonic()
        second = launch(stack, agent_id, wait=False)
        outcome = "?"
        while True:
            code = second.process.poll()
            if code is not None:
                text = second.output()
                lines = [ln for ln in text.splitlines() if ln.strip()]
                outcome = f"exit {code} after {time.monotonic() - began:.1f} s: " + (
                    lines[-1][:100] if lines else "(no output)"
                )
                refused = code != 0 and agent_id in text
                break
            if " ready: " in second.output():
                outcome = f"STARTED (ready after {time.monotonic() - began:.1f} s)"
                refused = False
                break
            if time.monotonic() - began > 90:
                outcome, refused = "neither refused nor ready in 90 s", False
                break
            await asyncio.sleep(0.1)
        # If the reply had already ended whole, this round proved nothing: too short a reply.
        decided_during = conversation.devices[1].reply_for(item.prompt_id).status != "complete"
        await oracle.wait_final([item], REPLY_WAIT)
        if second.process.poll() is None:
            second.stop()
        verdict, _ = await oracle.judge([item], stack.ably_endpoint)
        for problem in verdict.problems:
            common.note(f"  problem: {problem}")
        if not decided_during and verdict.ok and attempt < DUPID_ATTEMPTS_PER_ROUND:
            common.note(f"  round {round_index + 1}: missed its moment ({outcome}); again")
            continue
        ok = ok and refused and verdict.ok and decided_during
        rows.append(
            [
                round_index + 1,
                outcome,
                "yes" if decided_during else "NO (the test missed its moment)",
                verdict.short() if not verdict.ok else f"whole ({len(item.expected or '')} chars)",
            ]
        )
        round_index += 1
        attempt = 0
    return rows, ok


# --- stopcrash: kill -9 between the final text and `stop` ---------------------------------------


async def stop_crash(stack: Any, tiny: bool) -> tuple[bool, str]:
    from urllib.parse import urlsplit

    from soak.proxy import StopTrap

    target = urlsplit(stack.ably_endpoint)
    trap = await StopTrap(target.hostname or "127.0.0.1", target.port or 80).start()
    agent_id = f"soak-stopcrash-{uuid.uuid4().hex[:4]}"
    rounds = 1 if tiny else 5
    modes = ["drop-ack", "hold-stop"]
    rows = []
    all_ok = True
    # The trap runs on this event loop: wait for the agent without blocking it.
    agent = launch(stack, agent_id, env={"ABLY_ENDPOINT": trap.endpoint}, wait=False)
    await asyncio.to_thread(agent.wait_for_output, " ready: ", 90)
    for round_index in range(rounds):
        for mode in modes:
            conversations = await open_conversations(stack, 1, 2)
            conversation = conversations[0]
            killed: list[float] = []

            def kill(process: Any = agent.process, killed: list[float] = killed) -> None:
                os.kill(process.pid, signal.SIGKILL)
                killed.append(time.monotonic())

            trap.arm(mode, kill)
            item = await prompt(
                conversation, words(f"{mode[0]}{round_index}x", 60), accept=frozenset()
            )
            try:
                await asyncio.wait_for(trap.triggered.wait(), REPLY_WAIT)
            except TimeoutError:
                rows.append([round_index + 1, mode, "trap never fired", "", "", "", ""])
                all_ok = False
                continue
            await asyncio.to_thread(agent.process.wait, 10)
            # Back up, as a supervisor would restart it: the same id (through the disarmed trap).
            agent, attempts, restart_seconds = await asyncio.to_thread(
                relaunch_until_ready, stack, agent_id, env={"ABLY_ENDPOINT": trap.endpoint}
            )
            await oracle.wait_final([item], MAX_UNSETTLED_SECONDS)
            settled = time.monotonic() - killed[0]
            shown = [
                (d.reply_for(item.prompt_id).status if d.reply_for(item.prompt_id) else None)
                for d in conversation.devices
            ]
            # Whatever the outcome, it must be the same on every device, the DB and a reload.
            item.accept = frozenset({"complete", "interrupted"})
            verdict, database = await oracle.judge([item], stack.ably_endpoint)
            db_status = database["replies"].get(item.prompt_id, ("-", ""))[0]
            in_time = settled <= MAX_UNSETTLED_SECONDS or not timing_judged()
            ok = verdict.ok and in_time
            all_ok = all_ok and ok
            rows.append(
                [
                    round_index + 1,
                    mode,
                    db_status,
                    "/".join(str(s) for s in shown),
                    f"{settled:.1f}",
                    f"{restart_seconds:.1f} ({attempts})",
                    verdict.short() + ("" if in_time else ", settled too late"),
                ]
            )
            for problem in verdict.problems:
                common.note(f"  problem: {problem}")
            await close_all(conversations)
    await trap.close()
    print_table(
        f"stopcrash: kill -9 as the agent publishes `stop`, on {stack.database}",
        [
            "round",
            "trap",
            "DB status",
            "devices",
            "kill -> all final s",
            "restart s (tries)",
            "verdict",
        ],
        rows,
    )
    failed = sum(1 for r in rows if r[-1] != "ok")
    return all_ok, f"{stack.database}: {len(rows)} kills, {failed} disagreeing or unsettled"


# --- ablywipe: the Ably stand-in killed without its state ---------------------------------------


async def ably_wipe(stack: Any, tiny: bool) -> tuple[bool, str]:
    conversations_count, rounds = (2, 1) if tiny else (10, 5)
    stack.start_agent(f"soak-ablywipe-{uuid.uuid4().hex[:4]}")
    conversations = await open_conversations(stack, conversations_count, 2, recovering=True)
    rows = []
    all_ok = True
    settle: list[float] = []
    for round_index in range(rounds):
        items = [
            await prompt(c, words(f"r{round_index}c{i}x", 300)) for i, c in enumerate(conversations)
        ]
        # Every reply streaming (so every prompt is stored): the stand-in then loses replies in
        # flight, not prompts it had acknowledged moments before (real Ably keeps those).
        for item, conversation in zip(items, conversations, strict=True):
            await conversation.devices[1].streaming(item.prompt_id, REPLY_WAIT)
        await asyncio.to_thread(stack.wipe_ably)
        restarted, restarted_wall = time.monotonic(), time.time()
        await oracle.wait_final(items, REPLY_WAIT)
        settle.append(time.monotonic() - restarted)
        # When the agent was heard again: the stand-in's timestamp on the first agent message
        # any device received after the restart (the SDK's reconnect timer is most of the wait).
        heard = [
            m.timestamp / 1000 - restarted_wall
            for c in conversations
            for d in c.devices
            for m in d.received
            if m.client_id == d.agent_client_id
            and m.timestamp
            and m.timestamp / 1000 > restarted_wall
        ]
        verdict, _ = await oracle.judge(items, stack.ably_endpoint)
        ok = verdict.ok and (settle[-1] <= MAX_UNSETTLED_SECONDS or not timing_judged())
        all_ok = all_ok and ok
        rows.append(
            [
                round_index + 1,
                len(items),
                f"{min(heard):.1f}" if heard else "-",
                f"{settle[-1]:.1f}",
                *verdict.row(),
            ]
        )
        for problem in verdict.problems:
            common.note(f"  problem: {problem}")
    await close_all(conversations)
    print_table(
        f"ablywipe: the Ably stand-in kill -9'd mid-reply and restarted empty, on {stack.database}",
        [
            "round",
            "replies",
            "restart -> agent heard again s",
            "restart -> all final s",
            *VERDICT_HEADERS,
        ],
        rows,
    )
    return all_ok, (
        f"{stack.database}: {rounds} wipes, restart -> every device final: "
        f"p50 {percentile(settle, 0.5):.1f} s, max {max(settle):.1f} s; "
        f"{sum(1 for r in rows if r[5] != 0)} rounds with lost replies"
    )


# --- noheaders: a model that never sends response headers ---------------------------------------


async def seconds_until_final(item: Sent, timeout: float) -> float:
    """Seconds from sending a prompt until every one of its devices shows a final state."""
    try:
        for device in item.devices:
            await device.final_reply(item.prompt_id, timeout)
    except TimeoutError:
        return float("inf")
    return time.monotonic() - item.sent_at


async def no_headers(stack: Any, tiny: bool) -> tuple[bool, str]:
    stall = 5.0
    count = 1 if tiny else 5
    stack.start_agent(f"soak-noheaders-{uuid.uuid4().hex[:4]}", "--stall-timeout", str(stall))
    conversations = await open_conversations(stack, count, 2)
    items = []
    for conversation in conversations:
        prompt_id = await conversation.devices[0].prompt("Say exactly: never [[fault:hang=600]]")
        items.append(
            Sent(
                conversation.conversation_id,
                prompt_id,
                conversation.devices,
                conversation.owner,
                accept=frozenset({"error"}),
            )
        )
    # The hang outlasts every retry the agent could make: only its own deadline ends the wait.
    arrival = await asyncio.gather(*(seconds_until_final(item, 300) for item in items))
    verdict, _ = await oracle.judge(items, stack.ably_endpoint)
    told = [
        reply.error
        for item in items
        for device in item.devices
        if (reply := device.reply_for(item.prompt_id)) is not None
    ]
    after = [await prompt(conversations[0], "after the hang")]
    await oracle.wait_final(after, REPLY_WAIT)
    after_verdict, _ = await oracle.judge(after, stack.ably_endpoint)
    await close_all(conversations)
    # "Within the stall timeout", with room for a shared 2-core machine: the old behaviour
    # (4 attempts x the timeout, plus backoff) takes more than twice as long.
    limit = 2 * stall
    worst = max(arrival)
    print_table(
        f"noheaders: the model never sends headers, stall timeout {stall:.0f} s, on "
        f"{stack.database}",
        ["prompts", "error on every device p50 s", "max s", "limit s", *VERDICT_HEADERS],
        [[len(items), percentile(arrival, 0.5), worst, limit, *verdict.row()]],
    )
    if told:
        common.note(f"  devices were told: {told[0]!r}")
    for problem in verdict.problems + after_verdict.problems:
        common.note(f"  problem: {problem}")
    ok = verdict.ok and after_verdict.ok and (worst <= limit or not timing_judged())
    return ok, (
        f"{stack.database}: {len(items)} prompts, error on every device after max {worst:.1f} s "
        f"(stall timeout {stall:.0f} s, limit {limit:.0f} s); next prompt "
        f"{'answered' if after_verdict.ok else 'FAILED'}"
    )
