"""Everything Django says to Ably: who a user is on Ably, their tokens, and server publishes.

`publish()` and `revoke_tokens()` are called only from `conversations.actions`, inside
`transaction.on_commit`, so a device never hears about a change that rolled back (the agent's
`publish_async()` too: `actions.finish_reply` hands it the list change after commit).
"""

from __future__ import annotations

import base64
import functools
import json
import logging
import math
import time
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote

import aiohttp
import httpx
import jwt
from django.conf import settings

from . import ably_endpoint, events
from .models import Conversation

logger = logging.getLogger(__name__)

CLIENT_ID_PREFIX = "user-"
PUBLISH_TIMEOUT_SECONDS = 5.0
# Ably takes at most this many targets in one revokeTokens request.
MAX_REVOCATION_TARGETS = 100
# How far into the next whole second a revocation waits (see `revoke_tokens`): slack for the
# clocks of this host and Ably's, which refuses an `issuedBefore` in its future.
REVOCATION_CLOCK_MARGIN_SECONDS = 0.05
# When Ably's clock is behind ours it refuses that `issuedBefore` as in its future (40003): ask
# again this often, this many times, until its clock has caught up.
REVOCATION_RETRY_SECONDS = 0.25
REVOCATION_ATTEMPTS = 12

# The owner of a conversation: everything a chat participant does.
READ_WRITE_OPERATIONS = ("history", "presence", "publish", "subscribe")
# Staff monitoring someone else's conversation: `subscribe` also grants presence *subscription*
# (Ably derives PRESENCE_SUBSCRIBE from it); `presence` would let them enter, so it is left out.
READ_ONLY_OPERATIONS = ("history", "subscribe")
# The user channel only carries server -> device list updates; `history` lets the list page
# catch up on a change made between its render and its attach.
USER_CHANNEL_OPERATIONS = ("history", "subscribe")

# When a list, publish() appends here instead of reaching the network (like mail.outbox).
outbox: list[PublishedEvent] | None = None
# When a list, revoke_tokens() appends the clientIds it would revoke here instead.
revocation_outbox: list[str] | None = None


