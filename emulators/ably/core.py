"""Sans-I/O core of the Ably stand-in: connections, channels, messages, presence.

No sockets and no clock. The adapter feeds decoded ProtocolMessages in (`open_transport`,
`receive`, `transport_lost`) and takes queued frames out (`take_outputs`); time comes from the
injected `clock` (ms) and timers are requests the adapter fulfils by calling `run_due_timers()`
once `next_timer_due()` has passed. REST requests are plain method calls returning plain data.
"""

from __future__ import annotations

import base64
import dataclasses
import heapq
import itertools
import json
import logging
import re
import secrets
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from . import annotations, auth, push, stats, vcdiff
from .config import HubConfig, NamespaceRule
from .errors import AblyError
from .protocol import MODE_FLAGS, Action, Flag, MessageAction, PresenceAction

log = logging.getLogger("emulators.ably")

Clock = Callable[[], int]
IdSource = Callable[[], str]
Frame = dict[str, Any]

LIFECYCLE_CHANNEL = "[meta]channel.lifecycle"
_QUALIFIED_NAME = re.compile(r"^\[([^?\]]*)(\?[^\]]*)?\](.+)$")
_REWIND_TIME = re.compile(r"^(\d+)(s|m|h)$")
_MUTATIONS = {MessageAction.UPDATE, MessageAction.DELETE, MessageAction.APPEND}
_RATE_WINDOW_MS = 1000
_SYNC_PAGE_SIZE = 100
_IDEMPOTENCY_WINDOW = 10_000
_EXPIRED_KEYS_KEPT = 10_000
# ATTACH `params.modes` names (comma-separated, lowercase) -> mode flags.
_MODE_NAMES = {
    "presence": Flag.PRESENCE,
    "publish": Flag.PUBLISH,
    "subscribe": Flag.SUBSCRIBE,
    "presence_subscribe": Flag.PRESENCE_SUBSCRIBE,
    "annotation_publish": Flag.ANNOTATION_PUBLISH,
    "annotation_subscribe": Flag.ANNOTATION_SUBSCRIBE,
    "object_subscribe": Flag.OBJECT_SUBSCRIBE,
    "object_publish": Flag.OBJECT_PUBLISH,
}
# What Ably grants when an ATTACH requests no modes: annotation-subscribe and the object modes
# must be asked for explicitly.
_DEFAULT_MODES = (
    Flag.PRESENCE
    | Flag.PUBLISH
    | Flag.SUBSCRIBE
    | Flag.PRESENCE_SUBSCRIBE
    | Flag.ANNOTATION_PUBLISH
)
# Channel params Ably acts on; it silently drops (and does not echo in ATTACHED) any others.
_KNOWN_PARAMS = frozenset({"rewind", "delta", "occupancy", "modes", "echo", "appendMode"})


def check_channel_name(name: str) -> None:
    """Ably's channel-name rules: not empty, not starting with `:`, no unknown `[...]` prefix."""
    if not name:
        raise AblyError(40010, "Invalid channel name: the name is empty", 400)
    if name.startswith(":"):
        raise AblyError(40010, f"Invalid channel name {name!r}: it must not start with ':'", 400)
    if name.startswith("[") and not name.startswith("[meta]"):
        raise AblyError(40010, f"Invalid channel name: {name}", 400)


def modes_from_param(value: str) -> int:
    """`"presence,subscribe"` -> PRESENCE | SUBSCRIBE; an unknown mode name is a 40000."""
    modes = 0
    for part in value.split(","):
        part = part.strip().lower()
        if not part:
            continue
        if part not in _MODE_NAMES:
            raise AblyError(40000, f"Invalid channel mode {part!r} in params.modes", 400)
        modes |= _MODE_NAMES[part]
    return modes


def random_id() -> str:
    # Letters and digits only: ids are joined with `:` and `!` into message ids and keys.
    return secrets.token_hex(8)


@dataclass
class Timer:
    due: int
    callback: Callable[[], None]
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True


@dataclass
class Outbox:
    frames: list[Frame] = field(default_factory=list)
    close: bool = False


@dataclass
class Attachment:
    wire_name: str  # the name as the client spelled it (qualifiers included)
    channel: Channel
    modes: int
    params: dict[str, str]
    # Serials of messages this attachment has delivered in full: an append to any other message is
    # sent as the aggregated update instead of a fragment the client could not apply.
    seen: set[str] = field(default_factory=set)
    # The channel position this attachment has been given up to, and whether live delivery is
    # held until the client re-attaches after a resume (the re-ATTACH replays what was held, in
    # order; frames sent before it would be dropped by an SDK whose channel is still attaching).
    position: str = ""
    awaiting_reattach: bool = False
    # `delta=vcdiff`: (id, payload) of the last message sent here, the base of the next delta.
    # Reset by every ATTACH, as the SDKs reset their decoding context.
    delta_base: tuple[str, bytes] | None = None
    # A derived channel's JMESPath filter (`[filter=<base64>]name`): only matching messages.
    message_filter: Any = None
    requested_modes: int = 0  # what the ATTACH asked for (0: Ably's defaults)

    @property
    def wants_deltas(self) -> bool:
        return self.params.get("delta") == "vcdiff"


@dataclass
class Connection:
    id: str
    key: str
    credentials: auth.Credentials
    client_id: str | None
    wildcard: bool  # may act as any clientId (key auth or `*` token)
    echo: bool
    wire_format: str
    transport_id: int | None
    presence_leave_delay_ms: int
    append_rollup_window_ms: int
    attachments: dict[str, Attachment] = field(default_factory=dict)
    acked: dict[int, Frame] = field(default_factory=dict)
    recent_inbound: deque[int] = field(default_factory=deque)
    heartbeat_timer: Timer | None = None
    expiry_timer: Timer | None = None
    reauth_timer: Timer | None = None
    revocation_timer: Timer | None = None
    leave_timer: Timer | None = None
    discard_timer: Timer | None = None
    # Members removed by the presence-leave timer, re-entered if the connection resumes.
    lost_members: dict[str, list[Frame]] = field(default_factory=dict)

    @property
    def identified(self) -> bool:
        return self.client_id is not None and self.client_id != "*"


@dataclass
class ChannelEvent:
    """One delivered MESSAGE or PRESENCE frame, kept for resume replay within the retention."""

    serial: str  # the channelSerial of this position
    timestamp: int
    action: Action
    frame_id: str
    connection_id: str
    items: list[Frame]
    # For appends: serial -> the aggregated message at that moment, for attachments that never
    # saw the original.
    full_items: dict[str, Frame] = field(default_factory=dict)


@dataclass
class StoredMessage:
    event_serial: str
    message: Frame  # current aggregate
    versions: list[Frame] = field(default_factory=list)  # create, updates and deletes


@dataclass
class PendingAppend:
    """An open rollup window for one message: appends arriving in it are held and merged."""

    fragment: Frame | None  # None: the window is open but nothing is held yet
    full: Frame
    connection_id: str
    frame_id: str
    timer: Timer
    window_ms: int


@dataclass
class Channel:
    app_id: str
    name: str
    persisted: bool
    mutable: bool
    created_serial: str
    events: deque[ChannelEvent] = field(default_factory=deque)
    evicted_upto: str = ""
    messages: list[StoredMessage] = field(default_factory=list)
    by_serial: dict[str, StoredMessage] = field(default_factory=dict)
    members: dict[tuple[str, str], Frame] = field(default_factory=dict)  # (connId, clientId)
    presence_history: list[Frame] = field(default_factory=list)
    attachments: dict[str, Attachment] = field(default_factory=dict)  # by connection id
    # Connections attached under more than one name (e.g. `chan` and a derived `[filter=..]chan`):
    # `attachments` holds one of them, delivery goes to each.
    multi: set[str] = field(default_factory=set)
    pending_appends: dict[str, PendingAppend] = field(default_factory=dict)
    published_ids: dict[str, str] = field(default_factory=dict)  # client-supplied id -> serial
    # message serial -> its annotation events (creates and deletes), oldest first
    annotation_log: dict[str, list[Frame]] = field(default_factory=dict)

    @property
    def last_serial(self) -> str:
        return (
            self.events[-1].serial if self.events else max(self.evicted_upto, self.created_serial)
        )


def parse_channel_name(wire_name: str) -> tuple[str, dict[str, str]]:
    """`[?rewind=1]name` -> ("name", {"rewind": "1"}); `[meta]x` stays whole (a meta channel);
    `[filter=<base64>]name` -> ("name", {"filter": "<base64>"})."""
    match = _QUALIFIED_NAME.match(wire_name)
    if not match:
        return wire_name, {}
    qualifier, query, base = match.groups()
    params = dict(parse_qsl(query[1:])) if query else {}
    if qualifier == "meta":
        return f"[meta]{base}", params
    if qualifier.startswith("filter="):
        # A derived channel (ably-js `channels.getDerived`): `[filter=<base64>?params]name`.
        params["filter"] = qualifier[len("filter=") :]
    return base, params


def _granted_modes(requested: int, allowed: int) -> int:
    """The modes an attachment gets: what it asked for, or Ably's defaults, within the
    capability (a capability that allows none of the defaults grants what it does allow)."""
    if requested:
        return requested & allowed
    return (allowed & _DEFAULT_MODES) or allowed


def _compile_filter(encoded: str | None) -> Any:
    """A derived channel's `filter=<base64 JMESPath>` qualifier, compiled (None if absent)."""
    if encoded is None:
        return None
    try:
        import jmespath
    except ImportError as exc:  # an optional dependency: say so rather than deliver nothing
        raise AblyError(40000, "Filtered channels need the jmespath package installed") from exc
    try:
        expression = base64.b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
        return jmespath.compile(expression)
    except (ValueError, UnicodeDecodeError, jmespath.exceptions.JMESPathError) as exc:
        raise AblyError(40000, f"Invalid channel filter expression: {exc}", 400) from exc


def _filter_matches(attachment: Attachment, item: Frame) -> bool:
    """Ably evaluates a filter against the message's name, clientId and extras.headers."""
    extras = item.get("extras") if isinstance(item.get("extras"), dict) else {}
    context = {
        "name": item.get("name"),
        "clientId": item.get("clientId"),
        "headers": extras.get("headers") or {},
    }
    try:
        return bool(attachment.message_filter.search(context))
    except Exception:  # a type error inside the expression: the message simply does not match
        return False


def message_size(message: Frame) -> int:
    """Ably's message size: data + name + clientId + extras (JSON), in bytes."""
    size = 0
    data = message.get("data")
    if isinstance(data, bytes | bytearray):
        size += len(data)
    elif isinstance(data, str):
        size += len(data.encode())
    elif data is not None:
        size += len(json.dumps(data, separators=(",", ":")).encode())
    for key in ("name", "clientId"):
        if isinstance(message.get(key), str):
            size += len(message[key].encode())
    if message.get("extras"):
        size += len(json.dumps(message["extras"], separators=(",", ":"), default=str).encode())
    return size


