"""Sans-I/O core of the Anthropic Messages API stand-in.

Nothing here touches a socket, a clock or global randomness. The adapter (`server.py`) feeds it:

1. `check_auth(headers, required_key)` and `parse_messages_request(body)` validate a request and
   raise `ApiError` carrying the exact status, error type and message the real API would send.
2. `fault_for(request)` finds a `[[fault:...]]` marker in the last user turn (see `parse_fault`).
3. `Generation(request, ...)` composes the deterministic reply once; `steps()` yields the SSE
   events to write interleaved with `Pause` (sleep this long) and `Drop` (close the socket
   without ending the body) instructions, and `message()` is the non-streaming JSON body.

Token counts use a small word/punctuation tokenizer (`tokenize`), so usage is consistent with the
text: `output_tokens` is exactly the number of tokens in every delta sent. Images and documents
are decoded and priced by `media.py` (the API's documented rules); prompt caching is decided by
`caching.PromptCache`, which the adapter owns and feeds its clock (`prompt_segments` gives it
the request's blocks and breakpoints).
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import random
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from emulators.anthropic.caching import (
    MAX_BREAKPOINTS,
    CacheUsage,
    Segment,
    chain_digest,
)
from emulators.anthropic.media import InvalidMedia, Media, analyze, check_block
from emulators.anthropic.replies import Composition, compose_reply
from emulators.anthropic.tokens import count_tokens, tokenize

DEFAULT_MODEL = "claude-sonnet-5-5"

# Current ids first (what `GET /v1/models` lists); older ids the SDK still knows are accepted too.
MODELS: dict[str, str] = {
    "claude-sonnet-5-5": "Claude Sonnet 5.5",
    "claude-haiku-5-5": "Claude Haiku 5.5",
    "claude-opus-5-5": "Claude Opus 5.5",
    "claude-fable-5-1": "Claude Fable 5.1",
    "claude-sonnet-5": "Claude Sonnet 5",
    "claude-opus-5": "Claude Opus 5",
    "claude-haiku-4-5": "Claude Haiku 4.5",
    "claude-haiku-4-5-20251001": "Claude Haiku 4.5",
    "claude-opus-4-8": "Claude Opus 4.8",
    "claude-opus-4-7": "Claude Opus 4.7",
    "claude-opus-4-6": "Claude Opus 4.6",
    "claude-sonnet-4-6": "Claude Sonnet 4.6",
    "claude-opus-4-5": "Claude Opus 4.5",
    "claude-opus-4-5-20251101": "Claude Opus 4.5",
    "claude-sonnet-4-5": "Claude Sonnet 4.5",
    "claude-sonnet-4-5-20250929": "Claude Sonnet 4.5",
}
MAX_OUTPUT_TOKENS = 128_000
MAX_BODY_BYTES = 32 * 1024 * 1024
MAX_MESSAGES = 100_000
MIN_THINKING_BUDGET = 1024

KNOWN_FIELDS = frozenset(
    {
        "model",
        "max_tokens",
        "messages",
        "stream",
        "system",
        "tools",
        "tool_choice",
        "thinking",
        "stop_sequences",
        "metadata",
        "temperature",
        "top_p",
        "top_k",
        "service_tier",
        "output_config",
        "speed",
        "container",
        "inference_geo",
        "cache_control",
        "diagnostics",
        "context_management",
        "mcp_servers",
    }
)
COUNT_TOKENS_FIELDS = KNOWN_FIELDS - {"max_tokens", "stream", "stop_sequences", "metadata"}

ERROR_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    409: "invalid_request_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}
ERROR_MESSAGES: dict[str, str] = {
    "invalid_request_error": "Invalid request.",
    "authentication_error": "invalid x-api-key",
    "billing_error": "Your credit balance is too low to access the Anthropic API.",
    "permission_error": "Your API key does not have permission to use the specified resource.",
    "not_found_error": "Not found.",
    "timeout_error": "Request timed out.",
    "request_too_large": "Request exceeds the maximum allowed number of bytes.",
    "rate_limit_error": "Number of request tokens has exceeded your per-minute rate limit.",
    "api_error": "Internal server error",
    "overloaded_error": "Overloaded",
}


RETRYABLE_CLIENT_STATUSES = frozenset({408, 409, 429})


class ApiError(Exception):
    """A request the real API would refuse: carries the status, error type, message, headers."""

    def __init__(
        self,
        status: int,
        message: str | None = None,
        *,
        error_type: str | None = None,
        headers: Mapping[str, str] | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        self.status = status
        self.details = dict(details) if details else None
        self.error_type = error_type or ERROR_TYPES.get(status, "api_error")
        self.message = message or ERROR_MESSAGES.get(self.error_type, "Error")
        # The real API tells the SDK not to retry client errors, except the ones worth retrying.
        retryable = status >= 500 or status in RETRYABLE_CLIENT_STATUSES
        default_headers = {} if retryable else {"x-should-retry": "false"}
        self.headers: dict[str, str] = {**default_headers, **(headers or {})}
        super().__init__(f"{status} {self.error_type}: {self.message}")

    def body(self, request_id: str) -> dict[str, Any]:
        """The JSON error body the real API sends for this error."""
        return error_body(self.error_type, self.message, request_id, self.details)


def error_body(
    error_type: str,
    message: str,
    request_id: str,
    details: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    error: dict[str, Any] = {"type": error_type, "message": message}
    if details:
        # SDK 2.12 raises a typed subclass from `details.error_code` (e.g. image dimensions).
        error["details"] = dict(details)
    return {"type": "error", "error": error, "request_id": request_id}


def _invalid(message: str) -> ApiError:
    return ApiError(400, message, error_type="invalid_request_error")


# --- request model ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Turn:
    role: str
    blocks: tuple[dict[str, Any], ...]

    @property
    def text(self) -> str:
        """The readable text of this turn: text blocks, and tool results for the reply logic."""
        parts: list[str] = []
        for block in self.blocks:
            if block.get("type") == "text":
                parts.append(str(block.get("text", "")))
            elif block.get("type") == "tool_result":
                parts.append(_tool_result_text(block))
        return "\n".join(parts)

    def blocks_of_type(self, block_type: str) -> list[dict[str, Any]]:
        return [block for block in self.blocks if block.get("type") == block_type]


def _tool_result_text(block: Mapping[str, Any]) -> str:
    content = block.get("content", "")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(str(item.get("text", "")) for item in content if isinstance(item, dict))
    return json.dumps(content)


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    input_schema: dict[str, Any]


@dataclass(frozen=True)
class MessagesRequest:
    """A validated `POST /v1/messages` (or count_tokens) body."""

    model: str
    max_tokens: int
    turns: tuple[Turn, ...]
    system: str = ""
    stream: bool = False
    tools: tuple[Tool, ...] = ()
    tool_choice: dict[str, Any] | None = None
    thinking_budget: int | None = None
    stop_sequences: tuple[str, ...] = ()
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    # Every image and document, decoded and checked (see media.py), in request order.
    media: tuple[Media, ...] = field(default=(), compare=False, repr=False)

    @cached_property
    def segments(self) -> list[Segment]:
        """The prompt block by block, for token counting and prompt caching."""
        return prompt_segments(self)

    @cached_property
    def seed(self) -> int:
        """A stable seed from everything that shapes the reply (but not from `stream`)."""
        shaping = {key: value for key, value in self.raw.items() if key != "stream"}
        digest = hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).digest()
        return int.from_bytes(digest[:8], "big")

    @property
    def last_user_text(self) -> str:
        for turn in reversed(self.turns):
            if turn.role == "user":
                return turn.text
        return ""


def check_auth(headers: Mapping[str, str], required_key: str | None = None) -> None:
    """Accept `x-api-key: K` or `Authorization: Bearer K`; any non-empty K unless one is required.

    `headers` must have lower-case names. Raises `ApiError(401)`.
    """
    key = headers.get("x-api-key", "").strip()
    if not key:
        authorization = headers.get("authorization", "").strip()
        if authorization.lower().startswith("bearer "):
            key = authorization[len("bearer ") :].strip()
    if not key:
        raise ApiError(401, "x-api-key header is required")
    if required_key is not None and key != required_key:
        raise ApiError(401, "invalid x-api-key")


def parse_messages_request(
    body: bytes,
    *,
    for_count_tokens: bool = False,
    max_body_bytes: int = MAX_BODY_BYTES,
) -> MessagesRequest:
    """Validate a request body like the real API; raise `ApiError` with its wording if invalid."""
    if len(body) > max_body_bytes:
        raise ApiError(413, error_type="request_too_large")
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise _invalid("There was an error parsing the body of the request.") from None
    if not isinstance(data, dict):
        raise _invalid("Input should be a valid dictionary")

    allowed = COUNT_TOKENS_FIELDS if for_count_tokens else KNOWN_FIELDS
    for key in data:
        if key not in allowed:
            raise _invalid(f"{key}: Extra inputs are not permitted")

    model = data.get("model")
    if model is None:
        raise _invalid("model: Field required")
    if not isinstance(model, str) or not model:
        raise _invalid("model: Input should be a valid string")

    max_tokens = 0
    if not for_count_tokens:
        if "max_tokens" not in data:
            raise _invalid("max_tokens: Field required")
        max_tokens = data["max_tokens"]
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool):
            raise _invalid("max_tokens: Input should be a valid integer")
        if max_tokens < 0:
            raise _invalid("max_tokens: Input should be greater than or equal to 0")

    turns = _parse_messages(data.get("messages"))
    system = _parse_system(data.get("system"))
    tools = _parse_tools(data.get("tools"))
    tool_choice = _parse_tool_choice(data.get("tool_choice"), tools)
    stop_sequences = _parse_stop_sequences(data.get("stop_sequences"))
    stream = data.get("stream", False)
    if not isinstance(stream, bool):
        raise _invalid("stream: Input should be a valid boolean")
    thinking_budget = _parse_thinking(data.get("thinking"), max_tokens, for_count_tokens)
    if thinking_budget is not None and tool_choice and tool_choice["type"] in ("any", "tool"):
        raise _invalid("Thinking may not be enabled when tool_choice forces tool use.")

    # The model is checked after the body's shape, as the real API does.
    if model not in MODELS:
        raise ApiError(404, f"model: {model}", error_type="not_found_error")
    limit = model_info(model)["max_tokens"]
    if max_tokens > limit:
        raise _invalid(
            f"max_tokens: {max_tokens} > {limit}, which is the maximum allowed "
            f"number of output tokens for {model}"
        )
    _check_breakpoints(data, turns)
    try:
        media = analyze(turns)
    except InvalidMedia as error:
        raise ApiError(
            400, error.message, error_type="invalid_request_error", details=error.details
        ) from None
    return MessagesRequest(
        model=model,
        max_tokens=max_tokens,
        turns=turns,
        system=system,
        stream=stream,
        tools=tools,
        tool_choice=tool_choice,
        thinking_budget=thinking_budget,
        stop_sequences=stop_sequences,
        raw=data,
        media=media,
    )


def _parse_messages(messages: Any) -> tuple[Turn, ...]:
    if messages is None:
        raise _invalid("messages: Field required")
    if not isinstance(messages, list):
        raise _invalid("messages: Input should be a valid list")
    if not messages:
        raise _invalid("messages: at least one message is required")
    if len(messages) > MAX_MESSAGES:
        raise _invalid(f"messages: too many messages (at most {MAX_MESSAGES} are allowed)")
    turns: list[Turn] = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise _invalid(f"messages.{index}: Input should be a valid dictionary")
        role = message.get("role")
        if role is None:
            raise _invalid(f"messages.{index}.role: Field required")
        if role not in ("user", "assistant"):
            raise _invalid(f"messages.{index}.role: Input should be 'user' or 'assistant'")
        if "content" not in message:
            raise _invalid(f"messages.{index}.content: Field required")
        blocks = _parse_content(message["content"], f"messages.{index}.content")
        is_final_assistant = index == len(messages) - 1 and role == "assistant"
        if not blocks and not is_final_assistant:
            raise _invalid(
                f"messages.{index}: all messages must have non-empty content except for the "
                "optional final assistant message"
            )
        turns.append(Turn(role=role, blocks=tuple(blocks)))
    if turns[0].role != "user":
        raise _invalid('messages: first message must use the "user" role')
    final = turns[-1]
    if final.role == "assistant" and final.text != final.text.rstrip():
        raise _invalid("messages: final assistant content cannot end with trailing whitespace")
    _check_tool_pairs(turns)
    return tuple(turns)


def _check_tool_pairs(turns: Sequence[Turn]) -> None:
    """Every tool_use must be answered by tool_results in the very next turn, and vice versa."""
    for index, turn in enumerate(turns[1:], start=1):
        offered = [str(b.get("id")) for b in turns[index - 1].blocks_of_type("tool_use")]
        results = {str(b.get("tool_use_id")) for b in turn.blocks_of_type("tool_result")}
        unexpected = sorted(results - set(offered))
        if unexpected:
            raise _invalid(
                f"messages.{index}.content.0: unexpected `tool_use_id` found in `tool_result` "
                f"blocks: {unexpected[0]}. Each `tool_result` block must have a corresponding "
                "`tool_use` block in the previous message."
            )
        missing = [tool_id for tool_id in offered if tool_id not in results]
        if missing:
            raise _invalid(
                f"messages.{index}: `tool_use` ids were found without `tool_result` blocks "
                f"immediately after: {', '.join(missing)}. Each `tool_use` block must have a "
                "corresponding `tool_result` block in the next message."
            )


def _parse_content(content: Any, path: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if not isinstance(content, list):
        raise _invalid(f"{path}: Input should be a valid string or a valid list")
    blocks: list[dict[str, Any]] = []
    for index, block in enumerate(content):
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            raise _invalid(f"{path}.{index}.type: Field required")
        if block["type"] == "text":
            if not isinstance(block.get("text"), str):
                raise _invalid(f"{path}.{index}.text: Field required")
            if not block["text"]:
                raise _invalid(f"{path}.{index}.text: text content blocks must be non-empty")
        _check_cache_control(block, f"{path}.{index}.{block['type']}")
        _check_media_shape(block, f"{path}.{index}")
        if block["type"] == "tool_result" and isinstance(block.get("content"), list):
            for inner_index, inner in enumerate(block["content"]):
                if isinstance(inner, dict):
                    inner_path = f"{path}.{index}.tool_result.content.{inner_index}"
                    _check_cache_control(inner, inner_path)
                    _check_media_shape(inner, inner_path)
        blocks.append(block)
    return blocks


def _check_media_shape(block: Mapping[str, Any], path: str) -> None:
    if block.get("type") in ("image", "document"):
        try:
            check_block(block, path)
        except InvalidMedia as error:
            raise _invalid(error.message) from None


def _check_cache_control(block: Mapping[str, Any], path: str) -> None:
    """`cache_control` is `{"type": "ephemeral"}` with an optional `ttl` of "5m" or "1h"."""
    value = block.get("cache_control")
    if value is None:
        return
    where = f"{path}.cache_control" if path else "cache_control"
    if not isinstance(value, dict):
        raise _invalid(f"{where}: Input should be a valid dictionary")
    if value.get("type") != "ephemeral":
        raise _invalid(f"{where}.ephemeral.type: Input should be 'ephemeral'")
    if value.get("ttl", "5m") not in ("5m", "1h"):
        raise _invalid(f"{where}.ephemeral.ttl: Input should be '5m' or '1h'")


def _check_breakpoints(data: Mapping[str, Any], turns: Sequence[Turn]) -> None:
    """At most 4 breakpoints (the automatic one counts); longer TTLs before shorter ones."""
    system = data.get("system")
    ordered: list[Any] = [
        *(data.get("tools") or []),
        *(system if isinstance(system, list) else []),
        *(block for turn in turns for block in turn.blocks),
    ]
    ttls = [ttl for ttl in map(_ttl, ordered) if ttl]
    automatic = data.get("cache_control")
    if automatic is not None:
        _check_cache_control(data, "")
        # The automatic breakpoint takes a slot of its own unless the last block has one.
        last = turns[-1].blocks[-1] if turns[-1].blocks else None
        if last is None or _ttl(last) is None:
            ttls.append(str(automatic.get("ttl", "5m")))
    if len(ttls) > MAX_BREAKPOINTS:
        raise _invalid(
            f"A maximum of {MAX_BREAKPOINTS} blocks with cache_control may be provided. "
            f"Found {len(ttls)}."
        )
    seen_5m = False
    for ttl in ttls:
        if ttl == "5m":
            seen_5m = True
        elif seen_5m:
            raise _invalid(
                "cache_control: a ttl='1h' cache_control block must not come after a ttl='5m' "
                "cache_control block (longer TTLs must come first)"
            )


def _parse_system(system: Any) -> str:
    if system is None:
        return ""
    if isinstance(system, str):
        return system
    if isinstance(system, list):
        texts: list[str] = []
        for index, block in enumerate(system):
            if not isinstance(block, dict) or block.get("type") != "text":
                raise _invalid(f"system.{index}.type: Input should be 'text'")
            if not isinstance(block.get("text"), str):
                raise _invalid(f"system.{index}.text: Field required")
            _check_cache_control(block, f"system.{index}")
            texts.append(block["text"])
        return "\n".join(texts)
    raise _invalid("system: Input should be a valid string or a valid list")


_TOOL_NAME_RE = re.compile(r"^[a-zA-Z0-9_-]{1,128}$")


def _parse_tools(tools: Any) -> tuple[Tool, ...]:
    if tools is None:
        return ()
    if not isinstance(tools, list):
        raise _invalid("tools: Input should be a valid list")
    parsed: list[Tool] = []
    for index, tool in enumerate(tools):
        if not isinstance(tool, dict):
            raise _invalid(f"tools.{index}: Input should be a valid dictionary")
        _check_cache_control(tool, f"tools.{index}")
        name = tool.get("name")
        if not isinstance(name, str):
            raise _invalid(f"tools.{index}.custom.name: Field required")
        if not _TOOL_NAME_RE.match(name):
            raise _invalid(
                f"tools.{index}.custom.name: String should match pattern '^[a-zA-Z0-9_-]{{1,128}}$'"
            )
        if tool.get("type", "custom") != "custom":
            continue  # Server tools (web search, code execution ...) are accepted but never used.
        schema = tool.get("input_schema")
        if not isinstance(schema, dict):
            raise _invalid(f"tools.{index}.custom.input_schema: Field required")
        parsed.append(
            Tool(name=name, description=str(tool.get("description", "")), input_schema=schema)
        )
    names = [tool.name for tool in parsed]
    if len(names) != len(set(names)):
        raise _invalid("tools: Tool names must be unique.")
    return tuple(parsed)


def _parse_tool_choice(choice: Any, tools: Sequence[Tool]) -> dict[str, Any] | None:
    if choice is None:
        return None
    if not isinstance(choice, dict) or choice.get("type") not in ("auto", "any", "tool", "none"):
        raise _invalid(
            "tool_choice: Input tag does not match any of the expected tags: 'auto', 'any', 'tool', 'none'"
        )
    if choice["type"] == "tool":
        name = choice.get("name")
        if not isinstance(name, str):
            raise _invalid("tool_choice.tool.name: Input should be a valid string")
        if name not in {tool.name for tool in tools}:
            raise _invalid(f"tool_choice: tool '{name}' not found in tools")
    if choice["type"] in ("any", "tool") and not tools:
        raise _invalid("tool_choice: may only be specified while providing tools.")
    return choice


def _parse_stop_sequences(stop_sequences: Any) -> tuple[str, ...]:
    if stop_sequences is None:
        return ()
    if not isinstance(stop_sequences, list) or not all(isinstance(s, str) for s in stop_sequences):
        raise _invalid("stop_sequences: Input should be a valid list of strings")
    for sequence in stop_sequences:
        if not sequence.strip():
            raise _invalid("stop_sequences: each stop sequence must contain non-whitespace")
    return tuple(stop_sequences)


def _parse_thinking(thinking: Any, max_tokens: int, for_count_tokens: bool) -> int | None:
    if thinking is None:
        return None
    if not isinstance(thinking, dict):
        raise _invalid("thinking: Input should be a valid dictionary")
    kind = thinking.get("type")
    if kind == "disabled":
        return None
    if kind == "adaptive":
        return max(MIN_THINKING_BUDGET, max_tokens // 4)
    if kind != "enabled":
        raise _invalid(
            "thinking: Input tag does not match any of the expected tags: 'enabled', 'disabled', 'adaptive'"
        )
    budget = thinking.get("budget_tokens")
    if not isinstance(budget, int) or isinstance(budget, bool):
        raise _invalid("thinking.enabled.budget_tokens: Field required")
    if budget < MIN_THINKING_BUDGET:
        raise _invalid(
            f"thinking.enabled.budget_tokens: Input should be greater than or equal to {MIN_THINKING_BUDGET}"
        )
    if not for_count_tokens and budget >= max_tokens:
        raise _invalid("`max_tokens` must be greater than `thinking.budget_tokens`.")
    return budget


def input_tokens(request: MessagesRequest) -> int:
    """Tokens in everything the model would read: tools, system, every turn and attachment."""
    return sum(segment.tokens for segment in request.segments)


# Per-request and per-turn framing tokens, as a chat template adds them.
REQUEST_OVERHEAD_TOKENS = 3
TURN_OVERHEAD_TOKENS = 4


def prompt_segments(request: MessagesRequest) -> list[Segment]:
    """The prompt block by block in reading order (tools, system, messages) for prompt caching:
    each block's tokens, the digest of the prefix ending with it, and its breakpoint TTL."""
    media_tokens: dict[tuple[int, int], int] = {}
    for media in request.media:
        key = (media.turn, media.block)
        media_tokens[key] = media_tokens.get(key, 0) + media.tokens
    segments: list[Segment] = []
    digest = b""
    for canonical, tokens, ttl in _prompt_blocks_from(request.raw, request.turns, media_tokens):
        digest = chain_digest(digest, canonical)
        segments.append(Segment(tokens=tokens, digest=digest, ttl=ttl))
    return segments


