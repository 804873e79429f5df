"""What the agent reads from the database. Writes live in `conversations.actions`.

Every function is synchronous and short; the agent calls them through `db()`, which runs them
in Django's thread for sync code and closes stale connections around each unit of work.
`db_retrying()` does the same and tries again, with backoff and a deadline, when the database
fails transiently (SQLite `database is locked`, a dropped Postgres connection): what the agent
must not lose (a prompt, a reply's outcome) goes through it.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

from asgiref.sync import sync_to_async
from django.contrib.auth import get_user_model
from django.db import (
    InterfaceError,
    OperationalError,
    close_old_connections,
    connection,
    transaction,
)
from django.db.models import Exists, F, OuterRef, Q
from django.utils import timezone

from conversations import actions, events, realtime, tree
from conversations.agent import attachments
from conversations.agent.model import CHARS_PER_TOKEN
from conversations.models import AgentLease, Conversation, Message

P = ParamSpec("P")
R = TypeVar("R")


# A rough token estimate: the budget only has to keep requests well inside the context window.
def estimate_tokens(text: str) -> int:
    return len(text) // CHARS_PER_TOKEN + 1


async def db(function: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    """Run one unit of ORM work from asyncio with fresh connection hygiene."""

    def unit() -> R:
        close_old_connections()
        try:
            return function(*args, **kwargs)
        finally:
            close_old_connections()

    return await sync_to_async(unit, thread_sensitive=True)()


logger = logging.getLogger(__name__)

# Errors that may pass: a lock held by another process, a connection that dropped, a server
# restarting. IntegrityError and DataError are answers, not accidents, and are never retried.
TRANSIENT_DB_ERRORS = (OperationalError, InterfaceError)
DB_RETRY_SECONDS = 30.0
DB_RETRY_FIRST_DELAY = 0.05
DB_RETRY_MAX_DELAY = 2.0


async def db_retrying(
    function: Callable[P, R],
    *args: P.args,
    **kwargs: P.kwargs,
) -> R:
    """`db()`, tried again on transient database errors for up to DB_RETRY_SECONDS.

    Each unit of work is its own transaction, so a failed attempt left nothing behind. The
    pauses are awaited on the event loop, never slept on Django's one database thread.
    """
    deadline = time.monotonic() + DB_RETRY_SECONDS
    delay = DB_RETRY_FIRST_DELAY
    attempt = 0
    while True:
        attempt += 1
        try:
            return await db(function, *args, **kwargs)
        except TRANSIENT_DB_ERRORS as error:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise
            pause = min(delay * (0.5 + random.random()), remaining)
            logger.warning(
                "%s failed (attempt %d: %r); trying again in %.2fs",
                getattr(function, "__name__", "database work"),
                attempt,
                error,
                pause,
            )
            await asyncio.sleep(pause)
            delay = min(delay * 2, DB_RETRY_MAX_DELAY)


def sender_may_write(conversation_id: Any, client_id: str | None) -> bool:
    """Whether the (Ably-verified) clientId belongs to a user who may write to the conversation."""
    pk = realtime.user_pk_from_client_id(client_id)
    if pk is None:
        return False
    sql, params = _sender_check.bind(user=pk, conversation=conversation_id)
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchone() is not None


def _sender_check_query(user: Any, conversation: Any) -> Any:
    User = get_user_model()  # noqa: N806 - Django's idiom
    # One query (issue 14): the user is never loaded, only named (`for_user` stays the one rule
    # of who may write), and whether it is active is asked in the same statement.
    active = User.objects.filter(pk=user, is_active=True)
    return (
        Conversation.objects.for_user(User(pk=user))
        .filter(Exists(active), pk=conversation)
        .query.exists()
    )


class CompiledQuery:
    """An ORM query compiled once per database vendor, run again with other values.

    Compiling was most of the cost of a query this small (issue 14: asked for the first prompt
    of every conversation the agent attaches). The query is built from placeholder values, one
    per parameter (a value no row has), and each call swaps in its own values, converted by
    the same model field as the placeholder was. The ORM stays the one statement of the rule.
    """

    def __init__(
        self, build: Callable[..., Any], placeholders: dict[str, tuple[Any, Callable[[], Any]]]
    ) -> None:
        # placeholders: name -> (placeholder value, the model field that converts it).
        self._build = build
        self._placeholders = placeholders
        self._compiled: dict[str, tuple[str, list[Any], dict[int, str]]] = {}

    def _prepare(self, name: str, value: Any) -> Any:
        return self._placeholders[name][1]().get_db_prep_value(value, connection)

    def bind(self, **values: Any) -> tuple[str, list[Any]]:
        compiled = self._compiled.get(connection.vendor)
        if compiled is None:
            query = self._build(**{n: p for n, (p, _) in self._placeholders.items()})
            sql, params = query.get_compiler(connection=connection).as_sql()
            prepared = {self._prepare(n, p): n for n, (p, _) in self._placeholders.items()}
            slots = {i: prepared[v] for i, v in enumerate(params) if v in prepared}
            if set(slots.values()) != set(self._placeholders):
                raise RuntimeError(f"a placeholder is missing from the compiled query: {sql}")
            compiled = self._compiled[connection.vendor] = (sql, list(params), slots)
        sql, params, slots = compiled
        bound = list(params)
        for index, name in slots.items():
            bound[index] = self._prepare(name, values[name])
        return sql, bound


_sender_check = CompiledQuery(
    _sender_check_query,
    {
        "user": (-7_040_911, lambda: get_user_model()._meta.pk),
        "conversation": (
            uuid.UUID("5e4de2c4-0000-4000-8000-00000000c0de"),
            lambda: Conversation._meta.pk,
        ),
    },
)


def conversation_exists(conversation_id: Any) -> bool:
    # Raw: asked for every conversation the agent attaches (issue 14, see `actions`' "The
    # agent's per-reply units"); the ORM's compile is most of the cost of so small a query.
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT 1 FROM {Conversation._meta.db_table} WHERE id = %s",
            [Conversation._meta.pk.get_db_prep_value(conversation_id, connection)],
        )
        return cursor.fetchone() is not None


def prompts_since(client_id: str, since: datetime.datetime, *, excluding: Any = None) -> int:
    """How many prompts this clientId sent since `since` (for the per-user rate limit)."""
    prompts = Message.objects.filter(
        role=Message.Role.USER, client_id=client_id, created_at__gte=since
    )
    if excluding is not None:
        prompts = prompts.exclude(pk=excluding)
    return prompts.count()


def answered_prompt_ids(prompt_ids: list[str]) -> set[str]:
    """Which of these prompts already have their first reply (claimed by any agent)."""
    replied = Message.objects.filter(
        role=Message.Role.ASSISTANT, prompt_id__in=prompt_ids, request_id=F("prompt_id")
    )
    return {str(value) for value in replied.values_list("prompt_id", flat=True)}


def request_answered(prompt_id: str, request_id: str) -> bool:
    """Whether a version request (Regenerate, Retry) of this prompt was claimed already."""
    return Message.objects.filter(
        role=Message.Role.ASSISTANT, prompt_id=prompt_id, request_id=request_id
    ).exists()


def stored_prompt(conversation_id: Any, prompt_id: str) -> Message | None:
    return Message.objects.filter(
        conversation_id=conversation_id, role=Message.Role.USER, prompt_id=prompt_id
    ).first()


def earlier_replies_in_progress(prompt: Message, *, including_own: bool = False) -> list[Message]:
    """Replies to earlier prompts of the same conversation that are still streaming.

    `including_own`: a new version of `prompt`'s reply also waits for the version streaming now
    (issue 16's policy: a Regenerate queues behind the reply in progress, never cancels it).
    """
    before = (
        Q(created_at__lte=prompt.created_at)
        if including_own
        else Q(created_at__lt=prompt.created_at)
    )
    earlier_prompts = Message.objects.filter(
        before, conversation_id=prompt.conversation_id, role=Message.Role.USER
    ).values("prompt_id")
    return list(
        Message.objects.filter(
            conversation_id=prompt.conversation_id,
            role=Message.Role.ASSISTANT,
            status=Message.Status.STREAMING,
            prompt_id__in=earlier_prompts,
        )
    )


def streaming_replies(conversation_id: Any) -> list[Message]:
    return list(
        Message.objects.filter(
            conversation_id=conversation_id,
            role=Message.Role.ASSISTANT,
            status=Message.Status.STREAMING,
        )
    )


def streaming_replies_of(agent_ids: list[str]) -> list[Message]:
    """`streaming` replies written by these agent ids (agents that left the control channel)."""
    return list(
        Message.objects.filter(
            role=Message.Role.ASSISTANT,
            status=Message.Status.STREAMING,
            agent_id__in=agent_ids,
        )
    )


def replies_of_gone_agents(stale_before: datetime.datetime) -> list[Message]:
    """`streaming` replies whose agent id's lease lapsed before `stale_before` (its holder has
    not renewed it since, so it is known gone) or was released (it shut down)."""
    lapsed = AgentLease.objects.filter(heartbeat_at__lt=stale_before).values("agent_id")
    return list(
        Message.objects.filter(
            role=Message.Role.ASSISTANT,
            status=Message.Status.STREAMING,
            agent_id__in=lapsed,
        )
    )


def recently_lapsed_agent_ids(
    *, lapsed_before: datetime.datetime, since: datetime.datetime
) -> list[str]:
    """Agent ids whose lease lapsed lately: their holder stopped renewing it between `since`
    and `lapsed_before` (a lease released at shutdown is dated long before `since`)."""
    lapsed = AgentLease.objects.filter(heartbeat_at__lt=lapsed_before, heartbeat_at__gte=since)
    return list(lapsed.values_list("agent_id", flat=True))


def finished_replies_of(agent_ids: list[str], since: datetime.datetime) -> list[Message]:
    """Replies these agents finished (any final status) since `since`."""
    return list(
        Message.objects.filter(
            role=Message.Role.ASSISTANT, agent_id__in=agent_ids, completed_at__gte=since
        ).exclude(status=Message.Status.STREAMING)
    )


def conversations_with_recent_activity(since: datetime.datetime) -> list[str]:
    """Conversations worth attaching at start-up: active lately or holding an unanswered prompt."""
    unanswered = Message.objects.filter(
        role=Message.Role.USER, conversation=OuterRef("pk"), created_at__gte=since
    ).exclude(prompt_id__in=Message.objects.filter(role=Message.Role.ASSISTANT).values("prompt_id"))
    conversations = Conversation.objects.filter(Q(updated_at__gte=since) | Exists(unanswered))
    return [str(pk) for pk in conversations.values_list("pk", flat=True)]


@dataclass(frozen=True)
class ModelContext:
    system: str
    messages: list[dict[str, Any]]
    dropped_turns: int
    first_exchange: bool
    needs_title: bool


def model_context(prompt: Message, *, default_system: str, token_budget: int) -> ModelContext:
    """The conversation so far, newest turns kept within the budget, ending with `prompt`.

    Issue 16: "so far" is `prompt`'s own path (its ancestors), never another branch or version.
    Only turns whose reply has text go in (an errored, empty reply would leave two user turns
    in a row); a cancelled or interrupted reply contributes the text the user saw.
    """
    conversation = Conversation.objects.get(pk=prompt.conversation_id)
    with connection.cursor() as cursor:
        rows = actions.tree_rows(cursor, prompt.conversation_id, texts=True)
    return _model_context_from(
        conversation.system_prompt,
        rows,
        prompt,
        needs_title=not conversation.title and not conversation.title_set_by_user,
        default_system=default_system,
        token_budget=token_budget,
    )


def _model_context_from(
    system_prompt: str,
    rows: list[actions.TreeRow],
    prompt: Message,
    *,
    needs_title: bool,
    default_system: str,
    token_budget: int,
) -> ModelContext:
    """`model_context` from the conversation's system prompt and its rows, already loaded."""
    on_path = tree.path_to(rows, prompt.pk)
    # Files are looked up only when a turn on the path has some (issue 17): most have none.
    any_attached = any(row.attached for row in on_path)
    earlier = on_path[:-1]
    replies = {m.prompt_id: m for m in earlier if m.role == Message.Role.ASSISTANT and m.text}
    pairs = [
        (m, replies[m.prompt_id])
        for m in earlier
        if m.role == Message.Role.USER and m.prompt_id in replies
    ]
    system = system_prompt.strip() or default_system
    budget = token_budget - estimate_tokens(system) - estimate_tokens(prompt.text)
    kept: list[tuple[actions.TreeRow, actions.TreeRow]] = []
    for user_turn, reply in reversed(pairs):
        cost = estimate_tokens(user_turn.text) + estimate_tokens(reply.text)
        if cost > budget:
            break
        budget -= cost
        kept.append((user_turn, reply))
    kept.reverse()
    messages: list[dict[str, Any]] = []
    user_messages: list[tuple[dict[str, Any], attachments.Turn]] = []
    for user_turn, reply in kept:
        messages.append({"role": "user", "content": user_turn.text})
        user_messages.append((messages[-1], user_turn))
        messages.append({"role": "assistant", "content": reply.text})
    messages.append({"role": "user", "content": prompt.text})
    user_messages.append((messages[-1], prompt))
    # Attachments (issue 17): files become content blocks within what is left of the budget.
    if any_attached:
        attachments.add_to_context(user_messages, budget)
    return ModelContext(
        system=system,
        messages=messages,
        dropped_turns=len(pairs) - len(kept),
        first_exchange=not pairs,
        needs_title=needs_title,
    )


