"""The agent's database work: idempotent prompts, the exactly-once claim, context and recovery."""

from __future__ import annotations

import datetime
import uuid

import pytest
from django.utils import timezone

from conversations import actions, events, realtime
from conversations.agent import store
from conversations.models import Conversation, Message

pytestmark = pytest.mark.django_db


@pytest.fixture
def outbox(monkeypatch, transactional_db):
    """Publishes captured instead of sent; real commits, so `on_commit` publishes run."""
    sent: list[realtime.PublishedEvent] = []
    monkeypatch.setattr(realtime, "outbox", sent)
    return sent


@pytest.fixture
def conversation(alice):
    return Conversation.objects.create(owner=alice)


def prompt(conversation, text="hi", **kw) -> Message:
    stored, _ = actions.record_prompt(
        conversation.pk,
        prompt_id=str(kw.pop("prompt_id", uuid.uuid4())),
        text=text,
        client_id=realtime.client_id_for_user(conversation.owner),
    )
    return stored


def answer(prompt_message, text="hello", status=events.Status.COMPLETE) -> Message:
    reply = actions.claim_reply(
        prompt_message, response_id=str(uuid.uuid4()), model="m", agent_id="a1"
    )
    actions.finish_reply(reply, status=status, text=text)
    reply.refresh_from_db()
    return reply


def test_a_replayed_prompt_is_stored_once(conversation):
    prompt_id = str(uuid.uuid4())
    first, created = actions.record_prompt(
        conversation.pk, prompt_id=prompt_id, text="hi", client_id="user-1"
    )
    again, created_again = actions.record_prompt(
        conversation.pk, prompt_id=prompt_id, text="hi", client_id="user-1"
    )
    assert (created, created_again) == (True, False)
    assert first.pk == again.pk
    assert Message.objects.filter(role=Message.Role.USER).count() == 1


def test_a_prompt_id_from_another_conversation_is_refused(conversation, alice):
    other = Conversation.objects.create(owner=alice)
    taken = prompt(conversation)
    with pytest.raises(ValueError, match="another conversation"):
        actions.record_prompt(other.pk, prompt_id=str(taken.prompt_id), text="x", client_id="u")


def test_only_the_first_claim_on_a_prompt_wins(conversation):
    stored = prompt(conversation)
    winner = actions.claim_reply(stored, response_id=str(uuid.uuid4()), model="m", agent_id="a1")
    loser = actions.claim_reply(stored, response_id=str(uuid.uuid4()), model="m", agent_id="a2")
    assert winner is not None and winner.status == Message.Status.STREAMING
    assert loser is None
    assert Message.objects.filter(role=Message.Role.ASSISTANT).count() == 1


def test_the_outcome_is_written_once_and_announced_to_the_owners_devices(conversation, outbox):
    stored = prompt(conversation)
    reply = actions.claim_reply(stored, response_id=str(uuid.uuid4()), model="m", agent_id="a1")
    first_token = timezone.now()
    assert actions.finish_reply(
        reply,
        status=events.Status.COMPLETE,
        text="Hello!",
        stop_reason="end_turn",
        input_tokens=12,
        output_tokens=3,
        first_token_at=first_token,
    )
    assert not actions.finish_reply(reply, status=events.Status.ERROR, text="late")
    reply.refresh_from_db()
    assert (reply.status, reply.text, reply.stop_reason) == ("complete", "Hello!", "end_turn")
    assert (reply.input_tokens, reply.output_tokens) == (12, 3)
    assert reply.first_token_at == first_token and reply.completed_at is not None
    [change] = [p for p in outbox if p.name == events.Name.CONVERSATION]
    assert change.channel == events.user_channel(realtime.client_id_for_user(conversation.owner))
    assert change.data["action"] == events.ListAction.ACTIVITY


def test_restart_interrupts_its_own_and_stale_replies_but_not_a_live_peers(conversation):
    mine = actions.claim_reply(
        prompt(conversation), response_id=str(uuid.uuid4()), model="m", agent_id="a1"
    )
    peers = actions.claim_reply(
        prompt(conversation), response_id=str(uuid.uuid4()), model="m", agent_id="a2"
    )
    stale = actions.claim_reply(
        prompt(conversation), response_id=str(uuid.uuid4()), model="m", agent_id="a3"
    )
    Message.objects.filter(pk=stale.pk).update(
        created_at=timezone.now() - datetime.timedelta(hours=1)
    )
    swept = actions.interrupt_abandoned_replies(
        agent_id="a1", stale_before=timezone.now() - datetime.timedelta(minutes=15)
    )
    assert {m.pk for m in swept} == {mine.pk, stale.pk}
    statuses = dict(Message.objects.filter(role="assistant").values_list("pk", "status"))
    assert statuses == {mine.pk: "interrupted", peers.pk: "streaming", stale.pk: "interrupted"}


