"""Issue 16: a conversation is a tree with one shown path (edits, reply versions, switching)."""

from __future__ import annotations

import json
import uuid

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.urls import reverse

from conversations import actions, events, realtime, tree
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


def prompt(conversation, text="hi", **placement) -> Message:
    stored, _ = actions.record_prompt(
        conversation.pk,
        prompt_id=str(uuid.uuid4()),
        text=text,
        client_id=realtime.client_id_for_user(conversation.owner),
        **placement,
    )
    return stored


def answer(prompt_message, text="hello", *, request_id=None) -> Message:
    reply = actions.claim_reply(
        prompt_message,
        response_id=str(uuid.uuid4()),
        model="m",
        agent_id="a1",
        request_id=request_id,
    )
    actions.finish_reply(reply, status=events.Status.COMPLETE, text=text)
    reply.refresh_from_db()
    return reply


def shown_texts(conversation) -> list[str]:
    return [m.text for m in actions.shown_path(conversation.pk)]


def test_prompts_and_replies_form_one_path_by_default(conversation):
    first = prompt(conversation, "one")
    first_reply = answer(first, "uno")
    second = prompt(conversation, "two")
    second_reply = answer(second, "dos")
    assert (first.parent, first_reply.parent, second.parent, second_reply.parent) == (
        None,
        first,
        first_reply,
        second,
    )
    assert shown_texts(conversation) == ["one", "uno", "two", "dos"]


def test_a_prompt_sent_before_the_reply_started_continues_that_reply(conversation):
    first = prompt(conversation, "one")
    second = prompt(conversation, "two")  # the reply to "one" has not started yet
    assert second.parent == first
    first_reply = answer(first, "uno")
    second.refresh_from_db()
    assert second.parent == first_reply
    # The shown path stayed on the newest prompt, through the reply that started meanwhile.
    assert shown_texts(conversation) == ["one", "uno", "two"]


def test_an_edit_is_a_sibling_with_its_own_reply_and_becomes_the_shown_path(conversation):
    first = prompt(conversation, "one")
    answer(first, "uno")
    second = prompt(conversation, "two")
    answer(second, "dos")
    edited = prompt(conversation, "two, edited", edit_of=str(second.prompt_id))
    assert edited.parent_id == second.parent_id
    answer(edited, "dos bis")
    assert shown_texts(conversation) == ["one", "uno", "two, edited", "dos bis"]
    # An edit of the first prompt is a second root.
    root_edit = prompt(conversation, "one, edited", edit_of=str(first.prompt_id))
    assert root_edit.parent is None
    assert shown_texts(conversation) == ["one, edited"]


def test_versions_are_claimed_once_per_request_and_the_newest_is_shown(conversation):
    question = prompt(conversation, "q")
    answer(question, "v1")
    request = str(uuid.uuid4())
    second = answer(question, "v2", request_id=request)
    # Another agent hearing the same request gets nothing: exactly once per version.
    assert (
        actions.claim_reply(
            question, response_id=str(uuid.uuid4()), model="m", agent_id="a2", request_id=request
        )
        is None
    )
    assert (
        actions.claim_reply(question, response_id=str(uuid.uuid4()), model="m", agent_id="a2")
        is None
    )
    assert store.request_answered(str(question.prompt_id), request)
    assert shown_texts(conversation) == ["q", "v2"]
    answer(question, "v3", request_id=str(uuid.uuid4()))
    replies = Message.objects.filter(role=Message.Role.ASSISTANT)
    assert replies.count() == 3
    assert Message.objects.filter(role=Message.Role.USER).count() == 1
    placed = tree.versions_of(Message.objects.all())
    assert (placed[second.pk].index, placed[second.pk].count) == (2, 3)


