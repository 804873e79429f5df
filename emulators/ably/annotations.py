"""Message annotation summaries (pure): what Ably sends as a `message.summary` after each
annotation, by the aggregation named in the annotation type's suffix (`reaction:distinct.v1`):

- `total.v1`    -> `{"total": n}`
- `flag.v1`     -> `{"total": n, "clientIds": [...]}` (each client once)
- `distinct.v1` -> `{name: {"total": n, "clientIds": [...]}}` (each client once per name)
- `unique.v1`   -> like distinct, but each client counts for one name only (its latest)
- `multiple.v1` -> `{name: {"total": n, "clientIds": {clientId: n}, "totalUnidentified": n}}`

A delete (action 1) withdraws the client's contribution (for that name, where names apply).
"""

from __future__ import annotations

from typing import Any

CREATE, DELETE = 0, 1


def _aggregation(annotation_type: str) -> str:
    return annotation_type.rsplit(":", 1)[-1]


def summarise(log: list[dict[str, Any]]) -> dict[str, Any]:
    """The summary of one message's annotation log (oldest first), keyed by annotation type."""
    by_type: dict[str, list[dict[str, Any]]] = {}
    for annotation in log:
        by_type.setdefault(annotation.get("type") or "", []).append(annotation)
    return {
        annotation_type: _summarise_type(_aggregation(annotation_type), annotations)
        for annotation_type, annotations in by_type.items()
    }


def _summarise_type(aggregation: str, annotations: list[dict[str, Any]]) -> Any:
    if aggregation == "total.v1":
        total = 0
        for a in annotations:
            total = total + 1 if a.get("action", CREATE) == CREATE else max(0, total - 1)
        return {"total": total}
    if aggregation == "flag.v1":
        flagged: dict[str, None] = {}
        for a in annotations:
            client = a.get("clientId")
            if client is None:
                continue
            if a.get("action", CREATE) == CREATE:
                flagged[client] = None
            else:
                flagged.pop(client, None)
        return {"total": len(flagged), "clientIds": list(flagged)}
    if aggregation == "multiple.v1":
        counts: dict[str, dict[str, int]] = {}
        unidentified: dict[str, int] = {}
        for a in annotations:
            name, client = a.get("name") or "", a.get("clientId")
            if a.get("action", CREATE) == CREATE:
                amount = a.get("count") if isinstance(a.get("count"), int) else 1
                if client is None:
                    unidentified[name] = unidentified.get(name, 0) + amount
                else:
                    per_name = counts.setdefault(name, {})
                    per_name[client] = per_name.get(client, 0) + amount
            elif client is not None:
                counts.get(name, {}).pop(client, None)
        names = [n for n in {**counts, **unidentified} if counts.get(n) or unidentified.get(n)]
        return {
            name: {
                "total": sum(counts.get(name, {}).values()) + unidentified.get(name, 0),
                "clientIds": dict(counts.get(name, {})),
                "totalUnidentified": unidentified.get(name, 0),
            }
            for name in names
        }
    # distinct.v1 and unique.v1 (and, as the closest fit, any unknown aggregation)
    clients_by_name: dict[str, dict[str, None]] = {}
    for a in annotations:
        name, client = a.get("name") or "", a.get("clientId")
        if client is None:
            continue
        if a.get("action", CREATE) == CREATE:
            if aggregation == "unique.v1":
                for members in clients_by_name.values():
                    members.pop(client, None)
            clients_by_name.setdefault(name, {})[client] = None
        else:
            clients_by_name.get(name, {}).pop(client, None)
    return {
        name: {"total": len(clients), "clientIds": list(clients)}
        for name, clients in clients_by_name.items()
        if clients
    }
