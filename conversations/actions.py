"""Every state change that has side effects, and the only place realtime publishes start.

Each action writes inside a transaction and publishes after it commits, so a device never hears
about a change that rolled back. Web actions come first; the agent's are in the section below.
"""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

from django.db import IntegrityError, connection, transaction
from django.db.backends.utils import CursorWrapper
from django.db.models import Q
from django.utils import timezone

from . import events, realtime, tree
from .models import AgentLease, Attachment, Conversation, Message
from .text import storable


def _publish_on_commit(channel: str, event: realtime.Event) -> None:
    transaction.on_commit(lambda: realtime.publish(channel, event))


def _list_change(
    conversation: Conversation, action: events.ListAction
) -> events.ConversationChange:
    return events.ConversationChange(
        action=action,
        conversation_id=str(conversation.pk),
        title=conversation.title,
        updated_at=conversation.updated_at.isoformat() if conversation.updated_at else "",
        extra={"archived": conversation.archived, "url": conversation.get_absolute_url()},
    )


def publish_list_change(conversation: Conversation, action: events.ListAction) -> None:
    """Tell all the owner's devices that one conversation in their list changed."""
    channel = events.user_channel(realtime.client_id_for_user(conversation.owner))
    _publish_on_commit(channel, _list_change(conversation, action))


def create_conversation(owner: Any, *, title: str = "", announce: bool = True) -> Conversation:
    """`announce=False`: no list change yet (made for a draft's first file, it is still empty)."""
    with transaction.atomic():
        conversation = Conversation.objects.create(
            owner=owner, title=storable(title), title_set_by_user=bool(title)
        )
        if announce:
            publish_list_change(conversation, events.ListAction.CREATED)
    return conversation


def rename_conversation(conversation: Conversation, title: str) -> Conversation:
    """Set a title the user chose; it wins over any title the model suggests later."""
    title = storable(title)
    with transaction.atomic():
        conversation.title = title
        conversation.title_set_by_user = True
        # Not `updated_at`: a rename is not activity and must not reorder the list.
        conversation.save(update_fields=["title", "title_set_by_user"])
        _publish_on_commit(conversation.channel_name, events.Title(title=title))
        publish_list_change(conversation, events.ListAction.RENAMED)
    return conversation


def set_archived(conversation: Conversation, archived: bool) -> Conversation:
    with transaction.atomic():
        conversation.archived = archived
        conversation.save(update_fields=["archived"])
        action = events.ListAction.ARCHIVED if archived else events.ListAction.UNARCHIVED
        publish_list_change(conversation, action)
    return conversation


def delete_conversation(conversation: Conversation) -> None:
    delete_conversations([conversation])


def delete_conversations(conversations: Iterable[Conversation]) -> None:
    """Delete; tell the owners' devices; then revoke the Ably tokens those devices hold.

    A token already issued lists the deleted conversation's channel (and could read its
    history) until it expires: revoking the owners' tokens makes their devices renew, and the
    new tokens no longer list it. Once per owner, after the publishes, as it takes a moment.
    """
    owners: set[str] = set()
    with transaction.atomic():
        for conversation in conversations:
            # The event is built before the row (and its primary key) is gone.
            change = _list_change(conversation, events.ListAction.DELETED)
            owner = realtime.client_id_for_user(conversation.owner)
            conversation.delete()
            _publish_on_commit(events.user_channel(owner), change)
            owners.add(owner)
        if owners:
            transaction.on_commit(lambda: realtime.revoke_tokens(owners))


def revoke_ably_tokens(users: Iterable[Any]) -> None:
    """Once the current transaction commits, revoke every Ably token these users hold.

    For users deleted or deactivated: a token already issued would otherwise keep its channels
    until it expires (ABLY_TOKEN_TTL_SECONDS), and they can no longer get a new one.
    """
    client_ids = {realtime.client_id_for_user(user) for user in users}
    if client_ids:
        transaction.on_commit(lambda: realtime.revoke_tokens(client_ids))


