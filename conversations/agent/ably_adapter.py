"""Everything the product does with ably-python, and every workaround for it, in one place.

The only module of `conversations/` and `chatsite/` that imports `ably` (a test scans for
that). Client options are built here once, from the endpoint, for every client the product
(and its test tooling) makes. The web side needs no SDK: see `conversations.ably_endpoint`.

Workarounds, each for ably-python 3.1.4 (the version pinned; `tests/unit/test_ably_adapter.py`
shows the unpatched SDK misbehaving, so each test fails once an upgrade makes its workaround
unnecessary):

1. Realtime dials port 80 on a non-default port: `install_realtime_port_patch`.
2. REST refuses Basic (key) auth over plain HTTP (40103): `client_options` sets
   `use_token_auth` for a plain-HTTP endpoint.
3. A realtime client's TokenRequests leave out its clientId (40102 on connect):
   `client_options` sets `default_token_params`.
4. Publishes re-sent on a new connection are never answered: `install_resend_patch`.
5. Publishes queued while disconnected all go out at once on reconnect, far over the rate
   limit: `can_send_now` holds deltas back, reading the SDK's private queues
   (`unsettled_sends`), which it has no public view of.
6. A channel left SUSPENDED refuses publishes until the SDK's own 15 s retry:
   `wait_until_usable` re-attaches it as soon as the connection is up.
7. A publish while the connection is suspended fails with 40001, a 4xxxx code that is not
   permanent: `is_permanent_ably_error`.
8. A realtime client's REST requests first re-authorize its connection (an in-band AUTH):
   the agent's listing and history do not go through it (`RestReader`, below).

Not a workaround but a cost: the agent reads history and lists channels with `RestReader`, two
GETs over aiohttp whose messages the SDK's own `Message.from_encoded` decodes. ably-python's
REST client (httpx, httpcore, anyio) cost the agent's loop about 1.5 ms per history read with
100 conversations opening at once, a quarter of a short reply's loop time: its pool checks every
pooled socket on each request (issue 14).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import logging
import secrets
import time
import weakref
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import ably
import aiohttp
from ably import AblyRealtime
from ably.realtime.connectionmanager import ConnectionManager
from ably.transport.defaults import Defaults
from ably.transport.websockettransport import WebSocketTransport
from ably.types.channelstate import ChannelState
from ably.types.connectionstate import ConnectionState
from ably.types.message import Message as AblyMessage
from ably.util.exceptions import AblyException

from conversations.ably_endpoint import AblyEndpoint, parse_endpoint, rest_base_url

__all__ = [
    "DRAIN_POLL_SECONDS",
    "MAX_UNSETTLED_SENDS",
    "MESSAGE_NOT_FOUND",
    "REST_PROTOCOL_VERSION",
    "RestReader",
    "SDK_NOT_CONNECTED",
    "AblyException",
    "AblyMessage",
    "AblyRealtime",
    "ably_error_code",
    "can_send_now",
    "client_options",
    "connection_interruptions",
    "first_serial",
    "install_realtime_port_patch",
    "install_resend_patch",
    "is_permanent_ably_error",
    "new_message_id",
    "realtime_client",
    "sdk_sends_settled",
    "unsettled_sends",
    "wait_connected",
    "wait_until_usable",
]

logger = logging.getLogger(__name__)

# The ably-python release every workaround here was written against and checked on.
SDK_VERSION = "3.1.4"
# The releases whose ConnectionManager internals `install_resend_patch` knows (its
# queued_messages / pending_message_queue / msg_serial attributes). On any other version the
# patch is skipped with a warning, to be checked against that SDK's source.
_RESEND_PATCHED_VERSIONS = ("3.1.",)
_PORT_PATCH_MARKER = "_ably_adapter_port_patch"
_RESEND_PATCH_MARKER = "_ably_adapter_resend_patch"

# The protocol version ably-python speaks, sent with `RestReader`'s requests too (the messages it
# reads are decoded by the same SDK).
REST_PROTOCOL_VERSION: str = Defaults.protocol_version

MESSAGE_NOT_FOUND = 40400
# A REST read that takes longer than this has failed (the callers try again or carry on).
REST_TIMEOUT_SECONDS = 15.0
# ably-python: "Cannot publish message; connection state is ..." (RTL6c4).
SDK_NOT_CONNECTED = 40001


# --- Clients ----------------------------------------------------------------------------------


def client_options(
    endpoint_url: str,
    *,
    client_id: str | None = None,
    transport_params: Mapping[str, str] | None = None,
    disconnected_retry_ms: int | None = None,
) -> dict[str, Any]:
    """The keyword arguments for ably-python `AblyRealtime(...)` / `AblyRest(...)`, final.

    Empty `endpoint_url` = real Ably with the SDK's defaults. Pass the client's `client_id` here
    rather than separately, so token auth carries it. Installs the patches the endpoint needs.
    """
    endpoint = parse_endpoint(endpoint_url)
    # Not only for the stand-in: real Ably also hands out a new connection when a resume fails.
    install_resend_patch()
    options: dict[str, Any] = {}
    if client_id:
        options["client_id"] = client_id
    if endpoint is not None:
        options.update(_endpoint_options(endpoint, client_id))
    if transport_params:
        options["transport_params"] = dict(transport_params)
    if disconnected_retry_ms is not None:
        options["disconnected_retry_timeout"] = disconnected_retry_ms
    return options


def _endpoint_options(endpoint: AblyEndpoint, client_id: str | None) -> dict[str, Any]:
    options: dict[str, Any] = {"endpoint": endpoint.host, "tls": endpoint.tls, "fallback_hosts": []}
    if endpoint.tls:
        options["tls_port"] = endpoint.port
    else:
        options["port"] = endpoint.port
        # Workaround 2 (ably-python 3.1.4, `Http.make_request`): Basic (key) auth over plain
        # HTTP is refused with 40103. Token auth is the documented remedy: the SDK signs
        # TokenRequests with the key locally, so the secret never travels.
        options["use_token_auth"] = True
        if client_id:
            # Workaround 3 (ably-python 3.1.4, `Auth.__init__` keeps the clientId only for
            # REST clients): a realtime client's TokenRequests carry no clientId, and the
            # connection then fails with 40102 ("Client ID cannot be changed to 'None'").
            # Default token params are copied into every TokenRequest.
            options["default_token_params"] = {"client_id": client_id}
    if not endpoint.has_default_port:
        install_realtime_port_patch()
    return options


def realtime_client(
    endpoint_url: str,
    *,
    key: str,
    client_id: str | None = None,
    transport_params: Mapping[str, str] | None = None,
    disconnected_retry_ms: int | None = None,
) -> AblyRealtime:
    options = client_options(
        endpoint_url,
        client_id=client_id,
        transport_params=transport_params,
        disconnected_retry_ms=disconnected_retry_ms,
    )
    return AblyRealtime(key=key, **options)


class RestReader:
    """The agent's Ably REST reads: a channel's history and the active channels' names.

    Over the caller's aiohttp session (the agent's one, which its list-change publishes use
    too) with the key's Basic auth (TLS in production; the stand-in takes it over plain HTTP, as
    it does `realtime.publish_async`'s publishes); every page is followed, and each message is
    decoded by the SDK (`Message.from_encoded`: data encodings, extras). Errors raise
    `AblyException` with Ably's own code. No fallback hosts, unlike the SDK's REST client: each
    caller reads again on its own schedule (the intake sweeper, the next listing round).
    """

    def __init__(self, endpoint_url: str, *, key: str, http: aiohttp.ClientSession) -> None:
        self.base_url = rest_base_url(endpoint_url)
        name, _, secret = key.partition(":")
        token = base64.b64encode(f"{name}:{secret}".encode()).decode("ascii")
        self._headers = {
            "Authorization": f"Basic {token}",
            "Accept": "application/json",
            "X-Ably-Version": REST_PROTOCOL_VERSION,
        }
        self._http = http
        self._timeout = aiohttp.ClientTimeout(total=REST_TIMEOUT_SECONDS)

    async def history(
        self, channel: str, *, start_ms: int, direction: str, limit: int = 1000
    ) -> list[AblyMessage]:
        """Every message of `channel` from `start_ms` on, in `direction`, all pages read."""
        url = f"{self.base_url}/channels/{quote(channel, safe='')}/messages"
        params = {"start": str(start_ms), "direction": direction, "limit": str(limit)}
        return [AblyMessage.from_encoded(item) for item in await self._all_pages(url, params)]

    async def channel_names(self, prefix: str, *, limit: int = 1000) -> list[str]:
        """The names of the active channels starting with `prefix` (channel enumeration)."""
        items = await self._all_pages(
            f"{self.base_url}/channels", {"prefix": prefix, "limit": str(limit)}
        )
        return [
            item if isinstance(item, str) else str((item or {}).get("channelId", ""))
            for item in items
        ]

    async def _all_pages(self, url: str, params: dict[str, str] | None) -> list[Any]:
        items: list[Any] = []
        next_url: Any = url
        while next_url is not None:
            async with self._http.get(
                next_url, params=params, headers=self._headers, timeout=self._timeout
            ) as response:
                try:
                    body = await response.json(content_type=None)
                except ValueError:  # not JSON: a proxy's error page, a cut-off body
                    body = None
                if response.status >= 300:
                    raise _rest_error(response.status, body)
                if not isinstance(body, list):
                    raise AblyException(f"unexpected REST reply: {body!r:.200}", 500, 50000)
                items.extend(body)
                link = response.links.get("next")
                next_url = link.get("url") if link else None
            params = None  # the next page's URL carries them
        return items


def _rest_error(status: int, body: Any) -> AblyException:
    error = body.get("error") if isinstance(body, dict) else None
    error = error if isinstance(error, dict) else {}
    return AblyException(
        str(error.get("message") or f"HTTP {status}"),
        int(error.get("statusCode") or status),
        int(error.get("code") or status * 100),
    )


async def wait_connected(client: AblyRealtime, timeout: float) -> None:
    """Until `client` is CONNECTED; ConnectionError if it fails, closes or takes `timeout`."""
    connection = client.connection
    if connection.state == ConnectionState.CONNECTED:
        return
    try:
        async with asyncio.timeout(timeout):
            while connection.state != ConnectionState.CONNECTED:
                if connection.state in (ConnectionState.FAILED, ConnectionState.CLOSED):
                    raise ConnectionError(f"Ably connection failed: {connection.error_reason}")
                await connection.once_async()
    except TimeoutError:
        raise ConnectionError(
            f"Ably connection not established within {timeout:.0f}s "
            f"(state {connection.state}, {connection.error_reason})"
        ) from None


# --- Messages and errors ----------------------------------------------------------------------


def new_message_id() -> str:
    """An Ably message id nobody can guess before the agent publishes it (128 random bits)."""
    return secrets.token_urlsafe(16)


def first_serial(result: Any) -> str | None:
    """The serial Ably assigned to the first message of a publish, if it said."""
    serials = getattr(result, "serials", None)
    serial = serials[0] if serials else None
    return serial if isinstance(serial, str) else None


def ably_error_code(error: BaseException) -> int | None:
    """The Ably error code of an SDK exception (e.g. 40400), or None for other failures."""
    code = getattr(error, "code", None)
    return code if isinstance(code, int) else None


def is_permanent_ably_error(error: BaseException) -> bool:
    """A 4xxxx Ably error that trying again cannot fix.

    Rate limits (429xx) pass with time and token errors (40140-40149) with the SDK's renewal;
    every other 4xxxx (not found, refused capability, bad request) is the same on every try.
    Workaround 7 (ably-python 3.1.4, `RealtimeChannel._throw_if_unpublishable_state`): the SDK
    raises 40001 itself for a publish while its connection is suspended or closed, and that
    passes when the connection comes back.
    """
    code = ably_error_code(error)
    if code is None or not 40000 <= code < 50000:
        return False
    return not (42900 <= code < 43000 or 40140 <= code <= 40149 or code == SDK_NOT_CONNECTED)


# --- Connection and channel state -------------------------------------------------------------

# How often a wait for the channel re-checks states whose change events it may have missed.
STATE_POLL_SECONDS = 1.0


async def wait_until_usable(channel: Any, timeout: float) -> None:
    """Until the channel's connection is CONNECTED and the channel ATTACHED.

    Workaround 6 (ably-python 3.1.4, `RealtimeChannel._throw_if_unpublishable_state` and its
    channel retry timer): after an Ably node restart the SDK can leave a channel SUSPENDED (its
    re-attach timed out while every client reconnected at once) and then refuses publishes at
    once (90001) until its own retry timer re-attaches it, 15 s later. Attaching here brings it
    back as soon as the connection is up. Raises TimeoutError when `timeout` runs out.
    """
    async with asyncio.timeout(max(timeout, 0)):
        while True:
            connection = channel.ably.connection
            if connection.state in (ConnectionState.CLOSING, ConnectionState.CLOSED):
                raise ConnectionError(f"the Ably connection is {connection.state}")
            if connection.state != ConnectionState.CONNECTED:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(STATE_POLL_SECONDS):
                        await connection.once_async()
                continue
            if channel.state == ChannelState.ATTACHED:
                return
            if channel.state in (ChannelState.ATTACHING, ChannelState.DETACHING):
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(STATE_POLL_SECONDS):
                        await channel.once_async()
                continue
            try:
                await channel.attach()
            except Exception as error:  # noqa: BLE001 - try again until the timeout
                logger.info("re-attaching %s failed: %r", channel.name, error)
                await asyncio.sleep(STATE_POLL_SECONDS)


# Per realtime client: how many times its connection has left CONNECTED.
_interruptions: weakref.WeakKeyDictionary[Any, list[int]] = weakref.WeakKeyDictionary()


def connection_interruptions(channel: Any) -> int:
    """How often the connection under `channel` has left CONNECTED since first asked about."""
    client = getattr(channel, "ably", None)
    connection = getattr(client, "connection", None)
    if connection is None:
        return 0
    counter = _interruptions.get(client)
    if counter is None:
        counter = _interruptions[client] = [0]

        def on_change(change: Any) -> None:
            previous = getattr(change, "previous", None)
            if previous == ConnectionState.CONNECTED and change.current != previous:
                counter[0] += 1

        connection.on(on_change)
    return counter[0]


# --- The SDK's send queues (private) ----------------------------------------------------------

# How often a wait for ably-python's send queue to drain looks again.
DRAIN_POLL_SECONDS = 0.05
# Deltas wait while a connection has this many sends unanswered: at most this many are re-sent
# at once when it drops and comes back, well under the 50 msg/s limit. With acks arriving in
# one round trip a healthy connection at 50 msg/s has a few outstanding.
MAX_UNSETTLED_SENDS = 20


def unsettled_sends(client: Any) -> set[int] | None:
    """Identities of the messages ably-python holds for `client`'s connection that have not
    been answered yet (queued for a connection, or sent and awaiting the ack), or None when the
    SDK's internals are not the ones this module knows.

    ably-python 3.1.4 has no public view of its send queues: this reads the ConnectionManager's
    `queued_messages` and `pending_message_queue`.
    """
    manager = getattr(getattr(client, "connection", None), "connection_manager", None)
    queue = getattr(manager, "pending_message_queue", None)
    if manager is None or queue is None or not hasattr(manager, "queued_messages"):
        return None
    queued = list(manager.queued_messages)
    pending = list(getattr(queue, "messages", []))
    return {id(m) for m in queued} | {
        id(m) for m in pending if m.future is not None and not m.future.done()
    }


async def sdk_sends_settled(channel: Any, timeout: float) -> bool:
    """Until every publish ably-python holds for this channel's connection now has gone out and
    been answered (or `timeout` passes: False). Without a view of the SDK's queues (another SDK
    version) it returns at once."""
    client = getattr(channel, "ably", None)
    waiting = unsettled_sends(client)
    if waiting is None:
        return True
    deadline = time.monotonic() + max(timeout, 0)
    while waiting:
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(DRAIN_POLL_SECONDS)
        waiting &= unsettled_sends(client) or set()
    return True


def can_send_now(channel: Any) -> bool:
    """Whether another delta should go to the SDK now rather than wait with the pending text.

    Workaround 5 (ably-python 3.1.4, `ConnectionManager.send_protocol_message` queues while
    DISCONNECTED/CONNECTING and `send_queued_messages` fires the whole queue on CONNECTED): not
    while the connection is down, or every delta would go out at once on reconnect, far beyond
    50 msg/s (the stand-in wiped soak: ~440 appends per connection, most refused with 42911,
    the rest with 40400 for a message Ably had lost). Held back, the deltas merge into one
    append (or the repair's full text). Nor while many sends are unanswered on a connection
    that looks up (a silent partition not yet detected): those would all be re-sent at once too.
    """
    client = getattr(channel, "ably", None)
    connection = getattr(client, "connection", None)
    if connection is not None and connection.state != ConnectionState.CONNECTED:
        return False
    unsettled = unsettled_sends(client)
    return unsettled is None or len(unsettled) < MAX_UNSETTLED_SENDS


# --- Patches ----------------------------------------------------------------------------------


def install_realtime_port_patch() -> None:
    """Workaround 1: make ably-python's realtime transport dial the configured non-default port.

    ably-python 3.1.4 `WebSocketTransport.connect` builds `ws://host?query` without the port,
    so it dials port 80 (443 with TLS). Idempotent. The patched `connect` only changes anything
    when the client's options carry a non-default port and the host has none, i.e. never for
    real Ably. The SDK's own `connect` stays reachable as the patch's `__wrapped__`.
    """
    transport_class: Any = WebSocketTransport
    if getattr(transport_class.connect, _PORT_PATCH_MARKER, False):
        return
    original_connect = transport_class.connect

    @functools.wraps(original_connect)
    def connect(self: Any) -> Any:
        options = self.options
        port = (options.tls_port if options.tls else options.port) or 0
        default_port = 443 if options.tls else 80
        host = self.host
        if not port or port == default_port or ":" in host:
            return original_connect(self)
        # The URL is built synchronously inside connect(); `self.host` is compared with the
        # primary host later (fallback detection), so restore it at once.
        self.host = f"{host}:{port}"
        try:
            return original_connect(self)
        finally:
            self.host = host

    setattr(connect, _PORT_PATCH_MARKER, True)
    transport_class.connect = connect


def install_resend_patch() -> None:
    """Workaround 4: make ably-python 3.1.x answer every publish it re-sends after a reconnect.

    Idempotent; does nothing on other ably-python versions. The bug (ably-python 3.1.4,
    `ConnectionManager.send_queued_messages` with `requeue_pending_messages` and `on_connected`):

    - When the transport drops, publishes awaiting an ack are moved to the send queue and taken
      off the pending-ack queue, while publishes made during the outage are put on both. On
      reconnect the re-sent ones are appended to the pending-ack queue *after* the newer ones,
      so the ack queue is no longer in msgSerial order.
    - When the connection comes back as a new one (connectionId changed: Ably lost the
      connection's state, or the 2-minute resume window passed), `msg_serial` restarts at 0 but
      the queued publishes keep the serials of the old connection (RTN19a2 wants them renumbered).

    ACK/NACK complete the pending-ack queue by serial arithmetic from its head, so after either
    the answers no longer match: those publishes' futures never resolve, and neither does any
    later publish on that connection whose serial sorts below the stuck head. The agent waited
    for its reply's appends forever (issue 13: the Ably stand-in restarted without its state).

    The patched `send_queued_messages` takes the queued publishes in send order, renumbers them
    from the restarted serial on a new connection (dropping those whose publisher already gave
    up: nobody waits for them, and re-sending them only spends the 50 msg/s budget), and puts
    them back on the pending-ack queue in that same order. It also retrieves the send tasks'
    exceptions, which the SDK leaves unretrieved (each failure is the publisher's to handle).
    The SDK's own method stays reachable as the patch's `__wrapped__`.
    """
    manager_class: Any = ConnectionManager
    if getattr(manager_class.send_queued_messages, _RESEND_PATCH_MARKER, False):
        return
    version = str(getattr(ably, "lib_version", ""))
    if not version.startswith(_RESEND_PATCHED_VERSIONS):
        logger.warning(
            "ably-python %s: the resend patch was written for %s and is not applied; check "
            "whether publishes re-sent on a new connection are still answered",
            version,
            SDK_VERSION,
        )
        return

    @functools.wraps(manager_class.send_queued_messages)
    def send_queued_messages(self: Any) -> None:
        to_send = []
        while self.queued_messages:
            to_send.append(self.queued_messages.pop())  # oldest first, as the SDK sends them
        awaiting = [m for m in to_send if m.ack_required]
        resending = {id(m) for m in awaiting}
        # Normally empty: a fresh transport has had nothing sent on it yet.
        already_sent = [m for m in self.pending_message_queue.messages if id(m) not in resending]
        new_connection = any(m.message.get("msgSerial", -1) >= self.msg_serial for m in awaiting)
        if new_connection:
            # Sent on the old connection and not re-sent: the new one will never answer them.
            for pending in already_sent:
                if pending.future is not None and not pending.future.done():
                    pending.future.set_exception(
                        AblyException(
                            "Connection replaced before the message was acknowledged", 500, 80000
                        )
                    )
            already_sent = []
            abandoned = {id(m) for m in awaiting if m.future is not None and m.future.done()}
            to_send = [m for m in to_send if id(m) not in abandoned]
            awaiting = [m for m in awaiting if id(m) not in abandoned]
            for pending in awaiting:
                pending.message["msgSerial"] = self.msg_serial
                self.msg_serial += 1
            if abandoned:
                logger.info(
                    "new Ably connection: %d queued publish(es) nobody waits for not re-sent",
                    len(abandoned),
                )
        self.pending_message_queue.messages[:] = [*already_sent, *awaiting]
        if to_send:
            logger.info("re-sending %d queued message(s) on the Ably connection", len(to_send))
        for pending in to_send:
            task = asyncio.create_task(self._send_protocol_message_on_connected_state(pending))
            task.add_done_callback(_retrieve_exception)

    setattr(send_queued_messages, _RESEND_PATCH_MARKER, True)
    manager_class.send_queued_messages = send_queued_messages


def _retrieve_exception(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()