def _normalise_data(item: Frame) -> Frame:
    """Turn base64-carried binary into bytes so appends and format conversion work on one form."""
    encoding = item.get("encoding")
    if (
        isinstance(encoding, str)
        and encoding.split("/")[-1] == "base64"
        and isinstance(item.get("data"), str)
    ):
        try:
            item["data"] = base64.b64decode(item["data"], validate=True)
        except ValueError as exc:
            raise AblyError(40003, "Message data is not valid base64") from exc
        remaining = encoding.rsplit("/", 1)[0] if "/" in encoding else ""
        item["encoding"] = remaining or None
    if not item.get("encoding"):
        item.pop("encoding", None)
    return item


def _clean(frame: Frame) -> Frame:
    return {key: value for key, value in frame.items() if value is not None}


class Hub:
    """Every app, connection and channel of one stand-in process."""

    def __init__(
        self,
        config: HubConfig | None = None,
        *,
        clock: Clock,
        ids: IdSource = random_id,
        keyring: auth.Keyring | None = None,
    ) -> None:
        self.config = config or HubConfig()
        self.clock = clock
        self.ids = ids
        self.keyring = keyring or auth.Keyring()
        if keyring is None:
            for key in self.config.keys:
                key_name = key.split(":", 1)[0]
                capability = self.config.key_capabilities.get(key_name)
                api_key = auth.ApiKey.parse(
                    key, auth.Capability.parse(capability) if capability else None
                )
                if key_name in self.config.revocable_token_keys:
                    api_key = dataclasses.replace(api_key, revocable_tokens=True)
                self.keyring.add(api_key)
        self.connections: dict[str, Connection] = {}
        self.connections_by_key: dict[str, Connection] = {}
        # Keys of discarded or superseded connections (bounded): resuming with one is "expired"
        # (80008), any other unknown key is "invalid" (80018).
        self.expired_keys: dict[str, None] = {}
        self.transports: dict[int, Connection | None] = {}
        self.channels: dict[tuple[str, str], Channel] = {}  # by (appId, name)
        # Namespace rules of apps created through POST /apps; other apps use the config's.
        self.app_namespaces: dict[str, dict[str, NamespaceRule]] = {}
        # Per app: minute interval id -> flat stats entries (from POST /stats fixtures).
        self.app_stats: dict[str, dict[str, stats.Entries]] = {}
        # Push admin registries, and the namespaces with push enabled (from POST /apps).
        self.push_registries: dict[str, push.PushRegistry] = {}
        self.push_namespaces: dict[str, set[str]] = {}
        self._outputs: dict[int, Outbox] = {}
        self._timers: list[tuple[int, int, Timer]] = []
        self._timer_seq = itertools.count()
        self._transport_seq = itertools.count(1)
        self._serial_seq = itertools.count()
        self._synthetic_seq = itertools.count()
        self.on_timer_scheduled: Callable[[int], None] | None = None

    # ---------------------------------------------------------------- time, ids, timers, output

    def now(self) -> int:
        return self.clock()

    def next_serial(self) -> str:
        """Unique, lexicographically ordered by time: `<ms>-<counter>@<server>`."""
        return f"{self.now():014d}-{next(self._serial_seq):09d}@{self.config.server_id}"

    def schedule(self, delay_ms: int, callback: Callable[[], None]) -> Timer:
        timer = Timer(self.now() + max(0, delay_ms), callback)
        earliest = self._timers[0][0] if self._timers else None
        heapq.heappush(self._timers, (timer.due, next(self._timer_seq), timer))
        if self.on_timer_scheduled and (earliest is None or timer.due < earliest):
            self.on_timer_scheduled(timer.due)
        return timer

    def next_timer_due(self) -> int | None:
        while self._timers and self._timers[0][2].cancelled:
            heapq.heappop(self._timers)
        return self._timers[0][0] if self._timers else None

    def run_due_timers(self) -> None:
        now = self.now()
        while self._timers and self._timers[0][0] <= now:
            _, _, timer = heapq.heappop(self._timers)
            if not timer.cancelled:
                timer.cancelled = True
                timer.callback()

    def take_outputs(self) -> dict[int, Outbox]:
        outputs, self._outputs = self._outputs, {}
        return outputs

    def _send(self, connection: Connection, frame: Frame) -> None:
        if connection.transport_id is not None:
            self._send_transport(connection.transport_id, frame)

    def _send_transport(self, transport_id: int, frame: Frame, *, close: bool = False) -> None:
        outbox = self._outputs.setdefault(transport_id, Outbox())
        outbox.frames.append(frame)
        outbox.close = outbox.close or close

    def _fatal(self, transport_id: int, error: AblyError) -> None:
        self._send_transport(
            transport_id, {"action": Action.ERROR, "error": error.to_dict()}, close=True
        )

    # ---------------------------------------------------------------- connection lifecycle

    def open_transport(self, query: dict[str, str], headers: dict[str, str] | None = None) -> int:
        """A WebSocket opened with these query params: authenticate, connect or resume."""
        transport_id = next(self._transport_seq)
        self.transports[transport_id] = None
        headers = {k.lower(): v for k, v in (headers or {}).items()}
        wire_format = "msgpack" if query.get("format") == "msgpack" else "json"
        try:
            credentials = self._authenticate_query(query, headers)
            requested_client_id = query.get("clientId") or None
            client_id, wildcard = self._effective_client_id(credentials, requested_client_id)
        except AblyError as error:
            log.info("connection refused: %s (%s)", error.message, error.code)
            self._fatal(transport_id, error)
            return transport_id

        resume_key = query.get("resume") or query.get("recover")
        resume_error: AblyError | None = None
        if resume_key:
            existing = self.connections_by_key.get(resume_key)
            if existing is not None and existing.credentials.app_id == credentials.app_id:
                if existing.client_id != client_id and existing.identified:
                    self._fatal(
                        transport_id,
                        AblyError(40102, "Resume with a different clientId is not allowed"),
                    )
                    return transport_id
                self._resume(existing, transport_id, credentials, query)
                return transport_id
            if resume_key in self.expired_keys:
                resume_error = AblyError(
                    80008, "Unable to recover connection (connection expired)", 400
                )
            else:
                # Never issued by this server (or too long ago to remember): Ably cannot even
                # parse such a key.
                resume_error = AblyError(80018, "Invalid connection key", 400)

        connection = Connection(
            id=self.ids(),
            key="",
            credentials=credentials,
            client_id=client_id,
            wildcard=wildcard,
            echo=query.get("echo", "true") != "false",
            wire_format=wire_format,
            transport_id=transport_id,
            presence_leave_delay_ms=self._int_param(
                query, "remainPresentFor", self.config.presence_leave_delay_ms, maximum=60_000
            ),
            append_rollup_window_ms=self._int_param(
                query,
                "appendRollupWindow",
                self.config.append_rollup_window_ms,
                maximum=self.config.max_append_rollup_window_ms,
            ),
        )
        connection.key = f"{self.ids()}!{connection.id}"
        self.connections[connection.id] = connection
        self.connections_by_key[connection.key] = connection
        self.transports[transport_id] = connection
        self._schedule_expiry(connection)
        self._send_connected(connection, resume_error)
        log.info(
            "connected id=%s clientId=%s auth=%s format=%s%s",
            connection.id,
            client_id,
            credentials.kind,
            wire_format,
            f" (resume failed: {resume_error.code})" if resume_error else "",
        )
        return transport_id

    @staticmethod
    def _int_param(query: dict[str, str], name: str, default: int, *, maximum: int) -> int:
        raw = query.get(name)
        if raw is None:
            return default
        try:
            return max(0, min(int(raw), maximum))
        except ValueError:
            return default

    def _authenticate_query(
        self, query: dict[str, str], headers: dict[str, str]
    ) -> auth.Credentials:
        token = query.get("access_token") or query.get("accessToken")
        basic = query.get("key")
        authorization = headers.get("authorization", "")
        if not token and not basic and authorization.lower().startswith("bearer "):
            token = _decode_bearer(authorization[7:].strip())
        if not token and not basic:
            raise AblyError(40101, "No authentication information provided", 401)
        try:
            return auth.authenticate(
                self.keyring,
                now_ms=self.now(),
                basic=None if token else basic,
                token=token,
                requested_client_id=query.get("clientId") or None,
            )
        except AblyError as error:
            # REST says 40400 for a key it does not know; a realtime connect with one is
            # refused as invalid credentials (the connection FAILS with 40101).
            if error.code == 40400 and not token:
                raise AblyError(40101, f"Invalid credentials: {error.message}", 401) from error
            raise

    @staticmethod
    def _effective_client_id(
        credentials: auth.Credentials, requested: str | None
    ) -> tuple[str | None, bool]:
        if credentials.kind == "basic":
            return (requested or credentials.client_id), True
        if credentials.client_id == "*":
            return requested, True
        if requested and credentials.client_id and requested != credentials.client_id:
            raise AblyError(
                40102,
                f"Incompatible clientId: token is for {credentials.client_id!r}, "
                f"connection requested {requested!r}",
                401,
            )
        if requested and not credentials.client_id:
            raise AblyError(40102, "An anonymous token cannot connect with a clientId", 401)
        return credentials.client_id, False

    def _send_connected(self, connection: Connection, error: AblyError | None = None) -> None:
        reported_client_id = connection.client_id
        if (
            reported_client_id is None
            and connection.wildcard
            and connection.credentials.kind != "basic"
        ):
            reported_client_id = "*"  # a wildcard token that has not chosen an identity
        details = {
            "connectionKey": connection.key,
            "clientId": reported_client_id,
            "maxIdleInterval": self.config.max_idle_interval_ms,
            "connectionStateTtl": self.config.connection_state_ttl_ms,
            "maxMessageSize": self.config.max_message_size,
            "maxFrameSize": self.config.max_frame_size,
            "maxInboundRate": self.config.max_inbound_rate,
            "serverId": self.config.server_id,
            "siteCode": "local",
        }
        frame: Frame = {
            "action": Action.CONNECTED,
            "connectionId": connection.id,
            "connectionKey": connection.key,
            "connectionDetails": _clean(details),
        }
        if error is not None:
            frame["error"] = error.to_dict()
        self._send(connection, frame)
        self._schedule_heartbeat(connection)

    def _schedule_heartbeat(self, connection: Connection) -> None:
        if connection.heartbeat_timer:
            connection.heartbeat_timer.cancel()
        if connection.transport_id is None or not self.config.max_idle_interval_ms:
            return

        def beat() -> None:
            self._send(connection, {"action": Action.HEARTBEAT})
            self._schedule_heartbeat(connection)

        connection.heartbeat_timer = self.schedule(self.config.max_idle_interval_ms, beat)

    def _schedule_expiry(self, connection: Connection) -> None:
        for timer in (
            connection.expiry_timer,
            connection.reauth_timer,
            connection.revocation_timer,
        ):
            if timer:
                timer.cancel()
        connection.expiry_timer = connection.reauth_timer = connection.revocation_timer = None
        revocation_at = self.keyring.next_revocation_at(connection.credentials, now_ms=self.now())
        if revocation_at is not None:
            connection.revocation_timer = self.schedule(
                revocation_at - self.now(), self.enforce_revocations
            )
        expires = connection.credentials.expires_ms
        if expires is None:
            return

        def ask_for_reauth() -> None:
            # As Ably does ~30 s ahead of expiry: a client that can renew does so in place.
            # Moot once the token has expired (the clock may jump): the expiry handles that.
            if connection.transport_id is not None and self.now() < expires:
                self._send(connection, {"action": Action.AUTH})

        # A token that is nearly dead on arrival just expires (40142): asking for a renewal a
        # moment before it would race the expiry itself.
        if expires - self.now() > self.config.reauth_min_lifetime_ms:
            connection.reauth_timer = self.schedule(
                expires - self.config.reauth_ahead_ms - self.now(), ask_for_reauth
            )

        def expire() -> None:
            if connection.transport_id is None:
                return
            log.info("token expired id=%s", connection.id)
            transport_id = connection.transport_id
            self._send_transport(
                transport_id,
                {
                    "action": Action.DISCONNECTED,
                    "error": AblyError(40142, "Token expired", 401).to_dict(),
                },
                close=True,
            )
            self.transport_lost(transport_id)

        connection.expiry_timer = self.schedule(expires - self.now(), expire)

    def revoke_tokens(
        self, key_name: str, body: Any, *, credentials: auth.Credentials
    ) -> dict[str, Any]:
        """`POST /keys/{key_name}/revokeTokens`: record the revocations (Ably's BatchResult back)
        and act on live connections at once: those a revocation covers now are disconnected
        with 40141; with `allowReauthMargin`, those it will cover are asked to renew first."""
        result = self.keyring.revoke_tokens(
            key_name, body, now_ms=self.now(), credentials=credentials
        )
        self.enforce_revocations(hint_pending=True)
        return result

    def enforce_revocations(self, *, hint_pending: bool = False) -> None:
        """Disconnect (40141) every live connection whose token a revocation now covers.

        `hint_pending` (right after a revocation with `allowReauthMargin`): a connection whose
        token a revocation will cover once the margin is over is asked to re-authenticate now
        (AUTH), as Ably does, so a client that can renew upgrades in place and never drops.
        """
        now = self.now()
        for connection in list(self.connections.values()):
            error = self.keyring.revocation_error(connection.credentials, now_ms=now)
            if (
                hint_pending
                and error is None
                and connection.transport_id is not None
                and self.keyring.next_revocation_at(connection.credentials, now_ms=now) is not None
            ):
                self._send(connection, {"action": Action.AUTH})
            if error is not None and connection.transport_id is not None:
                transport_id = connection.transport_id
                self._send_transport(
                    transport_id,
                    {"action": Action.DISCONNECTED, "error": error.to_dict()},
                    close=True,
                )
                self.transport_lost(transport_id)
                log.info("token revoked id=%s", connection.id)
            elif error is None and connection.credentials.kind != "basic":
                self._schedule_expiry(connection)

    def _resume(
        self,
        connection: Connection,
        transport_id: int,
        credentials: auth.Credentials,
        query: dict[str, str],
    ) -> None:
        if connection.transport_id is not None:
            # A client resuming while we still hold its old socket: that socket is dead to it.
            old = connection.transport_id
            self._send_transport(old, {"action": Action.DISCONNECTED}, close=True)
            self.transports.pop(old, None)
        for timer in (connection.leave_timer, connection.discard_timer):
            if timer:
                timer.cancel()
        connection.leave_timer = connection.discard_timer = None
        connection.transport_id = transport_id
        connection.credentials = credentials
        # Every resume/recover gets a fresh key (RTN16d): the superseded one now answers 80008,
        # so a second client holding it cannot take the connection back.
        self.connections_by_key.pop(connection.key, None)
        self._remember_expired_key(connection.key)
        connection.key = f"{self.ids()}!{connection.id}"
        self.connections_by_key[connection.key] = connection
        for attachment in connection.attachments.values():
            attachment.awaiting_reattach = True
        if "echo" in query:
            connection.echo = query["echo"] != "false"
        self.transports[transport_id] = connection
        self._schedule_expiry(connection)
        self._send_connected(connection)
        # A resume may bring a new token (a client renewing after 40141/40142): what it no
        # longer grants is detached, as on an in-place AUTH.
        self._apply_capability(connection)
        log.info("resumed id=%s", connection.id)

    def transport_lost(self, transport_id: int) -> None:
        """The socket closed without CLOSE: keep state for a resume, schedule presence leaves."""
        connection = self.transports.pop(transport_id, None)
        if connection is None or connection.transport_id != transport_id:
            return
        connection.transport_id = None
        if connection.heartbeat_timer:
            connection.heartbeat_timer.cancel()
        log.info("disconnected id=%s", connection.id)
        if any(
            cid == connection.id
            for channel in self.channels.values()
            for (cid, _) in channel.members
        ):
            connection.leave_timer = self.schedule(
                connection.presence_leave_delay_ms, lambda: self._expire_presence(connection)
            )
        connection.discard_timer = self.schedule(
            self.config.connection_state_ttl_ms, lambda: self._discard(connection)
        )

    def _expire_presence(self, connection: Connection) -> None:
        for channel in list(self.channels.values()):
            removed = self._remove_members(channel, connection, synthetic=True)
            if removed:
                connection.lost_members[channel.name] = removed

    def _discard(self, connection: Connection, *, reason: str = "expired") -> None:
        for timer in (
            connection.heartbeat_timer,
            connection.expiry_timer,
            connection.leave_timer,
            connection.discard_timer,
        ):
            if timer:
                timer.cancel()
        for channel in list(self.channels.values()):
            self._remove_members(channel, connection, synthetic=reason == "expired")
        for attachment in list(connection.attachments.values()):
            self._detach(connection, attachment)
        self.connections.pop(connection.id, None)
        self.connections_by_key.pop(connection.key, None)
        self._remember_expired_key(connection.key)
        log.info("connection %s id=%s", reason, connection.id)

    def _remember_expired_key(self, key: str) -> None:
        self.expired_keys[key] = None
        if len(self.expired_keys) > _EXPIRED_KEYS_KEPT:
            self.expired_keys.pop(next(iter(self.expired_keys)))

    # ---------------------------------------------------------------- inbound frames

    def receive_invalid(self, transport_id: int, error: AblyError) -> None:
        """An undecodable or oversize frame: tell the client why and close its transport."""
        log.info("bad frame on transport %s: %s", transport_id, error.message)
        self._fatal(transport_id, error)
        # A fatal ERROR fails the client's connection for good: nothing will resume it.
        connection = self.transports.pop(transport_id, None)
        if connection is not None and connection.transport_id == transport_id:
            connection.transport_id = None
            self._discard(connection, reason="failed")

    def receive(self, transport_id: int, frame: Frame) -> None:
        connection = self.transports.get(transport_id)
        if connection is None or connection.transport_id != transport_id:
            return
        action = frame.get("action")
        try:
            handler = self._handlers.get(action)
            if handler is None:
                raise AblyError(40000, f"Unsupported protocol action {action!r}")
            _validate_frame(frame)
            try:
                handler(self, connection, frame)
            except (TypeError, ValueError, KeyError, AttributeError) as exc:
                # Input the validation above did not anticipate: still the client's malformed
                # frame, not a server failure, but worth a traceback in the log.
                log.warning("malformed frame %r", frame, exc_info=True)
                raise AblyError(40000, f"Malformed protocol message: {exc}") from exc
        except AblyError as error:
            if isinstance(frame.get("channel"), str) and action in (Action.ATTACH, Action.DETACH):
                self._send(
                    connection,
                    {
                        "action": Action.ERROR,
                        "channel": frame["channel"],
                        "error": error.to_dict(),
                    },
                )
            elif isinstance(frame.get("msgSerial"), int) and action in (
                Action.MESSAGE,
                Action.PRESENCE,
                Action.ANNOTATION,
            ):
                self._nack(connection, frame["msgSerial"], error)
            else:
                self.receive_invalid(transport_id, error)

    def _on_heartbeat(self, connection: Connection, frame: Frame) -> None:
        reply: Frame = {"action": Action.HEARTBEAT}
        if frame.get("id") is not None:
            reply["id"] = frame["id"]
        self._send(connection, reply)

    def _on_disconnect(self, connection: Connection, frame: Frame) -> None:
        # The client is abandoning this transport on purpose and will resume on a new one.
        transport_id = connection.transport_id
        if transport_id is not None:
            self._outputs.setdefault(transport_id, Outbox()).close = True
            self.transport_lost(transport_id)

    def _on_close(self, connection: Connection, frame: Frame) -> None:
        transport_id = connection.transport_id
        if transport_id is not None:
            self._send_transport(transport_id, {"action": Action.CLOSED}, close=True)
            self.transports.pop(transport_id, None)
        connection.transport_id = None
        self._discard(connection, reason="closed")

    def _on_auth(self, connection: Connection, frame: Frame) -> None:
        token = (frame.get("auth") or {}).get("accessToken")
        transport_id = connection.transport_id
        assert transport_id is not None
        if not token:
            raise AblyError(40101, "AUTH without an accessToken", 401)
        credentials = auth.authenticate(self.keyring, now_ms=self.now(), token=token)
        client_id, wildcard = credentials.client_id, credentials.client_id == "*"
        if wildcard:
            client_id = connection.client_id
        if credentials.app_id != connection.credentials.app_id or (
            connection.identified and client_id != connection.client_id
        ):
            raise AblyError(40102, "Re-authentication must keep the same app and clientId", 401)
        connection.credentials = credentials
        connection.wildcard = wildcard
        if client_id and not connection.client_id:
            connection.client_id = client_id
        self._schedule_expiry(connection)
        self._send_connected(connection)
        self._apply_capability(connection)
        log.info("reauthenticated id=%s", connection.id)

    def _apply_capability(self, connection: Connection) -> None:
        """Re-grant every attachment's modes from the connection's (new) credentials."""
        for attachment in list(connection.attachments.values()):
            allowed = self._allowed_modes(connection, attachment.channel.name)
            # The new capability re-grants the modes: an upgrade adds (e.g. publish), a
            # downgrade removes them, and no access at all detaches the channel.
            attachment.modes = _granted_modes(attachment.requested_modes, allowed)
            if not allowed:
                self._detach(connection, attachment)
                self._send(
                    connection,
                    {
                        "action": Action.ERROR,
                        "channel": attachment.wire_name,
                        "error": AblyError(
                            40160,
                            f"Channel denied access based on the new capability: "
                            f"{attachment.channel.name}",
                            401,
                        ).to_dict(),
                    },
                )

    # ---------------------------------------------------------------- channels

    def _channel(self, app_id: str, name: str) -> Channel:
        channel = self.channels.get((app_id, name))
        if channel is None:
            rules = self.app_namespaces.get(app_id)
            if rules is None:
                rule = self.config.namespace_rule(name)
            else:
                namespace = name.split(":", 1)[0] if ":" in name else ""
                rule = rules.get(namespace) or NamespaceRule(namespace)
            channel = Channel(
                app_id=app_id,
                name=name,
                persisted=rule.persisted or rule.mutable_messages,
                mutable=rule.mutable_messages,
                created_serial=self.next_serial(),
            )
            self.channels[(app_id, name)] = channel
        return channel

    def find_channel(self, app_id: str, name: str) -> Channel | None:
        return self.channels.get((app_id, name))

    def create_app(self, spec: Any) -> None:
        """POST /apps: keys, namespace rules and seeded presence members of an `apps.AppSpec`."""
        for key in spec.api_keys:
            self.keyring.add(key)
        self.app_namespaces[spec.app_id] = {
            rule.id: NamespaceRule(
                rule.id,
                mutable_messages=rule.mutable_messages,
                persisted=rule.effectively_persisted,
            )
            for rule in spec.namespaces
        }
        self.push_namespaces[spec.app_id] = {
            rule.id for rule in spec.namespaces if rule.push_enabled
        }
        now = self.now()
        for fixture in spec.channels:
            channel = self._channel(spec.app_id, fixture.name)
            for index, member in enumerate(fixture.presence):
                item = _clean(
                    {
                        "id": f"fixture{next(self._synthetic_seq)}:0:{index}",
                        "action": PresenceAction.PRESENT,
                        "clientId": member.client_id,
                        "connectionId": "fixture",
                        "data": member.data,
                        "encoding": member.encoding,
                        "timestamp": now,
                    }
                )
                channel.members[("fixture", member.client_id)] = item
                # Ably records seeded members as having entered, so presence history shows them.
                channel.presence_history.append({**item, "action": PresenceAction.ENTER})
        log.info("app created id=%s keys=%d", spec.app_id, len(spec.api_keys))

    def remove_app(self, app_id: str) -> None:
        """DELETE /apps/{appId}: its connections are closed and its channels forgotten."""
        for connection in list(self.connections.values()):
            if connection.credentials.app_id == app_id:
                if connection.transport_id is not None:
                    self._fatal(
                        connection.transport_id, AblyError(40400, "The app was deleted", 404)
                    )
                    self.transports.pop(connection.transport_id, None)
                    connection.transport_id = None
                self._discard(connection, reason="closed")
        for key in [key for key in self.channels if key[0] == app_id]:
            del self.channels[key]
        self.app_namespaces.pop(app_id, None)
        self.app_stats.pop(app_id, None)
        self.push_registries.pop(app_id, None)
        self.push_namespaces.pop(app_id, None)
        self.keyring.remove_app(app_id)

    def _allowed_modes(self, connection: Connection, name: str) -> int:
        capability = connection.credentials.capability
        modes = 0
        if name.startswith("[meta]"):
            if capability.allows(name, "subscribe") or capability.allows(name, "channel-metadata"):
                modes |= Flag.SUBSCRIBE
            return modes
        if capability.allows(name, "publish"):
            modes |= Flag.PUBLISH
        if capability.allows(name, "subscribe"):
            modes |= Flag.SUBSCRIBE | Flag.PRESENCE_SUBSCRIBE
        if capability.allows(name, "presence"):
            modes |= Flag.PRESENCE
        if capability.allows(name, "annotation-publish"):
            modes |= Flag.ANNOTATION_PUBLISH
        if capability.allows(name, "annotation-subscribe"):
            modes |= Flag.ANNOTATION_SUBSCRIBE
        if capability.allows(name, "object-publish"):
            modes |= Flag.OBJECT_PUBLISH
        if capability.allows(name, "object-subscribe"):
            modes |= Flag.OBJECT_SUBSCRIBE
        return modes

    def _on_attach(self, connection: Connection, frame: Frame) -> None:
        wire_name = frame.get("channel")
        if not isinstance(wire_name, str) or not wire_name:
            raise AblyError(40010, "ATTACH without a channel name", 400)
        name, name_params = parse_channel_name(wire_name)
        check_channel_name(name)
        message_filter = _compile_filter(name_params.pop("filter", None))
        allowed = self._allowed_modes(connection, name)
        if not allowed:
            raise AblyError(
                40160, f"Channel denied access based on given capability; channelId = {name}", 401
            )
        params = {
            key: value
            for key, value in {
                **name_params,
                **{str(k): str(v) for k, v in (frame.get("params") or {}).items()},
            }.items()
            if key in _KNOWN_PARAMS
        }
        rewind = self._parse_rewind(params.get("rewind"))
        occupancy = params.get("occupancy")
        if occupancy is not None:
            if occupancy != "metrics" and not occupancy.startswith("metrics."):
                raise AblyError(40003, f"Invalid occupancy param {occupancy!r}: use metrics", 400)
            if not connection.credentials.capability.allows(name, "channel-metadata"):
                raise AblyError(
                    40160, f"Inband occupancy needs the channel-metadata capability on {name}", 401
                )
        existing = connection.attachments.get(wire_name)
        if (
            existing is None
            and len(connection.attachments) >= self.config.max_channels_per_connection
        ):
            raise AblyError(
                90021,
                f"Maximum number of channels per connection "
                f"({self.config.max_channels_per_connection}) exceeded",
                400,
            )
        # `params.modes` takes precedence over mode flags on the ATTACH.
        requested = (
            modes_from_param(params["modes"])
            if params.get("modes")
            else (frame.get("flags") or 0) & MODE_FLAGS
        )
        modes = _granted_modes(requested, allowed)
        if requested and not modes:
            raise AblyError(40160, f"Requested channel modes not permitted on {name}", 401)
        channel = self._channel(connection.credentials.app_id, name)
        self._flush_appends(channel)
        was_empty = not channel.attachments
        attachment = existing or Attachment(wire_name, channel, modes, params)
        attachment.modes = modes
        attachment.params = params
        attachment.delta_base = None
        attachment.message_filter = message_filter
        attachment.requested_modes = requested
        connection.attachments[wire_name] = attachment
        primary = channel.attachments.setdefault(connection.id, attachment)
        if primary is not attachment:
            channel.multi.add(connection.id)

        flags = modes
        backlog: list[Frame] = []
        error: AblyError | None = None
        channel_serial = frame.get("channelSerial") or (
            existing.position if existing is not None and existing.awaiting_reattach else None
        )
        attachment.awaiting_reattach = False
        if channel_serial:
            if channel_serial >= channel.evicted_upto:
                flags |= Flag.RESUMED
                for event in channel.events:
                    if event.serial > channel_serial:
                        delivered = self._frame_for(event, connection, attachment)
                        if delivered is not None:
                            backlog.append(delivered)
            else:
                error = AblyError(90003, "Unable to recover channel (messages expired)", 404)
        elif existing is not None:
            flags |= Flag.RESUMED
        elif rewind is not None and not (frame.get("flags") or 0) & Flag.ATTACH_RESUME:
            # An attach that claims to resume an existing attachment is not a fresh start.
            backlog = self._rewind_frames(channel, attachment, rewind)
        if backlog:
            flags |= Flag.HAS_BACKLOG
        if channel.members and modes & Flag.PRESENCE_SUBSCRIBE:
            flags |= Flag.HAS_PRESENCE
        attachment.position = channel.last_serial
        attached: Frame = {
            "action": Action.ATTACHED,
            "channel": wire_name,
            "channelSerial": channel.last_serial,
            "flags": flags,
        }
        if params:
            attached["params"] = params
        if error:
            attached["error"] = error.to_dict()
        self._send(connection, attached)
        for delivered in backlog:
            self._send(connection, delivered)
        if flags & Flag.HAS_PRESENCE:
            self._send_sync(connection, attachment)
        lost = connection.lost_members.pop(name, None)
        if lost:
            self._reenter(connection, channel, lost)
        if was_empty:
            self._lifecycle(channel, "channel.opened")
        self._occupancy_changed(channel)

    def _parse_rewind(self, value: str | None) -> tuple[str, int] | None:
        if value is None:
            return None
        value = value.strip()
        if value.isdigit():
            return ("count", min(int(value), self.config.rewind_max_messages))
        match = _REWIND_TIME.match(value)
        if match:
            amount, unit = int(match.group(1)), match.group(2)
            return ("time", amount * {"s": 1000, "m": 60_000, "h": 3_600_000}[unit])
        raise AblyError(40003, f"Invalid rewind value {value!r}: use a count or e.g. 10s, 2m", 400)

    def _rewind_frames(
        self, channel: Channel, attachment: Attachment, rewind: tuple[str, int]
    ) -> list[Frame]:
        stored = self._retained_messages(channel)
        kind, amount = rewind
        if kind == "count":
            selected = stored[-amount:] if amount else []
        else:
            cutoff = self.now() - amount
            selected = [m for m in stored if m.message["timestamp"] >= cutoff]
            selected = selected[-self.config.rewind_max_messages :]
        frames = []
        for stored_message in selected:
            message = dict(stored_message.message)
            attachment.seen.add(message["serial"])
            frames.append(
                {
                    "action": Action.MESSAGE,
                    "channel": attachment.wire_name,
                    "id": message["id"],
                    "connectionId": message.get("connectionId") or None,
                    "timestamp": message["timestamp"],
                    "messages": [message],
                }
            )
            frames[-1] = _clean(frames[-1])
            if attachment.wants_deltas:
                frames[-1]["messages"] = self._delta_items(attachment, frames[-1]["messages"])
        return frames

    @staticmethod
    def _delta_items(attachment: Attachment, items: list[Frame]) -> list[Frame]:
        """Ably's `delta=vcdiff`: each message after the first is sent as a VCDIFF delta of its
        payload against the previous message's, marked `extras.delta.from` = that message's id.
        """
        out = []
        for item in items:
            data = item.get("data")
            payload = (
                data.encode()
                if isinstance(data, str)
                else bytes(data)
                if isinstance(data, bytes | bytearray)
                else None
            )
            base = attachment.delta_base
            # Appends stay fragments; an empty base cannot anchor a delta (ably-python refuses).
            if (
                payload is not None
                and base is not None
                and base[1]
                and item.get("action") != MessageAction.APPEND
            ):
                encoding = item.get("encoding")
                suffix = "utf-8/vcdiff" if isinstance(data, str) else "vcdiff"
                item = {
                    **item,
                    "data": vcdiff.encode(base[1], payload),
                    "encoding": f"{encoding}/{suffix}" if encoding else suffix,
                    "extras": {
                        **(item.get("extras") or {}),
                        "delta": {"from": base[0], "format": "vcdiff"},
                    },
                }
            out.append(item)
            attachment.delta_base = (
                (item["id"], payload) if payload is not None and item.get("id") else None
            )
        return out

    def _on_detach(self, connection: Connection, frame: Frame) -> None:
        wire_name = frame.get("channel")
        attachment = connection.attachments.get(wire_name)
        if attachment is not None:
            self._detach(connection, attachment)
        self._send(connection, {"action": Action.DETACHED, "channel": wire_name})

    def _detach(self, connection: Connection, attachment: Attachment) -> None:
        channel = attachment.channel
        connection.attachments.pop(attachment.wire_name, None)
        remaining = [a for a in connection.attachments.values() if a.channel is channel]
        if remaining:
            channel.attachments[connection.id] = remaining[0]
            if len(remaining) == 1:
                channel.multi.discard(connection.id)
        else:
            channel.attachments.pop(connection.id, None)
            channel.multi.discard(connection.id)
            self._remove_members(channel, connection, synthetic=False)
            if not channel.attachments:
                self._lifecycle(channel, "channel.closed")
            self._occupancy_changed(channel)

    # ---------------------------------------------------------------- delivery

    def _broadcast(self, channel: Channel, event: ChannelEvent) -> None:
        channel.events.append(event)
        self._prune(channel)
        # Recipients that get identical frames share one dict, so the adapter encodes it once
        # per wire format however many subscribers there are.
        shared: dict[tuple[Any, ...], Frame] = {}
        for connection_id, primary in list(channel.attachments.items()):
            connection = self.connections.get(connection_id)
            if connection is None or connection.transport_id is None:
                continue
            targets = (
                [a for a in connection.attachments.values() if a.channel is channel]
                if connection_id in channel.multi
                else [primary]
            )
            for attachment in targets:
                if attachment.awaiting_reattach:
                    continue
                attachment.position = event.serial
                delivered = self._frame_for(event, connection, attachment, shared)
                if delivered is not None:
                    self._send(connection, delivered)

    def _frame_for(
        self,
        event: ChannelEvent,
        connection: Connection,
        attachment: Attachment,
        shared: dict[tuple[Any, ...], Frame] | None = None,
    ) -> Frame | None:
        if event.action == Action.MESSAGE and attachment.message_filter is not None:
            items = [item for item in event.items if _filter_matches(attachment, item)]
            if not items:
                return None
            if len(items) != len(event.items):
                event = ChannelEvent(
                    serial=event.serial,
                    timestamp=event.timestamp,
                    action=event.action,
                    frame_id=event.frame_id,
                    connection_id=event.connection_id,
                    items=items,
                    full_items=event.full_items,
                )
                shared = None  # a per-filter subset: never the frame other recipients share
        if event.action == Action.MESSAGE and attachment.wants_deltas:
            frame = self._frame_for_all(event, connection, attachment, None)
            if frame is not None:
                frame = {**frame, "messages": self._delta_items(attachment, frame["messages"])}
            return frame
        return self._frame_for_all(event, connection, attachment, shared)

    def _frame_for_all(
        self,
        event: ChannelEvent,
        connection: Connection,
        attachment: Attachment,
        shared: dict[tuple[Any, ...], Frame] | None,
    ) -> Frame | None:
        variant: tuple[bool, ...] = ()
        if event.action == Action.ANNOTATION:
            if not attachment.modes & Flag.ANNOTATION_SUBSCRIBE:
                return None
            items = event.items
        elif event.action == Action.PRESENCE:
            if not attachment.modes & Flag.PRESENCE_SUBSCRIBE:
                return None
            items = event.items
        else:
            if not attachment.modes & Flag.SUBSCRIBE:
                return None
            if event.connection_id == connection.id and (
                not connection.echo or attachment.params.get("echo") == "false"
            ):
                return None
            if not event.full_items:
                # No appends in this event: one frame fits every recipient. Only a mutable
                # channel can see appends later, so only there is "seen" worth remembering.
                if attachment.channel.mutable:
                    attachment.seen.update(item.get("serial") for item in event.items)
                return self._shared_frame(event, attachment, event.items, (), shared)
            full_mode = attachment.params.get("appendMode") == "full"
            choices = []
            for item in event.items:
                serial = item.get("serial")
                choices.append(
                    item.get("action") == MessageAction.APPEND
                    and (full_mode or serial not in attachment.seen)
                )
                if serial:
                    attachment.seen.add(serial)
            variant = tuple(choices)
            items = [
                event.full_items.get(item.get("serial"), item) if full else item
                for item, full in zip(event.items, choices, strict=True)
            ]
        return self._shared_frame(event, attachment, items, variant, shared)

    @staticmethod
    def _shared_frame(
        event: ChannelEvent,
        attachment: Attachment,
        items: list[Frame],
        variant: tuple[bool, ...],
        shared: dict[tuple[Any, ...], Frame] | None,
    ) -> Frame:
        cache_key = (attachment.wire_name, variant)
        if shared is not None and cache_key in shared:
            return shared[cache_key]
        key = {Action.PRESENCE: "presence", Action.ANNOTATION: "annotations"}.get(
            event.action, "messages"
        )
        frame = {
            "action": event.action,
            "channel": attachment.wire_name,
            "id": event.frame_id,
            "connectionId": event.connection_id,
            "timestamp": event.timestamp,
            "channelSerial": event.serial,
            key: items,
        }
        if shared is not None:
            shared[cache_key] = frame
        return frame

    def _prune(self, channel: Channel) -> None:
        # Resume replay needs events for as long as a connection may be away.
        keep_ms = max(self.config.connection_state_ttl_ms, self.config.ephemeral_retention_ms)
        cutoff = self.now() - keep_ms
        while channel.events and channel.events[0].timestamp < cutoff:
            channel.evicted_upto = channel.events.popleft().serial
        retention = (
            self.config.history_retention_ms
            if channel.persisted
            else self.config.ephemeral_retention_ms
        )
        history_cutoff = self.now() - retention
        drop = 0
        while drop < len(channel.messages) and channel.messages[drop].message["timestamp"] < (
            history_cutoff
        ):
            channel.by_serial.pop(channel.messages[drop].message["serial"], None)
            drop += 1
        if drop:
            del channel.messages[:drop]
        drop = 0
        while (
            drop < len(channel.presence_history)
            and channel.presence_history[drop]["timestamp"] < history_cutoff
        ):
            drop += 1
        if drop:
            del channel.presence_history[:drop]

    def _retained_messages(self, channel: Channel) -> list[StoredMessage]:
        self._prune(channel)
        return channel.messages

    # ---------------------------------------------------------------- publishing

    def _nack(self, connection: Connection, msg_serial: int, error: AblyError) -> None:
        self._send(
            connection,
            {"action": Action.NACK, "msgSerial": msg_serial, "count": 1, "error": error.to_dict()},
        )

    def _ack(self, connection: Connection, msg_serial: int, serials: list[str | None]) -> None:
        frame: Frame = {
            "action": Action.ACK,
            "msgSerial": msg_serial,
            "count": 1,
            "res": [{"serials": serials}],
        }
        connection.acked[msg_serial] = frame
        if len(connection.acked) > 1000:
            connection.acked.pop(next(iter(connection.acked)))
        self._send(connection, frame)

    def _check_rate(self, connection: Connection, count: int) -> None:
        limit = self.config.max_inbound_rate
        if not limit:
            return
        now = self.now()
        window = connection.recent_inbound
        while window and window[0] <= now - _RATE_WINDOW_MS:
            window.popleft()
        if len(window) + count > limit:
            raise AblyError(
                42911,
                f"Rate limit exceeded; request rejected (max {limit} inbound messages per "
                f"second per connection)",
                429,
            )
        window.extend([now] * count)

    def _inbound_serial(self, connection: Connection, frame: Frame) -> int:
        msg_serial = frame.get("msgSerial")
        if not isinstance(msg_serial, int) or isinstance(msg_serial, bool):
            raise AblyError(40000, "Protocol message has no msgSerial")
        return msg_serial

    def _on_message(self, connection: Connection, frame: Frame) -> None:
        msg_serial = self._inbound_serial(connection, frame)
        if msg_serial in connection.acked:
            # A message re-sent after a resume: acknowledge again, never publish twice.
            self._send(connection, connection.acked[msg_serial])
            return
        name, _ = parse_channel_name(frame.get("channel") or "")
        check_channel_name(name)
        attachment = connection.attachments.get(frame.get("channel"))
        if (
            attachment is not None
            and not attachment.modes & Flag.PUBLISH
            and connection.credentials.capability.allows(name, "publish")
        ):
            raise AblyError(
                40165, f"Unable to publish: the PUBLISH mode was not requested on {name}", 401
            )
        messages = frame.get("messages")
        if (
            not isinstance(messages, list)
            or not messages
            or not all(isinstance(m, dict) for m in messages)
        ):
            raise AblyError(40000, "MESSAGE must carry a non-empty list of messages")
        self._check_rate(connection, len(messages))
        if str((frame.get("params") or {}).get("_forceNack", "")).lower() == "true":
            # Ably's test hook (RSL1l1): refuse the publish as if the server NACKed it.
            raise AblyError(40099, "Publish rejected: _forceNack requested", 400)
        serials = self.publish(
            connection.credentials,
            name,
            messages,
            connection=connection,
            frame_id=f"{connection.id}:{msg_serial}",
        )
        self._ack(connection, msg_serial, serials)

    def publish(
        self,
        credentials: auth.Credentials,
        name: str,
        messages: list[Frame],
        *,
        connection: Connection | None = None,
        frame_id: str | None = None,
        client_id: str | None = None,
        wildcard: bool | None = None,
    ) -> list[str | None]:
        """Publish creates and/or mutations (realtime or REST); returns one serial per message."""
        check_channel_name(name)
        if name.startswith("[meta]"):
            raise AblyError(40160, "Publishing to a meta channel is not permitted", 401)
        if connection is not None:
            client_id, wildcard = connection.client_id, connection.wildcard
        elif wildcard is None:
            client_id, wildcard = _rest_identity(credentials, client_id)
        connection_id = connection.id if connection else None
        capability = credentials.capability
        now = self.now()
        channel = self._channel(credentials.app_id, name)
        prepared: list[Frame] = []
        for index, raw in enumerate(messages):
            validate_item(raw)
            message = {
                k: v for k, v in raw.items() if k not in ("size", "connectionKey") and v is not None
            }
            if connection is None and raw.get("connectionKey") is not None:
                # REST publish on behalf of a realtime connection (RSL1m/TM2): the message
                # carries that connection's id, and that connection's echo rules apply.
                on_behalf = self.connections_by_key.get(str(raw["connectionKey"]))
                if on_behalf is None or on_behalf.credentials.app_id != credentials.app_id:
                    raise AblyError(40006, "Invalid connectionKey", 400)
                connection_id = on_behalf.id
            _normalise_data(message)
            action = message.get("action", MessageAction.CREATE)
            if action in _MUTATIONS:
                if not message.get("serial"):
                    raise AblyError(40003, "A message update, delete or append needs a serial")
                self._check_mutation(channel, message, capability, client_id)
                operator = (message.get("version") or {}).get("clientId")
                if operator not in (None, client_id) and not wildcard:
                    # An identified client can only name itself as the operation's author.
                    raise AblyError(
                        40012,
                        f"Operation clientId {operator!r} does not match the client's clientId "
                        f"{client_id!r}",
                        400,
                    )
            else:
                if not capability.allows(name, "publish"):
                    raise AblyError(
                        40160, f"Unable to publish: no publish capability on {name}", 401
                    )
                if message.get("clientId") not in (None, client_id) and not wildcard:
                    raise AblyError(
                        40012,
                        f"Message clientId {message['clientId']!r} does not match the "
                        f"connection's clientId {client_id!r}",
                        400,
                    )
                if message_size(message) > self.config.max_message_size:
                    raise AblyError(
                        40009,
                        f"Message size exceeds the maximum of {self.config.max_message_size} bytes",
                        400,
                    )
            message["_index"] = index
            prepared.append(message)
        total = sum(message_size(m) for m in prepared if m.get("action") not in _MUTATIONS)
        if total > self.config.max_message_size:
            # The limit covers everything published at once, not each message alone.
            raise AblyError(
                40009,
                f"Messages published together total {total} bytes, more than the maximum "
                f"{self.config.max_message_size}",
                400,
            )

        claim = credentials.user_claim_for(name) if credentials.user_claims else None
        event_serial = self.next_serial()
        frame_id = frame_id or f"{self.ids()}:0"
        creates: list[Frame] = []
        serials: list[str | None] = []
        for message in prepared:
            index = message.pop("_index")
            action = message.get("action", MessageAction.CREATE)
            # A mutation without extras keeps the stored ones (shallow mixin), so only stamp the
            # claim where extras are being replaced anyway.
            if claim is not None and (action not in _MUTATIONS or "extras" in message):
                message["extras"] = {**(message.get("extras") or {}), "userClaim": claim}
            if action in _MUTATIONS:
                if creates:
                    self._emit_creates(channel, event_serial, frame_id, connection_id, now, creates)
                    creates = []
                    event_serial = self.next_serial()
                serials.append(self._mutate(channel, message, client_id, connection, frame_id))
                event_serial = self.next_serial()
                continue
            supplied_id = message.get("id")
            if supplied_id and supplied_id in channel.published_ids:
                # Idempotent publishing: a retried message with a client-supplied id is
                # acknowledged with its original serial and not delivered again.
                serials.append(channel.published_ids[supplied_id])
                continue
            message.setdefault("clientId", client_id)
            if message.get("clientId") is None:
                message.pop("clientId")
            message["id"] = supplied_id or f"{frame_id}:{index}"
            message["connectionId"] = connection_id
            message["timestamp"] = now
            message["serial"] = f"{event_serial}:{index:03d}"
            message["action"] = MessageAction.CREATE
            message = _clean(message)
            channel.messages.append(StoredMessage(event_serial, message, versions=[dict(message)]))
            channel.by_serial[message["serial"]] = channel.messages[-1]
            if supplied_id:
                channel.published_ids[supplied_id] = message["serial"]
                if len(channel.published_ids) > _IDEMPOTENCY_WINDOW:
                    channel.published_ids.pop(next(iter(channel.published_ids)))
            creates.append(message)
            serials.append(message["serial"])
        if creates:
            self._emit_creates(channel, event_serial, frame_id, connection_id, now, creates)
        return serials

    def _emit_creates(
        self,
        channel: Channel,
        event_serial: str,
        frame_id: str,
        connection_id: str | None,
        now: int,
        messages: list[Frame],
    ) -> None:
        self._flush_appends(channel)
        self._broadcast(
            channel,
            ChannelEvent(
                serial=event_serial,
                timestamp=now,
                action=Action.MESSAGE,
                frame_id=frame_id,
                connection_id=connection_id or "",
                items=[dict(m) for m in messages],
            ),
        )

    def _check_mutation(
        self,
        channel: Channel,
        message: Frame,
        capability: auth.Capability,
        client_id: str | None,
    ) -> None:
        if not channel.mutable:
            raise AblyError(
                93002,
                f"Message updates, deletes and appends are not enabled for channel "
                f"{channel.name} (enable mutable messages on its namespace)",
                400,
            )
        stored = channel.by_serial.get(message["serial"])
        if stored is None:
            raise AblyError(40400, f"Message {message['serial']} not found on {channel.name}", 404)
        verb = "delete" if message["action"] == MessageAction.DELETE else "update"
        if not capability.allows(channel.name, f"message-{verb}-any"):
            if not capability.allows(channel.name, f"message-{verb}-own"):
                raise AblyError(
                    40160, f"No message-{verb}-own/-any capability on {channel.name}", 401
                )
            if client_id is None or client_id == "*":
                raise AblyError(40166, "An unidentified client cannot modify its own messages", 401)
            if stored.message.get("clientId") != client_id:
                raise AblyError(
                    40160,
                    f"message-{verb}-own only allows changing your own messages on {channel.name}",
                    401,
                )
        if message["action"] == MessageAction.APPEND:
            current = stored.message.get("data")
            fragment = message.get("data")
            if fragment is None:
                return
            if current not in (None, "", b"") and type(current) is not type(fragment):
                raise AblyError(40003, "Cannot append data of a different type (string vs binary)")
            encodings = {stored.message.get("encoding"), message.get("encoding")} - {None}
            if encodings and (
                len(encodings) > 1 or any("json" in e or "cipher" in e for e in encodings)
            ):
                raise AblyError(40003, "Appends need matching plain (non-json, unencrypted) data")
            combined = dict(stored.message)
            combined["data"] = (current or type(fragment)()) + fragment
            if message_size(combined) > self.config.max_message_size:
                raise AblyError(
                    40009,
                    f"Appending would make the message larger than the maximum of "
                    f"{self.config.max_message_size} bytes",
                    400,
                )
        elif message_size(message) > self.config.max_message_size:
            raise AblyError(40009, "Message size exceeds the maximum", 400)

    def _mutate(
        self,
        channel: Channel,
        message: Frame,
        client_id: str | None,
        connection: Connection | None,
        frame_id: str,
    ) -> str:
        stored = channel.by_serial[message["serial"]]
        operation = message.get("version") or {}
        # The operation may name who performed it (checked in publish).
        operator = operation.get("clientId") or client_id
        now = self.now()
        version_serial = self.next_serial()
        version = _clean(
            {
                "serial": version_serial,
                "timestamp": now,
                "clientId": operator if operator != "*" else None,
                "description": operation.get("description"),
                "metadata": operation.get("metadata"),
            }
        )
        action = MessageAction(message["action"])
        current = dict(stored.message)
        if action == MessageAction.APPEND:
            fragment = message.get("data")
            if fragment is not None:
                base = current.get("data")
                current["data"] = (base if base is not None else type(fragment)()) + fragment
                if message.get("encoding"):
                    current["encoding"] = message["encoding"]
            current["action"] = MessageAction.UPDATE
        else:
            if "data" in message:
                current["data"] = message["data"]
                current.pop("encoding", None)
                if message.get("encoding"):
                    current["encoding"] = message["encoding"]
            current["action"] = action
        for key in ("name", "extras"):
            if key in message:
                current[key] = message[key]
        current["version"] = version
        stored.message = current
        if action != MessageAction.APPEND:
            stored.versions.append(dict(current))
        connection_id = connection.id if connection else ""
        if action == MessageAction.APPEND:
            fragment_item = _clean(
                {
                    "id": current["id"],
                    "serial": current["serial"],
                    "action": MessageAction.APPEND,
                    "name": current.get("name"),
                    "clientId": current.get("clientId"),
                    "timestamp": current["timestamp"],
                    "data": message.get("data"),
                    "encoding": message.get("encoding"),
                    "extras": current.get("extras"),
                    "version": version,
                }
            )
            window = connection.append_rollup_window_ms if connection else 0
            self._queue_append(channel, fragment_item, current, connection_id, frame_id, window)
        else:
            self._flush_appends(channel)
            self._broadcast(
                channel,
                ChannelEvent(
                    serial=self.next_serial(),
                    timestamp=now,
                    action=Action.MESSAGE,
                    frame_id=frame_id,
                    connection_id=connection_id,
                    items=[dict(current)],
                ),
            )
        return version_serial

    def _queue_append(
        self,
        channel: Channel,
        fragment: Frame,
        full: Frame,
        connection_id: str,
        frame_id: str,
        window_ms: int,
    ) -> None:
        """Ably's append rollup, leading edge: the first append of a burst goes out at once and
        opens a window; appends within it travel together as one append when it closes (so at
        most one delivery per window, and a lone append is never delayed)."""
        serial = fragment["serial"]
        pending = channel.pending_appends.get(serial)
        if pending is not None and pending.connection_id == connection_id:
            held = pending.fragment
            merged = dict(fragment)
            if held is not None:
                if held.get("data") is not None and fragment.get("data") is not None:
                    merged["data"] = held["data"] + fragment["data"]
                elif fragment.get("data") is None:
                    merged["data"] = held.get("data")
            pending.fragment = _clean(merged)
            pending.full = dict(full)
            pending.frame_id = frame_id
            return
        if pending is not None:
            self._flush_append(channel, serial)
        self._emit_append(channel, fragment, full, connection_id, frame_id)
        if window_ms > 0:
            self._open_rollup_window(channel, serial, full, connection_id, frame_id, window_ms)

    def _open_rollup_window(
        self,
        channel: Channel,
        serial: str,
        full: Frame,
        connection_id: str,
        frame_id: str,
        window_ms: int,
    ) -> None:
        timer = self.schedule(window_ms, lambda: self._close_rollup_window(channel, serial))
        channel.pending_appends[serial] = PendingAppend(
            None, dict(full), connection_id, frame_id, timer, window_ms
        )

    def _close_rollup_window(self, channel: Channel, serial: str) -> None:
        pending = channel.pending_appends.get(serial)
        if pending is None:
            return
        held = pending.fragment
        self._flush_append(channel, serial)
        if held is not None:
            # What was just sent starts the next window, keeping the one-per-window pace.
            self._open_rollup_window(
                channel,
                serial,
                pending.full,
                pending.connection_id,
                pending.frame_id,
                pending.window_ms,
            )

    def _flush_append(self, channel: Channel, serial: str) -> None:
        pending = channel.pending_appends.pop(serial, None)
        if pending is None:
            return
        pending.timer.cancel()
        if pending.fragment is not None:
            self._emit_append(
                channel, pending.fragment, pending.full, pending.connection_id, pending.frame_id
            )

    def _flush_appends(self, channel: Channel) -> None:
        for serial in list(channel.pending_appends):
            self._flush_append(channel, serial)

    def _emit_append(
        self, channel: Channel, fragment: Frame, full: Frame, connection_id: str, frame_id: str
    ) -> None:
        self._broadcast(
            channel,
            ChannelEvent(
                serial=self.next_serial(),
                timestamp=self.now(),
                action=Action.MESSAGE,
                frame_id=frame_id,
                connection_id=connection_id,
                items=[fragment],
                full_items={fragment["serial"]: full},
            ),
        )

    # ---------------------------------------------------------------- annotations

    def _on_annotation(self, connection: Connection, frame: Frame) -> None:
        msg_serial = self._inbound_serial(connection, frame)
        if msg_serial in connection.acked:
            self._send(connection, connection.acked[msg_serial])
            return
        name, _ = parse_channel_name(frame.get("channel") or "")
        items = frame.get("annotations")
        if not isinstance(items, list) or not items:
            raise AblyError(40000, "ANNOTATION must carry a non-empty list of annotations")
        self._check_rate(connection, len(items))
        serials = self.annotate(
            connection.credentials,
            name,
            items,
            connection=connection,
            frame_id=f"{connection.id}:{msg_serial}",
        )
        self._ack(connection, msg_serial, serials)

    def annotate(
        self,
        credentials: auth.Credentials,
        name: str,
        items: list[Any],
        *,
        connection: Connection | None = None,
        frame_id: str | None = None,
        client_id: str | None = None,
    ) -> list[str | None]:
        """Publish annotation creates/deletes (realtime or REST); each updates the annotated
        message's summary, which subscribers receive as a `message.summary`."""
        check_channel_name(name)
        if connection is not None:
            client_id, wildcard = connection.client_id, connection.wildcard
        else:
            client_id, wildcard = _rest_identity(credentials, client_id)
        if not credentials.capability.allows(name, "annotation-publish"):
            raise AblyError(40160, f"No annotation-publish capability on {name}", 401)
        channel = self._channel(credentials.app_id, name)
        if not channel.mutable:
            raise AblyError(
                93002,
                f"Annotations are not enabled for channel {name} (enable mutable messages, "
                "which includes annotations, on its namespace)",
                400,
            )
        now = self.now()
        frame_id = frame_id or f"{self.ids()}:0"
        prepared = []
        for index, raw in enumerate(items):
            if not isinstance(raw, dict):
                raise AblyError(40000, "Invalid annotation: each annotation must be an object")
            item = {k: v for k, v in raw.items() if v is not None}
            _normalise_data(item)
            message_serial = item.get("messageSerial")
            if not isinstance(message_serial, str) or not message_serial:
                raise AblyError(40003, "An annotation needs the messageSerial it annotates", 400)
            if not isinstance(item.get("type"), str) or not item["type"]:
                raise AblyError(40003, "An annotation needs a type, e.g. reaction:distinct.v1", 400)
            if item.get("action", annotations.CREATE) not in (
                annotations.CREATE,
                annotations.DELETE,
            ):
                raise AblyError(40003, f"Invalid annotation action {item.get('action')!r}", 400)
            if message_serial not in channel.by_serial:
                raise AblyError(40400, f"Message {message_serial} not found on {name}", 404)
            author = item.get("clientId", client_id)
            if author not in (None, client_id) and not wildcard:
                raise AblyError(
                    40012,
                    f"Annotation clientId {author!r} does not match the client's clientId "
                    f"{client_id!r}",
                    400,
                )
            item.update(
                {
                    "id": item.get("id") or f"{frame_id}:{index}",
                    "action": item.get("action", annotations.CREATE),
                    "serial": self.next_serial(),
                    "timestamp": now,
                }
            )
            if author is not None and author != "*":
                item["clientId"] = author
            else:
                item.pop("clientId", None)
            if connection is not None:
                item["connectionId"] = connection.id
            prepared.append(item)
        serials: list[str | None] = []
        for item in prepared:
            message_serial = item["messageSerial"]
            log_entries = channel.annotation_log.setdefault(message_serial, [])
            log_entries.append(item)
            serials.append(item["serial"])
            self._broadcast(
                channel,
                ChannelEvent(
                    serial=self.next_serial(),
                    timestamp=now,
                    action=Action.ANNOTATION,
                    frame_id=frame_id,
                    connection_id=connection.id if connection else "",
                    items=[dict(item)],
                ),
            )
            stored = channel.by_serial[message_serial]
            summary = {"summary": annotations.summarise(log_entries)}
            stored.message = {**stored.message, "annotations": summary}
            self._broadcast(
                channel,
                ChannelEvent(
                    serial=self.next_serial(),
                    timestamp=now,
                    action=Action.MESSAGE,
                    frame_id=frame_id,
                    connection_id="",
                    items=[{**stored.message, "action": MessageAction.SUMMARY}],
                ),
            )
        return serials

    def annotations_for(
        self,
        app_id: str,
        name: str,
        message_serial: str,
        *,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> tuple[list[Frame], str | None]:
        """A message's annotation events, oldest first, a page at a time (cursor: a serial)."""
        channel = self.channels.get((app_id, name))
        if channel is None or message_serial not in channel.by_serial:
            raise AblyError(40400, f"Message {message_serial} not found on {name}", 404)
        limit = self._limit(limit)
        selected = [
            a
            for a in channel.annotation_log.get(message_serial, [])
            if cursor is None or a["serial"] > cursor
        ]
        page = [dict(a) for a in selected[:limit]]
        return page, (page[-1]["serial"] if len(selected) > limit else None)

    # ---------------------------------------------------------------- presence

    def _on_presence(self, connection: Connection, frame: Frame) -> None:
        msg_serial = self._inbound_serial(connection, frame)
        if msg_serial in connection.acked:
            self._send(connection, connection.acked[msg_serial])
            return
        wire_name = frame.get("channel") or ""
        name, _ = parse_channel_name(wire_name)
        items = frame.get("presence")
        if not isinstance(items, list) or not items or not all(isinstance(i, dict) for i in items):
            raise AblyError(40000, "PRESENCE must carry a non-empty list of presence messages")
        if name.startswith("[meta]"):
            raise AblyError(40160, "Presence is not permitted on meta channels", 401)
        if not connection.credentials.capability.allows(name, "presence"):
            raise AblyError(
                40160, f"Unable to enter presence: no presence capability on {name}", 401
            )
        channel = self.channels.get((connection.credentials.app_id, name))
        if channel is None or connection.id not in channel.attachments:
            raise AblyError(90001, f"Channel {name} is not attached; attach before presence", 400)
        attachment = connection.attachments.get(wire_name) or channel.attachments[connection.id]
        if not attachment.modes & Flag.PRESENCE:
            raise AblyError(
                40165,
                f"Unable to enter presence: the PRESENCE mode was not requested on {name}",
                401,
            )
        # Presence is not counted against the per-connection message rate: Ably accepts bursts
        # of enterClient calls (its own presence tests enter 110 members on one connection).
        now = self.now()
        frame_id = f"{connection.id}:{msg_serial}"
        prepared = []
        for index, raw in enumerate(items):
            item = {k: v for k, v in raw.items() if v is not None and k != "size"}
            _normalise_data(item)
            client_id = item.get("clientId") or connection.client_id
            if not client_id or client_id == "*":
                raise AblyError(91000, "Unable to enter presence channel without a clientId", 400)
            if client_id != connection.client_id and not connection.wildcard:
                raise AblyError(
                    40012,
                    f"Presence clientId {client_id!r} does not match the connection's "
                    f"clientId {connection.client_id!r}",
                    400,
                )
            if message_size(item) > self.config.max_message_size:
                raise AblyError(40009, "Presence message size exceeds the maximum", 400)
            action = item.get("action", PresenceAction.ENTER)
            if action not in (
                PresenceAction.ENTER,
                PresenceAction.UPDATE,
                PresenceAction.LEAVE,
                PresenceAction.PRESENT,
            ):
                raise AblyError(40000, f"Invalid presence action {action!r}")
            if action == PresenceAction.PRESENT:
                action = PresenceAction.UPDATE
            claim = (
                connection.credentials.user_claim_for(name)
                if (connection.credentials.user_claims)
                else None
            )
            if claim is not None:
                item["extras"] = {**(item.get("extras") or {}), "userClaim": claim}
            item.update(
                {
                    "id": f"{frame_id}:{index}",
                    "action": action,
                    "clientId": client_id,
                    "connectionId": connection.id,
                    "timestamp": now,
                }
            )
            prepared.append(item)
        delivered = []
        for item in prepared:
            key = (connection.id, item["clientId"])
            if item["action"] == PresenceAction.LEAVE:
                previous = channel.members.pop(key, None)
                if previous is None:
                    continue
                if "data" not in item and "data" in previous:
                    item["data"] = previous["data"]
                    if "encoding" in previous:
                        item["encoding"] = previous["encoding"]
            else:
                if key not in channel.members and item["action"] == PresenceAction.UPDATE:
                    item["action"] = PresenceAction.ENTER
                elif key in channel.members and item["action"] == PresenceAction.ENTER:
                    # Entering again while present is an update of the member's data.
                    item["action"] = PresenceAction.UPDATE
                channel.members[key] = {**item, "action": PresenceAction.PRESENT}
            delivered.append(item)
        if delivered:
            self._emit_presence(channel, delivered, frame_id, connection.id)
        self._ack(connection, msg_serial, [None] * len(items))

    def _emit_presence(
        self, channel: Channel, items: list[Frame], frame_id: str, connection_id: str
    ) -> None:
        now = self.now()
        channel.presence_history.extend(dict(item) for item in items)
        self._broadcast(
            channel,
            ChannelEvent(
                serial=self.next_serial(),
                timestamp=now,
                action=Action.PRESENCE,
                frame_id=frame_id,
                connection_id=connection_id,
                items=items,
            ),
        )
        self._occupancy_changed(channel)

    def _occupancy_changed(self, channel: Channel) -> None:
        """Inband occupancy (`occupancy=metrics`): a `[meta]occupancy` message on each change.

        Not part of the channel's history or resume log, as in Ably; sent at once rather than
        debounced, which only makes it more up to date.
        """
        watchers = [
            (connection_id, attachment)
            for connection_id, attachment in channel.attachments.items()
            if "occupancy" in attachment.params and attachment.modes & Flag.SUBSCRIBE
        ]
        if not watchers:
            return
        now = self.now()
        metrics = self.occupancy(channel)
        for connection_id, attachment in watchers:
            connection = self.connections.get(connection_id)
            if connection is None or attachment.awaiting_reattach:
                continue
            message_id = f"{self.config.server_id}{next(self._synthetic_seq)}"
            attachment.delta_base = None  # the SDK's delta base is now this message
            self._send(
                connection,
                {
                    "action": Action.MESSAGE,
                    "channel": attachment.wire_name,
                    "id": message_id,
                    "timestamp": now,
                    "messages": [
                        {
                            "id": f"{message_id}:0",
                            "name": "[meta]occupancy",
                            "action": MessageAction.META,
                            "timestamp": now,
                            "data": {"metrics": metrics},
                        }
                    ],
                },
            )

    def _remove_members(
        self, channel: Channel, connection: Connection, *, synthetic: bool
    ) -> list[Frame]:
        removed = [
            member
            for (connection_id, _), member in list(channel.members.items())
            if connection_id == connection.id
        ]
        if not removed:
            return []
        now = self.now()
        leaves = []
        for member in removed:
            del channel.members[(connection.id, member["clientId"])]
            # An id not prefixed by the member's connectionId marks the leave as synthesised,
            # so the SDKs order it by timestamp rather than by msgSerial.
            leave_id = f"{self.config.server_id}{next(self._synthetic_seq)}:0:0"
            leave = {**member, "action": PresenceAction.LEAVE, "timestamp": now, "id": leave_id}
            leaves.append(leave)
        self._emit_presence(channel, leaves, leaves[0]["id"].rsplit(":", 1)[0], "")
        return removed

    def _reenter(self, connection: Connection, channel: Channel, members: list[Frame]) -> None:
        now = self.now()
        items = []
        for index, member in enumerate(members):
            item = {
                **member,
                "action": PresenceAction.ENTER,
                "timestamp": now,
                "id": f"{self.config.server_id}{next(self._synthetic_seq)}:0:{index}",
            }
            channel.members[(connection.id, member["clientId"])] = {
                **item,
                "action": PresenceAction.PRESENT,
            }
            items.append(item)
        self._emit_presence(channel, items, items[0]["id"].rsplit(":", 1)[0], connection.id)

    def _send_sync(self, connection: Connection, attachment: Attachment) -> None:
        members = list(attachment.channel.members.values())
        sync_id = f"sync{next(self._synthetic_seq)}"
        pages = [
            members[i : i + _SYNC_PAGE_SIZE] for i in range(0, len(members), _SYNC_PAGE_SIZE)
        ] or [[]]
        for number, page in enumerate(pages):
            cursor = "" if number == len(pages) - 1 else str(number + 1)
            self._send(
                connection,
                {
                    "action": Action.SYNC,
                    "channel": attachment.wire_name,
                    "channelSerial": f"{sync_id}:{cursor}",
                    "presence": [dict(member) for member in page],
                },
            )

    def _on_sync(self, connection: Connection, frame: Frame) -> None:
        attachment = connection.attachments.get(frame.get("channel"))
        if attachment is None:
            raise AblyError(90001, "SYNC requested for a channel that is not attached", 400)
        self._send_sync(connection, attachment)

    def _on_ignored(self, connection: Connection, frame: Frame) -> None:
        """ACTIVATE is deprecated and carries nothing to act on."""

    # ---------------------------------------------------------------- metadata

    def occupancy(self, channel: Channel) -> dict[str, int]:
        attachments = list(channel.attachments.values())

        def count(flag: int) -> int:
            return sum(1 for a in attachments if a.modes & flag)

        return {
            "connections": len(attachments),
            "publishers": count(Flag.PUBLISH),
            "subscribers": count(Flag.SUBSCRIBE),
            "presenceConnections": count(Flag.PRESENCE),
            "presenceMembers": len(channel.members),
            "presenceSubscribers": count(Flag.PRESENCE_SUBSCRIBE),
            "objectPublishers": count(Flag.OBJECT_PUBLISH),
            "objectSubscribers": count(Flag.OBJECT_SUBSCRIBE),
        }

    def channel_details(self, channel: Channel) -> Frame:
        return {
            "channelId": channel.name,
            "name": channel.name,
            "status": {
                "isActive": bool(channel.attachments),
                "occupancy": {"metrics": self.occupancy(channel)},
            },
        }

    def _lifecycle(self, channel: Channel, event_name: str) -> None:
        if channel.name.startswith("[meta]"):
            return
        meta = self._channel(channel.app_id, LIFECYCLE_CHANNEL)
        now = self.now()
        event_serial = self.next_serial()
        message = {
            "id": f"{self.config.server_id}{next(self._synthetic_seq)}:0:0",
            "name": event_name,
            "data": json.dumps(self.channel_details(channel), separators=(",", ":")),
            "encoding": "json",
            "timestamp": now,
            "serial": f"{event_serial}:000",
            "action": MessageAction.META,
        }
        # Metachannels cannot be published to, but their history can be read (and rewound).
        meta.messages.append(StoredMessage(event_serial, message, versions=[dict(message)]))
        meta.by_serial[message["serial"]] = meta.messages[-1]
        self._broadcast(
            meta,
            ChannelEvent(
                serial=event_serial,
                timestamp=now,
                action=Action.MESSAGE,
                frame_id=message["id"].rsplit(":", 1)[0],
                connection_id="",
                items=[message],
            ),
        )

    # ---------------------------------------------------------------- REST queries

    def history(
        self,
        app_id: str,
        name: str,
        *,
        start: int | None = None,
        end: int | None = None,
        limit: int | None = None,
        forwards: bool = False,
        until_serial: str | None = None,
        cursor: str | None = None,
    ) -> tuple[list[Frame], str | None]:
        """Messages (latest aggregate form) and the cursor of the next page, if any."""
        channel = self.channels.get((app_id, name))
        if channel is None:
            return [], None
        limit = self._limit(limit)
        selected = [
            stored
            for stored in self._retained_messages(channel)
            if (start is None or stored.message["timestamp"] >= start)
            and (end is None or stored.message["timestamp"] <= end)
            and (until_serial is None or stored.event_serial <= until_serial)
            and (
                cursor is None
                or (
                    stored.message["serial"] > cursor
                    if forwards
                    else stored.message["serial"] < cursor
                )
            )
        ]
        if not forwards:
            selected.reverse()
        page = selected[:limit]
        next_cursor = page[-1].message["serial"] if len(selected) > limit else None
        return [dict(stored.message) for stored in page], next_cursor

    def presence_history(
        self,
        app_id: str,
        name: str,
        *,
        start: int | None = None,
        end: int | None = None,
        limit: int | None = None,
        forwards: bool = False,
        cursor: str | None = None,
    ) -> tuple[list[Frame], str | None]:
        channel = self.channels.get((app_id, name))
        if channel is None:
            return [], None
        self._prune(channel)
        limit = self._limit(limit)
        indexed = list(enumerate(channel.presence_history))
        position = int(cursor) if cursor and cursor.isdigit() else None
        selected = [
            (i, item)
            for i, item in indexed
            if (start is None or item["timestamp"] >= start)
            and (end is None or item["timestamp"] <= end)
            and (position is None or (i > position if forwards else i < position))
        ]
        if not forwards:
            selected.reverse()
        page = selected[:limit]
        next_cursor = str(page[-1][0]) if len(selected) > limit else None
        return [dict(item) for _, item in page], next_cursor

    def presence_members(
        self,
        app_id: str,
        name: str,
        *,
        client_id: str | None = None,
        connection_id: str | None = None,
        limit: int | None = None,
    ) -> list[Frame]:
        channel = self.channels.get((app_id, name))
        if channel is None:
            return []
        members = [
            dict(member)
            for (conn_id, member_client_id), member in channel.members.items()
            if (client_id is None or member_client_id == client_id)
            and (connection_id is None or conn_id == connection_id)
        ]
        return members[: self._limit(limit)]

    def push_registry(self, app_id: str) -> push.PushRegistry:
        return self.push_registries.setdefault(app_id, push.PushRegistry())

    def push_enabled(self, app_id: str, channel: str) -> bool:
        namespace = channel.split(":", 1)[0] if ":" in channel else ""
        return namespace in self.push_namespaces.get(app_id, set())

    def record_stats(self, app_id: str, fixtures: Any) -> None:
        """POST /stats (the SDK test harnesses' fixtures): nested records, one per minute."""
        records = fixtures if isinstance(fixtures, list) else [fixtures]
        minutes = self.app_stats.setdefault(app_id, {})
        for fixture in records:
            minute = stats.minute_of(fixture)
            minutes[minute] = stats.flatten(fixture)

    def app_statistics(
        self,
        app_id: str,
        *,
        unit: str = "minute",
        start: int | None = None,
        end: int | None = None,
        limit: int | None = None,
        forwards: bool = False,
        cursor: str | None = None,
    ) -> tuple[list[Frame], str | None]:
        return stats.query(
            self.app_stats.get(app_id, {}),
            app_id=app_id,
            unit=unit,
            start=start,
            end=end,
            forwards=forwards,
            limit=self._limit(limit),
            cursor=cursor,
        )

    def get_message(self, app_id: str, name: str, serial: str) -> Frame:
        channel = self.channels.get((app_id, name))
        stored = channel.by_serial.get(serial) if channel else None
        if stored is None:
            raise AblyError(40400, f"Message {serial} not found on {name}", 404)
        return dict(stored.message)

    def message_versions(self, app_id: str, name: str, serial: str) -> list[Frame]:
        channel = self.channels.get((app_id, name))
        stored = channel.by_serial.get(serial) if channel else None
        if stored is None:
            raise AblyError(40400, f"Message {serial} not found on {name}", 404)
        return [dict(version) for version in stored.versions]

    def active_channels(self, app_id: str, prefix: str | None = None) -> list[Channel]:
        return [
            channel
            for (channel_app, name), channel in sorted(self.channels.items())
            if channel_app == app_id
            and channel.attachments
            and not name.startswith("[meta]")
            and (not prefix or name.startswith(prefix))
        ]

    def _limit(self, limit: int | None) -> int:
        if limit is None:
            return self.config.default_history_limit
        if limit < 1 or limit > self.config.max_history_limit:
            raise AblyError(
                40003, f"limit must be between 1 and {self.config.max_history_limit}", 400
            )
        return limit

    # ---------------------------------------------------------------- inspection helpers

    def connection_for_transport(self, transport_id: int) -> Connection | None:
        return self.transports.get(transport_id)

    def iter_connections(self) -> Iterable[Connection]:
        return list(self.connections.values())

    _handlers: dict[int, Callable[[Hub, Connection, Frame], None]] = {}


_FRAME_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "channel": (str,),
    "msgSerial": (int,),
    "flags": (int,),
    "channelSerial": (str,),
    "params": (dict,),
    "messages": (list,),
    "presence": (list,),
    "auth": (dict,),
}
_ITEM_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "name": (str,),
    "clientId": (str,),
    "id": (str,),
    "encoding": (str,),
    "serial": (str,),
    "action": (int,),
    "extras": (dict,),
    "version": (dict,),
    "data": (str, bytes, bytearray, dict, list),
}


