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

The agent's CPU is also split by thread (/proc/<pid>/task: the event loop is the main thread,
the database is the thread `bench.agent_process` names `agent-db`, the rest is everything else)
and set against its floor, measured in the same run: `bench.stream_floor` reading the same N
stand-in streams (same prompts, text and pacing) with the agent's HTTP library and json-parsing
every event, and nothing else. "x floor" is the agent's CPU per token over the floor's. And
its relay floor, `bench.relay_floor`: those streams read the same way and their text put on
Ably through ably-python as the agent's messages (start, create + appends, stop; 30 ms flushes,
40 msg/s per connection, the agent's connections), and nothing else; "x relay floor" is the
agent's CPU per token over that one's, the part of the gap the agent's own code makes. The
relay floor plus the agent's own database thread (the exactly-once guard) is what no agent can
skip; over the stream floor it is the lowest "x floor" the official SDK and the database allow.

`--share-k 1 2 3` (issue 15) runs K agent processes instead, over the same N conversations,
each with its own agent id and measured on its own: the channels it attached, the messages its
connections delivered on `ai:` channels (counted in `bench.agent_process`), the replies it wrote,
its CPU; and its share of the work against 1/K +- 10% (see `share_totals`).

"Under the production limits" means the run finished with every reply complete and intact and
no publish or attach refused by the stand-in's per-connection limits (50 msg/s, 200 channels).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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
from bench.agent_process import COUNT_RECEIVED_ENV, DATABASE_THREAD_NAME, RECEIVED_LINE_PREFIX
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
# Issue 15: the agents' membership as each logs it (`joined agents:control: members a, b`,
# `agent a sees members a, b, c (+c)`); and what one agent's connections delivered to it.
MEMBERS_LOG = re.compile(r"members ([\w.-]+(?:, [\w.-]+)*)")
RECEIVED_LOG = re.compile(re.escape(RECEIVED_LINE_PREFIX) + r"messages=(\d+) presence=(\d+)")
# Each of K agents' share of the work within 1/K +- this fraction of the total.
SHARE_TOLERANCE = 0.10

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
    # Agent processes sharing the conversations (issue 15); each is measured on its own.
    agents: int = 1
    # Measure each agent's share (what it held, received, answered and spent), even at K = 1.
    per_agent: bool = False

    @property
    def label(self) -> str:
        return f"{self.publisher} ({self.variant})" if self.variant else self.publisher


# What the remainder holds beyond the named live threads: threads that exited during the run,
# and /proc's rounding of the process total.
EXITED_OR_ROUNDING = "exited/rounding"


@dataclass(frozen=True)
class ThreadSplit:
    """A process's CPU seconds over a run, by thread: its event loop, its database thread, the
    rest ("other"), and the rest by thread name, numbered names grouped (`uvloop`: the loop's
    default-executor workers, where `asyncio.to_thread` runs; `libuv-worker`: libuv's pool)."""

    loop: float
    database: float
    other: float
    other_by_name: dict[str, float] = field(default_factory=dict)

    @classmethod
    def unmeasured(cls) -> ThreadSplit:
        return cls(math.nan, math.nan, math.nan)


def sum_splits(splits: Sequence[ThreadSplit]) -> ThreadSplit:
    """Several processes' splits added up (K agents as one)."""
    if len(splits) == 1:
        return splits[0]
    by_name: dict[str, float] = {}
    for split in splits:
        for name, seconds in split.other_by_name.items():
            by_name[name] = by_name.get(name, 0.0) + seconds
    return ThreadSplit(
        sum(split.loop for split in splits),
        sum(split.database for split in splits),
        sum(split.other for split in splits),
        by_name,
    )


def split_by_thread(
    pid: int,
    before: dict[int, tuple[str, float]],
    after: dict[int, tuple[str, float]],
    total_seconds: float,
    database_thread: str = DATABASE_THREAD_NAME,
) -> ThreadSplit:
    """Attribute `total_seconds` of a process's CPU (from `common.cpu_seconds`) between two
    `common.thread_cpu_seconds` readings: the main thread (id = pid) runs the event loop; the
    threads whose name starts with `database_thread` (`agent-db`, or `agent-db_0` for an
    executor's `thread_name_prefix`) run the database work; the remainder is "other". A thread
    born during the run counts from zero."""

    def used(tid: int) -> float:
        return after[tid][1] - before.get(tid, ("", 0.0))[1]

    loop = used(pid) if pid in after else 0.0
    database = sum(
        used(tid) for tid, (name, _) in after.items() if name.startswith(database_thread)
    )
    # Per-thread times are the scheduler's nanoseconds, the total /proc's 10 ms ticks: the
    # remainder can dip a tick below zero on a short run.
    other = max(0.0, total_seconds - loop - database)
    by_name: dict[str, float] = {}
    for tid, (name, _) in after.items():
        if tid != pid and not name.startswith(database_thread):
            group = re.sub(r"[-_]?\d+(_\d+)?$", "", name) or name
            by_name[group] = by_name.get(group, 0.0) + used(tid)
    by_name[EXITED_OR_ROUNDING] = max(0.0, other - sum(by_name.values()))
    return ThreadSplit(loop, database, other, by_name)