# --- Agent-side actions ---
# Called by `conversations.agent` (through sync_to_async) as it answers prompts. Each is one short
# unit of work; no write happens per token.


# The agent's per-reply units (intake, claim, finish) run on its one database thread for every
# prompt: built with the ORM they were ~30 queries and ~10 ms of CPU per reply, over half of it
# Django compiling the SQL (issue 14). So their fixed statements are written here once, as SQL
# with `%s` parameters that both SQLite and Postgres take (`connection.cursor()` converts the
# placeholders), and every value goes through its model field's `get_db_prep_*`, as the ORM
# would send it. Constants are inlined (never user data) so SQLite can use the partial indexes.
# The rare branches (a replayed prompt, a lost race, earlier replies to wait for) use the ORM.

_M = Message._meta.db_table
_C = Conversation._meta.db_table
_ATTACHED = Attachment.messages.through._meta.db_table
_USER = f"'{Message.Role.USER.value}'"
_ASSISTANT = f"'{Message.Role.ASSISTANT.value}'"
_STREAMING = f"'{Message.Status.STREAMING.value}'"


def _db(model: Any, field: str, value: Any) -> Any:
    """`value` as the backend stores `model.field` (a UUID as hex on SQLite, datetimes in UTC)."""
    return model._meta.get_field(field).get_db_prep_value(value, connection, prepared=False)


def _uuid(value: Any) -> uuid.UUID | None:
    """A UUID column as read raw: a `UUID` from Postgres, its hex string from SQLite."""
    if value is None or isinstance(value, uuid.UUID):
        return value
    return uuid.UUID(value)


def _for_update(sql: str, table: str) -> str:
    """Lock the row read from `table` (its alias) until commit (Postgres). SQLite has no row locks and
    needs none: its IMMEDIATE transactions (settings.py) hold the write lock from the start."""
    return f"{sql} FOR UPDATE OF {table}" if connection.features.has_select_for_update else sql


_insert_statement: tuple[str, list[Any]] | None = None


def _insert_new(message: Message) -> bool:
    """INSERT the unsaved `message` unless one of its unique constraints already holds a row
    (`ON CONFLICT DO NOTHING`, in both backends: no savepoint to catch an IntegrityError).

    True and `message.pk` set when inserted; False when the row was there (a prompt stored
    before, a request another agent claimed). Values as `Model.save()` would write them.
    """
    global _insert_statement
    if _insert_statement is None:
        fields = [f for f in Message._meta.concrete_fields if not f.primary_key]
        columns = ", ".join(connection.ops.quote_name(f.column) for f in fields)
        values = ", ".join(["%s"] * len(fields))
        sql = f"INSERT INTO {_M} ({columns}) VALUES ({values}) ON CONFLICT DO NOTHING"
        _insert_statement = (sql, fields)
    sql, fields = _insert_statement
    params = [f.get_db_prep_save(f.pre_save(message, True), connection) for f in fields]
    with connection.cursor() as cursor:
        if connection.features.can_return_columns_from_insert:
            cursor.execute(f"{sql} RETURNING id", params)
            row = cursor.fetchone()
            if row is None:
                return False
            pk = row[0]
        else:
            cursor.execute(sql, params)
            if cursor.rowcount != 1:
                return False
            pk = cursor.lastrowid
    message.pk = pk
    message._state.adding = False
    message._state.db = connection.alias
    return True


class TreeRow(NamedTuple):
    """The columns of a message the tree, the path and the model context read (`tree.Node`)."""

    pk: int
    parent_id: int | None
    role: str
    prompt_id: uuid.UUID
    response_id: uuid.UUID | None
    text: str = ""
    # Whether any attachment is linked to it (issue 17).
    attached: bool = False


