"""Issue 15's soak: agents joining, stopping and dying under load, nothing lost or doubled.

3 agent processes share the conversations (each answers only the ones it owns: rendezvous
hashing over the members of `agents:control`), every conversation prompting again as soon as its
reply is final on all its devices. Mid-run a 4th agent joins; then one agent is stopped cleanly
(SIGTERM); then another is killed (kill -9) while it streams a reply. Judged by `oracle.judge`:
every prompt stored and answered exactly once, no reply left `streaming`, every device agreeing
with the database and a fresh reader. The figures: from the kill until the dead agent's
streaming replies end `interrupted` in the database, and until a prompt sent after the kill in
each of its conversations is answered (complete on every device), p50/max over them; the same
for the clean stop. The Ably stand-in's presence timeout is Ably's 15 s (2 s with `--tiny`):
a dead agent's conversations move when its presence entry times out.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from bench import common
from bench.common import Service, percentile, print_table
from soak import oracle
from soak.faults import (
    FILLER,
    REPLY_WAIT,
    Conversation,
    close_all,
    launch,
    open_conversations,
    prompt,
    report_verdict,
    timing_judged,
)
from soak.oracle import Sent

# The stand-in's presence timeout (Ably's documented 15 s; shrunk for the tiny run).
PRESENCE_LEAVE_DELAY_MS = 15_000
TINY_PRESENCE_LEAVE_DELAY_MS = 2_000
# Every conversation of a dead or stopped agent must answer again within this of the event
# (the presence timeout plus a reply, with room for a loaded machine).
MAX_TAKEOVER_SECONDS = 60.0


def presence_leave_delay_ms(tiny: bool) -> int:
    return TINY_PRESENCE_LEAVE_DELAY_MS if tiny else PRESENCE_LEAVE_DELAY_MS


@dataclass
class Turn:
    """One prompt of the load: when it was sent and when it was final on every device."""

    conversation: int
    item: Sent
    final_at: float | None = None
    status: str | None = None


@dataclass
class Load:
    turns: list[Turn] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    def answered_after(self, event_at: float, conversation: int) -> float | None:
        """Seconds from `event_at` until a prompt of `conversation` sent after it was answered
        (complete on every device), or None if none has been yet."""
        done = [
            t.final_at
            for t in self.turns
            if t.conversation == conversation
            and t.item.sent_at >= event_at
            and t.final_at is not None
            and t.status == "complete"
        ]
        return min(done) - event_at if done else None


async def keep_prompting(conversations: list[Conversation], load: Load) -> None:
    """Every conversation prompts again as soon as its reply is final on all its devices."""

    async def one(index: int, conversation: Conversation) -> None:
        turn = 0
        while not load.stop.is_set():
            item = await prompt(conversation, f"c{index} t{turn} {FILLER}")
            record = Turn(index, item)
            load.turns.append(record)
            try:
                for device in conversation.devices:
                    reply = await device.final_reply(item.prompt_id, REPLY_WAIT)
                record.final_at, record.status = time.monotonic(), reply.status
            except TimeoutError:
                pass  # judged at the end, after the drain
            turn += 1

    await asyncio.gather(*(one(i, c) for i, c in enumerate(conversations)))


def streaming_replies_of(agent_ids: list[str], conversation_ids: list[str]) -> dict[str, str]:
    """promptId -> agent id of every reply `streaming` in the database by one of `agent_ids`."""
    from django.db import connections

    from conversations.models import Message

    connections.close_all()
    rows = Message.objects.filter(
        conversation_id__in=conversation_ids,
        role=Message.Role.ASSISTANT,
        status=Message.Status.STREAMING,
        agent_id__in=agent_ids,
    ).values_list("prompt_id", "agent_id")
    return {str(prompt_id): agent_id for prompt_id, agent_id in rows}


def interrupted_replies_of(agent_id: str, conversation_ids: list[str]) -> set[str]:
    """promptIds of the replies `agent_id` wrote that ended `interrupted` in the database."""
    from conversations.models import Message

    rows = Message.objects.filter(
        conversation_id__in=conversation_ids,
        role=Message.Role.ASSISTANT,
        status=Message.Status.INTERRUPTED,
        agent_id=agent_id,
    ).values_list("prompt_id", flat=True)
    return {str(prompt_id) for prompt_id in rows}


def reply_rows(prompt_ids: list[str]) -> dict[str, str]:
    """promptId -> status of each reply row."""
    from conversations.models import Message

    rows = Message.objects.filter(
        prompt_id__in=prompt_ids, role=Message.Role.ASSISTANT
    ).values_list("prompt_id", "status")
    return {str(prompt_id): str(status) for prompt_id, status in rows}


def replies_by_agent(conversation_ids: list[str]) -> dict[str, int]:
    from django.db.models import Count

    from conversations.models import Message

    rows = (
        Message.objects.filter(conversation_id__in=conversation_ids, role=Message.Role.ASSISTANT)
        .values("agent_id")
        .annotate(n=Count("id"))
    )
    return {row["agent_id"]: row["n"] for row in rows}


async def until_answered(
    load: Load, event_at: float, conversations: list[int], timeout: float
) -> dict[int, float | None]:
    """Per conversation: seconds from `event_at` until a prompt sent after it was answered."""
    deadline = time.monotonic() + timeout
    while True:
        times = {c: load.answered_after(event_at, c) for c in conversations}
        if all(t is not None for t in times.values()) or time.monotonic() > deadline:
            return times
        await asyncio.sleep(0.1)


async def until_settled(
    prompt_ids: list[str], event_at: float, timeout: float
) -> dict[str, tuple[str, float | None]]:
    """Per reply: its status once no longer `streaming` in the database, and when (seconds
    after `event_at`; None if it was still streaming at `timeout`)."""
    from asgiref.sync import sync_to_async

    settled: dict[str, tuple[str, float | None]] = {}
    deadline = time.monotonic() + timeout
    while len(settled) < len(prompt_ids) and time.monotonic() < deadline:
        rows = await sync_to_async(reply_rows)(prompt_ids)
        now = time.monotonic() - event_at
        for prompt_id, status in rows.items():
            if status != "streaming" and prompt_id not in settled:
                settled[prompt_id] = (status, now)
        await asyncio.sleep(0.1)
    for prompt_id in prompt_ids:
        settled.setdefault(prompt_id, ("streaming", None))
    return settled


def figure(values: list[float | None]) -> str:
    """`p50 / max` seconds, or what is missing."""
    done = [v for v in values if v is not None]
    if not values:
        return "-"
    if len(done) < len(values):
        return f"{len(values) - len(done)} of {len(values)} NEVER"
    return f"{percentile(done, 0.5):.1f} / {max(done):.1f}"


async def agent_mid_reply(agent_ids: list[str], conversation_ids: list[str]) -> str:
    """The agent with the most replies `streaming` in the database now (waits for one)."""
    from asgiref.sync import sync_to_async

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        streaming = await sync_to_async(streaming_replies_of)(agent_ids, conversation_ids)
        if streaming:
            owners = list(streaming.values())
            return max(agent_ids, key=owners.count)
        await asyncio.sleep(0.05)
    raise AssertionError("no agent had a reply streaming")


async def wait_ready(agent: Service) -> None:
    # Off the loop: the devices and the load keep running while a process boots.
    await asyncio.to_thread(agent.wait_for_output, " ready: ", 120)


async def scale_out(stack: Any, tiny: bool) -> tuple[bool, str]:
    from asgiref.sync import sync_to_async

    from conversations.agent.membership import owner_of

    count, devices_each = (12, 2) if tiny else (60, 2)
    # Seconds of load before the join, between the join and the stop, and the stop and the kill.
    phase = 3.0 if tiny else 20.0
    phase = float(os.environ.get("SOAK_PHASE_SECONDS", phase))
    takeover_wait = 30.0 if tiny else 90.0
    prefix = f"soak-scaleout-{uuid.uuid4().hex[:4]}"
    ids = [f"{prefix}-{i}" for i in range(3)]
    agents = [launch(stack, agent_id, wait=False) for agent_id in ids]
    await asyncio.gather(*(wait_ready(a) for a in agents))
    conversations = await open_conversations(stack, count, devices_each)
    conversation_ids = [c.conversation_id for c in conversations]
    common.note(f"{count} conversations x {devices_each} devices, 3 agents: {', '.join(ids)}")
    load = Load()
    prompting = asyncio.create_task(keep_prompting(conversations, load))
    await asyncio.sleep(phase)

    # A 4th agent joins under load.
    fourth_id = f"{prefix}-3"
    joined_at = time.monotonic()
    fourth = launch(stack, fourth_id, wait=False)
    await wait_ready(fourth)
    join_seconds = time.monotonic() - joined_at
    agents.append(fourth)
    ids.append(fourth_id)
    members = set(ids)
    gained = [i for i, c in enumerate(conversation_ids) if owner_of(c, members) == fourth_id]
    gained_answered = await until_answered(load, time.monotonic(), gained, takeover_wait)
    await asyncio.sleep(phase)

    # One agent stops cleanly (SIGTERM: it leaves the control channel, finishes its replies).
    # The one with the most replies streaming: a clean stop must let them finish.
    stopped_id = await agent_mid_reply(ids, conversation_ids)
    stopped = agents[ids.index(stopped_id)]
    stopped_owned = [
        i for i, c in enumerate(conversation_ids) if owner_of(c, members) == stopped_id
    ]
    stop_streaming = await sync_to_async(streaming_replies_of)([stopped_id], conversation_ids)
    stop_at = time.monotonic()
    stopped.process.send_signal(signal.SIGTERM)
    stop_exit = await asyncio.to_thread(stopped.process.wait, 60)
    stop_exit_seconds = time.monotonic() - stop_at
    members.discard(stopped_id)
    stop_answered = await until_answered(load, stop_at, stopped_owned, takeover_wait)
    await asyncio.sleep(phase)

    # kill -9 of the live agent with the most replies streaming at that moment.
    victim_id = await agent_mid_reply([i for i in ids if i in members], conversation_ids)
    victim = agents[ids.index(victim_id)]
    killed_owned = [i for i, c in enumerate(conversation_ids) if owner_of(c, members) == victim_id]
    os.kill(victim.pid, signal.SIGKILL)
    kill_at = time.monotonic()
    await asyncio.to_thread(victim.process.wait, 10)
    members.discard(victim_id)
    # What it was streaming when it died (read after the kill: nothing it wrote is pending).
    killed_streaming = sorted(
        (await sync_to_async(streaming_replies_of)([victim_id], conversation_ids)).keys()
    )
    settled, kill_answered = await asyncio.gather(
        until_settled(killed_streaming, kill_at, takeover_wait),
        until_answered(load, kill_at, killed_owned, takeover_wait),
    )
    await asyncio.sleep(min(phase, 5.0))
    load.stop.set()
    await prompting

    # A reply the killed agent was streaming may end `interrupted`; every other must complete.
    # The stopped agent's too, counted apart: a clean stop drains, so none may end interrupted.
    stop_interrupted = await sync_to_async(interrupted_replies_of)(stopped_id, conversation_ids)
    for turn in load.turns:
        if turn.item.prompt_id in killed_streaming or turn.item.prompt_id in stop_interrupted:
            turn.item.accept = frozenset({"complete", "interrupted"})
    sent = [t.item for t in load.turns]
    await oracle.wait_final(sent, 30 if tiny else 120)
    verdict, _ = await oracle.judge(sent, stack.ably_endpoint)
    by_agent = await sync_to_async(replies_by_agent)(conversation_ids)
    await close_all(conversations)

    settle_times = [when for _, when in settled.values()]
    settle_statuses = sorted({status for status, _ in settled.values()})
    events = [
        [
            "4th agent joins",
            f"{join_seconds:.1f} s to ready",
            len(gained),
            "-",
            figure(list(gained_answered.values())),
        ],
        [
            "SIGTERM (clean stop)",
            f"{len(stop_streaming)} replies streaming; exit {stop_exit} after "
            f"{stop_exit_seconds:.1f} s",
            len(stopped_owned),
            f"{len(stop_interrupted)} of its replies ended interrupted",
            figure(list(stop_answered.values())),
        ],
        [
            "kill -9 mid-reply",
            f"{len(killed_streaming)} replies streaming",
            len(killed_owned),
            f"{figure(settle_times)} ({'/'.join(settle_statuses) or '-'})",
            figure(list(kill_answered.values())),
        ],
    ]
    leave_s = presence_leave_delay_ms(tiny) / 1000
    print_table(
        f"scaleout: agents join, stop and die under load, {count} conversations x "
        f"{devices_each} devices, presence timeout {leave_s:.0f} s, on {stack.database}",
        [
            "event",
            "agent",
            "its conversations",
            "-> its streaming replies final in DB p50/max s",
            "-> a new prompt answered in each p50/max s",
        ],
        events,
    )
    report_verdict(
        f"scaleout verdict on {stack.database}",
        verdict,
        {"replies by agent": " ".join(f"{a[-6:]}:{n}" for a, n in sorted(by_agent.items()))},
    )
    stuck_stop = [v for v in stop_answered.values() if v is None]
    stuck_kill = [v for v in kill_answered.values() if v is None]
    slowest = max(
        [v for v in [*stop_answered.values(), *kill_answered.values()] if v is not None],
        default=0.0,
    )
    in_time = slowest <= MAX_TAKEOVER_SECONDS or not timing_judged()
    ok = (
        verdict.ok
        and stop_exit == 0
        and bool(killed_streaming)
        and all(status == "interrupted" for status, _ in settled.values())
        and not stop_interrupted
        and not stuck_stop
        and not stuck_kill
        and all(v is not None for v in gained_answered.values())
        and in_time
    )
    common.note(f"  joined {fourth_id}; stopped {stopped_id}; killed {victim_id}")
    summary = (
        f"{stack.database}: {verdict.summary()}; kill -9 -> its {len(killed_streaming)} "
        f"streaming replies final in DB p50/max {figure(settle_times)} s, a new prompt answered "
        f"in its {len(killed_owned)} conversations p50/max {figure(list(kill_answered.values()))} "
        f"s; clean stop -> its {len(stopped_owned)} conversations answered p50/max "
        f"{figure(list(stop_answered.values()))} s, {len(stop_interrupted)} of its replies "
        "ended interrupted"
    )
    return ok, summary
