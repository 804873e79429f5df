"""The Ably JWT Django mints, through GET /ably/token and conversations.realtime."""

from __future__ import annotations

import base64
import json
import logging
import socket
import uuid

import aiohttp
import jwt
import pytest
from aiohttp import web
from django.urls import reverse

from conversations import events, realtime
from conversations.models import Conversation
from tests.stub_http import start_one_route

pytestmark = pytest.mark.django_db

KEY_NAME, KEY_SECRET = "testapp.testkey", "test-secret-of-the-key-long-enough-for-hs256"
ALL = ["history", "presence", "publish", "subscribe"]


@pytest.fixture(autouse=True)
def _known_key(settings):
    settings.ABLY_API_KEY = f"{KEY_NAME}:{KEY_SECRET}"
    settings.ABLY_TOKEN_TTL_SECONDS = 3600


def token_url(conversation_id=None) -> str:
    url = reverse("conversations:ably_token")
    return f"{url}?conversation={conversation_id}" if conversation_id is not None else url


def decode(token: str) -> tuple[dict, dict]:
    header = jwt.get_unverified_header(token)
    claims = jwt.decode(token, KEY_SECRET, algorithms=["HS256"])
    return header, claims


def test_client_ids_are_stable_and_reversible(alice, bob):
    assert realtime.client_id_for_user(alice) == f"user-{alice.pk}"
    assert realtime.client_id_for_user(alice) != realtime.client_id_for_user(bob)
    assert realtime.user_pk_from_client_id(realtime.client_id_for_user(alice)) == alice.pk


@pytest.mark.parametrize(
    "client_id", [None, "", "agent", "server", "user-", "user-x1", "user-01", "user-1 ", "user-١"]
)
def test_foreign_client_ids_map_to_no_user(client_id):
    assert realtime.user_pk_from_client_id(client_id) is None


def test_the_token_grants_exactly_my_conversations(alice_client, alice, bob):
    first = Conversation.objects.create(owner=alice, title="one")
    archived = Conversation.objects.create(owner=alice, title="two", archived=True)
    Conversation.objects.create(owner=bob, title="not mine")

    response = alice_client.get(token_url())

    assert response.status_code == 200
    assert response["Content-Type"] == "application/jwt"
    assert "no-store" in response["Cache-Control"]
    header, claims = decode(response.content.decode())
    assert header == {"alg": "HS256", "typ": "JWT", "kid": KEY_NAME}
    assert set(claims) == {"iat", "exp", "x-ably-clientId", "x-ably-capability"}
    assert claims["exp"] - claims["iat"] == 3600
    assert claims["x-ably-clientId"] == f"user-{alice.pk}"
    assert json.loads(claims["x-ably-capability"]) == {
        f"ai:{first.pk}": ALL,
        f"ai:{archived.pk}": ALL,
        f"user:user-{alice.pk}": ["history", "subscribe"],
    }
    assert "*" not in claims["x-ably-capability"]


def test_a_scoped_token_grants_only_that_conversation(alice_client, alice):
    wanted = Conversation.objects.create(owner=alice)
    Conversation.objects.create(owner=alice)

    _, claims = decode(alice_client.get(token_url(wanted.pk)).content.decode())

    assert json.loads(claims["x-ably-capability"]) == {
        f"ai:{wanted.pk}": ALL,
        f"user:user-{alice.pk}": ["history", "subscribe"],
    }


def test_the_ttl_comes_from_settings(alice_client, settings):
    settings.ABLY_TOKEN_TTL_SECONDS = 120
    _, claims = decode(alice_client.get(token_url()).content.decode())
    assert claims["exp"] - claims["iat"] == 120


def test_anonymous_callers_get_a_json_401_not_a_redirect(client):
    response = client.get(token_url())
    assert response.status_code == 401
    assert response["Content-Type"] == "application/json"
    assert response.json() == {"error": "Log in to get an Ably token."}


