"""The Ably stand-in's protocol core, driven directly (no sockets, fake clock)."""

from __future__ import annotations

import pytest

from emulators.ably.protocol import Action, Flag, MessageAction, PresenceAction
from tests.unit.ably_harness import DEFAULT_KEY, Harness

MODES_ALL = Flag.PRESENCE | Flag.PUBLISH | Flag.SUBSCRIBE | Flag.PRESENCE_SUBSCRIBE


@pytest.fixture
def h() -> Harness:
    return Harness()


# ---------------------------------------------------------------- connecting


def test_connected_carries_full_connection_details(h: Harness) -> None:
    client = h.connect(clientId="alice")
    connected = client.last(Action.CONNECTED)
    details = connected["connectionDetails"]
    assert connected["connectionId"] == client.connection.id
    assert details["clientId"] == "alice"
    assert details["connectionKey"] == client.connection.key
    assert details["maxIdleInterval"] == 15_000
    assert details["connectionStateTtl"] == 120_000
    assert details["maxMessageSize"] == 65_536


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ({"key": "devapp.devkey:wrong"}, 40101),
        ({"key": "nope.devkey:dev-secret-change-me"}, 40101),
        ({"key": None}, 40101),
        ({"key": None, "access_token": "garbage"}, 40101),
    ],
)
def test_bad_credentials_get_an_error_and_a_closed_transport(
    h: Harness, query: dict, code: int
) -> None:
    client = h.connect(**query)
    error = client.last(Action.ERROR)
    assert error["error"]["code"] == code
    assert client.closed
    assert not h.hub.connections


def test_token_and_jwt_auth_identify_the_client(h: Harness) -> None:
    by_token = h.connect(key=None, access_token=h.token(client_id="bob"))
    assert by_token.last(Action.CONNECTED)["connectionDetails"]["clientId"] == "bob"
    by_jwt = h.connect(key=None, accessToken=h.jwt(client_id="carol"))
    assert by_jwt.last(Action.CONNECTED)["connectionDetails"]["clientId"] == "carol"


def test_expired_token_is_refused_with_40142(h: Harness) -> None:
    token = h.token(ttl_ms=1000)
    h.now += 2000
    client = h.connect(key=None, access_token=token)
    assert client.last(Action.ERROR)["error"]["code"] == 40142


def test_token_bound_client_id_cannot_be_overridden_at_connect(h: Harness) -> None:
    client = h.connect(key=None, access_token=h.token(client_id="bob"), clientId="mallory")
    assert client.last(Action.ERROR)["error"]["code"] == 40102


def test_heartbeats_are_echoed_and_sent_periodically(h: Harness) -> None:
    client = h.connect()
    client.send({"action": Action.HEARTBEAT, "id": "ping-1"})
    assert client.last(Action.HEARTBEAT) == {"action": 0, "id": "ping-1"}
    client.take()
    h.advance(15_000)
    assert client.of(Action.HEARTBEAT) == [{"action": 0}]


def test_token_expiry_while_connected_disconnects_with_40142(h: Harness) -> None:
    client = h.connect(key=None, access_token=h.token(ttl_ms=60_000))
    h.advance(60_000)
    disconnected = client.last(Action.DISCONNECTED)
    assert disconnected["error"]["code"] == 40142
    assert client.closed


def test_close_replies_closed_and_forgets_the_connection(h: Harness) -> None:
    client = h.connect()
    client.send({"action": Action.CLOSE})
    assert client.last(Action.CLOSED)
    assert client.closed
    assert not h.hub.connections


@pytest.mark.parametrize("frame", [{"action": 99}, {"action": Action.MESSAGE}])
def test_bad_frames_get_an_error_and_other_clients_carry_on(h: Harness, frame: dict) -> None:
    bad, good = h.connect(), h.connect()
    good.attach("room")
    bad.send(frame)
    assert bad.last(Action.ERROR)["error"]["code"] == 40000
    assert bad.closed
    good.publish("room", {"name": "still", "data": "working"})
    assert good.messages()[-1]["data"] == "working"


