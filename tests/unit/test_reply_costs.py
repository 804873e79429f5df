"""What one prompt and its reply cost the agent: database transactions and Ably messages.

A real `ConversationSession` on the real database, with a fake channel (no sockets) and a
scripted model: a prompt is heard, stored, answered, and its outcome written. Counted per
prompt after the first (the first also asks whether its sender may write here, once per
session): one transaction to take the prompt in, one to claim the reply with everything it
reads, one to write its outcome; and on the channel, besides the text, `start`, the path and
`stop` for the reply, plus the path the new prompt made (issue 16). No presence update.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Awaitable, Iterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest
from ably.types.message import Message as AblyMessage
from django.db import transaction
from django.db.backends.utils import CursorWrapper

from conversations import events, realtime
from conversations.agent.reply import DatabaseReplyStore, ReplyRun
from conversations.agent.session import ConversationSession
from conversations.agent.streaming import RateLimiter
from conversations.models import Conversation, Message
from tests.unit.test_reply_lifecycle import (
    CONTROL_NAMES,
    WORDS,
    FakeChannel,
    ScriptedAnthropic,
    config,
    model_events,
    until,
)

pytestmark = pytest.mark.django_db(transaction=True)

# Statements that open or close a transaction rather than run in one.
TRANSACTION_CONTROL = ("BEGIN", "SAVEPOINT", "RELEASE", "ROLLBACK", "COMMIT", "SELECT 1")


@dataclass
class TransactionCounter:
    """Transactions on any thread: outermost atomic blocks, plus each statement run outside one
    (in autocommit every statement is its own transaction)."""

    atomic_blocks: int = 0
    autocommit_statements: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def transactions(self) -> int:
        return self.atomic_blocks + len(self.autocommit_statements)

    def reset(self) -> None:
        with self.lock:
            self.atomic_blocks = 0
            self.autocommit_statements = []


@pytest.fixture
def counter(monkeypatch: pytest.MonkeyPatch) -> Iterator[TransactionCounter]:
    counted = TransactionCounter()
    enter = transaction.Atomic.__enter__
    execute = CursorWrapper._execute_with_wrappers  # type: ignore[attr-defined]

    def counting_enter(self: transaction.Atomic) -> None:
        if not transaction.get_connection(self.using).in_atomic_block:
            with counted.lock:
                counted.atomic_blocks += 1
        enter(self)

    def counting_execute(self: CursorWrapper, sql: str, *args: Any, **kwargs: Any) -> Any:
        statement = str(sql).lstrip().upper()
        if not self.db.in_atomic_block and not statement.startswith(TRANSACTION_CONTROL):
            with counted.lock:
                counted.autocommit_statements.append(str(sql)[:80])
        return execute(self, sql, *args, **kwargs)

    monkeypatch.setattr(transaction.Atomic, "__enter__", counting_enter)
    monkeypatch.setattr(CursorWrapper, "_execute_with_wrappers", counting_execute)
    yield counted


class FakePresence:
    def __init__(self, channel: FakeChannel) -> None:
        self.channel = channel

    async def enter(self, data: dict[str, Any]) -> None:
        self.channel.statuses.append(f"enter:{data['status']}")

    async def update(self, data: dict[str, Any]) -> None:
        self.channel.statuses.append(str(data["status"]))

    async def get(self) -> list[Any]:
        return []

    async def leave(self) -> None:
        pass


class SessionChannel(FakeChannel):
    """The fake channel with what a session also uses: subscribe, presence, detach."""

    def __init__(self) -> None:
        super().__init__()
        self.presence = FakePresence(self)

    async def subscribe(self, listener: Any) -> None:
        pass

    def unsubscribe(self, listener: Any) -> None:
        pass

    async def detach(self) -> None:
        pass


@dataclass
class FakeHost:
    """The agent process as a session sees it (`session.SessionHost`)."""

    config: Any
    anthropic: Any
    reply_store: DatabaseReplyStore
    pool: Any = None
    titles: Any = None
    recovery: Any = None
    run_slots: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(4))
    runs: set[ReplyRun] = field(default_factory=set)
    stopping: bool = False
    hard_deadline: float = float("inf")
    tasks: set[asyncio.Future[Any]] = field(default_factory=set)

    def spawn(self, coroutine: Awaitable[Any]) -> None:
        self.tasks.add(asyncio.ensure_future(coroutine))

    def live_agent_ids(self) -> frozenset[str] | None:
        return None


def prompt_message(client_id: str, text: str) -> AblyMessage:
    prompt = events.Prompt(str(uuid.uuid4()), text)
    return AblyMessage(
        name=str(prompt.name),
        data=prompt.data(),
        extras=prompt.extras(),
        client_id=client_id,
        id=uuid.uuid4().hex,
    )


async def test_a_prompt_and_its_reply_cost_three_transactions_and_four_control_messages(
    alice: Any, counter: TransactionCounter
) -> None:
    conversation = await Conversation.objects.acreate(owner=alice)
    list_changes: list[tuple[str, str]] = []
    settings = config(prompt_rate_limit_per_minute=20)
    model = ScriptedAnthropic(model_events(WORDS))
    host = FakeHost(
        settings,
        model,
        DatabaseReplyStore(
            settings, lambda channel, event: list_changes.append((channel, str(event.name)))
        ),
    )
    channel = SessionChannel()
    connection = SimpleNamespace(
        client=SimpleNamespace(channels=SimpleNamespace(get=lambda name: channel)),
        limiter=RateLimiter(1000),
        touch=lambda name: None,
    )
    session = ConversationSession(host, str(conversation.pk), connection)  # type: ignore[arg-type]
    await session.open(history_since_ms=None)
    sender = realtime.client_id_for_user(alice)
    counter.reset()

    async def answer(text: str) -> None:
        stops = channel.names().count(events.Name.STOP)
        session._on_message(prompt_message(sender, text))
        await until(lambda: channel.names().count(events.Name.STOP) > stops)
        await until(lambda: not session.busy and all(t.done() for t in host.tasks))

    await answer("First, which also asks whether its sender may write here.")
    assert channel.statuses == ["enter:idle"]
    # The sender check (one read: the user and the conversation together), then the same three
    # as below.
    assert counter.transactions == 4, counter.autocommit_statements
    assert len(counter.autocommit_statements) == 1

    counter.reset()
    sent_before = len(channel.sent)
    await answer("Second.")
    assert counter.transactions == 3, counter.autocommit_statements
    assert counter.autocommit_statements == []

    second = channel.sent[sent_before:]
    control = [s.name for s in second if s.name in CONTROL_NAMES]
    # The prompt's path, then the reply's start, its path and its stop.
    assert control == [events.Name.PATH, events.Name.START, events.Name.PATH, events.Name.STOP]
    # The create carries the first text: no empty message.
    assert all(s.data for s in second if s.name == events.Name.RESPONSE)
    assert channel.statuses == ["enter:idle"]  # no presence update per reply

    replies = [m async for m in Message.objects.filter(role=Message.Role.ASSISTANT)]
    assert [r.status for r in replies] == ["complete", "complete"]
    assert [r.text for r in replies] == ["Hello there, how are you?"] * 2
    # The owner's list hears of each reply's activity, handed over after commit.
    owner_channel = events.user_channel(sender)
    assert list_changes == [(owner_channel, events.Name.CONVERSATION)] * 2
    await session.close()
