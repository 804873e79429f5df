"""Authentication: API keys, Ably JWTs, TokenRequests and issued Ably tokens.

TokenRequests are built and signed by ably-python's own code, and JWTs by PyJWT, so the MAC
and signature rules are checked against what real clients produce.
"""

from __future__ import annotations

import base64
import json

import jwt
import pytest
from ably import AblyRest

from emulators.ably.auth import (
    ApiKey,
    Capability,
    Credentials,
    Keyring,
    authenticate,
    decode_bearer,
    issue_token,
)
from emulators.ably.errors import AblyError

NOW_MS = 1_800_000_000_000
SECRET = "unit-test-secret-that-is-long-enough-for-hs256"
KEY = ApiKey.parse(f"app1.key1:{SECRET}")
NARROW_KEY = ApiKey.parse(
    f"app1.narrow:{SECRET}-narrow",
    Capability.parse({"ai:*": ["publish", "subscribe", "presence"], "user:*": ["subscribe"]}),
)
OTHER_APP_KEY = ApiKey.parse(f"app2.key1:{SECRET}-other")


@pytest.fixture
def keyring() -> Keyring:
    return Keyring([KEY, NARROW_KEY, OTHER_APP_KEY])


def error_of(call) -> AblyError:
    with pytest.raises(AblyError) as caught:
        call()
    return caught.value


def make_jwt(key: ApiKey = KEY, *, headers: dict | None = None, **claims) -> str:
    body = {
        "iat": NOW_MS // 1000 - 10,
        "exp": NOW_MS // 1000 + 3600,
        "x-ably-capability": json.dumps({"*": ["*"]}),
    }
    body.update({name.replace("__", "."): value for name, value in claims.items()})
    body = {name: value for name, value in body.items() if value is not None}
    return jwt.encode(
        body, key.secret, algorithm="HS256", headers={"kid": key.name, **(headers or {})}
    )


async def python_token_request(key: ApiKey = KEY, **params) -> dict:
    """A TokenRequest exactly as ably-python 3.1.4 builds and signs it."""
    params.setdefault("timestamp", NOW_MS)
    rest = AblyRest(key=key.key_str)
    try:
        request = await rest.auth.create_token_request(token_params=params)
    finally:
        await rest.close()
    return request.to_dict()


# ---------------------------------------------------------------------------------------------
# keys


def test_api_key_parse_splits_app_key_and_secret() -> None:
    key = ApiKey.parse("devapp.devkey:dev-secret-change-me")
    assert (key.app_id, key.key_id, key.secret) == ("devapp", "devkey", "dev-secret-change-me")
    assert key.name == "devapp.devkey"
    assert key.key_str == "devapp.devkey:dev-secret-change-me"
    assert key.capability == Capability.all()


@pytest.mark.parametrize(
    "bad", ["nodot:secret", "app.key", "app.key:", "app.key:sec:ret", "a b.c:d", ""]
)
def test_api_key_parse_rejects_malformed_keys(bad: str) -> None:
    assert error_of(lambda: ApiKey.parse(bad)).code == 40101


def test_keyring_lookup_and_app_removal(keyring: Keyring) -> None:
    assert keyring.get("app1.key1") == KEY
    assert {key.name for key in keyring.keys("app1")} == {"app1.key1", "app1.narrow"}
    keyring.remove_app("app1")
    assert keyring.get("app1.key1") is None
    assert keyring.app_ids() == {"app2"}


# ---------------------------------------------------------------------------------------------
# basic auth


def test_basic_auth_gives_the_keys_capability(keyring: Keyring) -> None:
    credentials = authenticate(keyring, now_ms=NOW_MS, basic=NARROW_KEY.key_str)
    assert credentials.kind == "basic"
    assert credentials.key_name == "app1.narrow"
    assert credentials.app_id == "app1"
    assert credentials.expires_ms is None
    assert credentials.capability.allows("ai:1", "publish")
    assert not credentials.capability.allows("user:bob", "publish")