# ---------------------------------------------------------------- channels and messages


def test_attach_grants_modes_from_capability(h: Harness) -> None:
    client = h.connect(key=None, access_token=h.token(capability='{"room":["subscribe"]}'))
    attached = client.attach("room")
    assert attached["action"] == Action.ATTACHED
    assert attached["flags"] & (Flag.SUBSCRIBE | Flag.PRESENCE_SUBSCRIBE)
    assert not attached["flags"] & Flag.PUBLISH
    denied = client.attach("other")
    assert denied["action"] == Action.ERROR
    assert denied["channel"] == "other"
    assert denied["error"]["code"] == 40160


def test_publish_is_acked_with_serials_and_delivered_with_ids(h: Harness) -> None:
    publisher = h.connect(clientId="alice")
    subscriber = h.connect()
    publisher.attach("room")
    subscriber.attach("room")
    msg_serial = publisher.publish(
        "room",
        {"name": "a", "data": "1", "extras": {"headers": {"k": "v"}}, "size": 9},
        {"name": "b", "data": "2"},
    )
    ack = publisher.last(Action.ACK)
    assert ack["msgSerial"] == msg_serial and ack["count"] == 1
    serials = ack["res"][0]["serials"]
    assert len(serials) == 2 and serials[0] < serials[1]
    frame = subscriber.last(Action.MESSAGE)
    connection_id = publisher.connection.id
    assert frame["id"] == f"{connection_id}:{msg_serial}"
    assert frame["connectionId"] == connection_id
    assert frame["channelSerial"]
    first, second = frame["messages"]
    assert first["id"] == f"{connection_id}:{msg_serial}:0"
    assert second["id"] == f"{connection_id}:{msg_serial}:1"
    assert first["serial"] == serials[0]
    assert first["clientId"] == "alice"
    assert first["extras"] == {"headers": {"k": "v"}}
    assert first["action"] == MessageAction.CREATE
    assert "size" not in first
    assert first["timestamp"] == h.now


def test_echo_false_suppresses_own_messages(h: Harness) -> None:
    client = h.connect(echo="false")
    client.attach("room")
    client.publish("room", {"data": "x"})
    assert client.of(Action.ACK)
    assert not client.of(Action.MESSAGE)


def test_publish_without_capability_is_nacked_40160(h: Harness) -> None:
    client = h.connect(key=None, access_token=h.token(capability='{"room":["subscribe"]}'))
    client.attach("room")
    client.publish("room", {"data": "x"})
    assert client.last(Action.NACK)["error"]["code"] == 40160


def test_identified_client_cannot_publish_as_someone_else(h: Harness) -> None:
    client = h.connect(key=None, access_token=h.token(client_id="bob"))
    client.publish("room", {"data": "x", "clientId": "alice"})
    nack = client.last(Action.NACK)
    assert nack["error"]["code"] == 40012
    assert nack["error"]["statusCode"] == 400


def test_oversize_message_is_nacked_40009(h: Harness) -> None:
    client = h.connect()
    client.publish("room", {"data": "x" * 65_537})
    assert client.last(Action.NACK)["error"]["code"] == 40009


def test_inbound_rate_limit_nacks_beyond_50_per_second(h: Harness) -> None:
    client = h.connect()
    for _ in range(51):
        client.publish("room", {"data": "x"})
    assert len(client.of(Action.ACK)) == 50
    assert client.last(Action.NACK)["error"]["code"] == 42911
    h.advance(1000)
    client.publish("room", {"data": "after a second"})
    assert client.frames[-1]["action"] == Action.ACK


def test_channel_limit_per_connection(h: Harness) -> None:
    h = Harness(max_channels_per_connection=2)
    client = h.connect()
    client.attach("a")
    client.attach("b")
    refused = client.attach("c")
    assert refused["action"] == Action.ERROR
    assert refused["error"]["code"] == 90021


