from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _realtime_outbox(monkeypatch):
    """Unit tests never reach the network: Django's publishes land in `realtime.outbox`.

    Integration tests (tests/integration, tests/browser) publish to the Ably stand-in for real.
    """
    from conversations import realtime

    outbox: list = []
    monkeypatch.setattr(realtime, "outbox", outbox)
    # Token revocations likewise land in `realtime.revocation_outbox` (clientIds).
    monkeypatch.setattr(realtime, "revocation_outbox", [])
    return outbox
