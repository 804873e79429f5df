"""The agent's pure parts: pacing, coalescing, retry policy, titles and its configuration."""

from __future__ import annotations

import asyncio

import anthropic
import httpx2
import pytest

from conversations import events
from conversations.agent import model as claude
from conversations.agent.config import AgentConfig, ConfigError
from conversations.agent.streaming import PendingText, RateLimiter
from conversations.agent.titles import clean_title


class FakeClock:
    """Virtual time: `sleep` advances the clock instead of waiting."""

    def __init__(self) -> None:
        self.now = 100.0
        self.started: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds


def config(**overrides) -> AgentConfig:
    values = {
        "agent_id": "test",
        "ably_key": "app.key:secret",
        "ably_endpoint": "",
        "agent_client_id": "agent",
        "anthropic_api_key": "k",
        "anthropic_base_url": "",
        "model": "claude-sonnet-5-5",
        "max_tokens": 100,
        "system_prompt": "be brief",
        "context_token_budget": 1000,
    }
    values.update(overrides)
    return AgentConfig(**values)


def most_in_any_second(starts: list[float]) -> int:
    return max(
        len([s for s in starts[index:] if s < start + 1.0]) for index, start in enumerate(starts)
    )


async def test_the_rate_limiter_never_lets_more_than_its_rate_start_in_any_second():
    clock = FakeClock()
    limiter = RateLimiter(40, clock=clock, sleep=clock.sleep)
    starts = []
    for _ in range(200):
        await limiter.acquire()
        starts.append(clock.now)
    assert most_in_any_second(starts) <= 40
    # ... and keeps to that pace: 200 sends take about five seconds.
    assert starts[-1] - starts[0] >= 4.5


async def test_a_busy_connection_gets_the_limiters_whole_rate():
    # Issue 14: two replies flushing every 50 ms want 40 msg/s together; a limiter that kept
    # under its rate by refilling slower than it (35/s for a burst of 5) queued their flushes.
    clock = FakeClock()
    limiter = RateLimiter(40, clock=clock, sleep=clock.sleep)
    starts = []
    for _ in range(400):
        await limiter.acquire()
        starts.append(clock.now)
    assert most_in_any_second(starts) <= 40
    assert starts[-1] - starts[0] < 10.5


async def test_the_rate_limiter_does_not_burst_after_the_event_loop_stalls():
    clock = FakeClock()

    async def oversleep(seconds: float) -> None:
        # A starved event loop wakes sleepers late, all at once.
        clock.now += seconds + 2.0

    limiter = RateLimiter(40, clock=clock, sleep=oversleep)
    starts = []

    async def operation() -> None:
        await limiter.acquire()
        starts.append(clock.now)

    await asyncio.gather(*(operation() for _ in range(100)))
    # The slots the stall skipped are gone, not spent in one burst over Ably's limit.
    assert most_in_any_second(starts) <= limiter.burst


async def test_the_rate_limiter_does_not_delay_an_idle_connection():
    clock = FakeClock()
    limiter = RateLimiter(40, clock=clock, sleep=clock.sleep)
    await limiter.acquire()
    clock.now += 5
    before = clock.now
    await limiter.acquire()
    assert clock.now == before


async def test_the_rate_limiter_lets_a_few_close_sends_through_at_once():
    # Deltas of one reply come unevenly; a couple close together must not wait 1/rate each.
    clock = FakeClock()
    limiter = RateLimiter(40, clock=clock, sleep=clock.sleep)
    before = clock.now
    for _ in range(limiter.burst):
        await limiter.acquire()
    assert clock.now == before
    await limiter.acquire()
    assert clock.now > before


@pytest.mark.parametrize("rate", [0.5, 2, 3, 7.5, 50])
async def test_every_rate_limiter_keeps_to_its_rate(rate):
    clock = FakeClock()
    limiter = RateLimiter(rate, clock=clock, sleep=clock.sleep)
    starts = []
    for _ in range(60):
        await limiter.acquire()
        starts.append(clock.now)
    assert most_in_any_second(starts) <= max(1, rate)


def test_pending_text_merges_deltas_of_one_part_and_keeps_part_order():
    pending = PendingText()
    pending.add(events.Part.THINKING, "Let me ")
    pending.add(events.Part.THINKING, "think.")
    pending.add(events.Part.TEXT, "Hello")
    pending.add(events.Part.TEXT, "")
    pending.add(events.Part.TEXT, " world")
    assert pending.take() == [
        (events.Part.THINKING, "Let me think."),
        (events.Part.TEXT, "Hello world"),
    ]
    assert not pending


