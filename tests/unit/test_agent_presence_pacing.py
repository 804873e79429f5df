"""Every presence message a conversation's session sends waits for its connection's rate
limiter: Ably counts presence enters, updates and leaves against the connection's 50 msg/s,
and a membership change releases (and a new owner enters) many conversations at once."""

from __future__ import annotations

import uuid
from types import SimpleNamespace
from typing import Any

from conversations import events
from conversations.agent.session import ConversationSession
from tests.unit.test_reply_costs import FakeHost, FakePresence, SessionChannel
from tests.unit.test_reply_lifecycle import config


class RecordingPresence(FakePresence):
    async def leave(self) -> None:
        self.channel.statuses.append("leave")


class CountingLimiter:
    """Counts the sends it let through, and what had been sent on the channel by then."""

    def __init__(self, channel: SessionChannel) -> None:
        self.channel = channel
        self.seen_before_each: list[int] = []

    async def acquire(self) -> None:
        self.seen_before_each.append(len(self.channel.statuses))


async def test_enter_update_and_leave_each_wait_for_the_rate_limiter() -> None:
    channel = SessionChannel()
    channel.presence = RecordingPresence(channel)
    limiter = CountingLimiter(channel)
    connection = SimpleNamespace(
        client=SimpleNamespace(channels=SimpleNamespace(get=lambda name: channel)),
        limiter=limiter,
        touch=lambda name: None,
    )
    host: Any = FakeHost(config(), anthropic=None, reply_store=None)
    session = ConversationSession(host, str(uuid.uuid4()), connection)  # type: ignore[arg-type]

    await session.open(history_since_ms=None)
    await session.set_status(events.AgentStatus.RETRYING)
    await session.release()  # another agent owns it now
    await session.reclaim()  # and it came back before the channel was detached
    await session.close()

    assert channel.statuses == ["enter:idle", "retrying", "leave", "enter:retrying", "leave"]
    # One acquisition before each presence message, taken before that message went out.
    assert limiter.seen_before_each == [0, 1, 2, 3, 4]
