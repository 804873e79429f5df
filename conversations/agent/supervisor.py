"""The agent process: hears prompts on the `ai:<conversation>` channels it owns and streams
Claude's answers back (`manage.py run_agent`).

`Agent` holds the agent id's lease (see `identity`), owns the connection pool, the model client
and the conversations attached (`discovery`), settles what a crashed agent left behind at start
and every janitor round (`recovery`), sweeps intake for prompts that slipped through, and shuts
down within a grace period.

Several processes share the work (issue 15, docs/scale-out.md): each is present on the agents'
control channel (`control`), and a conversation is owned by one of the live agents
(`membership`, rendezvous hashing). Each attaches only the conversations it owns; when the
members change, one rebalance at a time opens and catches up what moved here and releases what
moved away (its in-flight reply finishes first). The database claim stays the exactly-once
guard while two agents disagree. The work on one channel is a `session.ConversationSession`; one
answer is a `reply.ReplyRun`.

Module map (each imports only those after it): supervisor → control, membership, discovery →
session → recovery, reply, titles → streaming, model, store, identity, pool, config.
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

import aiohttp
import anthropic

from conversations import actions, events, realtime
from conversations.models import Conversation

from . import model as claude, store
from .config import AgentConfig
from .control import ControlChannel
from .discovery import FALLBACK_DISCOVERY_INTERVAL, LIFECYCLE_CHANNEL, Discovery
from .identity import Lease, renew_interval
from .membership import MembershipChange
from .pool import ConnectionPool
from .recovery import Recovery
from .reply import OUTCOME_WRITE_SECONDS, DatabaseReplyStore, ReplyRun, until
from .session import ConversationSession
from .store import db
from .titles import Titles

logger = logging.getLogger(__name__)

# At shutdown, how long leaving the channels and closing the connections may take.
LEAVE_SECONDS = 1.0
# How long joining the agents' control channel may take at start-up.
CONTROL_JOIN_SECONDS = 15.0
# Above this many conversations, who owns what is worked out off the event loop (~3 µs per
# member per conversation).
MOVES_OFF_LOOP_ABOVE = 2000


class ControlChannelUnavailable(RuntimeError):
    """The agent could not join the agents' control channel: it must not run without it."""


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
        self.runs: set[ReplyRun] = set()
        self.run_slots = asyncio.Semaphore(config.concurrency)
        self.stopping = False
        # Past this (monotonic) time nothing waits for Ably any more: set by shutdown.
        self.hard_deadline = float("inf")
        self._background: set[asyncio.Task[Any]] = set()
        # List changes on their way to the owners' devices (awaited briefly at shutdown).
        self._list_changes: set[asyncio.Task[Any]] = set()
        # The agent's HTTP client for Ably's REST API (`realtime.publish_async`'s list changes,
        # the pool's history and listing), made on the running loop.
        self._http: aiohttp.ClientSession | None = None
        self.titles = Titles(config, self.anthropic, self.spawn)
        self.recovery = Recovery(config, self.pool)
        self.reply_store = DatabaseReplyStore(config, self.publish_after_commit)
        self.discovery = Discovery(self)
        self._janitor: asyncio.Task[None] | None = None
        self._discovery: asyncio.Task[None] | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self.lease = Lease(config.agent_id, config.lease_ttl)
        self._loop: asyncio.AbstractEventLoop | None = None
        # Set when another process took this one's agent id over (see `identity`).
        self.lease_lost = asyncio.Event()
        self.started = asyncio.Event()
        # Presence on the agents' control channel: who is live, hence who owns what.
        self.control: ControlChannel | None = None
        # Membership changes not rebalanced yet, and the one rebalance running.
        self._membership_changes: list[MembershipChange] = []
        self._rebalancing: asyncio.Task[None] | None = None
        # Sessions moved to another agent, waiting for their reply in flight to detach.
        self._handovers: dict[str, asyncio.Task[None]] = {}

    @property
    def sessions(self) -> dict[str, ConversationSession]:
        """The attached conversations, by conversation id."""
        return self.discovery.sessions

    def owns(self, conversation_id: str) -> bool:
        """Whether this agent answers the conversation: the live agents' rendezvous hash."""
        return self.control is None or self.control.membership.owns(conversation_id)

    def live_agent_ids(self) -> frozenset[str] | None:
        """The live agents (present on the control channel, draining ones too: they are still
        finishing their replies); None before joining it."""
        return None if self.control is None else self.control.membership.alive

    async def open_conversation(
        self, conversation_id: str, *, history_since_ms: int | None = None
    ) -> ConversationSession | None:
        """Attach to a conversation now (see `Discovery.open_conversation`)."""
        return await self.discovery.open_conversation(
            conversation_id, history_since_ms=history_since_ms
        )

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Hold the agent id, connect, settle what a crash left behind, discover, catch up."""
        self._loop = asyncio.get_running_loop()
        self._http = http = aiohttp.ClientSession()
        await self.lease.acquire()  # AgentIdInUse: another live process has this id.
        self._heartbeat = asyncio.create_task(self._heartbeat_loop(), name="agent lease")
        await self.pool.connect(http)
        # Before anything is discovered: who owns what decides what this agent attaches.
        await self._join_control_channel()
        await self.recovery.recover_interrupted(took_over=self.lease.previous is not None)
        discovery_interval = self.config.discovery_interval
        lifecycle = self.pool.primary.client.channels.get(LIFECYCLE_CHANNEL)
        try:
            await lifecycle.subscribe(self.discovery.on_lifecycle)
            self.pool.primary.reserved += 1
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
        await self.discovery.catch_up_from_database(since)
        # Devices may sit on an older conversation and have prompted while no agent ran.
        await self.discovery.discover_active_channels(lookback_seconds=self.config.catch_up_window)
        self._janitor = asyncio.create_task(self._janitor_loop(), name="agent janitor")
        self._sweeper = asyncio.create_task(self._sweeper_loop(), name="agent intake sweeper")
        self._discovery = asyncio.create_task(
            self.discovery.discovery_loop(discovery_interval), name="agent discovery"
        )
        load_what_the_first_reply_would()
        self.started.set()
        logger.info(
            "agent %s ready: %d connections, %d conversations attached, pattern %s, %d agents live",
            self.config.agent_id,
            len(self.pool.connections),
            len(self.sessions),
            self.config.streaming_pattern,
            len(self.control.membership.members) if self.control else 1,
        )

    # --- sharing the work with the other agents ----------------------------------------------

    async def _join_control_channel(self) -> None:
        """Enter the agents' control channel and read who else is live; fail fast without it."""
        channel = self.pool.primary.client.channels.get(events.AGENTS_CONTROL_CHANNEL)
        control = ControlChannel(
            channel, self.config.agent_id, on_change=self._on_membership_change
        )
        try:
            async with asyncio.timeout(CONTROL_JOIN_SECONDS):
                await control.start()
        except Exception as error:
            raise ControlChannelUnavailable(
                f"cannot join the agents' control channel {events.AGENTS_CONTROL_CHANNEL!r} "
                f"({error!r}): give the Ably key the presence and subscribe capabilities on it. "
                "Without it this agent cannot tell which conversations are its own, and every "
                "agent would answer every conversation."
            ) from error
        self.control = control
        self.pool.primary.reserved += 1
        # The start-up discovery below already asks who owns what; later changes rebalance.
        self._membership_changes.clear()
        logger.info(
            "agent %s joined %s: members %s",
            self.config.agent_id,
            events.AGENTS_CONTROL_CHANNEL,
            ", ".join(sorted(control.membership.members)),
        )

    def _on_membership_change(self, change: MembershipChange) -> None:
        """The live agents changed (called on the loop): rebalance, one rebalance at a time."""
        if self.stopping:
            return
        self._membership_changes.append(change)
        if self._rebalancing is None or self._rebalancing.done():
            self._rebalancing = asyncio.ensure_future(self._rebalance_loop())

    async def _rebalance_loop(self) -> None:
        await self.started.wait()
        while self._membership_changes and not self.stopping:
            # Changes that came in meanwhile are taken together: the latest membership wins.
            changes, self._membership_changes = self._membership_changes, []
            gone = frozenset().union(*(c.gone for c in changes))
            if self.control is not None:
                gone -= self.control.membership.alive  # back since: not gone
            change = MembershipChange(changes[0].own_id, changes[0].before, changes[-1].after, gone)
            try:
                await self._rebalance(change)
            except Exception:
                logger.exception("rebalancing after %s failed", change.describe())

    async def _rebalance(self, change: MembershipChange) -> None:
        """Release what moved away, open and catch up what moved here, settle what the agents
        that left were writing."""
        candidates = self.discovery.known_ids | set(self.sessions)
        if len(candidates) > MOVES_OFF_LOOP_ABOVE:
            moves = await asyncio.to_thread(change.moves, candidates)
        else:
            moves = change.moves(candidates)
        logger.info(
            "%s; %d conversations moved (%d to this agent, %d away)",
            change.describe(),
            moves.moved,
            len(moves.gained),
            len(moves.lost),
        )
        # Away first: the new owner enters a channel's presence once this agent has left it.
        for session in list(self.sessions.values()):
            owned = self.owns(session.conversation_id)
            if not owned and not session.released:
                self._hand_over(session)
            elif owned and session.released:
                handover = self._handovers.pop(session.conversation_id, None)
                if handover is not None:
                    handover.cancel()
                logger.info("%s is this agent's again", session.channel_name)
                await session.reclaim()
        # Then what came here: listed or in the database, caught up from history and the
        # database (unanswered prompts are queued; answered ones are skipped).
        since = store.now() - datetime.timedelta(seconds=self.config.catch_up_window)
        since_ms = int(since.timestamp() * 1000)
        await asyncio.gather(
            *(
                self.discovery.open_conversation(c, history_since_ms=since_ms)
                for c in self.discovery.known_ids
                if c not in self.sessions and self.owns(c)
            )
        )
        await self.discovery.catch_up_from_database(
            since, only=lambda recent: change.moves(recent).gained
        )
        await self.discovery.discover_active_channels(lookback_seconds=self.config.catch_up_window)
        # Only agents gone from the channel: a draining one is still finishing its replies.
        if change.gone:
            await self._settle_replies_of(change.gone)

    def _hand_over(self, session: ConversationSession) -> None:
        task = asyncio.ensure_future(self._release_then_detach(session))
        self._handovers[session.conversation_id] = task
        task.add_done_callback(
            lambda done: (
                self._handovers.pop(session.conversation_id, None)
                if self._handovers.get(session.conversation_id) is done
                else None
            )
        )

    async def _release_then_detach(self, session: ConversationSession) -> None:
        """Leave presence now; detach once the reply in flight (if any) is over."""
        await session.release()
        while session.busy and not session.closed:
            await asyncio.sleep(0.1)
        if session.released and self.sessions.get(session.conversation_id) is session:
            await self.discovery.close_session(session)

    async def _settle_replies_of(self, gone: frozenset[str]) -> None:
        """Interrupt the `streaming` replies of agents that left, in the conversations this
        agent owns now, and tell their devices (the database picks one settler); and announce
        any reply they saved but had not yet announced when they died."""
        replies = await db(store.streaming_replies_of, sorted(gone))
        mine = [r.pk for r in replies if self.owns(str(r.conversation_id))]
        if mine:
            await self.recovery.announce_all_interrupted(await db(actions.interrupt_replies, mine))
        await self.recovery.announce_last_unsaid_outcomes(sorted(gone), self.owns)

    async def _heartbeat_loop(self) -> None:
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
            if (
                not session.ready
                or session.closed
                or session.released
                or session.last_activity < window_start
            ):
                continue
            try:
                found += await session.sweep(now_ms)
            except Exception as error:  # noqa: BLE001 - next round
                logger.warning("sweeping %s failed: %r", session.channel_name, error)
        return found

    async def shutdown(self, grace_period: float | None = None) -> None:
        """Stop taking prompts, let in-flight replies finish within the grace period, leave."""
        grace = self.config.grace_period if grace_period is None else grace_period
        self.stopping = True
        if self.control is not None:
            await self._start_draining()
        # Replies aborted at the end of the grace period still get a moment to say so: up to
        # 5 s, and no longer than the grace itself (a short grace is a quick stop, `make run`).
        slack = min(5.0, self.config.publish_deadline, max(1.0, grace))
        self.hard_deadline = time.monotonic() + grace + slack
        for task in (self._janitor, self._discovery, self._sweeper, self._rebalancing):
            if task is not None:
                task.cancel()
        for handover in self._handovers.values():
            handover.cancel()
        for opening in self.discovery.opening.values():
            opening.cancel()
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
        if self.control is not None:
            # The replies are over: now others may settle whatever this agent left behind.
            if not await until(
                self.control.stop(), min(leave_deadline, time.monotonic() + LEAVE_SECONDS)
            ):
                logger.warning("leaving the agents' control channel timed out")
        await until(
            asyncio.gather(*(s.close() for s in self.sessions.values()), return_exceptions=True),
            leave_deadline,
        )
        self.sessions.clear()
        # The owners' lists hear of the last replies' activity before the process goes.
        if self._list_changes:
            await until(asyncio.gather(*self._list_changes, return_exceptions=True), leave_deadline)
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        if not await until(self.pool.close(), leave_deadline):
            logger.warning("the Ably connections did not close in time; leaving anyway")
        with contextlib.suppress(Exception):
            await self.anthropic.close()
        if self._http is not None:
            with contextlib.suppress(Exception):
                await self._http.close()
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            await asyncio.gather(self._heartbeat, return_exceptions=True)
        # Released only now: while the lease is held no other process settles these replies.
        await self.lease.release()
        logger.info("agent %s stopped", self.config.agent_id)

    async def _start_draining(self) -> None:
        """First thing at shutdown: others take this agent's conversations over at once, and
        leave the replies it is finishing to it until it leaves the channel."""
        assert self.control is not None
        control = self.control
        if not await until(control.drain(), time.monotonic() + LEAVE_SECONDS):
            logger.warning("others take over only once this agent has left the control channel")
        if control.membership.members - {self.config.agent_id}:
            # Another agent answers from now on: devices see it, not this one, while the
            # replies in flight here finish.
            await until(
                asyncio.gather(
                    *(s.release() for s in self.sessions.values()), return_exceptions=True
                ),
                time.monotonic() + LEAVE_SECONDS,
            )

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

    def publish_after_commit(self, channel: str, event: realtime.Event) -> None:
        """Send a server event (a reply's list change) that `actions` hands over after commit.

        Called on the database thread: the publish runs on the event loop as an async HTTP
        call, so neither the database thread nor the loop ever waits on the network.
        """
        loop = self._loop
        if loop is None or loop.is_closed() or self._http is None:
            realtime.publish(channel, event)  # Not running (a test calling in directly).
            return
        http = self._http

        def send() -> None:
            task = asyncio.ensure_future(realtime.publish_async(channel, event, http))
            self._list_changes.add(task)
            task.add_done_callback(self._list_changes.discard)

        loop.call_soon_threadsafe(send)

    def spawn(self, coroutine: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # --- discovery ---------------------------------------------------------------------------

    async def _janitor_loop(self) -> None:
        """Detach conversations nobody uses: idle, no reply running, no device present."""
        interval = max(1.0, min(30.0, self.config.idle_detach_after / 4))
        while True:
            await asyncio.sleep(interval)
            try:
                await self.recovery.announce_all_interrupted(
                    await self.recovery.interrupt_replies_of_gone_agents()
                )
                await self.recovery.announce_unsaid_outcomes(
                    await self.recovery.recently_gone_agent_ids()
                )
            except Exception as error:  # noqa: BLE001 - next round
                logger.warning("settling replies of gone agents failed: %r", error)
            now = time.monotonic()
            for session in list(self.sessions.values()):
                if not session.released and not self.owns(session.conversation_id):
                    # Opened just as it moved away (a discovery racing a rebalance).
                    self._hand_over(session)
                    continue
                if session.released:
                    continue
                if session.deleted:
                    if (
                        not session.busy
                        and session.last_activity < now - self.config.deleted_linger
                    ):
                        await self.discovery.close_session(session)
                    continue
                streaming = await db(store.streaming_replies, session.conversation_id)
                await session.settle_orphans(streaming)
                if session.busy or session.last_activity > now - self.config.idle_detach_after:
                    continue
                # A device still attached would not re-open the channel (no lifecycle event), so
                # keep the channel while anyone but the agent is present.
                if await session.has_other_members():
                    continue
                await self.discovery.close_session(session)

    # --- testing and operations --------------------------------------------------------------

    async def wait_idle(self, timeout: float = 30.0) -> None:
        """Until no conversation has anything queued or running (for tests and shutdown)."""
        async with asyncio.timeout(timeout):
            while any(s.busy for s in self.sessions.values()) or self.discovery.opening:
                await asyncio.sleep(0.02)


def load_what_the_first_reply_would() -> None:
    """Load now, before serving, what the first reply otherwise loads on its way: Django's URL
    configuration (each reply's list change names its conversation's URL), which imports every
    view and the admin. Done on the database thread mid-burst, that held the GIL for ~20 ms and
    stalled the event loop with it."""
    Conversation(pk=uuid.UUID(int=0)).get_absolute_url()