@pytest.mark.parametrize("make_id", ["bobs", "unknown", "malformed", "empty"])
def test_a_conversation_that_is_not_mine_is_a_404_that_leaks_nothing(alice_client, bob, make_id):
    ids = {
        "bobs": lambda: Conversation.objects.create(owner=bob).pk,
        "unknown": uuid.uuid4,
        "malformed": lambda: "not-a-uuid",
        "empty": lambda: "",
    }
    response = alice_client.get(token_url(ids[make_id]()))
    assert response.status_code == 404
    assert response.json() == {"error": "No such conversation."}


def test_staff_get_a_read_only_token_for_anyones_conversation(client, alice, bob):
    bob.is_staff = True
    bob.save()
    watched = Conversation.objects.create(owner=alice)
    client.force_login(bob)

    _, claims = decode(client.get(token_url(watched.pk)).content.decode())

    assert claims["x-ably-clientId"] == f"user-{bob.pk}"
    # `subscribe` carries presence subscription; `presence` (entering) and `publish` are absent.
    assert json.loads(claims["x-ably-capability"]) == {
        f"ai:{watched.pk}": ["history", "subscribe"],
        f"user:user-{bob.pk}": ["history", "subscribe"],
    }


def test_staff_keep_full_rights_on_their_own_conversations(client, bob):
    bob.is_staff = True
    bob.save()
    own = Conversation.objects.create(owner=bob)
    client.force_login(bob)
    _, claims = decode(client.get(token_url(own.pk)).content.decode())
    assert json.loads(claims["x-ably-capability"])[f"ai:{own.pk}"] == ALL


def test_the_token_endpoint_only_answers_get(alice_client):
    assert alice_client.post(token_url()).status_code == 405


def test_a_malformed_key_is_a_clear_error(alice, settings):
    settings.ABLY_API_KEY = "no-secret-here"
    with pytest.raises(ValueError, match="ABLY_API_KEY must look like 'appId.keyId:secret'"):
        realtime.create_token(alice)


# --- Server publishes ---


def test_publish_goes_to_the_outbox_when_there_is_one(monkeypatch):
    sent: list[realtime.PublishedEvent] = []
    monkeypatch.setattr(realtime, "outbox", sent)
    realtime.publish("ai:x", events.Title(title="Hello"))
    assert sent == [
        realtime.PublishedEvent(channel="ai:x", name="title", data="Hello", extras={"headers": {}})
    ]


def test_a_failed_publish_is_logged_and_swallowed(settings, caplog, monkeypatch):
    monkeypatch.setattr(realtime, "outbox", None)
    # A loopback port nobody listens on: the connection is refused at once.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings.ABLY_ENDPOINT = f"http://127.0.0.1:{port}"
    with caplog.at_level(logging.WARNING, logger="conversations.realtime"):
        realtime.publish("ai:x", events.Title(title="Hello"))
    assert "Ably publish of 'title' to ai:x failed" in caplog.text


async def test_a_failed_publish_from_the_agent_is_logged_and_swallowed(
    settings, caplog, monkeypatch
):
    """`publish_async` (the agent's list changes): refused, or no answer at all, only logged."""
    monkeypatch.setattr(realtime, "outbox", None)

    async def refuse(request: web.Request) -> web.Response:
        assert request.headers["Authorization"].startswith("Basic ")
        return web.json_response({"error": {"code": 40160}}, status=401)

    runner, settings.ABLY_ENDPOINT = await start_one_route(
        "POST", "/channels/{channel}/messages", refuse
    )
    try:
        async with aiohttp.ClientSession() as session:
            with caplog.at_level(logging.WARNING, logger="conversations.realtime"):
                await realtime.publish_async("user:x", events.Title(title="Hello"), session)
                assert "Ably publish of 'title' to user:x failed: HTTP 401" in caplog.text
                await runner.cleanup()
                caplog.clear()
                await realtime.publish_async("user:x", events.Title(title="Hello"), session)
                assert "Ably publish of 'title' to user:x failed" in caplog.text
    finally:
        await runner.cleanup()


