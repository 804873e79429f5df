"""The one place that turns the ABLY_ENDPOINT setting into Ably client options.

`ABLY_ENDPOINT` is a URL such as `http://127.0.0.1:8788` (a plain-HTTP stand-in) or empty for
Ably's own production endpoint, in which case every function here returns `{}` and the SDKs use
their defaults: switching to real Ably is configuration only.

ably-python 3.1.x has two quirks against a non-default port over plain HTTP:

- its realtime transport builds `ws://host?query` without the port, so it dials port 80. We
  patch `WebSocketTransport.connect` (idempotently) to dial `host:port` - only when the options
  name a non-default port, so the patch is inert for real Ably, which uses the default ports.
- it refuses Basic (key) auth for REST over plain HTTP (40103). The documented remedy is token
  auth: `use_token_auth=True` makes the SDK sign TokenRequests with the key locally and exchange
  them, so the key secret never travels, and realtime uses the same tokens.
- with token auth, `AblyRealtime(client_id=...)` leaves the clientId out of its own
  TokenRequests and then fails the connection with 40102 ("Client ID cannot be changed to
  'None'"). Passing `client_id=` here also sets `default_token_params={"client_id": ...}`,
  which the SDK copies into every TokenRequest.

ably-python 3.1.4 also loses track of its own publishes when a connection comes back as a new
one (the service lost its state, or the resume window passed): see `install_python_resend_patch`.
This module is the only place that reaches into ably-python's internals.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any
from urllib.parse import urlsplit

logger = logging.getLogger(__name__)

_PATCH_MARKER = "_ably_compat_port_patch"
_RESEND_PATCH_MARKER = "_ably_compat_resend_patch"
# The ably-python releases whose ConnectionManager `install_python_resend_patch` was written
# against: 3.1.4 (its queued_messages / pending_message_queue / msg_serial attributes). On any
# other version the patch is skipped with a warning, to be checked against that SDK's source.
_RESEND_PATCHED_VERSIONS = ("3.1.",)


def _parse(endpoint_url: str) -> tuple[str, int, bool] | None:
    if not endpoint_url:
        return None
    parts = urlsplit(endpoint_url if "://" in endpoint_url else f"http://{endpoint_url}")
    if parts.scheme not in ("http", "https", "ws", "wss") or not parts.hostname:
        raise ValueError(
            f"ABLY_ENDPOINT must be a URL like http://127.0.0.1:8788 (or empty), got {endpoint_url!r}"
        )
    tls = parts.scheme in ("https", "wss")
    return parts.hostname, parts.port or (443 if tls else 80), tls


def python_client_options(endpoint_url: str, *, client_id: str | None = None) -> dict[str, Any]:
    """Keyword arguments for ably-python `AblyRealtime(...)` / `AblyRest(...)`.

    Pass the client's `client_id` here rather than separately, so token auth carries it. Also
    installs the realtime port patch when the endpoint needs it.
    """
    parsed = _parse(endpoint_url)
    # Not only for the stand-in: real Ably also hands out a new connection when a resume fails.
    install_python_resend_patch()
    if parsed is None:
        return {"client_id": client_id} if client_id else {}
    host, port, tls = parsed
    options: dict[str, Any] = {"endpoint": host, "tls": tls, "fallback_hosts": []}
    if client_id:
        options["client_id"] = client_id
    if tls:
        options["tls_port"] = port
    else:
        options["port"] = port
        options["use_token_auth"] = True
        if client_id:
            options["default_token_params"] = {"client_id": client_id}
    if port != (443 if tls else 80):
        install_python_realtime_port_patch()
    return options


def js_client_options(endpoint_url: str) -> dict[str, Any]:
    """Options for ably-js `new Ably.Realtime(...)` / `Ably.Rest` (browser or Node), as JSON."""
    parsed = _parse(endpoint_url)
    if parsed is None:
        return {}
    host, port, tls = parsed
    options: dict[str, Any] = {
        "endpoint": host,
        "tls": tls,
        "fallbackHosts": [],
        # Offline there is no internet-up check to pass, and no comet fallback to use.
        "disableConnectivityCheck": True,
        "transports": ["web_socket"],
    }
    options["tlsPort" if tls else "port"] = port
    return options


def install_python_realtime_port_patch() -> None:
    """Make ably-python's realtime transport dial the configured non-default port.

    Idempotent. The patched `connect` only changes anything when the client's options carry a
    non-default port and the host has none, i.e. never for real Ably.
    """
    from ably.transport import websockettransport

    transport_class = websockettransport.WebSocketTransport
    if getattr(transport_class.connect, _PATCH_MARKER, False):
        return
    original_connect = transport_class.connect

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

    setattr(connect, _PATCH_MARKER, True)
    transport_class.connect = connect


# Real Ably (ably-js 2.x with no endpoint option): the primary `main.realtime.ably.net`, its
# fallbacks `main.[a-e].fallback.ably-realtime.com`, and the connectivity checks on
# `*.ably-realtime.com`, each over HTTPS (REST, token and comet) and WSS (realtime).
ABLY_DEFAULT_CONNECT_SOURCES = (
    "https://*.ably.net",
    "wss://*.ably.net",
    "https://*.ably-realtime.com",
    "wss://*.ably-realtime.com",
    "https://rest.ably.io",
)


def csp_connect_sources(endpoint_url: str) -> list[str]:
    """The Content-Security-Policy `connect-src` entries the browser's ably-js needs."""
    parsed = _parse(endpoint_url)
    if parsed is None:
        return list(ABLY_DEFAULT_CONNECT_SOURCES)
    host, port, tls = parsed
    if ":" in host:
        host = f"[{host}]"
    http, ws = ("https", "wss") if tls else ("http", "ws")
    return [f"{http}://{host}:{port}", f"{ws}://{host}:{port}"]


def install_python_resend_patch() -> None:
    """Make ably-python 3.1.x answer every publish it re-sends after a reconnect.

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
    """
    import ably
    from ably.realtime.connectionmanager import ConnectionManager
    from ably.util.exceptions import AblyException

    manager_class = ConnectionManager
    if getattr(manager_class.send_queued_messages, _RESEND_PATCH_MARKER, False):
        return
    version = getattr(ably, "lib_version", "")
    if not version.startswith(_RESEND_PATCHED_VERSIONS):
        logger.warning(
            "ably-python %s: the resend patch was written for %s and is not applied; check "
            "whether publishes re-sent on a new connection are still answered",
            version,
            _RESEND_PATCHED_VERSIONS,
        )
        return

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


def unsettled_sends(client: Any) -> set[int] | None:
    """Identities of the messages ably-python holds for `client`'s connection that have not
    been answered yet (queued for a connection, or sent and awaiting the ack), or None when the
    SDK's internals are not the ones this module knows."""
    manager = getattr(getattr(client, "connection", None), "connection_manager", None)
    queue = getattr(manager, "pending_message_queue", None)
    if manager is None or queue is None or not hasattr(manager, "queued_messages"):
        return None
    queued = list(manager.queued_messages)
    pending = list(getattr(queue, "messages", []))
    return {id(m) for m in queued} | {
        id(m) for m in pending if m.future is not None and not m.future.done()
    }
