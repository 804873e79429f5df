"""Issue 16 in Chromium: edit, regenerate and branch, versions behind `< n/m >`, on every device."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from conversations.models import Message

from .conftest import long_text, stored_reply

pytestmark = [pytest.mark.browser, pytest.mark.slow]

BOTH_PATTERNS = pytest.mark.parametrize(
    "streaming_pattern", ["message-per-response", "message-per-token"]
)


def version_label(turn):
    return turn.locator("[data-version-label]")


def edit(device, prompt, text: str) -> None:
    prompt.locator("[data-edit]").click()
    box = prompt.locator("[data-edit-input]")
    box.fill(text)
    box.press("Enter")


@BOTH_PATTERNS
def test_an_edit_is_a_new_branch_with_its_reply_on_both_devices(
    stack, make_device, alice, conversation
):
    laptop, phone = make_device(alice), make_device(alice)
    laptop.open_conversation(conversation)
    phone.open_conversation(conversation)
    laptop.send("Say exactly: the original")
    for device in (laptop, phone):
        expect(device.replies().first).to_have_attribute("data-status", "complete")

    # Esc leaves the prompt as it was.
    laptop.prompts().first.locator("[data-edit]").click()
    laptop.prompts().first.locator("[data-edit-input]").press("Escape")
    expect(laptop.prompts().first.locator("[data-edit-input]")).to_have_count(0)

    edit(laptop, laptop.prompts().first, "Say exactly: the edit")
    for device in (laptop, phone):
        expect(device.prompts()).to_have_count(1)
        expect(device.prompts().first.locator(".turn-text")).to_have_text("Say exactly: the edit")
        expect(version_label(device.prompts().first)).to_have_text("2/2")
        expect(device.replies()).to_have_count(1)
        expect(device.replies().first).to_have_attribute("data-status", "complete")
        expect(device.replies().first.locator(".turn-text")).to_have_text("the edit")
    assert Message.objects.filter(role=Message.Role.USER).count() == 2
    # The model saw the edit alone: the original prompt is another branch.
    sent = stack.anthropic.messages_requests[-1].body["messages"]
    assert len(sent) == 1
    assert "Say exactly: the edit" in str(sent[0]["content"])

    # Back to the original on the phone: the laptop follows.
    phone.prompts().first.locator("[data-version-prev]").click()
    for device in (phone, laptop):
        expect(version_label(device.prompts().first)).to_have_text("1/2")
        expect(device.prompts().first.locator(".turn-text")).to_have_text(
            "Say exactly: the original"
        )
        expect(device.replies().first.locator(".turn-text")).to_have_text("the original")


@BOTH_PATTERNS
def test_regenerate_twice_flip_back_on_one_device_and_continue_on_the_other(
    stack, make_device, alice, conversation
):
    laptop, phone = make_device(alice), make_device(alice)
    laptop.open_conversation(conversation)
    phone.open_conversation(conversation)
    laptop.send("Say exactly: again and again")
    for device in (laptop, phone):
        expect(device.replies().first).to_have_attribute("data-status", "complete")

    for count in (2, 3):
        laptop.replies().first.locator("[data-regenerate]").click()
        for device in (laptop, phone):
            expect(version_label(device.replies().first)).to_have_text(f"{count}/{count}")
            expect(device.replies().first).to_have_attribute("data-status", "complete")
            expect(device.prompts()).to_have_count(1)
            expect(device.replies()).to_have_count(1)

    phone.replies().first.locator("[data-version-prev]").click()
    expect(version_label(phone.replies().first)).to_have_text("2/3")
    phone.replies().first.locator("[data-version-prev]").click()
    for device in (phone, laptop):
        expect(version_label(device.replies().first)).to_have_text("1/3")

    laptop.send("Say exactly: continuing")
    for device in (laptop, phone):
        expect(device.prompts()).to_have_count(2)
        expect(device.replies()).to_have_count(2)
        expect(device.replies().nth(1)).to_have_attribute("data-status", "complete")
        expect(version_label(device.replies().first)).to_have_text("1/3")
    versions = list(
        Message.objects.filter(role=Message.Role.ASSISTANT, text="again and again").order_by(
            "created_at", "id"
        )
    )
    assert len(versions) == 3
    follow_up = Message.objects.get(text="Say exactly: continuing")
    assert follow_up.parent == versions[0]
    # The model saw the path: one earlier turn, not three answers to the same question.
    assert [m["role"] for m in stack.anthropic.messages_requests[-1].body["messages"]] == [
        "user",
        "assistant",
        "user",
    ]


@BOTH_PATTERNS
def test_reload_during_a_reply_on_a_branch_another_device_just_made(
    stack, make_device, alice, conversation
):
    laptop, phone = make_device(alice), make_device(alice)
    laptop.open_conversation(conversation)
    phone.open_conversation(conversation)
    laptop.send("Say exactly: short")
    for device in (laptop, phone):
        expect(device.replies().first).to_have_attribute("data-status", "complete")

    stack.anthropic.set_pacing(ttft=0.05, tokens_per_second=30)
    long_prompt = f"Say exactly: {long_text(150)}"
    edit(phone, phone.prompts().first, long_prompt)
    laptop.wait_for_reply_text(laptop.replies().first, 30)
    laptop.page.reload()
    laptop.wait_until_live()
    expect(laptop.prompts()).to_have_count(1)
    expect(laptop.prompts().first.locator(".turn-text")).to_have_text(long_prompt)
    expect(version_label(laptop.prompts().first)).to_have_text("2/2")
    stored = stored_reply(long_prompt)
    for device in (laptop, phone):
        expect(device.replies().first).to_have_attribute("data-status", "complete")
        assert device.reply_text(device.replies().first) == stored.text


@pytest.mark.parametrize("agent_options", [{"model_attempts": 1}])
def test_retry_after_an_overload_is_a_second_version_not_a_second_prompt(
    stack, make_device, alice, conversation
):
    stack.anthropic.inject_fault("529", count=10)
    laptop, phone = make_device(alice), make_device(alice)
    laptop.open_conversation(conversation)
    phone.open_conversation(conversation)
    laptop.send("Say exactly: worth another go")
    failed = laptop.replies().first
    expect(failed).to_have_attribute("data-status", "error")
    stack.anthropic.clear_faults()
    failed.locator("[data-retry]").click()
    for device in (laptop, phone):
        expect(device.prompts()).to_have_count(1)
        expect(device.replies()).to_have_count(1)
        expect(version_label(device.replies().first)).to_have_text("2/2")
        expect(device.replies().first).to_have_attribute("data-status", "complete")
    assert Message.objects.filter(role=Message.Role.USER).count() == 1
    assert Message.objects.filter(role=Message.Role.ASSISTANT).count() == 2
