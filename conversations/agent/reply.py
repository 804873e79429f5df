"""One answer to one prompt, from claim to the final database write.

A `ReplyRun` claims the reply in the database (exactly once across processes: the claim, the
model context and the shown path are one transaction), publishes `start` and the path, streams
the model's text onto the channel, writes the outcome once (a second transaction), then
publishes `stop`: what a device shows at the end is what every reload shows.

It is driven only through a `ReplyContext`: the channel its text goes out on and that channel's
rate limiter, a way to publish control events, a status callback, the cancels and refusals its
session noted before it started, the database (`ReplyStore`) and the model. Nothing here knows
sessions or the agent process, so a reply's whole lifecycle runs against a fake channel, a fake
store and a fake model in a unit test (tests/unit/test_reply_lifecycle.py).

Devices derive the agent's status from the reply itself (`start`: thinking; its first text:
streaming; `stop`: back to what presence says), so a reply costs no presence update except when
the model is overloaded (`retrying`, then back to `idle`).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from conversations import actions, events
from conversations.models import Message

from . import model as claude, store
from .config import AgentConfig
from .store import db_retrying
from .streaming import RateLimiter, ReplyStream, reply_stream

logger = logging.getLogger(__name__)
reply_log = logging.getLogger("conversations.agent.replies")

ORDERING_POLL_SECONDS = 0.1
# A reply whose last publish gave up at the hard deadline gets this long to store its outcome.
OUTCOME_WRITE_SECONDS = 0.5

OVERSIZE_MESSAGE = (
    "This message is too long ({length:,} characters; the limit is {limit:,}). "
    "Please shorten it and send it again."
)
INTERRUPTED_MESSAGE = (
    "The assistant restarted while writing this reply. The text so far is kept; please send "
    "your message again."
)
UNEXPECTED_ERROR_MESSAGE = "Something went wrong while writing this reply. Please try again."
UNREPAIRED_MESSAGE = (
    "The connection to the realtime service dropped while this reply was being sent, and part "
    "of it may be missing here. The whole reply is saved: reload the page to see it."
)
RATE_LIMIT_MESSAGE = (
    "You are sending messages faster than {limit} a minute. Please wait a moment and try again."
)


async def until(awaitable: Awaitable[Any], deadline: float) -> bool:
    """Await `awaitable` until the monotonic `deadline`; False if it had to be cancelled."""
    if deadline == float("inf"):
        await awaitable
        return True
    try:
        async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
            await awaitable
    except TimeoutError:
        return False
    except Exception as error:  # noqa: BLE001 - shutting down: report and carry on
        logger.warning("shutdown step failed: %r", error)
    return True


@dataclass(frozen=True)
class Outcome:
    """A reply's one database write."""

    status: events.Status
    text: str
    thinking: str
    stop_reason: str
    error: str
    input_tokens: int
    output_tokens: int
    usage_estimated: bool
    cache_creation_input_tokens: int
    cache_read_input_tokens: int
    first_token_at: datetime.datetime | None


class ReplyStore(Protocol):
    """The database as a reply sees it: two units of work (see `DatabaseReplyStore`)."""

    async def claim(
        self,
        prompt: Message,
        *,
        response_id: str,
        request_id: str | None,
        wait_for_earlier: bool,
        rate_window_start: datetime.datetime | None,
    ) -> store.Claim: ...

    async def finish(self, reply: Message, outcome: Outcome) -> bool: ...


class ModelStreamLike(Protocol):
    """What a reply reads from the model (`model.ModelStream`)."""

    stop_reason: str | None
    finished: bool

    def __aiter__(self) -> AsyncIterator[tuple[str, str]]: ...

    def usage(self) -> tuple[int, int, bool]: ...

    def cache_usage(self) -> tuple[int, int]: ...


OpenModelStream = Callable[
    [dict[str, Any], Callable[[claude.RetryNotice], Awaitable[None]]],
    AbstractAsyncContextManager[ModelStreamLike],
]


