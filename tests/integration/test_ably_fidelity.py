"""Details the official SDK suites check, through the real ably-python SDK and raw HTTP.

Each test pins a behaviour where the stand-in used to differ from Ably: HTTP keep-alive, vcdiff
deltas, REST batch publish, channel status, the `_forceNack` test hook, unknown keys on
requestToken and publishing on behalf of a realtime connection.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from ably import AblyException
from ably.types.channeloptions import ChannelOptions
from ably.types.message import Message

from emulators.ably.testing import (
    DEFAULT_KEY,
    EmulatorServer,
    ably_realtime,
    ably_rest,
    connected,
    eventually,
    run_node,
)

JS = Path(__file__).parent / "js"


def _http_get(sock: socket.socket, host: str, path: str) -> bytes:
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    response = b""
    while b"\r\n\r\n" not in response:
        chunk = sock.recv(4096)
        if not chunk:
            return response
        response += chunk
    head, _, body = response.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        body += sock.recv(4096)
    return head


def test_an_idle_keep_alive_connection_outlives_sdk_renewal_intervals(
    ably_server: EmulatorServer,
) -> None:
    # ably-js renews a 5 s token on the HTTP connection it used ~5 s earlier: the server must
    # not have closed that pooled socket in the meantime (uvicorn's default closes it at 5 s).
    with socket.create_connection((ably_server.host, ably_server.port), timeout=10) as sock:
        assert _http_get(sock, ably_server.host, "/time").startswith(b"HTTP/1.1 200")
        time.sleep(6)
        assert _http_get(sock, ably_server.host, "/time").startswith(b"HTTP/1.1 200")


class CountingDecoder:
    """The SDK's own vcdiff decoder, counting how many deltas it was handed."""

    def __init__(self) -> None:
        from ably import AblyVCDiffDecoder

        self.inner = AblyVCDiffDecoder()
        self.calls = 0

    def decode(self, delta: bytes, base: bytes) -> bytes:
        self.calls += 1
        return self.inner.decode(delta, base)


async def test_delta_vcdiff_channels_receive_deltas_that_decode_to_the_messages(
    ably_server: EmulatorServer,
) -> None:
    pytest.importorskip("vcdiff_decoder")  # ably-python's optional decoder (ably[vcdiff])
    decoder = CountingDecoder()
    subscriber = await connected(ably_realtime(ably_server, vcdiff_decoder=decoder))
    publisher = await connected(ably_realtime(ably_server))
    sent: list[object] = [
        {"foo": "bar", "count": 1, "status": "active"},
        {"foo": "bar", "count": 2, "status": "active"},
        "a plain string",
        b"\x00\x01binary\xff",
        {"foo": "bar", "count": 3, "status": "inactive"},
    ]
    try:
        channel = subscriber.channels.get("deltas", ChannelOptions(params={"delta": "vcdiff"}))
        received: list[Message] = []
        await channel.subscribe(lambda message: received.append(message))
        assert channel.params == {"delta": "vcdiff"}
        for index, data in enumerate(sent):
            await publisher.channels.get("deltas").publish(str(index), data)
        await eventually(lambda: len(received) == len(sent), "every message, decoded")
        assert [m.data for m in received] == sent
        assert decoder.calls == len(sent) - 1  # all but the first arrived as deltas
    finally:
        await subscriber.close()
        await publisher.close()


async def test_rest_publish_returns_a_message_id_and_batch_publish_per_channel_results(
    ably_server: EmulatorServer,
) -> None:
    rest = ably_rest(ably_server)
    try:
        flat = await rest.request(
            "POST",
            "/messages",
            "2",
            body={"channels": ["batch-a", "batch-b"], "messages": {"data": "foo"}},
        )
        assert flat.status_code == 201
        assert [item["channel"] for item in flat.items] == ["batch-a", "batch-b"]
        assert all(item["messageId"] for item in flat.items)
        history = await rest.channels.get("batch-a").history()
        assert history.items[0].id == f"{flat.items[0]['messageId']}:0"
        specs = await rest.request(
            "POST", "/messages", "2", body=[{"channels": "batch-c", "messages": [{"data": "one"}]}]
        )
        assert specs.items[0]["successCount"] == 1
        assert specs.items[0]["results"][0]["messageId"]
    finally:
        await rest.close()