def test_resent_msg_serial_is_acked_again_but_not_republished(h: Harness) -> None:
    client = h.connect()
    client.attach("room")
    client.publish("room", {"data": "once"}, msg_serial=0)
    client.publish("room", {"data": "once"}, msg_serial=0)
    assert len(client.of(Action.ACK)) == 2
    assert [m["data"] for m in client.messages()] == ["once"]


def test_rewind_count_and_time_forms(h: Harness) -> None:
    publisher = h.connect()
    for index in range(5):
        publisher.publish("room", {"data": str(index)})
        h.advance(10_000)
    late = h.connect()
    attached = late.attach("room", params={"rewind": "2"})
    assert attached["flags"] & Flag.HAS_BACKLOG
    assert [m["data"] for m in late.messages()] == ["3", "4"]
    later = h.connect()
    later.attach("[?rewind=25s]room")
    assert [m["data"] for m in later.messages()] == ["3", "4"]
    bad = h.connect().attach("room", params={"rewind": "soon"})
    assert bad["action"] == Action.ERROR and bad["error"]["code"] == 40003


def test_rewind_is_capped_at_100_messages(h: Harness) -> None:
    h = Harness(max_inbound_rate=0)
    publisher = h.connect()
    for index in range(120):
        publisher.publish("room", {"data": str(index)})
    late = h.connect()
    late.attach("room", params={"rewind": "500"})
    assert len(late.messages()) == 100
    assert late.messages()[-1]["data"] == "119"


def test_meta_channel_lifecycle_reports_open_and_close(h: Harness) -> None:
    # `*` never covers [meta] channels (as in Ably); channel-metadata on them does.
    watcher = h.connect(
        key=None, access_token=h.token(capability='{"[meta]*":["channel-metadata"]}')
    )
    assert watcher.attach("[meta]channel.lifecycle")["action"] == Action.ATTACHED
    user = h.connect()
    user.attach("ai:new")
    user.send({"action": Action.DETACH, "channel": "ai:new"})
    events = [(m["name"], m["data"]) for m in watcher.messages()]
    assert [name for name, _ in events] == ["channel.opened", "channel.closed"]
    assert '"connections":1' in events[0][1]


def test_meta_channel_needs_capability(h: Harness) -> None:
    client = h.connect(key=None, access_token=h.token(capability='{"*":["*"]}'))
    refused = client.attach("[meta]channel.lifecycle")
    assert refused["action"] == Action.ERROR
    assert refused["error"]["code"] == 40160


# ---------------------------------------------------------------- mutable messages


def _create(client, channel: str = "ai:c") -> str:
    client.publish(channel, {"name": "response", "data": ""})
    return client.last(Action.ACK)["res"][0]["serials"][0]


def test_appends_reach_subscribers_as_fragments_and_history_as_one_update() -> None:
    h = Harness(append_rollup_window_ms=0)
    agent, viewer = h.connect(clientId="agent"), h.connect()
    agent.attach("ai:c")
    viewer.attach("ai:c")
    serial = _create(agent)
    for piece in ("Hel", "lo"):
        agent.publish("ai:c", {"serial": serial, "action": MessageAction.APPEND, "data": piece})
    version_serial = agent.last(Action.ACK)["res"][0]["serials"][0]
    live = viewer.messages()
    assert [(m["action"], m["data"]) for m in live] == [(0, ""), (5, "Hel"), (5, "lo")]
    assert all(m["serial"] == serial for m in live)
    history, _ = h.hub.history("devapp", "ai:c")
    assert len(history) == 1
    assert history[0]["action"] == MessageAction.UPDATE
    assert history[0]["data"] == "Hello"
    assert history[0]["version"]["serial"] == version_serial
    late = h.connect()
    late.attach("ai:c", params={"rewind": "1"})
    assert [(m["action"], m["data"]) for m in late.messages()] == [(1, "Hello")]


