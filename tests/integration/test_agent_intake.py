"""Prompt intake: nothing is lost or dropped silently (issue 13).

- A prompt is stored and answered although the database refuses writes for a while (SQLite
  write lock held by another connection; on Postgres a table lock with a short lock_timeout).
- The sweeper finds a prompt that slipped past intake and answers it.
- Malformed prompts, and prompts to a deleted conversation, get a `refusal` from the agent's
  clientId, heard by ably-python (here) and ably-js (tests/integration/js/agent_refusal.mjs).
- The reply's outcome is committed before `stop` is published.
"""

from __future__ import annotations

import asyncio
import datetime
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from ably.types.message import Message as AblyMessage
from asgiref.sync import sync_to_async
from django.db import connection

from conversations import events, realtime
from conversations.models import Conversation, Message
from emulators.ably.testing import run_node_async
from tests.agent_fixtures import lifecycle_ably_config, stored_reply

JS = Path(__file__).parent / "js"


@pytest.fixture
def agent_ably_config():
    return lifecycle_ably_config()


def is_sqlite() -> bool:
    return connection.vendor == "sqlite"


class WriteBlocker:
    """Refuses the agent's writes while held: an SQLite write lock (the agent runs with a
    0.5 s busy timeout) or, on Postgres, an exclusive table lock (the agent's sessions run
    with a 500 ms lock_timeout), each from a connection of its own."""

    def __init__(self) -> None:
        self._release = threading.Event()
        self._locked = threading.Event()
        self._thread: threading.Thread | None = None

    def _hold_sqlite(self) -> None:
        db = sqlite3.connect(connection.settings_dict["NAME"], timeout=10)
        try:
            db.execute("BEGIN IMMEDIATE")
            self._locked.set()
            self._release.wait(30)
            db.rollback()
        finally:
            db.close()

    def _hold_postgres(self) -> None:
        import psycopg

        settings = connection.settings_dict
        with psycopg.connect(
            host=settings.get("HOST") or "127.0.0.1",
            port=settings.get("PORT") or 5432,
            user=settings.get("USER") or "postgres",
            dbname=settings["NAME"],
        ) as db:
            with db.transaction():
                db.execute(f"LOCK TABLE {Message._meta.db_table} IN EXCLUSIVE MODE")
                self._locked.set()
                self._release.wait(30)

    def __enter__(self) -> WriteBlocker:
        target = self._hold_sqlite if is_sqlite() else self._hold_postgres
        self._thread = threading.Thread(target=target, daemon=True)
        self._thread.start()
        assert self._locked.wait(10), "could not take the database lock"
        return self

    def __exit__(self, *exc: object) -> None:
        self._release.set()
        assert self._thread is not None
        self._thread.join(10)


@pytest.fixture
def impatient_database() -> Iterator[dict[str, str]]:
    """Environment for an agent subprocess whose writes fail fast on a lock, as a busy shared
    database makes them fail (the agent must retry, not lose the prompt)."""
    if is_sqlite():
        yield {"SQLITE_BUSY_TIMEOUT": "0.5"}
        return
    name = connection.settings_dict["NAME"]
    with connection.cursor() as cursor:
        cursor.execute(f'ALTER DATABASE "{name}" SET lock_timeout = 500')
    try:
        yield {}
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f'ALTER DATABASE "{name}" RESET lock_timeout')


def replies_by_prompt() -> dict[str, Message]:
    return {str(m.prompt_id): m for m in Message.objects.filter(role=Message.Role.ASSISTANT)}


async def test_a_prompt_is_stored_and_answered_although_the_database_refuses_writes_a_while(
    agent_processes, devices, alice, impatient_database
):
    conversation = await sync_to_async(Conversation.objects.create)(owner=alice)
    agent = agent_processes(f"intake-{uuid.uuid4().hex[:6]}", env=impatient_database)
    await agent.await_ready()
    phone = await devices(alice, conversation)
    with WriteBlocker():
        prompt_id = await phone.prompt("Say exactly: Stored despite the lock.")
        # The agent has tried (and failed) to store it at least once before the lock goes.
        await asyncio.to_thread(_wait_for_log, agent, "record_prompt failed", timeout=15)
    reply = await phone.final_reply(prompt_id, timeout=40)
    assert (reply.status, reply.text) == ("complete", "Stored despite the lock.")
    stored = await sync_to_async(stored_reply)(prompt_id)
    assert (stored.status, stored.text) == ("complete", reply.text)
    assert (
        await sync_to_async(Message.objects.filter(prompt_id=prompt_id, role="user").count)() == 1
    )
    assert await asyncio.to_thread(agent.terminate) == 0


def _wait_for_log(agent, text: str, timeout: float) -> None:
    import time

    deadline = time.monotonic() + timeout
    while text not in agent.output():
        if time.monotonic() > deadline:
            raise AssertionError(f"agent never logged {text!r}:\n{agent.output()}")
        time.sleep(0.05)