def tree_rows(cursor: CursorWrapper, conversation_id: Any, *, texts: bool = False) -> list[TreeRow]:
    """A conversation's messages in `Message.Meta.ordering`, as rows: one statement, no model
    instances. `texts`: with their text and whether files are attached (for a model context)."""
    more = (
        f", m.text, EXISTS (SELECT 1 FROM {_ATTACHED} a WHERE a.message_id = m.id)" if texts else ""
    )
    cursor.execute(
        f"SELECT m.id, m.parent_id, m.role, m.prompt_id, m.response_id{more} FROM {_M} m"
        " WHERE m.conversation_id = %s ORDER BY m.created_at, m.id",
        [_db(Conversation, "id", conversation_id)],
    )
    return [
        TreeRow(
            row[0],
            row[1],
            row[2],
            uuid.UUID(row[3]) if isinstance(row[3], str) else row[3],
            _uuid(row[4]),
            *((row[5], bool(row[6])) if texts else ()),
        )
        for row in cursor.fetchall()
    ]


@dataclass(frozen=True)
class PromptTaken:
    """What `take_in_prompt` did."""

    # The stored prompt (just now, or before); None when answered already or deleted.
    prompt: Message | None
    created: bool = False
    # Its first reply exists already (another agent answered it): nothing was stored.
    answered: bool = False
    # The conversation no longer exists: nothing was stored.
    deleted: bool = False
    # The shown path with the new prompt on it (only when `created`).
    path: events.Path | None = None


def record_prompt(
    conversation_id: Any,
    *,
    prompt_id: str,
    text: str,
    client_id: str,
    parent_id: str | None = None,
    edit_of: str | None = None,
) -> tuple[Message, bool]:
    """Store a prompt once however often it is replayed (live, history catch-up, other agents).

    Returns the stored prompt and whether this call created it. A promptId already used in a
    different conversation raises ValueError: it cannot be the same prompt.

    Issue 16: the new prompt goes in the tree where the device put it (`edit_of`: beside that
    prompt; `parent_id`: after that message; else after the shown path's leaf) and becomes the
    shown path's leaf.
    """
    taken = take_in_prompt(
        conversation_id,
        prompt_id=prompt_id,
        text=text,
        client_id=client_id,
        parent_id=parent_id,
        edit_of=edit_of,
        unless_answered=False,
    )
    if taken.prompt is None:
        raise IntegrityError(f"conversation {conversation_id} does not exist")
    return taken.prompt, taken.created


def take_in_prompt(
    conversation_id: Any,
    *,
    prompt_id: str,
    text: str,
    client_id: str,
    parent_id: str | None = None,
    edit_of: str | None = None,
    unless_answered: bool = True,
) -> PromptTaken:
    """`record_prompt` for the agent's intake, and the shown path it makes, in 3-4 statements.

    `unless_answered`: store nothing if the prompt's first reply exists (another agent answered
    it). Nothing is stored either in a conversation deleted since. A promptId already used in a
    different conversation raises ValueError.
    """
    with transaction.atomic(savepoint=False):
        taken = _take_in_prompt(
            conversation_id,
            prompt_id=prompt_id,
            text=text,
            client_id=client_id,
            parent_id=parent_id,
            edit_of=edit_of,
            unless_answered=unless_answered,
        )
    # Raised once the transaction has ended: nothing was written, and an outer transaction
    # that catches it can go on.
    if taken is None:
        raise ValueError("promptId already belongs to another conversation")
    return taken


_ANSWERED = (
    f"EXISTS (SELECT 1 FROM {_M} r WHERE r.role = {_ASSISTANT} AND r.prompt_id = %s"
    " AND r.request_id = r.prompt_id)"
)


