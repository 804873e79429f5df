"""The Starlette adapter in-process (no sockets): pacing via the injected sleep, control routes."""

from __future__ import annotations

import itertools
import json

import httpx
import pytest

from emulators.anthropic.core import Pacing, count_tokens
from emulators.anthropic.server import (
    REQUEST_LOG_BODY_BYTES,
    REQUEST_LOG_LIMIT,
    EmulatorState,
    RecordedRequest,
    create_app,
)

BODY = {
    "model": "claude-sonnet-5-5",
    "max_tokens": 1024,
    "stream": True,
    "messages": [{"role": "user", "content": "Say exactly: one two three four five six seven"}],
}
KEY = {"x-api-key": "k"}


@pytest.fixture
def slept() -> list[float]:
    return []


@pytest.fixture
def state() -> EmulatorState:
    return EmulatorState(pacing=Pacing(ttft=0.4, tokens_per_second=20))


@pytest.fixture
async def client(state, slept):
    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)

    counter = itertools.count(1)
    app = create_app(
        state, sleep=fake_sleep, clock=lambda: 0.0, new_id=lambda p: f"{p}_{next(counter)}"
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://stand-in") as async_client:
        yield async_client


def sse_events(text: str) -> list[tuple[str, dict]]:
    parsed = []
    for chunk in text.strip().split("\n\n"):
        name_line, data_line = chunk.split("\n")
        parsed.append(
            (name_line.removeprefix("event: "), json.loads(data_line.removeprefix("data: ")))
        )
    return parsed


async def test_the_adapter_sleeps_for_first_token_and_per_token(client, slept):
    response = await client.post("/v1/messages", json=BODY, headers=KEY)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["request-id"] == "req_1"
    events = sse_events(response.text)
    assert events[0][1]["message"]["id"] == "msg_2"
    assert events[-1][0] == "message_stop"
    output_tokens = events[-2][1]["usage"]["output_tokens"]
    assert output_tokens == count_tokens("one two three four five six seven")
    assert slept[0] == 0.4
    assert sum(slept[1:]) == pytest.approx(output_tokens / 20)


async def test_pacing_can_be_changed_through_the_control_route(client, slept, state):
    changed = await client.post("/_emulator/pacing", json={"ttft_ms": 0, "tokens_per_second": 0})
    assert changed.status_code == 200
    assert state.pacing == Pacing()
    await client.post("/v1/messages", json=BODY, headers=KEY)
    assert slept == []
    bad = await client.post("/_emulator/pacing", json={"ttft_ms": -5})
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"


async def test_requests_are_listed_and_reset(client):
    await client.post("/v1/messages", json={**BODY, "stream": False}, headers=KEY)
    await client.post("/v1/messages", json=BODY)
    listed = (await client.get("/_emulator/requests")).json()["requests"]
    assert [(r["status"], r["outcome"]) for r in listed] == [(200, "completed"), (401, "error")]
    await client.post("/_emulator/reset")
    assert (await client.get("/_emulator/requests")).json() == {"requests": []}


async def test_queued_faults_apply_in_order_then_run_out(client):
    await client.post("/_emulator/faults", json={"fault": "529", "count": 1})
    await client.post("/_emulator/faults", json={"fault": "500"})
    statuses = [
        (await client.post("/v1/messages", json=BODY, headers=KEY)).status_code for _ in range(3)
    ]
    assert statuses == [529, 500, 200]


async def test_whole_message_with_midstream_error_fault_becomes_an_error_status(client):
    content = "hi [[fault:midstream-error]]"
    body = {**BODY, "stream": False, "messages": [{"role": "user", "content": content}]}
    response = await client.post("/v1/messages", json=body, headers=KEY)
    assert response.status_code == 529
    assert response.json()["error"]["type"] == "overloaded_error"


async def test_malformed_fault_marker_is_a_clear_bad_request(client):
    body = {**BODY, "messages": [{"role": "user", "content": "hi [[fault:stall=never]]"}]}
    response = await client.post("/v1/messages", json=body, headers=KEY)
    assert response.status_code == 400
    assert "needs a number of seconds" in response.json()["error"]["message"]


def test_the_request_log_keeps_only_the_newest_requests() -> None:
    # A stand-in left running (`make run`, a soak) must not grow with every request it served.
    state = EmulatorState()
    for index in range(REQUEST_LOG_LIMIT + 5):
        state.record(RecordedRequest(f"req_{index}", "POST", "/v1/messages", {}, None))
    assert len(state.requests) == REQUEST_LOG_LIMIT
    assert state.requests[0].request_id == "req_5"
    assert state.requests[-1].request_id == f"req_{REQUEST_LOG_LIMIT + 4}"


def test_the_request_log_drops_old_bodies_first_when_attachments_make_them_big():
    state = EmulatorState()
    size = REQUEST_LOG_BODY_BYTES // 2 + 1  # two such bodies are over the budget
    for index in range(3):
        state.record(
            RecordedRequest(
                request_id=f"req_{index}",
                method="POST",
                path="/v1/messages",
                headers={},
                body={"index": index},
                body_bytes=size,
            )
        )
    bodies = [record.body for record in state.requests]
    assert bodies[-1] == {"index": 2}  # the newest keeps its body
    assert all(isinstance(body, str) and "dropped" in body for body in bodies[:-1])
