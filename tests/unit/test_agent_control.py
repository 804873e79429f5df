"""The control channel's bookkeeping against a fake channel: which presence events count, and a
re-attach that lost continuity reads the member set again (ably-python emits no leave for
members that went meanwhile)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import pytest

from conversations import events
from conversations.agent.control import (
    PRESENCE_ABSENT,
    PRESENCE_ENTER,
    PRESENCE_LEAVE,
    PRESENCE_PRESENT,
    PRESENCE_UPDATE,
    ControlChannel,
)
from conversations.agent.membership import MembershipChange
from emulators.ably.testing import eventually


@dataclass
class FakeMessage:
    action: int
    connection_id: str | None
    client_id: str | None
    data: Any


def present(agent_id: str, action: int = PRESENCE_PRESENT) -> FakeMessage:
    return FakeMessage(action, f"conn-{agent_id}", "agent", events.control_presence_data(agent_id))


class FakePresence:
    def __init__(self) -> None:
        self.members: list[FakeMessage] = []
        self.listeners: list[Callable[[Any], None]] = []
        self.entered: list[Any] = []
        self.left = 0

    async def enter(self, data: Any = None) -> None:
        self.entered.append(data)

    async def leave(self, data: Any = None) -> None:
        self.left += 1

    async def get(self) -> list[FakeMessage]:
        return list(self.members)

    async def subscribe(self, listener: Callable[[Any], None]) -> None:
        self.listeners.append(listener)

    def unsubscribe(self, listener: Callable[[Any], None]) -> None:
        if listener in self.listeners:
            self.listeners.remove(listener)

    def emit(self, message: FakeMessage) -> None:
        for listener in list(self.listeners):
            listener(message)


class FakeChannel:
    def __init__(self) -> None:
        self.presence = FakePresence()
        self.state_listeners: dict[str, list[Callable[[Any], None]]] = {}

    def on(self, event: str, listener: Callable[[Any], None]) -> None:
        self.state_listeners.setdefault(event, []).append(listener)

    def off(self, event: str, listener: Callable[[Any], None]) -> None:
        self.state_listeners[event].remove(listener)

    def emit_state(self, event: str, resumed: bool) -> None:
        for listener in list(self.state_listeners.get(event, [])):
            listener(SimpleNamespace(current="attached", resumed=resumed))


async def started(channel: FakeChannel, changes: list[MembershipChange]) -> ControlChannel:
    control = ControlChannel(channel, "me", on_change=changes.append)
    await control.start()
    return control


async def test_start_enters_with_the_agent_id_and_reads_the_members() -> None:
    channel = FakeChannel()
    channel.presence.members = [present("me"), present("other")]
    changes: list[MembershipChange] = []
    control = await started(channel, changes)
    assert channel.presence.entered == [{"agentId": "me"}]
    assert control.membership.members == {"me", "other"}
    assert [change.joined for change in changes] == [{"other"}]
    await control.stop()
    assert channel.presence.left == 1
    assert channel.presence.listeners == []
    assert all(not listeners for listeners in channel.state_listeners.values())


async def test_a_refused_enter_leaves_nothing_subscribed() -> None:
    channel = FakeChannel()

    async def refused(data: Any = None) -> None:
        raise PermissionError("40160")

    channel.presence.enter = refused  # type: ignore[method-assign]
    control = ControlChannel(channel, "me")
    with pytest.raises(PermissionError):
        await control.start()
    assert channel.presence.listeners == []
    assert not any(channel.state_listeners.values())


async def test_enter_update_present_count_leave_and_absent_remove_others_are_ignored() -> None:
    channel = FakeChannel()
    control = await started(channel, [])
    channel.presence.emit(present("a", PRESENCE_ENTER))
    channel.presence.emit(present("b", PRESENCE_UPDATE))
    channel.presence.emit(present("c", PRESENCE_PRESENT))
    # Entries that name no agent, or no connection, are not members.
    channel.presence.emit(FakeMessage(PRESENCE_ENTER, "conn-x", "agent", {"status": "idle"}))
    channel.presence.emit(FakeMessage(PRESENCE_ENTER, None, "agent", {"agentId": "ghost"}))
    assert control.membership.members == {"me", "a", "b", "c"}
    channel.presence.emit(present("a", PRESENCE_LEAVE))
    channel.presence.emit(present("b", PRESENCE_ABSENT))
    assert control.membership.members == {"me", "c"}
    # An update that stops naming an agent ends that entry's membership.
    channel.presence.emit(FakeMessage(PRESENCE_UPDATE, "conn-c", "agent", None))
    assert control.membership.members == {"me"}


async def test_a_reattach_without_resume_reads_the_members_again() -> None:
    channel = FakeChannel()
    channel.presence.members = [present("me"), present("gone")]
    changes: list[MembershipChange] = []
    control = await started(channel, changes)
    assert control.membership.members == {"me", "gone"}
    # While detached, "gone" left and "new" came; the SDK cleared its map and said nothing.
    channel.presence.members = [present("me"), present("new")]
    channel.emit_state("attached", resumed=True)  # Continuity kept: the events are whole.
    await asyncio.sleep(0)
    assert control.membership.members == {"me", "gone"}
    channel.emit_state("attached", resumed=False)
    await eventually(lambda: control.membership.members == {"me", "new"}, "the new member set")
    assert changes[-1].left == {"gone"} and changes[-1].joined == {"new"}
    # The same for an UPDATE that reports lost continuity.
    channel.presence.members = [present("me")]
    channel.emit_state("update", resumed=False)
    await eventually(lambda: control.membership.members == {"me"}, "only this agent")
    await control.stop()