def _take_in_prompt(
    conversation_id: Any,
    *,
    prompt_id: str,
    text: str,
    client_id: str,
    parent_id: str | None,
    edit_of: str | None,
    unless_answered: bool,
) -> PromptTaken | None:
    """`take_in_prompt` inside its transaction; None: the promptId is another conversation's."""
    conversation_pk = _db(Conversation, "id", conversation_id)
    prompt_key = _db(Message, "prompt_id", prompt_id)
    with connection.cursor() as cursor:
        # One statement: the conversation (locked: two prompts arriving at once each continue
        # the path the other made), whether the prompt was answered, whether it is stored.
        cursor.execute(
            _for_update(
                f"SELECT c.current_leaf_id, {_ANSWERED}, (SELECT u.id FROM {_M} u"
                f" WHERE u.role = {_USER} AND u.prompt_id = %s) FROM {_C} c WHERE c.id = %s",
                "c",
            ),
            [prompt_key, prompt_key, conversation_pk],
        )
        found = cursor.fetchone()
        if found is None:
            cursor.execute(f"SELECT {_ANSWERED}", [prompt_key])
            answered = bool(cursor.fetchone()[0])
            if answered and unless_answered:
                return PromptTaken(prompt=None, answered=True)
            return PromptTaken(prompt=None, deleted=True)
        leaf_pk, answered, stored_pk = found
        if answered and unless_answered:
            return PromptTaken(prompt=None, answered=True)
        if stored_pk is not None:
            return _stored_prompt(stored_pk, conversation_id)
        rows = tree_rows(cursor, conversation_id)
        parent = _prompt_parent(rows, leaf_pk, parent_id=parent_id, edit_of=edit_of)
        prompt = Message(
            prompt_id=prompt_id,
            role=Message.Role.USER,
            conversation_id=conversation_id,
            client_id=client_id,
            text=storable(text),
            status=Message.Status.COMPLETE,
            parent_id=parent.pk if parent is not None else None,
        )
        # The unique constraint on (prompt_id, role=user) settles a race with another process:
        # the loser reads the winner's row.
        if not _insert_new(prompt):
            winner = Message.objects.filter(prompt_id=prompt_id, role=Message.Role.USER).first()
            if winner is None:
                raise IntegrityError(f"prompt {prompt_id} was neither stored nor found")
            return _stored_prompt(winner.pk, conversation_id, winner)
        cursor.execute(
            f"UPDATE {_C} SET updated_at = %s, current_leaf_id = %s WHERE id = %s",
            [_db(Conversation, "updated_at", timezone.now()), prompt.pk, conversation_pk],
        )
    path = tree.path_to(rows, parent.pk) if parent is not None else []
    ids = (*(tree.wire_id(row) for row in path), str(_uuid(prompt_id)))
    return PromptTaken(prompt=prompt, created=True, path=events.Path(ids=ids))


def _stored_prompt(
    pk: int, conversation_id: Any, stored: Message | None = None
) -> PromptTaken | None:
    prompt = stored or Message.objects.get(pk=pk)
    if str(prompt.conversation_id) != str(conversation_id):
        return None
    return PromptTaken(prompt=prompt, created=False)


def _prompt_parent(
    rows: list[TreeRow], leaf_pk: int | None, *, parent_id: str | None, edit_of: str | None
) -> TreeRow | None:
    """Where a new prompt goes in the tree, from the conversation's rows (issue 16)."""
    by_pk = {row.pk: row for row in rows}
    edited_id, after_id = _uuid_or_none(edit_of), _uuid_or_none(parent_id)
    if edited_id is not None:
        edited = next(
            (r for r in rows if r.role == Message.Role.USER and r.prompt_id == edited_id), None
        )
        if edited is not None:
            return by_pk.get(edited.parent_id) if edited.parent_id is not None else None
    parent = None
    if after_id is not None:
        parent = next((r for r in rows if r.response_id == after_id), None) or next(
            (r for r in rows if r.role == Message.Role.USER and r.prompt_id == after_id), None
        )
    if parent is None and leaf_pk is not None:
        parent = by_pk.get(leaf_pk)
    if parent is not None and parent.role == Message.Role.USER:
        # The device sent it before that prompt's reply started: it continues the reply (the
        # rows are in creation order, so the first one found is the first reply).
        first_reply = next(
            (r for r in rows if r.role == Message.Role.ASSISTANT and r.parent_id == parent.pk),
            None,
        )
        parent = first_reply or parent
    return parent


