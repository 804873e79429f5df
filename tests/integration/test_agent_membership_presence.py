"""Agents agree on who is live and who owns what, through presence on the control channel
(issue 15), with the real ably-python against the Ably stand-in: three agents converge, a clean
leave hands over at once, and a killed agent leaves after the presence timeout."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Callable

import pytest
from django.conf import settings

from conversations import events
from conversations.agent.control import ControlChannel
from conversations.agent.membership import MembershipChange
from emulators.ably.server import EmulatorServer
from emulators.ably.testing import REPO_ROOT, ably_realtime, connected, eventually

CONVERSATIONS = [str(uuid.uuid5(uuid.NAMESPACE_URL, f"control-{n}")) for n in range(200)]
# Ably keeps a dead connection's presence for 15 s; the stand-in's is shortened for the test.
PRESENCE_LEAVE_DELAY_MS = 1000
WAIT = 30
# A fresh interpreter importing Django and ably-python, on a machine busy with other tests.
PROCESS_START_WAIT = 90


class Member:
    """One agent's control channel, on a connection of its own, recording its changes."""

    def __init__(self, server: EmulatorServer, agent_id: str) -> None:
        self.client = ably_realtime(server, client_id=settings.ABLY_AGENT_CLIENT_ID)
        self.changes: list[MembershipChange] = []
        self.control = ControlChannel(
            self.client.channels.get(events.AGENTS_CONTROL_CHANNEL),
            agent_id,
            on_change=self.changes.append,
        )

    @property
    def members(self) -> frozenset[str]:
        return self.control.membership.members

    def owners(self) -> list[str]:
        return [self.control.membership.owner_of(c) for c in CONVERSATIONS]

    async def start(self) -> Member:
        await connected(self.client)
        await self.control.start()
        return self

    async def close(self) -> None:
        await self.client.close()


@pytest.fixture
def server(make_ably_server: Callable[..., EmulatorServer]) -> EmulatorServer:
    return make_ably_server(presence_leave_delay_ms=PRESENCE_LEAVE_DELAY_MS)


@contextlib.asynccontextmanager
async def members(server: EmulatorServer, *agent_ids: str) -> AsyncIterator[list[Member]]:
    started = [Member(server, agent_id) for agent_id in agent_ids]
    try:
        await asyncio.gather(*(member.start() for member in started))
        yield started
    finally:
        await asyncio.gather(*(member.close() for member in started))


async def converged(group: list[Member], expected: set[str]) -> list[str]:
    """Wait until every member of `group` sees exactly `expected`; the owners they agree on."""
    await eventually(
        lambda: all(member.members == expected for member in group),
        f"every member to see {sorted(expected)}",
        WAIT,
    )
    views = [member.owners() for member in group]
    assert all(view == views[0] for view in views)
    return views[0]


async def test_three_agents_agree_then_a_clean_leave_hands_its_share_to_the_others(
    server: EmulatorServer,
) -> None:
    async with members(server, "agent-a", "agent-b", "agent-c") as (a, b, c):
        owners = await converged([a, b, c], {"agent-a", "agent-b", "agent-c"})
        # Each owns a share; nobody else does.
        assert set(owners) == {"agent-a", "agent-b", "agent-c"}
        mine = {m.control.agent_id: sum(o == m.control.agent_id for o in owners) for m in (a, b, c)}
        assert all(share > 30 for share in mine.values()), mine

        await c.control.stop()
        after = await converged([a, b], {"agent-a", "agent-b"})
        # Only agent-c's conversations moved, each to one of the two left.
        for before_owner, after_owner in zip(owners, after, strict=True):
            assert after_owner == before_owner if before_owner != "agent-c" else after_owner
        assert set(after) == {"agent-a", "agent-b"}
        # What a said moved to it is exactly what it now owns of agent-c's.
        gained = a.changes[-1].moves(CONVERSATIONS).gained
        assert a.changes[-1].left == {"agent-c"}
        assert gained == {
            conversation
            for conversation, was, now in zip(CONVERSATIONS, owners, after, strict=True)
            if was == "agent-c" and now == "agent-a"
        }
        assert gained


async def test_an_agent_on_two_connections_is_one_member_until_both_go(
    server: EmulatorServer,
) -> None:
    async with members(server, "agent-a", "agent-b") as (a, old_b):
        await converged([a, old_b], {"agent-a", "agent-b"})
        # agent-b's replacement connection enters while the old one is still present (as after
        # a failed resume), then the old one leaves.
        async with members(server, "agent-b") as (new_b,):
            await converged([a, old_b, new_b], {"agent-a", "agent-b"})
            await old_b.control.stop()
            # Presence events arrive in order: once a sees agent-c, it has seen old_b's leave.
            async with members(server, "agent-c") as (c,):
                await converged([a, new_b, c], {"agent-a", "agent-b", "agent-c"})
                assert [change.joined for change in a.changes] == [{"agent-b"}, {"agent-c"}]
                assert not any(change.left for change in a.changes)
        # Both of agent-b's connections are gone now, and so is agent-c.
        await converged([a], {"agent-a"})


async def test_a_killed_agent_leaves_after_the_presence_timeout(server: EmulatorServer) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.integration.control_member",
        server.endpoint,
        server.key,
        settings.ABLY_AGENT_CLIENT_ID,
        "agent-doomed",
        cwd=REPO_ROOT,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "chatsite.settings"},
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), PROCESS_START_WAIT)
        assert line.strip() == b"entered"
        async with members(server, "agent-a", "agent-b") as (a, b):
            with_doomed = await converged([a, b], {"agent-a", "agent-b", "agent-doomed"})
            assert "agent-doomed" in with_doomed

            process.send_signal(signal.SIGKILL)
            await process.wait()
            after = await converged([a, b], {"agent-a", "agent-b"})
            for before_owner, after_owner in zip(with_doomed, after, strict=True):
                if before_owner != "agent-doomed":
                    assert after_owner == before_owner
            assert a.changes[-1].left == {"agent-doomed"}
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