def _prompt_blocks_from(
    data: Mapping[str, Any],
    turns: Sequence[Turn],
    media_tokens: Mapping[tuple[int, int], int] | None = None,
) -> list[tuple[bytes, int, str | None]]:
    """(canonical bytes, tokens, breakpoint TTL) for every block of an already-validated body."""
    blocks: list[tuple[bytes, int, str | None]] = []
    for tool in data.get("tools") or []:
        if tool.get("type", "custom") == "custom":
            tokens = count_tokens(
                str(tool.get("name", ""))
                + str(tool.get("description", ""))
                + json.dumps(tool.get("input_schema"))
            )
        else:
            tokens = count_tokens(json.dumps(_without_cache_control(tool), sort_keys=True))
        blocks.append((_canonical(["tool", tool]), tokens, _ttl(tool)))
    system = data.get("system")
    system_blocks = [{"type": "text", "text": system}] if isinstance(system, str) else system or []
    for block in system_blocks:
        blocks.append((_canonical(["system", block]), count_tokens(block["text"]), _ttl(block)))
    # Changing tool_choice or thinking invalidates the cached messages (not tools or system).
    settings = _canonical([data.get("tool_choice"), data.get("thinking")])
    for turn_index, turn in enumerate(turns):
        framing = TURN_OVERHEAD_TOKENS
        if not turn.blocks:
            blocks.append((_canonical([turn.role]) + settings, framing, None))
        for block_index, block in enumerate(turn.blocks):
            tokens = framing + _block_tokens(
                block, (media_tokens or {}).get((turn_index, block_index), 0)
            )
            canonical = _canonical([turn.role, block_index, block]) + settings
            blocks.append((canonical, tokens, _ttl(block)))
            framing = 0
        settings = b""
    if blocks:
        canonical, tokens, ttl = blocks[0]
        blocks[0] = (canonical, tokens + REQUEST_OVERHEAD_TOKENS, ttl)
        automatic = data.get("cache_control")
        if isinstance(automatic, dict):
            # Automatic caching: one breakpoint on the last block, moving forward as it grows.
            canonical, tokens, ttl = blocks[-1]
            blocks[-1] = (canonical, tokens, ttl or str(automatic.get("ttl", "5m")))
    return blocks


