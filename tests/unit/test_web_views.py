"""The conversation pages and the account pages, through Django's test client."""

from __future__ import annotations

import json
import re
import uuid

import pytest
from django.test import Client
from django.urls import reverse

from conversations import events, realtime
from conversations.forms import SEARCH_MAX_LENGTH
from conversations.models import Conversation, Message

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _plain_static_files(settings):
    # Unit tests render templates without a collectstatic manifest.
    settings.STORAGES = {
        **settings.STORAGES,
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }


@pytest.fixture
def outbox(monkeypatch, transactional_db):
    """Realtime publishes, captured instead of sent; real commits, so on_commit runs."""
    sent: list[realtime.PublishedEvent] = []
    monkeypatch.setattr(realtime, "outbox", sent)
    return sent


def make_conversation(owner, title: str = "", **fields) -> Conversation:
    return Conversation.objects.create(owner=owner, title=title, **fields)


def add_turn(conversation: Conversation, prompt: str, reply: str, **reply_fields) -> uuid.UUID:
    prompt_id = uuid.uuid4()
    Message.objects.create(
        conversation=conversation,
        role=Message.Role.USER,
        text=prompt,
        prompt_id=prompt_id,
        client_id=realtime.client_id_for_user(conversation.owner),
    )
    response_id = uuid.uuid4()
    Message.objects.create(
        conversation=conversation,
        role=Message.Role.ASSISTANT,
        text=reply,
        prompt_id=prompt_id,
        response_id=response_id,
        **reply_fields,
    )
    return response_id


def chat_config(response) -> dict:
    match = re.search(
        r'<script id="chat-config" type="application/json">(.*?)</script>',
        response.content.decode(),
        re.S,
    )
    assert match, "the page has no chat-config"
    return json.loads(match.group(1))


def listed_ids(response) -> list[str]:
    """Ids of the conversations in the rendered list, top to bottom."""
    match = re.search(
        r"<ul [^>]*data-conversation-list[^>]*>(.*?)</ul>", response.content.decode(), re.S
    )
    assert match, "the page has no conversation list"
    return re.findall(r'data-conversation-id="([0-9a-f-]+)"', match.group(1))


# --- Login required everywhere ---


@pytest.mark.parametrize(
    "name, args",
    [
        ("conversations:list", []),
        ("conversations:new", []),
        ("conversations:detail", [uuid.uuid4()]),
        ("conversations:rename", [uuid.uuid4()]),
        ("conversations:delete", [uuid.uuid4()]),
    ],
)
def test_it_sends_anonymous_visitors_to_the_login_page(client, name, args):
    url = reverse(name, args=args)
    response = client.get(url)
    assert response.status_code == 302
    assert response["Location"] == f"{reverse('login')}?next={url}"


def test_the_login_page_logs_a_user_in(client, alice):
    page = client.get(reverse("login"))
    assert page.status_code == 200
    assert b'name="username"' in page.content and b'name="password"' in page.content

    response = client.post(reverse("login"), {"username": "alice", "password": "alice-password-1"})
    assert response.status_code == 302
    assert response["Location"] == reverse("conversations:list")
    assert client.get(reverse("conversations:list")).status_code == 200


def test_a_wrong_password_shows_an_error(client, alice):
    response = client.post(reverse("login"), {"username": "alice", "password": "wrong"})
    assert response.status_code == 200
    assert b"Please enter a correct username and password" in response.content


def test_logout_is_a_post_and_ends_the_session(alice_client):
    response = alice_client.post(reverse("logout"))
    assert response.status_code == 302
    assert alice_client.get(reverse("conversations:list")).status_code == 302


def test_signup_is_closed_by_default(client):
    assert client.get(reverse("signup")).status_code == 404
    assert b"Sign up" not in client.get(reverse("login")).content


def test_signup_when_enabled_creates_and_logs_in_a_user(client, settings, django_user_model):
    settings.SIGNUP_ENABLED = True
    assert b"Sign up" in client.get(reverse("login")).content
    response = client.post(
        reverse("signup"),
        {
            "username": "carol",
            "password1": "a-long-passphrase-9",
            "password2": "a-long-passphrase-9",
        },
    )
    assert response.status_code == 302
    assert django_user_model.objects.filter(username="carol").exists()
    assert client.get(reverse("conversations:list")).status_code == 200