def test_basic_auth_with_a_wrong_secret_is_40101(keyring: Keyring) -> None:
    error = error_of(lambda: authenticate(keyring, now_ms=NOW_MS, basic="app1.key1:wrong"))
    assert (error.code, error.status_code) == (40101, 401)


def test_unknown_key_or_app_is_40400_like_ably(keyring: Keyring) -> None:
    # ably-js's realtime/failure test connects with 'this.is:wrong' and expects 40400.
    error = error_of(lambda: authenticate(keyring, now_ms=NOW_MS, basic="this.is:wrong"))
    assert (error.code, error.status_code) == (40400, 404)
    error = error_of(lambda: authenticate(keyring, now_ms=NOW_MS, basic="app1.nokey:whatever"))
    assert (error.code, error.status_code) == (40400, 404)


def test_no_credentials_at_all_is_40100(keyring: Keyring) -> None:
    assert error_of(lambda: authenticate(keyring, now_ms=NOW_MS)).code == 40100


def test_basic_auth_client_id_is_taken_from_the_request(keyring: Keyring) -> None:
    anonymous = authenticate(keyring, now_ms=NOW_MS, basic=KEY.key_str)
    assert anonymous.client_id is None
    assert anonymous.can_act_as("anyone")  # key holders are trusted to name any client
    alice = authenticate(keyring, now_ms=NOW_MS, basic=KEY.key_str, requested_client_id="alice")
    assert alice.identified_client_id == "alice"
    assert alice.can_act_as("alice")
    assert not alice.can_act_as("bob")
    assert (
        error_of(
            lambda: authenticate(keyring, now_ms=NOW_MS, basic=KEY.key_str, requested_client_id="*")
        ).code
        == 40012
    )
    assert (
        error_of(
            lambda: authenticate(keyring, now_ms=NOW_MS, basic=KEY.key_str, requested_client_id="")
        ).code
        == 40012
    )


# ---------------------------------------------------------------------------------------------
# JWT


