"""The stand-in's REST surface over real HTTP: errors, CORS, tokens, apps, metadata, presence."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import msgpack
import pytest

from emulators.ably.testing import DEFAULT_KEY, EmulatorServer, ably_realtime, ably_rest, connected

BASIC = "Basic " + base64.b64encode(DEFAULT_KEY.encode()).decode()


@pytest.fixture
def http(ably_server: EmulatorServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=ably_server.endpoint, timeout=10) as client:
        yield client


def test_time_needs_no_auth(http: httpx.Client) -> None:
    (now,) = http.get("/time").json()
    assert abs(now - time.time() * 1000) < 60_000


def test_errors_use_ablys_envelope_and_headers(http: httpx.Client) -> None:
    response = http.get("/channels/x/messages")
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/json"
    assert response.headers["x-ably-errorcode"] == "40101"
    error = response.json()["error"]
    assert error["code"] == 40101 and error["statusCode"] == 401 and error["message"]
    wrong = http.get(
        "/channels/x/messages",
        headers={"Authorization": "Basic " + base64.b64encode(b"devapp.devkey:nope").decode()},
    )
    assert wrong.json()["error"]["code"] == 40101


def test_envelope_wraps_status_and_headers_for_browsers(http: httpx.Client) -> None:
    response = http.get("/channels/x/messages", params={"envelope": "json"})
    assert response.status_code == 200
    body = response.json()
    assert body["statusCode"] == 401
    assert body["response"]["error"]["code"] == 40101
    assert body["headers"]["x-ably-errorcode"] == "40101"


def test_cors_preflight_and_credentials(http: httpx.Client) -> None:
    origin = "http://127.0.0.1:8000"
    preflight = http.options(
        "/channels/x/messages",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization,x-ably-version",
        },
    )
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == origin
    assert preflight.headers["access-control-allow-credentials"] == "true"
    assert "authorization" in preflight.headers["access-control-allow-headers"]
    actual = http.get("/channels/x/messages", headers={"Origin": origin, "Authorization": BASIC})
    assert actual.headers["access-control-allow-origin"] == origin
    assert "X-Ably-ErrorCode" in actual.headers["access-control-expose-headers"]


def test_token_request_with_a_wrong_mac_is_refused(http: httpx.Client) -> None:
    request = {
        "keyName": "devapp.devkey",
        "timestamp": int(time.time() * 1000),
        "nonce": "0123456789abcdef",
        "mac": base64.b64encode(b"not the mac").decode(),
    }
    response = http.post("/keys/devapp.devkey/requestToken", json=request)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == 40101


def test_rest_publish_history_and_msgpack(http: httpx.Client) -> None:
    published = http.post(
        "/channels/ai%3Arest/messages",
        json=[{"name": "a", "data": "one"}, {"name": "b", "data": "two"}],
        headers={"Authorization": BASIC},
    )
    assert published.status_code == 201
    assert len(published.json()["serials"]) == 2
    history = http.get(
        "/channels/ai:rest/messages",
        params={"limit": 1},
        headers={"Authorization": BASIC, "Accept": "application/x-msgpack"},
    )
    assert history.headers["content-type"] == "application/x-msgpack"
    assert [m["data"] for m in msgpack.unpackb(history.content)] == ["two"]
    link = history.headers["link"]
    assert 'rel="next"' in link and "<./messages?" in link


def test_apps_are_created_and_deleted(http: httpx.Client) -> None:
    spec = {
        "keys": [{}, {"capability": json.dumps({"room": ["subscribe"]})}],
        "namespaces": [{"id": "persisted", "persisted": True}],
        "channels": [{"name": "persisted:fixture", "presence": [{"clientId": "fx", "data": "d"}]}],
    }
    created = http.post("/apps", json=spec)
    assert created.status_code == 201
    app = created.json()
    full_key, limited_key = (key["keyStr"] for key in app["keys"])
    auth = {"Authorization": "Basic " + base64.b64encode(full_key.encode()).decode()}
    members = http.get("/channels/persisted:fixture/presence", headers=auth).json()
    assert [(m["clientId"], m["data"]) for m in members] == [("fx", "d")]
    limited = {"Authorization": "Basic " + base64.b64encode(limited_key.encode()).decode()}
    denied = http.post("/channels/room/messages", json={"data": "x"}, headers=limited)
    assert denied.json()["error"]["code"] == 40160
    assert http.delete(f"/apps/{app['appId']}", headers=auth).status_code == 204
    gone = http.get("/channels/room/messages", headers=auth)
    assert gone.status_code in (401, 404)


async def test_channel_status_enumeration_and_presence_over_python_rest(
    ably_server: EmulatorServer,
) -> None:
    member = await connected(ably_realtime(ably_server, client_id="member"))
    rest = ably_rest(ably_server)
    try:
        channel = member.channels.get("ai:status")
        await channel.presence.enter("here")
        await channel.presence.update("still here")
        status = await rest.request("GET", "/channels/ai:status", "3")
        details: Any = status.items[0]
        metrics = details["status"]["occupancy"]["metrics"]
        assert details["status"]["isActive"] is True
        assert metrics["connections"] == 1 and metrics["presenceMembers"] == 1
        listing = await rest.request("GET", "/channels", "3")
        assert "ai:status" in listing.items
        members = await rest.channels.get("ai:status").presence.get()
        assert [(m.client_id, m.data) for m in members.items] == [("member", "still here")]
        history = await rest.channels.get("ai:status").presence.history()
        assert [m.data for m in history.items] == ["still here", "here"]
    finally:
        await member.close()
        await rest.close()
