"""The web surface against a hostile visitor: every route is walked from the URLconf itself.

Walking the resolver (rather than listing views by hand) means a view added later is checked
too: it must require a login unless it is on the short public list below, refuse a POST without
a CSRF token, and answer 404 for another user's conversation.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import jwt
import pytest
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, reverse

from conversations import realtime
from conversations.models import Conversation, Message

pytestmark = pytest.mark.django_db

# Reachable without logging in, by design. Everything else must send visitors to log in.
PUBLIC_ROUTES = frozenset(
    {
        "login",
        "logout",
        "signup",
        "password_reset",
        "password_reset_done",
        "password_reset_confirm",
        "password_reset_complete",
    }
)
# POST is how these change state; each must refuse a POST that carries no CSRF token.
XSS_PAYLOADS = [
    "<script>alert('xss')</script>",
    '"><img src=x onerror=alert(1)>',
    "</script><script>alert(2)</script>",
    "<svg/onload=alert(3)>",
    "javascript:alert(4)",
    "{{ 7|add:7 }}{% now 'Y' %}",
]
# Marks that only appear if a payload's markup survived into the HTML as markup.
LIVE_MARKUP = re.compile(
    r"<script>alert|<img src=x onerror|<svg/onload|</script><script>alert", re.IGNORECASE
)


@pytest.fixture(autouse=True)
def _plain_static_files(settings, monkeypatch):
    # Templates render without a collectstatic manifest.
    settings.STORAGES = {
        **settings.STORAGES,
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }
    settings.SIGNUP_ENABLED = True
    # Realtime publishes are captured, never sent: these tests are about the web layer.
    monkeypatch.setattr(realtime, "outbox", [])


@dataclass(frozen=True)
class Route:
    name: str
    pattern: str
    takes_conversation: bool

    def url(self, conversation_id: Any = None) -> str:
        kwargs: dict[str, Any] = {}
        if "<uidb64>" in self.pattern:
            kwargs = {"uidb64": "MQ", "token": "set-password"}
        elif self.takes_conversation:
            kwargs = {"conversation_id": conversation_id}
        elif "<uuid:attachment_id>" in self.pattern:
            kwargs = {"attachment_id": uuid.uuid4()}
        return reverse(self.name, kwargs=kwargs)


def _walk(patterns: list[Any], prefix: str = "", namespace: str | None = None) -> Iterator[Route]:
    for entry in patterns:
        if isinstance(entry, URLResolver):
            yield from _walk(
                entry.url_patterns, prefix + str(entry.pattern), entry.namespace or namespace
            )
        elif isinstance(entry, URLPattern) and entry.name:
            name = f"{namespace}:{entry.name}" if namespace else entry.name
            yield Route(name, prefix + str(entry.pattern), "conversation_id" in str(entry.pattern))


def site_routes() -> list[Route]:
    """Every named route outside the admin (which has its own checks below), once each."""
    seen: dict[str, Route] = {}
    for route in _walk(get_resolver().url_patterns):
        if not route.pattern.startswith("admin/"):
            seen.setdefault(route.name, route)
    return sorted(seen.values(), key=lambda r: r.name)


SITE_ROUTES = site_routes()
PRIVATE_ROUTES = [r for r in SITE_ROUTES if r.name not in PUBLIC_ROUTES]
CONVERSATION_ROUTES = [r for r in SITE_ROUTES if r.takes_conversation]


def test_the_route_walk_finds_the_apps_views():
    # A guard on the walk itself: if it found nothing, every test below would pass vacuously.
    names = {r.name for r in SITE_ROUTES}
    assert {"conversations:list", "conversations:detail", "conversations:ably_token"} <= names
    assert len(CONVERSATION_ROUTES) >= 5


def make_conversation(owner: Any, title: str = "Private") -> Conversation:
    conversation = Conversation.objects.create(owner=owner, title=title)
    prompt_id = uuid.uuid4()
    Message.objects.create(
        conversation=conversation,
        role=Message.Role.USER,
        text="a private question",
        prompt_id=prompt_id,
        client_id=realtime.client_id_for_user(owner),
    )
    Message.objects.create(
        conversation=conversation,
        role=Message.Role.ASSISTANT,
        text="a private answer",
        prompt_id=prompt_id,
        response_id=uuid.uuid4(),
        status=Message.Status.COMPLETE,
    )
    return conversation


def snapshot() -> list[tuple[Any, ...]]:
    """Everything a state change could alter, to compare before and after a refused request."""
    conversations = Conversation.objects.order_by("pk").values_list(
        "pk", "title", "archived", "owner_id"
    )
    messages = Message.objects.order_by("pk").values_list("pk", "text", "status")
    return [*conversations, *messages]


# --- login --------------------------------------------------------------------------------------


@pytest.mark.parametrize("route", PRIVATE_ROUTES, ids=lambda r: r.name)
@pytest.mark.parametrize("method", ["get", "post"])
def test_every_private_route_requires_login(client, alice, route, method):
    conversation = make_conversation(alice)
    before = snapshot()
    url = route.url(conversation.pk)
    response = getattr(client, method)(url)
    if route.name == "conversations:ably_token":
        # ably-js calls this, not a person: a JSON 401 (or 405 for POST), never a token.
        assert response.status_code in (401, 405)
        assert response.get("Content-Type", "").startswith("application/json") or (
            response.status_code == 405
        )
    else:
        assert response.status_code in (302, 405), response.status_code
        if response.status_code == 302:
            assert response["Location"].startswith(reverse("login"))
    assert b"a private" not in response.content
    assert snapshot() == before


def test_a_deactivated_users_session_stops_working(client, alice):
    conversation = make_conversation(alice)
    client.force_login(alice)
    assert client.get(conversation.get_absolute_url()).status_code == 200
    alice.is_active = False
    alice.save()
    assert client.get(conversation.get_absolute_url()).status_code == 302
    assert client.get(reverse("conversations:ably_token")).status_code == 401


# --- CSRF ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("route", SITE_ROUTES, ids=lambda r: r.name)
def test_every_post_without_a_csrf_token_is_refused_and_changes_nothing(alice, route):
    conversation = make_conversation(alice)
    browser = Client(enforce_csrf_checks=True)
    if route.name not in PUBLIC_ROUTES:
        browser.force_login(alice)
    before = snapshot()
    response = browser.post(
        route.url(conversation.pk),
        {
            "title": "Changed by a forged form",
            "username": "mallory",
            "password": "alice-password-1",
            "password1": "a-Str0ng-passw0rd!",
            "password2": "a-Str0ng-passw0rd!",
            "email": "alice@example.com",
        },
    )
    # 403 is the CSRF refusal; 405 means the route takes no POST at all.
    assert response.status_code in (403, 405), (route.name, response.status_code)
    assert snapshot() == before
    assert not Conversation.objects.filter(title="Changed by a forged form").exists()


def test_logout_and_login_are_protected_too(alice):
    """Login CSRF would let an attacker sign a victim into the attacker's account."""
    browser = Client(enforce_csrf_checks=True)
    response = browser.post(reverse("login"), {"username": "alice", "password": "alice-password-1"})
    assert response.status_code == 403
    assert "_auth_user_id" not in browser.session
    browser.force_login(alice)
    assert browser.post(reverse("logout")).status_code == 403
    assert browser.session.get("_auth_user_id") == str(alice.pk)


