"""The page policy in a real browser: no request to an image address a model wrote, no CSP
violation anywhere (a full conversation with code, a table and thinking, the admin and its
live view), and unfinished markdown that never flashes raw markers while a reply streams."""

from __future__ import annotations

from typing import Any

import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import Device

PIXEL = "http://127.0.0.1:9/pixel"

# Recorded before any page script runs (Playwright's init scripts are not subject to the CSP).
WATCH_VIOLATIONS = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", (event) => {
  window.__cspViolations.push(`${event.effectiveDirective} ${event.blockedURI}`);
});
"""


class PolicyWatch:
    """Everything a device's pages did that the policy is about, across navigations."""

    def __init__(self, device: Device) -> None:
        self.requests: list[str] = []
        self.console: list[str] = []
        self.device = device
        device.context.add_init_script(WATCH_VIOLATIONS)
        device.context.on("request", lambda request: self.requests.append(request.url))
        device.page.on(
            "console",
            lambda message: (
                self.console.append(message.text)
                if "Content Security Policy" in message.text
                else None
            ),
        )

    def violations(self, page: Page | None = None) -> list[str]:
        reported = (page or self.device.page).evaluate("window.__cspViolations || []")
        return [*reported, *self.console]

    def pixel_requests(self) -> list[str]:
        return [url for url in self.requests if url.startswith("http://127.0.0.1:9/")]


REPLY = (
    "Here is **bold**, a [link](https://example.com/docs) and a chart: ![x](" + PIXEL + ")\n\n"
    "```python\ndef double(x):\n    return x * 2\n```\n\n"
    "| a | b |\n|---|---|\n| 1 | 2 |\n"
)


def check_reply(reply: Any) -> None:
    expect(reply).to_have_attribute("data-status", "complete")
    text = reply.locator(".turn-text")
    expect(text.locator("strong")).to_have_text("bold")
    expect(text.locator("img")).to_have_count(0)
    image_link = text.locator("a.reply-image-link")
    expect(image_link).to_have_attribute("href", PIXEL)
    expect(image_link).to_contain_text("x")
    expect(image_link).to_have_attribute("rel", "noopener noreferrer nofollow")
    # highlight.js loads as a module from our origin, as the policy requires.
    code = text.locator(".code-block code")
    expect(code).to_have_attribute("data-highlighted", "yes")
    expect(code.locator(".hljs-keyword").first).to_have_text("def")
    expect(text.locator("table td").first).to_have_text("1")
    expect(reply.locator("details[data-thinking] .turn-thinking-text")).not_to_be_empty()


@pytest.mark.parametrize("agent_options", [{"thinking_budget": 1024}])
def test_a_full_conversation_and_the_admin_live_view_keep_to_the_policy(
    stack, make_device, alice, conversation, django_user_model
):
    owner = make_device(alice)
    owner_watch = PolicyWatch(owner)
    owner.open_conversation(conversation)
    owner.send(f"Say exactly: {REPLY}")
    check_reply(owner.replies().first)
    # Rendered again from the database.
    owner.page.reload()
    owner.wait_until_live()
    check_reply(owner.replies().first)
    # The user may choose to open the image: it is a plain link to the address.
    assert owner_watch.pixel_requests() == []
    assert owner_watch.violations() == []

    staff = django_user_model.objects.create_superuser("staffer", "s@example.com", "pw")
    watcher = make_device(staff)
    watch = PolicyWatch(watcher)
    watcher.open(f"/admin/conversations/conversation/{conversation.pk}/change/")
    expect(watcher.page.locator("#content h1")).to_be_visible()
    assert watch.violations() == []
    watcher.page.get_by_text("Watch this conversation live").click()
    watcher.wait_until_live()
    check_reply(watcher.replies().first)
    owner.send("Say exactly: watched **live** with ![y](" + PIXEL + "?again)")
    second = watcher.replies().nth(1)
    expect(second).to_have_attribute("data-status", "complete")
    expect(second.locator(".turn-text strong")).to_have_text("live")
    expect(second.locator(".turn-text a.reply-image-link")).to_have_count(1)
    assert watch.pixel_requests() == [] and owner_watch.pixel_requests() == []
    assert watch.violations() == [] and owner_watch.violations() == []


# Every version of the reply's visible text as it streamed in, recorded in the page.
RECORD_RENDERS = """
() => {
  window.__renders = [];
  const turns = document.querySelector("[data-turns]");
  new MutationObserver(() => {
    const text = document.querySelector("article.turn-assistant .turn-text");
    if (!text) return;
    const visible = text.cloneNode(true);
    for (const code of visible.querySelectorAll("pre, code")) code.remove();
    window.__renders.push(visible.textContent);
  }).observe(turns, { subtree: true, childList: true, characterData: true });
}
"""

STREAMED = (
    "Some **strong words here** and *an emphasised phrase* then ~~struck text~~ and "
    "a [link to the docs](https://example.com/docs) with `inline code` too.\n\n"
    "1. first **item**\n2. second item\n\n"
    "```js\nconst a = 2 ** 3;\n```\n\nDone with __underlined bold__ at the end."
)


def test_unfinished_markdown_never_shows_raw_markers_while_streaming(
    stack, make_device, alice, conversation
):
    stack.anthropic.set_pacing(ttft=0.05, tokens_per_second=30)
    device = make_device(alice)
    device.open_conversation(conversation)
    device.page.evaluate(RECORD_RENDERS)
    device.send(f"Say exactly: {STREAMED}")
    reply = device.replies().first
    expect(reply).to_have_attribute("data-status", "complete")
    renders = device.page.evaluate("window.__renders")
    # Many intermediate renders were seen, and none showed a marker the final text lacks.
    assert len({r for r in renders if r}) > 10
    for render in renders:
        for marker in ("**", "__", "~~", "](", "[link", "`"):
            assert marker not in render, (marker, render)
        assert not render.rstrip().endswith(("*", "_", "~", "[", "!"))
    live_html = reply.locator(".turn-text").inner_html()
    # Once complete, the render is the one a fresh page shows.
    device.page.reload()
    device.wait_until_live()
    assert device.replies().first.locator(".turn-text").inner_html() == live_html
