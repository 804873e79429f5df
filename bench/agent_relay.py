"""Agent relay: N concurrent conversations, Claude stand-in at 80 tokens/s, 2 devices each.

Processes (each measured on its own): the Ably stand-in, the Anthropic stand-in wrapped by
`bench.anthropic_tap` (it timestamps every text delta it emits), the publisher under test (our
agent = `manage.py run_agent`, or `bench.naive_publisher`), and this driver, which runs the
subscribing devices as raw JSON-protocol websocket clients (`bench.rawably`: one socket and no
SDK per device, so the subscriber side stays cheap; every device is its own connection).

For every conversation the first device publishes "Say exactly: <unique text>" and both devices
rebuild the reply from what arrives with the product's fold (`conversations.transcript`): its
final status must be `complete` and its text exactly the expected text. Per emitted delta,
latency = arrival of the Ably message that completes it at a device - the tap's emission time
(same host clock). Fragments are also checked in arrival order against the exact expected text:
duplicated, reordered and lost (deltas that never arrived in order) must all be 0, even where
the fold would have hidden them. Published messages per reply come from the publisher (the
agent's own per-reply log line, + its `start` and `stop`), CPU from /proc.

"Under the production limits" means the run finished with every reply complete and intact and
no publish or attach refused by the stand-in's per-connection limits (50 msg/s, 200 channels).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import re
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench import common
from bench.rawably import RawAblyClient, RawAblyError, open_clients
from conversations.transcript import FoldedReply, Transcript

TOKENS_PER_SECOND = 80.0
TTFT_MS = 300.0
AGENT_CLIENT_ID = "agent"
DEVICES_PER_CONVERSATION = 2
LIMIT_MARKERS = ("42911", "Rate limit exceeded", "40031", "channels per connection")
REPLY_LOG = re.compile(r"reply conversation=(\S+) .*? messages=(\d+)")
# `run_agent --log-loop-lag`: the event loop's worst lag per interval.
LOOP_LAG_LOG = re.compile(r"event loop worst lag ([\d.]+) ms")
LOOP_LAG_INTERVAL_SECONDS = 1.0

WORDS = (
    "relay stream token channel device presence history append latency budget window "
    "message conversation reply prompt agent model connection socket frame order quiet "
    "steady bright river stone cloud signal harbour lantern meadow orbit pepper quartz"
).split()


def reply_text(index: int, tokens: int) -> str:
    """Deterministic, unique text of about `tokens` stand-in tokens (words and punctuation)."""
    words = [f"Reply {index}:"]
    count = 3
    step = 0
    while count < tokens:
        word = WORDS[(index * 7 + step * 13) % len(WORDS)]
        step += 1
        if step % 9 == 0:
            words.append(word + ",")
            count += 2
        else:
            words.append(word)
            count += 1
    return " ".join(words) + "."


def _agent_transcript() -> Transcript:
    return Transcript(AGENT_CLIENT_ID)


@dataclass
class DeviceView:
    """What one device received for one conversation: the reply as the page would show it
    (`transcript`), and every text fragment with its arrival time, in arrival order."""

    fragments: list[tuple[float, str, int | None, bool]] = field(default_factory=list)
    agent_messages: int = 0
    # When the reply became final here (its first `stop`).
    stopped_at: float | None = None
    transcript: Transcript = field(default_factory=_agent_transcript)

    @property
    def reply(self) -> FoldedReply | None:
        return next(iter(self.transcript.replies.values()), None)

    @property
    def stop_status(self) -> str:
        reply = self.reply
        return str(reply.status) if reply is not None and reply.final else ""

    @property
    def text(self) -> str:
        reply = self.reply
        return reply.text if reply is not None else ""


@dataclass
class Scenario:
    publisher: str  # "agent" or "naive"
    conversations: int
    reply_tokens: int
    connections: int = 0
    flush_window: float | None = None
    pattern: str = "message-per-response"
    # "" for the agent as deployed; otherwise what this run changes, for the table.
    variant: str = ""

    @property
    def label(self) -> str:
        return f"{self.publisher} ({self.variant})" if self.variant else self.publisher


@dataclass
class Outcome:
    scenario: Scenario
    latencies_ms: list[float]
    lost: int
    duplicated: int
    reordered: int
    incomplete: int
    repaired: int
    # Devices whose reply ended `complete` with other text than the model's.
    wrong_text: int
    limit_rejections: int
    published_per_reply: float
    delivered_per_reply: float
    cpu_seconds: float
    tokens: int
    rss_per_conversation: float
    stream_rate: float
    peak_streams: int
    wall_seconds: float
    # The agent's worst event-loop lag while the replies streamed (nan for the naive publisher).
    loop_lag_ms: float = math.nan
    notes: list[str] = field(default_factory=list)

    @property
    def within_limits(self) -> bool:
        return (
            self.limit_rejections == 0
            and self.incomplete == 0
            and self.wrong_text == 0
            and self.lost == 0
            and self.duplicated == 0
            and self.reordered == 0
        )

    @property
    def collapsed(self) -> bool:
        """Fewer than half of the devices saw their reply complete."""
        devices = self.scenario.conversations * DEVICES_PER_CONVERSATION
        return self.incomplete * 2 > devices

    @property
    def cpu_us_per_token(self) -> float:
        return self.cpu_seconds / self.tokens * 1e6 if self.tokens else math.nan

    def figures(self) -> dict[str, Any]:
        return {
            "publisher": self.scenario.publisher,
            "label": self.scenario.label,
            "flush_window": self.scenario.flush_window,
            "conversations": self.scenario.conversations,
            "connections": self.scenario.connections,
            "p50_ms": common.percentile(self.latencies_ms, 0.5),
            "p99_ms": common.percentile(self.latencies_ms, 0.99),
            "deltas_measured": len(self.latencies_ms),
            "lost": self.lost,
            "duplicated": self.duplicated,
            "reordered": self.reordered,
            "incomplete": self.incomplete,
            "wrong_text": self.wrong_text,
            "repaired": self.repaired,
            "limit_rejections": self.limit_rejections,
            "published_per_reply": self.published_per_reply,
            "delivered_per_reply": self.delivered_per_reply,
            "cpu_us_per_token": self.cpu_us_per_token,
            "tokens": self.tokens,
            "rss_kb_per_conversation": self.rss_per_conversation / 1024,
            "stream_tokens_per_second": self.stream_rate,
            "peak_concurrent_streams": self.peak_streams,
            "within_limits": self.within_limits,
            "wall_seconds": self.wall_seconds,
            "loop_lag_ms": self.loop_lag_ms,
            "notes": self.notes,
        }


# --- analysis ---------------------------------------------------------------------------------


def analyse_device(
    view: DeviceView, expected: str, emissions: Sequence[tuple[float, int]], *, seq_per_delta: bool
) -> tuple[list[float], int, int, int, int]:
    """(latencies ms, lost deltas, duplicated fragments, reordered fragments, repairs) for one
    device, from its fragments in arrival order."""
    arrivals: list[tuple[float, int]] = []  # (time, text complete up to this offset)
    duplicated = reordered = repaired = 0
    if seq_per_delta:
        # One message per emitted delta (naive publisher): seq i is delta i.
        seen: set[int] = set()
        highest = -1
        for _, _, seq, _ in view.fragments:
            if seq is None:
                continue
            if seq in seen:
                duplicated += 1
                continue
            if seq < highest:
                reordered += 1
            seen.add(seq)
            highest = max(highest, seq)
        latencies = []
        times = {seq: arrived for arrived, _, seq, _ in view.fragments if seq is not None}
        for index, (emitted, _) in enumerate(emissions):
            if index in times:
                latencies.append((times[index] - emitted) * 1000)
        lost = len(emissions) - len(seen & set(range(len(emissions))))
        return latencies, lost, duplicated, reordered, 0
    position = 0
    # Fragments that arrived past a gap: start offset -> end offset.
    ahead: dict[int, int] = {}
    previous = ""
    for arrived, text, _, replaces in view.fragments:
        if replaces:
            # A repair (the whole text so far, sent after a refused publish).
            if not expected.startswith(text):
                reordered += 1
            elif len(text) > position:
                repaired += 1
                position = len(text)
                ahead = {start: end for start, end in ahead.items() if start >= position}
                while position in ahead:
                    position = ahead.pop(position)
                arrivals.append((arrived, position))
        elif not text:
            continue
        elif expected.startswith(text, position):
            position += len(text)
            while position in ahead:
                # Text that had arrived before this earlier fragment: out of order.
                position = ahead.pop(position)
                reordered += 1
            arrivals.append((arrived, position))
        else:
            # Not the continuation: a repeat, or text from beyond a gap (a refused publish).
            # Reply text repeats words, so a short fragment may fit both; it is a duplicate
            # only if it cannot continue any gap or repeats the fragment just received.
            start = expected.find(text, position)
            if text == previous or (start < 0 and text in expected[:position]):
                duplicated += 1
            elif start < 0:
                reordered += 1  # text that belongs nowhere in the reply
            elif start in ahead:
                duplicated += 1
            else:
                ahead[start] = start + len(text)
        previous = text
    latencies = []
    cursor = 0
    lost = 0
    for emitted, end in emissions:
        while cursor < len(arrivals) and arrivals[cursor][1] < end:
            cursor += 1
        if cursor == len(arrivals):
            lost += 1
            continue
        latencies.append((arrivals[cursor][0] - emitted) * 1000)
    return latencies, lost, duplicated, reordered, repaired


def peak_concurrency(replies: Sequence[dict[str, Any]]) -> tuple[int, float]:
    """Most streams emitting at once, and the median per-stream token rate achieved."""
    from emulators.anthropic.core import count_tokens

    edges: list[tuple[float, int]] = []
    rates: list[float] = []
    for reply in replies:
        deltas = reply["deltas"]
        if len(deltas) < 2:
            continue
        start, end = deltas[0][0], deltas[-1][0]
        edges += [(start, 1), (end, -1)]
        if end > start:
            rates.append(count_tokens(reply["text"]) / (end - start))
    peak = current = 0
    for _, change in sorted(edges):
        current += change
        peak = max(peak, current)
    return peak, common.percentile(rates, 0.5)


# --- one run ----------------------------------------------------------------------------------


class Devices:
    """All devices of a run, keyed by (conversation index, device index)."""

    def __init__(self, conversations: int) -> None:
        self.views = {
            (c, d): DeviceView()
            for c in range(conversations)
            for d in range(DEVICES_PER_CONVERSATION)
        }
        self.remaining = len(self.views)
        self.all_stopped = asyncio.Event()
        self.channel_index: dict[str, int] = {}

    def listener(self, device: int) -> Any:
        def on_message(arrived: float, channel: str, message: dict[str, Any]) -> None:
            conversation = self.channel_index.get(channel)
            if conversation is None or message.get("clientId") != AGENT_CLIENT_ID:
                return
            view = self.views[(conversation, device)]
            view.agent_messages += 1
            reply = view.transcript.apply(message)
            name = message.get("name")
            headers = (message.get("extras") or {}).get("headers") or {}
            if name in ("response", "token", "snapshot"):
                data = message.get("data") or ""
                action = message.get("action")
                # `update` (action 1) and `snapshot` carry the whole text so far (repairs).
                replaces = name == "snapshot" or (name == "response" and action == 1)
                seq = headers.get("seq") if name == "token" else None
                view.fragments.append((arrived, data, seq, replaces))
            if view.stopped_at is None and reply is not None and reply.final:
                view.stopped_at = arrived
                self.remaining -= 1
                if self.remaining == 0:
                    self.all_stopped.set()

        return on_message


async def _sample_rss(pid: int, peak: list[int], stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            peak[0] = max(peak[0], common.rss_bytes(pid))
        except OSError:
            return
        try:
            await asyncio.wait_for(stop.wait(), 0.25)
        except TimeoutError:
            pass


async def run_scenario(scenario: Scenario, base_env: dict[str, str], workdir: Path) -> Outcome:
    n = scenario.conversations
    texts = [reply_text(i, scenario.reply_tokens) for i in range(n)]
    expected_seconds = TTFT_MS / 1000 + scenario.reply_tokens / TOKENS_PER_SECOND
    deadline_seconds = 60 + expected_seconds * 3 + n * 0.12
    notes: list[str] = []
    with common.services() as started:
        ably, ably_port = common.start_ably(workdir)
        started.append(ably)
        tap_port = common.free_port()
        tap = common.Service(
            "anthropic",
            [
                common.PYTHON,
                "-m",
                "bench.anthropic_tap",
                "--port",
                str(tap_port),
                "--tokens-per-second",
                str(TOKENS_PER_SECOND),
                "--ttft-ms",
                str(TTFT_MS),
            ],
            workdir,
        )
        started.append(tap)
        common.wait_for_port(tap_port, tap.process, 30, tap.log_path)
        anthropic_url = f"http://127.0.0.1:{tap_port}"
        env = {
            **base_env,
            "ABLY_ENDPOINT": f"http://127.0.0.1:{ably_port}",
            "ABLY_API_KEY": common.DEV_ABLY_KEY,
            "ANTHROPIC_BASE_URL": anthropic_url,
        }

        if scenario.publisher == "agent":
            # The agent starts idle (no conversations yet) so its RSS before and after the
            # conversations arrive tells the memory one conversation costs; it then finds them
            # the way it does in production, when a device opens the channel.
            await asyncio.to_thread(_clear_database)
            publisher = _start_agent(scenario, env, workdir)
            started.append(publisher)
            await asyncio.to_thread(publisher.wait_for_output, " ready: ", 60)
            rss_idle = common.rss_bytes(publisher.pid)
        channels, client_ids, prompts_by_device = await _prepare(scenario, texts)
        if scenario.publisher != "agent":
            jobs = [
                {"channel": channel, "prompt": f"Say exactly: {text}"}
                for channel, text in zip(channels, texts, strict=True)
            ]
            jobs_path = workdir / "jobs.json"
            jobs_path.write_text(json.dumps(jobs))
            publisher = common.Service(
                "naive",
                [
                    common.PYTHON,
                    "-m",
                    "bench.naive_publisher",
                    "--ably-port",
                    str(ably_port),
                    "--anthropic-url",
                    anthropic_url,
                    "--jobs",
                    str(jobs_path),
                ],
                workdir,
                env=env,
            )
            started.append(publisher)
            publisher.wait_for_output("ready", 60)

        devices = Devices(n)
        devices.channel_index = {channel: i for i, channel in enumerate(channels)}
        clients = await open_clients(
            n * DEVICES_PER_CONVERSATION,
            lambda k: RawAblyClient(
                ably_port,
                common.DEV_ABLY_KEY,
                client_id=client_ids[k // DEVICES_PER_CONVERSATION],
                on_message=devices.listener(k % DEVICES_PER_CONVERSATION),
            ),
        )
        try:
            gate = asyncio.Semaphore(100)

            async def attach(k: int) -> None:
                async with gate:
                    await clients[k].attach(channels[k // DEVICES_PER_CONVERSATION])

            await asyncio.gather(*(attach(k) for k in range(len(clients))))
            if scenario.publisher == "agent":
                await _wait_for_agent_attached(publisher, n, notes)
            else:
                rss_idle = common.rss_bytes(publisher.pid)
            async with httpx.AsyncClient(base_url=anthropic_url) as http:
                await http.post("/_bench/reset")
            rss_before = common.rss_bytes(publisher.pid)
            cpu_before = common.cpu_seconds(publisher.pid)
            log_before = len(publisher.output())
            peak = [rss_before]
            sampling = asyncio.Event()
            sampler = asyncio.create_task(_sample_rss(publisher.pid, peak, sampling))
            started_at = time.monotonic()
            if scenario.publisher == "agent":
                await _publish_prompts(clients, channels, prompts_by_device)
            else:
                publisher.command("go")
            try:
                await asyncio.wait_for(devices.all_stopped.wait(), deadline_seconds)
            except TimeoutError:
                notes.append(
                    f"{devices.remaining} of {len(devices.views)} devices saw no `stop` "
                    f"within {deadline_seconds:.0f}s"
                )
            wall = time.monotonic() - started_at
            cpu_after = common.cpu_seconds(publisher.pid)
            sampling.set()
            await sampler
            async with httpx.AsyncClient(base_url=anthropic_url, timeout=60) as http:
                replies = (await http.get("/_bench/emissions")).json()["replies"]
        finally:
            await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)

        loop_lag_ms = math.nan
        if scenario.publisher == "naive":
            publisher.process.wait(30)
            tally = json.loads(publisher.output().strip().splitlines()[-1])
            published_per_reply = tally["published"] / n
            limit_rejections = tally["rejected"]
            if tally.get("first_error"):
                notes.append(f"naive publisher: {tally['first_error']}")
        else:
            # The agent logs a reply's line after its `stop` (and the database write): give the
            # last ones a moment to land.
            log_deadline = time.monotonic() + 10
            while (
                len(REPLY_LOG.findall(publisher.output())) < n - devices.remaining
                and time.monotonic() < log_deadline
            ):
                await asyncio.sleep(0.1)
            log = publisher.output()
            # Lag lines from the prompts on, plus one interval so the last one is logged.
            await asyncio.sleep(LOOP_LAG_INTERVAL_SECONDS)
            lags = [
                float(m.group(1)) for m in LOOP_LAG_LOG.finditer(publisher.output()[log_before:])
            ]
            loop_lag_ms = max(lags, default=math.nan)
            counts = [int(m.group(2)) for m in REPLY_LOG.finditer(log)]
            # The agent logs the stream's own messages; + `start` and `stop`.
            published_per_reply = (sum(counts) + 2 * len(counts)) / max(1, len(counts))
            limit_rejections = sum(log.count(marker) for marker in LIMIT_MARKERS)
            if "busy channels; not attaching" in log:
                limit_rejections += log.count("busy channels; not attaching")
                notes.append("the agent refused channels beyond its per-connection limit")

    by_text = {reply["text"]: reply for reply in replies}
    latencies: list[float] = []
    lost = duplicated = reordered = incomplete = repaired = wrong_text = 0
    delivered = 0
    tokens = 0
    from emulators.anthropic.core import count_tokens

    for index, text in enumerate(texts):
        reply = by_text.get(text)
        emissions = [tuple(delta) for delta in reply["deltas"]] if reply else []
        if reply is None:
            incomplete += DEVICES_PER_CONVERSATION
            continue
        tokens += count_tokens(text)
        for device in range(DEVICES_PER_CONVERSATION):
            view = devices.views[(index, device)]
            delivered += view.agent_messages
            found = analyse_device(
                view, text, emissions, seq_per_delta=scenario.publisher == "naive"
            )
            latencies += found[0]
            if view.stopped_at is None or view.stop_status != "complete":
                # A reply still streaming at the deadline is unfinished, not lost: counted
                # here, and its fragments are not judged (its text is incomplete by design).
                incomplete += 1
                continue
            if view.text != text:
                wrong_text += 1
            lost += found[1]
            duplicated += found[2]
            reordered += found[3]
            repaired += found[4]
    if wrong_text:
        notes.append(
            f"{wrong_text} device(s) showed a complete reply whose text is not the model's"
        )
    peak_streams, stream_rate = peak_concurrency(replies)
    return Outcome(
        scenario=scenario,
        latencies_ms=latencies,
        lost=lost,
        duplicated=duplicated,
        reordered=reordered,
        incomplete=incomplete,
        repaired=repaired,
        wrong_text=wrong_text,
        limit_rejections=limit_rejections,
        published_per_reply=published_per_reply,
        delivered_per_reply=delivered / (n * DEVICES_PER_CONVERSATION),
        cpu_seconds=cpu_after - cpu_before,
        tokens=tokens,
        rss_per_conversation=max(0, peak[0] - rss_idle) / n,
        stream_rate=stream_rate,
        peak_streams=peak_streams,
        wall_seconds=wall,
        loop_lag_ms=loop_lag_ms,
        notes=notes,
    )


async def _prepare(
    scenario: Scenario, texts: list[str]
) -> tuple[list[str], list[str], dict[int, dict[str, Any]]]:
    """Channels, device clientIds and prompts; for the agent, users and conversations in the DB."""
    n = scenario.conversations
    prompts = {
        i: {
            "name": "prompt",
            "data": f"Say exactly: {texts[i]}",
            "extras": {"headers": {"promptId": str(uuid.uuid4())}},
        }
        for i in range(n)
    }
    if scenario.publisher != "agent":
        channels = [f"ai:{uuid.uuid4()}" for _ in range(n)]
        return channels, [f"device-{i}" for i in range(n)], prompts

    def create() -> tuple[list[str], list[str]]:
        from conversations import realtime
        from conversations.models import Conversation

        users = common.bulk_users(n, "bench-relay-")
        conversations = [Conversation(owner=user) for user in users]
        Conversation.objects.bulk_create(conversations, batch_size=500)
        return (
            [c.channel_name for c in conversations],
            [realtime.client_id_for_user(user) for user in users],
        )

    channels, client_ids = await asyncio.to_thread(create)
    return channels, client_ids, prompts


def _clear_database() -> None:
    """Forget the previous run's users and conversations (the agent would attach them)."""
    from django.contrib.auth import get_user_model

    from conversations.models import Conversation

    Conversation.objects.all().delete()
    get_user_model().objects.filter(username__startswith="bench-relay-").delete()


