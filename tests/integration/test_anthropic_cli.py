"""`python -m emulators.anthropic` serves the real SDK and stops cleanly on SIGTERM."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time

import anthropic
import httpx
import pytest


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_serving(process: subprocess.Popen[str], url: str) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"stand-in exited early:\n{process.communicate()[1]}")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    pytest.fail("stand-in did not start listening")


def test_command_line_server_requires_its_key_and_exits_cleanly_on_sigterm():
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "emulators.anthropic", "--port", str(port), "--ttft-ms", "0",
         "--tokens-per-second", "0", "--require-key", "sekrit", "--log-level", "warning"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        base_url = f"http://127.0.0.1:{port}"
        wait_until_serving(process, f"{base_url}/v1/models")
        client = anthropic.Anthropic(base_url=base_url, api_key="sekrit", max_retries=0)
        with client.messages.stream(
            model="claude-sonnet-5-5",
            max_tokens=100,
            messages=[{"role": "user", "content": "Say exactly: hello from the stand-in"}],
        ) as stream:
            assert stream.get_final_text() == "hello from the stand-in"
        with pytest.raises(anthropic.AuthenticationError):
            anthropic.Anthropic(base_url=base_url, api_key="nope", max_retries=0).models.list()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
