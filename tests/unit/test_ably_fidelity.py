"""Stand-in behaviours that the official SDK test suites check, driven through the sans-I/O core.

Each test pins one detail where the stand-in used to differ from Ably (found by running the
ably-js and ably-python suites against it): channel modes, channel names and params, error
codes, connection keys on resume, operation authors, presence bursts and REST on-behalf publish.
"""

from __future__ import annotations

import base64

import pytest

from emulators.ably import annotations, stats, vcdiff
from emulators.ably.apps import parse_app_spec
from emulators.ably.core import check_channel_name, modes_from_param
from emulators.ably.errors import AblyError
from emulators.ably.protocol import Action, Flag, MessageAction, PresenceAction
from tests.unit.ably_harness import Harness

ABLY_DEFAULT_MODES = (
    Flag.PRESENCE
    | Flag.PUBLISH
    | Flag.SUBSCRIBE
    | Flag.PRESENCE_SUBSCRIBE
    | Flag.ANNOTATION_PUBLISH
)
MODE_BITS = (
    ABLY_DEFAULT_MODES | Flag.ANNOTATION_SUBSCRIBE | Flag.OBJECT_SUBSCRIBE | Flag.OBJECT_PUBLISH
)


@pytest.fixture
def h() -> Harness:
    return Harness()


# ---------------------------------------------------------------- channel names and params


@pytest.mark.parametrize("name", [":hell", "", "[invalid"])
def test_invalid_channel_names_fail_the_attach_with_40010(h: Harness, name: str) -> None:
    client = h.connect()
    error = client.attach(name)
    assert error["action"] == Action.ERROR
    assert error["channel"] == name
    assert error["error"]["code"] == 40010
    assert not client.closed  # a channel error, not a connection failure


def test_publishing_to_an_invalid_channel_name_is_nacked_40010(h: Harness) -> None:
    client = h.connect()
    client.publish(":hell", {"data": "x"})
    assert client.last(Action.NACK)["error"]["code"] == 40010
    with pytest.raises(AblyError) as rest_error:
        h.hub.publish(client.connection.credentials, ":hell", [{"data": "x"}])
    assert rest_error.value.code == 40010
    check_channel_name("[meta]channel.lifecycle")  # meta channels stay valid


def test_attach_without_requested_modes_gets_ablys_default_modes(h: Harness) -> None:
    attached = h.connect().attach("room")
    assert attached["flags"] & MODE_BITS == ABLY_DEFAULT_MODES


def test_params_modes_set_the_modes_and_take_precedence_over_flags(h: Harness) -> None:
    client = h.connect()
    attached = client.attach(
        "room",
        params={"modes": "presence,subscribe"},
        flags=Flag.PUBLISH | Flag.PRESENCE_SUBSCRIBE,
    )
    assert attached["flags"] & MODE_BITS == Flag.PRESENCE | Flag.SUBSCRIBE
    assert attached["params"] == {"modes": "presence,subscribe"}
    object_modes = client.attach("objects", params={"modes": "object_subscribe,object_publish"})
    assert object_modes["flags"] & MODE_BITS == Flag.OBJECT_SUBSCRIBE | Flag.OBJECT_PUBLISH


def test_an_unknown_mode_name_is_a_40000_channel_error(h: Harness) -> None:
    error = h.connect().attach("room", params={"modes": "subscribe,teleport"})
    assert error["action"] == Action.ERROR
    assert error["error"]["code"] == 40000
    assert modes_from_param("Subscribe, publish") == Flag.SUBSCRIBE | Flag.PUBLISH


def test_a_subscribe_only_attachment_cannot_publish_or_enter_presence(h: Harness) -> None:
    watcher, other = h.connect(), h.connect(clientId="other")
    watcher.attach("room", params={"modes": "subscribe"})
    watcher.publish("room", {"data": "x"})
    assert watcher.last(Action.NACK)["error"]["code"] == 40165
    watcher.presence("room", {"clientId": "w", "action": PresenceAction.ENTER})
    assert watcher.last(Action.NACK)["error"]["code"] == 40165
    assert not h.hub.presence_members("devapp", "room")
    # ... and, without PRESENCE_SUBSCRIBE, sees messages but not other members entering.
    other.attach("room")
    other.presence("room", {"action": PresenceAction.ENTER})
    other.publish("room", {"data": "hello"})
    assert [m["data"] for m in watcher.messages()] == ["hello"]
    assert not watcher.of(Action.PRESENCE)