def _uuid_or_none(value: str | None) -> uuid.UUID | None:
    if not value:
        return None
    try:
        return uuid.UUID(str(value))
    except ValueError:
        return None  # no message has it


def first_request(prompt: Message, request_id: str | None) -> bool:
    """Whether `request_id` asks for the prompt's first reply (not a Regenerate or Retry)."""
    return request_id is None or str(request_id) == str(prompt.prompt_id)


@dataclass(frozen=True)
class ClaimStart:
    """The conversation as a claim finds it (see `start_claim`)."""

    system_prompt: str
    needs_title: bool
    current_leaf_id: int | None
    # An earlier reply of the conversation may still be streaming (`store` reads which).
    waiting: bool
    # The sender's other prompts since the rate window's start (0 when not asked).
    recent_prompts: int


def start_claim(
    prompt: Message,
    *,
    including_own: bool,
    wait_for_earlier: bool,
    rate_window_start: datetime.datetime | None,
) -> ClaimStart | None:
    """Lock the prompt's conversation for a claim and read what the claim needs of it, in one
    statement; None if the conversation is gone. Inside the claim's transaction.

    `wait_for_earlier`: whether replies to earlier prompts (with `including_own`, to this one
    too) are still streaming, as `store.earlier_replies_in_progress` reads them.
    """
    columns = ["c.system_prompt", "c.title", "c.title_set_by_user", "c.current_leaf_id"]
    params: list[Any] = []
    if wait_for_earlier:
        before = "<=" if including_own else "<"
        columns.append(
            f"EXISTS (SELECT 1 FROM {_M} r WHERE r.conversation_id = c.id"
            f" AND r.role = {_ASSISTANT} AND r.status = {_STREAMING} AND r.prompt_id IN"
            f" (SELECT u.prompt_id FROM {_M} u WHERE u.conversation_id = c.id"
            f" AND u.role = {_USER} AND u.created_at {before} %s))"
        )
        params.append(_db(Message, "created_at", prompt.created_at))
    if rate_window_start is not None:
        columns.append(
            f"(SELECT COUNT(*) FROM {_M} u WHERE u.role = {_USER} AND u.client_id = %s"
            " AND u.created_at >= %s AND u.id <> %s)"
        )
        params += [
            str(prompt.client_id),
            _db(Message, "created_at", rate_window_start),
            prompt.pk,
        ]
    sql = f"SELECT {', '.join(columns)} FROM {_C} c WHERE c.id = %s"
    params.append(_db(Conversation, "id", prompt.conversation_id))
    with connection.cursor() as cursor:
        cursor.execute(_for_update(sql, "c"), params)
        row = cursor.fetchone()
    if row is None:
        return None
    system_prompt, title, title_set_by_user, leaf_pk, *more = row
    return ClaimStart(
        system_prompt=system_prompt,
        needs_title=not title and not title_set_by_user,
        current_leaf_id=leaf_pk,
        waiting=bool(more.pop(0)) if wait_for_earlier else False,
        recent_prompts=int(more.pop(0)) if rate_window_start is not None else 0,
    )


