"""Starlette/uvicorn adapter: owns the sockets, the timers and the HTTP surface of the stand-in.

Everything Ably-specific happens in `core.Hub`; this module only moves bytes. All hub access
happens on the server's event loop, so the hub needs no locks.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import secrets
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote_plus, urlencode

import msgpack
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect
from websockets.frames import OP_BINARY, OP_TEXT, Frame

from . import auth, push, stats
from .comet import CometTransports
from .config import HubConfig
from .core import Hub
from .errors import AblyError
from .protocol import decode_frame, encode_frame, jsonable_items

log = logging.getLogger("emulators.ably")

# Idle HTTP keep-alive: longer than the SDKs' connection pools keep sockets (see _uvicorn_config).
KEEP_ALIVE_SECONDS = 75

_CORS_ALLOW_HEADERS = (
    "authorization, content-type, accept, x-ably-version, ably-agent, x-ably-clientid, "
    "x-requested-with"
)
_CORS_EXPOSE_HEADERS = "Link, X-Ably-ErrorCode, X-Ably-ErrorMessage, X-Ably-Serverid"


class ManualClock:
    """Wall-clock milliseconds plus an offset tests can push forward."""

    def __init__(self) -> None:
        self.offset_ms = 0

    def __call__(self) -> int:
        return int(time.time() * 1000) + self.offset_ms


@dataclass
class _Encoded:
    payloads: list[str | bytes]
    close: bool = False


class _DirectWriter:
    """Synchronous frame writes straight into uvicorn's sans-I/O websocket protocol.

    Fan-out is dominated by per-frame task switches through the ASGI `send` coroutine; when
    the transport is writable, that coroutine does nothing asynchronous, so we write the
    finished websocket frames ourselves: all of a flush's frames for one socket in one write.
    Anything unexpected (another uvicorn implementation, back-pressure, closing) falls back
    to the ASGI path, which stays the reference behaviour.
    """

    def __init__(self, protocol: Any) -> None:
        self.protocol = protocol

    @classmethod
    def attach(cls, websocket: WebSocket) -> _DirectWriter | None:
        protocol = websocket.scope.get("ably.protocol")
        needed = ("transport", "writable", "close_sent", "disconnected", "initial_response")
        if protocol is None or not all(hasattr(protocol, name) for name in needed):
            return None
        return cls(protocol)

    def ready(self) -> bool:
        protocol = self.protocol
        return (
            protocol.writable.is_set()
            and not protocol.disconnected
            and not protocol.close_sent
            and protocol.initial_response is None
            and not protocol.transport.is_closing()
        )

    def write(self, frames: list[bytes]) -> None:
        self.protocol.transport.write(b"".join(frames))

    @staticmethod
    def frame(data: str | bytes) -> bytes:
        """One complete server-to-client websocket frame.

        Server frames are unmasked and no extension is negotiated (see `_uvicorn_config`), so a
        broadcast's frame is the same bytes for every recipient: built once, written N times.
        """
        if isinstance(data, bytes):
            return Frame(OP_BINARY, data).serialize(mask=False)
        return Frame(OP_TEXT, data.encode()).serialize(mask=False)


@dataclass
class _Socket:
    websocket: WebSocket
    wire_format: str
    queue: asyncio.Queue[_Encoded | None] = field(default_factory=asyncio.Queue)
    # A half-open connection: nothing reaches the client any more, nothing tells it so.
    frozen: bool = False
    busy: bool = False  # the writer task holds payloads it has not written yet
    direct: _DirectWriter | None = None


class AblyApp:
    """The ASGI application: one hub, its sockets, its timer loop."""

    def __init__(self, config: HubConfig | None = None, *, clock: ManualClock | None = None):
        self.config = config or HubConfig()
        self.clock = clock or ManualClock()
        self.hub = Hub(self.config, clock=self.clock)
        self.sockets: dict[int, _Socket] = {}
        self.comet = CometTransports(self)
        self._wake: asyncio.Event | None = None
        self._timer_task: asyncio.Task[None] | None = None
        self._flush_scheduled = False
        self.hub.on_timer_scheduled = lambda _due: self._wake and self._wake.set()
        self.starlette = Starlette(
            routes=[
                WebSocketRoute("/", self._websocket),
                Route("/comet/{path:path}", self.comet.handle, methods=["GET", "POST"]),
                Route(
                    "/{path:path}",
                    self._rest,
                    methods=["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"],
                ),
            ],
        )

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if self._timer_task is None and scope["type"] in ("http", "websocket"):
            self._wake = asyncio.Event()
            self._timer_task = asyncio.create_task(self._run_timers())
        if scope["type"] == "websocket":
            # The server protocol behind `send`, for _DirectWriter (Starlette wraps `send`).
            scope = {**scope, "ably.protocol": getattr(send, "__self__", None)}
        await self.starlette(scope, receive, send)

    # ------------------------------------------------------------ timers and output

    async def shutdown(self) -> None:
        """Stop the timer loop (a restart on a new event loop starts a fresh one)."""
        task, self._timer_task, self._wake = self._timer_task, None, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self.sockets.clear()
        self.comet.clear()

    async def _run_timers(self) -> None:
        assert self._wake is not None
        while True:
            due = self.hub.next_timer_due()
            delay = 1.0 if due is None else max(0.0, (due - self.clock()) / 1000)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=delay)
            self._wake.clear()
            try:
                self.hub.run_due_timers()
            except Exception:  # a bug in one timer must not stop heartbeats for everyone
                log.exception("timer failed")
            self.flush()

    def poke(self) -> None:
        """Run due timers now (after the clock moved) and deliver what they produced."""
        if self._wake:
            self._wake.set()

    def flush_soon(self) -> None:
        """Flush once the event loop has run whatever else is ready now.

        Under load several sockets' inbound frames are ready in one loop pass; delivering their
        results together gives each recipient one write for all of them instead of one each
        (the kernel send per frame is most of the stand-in's cost per delivery). Idle, it is
        the same single flush, one loop pass later.
        """
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._scheduled_flush)

    def _scheduled_flush(self) -> None:
        self._flush_scheduled = False
        self.flush()

    def flush(self) -> None:
        # Frames shared by many recipients (a broadcast) are encoded once per wire format, and
        # framed once for the direct writes. The cache is keyed by object identity, valid only
        # while these outboxes hold the frames.
        cache: dict[tuple[int, str, bool], str | bytes] = {}

        def encoded(frame: Any, wire_format: str, framed: bool) -> Any:
            key = (id(frame), wire_format, framed)
            data = cache.get(key)
            if data is None:
                if framed:
                    data = _DirectWriter.frame(encoded(frame, wire_format, False))
                else:
                    data = encode_frame(frame, wire_format)
                cache[key] = data
            return data

        for transport_id, outbox in self.hub.take_outputs().items():
            sock = self.sockets.get(transport_id)
            if sock is None:
                self.comet.deliver(transport_id, outbox.frames, outbox.close)
                continue
            if sock.frozen:
                continue
            direct = sock.direct
            if direct and not sock.busy and sock.queue.empty() and direct.ready():
                try:
                    direct.write([encoded(f, sock.wire_format, True) for f in outbox.frames])
                except Exception:  # e.g. the peer went away mid-write: its reader reports it
                    log.debug("direct write failed", exc_info=True)
                if outbox.close:
                    sock.queue.put_nowait(_Encoded([], close=True))
                continue
            payloads = [encoded(f, sock.wire_format, False) for f in outbox.frames]
            sock.queue.put_nowait(_Encoded(payloads, outbox.close))

    async def _writer(self, sock: _Socket) -> None:
        while True:
            sock.busy = False
            outbox = await sock.queue.get()
            if outbox is None:
                return
            sock.busy = True
            for data in outbox.payloads:
                try:
                    if isinstance(data, bytes):
                        await sock.websocket.send_bytes(data)
                    else:
                        await sock.websocket.send_text(data)
                except Exception:  # the peer vanished; the reader notices and reports it
                    return
            if outbox.close:
                with contextlib.suppress(Exception):
                    await sock.websocket.close(1000)
                return

    # ------------------------------------------------------------ WebSocket

    async def _websocket(self, websocket: WebSocket) -> None:
        await websocket.accept()
        query = dict(websocket.query_params)
        headers = dict(websocket.headers)
        transport_id = self.hub.open_transport(query, headers)
        sock = _Socket(websocket, "msgpack" if query.get("format") == "msgpack" else "json")
        sock.direct = _DirectWriter.attach(websocket)
        self.sockets[transport_id] = sock
        writer = asyncio.create_task(self._writer(sock))
        self.flush()
        try:
            while not writer.done():
                receive = asyncio.ensure_future(websocket.receive())
                done, _ = await asyncio.wait({receive, writer}, return_when=asyncio.FIRST_COMPLETED)
                if receive not in done:
                    receive.cancel()
                    break
                message = receive.result()
                if message["type"] == "websocket.disconnect":
                    break
                raw = (
                    message.get("text") if message.get("text") is not None else message.get("bytes")
                )
                if raw is None:
                    continue
                if len(raw) > self.config.max_frame_size:
                    self.hub.receive_invalid(
                        transport_id,
                        AblyError(
                            40009,
                            f"Protocol message of {len(raw)} bytes exceeds the maximum frame size "
                            f"{self.config.max_frame_size}",
                            400,
                        ),
                    )
                else:
                    try:
                        frame = decode_frame(raw, sock.wire_format)
                    except AblyError as error:
                        self.hub.receive_invalid(transport_id, error)
                    else:
                        try:
                            self.hub.receive(transport_id, frame)
                        except Exception:
                            log.exception("error handling frame %r", frame)
                            self.hub.receive_invalid(
                                transport_id, AblyError(50000, "Internal error", 500)
                            )
                self.flush_soon()
        except (WebSocketDisconnect, RuntimeError):
            pass
        finally:
            self.hub.transport_lost(transport_id)
            self.flush()
            # Let the writer drain what is already queued (e.g. an ERROR) before dropping it.
            sock.queue.put_nowait(None)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer, timeout=2)
            self.sockets.pop(transport_id, None)

    def drop_transport(self, connection_id: str) -> bool:
        """Close a client's socket without any Ably goodbye, as a network failure would."""
        connection = self.hub.connections.get(connection_id)
        if connection is None or connection.transport_id is None:
            return False
        transport_id = connection.transport_id
        self.hub.transport_lost(transport_id)
        sock = self.sockets.get(transport_id)
        if sock is not None:
            # 1011 (not 1000): to the client this is a failure, so it resumes.
            asyncio.get_running_loop().create_task(_close_quietly(sock.websocket, 1011))
        self.flush()
        return True

    def freeze_transport(self, connection_id: str) -> bool:
        """Stop sending anything to a client's socket without closing it (a silent network
        partition): only the client's idle timeout (maxIdleInterval) can notice."""
        connection = self.hub.connections.get(connection_id)
        sock = (
            self.sockets.get(connection.transport_id)
            if connection and connection.transport_id
            else None
        )
        if sock is None:
            return False
        sock.frozen = True
        return True

    # ------------------------------------------------------------ REST

    async def _rest(self, request: Request) -> Response:
        if request.method == "OPTIONS":
            return self._cors(request, Response(status_code=204))
        wants_msgpack = "application/x-msgpack" in request.headers.get("accept", "")
        envelope = request.query_params.get("envelope")
        try:
            segments = [
                unquote_plus(part)
                for part in request.scope["raw_path"].decode().split("?")[0].split("/")[1:]
            ]
            status, body, headers = await self._dispatch(request, segments)
        except AblyError as error:
            status, body, headers = (
                error.status_code,
                {"error": error.to_dict()},
                {
                    "X-Ably-ErrorCode": str(error.code),
                    "X-Ably-ErrorMessage": error.message.encode("ascii", "replace").decode(),
                },
            )
        except Exception:
            log.exception("REST %s %s failed", request.method, request.url.path)
            error = AblyError(50000, "Internal error", 500)
            status, body, headers = (
                500,
                {"error": error.to_dict()},
                {
                    "X-Ably-ErrorCode": "50000",
                    "X-Ably-ErrorMessage": "Internal error",
                },
            )
        if envelope:
            wants_msgpack = envelope == "msgpack"
            body = {
                "statusCode": status,
                "response": body,
                "headers": {k.lower(): v for k, v in headers.items()},
            }
            status, headers = 200, {}
        if isinstance(body, str) and not envelope:
            response = Response(body, status_code=status, media_type="text/plain", headers=headers)
        elif body is None:
            response = Response(status_code=status, headers=headers)
        elif wants_msgpack:
            response = Response(
                msgpack.packb(body, use_bin_type=True),
                status_code=status,
                media_type="application/x-msgpack",
                headers=headers,
            )
        else:
            response = Response(
                json.dumps(_jsonable(body), separators=(",", ":")),
                status_code=status,
                headers=headers,
            )
            # Exactly this value: ably-js parses error bodies only for an exact content type.
            response.headers["content-type"] = "application/json"
        return self._cors(request, response)

    @staticmethod
    def _cors(request: Request, response: Response) -> Response:
        origin = request.headers.get("origin")
        if origin:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Allow-Credentials"] = "true"
            response.headers["Vary"] = "Origin"
        else:
            response.headers["Access-Control-Allow-Origin"] = "*"
        response.headers["Access-Control-Expose-Headers"] = _CORS_EXPOSE_HEADERS
        if request.method == "OPTIONS":
            response.headers["Access-Control-Allow-Methods"] = (
                "GET, POST, PUT, PATCH, DELETE, OPTIONS"
            )
            response.headers["Access-Control-Allow-Headers"] = request.headers.get(
                "access-control-request-headers", _CORS_ALLOW_HEADERS
            )
            response.headers["Access-Control-Max-Age"] = "600"
        return response

    async def _body(self, request: Request) -> Any:
        raw = await request.body()
        if not raw:
            return None
        content_type = request.headers.get("content-type", "")
        try:
            if "msgpack" in content_type:
                return msgpack.unpackb(raw, raw=False, strict_map_key=False)
            if "x-www-form-urlencoded" in content_type:
                # Parsed here rather than by Starlette, which needs python-multipart for forms.
                return dict(parse_qsl(raw.decode(), keep_blank_values=True))
            return json.loads(raw)
        except (ValueError, msgpack.UnpackException, UnicodeDecodeError) as exc:
            raise AblyError(40000, f"Unable to decode request body: {exc}", 400) from exc

    def _credentials(self, request: Request) -> auth.Credentials:
        header = request.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        query = request.query_params
        basic = token = None
        if scheme.lower() == "basic" and value:
            try:
                basic = base64.b64decode(value.strip()).decode()
            except (binascii.Error, UnicodeDecodeError) as exc:
                raise AblyError(40101, "Malformed Basic authorization header", 401) from exc
        elif scheme.lower() == "bearer" and value:
            token = auth.decode_bearer(value)
        elif query.get("key"):
            basic = query["key"]
        elif query.get("access_token") or query.get("accessToken"):
            token = query.get("access_token") or query.get("accessToken")
        else:
            raise AblyError(40101, "No authentication information provided", 401)
        return auth.authenticate(self.hub.keyring, now_ms=self.clock(), basic=basic, token=token)

    def _header_client_id(self, request: Request) -> str | None:
        value = request.headers.get("x-ably-clientid")
        if not value:
            return None
        try:
            return base64.b64decode(value).decode()
        except (binascii.Error, UnicodeDecodeError):
            return value

    @staticmethod
    def _require(credentials: auth.Credentials, channel: str, operation: str) -> None:
        if not credentials.capability.allows(channel, operation):
            raise AblyError(
                40160, f"Action not permitted: no {operation} capability on {channel}", 401
            )

    async def _dispatch(
        self, request: Request, segments: list[str]
    ) -> tuple[int, Any, dict[str, str]]:
        method = request.method
        hub = self.hub
        if segments in ([""], []):
            return 200, "Ably stand-in: connect a WebSocket here", {}
        head = segments[0]
        if head == "time" and len(segments) == 1:
            return 200, [self.clock()], {}
        if head == "is-the-internet-up.txt":
            return 200, "yes", {}
        if head == "apps":
            return await self._apps(request, segments)
        if head == "keys" and len(segments) == 3 and segments[2] == "requestToken":
            hub.keyring._require(segments[1])  # an unknown key is 40400 whatever the method
            if method != "POST":
                raise AblyError(40500, "Method not allowed", 405)
            body = await self._body(request) or {}
            credentials = None
            if "mac" not in body or not body.get("mac"):
                credentials = self._credentials(request)
            details = auth.issue_token(
                hub.keyring,
                body,
                now_ms=self.clock(),
                key_name=segments[1],
                credentials=credentials,
            )
            return 200, details, {}
        credentials = self._credentials(request)
        if head == "keys" and len(segments) == 3 and segments[2] == "revokeTokens":
            if method != "POST":
                raise AblyError(40500, "Method not allowed", 405)
            result = hub.revoke_tokens(
                segments[1], await self._body(request), credentials=credentials
            )
            self.flush()
            return 200, result, {}
        if head == "messages" and len(segments) == 1 and method == "POST":
            return 201, await self._batch_publish(request, credentials), {}
        if head == "presence" and len(segments) == 1 and method == "GET":
            return 200, self._batch_presence(request, credentials), {}
        if head == "stats" and len(segments) == 1:
            if not credentials.capability.grants_app_wide("stats"):
                raise AblyError(40160, "Action not permitted: no stats capability", 401)
            if method == "POST":
                hub.record_stats(credentials.app_id, await self._body(request))
                return 201, None, {}
            return self._stats_page(request, credentials.app_id)
        if head == "channels" and len(segments) == 1:
            if not credentials.capability.grants_app_wide("channel-metadata"):
                raise AblyError(40160, "Action not permitted: no channel-metadata capability", 401)
            prefix = request.query_params.get("prefix")
            channels = hub.active_channels(credentials.app_id, prefix)
            limit = self._int_query(request, "limit") or 100
            channels = channels[:limit]
            if request.query_params.get("by") == "value":
                return 200, [hub.channel_details(c) for c in channels], {}
            return 200, [c.name for c in channels], {}
        if head == "push":
            return await self._push(request, segments, credentials)
        if head != "channels" or len(segments) < 2:
            raise AblyError(40400, f"Not found: {request.url.path}", 404)
        name = segments[1]
        rest = segments[2:]
        if not rest:
            self._require(credentials, name, "channel-metadata")
            channel = hub.find_channel(credentials.app_id, name)
            # Asking for a channel's status activates it in Ably, so it is always active here.
            if channel is None:
                return (
                    200,
                    {
                        "channelId": name,
                        "name": name,
                        "status": {"isActive": True, "occupancy": {"metrics": _zero_metrics()}},
                    },
                    {},
                )
            details = hub.channel_details(channel)
            details["status"]["isActive"] = True
            return 200, details, {}
        if rest == ["messages"] and method == "POST":
            body = await self._body(request)
            messages = body if isinstance(body, list) else [body]
            if not messages or not all(isinstance(m, dict) for m in messages):
                raise AblyError(40000, "Request body must be a message or a list of messages", 400)
            if request.query_params.get("_forceNack", "").lower() in ("true", "1"):
                # Ably's test hook (RSL1l1): refuse the publish as if the server NACKed it.
                raise AblyError(40099, "Publish rejected: _forceNack requested", 400)
            message_id = f"{hub.ids()}:0"
            serials = hub.publish(
                credentials,
                name,
                messages,
                client_id=self._header_client_id(request),
                frame_id=message_id,
            )
            self.flush()
            return 201, {"channel": name, "messageId": message_id, "serials": serials}, {}
        if rest == ["messages"] and method == "GET":
            self._require(credentials, name, "history")
            return self._paginated(
                request, "messages", lambda **kw: hub.history(credentials.app_id, name, **kw)
            )
        if len(rest) == 2 and rest[0] == "messages" and method == "GET":
            self._require(credentials, name, "history")
            return 200, hub.get_message(credentials.app_id, name, rest[1]), {}
        if len(rest) == 2 and rest[0] == "messages" and method == "PATCH":
            body = await self._body(request)
            if not isinstance(body, dict):
                raise AblyError(40000, "Request body must be one message", 400)
            body = {**body, "serial": rest[1]}
            body.setdefault("action", 1)
            (version_serial,) = hub.publish(
                credentials, name, [body], client_id=self._header_client_id(request)
            )
            self.flush()
            return 200, {"versionSerial": version_serial}, {}
        if len(rest) == 3 and rest[0] == "messages" and rest[2] == "annotations":
            if method == "POST":
                body = await self._body(request)
                items = body if isinstance(body, list) else [body]
                items = [
                    {**item, "messageSerial": rest[1]} if isinstance(item, dict) else item
                    for item in items
                ]
                serials = hub.annotate(
                    credentials, name, items, client_id=self._header_client_id(request)
                )
                self.flush()
                return 201, {"serials": serials}, {}
            if method == "GET":
                self._require(credentials, name, "history")
                return self._paginated(
                    request,
                    "annotations",
                    lambda limit=None, cursor=None, **_: hub.annotations_for(
                        credentials.app_id, name, rest[1], limit=limit, cursor=cursor
                    ),
                )
        if len(rest) == 3 and rest[0] == "messages" and rest[2] == "versions":
            self._require(credentials, name, "history")
            versions = hub.message_versions(credentials.app_id, name, rest[1])
            return 200, versions, {}
        if rest == ["presence"] and method == "GET":
            self._require(credentials, name, "subscribe")
            q = request.query_params
            members = hub.presence_members(
                credentials.app_id,
                name,
                client_id=q.get("clientId"),
                connection_id=q.get("connectionId"),
                limit=self._int_query(request, "limit"),
            )
            return 200, members, {}
        if rest == ["presence", "history"] and method == "GET":
            self._require(credentials, name, "history")
            return self._paginated(
                request,
                "history",
                lambda until_serial=None, **kw: hub.presence_history(
                    credentials.app_id, name, **kw
                ),
            )
        raise AblyError(40400, f"Not found: {method} {request.url.path}", 404)

    async def _batch_publish(self, request: Request, credentials: auth.Credentials) -> Any:
        """`POST /messages`: a list of BatchPublishSpecs -> a list of BatchResults (one per
        spec), as the SDKs' batchPublish sends it; one bare spec -> the flat list of its
        per-channel results (Ably's older batch API, still used through `request()`)."""
        body = await self._body(request)
        specs = body if isinstance(body, list) else [body]
        client_id = self._header_client_id(request)
        results = []
        for spec in specs:
            if not isinstance(spec, dict):
                raise AblyError(40000, "A batch publish spec must be an object", 400)
            channels = spec.get("channels")
            channels = [channels] if isinstance(channels, str) else channels
            messages = spec.get("messages")
            messages = [messages] if isinstance(messages, dict) else messages
            if not isinstance(channels, list) or not isinstance(messages, list) or not messages:
                raise AblyError(40000, "A batch spec needs channels and messages", 400)
            outcomes = []
            for name in channels:
                try:
                    message_id = f"{self.hub.ids()}:0"
                    serials = self.hub.publish(
                        credentials, str(name), messages, client_id=client_id, frame_id=message_id
                    )
                    outcomes.append({"channel": name, "messageId": message_id, "serials": serials})
                except AblyError as error:
                    outcomes.append({"channel": name, "error": error.to_dict()})
            failures = sum(1 for outcome in outcomes if "error" in outcome)
            results.append(
                {
                    "successCount": len(outcomes) - failures,
                    "failureCount": failures,
                    "results": outcomes,
                }
            )
        self.flush()
        if isinstance(body, list):
            return results
        return results[0]["results"]

    def _batch_presence(self, request: Request, credentials: auth.Credentials) -> Any:
        """`GET /presence?channels=a,b`: the members of several channels at once."""
        separator = request.query_params.get("separator") or ","
        names = [n for n in request.query_params.get("channels", "").split(separator) if n]
        if not names:
            raise AblyError(40000, "channels is required", 400)
        outcomes: list[dict[str, Any]] = []
        for name in names:
            if not credentials.capability.allows(name, "subscribe"):
                error = AblyError(40160, f"Action not permitted: no subscribe capability on {name}")
                outcomes.append({"channel": name, "error": error.to_dict()})
                continue
            members = self.hub.presence_members(credentials.app_id, name)
            outcomes.append({"channel": name, "presence": members})
        failures = sum(1 for outcome in outcomes if "error" in outcome)
        return {
            "successCount": len(outcomes) - failures,
            "failureCount": failures,
            "results": outcomes,
        }

    async def _push(
        self, request: Request, segments: list[str], credentials: auth.Credentials
    ) -> tuple[int, Any, dict[str, str]]:
        """The push admin API: a registry only (nothing reaches APNs/FCM from here)."""
        if not credentials.capability.grants_app_wide("push-admin"):
            raise AblyError(40160, "Action not permitted: no push-admin capability", 401)
        registry = self.hub.push_registry(credentials.app_id)
        method, rest = request.method, segments[1:]
        query = dict(request.query_params)
        limit = self._int_query(request, "limit") or 100
        if rest == ["publish"] and method == "POST":
            body = await self._body(request)
            push.check_publish(body)
            recipient = body["recipient"]
            if recipient.get("transportType") == "ablyChannel" and recipient.get("channel"):
                # Ably's test transport: the push arrives as a message on that channel.
                payload = {k: v for k, v in body.items() if k != "recipient"}
                self.hub.publish(
                    credentials,
                    str(recipient["channel"]),
                    [{"name": "__ably_push__", "data": json.dumps(payload)}],
                )
                self.flush()
            return 204, None, {}
        if rest == ["deviceRegistrations"]:
            if method == "GET":
                return 200, registry.list_devices(query)[:limit], {}
            if method == "POST":  # a device registering itself (push activation)
                body = await self._body(request)
                device_id = body.get("id") if isinstance(body, dict) else None
                if not isinstance(device_id, str) or not device_id:
                    raise AblyError(40000, "A device registration needs an id", 400)
                return 201, registry.save_device(device_id, body), {}
            if method == "DELETE":
                registry.remove_devices(query)
                return 204, None, {}
        if len(rest) == 2 and rest[0] == "deviceRegistrations":
            if method == "GET":
                return 200, registry.get_device(rest[1]), {}
            if method in ("PUT", "PATCH"):
                return 200, registry.save_device(rest[1], await self._body(request)), {}
            if method == "DELETE":
                registry.remove_devices({"deviceId": rest[1]})
                return 204, None, {}
        if rest == ["channelSubscriptions"]:
            if method == "GET":
                return 200, registry.list_subscriptions(query)[:limit], {}
            if method == "POST":
                body = await self._body(request)
                channel = body.get("channel") if isinstance(body, dict) else None
                enabled = isinstance(channel, str) and self.hub.push_enabled(
                    credentials.app_id, channel
                )
                return 201, registry.save_subscription(body, push_enabled=enabled), {}
            if method == "DELETE":
                registry.remove_subscriptions(query)
                return 204, None, {}
        if rest == ["channels"] and method == "GET":
            return 200, registry.list_channels()[:limit], {}
        raise AblyError(40400, f"Not found: {method} {request.url.path}", 404)

    def _stats_page(self, request: Request, app_id: str) -> tuple[int, Any, dict[str, str]]:
        q = request.query_params
        direction = q.get("direction", "backwards")
        if direction not in ("backwards", "forwards"):
            raise AblyError(40003, f"Invalid direction {direction!r}", 400)
        # Stats accept an interval id (e.g. 2025-02-03:15:03) as well as epoch milliseconds.
        start, end = (
            stats.time_param(request.query_params.get(name), name) for name in ("start", "end")
        )
        if start is not None and end is not None and start > end:
            raise AblyError(40003, "start must not be later than end", 400)
        items, next_cursor = self.hub.app_statistics(
            app_id,
            unit=q.get("unit") or q.get("by") or "minute",  # ably-js also spells it `by`
            start=start,
            end=end,
            limit=self._int_query(request, "limit"),
            forwards=direction == "forwards",
            cursor=q.get("cursor"),
        )
        keep = {
            k: v for k, v in q.items() if k in ("start", "end", "limit", "direction", "unit", "by")
        }
        links = [f'<./stats?{urlencode(keep)}>; rel="first"']
        if next_cursor is not None:
            links.append(f'<./stats?{urlencode({**keep, "cursor": next_cursor})}>; rel="next"')
        return 200, items, {"Link": ", ".join(links)}

    @staticmethod
    def _int_query(request: Request, name: str) -> int | None:
        value = request.query_params.get(name)
        if value in (None, ""):
            return None
        try:
            return int(value)
        except ValueError as exc:
            raise AblyError(40003, f"Invalid {name}: {value!r} is not an integer", 400) from exc

    def _paginated(
        self, request: Request, segment: str, query: Callable[..., tuple[list[Any], str | None]]
    ) -> tuple[int, Any, dict[str, str]]:
        q = request.query_params
        direction = q.get("direction", "backwards")
        if direction not in ("backwards", "forwards"):
            raise AblyError(40003, f"Invalid direction {direction!r}", 400)
        start, end = self._int_query(request, "start"), self._int_query(request, "end")
        if start is not None and end is not None and start > end:
            raise AblyError(40003, "start must not be later than end", 400)
        until_serial = q.get("from_serial") or q.get("fromSerial")
        items, next_cursor = query(
            start=start,
            end=end,
            limit=self._int_query(request, "limit"),
            forwards=direction == "forwards",
            until_serial=until_serial,
            cursor=q.get("cursor"),
        )
        keep = {
            k: v
            for k, v in q.items()
            if k in ("start", "end", "limit", "direction", "from_serial", "fromSerial")
        }
        links = [f'<./{segment}?{urlencode(keep)}>; rel="first"']
        if next_cursor is not None:
            links.append(f'<./{segment}?{urlencode({**keep, "cursor": next_cursor})}>; rel="next"')
        return 200, items, {"Link": ", ".join(links)}

    async def _apps(self, request: Request, segments: list[str]) -> tuple[int, Any, dict[str, str]]:
        from . import apps

        if len(segments) == 1 and request.method == "POST":
            body = await self._body(request)
            spec = apps.parse_app_spec(
                body if body is not None else {},
                app_id=f"app{self.hub.ids()}",
                new_secret=lambda: secrets.token_urlsafe(24),
            )
            self.hub.create_app(spec)
            return 201, apps.app_response(spec, created_ms=self.clock()), {}
        if len(segments) == 2 and request.method == "DELETE":
            credentials = self._credentials(request)
            apps.check_app_delete(credentials, segments[1])
            self.hub.remove_app(segments[1])
            self.flush()
            return 204, None, {}
        raise AblyError(40400, f"Not found: {request.method} {request.url.path}", 404)


async def _close_quietly(websocket: WebSocket, code: int) -> None:
    with contextlib.suppress(Exception):
        await websocket.close(code)


def _zero_metrics() -> dict[str, int]:
    return dict.fromkeys(
        (
            "connections",
            "publishers",
            "subscribers",
            "presenceConnections",
            "presenceMembers",
            "presenceSubscribers",
            "objectPublishers",
            "objectSubscribers",
        ),
        0,
    )


def _jsonable(body: Any) -> Any:
    """REST JSON bodies cannot carry bytes: base64 message data like the realtime JSON path."""
    if isinstance(body, list) and body and all(isinstance(i, dict) for i in body):
        return jsonable_items(body)
    if isinstance(body, dict) and isinstance(body.get("data"), bytes | bytearray):
        return jsonable_items([body])[0]
    return body


def listening_socket(host: str, port: int) -> socket.socket:
    """A bound socket whose accepted connections have Nagle off (inherited on Linux): an ACK and
    a MESSAGE written back to back must not wait for the peer's delayed ACK (~40 ms)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    return sock


class EmulatorServer:
    """The stand-in on a real port, in a background thread: for tests and the dev server."""

    def __init__(
        self, config: HubConfig | None = None, *, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.app = AblyApp(config)
        self.host = host
        self._requested_port = port
        self.port = 0
        self._thread: threading.Thread | None = None
        self._server: uvicorn.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = threading.Event()

    @property
    def hub(self) -> Hub:
        return self.app.hub

    @property
    def core(self) -> Hub:
        return self.app.hub

    @property
    def key(self) -> str:
        return self.app.config.keys[0]

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _uvicorn_config(self) -> uvicorn.Config:
        return uvicorn.Config(
            self.app,
            log_level="warning",
            lifespan="off",
            ws="websockets-sansio",
            ws_max_size=max(16 * 1024 * 1024, self.app.config.max_frame_size * 4),
            # Ably does not negotiate permessage-deflate; compressing every frame costs CPU.
            ws_per_message_deflate=False,
            ws_ping_interval=20,
            ws_ping_timeout=20,
            # Ably's edge keeps idle HTTP connections open far longer than any SDK pools them;
            # uvicorn's 5 s default races a token renewal made ~5 s after the last request.
            timeout_keep_alive=KEEP_ALIVE_SECONDS,
            timeout_graceful_shutdown=1,
        )

    def start(self) -> EmulatorServer:
        sock = listening_socket(self.host, self._requested_port)
        self.port = sock.getsockname()[1]
        self._requested_port = self.port  # a restart comes back on the same port
        self._server = uvicorn.Server(self._uvicorn_config())
        self._server.install_signal_handlers = lambda: None  # type: ignore[method-assign]

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            loop.call_soon(self._started.set)
            try:
                loop.run_until_complete(self._server.serve(sockets=[sock]))  # type: ignore[union-attr]
                loop.run_until_complete(self.app.shutdown())
            finally:
                sock.close()
                loop.close()

        self._started.clear()
        self._thread = threading.Thread(target=run, name=f"ably-emulator-{self.port}", daemon=True)
        self._thread.start()
        self._started.wait(10)
        deadline = time.monotonic() + 10
        while not self._server.started and time.monotonic() < deadline:
            time.sleep(0.005)
        if not self._server.started:
            raise RuntimeError("Ably stand-in did not start")
        return self

    def stop(self) -> None:
        if self._server is None or self._thread is None:
            return
        if self._loop is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):
                self.call(self._close_all_sockets)
        self._server.should_exit = True
        self._thread.join(10)
        self._server = None
        self._thread = None

    def restart(self) -> None:
        """Stop and start again on the same port with the same state (hub survives)."""
        self.stop()
        self.start()

    async def _close_all_sockets(self) -> None:
        for sock in list(self.app.sockets.values()):
            await _close_quietly(sock.websocket, 1001)

    def call(
        self, fn: Callable[[], Any] | Callable[[], Awaitable[Any]], timeout: float = 10
    ) -> Any:
        """Run `fn` on the server's loop (where the hub lives) and return its result."""
        if self._loop is None or self._loop.is_closed():
            raise RuntimeError("the Ably stand-in is not running (call start() first)")
        if self._thread is threading.current_thread():
            raise RuntimeError(
                "EmulatorServer.call() from the stand-in's own thread would deadlock"
            )

        async def run() -> Any:
            result = fn()
            if asyncio.iscoroutine(result):
                result = await result
            self.app.flush()
            return result

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout)

    def advance_clock(self, ms: int) -> None:
        """Move the hub's clock forward and fire every timer that became due."""

        def advance() -> None:
            self.app.clock.offset_ms += ms
            self.hub.run_due_timers()
            self.app.poke()

        self.call(advance)

    def drop_transport(self, connection_id: str) -> bool:
        return bool(self.call(lambda: self.app.drop_transport(connection_id)))

    def freeze_transport(self, connection_id: str) -> bool:
        return bool(self.call(lambda: self.app.freeze_transport(connection_id)))

    def publish(
        self, channel: str, name: str | None = None, data: Any = None, **fields: Any
    ) -> list[str | None]:
        """Publish with the default key's identity, as a REST publish would; returns serials."""
        message = {k: v for k, v in {"name": name, "data": data, **fields}.items() if v is not None}

        def publish() -> list[str | None]:
            credentials = auth.authenticate(
                self.hub.keyring, now_ms=self.app.clock(), basic=self.key
            )
            return self.hub.publish(credentials, channel, [message])

        return self.call(publish)

    def __enter__(self) -> EmulatorServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