def test_unknown_channel_params_are_dropped_not_echoed(h: Harness) -> None:
    attached = h.connect().attach("room", params={"rewind": "1", "foo": "bar"})
    assert attached["params"] == {"rewind": "1"}
    bare = h.connect().attach("other", params={"nonexistent": "foo"})
    assert "params" not in bare


def test_echo_false_channel_param_suppresses_own_messages_on_that_channel(h: Harness) -> None:
    client = h.connect()
    client.attach("quiet", params={"echo": "false"})
    client.attach("loud")
    client.publish("quiet", {"data": "unheard"})
    client.publish("loud", {"data": "heard"})
    assert [m["data"] for m in client.messages()] == ["heard"]


def test_an_attach_flagged_attach_resume_does_not_rewind(h: Harness) -> None:
    h.connect().publish("room", {"data": "old"})
    late = h.connect()
    late.attach("room", params={"rewind": "1"}, flags=Flag.ATTACH_RESUME)
    assert late.messages() == []
    fresh = h.connect()
    fresh.attach("room", params={"rewind": "1"})
    assert [m["data"] for m in fresh.messages()] == ["old"]


# ---------------------------------------------------------------- connecting and resuming


def test_realtime_connect_with_a_key_of_an_unknown_app_fails_40101(h: Harness) -> None:
    client = h.connect(key="this.is:wrong")
    error = client.last(Action.ERROR)["error"]
    assert (error["code"], error["statusCode"]) == (40101, 401)
    assert client.closed


def test_resume_rotates_the_connection_key_and_the_old_key_is_expired(h: Harness) -> None:
    first = h.connect()
    connection_id, old_key = first.connection.id, first.connection.key
    first.drop()
    resumed = h.connect(resume=old_key)
    connected = resumed.last(Action.CONNECTED)
    assert connected["connectionId"] == connection_id
    assert "error" not in connected
    new_key = connected["connectionKey"]
    assert new_key != old_key
    assert connected["connectionDetails"]["connectionKey"] == new_key
    # Whoever still holds the superseded key gets a new connection and 80008, no takeover.
    stale = h.connect(resume=old_key)
    assert stale.last(Action.CONNECTED)["error"]["code"] == 80008
    assert stale.connection.id != connection_id
    assert not resumed.closed


def test_resuming_a_key_never_issued_is_80018_but_a_discarded_one_is_80008(h: Harness) -> None:
    fake = h.connect(recover="_____!ablyjs_test_fake-key____")
    assert fake.last(Action.CONNECTED)["error"]["code"] == 80018
    closed = h.connect()
    key = closed.connection.key
    closed.send({"action": Action.CLOSE})
    assert h.connect(resume=key).last(Action.CONNECTED)["error"]["code"] == 80008


# ---------------------------------------------------------------- publishing and presence


def test_a_burst_of_presence_enters_is_not_rate_limited(h: Harness) -> None:
    client = h.connect()
    client.attach("room")
    for index in range(110):
        client.presence("room", {"clientId": f"member{index}", "action": PresenceAction.ENTER})
    assert not client.of(Action.NACK)
    assert len(h.hub.presence_members("devapp", "room", limit=1000)) == 110


def _create(client, channel: str = "ai:c") -> str:
    client.publish(channel, {"name": "response", "data": "v1"})
    return client.last(Action.ACK)["res"][0]["serials"][0]


def test_an_update_records_the_operation_client_id_as_the_version_author(h: Harness) -> None:
    client = h.connect()  # key auth: may act as anyone
    serial = _create(client)
    client.publish(
        "ai:c",
        {
            "serial": serial,
            "action": MessageAction.UPDATE,
            "data": "v2",
            "version": {"clientId": "rt-updater-client", "description": "fix typo"},
        },
    )
    stored = h.hub.get_message("devapp", "ai:c", serial)
    assert stored["version"]["clientId"] == "rt-updater-client"
    assert stored["version"]["description"] == "fix typo"


