"""Ably auth and capabilities on the stand-in, driven through the real ably-js 2.28 SDK (Node).

Each test runs one scenario of tests/integration/js/ably_auth_scenarios.mjs and asserts on the
observations it prints. The expectations mirror ably-js's own suites run against Ably
(rest/auth, rest/capability, realtime/auth, realtime/failure).
"""

from __future__ import annotations

from typing import Any

import pytest

from emulators.ably.testing import EmulatorServer, run_node

SCRIPT = "tests/integration/js/ably_auth_scenarios.mjs"


def scenario(server: EmulatorServer, name: str) -> Any:
    return run_node(SCRIPT, server, args=[name], timeout=60)


def test_key_auth_connects_and_stamps_the_client_id(ably_server):
    result = scenario(ably_server, "key_auth")
    assert result == {"method": "basic", "clientId": "kim", "received": "kim"}


def test_wrong_secret_and_unknown_key_fail_the_connection(ably_server):
    result = scenario(ably_server, "bad_keys")
    assert result["wrongSecret"] == {"code": 40101, "statusCode": 401}
    # ably-js realtime/failure 'invalid_cred_failure' expects 40101 for 'this.is:wrong' (since
    # ably-js 8482d8ca: "Realtime is now returning 40101 ... unable to extract an app ID").
    assert result["unknownKey"] == {"code": 40101, "statusCode": 401}


def test_auth_callback_token_request_is_exchanged_and_limits_the_client(ably_server):
    result = scenario(ably_server, "token_request_callback")
    assert result["method"] == "token"
    assert result["clientId"] == "tr"
    assert result["capability"] == {"js:tr:*": ["publish", "subscribe"]}
    assert result["calls"] == 1
    assert result["denied"] == {"code": 40160, "statusCode": 401}
    assert result["deniedChannelState"] == "failed"
    assert result["stillConnected"] == "connected"


def test_auth_url_serving_a_token_request_or_a_jwt(ably_server):
    result = scenario(ably_server, "auth_url")
    for path in ("/token-request", "/jwt"):
        assert result[path] == {"clientId": "url-user", "method": "token", "channel": "attached"}
    # the SDK passed its clientId to the auth server as a token param
    assert {"path": "/token-request", "clientId": "url-user"} in result["seen"]
    assert {"path": "/jwt", "clientId": "url-user"} in result["seen"]


@pytest.mark.slow
def test_tokens_expiring_while_connected_disconnect_with_40142_and_renew(ably_server):
    result = scenario(ably_server, "expiry_and_renewal")
    for kind in ("jwt", "token"):
        assert result[kind]["reason"] == {"code": 40142, "statusCode": 401}, kind
        assert result[kind]["calls"] == 2, kind
        assert result[kind]["state"] == "connected", kind


def test_expired_jwt_at_connect_is_renewed_through_the_callback(ably_server):
    result = scenario(ably_server, "expired_at_connect")
    assert result["calls"] == 2
    refused = {"current": "disconnected", "reason": {"code": 40142, "statusCode": 401}}
    assert refused in result["changes"]
    assert result["changes"][-1]["current"] == "connected"
    assert all(change["current"] != "failed" for change in result["changes"])


def test_token_request_errors_match_ablys(ably_server):
    result = scenario(ably_server, "token_request_errors")
    assert result["badMac"] == {"code": 40101, "statusCode": 401}
    assert result["wrongSecret"] == {"code": 40101, "statusCode": 401}
    assert result["staleTimestamp"] == {"code": 40104, "statusCode": 401}
    assert result["replayedNonce"] == {"code": 40105, "statusCode": 401}
    assert result["excessiveTtl"]["statusCode"] == 400
    assert result["negativeTtl"]["statusCode"] == 400
    assert result["invalidCapability"]["statusCode"] == 400
    assert result["emptyIntersection"] == {"code": 40160, "statusCode": 401}


def test_capability_violations_are_refused_with_40160(ably_server):
    result = scenario(ably_server, "capabilities")
    denied = {"code": 40160, "statusCode": 401}
    assert result["publishReadOnly"] == denied
    assert result["enterWithoutPresence"] == denied
    assert result["attachUngranted"] == denied
    assert result["publishAllowed"] is None
    assert result["connection"] == "connected"
    assert result["restHistoryDenied"] == denied
    assert result["restPublishDenied"] == denied
    assert result["restHistoryAllowed"] is None


def test_token_client_id_binding(ably_server):
    result = scenario(ably_server, "client_id_binding")
    assert result["mismatch"]["code"] == 40102
    assert result["inheritedClientId"] == "alice"
    assert result["wildcardClientId"] == "chosen"
    assert result["wildcardMessageClientId"] == "chosen"


def test_reauth_with_a_narrower_capability_fails_only_the_lost_channel(ably_server):
    result = scenario(ably_server, "reauth_narrow")
    assert result["calls"] == 2
    assert result["lose"] == {"state": "failed", "reason": {"code": 40160, "statusCode": 401}}
    assert result["keep"] == "attached"
    assert result["publishKeep"] is None
    assert result["connection"] == "connected"
    assert result["capability"] == {"js:keep": ["*"]}


def test_jwt_user_claims_reach_subscribers_as_extras_user_claim(ably_server):
    result = scenario(ably_server, "user_claims")
    assert result == {"claimed": "moderator", "unclaimed": None}


def test_server_asks_for_reauth_before_the_token_expires(ably_server):
    result = scenario(ably_server, "renew_before_expiry")
    assert result["calls"] == 2
    assert "disconnected" not in result["states"]


def test_revoked_tokens_disconnect_their_clients_with_40141(ably_server):
    result = scenario(ably_server, "revoke_tokens")
    assert (result["successCount"], result["failureCount"]) == (1, 1)
    assert result["targets"] == ["clientId:revoked-1", "invalidType:abc"]
    assert result["invalidStatus"] == 400
    assert result["reason"] == {"code": 40141, "statusCode": 401}
    assert result["kept"] == "connected"
