"""Ably authentication for the stand-in: keys, capabilities, Ably tokens and Ably JWTs.

Pure functions and value objects, no I/O and no clock: callers pass `now_ms`. The realtime core
and the REST adapter both authenticate through `authenticate()` and authorise through
`Credentials.capability` (and `Credentials.can_act_as` for clientId checks).

INTERFACE CONTRACT (agreed between the realtime core and this module; keep signatures stable).
Additions since the stub: `Capability.grants_app_wide`, `Capability.to_dict`, `Capability.is_empty`,
`Credentials.can_act_as`, `Credentials.identified_client_id`, `Keyring.keys`/`app_ids`/`__len__`,
`Keyring.token_request_window_ms`, `issue_token(..., credentials=)`, `decode_bearer`,
`parse_channel_name`, `mint_token`; token revocation: `ApiKey.revocable_tokens`,
`Keyring.revoke_tokens` / `revocation_error` / `raise_if_revoked` / `next_revocation_at`,
`Credentials.token_client_id` / `revocation_key`. Error codes chosen where Ably's own are not
documented are noted inline.

Ably tokens minted here look like `<appId>.<base64url payload>~<base64url HMAC>`: exactly one
dot, so they can never be mistaken for a JWT (three dot-separated segments), and signed with the
key's secret, so they need no server-side store and die with their key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import itertools
import json
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from .errors import AblyError, ably_error

Operation = str  # "publish", "subscribe", "presence", "history", "message-update-own", ...

KNOWN_OPERATIONS: frozenset[str] = frozenset(
    {
        "subscribe",
        "publish",
        "presence",
        "history",
        "stats",
        "channel-metadata",
        "push-subscribe",
        "push-admin",
        "privileged-headers",
        "annotation-publish",
        "annotation-subscribe",
        "object-publish",
        "object-subscribe",
        "message-update-own",
        "message-update-any",
        "message-delete-own",
        "message-delete-any",
    }
)
ALL_OPERATIONS = "*"

DEFAULT_TOKEN_TTL_MS = 60 * 60 * 1000
MAX_TOKEN_TTL_MS = 24 * 60 * 60 * 1000
DEFAULT_TOKEN_REQUEST_WINDOW_MS = 2 * 60 * 1000
MIN_NONCE_LENGTH = 16

# Holding "-any" necessarily permits acting on one's own messages too.
_IMPLIED_BY: dict[str, str] = {
    "message-update-own": "message-update-any",
    "message-delete-own": "message-delete-any",
}


# ---------------------------------------------------------------------------------------------
# Channel names and resource patterns


def parse_channel_name(channel: str) -> tuple[str | None, str]:
    """Split a channel name into (resource type, base name).

    `[meta]channel.lifecycle` -> ("meta", "channel.lifecycle"); `ai:x` -> (None, "ai:x").
    Parameter qualifiers (`[?rewind=1]x`) and filter qualifiers (`[filter=...]x`) are stripped
    first: capabilities apply to the underlying channel.
    """
    name = channel
    while name.startswith("["):
        close = name.find("]")
        if close < 0:
            return None, name
        qualifier = name[1:close]
        if qualifier.startswith("?") or "=" in qualifier:
            name = name[close + 1 :]
            continue
        return qualifier, name[close + 1 :]
    return None, name


def _split_resource(resource: str) -> tuple[str | None, str]:
    if resource.startswith("["):
        close = resource.find("]")
        if close > 0:
            return resource[1:close], resource[close + 1 :]
    return None, resource


def _segments_match(pattern: list[str], name: list[str]) -> bool:
    """Ably's rule: `*` replaces exactly one `:`-segment, except at the end where it replaces
    one or more."""
    last = len(pattern) - 1
    for index, segment in enumerate(pattern):
        if index == last and segment == "*":
            return len(name) > index
        if index >= len(name):
            return False
        if segment != "*" and segment != name[index]:
            return False
    return len(name) == len(pattern)


def resource_matches(resource: str, channel: str) -> bool:
    """Whether capability resource `resource` covers `channel`."""
    if resource == "[*]*":
        return True
    channel_type, base = parse_channel_name(channel)
    resource_type, pattern = _split_resource(resource)
    if resource_type != "*" and resource_type != channel_type:
        # A plain `*` matches every normal channel but no [meta] or [queue] resource.
        return False
    return _segments_match(pattern.split(":"), base.split(":"))


def _segments_cover(outer: list[str], inner: list[str]) -> bool:
    """Whether every name matched by pattern `inner` is matched by pattern `outer`."""
    outer_open = outer[-1] == "*"
    inner_open = inner[-1] == "*"
    if outer_open:
        fixed = len(outer) - 1
        if len(inner) < len(outer):
            return False
        if inner_open and len(inner) - 1 < fixed:
            return False
    else:
        if inner_open or len(inner) != len(outer):
            return False
        fixed = len(outer)
    for index in range(fixed):
        if outer[index] != "*" and outer[index] != inner[index]:
            return False
    return True


def resource_covers(outer: str, inner: str) -> bool:
    """Whether resource `outer` matches every channel that resource `inner` matches."""
    if outer == "[*]*":
        return True
    if inner == "[*]*":
        return False
    outer_type, outer_pattern = _split_resource(outer)
    inner_type, inner_pattern = _split_resource(inner)
    if outer_type != "*" and outer_type != inner_type:
        return False
    return _segments_cover(outer_pattern.split(":"), inner_pattern.split(":"))


def _specificity(pattern: str) -> tuple[int, int, int]:
    segments = _split_resource(pattern)[1].split(":")
    literal = sum(1 for segment in segments if segment != "*")
    return (0 if "*" in segments else 1, literal, len(pattern))


# ---------------------------------------------------------------------------------------------
# Capabilities


class Capability:
    """A resource -> operations map with Ably's wildcard rules (`*`, `ns:*`, `[meta]*`, `[*]*`)."""

    __slots__ = ("_grants",)

    def __init__(self, grants: Mapping[str, frozenset[str]]) -> None:
        self._grants: dict[str, frozenset[str]] = {
            resource: frozenset(ops) for resource, ops in grants.items() if ops
        }

    @classmethod
    def all(cls) -> Capability:
        """`{"*":["*"]}`: every operation on every normal channel."""
        return cls({"*": frozenset({ALL_OPERATIONS})})

    @classmethod
    def parse(cls, value: str | dict[str, list[str]]) -> Capability:
        """From JSON text or a dict; raises AblyError(40000-range) on malformed input."""
        if isinstance(value, str | bytes):
            try:
                value = json.loads(value)
            except (ValueError, UnicodeDecodeError) as exc:
                raise ably_error(40000, f"Invalid capability: not valid JSON ({exc})") from None
        if not isinstance(value, dict):
            raise ably_error(
                40000, "Invalid capability: expected a JSON object of resource -> operations"
            )
        grants: dict[str, frozenset[str]] = {}
        for resource, operations in value.items():
            if not isinstance(resource, str) or not resource:
                raise ably_error(
                    40000, "Invalid capability: resource names must be non-empty strings"
                )
            if not isinstance(operations, list) or not operations:
                raise ably_error(
                    40000,
                    f"Invalid capability: resource {resource!r} needs a non-empty list of operations",
                )
            for operation in operations:
                if not isinstance(operation, str):
                    raise ably_error(
                        40000, f"Invalid capability: operation {operation!r} is not a string"
                    )
                if operation != ALL_OPERATIONS and operation not in KNOWN_OPERATIONS:
                    raise ably_error(
                        40000,
                        f"Invalid capability: unknown operation {operation!r} for {resource!r}",
                    )
            if ALL_OPERATIONS in operations and len(operations) > 1:
                raise ably_error(
                    40000,
                    f"Invalid capability: {resource!r} combines the '*' operation with others",
                )
            grants[resource] = frozenset(operations)
        return cls(grants)

    def allows(self, channel: str, operation: Operation) -> bool:
        """Whether `operation` is allowed on `channel` (`*` op grants all, incl. -own/-any).

        Asking for `message-update-own`/`message-delete-own` is also satisfied by the `-any` op.
        """
        implied_by = _IMPLIED_BY.get(operation)
        for resource, operations in self._grants.items():
            if not resource_matches(resource, channel):
                continue
            if ALL_OPERATIONS in operations or operation in operations:
                return True
            if implied_by is not None and implied_by in operations:
                return True
        return False

    def operations_for(self, channel: str) -> frozenset[str]:
        """Every operation granted on `channel` (`*` expanded to the known operations)."""
        granted: set[str] = set()
        for resource, operations in self._grants.items():
            if resource_matches(resource, channel):
                granted |= KNOWN_OPERATIONS if ALL_OPERATIONS in operations else operations
        return frozenset(granted)

    def grants_app_wide(self, operation: Operation) -> bool:
        """App-wide operations (`stats`, channel enumeration with `channel-metadata`) count only
        when granted on the `*` resource or a superset of it such as `[*]*`."""
        for resource, operations in self._grants.items():
            if resource_covers(resource, "*") and (
                ALL_OPERATIONS in operations or operation in operations
            ):
                return True
        return False

    def intersect(self, other: Capability) -> Capability:
        """Capability of a token: requested ∩ key's. Raises AblyError 40160 if empty."""
        result: dict[str, set[str]] = {}
        for mine, my_ops in self._grants.items():
            for theirs, their_ops in other._grants.items():
                if resource_covers(theirs, mine):
                    narrower = mine
                elif resource_covers(mine, theirs):
                    narrower = theirs
                else:
                    continue
                operations = _intersect_operations(my_ops, their_ops)
                if operations:
                    result.setdefault(narrower, set()).update(operations)
        for resource, operations in result.items():
            if ALL_OPERATIONS in operations and len(operations) > 1:
                result[resource] = {ALL_OPERATIONS}
        if not result:
            raise ably_error(
                40160,
                "Requested capability does not intersect the key's capability "
                f"(requested {self.to_json()}, key {other.to_json()})",
            )
        return Capability({resource: frozenset(ops) for resource, ops in result.items()})

    def is_empty(self) -> bool:
        return not self._grants

    def to_dict(self) -> dict[str, list[str]]:
        return {resource: sorted(self._grants[resource]) for resource in sorted(self._grants)}

    def to_json(self) -> str:
        """Canonical text: keys sorted, operations sorted, no whitespace (as ably-js `c14n`)."""
        return json.dumps(self.to_dict(), separators=(",", ":"), ensure_ascii=False)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Capability) and self._grants == other._grants

    def __hash__(self) -> int:
        return hash(self.to_json())

    def __repr__(self) -> str:
        return f"Capability({self.to_json()})"


