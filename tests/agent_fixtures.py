"""Fixtures and helpers for tests that need the agent running, reusable by any test module.

- `agent_config(ably_server, anthropic_server, **overrides)`: an AgentConfig pointed at the
  stand-ins with test-speed pacing.
- `AgentThread`: the real `Agent` on its own event loop in a background thread (fixture
  `running_agent`, or `start_agent` to choose the options).
- `AgentProcess`: `manage.py run_agent` as a subprocess sharing the test database, for
  multi-process, SIGTERM and kill -9 tests.
- `Device`: a user's device on ably-python (a Django-minted JWT, like the browser's), which
  publishes prompts and cancels and rebuilds replies with the product's own fold
  (`conversations.transcript`, the same rules as the browser's): trusting only the agent's
  clientId, for both streaming patterns.

Use with `pytest_plugins = ["tests.agent_fixtures"]` or import the helpers; the database must
be `transactional_db` so the agent (another thread or process) sees committed rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from ably import AblyRealtime
from ably.types.message import Message as AblyMessage
from ably.types.presence import PresenceAction
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connection

from conversations import events, realtime
from conversations.agent.config import AgentConfig
from conversations.agent.supervisor import Agent
from conversations.transcript import FoldedReply, Transcript

T = TypeVar("T")
# In Device.agent_status_history: the agent left presence.
LEFT = "(left)"
REPO_ROOT = Path(__file__).resolve().parent.parent
REPLY_TIMEOUT = 20.0


def agent_config(ably_server: Any, anthropic_server: Any, **overrides: Any) -> AgentConfig:
    values: dict[str, Any] = {
        "agent_id": f"test-agent-{uuid.uuid4().hex[:8]}",
        "ably_key": ably_server.key,
        "ably_endpoint": ably_server.endpoint,
        "anthropic_base_url": anthropic_server.base_url,
        "connections": 2,
        "flush_window": 0.01,
        "retry_base_delay": 0.02,
        "retry_max_delay": 0.1,
        "grace_period": 5.0,
        "catch_up_window": 600.0,
        "cancel_buffer_seconds": 10.0,
        "ordering_wait": 10.0,
        "generate_titles": False,
        "discovery_interval": 0.5,
        # Long enough for a slow CI machine's pauses, short enough for the stall tests.
        "stall_timeout": 4.0,
    }
    values.update(overrides)
    return AgentConfig.from_settings(**values)


def point_settings_at(settings_fixture: Any, ably_server: Any, anthropic_server: Any) -> None:
    """Django's own publishes (list changes, titles) and minted tokens go to the stand-ins too."""
    settings_fixture.ABLY_API_KEY = ably_server.key
    settings_fixture.ABLY_ENDPOINT = ably_server.endpoint
    settings_fixture.ANTHROPIC_BASE_URL = anthropic_server.base_url


class AgentThread:
    """The real Agent on a private event loop in a daemon thread."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.loop = asyncio.new_event_loop()
        self.agent: Agent | None = None
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="agent")

    def start(self) -> AgentThread:
        self._thread.start()

        async def boot() -> Agent:
            agent = Agent(self.config)
            await agent.start()
            return agent

        self.agent = self.call(boot)
        return self

    def call(self, factory: Callable[[], Coroutine[Any, Any, T]], timeout: float = 30.0) -> T:
        """Run a coroutine on the agent's loop and wait for it (from a sync test)."""
        return asyncio.run_coroutine_threadsafe(factory(), self.loop).result(timeout)

    async def acall(
        self, factory: Callable[[], Coroutine[Any, Any, T]], timeout: float = 30.0
    ) -> T:
        """The same from an async test, without blocking the test's own loop."""
        future = asyncio.run_coroutine_threadsafe(factory(), self.loop)
        return await asyncio.wait_for(asyncio.wrap_future(future), timeout)

    async def wait_idle(self, timeout: float = REPLY_TIMEOUT) -> None:
        assert self.agent is not None
        agent = self.agent
        await self.acall(lambda: agent.wait_idle(timeout), timeout + 1)

    def stop(self, grace_period: float | None = None) -> None:
        if self.agent is not None and not self.loop.is_closed():
            agent = self.agent
            with contextlib.suppress(Exception):
                self.call(lambda: agent.shutdown(grace_period), timeout=60)
            self.agent = None
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
        if not self._thread.is_alive() and not self.loop.is_closed():
            self.loop.close()


