"""Ably auth and capabilities on the stand-in, driven through the real ably-python 3.1.4 SDK.

Covers key auth, the TokenRequest exchange (`use_token_auth`), JWTs from an `auth_callback`,
expiry and renewal, wrong MACs / secrets, capability violations over realtime and REST, the
token-bound clientId, and in-band re-auth that narrows a connection's capability.
"""

from __future__ import annotations

import asyncio
import base64
import http.server
import json
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import jwt
import pytest
from ably.types.tokendetails import TokenDetails
from ably.util.exceptions import AblyException

from emulators.ably.testing import EmulatorServer, ably_realtime, ably_rest

WAIT = 10

# The development key's secret is shorter than PyJWT's HS256 recommendation; Ably accepts it.
pytestmark = pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")


def server_now_ms(server: EmulatorServer) -> int:
    return server.app.clock()


def key_parts(server: EmulatorServer) -> tuple[str, str]:
    name, secret = server.key.split(":", 1)
    return name, secret


def make_jwt(
    server: EmulatorServer,
    *,
    capability: dict[str, list[str]] | None = None,
    client_id: str | None = None,
    ttl_s: int = 3600,
    secret: str | None = None,
    **extra: Any,
) -> str:
    key_name, key_secret = key_parts(server)
    now_s = server_now_ms(server) // 1000
    claims: dict[str, Any] = {
        "iat": now_s,
        "exp": now_s + ttl_s,
        "x-ably-capability": json.dumps(capability or {"*": ["*"]}),
        **extra,
    }
    if client_id is not None:
        claims["x-ably-clientId"] = client_id
    return jwt.encode(
        claims, secret or key_secret, algorithm="HS256", headers={"kid": key_name, "typ": "JWT"}
    )


def jwt_callback(server: EmulatorServer, issued: list[str], **claims: Any) -> Callable:
    async def auth_callback(token_params: dict[str, Any]) -> str:
        token = make_jwt(server, **claims)
        issued.append(token)
        return token

    return auth_callback


async def connected(client: Any) -> Any:
    if client.connection.state != "connected":
        await asyncio.wait_for(client.connection.once_async("connected"), WAIT)
    return client


async def failure_of(client: Any) -> Any:
    """The reason the connection next goes FAILED."""
    change = await asyncio.wait_for(client.connection.once_async("failed"), WAIT)
    return change.reason


async def error_code(awaitable: Any) -> tuple[int, int] | None:
    try:
        await asyncio.wait_for(awaitable, WAIT)
    except AblyException as error:
        return error.code, error.status_code
    return None


# ---------------------------------------------------------------------------------------------
# key auth


async def test_key_auth_connects_and_carries_the_requested_client_id(ably_server):
    client = ably_realtime(ably_server, key=ably_server.key, use_token_auth=False, client_id="kim")
    try:
        await connected(client)
        assert "basic" in str(client.auth.auth_mechanism).lower()
        channel = client.channels.get("auth:basic")
        received = asyncio.get_running_loop().create_future()
        await channel.subscribe(lambda message: received.done() or received.set_result(message))
        await channel.publish("hello", "from a key holder")
        message = await asyncio.wait_for(received, WAIT)
        assert message.client_id == "kim"
        assert message.data == "from a key holder"
    finally:
        await client.close()


async def test_key_with_a_wrong_secret_fails_the_connection_with_40101(ably_server):
    key_name, _ = key_parts(ably_server)
    client = ably_realtime(ably_server, key=f"{key_name}:not-the-secret", use_token_auth=False)
    try:
        reason = await failure_of(client)
        assert (reason.code, reason.status_code) == (40101, 401)
    finally:
        await client.close()


async def test_unknown_key_fails_the_connection_with_40101(ably_server):
    # Realtime answers 40101 (invalid credentials) for a key whose app it cannot find; REST
    # still says 40400 (ably-js commit 8482d8ca, "Realtime is now returning 40101").
    client = ably_realtime(ably_server, key="this.is:wrong", use_token_auth=False)
    try:
        reason = await failure_of(client)
        assert (reason.code, reason.status_code) == (40101, 401)
    finally:
        await client.close()