def _intersect_operations(left: frozenset[str], right: frozenset[str]) -> set[str]:
    if ALL_OPERATIONS in left:
        return set(right)
    if ALL_OPERATIONS in right:
        return set(left)
    return set(left & right)


# ---------------------------------------------------------------------------------------------
# Keys

_KEY_PATTERN = re.compile(r"^([^:\s.]+)\.([^:\s.]+):([^:.\s]+)$")


@dataclass(frozen=True)
class ApiKey:
    app_id: str
    key_id: str
    secret: str
    capability: Capability
    # Ably's per-key "revocable tokens" setting: tokens it issues can be revoked (and live <= 1 h).
    revocable_tokens: bool = False

    @property
    def name(self) -> str:
        """`appId.keyId`, the key name used in TokenRequests, JWT `kid` and REST paths."""
        return f"{self.app_id}.{self.key_id}"

    @property
    def key_str(self) -> str:
        """The full `appId.keyId:secret` string clients are configured with."""
        return f"{self.name}:{self.secret}"

    @classmethod
    def parse(cls, key: str, capability: Capability | None = None) -> ApiKey:
        """Parse `appId.keyId:secret`; capability defaults to `{"*":["*"]}`."""
        match = _KEY_PATTERN.match(key.strip()) if isinstance(key, str) else None
        if match is None:
            raise ably_error(
                40101,
                "Invalid API key: expected 'appId.keyId:secret' (no spaces; the secret may not "
                "contain ':' or '.')",
            )
        app_id, key_id, secret = match.groups()
        return cls(app_id, key_id, secret, capability or Capability.all())


