"""Ably stand-in fan-out: 1 publisher -> 1,000 subscribers on one channel.

The stand-in runs as its own process. Subscribers are raw JSON-protocol websocket clients
(`bench.rawably`) spread over two worker processes, so the receiving side is not one
interpreter; every subscriber counts every MESSAGE frame it gets, and one in ten also decodes the
frame to take the latency (publish time is in the message data, same host clock).

Two phases:
- throughput: the publisher pipelines as fast as ACKs allow (the stand-in's 50 msg/s inbound
  limit is turned off for this process: it is a server throughput test, not a client) and the
  delivered msg/s across all subscribers is counted;
- latency: 10 publishes/s -> 10,000 deliveries/s, latency percentiles over every sampled delivery.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from bench import common
from bench.rawably import RawAblyClient, open_clients

CHANNEL = "fanout:bench"
SAMPLE_EVERY = 10


class CountingClient(RawAblyClient):
    """Counts MESSAGE frames without decoding them, except on sampled connections."""

    def __init__(self, *args: Any, sampled: bool, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sampled = sampled
        self.received = 0
        self.latencies: list[float] = []

    async def _read(self) -> None:
        assert self.socket is not None
        try:
            async for raw in self.socket:
                if isinstance(raw, str) and raw.startswith('{"action":15'):
                    self.received += 1
                    if self.sampled:
                        arrived = time.time()
                        frame = json.loads(raw)
                        for message in frame.get("messages") or ():
                            sent = json.loads(message.get("data") or "{}").get("t")
                            if sent:
                                self.latencies.append((arrived - sent) * 1000)
                    continue
                self._dispatch(time.time(), json.loads(raw))
        except Exception as error:  # noqa: BLE001
            self._fail_all(RuntimeError(f"connection lost: {error!r}"))


async def worker(port: int, count: int, offset: int) -> None:
    """Subscriber process: connect, attach, say ready; on each stdin command report and reset."""
    clients = await open_clients(
        count,
        lambda i: CountingClient(
            port,
            common.DEV_ABLY_KEY,
            client_id=f"sub-{offset + i}",
            sampled=(offset + i) % SAMPLE_EVERY == 0,
        ),
    )
    gate = asyncio.Semaphore(100)

    async def attach(client: CountingClient) -> None:
        async with gate:
            await client.attach(CHANNEL)

    await asyncio.gather(*(attach(c) for c in clients))
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    while True:
        line = (await loop.run_in_executor(None, sys.stdin.readline)).strip()
        if not line or line == "quit":
            break
        # "report": totals since the last report, then reset.
        received = sum(c.received for c in clients)
        latencies = [value for c in clients for value in c.latencies]
        for c in clients:
            c.received = 0
            c.latencies = []
        print(json.dumps({"received": received, "latencies": latencies}), flush=True)
    await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)


class Workers:
    def __init__(self, services: list[common.Service]) -> None:
        self.services = services
        self._seen = [0] * len(services)

    async def report(self) -> tuple[int, list[float]]:
        received = 0
        latencies: list[float] = []
        for service in self.services:
            assert service.process.stdin is not None
            service.process.stdin.write(b"report\n")
            service.process.stdin.flush()
        for index, service in enumerate(self.services):
            deadline = time.monotonic() + 60
            while True:
                lines = [ln for ln in service.output().splitlines() if ln.startswith("{")]
                if len(lines) > self._seen[index]:
                    data = json.loads(lines[self._seen[index]])
                    self._seen[index] += 1
                    break
                if time.monotonic() > deadline:
                    raise common.BenchError("a subscriber worker did not report")
                await asyncio.sleep(0.05)
            received += data["received"]
            latencies += data["latencies"]
        return received, latencies


async def publish_phase(
    publisher: RawAblyClient, seconds: float, rate: float | None, window: int = 20
) -> tuple[int, float]:
    """Publish for `seconds` at `rate` msg/s (None: as fast as ACKs allow, `window` in flight)."""
    sent = 0
    started = time.perf_counter()
    deadline = started + seconds
    if rate is None:
        gate = asyncio.Semaphore(window)
        pending: set[asyncio.Task[Any]] = set()
        while time.perf_counter() < deadline:
            await gate.acquire()
            data = json.dumps({"t": time.time(), "n": sent})
            task = asyncio.create_task(publisher.publish(CHANNEL, [{"name": "m", "data": data}]))
            task.add_done_callback(lambda _t: gate.release())
            pending.add(task)
            task.add_done_callback(pending.discard)
            sent += 1
        await asyncio.gather(*pending)
    else:
        # Publishes are not awaited one by one: a slow ACK must not lower the offered rate.
        interval = 1 / rate
        next_at = started
        tasks = []
        while next_at < deadline:
            await asyncio.sleep(max(0, next_at - time.perf_counter()))
            data = json.dumps({"t": time.time(), "n": sent})
            tasks.append(
                asyncio.create_task(publisher.publish(CHANNEL, [{"name": "m", "data": data}]))
            )
            sent += 1
            next_at += interval
        took = time.perf_counter() - started
        await asyncio.gather(*tasks)
        return sent, took
    return sent, time.perf_counter() - started


async def bench(tiny: bool, workdir: Path) -> common.BenchResult:
    subscribers = 20 if tiny else 1000
    seconds = 1.0 if tiny else 8.0
    latency_rate = 10.0
    processes = 2
    with common.services() as started:
        ably, port = common.start_ably(workdir, max_inbound_rate=0)
        started.append(ably)
        services = []
        share = subscribers // processes
        for index in range(processes):
            count = share if index < processes - 1 else subscribers - share * (processes - 1)
            service = common.Service(
                f"subscribers{index}",
                [
                    common.PYTHON,
                    "-m",
                    "bench.fanout",
                    "--worker",
                    str(port),
                    str(count),
                    str(index * share),
                ],
                workdir,
            )
            started.append(service)
            services.append(service)
        for service in services:
            service.wait_for_output("ready", 120)
        workers = Workers(services)
        publisher = await RawAblyClient(port, common.DEV_ABLY_KEY, client_id="publisher").connect()
        try:
            await workers.report()  # discard anything before the measurement
            cpu_before = common.cpu_seconds(ably.pid)
            subscribers_cpu_before = sum(common.cpu_seconds(s.pid) for s in services)
            sent, took = await publish_phase(publisher, seconds, None)
            await asyncio.sleep(1.0)  # let deliveries drain
            server_cpu = common.cpu_seconds(ably.pid) - cpu_before
            subscribers_cpu = (
                sum(common.cpu_seconds(s.pid) for s in services) - subscribers_cpu_before
            )
            received, burst_latencies = await workers.report()
            delivered_per_second = received / (took + 1.0)
            expected = sent * subscribers
            sent_paced, took_paced = await publish_phase(publisher, seconds, latency_rate)
            await asyncio.sleep(0.5)
            received_paced, latencies = await workers.report()
        finally:
            await publisher.close()
            for service in services:
                assert service.process.stdin is not None
                service.process.stdin.write(b"quit\n")
                service.process.stdin.flush()
    rows = [
        [
            "as fast as ACKs allow",
            sent,
            received,
            f"{received / expected:.1%}" if expected else "-",
            delivered_per_second,
            common.percentile(burst_latencies, 0.5),
            common.percentile(burst_latencies, 0.99),
            server_cpu / (took + 1.0),
            subscribers_cpu / (took + 1.0),
        ],
        [
            f"{sent_paced / took_paced:.0f} publishes/s (paced)",
            sent_paced,
            received_paced,
            f"{received_paced / (sent_paced * subscribers):.1%}" if sent_paced else "-",
            received_paced / (took_paced + 0.5),
            common.percentile(latencies, 0.5),
            common.percentile(latencies, 0.99),
            "-",
            "-",
        ],
    ]
    common.print_table(
        f"Ably stand-in fan-out: 1 publisher -> {subscribers:,} subscribers "
        f"({processes} subscriber processes, latency sampled on 1 in {SAMPLE_EVERY})",
        [
            "phase",
            "published",
            "delivered",
            "delivered %",
            "delivered msg/s",
            "p50 ms",
            "p99 ms",
            "stand-in CPU s/s",
            "subscribers CPU s/s",
        ],
        rows,
    )
    p99 = common.percentile(latencies, 0.99)
    # /proc counts CPU in 10 ms ticks: too coarse for a tiny run, hence the guard.
    us_per_delivery = server_cpu / received * 1e6 if received and server_cpu else float("nan")
    common.note(
        f"  stand-in CPU: {common.fmt(us_per_delivery)} us per delivered message = about "
        f"{common.fmt(1e6 / us_per_delivery, 0)} deliveries/s per core of stand-in CPU"
    )
    summary = (
        f"{delivered_per_second:,.0f} delivered msg/s to {subscribers:,} subscribers "
        f"(target >= 50,000: {'met' if delivered_per_second >= 50_000 else 'NOT met'}); at "
        f"{latency_rate * subscribers:,.0f} msg/s p50 {common.fmt(common.percentile(latencies, 0.5))} "
        f"ms p99 {common.fmt(p99)} ms (target <= 20: {'met' if p99 <= 20 else 'NOT met'})"
    )
    figures = {
        "subscribers": subscribers,
        "published": sent,
        "delivered": received,
        "expected": expected,
        "delivered_per_second": delivered_per_second,
        "paced_published": sent_paced,
        "paced_delivered": received_paced,
        "paced_p50_ms": common.percentile(latencies, 0.5),
        "paced_p99_ms": p99,
        "stand_in_cpu_us_per_delivery": us_per_delivery,
    }
    return common.BenchResult("ably_fanout", summary, figures)


def main(argv: list[str] | None = None) -> common.BenchResult | None:
    parser = argparse.ArgumentParser(prog="python -m bench ably_fanout")
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--json", help="also write the figures here")
    parser.add_argument(
        "--worker", nargs=3, type=int, metavar=("PORT", "COUNT", "OFFSET"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.worker:
        asyncio.run(worker(*args.worker))
        return None
    with common.workdir("fanout") as workdir:
        result = asyncio.run(bench(args.tiny, workdir)).finish()
    common.write_json(args.json, result)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
