"""How late an asyncio event loop runs what is due: the worst stall any task on it saw.

A timer set for `period` seconds fires `period + lag` later; the lag is the time the loop spent
on something else (a long callback, a full garbage collection, blocking I/O). One relayed token
waits at most that long on top of its own work, so the worst lag bounds the event loop's share of
a delta's latency. The bench reads it from the agent's log (`manage.py run_agent --log-loop-lag`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


class LoopLagSampler:
    """Samples the loop every `period` seconds; `take_worst()` returns and resets the worst lag."""

    def __init__(self, period: float = 0.02, clock: Callable[[], float] = time.monotonic) -> None:
        self.period = period
        self._clock = clock
        self._worst = 0.0

    def record(self, scheduled_at: float, fired_at: float) -> None:
        """A timer set at `scheduled_at` for `period` seconds ran at `fired_at`."""
        self._worst = max(self._worst, fired_at - scheduled_at - self.period)

    def take_worst(self) -> float:
        """Worst lag in seconds since the last call."""
        worst, self._worst = self._worst, 0.0
        return worst

    async def run(self) -> None:
        while True:
            scheduled_at = self._clock()
            await asyncio.sleep(self.period)
            self.record(scheduled_at, self._clock())