def test_without_an_endpoint_publishes_go_to_ably_itself(settings):
    settings.ABLY_ENDPOINT = ""
    assert realtime.rest_base_url() == "https://rest.ably.io"
    settings.ABLY_ENDPOINT = "http://127.0.0.1:8788/"
    assert realtime.rest_base_url() == "http://127.0.0.1:8788"


def test_the_jwt_signature_is_checked_with_the_key_secret(alice):
    token = realtime.create_token(alice)
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(token, "another-secret-also-long-enough-for-hs256", algorithms=["HS256"])
    # The header is plain base64url JSON, which is what Ably reads the `kid` from.
    header_segment = token.split(".")[0]
    padded = header_segment + "=" * (-len(header_segment) % 4)
    assert json.loads(base64.urlsafe_b64decode(padded))["kid"] == KEY_NAME


def test_the_list_scope_grants_only_my_list_channel(alice_client, alice):
    Conversation.objects.create(owner=alice)

    _, claims = decode(alice_client.get(f"{token_url()}?scope=user").content.decode())

    assert json.loads(claims["x-ably-capability"]) == {
        f"user:user-{alice.pk}": ["history", "subscribe"]
    }


@pytest.mark.parametrize(
    "query", ["scope=everything", "scope=user&conversation=3f0c1a52-8d5e-4b7a-9a34-2f6f1e0b9c11"]
)
def test_a_scope_that_makes_no_sense_is_a_clear_400(alice_client, query):
    response = alice_client.get(f"{token_url()}?{query}")
    assert response.status_code == 400
    assert response.json() == {"error": "Ask for ?conversation=<id>, ?scope=user, or neither."}


def test_a_token_for_someone_elses_conversation_cannot_be_minted_even_by_mistake(alice, bob):
    theirs = Conversation.objects.create(owner=bob)
    with pytest.raises(PermissionError, match="may not use this conversation"):
        realtime.create_token(alice, theirs)


# --- Cost: access is decided once per request ---


@pytest.fixture
def db_sessions(settings):
    """Sessions read from the database, so every query the endpoint makes is counted."""
    settings.SESSION_ENGINE = "django.contrib.sessions.backends.db"


@pytest.mark.usefixtures("db_sessions")
def test_a_scoped_token_costs_one_query_beyond_the_login(
    alice_client, alice, django_assert_num_queries
):
    conversation = Conversation.objects.create(owner=alice)
    # The session, the user, then the conversation with the user's rights on it: the
    # capability reuses that answer instead of asking the database again.
    with django_assert_num_queries(3):
        response = alice_client.get(token_url(conversation.pk))
    assert response.status_code == 200


@pytest.mark.usefixtures("db_sessions")
def test_an_unscoped_token_costs_one_query_beyond_the_login(
    alice_client, alice, django_assert_num_queries
):
    Conversation.objects.create(owner=alice)
    with django_assert_num_queries(3):
        response = alice_client.get(token_url())
    assert response.status_code == 200


def test_capability_for_trusts_only_the_answer_it_is_given_for_that_user(alice, bob):
    theirs = Conversation.objects.create(owner=bob)
    # Given: no query, and a "no" is still a refusal for someone who is not staff.
    with pytest.raises(PermissionError, match="may not use this conversation"):
        realtime.capability_for(alice, conversation=theirs, user_can_write=False)
    bob.is_staff = True
    assert realtime.capability_for(bob, conversation=theirs, user_can_write=False)[
        theirs.channel_name
    ] == ["history", "subscribe"]
    # Not given: looked up, so a caller that resolved nothing gets the same answer.
    assert realtime.capability_for(bob, conversation=theirs)[theirs.channel_name] == ALL
    with pytest.raises(PermissionError):
        realtime.capability_for(alice, conversation=theirs)
