"""`POST /apps` / `DELETE /apps/{appId}`: test apps as Ably's own SDK test harnesses create them.

The harnesses (ably-js `testapp_manager.js` posting ably-common `test-app-setup.json`'s
`post_apps`, ably-python `testapp.py` posting `testAppSpec.json`) send

    {"keys": [{}, {"capability": "<JSON text>"}, {"revocableTokens": true}, ...],
     "namespaces": [{"id": "persisted", "persisted": true}, ...],
     "channels": [{"name": "persisted:presence_fixtures", "presence": [{clientId, data, encoding?}]}],
     "limits": {...}}

and read back `appId` plus, per key, `keyStr`/`keyName`/`keySecret`/`capability` (ably-js) or
`id`/`value`/`capability` (ably-python). Pure functions: ids and secrets come from the caller,
which also owns the keyring and channel state (`Keyring.add`, `Keyring.remove_app`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from .auth import ApiKey, Capability, Credentials
from .errors import AblyError, ably_error


@dataclass(frozen=True)
class NamespaceSpec:
    """A channel rule for one namespace, in Ably's Control API vocabulary."""

    id: str
    persisted: bool = False
    persist_last: bool = False
    push_enabled: bool = False
    mutable_messages: bool = False
    authenticated: bool = False
    identified: bool = False
    tls_only: bool = False
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def effectively_persisted(self) -> bool:
        # Mutable messages need storage, so Ably turns persistence on with them.
        return self.persisted or self.mutable_messages

    def to_json(self) -> dict[str, Any]:
        return {
            **self.raw,
            "id": self.id,
            "persisted": self.effectively_persisted,
            "persistLast": self.persist_last,
            "pushEnabled": self.push_enabled,
            "mutableMessages": self.mutable_messages,
            "authenticated": self.authenticated,
            "identified": self.identified,
            "tlsOnly": self.tls_only,
        }


@dataclass(frozen=True)
class PresenceFixture:
    client_id: str
    data: Any
    encoding: str | None = None


@dataclass(frozen=True)
class ChannelFixture:
    """A channel seeded at app creation, e.g. presence members for the SDKs' REST presence tests."""

    name: str
    presence: list[PresenceFixture] = field(default_factory=list)


@dataclass(frozen=True)
class KeySpec:
    key: ApiKey
    name: str | None = None
    privileged: bool = False
    revocable_tokens: bool = False

    def to_json(self, *, created_ms: int) -> dict[str, Any]:
        key = self.key
        return {
            "id": key.key_id,
            "value": key.secret,
            "appId": key.app_id,
            "keyName": key.name,
            "keySecret": key.secret,
            "keyStr": key.key_str,
            "name": self.name or "",
            "capability": key.capability.to_json(),
            "status": 0,
            "privileged": self.privileged,
            "revocableTokens": self.revocable_tokens,
            "created": created_ms,
            "modified": created_ms,
        }


@dataclass(frozen=True)
class AppSpec:
    app_id: str
    account_id: str
    keys: list[KeySpec]
    namespaces: list[NamespaceSpec]
    channels: list[ChannelFixture]
    limits: dict[str, Any]

    @property
    def api_keys(self) -> list[ApiKey]:
        return [spec.key for spec in self.keys]

    def namespace(self, channel: str) -> NamespaceSpec | None:
        """The rule for `channel`'s namespace (the part before the first `:`), if configured."""
        if ":" not in channel:
            return None
        prefix = channel.split(":", 1)[0]
        return next((rule for rule in self.namespaces if rule.id == prefix), None)


def parse_app_spec(
    body: dict[str, Any] | str | bytes,
    *,
    app_id: str,
    new_secret: Callable[[], str],
    account_id: str = "emulator",
) -> AppSpec:
    """Validate a `POST /apps` body into an AppSpec. Raises AblyError 40000/40001 on bad input.

    `new_secret()` supplies each key's secret (the caller owns randomness); key ids are derived
    from the app id and position, so they are unique without another id source. A `post_apps`
    wrapper (the whole test-app-setup.json file) is unwrapped.
    """
    spec = _load(body)
    if "post_apps" in spec and isinstance(spec["post_apps"], dict):
        spec = spec["post_apps"]
    if not _is_valid_id(app_id):
        raise ably_error(40000, f"Invalid app id {app_id!r}: no '.', ':' or whitespace allowed")

    raw_keys = spec.get("keys", [{}])
    if not isinstance(raw_keys, list):
        raise ably_error(40000, "Invalid app spec: 'keys' must be a list")
    keys = [_parse_key(raw, app_id, index, new_secret) for index, raw in enumerate(raw_keys)]
    if not keys:
        keys = [_parse_key({}, app_id, 0, new_secret)]

    raw_namespaces = spec.get("namespaces", [])
    if not isinstance(raw_namespaces, list):
        raise ably_error(40000, "Invalid app spec: 'namespaces' must be a list")
    namespaces = [_parse_namespace(raw) for raw in raw_namespaces]
    ids = [rule.id for rule in namespaces]
    duplicates = sorted({rule_id for rule_id in ids if ids.count(rule_id) > 1})
    if duplicates:
        raise ably_error(40000, f"Invalid app spec: namespace ids repeated: {duplicates}")

    raw_channels = spec.get("channels", [])
    if not isinstance(raw_channels, list):
        raise ably_error(40000, "Invalid app spec: 'channels' must be a list")
    channels = [_parse_channel(raw) for raw in raw_channels]

    limits = spec.get("limits", {})
    if not isinstance(limits, dict):
        raise ably_error(40000, "Invalid app spec: 'limits' must be an object")
    return AppSpec(app_id, account_id, keys, namespaces, channels, limits)


