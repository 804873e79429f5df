"""Fixtures and helpers for tests that need the agent running, reusable by any test module.

- `agent_config(ably_server, anthropic_server, **overrides)`: an AgentConfig pointed at the
  stand-ins with test-speed pacing.
- `AgentThread`: the real `Agent` on its own event loop in a background thread (fixture
  `running_agent`, or `start_agent` to choose the options).
- `AgentProcess`: `manage.py run_agent` as a subprocess sharing the test database, for
  multi-process, SIGTERM and kill -9 tests.
- `Device` (defined in `soak.devices`, shared with the soak; re-exported here): a user's device
  on ably-python that publishes prompts and cancels and rebuilds replies with the product's own
  fold.

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
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connection

from conversations import realtime
from conversations.agent.config import AgentConfig
from conversations.agent.supervisor import Agent
from soak.devices import LEFT as LEFT, REPLY_TIMEOUT, Device as Device, Reply as Reply

T = TypeVar("T")
REPO_ROOT = Path(__file__).resolve().parent.parent


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
