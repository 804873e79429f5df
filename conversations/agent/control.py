"""The agents' control channel: this agent's presence there, and its view of who else is live.

Takes a realtime channel already made by the caller (ably-python's `RealtimeChannel`, or
anything shaped like it), so this module never imports the SDK. `start()` subscribes to the
channel's presence, enters with `events.control_presence_data(agent_id)` and reads the whole
member set; after that every presence event keeps `membership` current, and each change of the
member set is handed to `on_change`.

When the channel re-attaches without resuming (its presence state was lost, e.g. after the
connection was suspended), ably-python re-syncs but emits no `leave` for members that went
meanwhile; the whole set is read again then.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from conversations import events

from .membership import Membership, MembershipChange, PresenceEntry

logger = logging.getLogger(__name__)

# PresenceMessage actions of the Ably protocol (TP2).
PRESENCE_ABSENT = 0
PRESENCE_PRESENT = 1
PRESENCE_ENTER = 2
PRESENCE_LEAVE = 3
PRESENCE_UPDATE = 4
LIVE_ACTIONS = frozenset({PRESENCE_PRESENT, PRESENCE_ENTER, PRESENCE_UPDATE})
GONE_ACTIONS = frozenset({PRESENCE_ABSENT, PRESENCE_LEAVE})


class PresenceMessageLike(Protocol):
    @property
    def action(self) -> int: ...
    @property
    def connection_id(self) -> str | None: ...
    @property
    def client_id(self) -> str | None: ...
    @property
    def data(self) -> Any: ...


class PresenceLike(Protocol):
    def enter(self, data: Any = None) -> Awaitable[None]: ...
    def leave(self, data: Any = None) -> Awaitable[None]: ...
    def update(self, data: Any = None) -> Awaitable[None]: ...
    def get(self) -> Awaitable[Sequence[PresenceMessageLike]]: ...
    def subscribe(self, listener: Callable[[Any], None]) -> Awaitable[None]: ...
    def unsubscribe(self, listener: Callable[[Any], None]) -> None: ...


class ChannelLike(Protocol):
    @property
    def presence(self) -> PresenceLike: ...
    def on(self, event: str, listener: Callable[[Any], None]) -> None: ...
    def off(self, event: str, listener: Callable[[Any], None]) -> None: ...


def presence_entry(message: PresenceMessageLike) -> PresenceEntry | None:
    """The entry a presence message is about; None if it names no agent or no connection."""
    agent_id = events.agent_id_from_control_presence(message.data)
    if agent_id is None or not message.connection_id:
        return None
    draining = events.control_presence_draining(message.data)
    return PresenceEntry(message.connection_id, message.client_id or "", agent_id, draining)


class ControlChannel:
    def __init__(
        self,
        channel: ChannelLike,
        agent_id: str,
        on_change: Callable[[MembershipChange], None] | None = None,
    ) -> None:
        self.channel = channel
        self.agent_id = agent_id
        self.membership = Membership(agent_id)
        # Called on the event loop, synchronously, after `membership` changed: it must not
        # block (schedule work instead).
        self.on_change = on_change
        self._refresh: asyncio.Task[None] | None = None
        self._running = False

    async def start(self) -> None:
        """Subscribe, enter and read the member set; raises what the SDK raises (e.g. 40160)."""
        # Subscribe before the snapshot: an event racing it is in both, and applying it twice
        # is harmless; one in neither cannot happen.
        try:
            await self.channel.presence.subscribe(self._on_presence)
            await self.channel.presence.enter(events.control_presence_data(self.agent_id))
            await self.refresh()
        except BaseException:
            self.channel.presence.unsubscribe(self._on_presence)
            raise
        self._running = True
        # Two listeners, not one for both events: ably-python 3.1 keeps one wrapper per listener,
        # so `off` of a listener registered for two events raises (KeyError inside pyee).
        self.channel.on("attached", self._on_attached)
        self.channel.on("update", self._on_update)

    async def refresh(self) -> None:
        """Replace the member set with the channel's current presence."""
        members = await self.channel.presence.get()
        entries = [entry for entry in map(presence_entry, members) if entry is not None]
        self._changed(self.membership.replace(entries))

    async def drain(self) -> None:
        """Say this agent is stopping: the others take its conversations over at once, but
        leave the replies it is still finishing alone until it leaves (`stop`)."""
        await self.channel.presence.update(
            events.control_presence_data(self.agent_id, draining=True)
        )

    async def stop(self) -> None:
        """Leave (others take this agent's conversations over at once) and stop listening."""
        self._running = False
        self.channel.off("attached", self._on_attached)
        self.channel.off("update", self._on_update)
        self.channel.presence.unsubscribe(self._on_presence)
        if self._refresh is not None:
            self._refresh.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresh
        try:
            await self.channel.presence.leave()
        except Exception as error:  # noqa: BLE001 - Ably ends our presence ~15 s after we go
            logger.warning("leaving the agents' control channel failed: %r", error)

    def _on_presence(self, message: PresenceMessageLike) -> None:
        if message.action in GONE_ACTIONS:
            if message.connection_id:
                change = self.membership.absent(message.connection_id, message.client_id or "")
                self._changed(change)
            return
        if message.action in LIVE_ACTIONS:
            entry = presence_entry(message)
            if entry is None:
                # An update that no longer names an agent ends what the entry meant.
                if message.connection_id:
                    change = self.membership.absent(message.connection_id, message.client_id or "")
                    self._changed(change)
                return
            self._changed(self.membership.present(entry))

    def _on_attached(self, state_change: Any) -> None:
        self._reattached(state_change)

    def _on_update(self, state_change: Any) -> None:
        # An UPDATE while attached with `resumed` false: continuity was lost (RTL12).
        self._reattached(state_change)

    def _reattached(self, state_change: Any) -> None:
        if not self._running or getattr(state_change, "resumed", True):
            return
        if self._refresh is None or self._refresh.done():
            self._refresh = asyncio.get_running_loop().create_task(self._refresh_logged())

    async def _refresh_logged(self) -> None:
        try:
            await self.refresh()
        except Exception as error:  # noqa: BLE001 - the next re-attach or event tries again
            logger.warning("reading the agents' control channel presence failed: %r", error)

    def _changed(self, change: MembershipChange | None) -> None:
        if change is None:
            return
        logger.info("agent %s sees %s", self.agent_id, change.describe())
        if self.on_change is not None:
            self.on_change(change)
