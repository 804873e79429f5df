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
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

_PATCH_MARKER = "_ably_compat_port_patch"


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
