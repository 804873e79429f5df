"""pytest plugin: fixtures that run the Ably stand-in in-process on a free port.

Registered from tests/conftest.py (`pytest_plugins = ["emulators.ably.testing", ...]`).

Fixtures
- `ably_server`: a fresh stand-in per test (own state, own clock), started on 127.0.0.1:<free>.
- `ably_server_session`: one shared stand-in for the session. Faster; use unique channel names
  and never move its clock.
- `make_ably_server(**config)`: factory for a stand-in with `HubConfig` overrides, e.g.
  `make_ably_server(presence_leave_delay_ms=200, max_inbound_rate=5)`; stopped after the test.
- `ably_settings`: points Django's ABLY_ENDPOINT / ABLY_API_KEY at `ably_server`.

A server object (`EmulatorServer`) offers
- `.host`, `.port`, `.endpoint` ("http://127.0.0.1:PORT"), `.key` (the default dev key),
- `.core` / `.hub`: the sans-I/O hub (`.connections`, `.channels[(app_id, name)]`,
  `.find_channel(app_id, name)` -> `.members`, `.attachments`, `.messages`). Read it through
  `server.call(fn)` when a client is active: the hub lives on the server's thread.
- `.drop_transport(connection_id)`: abruptly close that client's socket (it will resume).
- `.freeze_transport(connection_id)`: stop all traffic to that socket without closing it (a
  silent partition only the client's idle timeout detects).
- `.advance_clock(ms)`: move the stand-in's clock forward and fire due timers (presence leaves,
  token expiry, state TTLs, heartbeats).
- `.publish(channel, name=None, data=None, **fields)`: publish as the server (key identity)
  from the stand-in's own thread, e.g. to inject traffic while a client is away.
- `.call(fn)`: run `fn()` on the stand-in's loop, where the hub lives, and return its result.
- `.stop()`, `.start()`, `.restart()` (same port, same state).

Helpers (plain functions)
- `ably_realtime(server, **kwargs)` -> ably-python `AblyRealtime` (call inside a running loop;
  `await client.close()` when done). Default key auth; pass `key=`, `auth_callback=`, `token=`...
- `ably_rest(server, **kwargs)` -> ably-python `AblyRest` (`await rest.close()` when done).
- `await connected(client)`, `await eventually(predicate, what)`, `python_connection_id(client)`.
- `NodeSession(script, server, env)`: converse with a running ably-js script (see its doc).
- `run_node(script, server, env=None, timeout=60)` / `await run_node_async(...)`: run an ably-js
  script with ABLY_ENDPOINT, ABLY_HOST, ABLY_PORT, ABLY_KEY and ABLY_OPTIONS (JSON of the
  client options registered with `use_client_options`) in its environment. The script prints one JSON
  value as its last stdout line and exits non-zero on failure; returns the parsed value.
  tests/integration/js/ably_env.mjs exports `clientOptions(extra)` for such scripts.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from .config import DEFAULT_KEY, HubConfig
from .server import EmulatorServer

if TYPE_CHECKING:
    from ably import AblyRealtime, AblyRest

REPO_ROOT = Path(__file__).resolve().parents[2]

__all__ = [
    "DEFAULT_KEY",
    "EmulatorServer",
    "NodeSession",
    "ably_realtime",
    "ably_rest",
    "connected",
    "eventually",
    "python_connection_id",
    "node_env",
    "run_node",
    "run_node_async",
    "start_server",
]


def start_server(**config: Any) -> EmulatorServer:
    """A started stand-in with `HubConfig` overrides; the caller stops it."""
    server = EmulatorServer(HubConfig(**config))
    server.start()
    return server


# How an SDK is pointed at an endpoint is the app's knowledge (its Ably adapter and endpoint
# module), not the stand-in's, and nothing in emulators/ imports the app: the test suite hands
# its builders in through `use_client_options` (tests/conftest.py).
PythonOptionsBuilder = Callable[[str, "str | None"], dict[str, Any]]
JsOptionsBuilder = Callable[[str], dict[str, Any]]
_client_options: dict[str, Any] = {}


def use_client_options(*, python: PythonOptionsBuilder, js: JsOptionsBuilder) -> None:
    """Register how ably-python (endpoint, client_id) and ably-js (endpoint) options are built."""
    _client_options["python"] = python
    _client_options["js"] = js


def _builder(kind: str) -> Any:
    try:
        return _client_options[kind]
    except KeyError:
        raise RuntimeError(
            "emulators.ably.testing.use_client_options(...) was not called: the suite's "
            "conftest registers how SDK clients are pointed at the stand-in"
        ) from None


def _python_options(server: EmulatorServer, kwargs: dict[str, Any]) -> dict[str, Any]:
    options = _builder("python")(server.endpoint, kwargs.pop("client_id", None))
    return {**options, **kwargs}


def ably_realtime(server: EmulatorServer, **kwargs: Any) -> AblyRealtime:
    from ably import AblyRealtime

    options = _python_options(server, dict(kwargs))
    if not any(
        k in options for k in ("key", "token", "token_details", "auth_callback", "auth_url")
    ):
        options["key"] = server.key
    return AblyRealtime(**options)


def ably_rest(server: EmulatorServer, **kwargs: Any) -> AblyRest:
    from ably import AblyRest

    options = _python_options(server, dict(kwargs))
    if not any(
        k in options for k in ("key", "token", "token_details", "auth_callback", "auth_url")
    ):
        options["key"] = server.key
    return AblyRest(**options)


async def eventually(predicate: Callable[[], Any], what: str, timeout: float = 10) -> None:
    """Wait for something an SDK reaches asynchronously; fail saying what, never hang."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def connected(client: Any, timeout: float = 10) -> Any:
    """An ably-python realtime client, once CONNECTED (raises if it fails instead)."""
    state = client.connection.state.value
    if state != "connected":
        await asyncio.wait_for(client.connection.once_async("connected"), timeout)
    return client


