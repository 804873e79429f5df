"""`make run` and Ctrl-C: every process stops within honcho's 5 s, with no traceback.

honcho answers Ctrl-C (SIGINT) by sending SIGTERM to every process and SIGKILL 5 s later. The
agent treats SIGINT as SIGTERM: it stops taking prompts, lets a reply in flight finish within its
grace (1 s in Procfile.dev), ends it as interrupted otherwise, and leaves.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from ably import AblyRest
from ably.types.message import Message as AblyMessage
from asgiref.sync import sync_to_async

from conversations import events, realtime
from conversations.agent import ably_adapter
from conversations.models import Message
from tests.agent_fixtures import database_url, stored_reply

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[2]
LONG_TEXT = " ".join(f"word{i}" for i in range(400))
# honcho's KILL_WAIT: past it, every process still running is SIGKILLed.
HONCHO_GRACE_SECONDS = 5.0


async def test_ctrl_c_interrupts_the_reply_in_flight_and_exits_cleanly(
    agent_processes, devices, alice, conversation, anthropic_server
):
    anthropic_server.set_pacing(tokens_per_second=20)
    agent = agent_processes("agent-ctrl-c", extra_args=["--grace-period", "1"])
    await agent.await_ready()
    phone = await devices(alice, conversation)
    prompt_id = await phone.prompt(f"Say exactly: {LONG_TEXT}")
    await phone.streaming(prompt_id)
    agent.process.send_signal(signal.SIGINT)
    assert await asyncio.to_thread(agent.process.wait, HONCHO_GRACE_SECONDS) == 0
    reply = await phone.final_reply(prompt_id)
    assert reply.status == events.Status.INTERRUPTED
    assert reply.text and LONG_TEXT.startswith(reply.text)
    stored = await sync_to_async(stored_reply)(prompt_id)
    assert (stored.status, stored.text) == (Message.Status.INTERRUPTED, reply.text)
    assert "Traceback" not in agent.output()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(predicate, timeout: float, what: str, output) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen in {timeout}s:\n{output()}")
        time.sleep(0.1)


async def prompt_until_streaming(
    ably_endpoint: str, client_id: str, conversation_id: str, text: str
) -> str:
    """Publish a prompt as the user's device would (with the stand-in's development key), then
    wait until the reply's first text is on the channel."""
    from django.conf import settings

    client = AblyRest(
        key=settings.DEV_ABLY_API_KEY,
        **ably_adapter.client_options(ably_endpoint, client_id=client_id),
    )
    try:
        channel = client.channels.get(events.conversation_channel(conversation_id))
        prompt = events.Prompt(prompt_id=str(uuid.uuid4()), text=text)
        await channel.publish(
            AblyMessage(name=str(prompt.name), data=prompt.data(), extras=prompt.extras())
        )
        # The reply's message is created when its first text delta reaches the agent.
        async with asyncio.timeout(30):
            while True:
                page = await channel.history(limit=100)
                if any(m.name in (events.Name.RESPONSE, events.Name.TOKEN) for m in page.items):
                    return prompt.prompt_id
                await asyncio.sleep(0.1)
    finally:
        await client.close()


def test_ctrl_c_on_make_run_stops_every_process_in_time_without_a_traceback(
    transactional_db, alice, conversation, tmp_path
):
    ably_port, anthropic_port, web_port = free_port(), free_port(), free_port()
    procfile = (REPO_ROOT / "Procfile.dev").read_text()
    procfile = procfile.replace("--port 8788", f"--port {ably_port}")
    procfile = procfile.replace("--port 8789", f"--port {anthropic_port}")
    (tmp_path / "Procfile").write_text(procfile)
    ably_endpoint = f"http://127.0.0.1:{ably_port}"
    bin_dir = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "DATABASE_URL": database_url(),
        "ABLY_ENDPOINT": ably_endpoint,
        "ANTHROPIC_BASE_URL": f"http://127.0.0.1:{anthropic_port}",
        "WEB_PORT": str(web_port),
        "DEBUG": "true",
        "PYTHONUNBUFFERED": "1",
    }
    log_path = tmp_path / "honcho.log"
    with log_path.open("wb") as log:
        honcho = subprocess.Popen(
            [
                os.path.join(bin_dir, "honcho"),
                "-d",
                str(REPO_ROOT),
                "-f",
                str(tmp_path / "Procfile"),
            ]
            + ["start"],
            cwd=REPO_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    output = lambda: log_path.read_text(errors="replace")  # noqa: E731
    try:
        wait_for(
            lambda: " ready: " in output() or honcho.poll() is not None,
            90,
            "the agent starting",
            output,
        )
        assert honcho.poll() is None, output()
        # The stand-in paces the reply over several seconds: it is streaming at Ctrl-C.
        prompt_id = asyncio.run(
            prompt_until_streaming(
                ably_endpoint,
                realtime.client_id_for_user(alice),
                str(conversation.pk),
                f"Say exactly: {LONG_TEXT}",
            )
        )
        honcho.send_signal(signal.SIGINT)  # Ctrl-C
        honcho.wait(HONCHO_GRACE_SECONDS + 5)
    finally:
        if honcho.poll() is None:
            honcho.kill()
            honcho.wait(10)
    log = output()
    assert "SIGKILL" not in log, log
    assert "Traceback" not in log, log
    for name in ("ably", "anthropic", "agent"):
        assert f"{name}.1 stopped (rc=0)" in log, log
    # Final, with the text streamed so far: interrupted by the agent, or ended as an error when
    # the Anthropic stand-in, stopping at the same moment, dropped the stream first.
    stored = stored_reply(prompt_id)
    assert stored.status in (Message.Status.INTERRUPTED, Message.Status.ERROR)
    assert stored.text and LONG_TEXT.startswith(stored.text)


@pytest.mark.stand_in
def test_the_anthropic_stand_in_ends_open_streams_on_ctrl_c_without_a_traceback(tmp_path):
    import httpx

    port = free_port()
    log_path = tmp_path / "anthropic.log"
    with log_path.open("wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "emulators.anthropic", "--port", str(port)]
            + ["--tokens-per-second", "5"],
            cwd=REPO_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    output = lambda: log_path.read_text(errors="replace")  # noqa: E731
    try:
        wait_for(lambda: "Uvicorn running" in output(), 30, "the stand-in starting", output)
        body = {
            "model": "claude-sonnet-5-5",
            "max_tokens": 1000,
            "stream": True,
            "messages": [{"role": "user", "content": f"Say exactly: {LONG_TEXT}"}],
        }
        headers = {"x-api-key": "k", "anthropic-version": "2023-06-01"}
        url = f"http://127.0.0.1:{port}/v1/messages"
        with httpx.stream("POST", url, json=body, headers=headers, timeout=30) as response:
            lines = response.iter_lines()
            wait_for(lambda: "content_block_delta" in next(lines), 10, "a delta", output)
            server.send_signal(signal.SIGINT)
            # The stream ends (cut short, as a real server going away would) and the server exits.
            with pytest.raises(httpx.RemoteProtocolError):
                for _ in lines:
                    pass
        assert server.wait(HONCHO_GRACE_SECONDS) == 0
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(10)
    assert "Traceback" not in output(), output()
