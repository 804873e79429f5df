"""Configuration of the Ably stand-in: keys, namespace rules, limits and timings.

Defaults follow Ably's documented production values so the app is tested against the limits it
will meet; tests shrink the timings (presence leave delay, TTLs) through the same knobs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Same value as chatsite.settings.DEV_ABLY_API_KEY; duplicated so the stand-in never imports Django.
DEFAULT_KEY = "devapp.devkey:dev-secret-change-me"
DEFAULT_KEY_NAME = DEFAULT_KEY.split(":", 1)[0]


@dataclass(frozen=True)
class NamespaceRule:
    """A channel rule, as configured per namespace (the part of a channel name before `:`)."""

    name: str
    mutable_messages: bool = False
    # Mutable messages need storage, so Ably forces persistence on for such namespaces.
    persisted: bool = False


def default_namespaces() -> dict[str, NamespaceRule]:
    return {"ai": NamespaceRule("ai", mutable_messages=True, persisted=True)}


@dataclass
class HubConfig:
    keys: list[str] = field(default_factory=lambda: [DEFAULT_KEY])
    # keyName -> capability JSON; keys not listed get {"*":["*"]}, which (as in Ably) does not
    # cover [meta] channels: grant "[meta]*" or "[*]*" explicitly for those.
    key_capabilities: dict[str, str] = field(default_factory=dict)
    # Key names with Ably's "revocable tokens" setting on: `POST /keys/{name}/revokeTokens`
    # works for them, and their tokens live at most an hour. Off for a new Ably key; on for the
    # development key, as the app's production key must have it (deleting a conversation
    # revokes its owner's tokens).
    revocable_token_keys: list[str] = field(default_factory=lambda: [DEFAULT_KEY_NAME])
    namespaces: dict[str, NamespaceRule] = field(default_factory=default_namespaces)
    server_id: str = "emu"
    # History of persisted namespaces; other channels keep Ably's 2 minutes.
    history_retention_ms: int = 24 * 3600 * 1000
    ephemeral_retention_ms: int = 120_000
    connection_state_ttl_ms: int = 120_000
    max_idle_interval_ms: int = 15_000
    presence_leave_delay_ms: int = 15_000
    max_message_size: int = 65_536
    max_frame_size: int = 524_288
    # Inbound messages per second per connection; 0 disables the limit.
    max_inbound_rate: int = 50
    max_channels_per_connection: int = 200
    append_rollup_window_ms: int = 40
    max_append_rollup_window_ms: int = 500
    rewind_max_messages: int = 100
    # The server asks a token client to re-authenticate this long before its token expires.
    reauth_ahead_ms: int = 30_000
    reauth_min_lifetime_ms: int = 5_000
    default_history_limit: int = 100
    max_history_limit: int = 1000

    def namespace_rule(self, channel: str) -> NamespaceRule:
        namespace = channel.split(":", 1)[0] if ":" in channel else ""
        return self.namespaces.get(namespace) or NamespaceRule(namespace)