def claim_reply(
    prompt: Message,
    *,
    response_id: str,
    model: str,
    agent_id: str,
    request_id: str | None = None,
) -> Message | None:
    """Create the reply row, which claims the version request for this agent process.

    `request_id`: a Regenerate/Retry request; None for the prompt's first reply (whose request
    id is the prompt's own id). The unique constraint on (prompt_id, request_id, role=assistant)
    makes exactly one of any number of agent processes succeed; the others get None.

    Issue 16: the reply goes under its prompt. A first reply adopts prompts sent after its
    prompt before it started (they continue it) and becomes the leaf if its prompt was; a new
    version always becomes the shown path.
    """
    first = first_request(prompt, request_id)
    reply = Message(
        conversation_id=prompt.conversation_id,
        role=Message.Role.ASSISTANT,
        prompt_id=prompt.prompt_id,
        request_id=prompt.prompt_id if first else request_id,
        parent_id=prompt.pk,
        response_id=response_id,
        model=model,
        agent_id=agent_id,
        status=Message.Status.STREAMING,
    )
    try:
        # No savepoint: a claim lost to another agent is no error (`_insert_new`). Only a
        # conversation deleted meanwhile fails here (its foreign key), which
        # `store.claim_with_context` rules out by locking the conversation first.
        with transaction.atomic(savepoint=False):
            if not _insert_new(reply):
                return None
            conversation_pk = _db(Conversation, "id", prompt.conversation_id)
            with connection.cursor() as cursor:
                if first:
                    cursor.execute(
                        f"UPDATE {_M} SET parent_id = %s WHERE parent_id = %s AND role = {_USER}",
                        [reply.pk, prompt.pk],
                    )
                    cursor.execute(
                        f"UPDATE {_C} SET current_leaf_id = %s"
                        " WHERE id = %s AND current_leaf_id = %s",
                        [reply.pk, conversation_pk, prompt.pk],
                    )
                else:
                    cursor.execute(
                        f"UPDATE {_C} SET current_leaf_id = %s WHERE id = %s",
                        [reply.pk, conversation_pk],
                    )
            return reply
    except IntegrityError:
        return None


def shown_path(conversation_id: Any) -> list[Message]:
    """The conversation's shown path, root first (one query for the messages)."""
    leaf = (
        Conversation.objects.filter(pk=conversation_id)
        .values_list("current_leaf_id", flat=True)
        .first()
    )
    return tree.path_to(Message.objects.filter(conversation_id=conversation_id), leaf)


def path_event(conversation_id: Any) -> events.Path:
    return events.Path(ids=tuple(tree.wire_id(m) for m in shown_path(conversation_id)))


def path_event_from(messages: Iterable[tree.Node], leaf_pk: int | None) -> events.Path:
    """`path_event` from a conversation's messages and its `current_leaf_id`, already loaded."""
    return events.Path(ids=tuple(tree.wire_id(m) for m in tree.path_to(messages, leaf_pk)))


def select_version(conversation: Conversation, wire_id: str) -> events.Path | None:
    """Show the path through one message (a device flipped `< n/m >` to it); tell every device.

    The path continues below it along the newest child at each step. None (nothing changes)
    when no message of this conversation has that id.
    """
    with transaction.atomic():
        locked = Conversation.objects.select_for_update().get(pk=conversation.pk)
        messages = list(Message.objects.filter(conversation=locked))
        chosen = next((m for m in messages if tree.wire_id(m) == wire_id), None)
        if chosen is None:
            return None
        leaf = tree.newest_leaf_below(messages, chosen)
        locked.current_leaf = leaf
        # Not `updated_at`: looking at another version is not activity.
        locked.save(update_fields=["current_leaf"])
        event = events.Path(ids=tuple(tree.wire_id(m) for m in tree.path_to(messages, leaf.pk)))
        _publish_on_commit(locked.channel_name, event)
    return event


