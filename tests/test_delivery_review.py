"""Review of issue 19's end-to-end delivery as a hostile device would attack it: a real server,
a real broker, a device with a valid certificate calling ``Deliver`` and publishing on its own
topics whatever it likes.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from typing import Any

import grpc
import paho.mqtt.client as paho
import pytest

from fleet_server.simulator import SimDevice
from protos import device_pb2, telemetry_pb2
from protos.topics import device_topic
from tests.harness import Server, wait_for

pytestmark = pytest.mark.slow

TOP = 2**63 - 1  # the highest sequence number the server takes


def _fleet_id(server: Server) -> str:
    return str(json.loads((server.data_dir / "fleet.json").read_text())["fleet_id"])


def _ledger(server: Server, device_id: str) -> dict[str, Any]:
    with sqlite3.connect(server.data_dir / "fleet.db") as db:
        row = db.execute(
            "SELECT telemetry_ledger FROM devices WHERE device_id = ?", (device_id,)
        ).fetchone()
    return dict(json.loads(row[0])) if row and row[0] else {}


def _event(device_id: str, epoch: str, seq: int) -> bytes:
    event = telemetry_pb2.DeviceEvent(
        device_id=device_id, epoch=epoch, seq=seq, sent_unix_ms=int(time.time() * 1000)
    )
    event.ack.CopyFrom(telemetry_pb2.CommandAck(id=f"c{seq}", kind="checkin", ok=True))
    return event.SerializeToString()


def _report(device_id: str, epoch: str, seq: int) -> bytes:
    return telemetry_pb2.TelemetryReport(
        device_id=device_id, epoch=epoch, seq=seq, sent_unix_ms=int(time.time() * 1000)
    ).SerializeToString()


def _publisher(broker_url: str) -> paho.Client:
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    client.connect("127.0.0.1", int(broker_url.rsplit(":", 1)[1]))
    client.loop_start()
    return client


def test_one_device_cannot_stop_the_ingest_for_the_whole_fleet(
    broker_url: str, server_factory: Callable[..., Server]
) -> None:
    """``Deliver`` takes any sequence number below 2^63 (no jump bound, unlike MQTT), so a
    device can leave its ledger awaiting ~2^63 numbers; its next MQTT batch in a new epoch
    then counts that many lost plus a few more: 2^63, which SQLite's driver refuses with an
    OverflowError. The ingest took that for a database outage and retried the same batch
    forever: no device's telemetry was stored or acknowledged again."""
    server = server_factory(broker_url)
    fleet, token = server.sim_fleet(), server.enrollment_token()
    liar = SimDevice.enroll(fleet, token, "liar")
    honest = SimDevice.enroll(fleet, token, "honest")
    fleet_id = _fleet_id(server)
    try:
        liar.stub.Deliver(
            device_pb2.Outbox(epoch="a", events=[_event(liar.device_id, "a", TOP)]), timeout=10
        )
    except grpc.RpcError as exc:  # refusing such a number is one way to hold
        assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT, exc.details()
    mqtt = _publisher(broker_url)
    lock = sqlite3.connect(server.data_dir / "fleet.db", isolation_level=None, timeout=30)
    try:
        # Hold the database for a moment so that the liar's messages reach the writer as one
        # batch (as a busy server batches them anyway): first a message that waits for it ...
        lock.execute("BEGIN IMMEDIATE")
        state = telemetry_pb2.DeviceState(device_id=honest.device_id, state="online")
        mqtt.publish(
            device_topic(fleet_id, honest.device_id, "state"), state.SerializeToString(), qos=1
        ).wait_for_publish(5)
        time.sleep(1.5)
        # ... then a new epoch whose gaps give up two numbers (66 ranges, 64 kept).
        topic = device_topic(fleet_id, liar.device_id, "telemetry")
        for seq in range(2, 134, 2):
            mqtt.publish(topic, _report(liar.device_id, "b", seq), qos=1).wait_for_publish(5)
        time.sleep(1.5)
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    # Another device's telemetry is still stored.
    mqtt.publish(
        device_topic(fleet_id, honest.device_id, "telemetry"),
        _report(honest.device_id, "h", 1),
        qos=1,
    ).wait_for_publish(5)
    wait_for(
        "the honest device's report to be stored",
        lambda: _ledger(server, honest.device_id).get("highest", 0) >= 1,
        timeout=30,
    )
    mqtt.loop_stop()
    mqtt.disconnect()
    liar.close()
    honest.close()


def _events_stored(server: Server, device_id: str) -> int:
    with sqlite3.connect(server.data_dir / "fleet.db") as db:
        (count,) = db.execute(
            "SELECT COUNT(*) FROM device_events WHERE device_id = ?", (device_id,)
        ).fetchone()
    return int(count)


def _deliver(device: SimDevice, epoch: str, seqs: range) -> None:
    outbox = device_pb2.Outbox(
        epoch=epoch, events=[_event(device.device_id, epoch, s) for s in seqs]
    )
    try:
        device.stub.Deliver(outbox, timeout=30)
    except grpc.RpcError as exc:  # a refusal is one way to hold
        assert exc.code() in (
            grpc.StatusCode.INVALID_ARGUMENT,
            grpc.StatusCode.RESOURCE_EXHAUSTED,
        ), exc.details()


def test_deliver_does_not_let_a_device_store_more_than_mqtt_does(
    broker_url: str, server_factory: Callable[..., Server]
) -> None:
    """Over MQTT a device stores at most a burst of 1,000 messages generated in seconds
    (guard.py: "a hostile device that publishes 20,000 events in three seconds ... must not
    be able to"). ``Deliver`` has no such bound: 64 new events a call, as fast as it calls."""
    server = server_factory(broker_url)
    liar = SimDevice.enroll(server.sim_fleet(), server.enrollment_token(), "liar")
    for call in range(50):
        _deliver(liar, "a", range(call * 64 + 1, call * 64 + 65))
    assert _events_stored(server, liar.device_id) <= 1100
    liar.close()


def test_deliver_does_not_store_one_numbered_event_twice(
    broker_url: str, server_factory: Callable[..., Server]
) -> None:
    """The same (epoch, number) delivered again is a duplicate, even after another epoch's:
    flipping between two epochs made every delivery of the same 64 events new again."""
    server = server_factory(broker_url)
    liar = SimDevice.enroll(server.sim_fleet(), server.enrollment_token(), "liar")
    for call in range(10):
        _deliver(liar, "ab"[call % 2], range(1, 65))
    assert _events_stored(server, liar.device_id) <= 2 * 64
    liar.close()
