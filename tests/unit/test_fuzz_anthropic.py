"""Hostile input for the Anthropic stand-in: every request is answered or refused like the API.

The request parser/validator (`parse_messages_request`) gets raw bytes, arbitrary JSON and
near-valid bodies with wrongly typed fields; whatever it accepts must then generate a whole reply
(streamed and non-streamed) without error. The ASGI app is fuzzed too, with an instant `sleep`,
so no injected pause ever makes the test wait.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from starlette.testclient import TestClient

from emulators.anthropic.core import (
    ApiError,
    Drop,
    Generation,
    Pause,
    SseEvent,
    check_auth,
    fault_for,
    parse_messages_request,
)
from emulators.anthropic.server import EmulatorState, create_app

# Examples per property; `FUZZ_EXAMPLES=5000 pytest tests/unit/test_fuzz_*.py` digs deeper.
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "80"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    database=None,
)

json_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=30),
    ),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=10,
)
texts = st.text(max_size=60) | st.sampled_from(
    [
        "Say exactly: hello",
        "[[fault:529]]",
        "[[fault:429=0.1]]",
        "[[fault:stall=abc]]",
        "[[fault:nope]]",
        "[[fault:drop]] tell me a story",
        "[[fault:midstream-error=api_error]]",
        "[[fault:refusal=1]]",
        "[[fault:stall=-1]]",
        "[[fault:hang=inf]]",
        "Give this conversation a short title",
    ]
)
content_blocks = st.one_of(
    st.fixed_dictionaries({"type": st.just("text"), "text": texts}),
    st.fixed_dictionaries(
        {"type": st.just("tool_result"), "tool_use_id": st.text(max_size=8)},
        optional={"content": json_values | texts, "is_error": json_values},
    ),
    st.fixed_dictionaries(
        {"type": st.just("tool_use")},
        optional={"id": json_values, "name": json_values, "input": json_values},
    ),
    st.fixed_dictionaries(
        {"type": st.sampled_from(["thinking", "image", "document", "redacted_thinking", "x"])},
        optional={"thinking": json_values, "source": json_values, "signature": json_values},
    ),
    json_values,
)
turns = st.fixed_dictionaries(
    {},
    optional={
        "role": st.sampled_from(["user", "assistant", "system", ""]) | json_values,
        "content": texts | st.lists(content_blocks, max_size=3) | json_values,
    },
)
tools = st.fixed_dictionaries(
    {},
    optional={
        "name": st.sampled_from(["get_weather", "x", "bad name!", ""]) | json_values,
        "type": st.sampled_from(["custom", "web_search_20250305"]) | json_values,
        "input_schema": st.just({"type": "object", "properties": {"city": {"type": "string"}}})
        | json_values,
        "description": json_values,
    },
)
request_bodies = st.fixed_dictionaries(
    {},
    optional={
        "model": st.sampled_from(["claude-sonnet-5-5", "claude-haiku-4-5", "nope"]) | json_values,
        "max_tokens": st.integers(-5, 3000) | json_values,
        "messages": st.lists(turns, max_size=4) | json_values,
        "system": texts | st.lists(content_blocks, max_size=2) | json_values,
        "stream": st.booleans() | json_values,
        "tools": st.lists(tools, max_size=3) | json_values,
        "tool_choice": st.fixed_dictionaries(
            {"type": st.sampled_from(["auto", "any", "tool", "none", "bad"])},
            optional={"name": json_values | st.just("get_weather")},
        )
        | json_values,
        "stop_sequences": st.lists(texts, max_size=3) | json_values,
        "thinking": st.fixed_dictionaries(
            {"type": st.sampled_from(["enabled", "disabled", "adaptive", "x"])},
            optional={"budget_tokens": st.integers(0, 5000) | json_values},
        )
        | json_values,
        "temperature": json_values,
        "metadata": json_values,
        "top_k": json_values,
        "bogus": json_values,
    },
)


VALID_BASE = {
    "model": "claude-sonnet-5-5",
    "max_tokens": 2000,
    "messages": [{"role": "user", "content": "Say exactly: hello"}],
}


def on_valid_base(fields: dict[str, Any]) -> dict[str, Any]:
    """A valid request with some fields replaced: reaches the validators behind the basics."""
    return {**VALID_BASE, **fields}


def parse(body: bytes, **kwargs: Any) -> Any:
    """The parser's contract: a request, or an ApiError with a 4xx status and a message."""
    try:
        return parse_messages_request(body, **kwargs)
    except ApiError as error:
        assert 400 <= error.status < 500, error
        assert error.message and error.error_type
        body_json = error.body("req_1")
        assert body_json["type"] == "error" and body_json["error"]["message"] == error.message
        return None


