"""The admin: usage per user, conversations with transcripts, and the bulk actions."""

from __future__ import annotations

import json
import re
import uuid

import pytest
from django.urls import reverse

from conversations import events, realtime
from conversations.models import Conversation, Message

pytestmark = pytest.mark.django_db

XSS = "<script>alert('xss')</script>"


@pytest.fixture(autouse=True)
def _plain_static_files(settings):
    settings.STORAGES = {
        **settings.STORAGES,
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }


@pytest.fixture
def staff_client(client, django_user_model):
    staff = django_user_model.objects.create_superuser("root", "root@example.com", "root-pass-1")
    client.force_login(staff)
    return client


def add_turn(conversation, prompt, reply, *, input_tokens=0, output_tokens=0, **reply_fields):
    prompt_id = uuid.uuid4()
    Message.objects.create(
        conversation=conversation, role=Message.Role.USER, text=prompt, prompt_id=prompt_id
    )
    Message.objects.create(
        conversation=conversation,
        role=Message.Role.ASSISTANT,
        text=reply,
        prompt_id=prompt_id,
        response_id=uuid.uuid4(),
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        **reply_fields,
    )


def row_of(html: str, text: str) -> str:
    """The admin changelist row that contains `text`, with tags stripped."""
    for row in re.findall(r"<tr[^>]*>(.*?)</tr>", html, re.S):
        if text in row:
            return " ".join(re.sub(r"<[^>]+>", " ", row).split())
    raise AssertionError(f"no row with {text!r}")


def test_the_admin_is_refused_to_non_staff(alice_client):
    for url in [
        reverse("admin:index"),
        reverse("admin:conversations_conversation_changelist"),
        reverse("admin:auth_user_changelist"),
    ]:
        response = alice_client.get(url)
        assert response.status_code == 302
        assert response["Location"].startswith(reverse("admin:login"))


def test_a_non_staff_user_cannot_run_admin_actions(alice_client, alice):
    conversation = Conversation.objects.create(owner=alice, title="Mine")
    response = alice_client.post(
        reverse("admin:conversations_conversation_changelist"),
        {"action": "export_json", "_selected_action": [conversation.pk]},
    )
    assert response.status_code == 302
    assert "application/json" not in response.get("Content-Type", "")


def test_users_show_their_usage(staff_client, alice, bob):
    first = Conversation.objects.create(owner=alice, title="A1")
    second = Conversation.objects.create(owner=alice, title="A2")
    add_turn(first, "q", "a", input_tokens=10, output_tokens=20)
    add_turn(first, "q", "a", input_tokens=1, output_tokens=2)
    add_turn(second, "q", "a", input_tokens=100, output_tokens=200)

    html = staff_client.get(reverse("admin:auth_user_changelist")).content.decode()

    # conversations, messages, input tokens, output tokens
    assert "alice@example.com 2 6 111 222" in row_of(html, "alice@example.com")
    assert "bob@example.com 0 0 0 0" in row_of(html, "bob@example.com")


def test_conversations_list_owner_counts_and_tokens(staff_client, alice):
    conversation = Conversation.objects.create(owner=alice, title="Counted")
    add_turn(conversation, "q", "a", input_tokens=7, output_tokens=9)
    add_turn(conversation, "q", "a", input_tokens=3, output_tokens=1)

    html = staff_client.get(reverse("admin:conversations_conversation_changelist")).content.decode()

    row = row_of(html, "Counted")
    assert "alice" in row
    assert " 4 10 10 " in f"{row} "


def test_conversation_search_covers_titles_owners_and_message_text(staff_client, alice, bob):
    by_title = Conversation.objects.create(owner=alice, title="Quokka facts")
    by_owner = Conversation.objects.create(owner=bob, title="Something")
    by_text = Conversation.objects.create(owner=alice, title="Other")
    add_turn(by_text, "tell me about the marsupial", "sure")
    add_turn(by_text, "more marsupial", "ok")
    url = reverse("admin:conversations_conversation_changelist")

    def found(query: str) -> set[str]:
        html = staff_client.get(url, {"q": query}).content.decode()
        return set(re.findall(r'name="_selected_action" value="([0-9a-f-]+)"', html))

    assert found("quokka") == {str(by_title.pk)}
    assert found("bob") == {str(by_owner.pk)}
    assert found("marsupial") == {str(by_text.pk)}


