"""The agents' control channel is closed to every user (issue 15): whatever token Django mints,
no SDK or hand-made frame attaches to it, publishes on it, enters or reads its presence. The
agent's key (and a key granted only what the control channel needs) can.

Tokens come from Django (`realtime.create_token`, what `/ably/token` serves), signed by the same
key the agent uses, on a stand-in whose key has the production agent capability.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from ably.util.exceptions import AblyException
from asgiref.sync import sync_to_async
from django.contrib.auth.models import User

from conversations import events, realtime
from conversations.agent.control import ControlChannel
from conversations.models import Conversation
from emulators.ably.protocol import Action
from emulators.ably.server import EmulatorServer
from emulators.ably.testing import ably_realtime, ably_rest, connected, eventually, run_node_async
from tests.agent_fixtures import AGENT_KEY_CAPABILITY
from tests.integration.test_security_isolation import JS_PROBE, RawClient

pytestmark = pytest.mark.django_db(transaction=True)

WAIT = 10
CONTROL = events.AGENTS_CONTROL_CHANNEL
# A least-privilege agent key's grant for the control channel: presence, and seeing presence.
CONTROL_ONLY_KEY = "devapp.controlonly:control-only-secret"
CONTROL_ONLY_CAPABILITY = f'{{"{CONTROL}":["presence","subscribe"]}}'


@pytest.fixture
def server(make_ably_server: Callable[..., EmulatorServer], settings: Any) -> EmulatorServer:
    server = make_ably_server(
        keys=[settings.DEV_ABLY_API_KEY, CONTROL_ONLY_KEY],
        key_capabilities={
            "devapp.devkey": AGENT_KEY_CAPABILITY,
            "devapp.controlonly": CONTROL_ONLY_CAPABILITY,
        },
    )
    settings.ABLY_API_KEY = server.key
    settings.ABLY_ENDPOINT = server.endpoint
    return server


@pytest.fixture(autouse=True)
def _no_outbox(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(realtime, "outbox", None)


@pytest.fixture
async def staff(django_user_model: type[User]) -> User:
    return await sync_to_async(django_user_model.objects.create_superuser)(
        "root", "root@example.com", "root-password-1"
    )


async def refusal(awaitable: Any) -> int | None:
    """The Ably error code an operation fails with, or None when it succeeds."""
    try:
        await asyncio.wait_for(awaitable, WAIT)
    except AblyException as error:
        return int(error.code)
    return None


@contextlib.asynccontextmanager
async def fresh_connection(server: Any, token: str) -> AsyncIterator[Any]:
    # One per attempt: a channel whose attach failed refuses the next operation locally (90001).
    client = await connected(ably_realtime(server, token=token))
    try:
        yield client
    finally:
        await client.close()


@contextlib.asynccontextmanager
async def agent_present(server: Any, agent_id: str, key: str) -> AsyncIterator[ControlChannel]:
    client = await connected(ably_realtime(server, key=key, client_id="agent"))
    control = ControlChannel(client.channels.get(CONTROL), agent_id)
    try:
        await control.start()
        yield control
    finally:
        await client.close()


async def user_tokens(alice: User, staff: User) -> list[str]:
    """Every kind of token Django mints: unscoped, scoped to a conversation, list page only,
    and a staff member's (who may watch others' conversations)."""
    conversation = await Conversation.objects.acreate(owner=alice)
    mint = sync_to_async(realtime.create_token)
    return [
        await mint(alice),
        await mint(alice, conversation),
        await mint(alice, user_channel_only=True),
        await mint(staff),
        await mint(staff, conversation),
    ]


async def test_no_user_token_reaches_the_control_channel_through_ably_python(
    server: EmulatorServer, alice: User, staff: User
) -> None:
    async with agent_present(server, "agent-a", server.key):
        for token in await user_tokens(alice, staff):
            async with fresh_connection(server, token) as client:
                channel = client.channels.get(CONTROL)
                assert await refusal(channel.subscribe(lambda m: None)) == 40160
                assert client.connection.state.value == "connected"
            async with fresh_connection(server, token) as client:
                assert await refusal(client.channels.get(CONTROL).publish("x", "hi")) == 40160
            async with fresh_connection(server, token) as client:
                entering = client.channels.get(CONTROL).presence.enter({"agentId": "mallory"})
                assert await refusal(entering) == 40160
            async with fresh_connection(server, token) as client:
                assert await refusal(client.channels.get(CONTROL).presence.get()) == 40160
            rest = ably_rest(server, token=token)
            try:
                assert await refusal(rest.channels.get(CONTROL).presence.get()) == 40160
                assert await refusal(rest.channels.get(CONTROL).presence.history()) == 40160
                assert await refusal(rest.channels.get(CONTROL).publish("x", "hi")) == 40160
                assert await refusal(rest.channels.get(CONTROL).history()) == 40160
            finally:
                await rest.close()
        # Nothing of theirs got in: the agent key reads the agent's entry alone.
        agent_rest = ably_rest(server)
        try:
            members = await agent_rest.channels.get(CONTROL).presence.get()
            assert [m.data for m in members.items] == [{"agentId": "agent-a"}]
        finally:
            await agent_rest.close()


async def test_no_user_token_reaches_the_control_channel_with_raw_frames(
    server: EmulatorServer, alice: User, staff: User
) -> None:
    for token in await user_tokens(alice, staff):
        async with RawClient(server, token) as raw:
            assert (await raw.attach(CONTROL))["error"]["code"] == 40160
            published = await raw.send(
                {"action": Action.MESSAGE, "channel": CONTROL, "messages": [{"name": "x"}]}
            )
            assert (published["action"], published["error"]["code"]) == (Action.NACK, 40160)
            entered = await raw.send(
                {
                    "action": Action.PRESENCE,
                    "channel": CONTROL,
                    "presence": [{"action": 2, "data": {"agentId": "mallory"}}],
                }
            )
            assert (entered["action"], entered["error"]["code"]) == (Action.NACK, 40160)


async def test_no_user_token_reaches_the_control_channel_through_ably_js(
    server: EmulatorServer, alice: User, staff: User
) -> None:
    tokens = await user_tokens(alice, staff)
    for token in (tokens[0], tokens[3]):  # alice's and the staff member's unscoped tokens
        result = await run_node_async(
            JS_PROBE,
            server,
            env={"PROBE_TOKEN": token, "PROBE_CHANNEL": CONTROL, "PROBE_LIST_CHANNEL": CONTROL},
        )
        assert {key: value for key, value in result.items() if key != "clientId"} == {
            "attach": 40160,
            "publish": 40160,
            "presenceEnter": 40160,
            "history": 40160,
            "presenceGet": 40160,
            "restPublish": 40160,
            "listChannel": 40160,
            "stillConnected": True,
        }


async def test_the_agent_key_and_a_control_only_key_share_the_control_channel(
    server: EmulatorServer,
) -> None:
    async with agent_present(server, "agent-a", server.key) as a:
        async with agent_present(server, "agent-b", CONTROL_ONLY_KEY) as b:
            both = {"agent-a", "agent-b"}
            await eventually(lambda: a.membership.members == b.membership.members == both, "both")
        await eventually(lambda: a.membership.members == {"agent-a"}, "agent-b's leave")