MAX_REVOCATION_TARGETS = 100
MAX_REVOCATION_LOOKBACK_MS = 60 * 60 * 1000
REAUTH_MARGIN_MS = 30_000
REVOCATION_TARGET_TYPES = ("clientId", "revocationKey", "channel")
MAX_REVOCABLE_TOKEN_TTL_MS = 60 * 60 * 1000


@dataclass(frozen=True)
class Revocation:
    """One revoked target: tokens matching it and issued at or before `issued_before` stop
    working from `applies_at`."""

    target_type: str
    value: str
    issued_before: int
    applies_at: int

    def covers(self, credentials: Credentials) -> bool:
        if credentials.issued_ms is None or credentials.issued_ms > self.issued_before:
            return False
        if self.target_type == "clientId":
            return credentials.token_client_id == self.value
        if self.target_type == "revocationKey":
            return credentials.revocation_key == self.value
        # `channel:` matches a resource name exactly as written in the token's capability.
        return self.value in credentials.capability.to_dict()


class Keyring:
    """The keys of every app the stand-in serves, looked up by key name.

    Also remembers TokenRequest nonces (replay protection) and numbers issued tokens, the only
    state token issuing needs.
    """

    def __init__(
        self,
        keys: list[ApiKey] | None = None,
        *,
        token_request_window_ms: int = DEFAULT_TOKEN_REQUEST_WINDOW_MS,
    ) -> None:
        self._keys: dict[str, ApiKey] = {}
        self.token_request_window_ms = token_request_window_ms
        # (keyName, nonce, timestamp) -> forget after ms
        self._seen_nonces: dict[tuple[str, str, int | None], int] = {}
        self._token_serial = itertools.count()
        self._revocations: dict[str, list[Revocation]] = {}  # keyName -> revocations
        for key in keys or []:
            self.add(key)

    def add(self, key: ApiKey) -> None:
        self._keys[key.name] = key

    def remove_app(self, app_id: str) -> None:
        for name in [name for name, key in self._keys.items() if key.app_id == app_id]:
            del self._keys[name]
            self._revocations.pop(name, None)

    def get(self, key_name: str) -> ApiKey | None:
        return self._keys.get(key_name)

    def keys(self, app_id: str | None = None) -> list[ApiKey]:
        return [key for key in self._keys.values() if app_id is None or key.app_id == app_id]

    def app_ids(self) -> set[str]:
        return {key.app_id for key in self._keys.values()}

    def __len__(self) -> int:
        return len(self._keys)

    def __iter__(self) -> Iterator[ApiKey]:
        return iter(list(self._keys.values()))

    def revoke_tokens(
        self, key_name: str, body: Any, *, now_ms: int, credentials: Credentials
    ) -> dict[str, Any]:
        """`POST /keys/{key_name}/revokeTokens`; returns Ably's BatchResult
        `{successCount, failureCount, results: [{target, issuedBefore, appliesAt} | {target, error}]}`.

        Needs Basic auth with that very key, which must have revocable tokens enabled. Live
        connections are the caller's business: check them with `revocation_error()`.
        """
        key = self._require(key_name)
        if credentials.kind != "basic":
            raise ably_error(40162, "Cannot revoke tokens when using token auth", status_code=401)
        if credentials.key_name != key.name:
            raise ably_error(
                40102, f"Tokens of key {key.name} can only be revoked with that key itself"
            )
        if not key.revocable_tokens:
            raise ably_error(
                40300, f"Token revocation is not enabled for key {key.name} (revocableTokens)"
            )
        if not isinstance(body, dict):
            raise ably_error(40001, "Invalid request body: expected {targets: [...]}")
        targets = body.get("targets")
        if not isinstance(targets, list) or not targets:
            raise ably_error(40003, "Invalid targets: a non-empty list of 'type:value' strings")
        if len(targets) > MAX_REVOCATION_TARGETS:
            raise ably_error(
                40003, f"Invalid targets: at most {MAX_REVOCATION_TARGETS} per request"
            )
        issued_before = body.get("issuedBefore")
        if issued_before is None:
            issued_before = now_ms
        else:
            issued_before = _require_int(issued_before, "issuedBefore")
            if issued_before > now_ms:
                raise ably_error(40003, "Invalid issuedBefore: it may not be in the future")
            if issued_before < now_ms - MAX_REVOCATION_LOOKBACK_MS:
                raise ably_error(40003, "Invalid issuedBefore: at most one hour in the past")
        applies_at = now_ms + (REAUTH_MARGIN_MS if body.get("allowReauthMargin") else 0)
        results: list[dict[str, Any]] = []
        for target in targets:
            target_type, separator, value = (
                str(target).partition(":") if isinstance(target, str) else ("", "", "")
            )
            if not separator or not value or target_type not in REVOCATION_TARGET_TYPES:
                results.append(
                    {
                        "target": str(target),
                        "error": ably_error(
                            40000,
                            f"Invalid target specifier {target!r}: use one of "
                            + ", ".join(f"{kind}:<value>" for kind in REVOCATION_TARGET_TYPES),
                        ).to_dict(),
                    }
                )
                continue
            self._revocations.setdefault(key.name, []).append(
                Revocation(target_type, value, issued_before, applies_at)
            )
            results.append(
                {"target": target, "issuedBefore": issued_before, "appliesAt": applies_at}
            )
        failures = sum(1 for result in results if "error" in result)
        return {
            "successCount": len(results) - failures,
            "failureCount": failures,
            "results": results,
        }

    def revocation_error(self, credentials: Credentials, *, now_ms: int) -> AblyError | None:
        """40141 if a revocation in force covers these token credentials, else None."""
        if credentials.kind == "basic" or credentials.issued_ms is None:
            return None
        key = self._keys.get(credentials.key_name)
        if key is None or not key.revocable_tokens:
            return None
        for revocation in self._revocations.get(key.name, []):
            if revocation.applies_at <= now_ms and revocation.covers(credentials):
                return ably_error(
                    40141,
                    f"Token revoked (target {revocation.target_type}:{revocation.value})",
                )
        return None

    def raise_if_revoked(self, credentials: Credentials, *, now_ms: int) -> None:
        error = self.revocation_error(credentials, now_ms=now_ms)
        if error is not None:
            raise error

    def next_revocation_at(self, credentials: Credentials, *, now_ms: int) -> int | None:
        """When a pending (reauth-margin) revocation will start covering these credentials."""
        pending = [
            revocation.applies_at
            for revocation in self._revocations.get(credentials.key_name, [])
            if revocation.applies_at > now_ms and revocation.covers(credentials)
        ]
        return min(pending, default=None)

    def _require(self, key_name: str) -> ApiKey:
        key = self._keys.get(key_name)
        if key is not None:
            return key
        # Matches what Ably answers for an unknown key or app (ably-js failure/auth tests).
        app_id = key_name.split(".", 1)[0]
        if app_id not in self.app_ids():
            raise ably_error(
                40400, f"Invalid key in request: {key_name} (no application {app_id!r})"
            )
        raise ably_error(40400, f"Invalid key in request: {key_name}")

    def _remember_nonce(
        self, key_name: str, nonce: str, *, now_ms: int, timestamp: int | None = None
    ) -> None:
        expired = [entry for entry, forget_at in self._seen_nonces.items() if forget_at <= now_ms]
        for entry in expired:
            del self._seen_nonces[entry]
        # A replay is the same signed request again: a new timestamp makes it a new request.
        request_key = (key_name, nonce, timestamp)
        if request_key in self._seen_nonces:
            raise ably_error(40105, f"Nonce value replayed: {nonce!r}")
        # A replay older than the timestamp window already fails the timestamp check.
        self._seen_nonces[request_key] = now_ms + 2 * self.token_request_window_ms + 1


