"""What a user's device sees, on ably-python: shared by the tests and the soak.

`Device`: a user's device on a conversation channel (a Django-minted JWT, like the browser's),
which publishes prompts and cancels and rebuilds replies with the product's own fold
(`conversations.transcript`, the same rules as the browser's), trusting only the agent's
clientId, for both streaming patterns.

`RecoveringDevice`: one that recovers like the browser must after a long outage, from channel
history. `Device` renders live messages. After a short outage Ably resumes the
connection and replays what was missed, so that is enough. After an outage longer than the
connection state TTL (2 minutes) the connection cannot be resumed: the channel re-attaches
without the RESUMED flag and whatever was published meanwhile never arrives live. This device
then reads the channel's history and replays it through the same fold
(`conversations.transcript`), which drops what it already has (tokens by seq, `response`
operations by serial and version), with the same rules as the browser's.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

from ably import AblyRealtime
from ably.types.message import Message as AblyMessage
from ably.types.presence import PresenceAction
from django.conf import settings

from conversations import events, realtime
from conversations.transcript import FoldedReply, Transcript

T = TypeVar("T")
# In Device.agent_status_history: the agent left presence.
LEFT = "(left)"
REPLY_TIMEOUT = 20.0

# ably-python retries a dropped connection every 15 s by default; tests want it quicker. The
# SDK has no setter for it, and reads the value at each retry, so it is set after construction.
RETRY_AFTER_MS = 300


# --- the device -------------------------------------------------------------------------------


# What a device shows of one reply (text, thinking, status, stop_reason, error, names, final).
Reply = FoldedReply


class Device:
    """A user's device on a conversation channel, rendering replies like a client must."""

    def __init__(self, user: Any, conversation_id: Any, ably_server: Any, token: str) -> None:
        from conversations.agent.ably_adapter import client_options

        self.user = user
        self.client_id = realtime.client_id_for_user(user)
        self.channel_name = events.conversation_channel(conversation_id)
        self.client = AblyRealtime(token=token, **client_options(ably_server.endpoint))
        self.channel = self.client.channels.get(self.channel_name)
        self.received: list[AblyMessage] = []
        self.agent_client_id = settings.ABLY_AGENT_CLIENT_ID
        # Every reply as the page shows it, folded from what this device received.
        self.transcript = Transcript(self.agent_client_id)
        # Every status the agent showed here, in order (see `_note_agent_status`).
        self.agent_status_history: list[str] = []
        self.agent_presence_status: str | None = None
        # Every ATTACHED (channel `attached`/`update`), and whether it was RESUMED.
        self.attach_changes: list[str] = []
        self._changed = asyncio.Event()

    async def attach(self) -> Device:
        self.channel.on("attached", self._on_attach_change)
        self.channel.on("update", self._on_attach_change)
        await self.channel.subscribe(self._on_message)
        await self.channel.presence.subscribe(self._on_presence)
        # The agent's presence as it was before this device attached (no event tells it).
        if self.agent_presence_status is None:
            statuses = await self.agent_statuses()
            if statuses and self.agent_presence_status is None:
                self.agent_presence_status = statuses[0]
        return self

    def _on_attach_change(self, change: Any) -> None:
        resumed = "resumed" if getattr(change, "resumed", False) else "not resumed"
        self.attach_changes.append(f"{change.previous}->{change.current}:{resumed}")

    def _on_presence(self, member: Any) -> None:
        if member.client_id != self.agent_client_id:
            return
        if member.action == PresenceAction.LEAVE:
            self.agent_presence_status = None
            self.agent_status_history.append(LEFT)
        elif isinstance(member.data, dict):
            self.agent_presence_status = member.data.get("status", "")
            self._note_agent_status(force=True)
        self._changed.set()

    def _note_agent_status(self, *, force: bool = False) -> None:
        """The agent's status as the page shows it: presence, or a reply in progress (thinking
        until its first text, then streaming), unless presence says `retrying`."""
        status = self.agent_presence_status
        if status and status != events.AgentStatus.RETRYING:
            for reply in self.replies.values():
                if reply.final:
                    continue
                if reply.text or reply.thinking:
                    status = str(events.AgentStatus.STREAMING)
                    break
                status = str(events.AgentStatus.THINKING)
        if status is None:
            return
        if force or self.agent_status_history[-1:] != [status]:
            self.agent_status_history.append(status)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.client.close()

    async def prompt(self, text: str, prompt_id: str | None = None) -> str:
        prompt = events.Prompt(prompt_id or str(uuid.uuid4()), text)
        await self.channel.publish(
            AblyMessage(name=str(prompt.name), data=prompt.data(), extras=prompt.extras())
        )
        return prompt.prompt_id

    async def cancel(self, *, response_id: str | None = None, prompt_id: str | None = None) -> None:
        cancel = events.Cancel(response_id=response_id, prompt_id=prompt_id)
        await self.channel.publish(
            AblyMessage(name=str(cancel.name), data=cancel.data(), extras=cancel.extras())
        )

    async def publish_raw(self, name: str, data: Any, extras: dict[str, Any]) -> None:
        await self.channel.publish(AblyMessage(name=name, data=data, extras=extras))

    @property
    def replies(self) -> dict[str, Reply]:
        """responseId -> what this device shows of that reply."""
        return self.transcript.replies

    @property
    def refusals(self) -> list[events.Refusal]:
        """The agent's refusals, trusted from its clientId only (forged ones are `ignored`)."""
        return self.transcript.refusals

    @property
    def ignored(self) -> list[AblyMessage]:
        """Agent-only messages from anyone but the agent, and malformed ones."""
        return self.transcript.ignored

    def _on_message(self, message: AblyMessage) -> None:
        self.received.append(message)
        if message.name in events.AGENT_NAMES:
            self.transcript.apply(message)
            self._note_agent_status()
            self._changed.set()

    async def wait_for(
        self, predicate: Callable[[], T | None], timeout: float = REPLY_TIMEOUT
    ) -> T:
        async with asyncio.timeout(timeout):
            while True:
                result = predicate()
                if result:
                    return result
                self._changed.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.2):
                        await self._changed.wait()

    async def refusal(
        self, predicate: Callable[[events.Refusal], bool], timeout: float = REPLY_TIMEOUT
    ) -> events.Refusal:
        """The first refusal from the agent that matches `predicate`."""
        return await self.wait_for(
            lambda: next((r for r in self.refusals if predicate(r)), None), timeout
        )

    def reply_for(self, prompt_id: str) -> Reply | None:
        """The newest reply to the prompt."""
        return self.transcript.reply_for(prompt_id)

    async def started(self, prompt_id: str, timeout: float = REPLY_TIMEOUT) -> Reply:
        return await self.wait_for(lambda: self.reply_for(prompt_id), timeout)

    async def streaming(self, prompt_id: str, timeout: float = REPLY_TIMEOUT) -> Reply:
        """Once some text of the reply has arrived."""

        def has_text() -> Reply | None:
            reply = self.reply_for(prompt_id)
            return reply if reply and reply.text else None

        return await self.wait_for(has_text, timeout)

    async def final_reply(self, prompt_id: str, timeout: float = REPLY_TIMEOUT) -> Reply:
        def done() -> Reply | None:
            reply = self.reply_for(prompt_id)
            return reply if reply and reply.final else None

        return await self.wait_for(done, timeout)

    async def agent_statuses(self) -> list[str]:
        members = await self.channel.presence.get()
        return [
            (m.data or {}).get("status", "")
            for m in members
            if m.client_id == self.agent_client_id and isinstance(m.data, dict)
        ]