# ---------------------------------------------------------------------------------------------
# TokenRequest exchange


async def test_token_request_exchange_yields_tokens_limited_to_the_key(ably_server):
    rest = ably_rest(ably_server)  # key + use_token_auth: signs TokenRequests locally
    try:
        details = await rest.auth.request_token(
            token_params={
                "client_id": "tina",
                "ttl": 60_000,
                "capability": {"auth:tokens": ["publish", "subscribe"]},
            }
        )
        assert details.client_id == "tina"
        assert details.expires - details.issued == 60_000
        assert details.capability.to_dict() == {"auth:tokens": ["publish", "subscribe"]}

        realtime = ably_realtime(ably_server, token_details=details, use_token_auth=True)
        try:
            await connected(realtime)
            assert realtime.auth.client_id == "tina"
            channel = realtime.channels.get("auth:tokens")
            await asyncio.wait_for(channel.publish("ok", "allowed"), WAIT)
            assert await error_code(realtime.channels.get("auth:other").attach()) == (40160, 401)
        finally:
            await realtime.close()
    finally:
        await rest.close()


async def test_rest_requests_with_exchanged_tokens_respect_capability(ably_server):
    rest = ably_rest(ably_server, default_token_params={"capability": {"auth:rest": ["publish"]}})
    try:
        await rest.channels.get("auth:rest").publish("ok", "published")
        assert await error_code(rest.channels.get("auth:rest").history()) == (40160, 401)
        assert await error_code(rest.channels.get("auth:elsewhere").publish("no", "x")) == (
            40160,
            401,
        )
    finally:
        await rest.close()


async def test_a_tampered_mac_is_rejected_with_40101(ably_server):
    rest = ably_rest(ably_server)
    try:
        assert await error_code(rest.auth.request_token(token_params={"mac": "12345"})) == (
            40101,
            401,
        )
    finally:
        await rest.close()


async def test_token_request_signed_with_a_wrong_secret_is_rejected(ably_server):
    key_name, _ = key_parts(ably_server)
    rest = ably_rest(ably_server, key=f"{key_name}:guessed-secret")
    try:
        assert await error_code(rest.auth.request_token()) == (40101, 401)
    finally:
        await rest.close()


async def test_stale_timestamps_and_replayed_nonces_are_rejected(ably_server):
    rest = ably_rest(ably_server)
    try:
        stale = server_now_ms(ably_server) - 30 * 60 * 1000
        assert await error_code(rest.auth.request_token(token_params={"timestamp": stale})) == (
            40104,
            401,
        )
        params = {"timestamp": server_now_ms(ably_server), "nonce": "1234567890123456"}
        await rest.auth.request_token(token_params=dict(params))
        assert await error_code(rest.auth.request_token(token_params=dict(params))) == (40105, 401)
    finally:
        await rest.close()


async def test_excessive_ttl_and_capability_outside_the_key_are_rejected(ably_server):
    rest = ably_rest(ably_server)
    try:
        year_ms = 365 * 24 * 3600 * 1000
        code = await error_code(rest.auth.request_token(token_params={"ttl": year_ms}))
        assert code == (40003, 400)
        meta = {"capability": {"[meta]channel.lifecycle": ["subscribe"]}}  # `*` excludes [meta]
        assert await error_code(rest.auth.request_token(token_params=meta)) == (40160, 401)
    finally:
        await rest.close()


# ---------------------------------------------------------------------------------------------
# JWT


