"""conversations.agent.ably_adapter: ably-python's options and every workaround for it.

Each workaround has a test that shows ably-python misbehaving without it, against the SDK's own
classes (its transport replaced by a recorder): when an upgrade fixes the SDK, that test fails
and the workaround can go. The ones that need the Ably stand-in are in
tests/integration/test_ably_adapter.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import ably
import pytest
from ably import AblyRealtime
from ably.realtime.connectionmanager import ConnectionManager
from ably.transport.websockettransport import ProtocolMessageAction, WebSocketTransport
from ably.types.channelstate import ChannelState
from ably.types.connectiondetails import ConnectionDetails
from ably.types.connectionstate import ConnectionState
from ably.types.options import Options
from ably.types.tokendetails import TokenDetails

from conversations.agent import ably_adapter
from conversations.agent.ably_adapter import (
    MAX_UNSETTLED_SENDS,
    can_send_now,
    client_options,
    install_realtime_port_patch,
    install_resend_patch,
    is_permanent_ably_error,
    unsettled_sends,
)
from conversations.agent.config import AgentConfig
from conversations.agent.pool import DISCONNECTED_RETRY_MS, ConnectionPool

KEY = "app.key:secret"


def test_the_workarounds_were_written_for_the_installed_sdk() -> None:
    # Upgrading ably-python: re-run this file; each workaround test that fails names one that
    # is no longer needed (or no longer works), then update SDK_VERSION.
    assert ably.lib_version == ably_adapter.SDK_VERSION


# --- Options ----------------------------------------------------------------------------------


def test_empty_endpoint_means_real_ably_defaults() -> None:
    assert client_options("") == {}
    assert client_options("", client_id="alice") == {"client_id": "alice"}


def test_plain_http_endpoint_uses_token_auth_and_the_port() -> None:
    options = client_options("http://127.0.0.1:8788", client_id="agent")
    assert options == {
        "client_id": "agent",
        "endpoint": "127.0.0.1",
        "tls": False,
        "fallback_hosts": [],
        "port": 8788,
        "use_token_auth": True,
        "default_token_params": {"client_id": "agent"},
    }


def test_tls_endpoint_keeps_key_auth_on_its_port() -> None:
    assert client_options("https://ably.example.com:8443") == {
        "endpoint": "ably.example.com",
        "tls": True,
        "fallback_hosts": [],
        "tls_port": 8443,
    }


@pytest.mark.parametrize("bad", ["ftp://x:1", "http://", "::::"])
def test_malformed_endpoint_is_a_clear_error(bad: str) -> None:
    with pytest.raises(ValueError, match="ABLY_ENDPOINT"):
        client_options(bad)


def _agent_config(endpoint: str) -> AgentConfig:
    return AgentConfig(
        agent_id="agent-1",
        ably_key=KEY,
        ably_endpoint=endpoint,
        agent_client_id="agent",
        anthropic_api_key="k",
        anthropic_base_url="",
        model="m",
        max_tokens=10,
        system_prompt="",
        context_token_budget=1000,
        append_rollup_window_ms=40,
    )


async def test_the_agents_clients_get_their_final_options() -> None:
    config = _agent_config("http://127.0.0.1:8788")
    realtime = ConnectionPool._default_client(config)
    try:
        assert realtime.options.transport_params == {"echo": "false", "appendRollupWindow": "40"}
        assert realtime.options.disconnected_retry_timeout == DISCONNECTED_RETRY_MS
        assert realtime.options.default_token_params == {"client_id": "agent"}
        assert realtime.options.port == 8788
        assert realtime.options.use_token_auth is True
    finally:
        await realtime.close()


# --- Workaround 1: the realtime port ----------------------------------------------------------


async def _dialled_url(options: Options, connect: Callable[[Any], Any] | None = None) -> str:
    captured: list[str] = []

    async def fake_ws_connect(url: str, headers: dict[str, str]) -> None:
        captured.append(url)

    manager = SimpleNamespace(options=options)
    transport: Any = WebSocketTransport(manager, options.get_host(), {"v": "5"})
    transport.ws_connect = fake_ws_connect
    (connect or WebSocketTransport.connect)(transport)
    await asyncio.sleep(0)
    assert transport.host == options.get_host()
    return captured[0]


def _stand_in_options() -> Options:
    return Options(**{**client_options("http://127.0.0.1:8788"), "key": KEY})


async def test_unpatched_realtime_dials_without_the_port() -> None:
    install_realtime_port_patch()
    sdk_connect = getattr(WebSocketTransport.connect, "__wrapped__")  # noqa: B009
    assert (await _dialled_url(_stand_in_options(), sdk_connect)).startswith("ws://127.0.0.1?")


async def test_python_realtime_dials_the_configured_port() -> None:
    install_realtime_port_patch()
    install_realtime_port_patch()  # idempotent
    assert (await _dialled_url(_stand_in_options())).startswith("ws://127.0.0.1:8788?")


async def test_port_patch_is_inert_for_default_ports() -> None:
    install_realtime_port_patch()
    options = Options(key=KEY)  # real Ably: TLS on the default port
    assert (await _dialled_url(options)).startswith("wss://main.realtime.ably.net?")
    explicit = Options(key=KEY, endpoint="ably.example.com", tls_port=443)
    assert (await _dialled_url(explicit)).startswith("wss://ably.example.com?")


# --- A realtime client on a recording transport -----------------------------------------------


class RecordingTransport:
    """Stands in for ably-python's websocket: records what the SDK sends."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)

    async def dispose(self) -> None:
        pass


