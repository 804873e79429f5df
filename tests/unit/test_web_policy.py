"""The page policy (Content-Security-Policy) and the product's own error pages."""

from __future__ import annotations

import re
import uuid
from html.parser import HTMLParser

import pytest
from django.core.exceptions import PermissionDenied
from django.test import RequestFactory
from django.urls import reverse

from chatsite.policy import ProductErrorPagesMiddleware
from conversations.models import Conversation, Message

pytestmark = pytest.mark.django_db


def policy(response) -> dict[str, list[str]]:
    header = response["Content-Security-Policy"]
    directives = {}
    for part in header.split(";"):
        name, *values = part.split()
        directives[name] = values
    return directives


def conversation_with_a_turn(owner) -> Conversation:
    conversation = Conversation.objects.create(owner=owner, title="Policy")
    prompt_id = uuid.uuid4()
    Message.objects.create(
        conversation=conversation, role=Message.Role.USER, text="hi", prompt_id=prompt_id
    )
    Message.objects.create(
        conversation=conversation,
        role=Message.Role.ASSISTANT,
        text="**hello** ![x](http://127.0.0.1:9/pixel)",
        prompt_id=prompt_id,
        response_id=uuid.uuid4(),
    )
    return conversation


def test_pages_allow_scripts_styles_and_images_from_our_origin_only(alice_client, alice):
    conversation = conversation_with_a_turn(alice)
    for url in (reverse("login"), reverse("conversations:list"), conversation.get_absolute_url()):
        directives = policy(alice_client.get(url))
        assert directives["script-src"] == ["'self'"]
        assert directives["style-src"] == ["'self'"]
        assert directives["img-src"] == ["'self'", "data:"]
        assert directives["default-src"] == ["'self'"]
        assert directives["object-src"] == ["'none'"]
        assert directives["frame-ancestors"] == ["'none'"]
        assert "'unsafe-inline'" not in " ".join(sum(directives.values(), []))


def test_connections_go_to_our_origin_and_the_configured_ably_endpoint(alice_client, settings):
    settings.ABLY_ENDPOINT = "https://realtime.example.com:8443"
    directives = policy(alice_client.get(reverse("conversations:list")))
    assert directives["connect-src"] == [
        "'self'",
        "https://realtime.example.com:8443",
        "wss://realtime.example.com:8443",
    ]
    # Read per response, not at start-up: the local stand-in's plain-HTTP endpoint.
    settings.ABLY_ENDPOINT = "http://127.0.0.1:8788"
    directives = policy(alice_client.get(reverse("conversations:list")))
    assert directives["connect-src"] == ["'self'", "http://127.0.0.1:8788", "ws://127.0.0.1:8788"]


def test_without_an_endpoint_connections_may_reach_ablys_own_hosts(alice_client, settings):
    settings.ABLY_ENDPOINT = ""
    sources = policy(alice_client.get(reverse("conversations:list")))["connect-src"]
    assert sources[0] == "'self'"
    assert {"https://*.ably.net", "wss://*.ably.net", "wss://*.ably-realtime.com"} <= set(sources)


class InlineCode(HTMLParser):
    """Collects what the policy would block: inline scripts, style attributes and elements,
    event-handler attributes and javascript: URLs."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "script" and "src" not in attributes:
            if attributes.get("type") != "application/json":
                self.found.append(f"inline <script> {attributes}")
        if tag == "style":
            self.found.append("<style> element")
        for name, value in attrs:
            if name == "style" or name.startswith("on"):
                self.found.append(f"<{tag} {name}={value!r}>")
            if name in ("href", "src", "action") and (value or "").lower().startswith(
                "javascript:"
            ):
                self.found.append(f"<{tag} {name}={value!r}>")


def inline_code(html: str) -> list[str]:
    parser = InlineCode()
    parser.feed(html)
    return parser.found


def test_our_pages_and_the_admin_have_no_inline_script_or_style(client, alice):
    alice.is_staff = alice.is_superuser = True
    alice.save()
    conversation = conversation_with_a_turn(alice)
    assert inline_code(client.get(reverse("login")).content.decode()) == []
    client.force_login(alice)
    for url in (
        reverse("conversations:list"),
        conversation.get_absolute_url(),
        reverse("conversations:delete", args=[conversation.pk]),
        reverse("admin:index"),
        reverse("admin:conversations_conversation_changelist"),
        reverse("admin:conversations_conversation_change", args=[conversation.pk]),
        reverse("admin:auth_user_changelist"),
    ):
        response = client.get(url)
        assert response.status_code == 200, url
        assert "Content-Security-Policy" in response, url
        assert inline_code(response.content.decode()) == [], url


# --- The product's own error pages ---


def test_a_conversation_i_may_not_see_is_the_products_404_even_with_debug_on(
    alice_client, bob, settings
):
    settings.DEBUG = True
    conversation = Conversation.objects.create(owner=bob, title="Bob's secret")
    for url in (
        conversation.get_absolute_url(),
        reverse("conversations:detail", args=[uuid.uuid4()]),
        reverse("conversations:delete", args=[conversation.pk]),
    ):
        response = alice_client.get(url)
        assert response.status_code == 404
        page = response.content.decode()
        assert "Not found" in page and "Back to your conversations" in page
        # Not Django's debug page, which lists every URL pattern of the site.
        assert "URLconf" not in page and "admin/" not in page
        assert "Bob's secret" not in page


def test_a_refusal_is_the_products_403(alice, settings):
    settings.DEBUG = True
    request = RequestFactory().get("/somewhere")
    request.user = alice
    response = ProductErrorPagesMiddleware(lambda r: None).process_exception(
        request, PermissionDenied("no")
    )
    assert response.status_code == 403
    assert "Not allowed" in response.content.decode()


def test_with_debug_off_django_uses_the_same_pages(alice_client, bob, settings):
    settings.DEBUG = False
    conversation = Conversation.objects.create(owner=bob)
    response = alice_client.get(conversation.get_absolute_url())
    assert response.status_code == 404
    assert re.search(r"Not found", response.content.decode())
