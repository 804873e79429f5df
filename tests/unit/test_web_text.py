"""Text Postgres or SQLite cannot store (NUL, lone surrogates): cleaned by the actions, refused
with a message by the forms. Runs on whichever database DATABASE_URL names (CI runs both)."""

from __future__ import annotations

import uuid

import pytest
from django.urls import reverse

from conversations import actions, events, realtime
from conversations.models import Conversation, Message
from conversations.text import storable

pytestmark = pytest.mark.django_db

NUL_PROMPT = "hello\x00world"
LONE_SURROGATE = "bad \ud800 half"


@pytest.fixture(autouse=True)
def _plain_static_files(settings):
    settings.STORAGES = {
        **settings.STORAGES,
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("plain text, ünïcödé and 😀", "plain text, ünïcödé and 😀"),
        (NUL_PROMPT, "helloworld"),
        ("\x00\x00", ""),
        (LONE_SURROGATE, "bad \ufffd half"),
        ("\udc00 first", "\ufffd first"),
        # Two halves that spell one character are joined, not replaced.
        ("a\ud83d\ude00b", "a😀b"),
    ],
)
def test_storable_drops_nul_and_replaces_lone_surrogates(raw, clean):
    assert storable(raw) == clean
    clean.encode("utf-8")


def test_a_prompt_with_nul_and_a_lone_surrogate_is_stored_cleaned(alice):
    conversation = Conversation.objects.create(owner=alice)
    prompt_id = str(uuid.uuid4())
    prompt, created = actions.record_prompt(
        conversation.pk, prompt_id=prompt_id, text=NUL_PROMPT + LONE_SURROGATE, client_id="user-1"
    )
    assert created
    stored = Message.objects.get(prompt_id=prompt_id, role=Message.Role.USER)
    assert stored.text == "helloworldbad \ufffd half"
    # Replayed (history catch-up, a second agent): still one prompt, no error.
    again, created_again = actions.record_prompt(
        conversation.pk, prompt_id=prompt_id, text=NUL_PROMPT, client_id="user-1"
    )
    assert (again.pk, created_again) == (stored.pk, False)


def test_model_output_with_nul_is_stored_by_finish_and_interrupt(alice):
    conversation = Conversation.objects.create(owner=alice)
    prompt, _ = actions.record_prompt(
        conversation.pk, prompt_id=str(uuid.uuid4()), text="hi", client_id="user-1"
    )
    reply = actions.claim_reply(prompt, response_id=str(uuid.uuid4()), model="m", agent_id="a")
    assert actions.finish_reply(
        reply,
        status=events.Status.ERROR,
        text="par\x00tial",
        thinking="th\x00ought\ud800",
        stop_reason="x\x00",
        error="model said \x00",
    )
    reply.refresh_from_db()
    assert (reply.text, reply.thinking, reply.stop_reason, reply.error) == (
        "partial",
        "thought\ufffd",
        "x",
        "model said ",
    )
    # The interrupted path keeps what devices saw, cleaned the same way.
    Message.objects.filter(pk=reply.pk).update(status=Message.Status.INTERRUPTED)
    actions.record_interrupted_text(reply, text="seen\x00", thinking="\ud800")
    reply.refresh_from_db()
    assert (reply.text, reply.thinking) == ("seen", "\ufffd")


def test_a_generated_title_with_nul_is_stored_and_published_cleaned(
    alice, django_capture_on_commit_callbacks
):
    conversation = Conversation.objects.create(owner=alice)
    with django_capture_on_commit_callbacks(execute=True):
        assert actions.apply_generated_title(conversation.pk, "Ti\x00tle \ud800")
    conversation.refresh_from_db()
    assert conversation.title == "Title \ufffd"
    titles = [e.data for e in realtime.outbox if e.name == str(events.Name.TITLE)]
    assert titles == ["Title \ufffd"]


def test_rename_action_cleans_whatever_its_caller_passes(alice):
    conversation = actions.create_conversation(alice, title="New\x00")
    assert Conversation.objects.get(pk=conversation.pk).title == "New"
    actions.rename_conversation(conversation, "Re\x00named")
    assert Conversation.objects.get(pk=conversation.pk).title == "Renamed"


def test_a_rename_with_nul_is_refused_with_a_message_and_changes_nothing(alice_client, alice):
    conversation = Conversation.objects.create(owner=alice, title="Before")
    response = alice_client.post(
        reverse("conversations:rename", args=[conversation.pk]), {"title": "After\x00"}
    )
    assert response.status_code == 400
    assert "Null characters are not allowed." in response.content.decode()
    assert Conversation.objects.get(pk=conversation.pk).title == "Before"


def test_search_with_nul_is_refused_not_a_server_error(alice_client):
    response = alice_client.get(reverse("conversations:list"), {"q": "a\x00b"})
    assert response.status_code == 400
    assert "Null characters are not allowed." in response.content.decode()


def test_signup_with_nul_in_the_username_is_refused_with_a_message(client, settings):
    settings.SIGNUP_ENABLED = True
    response = client.post(
        reverse("signup"),
        {"username": "eve\x00", "password1": "a-long-pass-42", "password2": "a-long-pass-42"},
    )
    assert response.status_code == 200
    assert "Null characters are not allowed." in response.content.decode()
    assert not response.wsgi_request.user.is_authenticated


def test_login_with_nul_in_the_username_is_refused_not_a_server_error(client, alice):
    response = client.post(reverse("login"), {"username": "alice\x00", "password": "x"})
    assert response.status_code == 200
    assert "Null characters are not allowed." in response.content.decode()


def test_the_admin_refuses_a_system_prompt_with_nul(client, django_user_model, alice):
    staff = django_user_model.objects.create_superuser("root", "root@example.com", "root-pass-1")
    client.force_login(staff)
    conversation = Conversation.objects.create(owner=alice, title="Kept")
    url = reverse("admin:conversations_conversation_change", args=[conversation.pk])
    response = client.post(
        url,
        {
            "owner": alice.pk,
            "title": "Kept",
            "system_prompt": "Be terse.\x00",
            "messages-TOTAL_FORMS": "0",
            "messages-INITIAL_FORMS": "0",
        },
    )
    assert response.status_code == 200
    assert "Null characters are not allowed." in response.content.decode()
    assert Conversation.objects.get(pk=conversation.pk).system_prompt == ""


def test_a_surrogate_encoded_in_form_data_arrives_replaced_and_is_stored(alice_client, alice):
    """Form data is UTF-8 bytes: an encoded surrogate half is invalid UTF-8, and Django decodes
    it to U+FFFD, so forms never hand the database a lone surrogate."""
    conversation = Conversation.objects.create(owner=alice, title="Before")
    response = alice_client.post(
        reverse("conversations:rename", args=[conversation.pk]),
        "title=Half%ED%A0%80",
        content_type="application/x-www-form-urlencoded",
    )
    assert response.status_code == 302
    title = Conversation.objects.get(pk=conversation.pk).title
    assert title.startswith("Half\ufffd") and title == storable(title)