def test_signup_rejects_mismatched_passwords(client, settings, django_user_model):
    settings.SIGNUP_ENABLED = True
    response = client.post(
        reverse("signup"),
        {"username": "carol", "password1": "a-long-passphrase-9", "password2": "different-pass-9"},
    )
    assert response.status_code == 200
    assert b"The two password fields" in response.content
    assert not django_user_model.objects.filter(username="carol").exists()


# --- The conversation list ---


def test_the_list_shows_only_my_active_conversations_newest_activity_first(
    alice_client, alice, bob
):
    older = make_conversation(alice, "Older")
    newer = make_conversation(alice, "Newer")
    make_conversation(alice, "Put away", archived=True)
    make_conversation(bob, "Bob's secret")
    # Activity on the older conversation moves it to the top.
    older.save()

    response = alice_client.get(reverse("conversations:list"))

    assert listed_ids(response) == [str(older.pk), str(newer.pk)]
    assert b"Bob&#x27;s secret" not in response.content and b"Bob's secret" not in response.content


def test_the_archived_tab_lists_archived_conversations(alice_client, alice):
    make_conversation(alice, "Active")
    archived = make_conversation(alice, "Put away", archived=True)
    response = alice_client.get(reverse("conversations:list") + "?archived=1")
    assert listed_ids(response) == [str(archived.pk)]


def test_search_matches_titles_and_message_text(alice_client, alice, bob):
    by_title = make_conversation(alice, "Sourdough schedule")
    by_text = make_conversation(alice, "Weekend")
    add_turn(by_text, "How long should SOURDOUGH proof?", "About 4 hours.")
    make_conversation(alice, "Unrelated")
    add_turn(make_conversation(bob, "Bob bakes"), "sourdough?", "Yes.")

    response = alice_client.get(reverse("conversations:list"), {"q": "sourdough"})

    assert response.status_code == 200
    assert sorted(listed_ids(response)) == sorted([str(by_title.pk), str(by_text.pk)])


def test_a_search_matching_many_messages_lists_the_conversation_once(alice_client, alice):
    conversation = make_conversation(alice, "Chatty")
    for _ in range(3):
        add_turn(conversation, "kiwi", "kiwi")
    response = alice_client.get(reverse("conversations:list"), {"q": "kiwi"})
    assert listed_ids(response) == [str(conversation.pk)]


def test_an_over_long_search_is_a_clear_form_error(alice_client, alice):
    make_conversation(alice, "Anything")
    response = alice_client.get(reverse("conversations:list"), {"q": "x" * (SEARCH_MAX_LENGTH + 1)})
    assert response.status_code == 400
    assert f"Search for at most {SEARCH_MAX_LENGTH} characters".encode() in response.content


def test_the_list_page_config_points_at_the_user_channel(alice_client, alice):
    config = chat_config(alice_client.get(reverse("conversations:list")))
    client_id = realtime.client_id_for_user(alice)
    assert config["clientId"] == client_id
    assert config["userChannel"] == events.user_channel(client_id)
    assert config["tokenUrl"] == reverse("conversations:ably_token") + "?scope=user"
    assert config["contract"] == events.client_contract()


# --- Create, rename, archive, delete ---


def test_creating_a_conversation_opens_it_and_tells_my_other_devices(alice_client, alice, outbox):
    # A conversation is created by its first prompt (which the browser then sends on its channel).
    response = alice_client.post(reverse("conversations:create"), {"prompt": "Hello"})

    conversation = Conversation.objects.get(owner=alice)
    assert response.status_code == 302
    assert response["Location"] == conversation.get_absolute_url()
    [published] = outbox
    assert published.channel == events.user_channel(realtime.client_id_for_user(alice))
    assert published.name == events.Name.CONVERSATION
    assert published.data["action"] == events.ListAction.CREATED
    assert published.data["id"] == str(conversation.pk)


def test_create_needs_a_post(alice_client):
    assert alice_client.get(reverse("conversations:create")).status_code == 405


def test_the_first_prompt_creates_the_conversation_the_browser_then_uses(
    alice_client, alice, outbox
):
    response = alice_client.post(
        reverse("conversations:create"),
        {"prompt": "How do tides work?"},
        headers={"accept": "application/json"},
    )

    assert response.status_code == 201
    conversation = Conversation.objects.get(owner=alice)
    created = response.json()
    assert created["conversationId"] == str(conversation.pk)
    assert created["url"] == conversation.get_absolute_url()
    assert created["channel"] == conversation.channel_name
    # A token for the new channel: the page's token was minted before the conversation existed.
    assert created["tokenParams"] == {"conversation": str(conversation.pk)}
    assert created["conversationUrls"]["rename"] == reverse(
        "conversations:rename", args=[conversation.pk]
    )
    assert [p.data["action"] for p in outbox] == [events.ListAction.CREATED]
    assert created["announced"] is True
    assert created["attachments"]["uploadUrl"] == reverse(
        "conversations:attachment_upload", args=[conversation.pk]
    )


