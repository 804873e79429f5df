"""Agents share the work (issue 15), with the real SDKs against the stand-ins: each conversation
is attached and answered by one agent, devices see that one agent in its presence, and a join, a
clean stop and a kill -9 hand conversations over without losing or repeating a prompt.

The database is the oracle for "exactly once": one assistant row per prompt, written by the
agent that owns the conversation.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections import Counter
from typing import Any

import pytest
from ably.types.presence import PresenceAction
from asgiref.sync import sync_to_async
from django.conf import settings

from conversations import events
from conversations.agent.membership import owner_of
from conversations.models import Conversation, Message
from tests.agent_fixtures import AgentProcess, AgentThread, Device, lifecycle_ably_config

pytestmark = pytest.mark.slow

CONVERSATIONS = 10
# Ably keeps a dead connection's presence for ~15 s; the stand-in's is shortened here.
PRESENCE_GRACE_MS = 2000
TAKEOVER_WAIT = 30.0
REPLY_WAIT = 60.0
LONG_TEXT = " ".join(f"word{i}" for i in range(300))


@pytest.fixture
def agent_ably_config() -> dict[str, Any]:
    return lifecycle_ably_config(presence_leave_delay_ms=PRESENCE_GRACE_MS)


# --- helpers ----------------------------------------------------------------------------------


async def create_conversations(owner: Any, count: int = CONVERSATIONS) -> list[Conversation]:
    """Conversations with fixed ids, so who owns which is the same on every run."""
    return [
        await Conversation.objects.acreate(
            owner=owner, id=uuid.uuid5(uuid.NAMESPACE_URL, f"scale-out-{n}")
        )
        for n in range(count)
    ]


async def start(start_agent: Any, agent_id: str) -> AgentThread:
    return await asyncio.to_thread(start_agent, agent_id=agent_id)


async def attached(agent: AgentThread) -> dict[str, bool]:
    """The conversations the agent holds: id -> whether it still answers it (not released)."""

    async def read() -> dict[str, bool]:
        assert agent.agent is not None
        return {c: not s.released for c, s in agent.agent.sessions.items()}

    return await agent.acall(read)


def owners(conversation_ids: list[str], agent_ids: list[str]) -> dict[str, str]:
    return {c: owner_of(c, agent_ids) or "" for c in conversation_ids}


async def wait_divided(agents: list[AgentThread], conversation_ids: list[str]) -> float:
    """Until each conversation is attached by its owner alone; how long that took."""
    began = time.monotonic()
    expected = owners(conversation_ids, [a.config.agent_id for a in agents])
    views: list[dict[str, bool]] = []
    while time.monotonic() - began < TAKEOVER_WAIT:
        views = [await attached(agent) for agent in agents]
        held = {
            agent.config.agent_id: {c for c in view if c in expected}
            for agent, view in zip(agents, views, strict=True)
        }
        if all(
            held[agent_id] == {c for c, owner in expected.items() if owner == agent_id}
            for agent_id in held
        ) and all(all(view.values()) for view in views):
            return time.monotonic() - began
        await asyncio.sleep(0.1)
    raise AssertionError(f"conversations not divided as {expected}: {views}")


def assistant_rows(prompt_ids: list[str]) -> list[Message]:
    return list(Message.objects.filter(prompt_id__in=prompt_ids, role=Message.Role.ASSISTANT))


async def assert_answered_once(sent: dict[str, Device], owner_by_conversation: Any) -> None:
    """One complete assistant row per prompt, by the conversation's owner; one start each."""
    rows = await sync_to_async(assistant_rows)(list(sent))
    counts = Counter(str(row.prompt_id) for row in rows)
    assert counts == Counter({prompt_id: 1 for prompt_id in sent}), counts
    assert all(row.status == Message.Status.COMPLETE for row in rows)
    for row in rows:
        assert row.agent_id in owner_by_conversation(str(row.conversation_id)), row.agent_id
    for phone in set(sent.values()):
        starts = Counter(
            m.extras["headers"]["promptId"] for m in phone.received if m.name == events.Name.START
        )
        assert all(count == 1 for count in starts.values()), starts