class TitleRequests(Protocol):
    """The conversation titles written beside a first reply (`titles.Titles`)."""

    def start(self, conversation_id: str, prompt: Message) -> None: ...

    def after_first_reply(self, conversation_id: str, prompt: Message, reply_text: str) -> None: ...


async def _no_orphans(replies: list[Message]) -> list[Message]:
    return replies


@dataclass
class ReplyContext:
    """Everything a reply may touch: handed to it by its session, faked in unit tests."""

    conversation_id: str
    config: AgentConfig
    # What the text goes out on (publish / append_message / update_message), and its pacing.
    channel: Any
    limiter: RateLimiter
    # Publish one control event (`start`, `stop`, a path) until acknowledged or the deadline.
    publish_until: Callable[[Any, float], Awaitable[None]]
    # The agent's presence status on this channel (only `retrying` and back, see module doc).
    set_status: Callable[[events.AgentStatus], Awaitable[None]]
    store: ReplyStore
    open_model_stream: OpenModelStream
    # A cancel for this reply (its responseId or promptId) that came before it was claimed.
    take_early_cancel: Callable[[str, str], bool] = lambda response_id, prompt_id: False
    # Why this prompt's attachments may not be used, noted at intake (issue 17).
    take_attachment_refusal: Callable[[str], str | None] = lambda prompt_id: None
    # Of earlier replies still streaming, those whose agent is alive (the rest are settled).
    settle_orphans: Callable[[list[Message]], Awaitable[list[Message]]] = _no_orphans
    titles: TitleRequests | None = None
    # Past this monotonic time nothing waits for Ably (shutdown); whether the agent is stopping.
    hard_deadline: Callable[[], float] = lambda: float("inf")
    stopping: Callable[[], bool] = lambda: False


