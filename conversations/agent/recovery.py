"""Settling what a gone agent left behind, and telling devices.

- A reply still `streaming` whose writer is known gone (see `identity`) is marked interrupted;
  its devices get a `stop` saying so, and the text they saw is read back from the channel's
  history and kept (`announce_interrupted`).
- Save, then say: a process killed between writing a reply's outcome and publishing its `stop`
  leaves a final row that devices never heard of. The agent that takes its id over, or any
  agent once its lease has lapsed, finds the missing `stop` in channel history and publishes
  the whole text and the stored outcome (`announce_unsaid_outcomes`).
"""

from __future__ import annotations

import asyncio
import datetime
import functools
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

from conversations import actions, events
from conversations.models import Message
from conversations.transcript import fold

from . import model as claude, store
from .ably_adapter import AblyMessage
from .config import AgentConfig
from .pool import ConnectionPool, PooledConnection
from .reply import INTERRUPTED_MESSAGE
from .store import db, db_retrying
from .streaming import with_retries

logger = logging.getLogger(__name__)
T = TypeVar("T")

# How far back a restart looks for replies a killed process saved but never announced.
UNSAID_OUTCOME_WINDOW = 600.0
# Interrupted replies announced at once: each reads its text back from history (a REST request),
# so a crashed agent's dozen replies announced one by one kept the last conversation's devices
# waiting for all the others (the scaleout soak: ~7 s from the database's `interrupted` to the
# last device told). The connections' rate limiters pace the `stop`s themselves.
ANNOUNCE_CONCURRENCY = 8
# At a takeover, how far back a gone agent's finished replies are looked at: its presence
# timeout (Ably's 15 s) and more, so its last reply in each conversation is among them.
UNSAID_TAKEOVER_WINDOW = 120.0


async def _a_few_at_once(
    announce: Callable[[Message], Awaitable[T]], replies: Iterable[Message]
) -> list[T]:
    """`announce` for each reply, up to ANNOUNCE_CONCURRENCY at once, and their results. One
    that fails does not hold back the others; the first failure is raised once all are done."""
    gate = asyncio.Semaphore(ANNOUNCE_CONCURRENCY)

    async def one(reply: Message) -> T:
        async with gate:
            return await announce(reply)

    outcomes = await asyncio.gather(*(one(r) for r in replies), return_exceptions=True)
    failures = [o for o in outcomes if isinstance(o, BaseException)]
    if failures:
        raise failures[0]
    return [o for o in outcomes if not isinstance(o, BaseException)]


class Recovery:
    """Finds replies whose agent is gone and settles them, on the channels and in the database."""

    def __init__(self, config: AgentConfig, pool: ConnectionPool) -> None:
        self.config = config
        self.pool = pool
        # Finished replies of gone agents already checked for a missing `stop`.
        self.outcomes_checked: set[int] = set()

    async def recover_interrupted(self, *, took_over: bool) -> list[Message]:
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
        await self.announce_all_interrupted(abandoned)
        # Just announced as interrupted: not candidates for a missing `stop`.
        self.outcomes_checked.update(reply.pk for reply in abandoned)
        gone = await self.recently_gone_agent_ids()
        if took_over:
            gone.append(self.config.agent_id)  # Its previous holder is gone: we took over.
        await self.announce_unsaid_outcomes(gone)
        return abandoned

    async def recently_gone_agent_ids(self) -> list[str]:
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
            if reply.pk in self.outcomes_checked:
                continue
            self.outcomes_checked.add(reply.pk)
            if await self._stop_on_channel(reply) is False:
                await self.announce_outcome(reply)
                announced += 1
        return announced

    async def announce_last_unsaid_outcomes(
        self, agent_ids: list[str], owns: Callable[[str], bool]
    ) -> int:
        """`announce_unsaid_outcomes` for what an agent that just left the control channel may
        have left unsaid, in the conversations `owns` accepts: its latest finished reply in
        each, the only one a crash can have cut off between the save and the `stop` (the ones
        before it were announced before it started). Run at the takeover, ~15 s after a kill
        -9, so those devices need not wait for its lease to lapse (the janitor's pass). Returns
        how many were announced."""
        if not agent_ids:
            return 0
        since = store.now() - datetime.timedelta(seconds=UNSAID_TAKEOVER_WINDOW)
        finished = await db_retrying(store.finished_replies_of, agent_ids, since)
        latest: dict[str, Message] = {}
        for reply in sorted(finished, key=lambda r: r.completed_at or r.created_at):
            if owns(str(reply.conversation_id)):
                latest[str(reply.conversation_id)] = reply  # the later one wins
        unchecked = [r for r in latest.values() if r.pk not in self.outcomes_checked]
        self.outcomes_checked.update(r.pk for r in unchecked)

        async def check(reply: Message) -> bool:
            if await self._stop_on_channel(reply) is False:
                await self.announce_outcome(reply)
                return True
            return False

        return sum(await _a_few_at_once(check, unchecked))

    async def _reply_history(self, reply: Message) -> list[AblyMessage]:
        """Every message of this reply (by responseId) in its channel's history, oldest first.

        Read over REST from a little before the reply was claimed; raises if history cannot be
        read (the callers decide what "unknown" means for them).
        """
        response_id = str(reply.response_id)
        since_ms = int(reply.created_at.timestamp() * 1000) - 5_000
        assert self.pool.rest is not None
        history = await self.pool.rest.history(
            events.conversation_channel(reply.conversation_id),
            start_ms=since_ms,
            direction="forwards",
        )
        return [
            message
            for message in history
            if ((message.extras or {}).get("headers") or {}).get("responseId") == response_id
        ]

    async def _stop_on_channel(self, reply: Message) -> bool | None:
        """Whether the agent's `stop` for this reply is in channel history (None: unknown)."""
        try:
            history = await self._reply_history(reply)
        except Exception as error:  # noqa: BLE001 - unknown: leave it (a reload is right)
            logger.warning("could not read reply %s's history: %r", reply.response_id, error)
            return None
        folded = fold(history, self.config.agent_client_id).replies.get(str(reply.response_id))
        return folded is not None and bool(folded.stops)

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
                    functools.partial(self._publish_on, connection, channel_name, event),
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

    async def announce_all_interrupted(self, replies: Iterable[Message]) -> None:
        """`announce_interrupted` for each, up to ANNOUNCE_CONCURRENCY at once. One that fails
        does not hold back the others; the first failure is raised once all are done."""
        await _a_few_at_once(self.announce_interrupted, replies)

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
        try:
            history = await self._reply_history(reply)
        except Exception as error:  # noqa: BLE001 - the reply stays interrupted, just textless
            logger.warning(
                "could not read reply %s back from history: %r", reply.response_id, error
            )
            return "", ""
        # The same fold devices use, trusting only the agent's clientId (a participant's forged
        # `response` must not become the recorded text).
        folded = fold(history, self.config.agent_client_id).replies.get(str(reply.response_id))
        return (folded.text, folded.thinking) if folded is not None else ("", "")