class AgentPresence:
    """What one device sees of the agents in its conversation's presence, entry by entry."""

    def __init__(self, device: Device) -> None:
        self.device = device
        # connectionId -> the agentId its entry names.
        self.present: dict[str, str] = {}
        self.most_at_once = 0
        self.agent_ids_seen: set[str] = set()

    async def watch(self) -> AgentPresence:
        await self.device.channel.presence.subscribe(self._on_presence)
        for member in await self.device.channel.presence.get():
            self._on_presence(member)
        return self

    def _on_presence(self, member: Any) -> None:
        if member.client_id != settings.ABLY_AGENT_CLIENT_ID:
            return
        if member.action in (PresenceAction.LEAVE, PresenceAction.ABSENT):
            self.present.pop(member.connection_id, None)
            return
        agent_id = (member.data or {}).get("agentId", "") if isinstance(member.data, dict) else ""
        self.present[member.connection_id] = agent_id
        self.agent_ids_seen.add(agent_id)
        self.most_at_once = max(self.most_at_once, len(self.present))

    def shows_only(self, agent_id: str) -> bool:
        return list(self.present.values()) == [agent_id]


# --- (a) the work is divided, each prompt answered once ----------------------------------------


async def test_three_agents_divide_the_conversations_and_answer_each_prompt_once(
    start_agent, devices, alice, anthropic_server
):
    conversations = await create_conversations(alice)
    ids = [str(c.pk) for c in conversations]
    agents = [await start(start_agent, f"share-{n}") for n in range(3)]
    await wait_divided(agents, ids)
    agent_ids = [a.config.agent_id for a in agents]
    shares = Counter(owners(ids, agent_ids).values())
    # Each of the three owns some of these ten (fixed ids).
    assert len(shares) == 3, shares

    phones = [await devices(alice, c) for c in conversations]
    sent = {}
    for phone in phones:
        sent[await phone.prompt(f"Say exactly: Answer on {phone.channel_name}.")] = phone
    for prompt_id, phone in sent.items():
        assert (await phone.final_reply(prompt_id, REPLY_WAIT)).status == events.Status.COMPLETE
    await assert_answered_once(sent, lambda c: {owner_of(c, agent_ids)})
    # Still divided: answering attached nothing anywhere else.
    await wait_divided(agents, ids)


# --- (b) devices see one agent -----------------------------------------------------------------


async def test_a_device_sees_one_agent_the_owner_while_agents_join_and_leave(
    start_agent, devices, alice
):
    conversations = await create_conversations(alice, 6)
    ids = [str(c.pk) for c in conversations]
    first = await start(start_agent, "presence-0")
    watches = [AgentPresence(await devices(alice, c)) for c in conversations]
    for watch in watches:
        await watch.watch()
    await asyncio.gather(
        *(w.device.wait_for(lambda w=w: w.shows_only("presence-0")) for w in watches)
    )

    second = await start(start_agent, "presence-1")
    third = await start(start_agent, "presence-2")
    agents = [first, second, third]
    await wait_divided(agents, ids)
    expected = owners(ids, [a.config.agent_id for a in agents])
    owners_of_three = set(expected.values())
    for watch, conversation_id in zip(watches, ids, strict=True):
        await watch.device.wait_for(lambda w=watch, c=conversation_id: w.shows_only(expected[c]))
    # The third's share moves when it stops (fixed ids: it owns some).
    assert "presence-2" in owners_of_three

    await asyncio.to_thread(third.stop, 1.0)
    agents = [first, second]
    await wait_divided(agents, ids)
    expected = owners(ids, [a.config.agent_id for a in agents])
    for watch, conversation_id in zip(watches, ids, strict=True):
        await watch.device.wait_for(lambda w=watch, c=conversation_id: w.shows_only(expected[c]))

    assert [w.most_at_once for w in watches] == [1] * len(watches)
    # Every conversation that moved showed its new owner, by agent id.
    assert set().union(*(w.agent_ids_seen for w in watches)) == {"presence-0"} | owners_of_three


# --- (c) a prompt during a rebalance -----------------------------------------------------------


async def test_prompts_sent_while_agents_join_are_each_answered_once(
    start_agent, devices, alice, anthropic_server
):
    anthropic_server.set_pacing(tokens_per_second=200)
    conversations = await create_conversations(alice, 5)
    agents = [await start(start_agent, "rebalance-0")]
    phones = [await devices(alice, c) for c in conversations]
    sent: dict[str, Device] = {}

    async def prompt_round(number: int) -> None:
        for phone in phones:
            text = f"Say exactly: Round {number} on {phone.channel_name}, with some words."
            sent[await phone.prompt(text)] = phone

    # Fifteen prompts from one user: under the 20 a minute one user may send.
    await prompt_round(0)
    # Agents join while the replies stream and the next rounds arrive.
    for number, agent_id in ((1, "rebalance-1"), (2, "rebalance-2")):
        joining = asyncio.ensure_future(start(start_agent, agent_id))
        await prompt_round(number)
        agents.append(await joining)

    for prompt_id, phone in sent.items():
        assert (await phone.final_reply(prompt_id, REPLY_WAIT)).status == events.Status.COMPLETE
    await asyncio.gather(*(agent.wait_idle() for agent in agents))
    every_agent = {a.config.agent_id for a in agents}
    # Whoever owned the conversation when the prompt came answered it (which agent that was
    # depends on the moment); exactly once is the point.
    await assert_answered_once(sent, lambda c: every_agent)
    await wait_divided(agents, [str(c.pk) for c in conversations])


