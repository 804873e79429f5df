"""The conversation page in Chromium against the real stack: devices, streaming, resume, safety."""

from __future__ import annotations

import contextlib
import time
import uuid

import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError, expect

from .conftest import WAIT_MS, long_text, stored_reply

pytestmark = [pytest.mark.browser, pytest.mark.slow]

BOTH_PATTERNS = pytest.mark.parametrize(
    "streaming_pattern", ["message-per-response", "message-per-token"]
)


@BOTH_PATTERNS
def test_two_devices_share_the_prompt_the_stream_and_stop(stack, make_device, alice, conversation):
    stack.anthropic.set_pacing(ttft=0.05, tokens_per_second=25)
    laptop, phone = make_device(alice), make_device(alice)
    laptop.open_conversation(conversation)
    phone.open_conversation(conversation)
    expect(laptop.presence_count()).to_have_text("2 devices here")
    expect(phone.presence_count()).to_have_text("2 devices here")

    prompt = f"Say exactly: {long_text(400)}"
    laptop.send(prompt)

    # The prompt reaches the other device through the channel, not through the page it was typed on.
    expect(phone.prompts()).to_have_count(1)
    expect(phone.prompts().first.locator(".turn-text")).to_have_text(prompt)
    for device in (laptop, phone):
        device.wait_for_reply_text(device.replies().first, 40)
        expect(device.page.locator("[data-stop]")).to_be_visible()

    phone.page.locator("[data-stop]").click()

    for device in (laptop, phone):
        reply = device.replies().first
        expect(reply).to_have_attribute("data-status", "cancelled")
        expect(reply.locator("[data-turn-notice]")).to_have_text("Stopped.")
        expect(device.page.locator("[data-stop]")).to_be_hidden()
    stored = stored_reply(prompt)
    assert stored.status == "cancelled"
    assert 0 < len(stored.text) < len(prompt)
    # Every device shows exactly what was stored: nothing lost, nothing doubled.
    assert laptop.reply_text(laptop.replies().first) == stored.text
    assert phone.reply_text(phone.replies().first) == stored.text


@BOTH_PATTERNS
def test_reload_mid_answer_shows_the_text_so_far_and_keeps_streaming(
    stack, make_device, alice, conversation
):
    stack.anthropic.set_pacing(ttft=0.05, tokens_per_second=40)
    device = make_device(alice)
    device.open_conversation(conversation)
    prompt = f"Say exactly: {long_text(160)}"
    device.send(prompt)
    before = device.wait_for_reply_text(device.replies().first, 60)

    device.page.reload()
    device.wait_until_live()

    reply = device.replies().first
    assert device.reply_text(reply).startswith(before)
    expect(reply).to_have_attribute("data-status", "complete")
    expect(device.replies()).to_have_count(1)
    stored = stored_reply(prompt)
    assert device.reply_text(reply) == stored.text == prompt.removeprefix("Say exactly: ")


@BOTH_PATTERNS
def test_ten_seconds_offline_mid_answer_loses_nothing(stack, make_device, alice, conversation):
    # Long enough that the answer is still streaming when the network comes back.
    stack.anthropic.set_pacing(ttft=0.05, tokens_per_second=25)
    device = make_device(alice)
    device.open_conversation(conversation)
    prompt = f"Say exactly: {long_text(200)}"
    device.send(prompt)
    device.wait_for_reply_text(device.replies().first, 30)

    device.context.set_offline(True)
    expect(device.connection_badge()).not_to_have_attribute("data-connection-state", "connected")
    time.sleep(10)
    device.context.set_offline(False)

    expect(device.connection_badge()).to_have_attribute("data-connection-state", "connected")
    reply = device.replies().first
    expect(reply).to_have_attribute("data-status", "complete", timeout=2 * WAIT_MS)
    stored = stored_reply(prompt)
    assert device.reply_text(reply) == stored.text == prompt.removeprefix("Say exactly: ")
    expect(device.replies()).to_have_count(1)


def test_prompt_typed_offline_is_queued_visibly_and_sent_on_reconnect(
    stack, make_device, alice, conversation
):
    device = make_device(alice)
    device.open_conversation(conversation)
    device.context.set_offline(True)
    expect(device.connection_badge()).not_to_have_attribute("data-connection-state", "connected")

    device.send("Say exactly: written on the train")
    prompt = device.prompts().first
    expect(prompt).to_have_attribute("data-send-state", "queued")
    expect(prompt.locator("[data-send-state-label]")).to_contain_text("will send when back online")

    device.context.set_offline(False)
    expect(prompt).to_have_attribute("data-send-state", "sent")
    expect(device.replies().first).to_have_attribute("data-status", "complete")
    expect(device.replies().first.locator(".turn-text")).to_have_text("written on the train")