async def test_jwt_from_auth_callback_identifies_the_client_and_limits_it(ably_server):
    issued: list[str] = []
    callback = jwt_callback(
        ably_server,
        issued,
        client_id="jo",
        capability={"auth:jwt:*": ["publish", "subscribe", "presence"], "auth:ro": ["subscribe"]},
    )
    client = ably_realtime(ably_server, auth_callback=callback)
    try:
        await connected(client)
        assert client.auth.client_id == "jo"
        assert len(issued) == 1
        channel = client.channels.get("auth:jwt:1")
        await asyncio.wait_for(channel.publish("ok", "yes"), WAIT)
        await asyncio.wait_for(channel.presence.enter("here"), WAIT)
        read_only = client.channels.get("auth:ro")
        await asyncio.wait_for(read_only.attach(), WAIT)
        assert await error_code(read_only.publish("no", "x")) == (40160, 401)
        assert await error_code(read_only.presence.enter("x")) == (40160, 401)
        assert await error_code(client.channels.get("auth:secret").attach()) == (40160, 401)
    finally:
        await client.close()


async def test_expired_jwt_at_connect_is_40142_and_the_callback_renews_it(ably_server):
    tokens = [
        make_jwt(ably_server, ttl_s=-10, client_id="exp"),  # already expired
        make_jwt(ably_server, client_id="exp"),
    ]
    calls: list[str] = []

    async def auth_callback(token_params: dict[str, Any]) -> str:
        token = tokens[min(len(calls), 1)]
        calls.append(token)
        return token

    # ably-python 3.1.4 renews at once but, failing from CONNECTING, waits
    # disconnected_retry_timeout before reconnecting: keep that short.
    client = ably_realtime(ably_server, auth_callback=auth_callback, disconnected_retry_timeout=200)
    reasons: list[Any] = []
    client.connection.on("disconnected", lambda change: reasons.append(change.reason))
    try:
        await connected(client)
        assert len(calls) == 2  # the expired one was refused, a fresh one fetched
        assert [(r.code, r.status_code) for r in reasons if r is not None][:1] == [(40142, 401)]
        assert client.auth.client_id == "exp"
    finally:
        await client.close()


async def test_jwt_expiring_while_connected_disconnects_with_40142_and_renews(ably_server):
    issued: list[str] = []
    client = ably_realtime(ably_server, auth_callback=jwt_callback(ably_server, issued, ttl_s=60))
    try:
        await connected(client)
        disconnected = asyncio.ensure_future(client.connection.once_async("disconnected"))
        await asyncio.to_thread(ably_server.advance_clock, 61_000)
        change = await asyncio.wait_for(disconnected, WAIT)
        assert (change.reason.code, change.reason.status_code) == (40142, 401)
        await connected(client)
        assert len(issued) == 2
    finally:
        await client.close()


async def test_jwt_signed_with_the_wrong_secret_is_refused_with_40144(ably_server):
    tokens = [
        make_jwt(ably_server, secret="an-attacker-guess-of-the-secret"),
        make_jwt(ably_server),
    ]
    calls: list[str] = []

    async def auth_callback(token_params: dict[str, Any]) -> str:
        calls.append(tokens[min(len(calls), 1)])
        return calls[-1]

    client = ably_realtime(ably_server, auth_callback=auth_callback, disconnected_retry_timeout=200)
    reasons: list[Any] = []
    client.connection.on("disconnected", lambda change: reasons.append(change.reason))
    try:
        await connected(client)
        assert [(r.code, r.status_code) for r in reasons if r is not None][:1] == [(40144, 401)]
        assert len(calls) == 2
    finally:
        await client.close()


async def test_a_bare_forged_jwt_leaves_the_sdk_no_way_to_renew(ably_server):
    forged = make_jwt(ably_server, secret="an-attacker-guess-of-the-secret")
    client = ably_realtime(ably_server, token=forged, use_token_auth=True)
    try:
        reason = await failure_of(client)
        assert reason.code == 40171  # the SDK's verdict after the server's token error
    finally:
        await client.close()


async def test_jwt_user_claims_are_stamped_onto_messages(ably_server):
    issued: list[str] = []
    claims = {"ably.channel.auth:claims:*": "moderator"}
    client = ably_realtime(
        ably_server, auth_callback=jwt_callback(ably_server, issued, client_id="mo", **claims)
    )
    try:
        await connected(client)
        channel = client.channels.get("auth:claims:room")
        received = asyncio.get_running_loop().create_future()
        await channel.subscribe(lambda message: received.done() or received.set_result(message))
        await channel.publish("say", "hi")
        message = await asyncio.wait_for(received, WAIT)
        assert (message.extras or {}).get("userClaim") == "moderator"
    finally:
        await client.close()