def database_url() -> str:
    """The URL of the test database, for agent subprocesses (DATABASE_URL)."""
    db = connection.settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    if db["ENGINE"].endswith("postgresql"):
        user = db.get("USER") or "postgres"
        password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
        host = db.get("HOST") or "127.0.0.1"
        port = db.get("PORT") or "5432"
        return f"postgres://{user}{password}@{host}:{port}/{db['NAME']}"
    raise RuntimeError(f"no subprocess DATABASE_URL for {db['ENGINE']}")


class AgentProcess:
    """`manage.py run_agent` in a subprocess against the stand-ins and the test database."""

    READY_MARK = " ready: "

    def __init__(
        self,
        ably_server: Any,
        anthropic_server: Any,
        *,
        agent_id: str,
        streaming_pattern: str | None = None,
        extra_args: list[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.agent_id = agent_id
        self.log_path = (
            Path(os.environ.get("TMPDIR", "/tmp")) / f"agent-{agent_id}-{uuid.uuid4().hex[:6]}.log"
        )
        self._log = self.log_path.open("wb")
        process_env = {
            **os.environ,
            "DATABASE_URL": database_url(),
            "ABLY_API_KEY": ably_server.key,
            "ABLY_ENDPOINT": ably_server.endpoint,
            "ANTHROPIC_BASE_URL": anthropic_server.base_url,
            "STREAMING_PATTERN": streaming_pattern or settings.STREAMING_PATTERN,
            "LOG_LEVEL": "INFO",
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        args = [
            sys.executable,
            "manage.py",
            "run_agent",
            "--agent-id",
            agent_id,
            "--flush-window",
            "0.01",
            "--retry-base-delay",
            "0.02",
            "--connections",
            "1",
            "--no-titles",
            "--discovery-interval",
            "0.5",
            *(extra_args or []),
        ]
        self.process = subprocess.Popen(
            args, cwd=REPO_ROOT, env=process_env, stdout=self._log, stderr=subprocess.STDOUT
        )

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while self.READY_MARK not in self.output():
            if self.process.poll() is not None:
                raise RuntimeError(f"agent {self.agent_id} exited:\n{self.output()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"agent {self.agent_id} not ready:\n{self.output()}")
            time.sleep(0.05)

    async def await_ready(self, timeout: float = 90.0) -> None:
        await asyncio.to_thread(self.wait_ready, timeout)

    def terminate(self, timeout: float = 30.0) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(10)

    def close(self) -> None:
        if self.process.poll() is None:
            self.kill()
        self._log.close()
        with contextlib.suppress(OSError):
            self.log_path.unlink()


# --- the device -------------------------------------------------------------------------------


# What a device shows of one reply (text, thinking, status, stop_reason, error, names, final).
Reply = FoldedReply


class Device:
    """A user's device on a conversation channel, rendering replies like a client must."""

    def __init__(self, user: Any, conversation_id: Any, ably_server: Any, token: str) -> None:
        from conversations.agent.ably_adapter import client_options

        self.user = user
        self.client_id = realtime.client_id_for_user(user)
        self.channel_name = events.conversation_channel(conversation_id)
        self.client = AblyRealtime(token=token, **client_options(ably_server.endpoint))
        self.channel = self.client.channels.get(self.channel_name)
        self.received: list[AblyMessage] = []
        self.agent_client_id = settings.ABLY_AGENT_CLIENT_ID
        # Every reply as the page shows it, folded from what this device received.
        self.transcript = Transcript(self.agent_client_id)
        # Every status the agent showed here, in order (see `_note_agent_status`).
        self.agent_status_history: list[str] = []
        self.agent_presence_status: str | None = None
        # Every ATTACHED (channel `attached`/`update`), and whether it was RESUMED.
        self.attach_changes: list[str] = []
        self._changed = asyncio.Event()

    async def attach(self) -> Device:
        self.channel.on("attached", self._on_attach_change)
        self.channel.on("update", self._on_attach_change)
        await self.channel.subscribe(self._on_message)
        await self.channel.presence.subscribe(self._on_presence)
        # The agent's presence as it was before this device attached (no event tells it).
        if self.agent_presence_status is None:
            statuses = await self.agent_statuses()
            if statuses and self.agent_presence_status is None:
                self.agent_presence_status = statuses[0]
        return self

    def _on_attach_change(self, change: Any) -> None:
        resumed = "resumed" if getattr(change, "resumed", False) else "not resumed"
        self.attach_changes.append(f"{change.previous}->{change.current}:{resumed}")

    def _on_presence(self, member: Any) -> None:
        if member.client_id != self.agent_client_id:
            return
        if member.action == PresenceAction.LEAVE:
            self.agent_presence_status = None
            self.agent_status_history.append(LEFT)
        elif isinstance(member.data, dict):
            self.agent_presence_status = member.data.get("status", "")
            self._note_agent_status(force=True)
        self._changed.set()

    def _note_agent_status(self, *, force: bool = False) -> None:
        """The agent's status as the page shows it: presence, or a reply in progress (thinking
        until its first text, then streaming), unless presence says `retrying`."""
        status = self.agent_presence_status
        if status and status != events.AgentStatus.RETRYING:
            for reply in self.replies.values():
                if reply.final:
                    continue
                if reply.text or reply.thinking:
                    status = str(events.AgentStatus.STREAMING)
                    break
                status = str(events.AgentStatus.THINKING)
        if status is None:
            return
        if force or self.agent_status_history[-1:] != [status]:
            self.agent_status_history.append(status)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.client.close()

    async def prompt(self, text: str, prompt_id: str | None = None) -> str:
        prompt = events.Prompt(prompt_id or str(uuid.uuid4()), text)
        await self.channel.publish(
            AblyMessage(name=str(prompt.name), data=prompt.data(), extras=prompt.extras())
        )
        return prompt.prompt_id

    async def cancel(self, *, response_id: str | None = None, prompt_id: str | None = None) -> None:
        cancel = events.Cancel(response_id=response_id, prompt_id=prompt_id)
        await self.channel.publish(
            AblyMessage(name=str(cancel.name), data=cancel.data(), extras=cancel.extras())
        )

    async def publish_raw(self, name: str, data: Any, extras: dict[str, Any]) -> None:
        await self.channel.publish(AblyMessage(name=name, data=data, extras=extras))

    @property
    def replies(self) -> dict[str, Reply]:
        """responseId -> what this device shows of that reply."""
        return self.transcript.replies

    @property
    def refusals(self) -> list[events.Refusal]:
        """The agent's refusals, trusted from its clientId only (forged ones are `ignored`)."""
        return self.transcript.refusals

    @property
    def ignored(self) -> list[AblyMessage]:
        """Agent-only messages from anyone but the agent, and malformed ones."""
        return self.transcript.ignored

    def _on_message(self, message: AblyMessage) -> None:
        self.received.append(message)
        if message.name in events.AGENT_NAMES:
            self.transcript.apply(message)
            self._note_agent_status()
            self._changed.set()

    async def wait_for(
        self, predicate: Callable[[], T | None], timeout: float = REPLY_TIMEOUT
    ) -> T:
        async with asyncio.timeout(timeout):
            while True:
                result = predicate()
                if result:
                    return result
                self._changed.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.2):
                        await self._changed.wait()

    async def refusal(
        self, predicate: Callable[[events.Refusal], bool], timeout: float = REPLY_TIMEOUT
    ) -> events.Refusal:
        """The first refusal from the agent that matches `predicate`."""
        return await self.wait_for(
            lambda: next((r for r in self.refusals if predicate(r)), None), timeout
        )

    def reply_for(self, prompt_id: str) -> Reply | None:
        """The newest reply to the prompt."""
        return self.transcript.reply_for(prompt_id)

    async def started(self, prompt_id: str, timeout: float = REPLY_TIMEOUT) -> Reply:
        return await self.wait_for(lambda: self.reply_for(prompt_id), timeout)

    async def streaming(self, prompt_id: str, timeout: float = REPLY_TIMEOUT) -> Reply:
        """Once some text of the reply has arrived."""

        def has_text() -> Reply | None:
            reply = self.reply_for(prompt_id)
            return reply if reply and reply.text else None

        return await self.wait_for(has_text, timeout)

    async def final_reply(self, prompt_id: str, timeout: float = REPLY_TIMEOUT) -> Reply:
        def done() -> Reply | None:
            reply = self.reply_for(prompt_id)
            return reply if reply and reply.final else None

        return await self.wait_for(done, timeout)

    async def agent_statuses(self) -> list[str]:
        members = await self.channel.presence.get()
        return [
            (m.data or {}).get("status", "")
            for m in members
            if m.client_id == self.agent_client_id and isinstance(m.data, dict)
        ]


# --- pytest fixtures --------------------------------------------------------------------------


# What a production agent key needs beyond `*` (which, as in Ably, excludes [meta] channels):
# subscribe on `[meta]channel.lifecycle` to hear conversations open.
AGENT_KEY_CAPABILITY = '{"*":["*"],"[meta]channel.lifecycle":["subscribe"]}'


def lifecycle_ably_config(**more: Any) -> dict[str, Any]:
    """HubConfig for a stand-in whose dev key may subscribe to channel lifecycle events."""
    return {"key_capabilities": {"devapp.devkey": AGENT_KEY_CAPABILITY}, **more}


@pytest.fixture
def agent_ably_config() -> dict[str, Any] | None:
    """None: the agent uses the test's `ably_server`. A dict (override it in a module, e.g.
    with `lifecycle_ably_config()`): a dedicated stand-in with that HubConfig."""
    return None


@pytest.fixture
def agent_ably_server(request, agent_ably_config):
    if agent_ably_config is None:
        return request.getfixturevalue("ably_server")
    return request.getfixturevalue("make_ably_server")(**agent_ably_config)


@pytest.fixture
def stand_ins(settings, agent_ably_server, anthropic_server, transactional_db):
    """Both stand-ins, with Django's settings pointed at them."""
    point_settings_at(settings, agent_ably_server, anthropic_server)
    return agent_ably_server, anthropic_server


@pytest.fixture
def start_agent(stand_ins) -> Iterator[Callable[..., AgentThread]]:
    """Factory: start an in-process agent with chosen options; all are stopped at teardown."""
    ably_server, anthropic_server = stand_ins
    started: list[AgentThread] = []

    def start(**overrides: Any) -> AgentThread:
        thread = AgentThread(agent_config(ably_server, anthropic_server, **overrides)).start()
        started.append(thread)
        return thread

    yield start
    for thread in started:
        thread.stop(grace_period=1.0)


@pytest.fixture
def running_agent(start_agent) -> AgentThread:
    """An in-process agent with the default (settings) streaming pattern."""
    return start_agent()


@pytest.fixture
def agent_processes(stand_ins) -> Iterator[Callable[..., AgentProcess]]:
    """Factory: `manage.py run_agent` subprocesses; any still running are killed at teardown."""
    ably_server, anthropic_server = stand_ins
    processes: list[AgentProcess] = []

    def spawn(agent_id: str, **kwargs: Any) -> AgentProcess:
        process = AgentProcess(ably_server, anthropic_server, agent_id=agent_id, **kwargs)
        processes.append(process)
        return process

    yield spawn
    for process in processes:
        process.close()


@pytest.fixture
async def devices(stand_ins) -> Any:
    """Factory: `await devices(user, conversation)` -> an attached Device; closed at teardown."""
    ably_server, _ = stand_ins
    opened: list[Device] = []

    async def open_device(user: Any, conversation: Any) -> Device:
        token = await sync_to_async(realtime.create_token)(user)
        device = Device(user, conversation.pk, ably_server, token)
        opened.append(device)
        return await device.attach()

    yield open_device
    for device in opened:
        await device.close()


# --- shared by the agent and reliability test modules -------------------------------------

PATTERNS = ["message-per-response", "message-per-token"]


@pytest.fixture
def conversation(alice: Any, transactional_db: Any) -> Any:
    """One conversation of alice's, committed (the agent reads it from another thread)."""
    from conversations.models import Conversation

    return Conversation.objects.create(owner=alice)


def stored_reply(prompt_id: str) -> Any:
    """The assistant row the agent stored for a prompt."""
    from conversations.models import Message

    return Message.objects.get(prompt_id=prompt_id, role=Message.Role.ASSISTANT)
