"""pytest plugin: fixtures that run the Anthropic stand-in in-process on a free port.

Fixtures (function-scoped, each a fresh server in a background thread on 127.0.0.1):

- `anthropic_server`: no pacing (replies stream as fast as the socket allows).
- `anthropic_server_paced`: realistic pacing (50 ms to first token, 100 tokens/s), for tests
  that cancel a stream part-way or need a reply that takes a while.
- `anthropic_server_manual_clock`: unpaced, with a clock that moves only when told
  (`server.clock.advance(301)`), for prompt-cache expiry.

Both yield an `AnthropicStandIn`; its API is stable:

    server.base_url / server.port          # AsyncAnthropic(base_url=server.base_url, api_key="k")
    server.set_pacing(ttft=0.3, tokens_per_second=80)      # seconds; 0 tokens/s = unpaced
    server.inject_fault("529", count=2)    # the next 2 Messages requests fail; names as markers
    server.clear_faults()
    server.require_key = "secret"          # only this key is accepted (None: any non-empty key)
    server.max_body_bytes = 1000           # lower the 413 threshold
    server.requests                        # list[RecordedRequest] for every request received:
                                           #   .path .headers .body .status .fault .outcome
                                           #   .retry_count .events_sent .request_id
    server.messages_requests               # only POST /v1/messages
    server.aborted                         # requests whose stream the client closed mid-way
    server.wait_for_aborted(count=1, timeout=5)          # blocks; True once that many aborted
    await server.wait_for_aborted_async(count=1, timeout=5)
    server.wait_until(lambda: len(server.messages_requests) == 2, timeout=5)    # any condition
    await server.wait_until_async(predicate, timeout=5)
    server.reset()                         # forget requests, queued faults, the prompt cache
    server.clock                           # the server's clock (a ManualClock in that fixture)
    len(server.state.prompt_cache)         # cached prompt prefixes

Attachments for tests: `emulators.anthropic.samples` makes PNG/JPEG/GIF/WebP images and PDFs in
memory, and the matching content blocks (`image_block`, `pdf_block`, `text_document_block`).

Per-request faults need no fixture call: put a marker in the last user message, e.g.
`[[fault:529]]`, `[[fault:429=0.1]]` (retry-after 0.1 s), `[[fault:midstream-error]]`,
`[[fault:drop]]`, `[[fault:stall=2]]`, `[[fault:slow-first-token=1]]`, `[[fault:eof]]`,
`[[fault:hang=2]]`, `[[fault:refusal]]`. Only the last user message is scanned, and every SDK
retry of it fails the same way; `inject_fault` fails just the next N requests instead. See
`parse_fault` in emulators/anthropic/core.py for what each one does.

Replies are deterministic. "Say exactly: <text>" answers with exactly <text>, which is the
easiest way to control what an agent under test receives.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator

import pytest

from emulators.anthropic.core import Fault, Pacing
from emulators.anthropic.server import EmulatorServer, EmulatorState, RecordedRequest


class AnthropicStandIn:
    """A running stand-in plus the knobs tests need. Create through the fixtures."""

    def __init__(self, server: EmulatorServer) -> None:
        self._server = server
        self.state: EmulatorState = server.state

    @property
    def clock(self) -> Callable[[], float]:
        return self._server.clock

    @property
    def base_url(self) -> str:
        return self._server.base_url

    @property
    def port(self) -> int:
        return self._server.port

    def set_pacing(self, *, ttft: float = 0.0, tokens_per_second: float = 0.0) -> None:
        self.state.pacing = Pacing(ttft=ttft, tokens_per_second=tokens_per_second)

    def inject_fault(self, fault: str | Fault, count: int = 1) -> None:
        self.state.queue_fault(fault, count)

    def clear_faults(self) -> None:
        self.state.clear_faults()

    @property
    def require_key(self) -> str | None:
        return self.state.require_key

    @require_key.setter
    def require_key(self, key: str | None) -> None:
        self.state.require_key = key

    @property
    def max_body_bytes(self) -> int:
        return self.state.max_body_bytes

    @max_body_bytes.setter
    def max_body_bytes(self, limit: int) -> None:
        self.state.max_body_bytes = limit

    @property
    def requests(self) -> list[RecordedRequest]:
        return list(self.state.requests)

    @property
    def messages_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path == "/v1/messages"]

    @property
    def aborted(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.outcome == "aborted"]

    def wait_for_aborted(self, count: int = 1, timeout: float = 5.0) -> bool:
        return self.wait_until(lambda: len(self.aborted) >= count, timeout)

    async def wait_for_aborted_async(self, count: int = 1, timeout: float = 5.0) -> bool:
        return await self.wait_until_async(lambda: len(self.aborted) >= count, timeout)

    def wait_until(self, predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
        """Block until predicate() holds; it is re-checked whenever a request starts or ends."""
        return self.state.wait_for(predicate, timeout)

    async def wait_until_async(self, predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
        # Polls rather than blocking, so the test's own event loop keeps running meanwhile.
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    def reset(self) -> None:
        self.state.reset()


class ManualClock:
    """A wall clock for the stand-in that moves only when a test says so."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def _run(pacing: Pacing, clock: Callable[[], float] = time.time) -> Iterator[AnthropicStandIn]:
    server = EmulatorServer(EmulatorState(pacing=pacing), clock=clock)
    server.start()
    try:
        yield AnthropicStandIn(server)
    finally:
        server.stop()


@pytest.fixture
def anthropic_server() -> Iterator[AnthropicStandIn]:
    """The Anthropic stand-in on a free port, unpaced."""
    yield from _run(Pacing())


@pytest.fixture
def anthropic_server_paced() -> Iterator[AnthropicStandIn]:
    """The Anthropic stand-in with realistic pacing (50 ms TTFT, 100 tokens/s)."""
    yield from _run(Pacing(ttft=0.05, tokens_per_second=100))


@pytest.fixture
def anthropic_server_manual_clock() -> Iterator[AnthropicStandIn]:
    """The Anthropic stand-in, unpaced, on a `ManualClock` (`server.clock.advance(seconds)`)."""
    yield from _run(Pacing(), ManualClock())