def test_status_filters(staff_client, alice):
    archived = Conversation.objects.create(owner=alice, title="Archived one", archived=True)
    failed = Conversation.objects.create(owner=alice, title="Failed one")
    add_turn(failed, "q", "", status=Message.Status.ERROR, error="overloaded")
    Conversation.objects.create(owner=alice, title="Fine one")
    url = reverse("admin:conversations_conversation_changelist")

    def found(params: dict) -> set[str]:
        html = staff_client.get(url, params).content.decode()
        return set(re.findall(r'name="_selected_action" value="([0-9a-f-]+)"', html))

    assert found({"archived__exact": "1"}) == {str(archived.pk)}
    assert found({"reply_status": "error"}) == {str(failed.pk)}


def test_the_change_page_shows_a_read_only_transcript_with_text_escaped(staff_client, alice):
    conversation = Conversation.objects.create(owner=alice, title=XSS)
    add_turn(conversation, f"prompt {XSS}", "reply text here")

    response = staff_client.get(
        reverse("admin:conversations_conversation_change", args=[conversation.pk])
    )

    html = response.content.decode()
    assert response.status_code == 200
    assert "reply text here" in html
    assert XSS not in html
    assert "&lt;script&gt;alert(&#x27;xss&#x27;)&lt;/script&gt;" in html
    # Read-only: no editable message rows and no way to add one.
    assert 'name="messages-0-text"' not in html
    assert "Add another message" not in html
    assert conversation.get_absolute_url() in html


def test_the_changelist_escapes_titles(staff_client, alice):
    Conversation.objects.create(owner=alice, title=XSS)
    html = staff_client.get(reverse("admin:conversations_conversation_changelist")).content.decode()
    assert XSS not in html


def test_archive_action_archives_and_tells_the_owners_devices(
    staff_client, alice, monkeypatch, transactional_db
):
    sent: list = []
    monkeypatch.setattr(realtime, "outbox", sent)
    first = Conversation.objects.create(owner=alice, title="one")
    second = Conversation.objects.create(owner=alice, title="two")

    response = staff_client.post(
        reverse("admin:conversations_conversation_changelist"),
        {"action": "archive_selected", "_selected_action": [first.pk, second.pk]},
    )

    assert response.status_code == 302
    assert Conversation.objects.filter(archived=True).count() == 2
    assert {p.data["id"] for p in sent} == {str(first.pk), str(second.pk)}
    assert {p.channel for p in sent} == {events.user_channel(realtime.client_id_for_user(alice))}


def test_delete_action_confirms_then_deletes_and_tells_the_owners_devices(
    staff_client, alice, monkeypatch, transactional_db
):
    sent: list = []
    monkeypatch.setattr(realtime, "outbox", sent)
    doomed = Conversation.objects.create(owner=alice, title="doomed")
    add_turn(doomed, "q", "a")
    kept = Conversation.objects.create(owner=alice, title="kept")
    url = reverse("admin:conversations_conversation_changelist")

    confirm = staff_client.post(url, {"action": "delete_selected", "_selected_action": [doomed.pk]})
    assert confirm.status_code == 200
    assert b"Are you sure" in confirm.content
    assert Conversation.objects.filter(pk=doomed.pk).exists()

    staff_client.post(
        url, {"action": "delete_selected", "_selected_action": [doomed.pk], "post": "yes"}
    )
    assert list(Conversation.objects.all()) == [kept]
    assert not Message.objects.exists()
    assert [(p.data["action"], p.data["id"]) for p in sent] == [("deleted", str(doomed.pk))]


def test_export_json(staff_client, alice):
    conversation = Conversation.objects.create(owner=alice, title="Exported")
    add_turn(conversation, "What is 2+2?", "4", input_tokens=5, output_tokens=1, model="m-1")

    response = staff_client.post(
        reverse("admin:conversations_conversation_changelist"),
        {"action": "export_json", "_selected_action": [conversation.pk]},
    )

    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    assert response["Content-Disposition"].startswith('attachment; filename="conversations-1-')
    [exported] = json.loads(response.content)["conversations"]
    assert exported["id"] == str(conversation.pk)
    assert exported["title"] == "Exported"
    assert exported["owner"] == "alice"
    assert [(m["role"], m["text"]) for m in exported["messages"]] == [
        ("user", "What is 2+2?"),
        ("assistant", "4"),
    ]
    assert exported["messages"][1]["model"] == "m-1"
    assert exported["messages"][1]["output_tokens"] == 1


