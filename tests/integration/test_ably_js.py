"""ably-js 2.x (Node, node_modules/ably), unmodified, against the Ably stand-in."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from ably.types.presence import PresenceAction

from emulators.ably.testing import EmulatorServer, NodeSession, ably_realtime, eventually, run_node

JS = Path(__file__).parent / "js"


@pytest.mark.parametrize("wire_format", ["msgpack", "json"])
def test_messaging_presence_and_mutable_messages(
    ably_server: EmulatorServer, wire_format: str
) -> None:
    result = run_node(JS / "ably_messaging.mjs", ably_server, {"ABLY_FORMAT": wire_format})
    saw = result["bobSaw"]
    prompt = saw[0]
    assert prompt["data"] == {"text": "hi"}
    assert prompt["headers"] == {"promptId": "p1"}
    assert prompt["clientId"] == "alice"
    assert prompt["id"] == f"{result['aliceConnectionId']}:0:0"
    assert prompt["serial"] == result["publishedSerial"]
    assert "not echoed" not in result["quietSaw"]
    stream = [m for m in saw if m["name"] == "response"]
    assert [(m["action"], m["data"]) for m in stream] == [
        ("message.create", ""),
        ("message.append", "Hello"),
        ("message.append", ", world"),
    ]
    assert stream[-1]["versionSerial"] == result["appendVersion"]
    edits = [(m["action"], m["data"]) for m in saw if m["name"] == "prompt"][1:]
    assert edits == [
        ("message.create", "typo"),
        ("message.update", "fixed"),
        ("message.delete", "fixed"),
    ]
    assert result["members"] == [["alice", {"status": "idle"}]]
    assert result["afterLeave"] == []
    assert result["whole"] == {
        "action": "message.update",
        "data": "Hello, world",
        "version": result["appendVersion"],
    }
    # Bob attached before anything was published, so nothing precedes his attach point.
    assert result["untilAttach"] == []
    assert ["message.update", "Hello, world"] in result["history"]
    assert result["page1"] == ["fixed", "Hello, world"]
    assert result["page2"] == ["not echoed", {"text": "hi"}]
    assert result["rewound"] == [["message.update", "Hello, world"], ["message.delete", "fixed"]]


def test_auth_flows_capabilities_and_reauth(ably_server: EmulatorServer) -> None:
    result = run_node(JS / "ably_auth.mjs", ably_server)
    assert result["tokenRequestClientId"] == "tok"
    assert result["authUrlClientId"] == "url-user"
    assert result["jwtClientId"] == "jwt-user"
    assert result["userClaim"] == "pro"
    assert result["badKeyCode"] == 40101
    assert result["attachDenied"] == 40160
    assert result["publishDenied"] == 40160
    assert result["afterReauth"] == {
        "one": "attached",
        "two": "failed",
        "twoCode": 40160,
        "connection": "connected",
    }
    assert result["mismatchCode"] == 40102


async def test_resume_replays_missed_messages(ably_server: EmulatorServer) -> None:
    async with NodeSession(JS / "ably_resume.mjs", ably_server) as node:
        ready = await node.read()

        def drop_and_publish() -> None:
            # Atomically on the stand-in's loop: the client cannot reconnect in between, so the
            # messages can only reach it through the resume replay.
            assert ably_server.app.drop_transport(ready["connectionId"])
            credentials = ably_server.hub.connections[ready["connectionId"]].credentials
            for index in range(3):
                ably_server.hub.publish(credentials, "ai:resume", [{"data": str(index)}])

        ably_server.call(drop_and_publish)
        await node.send({"go": True})
        result = await node.result()
    assert result["received"] == ["0", "1", "2"]
    assert result["sameConnection"] is True
    initial, *after_resume = result["attachedResumed"]
    assert initial is False  # a first attach has nothing to resume
    assert after_resume and all(after_resume)


async def test_token_expiry_is_renewed_without_losing_the_connection(
    ably_server: EmulatorServer,
) -> None:
    async with NodeSession(JS / "ably_token_expiry.mjs", ably_server) as node:
        await node.read()
        ably_server.advance_clock(61_000)
        await node.send({"go": True})
        result = await node.result()
    assert result["callbacks"] >= 2
    assert result["sameConnection"] is True
    assert ["disconnected", 40142] in result["states"]


async def test_vanished_device_leaves_presence_after_the_delay(
    make_ably_server: Callable[..., EmulatorServer],
) -> None:
    server = make_ably_server(presence_leave_delay_ms=200)
    watcher = ably_realtime(server, client_id="watcher")
    try:
        presence = watcher.channels.get("room").presence
        events: list[Any] = []
        await presence.subscribe(lambda event: events.append(event))
        async with NodeSession(JS / "ably_presence_member.mjs", server) as node:
            await node.read()
            await eventually(
                lambda: any(e.action == PresenceAction.ENTER for e in events), "the phone's enter"
            )
            assert [m.client_id for m in await presence.get()] == ["phone"]
            node.process.kill()  # no CLOSE: the socket just dies
            await node.process.wait()
        await eventually(
            lambda: any(e.action == PresenceAction.LEAVE for e in events), "the phone's leave"
        )
        assert await presence.get() == []
    finally:
        await watcher.close()


@pytest.mark.parametrize("wire_format", ["msgpack", "json"])
def test_rest_mutations_batches_status_and_inband_occupancy(
    ably_server: EmulatorServer, wire_format: str
) -> None:
    result = run_node(JS / "ably_rest_features.mjs", ably_server, {"ABLY_FORMAT": wire_format})
    assert result["latest"] == {
        "action": "message.update",
        "data": "Hello!",
        "version": result["updateVersion"],
    }
    assert result["appendVersion"] < result["updateVersion"]
    # Appends are not versions; the create and the update are.
    assert result["versions"] == [["message.create", "Hel"], ["message.update", "Hello!"]]
    assert result["batch"] == {"success": 2, "failure": 0, "channels": ["ai:b1", "ai:b2"]}
    assert result["b1"] == ["batched"]
    assert result["occupancy"]["connections"] == 1
    assert result["occupancy"]["presenceMembers"] == 1
    presence = result["batchPresence"]
    assert presence["successCount"] == 2
    assert [r["channel"] for r in presence["results"]] == ["ai:occupied", "ai:empty"]
    assert [m["clientId"] for m in presence["results"][0]["presence"]] == ["member"]
    assert result["status"] == {"active": True, "members": 1}
    assert result["presenceHistory"] == [["enter", "member"]]


def test_recovering_an_unknown_connection_starts_a_new_one_with_80018(
    ably_server: EmulatorServer,
) -> None:
    result = run_node(JS / "ably_recover.mjs", ably_server)
    assert result["code"] == 80018  # a key the server never issued (80008 is for expired ones)
    assert result["id"] != "deadbeef"
    assert result["channel"] == "attached"


async def test_a_silent_server_trips_the_idle_timeout_and_nothing_is_lost(
    make_ably_server: Callable[..., EmulatorServer],
) -> None:
    server = make_ably_server(max_idle_interval_ms=300)
    async with NodeSession(JS / "ably_idle.mjs", server) as node:
        ready = await node.read()
        assert server.freeze_transport(ready["connectionId"])
        server.publish("ai:idle", "n", "during the silence")
        server.publish("ai:idle", "n", "still silent")
        await node.send({"go": True})
        result = await node.result()
    assert result["received"] == ["during the silence", "still silent"]
    assert "disconnected" in result["states"]
    assert result["sameConnection"] is True