def test_a_genuine_form_post_with_its_token_works(alice):
    """The converse, so the refusals above are about CSRF and not a broken view."""
    conversation = make_conversation(alice)
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(alice)
    page = browser.get(reverse("conversations:rename", args=[conversation.pk]))
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.content.decode())
    assert token, "the rename form carries no CSRF token"
    response = browser.post(
        reverse("conversations:rename", args=[conversation.pk]),
        {"title": "Renamed properly", "csrfmiddlewaretoken": token.group(1)},
    )
    assert response.status_code == 302
    conversation.refresh_from_db()
    assert conversation.title == "Renamed properly"


def test_admin_changes_need_a_csrf_token(alice, django_user_model):
    staff = django_user_model.objects.create_superuser("root", "root@example.com", "root-pass-1")
    conversation = make_conversation(alice)
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(staff)
    before = snapshot()
    changelist = reverse("admin:conversations_conversation_changelist")
    action = browser.post(
        changelist, {"action": "archive_selected", "_selected_action": [str(conversation.pk)]}
    )
    change = browser.post(
        reverse("admin:conversations_conversation_change", args=[conversation.pk]),
        {"title": "Changed by a forged form"},
    )
    delete = browser.post(
        reverse("admin:conversations_conversation_delete", args=[conversation.pk]), {"post": "yes"}
    )
    assert (action.status_code, change.status_code, delete.status_code) == (403, 403, 403)
    assert snapshot() == before


