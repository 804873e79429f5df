"""Telling devices about a gone agent's replies: all of them at once, none held back by another.

`Recovery.announce_interrupted` (the `stop`, the text read back from history, the database) is
covered against real Ably and a real database by the scale-out and reliability tests; here only
how the announcements of many replies are scheduled, with the announcement itself replaced.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from conversations.agent.recovery import ANNOUNCE_CONCURRENCY, Recovery


class Announcements:
    """Stands in for one reply's announcement: records who is being announced at once."""

    def __init__(self, *, failing: frozenset[int] = frozenset()) -> None:
        self.failing = failing
        self.active = 0
        self.most_at_once = 0
        self.announced: list[int] = []
        self.release = asyncio.Event()

    async def __call__(self, reply: Any) -> None:
        self.active += 1
        self.most_at_once = max(self.most_at_once, self.active)
        try:
            # Each waits (as for its history request) until the test lets them all go.
            await asyncio.wait_for(self.release.wait(), 5)
            if reply.pk in self.failing:
                raise RuntimeError(f"reply {reply.pk}: Ably refused the stop")
            self.announced.append(reply.pk)
        finally:
            self.active -= 1


def recovery_with(announcements: Announcements) -> Recovery:
    # Scheduling needs neither a configuration nor connections.
    recovery = Recovery(config=None, pool=None)  # type: ignore[arg-type]
    recovery.announce_interrupted = announcements  # type: ignore[method-assign]
    return recovery


async def let_go_once(announcements: Announcements, expected_at_once: int) -> None:
    async def all_started() -> None:
        while announcements.active < expected_at_once:
            await asyncio.sleep(0.001)

    await asyncio.wait_for(all_started(), 5)
    announcements.release.set()


async def test_a_gone_agents_replies_are_announced_together_not_one_after_another() -> None:
    announcements = Announcements()
    replies: list[Any] = [SimpleNamespace(pk=pk) for pk in range(5)]
    settling = asyncio.ensure_future(recovery_with(announcements).announce_all_interrupted(replies))
    # One at a time, the second would only start once the first was let go: this would time out.
    await let_go_once(announcements, expected_at_once=5)
    await asyncio.wait_for(settling, 5)
    assert sorted(announcements.announced) == [0, 1, 2, 3, 4]


async def test_at_most_a_bounded_number_are_announced_at_once() -> None:
    announcements = Announcements()
    replies: list[Any] = [SimpleNamespace(pk=pk) for pk in range(ANNOUNCE_CONCURRENCY * 2 + 1)]
    settling = asyncio.ensure_future(recovery_with(announcements).announce_all_interrupted(replies))
    await let_go_once(announcements, expected_at_once=ANNOUNCE_CONCURRENCY)
    await asyncio.wait_for(settling, 5)
    assert announcements.most_at_once == ANNOUNCE_CONCURRENCY
    assert len(announcements.announced) == len(replies)


async def test_one_failed_announcement_does_not_hold_back_the_others() -> None:
    announcements = Announcements(failing=frozenset({1}))
    replies: list[Any] = [SimpleNamespace(pk=pk) for pk in range(4)]
    settling = asyncio.ensure_future(recovery_with(announcements).announce_all_interrupted(replies))
    await let_go_once(announcements, expected_at_once=4)
    with pytest.raises(RuntimeError, match="reply 1"):
        await asyncio.wait_for(settling, 5)
    # Raised only once the others were announced.
    assert sorted(announcements.announced) == [0, 2, 3]
