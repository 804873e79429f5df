"""`POST /apps` specs, as the ably-js and ably-python test harnesses post them."""

from __future__ import annotations

import itertools
import json

import pytest

from emulators.ably.apps import app_response, check_app_delete, parse_app_spec
from emulators.ably.auth import Keyring, authenticate, issue_token
from emulators.ably.errors import AblyError

# ably-common test-resources/test-app-setup.json, the `post_apps` part ably-js posts (abridged
# only in the cipher-encoded presence member).
ABLY_JS_SPEC = {
    "limits": {"presence": {"maxMembers": 250}},
    "keys": [
        {},
        {
            "capability": '{ "cansubscribe:*":["subscribe"], "canpublish:*":["publish"], '
            '"canpublish:andpresence":["presence","publish"], '
            '"pushenabled:*":["publish","subscribe","push-subscribe"], '
            '"pushenabled:admin:*":["publish","subscribe","push-admin"] }'
        },
        {
            "capability": '{ "channel0":["publish"], "channel1":["publish"], '
            '"channel2":["publish", "subscribe"], "channel3":["subscribe"], '
            '"channel4":["presence", "publish", "subscribe"], "channel5":["presence"], '
            '"channel6":["*"] }'
        },
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
                {
                    "clientId": "client_decoded",
                    "data": '{"example":{"json":"Object"}}',
                    "encoding": "json",
                },
            ],
        }
    ],
}

# ably-python test/assets/testAppSpec.json (keys only, as it posts them)
ABLY_PYTHON_SPEC = {
    "keys": [
        {},
        {"capability": '{"testchannel":["publish"]}'},
        {"privileged": True, "capability": '{"channel6":["*"]}'},
    ]
}
NOW_MS = 1_800_000_000_000


def secrets_source():
    counter = itertools.count()
    return lambda: f"secret-{next(counter)}"


def test_ably_js_harness_spec_round_trips() -> None:
    app = parse_app_spec(ABLY_JS_SPEC, app_id="testapp1", new_secret=secrets_source())
    response = app_response(app, created_ms=NOW_MS)
    # what ably-js testapp_manager checks and reads
    assert response["appId"] == "testapp1"
    assert len(response["keys"]) == len(ABLY_JS_SPEC["keys"])
    assert len(response["namespaces"]) == len(ABLY_JS_SPEC["namespaces"])
    first = response["keys"][0]
    assert first["keyStr"] == f"{first['keyName']}:{first['keySecret']}"
    assert first["keyName"].startswith("testapp1.")
    assert json.loads(first["capability"]) == {"*": ["*"]}  # a key without capability: all
    assert json.loads(response["keys"][3]["capability"]) == {"*": ["subscribe"]}
    assert len({key["keyName"] for key in response["keys"]}) == len(response["keys"])
    # the revocableTokens key (ably-js uses keys[4] to revoke tokens)
    assert response["keys"][4]["revocableTokens"] is True
    assert app.keys[4].key.revocable_tokens
    assert not app.keys[0].key.revocable_tokens
    # the response is plain JSON
    json.dumps(response)


def test_ably_python_harness_reads_id_and_value() -> None:
    app = parse_app_spec(ABLY_PYTHON_SPEC, app_id="pyapp", new_secret=secrets_source())
    response = app_response(app, created_ms=NOW_MS)
    key = response["keys"][1]
    # ably-python builds key_str as f"{appId}.{id}:{value}"
    assert f"{response['appId']}.{key['id']}:{key['value']}" == key["keyStr"]
    assert response["keys"][2]["privileged"] is True