def test_html_and_script_in_a_prompt_and_a_reply_stay_inert(
    stack, make_device, alice, conversation
):
    device = make_device(alice)
    device.open_conversation(conversation)
    payload = (
        "<img src=x onerror=\"window.__xss='img'\"> **bold** "
        "<script>window.__xss='script'</script> <a href=\"javascript:window.__xss='link'\">link</a>"
    )
    prompt = f"Say exactly: {payload}"
    device.send(prompt)
    reply = device.replies().first
    expect(reply).to_have_attribute("data-status", "complete")

    for _ in range(2):  # live, then rendered again from the database after a reload
        page = device.page
        # The prompt is shown as the text that was typed.
        expect(device.prompts().first.locator(".turn-text")).to_have_text(prompt)
        expect(device.prompts().first.locator("img, script")).to_have_count(0)
        # The reply's markdown is rendered, its HTML defanged.
        expect(reply.locator(".turn-text strong")).to_have_text("bold")
        expect(reply.locator("script")).to_have_count(0)
        expect(reply.locator("[onerror]")).to_have_count(0)
        expect(reply.locator("a[href^='javascript']")).to_have_count(0)
        # The image became a link the user may open; it is never loaded (no onerror to fire).
        expect(reply.locator(".turn-text img")).to_have_count(0)
        expect(reply.locator(".turn-text a.reply-image-link")).to_have_count(1)
        assert page.evaluate("window.__xss") is None
        device.page.reload()
        device.wait_until_live()
        reply = device.replies().first


def test_markdown_code_is_highlighted_with_a_copy_button(stack, make_device, alice, conversation):
    device = make_device(alice)
    device.context.grant_permissions(["clipboard-read", "clipboard-write"])
    device.open_conversation(conversation)
    device.send(
        "Say exactly: Here is code:\n\n```python\ndef double(x):\n    return x * 2\n```\n\n"
        "| a | b |\n|---|---|\n| 1 | 2 |"
    )
    reply = device.replies().first
    expect(reply).to_have_attribute("data-status", "complete")
    code = reply.locator(".code-block code")
    expect(code).to_have_attribute("data-highlighted", "yes")
    expect(code.locator(".hljs-keyword").first).to_have_text("def")
    expect(reply.locator("table td").first).to_have_text("1")
    reply.locator(".copy-button").click()
    expect(reply.locator(".copy-button")).to_have_text("Copied")
    assert (
        device.page.evaluate("navigator.clipboard.readText()")
        == "def double(x):\n    return x * 2\n"
    )


def test_a_user_forging_agent_messages_is_ignored(stack, make_device, alice, conversation):
    forger, viewer = make_device(alice), make_device(alice)
    forger.open_conversation(conversation)
    viewer.open_conversation(conversation)
    forged_id = str(uuid.uuid4())
    forger.page.evaluate(
        """async ([channelName, responseId]) => {
            const channel = window.chatDebug.realtime.channels.get(channelName);
            const headers = {responseId, promptId: responseId, model: 'forged', part: 'text', seq: 0};
            await channel.publish({name: 'start', data: '', extras: {headers}});
            await channel.publish({name: 'response', data: 'FORGED ANSWER', extras: {headers}});
            await channel.publish({name: 'token', data: 'FORGED TOKEN', extras: {headers}});
            await channel.publish({name: 'stop', data: '', extras: {headers: {...headers, status: 'complete'}}});
        }""",
        [conversation.channel_name, forged_id],
    )
    # A real exchange after the forgery: once its reply shows, the forged messages (published
    # earlier on the same channel) have certainly been delivered too.
    viewer.send("Say exactly: the real answer")
    expect(viewer.replies()).to_have_count(1)
    expect(viewer.replies().first).to_have_attribute("data-status", "complete")
    for device in (forger, viewer):
        expect(device.replies().first.locator(".turn-text")).to_have_text("the real answer")
        expect(device.page.locator(f"[data-response-id='{forged_id}']")).to_have_count(0)
        expect(device.page.get_by_text("FORGED")).to_have_count(0)