def test_append_rollup_merges_fragments_within_the_window(h: Harness) -> None:
    agent, viewer = h.connect(), h.connect()
    viewer.attach("ai:c")
    serial = _create(agent)
    for piece in ("a", "b", "c"):
        agent.publish("ai:c", {"serial": serial, "action": MessageAction.APPEND, "data": piece})
    # Leading edge: the first append goes out at once, the rest of the burst is held.
    assert [(m["action"], m["data"]) for m in viewer.messages()] == [(0, ""), (5, "a")]
    h.advance(40)
    assert [(m["action"], m["data"]) for m in viewer.messages()] == [(0, ""), (5, "a"), (5, "bc")]
    h.advance(40)
    agent.publish("ai:c", {"serial": serial, "action": MessageAction.APPEND, "data": "d"})
    assert viewer.messages()[-1]["data"] == "d"


def test_append_rollup_window_comes_from_transport_params(h: Harness) -> None:
    agent, viewer = h.connect(appendRollupWindow="0"), h.connect()
    viewer.attach("ai:c")
    serial = _create(agent)
    agent.publish("ai:c", {"serial": serial, "action": MessageAction.APPEND, "data": "now"})
    assert viewer.messages()[-1]["data"] == "now"


def test_first_append_seen_by_a_late_attachment_is_the_full_update() -> None:
    h = Harness(append_rollup_window_ms=0)
    agent = h.connect()
    serial = _create(agent)
    agent.publish("ai:c", {"serial": serial, "action": MessageAction.APPEND, "data": "one "})
    late = h.connect()
    late.attach("ai:c")
    agent.publish("ai:c", {"serial": serial, "action": MessageAction.APPEND, "data": "two "})
    agent.publish("ai:c", {"serial": serial, "action": MessageAction.APPEND, "data": "three"})
    assert [(m["action"], m["data"]) for m in late.messages()] == [
        (MessageAction.UPDATE, "one two "),
        (MessageAction.APPEND, "three"),
    ]


def test_appends_count_the_concatenated_size() -> None:
    h = Harness(append_rollup_window_ms=0, max_message_size=100)
    agent = h.connect()
    serial = _create(agent)
    agent.publish("ai:c", {"serial": serial, "action": MessageAction.APPEND, "data": "x" * 60})
    agent.publish("ai:c", {"serial": serial, "action": MessageAction.APPEND, "data": "x" * 60})
    assert agent.last(Action.NACK)["error"]["code"] == 40009
    assert h.hub.get_message("devapp", "ai:c", serial)["data"] == "x" * 60


def test_update_and_delete_keep_original_identity_and_record_versions() -> None:
    h = Harness()
    author, viewer = h.connect(clientId="alice"), h.connect()
    viewer.attach("ai:c")
    serial = _create(author)
    created = viewer.messages()[0]
    h.now += 5
    author.publish(
        "ai:c",
        {
            "serial": serial,
            "action": MessageAction.UPDATE,
            "data": "edited",
            "version": {"description": "typo"},
        },
    )
    update = viewer.messages()[-1]
    assert update["action"] == MessageAction.UPDATE
    assert update["data"] == "edited"
    assert update["timestamp"] == created["timestamp"]
    assert update["clientId"] == "alice"
    assert update["version"]["description"] == "typo"
    assert update["version"]["clientId"] == "alice"
    author.publish("ai:c", {"serial": serial, "action": MessageAction.DELETE})
    assert viewer.messages()[-1]["action"] == MessageAction.DELETE
    versions = h.hub.message_versions("devapp", "ai:c", serial)
    assert [v["action"] for v in versions] == [0, 1, 2]


def test_mutations_need_a_mutable_namespace(h: Harness) -> None:
    client = h.connect()
    serial = _create(client, "plain")
    client.publish("plain", {"serial": serial, "action": MessageAction.APPEND, "data": "x"})
    assert client.last(Action.NACK)["error"]["code"] == 93002


def test_update_own_capability_only_covers_own_messages(h: Harness) -> None:
    alice = h.connect(clientId="alice")
    serial = _create(alice)
    capability = '{"ai:*":["publish","subscribe","message-update-own"]}'
    bob = h.connect(key=None, access_token=h.token(client_id="bob", capability=capability))
    bob.publish("ai:c", {"serial": serial, "action": MessageAction.UPDATE, "data": "hijack"})
    assert bob.last(Action.NACK)["error"]["code"] == 40160
    own = _create(bob)
    bob.publish("ai:c", {"serial": own, "action": MessageAction.UPDATE, "data": "mine"})
    assert bob.frames[-1]["action"] == Action.ACK
    bob.publish("ai:c", {"serial": own, "action": MessageAction.DELETE})
    assert bob.last(Action.NACK)["error"]["code"] == 40160


