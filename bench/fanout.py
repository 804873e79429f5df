"""Ably stand-in fan-out: 1 publisher -> 1,000 subscribers on one channel.

The stand-in runs as its own process. Subscribers are raw JSON-protocol websocket clients
spread over worker processes, so the receiving side is not one interpreter; every subscriber
counts every MESSAGE frame it gets. One in ten subscribers also decodes each frame to take the
latency (publish time is in the message data, same host clock); those live in a process of their
own, so a sampled subscriber's timestamp does not wait behind hundreds of counting ones' reads
(as one client of real Ably on its own device would not).

Two phases:
- throughput: the publisher pipelines as fast as ACKs allow (the stand-in's 50 msg/s inbound
  limit is turned off for this process: it is a server throughput test, not a client) and the
  delivered msg/s across all subscribers is counted;
- latency: 10 publishes/s -> 10,000 deliveries/s, latency percentiles over every sampled delivery.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import uvloop
from websockets.frames import OP_PING, OP_PONG, OP_TEXT, Frame

from bench import common
from bench.rawably import ACTION_ATTACH, ACTION_ATTACHED, ACTION_CONNECTED, RawAblyClient

CHANNEL = "fanout:bench"
SAMPLE_EVERY = 10
# Subscribers attach in this many rounds, a batch from every process in each (see `worker`).
ATTACH_ROUNDS = 10


class CountingSubscriber(asyncio.Protocol):
    """A subscriber that costs the machine a few microseconds per delivery.

    The fan-out benchmark measures the stand-in; with a full websocket client per subscriber
    (`RawAblyClient`: a parser, a queue and a task wake-up per frame) the 1,000 receivers cost
    more CPU than the server they measure, on the same two cores. This one parses websocket
    frame headers itself in `data_received`, counts MESSAGE frames by their first bytes and
    decodes only the sampled ones. It still speaks the real protocol: an HTTP upgrade, Ably's
    CONNECTED, a masked ATTACH, ATTACHED, and pongs to pings.
    """

    def __init__(self, port: int, client_id: str, *, sampled: bool) -> None:
        query = urlencode(
            {
                "key": common.DEV_ABLY_KEY,
                "clientId": client_id,
                "format": "json",
                "heartbeats": "false",
                "v": "5",
            }
        )
        self.request = (
            f"GET /?{query} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}\r\n\r\n"
        ).encode()
        self.port = port
        self.sampled = sampled
        self.received = 0
        self.last_arrival = 0.0
        self.latencies: list[float] = []
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.upgraded = False
        # Control frames until ATTACHED; after that only MESSAGE frames matter.
        self.frames: asyncio.Queue[dict[str, Any]] | None = asyncio.Queue()
        self.lost: asyncio.Future[object] = asyncio.get_running_loop().create_future()

    async def start(self, channel: str) -> CountingSubscriber:
        loop = asyncio.get_running_loop()
        await loop.create_connection(lambda: self, "127.0.0.1", self.port)
        await self._expect(ACTION_CONNECTED)
        self.send({"action": ACTION_ATTACH, "channel": channel})
        await self._expect(ACTION_ATTACHED)
        self.frames = None
        return self

    async def _expect(self, action: int) -> None:
        assert self.frames is not None
        waiter = asyncio.ensure_future(self.frames.get())
        done, _ = await asyncio.wait({waiter, self.lost}, timeout=30, return_when="FIRST_COMPLETED")
        if waiter not in done:
            waiter.cancel()
            raise common.BenchError(f"subscriber: no action {action} ({self.lost!r})")
        frame = waiter.result()
        if frame.get("action") != action:
            raise common.BenchError(f"subscriber: expected action {action}, got {frame}")

    def send(self, frame: dict[str, Any]) -> None:
        assert self.transport is not None
        payload = json.dumps(frame).encode()
        self.transport.write(Frame(OP_TEXT, payload).serialize(mask=True))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        offset = 0
        if not self.upgraded:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            if not buffer.startswith(b"HTTP/1.1 101"):
                self.connection_lost(common.BenchError(f"upgrade refused: {bytes(buffer[:200])!r}"))
                assert self.transport is not None
                self.transport.close()
                return
            self.upgraded = True
            offset = end + 4
        size = len(buffer)
        while size - offset >= 2:
            length = buffer[offset + 1] & 0x7F
            header = 2
            if length == 126:
                header = 4
                length = int.from_bytes(buffer[offset + 2 : offset + 4], "big")
            elif length == 127:
                header = 10
                length = int.from_bytes(buffer[offset + 2 : offset + 10], "big")
            if size - offset < header + length:
                break
            opcode = buffer[offset] & 0x0F
            start = offset + header
            offset = start + length
            if opcode == OP_TEXT:
                if buffer.startswith(b'{"action":15', start):
                    self.received += 1
                    self.last_arrival = time.time()
                    if self.sampled:
                        self._sample(bytes(buffer[start:offset]))
                elif self.frames is not None:
                    self.frames.put_nowait(json.loads(bytes(buffer[start:offset])))
            elif opcode == OP_PING:
                assert self.transport is not None
                pong = Frame(OP_PONG, bytes(buffer[start:offset])).serialize(mask=True)
                self.transport.write(pong)
        del buffer[:offset]

    def _sample(self, raw: bytes) -> None:
        for message in json.loads(raw).get("messages") or ():
            sent = json.loads(message.get("data") or "{}").get("t")
            if sent:
                self.latencies.append((self.last_arrival - sent) * 1000)


async def worker(port: int, count: int, offset: int, sampled: bool, rounds: int) -> None:
    """Subscriber process, driven by stdin lines: `attach` attaches its next batch of
    subscribers (one of `rounds`) and prints `attached <n>`; `report` prints the totals since
    the last report and resets them; `quit` (or end of input) closes everything.

    The channel delivers in attach order, so the driver attaches every process's batch n before
    any batch n+1: the sampled subscribers are spread through the delivery order instead of all
    being first (or last) to receive each message.
    """
    gate = asyncio.Semaphore(50)

    async def subscribe(index: int) -> CountingSubscriber:
        async with gate:
            subscriber = CountingSubscriber(port, f"sub-{offset + index}", sampled=sampled)
            return await subscriber.start(CHANNEL)

    batches = [range(count * n // rounds, count * (n + 1) // rounds) for n in range(rounds)]
    subscribers: list[CountingSubscriber] = []
    loop = asyncio.get_running_loop()
    while True:
        line = (await loop.run_in_executor(None, sys.stdin.readline)).strip()
        if not line or line == "quit":
            break
        if line == "attach":
            batch = batches.pop(0)
            subscribers += await asyncio.gather(*(subscribe(i) for i in batch))
            print(f"attached {rounds - len(batches)}", flush=True)
            continue
        # "report": totals since the last report, then reset.
        report = {
            "received": sum(s.received for s in subscribers),
            "last_arrival": max((s.last_arrival for s in subscribers), default=0.0),
            "latencies": [value for s in subscribers for value in s.latencies],
        }
        for s in subscribers:
            s.received = 0
            s.latencies = []
        print(json.dumps(report), flush=True)
    for s in subscribers:
        if s.transport is not None:
            s.transport.close()


class Workers:
    def __init__(self, services: list[common.Service]) -> None:
        self.services = services
        self._seen = [0] * len(services)

    async def report(self) -> tuple[int, float, list[float]]:
        """Deliveries, the wall-clock time of the last one, and sampled latencies."""
        received = 0
        last_arrival = 0.0
        latencies: list[float] = []
        for service in self.services:
            service.command("report")
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
            last_arrival = max(last_arrival, data["last_arrival"])
            latencies += data["latencies"]
        return received, last_arrival, latencies


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
    # Two processes of counting subscribers and one of the sampled ones (1 in SAMPLE_EVERY).
    sampled = max(1, subscribers // SAMPLE_EVERY)
    counting = subscribers - sampled
    shares = [(counting // 2, False), (counting - counting // 2, False), (sampled, True)]
    processes = len(shares)
    with common.services() as started:
        ably, port = common.start_ably(workdir, max_inbound_rate=0)
        started.append(ably)
        services = []
        offset = 0
        for index, (count, sampling) in enumerate(shares):
            service = common.Service(
                f"subscribers{index}",
                [
                    common.PYTHON,
                    "-m",
                    "bench.fanout",
                    "--worker",
                    str(port),
                    str(count),
                    str(offset),
                    str(int(sampling)),
                    str(ATTACH_ROUNDS),
                ],
                workdir,
            )
            offset += count
            started.append(service)
            services.append(service)
        for round_number in range(1, ATTACH_ROUNDS + 1):
            for service in services:
                service.command("attach")
            for service in services:
                service.wait_for_output(f"attached {round_number}\n", 120)
        workers = Workers(services)
        publisher = await RawAblyClient(port, common.DEV_ABLY_KEY, client_id="publisher").connect()
        try:
            await workers.report()  # discard anything before the measurement
            cpu_before = common.cpu_seconds(ably.pid)
            subscribers_cpu_before = sum(common.cpu_seconds(s.pid) for s in services)
            started_at = time.time()
            sent, took = await publish_phase(publisher, seconds, None)
            await asyncio.sleep(1.0)  # let deliveries drain
            server_cpu = common.cpu_seconds(ably.pid) - cpu_before
            subscribers_cpu = (
                sum(common.cpu_seconds(s.pid) for s in services) - subscribers_cpu_before
            )
            received, last_arrival, burst_latencies = await workers.report()
            # Over the time deliveries took, first publish to last delivery (not the drain wait).
            delivered_per_second = received / max(last_arrival - started_at, took)
            expected = sent * subscribers
            sent_paced, took_paced = await publish_phase(publisher, seconds, latency_rate)
            await asyncio.sleep(0.5)
            received_paced, _, latencies = await workers.report()
        finally:
            await publisher.close()
            for service in services:
                service.command("quit")
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
        f"({processes} subscriber processes; latency on {sampled:,} of them, in a process of "
        "their own)",
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
        "--worker",
        nargs=5,
        type=int,
        metavar=("PORT", "COUNT", "OFFSET", "SAMPLED", "ROUNDS"),
        help=argparse.SUPPRESS,
    )
    args = parser.parse_args(argv)
    if args.worker:
        # uvloop: a receiver costs the machine less, leaving the cores to the stand-in measured.
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            port, count, offset, sampled, rounds = args.worker
            runner.run(worker(port, count, offset, bool(sampled), rounds))
        return None
    with common.workdir("fanout") as workdir:
        result = asyncio.run(bench(args.tiny, workdir)).finish()
    common.write_json(args.json, result)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