def test_the_model_sees_only_the_path_of_the_prompt(conversation):
    question = prompt(conversation, "q")
    first = answer(question, "version one")
    answer(question, "version two", request_id=str(uuid.uuid4()))
    # Back to version one, then a follow-up continues it.
    actions.select_version(conversation, str(first.response_id))
    follow_up = prompt(conversation, "and then?")
    assert follow_up.parent == first
    context = store.model_context(follow_up, default_system="sys", token_budget=10_000)
    assert context.messages == [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "version one"},
        {"role": "user", "content": "and then?"},
    ]
    # A regenerate of the first prompt sees nothing but that prompt.
    context = store.model_context(question, default_system="sys", token_budget=10_000)
    assert context.messages == [{"role": "user", "content": "q"}]


def test_switching_versions_shows_the_newest_path_below_and_tells_every_device(
    outbox, conversation
):
    question = prompt(conversation, "q")
    first = answer(question, "v1")
    after_first = prompt(conversation, "after v1")
    answer(after_first, "r after v1")
    second = answer(question, "v2", request_id=str(uuid.uuid4()))
    assert shown_texts(conversation) == ["q", "v2"]
    outbox.clear()
    event = actions.select_version(conversation, str(first.response_id))
    assert shown_texts(conversation) == ["q", "v1", "after v1", "r after v1"]
    assert [(e.channel, e.name) for e in outbox] == [(conversation.channel_name, "path")]
    ids = json.loads(outbox[0].data)
    assert ids == list(event.ids)
    assert ids[:2] == [str(question.prompt_id), str(first.response_id)]
    assert outbox[0].extras["headers"]["leafId"] == ids[-1]
    assert actions.select_version(conversation, str(uuid.uuid4())) is None
    actions.select_version(conversation, str(second.response_id))
    assert shown_texts(conversation) == ["q", "v2"]


def test_the_page_holds_every_version_and_hides_those_off_the_path(alice_client, alice):
    conversation = Conversation.objects.create(owner=alice)
    question = prompt(conversation, "the question")
    answer(question, "first answer")
    answer(question, "second answer", request_id=str(uuid.uuid4()))
    page = alice_client.get(conversation.get_absolute_url()).content.decode()
    first = page.index("first answer")
    second = page.index("second answer")
    first_article = page.rfind("<article", 0, first)
    second_article = page.rfind("<article", 0, second)
    assert " hidden" in page[first_article : page.index(">", first_article)]
    assert " hidden" not in page[second_article : page.index(">", second_article)]
    response = alice_client.post(
        reverse("conversations:path", args=[conversation.pk]),
        {"messageId": str(Message.objects.get(text="first answer").response_id)},
    )
    assert response.status_code == 200
    assert response.json()["ids"][-1] == str(Message.objects.get(text="first answer").response_id)
    assert (
        alice_client.post(
            reverse("conversations:path", args=[conversation.pk]), {"messageId": "nope"}
        ).status_code
        == 400
    )


def test_someone_else_cannot_switch_my_versions(client, bob, alice):
    conversation = Conversation.objects.create(owner=alice)
    client.force_login(bob)
    response = client.post(reverse("conversations:path", args=[conversation.pk]), {})
    assert response.status_code == 404


def test_the_events_round_trip():
    regenerate = events.Regenerate(prompt_id=str(uuid.uuid4()), request_id=str(uuid.uuid4()))
    assert events.Regenerate.from_wire("", regenerate.extras()) == regenerate
    placed = events.Prompt(
        prompt_id=str(uuid.uuid4()), text="t", parent_id=str(uuid.uuid4()), edit_of=None
    )
    assert events.Prompt.from_wire("t", placed.extras()) == placed
    with pytest.raises(events.EventError):
        events.Regenerate.from_wire("", {"headers": {"promptId": str(uuid.uuid4())}})
    path = events.Path(ids=("a", "b"))
    assert events.Path.from_wire(path.data(), path.extras()) == path
    assert path.extras()["headers"]["leafId"] == "b"