def _block_tokens(block: Mapping[str, Any], media: int) -> int:
    kind = block.get("type")
    if kind == "text":
        return count_tokens(str(block.get("text", "")))
    if kind in ("image", "document"):
        return media
    if kind == "tool_result" and isinstance(block.get("content"), list):
        rest = [
            item
            for item in block["content"]
            if not (isinstance(item, dict) and item.get("type") in ("image", "document"))
        ]
        stripped = {**_without_cache_control(block), "content": rest}
        return count_tokens(json.dumps(stripped, sort_keys=True)) + media
    return count_tokens(json.dumps(_without_cache_control(block), sort_keys=True))


def _ttl(block: Any) -> str | None:
    """The breakpoint TTL a block sets (one inside a tool result's content counts for it)."""
    if not isinstance(block, dict):
        return None
    control = block.get("cache_control")
    if isinstance(control, dict):
        return str(control.get("ttl", "5m"))
    if block.get("type") == "tool_result" and isinstance(block.get("content"), list):
        return next((ttl for ttl in map(_ttl, block["content"]) if ttl), None)
    return None


def _without_cache_control(value: Any) -> Any:
    """The block as the model reads it: moving a breakpoint does not change the prefix."""
    if isinstance(value, dict):
        return {k: _without_cache_control(v) for k, v in value.items() if k != "cache_control"}
    if isinstance(value, list):
        return [_without_cache_control(item) for item in value]
    return value