# ---------------------------------------------------------------------------------------------
# clientId binding


async def test_token_bound_client_cannot_publish_or_enter_as_someone_else(ably_server):
    issued: list[str] = []
    client = ably_realtime(
        ably_server, auth_callback=jwt_callback(ably_server, issued, client_id="al")
    )
    try:
        await connected(client)
        channel = client.channels.get("auth:bound")
        await asyncio.wait_for(channel.attach(), WAIT)
        from ably.types.message import Message

        impersonation = Message(name="x", data="pretend", client_id="mallory")
        code = await error_code(channel.publish(impersonation))
        assert code is not None and code[0] == 40012
        code = await error_code(channel.presence.enter_client("mallory", "pretend"))
        assert code is not None and code[0] in (40012, 40160)
        # acting as itself still works
        await asyncio.wait_for(channel.publish(Message(name="x", data="me", client_id="al")), WAIT)
    finally:
        await client.close()


async def test_connecting_with_a_client_id_other_than_the_tokens_fails_40102(ably_server):
    token = make_jwt(ably_server, client_id="owner")
    client = ably_realtime(ably_server, token=token, client_id="intruder", use_token_auth=True)
    try:
        reason = await failure_of(client)
        assert reason.code == 40102
    finally:
        await client.close()


# ---------------------------------------------------------------------------------------------
# in-band re-auth


async def test_reauth_with_a_narrower_capability_detaches_channels_no_longer_allowed(ably_server):
    capabilities = [
        {"auth:keep": ["*"], "auth:lose": ["*"]},
        {"auth:keep": ["*"]},
    ]
    issued: list[str] = []

    async def auth_callback(token_params: dict[str, Any]) -> TokenDetails:
        token = make_jwt(ably_server, capability=capabilities[min(len(issued), 1)], client_id="re")
        issued.append(token)
        # A bare JWT string makes ably-python's authorize() complain that the clientId "changed
        # to None" (it cannot read the JWT); TokenDetails carries the clientId alongside.
        return TokenDetails(token=token, client_id="re")

    client = ably_realtime(ably_server, auth_callback=auth_callback)
    try:
        await connected(client)
        keep, lose = client.channels.get("auth:keep"), client.channels.get("auth:lose")
        await asyncio.wait_for(keep.attach(), WAIT)
        await asyncio.wait_for(lose.attach(), WAIT)
        lost = asyncio.ensure_future(lose.once_async("failed"))
        await asyncio.wait_for(client.auth.authorize(), WAIT)
        change = await asyncio.wait_for(lost, WAIT)
        assert change.reason.code == 40160
        # ably-python re-attaches its channels on the CONNECTED that answers AUTH
        if keep.state != "attached":
            await asyncio.wait_for(keep.once_async("attached"), WAIT)
        await asyncio.wait_for(keep.publish("still", "allowed"), WAIT)
        assert client.connection.state == "connected"
        assert len(issued) == 2
    finally:
        await client.close()


@pytest.mark.parametrize("attempt", ["publish", "attach"])
async def test_capability_violations_leave_the_connection_usable(ably_server, attempt):
    issued: list[str] = []
    callback = jwt_callback(ably_server, issued, capability={"auth:ok": ["subscribe"]})
    client = ably_realtime(ably_server, auth_callback=callback)
    try:
        await connected(client)
        if attempt == "publish":
            ok = client.channels.get("auth:ok")
            await asyncio.wait_for(ok.attach(), WAIT)
            assert await error_code(ok.publish("no", "x")) == (40160, 401)
        else:
            assert await error_code(client.channels.get("auth:denied").attach()) == (40160, 401)
        await asyncio.wait_for(client.channels.get("auth:ok").attach(), WAIT)
        assert client.connection.state == "connected"
    finally:
        await client.close()


