"""The adapter's option workarounds against the Ably stand-in: ably-python 3.1.4, unmodified,
fails without each one (so each test fails once an upgrade makes its workaround unnecessary).
The workarounds that need no server are in tests/unit/test_ably_adapter.py."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from ably import AblyException, AblyRealtime, AblyRest
from ably.types.connectionstate import ConnectionState

from conversations.agent.ably_adapter import REST_PROTOCOL_VERSION, client_options
from emulators.ably.testing import EmulatorServer

WAIT = 10.0


def _without(options: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {name: value for name, value in options.items() if name not in keys}


async def _list_channels(rest: AblyRest) -> Any:
    return await rest.request("GET", "/channels", REST_PROTOCOL_VERSION)


async def test_sdk_refuses_key_auth_for_rest_over_plain_http(ably_server: EmulatorServer) -> None:
    # Workaround 2: without use_token_auth, ably-python will not send the key over HTTP.
    options = client_options(ably_server.endpoint)
    unpatched = AblyRest(key=ably_server.key, **_without(options, "use_token_auth"))
    try:
        with pytest.raises(AblyException) as refused:
            await _list_channels(unpatched)
        assert refused.value.code == 40103
    finally:
        await unpatched.close()
    rest = AblyRest(key=ably_server.key, **options)
    try:
        response = await _list_channels(rest)
        assert 200 <= response.status_code < 300
    finally:
        await rest.close()


async def _first_outcome(client: AblyRealtime) -> Any:
    """The connection's first state change out of CONNECTING."""
    async with asyncio.timeout(WAIT):
        while client.connection.state in (ConnectionState.INITIALIZED, ConnectionState.CONNECTING):
            await client.connection.once_async()
    return client.connection.state


async def test_sdk_realtime_token_requests_leave_out_the_client_id(
    ably_server: EmulatorServer,
) -> None:
    # Workaround 3: without default_token_params the token comes back without the clientId the
    # client asked for; the SDK refuses it (40102 inside its 80019) and never connects.
    options = client_options(ably_server.endpoint, client_id="agent")
    unpatched = AblyRealtime(key=ably_server.key, **_without(options, "default_token_params"))
    try:
        assert await _first_outcome(unpatched) != ConnectionState.CONNECTED
        assert unpatched.connection.error_reason.code == 80019
    finally:
        await unpatched.close()
    client = AblyRealtime(key=ably_server.key, **options)
    try:
        assert await _first_outcome(client) == ConnectionState.CONNECTED
        assert client.auth.client_id == "agent"
    finally:
        await client.close()
