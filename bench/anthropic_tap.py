"""The Anthropic stand-in with a tap: records when each text delta left the server.

`python -m bench.anthropic_tap --port P --tokens-per-second 80 --ttft-ms 300`

The stand-in's app (emulators.anthropic, unchanged) is wrapped in an ASGI middleware that watches
every SSE chunk it sends; for each `text_delta` it notes time.time() and the reply's length so
far. `GET /_bench/emissions` returns, per streamed reply, its full text and the list of
[emitted_at, end_offset] pairs; `POST /_bench/reset` forgets them. The latency the relay
benchmark reports starts at these timestamps: the moment the stand-in handed a delta to its
HTTP server, as close to "the model emitted a token" as a stand-in gets.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from typing import Any

import uvicorn

from emulators.anthropic.core import Pacing
from emulators.anthropic.server import EmulatorState, create_app

EMISSIONS_PATH = "/_bench/emissions"
RESET_PATH = "/_bench/reset"


class Tap:
    def __init__(self, app: Any) -> None:
        self.app = app
        self.records: list[dict[str, Any]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        if path == EMISSIONS_PATH:
            await self._reply(send, {"replies": self.records})
            return
        if path == RESET_PATH:
            self.records = []
            await self._reply(send, {"ok": True})
            return
        if path != "/v1/messages":
            await self.app(scope, receive, send)
            return
        record: dict[str, Any] = {"text": "", "deltas": [], "outcome": "open"}
        pending = ""

        async def tapped_send(message: dict[str, Any]) -> None:
            nonlocal pending
            if message["type"] == "http.response.body":
                body = message.get("body") or b""
                if body:
                    pending += body.decode()
                    while "\n\n" in pending:
                        event, pending = pending.split("\n\n", 1)
                        self._observe(record, event)
                if not message.get("more_body", False):
                    record["outcome"] = "complete"
            await send(message)

        self.records.append(record)
        try:
            await self.app(scope, receive, tapped_send)
        finally:
            if record["outcome"] == "open":
                record["outcome"] = "ended"

    @staticmethod
    def _observe(record: dict[str, Any], event: str) -> None:
        if "text_delta" not in event:
            return
        for line in event.splitlines():
            if line.startswith("data:"):
                data = json.loads(line[5:])
                delta = data.get("delta") or {}
                if delta.get("type") == "text_delta":
                    record["text"] += delta.get("text", "")
                    record["deltas"].append((time.time(), len(record["text"])))

    @staticmethod
    async def _reply(send: Any, payload: dict[str, Any]) -> None:
        body = json.dumps(payload).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.anthropic_tap")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--tokens-per-second", type=float, default=80.0)
    parser.add_argument("--ttft-ms", type=float, default=300.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    state = EmulatorState(
        pacing=Pacing(ttft=args.ttft_ms / 1000, tokens_per_second=args.tokens_per_second)
    )
    # The stand-in keeps every request it saw; a benchmark sends thousands, which is fine.
    config = uvicorn.Config(
        Tap(create_app(state)),
        host="127.0.0.1",
        port=args.port,
        lifespan="off",
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=1,
    )
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
