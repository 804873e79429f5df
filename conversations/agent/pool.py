"""A fixed pool of realtime connections; each channel always lives on the same one.

Ordering is per connection, so every operation on a channel goes through one connection while
it is attached (ai-transport B4/F1). A newly attached channel goes to the connection holding
the fewest, not to the one its name hashes to: Ably's 50 msg/s is per connection, and hashing
puts two busy conversations on one connection while another idles (with ten conversations on
ten connections, most runs had a connection carrying two or three replies, and their deltas
waited on each other). Each connection has its own rate limiter and holds at most
`max_channels_per_connection` attached channels (Ably allows 200), evicting its least recently
used idle conversation to make room.
"""

from __future__ import annotations

import asyncio
import logging
import zlib
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import aiohttp

from . import ably_adapter
from .ably_adapter import AblyRealtime
from .config import AgentConfig
from .streaming import RateLimiter

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT_SECONDS = 15.0
# How soon a dropped agent connection tries again (ably-python's default is 15 s). The agent is
# the client that must be back first after an Ably outage — its replies are what devices wait
# for — and it holds only a handful of connections, so retrying every 2 s costs Ably little.
DISCONNECTED_RETRY_MS = 2000


def agent_transport_params(config: AgentConfig) -> dict[str, str]:
    """The realtime connection parameters of every agent connection."""
    return {
        # The agent never needs its own messages back (A8): they would only spend the budget.
        "echo": "false",
        "appendRollupWindow": str(config.append_rollup_window_ms),
    }


class PooledConnection:
    def __init__(self, index: int, client: AblyRealtime, limiter: RateLimiter) -> None:
        self.index = index
        self.client = client
        self.limiter = limiter
        # channel name -> owner object (most recently used last).
        self.attached: OrderedDict[str, Any] = OrderedDict()
        # Attached channels that are not conversations (the lifecycle metachannel).
        self.reserved = 0

    def has_room(self, max_channels: int) -> bool:
        return len(self.attached) + self.reserved < max_channels

    def touch(self, channel_name: str) -> None:
        if channel_name in self.attached:
            self.attached.move_to_end(channel_name)


class ConnectionPool:
    def __init__(
        self,
        config: AgentConfig,
        *,
        client_factory: Callable[[AgentConfig], AblyRealtime] | None = None,
    ) -> None:
        self.config = config
        self._client_factory = client_factory or self._default_client
        self.connections: list[PooledConnection] = []
        # History and channel listing (see `ably_adapter.RestReader`), not through a realtime
        # client: ably-python's (with token auth) sends an in-band AUTH on its connection before
        # every REST request it makes, which costs rate budget and can make Ably re-sync.
        self.rest: ably_adapter.RestReader | None = None

    @staticmethod
    def _default_client(config: AgentConfig) -> AblyRealtime:
        return ably_adapter.realtime_client(
            config.ably_endpoint,
            key=config.ably_key,
            client_id=config.agent_client_id,
            transport_params=agent_transport_params(config),
            disconnected_retry_ms=DISCONNECTED_RETRY_MS,
        )

    async def connect(self, http: aiohttp.ClientSession) -> None:
        """Open the realtime connections; REST reads go over `http` (the caller closes it)."""
        self.rest = ably_adapter.RestReader(
            self.config.ably_endpoint, key=self.config.ably_key, http=http
        )
        for index in range(self.config.connections):
            client = self._client_factory(self.config)
            self.connections.append(
                PooledConnection(index, client, RateLimiter(self.config.max_messages_per_second))
            )
        await asyncio.gather(
            *(
                ably_adapter.wait_connected(c.client, CONNECT_TIMEOUT_SECONDS)
                for c in self.connections
            )
        )

    def for_channel(self, channel_name: str) -> PooledConnection:
        """The connection the channel is attached on; for one attached nowhere (a publish on a
        conversation this agent does not hold), the one its name hashes to."""
        for connection in self.connections:
            if channel_name in connection.attached:
                return connection
        # crc32, not hash(): the same answer in every process and after a restart.
        index = zlib.crc32(channel_name.encode()) % len(self.connections)
        return self.connections[index]

    def for_new_channel(self) -> PooledConnection:
        """The connection to attach another channel on: the one holding the fewest."""
        return min(self.connections, key=lambda c: (len(c.attached) + c.reserved, c.index))

    @property
    def primary(self) -> PooledConnection:
        return self.connections[0]

    async def close(self) -> None:
        results = await asyncio.gather(
            *(c.client.close() for c in self.connections), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException):
                logger.warning("closing an Ably connection failed: %r", result)
        self.connections.clear()
        self.rest = None
