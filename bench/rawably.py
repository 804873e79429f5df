"""A minimal Ably realtime client speaking the JSON wire protocol directly (no SDK).

Benchmarks open thousands of subscribing "devices"; ably-python costs several asyncio tasks and
a few hundred kB per client, which would make the subscriber side the bottleneck. This client
is one socket and one reader task: connect with key auth (`key=` and `clientId=` query params,
as ably-js sends them), attach, publish with msgSerial/ACK, and hand every MESSAGE frame to a
callback with the time it arrived. Heartbeats and presence frames are ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

from websockets.asyncio.client import ClientConnection, connect

ACTION_ACK = 1
ACTION_NACK = 2
ACTION_CONNECTED = 4
ACTION_ERROR = 9
ACTION_ATTACH = 10
ACTION_ATTACHED = 11
ACTION_MESSAGE = 15
ACTION_DETACHED = 13

# (arrival time from time.time(), channel name, message dict)
OnMessage = Callable[[float, str, dict[str, Any]], None]


class RawAblyError(RuntimeError):
    pass


class RawAblyClient:
    def __init__(
        self,
        port: int,
        key: str,
        *,
        client_id: str | None = None,
        on_message: OnMessage | None = None,
        echo: bool = True,
        host: str = "127.0.0.1",
    ) -> None:
        query = {"key": key, "format": "json", "heartbeats": "false", "v": "5"}
        if client_id:
            query["clientId"] = client_id
        if not echo:
            query["echo"] = "false"
        self.url = f"ws://{host}:{port}/?{urlencode(query)}"
        self.on_message = on_message
        self.socket: ClientConnection | None = None
        self.connection_id = ""
        self._serials = itertools.count()
        self._acks: dict[int, asyncio.Future[Any]] = {}
        self._attaching: dict[str, asyncio.Future[None]] = {}
        self._connected: asyncio.Future[None] | None = None
        self._reader: asyncio.Task[None] | None = None
        self.closed = False

    async def connect(self, timeout: float = 30.0) -> RawAblyClient:
        loop = asyncio.get_running_loop()
        self._connected = loop.create_future()
        self.socket = await connect(self.url, max_size=None, compression=None, open_timeout=timeout)
        self._reader = asyncio.create_task(self._read())
        await asyncio.wait_for(self._connected, timeout)
        return self

    async def attach(self, channel: str, timeout: float = 30.0) -> None:
        future = asyncio.get_running_loop().create_future()
        self._attaching[channel] = future
        await self._send({"action": ACTION_ATTACH, "channel": channel})
        await asyncio.wait_for(future, timeout)

    async def publish(
        self, channel: str, messages: list[dict[str, Any]], timeout: float = 30.0
    ) -> Any:
        """Publish and wait for the ACK; raises RawAblyError on NACK."""
        serial = next(self._serials)
        future = asyncio.get_running_loop().create_future()
        self._acks[serial] = future
        await self._send(
            {
                "action": ACTION_MESSAGE,
                "channel": channel,
                "msgSerial": serial,
                "messages": messages,
            }
        )
        return await asyncio.wait_for(future, timeout)

    async def _send(self, frame: dict[str, Any]) -> None:
        if self.socket is None:
            raise RawAblyError("not connected")
        await self.socket.send(json.dumps(frame, separators=(",", ":")))

    async def _read(self) -> None:
        assert self.socket is not None
        try:
            async for raw in self.socket:
                arrived = time.time()
                frame = json.loads(raw)
                self._dispatch(arrived, frame)
        except Exception as error:  # noqa: BLE001 - surfaced through the pending futures
            self._fail_all(RawAblyError(f"connection lost: {error!r}"))
        else:
            self._fail_all(RawAblyError("connection closed"))

    def _dispatch(self, arrived: float, frame: dict[str, Any]) -> None:
        action = frame.get("action")
        if action == ACTION_MESSAGE:
            if self.on_message is not None:
                channel = frame.get("channel", "")
                for message in frame.get("messages") or ():
                    self.on_message(arrived, channel, message)
        elif action == ACTION_ACK:
            self._settle_acks(frame, None)
        elif action == ACTION_NACK:
            error = frame.get("error") or {}
            self._settle_acks(
                frame, RawAblyError(f"NACK {error.get('code')}: {error.get('message')}")
            )
        elif action == ACTION_CONNECTED:
            self.connection_id = frame.get("connectionId", "")
            if self._connected is not None and not self._connected.done():
                self._connected.set_result(None)
        elif action == ACTION_ATTACHED:
            future = self._attaching.pop(frame.get("channel", ""), None)
            if future is not None and not future.done():
                future.set_result(None)
        elif action in (ACTION_ERROR, ACTION_DETACHED):
            error = frame.get("error") or {}
            failure = RawAblyError(f"{error.get('code')}: {error.get('message')}")
            channel = frame.get("channel")
            if channel:
                future = self._attaching.pop(channel, None)
                if future is not None and not future.done():
                    future.set_exception(failure)
            else:
                self._fail_all(failure)

    def _settle_acks(self, frame: dict[str, Any], error: Exception | None) -> None:
        first = frame.get("msgSerial", 0)
        for serial in range(first, first + (frame.get("count") or 1)):
            future = self._acks.pop(serial, None)
            if future is None or future.done():
                continue
            if error is None:
                future.set_result(frame.get("res"))
            else:
                future.set_exception(error)

    def _fail_all(self, error: Exception) -> None:
        futures = [*self._acks.values(), *self._attaching.values()]
        if self._connected is not None:
            futures.append(self._connected)
        self._acks.clear()
        self._attaching.clear()
        for future in futures:
            if not future.done():
                future.set_exception(error)

    async def close(self) -> None:
        self.closed = True
        if self.socket is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.socket.close(), 5)
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)


async def open_clients(
    count: int, factory: Callable[[int], RawAblyClient], *, parallel: int = 50
) -> list[RawAblyClient]:
    """Connect `count` clients, at most `parallel` handshakes at a time."""
    gate = asyncio.Semaphore(parallel)

    async def one(index: int) -> RawAblyClient:
        async with gate:
            return await factory(index).connect()

    return list(await asyncio.gather(*(one(i) for i in range(count))))