def _canonical(value: Any) -> bytes:
    return json.dumps(_without_cache_control(value), sort_keys=True, separators=(",", ":")).encode()


# --- faults -----------------------------------------------------------------------------------

# Faults that need a value default to one that keeps a test short.
FAULT_KINDS: dict[str, float | None] = {
    "midstream-error": None,
    "drop": None,
    "eof": None,
    "stall": 5.0,
    "slow-first-token": 3.0,
    "hang": 5.0,
    "refusal": None,
}
STATUS_FAULTS = frozenset(ERROR_TYPES)
# After this many content deltas a mid-stream fault fires (fewer if the reply is shorter).
FAULT_AFTER_DELTAS = 3
_MARKER_RE = re.compile(r"\[\[fault:([^\]]+)\]\]")


@dataclass(frozen=True)
class Fault:
    """One injected failure.

    kind is an HTTP status as a string ("429", "529", "500", ...) or one of `FAULT_KINDS`.
    value: seconds for `stall`/`slow-first-token`/`retry-after` of a status fault; error type
    for `midstream-error`.
    """

    kind: str
    value: float | str | None = None

    @property
    def status(self) -> int | None:
        return int(self.kind) if self.kind.isdigit() else None

    def api_error(self) -> ApiError:
        """The HTTP error a status fault answers with (429 carries `retry-after`)."""
        if self.status is None:
            raise ValueError(f"fault {self.kind!r} is not an HTTP status fault")
        headers: dict[str, str] = {}
        if self.status == 429:
            retry_after = self.value if isinstance(self.value, float) else 1.0
            headers["retry-after"] = _format_seconds(retry_after)
        elif isinstance(self.value, float):
            headers["retry-after"] = _format_seconds(self.value)
        return ApiError(self.status, headers=headers)


