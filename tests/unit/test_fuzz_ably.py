"""Hostile input for the Ably stand-in: never a crash, always a protocol error the client can read.

Drives the sans-I/O hub the way the adapter does (decode, then `receive`), with frames from
hypothesis: raw bytes and text, arbitrary JSON/msgpack values, and near-valid protocol messages
whose fields have the wrong types. The REST surface is fuzzed through the real ASGI app.
"""

from __future__ import annotations

import json
import os
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st
from starlette.testclient import TestClient

from emulators.ably.config import DEFAULT_KEY
from emulators.ably.errors import AblyError
from emulators.ably.protocol import Action, decode_frame, encode_frame
from emulators.ably.server import AblyApp
from tests.unit.ably_harness import FakeClient, Harness

# Examples per property; `FUZZ_EXAMPLES=5000 pytest tests/unit/test_fuzz_*.py` digs deeper.
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "60"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    database=None,
)

# JSON-like values, including the types msgpack adds (bytes) and deep nesting.
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.binary(max_size=40),
)
values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text()),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)
actions = st.sampled_from([int(a) for a in Action]) | st.integers(-5, 40)
channel_names = st.one_of(
    st.sampled_from(["ai:fuzz", "fuzz", "[meta]channel.lifecycle", "[?rewind=1]ai:fuzz", ""]),
    st.text(max_size=30),
    values,
)
message_fields = st.fixed_dictionaries(
    {},
    optional={
        "name": values,
        "data": values,
        "encoding": st.sampled_from(["json", "base64", "utf-8/base64", "cipher+aes"]) | values,
        "clientId": values,
        "id": values,
        "extras": values,
        "action": st.integers(-2, 8) | values,
        "serial": values,
        "version": values,
        "connectionKey": values,
    },
)
presence_fields = st.fixed_dictionaries(
    {},
    optional={
        "action": st.integers(-2, 6) | values,
        "clientId": values,
        "data": values,
        "id": values,
        "encoding": values,
    },
)
protocol_messages = st.fixed_dictionaries(
    {"action": actions},
    optional={
        "channel": channel_names,
        "msgSerial": st.integers(-3, 2**63) | values,
        "messages": st.lists(message_fields, max_size=3) | values,
        "presence": st.lists(presence_fields, max_size=3) | values,
        "flags": st.integers(-1, 2**32) | values,
        "params": st.dictionaries(st.text(max_size=10), st.text(max_size=10)) | values,
        "channelSerial": values,
        "auth": st.fixed_dictionaries({}, optional={"accessToken": values}) | values,
        "error": values,
        "id": values,
    },
)


# Frames the hub once raised Python exceptions on (found by the fuzzer below), kept as
# regression cases: each must now be refused with a readable protocol error.
FORMERLY_CRASHING: list[tuple[str, dict[str, Any]]] = [
    (
        "message-channel-not-text",
        {"action": Action.MESSAGE, "channel": -127, "msgSerial": 0, "messages": [{"name": "x"}]},
    ),
    (
        "presence-channel-not-text",
        {"action": Action.PRESENCE, "channel": 5, "msgSerial": 0, "presence": [{"action": 2}]},
    ),
    ("attach-flags-not-int", {"action": Action.ATTACH, "channel": "ai:other", "flags": {"a": 1}}),
    (
        "attach-channel-serial-not-text",
        {"action": Action.ATTACH, "channel": "ai:fuzz", "channelSerial": 1.5},
    ),
    ("detach-channel-unhashable", {"action": Action.DETACH, "channel": []}),
    ("sync-channel-unhashable", {"action": Action.SYNC, "channel": {}}),
    (
        "message-action-unhashable",
        {
            "action": Action.MESSAGE,
            "channel": "ai:fuzz",
            "msgSerial": 0,
            "messages": [{"action": [], "name": "x"}],
        },
    ),
    ("auth-not-an-object", {"action": Action.AUTH, "auth": True}),
    ("auth-token-not-text", {"action": Action.AUTH, "auth": {"accessToken": {"a": 1}}}),
]


def fresh_client() -> tuple[Harness, FakeClient]:
    harness = Harness()
    client = harness.connect(clientId="fuzzer")
    assert client.last(Action.CONNECTED)
    return harness, client