async def _wait_for_agent_attached(agent: common.Service, n: int, notes: list[str]) -> None:
    """Until the agent has attached all n conversation channels (it logs each attach)."""
    deadline = time.monotonic() + 60 + n * 0.1
    while (attached := agent.output().count("attached ai:")) < n:
        if time.monotonic() > deadline:
            notes.append(f"the agent attached only {attached} of {n} channels before prompts")
            return
        await asyncio.sleep(0.2)


def _start_agent(scenario: Scenario, env: dict[str, str], workdir: Path) -> common.Service:
    args = [
        common.PYTHON,
        "-m",
        "bench.agent_process",
        "--agent-id",
        "bench-agent",
        "--no-titles",
        "--connections",
        str(scenario.connections),
        "--concurrency",
        str(max(1, scenario.conversations)),
        "--streaming-pattern",
        scenario.pattern,
        "--log-loop-lag",
        str(LOOP_LAG_INTERVAL_SECONDS),
    ]
    if scenario.flush_window is not None:
        args += ["--flush-window", str(scenario.flush_window)]
    return common.Service("agent", args, workdir, env={**env, "LOG_LEVEL": "INFO"})


async def _publish_prompts(
    clients: list[RawAblyClient], channels: list[str], prompts: dict[int, dict[str, Any]]
) -> None:
    gate = asyncio.Semaphore(200)

    async def one(index: int) -> None:
        async with gate:
            try:
                await clients[index * DEVICES_PER_CONVERSATION].publish(
                    channels[index], [prompts[index]]
                )
            except RawAblyError as error:
                raise common.BenchError(f"prompt {index} was refused: {error}") from error

    await asyncio.gather(*(one(i) for i in range(len(channels))))