def finish_reply(
    reply: Message,
    *,
    status: events.Status,
    text: str,
    thinking: str = "",
    stop_reason: str = "",
    error: str = "",
    input_tokens: int = 0,
    output_tokens: int = 0,
    usage_estimated: bool = False,
    cache_creation_input_tokens: int = 0,
    cache_read_input_tokens: int = 0,
    first_token_at: Any = None,
    publish: Callable[[str, realtime.Event], None] | None = None,
) -> bool:
    """Write a reply's outcome, once. False if it was already final (e.g. swept as interrupted).

    `publish` sends the list change after commit (default `realtime.publish`, a blocking HTTP
    call); the agent passes one that sends it from its event loop (`realtime.publish_async`),
    so its database thread never waits on the network.
    `usage_estimated`: `output_tokens` is the agent's estimate, not the API's count (a reply
    stopped, failed or interrupted before the API reported it). `cache_*_input_tokens`: the
    prompt tokens the API wrote to / read from its prompt cache (not part of `input_tokens`).
    """
    now = timezone.now()
    values = {
        "status": str(status),
        "text": storable(text),
        "thinking": storable(thinking),
        "stop_reason": storable(stop_reason or ""),
        "error": storable(error),
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "usage_estimated": usage_estimated,
        "cache_creation_input_tokens": cache_creation_input_tokens,
        "cache_read_input_tokens": cache_read_input_tokens,
        "first_token_at": first_token_at,
        "completed_at": now,
    }
    # Two statements (see "The agent's per-reply units" above): the outcome, then the
    # conversation's activity, which returns what the list change needs.
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {_M} SET {', '.join(f'{name} = %s' for name in values)}"
            f" WHERE id = %s AND status = {_STREAMING}",
            [*(_db(Message, name, value) for name, value in values.items()), reply.pk],
        )
        updated = cursor.rowcount
        if updated:
            conversation = _touch_conversation(cursor, reply.conversation_id, now)
            change = _list_change(conversation, events.ListAction.ACTIVITY)
            channel = events.user_channel(realtime.client_id_for_user_pk(conversation.owner_id))
            send = publish or realtime.publish
            transaction.on_commit(lambda: send(channel, change))
    return bool(updated)


def _touch_conversation(
    cursor: CursorWrapper, conversation_id: Any, now: datetime.datetime
) -> Conversation:
    """Bump the conversation's `updated_at`; it, with what a list change shows of it."""
    sql = f"UPDATE {_C} SET updated_at = %s WHERE id = %s"
    params = [_db(Conversation, "updated_at", now), _db(Conversation, "id", conversation_id)]
    # Where INSERT ... RETURNING works (Postgres, SQLite >= 3.35), so does UPDATE ... RETURNING.
    if connection.features.can_return_columns_from_insert:
        cursor.execute(f"{sql} RETURNING title, archived, owner_id", params)
    else:
        cursor.execute(sql, params)
        cursor.execute(f"SELECT title, archived, owner_id FROM {_C} WHERE id = %s", params[1:])
    title, archived, owner_id = cursor.fetchone()
    return Conversation(
        id=conversation_id, title=title, archived=bool(archived), owner_id=owner_id, updated_at=now
    )


def interrupt_abandoned_replies(*, agent_id: str, stale_before: Any) -> list[Message]:
    """Mark `streaming` replies no live agent is writing as `interrupted`; return them.

    A reply is abandoned when it was claimed under this agent id (the process that owned it
    is gone: we are its restart; the caller holds the id's lease, which it only takes from a
    dead or lapsed holder) or when it has been streaming since before `stale_before` (its
    agent never came back).
    """
    with transaction.atomic():
        abandoned = list(
            Message.objects.select_for_update()
            .filter(role=Message.Role.ASSISTANT, status=Message.Status.STREAMING)
            .filter(Q(agent_id=agent_id) | Q(created_at__lt=stale_before))
        )
        now = timezone.now()
        for reply in abandoned:
            reply.status = Message.Status.INTERRUPTED
            reply.stop_reason = "interrupted"
            reply.completed_at = now
            reply.save(update_fields=["status", "stop_reason", "completed_at"])
    return abandoned