class Event(Protocol):
    """Any shape from `conversations.events` (they all have a name, data() and extras())."""

    name: Any

    def data(self) -> Any: ...

    def extras(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class PublishedEvent:
    channel: str
    name: str
    data: Any
    extras: dict[str, Any]


class AblyKey:
    """`appId.keyId:secret`, split into the JWT `kid` and the signing secret."""

    def __init__(self, key: str) -> None:
        name, sep, secret = key.partition(":")
        if not sep or not secret or "." not in name:
            raise ValueError("ABLY_API_KEY must look like 'appId.keyId:secret'")
        self.name = name
        self.secret = secret


def client_id_for_user(user: Any) -> str:
    """The stable Ably clientId of a user: the same on every device and every token."""
    return client_id_for_user_pk(user.pk)


def client_id_for_user_pk(pk: Any) -> str:
    """`client_id_for_user` from the user's primary key alone (no user row to load)."""
    return f"{CLIENT_ID_PREFIX}{pk}"


def user_pk_from_client_id(client_id: str | None) -> int | None:
    """The user pk a clientId made by `client_id_for_user` stands for, or None."""
    if not client_id or not client_id.startswith(CLIENT_ID_PREFIX):
        return None
    digits = client_id[len(CLIENT_ID_PREFIX) :]
    if not digits.isascii() or not digits.isdigit() or digits.startswith("0"):
        return None
    return int(digits)


def capability_for(
    user: Any,
    *,
    conversation: Conversation | None = None,
    user_channel_only: bool = False,
    user_can_write: bool | None = None,
) -> dict[str, list[str]]:
    """The exact channels and operations a token for `user` grants; never a wildcard.

    Always the user's own list channel. Then: unscoped, every conversation the user may use;
    scoped, only `conversation` (read-write for its users, read-only for staff monitoring
    someone else's); `user_channel_only`, nothing more (the list page, whose token stays small
    however many conversations the user has).

    `user_can_write` is whether `user` may write to `conversation`, when the caller has just
    resolved it for this same user (`_get_conversation_for_user`'s annotation); None looks it up.
    """
    capability: dict[str, list[str]] = {
        events.user_channel(client_id_for_user(user)): list(USER_CHANNEL_OPERATIONS)
    }
    if user_channel_only:
        return capability
    if conversation is None:
        for pk in Conversation.objects.for_user(user).values_list("pk", flat=True):
            capability[events.conversation_channel(pk)] = list(READ_WRITE_OPERATIONS)
        return capability
    if user_can_write is None:
        user_can_write = Conversation.objects.for_user(user).filter(pk=conversation.pk).exists()
    if user_can_write:
        capability[conversation.channel_name] = list(READ_WRITE_OPERATIONS)
    elif user.is_staff:
        capability[conversation.channel_name] = list(READ_ONLY_OPERATIONS)
    else:
        raise PermissionError("the user may not use this conversation")
    return capability


def create_token(
    user: Any,
    conversation: Conversation | None = None,
    *,
    user_channel_only: bool = False,
    user_can_write: bool | None = None,
) -> str:
    """An Ably JWT (HS256, signed with the API key's secret) for the user's browser.

    `user_can_write`: as in `capability_for`.
    """
    key = AblyKey(settings.ABLY_API_KEY)
    issued_at = int(time.time())
    claims = {
        "iat": issued_at,
        "exp": issued_at + settings.ABLY_TOKEN_TTL_SECONDS,
        "x-ably-clientId": client_id_for_user(user),
        # Compact JSON: the capability travels inside every connection's token.
        "x-ably-capability": json.dumps(
            capability_for(
                user,
                conversation=conversation,
                user_channel_only=user_channel_only,
                user_can_write=user_can_write,
            ),
            separators=(",", ":"),
            sort_keys=True,
        ),
    }
    with warnings.catch_warnings():
        # The secret's length is Ably's choice (real keys are long; the stand-in's dev key is not).
        warnings.simplefilter("ignore", jwt.InsecureKeyLengthWarning)
        return jwt.encode(claims, key.secret, algorithm="HS256", headers={"kid": key.name})


def rest_base_url() -> str:
    """Where Django's REST publishes go: the configured endpoint, or Ably's own REST host."""
    return ably_endpoint.rest_base_url(settings.ABLY_ENDPOINT)


@functools.cache
def _http_client() -> httpx.Client:
    """One pooled client per process: `httpx.post` builds a client, and with it an SSL context
    (loading the CA bundle), on every call, which was a third of the agent's CPU under load.
    httpx.Client is safe to share between threads."""
    return httpx.Client()


def publish(channel: str, event: Event) -> None:
    """Publish one event as the server; log and swallow failures (the DB change stands).

    A plain HTTP call rather than ably-python: its REST client refuses Basic auth over plain
    http, which the local stand-in speaks. The request is what Ably's REST API expects, so the
    same code works against real Ably.
    """
    request = _server_publish(channel, event)
    if request is None:
        return
    url, message, auth = request
    try:
        response = _http_client().post(
            url,
            json=message,
            auth=auth,
            headers=PUBLISH_HEADERS,
            timeout=PUBLISH_TIMEOUT_SECONDS,
        )
        response.raise_for_status()
    except httpx.HTTPError as exc:
        detail = exc.response.text if isinstance(exc, httpx.HTTPStatusError) else ""
        _log_publish_failure(channel, message, str(exc), detail)


async def publish_async(channel: str, event: Event, session: aiohttp.ClientSession) -> None:
    """`publish` without blocking: for a process on an event loop (the agent), whose loop
    must never wait on an HTTP call. `session` is that process's own (bound to its loop).

    aiohttp rather than httpx.AsyncClient: one publish per reply, and httpx's async stack
    (httpcore, anyio) cost the agent's loop about three times aiohttp's CPU per request.
    """
    request = _server_publish(channel, event)
    if request is None:
        return
    url, message, (name, secret) = request
    try:
        async with session.post(
            url,
            json=message,
            headers={**PUBLISH_HEADERS, "Authorization": _basic_auth(name, secret)},
            timeout=aiohttp.ClientTimeout(total=PUBLISH_TIMEOUT_SECONDS),
        ) as response:
            if response.status >= 400:
                body = await response.text()
                _log_publish_failure(channel, message, f"HTTP {response.status}", body)
    except (aiohttp.ClientError, TimeoutError) as exc:
        _log_publish_failure(channel, message, repr(exc))


def _basic_auth(name: str, secret: str) -> str:
    # Built here: aiohttp deprecates both its `auth=` parameter and `BasicAuth`.
    return "Basic " + base64.b64encode(f"{name}:{secret}".encode()).decode("ascii")


PUBLISH_HEADERS = {"Accept": "application/json", "X-Ably-Version": "5"}


def _server_publish(
    channel: str, event: Event
) -> tuple[str, dict[str, Any], tuple[str, str]] | None:
    """The REST request publishing `event` as the server (None: it went to `outbox`)."""
    data = event.data()
    published = PublishedEvent(
        channel=channel, name=str(event.name), data=data, extras=event.extras()
    )
    if outbox is not None:
        outbox.append(published)
        return None
    message: dict[str, Any] = {
        "name": published.name,
        "clientId": settings.ABLY_SERVER_CLIENT_ID,
        "extras": published.extras,
    }
    if isinstance(data, str):
        message["data"] = data
    else:
        # Ably REST carries structured data as a JSON string the SDKs decode by `encoding`.
        message["data"] = json.dumps(data, separators=(",", ":"))
        message["encoding"] = "json"
    key = AblyKey(settings.ABLY_API_KEY)
    url = f"{rest_base_url()}/channels/{quote(channel, safe='')}/messages"
    return url, message, (key.name, key.secret)


def _log_publish_failure(
    channel: str, message: dict[str, Any], error: str, response_text: str = ""
) -> None:
    logger.warning(
        "Ably publish of %r to %s failed: %s %s",
        message["name"],
        channel,
        error,
        response_text[:500],
    )


def revoke_tokens(client_ids: Iterable[str]) -> None:
    """Revoke every Ably token issued so far to these clientIds; log and swallow failures.

    Their live connections are cut off (40141) and renew through the `authUrl`; the new token
    lists only what the user may use now, so e.g. a deleted conversation's channel is gone from
    it. Needs the key's "revocable tokens" setting (Ably dashboard; the stand-in's
    `--revocable-tokens`): without it Ably refuses and the old tokens stay valid until they
    expire (ABLY_TOKEN_TTL_SECONDS), which is logged here.

    A JWT's `iat` is in whole seconds, so a token issued later in the same second as the
    revocation would count as "issued before" it and be revoked too: the devices renewing at
    once would be refused again and back off (ably-js waits 15 s after a second token error).
    So this waits into the next whole second and revokes what was issued up to the end of the
    previous one: every token issued before this call, and none issued after it.
    """
    targets = [f"clientId:{client_id}" for client_id in sorted(set(client_ids))]
    if not targets:
        return
    if revocation_outbox is not None:
        revocation_outbox.extend(target.partition(":")[2] for target in targets)
        return
    issued_before_ms = _wait_for_next_whole_second()
    key = AblyKey(settings.ABLY_API_KEY)
    url = f"{rest_base_url()}/keys/{quote(key.name, safe='')}/revokeTokens"
    for start in range(0, len(targets), MAX_REVOCATION_TARGETS):
        chunk = targets[start : start + MAX_REVOCATION_TARGETS]
        body: dict[str, Any] = {"targets": chunk, "issuedBefore": issued_before_ms}
        try:
            for attempt in range(1, REVOCATION_ATTEMPTS + 1):
                response = _post_revocation(url, key, body)
                if response.status_code != 400 or _error_code(response) != 40003:
                    break
                if attempt < REVOCATION_ATTEMPTS:
                    # Ably's clock is behind ours, so `issuedBefore` is in its future. Not
                    # dropped (Ably's "now" would spare tokens issued just before the delete):
                    # asked again once Ably's clock has caught up.
                    time.sleep(REVOCATION_RETRY_SECONDS)
            response.raise_for_status()
        except httpx.HTTPError as exc:
            detail = exc.response.text[:500] if isinstance(exc, httpx.HTTPStatusError) else ""
            logger.warning("Ably token revocation of %s failed: %s %s", chunk, exc, detail)
            continue
        result = response.json() if response.content else {}
        failures = [r for r in result.get("results", []) if isinstance(r, dict) and "error" in r]
        if failures:
            logger.warning("Ably token revocation refused some targets: %s", failures)


def _wait_for_next_whole_second() -> int:
    """Sleep into the next whole second; return the last millisecond of the current one."""
    now = time.time()
    next_second = math.floor(now) + 1
    time.sleep(next_second - now + REVOCATION_CLOCK_MARGIN_SECONDS)
    return next_second * 1000 - 1


def _post_revocation(url: str, key: AblyKey, body: dict[str, Any]) -> httpx.Response:
    return _http_client().post(
        url,
        json=body,
        auth=(key.name, key.secret),
        headers={"Accept": "application/json", "X-Ably-Version": "5"},
        timeout=PUBLISH_TIMEOUT_SECONDS,
    )


def _error_code(response: httpx.Response) -> int | None:
    try:
        return int(response.json()["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return None
