"""The ingest writer on a real SQLite database: a failed write is retried whole, and the retry
is not mistaken for duplicates."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from agent.telemetry.mqtt import parse_mqtt_url
from fleet_server.registry.store import DeviceStore
from fleet_server.storage.db import Database
from fleet_server.telemetry import ingest as ingest_module
from fleet_server.telemetry.ingest import TelemetryIngest
from fleet_server.telemetry.store import TelemetryStore
from protos import telemetry_pb2
from tests.harness import wait_for


def test_a_failed_batch_is_retried_and_counted_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = Database(f"sqlite:///{tmp_path / 'fleet.db'}")
    db.create_schema()
    devices, telemetry = DeviceStore(db), TelemetryStore(db)
    device = devices.add_device("cam", "t", {}, {})
    ingest = TelemetryIngest(parse_mqtt_url("mqtt://127.0.0.1:1"), telemetry, "default", "test")
    items = [
        (
            f"edgefleet/v1/default/{device}/telemetry",
            telemetry_pb2.TelemetryReport(device_id=device, seq=seq, epoch="e").SerializeToString(),
        )
        for seq in (1, 2)
    ]
    real = telemetry._write
    failures = [RuntimeError("database is locked")]

    def flaky(conn: object, batch: object) -> bool:
        if failures:
            raise failures.pop()
        return real(conn, batch)  # type: ignore[arg-type]

    monkeypatch.setattr(telemetry, "_write", flaky)
    monkeypatch.setattr(ingest_module.time, "sleep", lambda _s: None)
    ingest._write(items)
    row = devices.get_device(device)
    assert row.telemetry_count == 2 and row.telemetry_gaps == 0
    assert (ingest.accepted, ingest.duplicates, ingest.dropped) == (2, 0, 0)
    ingest._write(items)  # the same two again: duplicates now
    assert ingest.duplicates == 2 and devices.get_device(device).telemetry_count == 2
    db.close()


def _report(device: str, seq: int, sent: float, requests: int, p95: float) -> bytes:
    report = telemetry_pb2.TelemetryReport(
        device_id=device, seq=seq, epoch="e", sent_unix_ms=int(sent * 1000)
    )
    model = report.models.add(
        model_name="m", window_requests=requests, window_errors=1, window_cloud_requests=2
    )
    model.latency.p50_ms, model.latency.p95_ms = 1.0, p95
    return report.SerializeToString()


def _history(db: Database) -> list[tuple[int, int, int, int, float]]:
    import sqlalchemy as sa

    query = "SELECT bucket, requests, errors, cloud_requests, p95_ms FROM telemetry_history"
    with db.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.text(query + " ORDER BY bucket"))]


def test_history_is_written_once_per_bucket_and_survives_a_failed_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = Database(f"sqlite:///{tmp_path / 'fleet.db'}")
    db.create_schema()
    devices, telemetry = DeviceStore(db), TelemetryStore(db)
    device = devices.add_device("cam", "t", {}, {})
    ingest = TelemetryIngest(parse_mqtt_url("mqtt://127.0.0.1:1"), telemetry, "default", "test")
    topic = f"edgefleet/v1/default/{device}/telemetry"
    first = 1_800_000_000 // 300 * 300  # the start of a bucket
    clock = [float(first + 10)]
    monkeypatch.setattr(ingest_module.time, "time", lambda: clock[0])
    monkeypatch.setattr(ingest_module.time, "sleep", lambda _s: None)
    written: list[list[tuple[str, str, int]]] = []
    real = telemetry._write
    failures = [RuntimeError("database is locked")]

    def recording(conn: object, batch: object) -> bool:
        rows = batch.history  # type: ignore[attr-defined]
        if rows and failures:
            raise failures.pop()
        written.append([(r["device_id"], r["model_name"], r["bucket"]) for r in rows])
        return real(conn, batch)  # type: ignore[arg-type]

    monkeypatch.setattr(telemetry, "_write", recording)
    # Six reports in the first bucket, every 10 s: nothing in history while it is open.
    for seq in range(1, 7):
        ingest._write([(topic, _report(device, seq, first + 10 * seq, 10, float(seq)))])
    assert _history(db) == []
    # The next bucket: its first batch writes the ended one (after one failed attempt).
    clock[0] = first + 300 + 5
    for seq in range(7, 10):
        ingest._write([(topic, _report(device, seq, first + 300 + seq, 4, 2.0))])
    assert _history(db) == [(first, 60, 6, 12, 6.0)]  # the last report's p95
    ingest._write([], final=True)  # what stop() does: the open bucket too
    assert _history(db) == [(first, 60, 6, 12, 6.0), (first + 300, 12, 3, 6, 2.0)]
    flat = [key for batch in written for key in batch]
    assert len(flat) == len(set(flat)) == 2  # one write per device, model and bucket
    # A report from a device whose clock is far behind is filed under the receive time (and
    # adds to the bucket already written).
    ingest._write([(topic, _report(device, 10, 1_000, 1, 1.0))])
    ingest._write([], final=True)
    assert _history(db)[-1][:2] == (first + 300, 13)
    # After the retention (48 h by default) the ingest deletes old buckets.
    clock[0] = first + 48 * 3600 + 300
    ingest._write([(topic, _report(device, 11, clock[0], 1, 1.0))])
    assert [row[0] for row in _history(db)] == [first + 300]
    db.close()


@pytest.mark.slow
def test_stopping_the_ingest_writes_the_open_history(tmp_path: Path, broker_url: str) -> None:
    import paho.mqtt.client as paho

    db = Database(f"sqlite:///{tmp_path / 'fleet.db'}")
    db.create_schema()
    devices, telemetry = DeviceStore(db), TelemetryStore(db)
    device = devices.add_device("cam", "t", {}, {})
    ingest = TelemetryIngest(parse_mqtt_url(broker_url), telemetry, "histfleet", "hist-test")
    ingest.start()
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    endpoint = parse_mqtt_url(broker_url)
    client.connect(endpoint.host, endpoint.port)
    client.loop_start()
    topic = f"edgefleet/v1/histfleet/{device}/telemetry"

    def subscribed() -> bool:
        # start() sends the SUBSCRIBE but does not wait for the broker to act on it, and a
        # message published before that is not delivered: one the ingest rejects (it is no
        # report) shows when its subscription is in place.
        client.publish(topic, b"not a report", qos=1).wait_for_publish(5)
        return ingest.rejected > 0

    try:
        wait_for("the ingest's subscription", subscribed, timeout=60, interval=0.5)
        # The reports' 5-minute bucket must still be open when they are counted.
        left = 300 - time.time() % 300
        if left < 20:
            time.sleep(left + 0.1)
        now = time.time()
        for seq in range(1, 4):
            client.publish(topic, _report(device, seq, now, 5, 3.0), qos=1).wait_for_publish(5)
        wait_for("3 accepted reports", lambda: ingest.accepted >= 3, timeout=60, interval=0.05)
        assert ingest.accepted == 3 and _history(db) == []  # the bucket is still open
    finally:
        client.loop_stop()
        client.disconnect()
        ingest.stop()
    ((bucket, requests, errors, cloud, p95),) = _history(db)
    assert (requests, errors, cloud, p95) == (15, 3, 6, 3.0)
    assert bucket <= now < bucket + 300
    import sqlalchemy as sa

    with db.engine.connect() as conn:  # and over the fleet, per model
        fleet = conn.execute(sa.text("SELECT model_name, bucket, requests FROM model_history"))
        assert [tuple(r) for r in fleet] == [("m", bucket, 15)]
    db.close()


def test_names_and_texts_a_database_would_refuse_do_not_block_the_batch(db_url: str) -> None:
    """A NUL in a device's strings (PostgreSQL refuses it in text) and a history table the
    database cannot write: the rest of the batch is stored, every time, on both backends."""
    import sqlalchemy as sa

    db = Database(db_url)
    db.create_schema()
    devices, telemetry = DeviceStore(db), TelemetryStore(db)
    device = devices.add_device("cam", "t", {}, {})
    ingest = TelemetryIngest(parse_mqtt_url("mqtt://127.0.0.1:1"), telemetry, "default", "test")
    base = f"edgefleet/v1/default/{device}"
    report = telemetry_pb2.TelemetryReport(device_id=device, seq=1, epoch="e",
                                           sent_unix_ms=int(time.time() * 1000))  # fmt: skip
    for name in ("m", "bad\x00name"):
        report.models.add(model_name=name, window_requests=3, routing_policy="local")
    event = telemetry_pb2.DeviceEvent(device_id=device, seq=2, epoch="e")
    event.update.model_name, event.update.detail = "m\x00", "broken \x00 detail"
    ingest._write([(f"{base}/telemetry", report.SerializeToString()),
                   (f"{base}/events", event.SerializeToString())])  # fmt: skip
    ingest._write([], final=True)
    assert (ingest.accepted, ingest.dropped) == (2, 0)
    with db.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT model_name FROM usage")).scalars().all() == ["m"]
        history = conn.execute(sa.text("SELECT model_name, requests FROM telemetry_history"))
        assert [tuple(r) for r in history] == [("m", 3)]
    (stored,) = telemetry.device_events(device)
    assert (stored["model_name"], stored["detail"]) == ("m", "broken  detail")
    # History the database refuses is dropped and counted; the telemetry itself is stored.
    with db.engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE telemetry_history"))
    report.seq = 3
    ingest._write([(f"{base}/telemetry", report.SerializeToString())])
    ingest._write([], final=True)
    assert (ingest.history_lost, ingest.dropped) == (1, 0)
    assert devices.get_device(device).telemetry_count == 3
    db.close()


def test_a_message_the_database_refuses_is_dropped_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sqlalchemy as sa

    db = Database(f"sqlite:///{tmp_path / 'fleet.db'}")
    db.create_schema()
    devices, telemetry = DeviceStore(db), TelemetryStore(db)
    good, bad = devices.add_device("cam", "t", {}, {}), devices.add_device("odd", "u", {}, {})
    ingest = TelemetryIngest(parse_mqtt_url("mqtt://127.0.0.1:1"), telemetry, "default", "test")
    real = telemetry._write

    def refusing(conn: object, batch: object) -> bool:
        if bad in batch.telemetry:  # type: ignore[attr-defined]
            raise sa.exc.DataError("INSERT ...", {}, Exception("value out of range"))
        return real(conn, batch)  # type: ignore[arg-type]

    monkeypatch.setattr(telemetry, "_write", refusing)
    monkeypatch.setattr(ingest_module.time, "sleep", lambda _s: pytest.fail("no retries"))

    def message(device: str, seq: int) -> tuple[str, bytes]:
        report = telemetry_pb2.TelemetryReport(device_id=device, seq=seq, epoch="e")
        return f"edgefleet/v1/default/{device}/telemetry", report.SerializeToString()

    # A sequence number beyond the database's BIGINT never reaches it.
    ingest._write([message(good, 1), message(bad, 2**63), message(bad, 1), message(good, 2)])
    assert (
        devices.get_device(good).telemetry_count == 2
        and devices.get_device(bad).telemetry_count == 0
    )
    assert (ingest.accepted, ingest.rejected, ingest.dropped) == (2, 2, 0)
    db.close()


def test_numbers_no_device_measured_are_ignored_by_usage_history_and_health(
    tmp_path: Path,
) -> None:
    import sqlalchemy as sa

    db = Database(f"sqlite:///{tmp_path / 'fleet.db'}")
    db.create_schema()
    devices, telemetry = DeviceStore(db), TelemetryStore(db)
    device = devices.add_device("cam", "t", {}, {})
    ingest = TelemetryIngest(parse_mqtt_url("mqtt://127.0.0.1:1"), telemetry, "default", "test")
    report = telemetry_pb2.TelemetryReport(device_id=device, seq=1, epoch="e",
                                           sent_unix_ms=int(time.time() * 1000))  # fmt: skip
    report.models.add(model_name="good", window_requests=5)
    report.models.add(model_name="nan", window_requests=5).latency.p95_ms = float("nan")
    report.models.add(model_name="huge", window_requests=10**12)
    report.models.add(model_name="owed", window_requests=1, window_cloud_cost_usd=-5.0)
    ingest._write([(f"edgefleet/v1/default/{device}/telemetry", report.SerializeToString())])
    ingest._write([], final=True)
    with db.engine.connect() as conn:
        for table in ("usage", "telemetry_history", "model_history"):
            query: sa.Select[tuple[str]] = sa.select(sa.column("model_name")).select_from(
                sa.table(table)
            )
            names = conn.execute(query).scalars().all()
            assert names == ["good"], table
    assert devices.get_device(device).telemetry_count == 1  # the report itself is stored
    db.close()
