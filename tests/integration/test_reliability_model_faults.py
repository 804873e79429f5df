"""Every model fault production meets, end to end: agent, both stand-ins, two devices each.

A fault must end in one of two ways a user can live with: the agent retries and the reply
completes, or the reply stops with a readable error and the user can simply send again. Either
way every device reaches the same final state and the stored reply agrees with it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest
from asgiref.sync import sync_to_async

from conversations import events
from conversations.models import Message
from tests.agent_fixtures import stored_reply

TEXT = "Alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron."


@dataclass(frozen=True)
class Case:
    fault: str
    # How the stand-in is told: a marker in the prompt, or queued for the next N requests.
    queued: int
    outcome: str  # complete | error
    says: str  # part of the user-facing error
    pattern: str

    @property
    def id(self) -> str:
        return f"{self.fault}x{self.queued}" if self.queued else self.fault


CASES = [
    # Transient: retried out of sight (devices see `retrying` presence), then the reply.
    Case("429=0.05", 2, "complete", "", "message-per-response"),
    Case("529", 2, "complete", "", "message-per-token"),
    # Persistent: a clean error after the agent's attempts run out.
    Case("529", 9, "error", "overloaded", "message-per-token"),
    Case("500", 9, "error", "internal error", "message-per-response"),
    # Broken streams: never retried once text flowed; the partial text stays.
    Case("midstream-error", 0, "error", "part-way", "message-per-token"),
    Case("drop", 0, "error", "dropped", "message-per-response"),
    # A short stall is just a slow reply: it completes with nothing lost or doubled.
    Case("stall=1.5", 0, "complete", "", "message-per-token"),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.id}-{c.pattern}")
async def test_each_model_fault_ends_in_success_or_a_clean_retryable_error(
    case, start_agent, devices, alice, conversation, anthropic_server
):
    agent = await asyncio.to_thread(start_agent, streaming_pattern=case.pattern, model_attempts=3)
    phone = await devices(alice, conversation)
    laptop = await devices(alice, conversation)
    if case.queued:
        anthropic_server.inject_fault(case.fault, count=case.queued)
        prompt_text = f"Say exactly: {TEXT}"
    else:
        prompt_text = f"Say exactly: {TEXT} [[fault:{case.fault}]]"
    prompt_id = await phone.prompt(prompt_text)

    replies = [await phone.final_reply(prompt_id), await laptop.final_reply(prompt_id)]
    for reply in replies:
        assert reply.status == case.outcome, (reply.status, reply.error)
        if case.outcome == "complete":
            assert reply.text == TEXT
            assert reply.error == ""
        else:
            assert case.says in reply.error and "again" in reply.error
            # Whatever text arrived before the fault is kept, and is a true prefix.
            assert TEXT.startswith(reply.text)
    assert replies[0].text == replies[1].text
    if case.queued and case.outcome == "complete":
        assert "retrying" in phone.agent_status_history

    await agent.wait_idle()
    stored = await sync_to_async(stored_reply)(prompt_id)
    assert (stored.status, stored.text) == (case.outcome, replies[0].text)
    assert stored.error == replies[0].error

    # The user's way out of an error is to send again; the conversation is not wedged.
    anthropic_server.clear_faults()
    again = await laptop.prompt("Say exactly: Second try works.")
    assert (await phone.final_reply(again)).text == "Second try works."
    await agent.wait_idle()
    assert not await sync_to_async(Message.objects.filter(status=Message.Status.STREAMING).exists)()


async def test_a_refused_request_is_an_immediate_error_not_retried(
    start_agent, devices, alice, conversation, anthropic_server
):
    """4xx other than 408/409/429 will not succeed on a retry: one attempt, a clear message."""
    anthropic_server.inject_fault("400", count=5)
    await asyncio.to_thread(start_agent, model_attempts=4)
    phone = await devices(alice, conversation)
    prompt_id = await phone.prompt("Say exactly: nope")
    reply = await phone.final_reply(prompt_id)
    assert reply.status == events.Status.ERROR
    assert reply.error.startswith("Claude could not handle this request")
    assert len(anthropic_server.messages_requests) == 1


async def test_a_stream_that_stalls_for_long_ends_in_a_retryable_error(
    start_agent, devices, alice, conversation, anthropic_server
):
    await asyncio.to_thread(start_agent)
    phone = await devices(alice, conversation)
    prompt_id = await phone.prompt(f"Say exactly: {TEXT} [[fault:stall=8]]")
    # A device must not sit on a frozen half-reply: the agent gives up on the stream, says so.
    reply = await phone.final_reply(prompt_id, timeout=20)
    assert reply.status == events.Status.ERROR
    assert await anthropic_server.wait_for_aborted_async(count=1)