def _format_seconds(seconds: float) -> str:
    return str(int(seconds)) if seconds == int(seconds) else f"{seconds:g}"


def parse_fault(spec: str) -> Fault:
    """Parse a fault spec; raise `ValueError` naming the known faults if it is not one.

    - `429[=retry-after seconds]`, `529`, `500` (any status in `ERROR_TYPES`): that HTTP error.
    - `midstream-error[=error_type]`: an SSE `error` event after a few deltas.
    - `drop`: the connection closes after a few deltas, without ending the chunked body.
    - `eof`: the body ends cleanly after a few deltas, without `message_stop`.
    - `stall[=seconds]`: no bytes for that long after a few deltas, then the rest.
    - `slow-first-token[=seconds]`: headers and `message_start` at once, the first delta late
      (with a ping every 5 s meanwhile, as the real API does).
    - `hang[=seconds]`: no response at all (not even headers) for that long, then the reply.
    - `refusal`: a short reply with `stop_reason: refusal`.
    """
    name, _, raw_value = spec.strip().partition("=")
    name = name.strip().lower()
    raw_value = raw_value.strip()
    if name.isdigit():
        if int(name) not in STATUS_FAULTS:
            raise ValueError(f"unknown fault status {name!r}; use one of {sorted(STATUS_FAULTS)}")
        return Fault(name, _parse_seconds(name, raw_value) if raw_value else None)
    if name not in FAULT_KINDS:
        known = ", ".join([*sorted(str(s) for s in STATUS_FAULTS), *FAULT_KINDS])
        raise ValueError(f"unknown fault {name!r}; known faults: {known}")
    if name == "midstream-error":
        return Fault(name, raw_value or "overloaded_error")
    default = FAULT_KINDS[name]
    if default is None:
        if raw_value:
            raise ValueError(f"fault {name!r} takes no value")
        return Fault(name)
    return Fault(name, _parse_seconds(name, raw_value) if raw_value else default)