# --- (d) a clean stop hands over at once -------------------------------------------------------


async def test_a_clean_stop_hands_the_agents_conversations_over_at_once(
    start_agent, devices, alice
):
    conversations = await create_conversations(alice)
    ids = [str(c.pk) for c in conversations]
    staying = await start(start_agent, "stay")
    leaving = await start(start_agent, "leave")
    await wait_divided([staying, leaving], ids)
    moving = [c for c, o in owners(ids, ["stay", "leave"]).items() if o == "leave"]
    assert moving
    phone = await devices(alice, next(c for c in conversations if str(c.pk) == moving[0]))

    stopped_at = time.monotonic()
    await asyncio.to_thread(leaving.stop, 1.0)
    # Sent at once, before the survivor has necessarily attached: caught up from history.
    prompt_id = await phone.prompt("Say exactly: Still answered.")
    await wait_divided([staying], ids)
    took = time.monotonic() - stopped_at
    print(f"clean stop: {len(moving)} conversations taken over {took:.2f}s after the stop began")
    reply = await phone.final_reply(prompt_id, REPLY_WAIT)
    assert (reply.status, reply.text) == ("complete", "Still answered.")
    answered_in = time.monotonic() - stopped_at
    print(f"clean stop: the first prompt after it answered {answered_in:.2f}s after the stop")
    await assert_answered_once({prompt_id: phone}, lambda c: {"stay"})


async def test_a_clean_stop_mid_reply_finishes_that_reply_while_another_agent_takes_over(
    start_agent, devices, alice, anthropic_server
):
    # Stopping cleanly, an agent first says it drains: the others own its conversations from
    # then on, but must not settle the reply it is still finishing as interrupted.
    conversations = await create_conversations(alice)
    ids = [str(c.pk) for c in conversations]
    staying = await start(start_agent, "stay")
    leaving = await start(start_agent, "leave")
    await wait_divided([staying, leaving], ids)
    moving = [c for c, o in owners(ids, ["stay", "leave"]).items() if o == "leave"]
    phone = await devices(alice, next(c for c in conversations if str(c.pk) == moving[0]))
    anthropic_server.set_pacing(tokens_per_second=60)
    long_one = await phone.prompt(f"Say exactly: {LONG_TEXT}")
    await phone.streaming(long_one)

    stopping = asyncio.ensure_future(asyncio.to_thread(leaving.stop, 60.0))
    await wait_divided([staying], ids)  # taken over while the reply still streams
    assert phone.reply_for(long_one).status == "streaming"
    anthropic_server.set_pacing()
    follow_up = await phone.prompt("Say exactly: The new owner answers.")
    finished = await phone.final_reply(long_one, REPLY_WAIT)
    assert (finished.status, finished.text) == ("complete", LONG_TEXT)
    answer = await phone.final_reply(follow_up, REPLY_WAIT)
    assert (answer.status, answer.text) == ("complete", "The new owner answers.")
    await stopping
    stored = await sync_to_async(
        lambda: {str(m.prompt_id): m for m in assistant_rows([long_one, follow_up])}
    )()
    assert (stored[long_one].status, stored[long_one].text) == ("complete", LONG_TEXT)
    assert stored[long_one].agent_id == "leave" and stored[follow_up].agent_id == "stay"


# --- (e) kill -9 of an agent process mid-reply -------------------------------------------------