async def _until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.001)


def _publish(manager: Any, text: str) -> asyncio.Future[Any]:
    message = {
        "action": ProtocolMessageAction.MESSAGE,
        "channel": "c",
        "messages": [{"data": text}],
    }
    publish: asyncio.Future[Any] = asyncio.ensure_future(manager.send_protocol_message(message))
    return publish


@pytest.fixture
def offline_client() -> Iterator[AblyRealtime]:
    """A realtime client that never dials: tests attach recording transports to it."""
    client = AblyRealtime(key=KEY, auto_connect=False)
    yield client
    manager = client.connection.connection_manager
    manager.transport = None
    manager.cancel_suspend_timer()
    manager.cancel_transition_timer()
    manager.cancel_retry_timer()


def _connect(manager: Any, connection_id: str) -> RecordingTransport:
    transport = RecordingTransport()
    manager.transport = transport
    manager.connection_id = connection_id
    manager.enact_state_change(ConnectionState.CONNECTED)
    return transport


def _reconnect_as_new_connection(manager: Any) -> RecordingTransport:
    transport = RecordingTransport()
    manager.transport = transport
    manager.on_connected(ConnectionDetails(120000, 15000, "key-2", None), "second")
    return transport


def _drop(manager: Any) -> None:
    # What deactivate_transport does, without its immediate reconnect to real Ably.
    manager.requeue_pending_messages()
    manager.transport = None
    manager.enact_state_change(ConnectionState.DISCONNECTED)


# --- Workaround 4: publishes re-sent on a new connection --------------------------------------


async def _publishes_across_a_new_connection(
    client: AblyRealtime,
) -> tuple[list[int], list[asyncio.Future[Any]]]:
    """Publish a (acked), b (in flight when the transport drops), c and d (during the outage);
    the connection comes back as a new one and acks every frame it was sent. Returns the
    msgSerials sent on the new connection and the publishes still unanswered."""
    manager = client.connection.connection_manager
    first = _connect(manager, "first")
    answered, in_flight = _publish(manager, "a"), _publish(manager, "b")
    await _until(lambda: len(first.sent) == 2)
    manager.on_ack(first.sent[0]["msgSerial"], 1, None)
    await asyncio.wait_for(answered, 5)
    _drop(manager)
    queued = [_publish(manager, "c"), _publish(manager, "d")]
    await asyncio.sleep(0)
    assert len(unsettled_sends(client) or ()) == 3
    second = _reconnect_as_new_connection(manager)
    await _until(lambda: len(second.sent) == 3)
    assert [m["messages"][0]["data"] for m in second.sent] == ["b", "c", "d"]
    serials = [frame["msgSerial"] for frame in second.sent]
    for serial in serials:
        manager.on_ack(serial, 1, None)
    publishes = [in_flight, *queued]
    await asyncio.wait(publishes, timeout=1.0)
    return serials, [publish for publish in publishes if not publish.done()]


