"""Prompt caching: the agent marks the stable prefix, so a long conversation's follow-up turns
are billed mostly as cache reads, and the stored usage says so. Real SDKs against the
stand-ins, whose prompt cache follows the API's rules (emulators/anthropic/caching.py)."""

from __future__ import annotations

import asyncio

from asgiref.sync import sync_to_async

from conversations import events
from tests.agent_fixtures import stored_reply

BREAKPOINT = {"type": "ephemeral"}
# Well over the default model's minimum cacheable length (1,024 tokens for Sonnet).
NOTES = "Background notes: " + " ".join(f"note{i}" for i in range(800)) + "."


def last_block(message):
    content = message["content"]
    return content[-1] if isinstance(content, list) else {"text": content}


async def reply_to(phone, agent, text):
    prompt_id = await phone.prompt(text)
    reply = await phone.final_reply(prompt_id)
    assert reply.status == events.Status.COMPLETE
    await agent.wait_idle()
    return reply, await sync_to_async(stored_reply)(prompt_id)


async def test_a_long_conversation_s_follow_up_reads_the_earlier_turns_from_the_cache(
    start_agent, devices, alice, conversation, anthropic_server
):
    agent = await asyncio.to_thread(start_agent, generate_titles=False)
    phone = await devices(alice, conversation)

    _, first = await reply_to(phone, agent, f"{NOTES}\nSay exactly: Noted.")
    assert first.cache_read_input_tokens == 0
    assert first.cache_creation_input_tokens > 1024  # the notes are cached for the next turn

    reply, second = await reply_to(phone, agent, "Say exactly: Second answer.")
    assert reply.text == "Second answer."
    # Most of the prompt was read from the cache (billed at a tenth of the input price).
    assert second.cache_read_input_tokens >= first.cache_creation_input_tokens
    assert second.cache_read_input_tokens > 10 * second.input_tokens

    follow_up = anthropic_server.messages_requests[-1].body
    assert follow_up["system"][-1]["cache_control"] == BREAKPOINT
    assert [m["role"] for m in follow_up["messages"]] == ["user", "assistant", "user"]
    assert last_block(follow_up["messages"][1]) == {
        "type": "text",
        "text": "Noted.",
        "cache_control": BREAKPOINT,
    }
    assert last_block(follow_up["messages"][2])["cache_control"] == BREAKPOINT


async def test_a_short_conversation_below_the_minimum_is_answered_and_stores_no_cache_use(
    start_agent, devices, alice, conversation
):
    agent = await asyncio.to_thread(start_agent, generate_titles=False)
    phone = await devices(alice, conversation)
    for text in ("Short one.", "Short two."):
        reply, stored = await reply_to(phone, agent, f"Say exactly: {text}")
        assert reply.text == text
        assert (stored.cache_creation_input_tokens, stored.cache_read_input_tokens) == (0, 0)
        assert stored.input_tokens > 0
