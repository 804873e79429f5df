"""The ABLY_ENDPOINT setting: where Ably is, and what the browser's ably-js needs to reach it.

`ABLY_ENDPOINT` is a URL such as `http://127.0.0.1:8788` (a plain-HTTP stand-in) or empty for
Ably's own production endpoint, in which case the SDKs use their defaults: switching to real
Ably is configuration only. This module imports no SDK: the web side (views, the CSP) needs only
the browser's options; ably-python's options are built by `conversations.agent.ably_adapter`
from the same parsed endpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit


@dataclass(frozen=True)
class AblyEndpoint:
    """A non-default Ably endpoint: host, port and whether it speaks TLS."""

    host: str
    port: int
    tls: bool

    @property
    def default_port(self) -> int:
        return 443 if self.tls else 80

    @property
    def has_default_port(self) -> bool:
        return self.port == self.default_port


def parse_endpoint(endpoint_url: str) -> AblyEndpoint | None:
    """The endpoint `endpoint_url` names, or None (empty: Ably's own production endpoint)."""
    if not endpoint_url:
        return None
    parts = urlsplit(endpoint_url if "://" in endpoint_url else f"http://{endpoint_url}")
    if parts.scheme not in ("http", "https", "ws", "wss") or not parts.hostname:
        raise ValueError(
            f"ABLY_ENDPOINT must be a URL like http://127.0.0.1:8788 (or empty), got {endpoint_url!r}"
        )
    tls = parts.scheme in ("https", "wss")
    return AblyEndpoint(parts.hostname, parts.port or (443 if tls else 80), tls)


# Ably's own REST host, for an empty endpoint.
ABLY_DEFAULT_REST_URL = "https://rest.ably.io"


def rest_base_url(endpoint_url: str) -> str:
    """Where REST requests to the endpoint `endpoint_url` names go (no trailing slash), as the
    SDKs reach it: the same host, port and TLS whatever scheme the setting was written with."""
    endpoint = parse_endpoint(endpoint_url)
    if endpoint is None:
        return ABLY_DEFAULT_REST_URL
    host = f"[{endpoint.host}]" if ":" in endpoint.host else endpoint.host
    return f"{'https' if endpoint.tls else 'http'}://{host}:{endpoint.port}"


def js_client_options(endpoint_url: str) -> dict[str, Any]:
    """Options for ably-js `new Ably.Realtime(...)` / `Ably.Rest` (browser or Node), as JSON."""
    endpoint = parse_endpoint(endpoint_url)
    if endpoint is None:
        return {}
    options: dict[str, Any] = {
        "endpoint": endpoint.host,
        "tls": endpoint.tls,
        "fallbackHosts": [],
        # Offline there is no internet-up check to pass, and no comet fallback to use.
        "disableConnectivityCheck": True,
        "transports": ["web_socket"],
    }
    options["tlsPort" if endpoint.tls else "port"] = endpoint.port
    return options


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
    endpoint = parse_endpoint(endpoint_url)
    if endpoint is None:
        return list(ABLY_DEFAULT_CONNECT_SOURCES)
    host = f"[{endpoint.host}]" if ":" in endpoint.host else endpoint.host
    http, ws = ("https", "wss") if endpoint.tls else ("http", "ws")
    return [f"{http}://{host}:{endpoint.port}", f"{ws}://{host}:{endpoint.port}"]