# ---------------------------------------------------------------- presence


def test_presence_enter_sync_and_leave(h: Harness) -> None:
    alice = h.connect(clientId="alice")
    alice.attach("room")
    alice.presence("room", {"action": PresenceAction.ENTER, "data": "hi"})
    assert alice.last(Action.ACK)
    bob = h.connect(clientId="bob")
    attached = bob.attach("room")
    assert attached["flags"] & Flag.HAS_PRESENCE
    sync = bob.last(Action.SYNC)
    assert sync["channelSerial"].endswith(":")
    assert [(m["clientId"], m["action"], m["data"]) for m in sync["presence"]] == [
        ("alice", PresenceAction.PRESENT, "hi")
    ]
    alice.presence("room", {"action": PresenceAction.LEAVE})
    leave = bob.last(Action.PRESENCE)["presence"][0]
    assert leave["action"] == PresenceAction.LEAVE and leave["clientId"] == "alice"
    assert not h.hub.find_channel("devapp", "room").members


def test_presence_needs_a_client_id_and_capability(h: Harness) -> None:
    anonymous = h.connect()
    anonymous.attach("room")
    anonymous.presence("room", {"action": PresenceAction.ENTER})
    assert anonymous.last(Action.NACK)["error"]["code"] == 91000
    limited = h.connect(
        key=None, access_token=h.token(client_id="x", capability='{"room":["subscribe"]}')
    )
    limited.attach("room")
    limited.presence("room", {"action": PresenceAction.ENTER})
    assert limited.last(Action.NACK)["error"]["code"] == 40160
    bob = h.connect(key=None, access_token=h.token(client_id="bob"))
    bob.attach("room")
    bob.presence("room", {"action": PresenceAction.ENTER, "clientId": "alice"})
    assert bob.last(Action.NACK)["error"]["code"] == 40012


def test_abrupt_disconnect_leaves_presence_after_the_delay(h: Harness) -> None:
    alice, bob = h.connect(clientId="alice"), h.connect(clientId="bob")
    alice.attach("room")
    bob.attach("room")
    alice.presence("room", {"action": PresenceAction.ENTER})
    alice.drop()
    h.advance(14_000)
    assert h.hub.find_channel("devapp", "room").members
    h.advance(1_000)
    leave = bob.last(Action.PRESENCE)["presence"][0]
    assert leave["action"] == PresenceAction.LEAVE
    assert leave["clientId"] == "alice"
    assert not leave["id"].startswith(alice.connection.id if alice.connection else "id")


def test_close_leaves_presence_immediately(h: Harness) -> None:
    alice, bob = h.connect(clientId="alice"), h.connect(clientId="bob")
    alice.attach("room")
    bob.attach("room")
    alice.presence("room", {"action": PresenceAction.ENTER})
    alice.send({"action": Action.CLOSE})
    assert bob.last(Action.PRESENCE)["presence"][0]["action"] == PresenceAction.LEAVE


# ---------------------------------------------------------------- resume


def test_resume_replays_missed_messages_in_order_with_resumed_flag(h: Harness) -> None:
    viewer, publisher = h.connect(), h.connect()
    attached = viewer.attach("room")
    old_id, key = viewer.connection.id, viewer.connection.key
    viewer.drop()
    for index in range(3):
        publisher.publish("room", {"data": str(index)})
    back = h.connect(resume=key)
    connected = back.last(Action.CONNECTED)
    assert connected["connectionId"] == old_id
    assert "error" not in connected
    reattached = back.attach("room", channelSerial=attached["channelSerial"])
    assert reattached["flags"] & Flag.RESUMED
    assert reattached["flags"] & Flag.HAS_BACKLOG
    assert [m["data"] for m in back.messages()] == ["0", "1", "2"]


