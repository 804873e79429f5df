"""Agent identity (issue 13): unique default ids, and one live process per agent id (a lease)."""

from __future__ import annotations

import asyncio
import datetime
import os
import socket
import subprocess
import sys
import uuid

import pytest
from django.utils import timezone

from conversations import actions, events
from conversations.agent.config import AgentConfig
from conversations.agent.identity import AgentIdInUse, Lease
from conversations.agent.store import replies_of_gone_agents
from conversations.models import AgentLease, Conversation, Message

pytestmark = pytest.mark.django_db(transaction=True)


def test_the_default_agent_id_is_unique_per_process():
    first = AgentConfig.from_settings().agent_id
    second = AgentConfig.from_settings().agent_id
    assert first != second
    assert first.startswith(f"{socket.gethostname()}-{os.getpid()}-")


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def hold(agent_id: str, *, host: str, pid: int, age_seconds: float = 0.0) -> AgentLease:
    at = timezone.now() - datetime.timedelta(seconds=age_seconds)
    return AgentLease.objects.create(
        agent_id=agent_id, instance="other", host=host, pid=pid, started_at=at, heartbeat_at=at
    )


async def acquire(lease: Lease) -> None:
    await lease.acquire()


def test_a_free_id_is_taken_and_released():
    lease = Lease(f"free-{uuid.uuid4().hex[:6]}", ttl=30)
    asyncio.run(acquire(lease))
    row = AgentLease.objects.get(agent_id=lease.agent_id)
    assert (row.instance, row.pid, lease.previous) == (lease.instance, os.getpid(), None)
    asyncio.run(lease.release())
    # Released: the next process takes it at once.
    successor = Lease(lease.agent_id, ttl=30)
    asyncio.run(acquire(successor))
    assert successor.previous is not None


def test_an_id_held_by_a_live_process_on_this_host_is_refused_at_once():
    agent_id = f"live-{uuid.uuid4().hex[:6]}"
    hold(agent_id, host=socket.gethostname(), pid=os.getppid())
    with pytest.raises(AgentIdInUse, match="in use by a running agent"):
        asyncio.run(acquire(Lease(agent_id, ttl=30)))
    assert AgentLease.objects.get(agent_id=agent_id).instance == "other"


def test_an_id_whose_process_died_on_this_host_is_taken_over_at_once():
    agent_id = f"dead-{uuid.uuid4().hex[:6]}"
    pid = dead_pid()
    hold(agent_id, host=socket.gethostname(), pid=pid)
    lease = Lease(agent_id, ttl=30)
    asyncio.run(acquire(lease))
    assert lease.previous is not None and lease.previous.pid == pid
    assert AgentLease.objects.get(agent_id=agent_id).instance == lease.instance


def test_an_id_held_on_another_host_is_refused_if_renewed_and_taken_if_it_lapses():
    agent_id = f"remote-{uuid.uuid4().hex[:6]}"
    hold(agent_id, host="elsewhere", pid=1)

    async def renewing_holder() -> None:
        # The other host's process is alive: it renews while this one watches.
        await asyncio.sleep(0.3)
        await asyncio.to_thread(
            lambda: AgentLease.objects.filter(agent_id=agent_id).update(heartbeat_at=timezone.now())
        )

    async def contest() -> None:
        renew = asyncio.create_task(renewing_holder())
        try:
            await Lease(agent_id, ttl=3).acquire()
        finally:
            await renew

    with pytest.raises(AgentIdInUse):
        asyncio.run(contest())

    # Never renewed again: after one ttl it has lapsed and is taken over.
    lease = Lease(agent_id, ttl=1)
    asyncio.run(acquire(lease))
    assert lease.previous is not None and lease.previous.host == "elsewhere"


def test_only_replies_of_agents_whose_lease_lapsed_count_as_abandoned(alice):
    conversation = Conversation.objects.create(owner=alice)
    hold("gone", host="h", pid=1, age_seconds=120)
    hold("alive", host="h", pid=2)

    def reply(agent_id: str) -> Message:
        prompt, _ = actions.record_prompt(
            conversation.pk, prompt_id=str(uuid.uuid4()), text="hi", client_id="user-1"
        )
        claimed = actions.claim_reply(
            prompt, response_id=str(uuid.uuid4()), model="m", agent_id=agent_id
        )
        assert claimed is not None
        return claimed

    gone, alive, unknown = reply("gone"), reply("alive"), reply("no-lease")
    lapsed_before = timezone.now() - datetime.timedelta(seconds=30)
    assert [r.pk for r in replies_of_gone_agents(lapsed_before)] == [gone.pk]
    assert events.Status.STREAMING == Message.objects.get(pk=alive.pk).status
    assert Message.objects.get(pk=unknown.pk).status == events.Status.STREAMING