# ---------------------------------------------------------------------------------------------
# Credentials


@dataclass(frozen=True)
class Credentials:
    """Who a connection or REST request is, after authentication."""

    kind: Literal["basic", "token", "jwt"]
    key_name: str
    app_id: str
    capability: Capability
    client_id: str | None  # None = anonymous, "*" = may act as any clientId
    issued_ms: int | None
    expires_ms: int | None  # None for basic auth
    token: str | None  # the token string for token/jwt auth
    user_claims: dict[str, Any] = field(default_factory=dict)  # JWT `ably.channel.*` claims
    # What revocation targets match: the clientId the token was issued with (before a wildcard
    # picks an identity) and a JWT's `x-ably-revocation-key` claim.
    token_client_id: str | None = None
    revocation_key: str | None = None

    def user_claim_for(self, channel: str) -> str | None:
        """The `ably.channel.*` claim that applies to `channel` (most specific wins), if any."""
        matching = [pattern for pattern in self.user_claims if resource_matches(pattern, channel)]
        if not matching:
            return None
        best = max(matching, key=_specificity)
        value = self.user_claims[best]
        return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))

    @property
    def identified_client_id(self) -> str | None:
        """The clientId the connection is identified as (what CONNECTED reports); None when
        anonymous or holding a wildcard without choosing an identity."""
        return None if self.client_id in (None, "*") else self.client_id

    def can_act_as(self, client_id: str | None) -> bool:
        """Whether a message/presence member may carry `client_id` (None = unstamped).

        Key holders (basic auth without a clientId) and wildcard tokens may name any client;
        identified connections only themselves; anonymous token clients nobody.
        """
        if client_id is None:
            return True
        if self.client_id == "*":
            return True
        if self.client_id is None:
            return self.kind == "basic"
        return client_id == self.client_id

    def is_expired(self, now_ms: int) -> bool:
        return self.expires_ms is not None and self.expires_ms <= now_ms


