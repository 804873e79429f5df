"""Full garbage collections when a process is quiet, not in the middle of a burst.

CPython collects its oldest generation whenever enough new objects have survived into it, and a
full collection walks every tracked object: in the Ably stand-in with 1,000 subscribers that is
a stop of up to ~90 ms, landing wherever the burst that caused it happens to be. Real Ably does not
stall a channel like that, and a stand-in that does puts pauses into every latency measured
through it (see docs/benchmarks.md, fan-out). The agent has the same problem with its own heap
(sessions, runs, SDK objects): a full collection there stalls every reply being relayed (issue 14
measured 88-263 ms, once 1.1 s).

So a serving process (the Ably stand-in, `manage.py run_agent`) takes full collections out of CPython's hands: the modules, classes and
configuration that exist once serving starts are frozen (never garbage, never walked again),
the automatic oldest-generation collection is switched off, and `QuietCollector.check()`, run
every half second, collects it when the process has been (nearly) idle, or anyway once
`max_interval` has passed, so memory held by reference cycles stays bounded under constant
load. Young generations are collected as before: they are small and their pauses short.

The policy itself is plain code with its clocks and `collect` injected, tested in
tests/unit/test_quiet_gc.py.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Callable

# A threshold the oldest generation's counter (one per young collection) never reaches.
_NEVER = 2**31 - 1


class QuietCollector:
    """Decides when to collect the oldest generation; `check()` does it when due.

    Quiet means the process used at most `quiet_cpu_share` of one core since the last check.
    A collection is due when the oldest generation has had objects promoted into it since the
    last one (`pending() > 0`) and the process is quiet, or `max_interval` seconds have passed.
    """

    def __init__(
        self,
        *,
        quiet_cpu_share: float = 0.05,
        max_interval: float = 60.0,
        cpu_clock: Callable[[], float] = time.process_time,
        wall_clock: Callable[[], float] = time.monotonic,
        pending: Callable[[], int] = lambda: gc.get_count()[2],
        collect: Callable[[int], object] = gc.collect,
    ) -> None:
        self.quiet_cpu_share = quiet_cpu_share
        self.max_interval = max_interval
        self._cpu_clock = cpu_clock
        self._wall_clock = wall_clock
        self._pending = pending
        self._collect = collect
        self._last_wall = self._last_collection = wall_clock()
        self._last_cpu = cpu_clock()

    def check(self) -> bool:
        """Collect the oldest generation if it is due; True if it did."""
        now, cpu = self._wall_clock(), self._cpu_clock()
        busy_share = (cpu - self._last_cpu) / max(now - self._last_wall, 1e-6)
        self._last_wall, self._last_cpu = now, cpu
        if self._pending() <= 0:
            return False
        overdue = now - self._last_collection >= self.max_interval
        if busy_share > self.quiet_cpu_share and not overdue:
            return False
        self._collect(2)
        # The collection's own CPU must not make the next window look busy.
        self._last_wall = self._last_collection = self._wall_clock()
        self._last_cpu = self._cpu_clock()
        return True

    async def run(self, period: float = 0.5) -> None:
        while True:
            await asyncio.sleep(period)
            self.check()


def take_over_full_collections() -> QuietCollector:
    """Freeze what exists now and stop CPython's own full collections; run the result's `run()`.

    Call it once the server is built, just before serving. Not for a process that hosts other
    code with its own expectations of the collector (a test run).
    """
    gc.collect()
    gc.freeze()
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, _NEVER)
    return QuietCollector()
