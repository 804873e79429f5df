"""Ably protocol constants and frame (de)serialisation shared by the core and the adapter.

The core works on plain dicts (decoded ProtocolMessages); only the adapter calls `decode_frame` /
`encode_frame`, because the wire format (JSON text or msgpack binary) belongs to the transport.
"""

from __future__ import annotations

import base64
import json
from enum import IntEnum, IntFlag
from typing import Any

import msgpack

from .errors import AblyError


class Action(IntEnum):
    HEARTBEAT = 0
    ACK = 1
    NACK = 2
    CONNECT = 3
    CONNECTED = 4
    DISCONNECT = 5
    DISCONNECTED = 6
    CLOSE = 7
    CLOSED = 8
    ERROR = 9
    ATTACH = 10
    ATTACHED = 11
    DETACH = 12
    DETACHED = 13
    PRESENCE = 14
    MESSAGE = 15
    SYNC = 16
    AUTH = 17
    ACTIVATE = 18
    OBJECT = 19
    OBJECT_SYNC = 20
    ANNOTATION = 21


class Flag(IntFlag):
    HAS_PRESENCE = 1
    HAS_BACKLOG = 2
    RESUMED = 4
    TRANSIENT = 16
    ATTACH_RESUME = 32
    HAS_OBJECTS = 128
    PRESENCE = 1 << 16
    PUBLISH = 1 << 17
    SUBSCRIBE = 1 << 18
    PRESENCE_SUBSCRIBE = 1 << 19
    ANNOTATION_PUBLISH = 1 << 21
    ANNOTATION_SUBSCRIBE = 1 << 22
    OBJECT_SUBSCRIBE = 1 << 24
    OBJECT_PUBLISH = 1 << 25


MODE_FLAGS = (
    Flag.PRESENCE
    | Flag.PUBLISH
    | Flag.SUBSCRIBE
    | Flag.PRESENCE_SUBSCRIBE
    | Flag.ANNOTATION_PUBLISH
    | Flag.ANNOTATION_SUBSCRIBE
    | Flag.OBJECT_SUBSCRIBE
    | Flag.OBJECT_PUBLISH
)


class MessageAction(IntEnum):
    CREATE = 0
    UPDATE = 1
    DELETE = 2
    META = 3
    SUMMARY = 4
    APPEND = 5


class PresenceAction(IntEnum):
    ABSENT = 0
    PRESENT = 1
    ENTER = 2
    LEAVE = 3
    UPDATE = 4


class WireFormat:
    JSON = "json"
    MSGPACK = "msgpack"


def decode_frame(raw: str | bytes, wire_format: str) -> dict[str, Any]:
    """Decode one WebSocket frame into a ProtocolMessage dict; raise AblyError(40000) if invalid.

    The frame type decides the decoder rather than the negotiated format: a JSON client never
    sends binary frames, so a mismatch is itself malformed input worth a clear error.
    """
    try:
        if isinstance(raw, str):
            decoded = json.loads(raw)
        else:
            decoded = msgpack.unpackb(raw, raw=False, strict_map_key=False)
    # TypeError: msgpack maps may have maps or arrays as keys, which Python cannot hash.
    except (ValueError, TypeError, msgpack.UnpackException, UnicodeDecodeError) as exc:
        raise AblyError(40000, f"Unable to decode {wire_format} protocol message: {exc}") from exc
    if not isinstance(decoded, dict):
        raise AblyError(40000, "Protocol message must be an object")
    action = decoded.get("action")
    if not isinstance(action, int) or isinstance(action, bool):
        raise AblyError(40000, "Protocol message has no valid action")
    return decoded


def _binary_to_base64(item: dict[str, Any]) -> dict[str, Any]:
    data = item.get("data")
    if isinstance(data, bytes | bytearray):
        item = dict(item)
        item["data"] = base64.b64encode(bytes(data)).decode("ascii")
        encoding = item.get("encoding")
        item["encoding"] = f"{encoding}/base64" if encoding else "base64"
    return item


def jsonable_items(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Binary payloads cannot travel in JSON: base64 them and record that in `encoding`."""
    return [_binary_to_base64(item) for item in items]


def encode_frame(frame: dict[str, Any], wire_format: str) -> str | bytes:
    if wire_format == WireFormat.MSGPACK:
        return msgpack.packb(frame, use_bin_type=True)
    if any(key in frame for key in ("messages", "presence")):
        frame = dict(frame)
        for key in ("messages", "presence"):
            if key in frame and frame[key] is not None:
                frame[key] = jsonable_items(frame[key])
    return json.dumps(frame, separators=(",", ":"))