async def test_the_reply_is_saved_before_stop_is_published(
    agent_processes, devices, alice, impatient_database, anthropic_server
):
    """While the database refuses writes, the finished reply's `stop` waits for its save: a
    device that hears `stop` and reloads at once sees the same outcome."""
    # Slow enough that the reply is still streaming once the test holds the lock, however
    # loaded the machine: its six words take ~6 s after the first one arrives (at 30 tokens/s
    # a CI run once took the lock after the reply had already been saved).
    anthropic_server.set_pacing(tokens_per_second=1)
    conversation = await sync_to_async(Conversation.objects.create)(owner=alice)
    agent = agent_processes(f"save-{uuid.uuid4().hex[:6]}", env=impatient_database)
    await agent.await_ready()
    phone = await devices(alice, conversation)
    seen_at_stop: list[str] = []

    def status_now(prompt_id: str) -> str:
        # A fresh connection, as a reload would read (WAL readers see the last commit).
        return Message.objects.get(prompt_id=prompt_id, role="assistant").status

    stopped = asyncio.Event()

    def on_stop(message: AblyMessage) -> None:
        if message.client_id == phone.agent_client_id:
            stopped.set()

    await phone.channel.subscribe(events.Name.STOP, on_stop)
    prompt_id = await phone.prompt("Say exactly: one two three four five six")
    await phone.streaming(prompt_id)
    with WriteBlocker():
        # The model finishes while the lock is held: the save is refused and retried.
        await asyncio.to_thread(_wait_for_log, agent, "finish_reply failed", timeout=15)
        assert not stopped.is_set(), "stop was published before the reply was saved"
    await asyncio.wait_for(stopped.wait(), 30)
    seen_at_stop.append(await sync_to_async(status_now)(prompt_id))
    assert seen_at_stop == ["complete"]
    reply = await phone.final_reply(prompt_id)
    assert (reply.status, reply.text) == ("complete", "one two three four five six")
    assert await asyncio.to_thread(agent.terminate) == 0


async def test_the_sweeper_answers_a_prompt_that_slipped_past_intake(
    start_agent, devices, alice, conversation
):
    agent_thread = await asyncio.to_thread(
        start_agent, sweep_interval=0.3, sweep_grace=0.2, sweep_window=60
    )
    phone = await devices(alice, conversation)
    warm_up = await phone.prompt("Say exactly: attached.")
    await phone.final_reply(warm_up)
    agent = agent_thread.agent
    assert agent is not None
    session = agent.sessions[str(conversation.pk)]
    lost = str(uuid.uuid4())

    async def lose_it() -> None:
        # What the old intake did on a database error: marked seen, never stored.
        session.seen_prompt_ids.add(lost)

    await agent_thread.acall(lose_it)
    await phone.prompt("Say exactly: found by the sweeper.", prompt_id=lost)
    reply = await phone.final_reply(lost, timeout=20)
    assert (reply.status, reply.text) == ("complete", "found by the sweeper.")
    await agent_thread.wait_idle()
    stored = await sync_to_async(stored_reply)(lost)
    assert stored.text == reply.text


MALFORMED = [
    # (what, data, extras, promptId the refusal carries)
    ("binary data", b"\x00\x01binary", {"headers": {"promptId": "P"}}, "P"),
    ("object data", {"text": "hi"}, {"headers": {"promptId": "P"}}, "P"),
    ("no promptId", "Say exactly: hi", {"headers": {}}, None),
    ("a promptId that is not a UUID", "Say exactly: hi", {"headers": {"promptId": "nope"}}, None),
    ("headers not an object", "Say exactly: hi", {"headers": "promptId"}, None),
]


async def test_malformed_prompts_are_refused_with_a_message_every_device_sees(
    start_agent, devices, alice, conversation
):
    await asyncio.to_thread(start_agent)
    phone = await devices(alice, conversation)
    laptop = await devices(alice, conversation)
    expected: list[str | None] = []
    for _what, data, extras, carries in MALFORMED:
        prompt_id = str(uuid.uuid4())
        if carries == "P":
            extras = {"headers": {"promptId": prompt_id}}
        await phone.publish_raw("prompt", data, extras)
        expected.append(prompt_id if carries == "P" else None)
    # A good prompt after them is still answered.
    good = await phone.prompt("Say exactly: still here.")
    assert (await laptop.final_reply(good)).text == "still here."
    for device in (phone, laptop):
        await device.wait_for(lambda d=device: len(d.refusals) >= len(MALFORMED))
        assert sorted(r.prompt_id or "" for r in device.refusals) == sorted(
            p or "" for p in expected
        )
        assert {r.reason for r in device.refusals} == {events.RefusalReason.MALFORMED}
        assert all("not sent to Claude" in r.message for r in device.refusals)
    # Heard from the agent's clientId (forgeries would be in `ignored`).
    assert laptop.ignored == []
    stored = await sync_to_async(list)(Message.objects.values_list("prompt_id", flat=True))
    assert {str(p) for p in stored} == {good}


