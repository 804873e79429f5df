"""The relay floor: N Claude streams read as the stream floor reads them, and put on Ably.

`python -m bench.relay_floor --ably-port P --anthropic-url URL --jobs FILE [--connections C]`
does only the part of the agent's job that no relay can skip: for every job of the jobs file
(`[{"channel": ..., "prompt": ...}]`) it reads the stand-in stream exactly as
`bench.stream_floor` does (aiohttp, `json.loads` per SSE event) and puts the reply's text on the
job's channel through ably-python realtime, in the messages devices fold: `start`, one
`response` create carrying the first text, `append`s of the text that came meanwhile, `stop`.

Like the agent (`conversations.agent.streaming`), as simply as possible: a reply's text is
flushed at most every `AgentConfig.flush_window` (30 ms), and each connection sends at most
`AgentConfig.max_messages_per_second` (40) messages a second, so under load a message carries
whatever piled up while it waited; the create is awaited for its serial, then each append. The
connections are the agent's (its count, clientId "agent" with the dev key, the agent's
transport params, `client_options` from the adapter), channels attached before the work and
spread over them round-robin. No Anthropic SDK, no database, no presence, no retries, no
repair: what the agent spends beyond this floor is its own code and the model SDK.

Protocol with the driver, as `bench.stream_floor`'s: prints `ready` (connected and attached),
waits for a line on stdin, runs every job, prints one JSON line (`{"texts": [...],
"published": [...], "stopped": N, "messages": N, "errors": [...]}`: per job in job order the text
read and the text acknowledged by Ably; how many stops were acknowledged; messages sent), then
waits for another line before closing its connections and exiting, so the driver reads the
process's CPU time after the work and before the teardown.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import uvloop

from bench.stream_floor import DEFAULT_MODEL, read_deltas, streams_on_go

AGENT_CLIENT_ID = "agent"
DEV_KEY = "devapp.devkey:dev-secret-change-me"


class Pacer:
    """At most `rate` sends a second on one connection: each send takes the next free slot,
    1/rate after the previous one (first come, first served)."""

    def __init__(self, rate: float) -> None:
        self.spacing = 1.0 / rate
        self.next_slot = 0.0

    async def acquire(self) -> None:
        now = time.monotonic()
        slot = max(now, self.next_slot)
        self.next_slot = slot + self.spacing
        if slot > now:
            await asyncio.sleep(slot - now)


class Connection:
    def __init__(self, client: Any, pacer: Pacer) -> None:
        self.client = client
        self.pacer = pacer
        self.messages = 0

    async def send(self, operation: Any, message: Any) -> Any:
        await self.pacer.acquire()
        self.messages += 1
        return await operation(message)


async def relay(
    session: aiohttp.ClientSession,
    url: str,
    model: str,
    connection: Connection,
    channel: Any,
    prompt: str,
    flush_window: float,
) -> tuple[str, str]:
    """One reply: (text read from the stream, text Ably acknowledged on the channel)."""
    from conversations import events
    from conversations.agent.ably_adapter import AblyMessage, first_serial, new_message_id

    reply = events.ReplyHeaders(str(uuid.uuid4()), str(uuid.uuid4()), model)
    start = events.Start(reply)
    await connection.send(
        channel.publish, AblyMessage(name=start.name, data=start.data(), extras=start.extras())
    )
    extras = events.ResponseChunk(reply, events.Part.TEXT, "").extras()
    pending: list[str] = []
    published: list[str] = []
    arrived = asyncio.Event()
    ended = False

    async def flush() -> None:
        # At most one flush per window; while one waits for its connection's pacer, the text
        # that comes meanwhile goes with it.
        serial: str | None = None
        last = float("-inf")
        while True:
            await arrived.wait()
            arrived.clear()
            wait = last + flush_window - time.monotonic()
            if wait > 0 and not ended:
                await asyncio.sleep(wait)
            if pending:
                await connection.pacer.acquire()
                last = time.monotonic()
                text = "".join(pending)
                pending.clear()
                connection.messages += 1
                if serial is None:
                    create = AblyMessage(
                        name=events.Name.RESPONSE, data=text, extras=extras, id=new_message_id()
                    )
                    serial = first_serial(await channel.publish(create))
                    if serial is None:
                        raise RuntimeError("Ably gave no serial for the response create")
                else:
                    await channel.append_message(
                        AblyMessage(
                            name=events.Name.RESPONSE, data=text, extras=extras, serial=serial
                        )
                    )
                published.append(text)
            if ended and not pending:
                return

    flusher = asyncio.create_task(flush())
    parts: list[str] = []

    def on_text(text: str) -> None:
        parts.append(text)
        if text:
            pending.append(text)
            arrived.set()

    try:
        # The stream floor's reading, to the line.
        await read_deltas(session, url, model, prompt, on_text)
    finally:
        ended = True
        arrived.set()
        await flusher
    stop = events.Stop(reply, events.Status.COMPLETE, stop_reason="end_turn")
    await connection.send(
        channel.publish, AblyMessage(name=stop.name, data=stop.data(), extras=stop.extras())
    )
    return "".join(parts), "".join(published)


async def run(
    args: argparse.Namespace, jobs: list[dict[str, str]]
) -> tuple[dict[str, Any], list[Connection]]:
    # The adapter lives in the agent package, which needs Django set up to import.
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")
    import django

    django.setup()
    from conversations.agent.ably_adapter import AblyRealtime, client_options, wait_connected
    from conversations.agent.config import AgentConfig

    # The agent's own connection parameters (`conversations.agent.pool.agent_transport_params`).
    transport_params = {
        "echo": "false",
        "appendRollupWindow": str(AgentConfig.append_rollup_window_ms),
    }
    options = client_options(
        f"http://127.0.0.1:{args.ably_port}",
        client_id=AGENT_CLIENT_ID,
        transport_params=transport_params,
    )
    connections = [
        Connection(
            AblyRealtime(key=args.key, **options), Pacer(AgentConfig.max_messages_per_second)
        )
        for _ in range(args.connections)
    ]
    await asyncio.gather(*(wait_connected(c.client, 30) for c in connections))
    # Round-robin, as the agent's pool spreads channels (to the connection holding fewest).
    placed = [(connections[i % len(connections)], job) for i, job in enumerate(jobs)]
    channels = [connection.client.channels.get(job["channel"]) for connection, job in placed]
    gate = asyncio.Semaphore(100)

    async def attach(channel: Any) -> None:
        async with gate:
            await channel.attach()

    await asyncio.gather(*(attach(channel) for channel in channels))

    async with streams_on_go(args.anthropic_url) as (session, url):
        results = await asyncio.gather(
            *(
                relay(
                    session,
                    url,
                    args.model,
                    connection,
                    channel,
                    job["prompt"],
                    AgentConfig.flush_window,
                )
                for (connection, job), channel in zip(placed, channels, strict=True)
            ),
            return_exceptions=True,
        )
    done = [result for result in results if isinstance(result, tuple)]
    return {
        "texts": [result[0] if isinstance(result, tuple) else "" for result in results],
        "published": [result[1] if isinstance(result, tuple) else "" for result in results],
        "stopped": len(done),
        "messages": sum(c.messages for c in connections),
        "errors": [repr(result)[:200] for result in results if isinstance(result, BaseException)],
    }, connections


async def close(connections: list[Connection]) -> None:
    await asyncio.gather(*(c.client.close() for c in connections), return_exceptions=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.relay_floor")
    parser.add_argument("--ably-port", type=int, required=True)
    parser.add_argument("--anthropic-url", required=True)
    parser.add_argument("--jobs", required=True, help='JSON file: [{"channel", "prompt"}, ...]')
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--key", default=DEV_KEY)
    args = parser.parse_args(argv)
    jobs = json.loads(Path(args.jobs).read_text())
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        tally, connections = runner.run(run(args, jobs))
        print(json.dumps(tally), flush=True)
        # Stay until the driver has read this process's CPU time.
        sys.stdin.readline()
        runner.run(close(connections))


if __name__ == "__main__":
    main()
