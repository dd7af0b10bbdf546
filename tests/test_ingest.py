"""The ingest writer on a real SQLite database: a failed write is retried whole, and the retry
is not mistaken for duplicates."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.telemetry.mqtt import parse_mqtt_url
from fleet_server.storage.db import Database
from fleet_server.telemetry import ingest as ingest_module
from fleet_server.telemetry.ingest import TelemetryIngest
from protos import telemetry_pb2


def test_a_failed_batch_is_retried_and_counted_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = Database(f"sqlite:///{tmp_path / 'fleet.db'}")
    db.create_schema()
    device = db.add_device("cam", "t", {}, {})
    ingest = TelemetryIngest(parse_mqtt_url("mqtt://127.0.0.1:1"), db, "default", "test")
    items = [
        (
            f"edgefleet/v1/default/{device}/telemetry",
            telemetry_pb2.TelemetryReport(device_id=device, seq=seq, epoch="e").SerializeToString(),
        )
        for seq in (1, 2)
    ]
    real = db.record_mqtt_batch
    failures = [RuntimeError("database is locked")]

    def flaky(batch: object) -> None:
        if failures:
            raise failures.pop()
        real(batch)  # type: ignore[arg-type]

    monkeypatch.setattr(db, "record_mqtt_batch", flaky)
    monkeypatch.setattr(ingest_module.time, "sleep", lambda _s: None)
    ingest._write(items)
    row = db.get_device(device)
    assert row.telemetry_count == 2 and row.telemetry_gaps == 0
    assert (ingest.accepted, ingest.duplicates, ingest.dropped) == (2, 0, 0)
    ingest._write(items)  # the same two again: duplicates now
    assert ingest.duplicates == 2 and db.get_device(device).telemetry_count == 2
    db.close()
