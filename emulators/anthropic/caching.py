"""Prompt caching as the Messages API documents it, without a clock of its own.

A request is a sequence of `Segment`s in the order the model reads them: tools, then system
blocks, then every message's content blocks. Each segment carries its input tokens and the
digest of the whole prefix up to and including it (so equal digests mean equal prefixes), and,
if the block has `cache_control`, the breakpoint's TTL.

`PromptCache.apply(model, segments, now)` then does what the API does (docs: "Prompt caching"):

- **read**: at each breakpoint, the longest prefix already cached is found, looking back up to
  20 blocks before the breakpoint; its tokens are `cache_read_input_tokens` and the entry's TTL
  is refreshed ("5 minutes from last use");
- **write**: every breakpoint past the read prefix whose prefix is at least the model's
  minimum cacheable length is cached for its TTL (5 min, or 1 h with `"ttl": "1h"`); the tokens
  between the read prefix and the last breakpoint written are `cache_creation_input_tokens`,
  split by TTL into `ephemeral_5m_input_tokens` / `ephemeral_1h_input_tokens`;
- a prefix below the minimum is silently not cached (no error, as the API);
- `input_tokens` is what is left: the tokens after the last breakpoint read or written.

Entries are keyed by model too: caches are per model. `now` is seconds on any monotonic scale;
the adapter passes its injected clock.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

TTL_SECONDS: dict[str, float] = {"5m": 300.0, "1h": 3600.0}
MAX_BREAKPOINTS = 4
LOOKBACK_BLOCKS = 20

# Minimum cacheable prompt length per model (docs, 2026: 512 for Opus 5 and Fable 5; 1,024 for
# Sonnet 5, Opus 4.8, Sonnet 4.6/4.5; 2,048 for Opus 4.7; 4,096 for Opus 4.6/4.5 and Haiku 4.5).
# The 5.5 models are not in the docs we found: Sonnet 5.5 and Opus 5.5 follow their family's 5.0
# value; Haiku 5.5 uses 2,048 (the long-standing Haiku figure), a guess to revisit.
MIN_CACHEABLE_TOKENS: dict[str, int] = {
    "claude-sonnet-5-5": 1024,
    "claude-haiku-5-5": 2048,
    "claude-opus-5-5": 512,
    "claude-fable-5-1": 512,
    "claude-sonnet-5": 1024,
    "claude-opus-5": 512,
    "claude-haiku-4-5": 4096,
    "claude-haiku-4-5-20251001": 4096,
    "claude-opus-4-8": 1024,
    "claude-opus-4-7": 2048,
    "claude-opus-4-6": 4096,
    "claude-sonnet-4-6": 1024,
    "claude-opus-4-5": 4096,
    "claude-opus-4-5-20251101": 4096,
    "claude-sonnet-4-5": 1024,
    "claude-sonnet-4-5-20250929": 1024,
}
DEFAULT_MIN_CACHEABLE_TOKENS = 1024


def min_cacheable_tokens(model: str) -> int:
    return MIN_CACHEABLE_TOKENS.get(model, DEFAULT_MIN_CACHEABLE_TOKENS)


@dataclass(frozen=True)
class Segment:
    """One block of the prompt: its tokens, the digest of the prefix ending here, breakpoint TTL."""

    tokens: int
    digest: bytes
    ttl: str | None = None


def chain_digest(previous: bytes, canonical: bytes) -> bytes:
    """The digest of a prefix extended by one block (its canonical bytes)."""
    return hashlib.sha256(previous + canonical).digest()


@dataclass(frozen=True)
class CacheUsage:
    """The usage fields prompt caching decides; the three token counts add up to the prompt."""

    input_tokens: int
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    ephemeral_5m_input_tokens: int = 0
    ephemeral_1h_input_tokens: int = 0

    @classmethod
    def uncached(cls, total: int) -> CacheUsage:
        return cls(input_tokens=total)

    @property
    def total(self) -> int:
        return self.input_tokens + self.cache_creation_input_tokens + self.cache_read_input_tokens

    def as_dict(self) -> dict[str, Any]:
        """The `usage` keys as the API sends them (output_tokens and service_tier aside)."""
        return {
            "input_tokens": self.input_tokens,
            "cache_creation_input_tokens": self.cache_creation_input_tokens,
            "cache_read_input_tokens": self.cache_read_input_tokens,
            "cache_creation": {
                "ephemeral_5m_input_tokens": self.ephemeral_5m_input_tokens,
                "ephemeral_1h_input_tokens": self.ephemeral_1h_input_tokens,
            },
        }


@dataclass
class _Entry:
    expires_at: float
    ttl: str


class PromptCache:
    """Cached prompt prefixes (model + prefix digest -> expiry). Not thread-safe by itself."""

    def __init__(self, max_entries: int = 4096) -> None:
        self.max_entries = max_entries
        self._entries: dict[tuple[str, bytes], _Entry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        self._entries.clear()

    def apply(self, model: str, segments: Sequence[Segment], now: float) -> CacheUsage:
        """Read and write the cache for one request answered at `now`; return its usage."""
        total = sum(segment.tokens for segment in segments)
        breakpoints = [index for index, segment in enumerate(segments) if segment.ttl]
        if not breakpoints:
            return CacheUsage.uncached(total)
        prefix_tokens: list[int] = []
        running = 0
        for segment in segments:
            running += segment.tokens
            prefix_tokens.append(running)

        read_end = -1
        for breakpoint in breakpoints:
            for index in range(breakpoint, max(-1, breakpoint - LOOKBACK_BLOCKS - 1), -1):
                if index <= read_end:
                    break
                entry = self._live(model, segments[index].digest, now)
                if entry is not None:
                    read_end = index
                    break
        if read_end >= 0:
            entry = self._live(model, segments[read_end].digest, now)
            assert entry is not None
            entry.expires_at = max(entry.expires_at, now + TTL_SECONDS[entry.ttl])

        minimum = min_cacheable_tokens(model)
        written = {"5m": 0, "1h": 0}
        covered = prefix_tokens[read_end] if read_end >= 0 else 0
        for breakpoint in breakpoints:
            segment = segments[breakpoint]
            ttl = segment.ttl or "5m"
            if breakpoint <= read_end:
                # Inside the prefix just read: used, so an entry it has lives on (none is made).
                entry = self._live(model, segment.digest, now)
                if entry is not None:
                    entry.expires_at = max(entry.expires_at, now + TTL_SECONDS[entry.ttl])
                continue
            if prefix_tokens[breakpoint] < minimum:
                continue
            written[ttl] += prefix_tokens[breakpoint] - covered
            covered = prefix_tokens[breakpoint]
            self._refresh(model, segment.digest, ttl, now)
        read = prefix_tokens[read_end] if read_end >= 0 else 0
        created = written["5m"] + written["1h"]
        self._evict(now)
        return CacheUsage(
            input_tokens=total - read - created,
            cache_creation_input_tokens=created,
            cache_read_input_tokens=read,
            ephemeral_5m_input_tokens=written["5m"],
            ephemeral_1h_input_tokens=written["1h"],
        )

    def _live(self, model: str, digest: bytes, now: float) -> _Entry | None:
        entry = self._entries.get((model, digest))
        if entry is None:
            return None
        if entry.expires_at <= now:
            del self._entries[(model, digest)]
            return None
        return entry

    def _refresh(self, model: str, digest: bytes, ttl: str, now: float) -> None:
        entry = self._live(model, digest, now)
        expires_at = now + TTL_SECONDS[ttl]
        if entry is None:
            self._entries[(model, digest)] = _Entry(expires_at, ttl)
        elif expires_at > entry.expires_at:
            entry.expires_at, entry.ttl = expires_at, ttl

    def _evict(self, now: float) -> None:
        if len(self._entries) <= self.max_entries:
            return
        for key in [key for key, entry in self._entries.items() if entry.expires_at <= now]:
            del self._entries[key]
        if len(self._entries) > self.max_entries:
            by_expiry = sorted(self._entries, key=lambda key: self._entries[key].expires_at)
            for key in by_expiry[: len(self._entries) - self.max_entries]:
                del self._entries[key]
