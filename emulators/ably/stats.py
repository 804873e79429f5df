"""App statistics (`GET /stats`), fed by the fixtures the SDK test harnesses `POST /stats`.

Pure functions; the hub keeps per-app minute records. Fixtures arrive in Ably's original nested
shape (`{intervalId, inbound: {realtime: {messages: {count, data}}}, ...}`); `GET /stats` answers
in the current flat shape (`{intervalId, unit, entries: {"messages.inbound.realtime.all.count":
...}}`), with Ably's roll-ups: per-type `all`, per-transport `all`, inbound + outbound, minutes
into hours, days and months. The stand-in does not count its own traffic.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

from .errors import AblyError

INTERVAL_FORMATS = {
    "minute": "%Y-%m-%d:%H:%M",
    "hour": "%Y-%m-%d:%H",
    "day": "%Y-%m-%d",
    "month": "%Y-%m",
}
SCHEMA = "https://schemas.ably.com/json/app-stats-0.0.5.json"

Entries = dict[str, float]


def _metrics(node: Any) -> dict[str, float]:
    return {
        key: value
        for key, value in (node or {}).items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    }


def _add(entries: Entries, key: str, value: float) -> None:
    if key.endswith(".peak"):
        entries[key] = max(entries.get(key, 0), value)
    else:
        entries[key] = entries.get(key, 0) + value


def _message_entries(entries: Entries, prefix: str, by_transport: dict[str, Any]) -> None:
    """`{transport: {type: {metric}}}` -> `<prefix>.<transport|all>.<type|all>.<metric>`."""
    for transport, types in (by_transport or {}).items():
        if transport == "all" or not isinstance(types, dict):
            continue
        for kind, node in types.items():
            if kind == "all":
                continue
            for metric, value in _metrics(node).items():
                for t in (transport, "all"):
                    for k in (kind, "all"):
                        _add(entries, f"{prefix}.{t}.{k}.{metric}", value)


def flatten(fixture: dict[str, Any]) -> Entries:
    """One nested stats fixture -> flat entries with Ably's roll-ups."""
    entries: Entries = {}
    for direction in ("inbound", "outbound"):
        _message_entries(entries, f"messages.{direction}", fixture.get(direction) or {})
    for key, value in list(entries.items()):
        # messages.<direction>.all.<type>.<metric> -> messages.all.<type>.<metric>
        parts = key.split(".")
        if parts[2] == "all":
            _add(entries, ".".join(["messages", "all", *parts[3:]]), value)
    for kind, node in (fixture.get("persisted") or {}).items():
        if kind == "all":
            continue
        for metric, value in _metrics(node).items():
            for k in (kind, "all"):
                _add(entries, f"messages.persisted.{k}.{metric}", value)
    for kind, node in (fixture.get("connections") or {}).items():
        if kind == "all":
            continue
        for metric, value in _metrics(node).items():
            for k in (kind, "all"):
                _add(entries, f"connections.{k}.{metric}", value)
    for metric, value in _metrics(fixture.get("channels")).items():
        _add(entries, f"channels.{metric}", value)
    for source, group in (("apiRequests", "other"), ("tokenRequests", "tokenRequests")):
        for metric, value in _metrics(fixture.get(source)).items():
            for g in (group, "all"):
                _add(entries, f"apiRequests.{g}.{metric}", value)
    return entries


def minute_of(fixture: Any) -> str:
    """The fixture's minute interval id, normalised (`YYYY-mm-dd:HH:MM`)."""
    interval_id = fixture.get("intervalId") if isinstance(fixture, dict) else None
    if not isinstance(interval_id, str):
        raise AblyError(40000, "Each stats record needs an intervalId", 400)
    for unit in ("minute", "hour", "day", "month"):
        try:
            # Interval ids are UTC.
            moment = datetime.strptime(interval_id, INTERVAL_FORMATS[unit]).replace(tzinfo=UTC)
        except ValueError:
            continue
        return moment.strftime(INTERVAL_FORMATS["minute"])
    raise AblyError(40000, f"Invalid stats intervalId {interval_id!r}", 400)


def time_param(value: str | None, name: str) -> int | None:
    """A stats `start`/`end`: epoch milliseconds or an interval id (its start, UTC)."""
    if value in (None, ""):
        return None
    assert value is not None
    if value.lstrip("-").isdigit():
        return int(value)
    for unit_format in INTERVAL_FORMATS.values():
        try:
            moment = datetime.strptime(value, unit_format).replace(tzinfo=UTC)
        except ValueError:
            continue
        return int(moment.timestamp() * 1000)
    raise AblyError(40003, f"Invalid {name}: {value!r} is neither epoch ms nor an interval id", 400)


def _bucket(minute_id: str, unit: str) -> str:
    moment = datetime.strptime(minute_id, INTERVAL_FORMATS["minute"]).replace(tzinfo=UTC)
    return moment.strftime(INTERVAL_FORMATS[unit])


def _bucket_of_ms(ms: int, unit: str) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime(INTERVAL_FORMATS[unit])


def query(
    minutes: dict[str, Entries],
    *,
    app_id: str,
    unit: str,
    start: int | None,
    end: int | None,
    forwards: bool,
    limit: int,
    cursor: str | None,
) -> tuple[list[dict[str, Any]], str | None]:
    """Records of `unit` between start and end (ms, inclusive of their intervals), a page of
    `limit` in the requested direction, and the cursor of the next page."""
    if unit not in INTERVAL_FORMATS:
        raise AblyError(40003, f"Invalid unit {unit!r}: use minute, hour, day or month", 400)
    buckets: dict[str, Entries] = defaultdict(dict)
    for minute_id, entries in minutes.items():
        bucket = buckets[_bucket(minute_id, unit)]
        for key, value in entries.items():
            _add(bucket, key, value)
    low = _bucket_of_ms(start, unit) if start is not None else ""
    high = _bucket_of_ms(end, unit) if end is not None else "~"
    selected = sorted(
        (interval_id for interval_id in buckets if low <= interval_id <= high),
        reverse=not forwards,
    )
    if cursor is not None:
        selected = [i for i in selected if (i > cursor if forwards else i < cursor)]
    page = selected[:limit]
    next_cursor = page[-1] if len(selected) > limit else None
    records = [
        {
            "intervalId": interval_id,
            "unit": unit,
            "appId": app_id,
            "schema": SCHEMA,
            "inProgress": None,
            "entries": dict(buckets[interval_id]),
        }
        for interval_id in page
    ]
    return [{k: v for k, v in r.items() if v is not None} for r in records], next_cursor
