"""A device that recovers like the browser must after a long outage: from channel history.

`tests.agent_fixtures.Device` renders live messages. After a short outage Ably resumes the
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
from typing import Any

from ably.types.message import Message as AblyMessage

from conversations import events
from tests.agent_fixtures import Device

# ably-python retries a dropped connection every 15 s by default; tests want it quicker. The
# SDK has no setter for it, and reads the value at each retry, so it is set after construction.
RETRY_AFTER_MS = 300


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
