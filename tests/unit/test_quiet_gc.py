"""The agent's and the Ably stand-in's full-collection policy (runtimekit/quiet_gc.py), with its
clocks injected."""

from __future__ import annotations

import gc
import subprocess
import sys

from runtimekit.quiet_gc import QuietCollector


class FakeProcess:
    """Wall and CPU clocks a test moves by hand, and a record of collections."""

    def __init__(self) -> None:
        self.wall = 1000.0
        self.cpu = 50.0
        self.promoted = 0
        self.collected: list[int] = []

    def run_for(self, seconds: float, *, busy_share: float) -> None:
        self.wall += seconds
        self.cpu += seconds * busy_share

    def tick(self, collector: QuietCollector, *, busy_share: float, promoted: int = 0) -> bool:
        """Half a second of work that promotes `promoted` objects, then the periodic check."""
        self.promoted += promoted
        self.run_for(0.5, busy_share=busy_share)
        return collector.check()

    def collect(self, generation: int) -> None:
        self.collected.append(generation)
        self.promoted = 0
        self.cpu += 0.08  # a full collection costs CPU of its own

    def collector(self, **options: float) -> QuietCollector:
        return QuietCollector(
            cpu_clock=lambda: self.cpu,
            wall_clock=lambda: self.wall,
            pending=lambda: self.promoted,
            collect=self.collect,
            **options,
        )


def test_a_busy_process_is_not_stopped_for_a_full_collection():
    process = FakeProcess()
    collector = process.collector(max_interval=60)
    for _ in range(20):  # ten seconds of a busy broadcast loop
        assert process.tick(collector, busy_share=0.4, promoted=1) is False
    assert process.collected == []


def test_it_collects_the_oldest_generation_once_the_process_goes_quiet():
    process = FakeProcess()
    collector = process.collector()
    assert process.tick(collector, busy_share=0.6, promoted=5) is False
    assert process.tick(collector, busy_share=0.01) is True
    assert process.collected == [2]


def test_the_collection_s_own_cpu_does_not_make_the_next_window_busy():
    process = FakeProcess()
    collector = process.collector()
    assert process.tick(collector, busy_share=0.0, promoted=5) is True
    assert process.tick(collector, busy_share=0.0, promoted=5) is True
    assert process.collected == [2, 2]


def test_nothing_promoted_means_nothing_to_collect_even_when_idle():
    process = FakeProcess()
    collector = process.collector()
    for _ in range(10):
        assert process.tick(collector, busy_share=0.0) is False
    assert process.collected == []


def test_under_constant_load_it_still_collects_once_per_max_interval():
    process = FakeProcess()
    collector = process.collector(max_interval=60)
    collected_at = [
        tick * 0.5
        for tick in range(1, 400)  # 200 s of constant load, garbage promoted all along
        if process.tick(collector, busy_share=0.9, promoted=1)
    ]
    assert collected_at == [60.0, 120.0, 180.0]


def test_serving_takes_full_collections_over_from_cpython():
    """In a fresh interpreter: startup objects frozen, automatic full collections off."""
    script = (
        "import gc\n"
        "from runtimekit.quiet_gc import take_over_full_collections\n"
        "before = gc.get_freeze_count()\n"
        "take_over_full_collections()\n"
        "print(before, gc.get_freeze_count() > 10_000, gc.get_threshold()[2] >= 2**31 - 1)\n"
    )
    output = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout.split()
    assert output == ["0", "True", "True"]
    # This interpreter (the test run) is left as CPython set it up.
    assert gc.get_threshold()[2] < 1000