@pytest.mark.parametrize("prompt", ["", "   "])
def test_no_prompt_creates_nothing(alice_client, alice, outbox, prompt):
    as_json = alice_client.post(
        reverse("conversations:create"), {"prompt": prompt}, headers={"accept": "application/json"}
    )
    assert as_json.status_code == 400
    assert as_json.json() == {"error": "Type a message first."}
    # The old "New conversation" button posted nothing: it now gets the empty composer.
    as_form = alice_client.post(reverse("conversations:create"))
    assert as_form.status_code == 302
    assert as_form["Location"] == reverse("conversations:new")
    assert not Conversation.objects.exists()
    assert outbox == []


def test_an_over_long_first_prompt_creates_nothing(alice_client, alice, settings):
    settings.MAX_PROMPT_CHARS = 10
    response = alice_client.post(
        reverse("conversations:create"),
        {"prompt": "x" * 11},
        headers={"accept": "application/json"},
    )
    assert response.status_code == 400
    assert response.json()["error"] == "Your message is 11 characters; the limit is 10."
    assert not Conversation.objects.exists()


def test_new_chat_is_an_empty_composer_with_no_conversation_behind_it(alice_client, alice):
    for _ in range(2):
        response = alice_client.get(reverse("conversations:new"))
        assert response.status_code == 200
        assert b"data-composer" in response.content
    assert not Conversation.objects.exists()
    config = chat_config(response)
    assert config["draft"] is True
    assert config["conversationId"] is None
    # The list channel only, until the first prompt creates a conversation to scope a token to.
    assert config["tokenParams"] == {"scope": "user"}
    # Files can be chosen, but there is nowhere to upload them until the first one creates it.
    assert config["attachments"]["uploadUrl"] is None
    assert config["attachments"]["maxFiles"] > 0


def test_a_drafts_first_file_creates_a_conversation_no_list_shows_yet(alice_client, alice, outbox):
    response = alice_client.post(
        reverse("conversations:create"),
        {"prompt": "", "for": "attachments"},
        headers={"accept": "application/json"},
    )

    assert response.status_code == 201
    conversation = Conversation.objects.get(owner=alice)
    created = response.json()
    assert created["attachments"]["uploadUrl"] == reverse(
        "conversations:attachment_upload", args=[conversation.pk]
    )
    assert created["tokenParams"] == {"conversation": str(conversation.pk)}
    assert created["announced"] is False
    # Empty: not announced to the other devices, and in no list.
    assert outbox == []
    assert (
        str(conversation.pk) not in alice_client.get(reverse("conversations:list")).content.decode()
    )
    # A form post (no JavaScript) still needs a prompt.
    as_form = alice_client.post(reverse("conversations:create"), {"for": "attachments"})
    assert as_form["Location"] == reverse("conversations:new")
    assert Conversation.objects.count() == 1


def test_conversations_nobody_used_stay_out_of_the_lists(alice_client, alice):
    used = make_conversation(alice)
    add_turn(used, "Hi", "Hello")
    titled = make_conversation(alice, "Named but empty")
    unused = make_conversation(alice)

    listed = listed_ids(alice_client.get(reverse("conversations:list")))
    assert sorted(listed) == sorted([str(used.pk), str(titled.pk)])
    page = alice_client.get(titled.get_absolute_url()).content.decode()
    sidebar = re.search(r"<aside [^>]*data-sidebar[^>]*>(.*?)</aside>", page, re.S).group(1)
    assert str(used.pk) in sidebar and str(titled.pk) in sidebar
    assert str(unused.pk) not in sidebar


def test_the_sidebar_lists_active_and_archived_newest_first(alice_client, alice, bob):
    older = make_conversation(alice, "Older")
    newer = make_conversation(alice, "Newer")
    archived = make_conversation(alice, "Put away", archived=True)
    make_conversation(bob, "Bob's secret")
    page = alice_client.get(newer.get_absolute_url()).content.decode()

    def ids(kind: str) -> list[str]:
        match = re.search(rf"<ul [^>]*data-sidebar-list=\"{kind}\"[^>]*>(.*?)</ul>", page, re.S)
        return re.findall(r'data-conversation-id="([0-9a-f-]+)"', match.group(1))

    assert ids("active") == [str(newer.pk), str(older.pk)]
    assert ids("archived") == [str(archived.pk)]
    assert "Bob&#x27;s secret" not in page
    assert (
        f'href="{newer.get_absolute_url()}" data-nav data-sidebar-title aria-current="page"' in page
    )


