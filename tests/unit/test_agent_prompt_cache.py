"""Where the agent puts its prompt-caching breakpoints, for plain and attachment turns (the
stand-in reading them, and the usage stored, are in tests/integration/test_agent_prompt_cache.py)."""

from __future__ import annotations

import copy

from conversations.agent.model import with_cache_breakpoints

BREAKPOINT = {"type": "ephemeral"}


def test_the_system_prompt_the_previous_turns_and_the_prompt_end_in_breakpoints():
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "x"}}
    messages = [
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "first answer"},
        {"role": "user", "content": [image, {"type": "text", "text": "what is this?"}]},
    ]
    original = copy.deepcopy(messages)

    system, marked = with_cache_breakpoints("Be brief.", messages)

    assert system == [{"type": "text", "text": "Be brief.", "cache_control": BREAKPOINT}]
    assert marked[0] == original[0]
    assert marked[1]["content"] == [
        {"type": "text", "text": "first answer", "cache_control": BREAKPOINT}
    ]
    assert marked[2]["content"][0] == image  # only the last block is marked
    assert marked[2]["content"][1] == {
        "type": "text",
        "text": "what is this?",
        "cache_control": BREAKPOINT,
    }
    assert messages == original  # the stored context is not changed


def test_a_first_turn_marks_only_the_system_prompt_and_the_prompt():
    system, marked = with_cache_breakpoints("", [{"role": "user", "content": "hello"}])
    assert system == ""  # an empty system prompt is left out of caching (no empty block)
    assert marked == [
        {
            "role": "user",
            "content": [{"type": "text", "text": "hello", "cache_control": BREAKPOINT}],
        }
    ]
