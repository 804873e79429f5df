"""Every page fits phone and desktop widths; with UPDATE_SCREENSHOTS=1 it also refreshes
docs/screenshots/ (the README shows them)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from conversations import actions
from conversations.models import Conversation, Message

from .conftest import DESKTOP, PHONE

pytestmark = [pytest.mark.browser, pytest.mark.slow]

SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
ANSWER = """Binary search halves the range each step, so it needs **O(log n)** comparisons.

```python
def binary_search(items, target):
    low, high = 0, len(items) - 1
    while low <= high:
        middle = (low + high) // 2
        if items[middle] == target:
            return middle
        if items[middle] < target:
            low = middle + 1
        else:
            high = middle - 1
    return -1
```

| Input size | Comparisons (worst case) |
|---:|---:|
| 1,000 | 10 |
| 1,000,000 | 20 |

1. Keep the list **sorted**.
2. Compare with the middle item.
3. Discard the half that cannot hold the target."""


def assert_fits_width(page: Page, width: int) -> None:
    overflow = page.evaluate("document.documentElement.scrollWidth")
    assert overflow <= width, f"page is {overflow}px wide at a {width}px viewport"


def capture(page: Page, name: str) -> None:
    if os.environ.get("UPDATE_SCREENSHOTS") == "1":
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / f"{name}.png"))


def store_exchange(
    conversation: Conversation, prompt: str, answer: str, thinking: str = ""
) -> None:
    prompt_id = uuid.uuid4()
    conversation.refresh_from_db()
    # On the shown path, as the agent stores a turn (issue 16: the conversation is a tree).
    stored_prompt = Message.objects.create(
        conversation=conversation,
        role=Message.Role.USER,
        client_id="user",
        text=prompt,
        prompt_id=prompt_id,
        parent=conversation.current_leaf,
    )
    reply = Message.objects.create(
        conversation=conversation,
        role=Message.Role.ASSISTANT,
        client_id="agent",
        text=answer,
        thinking=thinking,
        prompt_id=prompt_id,
        request_id=prompt_id,
        parent=stored_prompt,
        response_id=uuid.uuid4(),
        model="claude-sonnet-5-5",
        stop_reason="end_turn",
    )
    Conversation.objects.filter(pk=conversation.pk).update(current_leaf=reply)


@pytest.mark.parametrize(("size_name", "viewport"), [("desktop", DESKTOP), ("phone", PHONE)])
def test_pages_fit_the_screen(stack, browser, make_device, alice, size_name, viewport):
    anonymous = browser.new_context(viewport=viewport)
    try:
        login = anonymous.new_page()
        login.goto(stack.absolute("/accounts/login/"))
        expect(login.get_by_label("Username")).to_be_visible()
        assert_fits_width(login, viewport["width"])
        capture(login, f"login-{size_name}")
    finally:
        anonymous.close()

    lisbon = actions.create_conversation(alice, title="Weekend in Lisbon")
    actions.create_conversation(alice, title="Postgres index tuning")
    binary = actions.create_conversation(alice, title="Binary search in Python")
    store_exchange(
        binary,
        "How does binary search work? Show me Python.",
        ANSWER,
        thinking="The user wants the idea and runnable code; a table makes the log n growth concrete.",
    )
    device = make_device(alice, viewport=viewport)
    device.open_conversation(binary)
    device.send(
        "Say exactly: Recursion works too: call the function on the half that can still hold the target."
    )
    expect(device.replies().nth(1)).to_have_attribute("data-status", "complete")
    expect(device.page.locator(".code-block code")).to_have_attribute("data-highlighted", "yes")
    expect(device.page.locator("[data-agent-status]")).to_have_text("Claude is ready")
    device.page.locator("[data-composer-input]").fill("Can you add tests for it?")
    device.page.mouse.move(0, 0)
    assert_fits_width(device.page, viewport["width"])
    device.page.evaluate("window.scrollTo(0, 0)")
    capture(device.page, f"conversation-{size_name}")
    if viewport is PHONE:
        # The conversations are a slide-over on a phone, behind the header's toggle.
        device.page.locator("[data-sidebar-toggle]").click()
        expect(device.page.locator("[data-sidebar]")).to_be_visible()
        # Slid all the way in (the slide is a short transition).
        device.page.wait_for_function(
            "() => document.querySelector('[data-sidebar]').getBoundingClientRect().left >= 0"
        )
        assert_fits_width(device.page, viewport["width"])
        capture(device.page, "sidebar-phone")
        device.page.keyboard.press("Escape")
        expect(device.page.locator("[data-sidebar]")).to_be_hidden()

    device.open("/")
    device.wait_until_live()
    expect(device.page.locator(f"[data-conversation-id='{lisbon.pk}']")).to_be_visible()
    assert_fits_width(device.page, viewport["width"])
    capture(device.page, f"list-{size_name}")