def app_response(app: AppSpec, *, created_ms: int) -> dict[str, Any]:
    """The `POST /apps` answer, with every field either SDK harness reads."""
    return {
        "accountId": app.account_id,
        "appId": app.app_id,
        "id": app.app_id,
        "name": app.app_id,
        "status": "enabled",
        "tlsOnly": False,
        "created": created_ms,
        "modified": created_ms,
        "keys": [spec.to_json(created_ms=created_ms) for spec in app.keys],
        "namespaces": [rule.to_json() for rule in app.namespaces],
        "channels": [
            {
                "name": channel.name,
                "presence": [
                    {
                        "clientId": member.client_id,
                        "data": member.data,
                        **({"encoding": member.encoding} if member.encoding else {}),
                    }
                    for member in channel.presence
                ],
            }
            for channel in app.channels
        ],
        "limits": app.limits,
    }


def check_app_delete(credentials: Credentials, app_id: str) -> None:
    """`DELETE /apps/{appId}` is allowed with Basic auth using one of that app's keys."""
    if credentials.kind != "basic":
        raise ably_error(40101, "Deleting an app needs Basic auth with one of its keys")
    if credentials.app_id != app_id:
        raise ably_error(40300, f"Key {credentials.key_name} does not belong to app {app_id!r}")


def _load(body: dict[str, Any] | str | bytes) -> dict[str, Any]:
    if isinstance(body, bytes | str):
        try:
            body = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ably_error(40001, f"Invalid request body: not JSON ({exc})") from None
    if not isinstance(body, dict):
        raise ably_error(40001, "Invalid request body: an app spec must be a JSON object")
    return body


def _is_valid_id(value: str) -> bool:
    return bool(value) and not any(char in value for char in ".: \t\r\n")


def _parse_key(raw: Any, app_id: str, index: int, new_secret: Callable[[], str]) -> KeySpec:
    if not isinstance(raw, dict):
        raise ably_error(40000, f"Invalid app spec: key {index} must be an object")
    capability_raw = raw.get("capability")
    try:
        capability = (
            Capability.all()
            if capability_raw in (None, "", {})
            else Capability.parse(capability_raw)
        )
    except AblyError as exc:
        raise ably_error(40000, f"Invalid app spec: key {index}: {exc.message}") from None
    secret = new_secret()
    key_id = f"k{index}"
    revocable = bool(raw.get("revocableTokens", False))
    key = replace(
        ApiKey.parse(f"{app_id}.{key_id}:{secret}", capability), revocable_tokens=revocable
    )
    return KeySpec(
        key=key,
        name=raw.get("name") if isinstance(raw.get("name"), str) else None,
        privileged=bool(raw.get("privileged", False)),
        revocable_tokens=revocable,
    )


def _parse_namespace(raw: Any) -> NamespaceSpec:
    if not isinstance(raw, dict):
        raise ably_error(40000, "Invalid app spec: each namespace must be an object")
    rule_id = raw.get("id")
    if not isinstance(rule_id, str) or not rule_id or ":" in rule_id:
        raise ably_error(
            40000, f"Invalid app spec: namespace id {rule_id!r} must be a name without ':'"
        )
    return NamespaceSpec(
        id=rule_id,
        persisted=bool(raw.get("persisted", False)),
        persist_last=bool(raw.get("persistLast", False)),
        push_enabled=bool(raw.get("pushEnabled", False)),
        mutable_messages=bool(raw.get("mutableMessages", False)),
        authenticated=bool(raw.get("authenticated", False)),
        identified=bool(raw.get("identified", False)),
        tls_only=bool(raw.get("tlsOnly", False)),
        raw=dict(raw),
    )


def _parse_channel(raw: Any) -> ChannelFixture:
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str) or not raw["name"]:
        raise ably_error(40000, "Invalid app spec: each channel needs a non-empty 'name'")
    members = raw.get("presence", [])
    if not isinstance(members, list):
        raise ably_error(40000, f"Invalid app spec: presence of {raw['name']!r} must be a list")
    presence: list[PresenceFixture] = []
    for member in members:
        if not isinstance(member, dict) or not isinstance(member.get("clientId"), str):
            raise ably_error(
                40000, f"Invalid app spec: presence members of {raw['name']!r} need a clientId"
            )
        encoding = member.get("encoding")
        presence.append(
            PresenceFixture(
                client_id=member["clientId"],
                data=member.get("data"),
                encoding=encoding if isinstance(encoding, str) and encoding else None,
            )
        )
    return ChannelFixture(name=raw["name"], presence=presence)