def test_created_keys_authenticate_and_issue_tokens_as_ably_does() -> None:
    app = parse_app_spec(ABLY_JS_SPEC, app_id="testapp1", new_secret=secrets_source())
    keyring = Keyring(app.api_keys)
    response = app_response(app, created_ms=NOW_MS)
    key1 = response["keys"][1]
    credentials = authenticate(keyring, now_ms=NOW_MS, basic=key1["keyStr"])
    # ably-js "Blanket intersection with specified key": no capability asked -> the key's
    token = issue_token(
        keyring, {}, now_ms=NOW_MS, key_name=key1["keyName"], credentials=credentials
    )
    assert json.loads(token["capability"]) == json.loads(key1["capability"])
    assert credentials.capability.allows("canpublish:x", "publish")
    assert not credentials.capability.allows("canpublish:x", "subscribe")
    everything = authenticate(keyring, now_ms=NOW_MS, basic=response["keys"][5]["keyStr"])
    assert everything.capability.allows("[meta]channel.lifecycle", "subscribe")


def test_namespaces_and_presence_fixtures_are_exposed() -> None:
    spec = dict(
        ABLY_JS_SPEC,
        namespaces=[*ABLY_JS_SPEC["namespaces"], {"id": "ai", "mutableMessages": True}],
    )
    app = parse_app_spec(spec, app_id="a", new_secret=secrets_source())
    assert app.namespace("persisted:presence_fixtures").persisted
    assert not app.namespace("pushenabled:x").persisted
    assert app.namespace("ai:1").effectively_persisted  # mutable messages force persistence
    assert app.namespace("nonamespace") is None
    assert app.namespace("other:x") is None
    fixture = app.channels[0]
    assert fixture.name == "persisted:presence_fixtures"
    assert [member.client_id for member in fixture.presence] == ["client_bool", "client_decoded"]
    assert fixture.presence[1].encoding == "json"


def test_whole_setup_file_with_post_apps_wrapper_is_accepted() -> None:
    app = parse_app_spec(
        {"post_apps": ABLY_JS_SPEC, "cipher": {}}, app_id="w", new_secret=secrets_source()
    )
    assert len(app.keys) == 6


def test_empty_spec_creates_one_all_powerful_key() -> None:
    app = parse_app_spec(b"{}", app_id="e", new_secret=secrets_source())
    assert len(app.keys) == 1
    assert app.keys[0].key.capability.allows("anything", "publish")


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        {"keys": "nope"},
        {"keys": [{"capability": '{"c":["publish_"]}'}]},
        {"keys": [[]]},
        {"namespaces": [{"persisted": True}]},
        {"namespaces": [{"id": "a"}, {"id": "a"}]},
        {"namespaces": [{"id": "a:b"}]},
        {"channels": [{"presence": []}]},
        {"channels": [{"name": "c", "presence": [{"data": "x"}]}]},
        {"limits": []},
    ],
)
def test_bad_specs_are_rejected_with_a_400(body) -> None:
    with pytest.raises(AblyError) as caught:
        parse_app_spec(body, app_id="bad", new_secret=secrets_source())
    assert caught.value.status_code == 400
    assert caught.value.code in (40000, 40001)


def test_app_delete_needs_basic_auth_with_one_of_its_keys() -> None:
    app = parse_app_spec({}, app_id="mine", new_secret=secrets_source())
    other = parse_app_spec({}, app_id="theirs", new_secret=secrets_source())
    keyring = Keyring([*app.api_keys, *other.api_keys])
    mine = authenticate(keyring, now_ms=NOW_MS, basic=app.api_keys[0].key_str)
    check_app_delete(mine, "mine")
    with pytest.raises(AblyError) as caught:
        check_app_delete(mine, "theirs")
    assert caught.value.status_code == 403
    token = issue_token(keyring, {}, now_ms=NOW_MS, key_name=app.api_keys[0].name, credentials=mine)
    token_credentials = authenticate(keyring, now_ms=NOW_MS, token=token["token"])
    with pytest.raises(AblyError):
        check_app_delete(token_credentials, "mine")
    keyring.remove_app("mine")
    with pytest.raises(AblyError) as caught:
        authenticate(keyring, now_ms=NOW_MS, basic=app.api_keys[0].key_str)
    assert caught.value.code == 40400