# --- other users' ids ---------------------------------------------------------------------------


@pytest.mark.parametrize("route", CONVERSATION_ROUTES, ids=lambda r: r.name)
@pytest.mark.parametrize("method", ["get", "post"])
def test_another_users_conversation_is_a_404_on_every_route(alice_client, bob, route, method):
    theirs = make_conversation(bob, title="Bob's secret project")
    before = snapshot()
    response = getattr(alice_client, method)(route.url(theirs.pk), {"title": "Taken over"})
    assert response.status_code in (404, 405), response.status_code
    body = response.content.decode()
    assert "Bob's secret project" not in body and "a private" not in body
    assert snapshot() == before


@pytest.mark.parametrize("make_id", ["bob", "unknown", "garbage"])
def test_the_token_endpoint_does_not_reveal_whether_a_conversation_exists(
    alice_client, bob, make_id
):
    ids = {
        "bob": str(make_conversation(bob).pk),
        "unknown": str(uuid.uuid4()),
        "garbage": "../../etc/passwd",
    }
    response = alice_client.get(reverse("conversations:ably_token"), {"conversation": ids[make_id]})
    assert response.status_code == 404
    assert response.json() == {"error": "No such conversation."}


def test_the_unscoped_token_never_names_another_users_channel(alice_client, alice, bob):
    mine = make_conversation(alice)
    theirs = make_conversation(bob)
    token = alice_client.get(reverse("conversations:ably_token")).content.decode()
    claims = jwt.decode(token, options={"verify_signature": False})
    capability = json.loads(claims["x-ably-capability"])
    assert mine.channel_name in capability
    assert theirs.channel_name not in capability
    assert not any("*" in channel for channel in capability)
    assert claims["x-ably-clientId"] == realtime.client_id_for_user(alice)


# --- staff only ---------------------------------------------------------------------------------


ADMIN_PAGES = [
    ("admin:index", False),
    ("admin:conversations_conversation_changelist", False),
    ("admin:conversations_conversation_change", True),
    ("admin:auth_user_changelist", False),
]


@pytest.mark.parametrize(("name", "takes_id"), ADMIN_PAGES)
def test_the_admin_is_staff_only(client, alice, django_user_model, name, takes_id):
    conversation = make_conversation(alice, title="Watched")
    url = reverse(name, args=[conversation.pk] if takes_id else [])
    # Anonymous and ordinary users are sent to the admin login; they see nothing.
    for who in (None, alice):
        client.logout()
        if who is not None:
            client.force_login(who)
        response = client.get(url)
        assert response.status_code == 302, (who, response.status_code)
        assert response["Location"].startswith(reverse("admin:login"))
    staff = django_user_model.objects.create_user("staffer", "s@example.com", "pw", is_staff=True)
    staff_superuser = django_user_model.objects.create_superuser("root", "r@example.com", "pw")
    client.force_login(staff_superuser)
    assert client.get(url).status_code == 200
    # Staff without model permissions get the admin shell but not the data.
    client.force_login(staff)
    response = client.get(url)
    assert response.status_code in (200, 403)
    assert b"a private answer" not in response.content


def test_the_live_view_is_read_only_for_staff_and_hidden_from_everyone_else(
    client, alice, bob, django_user_model
):
    conversation = make_conversation(alice, title="Watched")
    client.force_login(bob)
    assert client.get(conversation.get_absolute_url()).status_code == 404
    token = client.get(reverse("conversations:ably_token"), {"conversation": conversation.pk})
    assert token.status_code == 404

    bob.is_staff = True
    bob.save()
    page = client.get(conversation.get_absolute_url())
    assert page.status_code == 200
    assert b"a private answer" in page.content
    assert b"data-composer-input" not in page.content
    token = client.get(reverse("conversations:ably_token"), {"conversation": conversation.pk})
    claims = jwt.decode(token.content, options={"verify_signature": False})
    operations = json.loads(claims["x-ably-capability"])[conversation.channel_name]
    assert sorted(operations) == ["history", "subscribe"]
    # Watching never becomes changing.
    for name in ("rename", "archive", "unarchive", "delete"):
        response = client.post(reverse(f"conversations:{name}", args=[conversation.pk]))
        assert response.status_code == 404
    conversation.refresh_from_db()
    assert (conversation.title, conversation.archived) == ("Watched", False)