def test_resume_keeps_presence_if_back_within_the_delay(h: Harness) -> None:
    alice, bob = h.connect(clientId="alice"), h.connect(clientId="bob")
    alice.attach("room")
    bob.attach("room")
    alice.presence("room", {"action": PresenceAction.ENTER})
    key = alice.connection.key
    alice.drop()
    h.advance(5_000)
    h.connect(resume=key, clientId="alice")
    h.advance(20_000)
    assert not [p for f in bob.of(Action.PRESENCE) for p in f["presence"] if p["action"] == 3]


def test_resume_after_presence_expired_re_enters_the_member(h: Harness) -> None:
    alice, bob = h.connect(clientId="alice"), h.connect(clientId="bob")
    attached = alice.attach("room")
    bob.attach("room")
    alice.presence("room", {"action": PresenceAction.ENTER, "data": "d"})
    key = alice.connection.key
    alice.drop()
    h.advance(16_000)
    back = h.connect(resume=key, clientId="alice")
    back.attach("room", channelSerial=attached["channelSerial"])
    actions = [p["action"] for f in bob.of(Action.PRESENCE) for p in f["presence"]]
    assert actions[-2:] == [PresenceAction.LEAVE, PresenceAction.ENTER]
    assert [m["clientId"] for m in h.hub.presence_members("devapp", "room")] == ["alice"]


@pytest.mark.parametrize(("key", "code"), [("id9!unknown", 80018), ("garbage", 80018)])
def test_failed_resume_gives_a_new_connection_with_an_error(
    h: Harness, key: str, code: int
) -> None:
    client = h.connect(resume=key)
    connected = client.last(Action.CONNECTED)
    assert connected["error"]["code"] == code
    assert connected["connectionId"]


def test_resume_after_connection_state_ttl_fails(h: Harness) -> None:
    client = h.connect()
    key = client.connection.key
    client.drop()
    h.advance(120_001)
    again = h.connect(resume=key)
    assert again.last(Action.CONNECTED)["error"]["code"] == 80008


# ---------------------------------------------------------------- re-auth, history


def test_reauth_with_narrower_capability_fails_channels_no_longer_allowed(h: Harness) -> None:
    client = h.connect(key=None, access_token=h.token(client_id="alice"))
    client.attach("ai:one")
    client.attach("ai:two")
    narrower = h.token(client_id="alice", capability='{"ai:one":["*"]}')
    client.take()
    client.send({"action": Action.AUTH, "auth": {"accessToken": narrower}})
    assert client.of(Action.CONNECTED)
    errors = client.of(Action.ERROR)
    assert [(e["channel"], e["error"]["code"]) for e in errors] == [("ai:two", 40160)]
    assert not client.closed


def test_reauth_as_another_client_is_refused(h: Harness) -> None:
    client = h.connect(key=None, access_token=h.token(client_id="alice"))
    client.send({"action": Action.AUTH, "auth": {"accessToken": h.token(client_id="eve")}})
    assert client.last(Action.ERROR)["error"]["code"] == 40102
    assert client.closed


def test_jwt_user_claims_are_stamped_on_extras(h: Harness) -> None:
    token = h.jwt(client_id="alice", **{"ably.channel.ai:*": "pro"})
    client = h.connect(key=None, access_token=token)
    client.attach("ai:c")
    client.publish("ai:c", {"data": "x"})
    assert client.messages()[-1]["extras"]["userClaim"] == "pro"


def test_history_pagination_and_until_attach(h: Harness) -> None:
    client = h.connect()
    for index in range(5):
        client.publish("ai:c", {"data": str(index)})
    attached = client.attach("ai:c")
    client.publish("ai:c", {"data": "after attach"})
    page, cursor = h.hub.history("devapp", "ai:c", limit=2)
    assert [m["data"] for m in page] == ["after attach", "4"]
    page, cursor = h.hub.history("devapp", "ai:c", limit=2, cursor=cursor)
    assert [m["data"] for m in page] == ["3", "2"]
    forwards, _ = h.hub.history("devapp", "ai:c", limit=2, forwards=True)
    assert [m["data"] for m in forwards] == ["0", "1"]
    until, _ = h.hub.history("devapp", "ai:c", until_serial=attached["channelSerial"])
    assert [m["data"] for m in until] == ["4", "3", "2", "1", "0"]