def _validate_frame(frame: Frame) -> None:
    """Wrong field types get 40000 naming the field (null counts as absent)."""
    for key, types in _FRAME_FIELD_TYPES.items():
        value = frame.get(key)
        if value is not None and (not isinstance(value, types) or isinstance(value, bool)):
            raise AblyError(40000, f"Invalid protocol message: {key} has the wrong type")
    auth_field = frame.get("auth")
    if auth_field is not None and not isinstance(auth_field.get("accessToken"), str | None):
        raise AblyError(40000, "Invalid protocol message: auth.accessToken must be a string")
    for key in ("messages", "presence"):
        for item in frame.get(key) or ():
            validate_item(item)


def validate_item(item: Any) -> None:
    """A Message or PresenceMessage from a client (realtime or REST)."""
    if not isinstance(item, dict):
        raise AblyError(40000, "Invalid message: each message must be an object")
    for key, types in _ITEM_FIELD_TYPES.items():
        value = item.get(key)
        if value is not None and (not isinstance(value, types) or isinstance(value, bool)):
            raise AblyError(
                40013 if key in ("data", "encoding") else 40000,
                f"Invalid message: {key} has the wrong type",
            )


def _decode_bearer(value: str) -> str:
    """Both SDKs base64 the token in `Authorization: Bearer`; accept a raw token too."""
    if value.count(".") == 2:
        return value
    try:
        decoded = base64.b64decode(value + "=" * (-len(value) % 4), validate=True).decode()
    except (ValueError, UnicodeDecodeError):
        return value
    return decoded if decoded.isprintable() else value


def _rest_identity(
    credentials: auth.Credentials, header_client_id: str | None
) -> tuple[str | None, bool]:
    if credentials.kind == "basic":
        return header_client_id or credentials.client_id, True
    if credentials.client_id == "*":
        return header_client_id, True
    return credentials.client_id, False


Hub._handlers = {
    Action.HEARTBEAT: Hub._on_heartbeat,
    Action.DISCONNECT: Hub._on_disconnect,
    Action.CLOSE: Hub._on_close,
    Action.ATTACH: Hub._on_attach,
    Action.DETACH: Hub._on_detach,
    Action.PRESENCE: Hub._on_presence,
    Action.MESSAGE: Hub._on_message,
    Action.SYNC: Hub._on_sync,
    Action.AUTH: Hub._on_auth,
    Action.ACTIVATE: Hub._on_ignored,
    Action.ANNOTATION: Hub._on_annotation,
}