def test_export_markdown(staff_client, alice):
    conversation = Conversation.objects.create(owner=alice, title="Notes")
    add_turn(conversation, "Question?", "Answer.")
    add_turn(conversation, "Again?", "Part", status=Message.Status.CANCELLED)

    response = staff_client.post(
        reverse("admin:conversations_conversation_changelist"),
        {"action": "export_markdown", "_selected_action": [conversation.pk]},
    )

    assert response.status_code == 200
    assert response["Content-Type"] == "text/markdown; charset=utf-8"
    assert response["Content-Disposition"].endswith('.md"')
    text = response.content.decode()
    assert text.startswith("# Notes\n")
    assert "## User\n\nQuestion?\n\n## Claude\n\nAnswer." in text
    assert "## Claude (cancelled)\n\nPart" in text


def test_a_user_change_page_opens(staff_client, alice):
    response = staff_client.get(reverse("admin:auth_user_change", args=[alice.pk]))
    assert response.status_code == 200
    assert b"alice" in response.content


def test_renaming_in_the_admin_reaches_the_owners_devices(
    staff_client, alice, monkeypatch, transactional_db
):
    sent: list = []
    monkeypatch.setattr(realtime, "outbox", sent)
    conversation = Conversation.objects.create(owner=alice, title="Before")

    response = staff_client.post(
        reverse("admin:conversations_conversation_change", args=[conversation.pk]),
        {
            "title": "After",
            "system_prompt": "",
            "messages-TOTAL_FORMS": "0",
            "messages-INITIAL_FORMS": "0",
        },
    )

    assert response.status_code == 302
    last_activity = conversation.updated_at
    conversation.refresh_from_db()
    assert conversation.title == "After" and conversation.title_set_by_user
    # A staff edit is not the user's activity.
    assert conversation.updated_at == last_activity
    assert ("title", "After") in [(p.name, p.data) for p in sent]


def test_estimated_usage_is_flagged_and_counted_in_the_totals(staff_client, alice):
    conversation = Conversation.objects.create(owner=alice, title="Stopped once")
    add_turn(conversation, "q", "a complete answer", input_tokens=7, output_tokens=9)
    add_turn(
        conversation,
        "q",
        "a stopped answer",
        input_tokens=5,
        output_tokens=4,
        usage_estimated=True,
        status=Message.Status.CANCELLED,
    )

    changelist = staff_client.get(reverse("admin:conversations_conversation_changelist"))
    assert " 4 12 13 " in f"{row_of(changelist.content.decode(), 'Stopped once')} "
    users = staff_client.get(reverse("admin:auth_user_changelist")).content.decode()
    assert " 4 12 13 " in f"{row_of(users, 'alice')} "
    change = staff_client.get(
        reverse("admin:conversations_conversation_change", args=[conversation.pk])
    ).content.decode()
    assert "usage estimated" in change.lower()
    # The flag shows per message: one estimate (True), two figures from the API or none.
    assert change.count('alt="True"') == 1


def test_prompt_cache_tokens_are_totalled_and_exported(staff_client, alice):
    conversation = Conversation.objects.create(owner=alice, title="Cached")
    add_turn(conversation, "q", "a", input_tokens=5, output_tokens=3)
    add_turn(
        conversation,
        "q",
        "a",
        input_tokens=7,
        output_tokens=4,
        cache_creation_input_tokens=1200,
        cache_read_input_tokens=1500,
    )

    conversations = staff_client.get(reverse("admin:conversations_conversation_changelist"))
    # messages, input, output, cache write, cache read
    assert " 4 12 7 1200 1500 " in f"{row_of(conversations.content.decode(), 'Cached')} "
    users = staff_client.get(reverse("admin:auth_user_changelist")).content.decode()
    assert "alice@example.com 1 4 12 7 1200 1500" in row_of(users, "alice@example.com")
    response = staff_client.post(
        reverse("admin:conversations_conversation_changelist"),
        {"action": "export_json", "_selected_action": [conversation.pk]},
    )
    [exported] = json.loads(response.content)["conversations"]
    reply = exported["messages"][3]
    assert (reply["cache_creation_input_tokens"], reply["cache_read_input_tokens"]) == (1200, 1500)
    transcript = staff_client.get(
        reverse("admin:conversations_conversation_change", args=[conversation.pk])
    ).content.decode()
    assert "1200" in transcript and "1500" in transcript
