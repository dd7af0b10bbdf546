"""The registry at fleet scale: reading one device must not cost the whole fleet."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from fleet_server.registry.store import DeviceStore
from fleet_server.storage.db import Database
from tests.harness import seed_devices


def _get_device_ms(tmp_path: Path, fleet: int) -> float:
    url = f"sqlite:///{tmp_path / f'fleet-{fleet}.db'}"
    db = Database(url)
    db.create_schema()
    db.close()
    seed_devices(url, fleet)
    db = Database(url)
    store = DeviceStore(db)
    times = []
    for _ in range(15):
        started = time.perf_counter()
        assert store.get_device("dev-00042").models
        times.append(time.perf_counter() - started)
    db.close()
    return statistics.median(times) * 1000


def test_reading_one_device_does_not_read_every_devices_models(tmp_path: Path) -> None:
    # get_device() is list_devices(device_id), which filtered the devices but read every
    # device's model rows: 91 ms for one device of 20,000 here. A check-in answer reads the
    # device (routing labels, stored capabilities), and after any fleet change every device
    # computes its answer afresh: 20,000 devices x 91 ms of one core.
    small = _get_device_ms(tmp_path, 100)
    large = _get_device_ms(tmp_path, 20_000)
    assert large < 10 * small + 2, f"{small:.2f} ms with 100 devices, {large:.2f} ms with 20,000"