class Endpoint:
    """Anything with an `.endpoint`, as `Device` expects from a stand-in (here: a proxy)."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint


class RecoveringDevice(Device):
    def __init__(self, user: Any, conversation_id: Any, endpoint: str, token: str) -> None:
        super().__init__(user, conversation_id, Endpoint(endpoint), token)
        self.client.options._Options__disconnected_retry_timeout = RETRY_AFTER_MS  # noqa: SLF001
        self.attaches = 0
        self.resumed: list[bool] = []
        self.recoveries = 0
        # (responseId, part, seq) of every token delivered live, to count doubled fragments.
        self.live_tokens: collections.Counter[tuple[str, str, int]] = collections.Counter()
        self._recovering: asyncio.Task[None] | None = None

    def _on_message(self, message: AblyMessage) -> None:
        if message.name == events.Name.TOKEN and message.client_id == self.agent_client_id:
            headers = (message.extras or {}).get("headers", {})
            key = (headers.get("responseId", ""), headers.get("part", ""), headers.get("seq", -1))
            self.live_tokens[key] += 1
        super()._on_message(message)

    @property
    def doubled_live_fragments(self) -> int:
        return sum(count - 1 for count in self.live_tokens.values() if count > 1)

    def _on_attach_change(self, change: Any) -> None:
        super()._on_attach_change(change)
        self.attaches += 1
        self.resumed.append(bool(getattr(change, "resumed", False)))
        if self.attaches > 1 and not getattr(change, "resumed", False):
            # Continuity lost: whatever was published while away is only in history now.
            self._recovering = asyncio.ensure_future(self.recover())

    async def recover(self) -> None:
        self.recoveries += 1
        items: list[AblyMessage] = []
        page = await self.channel.history(direction="forwards", limit=1000)
        while True:
            items.extend(page.items)
            if not page.has_next():
                break
            page = await page.next()
        for message in items:
            if message.name in events.AGENT_NAMES:
                super()._on_message(message)

    async def close(self) -> None:
        if self._recovering is not None:
            with contextlib.suppress(Exception):
                await self._recovering
        await super().close()
