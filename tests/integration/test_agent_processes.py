"""`manage.py run_agent` as real processes: exactly once across three, SIGTERM, kill -9."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest
from asgiref.sync import sync_to_async

from conversations import events
from conversations.models import Conversation, Message
from tests.agent_fixtures import LEFT, lifecycle_ably_config


@pytest.fixture
def agent_ably_config():
    # The agent's key may subscribe to [meta]channel.lifecycle, as a production key should.
    return lifecycle_ably_config()


pytestmark = pytest.mark.slow

LONG_TEXT = " ".join(f"word{i}" for i in range(250))


def replies_by_prompt() -> dict[str, Message]:
    return {str(m.prompt_id): m for m in Message.objects.filter(role=Message.Role.ASSISTANT)}


async def test_three_agent_processes_answer_every_prompt_exactly_once(
    agent_processes, devices, alice, anthropic_server
):
    # The claim is the same for both patterns; message-per-token is the one where a second
    # answering process would be most visible (a second token stream).
    pattern = "message-per-token"
    anthropic_server.set_pacing(tokens_per_second=300)
    conversations = [
        await sync_to_async(Conversation.objects.create)(owner=alice) for _ in range(3)
    ]
    agents = [agent_processes(f"agent-{n}", streaming_pattern=pattern) for n in (1, 2, 3)]
    await asyncio.gather(*(a.await_ready() for a in agents))
    phones = [await devices(alice, c) for c in conversations]
    sent = {}
    for round_number in range(3):
        for phone in phones:
            prompt_id = await phone.prompt(
                f"Say exactly: answer {round_number} for {phone.channel_name}"
            )
            sent[prompt_id] = phone
    for prompt_id, phone in sent.items():
        reply = await phone.final_reply(prompt_id, timeout=60)
        assert reply.status == events.Status.COMPLETE
    # Stop every process (they finish anything in flight) so no late duplicate can follow.
    assert await asyncio.gather(*(asyncio.to_thread(a.terminate) for a in agents)) == [0, 0, 0]

    for phone in phones:
        starts = Counter(
            m.extras["headers"]["promptId"] for m in phone.received if m.name == events.Name.START
        )
        assert all(count == 1 for count in starts.values()), starts
        assert set(starts) == {p for p, owner in sent.items() if owner is phone}
    stored = await sync_to_async(replies_by_prompt)()
    assert set(stored) == set(sent)
    assert all(m.status == Message.Status.COMPLETE for m in stored.values())
    assert await sync_to_async(Message.objects.filter(role="user").count)() == len(sent)


@pytest.mark.parametrize("pattern", ["message-per-response", "message-per-token"])
async def test_kill_9_mid_reply_then_restart_interrupts_it_and_answers_what_was_missed(
    pattern, agent_processes, devices, alice, anthropic_server
):
    anthropic_server.set_pacing(tokens_per_second=60)
    conversation = await sync_to_async(Conversation.objects.create)(owner=alice)
    first = agent_processes("agent-crashy", streaming_pattern=pattern)
    await first.await_ready()
    phone = await devices(alice, conversation)
    doomed = await phone.prompt(f"Say exactly: {LONG_TEXT}")
    await phone.streaming(doomed)
    first.kill()

    # Sent while no agent runs: it waits in the channel's history.
    missed = await phone.prompt("Say exactly: Caught up.")
    anthropic_server.set_pacing()
    restarted = agent_processes("agent-crashy", streaming_pattern=pattern)
    await restarted.await_ready()

    interrupted = await phone.final_reply(doomed)
    assert interrupted.status == events.Status.INTERRUPTED
    assert interrupted.text and LONG_TEXT.startswith(interrupted.text)
    answered = await phone.final_reply(missed)
    assert (answered.status, answered.text) == ("complete", "Caught up.")
    assert await asyncio.to_thread(restarted.terminate) == 0
    stored = await sync_to_async(replies_by_prompt)()
    assert stored[doomed].status == Message.Status.INTERRUPTED
    # The dead process never wrote its text; the restart read it back from the channel, so a
    # reloaded page shows what the devices saw.
    assert stored[doomed].text == interrupted.text
    assert stored[missed].status == Message.Status.COMPLETE
    assert "interrupted" in restarted.output()


async def test_sigterm_lets_the_reply_in_flight_finish_then_leaves(
    agent_processes, devices, alice, anthropic_server
):
    anthropic_server.set_pacing(tokens_per_second=150)
    conversation = await sync_to_async(Conversation.objects.create)(owner=alice)
    agent = agent_processes("agent-graceful")
    await agent.await_ready()
    phone = await devices(alice, conversation)
    prompt_id = await phone.prompt(f"Say exactly: {LONG_TEXT}")
    await phone.streaming(prompt_id)
    assert await asyncio.to_thread(agent.terminate) == 0
    reply = await phone.final_reply(prompt_id)
    assert (reply.status, reply.text) == ("complete", LONG_TEXT)
    await phone.wait_for(lambda: phone.agent_status_history[-1:] == [LEFT])


async def test_sigterm_interrupts_a_reply_that_outlasts_the_grace_period(
    agent_processes, devices, alice, anthropic_server
):
    anthropic_server.set_pacing(tokens_per_second=20)
    conversation = await sync_to_async(Conversation.objects.create)(owner=alice)
    agent = agent_processes("agent-impatient", extra_args=["--grace-period", "0.2"])
    await agent.await_ready()
    phone = await devices(alice, conversation)
    prompt_id = await phone.prompt(f"Say exactly: {LONG_TEXT}")
    await phone.streaming(prompt_id)
    assert await asyncio.to_thread(agent.terminate) == 0
    reply = await phone.final_reply(prompt_id)
    assert reply.status == events.Status.INTERRUPTED
    assert reply.text and LONG_TEXT.startswith(reply.text) and reply.text != LONG_TEXT
    stored = await sync_to_async(replies_by_prompt)()
    assert (stored[prompt_id].status, stored[prompt_id].text) == ("interrupted", reply.text)


async def test_a_replacement_agent_with_another_id_settles_the_dead_agents_reply(
    agent_processes, devices, alice, anthropic_server
):
    # A new host (new agent id) cannot tell from the database that the old one died; the
    # old agent's presence on the channel ending (its connection is gone) tells it.
    anthropic_server.set_pacing(tokens_per_second=60)
    conversation = await sync_to_async(Conversation.objects.create)(owner=alice)
    old_host = agent_processes("host-old")
    await old_host.await_ready()
    phone = await devices(alice, conversation)
    orphan = await phone.prompt(f"Say exactly: {LONG_TEXT}")
    await phone.streaming(orphan)
    old_host.kill()
    anthropic_server.set_pacing()
    new_host = agent_processes("host-new")
    await new_host.await_ready()
    follow_up = await phone.prompt("Say exactly: New host here.")
    assert (await phone.final_reply(follow_up, timeout=40)).text == "New host here."
    orphaned = await phone.final_reply(orphan, timeout=1)
    assert orphaned.status == events.Status.INTERRUPTED
    stored = await sync_to_async(replies_by_prompt)()
    assert (stored[orphan].status, stored[orphan].text) == ("interrupted", orphaned.text)
    assert await asyncio.to_thread(new_host.terminate) == 0


async def test_an_agent_process_collects_garbage_when_quiet_and_reports_its_loop_lag(
    agent_processes, devices, alice
):
    """What the relay bench reads (`--log-loop-lag`), with the quiet-GC policy in force."""
    conversation = await sync_to_async(Conversation.objects.create)(owner=alice)
    agent = agent_processes("agent-lag", extra_args=["--log-loop-lag", "0.2"])
    await agent.await_ready()
    phone = await devices(alice, conversation)
    prompt_id = await phone.prompt("Say exactly: Still answering.")
    reply = await phone.final_reply(prompt_id)
    assert (reply.status, reply.text) == ("complete", "Still answering.")
    await phone.wait_for(lambda: "event loop worst lag" in agent.output())
    assert "full garbage collections now wait for a quiet moment" in agent.output()