def _parse_seconds(name: str, raw: str) -> float:
    try:
        seconds = float(raw)
    except ValueError:
        raise ValueError(f"fault {name!r} needs a number of seconds, got {raw!r}") from None
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"fault {name!r} needs a non-negative number of seconds, got {raw!r}")
    return seconds


def fault_for(request: MessagesRequest) -> Fault | None:
    """The fault marked in the last user turn, if any. Earlier turns are ignored, so a
    conversation that once failed can carry on."""
    match = _MARKER_RE.search(request.last_user_text)
    return parse_fault(match.group(1)) if match else None


# --- generation -------------------------------------------------------------------------------


@dataclass(frozen=True)
class SseEvent:
    name: str
    data: dict[str, Any]

    def encode(self) -> bytes:
        return (
            f"event: {self.name}\ndata: {json.dumps(self.data, separators=(',', ':'))}\n\n".encode()
        )


@dataclass(frozen=True)
class Pause:
    seconds: float


@dataclass(frozen=True)
class Drop:
    """Close the connection now without finishing the chunked body."""


Step = SseEvent | Pause | Drop


@dataclass(frozen=True)
class Pacing:
    """Time to first token and output speed; 0 tokens/s means "as fast as possible"."""

    ttft: float = 0.0
    tokens_per_second: float = 0.0

    def for_tokens(self, count: int) -> float:
        return count / self.tokens_per_second if self.tokens_per_second > 0 else 0.0


PING_EVERY_SECONDS = 5.0


@dataclass
class _Block:
    kind: str  # text | thinking | tool_use
    tokens: list[str]
    tool_id: str = ""
    tool_name: str = ""
    signature: str = ""