def delete_leaving_tokens(conversation: Conversation) -> None:
    """Delete the row only. `actions.delete_conversation` also revokes the devices' tokens, so
    their publishes fail at Ably; the agent's refusal is what a device hears when that
    revocation did not happen (Ably unreachable at that moment, a key without revocable
    tokens, a token minted in the same instant)."""
    Conversation.objects.filter(pk=conversation.pk).delete()


async def test_a_prompt_to_a_conversation_deleted_while_attached_is_refused(
    start_agent, devices, alice, conversation
):
    agent_thread = await asyncio.to_thread(start_agent)
    phone = await devices(alice, conversation)
    first = await phone.prompt("Say exactly: before.")
    await phone.final_reply(first)
    await sync_to_async(delete_leaving_tokens)(conversation)
    prompt_id = await phone.prompt("Say exactly: after.")
    refusal = await phone.refusal(lambda r: r.prompt_id == prompt_id)
    assert refusal.reason == events.RefusalReason.DELETED
    assert "deleted" in refusal.message
    await agent_thread.wait_idle()
    assert not await sync_to_async(Message.objects.filter(prompt_id=prompt_id).exists)()


async def test_a_prompt_to_a_conversation_deleted_before_the_agent_attached_is_refused(
    start_agent, devices, alice, conversation
):
    # The page was open, the conversation deleted elsewhere, then the agent (re)started:
    # it attaches the channel anyway, refuses, and leaves once quiet.
    phone = await devices(alice, conversation)
    await sync_to_async(delete_leaving_tokens)(conversation)
    agent_thread = await asyncio.to_thread(start_agent, deleted_linger=0.5, idle_detach_after=4)
    prompt_id = await phone.prompt("Say exactly: anyone there?")
    refusal = await phone.refusal(lambda r: r.prompt_id == prompt_id)
    assert refusal.reason == events.RefusalReason.DELETED
    agent = agent_thread.agent
    assert agent is not None

    async def attached() -> bool:
        return str(conversation.pk) in agent.sessions

    # A deleted conversation does not hold a channel slot for long.
    async with asyncio.timeout(20):
        while await agent_thread.acall(attached):
            await asyncio.sleep(0.1)


async def test_refusals_reach_ably_js_devices(stand_ins, start_agent, alice, conversation):
    ably_server, _ = stand_ins
    await asyncio.to_thread(start_agent)
    token = await sync_to_async(realtime.create_token)(alice)
    good_id, object_id = str(uuid.uuid4()), str(uuid.uuid4())
    result = await run_node_async(
        JS / "agent_refusal.mjs",
        ably_server,
        {
            "DEVICE_TOKEN": token,
            "CHANNEL": conversation.channel_name,
            "AGENT_CLIENT_ID": realtime_agent_client_id(),
            "OBJECT_PROMPT_ID": object_id,
            "GOOD_PROMPT_ID": good_id,
        },
    )
    refusals = result["refusals"]
    # ably-js hands the listener for every message the agent's `refusal`s, from the agent.
    assert {r["clientId"] for r in refusals} == {realtime_agent_client_id()}
    assert sorted(r["promptId"] or "" for r in refusals) == sorted([object_id, ""])
    assert all(r["reason"] == "malformed" and "not sent to Claude" in r["data"] for r in refusals)
    assert result["goodAnswered"]


def realtime_agent_client_id() -> str:
    from django.conf import settings

    return settings.ABLY_AGENT_CLIENT_ID


def saved_but_never_announced(conversation: Conversation, agent_id: str, text: str) -> str:
    """What kill -9 between saving a reply and publishing its `stop` leaves: a complete row,
    and the agent id's lease last renewed a minute ago (its holder is gone)."""
    from django.utils import timezone

    from conversations import actions
    from conversations.models import AgentLease

    prompt_id = str(uuid.uuid4())
    prompt, _ = actions.record_prompt(
        conversation.pk, prompt_id=prompt_id, text="Say exactly: saved.", client_id="user-1"
    )
    reply = actions.claim_reply(
        prompt, response_id=str(uuid.uuid4()), model="claude-test", agent_id=agent_id
    )
    assert reply is not None
    assert actions.finish_reply(
        reply, status=events.Status.COMPLETE, text=text, stop_reason="end_turn"
    )
    lapsed = timezone.now() - datetime.timedelta(seconds=60)
    AgentLease.objects.create(
        agent_id=agent_id,
        instance="killed",
        host="gone",
        pid=1,
        started_at=lapsed,
        heartbeat_at=lapsed,
    )
    return prompt_id


async def test_a_reply_saved_by_a_killed_agent_but_never_announced_is_announced(
    start_agent, devices, alice, conversation
):
    phone = await devices(alice, conversation)
    text = "The whole reply, as saved."
    prompt_id = await sync_to_async(saved_but_never_announced)(conversation, "killed-1", text)
    assert phone.reply_for(prompt_id) is None
    await asyncio.to_thread(start_agent, lease_ttl=30)
    reply = await phone.final_reply(prompt_id)
    assert (reply.status, reply.text) == ("complete", text)
