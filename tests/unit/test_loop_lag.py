"""The agent's event-loop lag sampler (runtimekit/loop_lag.py), read by the relay bench."""

from __future__ import annotations

import asyncio
import time

from runtimekit.loop_lag import LoopLagSampler


async def test_a_blocked_loop_shows_up_as_lag_and_reading_it_resets_it():
    sampler = LoopLagSampler(period=0.01)
    sampling = asyncio.create_task(sampler.run())
    try:
        await asyncio.sleep(0.03)
        time.sleep(0.2)  # a stall, as a full garbage collection would cause
        deadline = time.monotonic() + 5
        worst = 0.0
        while worst < 0.15 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
            worst = max(worst, sampler.take_worst())
        assert worst >= 0.15
        assert sampler.take_worst() < 0.15  # reset: the stall is not reported twice
    finally:
        sampling.cancel()