def test_renaming_sets_the_title_and_announces_it(alice_client, alice, outbox):
    conversation = make_conversation(alice, "Old")
    response = alice_client.post(
        reverse("conversations:rename", args=[conversation.pk]), {"title": "  New name  "}
    )
    assert response.status_code == 302
    conversation.refresh_from_db()
    assert conversation.title == "New name"
    assert conversation.title_set_by_user
    channels_and_names = [(p.channel, p.name) for p in outbox]
    assert (conversation.channel_name, events.Name.TITLE) in channels_and_names
    assert (events.user_channel(realtime.client_id_for_user(alice)), events.Name.CONVERSATION) in (
        channels_and_names
    )
    title_event = next(p for p in outbox if p.name == events.Name.TITLE)
    assert title_event.data == "New name"


def test_an_over_long_title_is_a_clear_form_error(alice_client, alice, outbox):
    conversation = make_conversation(alice, "Kept")
    response = alice_client.post(
        reverse("conversations:rename", args=[conversation.pk]),
        {"title": "t" * (Conversation.TITLE_MAX_LENGTH + 1)},
    )
    assert response.status_code == 400
    assert b"A title can be at most 200 characters" in response.content
    conversation.refresh_from_db()
    assert conversation.title == "Kept"
    assert outbox == []


def test_an_empty_title_is_a_clear_form_error(alice_client, alice):
    conversation = make_conversation(alice, "Kept")
    response = alice_client.post(
        reverse("conversations:rename", args=[conversation.pk]), {"title": "   "}
    )
    assert response.status_code == 400
    assert b"Give the conversation a title." in response.content


def test_archive_and_unarchive(alice_client, alice, outbox):
    conversation = make_conversation(alice, "Filed")
    alice_client.post(reverse("conversations:archive", args=[conversation.pk]))
    conversation.refresh_from_db()
    assert conversation.archived
    alice_client.post(reverse("conversations:unarchive", args=[conversation.pk]))
    conversation.refresh_from_db()
    assert not conversation.archived
    assert [p.data["action"] for p in outbox] == [
        events.ListAction.ARCHIVED,
        events.ListAction.UNARCHIVED,
    ]


def test_delete_asks_for_confirmation_then_deletes_everything(alice_client, alice, outbox):
    conversation = make_conversation(alice, "Doomed")
    add_turn(conversation, "hi", "hello")
    url = reverse("conversations:delete", args=[conversation.pk])

    confirm = alice_client.get(url)
    assert confirm.status_code == 200
    assert b"Delete conversation" in confirm.content
    assert Conversation.objects.filter(pk=conversation.pk).exists()

    response = alice_client.post(url)
    assert response.status_code == 302
    assert not Conversation.objects.filter(pk=conversation.pk).exists()
    assert not Message.objects.filter(conversation_id=conversation.pk).exists()
    [published] = outbox
    assert published.data["action"] == events.ListAction.DELETED
    assert published.data["id"] == str(conversation.pk)


@pytest.mark.parametrize("name", ["conversations:archive", "conversations:delete"])
def test_state_changes_need_a_csrf_token(alice, name):
    conversation = make_conversation(alice, "Guarded")
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    response = client.post(reverse(name, args=[conversation.pk]))
    assert response.status_code == 403
    assert Conversation.objects.filter(pk=conversation.pk, archived=False).exists()


def test_create_needs_a_csrf_token(alice):
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    assert client.post(reverse("conversations:create")).status_code == 403
    assert not Conversation.objects.exists()


# --- Someone else's conversation is a 404 ---


@pytest.mark.parametrize(
    "name, method",
    [
        ("conversations:detail", "get"),
        ("conversations:rename", "get"),
        ("conversations:rename", "post"),
        ("conversations:archive", "post"),
        ("conversations:unarchive", "post"),
        ("conversations:delete", "get"),
        ("conversations:delete", "post"),
    ],
)
def test_another_users_conversation_is_not_found(alice_client, bob, name, method):
    conversation = make_conversation(bob, "Bob's")
    response = getattr(alice_client, method)(
        reverse(name, args=[conversation.pk]), {"title": "Stolen"} if method == "post" else {}
    )
    assert response.status_code == 404
    conversation.refresh_from_db()
    assert conversation.title == "Bob's" and not conversation.archived