# ---------------------------------------------------------------------------------------------
# Encoding helpers


def _b64url_encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _b64_decode_lenient(text: str) -> bytes:
    """base64url or standard base64, padded or not (Ably's own docs show both for JWTs)."""
    normalised = text.strip().replace("-", "+").replace("_", "/")
    normalised += "=" * (-len(normalised) % 4)
    return base64.b64decode(normalised, validate=True)


def _hmac_sha256(secret: str, text: str) -> bytes:
    return hmac.new(secret.encode("utf-8"), text.encode("utf-8"), hashlib.sha256).digest()


def decode_bearer(value: str) -> str:
    """The token inside an `Authorization: Bearer` value: both SDKs send base64(token); a raw
    Ably token or JWT is accepted too."""
    value = value.strip()
    if _looks_like_token(value):
        return value
    try:
        decoded = _b64_decode_lenient(value).decode("utf-8")
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return value
    return decoded if decoded and decoded.isprintable() else value


_ABLY_TOKEN_PATTERN = re.compile(r"^([^.:\s~]+)\.([A-Za-z0-9_-]+)~([A-Za-z0-9_-]+)$")


def _looks_like_token(value: str) -> bool:
    return bool(_ABLY_TOKEN_PATTERN.match(value)) or value.count(".") == 2


def _as_text(value: Any) -> Any:
    # ably-python posts token requests as msgpack with use_bin_type=False: strings may be bytes.
    if isinstance(value, bytes | bytearray):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            return value
    return value


def _sign_text_field(value: Any) -> str:
    """A TokenRequest field as both SDKs write it into the MAC text (`value || ""`)."""
    if value is None or value == "" or value is False:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, int) and value == 0:
        return ""
    return str(value)


# ---------------------------------------------------------------------------------------------
# Authentication


