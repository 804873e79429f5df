"""The agent's floor: N concurrent Claude streams read and parsed, and nothing else.

`python -m bench.stream_floor --anthropic-url URL --jobs FILE [--model M]` opens every stream of
the jobs file (`[{"prompt": ...}]`) at once, reads each server-sent event line and json-parses
every `data:` line, keeping only the text deltas, exactly the part of a reply no relay can skip.
The relay benchmark runs it beside the agent, against the same stand-in stream (same prompts,
text and pacing), and reports the agent's CPU per token as a multiple of this one's.

Same transport as the agent's model client: the agent's `anthropic.DefaultAioHttpClient` is the
SDK's httpx-shaped client over aiohttp's transport (`anthropic._vendor.httpx_aiohttp`), so the
bytes are read by aiohttp here too, on uvloop as `run_agent` uses. What the floor leaves out
(the SDK's request building and httpx layers over aiohttp, Ably, the database) is what the agent
adds on top of it.

Protocol with the driver: prints `ready`, waits for a line on stdin, runs every job, prints one
JSON line (`{"texts": [...], "errors": [...]}`, texts in job order), then waits for another line
before exiting, so the driver can read the process's CPU time from /proc after the work and
before the interpreter's teardown.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import uvloop

DEFAULT_MODEL = "claude-sonnet-5-5"
MAX_TOKENS = 4096


async def read_stream(session: aiohttp.ClientSession, url: str, model: str, prompt: str) -> str:
    """One streamed reply's text: every SSE `data:` line parsed, text deltas joined."""
    parts: list[str] = []
    await read_deltas(session, url, model, prompt, parts.append)
    return "".join(parts)


async def read_deltas(
    session: aiohttp.ClientSession,
    url: str,
    model: str,
    prompt: str,
    on_text: Callable[[str], object],
) -> None:
    """Stream one reply, every SSE `data:` line parsed, each text delta handed to `on_text`."""
    body = {
        "model": model,
        "max_tokens": MAX_TOKENS,
        "messages": [{"role": "user", "content": prompt}],
        "stream": True,
    }
    async with session.post(url, json=body) as response:
        response.raise_for_status()
        # aiohttp's StreamReader yields one line (with its newline) per iteration.
        async for line in response.content:
            if not line.startswith(b"data:"):
                continue
            event: dict[str, Any] = json.loads(line[5:])
            if event.get("type") == "content_block_delta":
                delta = event.get("delta") or {}
                if delta.get("type") == "text_delta":
                    on_text(delta.get("text", ""))


@contextlib.asynccontextmanager
async def streams_on_go(anthropic_url: str) -> AsyncIterator[tuple[aiohttp.ClientSession, str]]:
    """The HTTP session and the Messages URL, once the driver says go: prints `ready`, then
    waits for a line on stdin (the driver reads the CPU time before it sends one)."""
    headers = {"x-api-key": "bench", "anthropic-version": "2023-06-01"}
    # No pool limit: every stream is open at once, as the agent's are.
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=None, sock_read=60)
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession(
        connector=connector, headers=headers, timeout=timeout
    ) as session:
        print("ready", flush=True)
        await loop.run_in_executor(None, sys.stdin.readline)
        yield session, f"{anthropic_url.rstrip('/')}/v1/messages"


async def run(anthropic_url: str, jobs: list[dict[str, str]], model: str) -> dict[str, Any]:
    async with streams_on_go(anthropic_url) as (session, url):
        results = await asyncio.gather(
            *(read_stream(session, url, model, job["prompt"]) for job in jobs),
            return_exceptions=True,
        )
    texts = [result if isinstance(result, str) else "" for result in results]
    errors = [repr(result)[:200] for result in results if isinstance(result, BaseException)]
    return {"texts": texts, "errors": errors}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.stream_floor")
    parser.add_argument("--anthropic-url", required=True)
    parser.add_argument("--jobs", required=True, help='JSON file: [{"prompt": ...}, ...]')
    parser.add_argument("--model", default=DEFAULT_MODEL)
    args = parser.parse_args(argv)
    jobs = json.loads(Path(args.jobs).read_text())
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        tally = runner.run(run(args.anthropic_url, jobs, args.model))
    print(json.dumps(tally), flush=True)
    # Stay until the driver has read this process's CPU time.
    sys.stdin.readline()


if __name__ == "__main__":
    main()
