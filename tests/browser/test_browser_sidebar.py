"""The sidebar beside the open conversation: switching in place on one realtime connection, live
across devices, no empty conversations, the phone's slide-over, and the keyboard shortcuts."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from conversations import actions
from conversations.models import Conversation

from .conftest import DESKTOP, PHONE, Device, long_text, stored_reply
from .test_browser_layout import store_exchange

pytestmark = [pytest.mark.browser, pytest.mark.slow]

BOTH_SIZES = pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["desktop", "phone"])


def count_websockets(page: Page) -> list[str]:
    """Every WebSocket the page opens from now on (ably-js opens one per connection)."""
    opened: list[str] = []
    page.on("websocket", lambda socket: opened.append(socket.url))
    return opened


def connection_id(device: Device) -> str:
    return device.page.evaluate("window.chatDebug.realtime.connection.id")


def sidebar_item(device: Device, conversation_id: object):
    return device.page.locator(f"[data-sidebar] [data-conversation-id='{conversation_id}']")


def open_from_sidebar(device: Device, conversation: Conversation) -> None:
    if device.page.viewport_size["width"] < 900:
        device.page.locator("[data-sidebar-toggle]").click()
    sidebar_item(device, conversation.pk).locator("a").click()
    device.page.wait_for_url(f"**{conversation.get_absolute_url()}")
    device.wait_until_live()


def open_menu(device: Device) -> None:
    device.page.locator("[data-conversation-menu] > summary").click()


@pytest.mark.parametrize(
    ("viewport", "streaming_pattern"),
    [(DESKTOP, "message-per-response"), (PHONE, "message-per-token")],
    ids=["desktop", "phone"],
)
def test_switching_conversations_keeps_one_realtime_connection(
    stack, make_device, alice, viewport, streaming_pattern
):
    stack.anthropic.set_pacing(ttft=0.05, tokens_per_second=40)
    tides = actions.create_conversation(alice, title="Tides")
    store_exchange(tides, "Why are there two tides a day?", "The Moon pulls the oceans.")
    lisbon = actions.create_conversation(alice, title="Lisbon trip")
    store_exchange(lisbon, "Three things to see in Lisbon?", "Belém, Alfama, LX Factory.")
    device, other_device = make_device(alice, viewport=viewport), make_device(alice)
    sockets = count_websockets(device.page)
    device.open_conversation(tides)
    first_connection = connection_id(device)
    assert len(sockets) == 1

    # A reply is streaming in Lisbon (typed on another device) when this device switches to it.
    other_device.open_conversation(lisbon)
    prompt = f"Say exactly: {long_text(160)}"
    other_device.send(prompt)
    other_device.wait_for_reply_text(other_device.replies().nth(1), 40)

    open_from_sidebar(device, lisbon)
    expect(device.page.locator("[data-conversation-title]")).to_have_text("Lisbon trip")
    expect(device.page).to_have_title("Lisbon trip · Chat with Claude")
    # Hydrated as a fresh load would be: the stored turns, the text so far, then the rest live.
    expect(device.prompts()).to_have_count(2)
    reply = device.replies().nth(1)
    expect(reply).to_have_attribute("data-status", "complete")
    assert device.reply_text(reply) == stored_reply(prompt).text
    expect(device.replies()).to_have_count(2)
    expect(device.presence_count()).to_have_text("2 devices here")
    expect(sidebar_item(device, lisbon.pk).locator("a")).to_have_attribute("aria-current", "page")

    # Back and forward switch too; the old conversation's channel is left, not kept attached.
    device.page.go_back()
    device.page.wait_for_url(f"**{tides.get_absolute_url()}")
    device.wait_until_live()
    expect(device.page.locator("[data-conversation-title]")).to_have_text("Tides")
    expect(device.prompts()).to_have_count(1)
    expect(other_device.presence_count()).to_have_text("1 device here")
    attached = device.page.evaluate(
        """() => Object.values(window.chatDebug.realtime.channels.all)
            .filter((channel) => channel.state === 'attached').map((channel) => channel.name)"""
    )
    assert tides.channel_name in attached
    assert lisbon.channel_name not in attached
    device.page.go_forward()
    device.page.wait_for_url(f"**{lisbon.get_absolute_url()}")
    device.wait_until_live()
    expect(device.replies()).to_have_count(2)

    # The conversation still works after the switches: a prompt here is answered here.
    device.send("Say exactly: still connected")
    expect(device.replies().nth(2).locator(".turn-text")).to_have_text("still connected")
    assert connection_id(device) == first_connection
    assert len(sockets) == 1, sockets


def test_new_and_renamed_conversations_on_another_device_appear_in_the_sidebar(
    stack, make_device, alice, bob
):
    open_here = actions.create_conversation(alice, title="Open on the laptop")
    store_exchange(open_here, "Hi", "Hello!")
    laptop, phone = make_device(alice), make_device(alice, viewport=PHONE)
    strangers_laptop = make_device(bob)
    laptop.open_conversation(open_here)
    strangers_laptop.open("/new")
    strangers_laptop.wait_until_live()

    phone.open("/new")
    phone.wait_until_live()
    phone.send("Say exactly: made on the phone")
    phone.page.wait_for_url("**/conversations/*/")
    created = Conversation.objects.get(owner=alice, title="")
    item = sidebar_item(laptop, created.pk)
    expect(item.locator("a")).to_have_text("New conversation")
    expect(item.locator("a")).to_have_attribute("href", created.get_absolute_url())
    # Newest first.
    expect(
        laptop.page.locator("[data-sidebar-list='active'] [data-conversation-id]").first
    ).to_have_attribute("data-conversation-id", str(created.pk))

    expect(phone.replies().first).to_have_attribute("data-status", "complete")
    phone.wait_until_live()
    open_menu(phone)
    phone.page.locator("[data-rename] summary").click()
    phone.page.get_by_label("New title").fill("Phone thoughts")
    phone.page.get_by_role("button", name="Save").click()
    expect(item.locator("a")).to_have_text("Phone thoughts")

    phone.wait_until_live()
    open_menu(phone)
    phone.page.get_by_role("button", name="Archive", exact=True).click()
    archived_item = laptop.page.locator(
        f"[data-sidebar-list='archived'] [data-conversation-id='{created.pk}']"
    )
    expect(archived_item).to_have_count(1)
    expect(laptop.page.locator("[data-sidebar-archived-count]")).to_have_text("1")

    # Bob's sidebar hears nothing of Alice's conversations.
    expect(strangers_laptop.page.locator("[data-sidebar] [data-conversation-id]")).to_have_count(0)


def test_a_conversation_deleted_elsewhere_offers_nothing_more(stack, make_device, alice):
    conversation = actions.create_conversation(alice, title="Soon gone")
    laptop, phone = make_device(alice), make_device(alice)
    laptop.open_conversation(conversation)
    laptop.send("Say exactly: an answer")
    expect(laptop.replies().first).to_have_attribute("data-status", "complete")
    expect(laptop.page.locator("[data-regenerate]")).to_be_visible()

    phone.open(f"/conversations/{conversation.pk}/delete")
    phone.page.get_by_role("button", name="Delete conversation").click()

    expect(laptop.page.locator("[data-deleted-note]")).to_be_visible()
    expect(laptop.page.locator("[data-connection-status]")).to_contain_text(
        "deleted on another device"
    )
    for gone in (
        "[data-regenerate]",
        "[data-retry]",
        "[data-composer]",
        "[data-conversation-menu]",
    ):
        expect(laptop.page.locator(f"{gone}:visible")).to_have_count(0)
    expect(sidebar_item(laptop, conversation.pk)).to_have_count(0)
    # Its text stays readable, and copyable.
    expect(laptop.replies().first.locator("[data-copy-reply]")).to_be_visible()
    # The connection settles (its token no longer names the deleted conversation) and the
    # sidebar stays live: a conversation made elsewhere appears, and opens in place.
    expect(laptop.connection_badge()).to_have_attribute("data-connection-state", "connected")
    assert conversation.channel_name not in laptop.page.evaluate(
        """() => Object.values(window.chatDebug.realtime.channels.all)
            .filter((channel) => channel.state === 'attached').map((channel) => channel.name)"""
    )
    later = actions.create_conversation(alice, title="Carry on here")
    expect(sidebar_item(laptop, later.pk)).to_have_count(1)
    open_from_sidebar(laptop, later)
    laptop.send("Say exactly: carried on")
    expect(laptop.replies().first.locator(".turn-text")).to_have_text("carried on")
    expect(laptop.connection_badge()).to_have_attribute("data-connection-state", "connected")


@BOTH_SIZES
def test_new_chat_twice_leaves_no_empty_conversation(stack, make_device, alice, viewport):
    existing = actions.create_conversation(alice, title="Already here")
    store_exchange(existing, "Hi", "Hello!")
    device = make_device(alice, viewport=viewport)
    sockets = count_websockets(device.page)
    device.open_conversation(existing)
    first_connection = connection_id(device)

    for _ in range(2):
        if viewport is PHONE:
            device.page.locator("[data-sidebar-toggle]").click()
        device.page.locator("[data-new-chat]").click()
        device.page.wait_for_url("**/new")
        device.wait_until_live()
    expect(device.page.locator("[data-conversation-title]")).to_have_text("New conversation")
    expect(device.page.locator("[data-turns-empty]")).to_be_visible()
    assert Conversation.objects.filter(owner=alice).count() == 1
    device.page.reload()
    device.wait_until_live()
    expect(device.page.locator("[data-sidebar] [data-conversation-id]")).to_have_count(1)
    assert Conversation.objects.filter(owner=alice).count() == 1
    sockets.clear()
    first_connection = connection_id(device)

    # The first prompt creates the conversation, on the same connection (token re-scoped in place).
    device.send("Say exactly: a fresh start")
    device.page.wait_for_url("**/conversations/*/")
    created = Conversation.objects.exclude(pk=existing.pk).get(owner=alice)
    assert device.page.url.endswith(created.get_absolute_url())
    expect(device.replies().first.locator(".turn-text")).to_have_text("a fresh start")
    expect(device.replies().first).to_have_attribute("data-status", "complete")
    expect(sidebar_item(device, created.pk).locator("a")).to_have_attribute("aria-current", "page")
    assert connection_id(device) == first_connection
    assert sockets == []
    # The menu acts on the new conversation.
    open_menu(device)
    expect(device.page.locator("[data-delete]")).to_have_attribute(
        "href", f"/conversations/{created.pk}/delete"
    )
    assert Conversation.objects.filter(owner=alice).count() == 2


def test_phone_slide_over_opens_and_closes(stack, make_device, alice):
    conversation = actions.create_conversation(alice, title="On the go")
    store_exchange(conversation, "Hi", "Hello!")
    device = make_device(alice, viewport=PHONE)
    device.open_conversation(conversation)
    page = device.page
    sidebar = page.locator("[data-sidebar]")
    toggle = page.locator("[data-sidebar-toggle]")
    expect(page.get_by_role("link", name="Conversations", exact=True)).to_be_visible()
    expect(sidebar).to_be_hidden()
    expect(toggle).to_have_attribute("aria-expanded", "false")

    toggle.click()
    expect(sidebar).to_be_visible()
    expect(toggle).to_have_attribute("aria-expanded", "true")
    expect(page.locator("[data-sidebar] [data-new-chat]")).to_be_focused()
    page.keyboard.press("Escape")
    expect(sidebar).to_be_hidden()
    expect(toggle).to_be_focused()

    toggle.click()
    expect(sidebar).to_be_visible()
    page.locator("[data-sidebar-backdrop]").click(position={"x": 370, "y": 400})
    expect(sidebar).to_be_hidden()

    toggle.click()
    page.locator("[data-sidebar-close]").click()
    expect(sidebar).to_be_hidden()
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]


def test_keyboard_shortcuts(stack, make_device, alice):
    tides = actions.create_conversation(alice, title="Tides")
    store_exchange(tides, "Tides?", "The Moon.")
    bread = actions.create_conversation(alice, title="Sourdough bread")
    store_exchange(bread, "Bread?", "Flour, water, salt.")
    device = make_device(alice)
    device.open_conversation(tides)
    page = device.page
    # The shortcuts are documented on the page.
    help_box = page.locator("[data-shortcut-help]")
    help_box.locator("summary").click()
    expect(help_box).to_contain_text("New chat")
    expect(help_box).to_contain_text("Search conversations")

    page.keyboard.press("Control+K")
    search = page.locator("[data-sidebar-search]")
    expect(search).to_be_focused()
    page.keyboard.type("sourd")
    expect(sidebar_item(device, bread.pk)).to_be_visible()
    expect(sidebar_item(device, tides.pk)).to_be_hidden()
    page.keyboard.press("Escape")
    expect(sidebar_item(device, tides.pk)).to_be_visible()

    page.keyboard.press("Shift+Escape")
    expect(page.locator("[data-composer-input]")).to_be_focused()

    page.keyboard.press("Control+Shift+O")
    page.wait_for_url("**/new")
    device.wait_until_live()
    expect(page.locator("[data-conversation-title]")).to_have_text("New conversation")
    assert Conversation.objects.filter(owner=alice).count() == 2


def test_an_error_with_no_text_offers_no_copy(stack, make_device, alice, conversation):
    stack.anthropic.inject_fault("500", count=10)
    device = make_device(alice)
    device.open_conversation(conversation)
    device.send("Say exactly: nothing to copy")
    failed = device.replies().first
    expect(failed).to_have_attribute("data-status", "error")
    expect(failed.locator("[data-retry]")).to_be_visible()
    expect(failed.locator("[data-copy-reply]")).to_have_count(0)
    device.page.reload()
    device.wait_until_live()
    expect(device.replies().first.locator("[data-retry]")).to_be_visible()
    expect(device.replies().first.locator("[data-copy-reply]")).to_have_count(0)


def test_a_first_prompt_typed_offline_creates_the_conversation_once_back(stack, make_device, alice):
    device = make_device(alice)
    device.open("/new")
    device.wait_until_live()
    device.context.set_offline(True)
    expect(device.connection_badge()).not_to_have_attribute("data-connection-state", "connected")

    device.send("Say exactly: typed in the tunnel")
    prompt = device.prompts().first
    expect(prompt).to_have_attribute("data-send-state", "queued")
    assert not Conversation.objects.filter(owner=alice).exists()

    device.context.set_offline(False)
    device.page.wait_for_url("**/conversations/*/")
    expect(prompt).to_have_attribute("data-send-state", "sent")
    expect(device.replies().first.locator(".turn-text")).to_have_text("typed in the tunnel")
    assert Conversation.objects.filter(owner=alice).count() == 1


def test_the_sidebar_catches_up_after_a_gap_beyond_the_resume_window(stack, make_device, alice):
    here = actions.create_conversation(alice, title="Open here")
    store_exchange(here, "Hi", "Hello!")
    renamed = actions.create_conversation(alice, title="Before the tunnel")
    store_exchange(renamed, "Hi", "Hello!")
    device = make_device(alice)
    device.open_conversation(here)
    device.context.set_offline(True)
    expect(device.connection_badge()).not_to_have_attribute("data-connection-state", "connected")
    made_meanwhile = actions.create_conversation(alice, title="Made while away")
    store_exchange(made_meanwhile, "Hi", "Hello!")
    actions.rename_conversation(renamed, "After the tunnel")
    # Past Ably's two-minute window what was published meanwhile is gone from the channel: the
    # re-attach cannot replay it, so the sidebar must re-read the list.
    stack.ably.advance_clock(130_000)
    # (The stand-in forgets old messages as new ones arrive.)
    after_the_gap = actions.create_conversation(alice, title="After the gap")
    store_exchange(after_the_gap, "Hi", "Hello!")
    device.context.set_offline(False)

    expect(device.connection_badge()).to_have_attribute("data-connection-state", "connected")
    expect(sidebar_item(device, made_meanwhile.pk).locator("a")).to_have_text("Made while away")
    expect(sidebar_item(device, renamed.pk).locator("a")).to_have_text("After the tunnel")
    expect(sidebar_item(device, after_the_gap.pk).locator("a")).to_have_text("After the gap")
    expect(sidebar_item(device, here.pk).locator("a")).to_have_attribute("aria-current", "page")