class Generation:
    """One reply to a validated request, as a stream of steps or as a whole message.

    `message_id` and `tool_id` come from the caller (the adapter's id source), so this class is
    deterministic: equal requests and ids give byte-identical output.
    """

    def __init__(
        self,
        request: MessagesRequest,
        *,
        message_id: str,
        request_id: str = "",
        tool_id: str = "toolu_01",
        pacing: Pacing | None = None,
        fault: Fault | None = None,
        cache: CacheUsage | None = None,
    ) -> None:
        self.request = request
        self.message_id = message_id
        self.request_id = request_id
        self.pacing = pacing or Pacing()
        self.fault = fault
        self.composition: Composition = compose_reply(request)
        self.input_tokens = input_tokens(request)
        # Prompt caching is decided by the adapter's cache (it has the clock); none: uncached.
        self.cache = cache or CacheUsage.uncached(self.input_tokens)
        self.stop_reason, self.stop_sequence, self._blocks = self._plan(tool_id)
        self.output_tokens = sum(len(block.tokens) for block in self._blocks)

    def _plan(self, tool_id: str) -> tuple[str, str | None, list[_Block]]:
        composition = self.composition
        budget = self.request.max_tokens
        blocks: list[_Block] = []
        if self.fault is not None and self.fault.kind == "refusal":
            refusal = "I can't help with that request."
            return "refusal", None, [_Block("text", tokenize(refusal)[:budget])]

        if composition.thinking is not None and self.request.thinking_budget is not None:
            thinking_tokens = tokenize(composition.thinking)[: self.request.thinking_budget]
            blocks.append(
                _Block(
                    "thinking", thinking_tokens[:budget], signature=_signature(composition.thinking)
                )
            )
            if len(thinking_tokens) > budget:
                return "max_tokens", None, blocks
            budget -= len(thinking_tokens)

        text = composition.text
        prefill = self.request.turns[-1].text if self.request.turns[-1].role == "assistant" else ""
        if prefill and text.startswith(prefill):
            text = text[len(prefill) :]  # the reply continues the prefilled start
        stop_reason, stop_sequence = "end_turn", None
        if self.request.stop_sequences:
            cut, matched = _earliest_stop(text, self.request.stop_sequences)
            if matched is not None:
                text, stop_reason, stop_sequence = text[:cut], "stop_sequence", matched
        text_tokens = tokenize(text)
        if len(text_tokens) > budget:
            if text_tokens[:budget]:
                blocks.append(_Block("text", text_tokens[:budget]))
            return "max_tokens", None, blocks
        if text_tokens:
            blocks.append(_Block("text", text_tokens))
        budget -= len(text_tokens)

        if composition.tool_call is not None and stop_reason == "end_turn":
            arguments = json.dumps(composition.tool_call.input)
            json_tokens = tokenize(arguments)
            if len(json_tokens) > budget:
                # A tool call cut short has no valid input; the real API stops before it too.
                return "max_tokens", None, blocks
            blocks.append(
                _Block(
                    "tool_use", json_tokens, tool_id=tool_id, tool_name=composition.tool_call.name
                )
            )
            return "tool_use", None, blocks
        return stop_reason, stop_sequence, blocks

    # -- streaming --

    def steps(self) -> Iterator[Step]:
        """Every step of the SSE body, in order. Stop iterating to abort the generation."""
        fault = self.fault
        kind = fault.kind if fault else None
        yield SseEvent(
            "message_start", {"type": "message_start", "message": self._envelope(start=True)}
        )
        first_wait = (
            float(fault.value)
            if fault and kind == "slow-first-token" and isinstance(fault.value, float)
            else self.pacing.ttft
        )
        yield SseEvent("ping", {"type": "ping"})
        yield from (
            self._wait_with_pings(first_wait) if kind == "slow-first-token" else _pause(first_wait)
        )

        deltas_sent = 0
        # A fresh generator per call, so every call of steps() chunks the text identically.
        rng = random.Random(self.request.seed)
        for index, block in enumerate(self._blocks):
            yield SseEvent(
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": index,
                    "content_block": self._empty_block(block),
                },
            )
            for piece in _pieces(block.tokens, rng):
                if (
                    kind in ("midstream-error", "drop", "eof", "stall")
                    and deltas_sent == FAULT_AFTER_DELTAS
                ):
                    if kind == "stall":
                        assert isinstance(fault, Fault) and isinstance(fault.value, float)
                        yield Pause(fault.value)
                    else:
                        yield from self._fault_end(kind)
                        return
                yield from _pause(self.pacing.for_tokens(len(piece)))
                yield SseEvent(
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": index,
                        "delta": self._delta(block, "".join(piece)),
                    },
                )
                deltas_sent += 1
            if block.kind == "thinking":
                yield SseEvent(
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": index,
                        "delta": {"type": "signature_delta", "signature": block.signature},
                    },
                )
            yield SseEvent("content_block_stop", {"type": "content_block_stop", "index": index})
        if kind in ("midstream-error", "drop", "eof"):
            # The reply was shorter than FAULT_AFTER_DELTAS: fail at the end instead.
            yield from self._fault_end(kind)
            return
        yield SseEvent(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": self.stop_reason, "stop_sequence": self.stop_sequence},
                "usage": {
                    "input_tokens": self.cache.input_tokens,
                    "cache_creation_input_tokens": self.cache.cache_creation_input_tokens,
                    "cache_read_input_tokens": self.cache.cache_read_input_tokens,
                    "output_tokens": self.output_tokens,
                },
            },
        )
        yield SseEvent("message_stop", {"type": "message_stop"})

    def _fault_end(self, kind: str | None) -> Iterator[Step]:
        if kind == "midstream-error":
            assert self.fault is not None
            error_type = str(self.fault.value)
            message = ERROR_MESSAGES.get(error_type, "Error")
            yield SseEvent("error", error_body(error_type, message, self.request_id))
        elif kind == "drop":
            yield Drop()
        # "eof": end the body cleanly without message_delta/message_stop.

    def _wait_with_pings(self, seconds: float) -> Iterator[Step]:
        while seconds > PING_EVERY_SECONDS:
            yield Pause(PING_EVERY_SECONDS)
            yield SseEvent("ping", {"type": "ping"})
            seconds -= PING_EVERY_SECONDS
        yield from _pause(seconds)

    @staticmethod
    def _empty_block(block: _Block) -> dict[str, Any]:
        if block.kind == "thinking":
            return {"type": "thinking", "thinking": "", "signature": ""}
        if block.kind == "tool_use":
            return {"type": "tool_use", "id": block.tool_id, "name": block.tool_name, "input": {}}
        return {"type": "text", "text": ""}

    @staticmethod
    def _delta(block: _Block, text: str) -> dict[str, Any]:
        if block.kind == "thinking":
            return {"type": "thinking_delta", "thinking": text}
        if block.kind == "tool_use":
            return {"type": "input_json_delta", "partial_json": text}
        return {"type": "text_delta", "text": text}

    # -- whole message --

    def message(self) -> dict[str, Any]:
        """The non-streaming response body."""
        return self._envelope(start=False)

    def _envelope(self, *, start: bool) -> dict[str, Any]:
        content: list[dict[str, Any]] = []
        if not start:
            for block in self._blocks:
                text = "".join(block.tokens)
                if block.kind == "thinking":
                    content.append(
                        {"type": "thinking", "thinking": text, "signature": block.signature}
                    )
                elif block.kind == "tool_use":
                    content.append(
                        {
                            "type": "tool_use",
                            "id": block.tool_id,
                            "name": block.tool_name,
                            "input": json.loads(text),
                        }
                    )
                else:
                    content.append({"type": "text", "text": text})
        return {
            "id": self.message_id,
            "type": "message",
            "role": "assistant",
            "model": self.request.model,
            "content": content,
            "stop_reason": None if start else self.stop_reason,
            "stop_sequence": None if start else self.stop_sequence,
            "usage": {
                **self.cache.as_dict(),
                "output_tokens": 1 if start else self.output_tokens,
                "service_tier": "standard",
            },
        }