def test_jwt_carries_capability_client_id_expiry_and_user_claims(keyring: Keyring) -> None:
    token = make_jwt(
        **{
            "x-ably-capability": json.dumps({"ai:*": ["publish", "subscribe"]}),
            "x-ably-clientId": "alice",
            "ably.channel.ai:*": "member",
            "ably.channel.ai:vip": "owner",
        }
    )
    credentials = authenticate(keyring, now_ms=NOW_MS, token=token)
    assert credentials.kind == "jwt"
    assert credentials.token == token
    assert credentials.client_id == "alice"
    assert credentials.expires_ms == (NOW_MS // 1000 + 3600) * 1000
    assert credentials.issued_ms == (NOW_MS // 1000 - 10) * 1000
    assert credentials.capability.allows("ai:1", "publish")
    assert not credentials.capability.allows("ai:1", "presence")
    assert not credentials.capability.allows("user:alice", "subscribe")
    # most specific pattern wins; no claim for channels nothing matches
    assert credentials.user_claim_for("ai:vip") == "owner"
    assert credentials.user_claim_for("ai:other") == "member"
    assert credentials.user_claim_for("user:alice") is None


def test_expired_jwt_is_40142_with_status_401(keyring: Keyring) -> None:
    token = make_jwt(iat=NOW_MS // 1000 - 100, exp=NOW_MS // 1000 - 1)
    error = error_of(lambda: authenticate(keyring, now_ms=NOW_MS, token=token))
    assert (error.code, error.status_code) == (40142, 401)


def test_jwt_signed_with_the_wrong_secret_is_40144(keyring: Keyring) -> None:
    forged = ApiKey(
        "app1", "key1", "not-the-real-secret-but-long-enough-for-hs256", Capability.all()
    )
    error = error_of(lambda: authenticate(keyring, now_ms=NOW_MS, token=make_jwt(forged)))
    assert (error.code, error.status_code) == (40144, 401)


def test_tampered_jwt_claims_fail_verification(keyring: Keyring) -> None:
    header, _, signature = make_jwt(**{"x-ably-clientId": "alice"}).split(".")
    claims = base64.urlsafe_b64encode(
        json.dumps({"iat": 1, "exp": 9_999_999_999, "x-ably-clientId": "mallory"}).encode()
    ).rstrip(b"=")
    error = error_of(
        lambda: authenticate(
            keyring, now_ms=NOW_MS, token=f"{header}.{claims.decode()}.{signature}"
        )
    )
    assert error.code == 40144


@pytest.mark.parametrize(
    "token",
    [
        "a.b.c",
        "e30.e30.",  # {} header: no alg
        jwt.encode(
            {"iat": 1, "exp": 9_999_999_999}, None, algorithm="none", headers={"kid": "app1.key1"}
        ),
        jwt.encode({"iat": 1, "exp": 9_999_999_999}, SECRET, algorithm="HS256"),  # no kid
        jwt.encode(
            {"iat": 1, "exp": 9_999_999_999},
            SECRET * 2,
            algorithm="HS384",
            headers={"kid": "app1.key1"},
        ),
    ],
)
def test_malformed_or_unsupported_jwts_are_40144(keyring: Keyring, token: str) -> None:
    error = error_of(lambda: authenticate(keyring, now_ms=NOW_MS, token=token))
    assert (error.code, error.status_code) == (40144, 401)


def test_jwt_missing_times_or_with_bad_claims_is_40144(keyring: Keyring) -> None:
    for claims in (
        {"exp": None},
        {"iat": None},
        {"iat": "yesterday"},
        {"x-ably-capability": "not json"},
        {"x-ably-clientId": 42},
    ):
        error = error_of(lambda c=claims: authenticate(keyring, now_ms=NOW_MS, token=make_jwt(**c)))
        assert error.code == 40144, claims


def test_jwt_naming_an_unknown_key_is_40400(keyring: Keyring) -> None:
    unknown = ApiKey.parse(f"invalid.invalid:{SECRET}")
    error = error_of(lambda: authenticate(keyring, now_ms=NOW_MS, token=make_jwt(unknown)))
    assert (error.code, error.status_code) == (40400, 404)


def test_jwt_capability_is_limited_to_the_keys(keyring: Keyring) -> None:
    token = make_jwt(NARROW_KEY, **{"x-ably-capability": json.dumps({"*": ["*"]})})
    credentials = authenticate(keyring, now_ms=NOW_MS, token=token)
    assert credentials.capability.allows("ai:1", "publish")
    assert not credentials.capability.allows("ai:1", "history")
    assert not credentials.capability.allows("other", "subscribe")
    outside = make_jwt(NARROW_KEY, **{"x-ably-capability": json.dumps({"other": ["publish"]})})
    assert error_of(lambda: authenticate(keyring, now_ms=NOW_MS, token=outside)).code == 40160


def test_jwt_without_capability_claim_gets_the_keys(keyring: Keyring) -> None:
    token = make_jwt(NARROW_KEY, **{"x-ably-capability": None})
    credentials = authenticate(keyring, now_ms=NOW_MS, token=token)
    assert credentials.capability == NARROW_KEY.capability


def test_jwt_in_standard_base64_as_ablys_php_example_builds_it(keyring: Keyring) -> None:
    import hashlib
    import hmac

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    header = b64(json.dumps({"typ": "JWT", "alg": "HS256", "kid": KEY.name}).encode())
    claims = b64(
        json.dumps(
            {"iat": NOW_MS // 1000, "exp": NOW_MS // 1000 + 60, "x-ably-capability": '{"*":["*"]}'}
        ).encode()
    )
    signature = b64(
        hmac.new(SECRET.encode(), f"{header}.{claims}".encode(), hashlib.sha256).digest()
    )
    credentials = authenticate(keyring, now_ms=NOW_MS, token=f"{header}.{claims}.{signature}")
    assert credentials.kind == "jwt"


def test_jwt_client_id_must_match_the_requested_one(keyring: Keyring) -> None:
    token = make_jwt(**{"x-ably-clientId": "alice"})
    assert (
        authenticate(keyring, now_ms=NOW_MS, token=token, requested_client_id="alice").client_id
        == "alice"
    )
    error = error_of(
        lambda: authenticate(keyring, now_ms=NOW_MS, token=token, requested_client_id="bob")
    )
    assert (error.code, error.status_code) == (40102, 401)
    anonymous = make_jwt()
    assert (
        error_of(
            lambda: authenticate(keyring, now_ms=NOW_MS, token=anonymous, requested_client_id="bob")
        ).code
        == 40102
    )


def test_wildcard_client_id_may_choose_an_identity(keyring: Keyring) -> None:
    token = make_jwt(**{"x-ably-clientId": "*"})
    unidentified = authenticate(keyring, now_ms=NOW_MS, token=token)
    assert unidentified.client_id == "*"
    assert unidentified.identified_client_id is None
    assert unidentified.can_act_as("anyone")
    chosen = authenticate(keyring, now_ms=NOW_MS, token=token, requested_client_id="carol")
    assert chosen.identified_client_id == "carol"
    assert not chosen.can_act_as("dave")


def test_anonymous_token_clients_cannot_claim_an_identity(keyring: Keyring) -> None:
    credentials = authenticate(keyring, now_ms=NOW_MS, token=make_jwt())
    assert credentials.client_id is None
    assert credentials.can_act_as(None)
    assert not credentials.can_act_as("alice")


# ---------------------------------------------------------------------------------------------
# TokenRequest -> Ably token


async def test_python_sdk_token_request_yields_a_working_token(keyring: Keyring) -> None:
    request = await python_token_request(client_id="alice")
    details = issue_token(keyring, request, now_ms=NOW_MS + 5, key_name=KEY.name)
    assert details["keyName"] == KEY.name
    assert details["issued"] == NOW_MS + 5
    assert details["expires"] == NOW_MS + 5 + 60 * 60 * 1000  # default ttl: one hour
    assert json.loads(details["capability"]) == {"*": ["*"]}
    assert details["clientId"] == "alice"
    assert details["token"].count(".") == 1  # never mistaken for a JWT

    credentials = authenticate(keyring, now_ms=NOW_MS + 10, token=details["token"])
    assert credentials.kind == "token"
    assert credentials.client_id == "alice"
    assert credentials.expires_ms == details["expires"]
    assert credentials.capability == Capability.all()


async def test_token_request_capability_is_intersected_with_the_keys(keyring: Keyring) -> None:
    request = await python_token_request(
        NARROW_KEY, capability={"ai:1": ["publish", "history"], "other": ["subscribe"]}
    )
    details = issue_token(keyring, request, now_ms=NOW_MS, key_name=NARROW_KEY.name)
    assert json.loads(details["capability"]) == {"ai:1": ["publish"]}
    credentials = authenticate(keyring, now_ms=NOW_MS, token=details["token"])
    assert credentials.capability.allows("ai:1", "publish")
    assert not credentials.capability.allows("ai:2", "publish")


async def test_token_request_with_no_common_capability_is_40160(keyring: Keyring) -> None:
    request = await python_token_request(NARROW_KEY, capability={"other": ["publish"]})
    error = error_of(lambda: issue_token(keyring, request, now_ms=NOW_MS, key_name=NARROW_KEY.name))
    assert (error.code, error.status_code) == (40160, 401)


async def test_token_request_ttl(keyring: Keyring) -> None:
    request = await python_token_request(ttl=123)
    details = issue_token(keyring, request, now_ms=NOW_MS, key_name=KEY.name)
    assert details["expires"] - details["issued"] == 123
    for bad_ttl in (365 * 24 * 60 * 60 * 1000, 24 * 60 * 60 * 1000 + 1, -1):
        request = await python_token_request(ttl=bad_ttl)
        error = error_of(
            lambda r=request: issue_token(keyring, r, now_ms=NOW_MS, key_name=KEY.name)
        )
        assert (error.code, error.status_code) == (40003, 400), bad_ttl


async def test_tampered_token_request_is_rejected_40101(keyring: Keyring) -> None:
    request = await python_token_request(capability={"ai:1": ["subscribe"]})
    request["capability"] = json.dumps({"*": ["*"]})
    error = error_of(lambda: issue_token(keyring, request, now_ms=NOW_MS, key_name=KEY.name))
    assert (error.code, error.status_code) == (40101, 401)
    request = await python_token_request(mac="12345")  # ably-js "Token generation with invalid mac"
    assert (
        error_of(lambda: issue_token(keyring, request, now_ms=NOW_MS, key_name=KEY.name)).code
        == 40101
    )


async def test_token_request_signed_with_another_secret_is_40101(keyring: Keyring) -> None:
    impostor = ApiKey("app1", "key1", "guessed-secret", Capability.all())
    request = await python_token_request(impostor)
    assert (
        error_of(lambda: issue_token(keyring, request, now_ms=NOW_MS, key_name=KEY.name)).code
        == 40101
    )


async def test_stale_timestamp_is_40104(keyring: Keyring) -> None:
    request = await python_token_request(timestamp=NOW_MS - 30 * 60 * 1000)
    error = error_of(lambda: issue_token(keyring, request, now_ms=NOW_MS, key_name=KEY.name))
    assert (error.code, error.status_code) == (40104, 401)


async def test_replayed_nonce_is_40105(keyring: Keyring) -> None:
    request = await python_token_request(nonce="1234567890123456")
    issue_token(keyring, request, now_ms=NOW_MS, key_name=KEY.name)
    error = error_of(
        lambda: issue_token(keyring, dict(request), now_ms=NOW_MS + 1, key_name=KEY.name)
    )
    assert (error.code, error.status_code) == (40105, 401)


async def test_short_nonce_is_rejected(keyring: Keyring) -> None:
    request = await python_token_request(nonce="short")
    assert (
        error_of(lambda: issue_token(keyring, request, now_ms=NOW_MS, key_name=KEY.name)).code
        == 40003
    )


async def test_token_request_for_another_key_than_the_path_is_40101(keyring: Keyring) -> None:
    request = await python_token_request(NARROW_KEY)
    assert (
        error_of(lambda: issue_token(keyring, request, now_ms=NOW_MS, key_name=KEY.name)).code
        == 40101
    )


async def test_token_request_to_an_unknown_key_is_40400(keyring: Keyring) -> None:
    request = await python_token_request()
    assert (
        error_of(lambda: issue_token(keyring, request, now_ms=NOW_MS, key_name="nope.nope")).code
        == 40400
    )


async def test_bad_capability_in_token_request_is_400(keyring: Keyring) -> None:
    request = await python_token_request(capability={"channel0": ["publish_"]})
    error = error_of(lambda: issue_token(keyring, request, now_ms=NOW_MS, key_name=KEY.name))
    assert error.status_code == 400


def test_js_style_token_request_with_empty_client_id_is_40012(keyring: Keyring) -> None:
    import hashlib
    import hmac

    fields = {"keyName": KEY.name, "clientId": "", "timestamp": NOW_MS, "nonce": "n" * 16}
    text = f"{KEY.name}\n\n\n\n{NOW_MS}\n{'n' * 16}\n"
    fields["mac"] = base64.b64encode(
        hmac.new(SECRET.encode(), text.encode(), hashlib.sha256).digest()
    ).decode()
    error = error_of(lambda: issue_token(keyring, fields, now_ms=NOW_MS, key_name=KEY.name))
    assert (error.code, error.status_code) == (40012, 400)


async def test_msgpack_raw_string_fields_are_accepted(keyring: Keyring) -> None:
    # ably-python packs token requests with use_bin_type=False; a server may see bytes.
    request = await python_token_request(client_id="alice")
    raw = {
        name.encode(): (value.encode() if isinstance(value, str) else value)
        for name, value in request.items()
    }
    assert issue_token(keyring, raw, now_ms=NOW_MS, key_name=KEY.name)["clientId"] == "alice"


def test_unsigned_token_params_need_basic_auth_with_that_key(keyring: Keyring) -> None:
    params = {"clientId": "bob", "ttl": 60_000}
    assert (
        error_of(lambda: issue_token(keyring, params, now_ms=NOW_MS, key_name=KEY.name)).code
        == 40101
    )
    basic = authenticate(keyring, now_ms=NOW_MS, basic=KEY.key_str)
    details = issue_token(keyring, params, now_ms=NOW_MS, key_name=KEY.name, credentials=basic)
    assert details["clientId"] == "bob"
    assert details["expires"] == NOW_MS + 60_000
    other = authenticate(keyring, now_ms=NOW_MS, basic=NARROW_KEY.key_str)
    assert (
        error_of(
            lambda: issue_token(
                keyring, params, now_ms=NOW_MS, key_name=KEY.name, credentials=other
            )
        ).code
        == 40102
    )


def _basic_token(keyring: Keyring, **params) -> dict:
    basic = authenticate(keyring, now_ms=NOW_MS, basic=KEY.key_str)
    return issue_token(keyring, params, now_ms=NOW_MS, key_name=KEY.name, credentials=basic)


def test_ably_token_expires(keyring: Keyring) -> None:
    token = _basic_token(keyring, ttl=1000)["token"]
    assert authenticate(keyring, now_ms=NOW_MS + 999, token=token).kind == "token"
    error = error_of(lambda: authenticate(keyring, now_ms=NOW_MS + 1000, token=token))
    assert (error.code, error.status_code) == (40142, 401)


def test_forged_or_garbage_ably_tokens_are_40143(keyring: Keyring) -> None:
    token = _basic_token(keyring)["token"]
    app, rest = token.split(".")
    payload, signature = rest.split("~")
    forged_payload = (
        base64.urlsafe_b64encode(
            base64.urlsafe_b64decode(payload + "==").replace(b'"u":null', b'"u":"*"')
        )
        .rstrip(b"=")
        .decode()
    )
    for bad in (f"{app}.{forged_payload}~{signature}", "app1.garbage~garbage"):
        error = error_of(lambda b=bad: authenticate(keyring, now_ms=NOW_MS, token=b))
        assert (error.code, error.status_code) == (40143, 401), bad


def test_a_string_that_is_no_token_at_all_is_invalid_credentials_40101(keyring: Keyring) -> None:
    # 4014x would tell the SDK to renew; Ably fails such a client for good with 40101.
    for bad in ("not-a-token", "Sdnurv_some_invalid_token_nkds9r7", "invalid token"):
        error = error_of(lambda b=bad: authenticate(keyring, now_ms=NOW_MS, token=b))
        assert (error.code, error.status_code) == (40101, 401), bad


async def test_the_same_nonce_with_a_new_timestamp_is_a_new_request(keyring: Keyring) -> None:
    first = await python_token_request(nonce="1234567890123456")
    issue_token(keyring, first, now_ms=NOW_MS, key_name=KEY.name)
    later = await python_token_request(nonce="1234567890123456", timestamp=NOW_MS + 5)
    assert issue_token(keyring, later, now_ms=NOW_MS + 5, key_name=KEY.name)["token"]


def test_tokens_of_a_deleted_app_stop_working(keyring: Keyring) -> None:
    token = _basic_token(keyring)["token"]
    keyring.remove_app("app1")
    assert error_of(lambda: authenticate(keyring, now_ms=NOW_MS, token=token)).code == 40400


def test_identical_requests_get_distinct_tokens(keyring: Keyring) -> None:
    assert _basic_token(keyring)["token"] != _basic_token(keyring)["token"]


def test_bearer_values_are_base64_of_the_token(keyring: Keyring) -> None:
    token = _basic_token(keyring, clientId="alice")["token"]
    bearer = base64.b64encode(token.encode()).decode()
    assert decode_bearer(bearer) == token
    assert decode_bearer(token) == token
    jwt_token = make_jwt()
    assert decode_bearer(base64.b64encode(jwt_token.encode()).decode()) == jwt_token
    # authenticate unwraps a base64 bearer too
    assert authenticate(keyring, now_ms=NOW_MS, token=bearer).client_id == "alice"


def test_token_bound_client_id_rules(keyring: Keyring) -> None:
    token = _basic_token(keyring, clientId="alice")["token"]
    credentials = authenticate(keyring, now_ms=NOW_MS, token=token)
    assert isinstance(credentials, Credentials)
    assert credentials.can_act_as("alice")
    assert not credentials.can_act_as("bob")
    error = error_of(
        lambda: authenticate(keyring, now_ms=NOW_MS, token=token, requested_client_id="WRONG")
    )
    assert (error.code, error.status_code) == (40102, 401)
    wildcard = _basic_token(keyring, clientId="*")["token"]
    assert (
        authenticate(keyring, now_ms=NOW_MS, token=wildcard, requested_client_id="x").client_id
        == "x"
    )


# ---------------------------------------------------------------------------------------------
# token revocation

REVOCABLE = ApiKey("app3", "rev", f"{SECRET}-rev", Capability.all(), revocable_tokens=True)


@pytest.fixture
def revocable_keyring() -> Keyring:
    return Keyring([REVOCABLE, KEY])


def _revocable_token(keyring: Keyring, now_ms: int = NOW_MS, **params) -> Credentials:
    basic = authenticate(keyring, now_ms=now_ms, basic=REVOCABLE.key_str)
    details = issue_token(
        keyring, params, now_ms=now_ms, key_name=REVOCABLE.name, credentials=basic
    )
    return authenticate(keyring, now_ms=now_ms, token=details["token"])


def _revoke(keyring: Keyring, body: dict, now_ms: int = NOW_MS + 10) -> dict:
    basic = authenticate(keyring, now_ms=now_ms, basic=REVOCABLE.key_str)
    return keyring.revoke_tokens(REVOCABLE.name, body, now_ms=now_ms, credentials=basic)


def test_revoking_a_client_id_invalidates_its_earlier_tokens(revocable_keyring: Keyring) -> None:
    alice = _revocable_token(revocable_keyring, clientId="alice")
    bob = _revocable_token(revocable_keyring, clientId="bob")
    result = _revoke(revocable_keyring, {"targets": ["clientId:alice", "invalidType:abc"]})
    assert result["successCount"] == 1
    assert result["failureCount"] == 1
    assert result["results"][0] == {
        "target": "clientId:alice",
        "issuedBefore": NOW_MS + 10,
        "appliesAt": NOW_MS + 10,
    }
    assert result["results"][1]["target"] == "invalidType:abc"
    assert result["results"][1]["error"]["statusCode"] == 400

    error = error_of(lambda: authenticate(revocable_keyring, now_ms=NOW_MS + 20, token=alice.token))
    assert (error.code, error.status_code) == (40141, 401)
    assert revocable_keyring.revocation_error(alice, now_ms=NOW_MS + 20).code == 40141
    assert authenticate(revocable_keyring, now_ms=NOW_MS + 20, token=bob.token).client_id == "bob"
    # a token issued after the revocation works again
    fresh = _revocable_token(revocable_keyring, now_ms=NOW_MS + 50, clientId="alice")
    assert revocable_keyring.revocation_error(fresh, now_ms=NOW_MS + 60) is None


def test_reauth_margin_postpones_revocation_by_30_seconds(revocable_keyring: Keyring) -> None:
    alice = _revocable_token(revocable_keyring, clientId="alice")
    result = _revoke(
        revocable_keyring,
        {"targets": ["clientId:alice"], "issuedBefore": NOW_MS + 5, "allowReauthMargin": True},
    )
    applies_at = result["results"][0]["appliesAt"]
    assert result["results"][0]["issuedBefore"] == NOW_MS + 5
    assert applies_at == NOW_MS + 10 + 30_000
    assert revocable_keyring.revocation_error(alice, now_ms=applies_at - 1) is None
    assert revocable_keyring.next_revocation_at(alice, now_ms=applies_at - 1) == applies_at
    assert revocable_keyring.revocation_error(alice, now_ms=applies_at).code == 40141


def test_revocation_key_and_channel_targets(revocable_keyring: Keyring) -> None:
    grouped = authenticate(
        revocable_keyring,
        now_ms=NOW_MS,
        token=make_jwt(REVOCABLE, **{"x-ably-revocation-key": "group1"}),
    )
    scoped = _revocable_token(revocable_keyring, capability='{"foo:*":["*"]}')
    _revoke(revocable_keyring, {"targets": ["revocationKey:group1", "channel:foo:bar"]})
    assert revocable_keyring.revocation_error(grouped, now_ms=NOW_MS + 20).code == 40141
    # `channel:` must name the capability resource exactly
    assert revocable_keyring.revocation_error(scoped, now_ms=NOW_MS + 20) is None
    _revoke(revocable_keyring, {"targets": ["channel:foo:*"]}, now_ms=NOW_MS + 30)
    assert revocable_keyring.revocation_error(scoped, now_ms=NOW_MS + 40).code == 40141


def test_revocation_request_rules(revocable_keyring: Keyring) -> None:
    basic_other = authenticate(revocable_keyring, now_ms=NOW_MS, basic=KEY.key_str)
    token = _revocable_token(revocable_keyring)
    body = {"targets": ["clientId:x"]}
    for credentials, code in ((token, 40162), (basic_other, 40102)):
        error = error_of(
            lambda c=credentials: revocable_keyring.revoke_tokens(
                REVOCABLE.name, body, now_ms=NOW_MS, credentials=c
            )
        )
        assert error.code == code
    not_revocable = error_of(
        lambda: revocable_keyring.revoke_tokens(
            KEY.name, body, now_ms=NOW_MS, credentials=basic_other
        )
    )
    assert not_revocable.status_code == 403
    for bad in (
        {"targets": []},
        {"targets": "clientId:x"},
        {"targets": ["clientId:x"] * 101},
        {"targets": ["clientId:x"], "issuedBefore": NOW_MS + 60_000},
        {"targets": ["clientId:x"], "issuedBefore": NOW_MS - 2 * 3600 * 1000},
    ):
        assert error_of(lambda b=bad: _revoke(revocable_keyring, b)).status_code == 400


def test_revocable_keys_issue_tokens_of_at_most_an_hour(revocable_keyring: Keyring) -> None:
    basic = authenticate(revocable_keyring, now_ms=NOW_MS, basic=REVOCABLE.key_str)
    error = error_of(
        lambda: issue_token(
            revocable_keyring,
            {"ttl": 2 * 3600 * 1000},
            now_ms=NOW_MS,
            key_name=REVOCABLE.name,
            credentials=basic,
        )
    )
    assert (error.code, error.status_code) == (40003, 400)


def test_mac_text_matches_the_sdks_published_vector() -> None:
    # ably-python's test_hmac vector: keyName a_key_name, secret a_secret, ttl 1000,
    # nonce abcde100, clientId a_id, timestamp 1000, no capability.
    from types import SimpleNamespace

    from emulators.ably.auth import _verify_token_request_mac

    key = SimpleNamespace(name="a_key_name", secret="a_secret")
    fields = {"ttl": 1000, "nonce": "abcde100", "clientId": "a_id", "timestamp": 1000}
    _verify_token_request_mac(key, fields, "sYkCH0Un+WgzI7/Nhy0BoQIKq9HmjKynCRs4E3qAbGQ=")
    with pytest.raises(AblyError):
        _verify_token_request_mac(
            key, {**fields, "ttl": 1001}, "sYkCH0Un+WgzI7/Nhy0BoQIKq9HmjKynCRs4E3qAbGQ="
        )


async def test_python_float_ttl_is_signed_and_accepted(keyring: Keyring) -> None:
    # ably-python accepts timedelta / float ttls and signs int(ttl) (its issue #71)
    request = await python_token_request(ttl=4 * 3600 * 1000.0)
    details = issue_token(keyring, request, now_ms=NOW_MS, key_name=KEY.name)
    assert details["expires"] - details["issued"] == 4 * 3600 * 1000