def test_composer_refuses_empty_and_overlong_prompts(
    stack, make_device, alice, conversation, settings
):
    settings.MAX_PROMPT_CHARS = 40
    device = make_device(alice)
    device.open_conversation(conversation)
    box = device.page.locator("[data-composer-input]")
    error = device.page.locator("[data-composer-error]")

    box.fill("   ")
    box.press("Enter")
    expect(error).to_have_text("Type a message first.")

    box.fill("x" * 41)
    box.press("Enter")
    expect(error).to_have_text("Your message is 41 characters; the limit is 40.")
    expect(device.prompts()).to_have_count(0)

    box.fill("first line")
    box.press("Shift+Enter")
    box.type("second line")
    assert box.input_value() == "first line\nsecond line"
    expect(device.prompts()).to_have_count(0)
    box.press("Enter")
    expect(error).to_be_hidden()
    expect(device.prompts().first.locator(".turn-text")).to_have_text("first line\nsecond line")


def test_retry_after_an_error_and_regenerate(stack, make_device, alice, conversation):
    stack.anthropic.inject_fault("500", count=10)
    device = make_device(alice)
    device.open_conversation(conversation)
    device.send("Say exactly: worth retrying")
    failed = device.replies().first
    expect(failed).to_have_attribute("data-status", "error")
    expect(failed.locator("[data-turn-notice]")).not_to_be_empty()

    stack.anthropic.clear_faults()
    failed.locator("[data-retry]").click()
    # Issue 16: a new version in place of the failed one, not a second prompt.
    expect(device.prompts()).to_have_count(1)
    expect(device.replies()).to_have_count(1)
    retried = device.replies().first
    expect(retried).to_have_attribute("data-status", "complete")
    expect(retried.locator(".turn-text")).to_have_text("worth retrying")
    expect(retried.locator("[data-version-label]")).to_have_text("2/2")

    retried.locator("[data-regenerate]").click()
    expect(device.replies().first.locator("[data-version-label]")).to_have_text("3/3")
    expect(device.prompts()).to_have_count(1)
    expect(device.replies()).to_have_count(1)
    expect(device.replies().first).to_have_attribute("data-status", "complete")
    expect(device.replies().first.locator(".turn-text")).to_have_text("worth retrying")


def test_staff_watch_a_conversation_live_and_read_only(
    stack, make_device, alice, conversation, django_user_model
):
    staff = django_user_model.objects.create_user("staffer", "s@example.com", "pw", is_staff=True)
    owner, watcher = make_device(alice), make_device(staff)
    owner.open_conversation(conversation)
    watcher.open_conversation(conversation)
    expect(watcher.page.locator("[data-composer]")).to_have_count(0)
    expect(watcher.page.locator(".read-only-note")).to_be_visible()

    owner.send("Say exactly: watched live")
    expect(watcher.prompts().first.locator(".turn-text")).to_have_text("Say exactly: watched live")
    expect(watcher.replies().first.locator(".turn-text")).to_have_text("watched live")
    expect(
        watcher.page.locator("[data-regenerate], [data-retry], [data-stop]:visible")
    ).to_have_count(0)
    # Watching is invisible: the owner still counts one device.
    expect(owner.presence_count()).to_have_text("1 device here")


def test_beyond_the_resume_window_the_page_rehydrates(stack, make_device, alice, conversation):
    stack.anthropic.set_pacing(ttft=0.05, tokens_per_second=40)
    laptop, phone = make_device(alice), make_device(alice)
    laptop.open_conversation(conversation)
    phone.open_conversation(conversation)
    first = f"Say exactly: {long_text(120)}"
    laptop.send(first)
    laptop.wait_for_reply_text(laptop.replies().first, 30)

    laptop.context.set_offline(True)
    expect(laptop.connection_badge()).not_to_have_attribute("data-connection-state", "connected")
    # Past Ably's two-minute window the stand-in forgets the laptop's connection: it cannot
    # resume and must re-attach without continuity.
    stack.ably.advance_clock(130_000)
    stored_first = stored_reply(first)
    phone.send("Say exactly: sent while the laptop was away")
    stored_second = stored_reply("Say exactly: sent while the laptop was away")
    laptop.context.set_offline(False)

    expect(laptop.connection_badge()).to_have_attribute("data-connection-state", "connected")
    expect(laptop.prompts()).to_have_count(2)
    expect(laptop.replies()).to_have_count(2)
    expect(laptop.replies().nth(1)).to_have_attribute("data-status", "complete")
    expect(laptop.replies().first).to_have_attribute("data-status", "complete")
    assert laptop.reply_text(laptop.replies().first) == stored_first.text
    assert laptop.reply_text(laptop.replies().nth(1)) == stored_second.text