def _resolve_client_id(token_client_id: str | None, requested_client_id: str | None) -> str | None:
    if requested_client_id is None or requested_client_id == token_client_id:
        return token_client_id
    if token_client_id == "*":
        if requested_client_id == "*":
            return "*"
        return requested_client_id
    raise ably_error(
        40102,
        f"Incompatible clientId: the token is bound to {token_client_id!r} but the request "
        f"asked for {requested_client_id!r}",
    )


def _validate_requested_client_id(requested_client_id: str | None) -> None:
    if requested_client_id is None:
        return
    if not isinstance(requested_client_id, str) or requested_client_id == "":
        raise ably_error(40012, "Invalid clientId: it must be a non-empty string")


def authenticate(
    keyring: Keyring,
    *,
    now_ms: int,
    basic: str | None = None,
    token: str | None = None,
    requested_client_id: str | None = None,
) -> Credentials:
    """Authenticate `key=`/Basic (`keyName:secret`) or a token (Ably token or JWT).

    Raises AblyError: 40400 unknown key/app (as Ably), 40101 wrong secret, 40142 expired,
    40143 unrecognised/forged Ably token, 40101 a string that is no token at all, 40144 bad JWT, 40102 clientId mismatch, 40012 bad
    clientId, 40160 JWT capability outside the key's, 40100 no credentials at all.
    """
    _validate_requested_client_id(requested_client_id)
    if basic is not None:
        return _authenticate_basic(keyring, basic, requested_client_id)
    if token is not None:
        token = token.strip()
        if not token:
            raise ably_error(40140, "Token error: empty token")
        if token.count(".") == 2:
            return _authenticate_jwt(keyring, token, now_ms, requested_client_id)
        if _ABLY_TOKEN_PATTERN.match(token):
            return _authenticate_ably_token(keyring, token, now_ms, requested_client_id)
        unwrapped = decode_bearer(token)
        if unwrapped != token:
            return authenticate(
                keyring, now_ms=now_ms, token=unwrapped, requested_client_id=requested_client_id
            )
        # Not token-shaped at all: Ably answers "invalid credentials", which the SDKs treat as
        # final (FAILED) rather than as a token to renew (the 4014x codes).
        raise ably_error(40101, "Invalid credentials: token format not recognised")
    raise ably_error(40100, "Unauthorized: no key or token supplied")


def _authenticate_basic(
    keyring: Keyring, basic: str, requested_client_id: str | None
) -> Credentials:
    key_name, separator, secret = basic.strip().partition(":")
    if not separator or not key_name or "." not in key_name:
        raise ably_error(40101, "Invalid credentials: expected 'appId.keyId:secret'")
    key = keyring._require(key_name)
    if not hmac.compare_digest(key.secret.encode("utf-8"), secret.encode("utf-8")):
        raise ably_error(40101, f"Invalid credentials: wrong secret for key {key_name}")
    if requested_client_id == "*":
        raise ably_error(40012, "Invalid clientId: '*' is not a usable clientId for a connection")
    return Credentials(
        kind="basic",
        key_name=key.name,
        app_id=key.app_id,
        capability=key.capability,
        client_id=requested_client_id,
        issued_ms=None,
        expires_ms=None,
        token=None,
        user_claims={},
    )


def _authenticate_ably_token(
    keyring: Keyring, token: str, now_ms: int, requested_client_id: str | None
) -> Credentials:
    match = _ABLY_TOKEN_PATTERN.match(token)
    assert match is not None
    _, payload_text, signature_text = match.groups()
    try:
        payload = json.loads(_b64_decode_lenient(payload_text))
        key_name = payload["k"]
        issued_ms = int(payload["i"])
        expires_ms = int(payload["e"])
        capability_text = payload["c"]
        token_client_id = payload.get("u")
        signature = _b64_decode_lenient(signature_text)
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise ably_error(40143, "Token unrecognised") from None
    key = keyring._require(key_name)
    expected = _hmac_sha256(key.secret, payload_text)
    if not hmac.compare_digest(expected, signature):
        raise ably_error(40143, "Token unrecognised: signature does not match any key")
    if expires_ms <= now_ms:
        raise ably_error(40142, "Token expired")
    client_id = _resolve_client_id(token_client_id, requested_client_id)
    credentials = Credentials(
        kind="token",
        key_name=key.name,
        app_id=key.app_id,
        capability=Capability.parse(capability_text),
        client_id=client_id,
        issued_ms=issued_ms,
        expires_ms=expires_ms,
        token=token,
        user_claims={},
        token_client_id=token_client_id,
    )
    keyring.raise_if_revoked(credentials, now_ms=now_ms)
    return credentials