def test_an_identified_client_cannot_name_someone_else_as_the_operation_author(
    h: Harness,
) -> None:
    alice = h.connect(key=None, access_token=h.token(client_id="alice"))
    serial = _create(alice)
    alice.publish(
        "ai:c",
        {"serial": serial, "action": MessageAction.DELETE, "version": {"clientId": "mallory"}},
    )
    assert alice.last(Action.NACK)["error"]["code"] == 40012
    assert h.hub.get_message("devapp", "ai:c", serial)["data"] == "v1"


def test_rest_publish_with_a_connection_key_publishes_as_that_connection(h: Harness) -> None:
    realtime = h.connect()
    realtime.attach("room")
    credentials = realtime.connection.credentials
    h.hub.publish(
        credentials, "room", [{"data": "on behalf", "connectionKey": realtime.connection.key}]
    )
    h.pump()
    (message,) = realtime.messages()
    assert message["connectionId"] == realtime.connection.id
    assert "connectionKey" not in message
    with pytest.raises(AblyError) as invalid:
        h.hub.publish(credentials, "room", [{"data": "x", "connectionKey": "bogus!key"}])
    assert (invalid.value.code, invalid.value.status_code) == (40006, 400)


# ---------------------------------------------------------------- POST /apps fixtures


def test_seeded_presence_members_show_in_presence_history_as_enters(h: Harness) -> None:
    spec = parse_app_spec(
        {
            "keys": [{}],
            "channels": [
                {
                    "name": "persisted:presence_fixtures",
                    "presence": [
                        {"clientId": "client_bool", "data": "true"},
                        {"clientId": "client_string", "data": "This is a string clientData"},
                    ],
                }
            ],
        },
        app_id="fixtures",
        new_secret=lambda: "secret",
    )
    h.hub.create_app(spec)
    history, _ = h.hub.presence_history("fixtures", "persisted:presence_fixtures")
    assert [(m["action"], m["clientId"]) for m in history] == [
        (PresenceAction.ENTER, "client_string"),
        (PresenceAction.ENTER, "client_bool"),
    ]
    assert history[-1]["data"] == "true"  # newest first: the first fixture comes last


# ---------------------------------------------------------------- vcdiff deltas


@pytest.mark.parametrize(
    ("source", "target"),
    [
        (b"", b"hello"),
        (b"hello world", b"hello there world"),
        (b"abc", b"xyz"),
        (b'{"foo":"bar","count":1}', b'{"foo":"bar","count":2}'),
        (b"x" * 1000, b"x" * 1000 + b"y" * 300),
        (b"same", b"same"),
    ],
)
def test_vcdiff_deltas_decode_with_a_standard_decoder(source: bytes, target: bytes) -> None:
    decoder = pytest.importorskip("vcdiff_decoder")  # ably-python's optional decoder
    assert decoder.decode(source, vcdiff.encode(source, target)) == target


def test_delta_attachments_get_deltas_chained_on_the_previous_message_id(h: Harness) -> None:
    publisher, subscriber = h.connect(), h.connect()
    subscriber.attach("room", params={"delta": "vcdiff"})
    subscriber.frames.clear()
    for text in ("first message", "first message, longer"):
        publisher.publish("room", {"data": text})
    # The harness round-trips frames through JSON, so read the hub's own delivery state.
    attachment = h.hub.connections[subscriber.connection.id].attachments["room"]
    first, second = subscriber.messages()
    assert "extras" not in first
    assert second["extras"]["delta"] == {"from": first["id"], "format": "vcdiff"}
    assert second["encoding"] == "utf-8/vcdiff"
    assert attachment.delta_base == (second["id"], b"first message, longer")


# ---------------------------------------------------------------- derived (filtered) channels


def _derived(expression: str, name: str) -> str:
    return f"[filter={base64.b64encode(expression.encode()).decode()}]{name}"


