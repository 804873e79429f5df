"""The conversation list stays in sync across a user's devices, live."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from conversations import actions

from .conftest import PHONE

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_list_changes_on_one_device_appear_on_the_others(stack, make_device, alice, bob):
    laptop, phone = make_device(alice), make_device(alice, viewport=PHONE)
    strangers_device = make_device(bob)
    for device in (laptop, phone, strangers_device):
        device.open("/")
        device.wait_until_live()

    # "New conversation" opens an empty composer; the first prompt creates the conversation.
    laptop.page.get_by_role("link", name="New conversation").click()
    laptop.page.wait_for_url("**/new")
    laptop.wait_until_live()
    laptop.send("Say exactly: hello")
    laptop.page.wait_for_url("**/conversations/*/")
    conversation_id = laptop.page.url.rstrip("/").rsplit("/", 1)[-1]
    item = phone.page.locator(f"[data-conversation-id='{conversation_id}']")
    expect(item.locator("[data-conversation-title]")).to_have_text("New conversation")
    # The new item is a working link, built from the page's template.
    expect(item.locator("a.conversation-link")).to_have_attribute(
        "href", f"/conversations/{conversation_id}/"
    )

    laptop.wait_until_live()
    laptop.page.locator("[data-conversation-menu] > summary").click()
    laptop.page.locator("[data-rename] summary").click()
    laptop.page.get_by_label("New title").fill("Trip to Lisbon")
    laptop.page.get_by_role("button", name="Save").click()
    expect(item.locator("[data-conversation-title]")).to_have_text("Trip to Lisbon")
    # The renamed conversation's own page follows too, on any device that has it open.
    expect(laptop.page.locator("[data-conversation-title]")).to_have_text("Trip to Lisbon")

    laptop.page.locator("[data-conversation-menu] > summary").click()
    laptop.page.get_by_role("button", name="Archive", exact=True).click()
    laptop.page.wait_for_url(stack.absolute("/"))
    expect(item).to_have_count(0)

    phone.page.get_by_role("link", name="Archived").click()
    phone.wait_until_live()
    archived_item = phone.page.locator(f"[data-conversation-id='{conversation_id}']")
    expect(archived_item).to_have_count(1)
    laptop.open(f"/conversations/{conversation_id}/")
    laptop.page.locator("[data-conversation-menu] > summary").click()
    laptop.page.get_by_role("button", name="Unarchive", exact=True).click()
    expect(archived_item).to_have_count(0)
    expect(phone.page.locator("[data-conversation-empty]")).to_be_visible()

    phone.page.get_by_role("link", name="Active").click()
    phone.wait_until_live()
    expect(item).to_have_count(1)
    laptop.open(f"/conversations/{conversation_id}/delete")
    laptop.page.get_by_role("button", name="Delete").click()
    expect(item).to_have_count(0)

    # Bob's devices hear nothing of Alice's list.
    expect(strangers_device.page.locator("[data-conversation-id]")).to_have_count(0)


def test_list_is_keyboard_usable(stack, make_device, alice):
    # Titled: a conversation nobody used (untitled, no messages) is not listed.
    conversation = actions.create_conversation(alice, title="Reachable by keyboard")
    device = make_device(alice)
    device.open("/")
    device.wait_until_live()
    link = device.page.locator(f"[data-conversation-id='{conversation.pk}'] a.conversation-link")
    link.focus()
    device.page.keyboard.press("Enter")
    device.page.wait_for_url(f"**{conversation.get_absolute_url()}")
    device.wait_until_live()
    expect(device.page.locator("[data-composer-input]")).to_be_visible()


def test_activity_on_another_device_moves_the_conversation_to_the_top(stack, make_device, alice):
    older = actions.create_conversation(alice, title="Older conversation")
    actions.create_conversation(alice, title="Newer conversation")
    watcher, typist = make_device(alice), make_device(alice)
    watcher.open("/")
    watcher.wait_until_live()
    titles = watcher.page.locator("[data-conversation-id] [data-conversation-title]")
    expect(titles).to_have_text(["Newer conversation", "Older conversation"])

    typist.open_conversation(older)
    typist.send("Say exactly: bump")
    expect(typist.replies().first).to_have_attribute("data-status", "complete")
    expect(titles).to_have_text(["Older conversation", "Newer conversation"])


def test_a_change_made_while_the_list_page_loads_is_not_missed(stack, make_device, alice):
    device = make_device(alice)
    held_scripts = []
    # Hold ably-js back so the page renders, then the change lands, then the channel attaches.
    device.page.route("**/vendor/ably/**", lambda route: held_scripts.append(route))
    device.page.goto(stack.absolute("/"), wait_until="commit")
    while not held_scripts:
        device.page.wait_for_timeout(50)

    made_meanwhile = actions.create_conversation(alice, title="Made while the page loaded")
    for route in held_scripts:
        route.continue_()
    device.wait_until_live()

    item = device.page.locator(f"[data-conversation-id='{made_meanwhile.pk}']")
    expect(item.locator("[data-conversation-title]")).to_have_text("Made while the page loaded")
