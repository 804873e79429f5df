"""Django's tokens and publishes against the Ably stand-in, through the real ably-python SDK."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest
from ably import AblyRealtime
from ably.util.exceptions import AblyException
from asgiref.sync import sync_to_async
from django.urls import reverse

from conversations import actions, events, realtime
from conversations.agent import ably_adapter
from conversations.models import Conversation

# Real commits: Django's publishes run in transaction.on_commit.
pytestmark = pytest.mark.django_db(transaction=True)

WAIT_SECONDS = 10


@pytest.fixture(autouse=True)
def _django_uses_the_stand_in(settings, ably_server, monkeypatch):
    settings.ABLY_API_KEY = ably_server.key
    settings.ABLY_ENDPOINT = ably_server.endpoint
    monkeypatch.setattr(realtime, "outbox", None)


def realtime_client(endpoint: str, **auth: Any) -> AblyRealtime:
    return AblyRealtime(**ably_adapter.client_options(endpoint), **auth)


async def connected(client: AblyRealtime) -> AblyRealtime:
    await asyncio.wait_for(client.connection.once_async("connected"), WAIT_SECONDS)
    return client


async def attach_error_code(client: AblyRealtime, channel_name: str) -> int | None:
    """None when the attach succeeds, else the Ably error code it fails with."""
    try:
        await asyncio.wait_for(client.channels.get(channel_name).attach(), WAIT_SECONDS)
    except AblyException as error:
        return error.code
    return None


async def publish_error_code(client: AblyRealtime, channel_name: str) -> int | None:
    try:
        await asyncio.wait_for(
            client.channels.get(channel_name).publish("prompt", "hello"), WAIT_SECONDS
        )
    except AblyException as error:
        return error.code
    return None


async def test_a_minted_token_opens_my_channel_and_not_someone_elses(ably_server, alice, bob):
    mine = await Conversation.objects.acreate(owner=alice)
    theirs = await Conversation.objects.acreate(owner=bob)
    token = await sync_to_async(realtime.create_token)(alice)

    client = await connected(realtime_client(ably_server.endpoint, token=token))
    try:
        assert client.auth.client_id == realtime.client_id_for_user(alice)
        assert await attach_error_code(client, mine.channel_name) is None
        assert await publish_error_code(client, mine.channel_name) is None
        assert await attach_error_code(client, theirs.channel_name) == 40160
        assert await attach_error_code(client, f"ai:{uuid.uuid4()}") == 40160
    finally:
        await client.close()


async def test_a_scoped_token_opens_only_that_conversation(ably_server, alice):
    wanted = await Conversation.objects.acreate(owner=alice)
    other = await Conversation.objects.acreate(owner=alice)
    token = await sync_to_async(realtime.create_token)(alice, wanted)

    client = await connected(realtime_client(ably_server.endpoint, token=token))
    try:
        assert await attach_error_code(client, wanted.channel_name) is None
        assert await attach_error_code(client, other.channel_name) == 40160
    finally:
        await client.close()


async def test_staff_can_watch_but_not_write(ably_server, alice, bob):
    bob.is_staff = True
    await bob.asave()
    watched = await Conversation.objects.acreate(owner=alice)
    token = await sync_to_async(realtime.create_token)(bob, watched)

    client = await connected(realtime_client(ably_server.endpoint, token=token))
    try:
        assert await attach_error_code(client, watched.channel_name) is None
        assert await publish_error_code(client, watched.channel_name) == 40160
        channel = client.channels.get(watched.channel_name)
        with pytest.raises(AblyException) as refused:
            await asyncio.wait_for(channel.presence.enter("watching"), WAIT_SECONDS)
        assert refused.value.code == 40160
    finally:
        await client.close()


async def test_the_sdk_gets_its_token_from_the_token_endpoint(ably_server, live_server, alice):
    """ably-python's authUrl path: a logged-in session's cookie buys an application/jwt token."""
    conversation = await Conversation.objects.acreate(owner=alice)

    def session_cookie() -> str:
        from django.test import Client

        web = Client()
        web.force_login(alice)
        return f"sessionid={web.cookies['sessionid'].value}"

    url = f"{live_server.url}{reverse('conversations:ably_token')}?conversation={conversation.pk}"
    client = realtime_client(
        ably_server.endpoint,
        auth_url=url,
        auth_headers={"Cookie": await sync_to_async(session_cookie)()},
    )
    try:
        await connected(client)
        assert client.auth.client_id == realtime.client_id_for_user(alice)
        assert await attach_error_code(client, conversation.channel_name) is None
    finally:
        await client.close()


async def test_list_changes_reach_my_other_devices_live(ably_server, alice):
    """A conversation created on one device shows up on another through `user:<clientId>`."""
    token = await sync_to_async(realtime.create_token)(alice)
    client = await connected(realtime_client(ably_server.endpoint, token=token))
    received: asyncio.Queue = asyncio.Queue()
    try:
        user_channel = client.channels.get(events.user_channel(realtime.client_id_for_user(alice)))
        await asyncio.wait_for(user_channel.subscribe(received.put_nowait), WAIT_SECONDS)

        conversation = await sync_to_async(actions.create_conversation)(alice)

        message = await asyncio.wait_for(received.get(), WAIT_SECONDS)
        assert message.name == events.Name.CONVERSATION
        assert message.client_id == "server"
        assert message.data["action"] == events.ListAction.CREATED
        assert message.data["id"] == str(conversation.pk)

        await sync_to_async(actions.rename_conversation)(conversation, "Renamed")
        message = await asyncio.wait_for(received.get(), WAIT_SECONDS)
        assert (message.data["action"], message.data["title"]) == ("renamed", "Renamed")
    finally:
        await client.close()


async def test_a_rename_is_announced_on_the_conversation_channel(ably_server, alice):
    conversation = await Conversation.objects.acreate(owner=alice, title="Before")
    token = await sync_to_async(realtime.create_token)(alice, conversation)
    client = await connected(realtime_client(ably_server.endpoint, token=token))
    received: asyncio.Queue = asyncio.Queue()
    try:
        channel = client.channels.get(conversation.channel_name)
        await asyncio.wait_for(
            channel.subscribe(events.Name.TITLE, received.put_nowait), WAIT_SECONDS
        )

        await sync_to_async(actions.rename_conversation)(conversation, "After")

        message = await asyncio.wait_for(received.get(), WAIT_SECONDS)
        assert (message.name, message.data, message.client_id) == ("title", "After", "server")
    finally:
        await client.close()


def test_ably_js_gets_its_token_from_the_token_endpoint(ably_server, live_server, alice, bob):
    """The browser's path, in Node: ably-js `authUrl` with the session cookie."""
    from django.test import Client

    from emulators.ably.testing import run_node

    mine = Conversation.objects.create(owner=alice)
    theirs = Conversation.objects.create(owner=bob)
    web = Client()
    web.force_login(alice)

    result = run_node(
        Path(__file__).parent / "js" / "web_token_client.mjs",
        ably_server,
        env={
            "TOKEN_URL": f"{live_server.url}{reverse('conversations:ably_token')}",
            "SESSION_COOKIE": f"sessionid={web.cookies['sessionid'].value}",
            "OWN_CHANNEL": mine.channel_name,
            "OTHER_CHANNEL": theirs.channel_name,
        },
    )

    assert result == {
        "clientId": realtime.client_id_for_user(alice),
        "ownAttachError": None,
        "otherAttachError": 40160,
    }
