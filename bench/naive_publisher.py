"""The naive publisher the Anthropic -> Ably guide starts from, as the relay baseline.

One ably-python realtime connection; for every reply, stream from Claude with the anthropic SDK
and `await channel.publish(...)` once per text delta, then publish `stop`. No coalescing, no
rate limiting, no connection pool. Messages use the app's `token` shape (with `seq`) so the same
subscribers can read both publishers.

`python -m bench.naive_publisher --ably-port P --anthropic-url URL --jobs FILE`: connects, prints
`ready`, waits for a line on stdin, runs every job (`[{"channel": ..., "prompt": ...}]`) at once
and prints one JSON line: published, rejected (NACKed, e.g. 42911 over the rate limit), errors.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import uuid
from pathlib import Path
from typing import Any

import anthropic
from ably import AblyRealtime
from ably.types.connectionstate import ConnectionState
from ably.types.message import Message

from conversations import events

AGENT_CLIENT_ID = "agent"
DEV_KEY = "devapp.devkey:dev-secret-change-me"


async def answer(
    realtime: AblyRealtime,
    claude: anthropic.AsyncAnthropic,
    job: dict[str, Any],
    tally: dict[str, int],
) -> None:
    channel = realtime.channels.get(job["channel"])
    reply = events.ReplyHeaders(str(uuid.uuid4()), str(uuid.uuid4()), "claude-sonnet-5-5")
    seq = 0
    async with claude.messages.stream(
        model=reply.model,
        max_tokens=4096,
        messages=[{"role": "user", "content": job["prompt"]}],
    ) as stream:
        async for text in stream.text_stream:
            token = events.Token(reply, events.Part.TEXT, seq, text)
            seq += 1
            try:
                await channel.publish(
                    Message(name=str(token.name), data=token.data(), extras=token.extras())
                )
                tally["published"] += 1
            except Exception as error:  # noqa: BLE001 - counted: the guide's code would crash here
                tally["rejected"] += 1
                tally.setdefault("first_error", str(error)[:200])
    stop = events.Stop(reply, events.Status.COMPLETE, stop_reason="end_turn")
    try:
        await channel.publish(Message(name=str(stop.name), data=stop.data(), extras=stop.extras()))
        tally["published"] += 1
    except Exception as error:  # noqa: BLE001
        tally["rejected"] += 1
        tally.setdefault("first_error", str(error)[:200])


async def run(args: argparse.Namespace) -> dict[str, Any]:
    # The stand-in's port needs the adapter's client options (and its port patch); the adapter
    # lives in the agent package, which needs Django set up to import.
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")
    import django

    django.setup()
    from conversations.agent.ably_adapter import client_options

    jobs = json.loads(Path(args.jobs).read_text())
    options = client_options(f"http://127.0.0.1:{args.ably_port}", client_id=AGENT_CLIENT_ID)
    realtime = AblyRealtime(key=args.key, **options)
    async with asyncio.timeout(30):
        while realtime.connection.state != ConnectionState.CONNECTED:
            await realtime.connection.once_async()
    claude = anthropic.AsyncAnthropic(api_key="bench", base_url=args.anthropic_url, max_retries=0)
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    tally: dict[str, Any] = {"published": 0, "rejected": 0, "errors": 0}
    results = await asyncio.gather(
        *(answer(realtime, claude, job, tally) for job in jobs), return_exceptions=True
    )
    for result in results:
        if isinstance(result, BaseException):
            tally["errors"] += 1
            tally.setdefault("first_error", repr(result)[:200])
    await claude.close()
    await realtime.close()
    return tally


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.naive_publisher")
    parser.add_argument("--ably-port", type=int, required=True)
    parser.add_argument("--anthropic-url", required=True)
    parser.add_argument("--jobs", required=True)
    parser.add_argument("--key", default=DEV_KEY)
    tally = asyncio.run(run(parser.parse_args(argv)))
    print(json.dumps(tally), flush=True)


if __name__ == "__main__":
    main()