def python_connection_id(client: Any) -> str:
    """ably-python 3.1 has no public `connection.id`; its connection manager holds it."""
    return client.connection.connection_manager.connection_id


def node_env(server: EmulatorServer, env: dict[str, str] | None = None) -> dict[str, str]:
    js_client_options = _builder("js")
    return {
        **os.environ,
        "ABLY_ENDPOINT": server.endpoint,
        "ABLY_HOST": server.host,
        "ABLY_PORT": str(server.port),
        "ABLY_KEY": server.key,
        "ABLY_OPTIONS": json.dumps(js_client_options(server.endpoint)),
        **(env or {}),
    }


def _result(script: str | Path, returncode: int, stdout: str, stderr: str) -> Any:
    if returncode != 0:
        raise AssertionError(
            f"node {script} exited {returncode}\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
        )
    lines = [line for line in stdout.splitlines() if line.strip()]
    if not lines:
        raise AssertionError(f"node {script} printed nothing\n--- stderr\n{stderr}")
    return json.loads(lines[-1])


def run_node(
    script: str | Path,
    server: EmulatorServer,
    env: dict[str, str] | None = None,
    *,
    args: list[str] | None = None,
    timeout: float = 60,
) -> Any:
    completed = subprocess.run(
        ["node", str(script), *(args or [])],
        cwd=REPO_ROOT,
        env=node_env(server, env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return _result(script, completed.returncode, completed.stdout, completed.stderr)


async def run_node_async(
    script: str | Path,
    server: EmulatorServer,
    env: dict[str, str] | None = None,
    *,
    args: list[str] | None = None,
    timeout: float = 60,
) -> Any:
    """Like `run_node`, without blocking the test's event loop (ably-python clients keep going)."""
    process = await asyncio.create_subprocess_exec(
        "node",
        str(script),
        *(args or []),
        cwd=REPO_ROOT,
        env=node_env(server, env),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        stdout, stderr = await process.communicate()
        raise AssertionError(
            f"node {script} timed out after {timeout}s\n--- stdout\n{stdout.decode()}"
            f"\n--- stderr\n{stderr.decode()}"
        ) from None
    return _result(script, process.returncode or 0, stdout.decode(), stderr.decode())


class NodeSession:
    """An ably-js script the test converses with: JSON lines out (`read`), lines in (`send`).

    For scenarios that need the test to act mid-script (drop a transport, move the clock):
        async with NodeSession(script, server) as node:
            ready = await node.read()
            server.drop_transport(ready["connectionId"])
            await node.send({"go": True})
            result = await node.result()
    """

    def __init__(
        self,
        script: str | Path,
        server: EmulatorServer,
        env: dict[str, str] | None = None,
        *,
        timeout: float = 60,
    ) -> None:
        self.script = script
        self.server = server
        self.env = env
        self.timeout = timeout
        self.process: asyncio.subprocess.Process | None = None
        self._stdout: list[str] = []

    async def __aenter__(self) -> NodeSession:
        self.process = await asyncio.create_subprocess_exec(
            "node",
            str(self.script),
            cwd=REPO_ROOT,
            env=node_env(self.server, self.env),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.process and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()

    async def _fail(self, why: str) -> AssertionError:
        assert self.process is not None
        if self.process.returncode is None:
            self.process.kill()
        rest, stderr = await self.process.communicate()
        return AssertionError(
            f"node {self.script}: {why}\n--- stdout\n{''.join(self._stdout)}{rest.decode()}"
            f"\n--- stderr\n{stderr.decode()}"
        )

    async def read(self) -> Any:
        """The next JSON line the script printed."""
        assert self.process is not None and self.process.stdout is not None
        while True:
            try:
                line = await asyncio.wait_for(self.process.stdout.readline(), self.timeout)
            except TimeoutError:
                raise await self._fail("timed out waiting for output") from None
            if not line:
                raise await self._fail("exited before printing the expected line")
            self._stdout.append(line.decode())
            if line.strip():
                return json.loads(line)

    async def send(self, value: Any) -> None:
        assert self.process is not None and self.process.stdin is not None
        self.process.stdin.write((json.dumps(value) + "\n").encode())
        await self.process.stdin.drain()

    async def result(self) -> Any:
        """The script's final JSON line, after it exits successfully."""
        value = await self.read()
        assert self.process is not None
        try:
            code = await asyncio.wait_for(self.process.wait(), self.timeout)
        except TimeoutError:
            raise await self._fail("did not exit") from None
        if code != 0:
            raise await self._fail(f"exited {code}")
        return value


@pytest.fixture
def ably_server() -> Iterator[EmulatorServer]:
    server = start_server()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def ably_server_session() -> Iterator[EmulatorServer]:
    server = start_server()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def make_ably_server() -> Iterator[Callable[..., EmulatorServer]]:
    servers: list[EmulatorServer] = []

    def make(**config: Any) -> EmulatorServer:
        server = start_server(**config)
        servers.append(server)
        return server

    try:
        yield make
    finally:
        for server in servers:
            server.stop()


@pytest.fixture
def ably_settings(settings: Any, ably_server: EmulatorServer) -> EmulatorServer:
    settings.ABLY_ENDPOINT = ably_server.endpoint
    settings.ABLY_API_KEY = ably_server.key
    return ably_server