def test_a_derived_channel_delivers_only_matching_messages_beside_the_plain_one(
    h: Harness,
) -> None:
    pytest.importorskip("jmespath")
    publisher, subscriber = h.connect(), h.connect()
    derived = _derived('name == `"filtered"` && headers.number == `26095`', "chan")
    subscriber.attach(derived)
    subscriber.attach("chan")  # the same connection, the unfiltered channel too
    for name, number in (("filtered", 26095), ("filtered", None), ("filtered", 12345), ("end", 0)):
        extras = {"headers": {"number": number}} if number is not None else None
        publisher.publish("chan", {"name": name, "data": f"{name}-{number}", "extras": extras})
    by_channel: dict[str, list[str]] = {}
    for frame in subscriber.of(Action.MESSAGE):
        by_channel.setdefault(frame["channel"], []).extend(m["data"] for m in frame["messages"])
    assert by_channel[derived] == ["filtered-26095"]
    assert by_channel["chan"] == ["filtered-26095", "filtered-None", "filtered-12345", "end-0"]
    # Detaching the plain channel keeps the derived one delivering.
    subscriber.send({"action": Action.DETACH, "channel": "chan"})
    subscriber.frames.clear()
    publisher.publish("chan", {"name": "filtered", "data": "again", "extras": extras_26095()})
    assert [(f["channel"], f["messages"][0]["data"]) for f in subscriber.of(Action.MESSAGE)] == [
        (derived, "again")
    ]


def extras_26095() -> dict:
    return {"headers": {"number": 26095}}


def test_an_invalid_filter_expression_fails_the_attach_with_40000(h: Harness) -> None:
    pytest.importorskip("jmespath")
    error = h.connect().attach(_derived("name ==", "chan"))
    assert error["action"] == Action.ERROR
    assert error["error"]["code"] == 40000


def test_force_nack_param_on_a_realtime_publish_is_nacked_40099(h: Harness) -> None:
    client = h.connect()
    client.attach("room")
    client.send(
        {
            "action": Action.MESSAGE,
            "channel": "room",
            "msgSerial": 0,
            "messages": [{"data": "x"}],
            "params": {"_forceNack": "true"},
        }
    )
    assert client.last(Action.NACK)["error"]["code"] == 40099
    assert client.messages() == []


def test_a_capability_upgrade_by_reauth_adds_the_publish_mode(h: Harness) -> None:
    client = h.connect(key=None, access_token=h.token(capability='{"room":["subscribe"]}'))
    client.attach("room")
    client.publish("room", {"data": "too early"})
    assert client.last(Action.NACK)["error"]["code"] == 40160
    upgraded = h.token(capability='{"room":["subscribe","publish"]}')
    client.send({"action": Action.AUTH, "auth": {"accessToken": upgraded}})
    client.publish("room", {"data": "now allowed"})
    assert client.last(Action.ACK, Action.NACK)["action"] == Action.ACK
    assert [m["data"] for m in client.messages()] == ["now allowed"]


# ---------------------------------------------------------------- stats


STATS_FIXTURES = [
    {
        "intervalId": "2025-02-03:15:03",
        "inbound": {"realtime": {"messages": {"count": 50, "data": 5000}}},
        "outbound": {"realtime": {"messages": {"count": 20, "data": 2000}}},
    },
    {
        "intervalId": "2025-02-03:15:05",
        "inbound": {"realtime": {"messages": {"count": 70, "data": 7000}}},
        "outbound": {"realtime": {"messages": {"count": 40, "data": 4000}}},
        "persisted": {"presence": {"count": 20, "data": 2000}},
        "connections": {"tls": {"peak": 20, "opened": 10}},
        "channels": {"peak": 50, "opened": 30},
        "apiRequests": {"succeeded": 50, "failed": 10},
        "tokenRequests": {"succeeded": 60, "failed": 20},
    },
]


def test_posted_stats_fixtures_come_back_flat_with_ablys_rollups(h: Harness) -> None:
    h.hub.record_stats("devapp", STATS_FIXTURES)
    (latest, *_), _ = h.hub.app_statistics("devapp", limit=1)
    assert latest["intervalId"] == "2025-02-03:15:05" and latest["unit"] == "minute"
    entries = latest["entries"]
    assert entries["messages.inbound.realtime.messages.count"] == 70
    assert entries["messages.inbound.realtime.all.data"] == 7000
    assert entries["messages.inbound.all.messages.count"] == 70
    assert entries["messages.all.messages.count"] == 70 + 40
    assert entries["messages.persisted.all.count"] == 20
    assert entries["connections.all.peak"] == 20
    assert entries["channels.opened"] == 30
    assert entries["apiRequests.other.succeeded"] == 50
    assert entries["apiRequests.tokenRequests.failed"] == 20


