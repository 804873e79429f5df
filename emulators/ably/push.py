"""Push admin API (`/push/...`): device registrations and channel subscriptions, per app.

A registry only: nothing is delivered to APNs/FCM (the stand-in has no push transports), but
registrations, subscriptions and publish requests are validated and answered as Ably does, so
SDK push-admin code paths run against it. Pure data; the adapter maps HTTP onto it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .errors import AblyError

Frame = dict[str, Any]

_PLATFORMS = {"android", "ios", "browser"}
_FORM_FACTORS = {"phone", "tablet", "desktop", "tv", "watch", "car", "embedded", "other"}
_TRANSPORTS = {"apns", "fcm", "gcm", "web"}


@dataclass
class PushRegistry:
    devices: dict[str, Frame] = field(default_factory=dict)
    subscriptions: list[Frame] = field(default_factory=list)

    # ------------------------------------------------------------ devices

    def save_device(self, device_id: str, body: Any) -> Frame:
        if not isinstance(body, dict):
            raise AblyError(40000, "A device registration must be an object", 400)
        device = {**self.devices.get(device_id, {}), **body, "id": device_id}
        if device.get("platform") not in _PLATFORMS:
            raise AblyError(40000, f"Invalid device platform {device.get('platform')!r}", 400)
        if device.get("formFactor") not in _FORM_FACTORS:
            raise AblyError(40000, f"Invalid formFactor {device.get('formFactor')!r}", 400)
        push = device.get("push")
        recipient = push.get("recipient") if isinstance(push, dict) else None
        if not isinstance(recipient, dict) or recipient.get("transportType") not in _TRANSPORTS:
            raise AblyError(40000, "A device needs push.recipient with a valid transportType", 400)
        device["push"] = {**push, "state": "ACTIVE"}
        self.devices[device_id] = device
        return dict(device)

    def get_device(self, device_id: str) -> Frame:
        device = self.devices.get(device_id)
        if device is None:
            raise AblyError(40400, f"Device {device_id} is not registered", 404)
        return dict(device)

    def list_devices(self, query: dict[str, str]) -> list[Frame]:
        return [dict(d) for d in self.devices.values() if _matches(d, query)]

    def remove_devices(self, query: dict[str, str]) -> None:
        removed = {i for i, d in self.devices.items() if _matches(d, query)}
        for device_id in removed:
            del self.devices[device_id]
        self.subscriptions = [s for s in self.subscriptions if s.get("deviceId") not in removed]

    # ------------------------------------------------------------ channel subscriptions

    def save_subscription(self, body: Any, *, push_enabled: bool) -> Frame:
        if not isinstance(body, dict) or not isinstance(body.get("channel"), str):
            raise AblyError(40000, "A channel subscription needs a channel", 400)
        device_id, client_id = body.get("deviceId"), body.get("clientId")
        if bool(device_id) == bool(client_id):
            raise AblyError(40000, "A channel subscription needs a deviceId or a clientId", 400)
        if not push_enabled:
            raise AblyError(
                40160, f"Push is not enabled on channel {body['channel']} (namespace rule)", 401
            )
        if device_id and device_id not in self.devices:
            raise AblyError(40400, f"Device {device_id} is not registered", 404)
        subscription = {
            k: body[k] for k in ("channel", "deviceId", "clientId") if body.get(k) is not None
        }
        if subscription not in self.subscriptions:
            self.subscriptions.append(subscription)
        return dict(subscription)

    def list_subscriptions(self, query: dict[str, str]) -> list[Frame]:
        return [dict(s) for s in self.subscriptions if _matches(s, query, ("channel",))]

    def list_channels(self) -> list[str]:
        return list(dict.fromkeys(s["channel"] for s in self.subscriptions))

    def remove_subscriptions(self, query: dict[str, str]) -> None:
        self.subscriptions = [s for s in self.subscriptions if not _matches(s, query, ("channel",))]


def check_publish(body: Any) -> None:
    """`POST /push/publish`: a recipient and a notification or data payload."""
    if not isinstance(body, dict) or not isinstance(body.get("recipient"), dict):
        raise AblyError(40000, "Push publish needs a recipient", 400)
    if not body["recipient"]:
        raise AblyError(40000, "Push publish needs a non-empty recipient", 400)
    payload = {k: v for k, v in body.items() if k != "recipient"}
    if not any(k in payload for k in ("notification", "data")):
        raise AblyError(40000, "Push publish needs a notification or data", 400)
    unknown = set(payload) - {"notification", "data", "apns", "fcm", "web", "gcm"}
    if unknown:
        raise AblyError(40000, f"Unknown push payload fields: {sorted(unknown)}", 400)


def _matches(item: Frame, query: dict[str, str], extra: tuple[str, ...] = ()) -> bool:
    fields = {"deviceId": item.get("deviceId", item.get("id")), "clientId": item.get("clientId")}
    for name in extra:
        fields[name] = item.get(name)
    return all(fields.get(k) == v for k, v in query.items() if k in fields)