def _authenticate_jwt(
    keyring: Keyring, token: str, now_ms: int, requested_client_id: str | None
) -> Credentials:
    header_text, claims_text, signature_text = token.split(".")
    try:
        header = json.loads(_b64_decode_lenient(header_text))
        claims = json.loads(_b64_decode_lenient(claims_text))
        signature = _b64_decode_lenient(signature_text)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise ably_error(
            40144, "Invalid JWT format: segments are not base64-encoded JSON"
        ) from None
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise ably_error(40144, "Invalid JWT format: header and claims must be JSON objects")
    if header.get("alg") != "HS256":
        raise ably_error(40144, f"Invalid JWT: unsupported alg {header.get('alg')!r} (use HS256)")
    key_name = header.get("kid")
    if not isinstance(key_name, str) or not key_name:
        raise ably_error(40144, "Invalid JWT: the header has no 'kid' naming the signing key")
    key = keyring._require(key_name)
    expected = _hmac_sha256(key.secret, f"{header_text}.{claims_text}")
    if not hmac.compare_digest(expected, signature):
        raise ably_error(40144, "Invalid JWT: signature verification failed")
    issued_s, expires_s = claims.get("iat"), claims.get("exp")
    for name, value in (("iat", issued_s), ("exp", expires_s)):
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise ably_error(40144, f"Invalid JWT: claim {name!r} must be a number of seconds")
    expires_ms = int(expires_s * 1000)
    if expires_ms <= now_ms:
        raise ably_error(40142, "Token expired")
    capability = _jwt_capability(claims, key)
    token_client_id = claims.get("x-ably-clientId")
    if token_client_id is not None and (
        not isinstance(token_client_id, str) or not token_client_id
    ):
        raise ably_error(40144, "Invalid JWT: 'x-ably-clientId' must be a non-empty string")
    client_id = _resolve_client_id(token_client_id, requested_client_id)
    user_claims = {
        name[len("ably.channel.") :]: value
        for name, value in claims.items()
        if name.startswith("ably.channel.") and len(name) > len("ably.channel.")
    }
    revocation_key = claims.get("x-ably-revocation-key")
    credentials = Credentials(
        kind="jwt",
        key_name=key.name,
        app_id=key.app_id,
        capability=capability,
        client_id=client_id,
        issued_ms=int(issued_s * 1000),
        expires_ms=expires_ms,
        token=token,
        user_claims=user_claims,
        token_client_id=token_client_id,
        revocation_key=revocation_key if isinstance(revocation_key, str) else None,
    )
    keyring.raise_if_revoked(credentials, now_ms=now_ms)
    return credentials


def _jwt_capability(claims: dict[str, Any], key: ApiKey) -> Capability:
    raw = claims.get("x-ably-capability")
    if raw is None:
        # Lenient: a JWT without the claim gets the key's capability (what a token request
        # without a capability gets), rather than failing a client with an otherwise valid JWT.
        return key.capability
    try:
        requested = Capability.parse(raw)
    except AblyError as exc:
        raise ably_error(40144, f"Invalid JWT: 'x-ably-capability': {exc.message}") from None
    return requested.intersect(key.capability)


# ---------------------------------------------------------------------------------------------
# Token issuing


def issue_token(
    keyring: Keyring,
    token_request: dict[str, Any],
    *,
    now_ms: int,
    key_name: str,
    credentials: Credentials | None = None,
) -> dict[str, Any]:
    """`POST /keys/{key_name}/requestToken`: verify a signed TokenRequest (mac, nonce, timestamp)
    or (already basic-authenticated) token params, and return TokenDetails JSON:
    {token, keyName, issued, expires, capability, clientId}. Tokens are self-contained (signed),
    so no server-side store is needed.

    An unsigned body (no `mac`) is accepted only with `credentials` from Basic auth with the
    same key, as Ably does. Errors: 40400 unknown key, 40101 wrong mac / keyName mismatch,
    40104 stale timestamp, 40105 replayed nonce, 40003 bad ttl/timestamp/nonce, 40000 bad
    capability, 40012 bad clientId, 40160 capability outside the key's.
    """
    if not isinstance(token_request, dict):
        raise ably_error(40001, "Invalid request body: a TokenRequest must be a JSON object")
    fields = {str(_as_text(name)): _as_text(value) for name, value in token_request.items()}
    key = keyring._require(key_name)
    body_key_name = fields.get("keyName")
    if body_key_name not in (None, "") and body_key_name != key.name:
        raise ably_error(
            40101,
            f"Invalid credentials: TokenRequest keyName {body_key_name!r} does not match the "
            f"key in the request path {key.name!r}",
        )

    mac = fields.get("mac")
    if mac in (None, ""):
        if credentials is None or credentials.kind != "basic":
            raise ably_error(
                40101,
                "Invalid credentials: an unsigned TokenRequest (no mac) needs Basic auth with the key",
            )
        if credentials.key_name != key.name:
            raise ably_error(40102, "Incompatible credentials: authenticated with a different key")
    else:
        _verify_token_request_mac(key, fields, str(mac))
        timestamp = _require_int(fields.get("timestamp"), "timestamp")
        window = keyring.token_request_window_ms
        if abs(now_ms - timestamp) > window:
            raise ably_error(
                40104,
                f"Timestamp not current: TokenRequest timestamp {timestamp} is more than "
                f"{window // 1000}s from server time {now_ms}",
            )
        nonce = fields.get("nonce")
        if not isinstance(nonce, str) or len(nonce) < MIN_NONCE_LENGTH:
            raise ably_error(
                40003,
                f"Invalid nonce: it must be a string of at least {MIN_NONCE_LENGTH} characters",
            )
        keyring._remember_nonce(key.name, nonce, now_ms=now_ms, timestamp=timestamp)

    ttl = _token_ttl(fields.get("ttl"))
    if key.revocable_tokens and ttl > MAX_REVOCABLE_TOKEN_TTL_MS:
        raise ably_error(
            40003, f"Invalid ttl: tokens of key {key.name} are revocable, so live at most 1 hour"
        )
    capability = _requested_capability(fields.get("capability"), key)
    client_id = fields.get("clientId")
    if client_id is not None and (not isinstance(client_id, str) or client_id == ""):
        raise ably_error(40012, "Invalid clientId: it must be a non-empty string")
    return mint_token(
        keyring, key, now_ms=now_ms, ttl_ms=ttl, capability=capability, client_id=client_id
    )


