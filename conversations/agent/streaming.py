"""Putting one reply's text onto its channel within Ably's limits, for both streaming patterns.

Deltas from the model are buffered: one after a quiet spell goes out at once, any other waits
at most one flush window from its arrival for the deltas that follow it, and no flush goes
faster than the connection's rate limiter allows; while a flush waits for the limiter, more
deltas pile up and go out together. So however many replies share a connection, its outbound
rate stays under Ably's 50 msg/s: more concurrency means bigger messages, not more of them.

Appends (and token publishes) are not awaited one by one (ai-transport B2): each is started as a
task in order, which keeps wire order on one connection, and all are gathered when the reply
ends. If any failed, the documented fallback runs (B5): message-per-response updates the
message with the full text, message-per-token publishes a `snapshot`.

The same repair runs when the connection dropped while the reply was streaming, even if every
publish was acknowledged. ably-python re-sends what it had queued after a reconnect, but each
queued send is its own task, so a publish made just after CONNECTED can overtake them (the
stand-in restart soak saw appends land out of order), and a send it reported failed can still
go out later from its pending queue. Only the full text, sent after those have drained, makes
every device's copy exact.

While the connection is down (or has many sends unanswered) deltas are not handed to the SDK:
they wait in the pending text and go out merged once it is back, or as the repair's full text if
the reply ends first. ably-python would queue each one and fire them all at once on reconnect,
far over the rate limit. No wait for the SDK is unbounded: sends still unanswered at the publish
deadline are given up and repaired.

Permanent Ably errors (a 4xxxx code other than a rate limit or an expired token, e.g. 40400
`message not found` after the realtime service lost its state) are never retried: waiting cannot
fix them. A repair that meets one publishes the whole text as a new message instead.

A `response` message's id is random and first seen when the agent publishes it: an id derived
from the reply's headers could be published first by a device (the conversation's owner may
publish on the channel), and Ably would then drop the agent's create as a duplicate.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from conversations import events

from .ably_adapter import (
    DRAIN_POLL_SECONDS,
    MESSAGE_NOT_FOUND,
    AblyMessage as Message,
    ably_error_code,
    can_send_now,
    connection_interruptions,
    first_serial,
    is_permanent_ably_error,
    new_message_id,
    sdk_sends_settled,
    wait_until_usable,
)

logger = logging.getLogger(__name__)


class RateLimiter:
    """At most `rate` operations in any one-second window, first come first served.

    Two rules, both checked for every send. A token bucket holding `burst` sends, refilled at
    `rate` per second: a few deltas that come close together go out at once instead of one per
    1/rate seconds (a strict spacing made every reply's p99 latency that spacing), and a late
    wake-up (the event loop stalled) finds at most `burst` sends saved up, never a backlog of
    missed slots. And a log of the sends of the last second, which holds a send back while it
    has `rate` of them: that is the guarantee itself, exact, so a busy connection can use its
    whole `rate` (a bucket alone must refill at `rate - burst` to keep `burst + refill` under
    the ceiling, and then two replies flushing every 50 ms already queued on it: issue 14).
    Waiters queue on a fair lock.
    """

    def __init__(
        self,
        rate: float,
        *,
        burst: int = 5,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        # Below 3/s there is no room for a burst and the limiter just spaces its sends 1/rate
        # apart.
        self.burst = max(1, min(burst, int(rate) - 1))
        self._refill = rate
        self._ceiling = max(1, int(rate))
        self._clock = clock
        self._sleep = sleep
        self._tokens = float(self.burst)
        self._stamp = clock()
        self._recent: deque[float] = deque()
        self._turn = asyncio.Lock()

    def _refilled(self, now: float) -> None:
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self._refill)
        self._stamp = now

    async def acquire(self) -> None:
        async with self._turn:
            while True:
                now = self._clock()
                self._refilled(now)
                # Same arithmetic as "a send at s is in the window starting at t if s < t + 1".
                while self._recent and self._recent[0] + 1.0 <= now:
                    self._recent.popleft()
                # (A hair short of a whole token counts as one: a float sum of refills can
                # fall short by less than the clock can advance.)
                wait = (1 - self._tokens) / self._refill if self._tokens < 1 - 1e-9 else 0.0
                if len(self._recent) >= self._ceiling:
                    wait = max(wait, self._recent[0] + 1.0 - now)
                if wait <= 0:
                    break
                await self._sleep(wait)
            self._tokens -= 1
            self._recent.append(now)


class PendingText:
    """Deltas not yet sent, in arrival order, merged while they belong to the same part."""

    def __init__(self) -> None:
        self._segments: list[tuple[events.Part, str]] = []
        # When the oldest delta still here arrived (monotonic), None when empty.
        self.since: float | None = None

    def add(self, part: events.Part, text: str) -> None:
        if not text:
            return
        if not self._segments:
            self.since = time.monotonic()
        if self._segments and self._segments[-1][0] == part:
            self._segments[-1] = (part, self._segments[-1][1] + text)
        else:
            self._segments.append((part, text))

    def take(self) -> list[tuple[events.Part, str]]:
        segments, self._segments = self._segments, []
        self.since = None
        return segments

    def __bool__(self) -> bool:
        return bool(self._segments)


# A publish that is refused (e.g. by the rate limit that broke the appends) is tried again
# after these pauses, the last one repeating until the deadline; Ably's rate windows are one
# second long.
REPAIR_RETRY_DELAYS = (0.5, 1.0, 2.0)


async def with_retries(
    operation: Callable[[], Awaitable[Any]], attempts: int = len(REPAIR_RETRY_DELAYS) + 1
) -> None:
    for delay in (*REPAIR_RETRY_DELAYS[: attempts - 1], None):
        try:
            await operation()
            return
        except Exception as error:
            if delay is None or is_permanent_ably_error(error):
                raise
            await asyncio.sleep(delay)


async def publish_until(
    operation: Callable[[], Awaitable[Any]], channel: Any, deadline: float, what: str
) -> None:
    """Run a publish until it is acknowledged, waiting out Ably outages until `deadline`.

    `deadline` is on the `time.monotonic()` clock. Every operation passed here is idempotent
    for devices (`start`, a full-text repair, `stop`), so a retry after an ack that was lost
    with the transport does no harm. Raises the last error once the deadline has passed.
    """
    delays = iter(REPAIR_RETRY_DELAYS)
    while True:
        try:
            # A publish queued while the connection is down would otherwise wait until
            # ably-python gives up on the connection (2 minutes).
            async with asyncio.timeout(max(deadline - time.monotonic(), 0.001)):
                await operation()
            return
        except Exception as error:
            if time.monotonic() >= deadline or is_permanent_ably_error(error):
                raise
            pause = next(delays, REPAIR_RETRY_DELAYS[-1])
            logger.info("%s failed (%r); trying again", what, error)
            await asyncio.sleep(min(pause, max(deadline - time.monotonic(), 0)))
            try:
                await wait_until_usable(channel, deadline - time.monotonic())
            except (TimeoutError, ConnectionError):
                raise error from None


class ReplyStream(ABC):
    """One reply's text on its way to the channel. `add` never blocks; `finish` drains."""

    def __init__(
        self,
        channel: Any,
        reply: events.ReplyHeaders,
        limiter: RateLimiter,
        flush_window: float,
        publish_deadline: Callable[[], float] = lambda: time.monotonic() + 10.0,
    ) -> None:
        self.channel = channel
        self.reply = reply
        self.limiter = limiter
        self.flush_window = flush_window
        # Returns the monotonic time by which a repair must have gone out.
        self.publish_deadline = publish_deadline
        # Every delta so far, per part: joined when the whole text is wanted (the end, a
        # repair), never concatenated per delta (a copy of the text so far each time).
        self._fragments: dict[events.Part, list[str]] = {part: [] for part in events.Part}
        self.messages_sent = 0
        self.failed_parts: set[events.Part] = set()
        self._pending = PendingText()
        self._wakeup = asyncio.Event()
        self._closing = False
        self._in_flight: list[tuple[events.Part, asyncio.Task[Any]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._interruptions_at_start = connection_interruptions(channel)

    def add(self, part: events.Part, text: str) -> None:
        if self._closing:
            raise RuntimeError("reply stream already finished")
        if not text:
            return
        self._fragments[part].append(text)
        self._pending.add(part, text)
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush_loop(), name=f"flush {self.reply}")
        self._wakeup.set()

    def text_of(self, part: events.Part) -> str:
        """The whole text of `part` so far."""
        return "".join(self._fragments[part])

    @property
    def full_text(self) -> dict[events.Part, str]:
        """Each part's whole text so far."""
        return {part: self.text_of(part) for part in self._fragments}

    async def finish(self) -> None:
        """Send what is left, wait for every send, and repair the channel if any failed."""
        self._closing = True
        self._wakeup.set()
        if self._flusher is not None:
            await self._flusher
        await self._gather()
        if connection_interruptions(self.channel) != self._interruptions_at_start:
            logger.info("the connection dropped during reply %s: repairing it", self.reply)
            self.failed_parts.update(part for part, text in self.full_text.items() if text)
        if self.failed_parts:
            # Stale sends still queued in the SDK must not land after the repair.
            await sdk_sends_settled(self.channel, self.publish_deadline() - time.monotonic())
            await self._recover()

    async def abort(self) -> None:
        """Stop flushing without sending more (shutdown after the grace period)."""
        self._closing = True
        if self._flusher is not None:
            self._flusher.cancel()
            await asyncio.gather(self._flusher, return_exceptions=True)
        for _, task in self._in_flight:
            task.cancel()
        await asyncio.gather(*(task for _, task in self._in_flight), return_exceptions=True)

    async def _flush_loop(self) -> None:
        # A delta after a quiet spell (the first one, a slow model: no flush for two windows)
        # goes out at once. Any other waits for company, at most one window from its arrival:
        # the deltas that come meanwhile travel with it. Timing the window from the oldest
        # waiting delta, not from the previous flush, is what bounds a delta's wait: a window
        # timed from the flush that has just gone out made the delta arriving right after it
        # wait the whole window, and at the rate that two replies per connection need (issue
        # 14: 50 ms windows, 20 msg/s each) those waits plus the limiter's made the p99.
        last_flush = float("-inf")
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            since = self._pending.since
            if not self._closing and self.flush_window and since is not None:
                if since - last_flush < 2 * self.flush_window:
                    wait = since + self.flush_window - time.monotonic()
                    if wait > 0:
                        await asyncio.sleep(wait)
            if self._pending and not await self._sendable():
                # The reply ended while its connection could not take the rest: `finish`
                # repairs these parts with their whole text once the connection is back.
                self.failed_parts.update(part for part, _ in self._pending.take())
            if self._pending:
                await self.limiter.acquire()
                last_flush = time.monotonic()
                for part, text in self._pending.take():
                    await self._send(part, text)
            if self._closing and not self._pending:
                return

    async def _sendable(self) -> bool:
        """Until the connection can take more deltas (see `can_send_now`); meanwhile they pile
        up in `_pending`. False if the reply ends first."""
        while not can_send_now(self.channel):
            if self._closing:
                return False
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(DRAIN_POLL_SECONDS):
                    await self._wakeup.wait()
        return True

    def _start(self, part: events.Part, operation: Awaitable[Any]) -> None:
        self.messages_sent += 1
        self._in_flight.append((part, asyncio.ensure_future(operation)))

    async def _gather(
        self, part: events.Part | None = None, *, deadline: float | None = None
    ) -> None:
        """Wait for the sends in flight (of `part`, or all); a failed one marks its part for
        repair. One still unanswered at `deadline` (monotonic; default the publish deadline)
        is given up and its part repaired: an SDK that never answers must not hang the reply.
        """
        waiting = [(p, task) for p, task in self._in_flight if part is None or p == part]
        if not waiting:
            return
        # By part, not `not in waiting`: that compared every send with every other (a reply's
        # ~70 appends made its end cost ~5,000 tuple comparisons on the event loop).
        self._in_flight = [
            (p, task) for p, task in self._in_flight if part is not None and p != part
        ]
        if deadline is None:
            deadline = self.publish_deadline()
        tasks = [task for _, task in waiting]
        _, unanswered = await asyncio.wait(tasks, timeout=max(deadline - time.monotonic(), 0))
        for task in unanswered:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for (failed_part, _), result in zip(waiting, results, strict=True):
            if isinstance(result, BaseException):
                logger.warning(
                    "publish for reply %s (%s) failed: %r",
                    self.reply.response_id,
                    failed_part,
                    result,
                )
                self.failed_parts.add(failed_part)

    async def _paced(self, publish: Callable[[], Awaitable[Any]]) -> Any:
        """One more message on this connection, sent when its rate limiter allows."""
        await self.limiter.acquire()
        self.messages_sent += 1
        return await publish()

    def _message(self, name: str, data: str, extras: dict[str, Any], **kwargs: Any) -> Message:
        return Message(name=name, data=data, extras=extras, **kwargs)

    @abstractmethod
    async def _send(self, part: events.Part, text: str) -> None: ...

    @abstractmethod
    async def _recover(self) -> None: ...


class MessagePerResponseStream(ReplyStream):
    """One `response` message per part: created, then appended to.

    `create_carries_text`: the create holds the part's first text (the agent's way: one
    message fewer per part, and the first words reach devices with it); otherwise it is
    created empty and every text is an append.
    """

    def __init__(self, *args: Any, create_carries_text: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.create_carries_text = create_carries_text
        # What each part's create holds (the same on a repeat, see `_create_message`).
        self._create_text: dict[events.Part, str] = {}
        self.serials: dict[events.Part, str | None] = {}
        self._current_part: events.Part | None = None
        self._create_ids: dict[events.Part, str] = {}
        # Everything handed to `_send` per part so far (what a re-created message carries).
        self._sent_text: dict[events.Part, str] = {part: "" for part in events.Part}
        # Parts whose message Ably no longer has (an append answered 40400).
        self._lost: set[events.Part] = set()
        self._part_extras: dict[events.Part, dict[str, Any]] = {}

    def _extras(self, part: events.Part) -> dict[str, Any]:
        # The same for every message of a part: built once, not per append (the relay bench's
        # short-reply profile had it at ~4% of the event loop).
        if part not in self._part_extras:
            self._part_extras[part] = events.ResponseChunk(self.reply, part, "").extras()
        return self._part_extras[part]

    def _create_id(self, part: events.Part) -> str:
        # Random, never derived from the reply's headers (see the module doc); kept per part
        # so a repeated create is the same message to Ably.
        if part not in self._create_ids:
            self._create_ids[part] = new_message_id()
        return self._create_ids[part]

    def _create_message(self, part: events.Part) -> Message:
        # Idempotent publishing: a create re-sent by the SDK, or repeated by `_recover` after a
        # lost ack, is the same message to Ably, so devices never see a second, stale create.
        return self._message(
            events.Name.RESPONSE,
            self._create_text.get(part, ""),
            self._extras(part),
            id=self._create_id(part),
        )

    async def _create(self, part: events.Part, text: str = "") -> None:
        if self._current_part is not None and self._current_part != part:
            # B2: a create must not race the previous part's appends.
            await self._gather(self._current_part)
        self._current_part = part
        self._create_text[part] = text
        try:
            result = await self.channel.publish(self._create_message(part))
            self.serials[part] = first_serial(result)
        except Exception as error:  # noqa: BLE001 - any publish failure is repaired at the end
            logger.warning("creating the %s message of %s failed: %r", part, self.reply, error)
            self.serials[part] = None
        self.messages_sent += 1
        if self.serials[part] is None:
            self.failed_parts.add(part)

    async def _send(self, part: events.Part, text: str) -> None:
        self._sent_text[part] += text
        if part not in self.serials:
            if self.create_carries_text:
                await self._create(part, text)
                return
            await self._create(part)
            await self.limiter.acquire()
        if part in self._lost:
            await self._replace_lost(part)
            return
        serial = self.serials[part]
        if serial is None:
            return  # No message to append to; `_recover` publishes the whole text.
        self._start(
            part,
            self.channel.append_message(
                self._message(events.Name.RESPONSE, text, self._extras(part), serial=serial)
            ),
        )
        self._in_flight[-1][1].add_done_callback(lambda task: self._note_lost(part, task))

    def _note_lost(self, part: events.Part, task: asyncio.Task[Any]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        if ably_error_code(task.exception()) == MESSAGE_NOT_FOUND:  # type: ignore[arg-type]
            self._lost.add(part)

    async def _replace_lost(self, part: events.Part) -> None:
        """Ably lost this part's message (e.g. restarted without its state): appending to it
        can never work again. Publish the text so far as a new message and go on appending to
        that one, so devices have the whole text now rather than when the reply ends."""
        await self._gather(part)  # the appends to the lost message, failed or not
        self._lost.discard(part)  # after them: each failed one marked it lost again
        try:
            await self._publish_whole(part, self._sent_text[part])
        except Exception as error:  # noqa: BLE001 - `_recover` tries again at the end
            logger.warning("re-creating the %s message of %s failed: %r", part, self.reply, error)
            self.serials[part] = None
            self.failed_parts.add(part)
            return
        self.messages_sent += 1
        if self.serials[part] is not None:
            # The new message holds everything sent so far: the failed appends are covered.
            self.failed_parts.discard(part)
        logger.info("the %s message of %s was lost: re-created it whole", part, self.reply)

    async def _recover(self) -> None:
        for part in sorted(self.failed_parts):
            text = self.full_text[part]
            serial = self.serials.get(part)

            async def repair(
                part: events.Part = part, text: str = text, serial: Any = serial
            ) -> None:
                if serial is None:
                    # The create's ack was lost: the same create again (its id makes it one
                    # message to Ably, whether or not the first landed) tells us the serial.
                    result = await self._paced(
                        lambda: self.channel.publish(self._create_message(part))
                    )
                    serial = self.serials[part] = first_serial(result)
                if serial is None:
                    # Ably did not say (as it may for a de-duplicated publish): a new message
                    # with the whole text, which devices take over the first.
                    await self._publish_whole(part, text)
                    return
                whole = self._message(events.Name.RESPONSE, text, self._extras(part), serial=serial)
                try:
                    await self._paced(lambda: self.channel.update_message(whole))
                except Exception as error:
                    if ably_error_code(error) != MESSAGE_NOT_FOUND:
                        raise
                    # The realtime service lost the message (e.g. restarted without its
                    # state): updating it can never work, a new one with the whole text does.
                    logger.info("the %s message of %s is gone: re-creating it", part, self.reply)
                    await self._publish_whole(part, text)

            try:
                await publish_until(
                    repair,
                    self.channel,
                    self.publish_deadline(),
                    f"repairing {part} of {self.reply}",
                )
                self.failed_parts.discard(part)
                logger.info("repaired %s of reply %s with its full text", part, self.reply)
            except Exception as error:  # noqa: BLE001 - the stored reply keeps the text anyway
                logger.error("could not repair %s of reply %s: %r", part, self.reply, error)

    async def _publish_whole(self, part: events.Part, text: str) -> None:
        """A new `response` message with the whole text of `part`, under a fresh random id."""
        self._create_ids[part] = new_message_id()
        self._create_text[part] = text
        whole = self._message(
            events.Name.RESPONSE, text, self._extras(part), id=self._create_ids[part]
        )
        result = await self._paced(lambda: self.channel.publish(whole))
        self.serials[part] = first_serial(result)


class MessagePerTokenStream(ReplyStream):
    """`token` messages numbered per part; a `snapshot` with the whole part repairs a gap."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.next_seq: dict[events.Part, int] = {part: 0 for part in events.Part}

    async def _send(self, part: events.Part, text: str) -> None:
        token = events.Token(self.reply, part, self.next_seq[part], text)
        self.next_seq[part] += 1
        self._start(
            part, self.channel.publish(self._message(token.name, token.data(), token.extras()))
        )

    async def _recover(self) -> None:
        for part in sorted(self.failed_parts):
            snapshot = events.Snapshot(self.reply, part, self.full_text[part])

            async def repair(snapshot: events.Snapshot = snapshot) -> None:
                message = self._message(snapshot.name, snapshot.data(), snapshot.extras())
                await self._paced(lambda: self.channel.publish(message))

            try:
                await publish_until(
                    repair, self.channel, self.publish_deadline(), f"snapshot of {self.reply}"
                )
                self.failed_parts.discard(part)
                logger.info("published a snapshot of %s for reply %s", part, self.reply)
            except Exception as error:  # noqa: BLE001 - the stored reply keeps the text anyway
                logger.error("could not publish a snapshot for reply %s: %r", self.reply, error)


def reply_stream(
    pattern_is_token: bool,
    channel: Any,
    reply: events.ReplyHeaders,
    limiter: RateLimiter,
    flush_window: float,
    publish_deadline: Callable[[], float],
) -> ReplyStream:
    if pattern_is_token:
        return MessagePerTokenStream(channel, reply, limiter, flush_window, publish_deadline)
    return MessagePerResponseStream(
        channel, reply, limiter, flush_window, publish_deadline, create_carries_text=True
    )
