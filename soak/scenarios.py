"""The soak scenarios themselves; `python -m soak.scenarios NAME [--tiny]` runs one.

Run through `python -m soak`, which gives each scenario a fresh interpreter (Django is set up
once per process, on the scenario's own scratch database).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import time
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import common
from bench.common import PYTHON, Service, percentile, print_table, rss_bytes

REPLY_WAIT = 60.0
# A reply whose agent died must be settled on every device within this (issue 8).
MAX_UNSETTLED_SECONDS = 30.0
# Memory is "flat" when the end-of-run RSS is within this of the post-warm-up RSS.
FLAT_TOLERANCE = 0.20
LOAD_HISTORY_RETENTION_SECONDS = 10
# The Ably stand-in keeps every channel event for the connection-state TTL (2 minutes) so a
# device can resume; memory is judged after that window has filled.
MEMORY_WARM_UP_SECONDS = 150.0
FILLER = " ".join(f"w{i}" for i in range(40))


@dataclass
class Stack:
    workdir: Path
    ably_endpoint: str
    anthropic_url: str
    env: dict[str, str]
    services: list[Service]
    ably_pid: int | None = None
    anthropic_pid: int | None = None
    agents: int = 0
    database: str = "SQLite"
    # The stand-in as a child process on a fixed port, when a scenario kills and restarts it.
    ably_service: Service | None = None

    def wipe_ably(self) -> None:
        """kill -9 the Ably stand-in and start it again on the same port, with empty state."""
        old = self.ably_service
        assert old is not None, "this scenario's stand-in is not a restartable process"
        old.process.kill()
        old.process.wait(10)
        old.stop()
        port = int(self.ably_endpoint.rsplit(":", 1)[1])
        fresh = Service(old.name, list(map(str, old.process.args)), self.workdir)
        common.wait_for_port(port, fresh.process, 30, fresh.log_path)
        self.services[self.services.index(old)] = fresh
        self.ably_service, self.ably_pid = fresh, fresh.pid

    def start_agent(self, agent_id: str, *extra: str) -> Service:
        self.agents += 1
        args = [
            PYTHON,
            "-m",
            "bench.agent_process",
            "--agent-id",
            agent_id,
            "--connections",
            "4",
            "--no-titles",
            "--discovery-interval",
            "1",
            "--retry-base-delay",
            "0.1",
            *extra,
        ]
        env = {**self.env, "LOG_LEVEL": "INFO", "PROMPT_RATE_LIMIT_PER_MINUTE": "0"}
        agent = Service(f"agent-{self.agents}", args, self.workdir, env=env)
        self.services.append(agent)
        agent.wait_for_output(" ready: ", 90)
        return agent


@dataclass
class Tally:
    sent: int = 0
    complete: int = 0
    errors: int = 0
    interrupted: int = 0
    lost: int = 0  # never reached a final state on some device
    wrong: int = 0  # final, but the text differs from what was asked (missing or doubled)
    ttft: list[float] = field(default_factory=list)
    # Replies not final within REPLY_WAIT: (devices, promptId, text, sent at), settled later.
    late: list[tuple[list[Any], str, str, float]] = field(default_factory=list)
    late_completed: int = 0
    total: list[float] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def note(self, problem: str) -> None:
        self.wrong += 1
        if len(self.problems) < 10:
            self.problems.append(problem)


async def drain(tally: Tally, timeout: float) -> None:
    """Give late replies until `timeout` to end on every device; only then is one lost."""
    deadline = time.monotonic() + timeout
    for devices, prompt_id, text, sent_at in tally.late:
        try:
            replies = [
                await d.final_reply(prompt_id, max(0.1, deadline - time.monotonic()))
                for d in devices
            ]
        except TimeoutError:
            tally.lost += 1
            tally.problems.append(f"prompt {prompt_id}: never final on every device")
            continue
        tally.late_completed += 1
        tally.total.append(time.monotonic() - sent_at)
        judge(tally, replies, prompt_id, text)


def quiet_sdk_logging() -> None:
    # ably-python logs every protocol message at INFO: at soak volume that is most of the CPU.
    for name in ("ably", "httpx", "httpcore", "websockets", "asyncio", "emulators"):
        logging.getLogger(name).setLevel(logging.WARNING)


def start_anthropic(workdir: Path, tokens_per_second: float, ttft_ms: float) -> tuple[Service, str]:
    port = common.free_port()
    service = Service(
        "anthropic",
        [
            PYTHON,
            "-m",
            "emulators.anthropic",
            "--port",
            str(port),
            "--tokens-per-second",
            str(tokens_per_second),
            "--ttft-ms",
            str(ttft_ms),
            "--log-level",
            "warning",
        ],
        workdir,
    )
    common.wait_for_port(port, service.process, 30, service.log_path)
    return service, f"http://127.0.0.1:{port}"


def setup(
    workdir: Path, ably_endpoint: str, anthropic_url: str, database_url: str | None = None
) -> dict[str, str]:
    database = {"DATABASE_URL": database_url} if database_url else {}
    env = common.setup_django(
        workdir / "soak.sqlite3",
        ABLY_API_KEY=common.DEV_ABLY_KEY,
        ABLY_ENDPOINT=ably_endpoint,
        ANTHROPIC_BASE_URL=anthropic_url,
        **database,
    )
    quiet_sdk_logging()
    return env


async def open_conversations(count: int, devices_each: int, ably_endpoint: str) -> list[list[Any]]:
    """`count` users with one conversation each, and `devices_each` attached devices apiece."""
    from asgiref.sync import sync_to_async

    from conversations import realtime
    from conversations.models import Conversation
    from soak.devices import Device, Endpoint

    def create() -> list[tuple[Any, Any, list[str]]]:
        prefix = f"soak{uuid.uuid4().hex[:6]}-"
        users = common.bulk_users(count, prefix)
        made = []
        for user in users:
            conversation = Conversation.objects.create(owner=user)
            tokens = [realtime.create_token(user, conversation) for _ in range(devices_each)]
            made.append((user, conversation, tokens))
        return made

    made = await sync_to_async(create)()
    endpoint = Endpoint(ably_endpoint)
    groups: list[list[Any]] = []
    semaphore = asyncio.Semaphore(50)

    async def attach(user: Any, conversation: Any, token: str) -> Any:
        async with semaphore:
            return await Device(user, conversation.pk, endpoint, token).attach()

    for user, conversation, tokens in made:
        groups.append([attach(user, conversation, token) for token in tokens])
    return [list(await asyncio.gather(*group)) for group in groups]


async def close_all(groups: list[list[Any]]) -> None:
    await asyncio.gather(*(d.close() for group in groups for d in group), return_exceptions=True)


async def ask(devices: list[Any], text: str, tally: Tally, wait: float = REPLY_WAIT) -> None:
    """One prompt from the first device; every device must end with exactly `text`."""
    sent_at = time.monotonic()
    prompt_id = await devices[0].prompt(f"Say exactly: {text}")
    tally.sent += 1
    try:
        await devices[0].streaming(prompt_id, wait)
        tally.ttft.append(time.monotonic() - sent_at)
        replies = [await d.final_reply(prompt_id, wait) for d in devices]
    except TimeoutError:
        # Slow is not lost: keep waiting in the drain phase, where it is judged.
        tally.late.append((devices, prompt_id, text, sent_at))
        return
    tally.total.append(time.monotonic() - sent_at)
    judge(tally, replies, prompt_id, text)


def judge(tally: Tally, replies: list[Any], prompt_id: str, text: str) -> None:
    statuses = {r.status for r in replies}
    if statuses != {"complete"}:
        tally.errors += 1
        tally.problems.append(f"prompt {prompt_id}: {statuses} {replies[0].error[:80]}")
        return
    tally.complete += 1
    for reply in replies:
        if reply.text != text:
            tally.note(describe_difference(prompt_id, reply.text, text))


async def stored_reply_text(prompt_id: str) -> str:
    from asgiref.sync import sync_to_async

    from conversations.models import Message

    def read() -> str:
        reply = Message.objects.filter(prompt_id=prompt_id, role=Message.Role.ASSISTANT).first()
        return reply.text if reply else ""

    return await sync_to_async(read)()


def reply_messages(device: Any, response_id: str) -> list[Any]:
    """The `response` messages a device received for one reply, in arrival order."""
    return [
        m
        for m in device.received
        if m.name == "response"
        and (m.extras or {}).get("headers", {}).get("responseId") == response_id
    ]


async def channel_reply_text(device: Any, response_id: str) -> str:
    """What Ably itself holds for a message-per-response reply (its latest version)."""
    serials = [m.serial for m in reply_messages(device, response_id) if m.serial]
    if not serials:
        return "(no response message seen)"
    try:
        message = await device.channel.get_message(serials[0])
    except Exception as error:  # noqa: BLE001 - a diagnostic only
        return f"(get_message failed: {error!r})"
    return f"has {len(message.data or '')} chars"


def describe_deliveries(device: Any, response_id: str) -> str:
    """The `response` messages a device got for one reply: action, serial tail, data length."""
    seen = [
        f"{m.action.name if m.action is not None else '?'}:{(m.serial or '')[-4:]}:{len(m.data or '')}"
        for m in reply_messages(device, response_id)
    ]
    attaches = getattr(device, "attach_changes", [])
    return f"deliveries {seen}; attach changes {attaches}"


def describe_difference(prompt_id: str, got: str, expected: str) -> str:
    """Missing text or doubled text, and where it starts to differ."""
    at = next((i for i, (a, b) in enumerate(zip(got, expected, strict=False)) if a != b), None)
    at = min(len(got), len(expected)) if at is None else at
    kind = "doubled/extra" if len(got) > len(expected) else "missing"
    return (
        f"{prompt_id}: {kind} text, {len(got)} chars for {len(expected)}, first difference at "
        f"{at}: got {got[at : at + 40]!r} expected {expected[at : at + 40]!r}"
    )


async def sample_memory(pids: dict[str, int], samples: list[dict[str, float]], stop: Any) -> None:
    started = time.monotonic()
    while not stop.is_set():
        sample = {"t": time.monotonic() - started}
        for name, pid in pids.items():
            with contextlib.suppress(OSError):
                sample[name] = rss_bytes(pid) / 2**20
        samples.append(sample)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 2.0)


def db_figures() -> dict[str, int]:
    from conversations.models import Message

    replies = Message.objects.filter(role=Message.Role.ASSISTANT)
    prompts = Message.objects.filter(role=Message.Role.USER).values_list("prompt_id", flat=True)
    answered = set(replies.values_list("prompt_id", flat=True))
    return {
        "stored_prompts": len(prompts),
        "prompts_without_reply": sum(1 for p in prompts if p not in answered),
        "streaming_rows": replies.filter(status="streaming").count(),
    }


async def settled_db_figures(timeout: float = 15.0) -> dict[str, int]:
    """The database once the agent has written its last outcome (a device hears `stop` first)."""
    from asgiref.sync import sync_to_async

    deadline = time.monotonic() + timeout
    while True:
        figures = await sync_to_async(db_figures)()
        if figures["streaming_rows"] == 0 or time.monotonic() > deadline:
            return figures
        await asyncio.sleep(0.2)


# --- load -----------------------------------------------------------------------------------------


async def load(stack: Stack, tiny: bool) -> tuple[bool, str]:

    # Longer than the 60 s so that memory can be judged once the Ably stand-in's
    # 2-minute resume window is full (MEMORY_WARM_UP_SECONDS): before that its memory can only
    # climb, by design. Nothing may be lost at any point.
    conversations, devices_each, seconds = (5, 3, 8) if tiny else (200, 3, 240)
    seconds = int(os.environ.get("SOAK_LOAD_SECONDS", seconds))
    agent = stack.start_agent("soak-load")
    groups = await open_conversations(conversations, devices_each, stack.ably_endpoint)
    common.note(f"{conversations} conversations x {devices_each} devices attached")
    tally = Tally()
    samples: list[dict[str, float]] = []
    stop = asyncio.Event()
    pids = {"agent": agent.pid, "ably": stack.ably_pid, "anthropic": stack.anthropic_pid}
    sampler = asyncio.create_task(
        sample_memory({k: v for k, v in pids.items() if v}, samples, stop)
    )
    deadline = time.monotonic() + seconds

    async def converse(index: int, devices: list[Any]) -> None:
        turn = 0
        while time.monotonic() < deadline:
            await ask(devices, f"c{index} t{turn} {FILLER}", tally)
            turn += 1

    started = time.monotonic()
    await asyncio.gather(*(converse(i, g) for i, g in enumerate(groups)))
    elapsed = time.monotonic() - started
    await drain(tally, 30 if tiny else 300)
    stop.set()
    await sampler
    await close_all(groups)
    database = await settled_db_figures()

    print_table(
        f"load: {conversations} conversations x {devices_each} devices, {seconds} s",
        [
            "prompts",
            "complete",
            "late (>60 s)",
            "errors",
            "lost",
            "wrong text",
            "prompts/s",
            "ttft p50",
            "ttft p95",
            "reply p50",
            "reply p95",
            "stored prompts",
            "streaming rows",
        ],
        [
            [
                tally.sent,
                tally.complete,
                len(tally.late),
                tally.errors,
                tally.lost,
                tally.wrong,
                tally.sent / elapsed,
                percentile(tally.ttft, 0.5),
                percentile(tally.ttft, 0.95),
                percentile(tally.total, 0.5),
                percentile(tally.total, 0.95),
                database["stored_prompts"],
                database["streaming_rows"],
            ]
        ],
    )
    flat, memory_rows = memory_report(samples)
    print_table(
        "memory (RSS MiB)",
        ["process", "start", "after warm-up", "peak", "end", "growth"],
        memory_rows,
    )
    for problem in tally.problems:
        common.note(f"  problem: {problem}")
    ok = (
        tally.lost == 0
        and tally.wrong == 0
        and tally.errors == 0
        and database["streaming_rows"] == 0
        and database["stored_prompts"] == tally.sent
    )
    summary = (
        f"{tally.sent} prompts, {tally.lost} lost, {tally.wrong} wrong, {tally.errors} errors, "
        f"{len(tally.late)} late; "
        f"reply p95 {percentile(tally.total, 0.95):.2f} s; memory {'flat' if flat else 'GREW'}"
    )
    return ok and (flat or tiny), summary


def memory_report(samples: list[dict[str, float]]) -> tuple[bool, list[list[Any]]]:
    rows: list[list[Any]] = []
    flat = True
    if not samples:
        return True, rows
    # Warm-up: a quarter of the run, and at least until every process's time-bounded state
    # (the Ably stand-in's resume window) is full.
    warm_index = max(
        len(samples) // 4,
        next((i for i, s in enumerate(samples) if s["t"] >= MEMORY_WARM_UP_SECONDS), 0),
    )
    for name in [k for k in samples[0] if k != "t"]:
        series = [s[name] for s in samples if name in s]
        warm, end = series[min(warm_index, len(series) - 1)], series[-1]
        growth = (end - warm) / warm if warm else 0.0
        flat = flat and growth <= FLAT_TOLERANCE
        rows.append([name, series[0], warm, max(series), end, f"{growth:+.0%}"])
        # Where it levels off (or not): RSS at each tenth of the run.
        tenths = [series[min(len(series) - 1, i * len(series) // 10)] for i in range(11)]
        common.note(
            f"  {name} RSS MiB by tenth of the run: " + " ".join(f"{v:.0f}" for v in tenths)
        )
    return flat, rows


# --- crash ----------------------------------------------------------------------------------------


async def crash(stack: Stack, tiny: bool) -> tuple[bool, str]:

    conversations, devices_each, kills = (3, 3, 2) if tiny else (20, 3, 20)
    agent_id = f"soak-crash-{uuid.uuid4().hex[:6]}"
    agent = stack.start_agent(agent_id)
    groups = await open_conversations(conversations, devices_each, stack.ably_endpoint)
    long_text = " ".join(f"long{i}" for i in range(150))
    unsettled: list[float] = []
    restarts: list[float] = []
    all_prompts: list[tuple[int, str]] = []
    sent_while_down: list[str] = []

    for round_index in range(kills):
        mid_reply = [await g[0].prompt(f"Say exactly: {long_text}") for g in groups]
        all_prompts += list(enumerate(mid_reply))
        # Kill as soon as the first reply is visibly streaming: the others are in flight too.
        await groups[0][1].streaming(mid_reply[0], REPLY_WAIT)
        killed_at = time.monotonic()
        agent.process.kill()
        agent.process.wait(10)
        for index, group in enumerate(groups):
            prompt_id = await group[0].prompt(f"Say exactly: down {round_index} {index}")
            all_prompts.append((index, prompt_id))
            sent_while_down.append(prompt_id)
        restart_began = time.monotonic()
        agent = stack.start_agent(agent_id)
        restarts.append(time.monotonic() - restart_began)
        for index, prompt_id in enumerate(mid_reply):
            for device in groups[index]:
                await device.final_reply(prompt_id, REPLY_WAIT)
        unsettled.append(time.monotonic() - killed_at)
        # The next kill should land on the next round's replies, not on these.
        for index, prompt_id in enumerate(sent_while_down[-len(groups) :]):
            for device in groups[index]:
                with contextlib.suppress(TimeoutError):
                    await device.final_reply(prompt_id, REPLY_WAIT)
        common.note(f"kill {round_index + 1}/{kills}: settled after {unsettled[-1]:.1f} s")

    lost = 0
    statuses: dict[str, int] = {}
    disagreements = 0
    for index, prompt_id in all_prompts:
        try:
            replies = [await d.final_reply(prompt_id, REPLY_WAIT) for d in groups[index]]
        except TimeoutError:
            lost += 1
            continue
        statuses[replies[0].status] = statuses.get(replies[0].status, 0) + 1
        disagreements += len({(r.status, r.text) for r in replies}) - 1
    down_not_complete = 0
    for index, prompt_id in all_prompts:
        reply = groups[index][0].reply_for(prompt_id)
        if prompt_id in sent_while_down and (reply is None or reply.status != "complete"):
            down_not_complete += 1
    await close_all(groups)
    database = await settled_db_figures()
    with contextlib.suppress(Exception):
        agent.process.terminate()
    print_table(
        f"crash: kill -9 x{kills}, {conversations} conversations x {devices_each} devices",
        [
            "prompts",
            "lost",
            "complete",
            "interrupted",
            "error",
            "sent while down, unanswered",
            "devices disagreeing",
            "max unsettled s",
            "agent restart p50 s",
            "streaming rows",
        ],
        [
            [
                len(all_prompts),
                lost,
                statuses.get("complete", 0),
                statuses.get("interrupted", 0),
                statuses.get("error", 0),
                down_not_complete,
                disagreements,
                max(unsettled),
                percentile(restarts, 0.5),
                database["streaming_rows"],
            ]
        ],
    )
    ok = (
        lost == 0
        and down_not_complete == 0
        and disagreements == 0
        and database["streaming_rows"] == 0
        and database["prompts_without_reply"] == 0
        and max(unsettled) <= MAX_UNSETTLED_SECONDS
    )
    summary = (
        f"{kills} kills, {len(all_prompts)} prompts, {lost} lost, "
        f"{statuses.get('interrupted', 0)} interrupted, max {max(unsettled):.1f} s unsettled"
    )
    return ok, summary


# --- restart --------------------------------------------------------------------------------------


async def restart(stack: Stack, tiny: bool, server: Any) -> tuple[bool, str]:
    conversations, devices_each, restarts = (3, 2, 1) if tiny else (10, 3, 5)
    stack.start_agent("soak-restart")
    groups = await open_conversations(conversations, devices_each, stack.ably_endpoint)
    text = " ".join(f"part{i}" for i in range(150))
    settle: list[float] = []
    tally = Tally()
    for round_index in range(restarts):
        prompts = [await g[0].prompt(f"Say exactly: {text}") for g in groups]
        tally.sent += len(prompts)
        await groups[0][1].streaming(prompts[0], REPLY_WAIT)
        began = time.monotonic()
        await asyncio.to_thread(server.restart)
        for group, prompt_id in zip(groups, prompts, strict=True):
            for device in group:
                try:
                    reply = await device.final_reply(prompt_id, REPLY_WAIT)
                except TimeoutError:
                    tally.lost += 1
                    continue
                if reply.status != "complete":
                    tally.errors += 1
                elif reply.text != text:
                    stored = await stored_reply_text(prompt_id)
                    on_channel = await channel_reply_text(device, reply.response_id)
                    tally.note(
                        describe_difference(prompt_id, reply.text, text)
                        + f"; database has {len(stored)} chars, the channel's message "
                        f"{on_channel}; {describe_deliveries(device, reply.response_id)}"
                    )
        settle.append(time.monotonic() - began)
        common.note(f"restart {round_index + 1}/{restarts}: all final after {settle[-1]:.1f} s")
    await close_all(groups)
    print_table(
        f"restart: Ably stand-in restarted x{restarts}, {conversations} x {devices_each} devices",
        [
            "prompts",
            "device replies lost",
            "not complete",
            "wrong text",
            "settle p50 s",
            "settle max s",
        ],
        [[tally.sent, tally.lost, tally.errors, tally.wrong, percentile(settle, 0.5), max(settle)]],
    )
    for problem in tally.problems:
        common.note(f"  problem: {problem}")
    ok = tally.lost == 0 and tally.wrong == 0 and tally.errors == 0
    summary = f"{restarts} restarts, {tally.sent} prompts, {tally.lost} lost, settle max {max(settle):.1f} s"
    return ok, summary


# --- driver ---------------------------------------------------------------------------------------

DEFAULT_POSTGRES_SERVER = "postgres://postgres@127.0.0.1:5432"


@contextlib.contextmanager
def scratch_postgres(name: str) -> Any:
    """A fresh Postgres database of this scenario's own, dropped afterwards."""
    import psycopg

    server = os.environ.get("SOAK_POSTGRES_SERVER", DEFAULT_POSTGRES_SERVER)
    database = f"soak_{name}_{os.getpid()}"
    admin = server.replace("postgres://", "postgresql://", 1) + "/postgres"
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        connection.execute(f'CREATE DATABASE "{database}"')
    try:
        yield f"{server}/{database}"
    finally:
        with contextlib.suppress(Exception):
            from django.db import connections

            connections.close_all()
        with psycopg.connect(admin, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def scenario_for(name: str, stack: Stack, tiny: bool, server: Any) -> Awaitable[tuple[bool, str]]:
    # Issue 13's scenarios live in soak/faults.py.
    from soak import faults

    if name == "load":
        return load(stack, tiny)
    if name == "crash":
        return crash(stack, tiny)
    if name == "restart":
        return restart(stack, tiny, server)
    if name == "scaleout":
        from soak.scaleout import scale_out

        return scale_out(stack, tiny)
    if name in ("agents", "dbfail"):
        return faults.agents_under_load(stack, tiny, sabotage=name == "dbfail")
    return {
        "malformed": faults.malformed,
        "dupid": faults.duplicate_id,
        "stopcrash": faults.stop_crash,
        "ablywipe": faults.ably_wipe,
        "noheaders": faults.no_headers,
    }[name](stack, tiny)


def run(name: str, tiny: bool, postgres: bool = False) -> int:
    from emulators.ably.testing import start_server

    with contextlib.ExitStack() as cleanup:
        workdir = cleanup.enter_context(common.workdir(f"soak-{name}"))
        database_url = cleanup.enter_context(scratch_postgres(name)) if postgres else None
        services = cleanup.enter_context(common.services())
        in_process_ably = None
        ably_service = None
        if name == "restart":
            # Restarted in place (same port, same state), which only the in-process server does.
            in_process_ably = start_server()
            ably_endpoint, ably_pid = in_process_ably.endpoint, None
        else:
            # The load scenario judges memory: history the stand-in keeps in memory for a day
            # (Ably keeps it on disk) would grow with every reply and hide a leak, so there it
            # is kept only as long as any device or agent needs it (a prompt read back on attach).
            limits = {"history_retention": LOAD_HISTORY_RETENTION_SECONDS} if name == "load" else {}
            if name == "scaleout":
                # A dead agent's conversations move when its presence entry times out.
                from soak.scaleout import presence_leave_delay_ms

                limits["presence_leave_delay"] = presence_leave_delay_ms(tiny)
            ably, port = common.start_ably(workdir, **limits)
            services.append(ably)
            ably_endpoint, ably_pid, ably_service = f"http://127.0.0.1:{port}", ably.pid, ably
        anthropic, anthropic_url = start_anthropic(workdir, tokens_per_second=150, ttft_ms=100)
        services.append(anthropic)
        env = setup(workdir, ably_endpoint, anthropic_url, database_url)
        stack = Stack(workdir, ably_endpoint, anthropic_url, env, services, ably_pid, anthropic.pid)
        stack.database = "Postgres" if postgres else "SQLite"
        stack.ably_service = ably_service
        try:
            ok, summary = asyncio.run(scenario_for(name, stack, tiny, in_process_ably))
        finally:
            if in_process_ably is not None:
                in_process_ably.stop()
        print(f"SUMMARY {name}: {'ok' if ok else 'FAILED'}: {summary}", flush=True)
        return 0 if ok else 1


if __name__ == "__main__":
    arguments = sys.argv[1:]
    sys.exit(run(arguments[0], "--tiny" in arguments, "--postgres" in arguments))