def _status_error(status: int, headers: dict[str, str] | None = None) -> anthropic.APIStatusError:
    request = httpx2.Request("POST", "http://127.0.0.1/v1/messages")
    response = httpx2.Response(status, headers=headers or {}, request=request)
    body = {"type": "error", "error": {"type": "x", "message": "m"}}
    return anthropic.AsyncAnthropic(api_key="k")._make_status_error(
        "m", body=body, response=response
    )


@pytest.mark.parametrize(
    ("status", "headers", "retryable"),
    [
        (429, {}, True),
        (529, {}, True),
        (500, {}, True),
        (503, {}, True),
        (400, {}, False),
        (404, {}, False),
        (529, {"x-should-retry": "false"}, False),
        (400, {"x-should-retry": "true"}, True),
    ],
)
def test_which_model_errors_are_retried(status, headers, retryable):
    assert claude.is_retryable(_status_error(status, headers)) is retryable


def test_retry_delay_obeys_the_server_then_backs_off_exponentially():
    cfg = config(retry_base_delay=0.5, retry_max_delay=8.0)
    assert claude.retry_delay(_status_error(429, {"retry-after-ms": "250"}), 1, cfg) == 0.25
    assert claude.retry_delay(_status_error(429, {"retry-after": "2"}), 1, cfg) == 2.0
    # An absurd retry-after becomes a bounded wait, not a reply stuck for hours.
    assert claude.retry_delay(_status_error(429, {"retry-after": "99999"}), 1, cfg) == 60.0
    assert 0.375 <= claude.retry_delay(_status_error(529), 1, cfg) <= 0.5
    assert 0.75 <= claude.retry_delay(_status_error(529), 2, cfg) <= 1.0
    assert 6.0 <= claude.retry_delay(_status_error(529), 10, cfg) <= 8.0


def test_failures_become_messages_a_user_can_act_on():
    overloaded = claude.describe_failure(_status_error(529), mid_stream=False)
    assert "overloaded" in overloaded.user_message
    rate_limited = claude.describe_failure(_status_error(429), mid_stream=False)
    assert "too many requests" in rate_limited.user_message
    dropped = claude.describe_failure(httpx2.RemoteProtocolError("peer closed"), mid_stream=True)
    assert "dropped" in dropped.user_message and "kept" in dropped.user_message
    # The same drop as anthropic >= 2.17 reports it when its own Stream reads the body.
    request = httpx2.Request("POST", "http://127.0.0.1/v1/messages")
    wrapped = anthropic.APIConnectionError(message="peer closed", request=request)
    assert claude.describe_failure(wrapped, mid_stream=True).user_message == dropped.user_message
    unreachable = claude.describe_failure(wrapped, mid_stream=False)
    assert "Could not reach Claude" in unreachable.user_message
    stalled = claude.describe_failure(httpx2.ReadTimeout("no bytes"), mid_stream=True)
    assert "stopped responding" in stalled.user_message and "kept" in stalled.user_message


def test_the_model_client_reads_with_the_stall_timeout_not_the_sdk_default():
    # The read timeout bounds the silence between chunks; the SDK default is 600 s.
    client = claude.make_client(config(stall_timeout=7.5))
    assert client.timeout.read == 7.5
    assert client.max_retries == 0


@pytest.mark.parametrize(
    ("raw", "title"),
    [
        ('"Planning a trip to Lisbon."', "Planning a trip to Lisbon"),
        ("Title: Sourdough basics\nMore text", "Sourdough basics"),
        ("\n\n  **Rust lifetimes**  ", "Rust lifetimes"),
        ("", ""),
    ],
)
def test_model_titles_are_cleaned(raw, title):
    assert clean_title(raw, 80) == title


def test_long_titles_are_cut_to_the_limit():
    assert clean_title("word " * 50, 20) == "word word word word…"
    assert len(clean_title("word " * 50, 20)) == 20


@pytest.mark.parametrize(
    "bad",
    [
        {"streaming_pattern": "message-per-sentence"},
        {"connections": 0},
        {"concurrency": 0},
        {"max_messages_per_second": 51},
        {"max_channels_per_connection": 201},
        {"flush_window": -1},
        {"agent_id": ""},
        {"stall_timeout": 0},
        {"publish_deadline": -1},
        {"append_rollup_window_ms": -1},
    ],
)
def test_out_of_range_options_are_refused_before_anything_connects(bad):
    with pytest.raises(ConfigError):
        config(**bad)


def test_settings_are_read_when_the_config_is_built(settings):
    settings.STREAMING_PATTERN = "message-per-token"
    settings.CLAUDE_MODEL = "claude-haiku-5-5"
    built = AgentConfig.from_settings(connections=2, flush_window=None)
    assert built.message_per_token
    assert built.model == "claude-haiku-5-5"
    assert built.connections == 2
    assert built.flush_window == AgentConfig.flush_window  # None means "not given"