def test_migration_turns_a_list_into_one_path_and_back(transactional_db, alice):
    executor = MigrationExecutor(connection)
    executor.migrate([("conversations", "0005_message_cache_tokens")])
    apps = executor.loader.project_state([("conversations", "0005_message_cache_tokens")]).apps
    OldConversation = apps.get_model("conversations", "Conversation")
    OldMessage = apps.get_model("conversations", "Message")
    conversation = OldConversation.objects.create(owner_id=alice.pk)
    ids = [uuid.uuid4() for _ in range(3)]
    # A list as before: two answered prompts and a duplicate one (the old Regenerate), then an
    # unanswered prompt.
    for index, prompt_id in enumerate(ids[:2]):
        OldMessage.objects.create(
            conversation=conversation, role="user", prompt_id=prompt_id, text=f"p{index}"
        )
        OldMessage.objects.create(
            conversation=conversation,
            role="assistant",
            prompt_id=prompt_id,
            response_id=uuid.uuid4(),
            text=f"r{index}",
        )
    OldMessage.objects.create(conversation=conversation, role="user", prompt_id=ids[2], text="p2")

    executor = MigrationExecutor(connection)
    executor.migrate([("conversations", "0006_message_tree")])
    migrated = Conversation.objects.get(pk=conversation.pk)
    assert shown_texts(migrated) == ["p0", "r0", "p1", "r1", "p2"]
    assert set(Message.objects.filter(role="assistant").values_list("request_id", flat=True)) == {
        ids[0],
        ids[1],
    }
    # A second version of the first answer, then back: it becomes a duplicate prompt again.
    answer(Message.objects.get(text="p0"), "r0 again", request_id=str(uuid.uuid4()))

    executor = MigrationExecutor(connection)
    executor.migrate([("conversations", "0005_message_cache_tokens")])
    apps = executor.loader.project_state([("conversations", "0005_message_cache_tokens")]).apps
    OldMessage = apps.get_model("conversations", "Message")
    listed = [
        (m.role, m.text)
        for m in OldMessage.objects.filter(conversation_id=conversation.pk).order_by(
            "created_at", "id"
        )
    ]
    assert listed == [
        ("user", "p0"),
        ("assistant", "r0"),
        ("user", "p1"),
        ("assistant", "r1"),
        ("user", "p2"),
        ("user", "p0"),
        ("assistant", "r0 again"),
    ]
    replied = OldMessage.objects.filter(role="assistant").values_list("prompt_id", flat=True)
    assert len(set(replied)) == 3

    executor = MigrationExecutor(connection)
    executor.migrate(executor.loader.graph.leaf_nodes())


def test_the_admin_shows_the_tree_and_exports_it(client, django_user_model, alice, settings):
    settings.STORAGES = {
        **settings.STORAGES,
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }
    staff = django_user_model.objects.create_superuser("root", "root@example.com", "root-pass-1")
    client.force_login(staff)
    conversation = Conversation.objects.create(owner=alice)
    question = prompt(conversation, "the question")
    answer(question, "first answer")
    answer(question, "second answer", request_id=str(uuid.uuid4()))
    answer(prompt(conversation, "a follow-up"), "its answer")

    page = client.get(
        reverse("admin:conversations_conversation_change", args=[conversation.pk])
    ).content.decode()
    assert "[version 1/2, not shown]" in page
    assert "[version 2/2]" in page
    assert "· reply (version 2/2)" in page

    changelist = reverse("admin:conversations_conversation_changelist")
    exported = client.post(
        changelist, {"action": "export_json", "_selected_action": [conversation.pk]}
    )
    [data] = json.loads(exported.content)["conversations"]
    # Tree order: both versions right after their prompt, the follow-up under the second.
    assert [(m["text"], m["version"], m["versions"], m["shown"]) for m in data["messages"]] == [
        ("the question", 1, 1, True),
        ("first answer", 1, 2, False),
        ("second answer", 2, 2, True),
        ("a follow-up", 1, 1, True),
        ("its answer", 1, 1, True),
    ]
    markdown = client.post(
        changelist, {"action": "export_markdown", "_selected_action": [conversation.pk]}
    ).content.decode()
    assert "## Claude [version 1/2, not shown]" in markdown