class ReplyRun:
    """One answer to one prompt, from claim to the final database write."""

    def __init__(
        self, context: ReplyContext, prompt: Message, *, request_id: str | None = None
    ) -> None:
        self.context = context
        self.config = context.config
        # Issue 16: a Regenerate/Retry request makes a new version; None, the first reply.
        self.request_id = request_id
        self.prompt = prompt
        self.prompt_id = str(prompt.prompt_id)
        self.response_id = str(uuid.uuid4())
        self.reply: Message | None = None
        self.headers = events.ReplyHeaders(self.response_id, self.prompt_id, self.config.model)
        self._abort: asyncio.Future[events.Status] = asyncio.get_running_loop().create_future()
        self.stream: ReplyStream | None = None
        self.started = time.monotonic()
        self.first_token_at: datetime.datetime | None = None
        self.first_token_latency: float | None = None
        self.usage = (0, 0)
        self.usage_estimated = False
        self.cache_usage = (0, 0)
        self.stop_reason: str | None = None
        self.model_stream: ModelStreamLike | None = None
        self.ended = False
        self._retrying = False

    def publish_deadline(self) -> float:
        """When a publish that must reach devices (`start`, repair, `stop`) stops trying."""
        return min(time.monotonic() + self.config.publish_deadline, self.context.hard_deadline())

    def matches(self, response_id: str | None, prompt_id: str | None) -> bool:
        return (response_id is not None and response_id == self.response_id) or (
            prompt_id is not None and prompt_id == self.prompt_id
        )

    def abort(self, status: events.Status) -> None:
        """Stop the model request now (cancel from a device, or shutdown after the grace period)."""
        if not self._abort.done():
            self._abort.set_result(status)

    async def execute(self) -> None:
        claim = await self._claim()
        if claim is None or claim.reply is None:
            return
        self.reply = claim.reply
        if self.context.take_early_cancel(self.response_id, self.prompt_id):
            self.abort(events.Status.CANCELLED)
        try:
            await self._answer(claim)
        except Exception:
            # Whatever broke, the claimed reply must not stay `streaming`: devices get a final
            # state and the row an outcome.
            logger.exception("reply %s failed unexpectedly", self.response_id)
            if not self.ended:
                await self._end(
                    events.Status.ERROR, stop_reason="error", error=UNEXPECTED_ERROR_MESSAGE
                )

    async def _claim(self) -> store.Claim | None:
        """Claim the reply once earlier replies (here or in another process) have finished.

        An earlier reply whose agent has left the channel's presence (killed, never restarted
        under its id) is settled as interrupted instead of waited for. None: shutting down.
        """
        deadline = time.monotonic() + self.config.ordering_wait
        limit = self.config.prompt_rate_limit_per_minute
        rate_window_start = (
            self.prompt.created_at - datetime.timedelta(minutes=1) if limit > 0 else None
        )
        wait_for_earlier = True
        while True:
            claim = await self.context.store.claim(
                self.prompt,
                response_id=self.response_id,
                request_id=self.request_id,
                wait_for_earlier=wait_for_earlier,
                rate_window_start=rate_window_start,
            )
            if not claim.waiting_for:
                if claim.reply is None:
                    logger.info("prompt %s is answered by another agent", self.prompt_id)
                return claim
            if not await self.context.settle_orphans(list(claim.waiting_for)):
                continue
            if time.monotonic() > deadline:
                logger.warning(
                    "an earlier reply in %s is still streaming; answering anyway",
                    self.context.conversation_id,
                )
                wait_for_earlier = False
                continue
            if self.context.stopping():
                return None
            await asyncio.sleep(ORDERING_POLL_SECONDS)

    async def _answer(self, claim: store.Claim) -> None:
        await self.context.publish_until(events.Start(self.headers), self.publish_deadline())
        if claim.path is not None:
            # Issue 16: the reply (a new version, or the answer the shown path waited for) is
            # shown. Best effort: a reload shows the right path anyway.
            try:
                await self.context.publish_until(claim.path, self.publish_deadline())
            except Exception as path_error:  # noqa: BLE001 - see above
                logger.error("publishing the path for %s failed: %r", self.response_id, path_error)

        rejection = self.context.take_attachment_refusal(self.prompt_id)
        rejection = rejection or self._check_limits(claim.recent_prompts)
        if rejection is not None:
            await self._end(events.Status.ERROR, stop_reason="rejected", error=rejection)
            return
        context = claim.context
        assert context is not None
        titles = self.context.titles
        # A new conversation's title is written from the prompt alongside the reply (and also
        # when the reply is stopped or fails).
        titling = (
            titles is not None
            and self.config.generate_titles
            and context.first_exchange
            and context.needs_title
        )
        if titling and titles is not None:
            titles.start(self.context.conversation_id, self.prompt)
        if self._abort.done():
            status = self._abort.result()
            await self._end(status, stop_reason=str(status))
            if titling and titles is not None:
                titles.after_first_reply(self.context.conversation_id, self.prompt, "")
            return
        self.stream = reply_stream(
            self.config.message_per_token,
            self.context.channel,
            self.headers,
            self.context.limiter,
            self.config.flush_window,
            self.publish_deadline,
        )
        status, stop_reason, error = await self._generate(context)
        await self._end(status, stop_reason=stop_reason, error=error)
        if titling and titles is not None:
            titles.after_first_reply(self.context.conversation_id, self.prompt, self._text())

    def _check_limits(self, recent_prompts: int) -> str | None:
        length = len(self.prompt.text)
        if length > self.config.max_prompt_chars:
            return OVERSIZE_MESSAGE.format(length=length, limit=self.config.max_prompt_chars)
        limit = self.config.prompt_rate_limit_per_minute
        if limit > 0 and recent_prompts >= limit:
            return RATE_LIMIT_MESSAGE.format(limit=limit)
        return None

    def _request(self, context: store.ModelContext) -> dict[str, Any]:
        # Prompt caching: a follow-up turn reads the conversation so far from the cache (0.1x).
        system, messages = claude.with_cache_breakpoints(context.system, context.messages)
        request: dict[str, Any] = {
            "model": self.config.model,
            "max_tokens": self.config.max_tokens,
            "system": system,
            "messages": messages,
        }
        if self.config.thinking_budget:
            request["thinking"] = {"type": "enabled", "budget_tokens": self.config.thinking_budget}
        return request

    async def _generate(self, context: store.ModelContext) -> tuple[events.Status, str | None, str]:
        consume = asyncio.create_task(self._consume(context), name=f"model {self.response_id}")
        racing: set[asyncio.Future[Any]] = {consume, self._abort}
        await asyncio.wait(racing, return_when=asyncio.FIRST_COMPLETED)
        if not consume.done():
            # Cancelling the task leaves `async with`, which closes the HTTP stream: the model
            # stops generating (and billing) at once (anthropic-stream.md §4).
            consume.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await consume
            self._read_snapshot()
            status = self._abort.result()
            message = INTERRUPTED_MESSAGE if status == events.Status.INTERRUPTED else ""
            return status, str(status), message
        try:
            consume.result()
        except Exception as error:  # noqa: BLE001 - every failure ends as a readable `stop`
            failure = claude.describe_failure(error, mid_stream=self.first_token_at is not None)
            logger.warning("reply %s failed: %s", self.response_id, failure)
            self._read_snapshot()
            return events.Status.ERROR, failure.stop_reason, failure.user_message
        if self.stop_reason is None:
            # The stream ended without `message_stop`: the connection was cut short.
            failure = claude.ModelFailure(
                "The connection to Claude dropped before the reply finished. The text so far "
                "is kept; please send your message again.",
                stop_reason="error",
            )
            return events.Status.ERROR, failure.stop_reason, failure.user_message
        return events.Status.COMPLETE, self.stop_reason, ""

    async def _consume(self, context: store.ModelContext) -> None:
        async def on_retry(notice: claude.RetryNotice) -> None:
            if not self._retrying:
                self._retrying = True
                await self.context.set_status(events.AgentStatus.RETRYING)

        assert self.stream is not None
        async with self.context.open_model_stream(self._request(context), on_retry) as stream:
            self.model_stream = stream
            if self._retrying:
                # The model answers now: devices go back to what the reply itself says.
                self._retrying = False
                await self.context.set_status(events.AgentStatus.IDLE)
            text_part, thinking_part = events.Part.TEXT, events.Part.THINKING
            async for kind, text in stream:
                self._delta(text_part if kind == "text" else thinking_part, text)
            self._read_snapshot()

    def _delta(self, part: events.Part, text: str) -> None:
        if not text or self._abort.done():
            return  # After Stop, the reply is what devices had when it was pressed.
        if self.first_token_at is None:
            self.first_token_at = store.now()
            self.first_token_latency = time.monotonic() - self.started
        assert self.stream is not None
        self.stream.add(part, text)

    def _read_snapshot(self) -> None:
        if self.model_stream is None:
            return
        self.stop_reason = self.model_stream.stop_reason if self.model_stream.finished else None
        input_tokens, output_tokens, self.usage_estimated = self.model_stream.usage()
        self.usage = (input_tokens, output_tokens)
        self.cache_usage = self.model_stream.cache_usage()

    def _text(self, part: events.Part = events.Part.TEXT) -> str:
        return self.stream.text_of(part) if self.stream else ""

    async def _end(
        self, status: events.Status, *, stop_reason: str | None, error: str = ""
    ) -> None:
        """Drain the text, publish `stop` after it, write the outcome once, log one line."""
        assert self.reply is not None
        self.ended = True
        if self._retrying:
            # Gave up while retrying: presence must not keep saying so.
            self._retrying = False
            await self.context.set_status(events.AgentStatus.IDLE)
        if self.stream is not None:
            if not await until(self.stream.finish(), self.context.hard_deadline()):
                # Shutting down while Ably is unreachable (`make run` stops it too): sends still
                # waiting for an ack are dropped; the outcome is stored all the same.
                await self.stream.abort()
            if self.stream.failed_parts and status == events.Status.COMPLETE:
                # Devices may hold a reply with a gap: never let them show it as complete.
                logger.error(
                    "reply %s could not be repaired on %s; ending it as an error",
                    self.response_id,
                    self.context.conversation_id,
                )
                status, stop_reason, error = events.Status.ERROR, "error", UNREPAIRED_MESSAGE
        # Save, then say: once devices hear `stop`, every reload shows the same outcome.
        outcome = Outcome(
            status=status,
            text=self._text(),
            thinking=self._text(events.Part.THINKING),
            stop_reason=stop_reason or "",
            error=error,
            input_tokens=self.usage[0],
            output_tokens=self.usage[1],
            usage_estimated=self.usage_estimated,
            cache_creation_input_tokens=self.cache_usage[0],
            cache_read_input_tokens=self.cache_usage[1],
            first_token_at=self.first_token_at,
        )
        try:
            saved = await self.context.store.finish(self.reply, outcome)
        except Exception as db_error:  # noqa: BLE001 - devices must still hear the end
            # The row stays `streaming` and is settled as interrupted once this process is
            # gone; a device waiting forever would be worse than one that differs until then.
            logger.error("saving the outcome of %s failed: %r", self.response_id, db_error)
            saved = True
        if not saved:
            # Another process settled it as interrupted (it thought this one gone) and told
            # the devices so: say the same, never something the database contradicts.
            logger.warning("reply %s was already settled; not overriding it", self.response_id)
            status, stop_reason, error = (
                events.Status.INTERRUPTED,
                "interrupted",
                INTERRUPTED_MESSAGE,
            )
        stop = events.Stop(self.headers, status, stop_reason=stop_reason, error_message=error)
        try:
            await self.context.publish_until(stop, self.publish_deadline())
        except Exception as publish_error:  # noqa: BLE001 - the stored outcome still stands
            logger.error("publishing stop for %s failed: %r", self.response_id, publish_error)
        latency = f"{self.first_token_latency * 1000:.0f}" if self.first_token_latency else "-"
        reply_log.info(
            "reply conversation=%s response=%s status=%s stop_reason=%s ttft_ms=%s "
            "input_tokens=%d cache_write_tokens=%d cache_read_tokens=%d output_tokens=%d "
            "usage=%s chars=%d messages=%d duration_ms=%.0f "
            "pattern=%s",
            self.context.conversation_id,
            self.response_id,
            status,
            stop_reason or "-",
            latency,
            self.usage[0],
            self.cache_usage[0],
            self.cache_usage[1],
            self.usage[1],
            "estimated" if self.usage_estimated else "api",
            len(self._text()),
            self.stream.messages_sent if self.stream else 0,
            (time.monotonic() - self.started) * 1000,
            self.config.streaming_pattern,
        )