def test_time_is_served_without_auth_for_query_time(ably_server):
    # TokenRequests built with queryTime rely on /time answering unauthenticated.
    before = int(time.time() * 1000)

    async def fetch() -> int:
        rest = ably_rest(ably_server)
        try:
            return await rest.time()
        finally:
            await rest.close()

    assert asyncio.run(fetch()) >= before


# ---------------------------------------------------------------------------------------------
# REST error envelopes for bad tokens (what every SDK keys its renewal logic on)


@pytest.mark.parametrize(
    ("make_token", "expected_code"),
    [
        (lambda server: make_jwt(server, secret="an-attacker-guess-of-the-secret"), 40144),
        (lambda server: make_jwt(server, ttl_s=-5), 40142),
        (lambda server: "devapp.bm90LWEtdG9rZW4~c2lnbmF0dXJl", 40143),
    ],
    ids=["forged-jwt", "expired-jwt", "unknown-token"],
)
async def test_rest_token_errors_carry_ablys_envelope_and_headers(
    ably_server, make_token, expected_code
):
    token = make_token(ably_server)
    bearer = base64.b64encode(token.encode()).decode()  # both SDKs base64 the Bearer token
    async with httpx.AsyncClient(base_url=ably_server.endpoint) as http:
        response = await http.get(
            "/channels/auth:rest/messages",
            headers={"Authorization": f"Bearer {bearer}", "Accept": "application/json"},
        )
    assert response.status_code == 401
    assert response.headers["x-ably-errorcode"] == str(expected_code)
    assert response.json()["error"]["code"] == expected_code
    assert response.json()["error"]["statusCode"] == 401


# ---------------------------------------------------------------------------------------------
# auth_url


@pytest.fixture
def auth_server(ably_server):
    """A customer's token endpoint: `/jwt` answers application/jwt, `/token-request` a signed
    TokenRequest as JSON (built by ably-python's own TokenRequest code)."""
    from ably.types.tokenrequest import TokenRequest

    key_name, key_secret = key_parts(ably_server)
    requests: list[dict[str, Any]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            url = urllib.parse.urlsplit(self.path)
            params = dict(urllib.parse.parse_qsl(url.query))
            requests.append({"path": url.path, **params})
            client_id = params.get("client_id") or params.get("clientId")
            if url.path == "/jwt":
                body, content_type = make_jwt(ably_server, client_id=client_id), "application/jwt"
            else:
                token_request = TokenRequest(
                    key_name=key_name,
                    client_id=client_id,
                    nonce=uuid.uuid4().hex[:16],
                    timestamp=server_now_ms(ably_server),
                )
                token_request.sign_request(key_secret)
                body, content_type = json.dumps(token_request.to_dict()), "application/json"
            payload = body.encode()
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", requests
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


async def test_auth_url_token_request_connects_with_the_requested_client_id(
    ably_server, auth_server
):
    base, requests = auth_server
    client = ably_realtime(ably_server, auth_url=base + "/token-request", client_id="url-user")
    try:
        await connected(client)
        assert client.auth.client_id == "url-user"
        await asyncio.wait_for(client.channels.get("auth:url").publish("hi", "there"), WAIT)
        # ably-python hands its token params to the auth server (snake_case)
        assert {"path": "/token-request", "client_id": "url-user"}.items() <= requests[0].items()
    finally:
        await client.close()


async def test_auth_url_jwt_identifies_the_client_from_its_claims(ably_server, auth_server):
    # A bare JWT string carries no clientId ably-python can read, so the SDK must not be
    # configured with one (it would refuse the "change to None"); the server's CONNECTED tells it.
    base, requests = auth_server
    client = ably_realtime(ably_server, auth_url=base + "/jwt?clientId=jwt-user")
    try:
        await connected(client)
        channel = client.channels.get("auth:url")
        received = asyncio.get_running_loop().create_future()
        await channel.subscribe(lambda message: received.done() or received.set_result(message))
        await channel.publish("hi", "there")
        assert (await asyncio.wait_for(received, WAIT)).client_id == "jwt-user"
        assert requests[0]["path"] == "/jwt"
    finally:
        await client.close()
