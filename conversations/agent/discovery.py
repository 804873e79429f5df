"""Finding the conversations to attach, and attaching each once.

A conversation is discovered from `[meta]channel.lifecycle` (a device opening its channel), by
listing the active `ai:` channels (every `discovery_interval`, and once at start-up: devices may
have prompted while no agent ran), and at start-up from the database (recent activity or
unanswered prompts). However often it is discovered, it is attached once: one
`ConversationSession` per conversation, on the connection with the most room (the least recently
used idle channel makes way when every connection is full).

With several agent processes (issue 15), each discovers only the conversations it owns
(`host.owns`, rendezvous hashing over the live agents): the others' are skipped. The ids the
last listing found are kept (`known_ids`), owned or not, so a membership change can open the
ones that moved to this agent.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from collections.abc import Callable, Iterable
from typing import Protocol

from conversations import events

from . import store
from .ably_adapter import AblyMessage
from .pool import PooledConnection
from .session import ConversationSession, SessionHost
from .store import db, db_retrying

logger = logging.getLogger(__name__)

LIFECYCLE_CHANNEL = "[meta]channel.lifecycle"
OPEN_EVENTS = frozenset({"channel.opened", "channel.region.active"})
# History is read from a little before the moment a channel opened: the prompt a device
# publishes right after attaching can land before the agent's own attach completes.
DISCOVERY_LOOKBACK_SECONDS = 10.0
FALLBACK_DISCOVERY_INTERVAL = 2.0


class DiscoveryHost(SessionHost, Protocol):
    """What discovery needs from the agent process besides what a session does."""

    def owns(self, conversation_id: str) -> bool:
        """Whether this agent answers the conversation (see `membership`)."""
        ...


class Discovery:
    """The attached conversations (`sessions`) and how they came to be attached."""

    def __init__(self, host: DiscoveryHost) -> None:
        self.host = host
        self.sessions: dict[str, ConversationSession] = {}
        self.opening: dict[str, asyncio.Task[ConversationSession | None]] = {}
        # Every conversation id the last channel listing found, whoever owns it.
        self.known_ids: set[str] = set()

    def on_lifecycle(self, message: AblyMessage) -> None:
        if message.name not in OPEN_EVENTS or self.host.stopping:
            return
        details = message.data if isinstance(message.data, dict) else {}
        channel_name = details.get("channelId") or details.get("name") or ""
        conversation_id = events.conversation_id_from_channel(channel_name)
        if conversation_id is None or str(conversation_id) in self.sessions:
            return
        self.known_ids.add(str(conversation_id))
        if not self.host.owns(str(conversation_id)):
            return
        opened_ms = message.timestamp or int(time.time() * 1000)
        since_ms = int(opened_ms - DISCOVERY_LOOKBACK_SECONDS * 1000)
        self.host.spawn(self.open_conversation(str(conversation_id), history_since_ms=since_ms))

    async def discovery_loop(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            await self.discover_active_channels(
                lookback_seconds=interval + DISCOVERY_LOOKBACK_SECONDS
            )

    async def discover_active_channels(self, *, lookback_seconds: float) -> None:
        """Attach every active `ai:` channel not attached yet (channel enumeration, REST)."""
        try:
            assert self.host.pool.rest is not None
            names = await self.host.pool.rest.channel_names(events.CONVERSATION_CHANNEL_PREFIX)
        except Exception as error:  # noqa: BLE001 - try again next round
            logger.warning("listing active channels failed: %r", error)
            return
        since_ms = int((time.time() - lookback_seconds) * 1000)
        listed: set[str] = set()
        for name in names:
            conversation_id = events.conversation_id_from_channel(name)
            if conversation_id is not None:
                listed.add(str(conversation_id))
        self.known_ids = listed
        for listed_id in listed:
            if listed_id not in self.sessions and self.host.owns(listed_id):
                self.host.spawn(self.open_conversation(listed_id, history_since_ms=since_ms))

    async def catch_up_from_database(
        self,
        since: datetime.datetime,
        *,
        only: Callable[[Iterable[str]], Iterable[str]] | None = None,
    ) -> None:
        """Attach the owned conversations with activity or an unanswered prompt since `since`,
        reading their channels' history from then (`only` narrows the candidates further)."""
        recent: Iterable[str] = await db(store.conversations_with_recent_activity, since)
        if only is not None:
            recent = only(recent)
        since_ms = int(since.timestamp() * 1000)
        await asyncio.gather(
            *(
                self.open_conversation(c, history_since_ms=since_ms)
                for c in recent
                if c not in self.sessions and self.host.owns(c)
            )
        )

    async def open_conversation(
        self, conversation_id: str, *, history_since_ms: int | None = None
    ) -> ConversationSession | None:
        """Attach to a conversation (once, however many times it is discovered) and catch up."""
        conversation_id = str(conversation_id)
        if conversation_id in self.sessions:
            session = self.sessions[conversation_id]
            session.connection.touch(session.channel_name)
            return session
        if conversation_id not in self.opening:
            self.opening[conversation_id] = asyncio.create_task(
                self._open(conversation_id, history_since_ms)
            )
        task = self.opening[conversation_id]
        try:
            return await asyncio.shield(task)
        finally:
            if task.done():
                self.opening.pop(conversation_id, None)

    async def _open(
        self, conversation_id: str, history_since_ms: int | None
    ) -> ConversationSession | None:
        if self.host.stopping:
            return None
        # A deleted conversation's channel is attached too: its devices get refusals.
        deleted = not await db_retrying(store.conversation_exists, conversation_id)
        channel_name = events.conversation_channel(conversation_id)
        connection = self.host.pool.for_new_channel()
        if not connection.has_room(self.host.config.max_channels_per_connection):
            if not await self._evict_one(connection):
                logger.error(
                    "every connection already holds %d busy channels; not attaching %s "
                    "(run with more --connections)",
                    len(connection.attached),
                    channel_name,
                )
                return None
        session = ConversationSession(self.host, conversation_id, connection, deleted=deleted)
        connection.attached[channel_name] = session
        self.sessions[conversation_id] = session
        try:
            await session.open(history_since_ms=history_since_ms)
        except Exception:
            logger.exception("attaching %s failed", channel_name)
            self.sessions.pop(conversation_id, None)
            connection.attached.pop(channel_name, None)
            await session.close(leave=False)
            return None
        logger.info("attached %s on connection %d", channel_name, connection.index)
        return session

    async def _evict_one(self, connection: PooledConnection) -> bool:
        for session in list(connection.attached.values()):  # least recently used first
            if not session.busy:
                await self.close_session(session)
                return True
        return False

    async def close_session(self, session: ConversationSession) -> None:
        self.sessions.pop(session.conversation_id, None)
        session.connection.attached.pop(session.channel_name, None)
        await session.close()
        logger.info("detached %s", session.channel_name)