# --- the benchmark ----------------------------------------------------------------------------


LATENCY_NS = (10, 30, 100)
FLOOR_NS = (10, 30)
REPLIES_PER_CONNECTION_AT_FULL_PACE = 2
LATENCY_TARGET_MS = 50.0


def agent_connections(conversations: int) -> int:
    # The agent's default pool is 4; beyond 4 x 150 conversations, enough connections to stay
    # well under the 200-channel ceiling.
    return max(4, math.ceil(conversations / 150))


def _progress(outcome: Outcome) -> None:
    f = outcome.figures()
    common.note(
        f"  -> p50 {common.fmt(f['p50_ms'])} ms, p99 {common.fmt(f['p99_ms'])} ms, "
        f"lost/dup/reordered {outcome.lost}/{outcome.duplicated}/{outcome.reordered}, "
        f"incomplete {outcome.incomplete}, limit refusals {outcome.limit_rejections}, "
        f"{outcome.wall_seconds:.0f}s"
    )


def ladder(tiny: bool) -> tuple[list[int], list[int], int]:
    """(agent N values, naive N values, reply tokens)."""
    if tiny:
        return [5], [1, 2], 24
    return [10, 30, 100, 300, 1000], [1, 2, 4, 8], 300


async def bench(
    tiny: bool,
    env: dict[str, str],
    workdir: Path,
    *,
    agent_ns: list[int] | None = None,
    naive_ns: list[int] | None = None,
) -> common.BenchResult:
    default_agent_ns, default_naive_ns, reply_tokens = ladder(tiny)
    agent_ns = default_agent_ns if agent_ns is None else agent_ns
    naive_ns = default_naive_ns if naive_ns is None else naive_ns
    outcomes: list[Outcome] = []
    skipped: list[int] = []

    async def measure(scenario: Scenario) -> Outcome:
        common.note(
            f"{scenario.label}: {scenario.conversations} conversations on "
            f"{scenario.connections} connection(s) ..."
        )
        outcome = await run_scenario(scenario, env, workdir)
        outcomes.append(outcome)
        _progress(outcome)
        return outcome

    for n in agent_ns:
        if outcomes and outcomes[-1].collapsed:
            # Past a collapse a larger N only measures the same overload for longer.
            skipped.append(n)
            continue
        await measure(Scenario("agent", n, reply_tokens, connections=agent_connections(n)))
    if not tiny:
        # Latency is a matter of connections: Ably allows 50 msg/s per connection and a reply
        # flushed every 50 ms wants 20, so a connection carries two replies at full pace. Then
        # the floor: a connection each and no flush window, every delta sent as it comes
        # (27 msg/s per reply, within the limit), i.e. the naive publisher's message count.
        for n in LATENCY_NS:
            connections = math.ceil(n / REPLIES_PER_CONNECTION_AT_FULL_PACE)
            await measure(
                Scenario("agent", n, reply_tokens, connections=connections, variant="2 conv/conn")
            )
        for n in FLOOR_NS:
            await measure(
                Scenario(
                    "agent",
                    n,
                    reply_tokens,
                    connections=n,
                    flush_window=0.0,
                    variant="1 conv/conn, flush 0",
                )
            )
    for n in naive_ns:
        outcome = await measure(Scenario("naive", n, reply_tokens, connections=1))
        if not outcome.within_limits:
            break  # Larger N only breaks the limits harder.

    rows = []
    for o in outcomes:
        f = o.figures()
        rows.append(
            [
                f["label"],
                f["conversations"],
                f["connections"],
                f["p50_ms"],
                f["p99_ms"],
                f"{o.lost}/{o.duplicated}/{o.reordered}",
                o.incomplete,
                o.limit_rejections,
                o.repaired,
                f["published_per_reply"],
                f["delivered_per_reply"],
                f["cpu_us_per_token"],
                f["rss_kb_per_conversation"],
                f["stream_tokens_per_second"],
                f["peak_concurrent_streams"],
                f["loop_lag_ms"],
                "yes" if o.within_limits else "NO",
            ]
        )
    common.print_table(
        f"Agent relay ({TOKENS_PER_SECOND:.0f} tokens/s, {reply_tokens}-token replies, "
        f"{DEVICES_PER_CONVERSATION} raw-websocket devices per conversation)",
        [
            "publisher",
            "N",
            "conns",
            "p50 ms",
            "p99 ms",
            "lost/dup/reord",
            "incomplete",
            "limit refusals",
            "repairs",
            "published/reply",
            "delivered/reply/device",
            "CPU us/token",
            "RSS KB/conv",
            "stream tok/s",
            "peak streams",
            "worst loop lag ms",
            "within limits",
        ],
        rows,
    )
    for n in skipped:
        common.note(
            f"  agent N={n}: not run, a smaller N already collapsed (most replies unfinished)"
        )
    for o in outcomes:
        for text in o.notes:
            common.note(f"  note ({o.scenario.publisher}, N={o.scenario.conversations}): {text}")

    default_agent = [
        o for o in outcomes if o.scenario.publisher == "agent" and not o.scenario.variant
    ]
    agent_ok = [o for o in default_agent if o.within_limits]
    naive_ok = [o for o in outcomes if o.scenario.publisher == "naive" and o.within_limits]
    agent_max = max((o.scenario.conversations for o in agent_ok), default=0)
    naive_max = max((o.scenario.conversations for o in naive_ok), default=0)
    ratio = agent_max / naive_max if naive_max else math.inf if agent_max else math.nan
    largest = max(
        default_agent or outcomes,
        key=lambda o: o.scenario.conversations,
    )
    # The largest load any agent configuration carried intact at the latency target.
    fast = [
        o
        for o in outcomes
        if o.scenario.publisher == "agent"
        and o.within_limits
        and common.percentile(o.latencies_ms, 0.99) <= LATENCY_TARGET_MS
    ]
    fastest_max = max(fast, key=lambda o: o.scenario.conversations, default=None)
    figures = {
        "runs": [o.figures() for o in outcomes],
        "agent_max_n_at_latency_target": fastest_max.scenario.conversations if fastest_max else 0,
        "agent_max_n": agent_max,
        "naive_max_n": naive_max,
        "ratio": ratio,
        "skipped_agent_n": skipped,
    }
    summary = (
        f"agent carries {agent_max} conversations within limits vs naive {naive_max} "
        f"({common.fmt(ratio)}x); at N={largest.scenario.conversations} p50 "
        f"{common.fmt(common.percentile(largest.latencies_ms, 0.5))} ms p99 "
        f"{common.fmt(common.percentile(largest.latencies_ms, 0.99))} ms, "
        f"lost/dup/reordered {largest.lost}/{largest.duplicated}/{largest.reordered}, "
        f"{common.fmt(largest.published_per_reply)} msgs/reply, "
        f"{common.fmt(largest.cpu_us_per_token)} us CPU/token; p99 <= "
        f"{LATENCY_TARGET_MS:.0f} ms up to N="
        + (
            f"{fastest_max.scenario.conversations} ({fastest_max.scenario.label}, "
            f"{fastest_max.scenario.connections} connections)"
            if fastest_max
            else "none measured"
        )
    )
    # The machine-independent ceiling: how many 80 tokens/s replies one core of agent CPU carries.
    cheapest = min((o.cpu_us_per_token for o in default_agent), default=math.nan)
    per_core = 1e6 / (cheapest * TOKENS_PER_SECOND) if cheapest > 0 else math.nan
    figures["agent_conversations_per_core"] = per_core
    common.note(
        f"  agent CPU: {common.fmt(cheapest)} us/token at best = about {common.fmt(per_core, 0)} "
        f"concurrent {TOKENS_PER_SECOND:.0f} tokens/s replies per core of agent CPU"
    )
    return common.BenchResult("agent_relay", summary, figures)


def main(argv: list[str] | None = None) -> common.BenchResult:
    parser = argparse.ArgumentParser(prog="python -m bench agent_relay")
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--json", help="also write the figures here")
    parser.add_argument("--agent-n", type=int, nargs="*", help="conversation counts for the agent")
    parser.add_argument("--naive-n", type=int, nargs="*", help="conversation counts for naive")
    args = parser.parse_args(argv)
    with common.workdir("relay") as workdir:
        env = common.setup_django(workdir / "bench.sqlite3")
        result = asyncio.run(
            bench(args.tiny, env, workdir, agent_ns=args.agent_n, naive_ns=args.naive_n)
        ).finish()
    common.write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