def apply_generated_title(conversation_id: Any, title: str) -> bool:
    """Save the model's title unless the user has named the conversation; tell every device."""
    title = storable(title)
    with transaction.atomic():
        unnamed = Conversation.objects.filter(pk=conversation_id, title_set_by_user=False)
        updated = unnamed.update(title=title)
        if updated:
            conversation = Conversation.objects.select_related("owner").get(pk=conversation_id)
            _publish_on_commit(conversation.channel_name, events.Title(title=title))
            publish_list_change(conversation, events.ListAction.RENAMED)
    return bool(updated)


def record_interrupted_text(
    reply: Message, *, text: str, thinking: str, output_tokens: int = 0
) -> None:
    """Keep what devices saw of an interrupted reply (read back from the channel's history),
    with an estimate of the output tokens it cost: the process that streamed it died before
    writing the API's count."""
    Message.objects.filter(pk=reply.pk, status=Message.Status.INTERRUPTED).update(
        text=storable(text),
        thinking=storable(thinking),
        output_tokens=output_tokens,
        usage_estimated=True,
    )


def interrupt_replies(reply_ids: list[int]) -> list[Message]:
    """Mark these replies `interrupted` if they are still `streaming`; return the ones marked.

    Several agents may find the same orphan at once: only the one whose update wins announces it.
    """
    with transaction.atomic():
        orphans = list(
            Message.objects.select_for_update().filter(
                pk__in=reply_ids, status=Message.Status.STREAMING
            )
        )
        now = timezone.now()
        for reply in orphans:
            reply.status = Message.Status.INTERRUPTED
            reply.stop_reason = "interrupted"
            reply.completed_at = now
            reply.save(update_fields=["status", "stop_reason", "completed_at"])
    return orphans


# --- Agent identity (see `conversations.agent.identity`) ---


def take_agent_lease(
    agent_id: str,
    *,
    instance: str,
    host: str,
    pid: int,
    lapsed_before: Any,
    holder_is_dead: Any,
) -> tuple[bool, AgentLease | None]:
    """Hold `agent_id` for this process if nobody live holds it.

    Free when there is no lease, when its holder last renewed it before `lapsed_before` (or
    released it), or when `holder_is_dead(lease)` (a process on this host that no longer
    exists). Returns whether this process now holds it, and the lease as it was before.
    """
    now = timezone.now()
    try:
        with transaction.atomic():
            lease = AgentLease.objects.select_for_update().filter(agent_id=agent_id).first()
            if lease is None:
                AgentLease.objects.create(
                    agent_id=agent_id,
                    instance=instance,
                    host=host,
                    pid=pid,
                    started_at=now,
                    heartbeat_at=now,
                )
                return True, None
            free = (
                lease.instance == instance
                or lease.heartbeat_at < lapsed_before
                or holder_is_dead(lease)
            )
            if not free:
                return False, lease
            previous = AgentLease(
                agent_id=lease.agent_id,
                instance=lease.instance,
                host=lease.host,
                pid=lease.pid,
                started_at=lease.started_at,
                heartbeat_at=lease.heartbeat_at,
            )
            AgentLease.objects.filter(agent_id=agent_id).update(
                instance=instance, host=host, pid=pid, started_at=now, heartbeat_at=now
            )
            return True, previous
    except IntegrityError:
        # Another process created the lease at the same moment: it holds it.
        return False, AgentLease.objects.filter(agent_id=agent_id).first()


def renew_agent_lease(agent_id: str, *, instance: str) -> bool:
    """Renew this process's lease; False if another process has taken it over."""
    renewed = AgentLease.objects.filter(agent_id=agent_id, instance=instance).update(
        heartbeat_at=timezone.now()
    )
    return bool(renewed)


def release_agent_lease(agent_id: str, *, instance: str, released_at: Any) -> None:
    """Give the id up at shutdown: a lease renewed at `released_at` (long ago) has lapsed."""
    AgentLease.objects.filter(agent_id=agent_id, instance=instance).update(heartbeat_at=released_at)