async def test_kill_9_of_an_owner_mid_reply_interrupts_it_and_a_survivor_takes_over(
    agent_processes, devices, alice, anthropic_server
):
    anthropic_server.set_pacing(tokens_per_second=40)
    conversation = await Conversation.objects.acreate(owner=alice)
    names = ["proc-a", "proc-b"]
    victim_id = owner_of(conversation.pk, names)
    [survivor_id] = [n for n in names if n != victim_id]
    processes = {name: agent_processes(name) for name in names}
    await asyncio.gather(*(p.await_ready() for p in processes.values()))
    victim, survivor = processes[victim_id], processes[survivor_id]
    phone = await devices(alice, conversation)
    watch = await AgentPresence(phone).watch()
    # Both processes may have started alone; wait until the owner alone shows.
    await phone.wait_for(lambda: watch.shows_only(victim_id), TAKEOVER_WAIT)
    doomed = await phone.prompt(f"Say exactly: {LONG_TEXT}")
    await phone.streaming(doomed)

    await asyncio.to_thread(victim.kill)
    killed_at = time.monotonic()
    # Before the lease of the dead agent's id lapses (30 s): its presence ending told the
    # survivor.
    interrupted = await phone.final_reply(doomed, timeout=25)
    settled_in = time.monotonic() - killed_at
    assert interrupted.status == events.Status.INTERRUPTED
    assert interrupted.text and LONG_TEXT.startswith(interrupted.text)
    anthropic_server.set_pacing()
    follow_up = await phone.prompt("Say exactly: A survivor answers.")
    reply = await phone.final_reply(follow_up, REPLY_WAIT)
    assert (reply.status, reply.text) == ("complete", "A survivor answers.")
    answered_in = time.monotonic() - killed_at
    print(
        f"kill -9 (presence grace {PRESENCE_GRACE_MS} ms): reply interrupted {settled_in:.2f}s, "
        f"next prompt answered {answered_in:.2f}s after the kill"
    )
    assert await asyncio.to_thread(survivor.terminate) == 0
    rows = {str(m.prompt_id): m for m in await sync_to_async(assistant_rows)([doomed, follow_up])}
    assert (rows[doomed].status, rows[doomed].agent_id) == ("interrupted", victim_id)
    assert rows[doomed].text == interrupted.text
    assert rows[follow_up].agent_id == survivor_id
    assert watch.shows_only(survivor_id) or not watch.present
    assert "conversations moved" in survivor.output()


async def test_kill_9_between_an_owners_save_and_its_stop_the_survivor_announces_the_outcome(
    agent_processes, devices, alice, stand_ins
):
    """Save, then say, across agents: the owner saved a reply and died before its `stop` left
    (the trap holds the frame and kills it there). Its devices hear the saved outcome from the
    survivor at the takeover, not once the dead agent's lease lapses (30 s) as before."""
    from urllib.parse import urlsplit

    from soak.proxy import StopTrap

    ably_server, _ = stand_ins
    target = urlsplit(ably_server.endpoint)
    trap = await StopTrap(target.hostname or "127.0.0.1", target.port or 80).start()
    conversation = await Conversation.objects.acreate(owner=alice)
    names = ["trap-a", "trap-b"]
    victim_id = owner_of(conversation.pk, names)
    [survivor_id] = [n for n in names if n != victim_id]
    victim = agent_processes(victim_id, env={"ABLY_ENDPOINT": trap.endpoint})
    survivor = agent_processes(survivor_id)
    await asyncio.gather(victim.await_ready(), survivor.await_ready())
    phone = await devices(alice, conversation)
    watch = await AgentPresence(phone).watch()
    await phone.wait_for(lambda: watch.shows_only(victim_id), TAKEOVER_WAIT)
    trap.arm("hold-stop", lambda: os.kill(victim.process.pid, signal.SIGKILL))

    doomed = await phone.prompt("Say exactly: Saved, then the agent died.")
    await asyncio.wait_for(trap.triggered.wait(), REPLY_WAIT)
    killed_at = time.monotonic()
    # Well before the lease lapses (30 s) and the janitor's pass would find it.
    reply = await phone.final_reply(doomed, timeout=20)
    announced_in = time.monotonic() - killed_at
    assert (reply.status, reply.text) == ("complete", "Saved, then the agent died.")
    [row] = await sync_to_async(assistant_rows)([doomed])
    assert (row.status, row.agent_id) == ("complete", victim_id)
    # The survivor logs the announcement once its publishes are acknowledged, which can be
    # just after the device has the `stop`.
    await phone.wait_for(
        lambda: "never announced: announced it now" in survivor.output() or None, 10
    )
    print(f"kill -9 between save and stop: announced by the survivor {announced_in:.2f}s after")
    assert await asyncio.to_thread(survivor.terminate) == 0
    await trap.close()


# --- without the control channel, no agent starts ----------------------------------------------


async def test_an_agent_whose_key_cannot_reach_the_control_channel_exits_at_start(
    make_ably_server, anthropic_server, transactional_db
):
    # Every conversation and the lifecycle metachannel, but not `agents:control`.
    server = make_ably_server(
        key_capabilities={"devapp.devkey": '{"ai:*":["*"],"[meta]channel.lifecycle":["subscribe"]}'}
    )
    process = AgentProcess(server, anthropic_server, agent_id="no-control")
    try:
        returncode = await asyncio.to_thread(process.process.wait, 90)
        assert returncode == 1, process.output()
        assert events.AGENTS_CONTROL_CHANNEL in process.output()
        assert AgentProcess.READY_MARK not in process.output()
    finally:
        process.close()