def run_generation(request: Any) -> None:
    """Whatever the parser accepted must generate a whole reply, streamed and non-streamed."""
    try:
        fault = fault_for(request)
    except ValueError as error:
        assert str(error)  # the adapter turns this into a 400 naming the bad marker
        return
    generation = Generation(request, message_id="msg_1", request_id="req_1", fault=fault)
    for step in generation.steps():
        assert isinstance(step, SseEvent | Pause | Drop), step
        if isinstance(step, SseEvent):
            step.encode()
    json.dumps(generation.message())


@FUZZ
@given(body=st.binary(max_size=300))
def test_any_bytes_are_a_request_or_a_clear_400(body):
    request = parse(body)
    if request is not None:
        run_generation(request)


@FUZZ
@given(value=json_values)
def test_any_json_value_is_a_request_or_a_clear_400(value):
    request = parse(json.dumps(value).encode())
    if request is not None:
        run_generation(request)


def test_a_tool_choice_name_that_is_not_a_string_is_a_clear_400():
    body = on_valid_base({"tool_choice": {"type": "tool", "name": ["get_weather"]}})
    assert parse(json.dumps(body).encode()) is None


@FUZZ
@given(body=request_bodies | request_bodies.map(on_valid_base))
def test_near_valid_requests_are_answered_or_refused_never_crash(body):
    encoded = json.dumps(body).encode()
    request = parse(encoded)
    if request is not None:
        run_generation(request)
    parse(encoded, for_count_tokens=True)


@FUZZ
@given(
    headers=st.dictionaries(
        st.sampled_from(["x-api-key", "authorization", "anthropic-version"]), st.text(max_size=40)
    ),
    required=st.none() | st.text(min_size=1, max_size=10),
)
def test_any_auth_headers_are_accepted_or_a_401(headers, required):
    try:
        check_auth(headers, required)
    except ApiError as error:
        assert error.status == 401 and error.message


# --- through the ASGI app ------------------------------------------------------------------------


async def _instant(_seconds: float) -> None:
    return None


@pytest.fixture(scope="module")
def api() -> Any:
    app = create_app(EmulatorState(), sleep=_instant)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    path=st.sampled_from(
        ["/v1/messages", "/v1/messages/count_tokens", "/v1/models", "/v1/models/x", "/nope"]
    ),
    method=st.sampled_from(["POST", "GET", "PUT"]),
    body=(request_bodies | request_bodies.map(on_valid_base)).map(lambda b: json.dumps(b).encode())
    | st.binary(max_size=200),
    key=st.sampled_from([{"x-api-key": "k"}, {}, {"authorization": "Bearer k"}]),
)
def test_the_http_api_answers_every_request_below_500(api, path, method, body, key):
    if b"[[fault:" in body:
        body = body.replace(b"[[fault:", b"[[nofault:")  # injected 5xx/drops are not bugs
    response = api.request(
        method,
        path,
        content=body,
        headers={**key, "anthropic-version": "2023-06-01", "content-type": "application/json"},
    )
    assert response.status_code < 500, (response.status_code, response.text[:300])
    assert response.headers.get("request-id")
    if response.status_code >= 400:
        error = response.json()
        assert error["type"] == "error" and error["error"]["message"]
