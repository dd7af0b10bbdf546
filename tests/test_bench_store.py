"""Issue 22 item 6: one device cannot steer its hardware class. A device's benchmark counts only
for a file the server streamed to it whole, and a class's measured latency needs MIN_DEVICES
such devices (their median)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from fleet_server.catalog.benchmarks import MIN_DEVICES, BenchStore
from fleet_server.catalog.downloads import Downloads
from fleet_server.catalog.store import CatalogStore, ModelRow
from fleet_server.errors import BadRequestError
from fleet_server.storage.db import Database
from protos import device_pb2 as pb

SHA = "ab" * 32


def _store(tmp_path: Path) -> tuple[BenchStore, CatalogStore]:
    db = Database(f"sqlite:///{tmp_path / 'fleet.db'}")
    db.create_schema()
    catalog = CatalogStore(db)
    catalog.add_model(ModelRow("m", "1.0.0", "int8", 1, SHA, 100, False, b"", int(time.time())))
    return BenchStore(db), catalog


def _report(p50: float) -> pb.BenchmarkReport:
    return pb.BenchmarkReport(
        model_name="m", version="1.0.0", sha256=SHA, backend="cpu", threads=1, requests=100,
        seconds=1.0, p50_ms=p50, p95_ms=p50 * 2, throughput_per_s=100.0, runtime="x",
    )  # fmt: skip


def _fleet_latency(catalog: CatalogStore) -> dict[str, float]:
    (row,) = catalog.get_variants("m", "1.0.0")
    return dict(json.loads(row.requirements).get("fleet_latency_ms", {}))


def test_a_file_never_sent_to_the_device_is_not_its_benchmark(tmp_path: Path) -> None:
    bench, _ = _store(tmp_path)
    with pytest.raises(BadRequestError, match="was never sent to this device"):
        bench.record("liar", "x86_64-cpu", _report(0.001))


def test_a_class_gets_a_measured_latency_from_three_devices_and_one_liar_cannot_move_it(
    tmp_path: Path,
) -> None:
    bench, catalog = _store(tmp_path)
    for device in ("a", "b", "c", "liar"):
        bench.delivered(device, SHA)
    bench.record("liar", "x86_64-cpu", _report(0.001))
    bench.record("a", "x86_64-cpu", _report(5.0))
    assert _fleet_latency(catalog) == {}  # two devices: the build host's numbers stand
    bench.record("b", "x86_64-cpu", _report(6.0))
    assert MIN_DEVICES == 3 and _fleet_latency(catalog) == {"x86_64-cpu": 5.0}
    bench.record("c", "x86_64-cpu", _report(7.0))
    assert _fleet_latency(catalog) == {"x86_64-cpu": pytest.approx(5.5)}  # the liar is an end


def test_download_progress_joins_resumed_streams_and_not_gaps(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'fleet.db'}")
    db.create_schema()
    downloads = Downloads(db)
    assert not downloads.streamed("d", SHA, 0, 40, 100)
    assert not downloads.streamed("d", SHA, 60, 100, 100)  # a gap: 40..60 never sent
    assert downloads.of_device("d")[0].reached == 40
    assert not downloads.streamed("d", SHA, 30, 70, 100)  # overlaps: extends to 70
    assert downloads.streamed("d", SHA, 70, 100, 100)
    assert not downloads.streamed("e", SHA, 99, 100, 100)  # the last byte alone
    assert downloads.of_device("e")[0].reached == 0
    assert downloads.streamed("d", SHA, 0, 10, 100)  # a later short stream keeps what it had
