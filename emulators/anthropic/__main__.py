"""`python -m emulators.anthropic --host 127.0.0.1 --port 8789 [--tokens-per-second 80]
[--ttft-ms 300] [--require-key K]`: serve the Anthropic stand-in until Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
from collections.abc import Iterator
from typing import Any

import uvicorn

from emulators.anthropic.core import Pacing
from emulators.anthropic.server import KEEP_ALIVE_SECONDS, EmulatorState, create_app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m emulators.anthropic",
        description="Local stand-in for the Anthropic Messages API.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8789)
    parser.add_argument("--tokens-per-second", type=float, default=80.0, help="0 = no pacing")
    parser.add_argument("--ttft-ms", type=float, default=300.0, help="time to first token")
    parser.add_argument("--require-key", default=None, help="accept only this API key")
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    if args.tokens_per_second < 0 or args.ttft_ms < 0:
        parser.error("--tokens-per-second and --ttft-ms must be non-negative")

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    state = EmulatorState(
        pacing=Pacing(ttft=args.ttft_ms / 1000, tokens_per_second=args.tokens_per_second),
        require_key=args.require_key,
    )
    config = uvicorn.Config(
        create_app(state),
        host=args.host,
        port=args.port,
        lifespan="off",
        log_level=args.log_level,
        timeout_graceful_shutdown=2,
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
    )
    _QuietExitServer(config, state).run()


class _QuietExitServer(uvicorn.Server):
    """Shut down on SIGINT/SIGTERM and exit 0.

    uvicorn re-raises the signal after its graceful shutdown, which makes a clean stop look like
    a crash (exit status -15) to process managers such as honcho. Streams still running end at
    once (`EmulatorState.closing`): otherwise uvicorn cancels them after its graceful timeout and
    prints each one's traceback.
    """

    def __init__(self, config: uvicorn.Config, state: EmulatorState) -> None:
        super().__init__(config)
        self.state = state

    def handle_exit(self, sig: int, frame: Any) -> None:
        self.state.closing = True
        super().handle_exit(sig, frame)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        previous = {
            sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


if __name__ == "__main__":
    main()
