"""The agent's knobs: Django settings plus the command-line options, read when the agent starts."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

MESSAGE_PER_RESPONSE = "message-per-response"
MESSAGE_PER_TOKEN = "message-per-token"
STREAMING_PATTERNS = (MESSAGE_PER_RESPONSE, MESSAGE_PER_TOKEN)

# Ably's documented per-connection ceilings (platform/pricing/limits.mdx).
ABLY_MAX_MESSAGES_PER_SECOND = 50
ABLY_MAX_CHANNELS_PER_CONNECTION = 200
ABLY_MAX_APPEND_ROLLUP_WINDOW_MS = 500


class ConfigError(ValueError):
    """An agent option is out of range; raised before anything connects."""


@dataclass(frozen=True)
class AgentConfig:
    # Identity and credentials.
    agent_id: str
    ably_key: str
    ably_endpoint: str
    agent_client_id: str
    anthropic_api_key: str
    anthropic_base_url: str
    # The model request.
    model: str
    max_tokens: int
    system_prompt: str
    context_token_budget: int
    # Extended thinking budget in tokens; 0 leaves thinking off.
    thinking_budget: int = 0
    # Streaming.
    streaming_pattern: str = MESSAGE_PER_RESPONSE
    # The longest a delta waits for the ones after it to travel in the same message (one after
    # a quiet spell goes at once; see agent.streaming). A reply at 80 tokens/s then sends about
    # 19 msg/s, so two fit in a connection's 40 msg/s. 25 ms sent ~20.5 msg/s a reply, and the
    # two then queued on the limiter (issue 14 bench: p99 58-60 ms at 25 ms, 42-52 at 30).
    flush_window: float = 0.03
    # Ably's own append rollup on the agent's connections (transport param
    # `appendRollupWindow`, ms; Ably's default 40, maximum 500). The agent already coalesces
    # per flush window and paces each connection under 50 msg/s, so a second window on top
    # only adds latency: 0 publishes each append as sent (ai-transport B4).
    append_rollup_window_ms: int = 0
    connections: int = 4
    # Stay under Ably's 50 msg/s per connection with headroom for presence and control messages.
    max_messages_per_second: float = 40.0
    max_channels_per_connection: int = ABLY_MAX_CHANNELS_PER_CONNECTION
    # Work.
    concurrency: int = 50
    max_prompt_chars: int = 20_000
    prompt_rate_limit_per_minute: int = 20
    # The Anthropic SDK's OpenTelemetry spans (settings.CLAUDE_OPEN_TELEMETRY); off: none at all.
    model_tracing: bool = False
    # Model retries, done by the agent (not the SDK) so devices can be told it is retrying.
    model_attempts: int = 4
    retry_base_delay: float = 0.5
    retry_max_delay: float = 8.0
    # A model stream that sends no bytes for this long is dead: the real API sends `ping`
    # events while it works, so silence is not thinking. The reply ends as a retryable error.
    stall_timeout: float = 60.0
    # Lifecycle.
    grace_period: float = 30.0
    # How long `start`, a repair and `stop` keep trying while the Ably connection or channel is
    # down (a reconnect after an Ably node restart takes ~15-30 s): they wait for the channel to
    # be attached again rather than give up on a fixed short timer.
    publish_deadline: float = 60.0
    idle_detach_after: float = 600.0
    catch_up_window: float = 3600.0
    # A cancel that arrives before its reply is registered is kept this long.
    cancel_buffer_seconds: float = 30.0
    # How long a prompt waits for an earlier reply in the same conversation (any agent process).
    ordering_wait: float = 60.0
    # Another process's `streaming` reply older than this is considered abandoned at start-up.
    stale_reply_after: float = 900.0
    # Besides `[meta]channel.lifecycle` events, list active `ai:` channels this often: it
    # catches events missed across a reconnect, and is the only discovery when the key lacks
    # the `[meta]channel.lifecycle` subscribe capability (then at most every 2 seconds).
    discovery_interval: float = 30.0
    generate_titles: bool = True
    title_max_chars: int = 80
    # An agent id's lease lapses when its holder has not renewed it for this long: then the
    # holder is known gone and its `streaming` replies are interrupted (see agent.identity).
    lease_ttl: float = 30.0
    # The intake sweeper: this often, each conversation active within the window compares the
    # prompts in its channel history with the database and takes in what slipped through.
    sweep_interval: float = 15.0
    sweep_window: float = 300.0
    # A prompt younger than this is left to the normal intake (it may be on its way).
    sweep_grace: float = 5.0
    # A conversation that was deleted stays attached this long after its last prompt, to
    # refuse what its devices still send.
    deleted_linger: float = 60.0

    def __post_init__(self) -> None:
        if self.streaming_pattern not in STREAMING_PATTERNS:
            raise ConfigError(f"streaming pattern must be one of {', '.join(STREAMING_PATTERNS)}")
        if not self.agent_id:
            raise ConfigError("agent id must not be empty")
        if self.connections < 1:
            raise ConfigError("connections must be at least 1")
        if self.concurrency < 1:
            raise ConfigError("concurrency must be at least 1")
        if not 0 <= self.flush_window <= 5:
            raise ConfigError("flush window must be between 0 and 5 seconds")
        if not 0 <= self.append_rollup_window_ms <= ABLY_MAX_APPEND_ROLLUP_WINDOW_MS:
            raise ConfigError(
                f"append rollup window must be in [0, {ABLY_MAX_APPEND_ROLLUP_WINDOW_MS}] ms"
            )
        if not 0 < self.max_messages_per_second <= ABLY_MAX_MESSAGES_PER_SECOND:
            raise ConfigError(
                f"max messages per second must be in (0, {ABLY_MAX_MESSAGES_PER_SECOND}]"
            )
        if not 1 <= self.max_channels_per_connection <= ABLY_MAX_CHANNELS_PER_CONNECTION:
            raise ConfigError(
                f"channels per connection must be in [1, {ABLY_MAX_CHANNELS_PER_CONNECTION}]"
            )
        if not 0 < self.stall_timeout <= 3600:
            raise ConfigError("stall timeout must be between 0 (exclusive) and 3600 seconds")
        if self.publish_deadline < 0:
            raise ConfigError("publish deadline must not be negative")
        if self.grace_period < 0:
            raise ConfigError("grace period must not be negative")
        if self.model_attempts < 1:
            raise ConfigError("model attempts must be at least 1")
        if self.lease_ttl < 1:
            raise ConfigError("lease ttl must be at least 1 second")
        if self.sweep_interval <= 0 or self.sweep_window <= 0:
            raise ConfigError("sweep interval and window must be positive")

    @property
    def message_per_token(self) -> bool:
        return self.streaming_pattern == MESSAGE_PER_TOKEN

    def replace(self, **changes: Any) -> AgentConfig:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_settings(cls, **overrides: Any) -> AgentConfig:
        """Build from Django settings at call time (never at import), then apply overrides."""
        from django.conf import settings

        from .identity import default_agent_id

        values: dict[str, Any] = {
            "agent_id": default_agent_id(),
            "ably_key": settings.ABLY_API_KEY,
            "ably_endpoint": settings.ABLY_ENDPOINT,
            "agent_client_id": settings.ABLY_AGENT_CLIENT_ID,
            "anthropic_api_key": settings.ANTHROPIC_API_KEY,
            "anthropic_base_url": settings.ANTHROPIC_BASE_URL,
            "model": settings.CLAUDE_MODEL,
            "max_tokens": settings.CLAUDE_MAX_TOKENS,
            "system_prompt": settings.CLAUDE_SYSTEM_PROMPT,
            "context_token_budget": settings.CLAUDE_CONTEXT_TOKEN_BUDGET,
            "model_tracing": settings.CLAUDE_OPEN_TELEMETRY,
            "streaming_pattern": settings.STREAMING_PATTERN,
            "max_prompt_chars": settings.MAX_PROMPT_CHARS,
            "prompt_rate_limit_per_minute": settings.PROMPT_RATE_LIMIT_PER_MINUTE,
        }
        values.update({key: value for key, value in overrides.items() if value is not None})
        return cls(**values)
