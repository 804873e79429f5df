"""The whole stack for browser tests: both stand-ins, Django's live server, the agent, Chromium.

Chromium is Debian's (/usr/bin/chromium; Playwright's own download cannot work offline), driven
through Playwright's sync API. Each "device" is its own browser context — its own cookies and its
own ably-js connection, as a second laptop or a phone would have.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.test import Client
from playwright.sync_api import Browser, BrowserContext, Locator, Page, expect, sync_playwright

from conversations import actions
from conversations.models import Conversation, Message
from tests.agent_fixtures import AgentThread, agent_config, point_settings_at

CHROMIUM_PATH = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    # Several devices in one browser: none may be throttled as a background tab.
    "--disable-background-timer-throttling",
    "--disable-renderer-backgrounding",
    "--disable-backgrounding-occluded-windows",
]
# One unit for every wait, so a slow machine scales them all at once.
WAIT_MS = int(float(os.environ.get("BROWSER_WAIT_SCALE", "1")) * 20_000)
DESKTOP = {"width": 1280, "height": 860}
PHONE = {"width": 390, "height": 844}

expect.set_options(timeout=WAIT_MS)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not os.path.exists(CHROMIUM_PATH):
        pytest.fail(f"Chromium not found at {CHROMIUM_PATH}: run `make chromium`")
    # Playwright's sync API runs an event loop under the test's own code, and Django refuses ORM
    # calls while a loop runs in the thread (Playwright documents this switch for Django).
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as playwright:
            launched = playwright.chromium.launch(
                executable_path=CHROMIUM_PATH, args=CHROMIUM_ARGS, headless=True
            )
            yield launched
            launched.close()
    finally:
        if previous is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


@dataclass
class Stack:
    """What a browser test talks to: the site, the stand-ins and the agent."""

    url: str
    ably: Any
    anthropic: Any
    agent: AgentThread

    def absolute(self, path: str) -> str:
        return self.url.rstrip("/") + path


@pytest.fixture
def streaming_pattern() -> str:
    """Override with `@pytest.mark.parametrize("streaming_pattern", [...])`."""
    return "message-per-response"


@pytest.fixture
def agent_options() -> dict[str, Any]:
    """Override with `@pytest.mark.parametrize("agent_options", [{...}])`: AgentConfig fields."""
    return {}


@pytest.fixture
def stack(
    settings: Any,
    transactional_db: None,
    ably_server: Any,
    anthropic_server: Any,
    live_server: Any,
    streaming_pattern: str,
    agent_options: dict[str, Any],
) -> Iterator[Stack]:
    point_settings_at(settings, ably_server, anthropic_server)
    settings.STREAMING_PATTERN = streaming_pattern
    # The live server serves static files through the finders, so skip the collected manifest.
    settings.STORAGES = {
        **settings.STORAGES,
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }
    config = agent_config(
        ably_server, anthropic_server, streaming_pattern=streaming_pattern, **agent_options
    )
    agent = AgentThread(config).start()
    try:
        yield Stack(url=live_server.url, ably=ably_server, anthropic=anthropic_server, agent=agent)
    finally:
        agent.stop(grace_period=1.0)


@dataclass
class Device:
    """One logged-in browser context with one page: a laptop, a phone, a second tab."""

    context: BrowserContext
    page: Page
    stack: Stack

    def open(self, path: str) -> Page:
        self.page.goto(self.stack.absolute(path))
        return self.page

    def open_conversation(self, conversation: Conversation) -> Page:
        self.open(conversation.get_absolute_url())
        self.wait_until_live()
        return self.page

    def wait_until_live(self) -> None:
        expect(self.page.locator("html")).to_have_attribute("data-chat-ready", "true")
        expect(self.connection_badge()).to_have_attribute("data-connection-state", "connected")

    def connection_badge(self) -> Locator:
        return self.page.locator(".connection-badge")

    def send(self, text: str) -> None:
        box = self.page.locator("[data-composer-input]")
        box.fill(text)
        box.press("Enter")

    # What the user sees: the shown path (issue 16 keeps other versions in the page, hidden).
    def prompts(self) -> Locator:
        return self.page.locator("article.turn-user:not([hidden])")

    def replies(self) -> Locator:
        return self.page.locator("article.turn-assistant:not([hidden])")

    def reply_text(self, reply: Locator) -> str:
        """The reply's markdown source as the client assembled it from the channel."""
        return reply.locator(".turn-text").evaluate("(element) => element.dataset.rawText ?? ''")

    def wait_for_reply_text(self, reply: Locator, min_chars: int) -> str:
        # The locator is resolved again on every poll: right after another device edits or
        # regenerates, `replies().first` may still be the old version, which is then hidden.
        # Pinning that element (an element handle) would wait on a reply no longer shown.
        expect(reply.locator(".turn-text")).to_have_attribute(
            "data-raw-text", re.compile(rf"^[\s\S]{{{min_chars},}}")
        )
        return self.reply_text(reply)

    def presence_count(self) -> Locator:
        return self.page.locator("[data-presence-kind='devices']")


@pytest.fixture
def make_device(browser: Browser, stack: Stack) -> Iterator[Callable[..., Device]]:
    contexts: list[BrowserContext] = []
    page_errors: list[str] = []

    def make(user: Any, *, viewport: dict[str, int] | None = None) -> Device:
        client = Client()
        client.force_login(user)
        session = client.cookies[django_settings.SESSION_COOKIE_NAME].value
        context = browser.new_context(viewport=viewport or DESKTOP)
        context.add_cookies(
            [{"name": django_settings.SESSION_COOKIE_NAME, "value": session, "url": stack.url}]
        )
        contexts.append(context)
        page = context.new_page()
        page.on("pageerror", lambda error: page_errors.append(str(error)))
        # Shown with a failing test's captured output: what the page itself complained about.
        page.on(
            "console",
            lambda message: (
                print(f"[browser {message.type}] {message.text}")
                if message.type in ("error", "warning")
                else None
            ),
        )
        return Device(context=context, page=page, stack=stack)

    yield make
    for context in contexts:
        context.close()
    # An exception thrown in the page is a bug even when the test's own assertions passed.
    assert not page_errors, f"JavaScript errors in the page: {page_errors}"


@pytest.fixture
def conversation(alice: Any, stack: Stack) -> Conversation:
    return actions.create_conversation(alice)


def stored_reply(prompt_text: str, *, timeout: float = WAIT_MS / 1000) -> Message:
    """The agent's stored reply to the (newest) prompt with this text, once it is final."""
    deadline = time.monotonic() + timeout
    while True:
        prompt = (
            Message.objects.filter(role=Message.Role.USER, text=prompt_text)
            .order_by("-created_at")
            .first()
        )
        if prompt is not None:
            reply = Message.objects.filter(
                role=Message.Role.ASSISTANT, prompt_id=prompt.prompt_id
            ).first()
            if reply is not None and reply.is_final:
                return reply
        if time.monotonic() > deadline:
            raise AssertionError(f"no final stored reply to {prompt_text[:60]!r}")
        time.sleep(0.1)


def long_text(words: int) -> str:
    """A reply long enough to still be streaming while a test acts on it."""
    vocabulary = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima".split()
    return " ".join(f"{vocabulary[i % len(vocabulary)]}{i}" for i in range(words))