def _pieces(tokens: list[str], rng: random.Random) -> Iterator[list[str]]:
    """Split tokens into deltas of 1-5 tokens, like the real API's."""
    position = 0
    while position < len(tokens):
        size = rng.randint(1, 5)
        yield tokens[position : position + size]
        position += size


def _pause(seconds: float) -> Iterator[Step]:
    if seconds > 0:
        yield Pause(seconds)


def _earliest_stop(text: str, sequences: Sequence[str]) -> tuple[int, str | None]:
    best_at, best = len(text) + 1, None
    for sequence in sequences:
        at = text.find(sequence)
        if at != -1 and at < best_at:
            best_at, best = at, sequence
    return (best_at, best) if best is not None else (len(text), None)


def _signature(thinking: str) -> str:
    # Opaque like the real one; derived from the thinking so it is deterministic.
    return base64.b64encode(b"\x12\x0c" + hashlib.sha256(thinking.encode()).digest() * 2).decode()


# The SDK marks these deprecated (end of life 2026-11-30); they still answer until then.
DEPRECATED_MODELS = frozenset({"claude-sonnet-4-5", "claude-sonnet-4-5-20250929"})


def model_info(model_id: str) -> dict[str, Any]:
    """One `ModelInfo` as `GET /v1/models/{id}` returns it (shape checked by the SDK's types)."""
    current = model_id.split("-")[2] == "5"
    deprecated = model_id in DEPRECATED_MODELS
    return {
        "type": "model",
        "id": model_id,
        "display_name": MODELS[model_id],
        "created_at": "2026-09-01T00:00:00Z" if current else "2025-09-29T00:00:00Z",
        "lifecycle": "deprecated" if deprecated else "active",
        "deprecated_at": "2026-08-30T00:00:00Z" if deprecated else None,
        "retires_at": "2026-11-30T00:00:00Z" if deprecated else None,
        "line": model_id.split("-")[1],
        "max_input_tokens": 1_000_000 if current else 200_000,
        "max_tokens": MAX_OUTPUT_TOKENS if current else 64_000,
    }


def list_models() -> dict[str, Any]:
    """The `GET /v1/models` body: one page with every accepted id, current ones first."""
    data = [model_info(model_id) for model_id in MODELS]
    return {"data": data, "has_more": False, "first_id": data[0]["id"], "last_id": data[-1]["id"]}