def test_stats_roll_minutes_up_into_hours_and_page_in_either_direction(h: Harness) -> None:
    h.hub.record_stats("devapp", STATS_FIXTURES)
    (hour,), _ = h.hub.app_statistics("devapp", unit="hour")
    assert hour["intervalId"] == "2025-02-03:15"
    assert hour["entries"]["messages.all.messages.data"] == 5000 + 2000 + 7000 + 4000
    first, cursor = h.hub.app_statistics("devapp", forwards=True, limit=1)
    assert [r["intervalId"] for r in first] == ["2025-02-03:15:03"]
    second, last = h.hub.app_statistics("devapp", forwards=True, limit=1, cursor=cursor)
    assert [r["intervalId"] for r in second] == ["2025-02-03:15:05"] and last is None
    start = stats.time_param("2025-02-03:15:04", "start")
    later, _ = h.hub.app_statistics("devapp", start=start)
    assert [r["intervalId"] for r in later] == ["2025-02-03:15:05"]


# ---------------------------------------------------------------- annotations


def test_annotations_reach_annotation_subscribers_and_update_the_summary(h: Harness) -> None:
    alice = h.connect(clientId="alice")
    watcher = h.connect()
    watcher.attach("ai:c", params={"modes": "subscribe,annotation_subscribe"})
    plain = h.connect()
    plain.attach("ai:c")  # default modes: no annotation_subscribe
    serial = _create(alice)
    for name in ("👍", "👍", "😕"):
        alice.send(
            {
                "action": Action.ANNOTATION,
                "channel": "ai:c",
                "msgSerial": 10 + len(alice.of(Action.ACK)),
                "annotations": [
                    {"type": "reaction:distinct.v1", "name": name, "messageSerial": serial}
                ],
            }
        )
    assert alice.last(Action.ACK)["res"][0]["serials"][0]
    assert len(watcher.of(Action.ANNOTATION)) == 3 and not plain.of(Action.ANNOTATION)
    summaries = [m for m in plain.messages() if m["action"] == MessageAction.SUMMARY]
    assert summaries[-1]["serial"] == serial
    assert summaries[-1]["annotations"]["summary"]["reaction:distinct.v1"] == {
        "👍": {"total": 1, "clientIds": ["alice"]},
        "😕": {"total": 1, "clientIds": ["alice"]},
    }
    page, cursor = h.hub.annotations_for("devapp", "ai:c", serial, limit=2)
    assert [a["name"] for a in page] == ["👍", "👍"] and cursor is not None
    rest_of_log, _ = h.hub.annotations_for("devapp", "ai:c", serial, cursor=cursor)
    assert [a["name"] for a in rest_of_log] == ["😕"]


@pytest.mark.parametrize(
    ("annotation_type", "expected"),
    [
        ("r:total.v1", {"total": 2}),
        ("r:flag.v1", {"total": 1, "clientIds": ["b"]}),
        (
            "r:unique.v1",
            {"y": {"total": 1, "clientIds": ["a"]}, "x": {"total": 1, "clientIds": ["b"]}},
        ),
        (
            "r:multiple.v1",
            {
                "x": {"total": 3, "clientIds": {"b": 1}, "totalUnidentified": 2},
                "y": {"total": 1, "clientIds": {"a": 1}, "totalUnidentified": 0},
            },
        ),
    ],
)
def test_annotation_summary_aggregations(annotation_type: str, expected: dict) -> None:
    log = [
        {"type": annotation_type, "name": "x", "clientId": "a"},
        {"type": annotation_type, "name": "x", "clientId": "b"},
        {"type": annotation_type, "name": "y", "clientId": "a", "action": 0},
        {"type": annotation_type, "name": "x", "count": 2},
        {"type": annotation_type, "name": "x", "clientId": "a", "action": 1},
    ]
    if annotation_type == "r:flag.v1":
        log = [a for a in log if a.get("clientId")]
        log[-2] = {**log[-2], "action": 1}  # a un-flags
    if annotation_type == "r:total.v1":
        log = log[:3] + [{"type": annotation_type, "action": 1}]
    assert annotations.summarise(log)[annotation_type] == expected