def mint_token(
    keyring: Keyring,
    key: ApiKey,
    *,
    now_ms: int,
    ttl_ms: int = DEFAULT_TOKEN_TTL_MS,
    capability: Capability | None = None,
    client_id: str | None = None,
) -> dict[str, Any]:
    """Sign a new Ably token for `key` and return its TokenDetails JSON (no request checks)."""
    capability = capability or key.capability
    expires_ms = now_ms + ttl_ms
    payload = {
        "k": key.name,
        "i": now_ms,
        "e": expires_ms,
        "c": capability.to_json(),
        "u": client_id,
        "s": next(keyring._token_serial),  # two identical requests still get distinct tokens
    }
    payload_text = _b64url_encode(json.dumps(payload, separators=(",", ":")).encode("utf-8"))
    signature = _b64url_encode(_hmac_sha256(key.secret, payload_text))
    details: dict[str, Any] = {
        "token": f"{key.app_id}.{payload_text}~{signature}",
        "keyName": key.name,
        "issued": now_ms,
        "expires": expires_ms,
        "capability": capability.to_json(),
    }
    if client_id is not None:
        details["clientId"] = client_id
    return details


def _verify_token_request_mac(key: ApiKey, fields: dict[str, Any], mac: str) -> None:
    # Same text both SDKs sign: each field followed by "\n", absent ones empty, the capability
    # exactly as sent (never re-canonicalised).
    timestamp = fields.get("timestamp")
    sign_text = "".join(
        f"{part}\n"
        for part in (
            key.name,
            _sign_text_field(fields.get("ttl")),
            _sign_text_field(fields.get("capability")),
            _sign_text_field(fields.get("clientId")),
            _sign_text_field(timestamp) or "0",
            _sign_text_field(fields.get("nonce")),
        )
    )
    expected = base64.b64encode(_hmac_sha256(key.secret, sign_text)).decode("ascii")
    if not hmac.compare_digest(expected.encode("ascii"), mac.strip().encode("utf-8", "replace")):
        raise ably_error(40101, "Invalid credentials: TokenRequest mac does not match")


def _require_int(value: Any, name: str) -> int:
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ably_error(40003, f"Invalid {name}: expected an integer number of milliseconds")
    return int(value)


def _token_ttl(value: Any) -> int:
    if value is None or value == "" or value == 0:
        return DEFAULT_TOKEN_TTL_MS
    ttl = _require_int(value, "ttl")
    if ttl <= 0:
        raise ably_error(40003, f"Invalid ttl: {ttl} (it must be positive)")
    if ttl > MAX_TOKEN_TTL_MS:
        raise ably_error(40003, f"Invalid ttl: {ttl} ms exceeds the maximum of 24 hours")
    return ttl


def _requested_capability(value: Any, key: ApiKey) -> Capability:
    if value is None or value == "":
        return key.capability
    return Capability.parse(value).intersect(key.capability)


__all__ = [
    "ALL_OPERATIONS",
    "KNOWN_OPERATIONS",
    "ApiKey",
    "Capability",
    "Credentials",
    "Keyring",
    "Operation",
    "Revocation",
    "authenticate",
    "decode_bearer",
    "issue_token",
    "mint_token",
    "parse_channel_name",
    "resource_covers",
    "resource_matches",
]
