"""The agent: hears prompts on every `ai:<conversation>` channel and streams Claude's answers back.

Shape of the work:

- `Agent` owns the connection pool, the model client and one `ConversationSession` per attached
  conversation. It discovers conversations from `[meta]channel.lifecycle` (a device opening a
  channel) and, at start-up, from the database (recent activity or unanswered prompts).
- A `ConversationSession` attaches, then catches up from history (ably-python has no
  `untilAttach`, so it reads back from a time bound while live messages wait in the inbox), and
  de-duplicates by promptId. Its inbox task checks trust and stores prompts; its worker task
  answers them one at a time, in order. That is the double-texting policy: a second prompt
  while one streams is queued and answered after it.
- A `ReplyRun` is one answer: claim in the database (exactly once across processes), `start`,
  the streamed text, one write of the outcome, then `stop`: what a device shows at the end is
  what every reload shows. A process killed between the write and `stop` leaves a final row
  that devices never heard of: the agent that takes its id over, or any agent once its lease
  has lapsed, finds the missing `stop` in channel history and publishes the whole text and the
  stored outcome (`announce_unsaid_outcomes`).

Intake is durable. A prompt counts as handled only once it is stored (or refused with a
`refusal` its devices show); storing is retried on transient database errors
(`store.db_retrying`). What still slips through (the database down for longer, an agent killed
between hearing a prompt and storing it) is found by the sweeper: every `sweep_interval` each
conversation active within `sweep_window` compares the prompts in its channel history with the
database and takes in any that have no reply. A prompt that cannot be stored after
`MAX_INTAKE_FAILURES` tries is refused (`unsaved`), so its sender is never left waiting.

Malformed prompts and prompts to a deleted conversation are refused, never dropped silently: a
channel whose conversation no longer exists is attached anyway, as a `deleted` session that
refuses every prompt and detaches once quiet. Agent identity and when a reply counts as
abandoned: see `identity`.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import time
import uuid
from collections.abc import Awaitable
from typing import Any

import anthropic

from conversations import actions, events, realtime
from conversations.models import Message

from . import attachments, model as claude, store
from .ably_adapter import REST_PROTOCOL_VERSION, AblyMessage
from .config import AgentConfig
from .identity import Lease
from .pool import ConnectionPool, PooledConnection
from .store import db, db_retrying
from .streaming import ReplyStream, publish_until, reply_stream, with_retries
from .titles import Titles

logger = logging.getLogger(__name__)
reply_log = logging.getLogger("conversations.agent.replies")

LIFECYCLE_CHANNEL = "[meta]channel.lifecycle"
OPEN_EVENTS = frozenset({"channel.opened", "channel.region.active"})
# History is read from a little before the moment a channel opened: the prompt a device
# publishes right after attaching can land before the agent's own attach completes.
DISCOVERY_LOOKBACK_SECONDS = 10.0
HISTORY_PAGE_LIMIT = 100
ORDERING_POLL_SECONDS = 0.1
FALLBACK_DISCOVERY_INTERVAL = 2.0

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
MALFORMED_MESSAGE = "This message could not be read ({problem}), so it was not sent to Claude."
DELETED_MESSAGE = "This conversation has been deleted, so this message was not sent to Claude."
UNSAVED_MESSAGE = (
    "This message could not be saved, so it was not sent to Claude. Please send it again."
)
# How far back a restart looks for replies a killed process saved but never announced.
UNSAID_OUTCOME_WINDOW = 600.0
# Tries (each with its own retries) before a prompt that cannot be stored is refused.
MAX_INTAKE_FAILURES = 3
# A refusal is small and not part of a reply: it waits out a short outage only.
REFUSAL_PUBLISH_SECONDS = 15.0
RATE_LIMIT_MESSAGE = (
    "You are sending messages faster than {limit} a minute. Please wait a moment and try again."
)


# At shutdown, how long leaving the channels and closing the connections may take, and how long
# a reply whose last publish gave up at the hard deadline gets to store its outcome.
LEAVE_SECONDS = 1.0
OUTCOME_WRITE_SECONDS = 0.5


async def _until(awaitable: Awaitable[Any], deadline: float) -> bool:
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


class ConversationSession:
    """One attached conversation channel: its inbox, its prompt queue and its presence."""

    def __init__(
        self,
        agent: Agent,
        conversation_id: str,
        connection: PooledConnection,
        *,
        deleted: bool = False,
    ) -> None:
        self.agent = agent
        self.conversation_id = conversation_id
        self.channel_name = events.conversation_channel(conversation_id)
        self.connection = connection
        self.channel = connection.client.channels.get(self.channel_name)
        self.inbox: asyncio.Queue[AblyMessage] = asyncio.Queue()
        # Prompts to answer, with the version request (issue 16: None for a first reply).
        self.prompts: asyncio.Queue[tuple[Message, str | None]] = asyncio.Queue()
        # Prompts stored (or refused) here: handled, whatever history replays.
        self.seen_prompt_ids: set[str] = set()
        # Ably ids of messages handled for good without storing (refused or ignored), so the
        # sweeper does not take them in again.
        self.settled_message_ids: set[str] = set()
        # Prompts in this session's queue or being answered.
        self.queued_prompt_ids: set[str] = set()
        # Version requests (Regenerate, Retry) handled here or queued: requestId.
        self.seen_request_ids: set[str] = set()
        self.intake_failures: dict[str, int] = {}
        self.handling = False
        # The conversation no longer exists: every prompt is refused.
        self.deleted = deleted
        self.active: ReplyRun | None = None
        # Cancels that matched no reply yet: id -> monotonic expiry.
        self.early_cancels: dict[str, float] = {}
        # Prompts whose attachments were refused at intake: promptId -> the reason (issue 17).
        self.attachment_refusals: dict[str, str] = {}
        self.last_activity = time.monotonic()
        self.presence_status: events.AgentStatus | None = None
        self._presence_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[Any]] = []
        self.closed = False
        # False while attaching and catching up: such a session is never evicted.
        self.ready = False

    # --- attach and catch-up -----------------------------------------------------------------

    async def open(self, *, history_since_ms: int | None) -> None:
        await self.channel.subscribe(self._on_message)
        if not self.deleted:
            await self.set_status(events.AgentStatus.IDLE)
        backlog = await self._history_since(history_since_ms) if history_since_ms else []
        # Backlog first (oldest first), then whatever arrived live meanwhile: the inbox task
        # starts only now, and duplicates are dropped by promptId.
        pending_live = []
        while not self.inbox.empty():
            pending_live.append(self.inbox.get_nowait())
        for message in [*backlog, *pending_live]:
            self.inbox.put_nowait(message)
        self.ready = True
        self._tasks.append(
            asyncio.create_task(self._inbox_loop(), name=f"inbox {self.channel_name}")
        )
        self._tasks.append(
            asyncio.create_task(self._worker_loop(), name=f"worker {self.channel_name}")
        )

    async def _history_since(
        self,
        since_ms: int,
        wanted: frozenset[str] = frozenset(
            {events.Name.PROMPT, events.Name.CANCEL, events.Name.REGENERATE}
        ),
    ) -> list[AblyMessage]:
        collected: list[AblyMessage] = []
        try:
            assert self.agent.pool.rest is not None
            page = await self.agent.pool.rest.channels.get(self.channel_name).history(
                direction="backwards", start=since_ms, limit=HISTORY_PAGE_LIMIT
            )
            while True:
                collected.extend(m for m in page.items if m.name in wanted)
                if not page.has_next():
                    break
                page = await page.next()
        except Exception as error:  # noqa: BLE001 - live messages still flow without history
            logger.error("history catch-up on %s failed: %r", self.channel_name, error)
        collected.reverse()
        if collected:
            logger.info(
                "%s: %d prompt/cancel messages in history", self.channel_name, len(collected)
            )
        return collected

    def _on_message(self, message: AblyMessage) -> None:
        self.last_activity = time.monotonic()
        self.inbox.put_nowait(message)

    # --- the inbox: trust, storage, cancels --------------------------------------------------

    async def _inbox_loop(self) -> None:
        while True:
            message = await self.inbox.get()
            self.handling = True
            try:
                await self._handle(message)
            except Exception:
                # Not settled: a prompt is taken in again by the sweeper.
                logger.exception("handling %s on %s failed", message.name, self.channel_name)
            finally:
                self.handling = False

    async def _handle(self, message: AblyMessage) -> None:
        name = message.name
        if name not in (events.Name.PROMPT, events.Name.CANCEL, events.Name.REGENERATE):
            if (
                name in events.AGENT_NAMES
                and message.client_id != self.agent.config.agent_client_id
            ):
                logger.warning(
                    "ignoring %r on %s from %r: only the agent may send it",
                    name,
                    self.channel_name,
                    message.client_id,
                )
            return
        client_id = message.client_id
        if client_id == self.agent.config.agent_client_id:
            self._settle(message)
            return
        allowed = not self.deleted and await db_retrying(
            store.sender_may_write, self.conversation_id, client_id
        )
        if not allowed and name == events.Name.PROMPT:
            if self.deleted or not await db_retrying(
                store.conversation_exists, self.conversation_id
            ):
                # Nobody may write to a conversation that is gone, but its devices (a page
                # left open) must hear why nothing answers.
                self.deleted = True
                prompt_id = events.prompt_id_of(message.extras)
                self._refuse(message, events.RefusalReason.DELETED, DELETED_MESSAGE, prompt_id)
                return
        if not allowed:
            logger.warning(
                "ignoring %s on %s from %r: not allowed to write to this conversation",
                name,
                self.channel_name,
                client_id,
            )
            self._settle(message)
            return
        if name == events.Name.PROMPT:
            await self._accept_prompt(message, client_id)
        elif name == events.Name.REGENERATE:
            await self._accept_regenerate(message, client_id)
        else:
            self._accept_cancel(message, client_id)

    def _settle(self, message: AblyMessage) -> None:
        """Handled for good without storing anything: the sweeper leaves it alone."""
        if message.id:
            self.settled_message_ids.add(message.id)

    def _refuse(
        self,
        message: AblyMessage,
        reason: events.RefusalReason,
        text: str,
        prompt_id: str | None,
    ) -> None:
        """Tell the sender's devices this prompt will not be answered (once per message)."""
        if message.id and message.id in self.settled_message_ids:
            return
        # By Ably message id, not promptId: the page's "Send again" re-sends the same promptId
        # in a new message, which is taken in afresh.
        self._settle(message)
        logger.warning(
            "refusing a prompt on %s from %r (%s): %s",
            self.channel_name,
            message.client_id,
            reason,
            text,
        )
        refusal = events.Refusal(reason=reason, message=text, prompt_id=prompt_id)
        self.agent.spawn(self._publish_refusal(refusal))

    async def _publish_refusal(self, refusal: events.Refusal) -> None:
        deadline = min(time.monotonic() + REFUSAL_PUBLISH_SECONDS, self.agent.hard_deadline)
        try:
            await self.publish_until(refusal, deadline)
        except Exception as error:  # noqa: BLE001 - logged; nothing else can carry it
            logger.error("publishing a refusal on %s failed: %r", self.channel_name, error)

    async def _accept_prompt(self, message: AblyMessage, client_id: str) -> None:
        try:
            prompt = events.Prompt.from_wire(message.data, message.extras)
        except events.EventError as error:
            problem = str(error)
            self._refuse(
                message,
                events.RefusalReason.MALFORMED,
                MALFORMED_MESSAGE.format(problem=problem),
                events.prompt_id_of(message.extras),
            )
            return
        if prompt.prompt_id in self.seen_prompt_ids:
            return
        try:
            if await db_retrying(store.answered_prompt_ids, [prompt.prompt_id]):
                self.seen_prompt_ids.add(prompt.prompt_id)
                return
            stored, created = await db_retrying(
                actions.record_prompt,
                self.conversation_id,
                prompt_id=prompt.prompt_id,
                text=prompt.text,
                client_id=client_id,
                parent_id=prompt.parent_id,
                edit_of=prompt.edit_of,
            )
        except ValueError as error:
            # A promptId another conversation already uses: not this prompt, never storable.
            self._refuse(
                message,
                events.RefusalReason.MALFORMED,
                MALFORMED_MESSAGE.format(problem=str(error)),
                None,
            )
            return
        except store.TRANSIENT_DB_ERRORS as error:
            failures = self.intake_failures.get(prompt.prompt_id, 0) + 1
            self.intake_failures[prompt.prompt_id] = failures
            if failures >= MAX_INTAKE_FAILURES:
                self._refuse(
                    message, events.RefusalReason.UNSAVED, UNSAVED_MESSAGE, prompt.prompt_id
                )
                return
            # Not seen: the sweeper finds it in the channel's history and tries again.
            logger.error(
                "storing prompt %s on %s failed (%d of %d): %r",
                prompt.prompt_id,
                self.channel_name,
                failures,
                MAX_INTAKE_FAILURES,
                error,
            )
            return
        self.intake_failures.pop(prompt.prompt_id, None)
        self.seen_prompt_ids.add(prompt.prompt_id)
        # Attachments (issue 17): link the files the prompt names, or note why it may not.
        refusal = await db_retrying(
            attachments.link_to_prompt, stored, [item.id for item in prompt.attachments]
        )
        if refusal:
            self.attachment_refusals[prompt.prompt_id] = refusal
        self.last_activity = time.monotonic()
        if created:
            # Issue 16: the new prompt (a branch, when it is an edit) is the shown path now.
            self.agent.spawn(self.publish_path())
        self.queue(stored)

    async def _accept_regenerate(self, message: AblyMessage, client_id: str) -> None:
        """Issue 16: a new version of a stored prompt's reply (Regenerate, Retry)."""
        try:
            request = events.Regenerate.from_wire(message.data, message.extras)
        except events.EventError as error:
            logger.warning("ignoring a malformed regenerate on %s: %s", self.channel_name, error)
            self._settle(message)
            return
        if request.request_id in self.seen_request_ids:
            return
        prompt = await db_retrying(store.stored_prompt, self.conversation_id, request.prompt_id)
        if prompt is None or await db_retrying(
            store.request_answered, request.prompt_id, request.request_id
        ):
            self.seen_request_ids.add(request.request_id)
            self._settle(message)
            return
        self.seen_request_ids.add(request.request_id)
        self.last_activity = time.monotonic()
        self.queue(prompt, request_id=request.request_id)

    async def publish_path(self) -> None:
        """Tell every device which path is shown now (after a new prompt or reply version)."""
        try:
            event = await db_retrying(actions.path_event, self.conversation_id)
            deadline = min(time.monotonic() + REFUSAL_PUBLISH_SECONDS, self.agent.hard_deadline)
            await self.publish_until(event, deadline)
        except Exception as error:  # noqa: BLE001 - a reload still shows the right path
            logger.error("publishing the path on %s failed: %r", self.channel_name, error)

    def queue(self, prompt: Message, *, request_id: str | None = None) -> None:
        key = request_id or str(prompt.prompt_id)
        if key in self.queued_prompt_ids:
            return
        self.queued_prompt_ids.add(key)
        self.prompts.put_nowait((prompt, request_id))

    async def sweep(self, now_ms: int) -> int:
        """Take in the prompts in recent history that have no reply and are not on their way.

        Returns how many were handed to the inbox again (each is then stored, answered or
        refused as if it had just arrived; a promptId already stored is not stored twice).
        """
        if self.handling or not self.inbox.empty():
            return 0  # Intake is busy (perhaps retrying a write): it is not lost, just slow.
        config = self.agent.config
        since_ms = now_ms - int(config.sweep_window * 1000)
        recent_before_ms = now_ms - int(config.sweep_grace * 1000)
        history = await self._history_since(since_ms, frozenset({events.Name.PROMPT}))
        candidates: dict[str, AblyMessage] = {}
        for message in history:
            if message.id and message.id in self.settled_message_ids:
                continue
            if (message.timestamp or now_ms) > recent_before_ms:
                continue
            if message.client_id == config.agent_client_id:
                continue
            prompt_id = events.prompt_id_of(message.extras)
            if prompt_id is None:
                # Malformed and never handled here (this process was not attached then).
                self.inbox.put_nowait(message)
                continue
            if prompt_id not in self.queued_prompt_ids:
                candidates.setdefault(prompt_id, message)
        if not candidates:
            return 0
        answered = await db_retrying(store.answered_prompt_ids, list(candidates))
        missed = [m for p, m in candidates.items() if p not in answered]
        for message in missed:
            self.seen_prompt_ids.discard(events.prompt_id_of(message.extras) or "")
            self.inbox.put_nowait(message)
        if missed:
            logger.warning(
                "%s: %d prompt(s) in history without a reply; taking them in",
                self.channel_name,
                len(missed),
            )
        return len(missed)

    def _accept_cancel(self, message: AblyMessage, client_id: str) -> None:
        try:
            cancel = events.Cancel.from_wire(message.data, message.extras)
        except events.EventError as error:
            logger.warning("ignoring a malformed cancel on %s: %s", self.channel_name, error)
            return
        run = self.active
        if run is not None and run.matches(cancel.response_id, cancel.prompt_id):
            logger.info("cancel from %s for reply %s", client_id, run.response_id)
            run.abort(events.Status.CANCELLED)
            return
        # Not (yet) ours: it may be for a prompt still queued or not yet claimed, or for a reply
        # another agent process runs. Keep it briefly; repeats and unknown ids are harmless.
        expiry = time.monotonic() + self.agent.config.cancel_buffer_seconds
        for key in (cancel.response_id, cancel.prompt_id):
            if key:
                self.early_cancels[key] = expiry

    def take_early_cancel(self, *ids: str) -> bool:
        now = time.monotonic()
        self.early_cancels = {k: v for k, v in self.early_cancels.items() if v > now}
        return any(self.early_cancels.pop(i, None) is not None for i in ids if i)

    # --- the worker: one reply at a time, in order -------------------------------------------

    async def _worker_loop(self) -> None:
        while True:
            prompt, request_id = await self.prompts.get()
            if self.agent.stopping:
                continue  # Unclaimed: the next agent to start answers it from history.
            try:
                async with self.agent.run_slots:
                    run = ReplyRun(self, prompt, request_id=request_id)
                    self.agent.runs.add(run)
                    try:
                        await run.execute()
                    finally:
                        self.agent.runs.discard(run)
            except Exception:
                logger.exception("answering prompt %s failed", prompt.prompt_id)
            finally:
                self.queued_prompt_ids.discard(request_id or str(prompt.prompt_id))
                self.active = None
                self.last_activity = time.monotonic()
                if self.prompts.empty():
                    await self.set_status(events.AgentStatus.IDLE)

    @property
    def busy(self) -> bool:
        return (
            not self.ready
            or self.active is not None
            or not self.prompts.empty()
            or not self.inbox.empty()
        )

    # --- presence and publishing -------------------------------------------------------------

    async def set_status(self, status: events.AgentStatus) -> None:
        async with self._presence_lock:
            if status == self.presence_status or self.closed:
                return
            entering = self.presence_status is None
            self.presence_status = status
            await self.connection.limiter.acquire()
            try:
                # agentId lets other agent processes tell a live reply from an orphaned one.
                data = {"status": str(status), "agentId": self.agent.config.agent_id}
                if entering:
                    await self.channel.presence.enter(data)
                else:
                    await self.channel.presence.update(data)
            except Exception as error:  # noqa: BLE001 - presence is advisory; replies go on
                logger.warning("presence %s on %s failed: %r", status, self.channel_name, error)

    async def publish(self, event: Any) -> None:
        """Publish one agent event and wait for Ably's ack."""
        await self.connection.limiter.acquire()
        self.connection.touch(self.channel_name)
        await self.channel.publish(
            AblyMessage(name=str(event.name), data=event.data(), extras=event.extras())
        )

    async def publish_until(self, event: Any, deadline: float) -> None:
        """Publish, waiting out an Ably outage (re-attaching the channel) until `deadline`."""
        await publish_until(
            lambda: self.publish(event), self.channel, deadline, f"publishing {event.name}"
        )

    async def live_agent_ids(self) -> set[str] | None:
        """Agent ids present on this channel (None if unknown). A killed agent drops out when
        Ably ends its presence (~15 s after the connection died)."""
        try:
            members = await self.channel.presence.get()
        except Exception:  # noqa: BLE001 - unknown: treat every reply as live
            return None
        return {
            str(m.data.get("agentId"))
            for m in members
            if m.client_id == self.agent.config.agent_client_id and isinstance(m.data, dict)
        }

    async def settle_orphans(self, replies: list[Message]) -> list[Message]:
        """Interrupt the `streaming` replies whose agent is no longer present; return the rest."""
        if not replies:
            return []
        live = await self.live_agent_ids()
        if live is None:
            return replies
        own_run = self.active.response_id if self.active else None
        orphans = [r for r in replies if r.agent_id not in live and str(r.response_id) != own_run]
        if orphans:
            settled = await db(actions.interrupt_replies, [r.pk for r in orphans])
            for reply in settled:
                await self.agent.announce_interrupted(reply)
        orphan_ids = {r.pk for r in orphans}
        return [r for r in replies if r.pk not in orphan_ids]

    async def has_other_members(self) -> bool:
        try:
            members = await self.channel.presence.get()
        except Exception:  # noqa: BLE001 - unknown means keep the channel
            return True
        return any(m.client_id != self.agent.config.agent_client_id for m in members)

    async def close(self, *, leave: bool = True) -> None:
        self.closed = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        with contextlib.suppress(Exception):
            self.channel.unsubscribe(self._on_message)
            if leave and self.presence_status is not None:
                await self.channel.presence.leave()
            await self.channel.detach()


