"""kill -9 the agent mid-reply, several times, with prompts arriving while it is dead.

`manage.py run_agent` runs as a real subprocess; SIGKILL gives it no chance to say goodbye. The
restarted process (same agent id, as after a host restart) must settle what the dead one left:
no reply stays `streaming`, every device hears how each reply ended, and every prompt sent while
no agent ran is answered from channel history. The 20-kill version is `python -m soak crash`.
"""

from __future__ import annotations

import asyncio
import uuid

from asgiref.sync import sync_to_async

from conversations import events
from conversations.models import Conversation, Message

LONG = " ".join(f"word{i}" for i in range(120))
CONVERSATIONS = 3
KILLS = 2


def reply_rows() -> dict[str, str]:
    """promptId -> status of its reply, for every prompt that has one."""
    rows = Message.objects.filter(role=Message.Role.ASSISTANT).values_list("prompt_id", "status")
    return {str(prompt_id): status for prompt_id, status in rows}


def prompt_ids() -> set[str]:
    rows = Message.objects.filter(role=Message.Role.USER).values_list("prompt_id", flat=True)
    return {str(p) for p in rows}


async def settled_reply_rows(timeout: float = 10.0) -> dict[str, str]:
    async with asyncio.timeout(timeout):
        while True:
            rows = await sync_to_async(reply_rows)()
            if all(status in events.FINAL_STATUSES for status in rows.values()):
                return rows
            await asyncio.sleep(0.05)


async def test_killing_the_agent_mid_reply_loses_no_prompt_and_strands_no_reply(
    stand_ins, agent_processes, devices, alice
):
    _, anthropic_server = stand_ins
    # Slow enough that every kill lands mid-reply.
    anthropic_server.set_pacing(ttft=0.05, tokens_per_second=40)
    agent_id = f"crash-{uuid.uuid4().hex[:6]}"
    agent = agent_processes(agent_id)
    await agent.await_ready()

    conversations = [
        await sync_to_async(Conversation.objects.create)(owner=alice) for _ in range(CONVERSATIONS)
    ]
    pairs = [(await devices(alice, c), await devices(alice, c)) for c in conversations]
    interrupted_rounds: list[set[str]] = []
    sent_while_down: list[str] = []
    all_prompts: list[tuple[int, str]] = []

    for _ in range(KILLS):
        mid_reply = []
        for index, (phone, _laptop) in enumerate(pairs):
            prompt_id = await phone.prompt(f"Say exactly: {LONG}")
            mid_reply.append(prompt_id)
            all_prompts.append((index, prompt_id))
        for (_phone, laptop), prompt_id in zip(pairs, mid_reply, strict=True):
            await laptop.streaming(prompt_id)

        agent.kill()

        # Users keep typing while no agent runs; these live only in channel history now.
        for index, (phone, _laptop) in enumerate(pairs):
            prompt_id = await phone.prompt(f"Say exactly: sent while down {uuid.uuid4().hex[:6]}")
            sent_while_down.append(prompt_id)
            all_prompts.append((index, prompt_id))

        agent = agent_processes(agent_id)
        await agent.await_ready()
        interrupted_rounds.append(set(mid_reply))

        # Every device ends every reply: interrupted ones are told so, the rest complete.
        for index, prompt_id in all_prompts:
            for device in pairs[index]:
                reply = await device.final_reply(prompt_id, timeout=30)
                assert reply.final

    # A device hears `stop` just before the agent writes the outcome; give the write a moment.
    rows = await settled_reply_rows()
    stored_prompts = await sync_to_async(prompt_ids)()
    sent = {prompt_id for _, prompt_id in all_prompts}
    # 0 prompts lost: each was stored and has a reply row in a final state.
    assert sent <= stored_prompts
    assert sent <= set(rows)
    assert all(status in events.FINAL_STATUSES for status in rows.values()), rows
    # What was sent while no agent ran was answered in full, not merely settled.
    for prompt_id in sent_while_down:
        assert rows[prompt_id] == Message.Status.COMPLETE
    for mid_reply in interrupted_rounds:
        for prompt_id in mid_reply:
            assert rows[prompt_id] in (Message.Status.INTERRUPTED, Message.Status.COMPLETE)
    assert any(rows[p] == Message.Status.INTERRUPTED for r in interrupted_rounds for p in r)
    # And both devices of a conversation agree on every reply's final state.
    for index, prompt_id in all_prompts:
        phone, laptop = pairs[index]
        a, b = phone.reply_for(prompt_id), laptop.reply_for(prompt_id)
        assert a is not None and b is not None
        assert (a.status, a.response_id) == (b.status, b.response_id)
        assert a.status == rows[prompt_id]
        if a.status == events.Status.INTERRUPTED:
            assert "send your message again" in a.error
    agent.terminate()


async def test_sigterm_lets_the_running_reply_finish_before_exiting(
    stand_ins, agent_processes, devices, alice
):
    _, anthropic_server = stand_ins
    anthropic_server.set_pacing(tokens_per_second=60)
    agent = agent_processes(f"graceful-{uuid.uuid4().hex[:6]}")
    await agent.await_ready()
    conversation = await sync_to_async(Conversation.objects.create)(owner=alice)
    phone = await devices(alice, conversation)
    text = " ".join(f"w{i}" for i in range(60))
    prompt_id = await phone.prompt(f"Say exactly: {text}")
    await phone.streaming(prompt_id)
    exit_code = await asyncio.to_thread(agent.terminate)
    reply = await phone.final_reply(prompt_id)
    assert (reply.status, reply.text) == ("complete", text)
    assert exit_code == 0


async def test_a_replacement_agent_with_a_new_id_settles_the_orphaned_reply(
    stand_ins, agent_processes, devices, alice
):
    """A new host or pod name means a new agent id: the dead one's reply must still settle,
    and the conversation's next prompt must not queue behind it."""
    _, anthropic_server = stand_ins
    anthropic_server.set_pacing(tokens_per_second=40)
    first = agent_processes(f"host-a-{uuid.uuid4().hex[:6]}")
    await first.await_ready()
    conversation = await sync_to_async(Conversation.objects.create)(owner=alice)
    phone = await devices(alice, conversation)
    orphan = await phone.prompt(f"Say exactly: {LONG}")
    await phone.streaming(orphan)
    first.kill()

    replacement = agent_processes(f"host-b-{uuid.uuid4().hex[:6]}")
    await replacement.await_ready()
    follow_up = await phone.prompt("Say exactly: Answered by the replacement.")
    # Well inside the 30 s a reply may stay `streaming` after its agent died.
    assert (await phone.final_reply(follow_up, timeout=15)).status == "complete"
    assert (await phone.final_reply(orphan, timeout=1)).final