async def test_unpatched_sdk_leaves_publishes_re_sent_on_a_new_connection_unanswered(
    offline_client: AblyRealtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    install_resend_patch()
    sdk_method = getattr(ConnectionManager.send_queued_messages, "__wrapped__")  # noqa: B009
    monkeypatch.setattr(ConnectionManager, "send_queued_messages", sdk_method)
    serials, unanswered = await _publishes_across_a_new_connection(offline_client)
    # The old connection's serials on the new one (RTN19a2 wants them renumbered from 0), and
    # acks for every frame sent still leave a publish waiting.
    assert serials != [0, 1, 2]
    assert unanswered
    for publish in unanswered:
        publish.cancel()


async def test_publishes_re_sent_on_a_new_connection_are_all_answered(
    offline_client: AblyRealtime,
) -> None:
    install_resend_patch()
    install_resend_patch()  # idempotent
    serials, unanswered = await _publishes_across_a_new_connection(offline_client)
    assert serials == [0, 1, 2]
    assert unanswered == []
    assert unsettled_sends(offline_client) == set()

    # Later publishes on the new connection are answered too.
    manager = offline_client.connection.connection_manager
    second = manager.transport
    later = _publish(manager, "e")
    await _until(lambda: len(second.sent) == 4)
    manager.on_ack(second.sent[3]["msgSerial"], 1, None)
    await asyncio.wait_for(later, 5)


async def test_a_publish_nacked_on_the_new_connection_fails_its_publisher(
    offline_client: AblyRealtime,
) -> None:
    install_resend_patch()
    manager = offline_client.connection.connection_manager
    first = _connect(manager, "first")
    in_flight = _publish(manager, "b")
    await _until(lambda: len(first.sent) == 1)
    _drop(manager)
    second = _reconnect_as_new_connection(manager)
    await _until(lambda: len(second.sent) == 1)
    manager.on_nack(second.sent[0]["msgSerial"], 1, None)
    with pytest.raises(Exception, match="channel not responding"):
        await asyncio.wait_for(in_flight, 5)


# --- Workaround 5: what was queued while disconnected goes out at once ------------------------


async def test_sdk_sends_everything_queued_while_disconnected_at_once(
    offline_client: AblyRealtime,
) -> None:
    manager = offline_client.connection.connection_manager
    _connect(manager, "first")
    _drop(manager)
    channel = SimpleNamespace(ably=offline_client)
    assert not can_send_now(channel)
    burst = 3 * MAX_UNSETTLED_SENDS
    publishes = [_publish(manager, f"delta {n}") for n in range(burst)]
    await asyncio.sleep(0)
    assert len(unsettled_sends(offline_client) or ()) == burst
    second = _reconnect_as_new_connection(manager)
    # No pacing: the whole queue is on the wire before the first ack can come back, far over
    # what a connection may send in a second.
    await _until(lambda: len(second.sent) == burst)
    assert not can_send_now(channel)  # too many unanswered
    for frame in second.sent:
        manager.on_ack(frame["msgSerial"], 1, None)
    await asyncio.wait_for(asyncio.gather(*publishes), 5)
    assert can_send_now(channel)


def test_the_adapter_knows_the_sdks_send_queues(offline_client: AblyRealtime) -> None:
    # unsettled_sends reads private attributes; None would mean they moved in this SDK.
    assert unsettled_sends(offline_client) == set()


# --- Workaround 6: a SUSPENDED channel refuses publishes --------------------------------------


async def test_sdk_refuses_publishes_on_a_suspended_channel_until_its_own_retry(
    offline_client: AblyRealtime,
) -> None:
    channel = offline_client.channels.get("ai:suspended")
    channel._notify_state(ChannelState.SUSPENDED)
    with pytest.raises(Exception) as refused:
        await channel.publish("name", "data")
    assert getattr(refused.value, "code", None) == 90001
    # ...until its own re-attach, 15 s later: wait_until_usable attaches at once instead.
    assert offline_client.options.channel_retry_timeout == 15000


# --- Workaround 7: 40001 is not permanent -----------------------------------------------------


async def test_sdk_refuses_a_publish_while_suspended_with_a_code_that_is_not_permanent(
    offline_client: AblyRealtime,
) -> None:
    manager = offline_client.connection.connection_manager
    manager.enact_state_change(ConnectionState.SUSPENDED)
    with pytest.raises(Exception) as refused:
        await offline_client.channels.get("ai:x").publish("name", "data")
    assert getattr(refused.value, "code", None) == ably_adapter.SDK_NOT_CONNECTED
    assert 40000 <= ably_adapter.SDK_NOT_CONNECTED < 50000  # a 4xxxx, yet it passes
    assert not is_permanent_ably_error(refused.value)


# --- Workaround 8: a realtime client's REST requests re-authorize its connection -------------


async def test_sdk_realtime_client_sends_an_auth_before_each_rest_request() -> None:
    token = TokenDetails(token="token-1", expires=2**42, client_id="agent")
    client = AblyRealtime(token_details=token, auto_connect=False)
    manager = client.connection.connection_manager
    transport = _connect(manager, "first")
    # What every REST request does before it goes out (Http.make_request), with a valid token.
    headers = asyncio.ensure_future(client.auth._get_auth_headers())
    try:
        await _until(lambda: any(f["action"] == ProtocolMessageAction.AUTH for f in transport.sent))
    finally:
        headers.cancel()
        await asyncio.gather(headers, return_exceptions=True)
        manager.transport = None
        manager.cancel_suspend_timer()
        manager.cancel_transition_timer()
        manager.cancel_retry_timer()


# --- Messages and errors ----------------------------------------------------------------------


def test_first_serial_reads_what_the_sdk_returns() -> None:
    assert ably_adapter.first_serial(SimpleNamespace(serials=["s1", "s2"])) == "s1"
    assert ably_adapter.first_serial(SimpleNamespace(serials=[None])) is None
    assert ably_adapter.first_serial(None) is None


def test_new_message_ids_are_unguessable_and_distinct() -> None:
    ids = {ably_adapter.new_message_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(len(i) >= 22 for i in ids)