class ReplyRun:
    """One answer to one prompt, from claim to the final database write."""

    def __init__(
        self, session: ConversationSession, prompt: Message, *, request_id: str | None = None
    ) -> None:
        self.session = session
        # Issue 16: a Regenerate/Retry request makes a new version; None, the first reply.
        self.request_id = request_id
        self.agent = session.agent
        self.config = session.agent.config
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
        self.model_stream: claude.ModelStream | None = None
        self.ended = False

    def publish_deadline(self) -> float:
        """When a publish that must reach devices (`start`, repair, `stop`) stops trying."""
        return min(time.monotonic() + self.config.publish_deadline, self.agent.hard_deadline)

    def matches(self, response_id: str | None, prompt_id: str | None) -> bool:
        return (response_id is not None and response_id == self.response_id) or (
            prompt_id is not None and prompt_id == self.prompt_id
        )

    def abort(self, status: events.Status) -> None:
        """Stop the model request now (cancel from a device, or shutdown after the grace period)."""
        if not self._abort.done():
            self._abort.set_result(status)

    async def execute(self) -> None:
        if not await self._wait_for_earlier_replies():
            return
        self.reply = await db_retrying(
            actions.claim_reply,
            self.prompt,
            response_id=self.response_id,
            model=self.config.model,
            agent_id=self.config.agent_id,
            request_id=self.request_id,
        )
        if self.reply is None:
            logger.info("prompt %s is answered by another agent", self.prompt_id)
            return
        self.session.active = self
        if self.session.take_early_cancel(self.response_id, self.prompt_id):
            self.abort(events.Status.CANCELLED)
        try:
            await self._answer()
        except Exception:
            # Whatever broke, the claimed reply must not stay `streaming`: devices get a final
            # state and the row an outcome.
            logger.exception("reply %s failed unexpectedly", self.response_id)
            if not self.ended:
                await self._end(
                    events.Status.ERROR, stop_reason="error", error=UNEXPECTED_ERROR_MESSAGE
                )

    async def _answer(self) -> None:
        await self.session.set_status(events.AgentStatus.THINKING)
        await self.session.publish_until(events.Start(self.headers), self.publish_deadline())
        # Issue 16: the reply (a new version, or the answer the shown path waited for) is shown.
        await self.session.publish_path()

        rejection = self.session.attachment_refusals.pop(self.prompt_id, None)
        rejection = rejection or await self._check_limits()
        if rejection is not None:
            await self._end(events.Status.ERROR, stop_reason="rejected", error=rejection)
            return
        context = await db_retrying(
            store.model_context,
            self.prompt,
            default_system=self.config.system_prompt,
            token_budget=self.config.context_token_budget,
        )
        # A new conversation's title is written from the prompt alongside the reply (and also
        # when the reply is stopped or fails).
        titling = self.config.generate_titles and context.first_exchange and context.needs_title
        if titling:
            self.agent.titles.start(self.session.conversation_id, self.prompt)
        if self._abort.done():
            status = self._abort.result()
            await self._end(status, stop_reason=str(status))
            if titling:
                self.agent.titles.after_first_reply(self.session.conversation_id, self.prompt, "")
            return
        self.stream = reply_stream(
            self.config.message_per_token,
            self.session.channel,
            self.headers,
            self.session.connection.limiter,
            self.config.flush_window,
            self.publish_deadline,
        )
        status, stop_reason, error = await self._generate(context)
        await self._end(status, stop_reason=stop_reason, error=error)
        if titling:
            self.agent.titles.after_first_reply(
                self.session.conversation_id, self.prompt, self._text()
            )

    async def _wait_for_earlier_replies(self) -> bool:
        """Answer in order across agent processes: let an earlier reply (elsewhere) finish first.

        An earlier reply whose agent has left the channel's presence (killed, never restarted
        under its id) is settled as interrupted instead of waited for.
        """
        deadline = time.monotonic() + self.config.ordering_wait
        while earlier := await db_retrying(
            store.earlier_replies_in_progress,
            self.prompt,
            including_own=self.request_id is not None,
        ):
            if not await self.session.settle_orphans(earlier):
                continue
            if time.monotonic() > deadline:
                logger.warning(
                    "an earlier reply in %s is still streaming; answering anyway",
                    self.session.conversation_id,
                )
                return True
            if self.agent.stopping:
                return False
            await asyncio.sleep(ORDERING_POLL_SECONDS)
        return True

    async def _check_limits(self) -> str | None:
        length = len(self.prompt.text)
        if length > self.config.max_prompt_chars:
            return OVERSIZE_MESSAGE.format(length=length, limit=self.config.max_prompt_chars)
        limit = self.config.prompt_rate_limit_per_minute
        if limit > 0:
            since = self.prompt.created_at - datetime.timedelta(minutes=1)
            earlier = await db_retrying(
                store.prompts_since, self.prompt.client_id, since, excluding=self.prompt.pk
            )
            if earlier >= limit:
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
        await asyncio.wait({consume, self._abort}, return_when=asyncio.FIRST_COMPLETED)
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
            await self.session.set_status(events.AgentStatus.RETRYING)

        assert self.stream is not None
        async with claude.open_stream(
            self.agent.anthropic, self._request(context), self.config, on_retry
        ) as model_stream:
            self.model_stream = model_stream
            await self.session.set_status(events.AgentStatus.THINKING)
            async for kind, text in model_stream:
                self._delta(events.Part.TEXT if kind == "text" else events.Part.THINKING, text)
            self._read_snapshot()

    def _delta(self, part: events.Part, text: str) -> None:
        if not text or self._abort.done():
            return  # After Stop, the reply is what devices had when it was pressed.
        if self.first_token_at is None:
            self.first_token_at = store.now()
            self.first_token_latency = time.monotonic() - self.started
            self.agent.spawn(self.session.set_status(events.AgentStatus.STREAMING))
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
        return self.stream.full_text[part] if self.stream else ""

    async def _end(
        self, status: events.Status, *, stop_reason: str | None, error: str = ""
    ) -> None:
        """Drain the text, publish `stop` after it, write the outcome once, log one line."""
        assert self.reply is not None
        self.ended = True
        if self.stream is not None:
            if not await _until(self.stream.finish(), self.agent.hard_deadline):
                # Shutting down while Ably is unreachable (`make run` stops it too): sends still
                # waiting for an ack are dropped; the outcome is stored all the same.
                await self.stream.abort()
            if self.stream.failed_parts and status == events.Status.COMPLETE:
                # Devices may hold a reply with a gap: never let them show it as complete.
                logger.error(
                    "reply %s could not be repaired on %s; ending it as an error",
                    self.response_id,
                    self.session.channel_name,
                )
                status, stop_reason, error = events.Status.ERROR, "error", UNREPAIRED_MESSAGE
        # Save, then say: once devices hear `stop`, every reload shows the same outcome.
        try:
            saved = await db_retrying(
                actions.finish_reply,
                self.reply,
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
                publish=self.agent.publish_from_thread,
            )
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
            await self.session.publish_until(stop, self.publish_deadline())
        except Exception as publish_error:  # noqa: BLE001 - the stored outcome still stands
            logger.error("publishing stop for %s failed: %r", self.response_id, publish_error)
        latency = f"{self.first_token_latency * 1000:.0f}" if self.first_token_latency else "-"
        reply_log.info(
            "reply conversation=%s response=%s status=%s stop_reason=%s ttft_ms=%s "
            "input_tokens=%d cache_write_tokens=%d cache_read_tokens=%d output_tokens=%d "
            "usage=%s chars=%d messages=%d duration_ms=%.0f "
            "pattern=%s",
            self.session.conversation_id,
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


class Agent:
    """The long-running process behind `manage.py run_agent`; every step can be awaited."""

    def __init__(
        self,
        config: AgentConfig,
        *,
        anthropic_client: anthropic.AsyncAnthropic | None = None,
        pool: ConnectionPool | None = None,
    ) -> None:
        self.config = config
        self.anthropic = anthropic_client or claude.make_client(config)
        self.pool = pool or ConnectionPool(config)
        self.sessions: dict[str, ConversationSession] = {}
        self.runs: set[ReplyRun] = set()
        self.run_slots = asyncio.Semaphore(config.concurrency)
        self.stopping = False
        # Past this (monotonic) time nothing waits for Ably any more: set by shutdown.
        self.hard_deadline = float("inf")
        self._opening: dict[str, asyncio.Task[ConversationSession | None]] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self.titles = Titles(self)
        self._janitor: asyncio.Task[None] | None = None
        self._discovery: asyncio.Task[None] | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self.lease = Lease(config.agent_id, config.lease_ttl)
        self._loop: asyncio.AbstractEventLoop | None = None
        # Set when another process took this one's agent id over (see `identity`).
        self.lease_lost = asyncio.Event()
        # Finished replies of gone agents already checked for a missing `stop`.
        self._outcomes_checked: set[int] = set()
        self.started = asyncio.Event()

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Hold the agent id, connect, settle what a crash left behind, discover, catch up."""
        self._loop = asyncio.get_running_loop()
        await self.lease.acquire()  # AgentIdInUse: another live process has this id.
        self._heartbeat = asyncio.create_task(self._heartbeat_loop(), name="agent lease")
        await self.pool.connect()
        await self.recover_interrupted()
        discovery_interval = self.config.discovery_interval
        lifecycle = self.pool.primary.client.channels.get(LIFECYCLE_CHANNEL)
        try:
            await lifecycle.subscribe(self._on_lifecycle)
            self.pool.primary.reserved = 1
        except Exception as error:  # noqa: BLE001 - listing active channels still finds them
            discovery_interval = min(discovery_interval, FALLBACK_DISCOVERY_INTERVAL)
            logger.error(
                "cannot subscribe to %s (%r): give the Ably key the subscribe capability on it; "
                "until then conversations are found by listing active channels every %.0fs",
                LIFECYCLE_CHANNEL,
                error,
                discovery_interval,
            )
        since = store.now() - datetime.timedelta(seconds=self.config.catch_up_window)
        recent = await db(store.conversations_with_recent_activity, since)
        since_ms = int(since.timestamp() * 1000)
        await asyncio.gather(
            *(self.open_conversation(c, history_since_ms=since_ms) for c in recent)
        )
        # Devices may sit on an older conversation and have prompted while no agent ran.
        await self.discover_active_channels(lookback_seconds=self.config.catch_up_window)
        self._janitor = asyncio.create_task(self._janitor_loop(), name="agent janitor")
        self._sweeper = asyncio.create_task(self._sweeper_loop(), name="agent intake sweeper")
        self._discovery = asyncio.create_task(
            self._discovery_loop(discovery_interval), name="agent discovery"
        )
        self.started.set()
        logger.info(
            "agent %s ready: %d connections, %d conversations attached, pattern %s",
            self.config.agent_id,
            len(self.pool.connections),
            len(self.sessions),
            self.config.streaming_pattern,
        )

    async def recover_interrupted(self) -> list[Message]:
        """Mark replies whose writer is known gone as interrupted and tell their devices.

        Known gone: the previous holder of this process's agent id (the lease was only taken
        over because it is dead or lapsed), any agent whose lease lapsed, and anything
        streaming for longer than `stale_reply_after` (a writer from before leases).
        """
        stale_before = store.now() - datetime.timedelta(seconds=self.config.stale_reply_after)
        abandoned = await db_retrying(
            actions.interrupt_abandoned_replies,
            agent_id=self.config.agent_id,
            stale_before=stale_before,
        )
        abandoned += await self.interrupt_replies_of_gone_agents()
        for reply in abandoned:
            await self.announce_interrupted(reply)
        # Just announced as interrupted: not candidates for a missing `stop`.
        self._outcomes_checked.update(reply.pk for reply in abandoned)
        gone = await self._recently_gone_agent_ids()
        if self.lease.previous is not None:
            gone.append(self.config.agent_id)  # Its previous holder is gone: we took over.
        await self.announce_unsaid_outcomes(gone)
        return abandoned

    async def _recently_gone_agent_ids(self) -> list[str]:
        now = store.now()
        return await db_retrying(
            store.recently_lapsed_agent_ids,
            lapsed_before=now - datetime.timedelta(seconds=self.config.lease_ttl),
            since=now - datetime.timedelta(seconds=UNSAID_OUTCOME_WINDOW),
        )

    async def interrupt_replies_of_gone_agents(self) -> list[Message]:
        """Settle `streaming` replies whose agent id's lease lapsed (not yet announced)."""
        lapsed_before = store.now() - datetime.timedelta(seconds=self.config.lease_ttl)
        replies = await db_retrying(store.replies_of_gone_agents, lapsed_before)
        if not replies:
            return []
        return await db_retrying(actions.interrupt_replies, [r.pk for r in replies])

    async def _heartbeat_loop(self) -> None:
        from .identity import renew_interval

        while True:
            await asyncio.sleep(renew_interval(self.config.lease_ttl))
            try:
                held = await self.lease.renew()
            except Exception as error:  # noqa: BLE001 - try again next beat
                logger.warning("renewing the lease on %s failed: %r", self.config.agent_id, error)
                continue
            if not held:
                logger.critical(
                    "agent id %s was taken over by another process (this one stalled for "
                    "longer than %.0fs); stopping",
                    self.config.agent_id,
                    self.config.lease_ttl,
                )
                self.lease.held = False
                self.lease_lost.set()
                return

    async def _sweeper_loop(self) -> None:
        """Every `sweep_interval`: take in prompts that slipped through intake (see module)."""
        while True:
            await asyncio.sleep(self.config.sweep_interval)
            await self.sweep_once()

    async def sweep_once(self) -> int:
        now_ms = int(time.time() * 1000)
        window_start = time.monotonic() - self.config.sweep_window
        found = 0
        for session in list(self.sessions.values()):
            if not session.ready or session.closed or session.last_activity < window_start:
                continue
            try:
                found += await session.sweep(now_ms)
            except Exception as error:  # noqa: BLE001 - next round
                logger.warning("sweeping %s failed: %r", session.channel_name, error)
        return found

    async def announce_unsaid_outcomes(self, agent_ids: list[str]) -> int:
        """Publish `stop` for replies these (gone) agents saved but may not have announced.

        Save, then say: a process killed between the two leaves a final row and devices still
        waiting. For each reply they finished lately, the channel's history tells whether its
        `stop` went out; if not, the whole text and the stored outcome are published now.
        Each reply is looked at once per process. Returns how many were announced.
        """
        if not agent_ids:
            return 0
        since = store.now() - datetime.timedelta(seconds=UNSAID_OUTCOME_WINDOW)
        replies = await db_retrying(store.finished_replies_of, agent_ids, since)
        announced = 0
        for reply in replies:
            if reply.pk in self._outcomes_checked:
                continue
            self._outcomes_checked.add(reply.pk)
            if await self._stop_on_channel(reply) is False:
                await self.announce_outcome(reply)
                announced += 1
        return announced

    async def _reply_history(self, reply: Message) -> list[AblyMessage]:
        """Every message of this reply (by responseId) in its channel's history, oldest first.

        Read over REST from a little before the reply was claimed; raises if history cannot be
        read (the callers decide what "unknown" means for them).
        """
        response_id = str(reply.response_id)
        since_ms = int(reply.created_at.timestamp() * 1000) - 5_000
        assert self.pool.rest is not None
        channel = self.pool.rest.channels.get(events.conversation_channel(reply.conversation_id))
        found: list[AblyMessage] = []
        page = await channel.history(direction="forwards", start=since_ms, limit=1000)
        while True:
            found.extend(
                message
                for message in page.items
                if ((message.extras or {}).get("headers") or {}).get("responseId") == response_id
            )
            if not page.has_next():
                return found
            page = await page.next()

    async def _stop_on_channel(self, reply: Message) -> bool | None:
        """Whether the agent's `stop` for this reply is in channel history (None: unknown)."""
        try:
            history = await self._reply_history(reply)
        except Exception as error:  # noqa: BLE001 - unknown: leave it (a reload is right)
            logger.warning("could not read reply %s's history: %r", reply.response_id, error)
            return None
        return any(
            message.name == events.Name.STOP and message.client_id == self.config.agent_client_id
            for message in history
        )

    async def announce_outcome(self, reply: Message) -> None:
        """The whole stored text of a finished reply, then its `stop`, as the database has it."""
        headers = events.ReplyHeaders(str(reply.response_id), str(reply.prompt_id), reply.model)
        whole: list[Any] = []
        for part, text in ((events.Part.THINKING, reply.thinking), (events.Part.TEXT, reply.text)):
            if not text:
                continue
            if self.config.message_per_token:
                whole.append(events.Snapshot(headers, part, text))
            else:
                whole.append(events.ResponseChunk(headers, part, text))
        stop = events.Stop(
            headers,
            events.Status(reply.status),
            stop_reason=reply.stop_reason or None,
            error_message=reply.error,
        )
        channel_name = events.conversation_channel(reply.conversation_id)
        connection = self.pool.for_channel(channel_name)
        try:
            for event in [*whole, stop]:
                await with_retries(
                    lambda event=event: self._publish_on(connection, channel_name, event),
                    attempts=2,
                )
        except Exception as error:  # noqa: BLE001 - a reload shows the stored outcome
            logger.error("announcing the outcome of %s failed: %r", reply.response_id, error)
            return
        logger.info(
            "reply %s (agent %s) was saved as %s but never announced: announced it now",
            reply.response_id,
            reply.agent_id,
            reply.status,
        )

    async def announce_interrupted(self, reply: Message) -> None:
        """Tell devices an abandoned reply is over, and keep the text they saw of it."""
        stop = events.Stop(
            events.ReplyHeaders(str(reply.response_id), str(reply.prompt_id), reply.model),
            events.Status.INTERRUPTED,
            stop_reason="interrupted",
            error_message=INTERRUPTED_MESSAGE,
        )
        channel_name = events.conversation_channel(reply.conversation_id)
        connection = self.pool.for_channel(channel_name)
        try:
            await with_retries(lambda: self._publish_on(connection, channel_name, stop), attempts=2)
        except Exception as error:  # noqa: BLE001 - the database already says interrupted
            logger.error("publishing interrupted stop on %s failed: %r", channel_name, error)
        text, thinking = await self._text_on_channel(reply)
        if text or thinking:
            await db(
                actions.record_interrupted_text,
                reply,
                text=text,
                thinking=thinking,
                output_tokens=claude.estimate_output_tokens(text, thinking),
            )
        logger.info("reply %s (agent %s) was interrupted", reply.response_id, reply.agent_id)

    @staticmethod
    async def _publish_on(connection: PooledConnection, channel_name: str, event: Any) -> None:
        await connection.limiter.acquire()
        await connection.client.channels.get(channel_name).publish(
            AblyMessage(name=str(event.name), data=event.data(), extras=event.extras())
        )

    async def _text_on_channel(self, reply: Message) -> tuple[str, str]:
        """What devices saw of a reply a dead agent left, rebuilt from channel history.

        The dead process never wrote its text (no write per token), but Ably kept it: the
        aggregated `response` messages, or the `token`s and `snapshot`s, of this responseId.
        """
        parts: dict[str, str] = {}
        tokens: dict[str, dict[int, str]] = {}
        try:
            history = await self._reply_history(reply)
        except Exception as error:  # noqa: BLE001 - the reply stays interrupted, just textless
            logger.warning(
                "could not read reply %s back from history: %r", reply.response_id, error
            )
            return "", ""
        for message in history:
            headers = (message.extras or {}).get("headers") or {}
            part = headers.get("part") or events.Part.TEXT
            data = message.data if isinstance(message.data, str) else ""
            if message.name in (events.Name.RESPONSE, events.Name.SNAPSHOT):
                parts[part] = data
                tokens.pop(part, None)
            elif message.name == events.Name.TOKEN:
                tokens.setdefault(part, {})[int(headers.get("seq", 0))] = data
        for part, pieces in tokens.items():
            parts[part] = parts.get(part, "") + "".join(pieces[seq] for seq in sorted(pieces))
        return parts.get(events.Part.TEXT, ""), parts.get(events.Part.THINKING, "")

    async def shutdown(self, grace_period: float | None = None) -> None:
        """Stop taking prompts, let in-flight replies finish within the grace period, leave."""
        grace = self.config.grace_period if grace_period is None else grace_period
        self.stopping = True
        # Replies aborted at the end of the grace period still get a moment to say so: up to
        # 5 s, and no longer than the grace itself (a short grace is a quick stop, `make run`).
        slack = min(5.0, self.config.publish_deadline, max(1.0, grace))
        self.hard_deadline = time.monotonic() + grace + slack
        for task in (self._janitor, self._discovery, self._sweeper):
            if task is not None:
                task.cancel()
        for task in self._opening.values():
            task.cancel()
        running = [run for run in self.runs]
        if running:
            logger.info("waiting up to %.0fs for %d replies to finish", grace, len(running))
            deadline = time.monotonic() + grace
            while self.runs and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            for run in list(self.runs):
                run.abort(events.Status.INTERRUPTED)
            # Bounded: a reply waiting out an Ably outage is cancelled with its session below,
            # and the next start settles it as interrupted. Its publish gives up at the hard
            # deadline; a moment more lets it write its outcome all the same.
            while self.runs and time.monotonic() < self.hard_deadline + OUTCOME_WRITE_SECONDS:
                await asyncio.sleep(0.05)
        # Leaving (presence, detach, closing the connections) waits on Ably, which may be
        # stopping too (`make run`): bounded, so the process always exits.
        leave_deadline = max(time.monotonic(), self.hard_deadline) + LEAVE_SECONDS
        await _until(
            asyncio.gather(*(s.close() for s in self.sessions.values()), return_exceptions=True),
            leave_deadline,
        )
        self.sessions.clear()
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        if not await _until(self.pool.close(), leave_deadline):
            logger.warning("the Ably connections did not close in time; leaving anyway")
        with contextlib.suppress(Exception):
            await self.anthropic.close()
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            await asyncio.gather(self._heartbeat, return_exceptions=True)
        # Released only now: while the lease is held no other process settles these replies.
        await self.lease.release()
        logger.info("agent %s stopped", self.config.agent_id)

    async def run(self, stop: asyncio.Event) -> None:
        try:
            await self.start()
        except BaseException:
            await self.shutdown(grace_period=0)
            raise
        try:
            stopped = asyncio.ensure_future(stop.wait())
            lost = asyncio.ensure_future(self.lease_lost.wait())
            await asyncio.wait({stopped, lost}, return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
            lost.cancel()
        finally:
            await self.shutdown()

    def publish_from_thread(self, channel: str, event: Any) -> None:
        """Publish a server event (e.g. a list change) from the database thread without
        blocking it: the HTTP call runs in a worker thread, tracked like any background task."""
        if self._loop is None or self._loop.is_closed():
            realtime.publish(channel, event)
            return
        self._loop.call_soon_threadsafe(
            lambda: self.spawn(asyncio.to_thread(realtime.publish, channel, event))
        )

    def spawn(self, coroutine: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # --- discovery ---------------------------------------------------------------------------

    def _on_lifecycle(self, message: AblyMessage) -> None:
        if message.name not in OPEN_EVENTS or self.stopping:
            return
        details = message.data if isinstance(message.data, dict) else {}
        channel_name = details.get("channelId") or details.get("name") or ""
        conversation_id = events.conversation_id_from_channel(channel_name)
        if conversation_id is None or str(conversation_id) in self.sessions:
            return
        opened_ms = message.timestamp or int(time.time() * 1000)
        since_ms = int(opened_ms - DISCOVERY_LOOKBACK_SECONDS * 1000)
        self.spawn(self.open_conversation(str(conversation_id), history_since_ms=since_ms))

    async def _discovery_loop(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            await self.discover_active_channels(
                lookback_seconds=interval + DISCOVERY_LOOKBACK_SECONDS
            )

    async def discover_active_channels(self, *, lookback_seconds: float) -> None:
        """Attach every active `ai:` channel not attached yet (channel enumeration, REST)."""
        try:
            assert self.pool.rest is not None
            response = await self.pool.rest.request(
                "GET",
                "/channels",
                REST_PROTOCOL_VERSION,
                params={"prefix": events.CONVERSATION_CHANNEL_PREFIX, "limit": 1000},
            )
        except Exception as error:  # noqa: BLE001 - try again next round
            logger.warning("listing active channels failed: %r", error)
            return
        if not 200 <= response.status_code < 300:
            logger.warning("listing active channels failed: HTTP %s", response.status_code)
            return
        since_ms = int((time.time() - lookback_seconds) * 1000)
        for item in response.items:
            name = item if isinstance(item, str) else (item or {}).get("channelId", "")
            conversation_id = events.conversation_id_from_channel(name)
            if conversation_id is not None and str(conversation_id) not in self.sessions:
                self.spawn(self.open_conversation(str(conversation_id), history_since_ms=since_ms))

    async def open_conversation(
        self, conversation_id: str, *, history_since_ms: int | None = None
    ) -> ConversationSession | None:
        """Attach to a conversation (once, however many times it is discovered) and catch up."""
        conversation_id = str(conversation_id)
        if conversation_id in self.sessions:
            session = self.sessions[conversation_id]
            session.connection.touch(session.channel_name)
            return session
        if conversation_id not in self._opening:
            self._opening[conversation_id] = asyncio.create_task(
                self._open(conversation_id, history_since_ms)
            )
        task = self._opening[conversation_id]
        try:
            return await asyncio.shield(task)
        finally:
            if task.done():
                self._opening.pop(conversation_id, None)

    async def _open(
        self, conversation_id: str, history_since_ms: int | None
    ) -> ConversationSession | None:
        if self.stopping:
            return None
        # A deleted conversation's channel is attached too: its devices get refusals.
        deleted = not await db_retrying(store.conversation_exists, conversation_id)
        channel_name = events.conversation_channel(conversation_id)
        connection = self.pool.for_new_channel()
        if not connection.has_room(self.config.max_channels_per_connection):
            if not await self._evict_one(connection):
                logger.error(
                    "every connection already holds %d busy channels; not attaching %s "
                    "(run with more --connections)",
                    len(connection.attached),
                    channel_name,
                )
                return None
        session = ConversationSession(self, conversation_id, connection, deleted=deleted)
        connection.attached[channel_name] = session
        self.sessions[conversation_id] = session
        try:
            await session.open(history_since_ms=history_since_ms)
        except Exception:
            logger.exception("attaching %s failed", channel_name)
            self.sessions.pop(conversation_id, None)
            connection.attached.pop(channel_name, None)
            await session.close(leave=False)
            return None
        logger.info("attached %s on connection %d", channel_name, connection.index)
        return session

    async def _evict_one(self, connection: PooledConnection) -> bool:
        for session in list(connection.attached.values()):  # least recently used first
            if not session.busy:
                await self.close_session(session)
                return True
        return False

    async def close_session(self, session: ConversationSession) -> None:
        self.sessions.pop(session.conversation_id, None)
        session.connection.attached.pop(session.channel_name, None)
        await session.close()
        logger.info("detached %s", session.channel_name)

    async def _janitor_loop(self) -> None:
        """Detach conversations nobody uses: idle, no reply running, no device present."""
        interval = max(1.0, min(30.0, self.config.idle_detach_after / 4))
        while True:
            await asyncio.sleep(interval)
            try:
                for reply in await self.interrupt_replies_of_gone_agents():
                    await self.announce_interrupted(reply)
                await self.announce_unsaid_outcomes(await self._recently_gone_agent_ids())
            except Exception as error:  # noqa: BLE001 - next round
                logger.warning("settling replies of gone agents failed: %r", error)
            now = time.monotonic()
            for session in list(self.sessions.values()):
                if session.deleted:
                    if (
                        not session.busy
                        and session.last_activity < now - self.config.deleted_linger
                    ):
                        await self.close_session(session)
                    continue
                streaming = await db(store.streaming_replies, session.conversation_id)
                await session.settle_orphans(streaming)
                if session.busy or session.last_activity > now - self.config.idle_detach_after:
                    continue
                # A device still attached would not re-open the channel (no lifecycle event), so
                # keep the channel while anyone but the agent is present.
                if await session.has_other_members():
                    continue
                await self.close_session(session)

    # --- testing and operations --------------------------------------------------------------

    async def wait_idle(self, timeout: float = 30.0) -> None:
        """Until no conversation has anything queued or running (for tests and shutdown)."""
        async with asyncio.timeout(timeout):
            while any(s.busy for s in self.sessions.values()) or self._opening:
                await asyncio.sleep(0.02)
