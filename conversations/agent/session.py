"""One attached conversation channel: its intake, its prompt queue and its presence.

A `ConversationSession` attaches, then catches up from history (ably-python has no
`untilAttach`, so it reads back from a time bound while live messages wait in the inbox), and
de-duplicates by promptId. Its inbox task checks trust and stores prompts; its worker task
answers them one at a time, in order. That is the double-texting policy: a second prompt while
one streams is queued and answered after it.

Intake is durable. A prompt counts as handled only once it is stored (or refused with a
`refusal` its devices show); storing is retried on transient database errors
(`store.db_retrying`). What still slips through (the database down for longer, an agent killed
between hearing a prompt and storing it) is found by the sweeper (`sweep`), which compares the
prompts in the channel's recent history with the database. A prompt that cannot be stored after
`MAX_INTAKE_FAILURES` tries is refused (`unsaved`), so its sender is never left waiting.

Malformed prompts and prompts to a deleted conversation are refused, never dropped silently: a
channel whose conversation no longer exists is attached anyway, as a `deleted` session that
refuses every prompt and detaches once quiet.

Per prompt the session makes one database round (store the prompt, link its attachments, read
the shown path); whether a clientId may write here is asked once per session and remembered
(forgotten when the conversation turns out deleted). Each reply runs through a `ReplyContext`
the session builds: the session knows the reply only through that and `ReplyRun`'s abort.

Ownership (issue 15): a conversation is answered by the one agent that owns it (see
`membership`), and only the owner is in the channel's presence, so devices see one agent. A
newly owned channel enters presence once the previous owner has left it (or after
`PRESENCE_HANDOVER_SECONDS`). A session whose conversation moved to another agent is
`release`d: it leaves presence at once and takes no new prompts, but stays attached while a
reply is in flight so a cancel still reaches it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

import anthropic

from conversations import actions, events
from conversations.models import Message

from . import model as claude, store
from .ably_adapter import AblyMessage
from .config import AgentConfig
from .pool import ConnectionPool, PooledConnection
from .recovery import Recovery
from .reply import ModelStreamLike, ReplyContext, ReplyRun, ReplyStore, TitleRequests
from .store import db, db_retrying
from .streaming import publish_until

logger = logging.getLogger(__name__)

MALFORMED_MESSAGE = "This message could not be read ({problem}), so it was not sent to Claude."
DELETED_MESSAGE = "This conversation has been deleted, so this message was not sent to Claude."
UNSAVED_MESSAGE = (
    "This message could not be saved, so it was not sent to Claude. Please send it again."
)
# Tries (each with its own retries) before a prompt that cannot be stored is refused.
MAX_INTAKE_FAILURES = 3
# A refusal is small and not part of a reply: it waits out a short outage only.
REFUSAL_PUBLISH_SECONDS = 15.0
# How long a newly owned conversation waits for the previous owner to leave its presence before
# entering anyway. A live previous owner leaves as soon as it sees the membership change (well
# under a second); a dead one's presence ends with its control-channel presence.
PRESENCE_HANDOVER_SECONDS = 5.0
PRESENCE_HANDOVER_POLL_SECONDS = 0.05


class SessionHost(Protocol):
    """What a session needs from the process that runs it (the `Agent`)."""

    @property
    def config(self) -> AgentConfig: ...

    @property
    def pool(self) -> ConnectionPool: ...

    @property
    def anthropic(self) -> anthropic.AsyncAnthropic: ...

    @property
    def titles(self) -> TitleRequests: ...

    @property
    def recovery(self) -> Recovery: ...

    @property
    def reply_store(self) -> ReplyStore: ...

    @property
    def run_slots(self) -> asyncio.Semaphore: ...

    @property
    def runs(self) -> set[ReplyRun]: ...

    @property
    def stopping(self) -> bool: ...

    @property
    def hard_deadline(self) -> float:
        """Past this (monotonic) time nothing waits for Ably any more: set by shutdown."""
        ...

    def spawn(self, coroutine: Awaitable[Any]) -> None: ...

    def live_agent_ids(self) -> frozenset[str] | None:
        """The agent ids live now (the agents' control channel's members); None if unknown."""
        ...


class ConversationSession:
    """One attached conversation channel: its inbox, its prompt queue and its presence."""

    def __init__(
        self,
        host: SessionHost,
        conversation_id: str,
        connection: PooledConnection,
        *,
        deleted: bool = False,
    ) -> None:
        self.host = host
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
        # clientIds known to be allowed to write to this conversation (see `_may_write`).
        self.writers: set[str] = set()
        # Prompts whose attachments were refused at intake: promptId -> the reason (issue 17).
        self.attachment_refusals: dict[str, str] = {}
        self.last_activity = time.monotonic()
        # The status shown in this channel's presence (None: not present) and the one to show.
        self.presence_status: events.AgentStatus | None = None
        self.wanted_status = events.AgentStatus.IDLE
        # False until the previous owner has left the channel's presence (see the module).
        self.may_enter_presence = False
        # The conversation moved to another agent: no presence, no new prompts (see `release`).
        self.released = False
        self._presence_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[Any]] = []
        self.closed = False
        # False while attaching and catching up: such a session is never evicted.
        self.ready = False

    # --- attach and catch-up -----------------------------------------------------------------

    async def open(self, *, history_since_ms: int | None) -> None:
        await self.channel.subscribe(self._on_message)
        if not self.deleted:
            if await self._other_agents_present():
                self.host.spawn(self._enter_presence_after_previous_owner())
            else:
                self.may_enter_presence = True
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
            assert self.host.pool.rest is not None
            history = await self.host.pool.rest.history(
                self.channel_name, start_ms=since_ms, direction="backwards"
            )
            collected.extend(m for m in history if m.name in wanted)
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
        if self.released and name != events.Name.CANCEL:
            return  # The new owner takes it (the database claim settles any race).
        if name not in (events.Name.PROMPT, events.Name.CANCEL, events.Name.REGENERATE):
            if name in events.AGENT_NAMES and message.client_id != self.host.config.agent_client_id:
                logger.warning(
                    "ignoring %r on %s from %r: only the agent may send it",
                    name,
                    self.channel_name,
                    message.client_id,
                )
            return
        client_id = message.client_id
        if client_id == self.host.config.agent_client_id:
            self._settle(message)
            return
        allowed = not self.deleted and await self._may_write(client_id)
        if not allowed and name == events.Name.PROMPT:
            if self.deleted or not await db_retrying(
                store.conversation_exists, self.conversation_id
            ):
                # Nobody may write to a conversation that is gone, but its devices (a page
                # left open) must hear why nothing answers.
                self.deleted = True
                self.writers.clear()
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

    async def _may_write(self, client_id: str | None) -> bool:
        """Whether this clientId may write here: asked once per session, then remembered.

        Only a yes is remembered (a user let in later is asked again). Ably verified the
        clientId; what can change is the user's access, which for the owner ends only with
        the conversation (deleted: `writers` is cleared and the session refuses everything)
        or the account (deactivated: its Ably tokens are revoked, so it cannot publish).
        """
        if client_id is None:
            return False
        if client_id in self.writers:
            return True
        allowed = await db_retrying(store.sender_may_write, self.conversation_id, client_id)
        if allowed:
            self.writers.add(client_id)
        return allowed

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
        self.host.spawn(self._publish_refusal(refusal))

    async def _publish_refusal(self, refusal: events.Refusal) -> None:
        deadline = min(time.monotonic() + REFUSAL_PUBLISH_SECONDS, self.host.hard_deadline)
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
            intake = await db_retrying(
                store.record_prompt,
                self.conversation_id,
                prompt_id=prompt.prompt_id,
                text=prompt.text,
                client_id=client_id,
                parent_id=prompt.parent_id,
                edit_of=prompt.edit_of,
                attachment_ids=[item.id for item in prompt.attachments],
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
        if intake.deleted:
            self.deleted = True
            self.writers.clear()
            self._refuse(message, events.RefusalReason.DELETED, DELETED_MESSAGE, prompt.prompt_id)
            return
        self.seen_prompt_ids.add(prompt.prompt_id)
        if intake.prompt is None:
            return  # Answered already (by another agent).
        # Attachments (issue 17): the files the prompt names are linked, or why they may not.
        if intake.attachment_refusal:
            self.attachment_refusals[prompt.prompt_id] = intake.attachment_refusal
        self.last_activity = time.monotonic()
        if intake.path is not None:
            # Issue 16: the new prompt (a branch, when it is an edit) is the shown path now.
            self.host.spawn(self.publish_path(intake.path))
        self.queue(intake.prompt)

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

    async def publish_path(self, event: events.Path | None = None) -> None:
        """Tell every device which path is shown now (after a new prompt or reply version)."""
        try:
            if event is None:
                event = await db_retrying(actions.path_event, self.conversation_id)
            deadline = min(time.monotonic() + REFUSAL_PUBLISH_SECONDS, self.host.hard_deadline)
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
        config = self.host.config
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
        expiry = time.monotonic() + self.host.config.cancel_buffer_seconds
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
            if self.host.stopping or self.released:
                # Unclaimed: the new owner (or the next agent to start) answers it from history.
                self.queued_prompt_ids.discard(request_id or str(prompt.prompt_id))
                continue
            try:
                async with self.host.run_slots:
                    run = ReplyRun(self.reply_context(), prompt, request_id=request_id)
                    # Before its claim: a cancel from now on reaches it (one earlier is kept in
                    # `early_cancels`, which it takes once it holds the claim).
                    self.active = run
                    self.host.runs.add(run)
                    try:
                        await run.execute()
                    finally:
                        self.host.runs.discard(run)
            except Exception:
                logger.exception("answering prompt %s failed", prompt.prompt_id)
            finally:
                self.queued_prompt_ids.discard(request_id or str(prompt.prompt_id))
                self.active = None
                self.last_activity = time.monotonic()
                if self.prompts.empty():
                    await self.set_status(events.AgentStatus.IDLE)

    def reply_context(self) -> ReplyContext:
        """Everything a reply on this channel may touch (see `reply.ReplyContext`)."""
        host = self.host

        def open_model_stream(
            request: dict[str, Any],
            on_retry: Callable[[claude.RetryNotice], Awaitable[None]],
        ) -> AbstractAsyncContextManager[ModelStreamLike]:
            return claude.open_stream(host.anthropic, request, host.config, on_retry)

        def take_attachment_refusal(prompt_id: str) -> str | None:
            return self.attachment_refusals.pop(prompt_id, None)

        return ReplyContext(
            conversation_id=self.conversation_id,
            config=host.config,
            channel=self.channel,
            limiter=self.connection.limiter,
            publish_until=self.publish_until,
            set_status=self.set_status,
            store=host.reply_store,
            open_model_stream=open_model_stream,
            take_early_cancel=self.take_early_cancel,
            take_attachment_refusal=take_attachment_refusal,
            settle_orphans=self.settle_orphans,
            titles=host.titles,
            hard_deadline=lambda: host.hard_deadline,
            stopping=lambda: host.stopping,
        )

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
        """Show `status` in the channel's presence, while this agent owns the conversation."""
        self.wanted_status = status
        async with self._presence_lock:
            if (
                status == self.presence_status
                or self.closed
                or self.released
                or not self.may_enter_presence
            ):
                return
            entering = self.presence_status is None
            self.presence_status = status
            await self.connection.limiter.acquire()
            try:
                # agentId lets other agent processes tell a live reply from an orphaned one.
                data = {"status": str(status), "agentId": self.host.config.agent_id}
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

    async def _other_agents_present(self) -> bool:
        """Whether another agent (by agent id) is in this channel's presence."""
        own = self.host.config
        try:
            members = await self.channel.presence.get()
        except Exception:  # noqa: BLE001 - unknown: enter (presence is advisory)
            return False
        return any(
            m.client_id == own.agent_client_id
            and isinstance(m.data, dict)
            and m.data.get("agentId") != own.agent_id
            for m in members
        )

    async def _enter_presence_after_previous_owner(self) -> None:
        """Enter presence once the previous owner left it, so devices never see two agents."""
        deadline = time.monotonic() + PRESENCE_HANDOVER_SECONDS
        while not self.closed and time.monotonic() < deadline:
            if not await self._other_agents_present():
                break
            await asyncio.sleep(PRESENCE_HANDOVER_POLL_SECONDS)
        else:
            if not self.closed:
                logger.warning(
                    "%s: another agent is still present after %.0fs; entering anyway",
                    self.channel_name,
                    PRESENCE_HANDOVER_SECONDS,
                )
        self.may_enter_presence = True
        await self.set_status(self.wanted_status)

    async def release(self) -> None:
        """Another agent owns this conversation now: leave presence at once, take no new prompts.

        A reply in flight goes on (a cancel still reaches it); the caller detaches the channel
        once the session is no longer busy.
        """
        self.released = True
        async with self._presence_lock:
            if self.presence_status is None:
                return
            self.presence_status = None
            try:
                # A leave is a presence message: it counts against the connection's 50 msg/s,
                # and a membership change releases many conversations at once.
                await self.connection.limiter.acquire()
                await self.channel.presence.leave()
            except Exception as error:  # noqa: BLE001 - Ably ends it when the channel detaches
                logger.warning("leaving presence on %s failed: %r", self.channel_name, error)

    async def reclaim(self) -> None:
        """Ownership came back before the channel was detached: answer and be present again."""
        self.released = False
        if not self.deleted:
            await self.set_status(self.wanted_status)

    async def live_agent_ids(self) -> frozenset[str] | None:
        """The live agent ids (None if unknown): the agents' control channel's members, not
        this channel's presence, where a released previous owner is absent while it still
        writes its last reply. A killed agent drops out when Ably ends its presence (~15 s)."""
        return self.host.live_agent_ids()

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
            await self.host.recovery.announce_all_interrupted(settled)
        orphan_ids = {r.pk for r in orphans}
        return [r for r in replies if r.pk not in orphan_ids]

    async def has_other_members(self) -> bool:
        try:
            members = await self.channel.presence.get()
        except Exception:  # noqa: BLE001 - unknown means keep the channel
            return True
        return any(m.client_id != self.host.config.agent_client_id for m in members)

    async def close(self, *, leave: bool = True) -> None:
        self.closed = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        with contextlib.suppress(Exception):
            self.channel.unsubscribe(self._on_message)
            if leave and self.presence_status is not None:
                await self.connection.limiter.acquire()  # as in `release`
                await self.channel.presence.leave()
            await self.channel.detach()