@pytest.mark.parametrize("path", ["/conversations/not-a-uuid/", "/conversations/123/delete"])
def test_a_malformed_id_is_not_found(alice_client, path):
    assert alice_client.get(path).status_code == 404


def test_an_unknown_id_is_not_found(alice_client):
    url = reverse("conversations:detail", args=[uuid.uuid4()])
    assert alice_client.get(url).status_code == 404


def test_staff_may_watch_anyones_conversation_read_only(client, alice, bob):
    bob.is_staff = True
    bob.save()
    conversation = make_conversation(alice, "Monitored")
    add_turn(conversation, "question", "answer")
    client.force_login(bob)

    response = client.get(conversation.get_absolute_url())

    assert response.status_code == 200
    assert b"data-composer" not in response.content
    assert chat_config(response)["readOnly"] is True
    # Watching is all: staff still cannot change it.
    assert client.post(reverse("conversations:archive", args=[conversation.pk])).status_code == 404


# --- The conversation page ---


def test_the_conversation_page_renders_stored_turns_with_hooks(alice_client, alice, settings):
    conversation = make_conversation(alice, "Stored")
    response_id = add_turn(
        conversation, "What is **2+2**?", "It is 4.", status=Message.Status.COMPLETE
    )
    interrupted_id = add_turn(conversation, "And 3+3?", "It is", status=Message.Status.INTERRUPTED)

    response = alice_client.get(conversation.get_absolute_url())

    html = response.content.decode()
    assert response.status_code == 200
    assert html.count('<article class="turn') == 4
    assert f'data-response-id="{response_id}"' in html
    assert 'data-status="interrupted"' in html
    assert "What is **2+2**?" in html
    assert "This answer was interrupted." in html
    config = chat_config(response)
    assert config["conversationId"] == str(conversation.pk)
    assert config["channel"] == events.conversation_channel(conversation.pk)
    assert config["clientId"] == realtime.client_id_for_user(alice)
    assert config["agentClientId"] == settings.ABLY_AGENT_CLIENT_ID
    assert config["serverClientId"] == settings.ABLY_SERVER_CLIENT_ID
    assert (
        config["tokenUrl"]
        == f"{reverse('conversations:ably_token')}?conversation={conversation.pk}"
    )
    assert config["storedResponseIds"] == [str(response_id), str(interrupted_id)]
    assert config["streamingPattern"] == settings.STREAMING_PATTERN
    assert config["maxPromptChars"] == settings.MAX_PROMPT_CHARS
    assert config["readOnly"] is False
    assert "ablyOptions" in config


def test_stored_text_is_escaped(alice_client, alice):
    conversation = make_conversation(alice, "<img src=x onerror=alert(1)>")
    add_turn(conversation, "<script>alert('prompt')</script>", "</script><b>reply</b>")

    html = alice_client.get(conversation.get_absolute_url()).content.decode()

    assert "<script>alert(" not in html
    assert "<img src=x" not in html
    assert "&lt;script&gt;alert(&#x27;prompt&#x27;)&lt;/script&gt;" in html
    # json_script escapes `<` so the title cannot end the config's script element.
    assert "</script><b>" not in html


def test_pages_of_results_keep_the_search(alice_client, alice):
    Conversation.objects.bulk_create(
        [Conversation(owner=alice, title=f"fish & chips {n}") for n in range(51)]
    )
    first = alice_client.get(reverse("conversations:list"), {"q": "fish & chips"})
    assert len(listed_ids(first)) == 50
    assert 'href="?q=fish+%26+chips&amp;page=2"' in first.content.decode()

    second = alice_client.get(reverse("conversations:list"), {"q": "fish & chips", "page": "2"})
    assert len(listed_ids(second)) == 1


def test_every_static_file_a_page_loads_exists(alice_client, alice):
    from django.contrib.staticfiles import finders

    conversation = make_conversation(alice, "Static")
    pages = [
        alice_client.get(reverse("conversations:list")),
        alice_client.get(conversation.get_absolute_url()),
        Client().get(reverse("login")),
    ]
    referenced = set()
    for page in pages:
        referenced |= set(re.findall(r'="/static/([^"]+)"', page.content.decode()))
    assert "vendor/ably/ably.min.js" in referenced
    missing = sorted(path for path in referenced if not finders.find(path))
    assert missing == []