class DatabaseReplyStore:
    """`ReplyStore` on the real database: each call is one transaction, retried whole on
    transient errors. `publish` gets the reply's list change after its outcome commits (the
    agent's, which sends it from its event loop: never an HTTP call on the database thread)."""

    def __init__(
        self, config: AgentConfig, publish: Callable[[str, Any], None] | None = None
    ) -> None:
        self.config = config
        self.publish = publish

    async def claim(
        self,
        prompt: Message,
        *,
        response_id: str,
        request_id: str | None,
        wait_for_earlier: bool,
        rate_window_start: datetime.datetime | None,
    ) -> store.Claim:
        return await db_retrying(
            store.claim_with_context,
            prompt,
            response_id=response_id,
            model=self.config.model,
            agent_id=self.config.agent_id,
            request_id=request_id,
            wait_for_earlier=wait_for_earlier,
            default_system=self.config.system_prompt,
            token_budget=self.config.context_token_budget,
            rate_window_start=rate_window_start,
        )

    async def finish(self, reply: Message, outcome: Outcome) -> bool:
        return await db_retrying(
            actions.finish_reply,
            reply,
            status=outcome.status,
            text=outcome.text,
            thinking=outcome.thinking,
            stop_reason=outcome.stop_reason,
            error=outcome.error,
            input_tokens=outcome.input_tokens,
            output_tokens=outcome.output_tokens,
            usage_estimated=outcome.usage_estimated,
            cache_creation_input_tokens=outcome.cache_creation_input_tokens,
            cache_read_input_tokens=outcome.cache_read_input_tokens,
            first_token_at=outcome.first_token_at,
            publish=self.publish,
        )
