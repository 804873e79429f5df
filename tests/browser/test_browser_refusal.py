"""The page shows the agent's `refusal` on the prompt it refused: no endless "Sending…"."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from conversations.models import Conversation, Message

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_a_prompt_to_a_conversation_deleted_elsewhere_shows_why_it_was_not_answered(
    stack, make_device, alice, conversation
):
    device = make_device(alice)
    device.open_conversation(conversation)
    # Deleted behind the page's back, its token still valid (as when the token revocation that
    # `delete_conversation` asks of Ably did not happen): only the agent can tell the page.
    Conversation.objects.filter(pk=conversation.pk).delete()

    device.send("Say exactly: is anyone there?")
    prompt = device.prompts().first
    expect(prompt).to_have_attribute("data-send-state", "failed")
    expect(prompt.locator("[data-send-state-label]")).to_contain_text("has been deleted")
    expect(device.replies()).to_have_count(0)
    assert not Message.objects.exists()
