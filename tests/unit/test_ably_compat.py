"""conversations.ably_compat: one ABLY_ENDPOINT URL -> options for both SDKs."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from ably import AblyRealtime
from ably.transport.websockettransport import ProtocolMessageAction, WebSocketTransport
from ably.types.connectiondetails import ConnectionDetails
from ably.types.connectionstate import ConnectionState
from ably.types.options import Options

from conversations.ably_compat import (
    install_python_realtime_port_patch,
    install_python_resend_patch,
    js_client_options,
    python_client_options,
    unsettled_sends,
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


class RecordingTransport:
    """Stands in for ably-python's websocket: records what the SDK sends."""

    def __init__(self) -> None:
        self.sent: list[dict] = []

    async def send(self, message: dict) -> None:
        self.sent.append(message)

    async def dispose(self) -> None:
        pass


async def _until(predicate, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.001)


def _publish(manager, text: str) -> asyncio.Future:
    message = {
        "action": ProtocolMessageAction.MESSAGE,
        "channel": "c",
        "messages": [{"data": text}],
    }
    return asyncio.ensure_future(manager.send_protocol_message(message))


async def test_publishes_re_sent_on_a_new_connection_are_all_answered() -> None:
    # ably-python 3.1.4 kept the old connection's msgSerials for re-sent publishes and put them
    # behind newer ones on the ack queue: some acks matched nothing, those publishes hung.
    install_python_resend_patch()
    install_python_resend_patch()  # idempotent
    client = AblyRealtime(key="app.key:secret", auto_connect=False)
    manager = client.connection.connection_manager
    try:
        first = RecordingTransport()
        manager.transport = first
        manager.connection_id = "first"
        manager.enact_state_change(ConnectionState.CONNECTED)
        answered, in_flight = _publish(manager, "a"), _publish(manager, "b")
        await _until(lambda: len(first.sent) == 2)
        manager.on_ack(first.sent[0]["msgSerial"], 1, None)
        await asyncio.wait_for(answered, 5)

        # The node dies with "b" unanswered; two more are published during the outage.
        # What deactivate_transport does, without its immediate reconnect to real Ably.
        manager.requeue_pending_messages()
        manager.transport = None
        manager.enact_state_change(ConnectionState.DISCONNECTED)
        queued = [_publish(manager, "c"), _publish(manager, "d")]
        await asyncio.sleep(0)
        assert len(unsettled_sends(client)) == 3

        # It comes back without the connection's state: a new connectionId.
        second = RecordingTransport()
        manager.transport = second
        manager.on_connected(ConnectionDetails(120000, 15000, "key-2", None), "second")
        await _until(lambda: len(second.sent) == 3)
        assert [m["messages"][0]["data"] for m in second.sent] == ["b", "c", "d"]
        # Numbered afresh on the new connection (RTN19a2), so Ably does not take them for
        # duplicates of the old connection's serials.
        assert [m["msgSerial"] for m in second.sent] == [0, 1, 2]
        for frame in second.sent:
            if frame["messages"][0]["data"] == "b":
                manager.on_nack(frame["msgSerial"], 1, None)
            else:
                manager.on_ack(frame["msgSerial"], 1, None)
        with pytest.raises(Exception, match="channel not responding"):
            await asyncio.wait_for(in_flight, 5)
        await asyncio.wait_for(asyncio.gather(*queued), 5)
        assert unsettled_sends(client) == set()

        # Later publishes on the new connection are answered too.
        later = _publish(manager, "e")
        await _until(lambda: len(second.sent) == 4)
        manager.on_ack(second.sent[3]["msgSerial"], 1, None)
        await asyncio.wait_for(later, 5)
    finally:
        manager.transport = None
        manager.cancel_suspend_timer()
        manager.cancel_transition_timer()
        manager.cancel_retry_timer()
