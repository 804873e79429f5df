"""Attachments in Chromium: paste and drop on one device, seen on every device and by Claude."""

from __future__ import annotations

import base64

import pytest
from playwright.sync_api import Page, expect

from conversations import actions
from conversations.models import Attachment, Conversation, Message
from emulators.anthropic import samples

from .conftest import PHONE, WAIT_MS, stored_reply
from .test_browser_policy import PolicyWatch

pytestmark = [pytest.mark.browser, pytest.mark.slow]

RED = (220, 30, 30)

# A File built in the page from base64 (or `size` zero bytes), as a paste or a drop delivers it.
MAKE_FILE = """
({name, type, data, size}) => {
  const bytes = data ? Uint8Array.from(atob(data), (c) => c.charCodeAt(0)) : new Uint8Array(size);
  const transfer = new DataTransfer();
  transfer.items.add(new File([bytes], name, {type}));
  return transfer;
}
"""


@pytest.fixture(autouse=True)
def media_root(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"


def paste_file(page: Page, name: str, media_type: str, content: bytes) -> None:
    transfer = page.evaluate_handle(
        MAKE_FILE, {"name": name, "type": media_type, "data": base64.b64encode(content).decode()}
    )
    # Built in the page: Playwright's dispatch_event makes a plain Event for `paste`.
    page.locator("[data-composer-input]").evaluate(
        """(box, transfer) => box.dispatchEvent(
             new ClipboardEvent('paste', {clipboardData: transfer, bubbles: true, cancelable: true}))""",
        transfer,
    )


def drop_file(
    page: Page, name: str, media_type: str, content: bytes | None = None, size: int = 0
) -> None:
    data = base64.b64encode(content).decode() if content is not None else ""
    transfer = page.evaluate_handle(
        MAKE_FILE, {"name": name, "type": media_type, "data": data, "size": size}
    )
    turns = page.locator("[data-turns]")
    turns.dispatch_event("dragover", {"dataTransfer": transfer})
    turns.dispatch_event("drop", {"dataTransfer": transfer})


def pending(page: Page, name: str):
    return page.locator(f".pending-attachment[data-file-name='{name}']")


def watch_for_reply_start(page: Page) -> None:
    """Record how many files the prompt showed at the moment the reply's element appeared."""
    page.evaluate(
        """() => {
          window.filesWhenReplyStarted = null;
          const turns = document.querySelector('[data-turns]');
          new MutationObserver((changes, observer) => {
            if (!turns.querySelector('article.turn-assistant')) return;
            const prompt = turns.querySelector('article.turn-user');
            window.filesWhenReplyStarted = prompt
              ? prompt.querySelectorAll('[data-attachments] li').length : -1;
            observer.disconnect();
          }).observe(turns, {childList: true, subtree: true});
        }"""
    )


def expect_files_under_prompt(page: Page) -> None:
    prompt = page.locator("article.turn-user").first
    files = prompt.locator("[data-attachments] li")
    expect(files).to_have_count(2)
    expect(files.nth(0)).to_have_attribute("data-kind", "image")
    expect(files.nth(0).locator(".attachment-meta")).to_contain_text("64×48")
    expect(files.nth(1)).to_have_attribute("data-kind", "pdf")
    expect(files.nth(1).locator(".attachment-name")).to_have_text("report.pdf")
    expect(files.nth(1).locator(".attachment-meta")).to_contain_text("2 pages")
    # The thumbnail is the stored image, loaded from our own origin.
    thumb = files.nth(0).locator("img.attachment-thumb")
    page.wait_for_function(
        "(img) => img.complete && img.naturalWidth === 64",
        arg=thumb.element_handle(),
        timeout=WAIT_MS,
    )


def test_paste_and_drop_are_seen_by_every_device_and_by_claude(
    stack, make_device, alice, bob, conversation
):
    stack.anthropic.set_pacing(ttft=0.3, tokens_per_second=60)
    laptop, phone = make_device(alice), make_device(alice, viewport=PHONE)
    laptop.open_conversation(conversation)
    phone.open_conversation(conversation)
    watch_for_reply_start(phone.page)

    paste_file(laptop.page, "image.png", "image/png", samples.png(64, 48, RED))
    drop_file(
        laptop.page, "report.pdf", "application/pdf", samples.pdf(["Quarterly report", "Two"])
    )
    for name in ("image.png", "report.pdf"):
        expect(pending(laptop.page, name)).to_have_attribute("data-state", "ready")
    laptop.send("What is in these files?")

    for device in (laptop, phone):
        expect_files_under_prompt(device.page)
    # The other device had them under the prompt before the reply began to show.
    phone.page.wait_for_function("() => window.filesWhenReplyStarted !== null", timeout=WAIT_MS)
    assert phone.page.evaluate("window.filesWhenReplyStarted") == 2
    # Sent files leave the composer.
    expect(laptop.page.locator(".pending-attachment")).to_have_count(0)

    reply = stored_reply("What is in these files?")
    assert reply.status == "complete"
    assert "64x48 PNG, mostly red" in reply.text
    assert (
        'The PDF “report.pdf” has 2 pages; its first line reads: "Quarterly report"' in reply.text
    )
    for device in (laptop, phone):
        expect(device.replies().first).to_have_attribute("data-status", "complete")
        expect(device.replies().first).to_contain_text("mostly red")
        expect(device.replies().first).to_contain_text("Quarterly report")

    # A fresh page renders them from the database.
    laptop.page.reload()
    laptop.wait_until_live()
    expect_files_under_prompt(laptop.page)

    # Someone else gets a 404 for the file, as for a conversation that does not exist.
    image = Attachment.objects.get(kind="image")
    assert list(image.messages.all()) == [Message.objects.get(role="user")]
    intruder = make_device(bob)
    image_url = stack.absolute(f"/attachments/{image.pk}")
    assert intruder.page.request.get(image_url).status == 404
    assert laptop.page.request.get(image_url).status == 200

    # Regenerate (here from the reloaded page) answers the same prompt, files and all, again
    # (issue 16: a second version of the reply, not a second prompt).
    laptop.page.locator("[data-regenerate]").click()
    for device in (laptop, phone):
        expect(device.replies().first.locator("[data-version-label]")).to_have_text("2/2")
    expect(laptop.prompts()).to_have_count(1)
    expect(phone.prompts().first.locator("[data-attachments] li")).to_have_count(2)
    expect(laptop.replies().first).to_have_attribute("data-status", "complete")
    expect(laptop.replies().first).to_contain_text("Quarterly report")
    last_turn = stack.anthropic.messages_requests[-1].body["messages"][-1]
    assert [block["type"] for block in last_turn["content"]] == ["image", "document", "text"]


def test_bad_and_oversized_files_are_refused_next_to_the_file_and_nothing_else_is_lost(
    stack, make_device, alice, conversation
):
    laptop = make_device(alice)
    laptop.open_conversation(conversation)
    laptop.page.locator("[data-composer-input]").fill("Draft I am still writing")

    # HTML renamed to .png, through the attach button's file input: the server decodes it.
    laptop.page.locator("[data-attach-input]").set_input_files(
        files=[
            {
                "name": "cat.png",
                "mimeType": "image/png",
                "buffer": b"<!doctype html><html><script>alert(1)</script></html>",
            }
        ]
    )
    refused = pending(laptop.page, "cat.png")
    expect(refused).to_have_attribute("data-state", "refused")
    expect(refused.locator("[data-attachment-error]")).to_have_text(
        "cat.png is not a JPEG, PNG, GIF or WebP image (whatever its name says)."
    )

    # 30 MB: refused before uploading, with the limit in the message.
    drop_file(laptop.page, "scan.pdf", "application/pdf", size=30 * 1024 * 1024)
    too_big = pending(laptop.page, "scan.pdf")
    expect(too_big).to_have_attribute("data-state", "refused")
    expect(too_big.locator("[data-attachment-error]")).to_have_text(
        "scan.pdf is 30.0 MB; the files of one message can total at most 24.0 MB."
    )
    assert not Attachment.objects.exists()
    # Nothing else lost: the draft is intact, and a good file still uploads next to them.
    expect(laptop.page.locator("[data-composer-input]")).to_have_value("Draft I am still writing")
    drop_file(laptop.page, "ok.png", "image/png", samples.png(10, 10))
    expect(pending(laptop.page, "ok.png")).to_have_attribute("data-state", "ready")
    # A refused file can be removed; the conversation keeps working.
    refused.locator("[data-remove-attachment]").click()
    expect(refused).to_have_count(0)
    laptop.page.locator("[data-composer-input]").fill("Say exactly: still working")
    laptop.page.locator("[data-composer-input]").press("Enter")
    expect(laptop.replies().first).to_have_attribute("data-status", "complete")
    expect(laptop.replies().first.locator(".turn-text")).to_contain_text("still working")
    expect(laptop.prompts().first.locator("[data-attachments] li")).to_have_count(1)
    # The oversized file's refusal stays until it is removed.
    expect(too_big).to_have_attribute("data-state", "refused")


def test_a_file_in_a_new_chat_creates_the_conversation_which_no_list_shows_until_its_prompt(
    stack, make_device, alice
):
    laptop, phone = make_device(alice), make_device(alice)
    policy = PolicyWatch(laptop)
    phone.open("/")
    laptop.open("/new")
    laptop.wait_until_live()

    # No conversation to upload into yet: the first file makes one, and the page becomes it.
    drop_file(laptop.page, "image.png", "image/png", samples.png(64, 48, RED))
    expect(pending(laptop.page, "image.png")).to_have_attribute("data-state", "ready")
    created = Conversation.objects.get(owner=alice)
    laptop.page.wait_for_url(f"**{created.get_absolute_url()}")
    assert Attachment.objects.get().conversation_id == created.pk
    # Still empty: in no list, on this device or (live) another.
    expect(laptop.page.locator("[data-sidebar] [data-conversation-id]")).to_have_count(0)
    expect(phone.page.locator("[data-conversation-id]")).to_have_count(0)

    laptop.send("What is in this file?")
    expect(laptop.replies().first).to_have_attribute("data-status", "complete")
    expect(laptop.replies().first).to_contain_text("mostly red")
    expect(laptop.prompts().first.locator("[data-attachments] li")).to_have_count(1)
    expect(
        laptop.page.locator(f"[data-sidebar] [data-conversation-id='{created.pk}'] a")
    ).to_have_attribute("aria-current", "page")
    assert list(Attachment.objects.get().messages.all()) == [Message.objects.get(role="user")]
    assert Conversation.objects.filter(owner=alice).count() == 1
    # Listed everywhere now that it has a prompt (live from its answer, and on a fresh page).
    expect(phone.page.locator(f"[data-conversation-id='{created.pk}']")).to_have_count(1)
    phone.page.reload()
    expect(phone.page.locator(f"[data-conversation-id='{created.pk}']")).to_have_count(1)
    assert policy.violations() == []


def test_switching_in_place_uploads_to_the_conversation_shown_and_shows_its_files(
    stack, make_device, alice
):
    tides = actions.create_conversation(alice, title="Tides")
    lisbon = actions.create_conversation(alice, title="Lisbon trip")
    laptop = make_device(alice)
    policy = PolicyWatch(laptop)
    laptop.open_conversation(tides)
    laptop.page.evaluate("window.notReloaded = true")

    # Switched in place (no reload): pastes go to Lisbon, once (Tides' listeners are gone).
    laptop.page.locator(f"[data-sidebar] [data-conversation-id='{lisbon.pk}'] a").click()
    laptop.page.wait_for_url(f"**{lisbon.get_absolute_url()}")
    laptop.wait_until_live()
    paste_file(laptop.page, "image.png", "image/png", samples.png(64, 48, RED))
    paste_file(laptop.page, "report.pdf", "application/pdf", samples.pdf(["Quarterly report", "2"]))
    for name in ("image.png", "report.pdf"):
        expect(pending(laptop.page, name)).to_have_attribute("data-state", "ready")
    expect(laptop.page.locator(".pending-attachment")).to_have_count(2)
    laptop.send("What is in these files?")
    expect(laptop.replies().first).to_have_attribute("data-status", "complete")
    expect_files_under_prompt(laptop.page)
    assert {a.conversation_id for a in Attachment.objects.all()} == {lisbon.pk}
    assert Attachment.objects.count() == 2

    # Away and back in place: Lisbon's stored prompt shows its files, thumbnail and all.
    laptop.page.locator(f"[data-sidebar] [data-conversation-id='{tides.pk}'] a").click()
    laptop.page.wait_for_url(f"**{tides.get_absolute_url()}")
    laptop.wait_until_live()
    expect(laptop.page.locator("[data-attachments]")).to_have_count(0)
    laptop.page.locator(f"[data-sidebar] [data-conversation-id='{lisbon.pk}'] a").click()
    laptop.page.wait_for_url(f"**{lisbon.get_absolute_url()}")
    laptop.wait_until_live()
    expect_files_under_prompt(laptop.page)
    assert laptop.page.evaluate("window.notReloaded") is True
    # Thumbnails, progress bars and file lists all keep to the page policy.
    assert policy.violations() == []