async def test_channel_status_request_reports_the_channel_active(
    ably_server: EmulatorServer,
) -> None:
    rest = ably_rest(ably_server)
    try:
        status = await rest.channels.get("never-used").status()
        assert status.status.is_active is True
        assert status.status.occupancy.metrics.connections == 0
    finally:
        await rest.close()


async def test_force_nack_publish_param_is_refused_with_40099(ably_server: EmulatorServer) -> None:
    rest = ably_rest(ably_server)
    try:
        with pytest.raises(AblyException) as refused:
            await rest.channels.get("nacked").publish(
                messages=[Message(name="n", data="x")], params={"_forceNack": "true"}
            )
        assert (refused.value.status_code, refused.value.code) == (400, 40099)
        assert (await rest.channels.get("nacked").history()).items == []
    finally:
        await rest.close()


async def test_request_token_for_an_unknown_key_is_404_for_any_method(
    ably_server: EmulatorServer,
) -> None:
    rest = ably_rest(ably_server)
    try:
        response = await rest.request("GET", "/keys/ablyjs.test/requestToken", "2")
        assert (response.status_code, int(response.error_code)) == (404, 40400)
    finally:
        await rest.close()


async def test_rest_publish_on_behalf_of_a_realtime_connection(
    ably_server: EmulatorServer,
) -> None:
    realtime = await connected(ably_realtime(ably_server))
    rest = ably_rest(ably_server)
    try:
        channel = realtime.channels.get("on-behalf")
        received: list[Message] = []
        await channel.subscribe(lambda message: received.append(message))
        connection_key = realtime.connection.connection_manager.connection_details.connection_key
        await rest.channels.get("on-behalf").publish(
            Message(name="n", data="x", connection_key=connection_key)
        )
        await eventually(lambda: received, "the message published on the connection's behalf")
        assert received[0].connection_id == realtime.connection.connection_manager.connection_id
        with pytest.raises(AblyException) as invalid:
            await rest.channels.get("on-behalf").publish(
                Message(name="n", data="y", connection_key="bogus!key")
            )
        assert (invalid.value.status_code, invalid.value.code) == (400, 40006)
        await asyncio.sleep(0)
        assert json.dumps([m.data for m in received]) == '["x"]'
    finally:
        await realtime.close()
        await rest.close()


def test_ably_js_over_comet_modes_names_and_recovery(ably_server: EmulatorServer) -> None:
    result = run_node(JS / "ably_fidelity.mjs", ably_server)
    assert result["cometTransport"] == "comet"
    assert sorted(result["heardByComet"]) == ["from comet", "from socket"]
    assert sorted(result["heardBySocket"]) == ["from comet", "from socket"]
    assert result["membersSeenBySocket"] == ["comet"]
    assert result["cometClosed"] == "closed"
    assert result["modes"] == ["subscribe"]
    assert result["params"] == {"modes": "subscribe"}
    assert result["publishError"] == 40165
    assert result["defaultModes"] == [
        "presence",
        "publish",
        "subscribe",
        "presence_subscribe",
        "annotation_publish",
    ]
    assert result["unknownParamsEchoed"] == {}
    assert result["invalidName"] == {"code": 40010, "state": "failed"}
    assert result["recoveredSameId"] is True
    assert result["recoveredNewKey"] is True