@dataclass(frozen=True)
class Claim:
    """What one claim attempt found (see `claim_with_context`)."""

    # The reply row, now this agent's to answer; None if nothing was claimed.
    reply: Message | None = None
    # Earlier replies of the conversation still streaming: nothing was claimed, wait for them.
    waiting_for: tuple[Message, ...] = ()
    context: ModelContext | None = None
    # The shown path once the reply is in it.
    path: events.Path | None = None
    # Prompts the sender sent within the rate window before this one (0 when not counted).
    recent_prompts: int = 0


def claim_with_context(
    prompt: Message,
    *,
    response_id: str,
    model: str,
    agent_id: str,
    request_id: str | None,
    wait_for_earlier: bool,
    default_system: str,
    token_budget: int,
    rate_window_start: datetime.datetime | None,
) -> Claim:
    """Claim the reply and read all it needs to start, in one transaction.

    Everything a reply reads before it streams (earlier replies still in progress, the claim,
    the sender's recent prompts, the model context, the shown path) is one unit of work: one
    round to the database thread per reply instead of five. `wait_for_earlier`: when an earlier
    reply of the conversation is still streaming nothing is claimed and `waiting_for` says which
    (the caller settles orphans, waits and asks again).
    """
    including_own = request_id is not None
    with transaction.atomic():
        # First, one statement locks the conversation (a claim and an intake of the same
        # conversation take turns) and reads what the claim needs of it (issue 14).
        start = actions.start_claim(
            prompt,
            including_own=including_own,
            wait_for_earlier=wait_for_earlier,
            rate_window_start=rate_window_start,
        )
        if start is None:
            return Claim()  # the conversation was deleted: nothing to answer
        if start.waiting:
            earlier = earlier_replies_in_progress(prompt, including_own=including_own)
            if earlier:
                return Claim(waiting_for=tuple(earlier))
        reply = actions.claim_reply(
            prompt,
            response_id=response_id,
            model=model,
            agent_id=agent_id,
            request_id=request_id,
        )
        if reply is None:
            return Claim()
        # Read after the claim, so they hold the reply: the context and the shown path come
        # from the same rows. The conversation is locked, so its leaf is what the claim made it.
        with connection.cursor() as cursor:
            rows = actions.tree_rows(cursor, prompt.conversation_id, texts=True)
        moved = not actions.first_request(prompt, request_id) or (
            start.current_leaf_id == prompt.pk
        )
        context = _model_context_from(
            start.system_prompt,
            rows,
            prompt,
            needs_title=start.needs_title,
            default_system=default_system,
            token_budget=token_budget,
        )
        path = actions.path_event_from(rows, reply.pk if moved else start.current_leaf_id)
        recent = start.recent_prompts
    return Claim(reply=reply, context=context, path=path, recent_prompts=recent)