def test_a_generated_title_never_overrides_a_users_rename(conversation, outbox):
    assert actions.apply_generated_title(conversation.pk, "Model title")
    conversation.refresh_from_db()
    assert conversation.title == "Model title"
    assert [p.name for p in outbox] == [events.Name.TITLE, events.Name.CONVERSATION]
    actions.rename_conversation(conversation, "Mine")
    outbox.clear()
    assert not actions.apply_generated_title(conversation.pk, "Another model title")
    conversation.refresh_from_db()
    assert conversation.title == "Mine"
    assert outbox == []


def test_context_keeps_the_newest_turns_within_the_budget(conversation):
    for index in range(6):
        answer(
            prompt(conversation, f"question {index} " + "x" * 400), f"answer {index} " + "y" * 400
        )
    current = prompt(conversation, "the newest question")
    # Each turn costs ~206 estimated tokens: a 500-token budget leaves room for the last two.
    context = store.model_context(current, default_system="sys", token_budget=500)
    assert context.dropped_turns == 4
    assert [m["role"] for m in context.messages] == ["user", "assistant"] * 2 + ["user"]
    assert context.messages[0]["content"].startswith("question 4")
    assert context.messages[-1]["content"] == "the newest question"
    assert context.system == "sys"
    assert not context.first_exchange


def test_context_skips_turns_without_reply_text_and_uses_the_conversations_system_prompt(
    conversation,
):
    conversation.system_prompt = "Answer like a pirate."
    conversation.save()
    answer(prompt(conversation, "failed one"), "", status=events.Status.ERROR)
    answer(prompt(conversation, "cancelled one"), "partial", status=events.Status.CANCELLED)
    current = prompt(conversation, "now")
    context = store.model_context(current, default_system="sys", token_budget=10_000)
    assert context.system == "Answer like a pirate."
    assert context.messages == [
        {"role": "user", "content": "cancelled one"},
        {"role": "assistant", "content": "partial"},
        {"role": "user", "content": "now"},
    ]


def test_only_users_of_the_conversation_may_write(conversation, alice, bob):
    assert store.sender_may_write(conversation.pk, realtime.client_id_for_user(alice))
    assert not store.sender_may_write(conversation.pk, realtime.client_id_for_user(bob))
    assert not store.sender_may_write(conversation.pk, "agent")
    assert not store.sender_may_write(conversation.pk, None)
    assert not store.sender_may_write(conversation.pk, "user-999999")


def test_the_sender_check_asks_each_time_with_its_own_values(conversation, alice, bob):
    # The check's SQL is compiled once: every call must still ask about its own user and
    # conversation, whatever was asked before.
    bobs = Conversation.objects.create(owner=bob)
    alice_id, bob_id = realtime.client_id_for_user(alice), realtime.client_id_for_user(bob)
    for _ in range(2):
        assert store.sender_may_write(conversation.pk, alice_id)
        assert not store.sender_may_write(bobs.pk, alice_id)
        assert store.sender_may_write(str(bobs.pk), bob_id)
        assert not store.sender_may_write(uuid.uuid4(), alice_id)
    alice.is_active = False
    alice.save(update_fields=["is_active"])
    assert not store.sender_may_write(conversation.pk, alice_id)


def test_start_up_finds_recent_conversations_and_old_ones_with_unanswered_prompts(alice):
    recent = Conversation.objects.create(owner=alice)
    old_unanswered = Conversation.objects.create(owner=alice)
    old_answered = Conversation.objects.create(owner=alice)
    prompt(old_unanswered)
    answer(prompt(old_answered))
    long_ago = timezone.now() - datetime.timedelta(days=3)
    Conversation.objects.filter(pk__in=[old_unanswered.pk, old_answered.pk]).update(
        updated_at=long_ago
    )
    found = store.conversations_with_recent_activity(timezone.now() - datetime.timedelta(hours=1))
    assert set(found) == {str(recent.pk), str(old_unanswered.pk)}


def test_a_prompt_waits_only_for_replies_to_earlier_prompts(conversation):
    first = prompt(conversation, "first")
    second = prompt(conversation, "second")
    Message.objects.filter(pk=second.pk).update(
        created_at=first.created_at + datetime.timedelta(seconds=1)
    )
    second.refresh_from_db()
    assert not store.earlier_replies_in_progress(second)
    reply = actions.claim_reply(first, response_id=str(uuid.uuid4()), model="m", agent_id="a1")
    # Claimed after the second prompt arrived, still it is earlier in the conversation.
    Message.objects.filter(pk=reply.pk).update(
        created_at=second.created_at + datetime.timedelta(seconds=1)
    )
    assert store.earlier_replies_in_progress(second) == [reply]
    assert not store.earlier_replies_in_progress(first)
    actions.finish_reply(reply, status=events.Status.COMPLETE, text="done")
    assert not store.earlier_replies_in_progress(second)


def test_an_orphan_is_interrupted_once_however_many_agents_find_it(conversation):
    orphan = actions.claim_reply(
        prompt(conversation), response_id=str(uuid.uuid4()), model="m", agent_id="dead"
    )
    done = answer(prompt(conversation))
    assert [m.pk for m in actions.interrupt_replies([orphan.pk, done.pk])] == [orphan.pk]
    assert actions.interrupt_replies([orphan.pk]) == []
    orphan.refresh_from_db()
    assert orphan.status == Message.Status.INTERRUPTED
