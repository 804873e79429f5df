"""Token revocation in the Ably stand-in's sans-I/O hub: `POST /keys/{key}/revokeTokens` and
what it does to live connections (ably-js and ably-python both renew on a 40141 DISCONNECTED:
ably-js `connectionmanager.ts`, ably-python `connectionmanager.on_token_error`)."""

from __future__ import annotations

import pytest

from emulators.ably import auth
from emulators.ably.errors import AblyError
from emulators.ably.protocol import Action
from tests.unit.ably_harness import KEY_NAME, KEY_SECRET, Harness

BOTH = '{"ai:one":["*"],"ai:two":["*"]}'
ONE = '{"ai:one":["*"]}'


@pytest.fixture
def h() -> Harness:
    return Harness(revocable_token_keys=[KEY_NAME])


def key_credentials(h: Harness) -> auth.Credentials:
    return auth.authenticate(h.hub.keyring, now_ms=h.now, basic=f"{KEY_NAME}:{KEY_SECRET}")


def revoke(h: Harness, *targets: str, **options) -> dict:
    result = h.hub.revoke_tokens(
        KEY_NAME, {"targets": list(targets), **options}, credentials=key_credentials(h)
    )
    h.pump()
    return result


def test_revoking_a_client_id_disconnects_its_connections_with_40141(h: Harness) -> None:
    alice = h.connect(key=None, access_token=h.jwt(client_id="alice", capability=BOTH))
    bob = h.connect(key=None, access_token=h.jwt(client_id="bob", capability=BOTH))
    alice.attach("ai:one")
    bob.attach("ai:one")
    h.advance(1_000)  # the JWTs' `iat` is in whole seconds: revoke strictly after it
    result = revoke(h, "clientId:alice", "bogus")
    assert (result["successCount"], result["failureCount"]) == (1, 1)
    assert result["results"][0] == {
        "target": "clientId:alice",
        "issuedBefore": h.now,
        "appliesAt": h.now,
    }
    assert result["results"][1]["error"]["code"] == 40000
    disconnected = alice.last(Action.DISCONNECTED)
    assert disconnected["error"]["code"] == 40141 and alice.closed
    # Bob is untouched and still hears the channel.
    assert not bob.closed and not bob.of(Action.DISCONNECTED)
    other = h.connect()
    other.publish("ai:one", {"name": "x", "data": "still here"})
    assert bob.messages()[-1]["data"] == "still here"


def test_a_revoked_token_cannot_connect_resume_or_call_rest(h: Harness) -> None:
    old = h.jwt(client_id="alice", capability=BOTH)
    alice = h.connect(key=None, access_token=old)
    key = alice.connection.key
    h.advance(1_000)
    revoke(h, "clientId:alice")
    again = h.connect(key=None, access_token=old)
    assert again.last(Action.ERROR)["error"]["code"] == 40141
    resumed = h.connect(key=None, access_token=old, resume=key)
    assert resumed.last(Action.ERROR)["error"]["code"] == 40141
    with pytest.raises(AblyError) as refused:
        auth.authenticate(h.hub.keyring, now_ms=h.now, token=old)
    assert (refused.value.code, refused.value.status_code) == (40141, 401)


def test_resuming_with_a_new_narrower_token_keeps_only_what_it_grants(h: Harness) -> None:
    alice = h.connect(key=None, access_token=h.jwt(client_id="alice", capability=BOTH))
    alice.attach("ai:one")
    alice.attach("ai:two")
    key, connection_id = alice.connection.key, alice.connection.id
    h.advance(1_000)
    revoke(h, "clientId:alice")
    h.advance(1_000)
    # What ably-js does on 40141: fetch a new token (authUrl), resume the same connection.
    renewed = h.connect(key=None, access_token=h.jwt(client_id="alice", capability=ONE), resume=key)
    assert renewed.last(Action.CONNECTED)["connectionId"] == connection_id
    assert [(e["channel"], e["error"]["code"]) for e in renewed.of(Action.ERROR)] == [
        ("ai:two", 40160)
    ]
    renewed.attach("ai:one")
    assert renewed.attach("ai:two")["action"] == Action.ERROR
    other = h.connect()
    other.publish("ai:one", {"name": "x", "data": "kept"})
    other.publish("ai:two", {"name": "x", "data": "gone"})
    assert [m["data"] for m in renewed.messages()] == ["kept"]


def test_reauth_margin_asks_for_a_new_token_first_and_only_then_cuts_off(h: Harness) -> None:
    renews = h.connect(key=None, access_token=h.jwt(client_id="alice", capability=BOTH))
    stale = h.connect(key=None, access_token=h.jwt(client_id="alice", capability=BOTH))
    h.advance(1_000)
    result = revoke(h, "clientId:alice", allowReauthMargin=True)
    assert result["results"][0]["appliesAt"] == h.now + 30_000
    # Both are asked to re-authenticate at once; neither is dropped yet.
    assert renews.of(Action.AUTH) and stale.of(Action.AUTH)
    assert not renews.of(Action.DISCONNECTED) and not stale.of(Action.DISCONNECTED)
    h.advance(1_000)  # a JWT of the revocation's own second would be covered too
    renews.send({"action": Action.AUTH, "auth": {"accessToken": h.jwt(client_id="alice")}})
    h.advance(28_000)
    assert not stale.of(Action.DISCONNECTED)
    h.advance(1_000)
    assert stale.last(Action.DISCONNECTED)["error"]["code"] == 40141 and stale.closed
    assert not renews.of(Action.DISCONNECTED) and not renews.closed


def test_issued_before_separates_whole_second_jwts(h: Harness) -> None:
    second = (h.now // 1000 + 1) * 1000
    h.now = second - 1  # a JWT issued late in second S ...
    before = h.jwt(client_id="alice")
    h.now = second + 5  # ... and one early in second S+1
    after = h.jwt(client_id="alice")
    revoke(h, "clientId:alice", issuedBefore=second - 1)
    with pytest.raises(AblyError):
        auth.authenticate(h.hub.keyring, now_ms=h.now, token=before)
    assert auth.authenticate(h.hub.keyring, now_ms=h.now, token=after).client_id == "alice"


def test_revocation_needs_the_key_itself_and_a_revocable_key() -> None:
    plain = Harness(revocable_token_keys=[])  # a new Ably key's default
    with pytest.raises(AblyError) as not_enabled:
        plain.hub.revoke_tokens(
            KEY_NAME, {"targets": ["clientId:alice"]}, credentials=key_credentials(plain)
        )
    assert not_enabled.value.code == 40300
    h = Harness(revocable_token_keys=[KEY_NAME])
    token_credentials = auth.authenticate(h.hub.keyring, now_ms=h.now, token=h.jwt())
    with pytest.raises(AblyError) as with_token:
        h.hub.revoke_tokens(
            KEY_NAME, {"targets": ["clientId:alice"]}, credentials=token_credentials
        )
    assert with_token.value.code == 40162
    with pytest.raises(AblyError) as future:
        revoke(h, "clientId:alice", issuedBefore=h.now + 1)
    assert future.value.code == 40003