@pytest.mark.parametrize("agent_options", [{"thinking_budget": 1024}])
def test_thinking_streams_collapsed_apart_from_the_answer(stack, make_device, alice, conversation):
    device = make_device(alice)
    device.open_conversation(conversation)
    device.send("Say exactly: the answer itself")
    reply = device.replies().first
    expect(reply).to_have_attribute("data-status", "complete")
    thinking = reply.locator("details[data-thinking]")
    expect(thinking).to_have_count(1)
    expect(thinking).not_to_have_attribute("open", "")
    expect(thinking.locator(".turn-thinking-text")).not_to_be_empty()
    expect(reply.locator(".turn-text")).to_have_text("the answer itself")
    thinking.locator("summary").click()
    expect(thinking.locator(".turn-thinking-text")).to_be_visible()


def test_scrolling_follows_the_stream_unless_the_reader_scrolled_up(
    stack, make_device, alice, conversation
):
    stack.anthropic.set_pacing(ttft=0.05, tokens_per_second=60)
    device = make_device(alice, viewport={"width": 800, "height": 500})
    device.open_conversation(conversation)
    # Long enough to still be streaming after the reader has scrolled up, on a loaded machine.
    prompt = "Say exactly: " + "\n\n".join(long_text(12) for _ in range(40))
    device.send(prompt)
    reply = device.replies().first
    page = device.page
    at_bottom = "() => innerHeight + scrollY >= document.documentElement.scrollHeight - 90"
    page.wait_for_function("() => document.documentElement.scrollHeight > 2 * innerHeight")
    page.wait_for_function(at_bottom)

    # To the top, however long the reply has grown. Chromium scrolls a wheel off the main
    # thread, so a token the page handles before it sees the wheel can still snap the page back
    # down (it was following); then, like a reader, wheel again: it stops following at once.
    deadline = time.monotonic() + WAIT_MS / 1000
    while page.evaluate("scrollY") != 0:
        assert time.monotonic() < deadline, "the reader could not scroll to the top"
        page.mouse.wheel(0, -100_000)
        with contextlib.suppress(PlaywrightTimeoutError):
            page.wait_for_function("() => scrollY === 0", timeout=2_000)
    grown_from = device.wait_for_reply_text(reply, 1)
    device.wait_for_reply_text(reply, len(grown_from) + 200)
    assert page.evaluate("scrollY") == 0

    # Back at the bottom, the page follows the stream again.
    page.mouse.wheel(0, 100_000)
    expect(reply).to_have_attribute("data-status", "complete", timeout=2 * WAIT_MS)
    page.wait_for_function(at_bottom)


@pytest.mark.parametrize("agent_options", [{"retry_base_delay": 1.5, "retry_max_delay": 1.5}])
def test_agent_status_shows_retrying_while_the_model_is_overloaded(
    stack, make_device, alice, conversation
):
    device = make_device(alice)
    device.open_conversation(conversation)
    status = device.page.locator("[data-agent-status]")
    expect(status).to_have_attribute("data-agent-state", "idle")
    stack.anthropic.inject_fault("529", count=2)
    device.send("Say exactly: worth the wait")
    expect(status).to_have_attribute("data-agent-state", "retrying")
    expect(status).to_have_text("Claude is busy — retrying…")
    expect(device.replies().first).to_have_attribute("data-status", "complete")
    expect(device.replies().first.locator(".turn-text")).to_have_text("worth the wait")
    expect(status).to_have_attribute("data-agent-state", "idle")


def test_stop_before_the_first_token_cancels_the_prompt(stack, make_device, alice, conversation):
    stack.anthropic.set_pacing(ttft=3.0, tokens_per_second=20)
    device = make_device(alice)
    device.open_conversation(conversation)
    device.send("Say exactly: never mind")
    expect(device.prompts().first).to_have_attribute("data-send-state", "sent")
    expect(device.page.locator("[data-stop]")).to_be_visible()
    # Esc in the composer is the keyboard's Stop button.
    device.page.locator("[data-composer-input]").press("Escape")
    expect(device.replies().first).to_have_attribute("data-status", "cancelled")
    expect(device.page.locator("[data-stop]")).to_be_hidden()
    assert stored_reply("Say exactly: never mind").status == "cancelled"