def assert_readable_error(frame: dict[str, Any]) -> None:
    """An ERROR/NACK must say what was wrong, as an Ably error a client can show."""
    error = frame.get("error")
    assert isinstance(error, dict), frame
    assert isinstance(error.get("code"), int) and isinstance(error.get("message"), str), frame
    # 5xxxx would mean the stand-in itself broke rather than refusing bad input.
    assert not 50000 <= error["code"] < 60000, frame


def feed(harness: Harness, client: FakeClient, raw: str | bytes, wire_format: str) -> None:
    """What the adapter does with one inbound WebSocket frame."""
    try:
        frame = decode_frame(raw, wire_format)
    except AblyError as error:
        harness.hub.receive_invalid(client.transport_id, error)
    else:
        harness.hub.receive(client.transport_id, frame)
    harness.pump()


def check_outputs(client: FakeClient) -> None:
    for frame in client.frames:
        if frame["action"] in (Action.ERROR, Action.NACK):
            assert_readable_error(frame)


# --- the frame parser --------------------------------------------------------------------------


@FUZZ
@given(raw=st.binary(max_size=200) | st.text(max_size=200))
# Found by this property: a msgpack map whose key is a map (unhashable in Python).
@example(raw=b"\x81\x80\x00")
def test_any_bytes_decode_to_a_frame_or_a_40000(raw):
    try:
        frame = decode_frame(raw, "json" if isinstance(raw, str) else "msgpack")
    except AblyError as error:
        assert error.code == 40000 and error.message
    else:
        assert isinstance(frame, dict) and isinstance(frame["action"], int)


@FUZZ
@given(value=values)
def test_any_msgpack_value_decodes_to_a_frame_or_a_40000(value):
    try:
        decode_frame(msgpack.packb(value, use_bin_type=True), "msgpack")
    except AblyError as error:
        assert error.code == 40000


# --- the hub behind the parser -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("bug", "message"), FORMERLY_CRASHING, ids=[b for b, _ in FORMERLY_CRASHING]
)
def test_frames_that_once_crashed_the_hub_get_a_protocol_error(bug, message):
    harness, client = fresh_client()
    client.attach("ai:fuzz")
    client.take()
    harness.hub.receive(client.transport_id, message)
    harness.pump()
    errors = client.of(Action.ERROR, Action.NACK)
    assert errors, f"{bug}: no ERROR or NACK for a malformed frame"
    for frame in errors:
        assert_readable_error(frame)


@FUZZ
@given(message=protocol_messages)
def test_near_valid_protocol_messages_never_crash_the_hub(message):
    harness, client = fresh_client()
    client.attach("ai:fuzz")
    client.take()
    harness.hub.receive(client.transport_id, message)  # must not raise
    harness.pump()
    check_outputs(client)
    # Every frame the hub produced can be put on the wire in both formats.
    for frame in harness.hub.take_outputs().values():
        for item in frame.frames:
            encode_frame(item, "json")
            encode_frame(item, "msgpack")


@FUZZ
@given(
    message=protocol_messages,
    wire_format=st.sampled_from(["json", "msgpack"]),
)
def test_fuzzed_frames_over_either_wire_format_end_in_a_protocol_error_or_success(
    message, wire_format
):
    harness, client = fresh_client()
    client.attach("ai:fuzz")
    client.take()
    try:
        raw = (
            json.dumps(message, default=repr)
            if wire_format == "json"
            else msgpack.packb(message, use_bin_type=True)
        )
    except (ValueError, TypeError, OverflowError):
        return  # not representable in this format: cannot arrive as such
    feed(harness, client, raw, wire_format)
    check_outputs(client)
    # Whatever happened, a well-behaved frame afterwards is either served or the transport was
    # closed with a reason; the hub never ends up wedged.
    if not client.closed:
        serial = client.publish(
            "ai:fuzz", {"name": "after", "data": "still here"}, msg_serial=10**6
        )
        assert any(
            f["action"] in (Action.ACK, Action.NACK) and f.get("msgSerial") == serial
            for f in client.frames
        )


