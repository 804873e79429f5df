"""Ably's comet (HTTP long-poll) transport, the one ably-js falls back to when it cannot open a
WebSocket (`transports: ['comet']`, or `xhr_polling` in older SDKs).

An adapter only: the sans-I/O hub sees a comet transport exactly as it sees a WebSocket (open,
frames in, frames out, lost). The wire, as ably-js 2.x speaks it (comettransport.ts and
nodecomettransport.js):

- `GET /comet/connect?<connect params>` opens the transport; the response is the first frames
  (CONNECTED or ERROR) as one JSON array followed by a newline (ably-js reads streamed
  responses line by line, one JSON array per line).
- `GET /comet/<connectionKey>/recv` long-polls: it returns as soon as frames are queued (or
  empty after `RECV_WAIT_SECONDS`), and the client polls again at once.
- `POST /comet/<connectionKey>/send` carries a JSON array of ProtocolMessages (204 back).
- `GET|POST /comet/<connectionKey>/close` and `/disconnect` end the transport (CLOSE, or a
  transport loss the client will resume from).

A client that stops polling for `ABANDON_SECONDS` has lost its transport, as a WebSocket whose
pings go unanswered has.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response

from .errors import AblyError
from .protocol import Action, encode_frame

if TYPE_CHECKING:
    from .server import AblyApp

log = logging.getLogger("emulators.ably")

RECV_WAIT_SECONDS = 10.0
ABANDON_SECONDS = 30.0


@dataclass
class CometTransport:
    transport_id: int
    payloads: list[str] = field(default_factory=list)
    closed: bool = False
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    polls: int = 0  # requests seen, so the abandonment check can tell if the client came back
    polling: bool = False


def _lines(payloads: list[str]) -> Response:
    body = "[" + ",".join(payloads) + "]\n"
    return Response(body, media_type="application/json", headers={"Cache-Control": "no-cache"})


def _disconnected(message: str) -> Response:
    # A DISCONNECTED (not an HTTP error): the client reconnects and resumes, as after a drop.
    frame = {
        "action": Action.DISCONNECTED,
        "error": AblyError(80003, message, 400).to_dict(),
    }
    return _lines([json.dumps(frame, separators=(",", ":"))])


class CometTransports:
    """The comet transports of one AblyApp, keyed by the hub's transport id."""

    def __init__(self, app: AblyApp) -> None:
        self.app = app
        self.transports: dict[int, CometTransport] = {}

    def deliver(self, transport_id: int, frames: list[dict[str, Any]], close: bool) -> bool:
        """Queue the hub's output for a comet transport; False if it is not one of ours."""
        transport = self.transports.get(transport_id)
        if transport is None:
            return False
        for frame in frames:
            payload = encode_frame(frame, "json")
            assert isinstance(payload, str)  # the JSON wire format always encodes to text
            transport.payloads.append(payload)
        transport.closed = transport.closed or close
        transport.ready.set()
        return True

    def clear(self) -> None:
        self.transports.clear()

    async def handle(self, request: Request) -> Response:
        segments = request.url.path.strip("/").split("/")
        if segments == ["comet", "connect"]:
            return await self._connect(request)
        if len(segments) != 3:
            return _disconnected(f"Unknown comet request {request.url.path}")
        _, connection_key, operation = segments
        connection = self.app.hub.connections_by_key.get(connection_key)
        transport = (
            self.transports.get(connection.transport_id)
            if connection is not None and connection.transport_id is not None
            else None
        )
        if transport is None:
            return _disconnected("No comet transport for this connection key")
        transport.polls += 1
        if operation == "recv":
            return await self._recv(transport)
        if operation == "send":
            return await self._send(transport, request)
        if operation in ("close", "disconnect"):
            hub = self.app.hub
            if operation == "close":
                hub.receive(transport.transport_id, {"action": Action.CLOSE})
            else:
                hub.transport_lost(transport.transport_id)
                transport.closed = True
                transport.ready.set()
            self.app.flush()
            return Response(status_code=204)
        return _disconnected(f"Unknown comet operation {operation!r}")

    async def _connect(self, request: Request) -> Response:
        transport_id = self.app.hub.open_transport(
            dict(request.query_params), dict(request.headers)
        )
        transport = CometTransport(transport_id)
        self.transports[transport_id] = transport
        self.app.flush()
        payloads, transport.payloads = transport.payloads, []
        transport.ready.clear()
        if transport.closed:
            self.transports.pop(transport_id, None)
        else:
            self._watch(transport)
        return _lines(payloads)

    async def _recv(self, transport: CometTransport) -> Response:
        transport.polling = True
        try:
            if not transport.payloads and not transport.closed:
                try:
                    await asyncio.wait_for(transport.ready.wait(), RECV_WAIT_SECONDS)
                except TimeoutError:
                    pass
        finally:
            transport.polling = False
        payloads, transport.payloads = transport.payloads, []
        transport.ready.clear()
        if transport.closed:
            self.transports.pop(transport.transport_id, None)
        else:
            self._watch(transport)
        return _lines(payloads)

    async def _send(self, transport: CometTransport, request: Request) -> Response:
        hub = self.app.hub
        try:
            frames = json.loads(await request.body())
            if not isinstance(frames, list) or not all(isinstance(f, dict) for f in frames):
                raise ValueError("the body must be a JSON array of protocol messages")
        except ValueError as exc:
            hub.receive_invalid(
                transport.transport_id, AblyError(40000, f"Invalid comet send body: {exc}")
            )
        else:
            for frame in frames:
                hub.receive(transport.transport_id, frame)
        self.app.flush()
        return Response(status_code=204)

    def _watch(self, transport: CometTransport) -> None:
        """Declare the transport lost if the client stops polling (it went away silently)."""
        seen = transport.polls

        def check() -> None:
            if self.transports.get(transport.transport_id) is not transport:
                return
            if transport.polls != seen or transport.polling:
                return
            log.info("comet transport %s abandoned", transport.transport_id)
            self.transports.pop(transport.transport_id, None)
            self.app.hub.transport_lost(transport.transport_id)
            self.app.flush()

        asyncio.get_running_loop().call_later(ABANDON_SECONDS, check)
