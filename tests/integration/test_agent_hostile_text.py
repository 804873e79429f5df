"""A prompt with a character Postgres cannot store (NUL), sent from an ably-python device through
the running agent: it is stored (cleaned) and answered, on SQLite and on Postgres alike.

(Lone surrogates, the other unstorable case, cannot be sent at all by ably-python, whose msgpack
encoder refuses them; `tests/unit/test_web_text.py` covers them at the actions.)"""

from __future__ import annotations

import asyncio

import pytest
from asgiref.sync import sync_to_async

from conversations import events
from conversations.models import Message
from tests.agent_fixtures import lifecycle_ably_config, stored_reply

pytestmark = pytest.mark.slow


@pytest.fixture
def agent_ably_config():
    return lifecycle_ably_config()


async def test_a_prompt_with_nul_is_stored_and_answered(start_agent, devices, alice, conversation):
    agent = await asyncio.to_thread(start_agent)
    phone = await devices(alice, conversation)
    # The model stand-in repeats what follows "Say exactly:", so the reply carries them too.
    prompt_id = await phone.prompt("Say exactly: hello\x00world!")
    reply = await phone.final_reply(prompt_id)
    assert reply.status == events.Status.COMPLETE
    await agent.wait_idle()
    prompt = await sync_to_async(Message.objects.get)(prompt_id=prompt_id, role="user")
    assert prompt.text == "Say exactly: helloworld!"
    stored = await sync_to_async(stored_reply)(prompt_id)
    assert stored.status == Message.Status.COMPLETE
    assert stored.text == "helloworld!"
    # What the device was shown is what a reload shows.
    assert reply.text == stored.text