@dataclass
class FloorOutcome:
    """A floor at N: the stream floor (what merely reading N stand-in streams cost) or the
    relay floor (reading them and putting the text on Ably, `bench.relay_floor`)."""

    conversations: int
    tokens: int
    cpu_seconds: float
    # Replies read whole (the exact expected text); for the relay floor also published whole,
    # their `stop` acknowledged, and folded complete with that text by every device.
    intact: int
    wall_seconds: float
    errors: list[str] = field(default_factory=list)
    # The relay floor's messages per reply (`start`, the create and appends, `stop`).
    published_per_reply: float = math.nan

    @property
    def cpu_us_per_token(self) -> float:
        return self.cpu_seconds / self.tokens * 1e6 if self.tokens else math.nan

    def figures(self) -> dict[str, Any]:
        return {
            "conversations": self.conversations,
            "tokens": self.tokens,
            "cpu_us_per_token": self.cpu_us_per_token,
            "intact": self.intact,
            "wall_seconds": self.wall_seconds,
            "errors": self.errors,
            "published_per_reply": self.published_per_reply,
        }


@dataclass
class AgentShare:
    """One of K agent processes over a run: what it held, received, answered and spent."""

    agent_id: str
    attached: int  # conversation channels attached when the replies had finished
    messages_received: int  # messages delivered on `ai:` channels (from `bench.agent_process`)
    presence_received: int
    replies: int  # replies it logged (one per conversation it answered)
    tokens: int  # tokens of the replies it answered
    cpu_seconds: float

    @property
    def cpu_us_per_token(self) -> float:
        return self.cpu_seconds / self.tokens * 1e6 if self.tokens else math.nan


SHARED_MEASURES = ("attached", "messages_received", "replies", "cpu_seconds")


def share_totals(conversations: int) -> dict[str, float | None]:
    """What each measure's share is a fraction of. The work, not the agents' sum: N channels to
    hold, N replies to write, and the messages one agent holding every conversation would
    receive (what the devices published: one prompt per conversation). So agents that each
    attached and received everything would each show 100%, not 1/K. CPU has no such total: its
    share is of the K agents' sum (None)."""
    return {
        "attached": conversations,
        "messages_received": conversations,
        "replies": conversations,
        "cpu_seconds": None,
    }


def shares_of(
    agents: Sequence[AgentShare], measure: str, total: float | None = None
) -> list[float]:
    """Each agent's fraction of `total` of `measure` (of the agents' sum when None; NaN when
    the total is 0)."""
    values = [float(getattr(agent, measure)) for agent in agents]
    whole = sum(values) if total is None else total
    return [value / whole if whole else math.nan for value in values]


def shares_within(
    agents: Sequence[AgentShare],
    measure: str,
    total: float | None = None,
    tolerance: float = SHARE_TOLERANCE,
) -> bool:
    """Every agent's share of `measure` within 1/K +- `tolerance` of the total."""
    fair = 1 / len(agents) if agents else math.nan
    return bool(agents) and all(
        abs(share - fair) <= tolerance + 1e-9 for share in shares_of(agents, measure, total)
    )