def test_ephemeral_channels_forget_history_after_two_minutes(h: Harness) -> None:
    client = h.connect()
    client.publish("plain", {"data": "old"})
    client.publish("ai:kept", {"data": "old"})
    h.advance(121_000)
    assert h.hub.history("devapp", "plain")[0] == []
    assert [m["data"] for m in h.hub.history("devapp", "ai:kept")[0]] == ["old"]


def test_default_key_is_the_dev_key(h: Harness) -> None:
    assert h.hub.keyring.get(DEFAULT_KEY.split(":")[0]) is not None


def test_publishes_between_resume_and_reattach_arrive_once_in_order(h: Harness) -> None:
    viewer, publisher = h.connect(), h.connect()
    attached = viewer.attach("room")
    key = viewer.connection.key
    viewer.drop()
    publisher.publish("room", {"data": "while away"})
    back = h.connect(resume=key)
    publisher.publish("room", {"data": "before re-attach"})
    assert not back.of(Action.MESSAGE)
    back.attach("room", channelSerial=attached["channelSerial"])
    publisher.publish("room", {"data": "live"})
    assert [m["data"] for m in back.messages()] == ["while away", "before re-attach", "live"]


def test_attach_from_an_expired_position_reports_lost_continuity(h: Harness) -> None:
    client = h.connect()
    attached = client.attach("room")
    client.drop()
    publisher = h.connect()
    publisher.publish("room", {"data": "old"})
    h.advance(130_000)
    publisher.publish("room", {"data": "new"})
    fresh = h.connect()
    reattached = fresh.attach("room", channelSerial=attached["channelSerial"])
    assert not reattached["flags"] & Flag.RESUMED
    assert reattached["error"]["code"] == 90003


def test_attach_resume_flag_from_python_is_not_a_mode(h: Harness) -> None:
    client = h.connect()
    attached = client.attach("room", flags=Flag.ATTACH_RESUME)
    assert attached["flags"] & MODES_ALL == MODES_ALL
    assert not attached["flags"] & Flag.ATTACH_RESUME


def test_requested_modes_narrow_the_grant(h: Harness) -> None:
    client = h.connect()
    attached = client.attach("room", flags=Flag.SUBSCRIBE)
    assert attached["flags"] & MODES_ALL == Flag.SUBSCRIBE
    publisher = h.connect(clientId="p")
    publisher.attach("room")
    publisher.presence("room", {"action": PresenceAction.ENTER})
    assert not client.of(Action.PRESENCE)  # no PRESENCE_SUBSCRIBE mode granted


def test_server_asks_for_reauth_30s_before_expiry(h: Harness) -> None:
    client = h.connect(key=None, access_token=h.token(client_id="a", ttl_ms=90_000))
    h.advance(59_000)
    assert not client.of(Action.AUTH)
    h.advance(1_000)
    assert client.last(Action.AUTH) == {"action": Action.AUTH}
    client.send({"action": Action.AUTH, "auth": {"accessToken": h.token(client_id="a")}})
    h.advance(31_000)
    assert not client.of(Action.DISCONNECTED)  # renewed in place


def test_tokens_nearly_dead_on_arrival_just_expire(h: Harness) -> None:
    client = h.connect(key=None, access_token=h.token(ttl_ms=2_000))
    h.advance(2_000)
    assert not client.of(Action.AUTH)
    assert client.last(Action.DISCONNECTED)["error"]["code"] == 40142


