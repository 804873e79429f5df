"""`running_agent` as other test modules use it: on the test's own `ably_server`."""

from __future__ import annotations

from asgiref.sync import sync_to_async

from conversations.models import Conversation


async def test_running_agent_answers_on_the_tests_own_stand_ins(
    running_agent, stand_ins, ably_server, devices, alice, settings
):
    assert stand_ins[0] is ably_server
    assert settings.ABLY_ENDPOINT == ably_server.endpoint
    conversation = await sync_to_async(Conversation.objects.create)(owner=alice)
    phone = await devices(alice, conversation)
    prompt_id = await phone.prompt("Say exactly: Fixture works.")
    reply = await phone.final_reply(prompt_id)
    assert (reply.status, reply.text) == ("complete", "Fixture works.")