def times_floor(agent_us_per_token: float, floor: FloorOutcome | None) -> float:
    """The agent's CPU per token as a multiple of the floor's (NaN without a usable floor)."""
    if floor is None or not floor.cpu_us_per_token > 0:
        return math.nan
    return agent_us_per_token / floor.cpu_us_per_token


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
    # The agent's CPU by thread (unmeasured for the naive publisher, which has no database).
    threads: ThreadSplit = field(default_factory=ThreadSplit.unmeasured)
    # The stream floor at this N, measured in the same benchmark run (agent runs only).
    floor: FloorOutcome | None = None
    # The relay floor at this N (`bench.relay_floor`), likewise.
    relay_floor: FloorOutcome | None = None
    notes: list[str] = field(default_factory=list)
    # Per agent process when K agents shared the run (issue 15); empty otherwise.
    shares: list[AgentShare] = field(default_factory=list)
    # Conversations whose reply was logged by exactly one agent, exactly once.
    answered_once: int = 0

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

    def us_per_token(self, seconds: float) -> float:
        return seconds / self.tokens * 1e6 if self.tokens else math.nan

    @property
    def db_ms_per_reply(self) -> float:
        """Database-thread CPU per reply (one reply per conversation)."""
        return self.threads.database / self.scenario.conversations * 1e3

    def figures(self) -> dict[str, Any]:
        floor_us = self.floor.cpu_us_per_token if self.floor else math.nan
        relay_floor_us = self.relay_floor.cpu_us_per_token if self.relay_floor else math.nan
        # What no agent can skip: the relay floor's work, plus this agent's own database thread
        # (the exactly-once guard). Over the stream floor: the lowest "x floor" the official SDK
        # and the database leave, whatever the agent's own code does.
        unavoidable_us = relay_floor_us + self.us_per_token(self.threads.database)
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
            "loop_us_per_token": self.us_per_token(self.threads.loop),
            "db_us_per_token": self.us_per_token(self.threads.database),
            "other_us_per_token": self.us_per_token(self.threads.other),
            "other_us_per_token_by_thread": {
                name: self.us_per_token(seconds)
                for name, seconds in self.threads.other_by_name.items()
            },
            "db_cpu_ms_per_reply": self.db_ms_per_reply,
            "floor_us_per_token": floor_us,
            "agent_floor_ratio": times_floor(self.cpu_us_per_token, self.floor),
            "relay_floor_us_per_token": relay_floor_us,
            "agent_relay_floor_ratio": times_floor(self.cpu_us_per_token, self.relay_floor),
            "unavoidable_us_per_token": unavoidable_us,
            "unavoidable_floor_ratio": unavoidable_us / floor_us if floor_us > 0 else math.nan,
            "notes": self.notes,
            **self.share_figures(),
        }

    def share_figures(self) -> dict[str, Any]:
        if not self.shares:
            return {}
        totals = share_totals(self.scenario.conversations)
        per_measure = {
            measure: shares_of(self.shares, measure, totals[measure]) for measure in SHARED_MEASURES
        }
        return {
            "agents": len(self.shares),
            "answered_once": self.answered_once,
            "per_agent": [
                {
                    "agent_id": agent.agent_id,
                    "attached": agent.attached,
                    "messages_received": agent.messages_received,
                    "presence_received": agent.presence_received,
                    "replies": agent.replies,
                    "tokens": agent.tokens,
                    "cpu_us_per_token": agent.cpu_us_per_token,
                    **{
                        f"{measure}_share": shares[index] for measure, shares in per_measure.items()
                    },
                }
                for index, agent in enumerate(self.shares)
            ],
            "shares_within_tolerance": {
                measure: shares_within(self.shares, measure, totals[measure])
                for measure in SHARED_MEASURES
            },
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
    from emulators.anthropic.tokens import count_tokens

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


async def _sample_rss(pids: Sequence[int], peak: list[int], stop: asyncio.Event) -> None:
    """The peak of the processes' summed RSS."""
    while not stop.is_set():
        try:
            peak[0] = max(peak[0], sum(common.rss_bytes(pid) for pid in pids))
        except OSError:
            return
        try:
            await asyncio.wait_for(stop.wait(), 0.25)
        except TimeoutError:
            pass


async def _attached_devices(
    devices: Devices, ably_port: int, channels: list[str], client_ids: list[str]
) -> list[RawAblyClient]:
    """DEVICES_PER_CONVERSATION raw clients per channel (as `client_ids[i]` on `channels[i]`),
    each attached and folding what arrives into `devices`."""
    devices.channel_index = {channel: i for i, channel in enumerate(channels)}
    clients = await open_clients(
        len(channels) * DEVICES_PER_CONVERSATION,
        lambda k: RawAblyClient(
            ably_port,
            common.DEV_ABLY_KEY,
            client_id=client_ids[k // DEVICES_PER_CONVERSATION],
            on_message=devices.listener(k % DEVICES_PER_CONVERSATION),
        ),
    )
    gate = asyncio.Semaphore(100)

    async def attach(k: int) -> None:
        async with gate:
            await clients[k].attach(channels[k // DEVICES_PER_CONVERSATION])

    try:
        await asyncio.gather(*(attach(k) for k in range(len(clients))))
    except BaseException:
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
        raise
    return clients


async def run_scenario(scenario: Scenario, base_env: dict[str, str], workdir: Path) -> Outcome:
    n = scenario.conversations
    texts = [reply_text(i, scenario.reply_tokens) for i in range(n)]
    expected_seconds = TTFT_MS / 1000 + scenario.reply_tokens / TOKENS_PER_SECOND
    deadline_seconds = 60 + expected_seconds * 3 + n * 0.12
    notes: list[str] = []
    with common.services() as started:
        ably, ably_port = common.start_ably(workdir)
        started.append(ably)
        tap, anthropic_url = _start_tap(workdir)
        started.append(tap)
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
            agents = [_start_agent(scenario, env, workdir, i) for i in range(scenario.agents)]
            started.extend(agents)
            publisher = agents[0]
            for agent in agents:
                await asyncio.to_thread(agent.wait_for_output, " ready: ", 60)
            if scenario.agents > 1:
                # Every agent must see them all before the conversations appear, or two could
                # each take a channel as its own (the database would still answer it once).
                await _wait_for_members(agents, scenario.agents)
            rss_idle = sum(common.rss_bytes(agent.pid) for agent in agents)
        channels, client_ids, prompts_by_device = await _prepare(scenario, texts)
        if scenario.publisher != "agent":
            jobs = [
                {"channel": channel, "prompt": f"Say exactly: {text}"}
                for channel, text in zip(channels, texts, strict=True)
            ]
            agents = []
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
        # The processes under test: the K agents, or the naive publisher.
        measured = agents or [publisher]

        devices = Devices(n)
        clients = await _attached_devices(devices, ably_port, channels, client_ids)
        try:
            if scenario.publisher == "agent":
                await _wait_for_agent_attached(agents, n, notes)
            else:
                rss_idle = common.rss_bytes(publisher.pid)
            async with httpx.AsyncClient(base_url=anthropic_url) as http:
                await http.post("/_bench/reset")
            rss_before = sum(common.rss_bytes(p.pid) for p in measured)
            cpu_before = [common.cpu_seconds(p.pid) for p in measured]
            threads_before = [common.thread_cpu_seconds(p.pid) for p in measured]
            log_before = [len(p.output()) for p in measured]
            peak = [rss_before]
            sampling = asyncio.Event()
            sampler = asyncio.create_task(_sample_rss([p.pid for p in measured], peak, sampling))
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
            cpu_after = [common.cpu_seconds(p.pid) for p in measured]
            threads_after = [common.thread_cpu_seconds(p.pid) for p in measured]
            sampling.set()
            await sampler
            async with httpx.AsyncClient(base_url=anthropic_url, timeout=60) as http:
                replies = (await http.get("/_bench/emissions")).json()["replies"]
        finally:
            await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)

        loop_lag_ms = math.nan
        threads = ThreadSplit.unmeasured()
        cpu_used = [after - before for before, after in zip(cpu_before, cpu_after, strict=True)]
        shares: list[AgentShare] = []
        answered: dict[str, int] = {}
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
                sum(len(REPLY_LOG.findall(agent.output())) for agent in agents)
                < n - devices.remaining
                and time.monotonic() < log_deadline
            ):
                await asyncio.sleep(0.1)
            logs = [agent.output() for agent in agents]
            log = "".join(logs)
            # Lag lines from the prompts on, plus one interval so the last one is logged.
            await asyncio.sleep(LOOP_LAG_INTERVAL_SECONDS)
            lags = [
                float(m.group(1))
                for agent, start in zip(agents, log_before, strict=True)
                for m in LOOP_LAG_LOG.finditer(agent.output()[start:])
            ]
            loop_lag_ms = max(lags, default=math.nan)
            threads = sum_splits(
                [
                    split_by_thread(agent.pid, before, after, used)
                    for agent, before, after, used in zip(
                        agents, threads_before, threads_after, cpu_used, strict=True
                    )
                ]
            )
            names = [name for after in threads_after for name, _ in after.values()]
            if scenario.per_agent:
                shares, answered = await _agent_shares(agents, logs, cpu_used, channels, texts)
            if not any(name.startswith(DATABASE_THREAD_NAME) for name in names):
                notes.append(f"no thread named {DATABASE_THREAD_NAME}: DB CPU counted as other")
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
    from emulators.anthropic.tokens import count_tokens

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
        cpu_seconds=sum(cpu_used),
        tokens=tokens,
        rss_per_conversation=max(0, peak[0] - rss_idle) / n,
        stream_rate=stream_rate,
        peak_streams=peak_streams,
        wall_seconds=wall,
        loop_lag_ms=loop_lag_ms,
        threads=threads,
        notes=notes,
        shares=shares,
        answered_once=sum(1 for count in answered.values() if count == 1),
    )


def _start_tap(workdir: Path) -> tuple[common.Service, str]:
    """The Anthropic stand-in behind the emission tap, at the benchmark's pacing; its URL."""
    port = common.free_port()
    tap = common.Service(
        "anthropic",
        [
            common.PYTHON,
            "-m",
            "bench.anthropic_tap",
            "--port",
            str(port),
            "--tokens-per-second",
            str(TOKENS_PER_SECOND),
            "--ttft-ms",
            str(TTFT_MS),
        ],
        workdir,
    )
    try:
        common.wait_for_port(port, tap.process, 30, tap.log_path)
    except common.BenchError:
        tap.stop()
        raise
    return tap, f"http://127.0.0.1:{port}"


async def _go(
    floor: common.Service, deadline_seconds: float
) -> tuple[dict[str, Any], float, dict[int, tuple[str, float]], dict[int, tuple[str, float]]]:
    """Start a floor once it is ready and wait for its tally (the JSON line it prints after
    `ready`): (tally, wall seconds, its threads' CPU before and after). A floor is one busy
    thread (and an idle one waiting on stdin): its threads' scheduler time is its CPU, to the
    nanosecond (/proc's ticks are too coarse for --tiny)."""
    await asyncio.to_thread(floor.wait_for_output, "ready", 60)
    threads_before = common.thread_cpu_seconds(floor.pid)
    started_at = time.monotonic()
    floor.command("go")
    await asyncio.to_thread(floor.wait_for_output, '{"texts"', deadline_seconds)
    threads_after = common.thread_cpu_seconds(floor.pid)
    wall = time.monotonic() - started_at
    tally: dict[str, Any] = json.loads(floor.output().strip().splitlines()[-1])
    return tally, wall, threads_before, threads_after


async def run_floor(conversations: int, reply_tokens: int, workdir: Path) -> FloorOutcome:
    """`bench.stream_floor` reading `conversations` streams of the same prompts and pacing the
    agent gets; its CPU from /proc between the go and the end of the last stream."""
    from emulators.anthropic.tokens import count_tokens

    texts = [reply_text(i, reply_tokens) for i in range(conversations)]
    jobs = workdir / "floor-jobs.json"
    jobs.write_text(json.dumps([{"prompt": f"Say exactly: {text}"} for text in texts]))
    expected_seconds = TTFT_MS / 1000 + reply_tokens / TOKENS_PER_SECOND
    deadline_seconds = 60 + expected_seconds * 3 + conversations * 0.12
    with common.services() as started:
        tap, anthropic_url = _start_tap(workdir)
        started.append(tap)
        floor = common.Service(
            "floor",
            [
                common.PYTHON,
                "-m",
                "bench.stream_floor",
                "--anthropic-url",
                anthropic_url,
                "--jobs",
                str(jobs),
            ],
            workdir,
        )
        started.append(floor)
        tally, wall, threads_before, threads_after = await _go(floor, deadline_seconds)
        floor.command("quit")
    received: list[str] = tally["texts"]
    return FloorOutcome(
        conversations=conversations,
        tokens=sum(count_tokens(text) for text in received),
        cpu_seconds=sum(
            seconds - threads_before.get(tid, ("", 0.0))[1]
            for tid, (_, seconds) in threads_after.items()
        ),
        intact=sum(got == want for got, want in zip(received, texts, strict=True)),
        wall_seconds=wall,
        errors=tally["errors"],
    )


async def run_relay_floor(
    conversations: int, reply_tokens: int, connections: int, env: dict[str, str], workdir: Path
) -> FloorOutcome:
    """`bench.relay_floor` relaying `conversations` streams of the same prompts and pacing the
    agent gets onto their channels, over `connections` connections, with the run's devices
    attached (they check what it published, and the stand-in fans out to them as for the
    agent); its CPU from /proc between the go and the end of the last reply."""
    from emulators.anthropic.tokens import count_tokens

    n = conversations
    texts = [reply_text(i, reply_tokens) for i in range(n)]
    channels = [f"ai:{uuid.uuid4()}" for _ in range(n)]
    jobs = workdir / "relay-floor-jobs.json"
    jobs.write_text(
        json.dumps(
            [
                {"channel": channel, "prompt": f"Say exactly: {text}"}
                for channel, text in zip(channels, texts, strict=True)
            ]
        )
    )
    expected_seconds = TTFT_MS / 1000 + reply_tokens / TOKENS_PER_SECOND
    deadline_seconds = 60 + expected_seconds * 3 + n * 0.12
    with common.services() as started:
        ably, ably_port = common.start_ably(workdir)
        started.append(ably)
        tap, anthropic_url = _start_tap(workdir)
        started.append(tap)
        floor = common.Service(
            "relay-floor",
            [
                common.PYTHON,
                "-m",
                "bench.relay_floor",
                "--ably-port",
                str(ably_port),
                "--anthropic-url",
                anthropic_url,
                "--jobs",
                str(jobs),
                "--connections",
                str(connections),
            ],
            workdir,
            env=env,
        )
        started.append(floor)
        devices = Devices(n)
        client_ids = [f"device-{i}" for i in range(n)]
        clients = await _attached_devices(devices, ably_port, channels, client_ids)
        try:
            tally, wall, threads_before, threads_after = await _go(floor, deadline_seconds)
            # Every stop was acknowledged: the devices have them, or are about to.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(devices.all_stopped.wait(), 10)
            floor.command("quit")
        finally:
            await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
    received: list[str] = tally["texts"]
    published: list[str] = tally["published"]
    errors: list[str] = tally["errors"]
    if tally["stopped"] < n:
        errors.append(f"{tally['stopped']}/{n} replies published their stop")
    whole = 0
    for index, want in enumerate(texts):
        views = [devices.views[(index, d)] for d in range(DEVICES_PER_CONVERSATION)]
        whole += (
            received[index] == want
            and published[index] == want
            and all(view.stop_status == "complete" and view.text == want for view in views)
        )
    return FloorOutcome(
        conversations=n,
        tokens=sum(count_tokens(text) for text in received),
        cpu_seconds=sum(
            seconds - threads_before.get(tid, ("", 0.0))[1]
            for tid, (_, seconds) in threads_after.items()
        ),
        intact=whole,
        wall_seconds=wall,
        errors=errors,
        published_per_reply=tally["messages"] / n if n else math.nan,
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


def attached_now(log: str) -> int:
    """Conversation channels an agent holds, from its log (it logs each attach and detach)."""
    return log.count("attached ai:") - log.count("detached ai:")


async def _wait_for_agent_attached(
    agents: Sequence[common.Service], n: int, notes: list[str]
) -> None:
    """Until the agents together have attached all n conversation channels."""
    deadline = time.monotonic() + 60 + n * 0.1
    while (attached := sum(attached_now(agent.output()) for agent in agents)) < n:
        if time.monotonic() > deadline:
            notes.append(f"the agents attached only {attached} of {n} channels before prompts")
            return
        await asyncio.sleep(0.2)


async def _wait_for_members(agents: Sequence[common.Service], k: int) -> None:
    """Until every agent's latest logged membership has k members."""
    deadline = time.monotonic() + 60
    while True:
        seen = []
        for agent in agents:
            views = MEMBERS_LOG.findall(agent.output())
            seen.append(len(views[-1].split(", ")) if views else 0)
        if all(count == k for count in seen):
            return
        if time.monotonic() > deadline:
            raise common.BenchError(f"the agents saw {seen} members, not {k} each")
        await asyncio.sleep(0.2)


async def _agent_shares(
    agents: Sequence[common.Service],
    logs: Sequence[str],
    cpu_used: Sequence[float],
    channels: Sequence[str],
    texts: Sequence[str],
) -> tuple[list[AgentShare], dict[str, int]]:
    """Per agent: channels held, what it received (asked of the process), replies, tokens, CPU;
    and how many times each conversation (by id) was answered across all of them."""
    from emulators.anthropic.tokens import count_tokens

    tokens_by_id = {
        channel.removeprefix("ai:"): count_tokens(text)
        for channel, text in zip(channels, texts, strict=True)
    }
    answered: dict[str, int] = dict.fromkeys(tokens_by_id, 0)
    shares = []
    for index, (agent, log, used) in enumerate(zip(agents, logs, cpu_used, strict=True)):
        before = len(agent.output())
        agent.command("counts")
        deadline = time.monotonic() + 10
        while not (found := RECEIVED_LOG.findall(agent.output()[before:])):
            if time.monotonic() > deadline:
                raise common.BenchError(f"agent {index} did not report what it received")
            await asyncio.sleep(0.05)
        messages, presence = (int(value) for value in found[-1])
        ids = [m.group(1) for m in REPLY_LOG.finditer(log)]
        for conversation_id in ids:
            answered[conversation_id] = answered.get(conversation_id, 0) + 1
        shares.append(
            AgentShare(
                agent_id=agent_id_for(index),
                attached=attached_now(log),
                messages_received=messages,
                presence_received=presence,
                replies=len(ids),
                tokens=sum(tokens_by_id.get(conversation_id, 0) for conversation_id in ids),
                cpu_seconds=used,
            )
        )
    return shares, answered


def agent_id_for(index: int) -> str:
    return "bench-agent" if index == 0 else f"bench-agent-{index}"


def _start_agent(
    scenario: Scenario, env: dict[str, str], workdir: Path, index: int = 0
) -> common.Service:
    args = [
        common.PYTHON,
        "-m",
        "bench.agent_process",
        "--agent-id",
        agent_id_for(index),
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
    env = {**env, "LOG_LEVEL": "INFO"}
    if scenario.per_agent:
        env[COUNT_RECEIVED_ENV] = "1"
    name = "agent" if index == 0 else f"agent-{index}"
    return common.Service(name, args, workdir, env=env)


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
# The latency floor: a connection per conversation and no flush window.
LATENCY_FLOOR_NS = (10, 30)
REPLIES_PER_CONNECTION_AT_FULL_PACE = 2
LATENCY_TARGET_MS = 50.0
# Issue 14: the agent at most this many times its stream floor's CPU per token at N >= 100.
FLOOR_RATIO_TARGET = 2.0
FLOOR_RATIO_TARGET_FROM_N = 100


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
    floors: dict[int, FloorOutcome] = {}
    relay_floors: dict[int, FloorOutcome] = {}

    async def floor_at(n: int) -> FloorOutcome:
        # One floor per N, measured right after the first agent run at that N, so both see the
        # machine in much the same state.
        if n not in floors:
            common.note(f"stream floor: {n} conversations ...")
            floors[n] = floor = await run_floor(n, reply_tokens, workdir)
            common.note(
                f"  -> {common.fmt(floor.cpu_us_per_token)} us CPU/token, "
                f"{floor.intact}/{n} replies read whole, {floor.wall_seconds:.0f}s"
            )
        return floors[n]

    async def relay_floor_at(n: int) -> FloorOutcome:
        # Likewise, right after the stream floor, over the agent's default connections at N.
        if n not in relay_floors:
            common.note(f"relay floor: {n} conversations ...")
            relay_floors[n] = floor = await run_relay_floor(
                n, reply_tokens, agent_connections(n), env, workdir
            )
            common.note(
                f"  -> {common.fmt(floor.cpu_us_per_token)} us CPU/token, "
                f"{floor.intact}/{n} replies relayed whole, "
                f"{common.fmt(floor.published_per_reply)} msgs/reply, {floor.wall_seconds:.0f}s"
            )
        return relay_floors[n]

    async def measure(scenario: Scenario) -> Outcome:
        common.note(
            f"{scenario.label}: {scenario.conversations} conversations on "
            f"{scenario.connections} connection(s) ..."
        )
        outcome = await run_scenario(scenario, env, workdir)
        outcomes.append(outcome)
        _progress(outcome)
        if scenario.publisher == "agent":
            outcome.floor = await floor_at(scenario.conversations)
            outcome.relay_floor = await relay_floor_at(scenario.conversations)
        return outcome

    for n in agent_ns:
        if outcomes and outcomes[-1].collapsed:
            # Past a collapse a larger N only measures the same overload for longer.
            skipped.append(n)
            continue
        await measure(Scenario("agent", n, reply_tokens, connections=agent_connections(n)))
    if not tiny:
        # Latency is a matter of connections: Ably allows 50 msg/s per connection and a reply
        # whose deltas wait at most 30 ms sends about 19, so a connection carries two at full pace. Then
        # the latency floor: a connection each and no flush window, every delta sent as it comes
        # (27 msg/s per reply, within the limit), i.e. the naive publisher's message count.
        for n in LATENCY_NS:
            connections = math.ceil(n / REPLIES_PER_CONNECTION_AT_FULL_PACE)
            await measure(
                Scenario("agent", n, reply_tokens, connections=connections, variant="2 conv/conn")
            )
        for n in LATENCY_FLOOR_NS:
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
    agent_runs = [o for o in outcomes if o.scenario.publisher == "agent"]
    _print_floor_table(agent_runs)
    for o in agent_runs:
        by_thread = o.figures()["other_us_per_token_by_thread"]
        common.note(
            f"  other threads ({o.scenario.label}, N={o.scenario.conversations}), us/token: "
            + (
                ", ".join(
                    f"{name} {common.fmt(us)}"
                    for name, us in sorted(by_thread.items(), key=lambda item: -item[1])
                )
                or "-"
            )
        )
    for n, floor in sorted(floors.items()):
        if floor.intact < n or floor.errors:
            common.note(
                f"  note (stream floor, N={n}): {floor.intact}/{n} replies read whole"
                + (f"; {floor.errors[0]}" if floor.errors else "")
            )
    for n, floor in sorted(relay_floors.items()):
        if floor.intact < n or floor.errors:
            common.note(
                f"  note (relay floor, N={n}): {floor.intact}/{n} replies relayed whole"
                + (f"; {floor.errors[0]}" if floor.errors else "")
            )

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
        "floor_runs": [floor.figures() for _, floor in sorted(floors.items())],
        "agent_floor_ratio": times_floor(largest.cpu_us_per_token, largest.floor),
        "relay_floor_runs": [floor.figures() for _, floor in sorted(relay_floors.items())],
        "agent_relay_floor_ratio": times_floor(largest.cpu_us_per_token, largest.relay_floor),
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
        + f"; {_floor_summary(largest)}"
    )
    # The machine-independent ceiling: how many 80 tokens/s replies one core of agent CPU carries.
    cheapest = min((o.cpu_us_per_token for o in default_agent), default=math.nan)
    per_core = 1e6 / (cheapest * TOKENS_PER_SECOND) if cheapest > 0 else math.nan
    figures["agent_conversations_per_core"] = per_core
    common.note(
        f"  agent CPU: {common.fmt(cheapest)} us/token at best = about {common.fmt(per_core, 0)} "
        f"concurrent {TOKENS_PER_SECOND:.0f} tokens/s replies per core of agent CPU"
    )
    for o in default_agent:
        if o.scenario.conversations >= FLOOR_RATIO_TARGET_FROM_N:
            ratio_at_n = times_floor(o.cpu_us_per_token, o.floor)
            met = "met" if ratio_at_n <= FLOOR_RATIO_TARGET else "NOT met"
            common.note(
                f"  agent vs floor at N={o.scenario.conversations}: {_floor_summary(o)} "
                f"(target <= {FLOOR_RATIO_TARGET:.0f}x at N >= {FLOOR_RATIO_TARGET_FROM_N}: {met})"
            )
    return common.BenchResult("agent_relay", summary, figures)


# Ownership is rendezvous hashing of random conversation ids, so an agent's count is binomial:
# at N = 200 its spread (about 7 at K = 2 or 3) sits well inside +-10% of the total (20); at
# N = 60 (about 3.7 against 6) a fair hash misses it one run in four.
SHARE_N = 200
SHARE_N_TINY = 6


async def bench_shares(
    tiny: bool, env: dict[str, str], workdir: Path, ks: Sequence[int], n: int | None = None
) -> common.BenchResult:
    """Issue 15: K = each of `ks` agent processes over the same n conversations; per agent, its
    share of the channels attached, messages received, replies and CPU, against 1/K."""
    reply_tokens = ladder(tiny)[2]
    n = n or (SHARE_N_TINY if tiny else SHARE_N)
    outcomes = []
    for k in ks:
        scenario = Scenario(
            "agent",
            n,
            reply_tokens,
            connections=agent_connections(n),
            variant=f"K={k}",
            agents=k,
            per_agent=True,
        )
        common.note(f"{scenario.label}: {n} conversations over {k} agent process(es) ...")
        outcome = await run_scenario(scenario, env, workdir)
        _progress(outcome)
        outcomes.append(outcome)
    rows = []
    for o in outcomes:
        f = o.figures()
        verdicts = f["shares_within_tolerance"]
        for agent in f["per_agent"]:
            rows.append(
                [
                    f["agents"],
                    agent["agent_id"],
                    f"{agent['attached']} ({agent['attached_share']:.0%})",
                    f"{agent['messages_received']} ({agent['messages_received_share']:.0%})",
                    agent["presence_received"],
                    f"{agent['replies']} ({agent['replies_share']:.0%})",
                    f"{agent['cpu_seconds_share']:.0%}",
                    agent["cpu_us_per_token"],
                    "yes" if all(verdicts.values()) else "NO",
                ]
            )
    common.print_table(
        f"K agents share the work ({n} conversations, {reply_tokens}-token replies at "
        f"{TOKENS_PER_SECOND:.0f} tokens/s; share of the N channels, of the N prompts, of "
        f"the N replies, of the K agents' CPU; "
        f"target 1/K +- {SHARE_TOLERANCE:.0%})",
        [
            "K",
            "agent",
            "channels attached",
            "messages received",
            "presence received",
            "replies",
            "CPU share",
            "CPU us/token",
            "within 1/K +- 10%",
        ],
        rows,
    )
    for o in outcomes:
        f = o.figures()
        common.note(
            f"  K={f['agents']}: {f['answered_once']}/{n} conversations answered exactly once, "
            f"lost/dup/reordered {o.lost}/{o.duplicated}/{o.reordered}, incomplete "
            f"{o.incomplete}, {common.fmt(f['cpu_us_per_token'])} us CPU/token over all agents; "
            "within tolerance: "
            + ", ".join(
                f"{measure} {'yes' if ok else 'NO'}"
                for measure, ok in f["shares_within_tolerance"].items()
            )
        )
        for text in o.notes:
            common.note(f"  note (K={f['agents']}): {text}")
    every_share = all(
        all(o.figures()["shares_within_tolerance"].values()) for o in outcomes if o.shares
    )
    intact = all(o.within_limits and o.answered_once == n for o in outcomes)
    summary = (
        f"K = {', '.join(str(k) for k in ks)} agents over {n} conversations: every agent's "
        f"share within 1/K +- {SHARE_TOLERANCE:.0%}: {'yes' if every_share else 'NO'}; "
        f"every reply intact and answered once: {'yes' if intact else 'NO'}"
    )
    figures = {
        "share_runs": [o.figures() for o in outcomes],
        "shares_within_tolerance": every_share,
        "intact": intact,
    }
    return common.BenchResult("agent_relay", summary, figures)


def _floor_summary(o: Outcome) -> str:
    """One agent run against its floors, in words: the ratios and where the agent's CPU went."""
    f = o.figures()
    return (
        f"{common.fmt(f['agent_floor_ratio'])}x its stream floor and "
        f"{common.fmt(f['agent_relay_floor_ratio'])}x its relay floor at "
        f"N={o.scenario.conversations} ({common.fmt(f['cpu_us_per_token'])} vs "
        f"{common.fmt(f['floor_us_per_token'])} and "
        f"{common.fmt(f['relay_floor_us_per_token'])} us CPU/token; loop "
        f"{common.fmt(f['loop_us_per_token'])} + DB {common.fmt(f['db_us_per_token'])} + other "
        f"{common.fmt(f['other_us_per_token'])}), DB {common.fmt(f['db_cpu_ms_per_reply'])} ms "
        f"CPU/reply, worst loop lag {common.fmt(f['loop_lag_ms'])} ms; relay floor + DB "
        f"{common.fmt(f['unavoidable_us_per_token'])} us/token = "
        f"{common.fmt(f['unavoidable_floor_ratio'])}x the stream floor before any code of the "
        f"agent's own"
    )


def _print_floor_table(agent_runs: Sequence[Outcome]) -> None:
    """The agent's CPU per token by thread, beside its stream and relay floors' at the same N."""
    rows = []
    for o in agent_runs:
        f = o.figures()
        rows.append(
            [
                f["label"],
                f["conversations"],
                f["connections"],
                f["cpu_us_per_token"],
                f["loop_us_per_token"],
                f["db_us_per_token"],
                f["other_us_per_token"],
                f["floor_us_per_token"],
                f["agent_floor_ratio"],
                f["relay_floor_us_per_token"],
                f["agent_relay_floor_ratio"],
                f["unavoidable_floor_ratio"],
                f["db_cpu_ms_per_reply"],
                f["published_per_reply"],
                f["p50_ms"],
                f["p99_ms"],
                f["loop_lag_ms"],
            ]
        )
    common.print_table(
        "Agent CPU by thread against its floors (same stand-in streams, same run; stream floor: "
        "aiohttp + json.loads per event, nothing else; relay floor: that, and the text on Ably "
        "through ably-python as the agent's messages, nothing else; relay floor + DB: that and "
        "the agent's own database thread, what no agent can skip)",
        [
            "publisher",
            "N",
            "conns",
            "CPU us/token",
            "loop",
            "DB",
            "other",
            "floor us/token",
            "x floor",
            "relay floor us/token",
            "x relay floor",
            "(relay floor + DB) x floor",
            "DB CPU ms/reply",
            "published/reply",
            "p50 ms",
            "p99 ms",
            "worst loop lag ms",
        ],
        rows,
    )


def main(argv: list[str] | None = None) -> common.BenchResult:
    parser = argparse.ArgumentParser(prog="python -m bench agent_relay")
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--json", help="also write the figures here")
    parser.add_argument("--agent-n", type=int, nargs="*", help="conversation counts for the agent")
    parser.add_argument("--naive-n", type=int, nargs="*", help="conversation counts for naive")
    parser.add_argument(
        "--share-k",
        type=int,
        nargs="+",
        metavar="K",
        help="instead of the ladder: K agent processes over the same conversations, for each K "
        "given (issue 15; e.g. --share-k 1 2 3): each agent's share of channels, messages "
        "received, replies and CPU",
    )
    parser.add_argument(
        "--share-n",
        type=int,
        help=f"conversations for --share-k (default {SHARE_N}, {SHARE_N_TINY} with --tiny)",
    )
    args = parser.parse_args(argv)
    with common.workdir("relay") as workdir:
        env = common.setup_django(workdir / "bench.sqlite3")
        if args.share_k:
            run = bench_shares(args.tiny, env, workdir, args.share_k, args.share_n)
        else:
            run = bench(args.tiny, env, workdir, agent_ns=args.agent_n, naive_ns=args.naive_n)
        result = asyncio.run(run).finish()
    common.write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
