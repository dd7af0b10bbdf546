"""Exact accounting at scale with real processes (issue 19): two ingest replicas on one shared
subscription count every message once; a database outage at a scaled rate loses nothing.

A test publisher stands in for devices (enrolled through the real device API, publishing on
their own topics of an anonymous private mosquitto), so the rate and the order are the test's:
shuffled, with repeats.
"""

from __future__ import annotations

import json
import random
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
import sqlalchemy as sa

from fleet_server.simulator import SimDevice
from protos import telemetry_pb2
from protos.topics import device_topic
from tests.harness import Server, start_mosquitto, wait_for

pytestmark = pytest.mark.slow


def _fleet_id(server: Server) -> str:
    return str(json.loads((server.data_dir / "fleet.json").read_text())["fleet_id"])


def _ledgers(db_url: str, devices: list[str]) -> dict[str, dict[str, Any]]:
    """These devices' ledgers (the session's PostgreSQL database holds other tests' too)."""
    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text("SELECT device_id, telemetry_ledger, telemetry_count FROM devices")
            ).all()
    finally:
        engine.dispose()
    return {
        str(d): dict(json.loads(raw)) | {"count": int(n)}
        for d, raw, n in rows
        if raw and d in devices
    }


class Publisher:
    """An MQTT v5 client publishing devices' reports at QoS 1."""

    def __init__(self, port: int) -> None:
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        self.client.max_inflight_messages_set(100)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def report(self, fleet: str, device_id: str, seq: int) -> paho.MQTTMessageInfo:
        report = telemetry_pb2.TelemetryReport(
            device_id=device_id, seq=seq, epoch="e", sent_unix_ms=int(time.time() * 1000)
        )
        topic = device_topic(fleet, device_id, "telemetry")
        return self.client.publish(topic, report.SerializeToString(), qos=1)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _enroll(server: Server, count: int) -> list[str]:
    ids = []
    for i in range(count):
        device = SimDevice.enroll(server.sim_fleet(), server.enrollment_token(), f"d{i}")
        ids.append(device.device_id)
        device.close()
    return ids


def test_two_replicas_on_one_shared_subscription_count_each_message_once(
    tmp_path: Path, postgres_url: str, server_factory: Callable[..., Server]
) -> None:
    broker = start_mosquitto(tmp_path / "broker")
    extra = ("--mqtt-share-group", "ingest", "--rollout-interval", "3600")
    first = server_factory(broker.url, folder=tmp_path / "one", db_url=postgres_url, extra=extra)
    second = server_factory(
        broker.url, folder=tmp_path / "two", db_url=postgres_url, extra=extra,
        data_dir=first.data_dir,
    )  # fmt: skip
    devices = _enroll(first, 3)
    fleet = _fleet_id(first)
    sent = 300
    # Every number of every device, shuffled, a fifth of them twice: the two replicas get
    # interleaved halves, late arrivals and repeats of one another's messages.
    stream = [(d, s) for d in devices for s in range(1, sent + 1)]
    stream += random.Random(19).sample(stream, len(stream) // 5)  # noqa: S311 - a test order
    random.Random(7).shuffle(stream)  # noqa: S311
    publisher = Publisher(broker.port)
    for device_id, seq in stream:
        publisher.report(fleet, device_id, seq).wait_for_publish(10)
    publisher.close()

    last: list[dict[str, dict[str, Any]]] = []

    def settled() -> dict[str, dict[str, Any]] | None:
        # As an agent does at each acknowledgement: publish again what the server reports
        # missing, and what is above what it stored (deferred past 64 missing ranges).
        books = _ledgers(postgres_url, devices)
        last[:] = [books]
        done = len(books) == 3 and all(
            b["highest"] == sent and not b["missing"] for b in books.values()
        )
        if not done:
            again = Publisher(broker.port)
            for device_id, ledger in books.items():
                awaited = [s for lo, hi in ledger["missing"] for s in range(lo, hi + 1)]
                for seq in awaited + list(range(ledger["highest"] + 1, sent + 1)):
                    again.report(fleet, device_id, seq).wait_for_publish(10)
            again.close()
            time.sleep(1)
        return books if done else None

    try:
        books = wait_for("both replicas to store every message", settled, timeout=90, interval=2)
    except AssertionError:
        logs = "\n".join(s.proc.output()[-3000:] for s in (first, second))
        raise AssertionError(f"ledgers: {last}\n{logs}") from None
    for ledger in books.values():
        assert (ledger["stored"], ledger["count"], ledger["lost"]) == (sent, sent, 0), ledger
    # Both replicas took part.
    for server in (first, second):
        assert "ingesting $share/ingest/" in server.proc.output()
    broker.proc.stop()


def test_a_database_outage_at_a_scaled_rate_loses_nothing(
    tmp_path: Path, server_factory: Callable[..., Server]
) -> None:
    """The database refuses every write for 25 s while three devices publish 90 reports a
    second (the 5-agent soak's rate scaled up 18x: 25 s here is 7.5 minutes there); once it is
    back, every report is stored, each once."""
    broker = start_mosquitto(tmp_path / "broker")
    server = server_factory(broker.url)
    devices = _enroll(server, 3)
    fleet = _fleet_id(server)
    db_path = server.data_dir / "fleet.db"
    publisher = Publisher(broker.port)
    for device_id in devices:  # before the outage: the ingest knows the devices
        publisher.report(fleet, device_id, 1).wait_for_publish(10)
    wait_for("the first reports", lambda: len(_ledgers(f"sqlite:///{db_path}", devices)) == 3)

    locked, release = threading.Event(), threading.Event()

    def hold_the_database() -> None:
        db = sqlite3.connect(db_path, timeout=30, isolation_level=None)
        db.execute("BEGIN EXCLUSIVE")
        locked.set()
        release.wait(60)
        db.execute("ROLLBACK")
        db.close()

    holder = threading.Thread(target=hold_the_database)
    holder.start()
    assert locked.wait(30)
    sent = 1
    deadline = time.monotonic() + 25
    while time.monotonic() < deadline:
        sent += 1
        for device_id in devices:
            publisher.report(fleet, device_id, sent)
        time.sleep(1 / 30)
    release.set()
    holder.join()
    publisher.close()

    def settled() -> dict[str, dict[str, Any]] | None:
        books = _ledgers(f"sqlite:///{db_path}", devices)
        done = all(b["highest"] == sent and not b["missing"] for b in books.values())
        return books if done and len(books) == 3 else None

    books = wait_for("every report stored after the outage", settled, timeout=120)
    for ledger in books.values():
        assert (ledger["stored"], ledger["lost"]) == (sent, 0), ledger
    assert sent > 600
    log = server.proc.output()
    assert "retrying until the database is back" in log and "the database is back" in log
    broker.proc.stop()
