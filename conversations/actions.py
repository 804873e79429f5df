"""Every state change that has side effects, and the only place realtime publishes start.

Each action writes inside a transaction and publishes after it commits, so a device never hears
about a change that rolled back. Web actions come first; the agent's are in the section below.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from . import events, realtime, tree
from .models import AgentLease, Conversation, Message
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
    with transaction.atomic():
        existing = Message.objects.filter(prompt_id=prompt_id, role=Message.Role.USER).first()
        if existing is not None:
            if str(existing.conversation_id) != str(conversation_id):
                raise ValueError("promptId already belongs to another conversation")
            return existing, False
        # Locked: two prompts arriving at once each continue the path the other made.
        conversation = Conversation.objects.select_for_update().filter(pk=conversation_id).first()
        parent = (
            _prompt_parent(conversation, parent_id=parent_id, edit_of=edit_of)
            if conversation is not None
            else None
        )
        # Not `get_or_create`: its first query would repeat the lookup just made. The unique
        # constraint on (prompt_id, role=user) settles a race with another process, as it
        # would for `get_or_create` (which also falls back to reading the winner's row).
        try:
            with transaction.atomic():
                prompt = Message.objects.create(
                    prompt_id=prompt_id,
                    role=Message.Role.USER,
                    conversation_id=conversation_id,
                    client_id=client_id,
                    text=storable(text),
                    status=Message.Status.COMPLETE,
                    parent=parent,
                )
            created = True
        except IntegrityError:
            winner = Message.objects.filter(prompt_id=prompt_id, role=Message.Role.USER).first()
            if winner is None:
                raise  # not the prompt's constraint (as `get_or_create` re-raises it too)
            prompt, created = winner, False
        if str(prompt.conversation_id) != str(conversation_id):
            raise ValueError("promptId already belongs to another conversation")
        if created:
            Conversation.objects.filter(pk=conversation_id).update(
                updated_at=timezone.now(), current_leaf=prompt
            )
    return prompt, created


def _prompt_parent(
    conversation: Conversation, *, parent_id: str | None, edit_of: str | None
) -> Message | None:
    messages = Message.objects.filter(conversation=conversation)
    if edit_of:
        edited = messages.filter(role=Message.Role.USER, prompt_id=edit_of).first()
        if edited is not None:
            return edited.parent
    parent = None
    if parent_id:
        parent = (
            messages.filter(response_id=parent_id).first()
            or messages.filter(role=Message.Role.USER, prompt_id=parent_id).first()
        )
    if parent is None:
        parent = conversation.current_leaf
    if parent is not None and parent.role == Message.Role.USER:
        # The device sent it before that prompt's reply started: it continues the reply.
        first_reply = (
            messages.filter(role=Message.Role.ASSISTANT, parent=parent)
            .order_by("created_at", "id")
            .first()
        )
        parent = first_reply or parent
    return parent


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
    first = request_id is None or str(request_id) == str(prompt.prompt_id)
    try:
        with transaction.atomic():
            reply = Message.objects.create(
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
            conversations = Conversation.objects.filter(pk=prompt.conversation_id)
            if first:
                Message.objects.filter(parent_id=prompt.pk, role=Message.Role.USER).update(
                    parent=reply
                )
                conversations = conversations.filter(current_leaf_id=prompt.pk)
            conversations.update(current_leaf=reply)
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


def path_event_from(messages: Iterable[Message], leaf_pk: int | None) -> events.Path:
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
    with transaction.atomic():
        updated = Message.objects.filter(pk=reply.pk, status=Message.Status.STREAMING).update(
            status=str(status),
            text=storable(text),
            thinking=storable(thinking),
            stop_reason=storable(stop_reason or ""),
            error=storable(error),
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            usage_estimated=usage_estimated,
            cache_creation_input_tokens=cache_creation_input_tokens,
            cache_read_input_tokens=cache_read_input_tokens,
            first_token_at=first_token_at,
            completed_at=timezone.now(),
        )
        if updated:
            conversation = Conversation.objects.select_related("owner").get(
                pk=reply.conversation_id
            )
            # What `save(update_fields=["updated_at"])` writes, without a model save's work.
            conversation.updated_at = timezone.now()
            Conversation.objects.filter(pk=conversation.pk).update(
                updated_at=conversation.updated_at
            )
            if publish is None:
                publish_list_change(conversation, events.ListAction.ACTIVITY)
            else:
                change = _list_change(conversation, events.ListAction.ACTIVITY)
                channel = events.user_channel(realtime.client_id_for_user(conversation.owner))
                transaction.on_commit(lambda: publish(channel, change))
    return bool(updated)


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