@dataclass(frozen=True)
class Intake:
    """A prompt taken in (see `record_prompt`)."""

    # None: the prompt already has its first reply (answered elsewhere; nothing stored).
    prompt: Message | None
    created: bool = False
    # Why its attachments may not be used (issue 17), or None.
    attachment_refusal: str | None = None
    # The shown path with the new prompt on it (None when it was stored before).
    path: events.Path | None = None
    # The conversation no longer exists (nothing stored): the sender must hear so.
    deleted: bool = False


def record_prompt(
    conversation_id: Any,
    *,
    prompt_id: str,
    text: str,
    client_id: str,
    parent_id: str | None,
    edit_of: str | None,
    attachment_ids: list[str],
) -> Intake:
    """Store a prompt, link its attachments and read the shown path: one transaction.

    A prompt whose first reply exists already (another agent answered it) is left alone; so
    is one to a conversation deleted since its sender was found allowed to write to it (the
    session remembers that, see `ConversationSession._may_write`).
    """
    with transaction.atomic():
        taken = actions.take_in_prompt(
            conversation_id,
            prompt_id=prompt_id,
            text=text,
            client_id=client_id,
            parent_id=parent_id,
            edit_of=edit_of,
        )
        if taken.prompt is None:
            return Intake(prompt=None, deleted=taken.deleted)
        refusal = attachments.link_to_prompt(taken.prompt, attachment_ids)
    return Intake(
        prompt=taken.prompt, created=taken.created, attachment_refusal=refusal, path=taken.path
    )


def owner_client_id(conversation_id: Any) -> str | None:
    conversation = Conversation.objects.select_related("owner").filter(pk=conversation_id).first()
    return realtime.client_id_for_user(conversation.owner) if conversation else None


def now() -> datetime.datetime:
    return timezone.now()