def test_client_supplied_ids_make_publishing_idempotent(h: Harness) -> None:
    client = h.connect()
    client.attach("room")
    client.publish("room", {"id": "abc:0", "data": "once"})
    first = client.last(Action.ACK)["res"][0]["serials"]
    client.publish("room", {"id": "abc:0", "data": "once"})
    assert client.last(Action.ACK)["res"][0]["serials"] == first
    assert [m["data"] for m in client.messages()] == ["once"]
    assert client.messages()[0]["id"] == "abc:0"


def test_a_fatal_error_discards_the_connection_and_its_presence(h: Harness) -> None:
    bad, watcher = h.connect(clientId="bad"), h.connect(clientId="w")
    bad.attach("room")
    watcher.attach("room")
    bad.presence("room", {"action": PresenceAction.ENTER})
    bad.send({"action": 77})
    assert bad.last(Action.ERROR)["error"]["code"] == 40000
    assert watcher.last(Action.PRESENCE)["presence"][0]["action"] == PresenceAction.LEAVE
    assert len(h.hub.connections) == 1


def test_inband_occupancy_reports_changes(h: Harness) -> None:
    watcher = h.connect()
    watcher.attach("room", params={"occupancy": "metrics"})
    first = watcher.messages()[-1]
    assert first["name"] == "[meta]occupancy"
    assert first["action"] == MessageAction.META
    assert first["data"]["metrics"]["connections"] == 1
    member = h.connect(clientId="m")
    member.attach("room")
    member.presence("room", {"action": PresenceAction.ENTER})
    latest = watcher.messages()[-1]["data"]["metrics"]
    assert latest["connections"] == 2 and latest["presenceMembers"] == 1
    denied = h.connect(key=None, access_token=h.token(capability='{"room":["subscribe"]}'))
    assert denied.attach("room", params={"occupancy": "metrics"})["error"]["code"] == 40160


def test_message_size_limit_covers_a_whole_publish(h: Harness) -> None:
    client = h.connect()
    client.publish("room", {"data": "x" * 40_000}, {"data": "y" * 40_000})
    assert client.last(Action.NACK)["error"]["code"] == 40009


def test_entering_again_while_present_is_an_update(h: Harness) -> None:
    alice, bob = h.connect(clientId="alice"), h.connect(clientId="bob")
    alice.attach("room")
    bob.attach("room")
    alice.presence("room", {"action": PresenceAction.ENTER, "data": "1"})
    alice.presence("room", {"action": PresenceAction.ENTER, "data": "2"})
    actions = [p["action"] for f in bob.of(Action.PRESENCE) for p in f["presence"]]
    assert actions == [PresenceAction.ENTER, PresenceAction.UPDATE]


def test_lifecycle_history_and_wildcard_identity(h: Harness) -> None:
    user = h.connect()
    user.attach("ai:x")
    events, _ = h.hub.history("devapp", "[meta]channel.lifecycle")
    assert [m["name"] for m in events] == ["channel.opened"]
    wildcard = h.connect(key=None, access_token=h.token(client_id="*"))
    assert wildcard.last(Action.CONNECTED)["connectionDetails"]["clientId"] == "*"
    chosen = h.connect(key=None, access_token=h.token(client_id="*"), clientId="chosen")
    assert chosen.last(Action.CONNECTED)["connectionDetails"]["clientId"] == "chosen"


def test_cli_flags_configure_keys_namespaces_and_limits() -> None:
    from emulators.ably.__main__ import build_parser, config_from_args

    args = build_parser().parse_args(
        [
            "--key",
            "app.k1:s1",
            "--capability",
            'app.k1={"[*]*":["*"]}',
            "--namespace",
            "chat:mutable",
            "--max-inbound-rate",
            "0",
            "--presence-leave-delay",
            "100",
        ]
    )
    config = config_from_args(args)
    h = Harness()
    h.hub = type(h.hub)(config, clock=lambda: h.now)
    assert config.namespace_rule("chat:1").mutable_messages
    assert not config.namespace_rule("ai:1").mutable_messages
    assert config.max_inbound_rate == 0 and config.presence_leave_delay_ms == 100
    watcher = h.connect(key="app.k1:s1")
    assert watcher.attach("[meta]channel.lifecycle")["action"] == Action.ATTACHED
