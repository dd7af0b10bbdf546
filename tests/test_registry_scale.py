"""The registry at fleet scale: reading one device must not read the whole fleet."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import event

from fleet_server.registry.store import DeviceStore
from fleet_server.storage.db import Database
from tests.harness import seed_devices


def test_reading_one_device_does_not_read_every_devices_models(tmp_path: Path) -> None:
    # get_device() is list_devices(device_id), which filtered the devices but read every
    # device's model rows: 91 ms for one device of 20,000 here. A check-in answer reads the
    # device (routing labels, stored capabilities), and after any fleet change every device
    # computes its answer afresh. Counted in rows, not timed: the rule holds on a busy machine.
    url = f"sqlite:///{tmp_path / 'fleet.db'}"
    db = Database(url)
    db.create_schema()
    db.close()
    seed_devices(url, 2_000)
    db = Database(url)
    queries: list[tuple[str, Any]] = []

    def note(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_rest: Any) -> None:
        if "FROM device_models" in statement:
            queries.append((statement, parameters))

    event.listen(db.engine, "after_cursor_execute", note)
    row = DeviceStore(db).get_device("dev-00042")
    event.remove(db.engine, "after_cursor_execute", note)
    assert row.models  # the seeded device runs a model
    with db.engine.connect() as conn:  # the same queries again: how many rows they read
        fetched = [len(conn.exec_driver_sql(sql, args).all()) for sql, args in queries]
    assert fetched == [len(row.models)], f"read {fetched} model rows for one device"
    db.close()
