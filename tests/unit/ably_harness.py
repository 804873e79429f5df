"""Drive the sans-I/O Ably hub directly: fake clock, fake transports, decoded frames."""

from __future__ import annotations

import itertools
import json
from typing import Any

import jwt

from emulators.ably import auth
from emulators.ably.config import DEFAULT_KEY, HubConfig
from emulators.ably.core import Hub
from emulators.ably.protocol import Action

START_MS = 1_700_000_000_000
KEY_NAME, KEY_SECRET = DEFAULT_KEY.split(":")


class FakeClient:
    def __init__(self, harness: Harness, transport_id: int) -> None:
        self.harness = harness
        self.transport_id = transport_id
        self.frames: list[dict[str, Any]] = []
        self.closed = False
        self._msg_serial = itertools.count()

    @property
    def connection(self):
        return self.harness.hub.transports.get(self.transport_id)

    def send(self, frame: dict[str, Any]) -> None:
        self.harness.hub.receive(self.transport_id, frame)
        self.harness.pump()

    def publish(
        self, channel: str, *messages: dict[str, Any], msg_serial: int | None = None
    ) -> int:
        serial = next(self._msg_serial) if msg_serial is None else msg_serial
        self.send(
            {
                "action": Action.MESSAGE,
                "channel": channel,
                "msgSerial": serial,
                "messages": list(messages),
            }
        )
        return serial

    def presence(self, channel: str, *items: dict[str, Any]) -> int:
        serial = next(self._msg_serial)
        self.send(
            {
                "action": Action.PRESENCE,
                "channel": channel,
                "msgSerial": serial,
                "presence": list(items),
            }
        )
        return serial

    def attach(self, channel: str, **fields: Any) -> dict[str, Any]:
        self.send({"action": Action.ATTACH, "channel": channel, **fields})
        return self.last(Action.ATTACHED, Action.ERROR)

    def drop(self) -> None:
        self.harness.hub.transport_lost(self.transport_id)
        self.closed = True
        self.harness.pump()

    def of(self, *actions: int) -> list[dict[str, Any]]:
        return [f for f in self.frames if f["action"] in actions]

    def last(self, *actions: int) -> dict[str, Any]:
        matching = self.of(*actions)
        assert matching, f"no frame with action {actions} in {self.frames}"
        return matching[-1]

    def take(self) -> list[dict[str, Any]]:
        frames, self.frames = self.frames, []
        return frames

    def messages(self) -> list[dict[str, Any]]:
        return [m for f in self.of(Action.MESSAGE) for m in f["messages"]]


class Harness:
    def __init__(self, **config: Any) -> None:
        self.now = START_MS
        counter = itertools.count()
        self.hub = Hub(
            HubConfig(**config), clock=lambda: self.now, ids=lambda: f"id{next(counter)}"
        )
        self.clients: dict[int, FakeClient] = {}

    def connect(self, **query: str) -> FakeClient:
        query.setdefault("key", DEFAULT_KEY)
        if query.get("key") is None:
            del query["key"]
        transport_id = self.hub.open_transport(query)
        client = FakeClient(self, transport_id)
        self.clients[transport_id] = client
        self.pump()
        return client

    def pump(self) -> None:
        for transport_id, outbox in self.hub.take_outputs().items():
            client = self.clients.get(transport_id)
            if client is None:
                continue
            # Frames must survive both encoders, as on the wire.
            client.frames.extend(json.loads(json.dumps(f, default=repr)) for f in outbox.frames)
            if outbox.close:
                client.closed = True

    def advance(self, ms: int) -> None:
        self.now += ms
        self.hub.run_due_timers()
        self.pump()

    # -- credentials

    def key(self) -> auth.ApiKey:
        key = self.hub.keyring.get(KEY_NAME)
        assert key is not None
        return key

    def token(
        self,
        *,
        client_id: str | None = None,
        capability: str | None = None,
        ttl_ms: int = 3_600_000,
    ) -> str:
        details = auth.mint_token(
            self.hub.keyring,
            self.key(),
            now_ms=self.now,
            ttl_ms=ttl_ms,
            capability=auth.Capability.parse(capability) if capability else None,
            client_id=client_id,
        )
        return details["token"]

    def jwt(
        self,
        *,
        client_id: str | None = None,
        capability: str = '{"*":["*"]}',
        ttl_s: int = 3600,
        **claims: Any,
    ) -> str:
        now_s = self.now // 1000
        payload = {"iat": now_s, "exp": now_s + ttl_s, "x-ably-capability": capability, **claims}
        if client_id:
            payload["x-ably-clientId"] = client_id
        return jwt.encode(payload, KEY_SECRET, algorithm="HS256", headers={"kid": KEY_NAME})
