"""A TCP proxy that can cut the network: what a device's Wi-Fi dropping looks like to Ably.

Clients connect to the proxy's port instead of the stand-in's. `cut()` abruptly closes every
proxied connection and refuses new ones (connection refused, as with no route to the host)
until `restore()`. Runs on whichever event loop starts it; only that loop may call it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any


class NetworkProxy:
    def __init__(self, target_host: str, target_port: int, *, host: str = "127.0.0.1") -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.host = host
        self.port = 0
        self.cuts = 0
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> NetworkProxy:
        self._server = await asyncio.start_server(self._accept, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def cut(self) -> None:
        """The network goes away: live connections die mid-stream, new ones are refused."""
        self.cuts += 1
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._writers):
            # An abortive close (RST), not a polite FIN: nothing more gets through either way.
            transport = writer.transport
            if transport is not None:
                transport.abort()
        self._writers.clear()
        for task in list(self._pipes):
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)
        self._pipes.clear()

    async def restore(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(self._accept, self.host, self.port)

    async def close(self) -> None:
        await self.cut()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(
                self.target_host, self.target_port
            )
        except OSError:
            writer.close()
            return
        self._writers.update({writer, upstream_writer})
        pipes = [
            asyncio.ensure_future(self._pipe(reader, upstream_writer)),
            asyncio.ensure_future(self._pipe(upstream_reader, writer)),
        ]
        self._pipes.update(pipes)
        await asyncio.gather(*pipes, return_exceptions=True)
        for stream in (writer, upstream_writer):
            self._writers.discard(stream)
            with contextlib.suppress(Exception):
                stream.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()


class StopTrap:
    """A WebSocket-aware proxy in front of the Ably stand-in for the agent alone: it catches the
    instant the agent publishes a reply's `stop`, which nothing outside the agent can see coming.

    Once armed, the first agent frame carrying a `stop` message either
    - `hold-stop`: never reaches Ably (nor does anything after it on that connection), or
    - `drop-ack`:  reaches Ably (devices get it), but nothing Ably sends back (the ACK) reaches
      the agent;
    and `on_trigger` runs at that moment (the scenario kills the agent there: kill -9 between the
    final text and `stop`, before or after `stop` went out). To read the frames the proxy strips
    the client's permessage-deflate offer from the upgrade request, so they are uncompressed;
    ably-python publishes msgpack (or JSON) ProtocolMessages, where a message named `stop` is
    the bytes `\\xa4stop` (or `"name":"stop"`). Product code is untouched.
    """

    STOP_MARKERS = (b"\xa4stop", b'"name":"stop"')

    def __init__(self, target_host: str, target_port: int, *, host: str = "127.0.0.1") -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.host = host
        self.port = 0
        self.mode = ""
        self.on_trigger: Callable[[], None] | None = None
        self.triggered = asyncio.Event()
        self.triggers = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[Any]] = set()

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> StopTrap:
        self._server = await asyncio.start_server(self._accept, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def arm(self, mode: str, on_trigger: Callable[[], None]) -> None:
        if mode not in ("hold-stop", "drop-ack"):
            raise ValueError(f"unknown trap mode {mode!r}")
        self.mode = mode
        self.on_trigger = on_trigger
        self.triggered = asyncio.Event()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            if writer.transport is not None:
                writer.transport.abort()
        self._writers.clear()
        # Let every connection's handler see its sockets gone and return.
        await asyncio.gather(*self._handlers, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handler = asyncio.current_task()
        if handler is not None:
            self._handlers.add(handler)
            handler.add_done_callback(self._handlers.discard)
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(
                self.target_host, self.target_port
            )
        except OSError:
            writer.close()
            return
        self._writers.update({writer, upstream_writer})
        gate = {"to_agent": True}
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            head = b""
        websocket = b"upgrade: websocket" in head.lower()
        if websocket:
            head = b"".join(
                line
                for line in head.splitlines(keepends=True)
                if not line.lower().startswith(b"sec-websocket-extensions:")
            )
        upstream_writer.write(head)
        pipes = [
            asyncio.ensure_future(
                self._frames_to_ably(reader, upstream_writer, gate)
                if websocket
                else self._pipe(reader, upstream_writer, None)
            ),
            asyncio.ensure_future(self._pipe(upstream_reader, writer, gate)),
        ]
        await asyncio.gather(*pipes, return_exceptions=True)
        for stream in (writer, upstream_writer):
            self._writers.discard(stream)
            with contextlib.suppress(Exception):
                stream.close()

    def _is_stop(self, payload: bytes) -> bool:
        return any(marker in payload for marker in self.STOP_MARKERS)

    def _fire(self) -> None:
        self.triggers += 1
        self.mode = ""
        self.triggered.set()
        if self.on_trigger is not None:
            self.on_trigger()

    async def _frames_to_ably(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, gate: dict[str, bool]
    ) -> None:
        """Forward the agent's WebSocket frames one by one, looking into each (RFC 6455 §5.2)."""
        held = False
        try:
            while True:
                header = await reader.readexactly(2)
                length = header[1] & 0x7F
                extended = b""
                if length == 126:
                    extended = await reader.readexactly(2)
                    length = int.from_bytes(extended, "big")
                elif length == 127:
                    extended = await reader.readexactly(8)
                    length = int.from_bytes(extended, "big")
                mask = await reader.readexactly(4) if header[1] & 0x80 else b""
                payload = await reader.readexactly(length)
                frame = header + extended + mask + payload
                if held:
                    continue  # Everything after a held `stop` stays with it.
                opcode = header[0] & 0x0F
                if self.mode and opcode in (0, 1, 2):
                    plain = unmask(payload, mask) if mask else payload
                    if self._is_stop(plain):
                        if self.mode == "hold-stop":
                            held = True
                            self._fire()
                            continue
                        writer.write(frame)
                        await writer.drain()
                        gate["to_agent"] = False
                        self._fire()
                        continue
                writer.write(frame)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def _pipe(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        gate: dict[str, bool] | None,
    ) -> None:
        try:
            while data := await reader.read(65536):
                if gate is not None and not gate["to_agent"]:
                    continue  # Ably's answers (the ACK of `stop`) never reach the agent.
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()


def unmask(payload: bytes, mask: bytes) -> bytes:
    """A client frame's payload in clear (RFC 6455 §5.3), as one big-integer XOR."""
    if not payload:
        return payload
    key = (mask * (len(payload) // 4 + 1))[: len(payload)]
    value = int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")
    return value.to_bytes(len(payload), "big")
