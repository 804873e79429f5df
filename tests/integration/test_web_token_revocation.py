"""Deleting a conversation revokes the tokens already issued for it (Ably token revocation).

Against the real Ably stand-in: Django's revokeTokens request after the delete commits, what
ably-js does on the 40141 (renews through /ably/token and resumes), and what the old token can
still do (nothing)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import httpx
import pytest
from ably import AblyRealtime
from asgiref.sync import sync_to_async
from django.db import transaction
from django.test import Client
from django.urls import reverse

from conversations import actions, realtime
from conversations.agent import ably_adapter
from conversations.models import Conversation
from emulators.ably.testing import NodeSession

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

WAIT_SECONDS = 10
SCRIPT = Path(__file__).parent / "js" / "web_token_revocation.mjs"


@pytest.fixture(autouse=True)
def _django_uses_the_stand_in(settings, ably_server, monkeypatch):
    settings.ABLY_API_KEY = ably_server.key
    settings.ABLY_ENDPOINT = ably_server.endpoint
    monkeypatch.setattr(realtime, "outbox", None)


def rest_status(ably_server, token: str, channel: str) -> tuple[int, int | None]:
    """(HTTP status, Ably error code) of reading a channel's history with `token`."""
    import base64

    response = httpx.get(
        f"{ably_server.endpoint}/channels/{channel}/messages",
        headers={"Authorization": f"Bearer {base64.b64encode(token.encode()).decode()}"},
    )
    code = None
    if response.status_code >= 400:
        code = json.loads(response.text)["error"]["code"]
    return response.status_code, code


def wait_until(predicate, what: str, timeout: float = WAIT_SECONDS):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)
    return value


def test_delete_revokes_the_owners_tokens_after_commit_not_before(ably_server, alice, bob):
    doomed = Conversation.objects.create(owner=alice)
    kept = Conversation.objects.create(owner=alice)
    alices = realtime.create_token(alice)
    bobs = realtime.create_token(bob)
    assert rest_status(ably_server, alices, doomed.channel_name) == (200, None)

    # Rolled back: nothing is revoked.
    with pytest.raises(RuntimeError), transaction.atomic():
        actions.delete_conversation(Conversation.objects.get(pk=kept.pk))
        raise RuntimeError("roll back")
    assert rest_status(ably_server, alices, kept.channel_name) == (200, None)

    with transaction.atomic():
        actions.delete_conversation(doomed)
        # Not yet committed: the token still works (the delete could still roll back).
        assert rest_status(ably_server, alices, kept.channel_name) == (200, None)
    # Committed: every token issued to alice before the delete is refused, on any channel.
    assert rest_status(ably_server, alices, doomed.channel_name) == (401, 40141)
    assert rest_status(ably_server, alices, kept.channel_name) == (401, 40141)
    # Other users' tokens are untouched.
    assert rest_status(ably_server, bobs, events_channel_of(bob)) == (200, None)
    # A token issued now works at once (no same-second collateral) and lists only `kept`.
    fresh = realtime.create_token(alice)
    assert rest_status(ably_server, fresh, kept.channel_name) == (200, None)
    assert rest_status(ably_server, fresh, doomed.channel_name) == (401, 40160)


def test_a_realtime_service_whose_clock_is_behind_still_revokes_the_latest_tokens(
    ably_server, alice
):
    doomed = Conversation.objects.create(owner=alice)
    kept = Conversation.objects.create(owner=alice)
    # Ably's clock 1.2 s behind ours: our `issuedBefore` is in its future until it catches up.
    ably_server.call(lambda: setattr(ably_server.app.clock, "offset_ms", -1200))
    just_before = realtime.create_token(alice)
    actions.delete_conversation(doomed)
    assert rest_status(ably_server, just_before, kept.channel_name) == (401, 40141)
    fresh = realtime.create_token(alice)
    assert rest_status(ably_server, fresh, kept.channel_name) == (200, None)


def events_channel_of(user) -> str:
    from conversations import events

    return events.user_channel(realtime.client_id_for_user(user))


async def test_a_live_connection_on_a_revoked_token_is_cut_off(ably_server, alice):
    """ably-python with a bare token is cut off: on the 40141 it tries to renew and, having no
    authUrl or key, fails with 40171 (ably-python `connectionmanager.on_token_error`)."""
    doomed = await Conversation.objects.acreate(owner=alice)
    token = await sync_to_async(realtime.create_token)(alice)
    client = AblyRealtime(token=token, **ably_adapter.client_options(ably_server.endpoint))
    reasons: list[int] = []
    client.connection.on(lambda change: change.reason and reasons.append(change.reason.code))
    try:
        await asyncio.wait_for(client.connection.once_async("connected"), WAIT_SECONDS)
        await asyncio.wait_for(client.channels.get(doomed.channel_name).attach(), WAIT_SECONDS)
        await sync_to_async(actions.delete_conversation)(doomed)
        deadline = time.monotonic() + WAIT_SECONDS
        while client.connection.state == "connected":
            assert time.monotonic() < deadline, "still connected on a revoked token"
            await asyncio.sleep(0.02)
        assert reasons and set(reasons) <= {40141, 40171}
    finally:
        await client.close()


async def test_ably_js_renews_and_keeps_everything_but_the_deleted_conversation(
    ably_server, live_server, alice
):
    doomed = await Conversation.objects.acreate(owner=alice, title="Doomed")
    kept = await Conversation.objects.acreate(owner=alice, title="Kept")
    web = Client()
    await sync_to_async(web.force_login)(alice)
    env = {
        "TOKEN_URL": f"{live_server.url}{reverse('conversations:ably_token')}",
        "SESSION_COOKIE": f"sessionid={web.cookies['sessionid'].value}",
        "DELETED_CHANNEL": doomed.channel_name,
        "KEPT_CHANNEL": kept.channel_name,
    }
    async with NodeSession(SCRIPT, ably_server, env, timeout=30) as node:
        ready = await node.read()
        assert ready["ready"]
        # The user deletes it on another device: the real view, as a browser posts it.
        response = await sync_to_async(web.post)(reverse("conversations:delete", args=[doomed.pk]))
        assert response.status_code == 302
        await node.send({"deleted": True})
        assert (await node.read())["renewed"]
        rest_publish(ably_server, kept.channel_name, "still live")
        await node.send({"published": True})
        result = await node.result()

    assert result["sawRevocation"] and result["finalState"] == "connected"
    # Resumed, not a new connection: nothing else the page holds was lost.
    assert result["sameConnection"] == ready["connectionId"]
    assert result["keptState"] == "attached" and "still live" in result["keptMessages"]
    assert result["deletedAttachError"] == 40160
    assert result["staleError"] == 40141
    assert result["staleRestError"] in (40141, 40171)


def rest_publish(ably_server, channel: str, data: str) -> None:
    key_name, secret = ably_server.key.split(":")
    response = httpx.post(
        f"{ably_server.endpoint}/channels/{channel}/messages",
        json={"name": "note", "data": data},
        auth=(key_name, secret),
    )
    response.raise_for_status()