# --- limits the page announces --------------------------------------------------------------------


def test_the_composer_enforces_the_prompt_size_limit(alice_client, alice, settings):
    settings.MAX_PROMPT_CHARS = 1234
    conversation = make_conversation(alice)
    page = alice_client.get(conversation.get_absolute_url()).content.decode()
    assert re.search(r'<textarea[^>]*maxlength="1234"', page)
    config = re.search(
        r'<script id="chat-config" type="application/json">(.*?)</script>', page, re.S
    )
    assert config and json.loads(config.group(1))["maxPromptChars"] == 1234


# --- XSS: stored hostile text renders inert -------------------------------------------------------


def hostile_conversation(owner: Any, payload: str) -> Conversation:
    conversation = Conversation.objects.create(owner=owner, title=f"Title {payload}")
    prompt_id = uuid.uuid4()
    Message.objects.create(
        conversation=conversation,
        role=Message.Role.USER,
        text=f"Prompt {payload}",
        prompt_id=prompt_id,
        client_id=realtime.client_id_for_user(owner),
    )
    Message.objects.create(
        conversation=conversation,
        role=Message.Role.ASSISTANT,
        text=f"Reply {payload}",
        thinking=f"Thinking {payload}",
        error=f"Error {payload}",
        model=f"model-{payload}",
        prompt_id=prompt_id,
        response_id=uuid.uuid4(),
        status=Message.Status.ERROR,
    )
    return conversation


def assert_inert(html: str, payload: str) -> None:
    assert not LIVE_MARKUP.search(html), LIVE_MARKUP.search(html)
    # Template syntax in data is data: never evaluated (14 would mean `add` ran).
    assert "{{ 7|add:7 }}" not in payload or "14{" not in html


@pytest.mark.parametrize("payload", XSS_PAYLOADS)
def test_hostile_titles_prompts_and_replies_render_inert_on_every_page(
    client, alice, django_user_model, payload
):
    conversation = hostile_conversation(alice, payload)
    client.force_login(alice)
    pages = {
        "list": client.get(reverse("conversations:list")),
        "search": client.get(reverse("conversations:list"), {"q": payload}),
        "detail": client.get(conversation.get_absolute_url()),
        "rename": client.get(reverse("conversations:rename", args=[conversation.pk])),
        "rename-error": client.post(
            reverse("conversations:rename", args=[conversation.pk]), {"title": payload * 60}
        ),
        "delete": client.get(reverse("conversations:delete", args=[conversation.pk])),
    }
    staff = django_user_model.objects.create_superuser("root", "r@example.com", "pw")
    client.force_login(staff)
    pages["admin-list"] = client.get(reverse("admin:conversations_conversation_changelist"))
    pages["admin-search"] = client.get(
        reverse("admin:conversations_conversation_changelist"), {"q": payload}
    )
    pages["admin-change"] = client.get(
        reverse("admin:conversations_conversation_change", args=[conversation.pk])
    )
    pages["staff-live-view"] = client.get(conversation.get_absolute_url())
    for name, response in pages.items():
        assert response.status_code in (200, 400), (name, response.status_code)
        assert_inert(response.content.decode(), payload)
    # The text is still there for people to read, just escaped.
    detail = pages["detail"].content.decode()
    assert "Reply " in detail and "Error " in detail and "Prompt " in detail


@pytest.mark.parametrize("payload", XSS_PAYLOADS)
def test_page_config_json_cannot_break_out_of_its_script_tag(alice_client, alice, payload):
    conversation = hostile_conversation(alice, payload)
    html = alice_client.get(conversation.get_absolute_url()).content.decode()
    config = re.search(
        r'<script id="chat-config" type="application/json">(.*?)</script>', html, re.S
    )
    assert config, "the chat-config block ended early or is missing"
    data = json.loads(config.group(1))
    # The title reaches the client intact (it is rendered as text there), inside valid JSON.
    assert data["title"] == f"Title {payload}"
