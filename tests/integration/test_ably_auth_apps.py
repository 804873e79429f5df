"""`POST /apps` / `DELETE /apps/{appId}` as Ably's SDK test harnesses use them, then the created
keys through the real SDKs."""

from __future__ import annotations

import asyncio
import base64
import json

import httpx
from ably.util.exceptions import AblyException

from emulators.ably.testing import ably_realtime, ably_rest

WAIT = 10

# ably-common test-resources/test-app-setup.json `post_apps`, as ably-js's harness posts it
# (the cipher-encoded presence member left out).
SETUP = {
    "limits": {"presence": {"maxMembers": 250}},
    "keys": [
        {},
        {
            "capability": '{ "cansubscribe:*":["subscribe"], "canpublish:*":["publish"], '
            '"canpublish:andpresence":["presence","publish"] }'
        },
        {"capability": '{ "channel2":["publish", "subscribe"], "channel6":["*"] }'},
        {"capability": '{ "*":["subscribe"] }'},
        {"revocableTokens": True},
        {"capability": '{ "[*]*":["*"] }'},
    ],
    "namespaces": [
        {"id": "persisted", "persisted": True},
        {"id": "pushenabled", "pushEnabled": True},
    ],
    "channels": [
        {
            "name": "persisted:presence_fixtures",
            "presence": [
                {"clientId": "client_bool", "data": "true"},
                {"clientId": "client_string", "data": "This is a string clientData payload"},
            ],
        }
    ],
}


async def create_app(endpoint: str) -> dict:
    async with httpx.AsyncClient(base_url=endpoint) as http:
        response = await http.post("/apps", json=SETUP, headers={"Accept": "application/json"})
    assert response.status_code < 300, response.text
    return response.json()


async def test_created_app_keys_work_through_the_python_sdk(ably_server):
    app = await create_app(ably_server.endpoint)
    assert len(app["keys"]) == len(SETUP["keys"])
    assert len(app["namespaces"]) == len(SETUP["namespaces"])
    keys = app["keys"]
    # ably-python's harness rebuilds the key from appId, id and value
    key_str = f"{app['appId']}.{keys[1]['id']}:{keys[1]['value']}"
    assert key_str == keys[1]["keyStr"]

    rest = ably_rest(ably_server, key=key_str)
    try:
        # "Blanket intersection with specified key": no capability asked -> the key's own
        details = await rest.auth.request_token()
        assert details.capability.to_dict() == json.loads(keys[1]["capability"])
        requested = {"canpublish:check": ["publish"]}
        narrowed = await rest.auth.request_token(token_params={"capability": requested})
        assert narrowed.capability.to_dict() == requested
        try:
            await rest.auth.request_token(
                token_params={"capability": {"canpublish:x": ["subscribe"]}}
            )
        except AblyException as error:
            assert (error.code, error.status_code) == (40160, 401)
        else:
            raise AssertionError("a capability outside the key's was granted")
    finally:
        await rest.close()

    # presence fixtures are readable with an all-powerful key of the new app
    rest = ably_rest(ably_server, key=keys[0]["keyStr"])
    try:
        members = await rest.channels.get("persisted:presence_fixtures").presence.get()
        assert {member.client_id for member in members.items} == {"client_bool", "client_string"}
    finally:
        await rest.close()


async def test_deleting_an_app_revokes_its_keys(ably_server):
    app = await create_app(ably_server.endpoint)
    key_str = app["keys"][0]["keyStr"]
    client = ably_realtime(ably_server, key=key_str, use_token_auth=False)
    try:
        await asyncio.wait_for(client.connection.once_async("connected"), WAIT)
        failed = asyncio.ensure_future(client.connection.once_async("failed"))
        async with httpx.AsyncClient(base_url=ably_server.endpoint) as http:
            other_app = await create_app(ably_server.endpoint)
            wrong_key = base64.b64encode(other_app["keys"][0]["keyStr"].encode()).decode()
            refused = await http.delete(
                f"/apps/{app['appId']}", headers={"Authorization": f"Basic {wrong_key}"}
            )
            assert refused.status_code == 403
            auth = base64.b64encode(key_str.encode()).decode()
            response = await http.delete(
                f"/apps/{app['appId']}", headers={"Authorization": f"Basic {auth}"}
            )
            assert response.status_code < 300
            change = await asyncio.wait_for(failed, WAIT)
            assert change.reason.code == 40400
            retry = await http.get(
                "/channels/x/messages",
                headers={"Authorization": f"Basic {auth}", "Accept": "application/json"},
            )
        assert retry.status_code == 404
        assert retry.headers["x-ably-errorcode"] == "40400"
    finally:
        await client.close()


async def test_malformed_app_specs_get_an_error_envelope(ably_server):
    async with httpx.AsyncClient(base_url=ably_server.endpoint) as http:
        response = await http.post(
            "/apps",
            json={"keys": [{"capability": '{"c":["publish_"]}'}]},
            headers={"Accept": "application/json"},
        )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == 40000
    assert "publish_" in response.json()["error"]["message"]