@FUZZ
@given(
    query=st.dictionaries(
        st.sampled_from(
            [
                "key",
                "accessToken",
                "access_token",
                "clientId",
                "resume",
                "recover",
                "format",
                "v",
                "echo",
                "remainPresentFor",
                "appendRollupWindow",
                "heartbeats",
            ]
        ),
        st.text(max_size=60),
        max_size=6,
    ),
    headers=st.dictionaries(
        st.sampled_from(["authorization", "x-ably-version"]), st.text(max_size=60)
    ),
)
def test_any_connection_query_connects_or_is_refused_with_a_reason(query, headers):
    harness = Harness()
    transport_id = harness.hub.open_transport(query, headers)
    client = FakeClient(harness, transport_id)
    harness.clients[transport_id] = client
    harness.pump()
    assert client.frames, "the hub said nothing to a new transport"
    first = client.frames[0]
    assert first["action"] in (Action.CONNECTED, Action.ERROR)
    if first["action"] == Action.ERROR:
        assert_readable_error(first)
        assert client.closed


def test_a_frame_for_an_unknown_transport_is_ignored():
    harness = Harness()
    harness.hub.receive(12345, {"action": Action.MESSAGE, "channel": "x", "messages": []})
    assert harness.hub.take_outputs() == {}


# --- REST, through the real ASGI app -----------------------------------------------------------


@pytest.fixture(scope="module")
def rest() -> Any:
    app = AblyApp()
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


KEY_NAME, KEY_SECRET = DEFAULT_KEY.split(":")
paths = st.one_of(
    st.sampled_from(
        [
            "/channels",
            "/channels/ai%3Afuzz",
            "/channels/ai%3Afuzz/messages",
            "/channels/ai%3Afuzz/messages/01-0@emu:000",
            "/channels/ai%3Afuzz/messages/x/versions",
            "/channels/ai%3Afuzz/presence",
            "/channels/ai%3Afuzz/presence/history",
            f"/keys/{KEY_NAME}/requestToken",
            "/keys/nokey/requestToken",
            "/apps",
            "/apps/devapp",
            "/time",
            "/stats",
        ]
    ),
    st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=40).map(
        lambda s: "/" + s.replace("?", "").replace("#", "")
    ),
)
query_params = st.dictionaries(
    st.sampled_from(
        [
            "limit",
            "direction",
            "start",
            "end",
            "cursor",
            "fromSerial",
            "prefix",
            "by",
            "envelope",
            "clientId",
            "connectionId",
            "key",
            "access_token",
        ]
    ),
    st.text(max_size=20),
    max_size=4,
)
auth_headers = st.sampled_from(
    [
        {},
        {"Authorization": "Basic ZGV2YXBwLmRldmtleTpkZXYtc2VjcmV0LWNoYW5nZS1tZQ=="},
        {"Authorization": "Basic !!!notbase64"},
        {"Authorization": "Bearer garbage"},
        {"Authorization": "Bearer "},
    ]
)
bodies = st.one_of(
    st.none(),
    st.binary(max_size=100),
    json_values.map(lambda v: json.dumps(v).encode()),
    values.map(lambda v: msgpack.packb(v, use_bin_type=True)),
)


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    method=st.sampled_from(["GET", "POST", "PATCH", "PUT", "DELETE", "OPTIONS"]),
    path=paths,
    params=query_params,
    headers=auth_headers,
    body=bodies,
    content_type=st.sampled_from(
        [
            "application/json",
            "application/x-msgpack",
            "application/x-www-form-urlencoded",
            "text/plain",
        ]
    ),
)
def test_any_rest_request_gets_an_answer_below_500(
    rest, method, path, params, headers, body, content_type
):
    response = rest.request(
        method,
        path,
        params=params,
        headers={**headers, "Content-Type": content_type},
        content=body,
    )
    assert response.status_code < 500, (response.status_code, response.text[:300])
    if response.status_code >= 400 and "envelope" not in params:
        error = (
            response.json()["error"] if "json" in response.headers.get("content-type", "") else None
        )
        if error is not None:
            assert isinstance(error["code"], int) and error["message"]
            assert response.headers["X-Ably-ErrorCode"] == str(error["code"])