def test_cli_serves_one_app_over_plain_http_and_tls(tmp_path: Path) -> None:
    # ably-python's own suite talks TLS on 443 (and plain HTTP on 80) to the same app.
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a self-signed certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
        + ["-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1"]
        + ["-addext", "subjectAltName=IP:127.0.0.1"],
        check=True,
        capture_output=True,
        timeout=60,
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "emulators.ably", "--host", "127.0.0.1", "--port", "0"]
        + ["--tls-port", "0", "--tls-cert", str(cert), "--tls-key", str(key)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        match = re.search(r"http://127\.0\.0\.1:(\d+) and https://127\.0\.0\.1:(\d+)", line)
        assert match, line
        plain, tls = (
            f"{scheme}://127.0.0.1:{port}"
            for scheme, port in zip(("http", "https"), match.groups(), strict=True)
        )
        auth = tuple(DEFAULT_KEY.split(":"))
        published = httpx.post(f"{plain}/channels/both/messages", json={"data": "x"}, auth=auth)
        assert published.status_code == 201
        history = httpx.get(
            f"{tls}/channels/both/messages",
            auth=auth,
            verify=ssl.create_default_context(cafile=str(cert)),
        )
        assert [m["data"] for m in history.json()] == ["x"]
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
    finally:
        if process.poll() is None:
            process.kill()


def test_a_form_encoded_request_body_gets_an_ably_error_not_a_crash(
    ably_server: EmulatorServer,
) -> None:
    response = httpx.post(
        f"{ably_server.endpoint}/keys/devapp.devkey/requestToken",
        content=b"\x00",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 401
    assert response.json()["error"]["code"] == 40101


async def test_ably_python_reads_back_posted_stats(ably_server: EmulatorServer) -> None:
    rest = ably_rest(ably_server)
    try:
        fixture = {
            "intervalId": "2025-02-03:15:05",
            "inbound": {"realtime": {"messages": {"count": 70, "data": 7000}}},
            "outbound": {"realtime": {"messages": {"count": 40, "data": 4000}}},
        }
        await rest.http.post("/stats", body=[fixture])
        page = await rest.stats(unit="hour", direction="forwards", limit=1)
        (record,) = page.items
        assert record.interval_id == "2025-02-03:15"
        assert record.entries["messages.all.messages.count"] == 110
    finally:
        await rest.close()


async def test_ably_python_publishes_and_lists_annotations(ably_server: EmulatorServer) -> None:
    from ably.types.annotation import Annotation

    rest = ably_rest(ably_server, client_id="reactor")
    try:
        channel = rest.channels.get("ai:annotated")
        serial = (await channel.publish("response", "hello")).serials[0]
        await channel.annotations.publish(
            serial, Annotation(type="reaction:distinct.v1", name="👍")
        )
        await channel.annotations.delete(serial, Annotation(type="reaction:distinct.v1", name="👍"))
        listed = (await channel.annotations.get(serial)).items
        assert [(a.name, a.client_id) for a in listed] == [("👍", "reactor")] * 2
        assert [a.action.value for a in listed] == [0, 1]
        message = (await channel.history()).items[0]
        assert message.annotations.summary["reaction:distinct.v1"] == {}
    finally:
        await rest.close()


async def test_ably_python_push_admin_registers_devices_and_subscriptions(
    ably_server: EmulatorServer,
) -> None:
    from ably.types.channelsubscription import PushChannelSubscription

    created = httpx.post(
        f"{ably_server.endpoint}/apps",
        json={"keys": [{}], "namespaces": [{"id": "pushy", "pushEnabled": True}]},
    ).json()
    rest = ably_rest(ably_server, key=created["keys"][0]["keyStr"])
    admin = rest.push.admin
    try:
        device = {
            "id": "DEVICE1",
            "clientId": "phone-owner",
            "platform": "ios",
            "formFactor": "phone",
            "push": {"recipient": {"transportType": "apns", "deviceToken": "abc"}},
        }
        saved = await admin.device_registrations.save(device)
        assert (saved.id, saved.client_id) == ("DEVICE1", "phone-owner")
        assert (await admin.device_registrations.get("DEVICE1")).platform == "ios"
        subscription = await admin.channel_subscriptions.save(
            PushChannelSubscription("pushy:news", device_id="DEVICE1")
        )
        assert subscription.channel == "pushy:news"
        listed = await admin.channel_subscriptions.list(channel="pushy:news")
        assert [s.device_id for s in listed.items] == ["DEVICE1"]
        with pytest.raises(AblyException) as not_enabled:
            await admin.channel_subscriptions.save(
                PushChannelSubscription("plain", device_id="DEVICE1")
            )
        assert not_enabled.value.code == 40160
        await admin.publish({"clientId": "phone-owner"}, {"data": {"foo": "bar"}})
        # Ably's ablyChannel test transport delivers the push as a message on the channel.
        await admin.publish(
            {"transportType": "ablyChannel", "channel": "pushy:news"}, {"data": {"foo": "bar"}}
        )
        (pushed,) = (await rest.channels.get("pushy:news").history()).items
        assert pushed.name == "__ably_push__"
        assert json.loads(pushed.data) == {"data": {"foo": "bar"}}
        await admin.device_registrations.remove("DEVICE1")
        with pytest.raises(AblyException) as gone:
            await admin.device_registrations.get("DEVICE1")
        assert gone.value.status_code == 404
        assert (await admin.channel_subscriptions.list(channel="pushy:news")).items == []
    finally:
        await rest.close()
