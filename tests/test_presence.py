"""Presence: one word per device, the same from Python (CLI, device page) and from SQL (the
dashboard's and the metrics' counts), in the order revoked > offline > stopped > online, with
how recently the device was heard breaking ties."""

from __future__ import annotations

import itertools
import time

import sqlalchemy as sa

from fleet_server.registry.presence import STALE_S, presence, presence_sql
from fleet_server.registry.store import DeviceStore
from fleet_server.storage.db import Database
from fleet_server.storage.schema import devices

NOW = 1_800_000_000


def word(**kwargs: object) -> str:
    base: dict[str, object] = {
        "state": None,
        "state_at": None,
        "last_seen": NOW,
        "last_report_at": None,
        "revoked": False,
        "now": NOW,
    }
    base.update(kwargs)
    return presence(**base)  # type: ignore[arg-type]


def test_the_order_of_the_signals() -> None:
    old = NOW - STALE_S - 1
    assert word(state="online", revoked=True) == "revoked"
    assert word(state="offline", last_seen=NOW) == "offline"  # a Will beats a recent check-in
    assert word(state="stopped", state_at=NOW, last_seen=NOW - 5) == "stopped"
    # A stop older than the last check-in: the agent runs again.
    assert word(state="stopped", state_at=NOW - 60, last_seen=NOW - 5) == "online"
    # SIGKILLed where no Will reached the server: "online" only while heard recently.
    assert word(state="online", state_at=old, last_seen=old) == "offline"
    assert word(state="online", last_seen=old, last_report_at=NOW - 5) == "online"
    assert word(state=None, last_seen=NOW - 5) == "online"
    assert word(state=None, last_seen=old) == "offline"


def test_python_and_sql_agree(tmp_path: object) -> None:
    db = Database(f"sqlite:///{tmp_path}/fleet.db")
    db.create_schema()
    store = DeviceStore(db)
    times = (None, NOW - STALE_S - 30, NOW - STALE_S, NOW - 10, NOW)
    cases = list(
        itertools.product(
            (None, "online", "offline", "stopped"),
            times,  # state_at
            times[1:],  # last_seen (never null)
            times,  # last report
            (False, True),
        )
    )
    ids = [store.add_device(f"d{i}", f"t{i}", {}, {}) for i in range(len(cases))]
    with db.engine.begin() as conn:
        for device_id, (state, state_at, seen, report, revoked) in zip(ids, cases, strict=True):
            conn.execute(
                devices.update()
                .where(devices.c.device_id == device_id)
                .values(
                    online_state=state,
                    online_at=state_at,
                    last_seen=seen,
                    last_telemetry_at=report,
                    revoked_at=NOW if revoked else None,
                )
            )
    with db.engine.connect() as conn:
        rows = conn.execute(sa.select(devices.c.device_id, presence_sql(NOW))).all()
    from_sql: dict[str, str] = {str(d): str(w) for d, w in rows}
    for device_id, (state, state_at, seen, report, revoked) in zip(ids, cases, strict=True):
        assert seen is not None
        expected = presence(
            state=state,
            state_at=state_at,
            last_seen=seen,
            last_report_at=report,
            revoked=revoked,
            now=NOW,
        )
        assert from_sql[device_id] == expected, (state, state_at, seen, report, revoked)
    # And the rows the CLI gets say the same.
    row = store.get_device(ids[0])
    assert row.presence(time.time()) in ("online", "offline", "stopped", "revoked")
