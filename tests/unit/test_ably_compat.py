"""conversations.ably_compat: one ABLY_ENDPOINT URL -> options for both SDKs."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from ably.transport.websockettransport import WebSocketTransport
from ably.types.options import Options

from conversations.ably_compat import (
    install_python_realtime_port_patch,
    js_client_options,
    python_client_options,
)


def test_empty_endpoint_means_real_ably_defaults() -> None:
    assert python_client_options("") == {}
    assert js_client_options("") == {}
    assert python_client_options("", client_id="alice") == {"client_id": "alice"}


def test_plain_http_endpoint_for_python_uses_token_auth_and_the_port() -> None:
    options = python_client_options("http://127.0.0.1:8788", client_id="agent")
    assert options["endpoint"] == "127.0.0.1"
    assert options["port"] == 8788
    assert options["tls"] is False
    assert options["use_token_auth"] is True
    assert options["client_id"] == "agent"
    assert options["default_token_params"] == {"client_id": "agent"}


def test_js_options_point_at_host_and_port_without_fallbacks() -> None:
    assert js_client_options("http://localhost:9000") == {
        "endpoint": "localhost",
        "port": 9000,
        "tls": False,
        "fallbackHosts": [],
        "disableConnectivityCheck": True,
        "transports": ["web_socket"],
    }
    assert js_client_options("https://ably.example.com")["tlsPort"] == 443


@pytest.mark.parametrize("bad", ["ftp://x:1", "http://", "::::"])
def test_malformed_endpoint_is_a_clear_error(bad: str) -> None:
    with pytest.raises(ValueError, match="ABLY_ENDPOINT"):
        python_client_options(bad)


async def _dialled_url(options: Options) -> str:
    install_python_realtime_port_patch()
    install_python_realtime_port_patch()  # idempotent
    captured: list[str] = []

    async def fake_ws_connect(url: str, headers: dict) -> None:
        captured.append(url)

    manager = SimpleNamespace(options=options)
    transport = WebSocketTransport(manager, options.get_host(), {"v": "5"})  # type: ignore[arg-type]
    transport.ws_connect = fake_ws_connect  # type: ignore[method-assign]
    transport.connect()
    await asyncio.sleep(0)
    assert transport.host == options.get_host()
    return captured[0]


async def test_python_realtime_dials_the_configured_port() -> None:
    options = Options(**{**python_client_options("http://127.0.0.1:8788"), "key": "a.b:c"})
    assert (await _dialled_url(options)).startswith("ws://127.0.0.1:8788?")


async def test_port_patch_is_inert_for_default_ports() -> None:
    options = Options(key="a.b:c")  # real Ably: TLS on the default port
    assert (await _dialled_url(options)).startswith("wss://main.realtime.ably.net?")
    explicit = Options(key="a.b:c", endpoint="ably.example.com", tls_port=443)
    assert (await _dialled_url(explicit)).startswith("wss://ably.example.com?")
