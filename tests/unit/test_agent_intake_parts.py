"""The agent's retry policies and the refusal event (issue 13), piece by piece."""

from __future__ import annotations

import asyncio
import time

import pytest
from ably.util.exceptions import AblyException
from django.db import IntegrityError, OperationalError

from conversations import events
from conversations.agent import store
from conversations.agent.ably_adapter import is_permanent_ably_error
from conversations.agent.streaming import publish_until, with_retries


@pytest.mark.parametrize(
    ("code", "permanent"),
    [
        (40400, True),  # message not found: the service lost it
        (40160, True),  # capability refused
        (40003, True),  # bad request
        (42910, False),  # rate limit: passes with time
        (42911, False),
        (40142, False),  # token expired: the SDK renews it
        (40140, False),
        (40001, False),  # ably-python's own "connection state is suspended": passes
        (80003, False),  # connection lost
        (90001, False),  # channel not attached
    ],
)
def test_only_4xxxx_errors_other_than_rate_limits_and_token_expiry_are_permanent(code, permanent):
    assert is_permanent_ably_error(AblyException("x", code // 100, code)) is permanent


def test_errors_without_an_ably_code_are_not_permanent():
    assert not is_permanent_ably_error(ConnectionError("down"))
    assert not is_permanent_ably_error(TimeoutError())


class Counting:
    def __init__(self, error: BaseException, failures: int = 1_000) -> None:
        self.error = error
        self.failures = failures
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return "ok"


def test_a_permanent_error_is_not_retried_until_the_publish_deadline():
    operation = Counting(AblyException("Message not found", 404, 40400))
    with pytest.raises(AblyException):
        asyncio.run(
            publish_until(operation, channel=None, deadline=time.monotonic() + 60, what="x")
        )
    assert operation.calls == 1
    operation = Counting(AblyException("Message not found", 404, 40400))
    with pytest.raises(AblyException):
        asyncio.run(with_retries(operation, attempts=4))
    assert operation.calls == 1


def test_a_rate_limited_publish_is_retried():
    operation = Counting(AblyException("Rate limit", 429, 42910), failures=1)
    asyncio.run(with_retries(operation, attempts=4))
    assert operation.calls == 2


@pytest.mark.django_db
def test_transient_database_errors_are_retried_and_answers_are_not(monkeypatch):
    monkeypatch.setattr(store, "DB_RETRY_FIRST_DELAY", 0.001)
    calls: list[str] = []

    def locked_twice() -> str:
        calls.append("try")
        if len(calls) <= 2:
            raise OperationalError("database is locked")
        return "stored"

    assert asyncio.run(store.db_retrying(locked_twice)) == "stored"
    assert len(calls) == 3

    def duplicate() -> None:
        calls.append("dup")
        raise IntegrityError("unique")

    calls.clear()
    with pytest.raises(IntegrityError):
        asyncio.run(store.db_retrying(duplicate))
    assert calls == ["dup"]


@pytest.mark.django_db
def test_transient_database_errors_give_up_after_the_deadline(monkeypatch):
    monkeypatch.setattr(store, "DB_RETRY_SECONDS", 0.05)
    monkeypatch.setattr(store, "DB_RETRY_FIRST_DELAY", 0.01)

    def always_locked() -> None:
        raise OperationalError("database is locked")

    with pytest.raises(OperationalError):
        asyncio.run(store.db_retrying(always_locked))


def test_a_refusal_round_trips_and_is_an_agent_only_name():
    refusal = events.Refusal(
        reason=events.RefusalReason.DELETED,
        message="This conversation has been deleted.",
        prompt_id="0b8b7c38-54a1-4a8e-9c1b-7d5f0e1b2a3c",
    )
    assert refusal.extras() == {"headers": {"promptId": refusal.prompt_id, "reason": "deleted"}}
    assert events.Refusal.from_wire(refusal.data(), refusal.extras()) == refusal
    without_id = events.Refusal(reason=events.RefusalReason.MALFORMED, message="bad")
    assert events.Refusal.from_wire("bad", without_id.extras()) == without_id
    # Devices trust it only from the agent's clientId, like `stop`; not named `error`, which
    # ably-python does not hand to a listener subscribed to every message.
    assert events.Name.REFUSAL in events.AGENT_NAMES
    assert events.Name.REFUSAL != "error"
    assert events.client_contract()["names"]["refusal"] == "refusal"


@pytest.mark.django_db
def test_sqlite_is_shared_in_wal_mode_with_immediate_transactions_and_a_busy_timeout():
    from django.db import connection

    if connection.vendor != "sqlite":
        pytest.skip("SQLite options only")
    with connection.cursor() as cursor:
        cursor.execute("PRAGMA journal_mode")
        assert cursor.fetchone()[0] == "wal"
        # NORMAL (1), as SQLite advises for WAL: a commit waits for no fsync (issue 14).
        cursor.execute("PRAGMA synchronous")
        assert cursor.fetchone()[0] == 1
        cursor.execute("PRAGMA busy_timeout")
        assert cursor.fetchone()[0] >= 1000
    assert connection.transaction_mode == "IMMEDIATE"
