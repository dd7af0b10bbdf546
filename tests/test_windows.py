"""Maintenance windows: the pure rules (days, times, midnight, daylight saving time, a device's
zone), and the controller's step with fixed clocks on SQLite and PostgreSQL: a device outside
its window is not told to update while one inside is, waits without failing or stalling its
wave, and takes no slot of the concurrency cap."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleet_server.catalog.store import CatalogStore, ModelRow
from fleet_server.errors import BadRequestError, NotFoundError
from fleet_server.registry.store import DeviceStore
from fleet_server.rollouts.desired import held_rows, targets_for
from fleet_server.rollouts.plan import HealthGate
from fleet_server.rollouts.states import DeviceState, RolloutState
from fleet_server.rollouts.store import DesiredRow, RolloutStore
from fleet_server.rollouts.window_store import WindowStore
from fleet_server.rollouts.windows import (
    Window,
    days_text,
    device_zone,
    is_open,
    make_window,
    next_change,
    parse_days,
    verdict,
)
from fleet_server.storage.db import Database
from protos.zones import zone_of

BERLIN = ZoneInfo("Europe/Berlin")


def at(text: str) -> float:
    """Unix time of an ISO 8601 UTC time."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def local(text: str, zone: ZoneInfo = BERLIN) -> datetime:
    return datetime.fromtimestamp(at(text), zone)


def test_days_are_read_as_operators_write_them() -> None:
    assert parse_days("mon-fri") == frozenset(range(5))
    assert parse_days("sat,sun") == parse_days("sat-sun") == frozenset({5, 6})
    assert parse_days("fri-mon") == frozenset({4, 5, 6, 0})  # wraps over the week's end
    assert parse_days("mon,wed-fri") == frozenset({0, 2, 3, 4})
    assert parse_days(" Daily ") == frozenset(range(7))
    for bad in ("", "mon-", "monday", "mon-xyz", "mon,,tue", "1-5"):
        with pytest.raises(BadRequestError, match="is not a day"):
            parse_days(bad)


@given(st.sets(st.integers(0, 6), min_size=1))
def test_days_are_shown_as_text_that_reads_back_the_same(days: set[int]) -> None:
    assert parse_days(days_text(days)) == frozenset(days)


def test_times_and_empty_windows_are_refused_with_the_reason() -> None:
    assert (make_window(0, {}, "daily", "01:00", "24:00").end) == 1440
    for start, end, message in (
        ("1:00", "25:00", "not a time of day"),
        ("01:60", "05:00", "not a time of day"),
        ("01:00", "5", "not a time of day"),
        ("24:00", "05:00", "write 00:00"),
        ("03:00", "03:00", "needs a length"),
        ("00:00", "24:00", None),
    ):
        if message is None:
            make_window(0, {}, "daily", start, end)
            continue
        with pytest.raises(BadRequestError, match=message):
            make_window(0, {}, "daily", start, end)


def test_a_window_that_crosses_midnight_closes_on_the_next_day() -> None:
    friday_night = make_window(1, {}, "fri", "22:00", "02:00")
    utc = ZoneInfo("UTC")
    # 2026-12-25 is a Friday.
    assert is_open(friday_night, local("2026-12-25T22:00", utc))
    assert is_open(friday_night, local("2026-12-26T01:59", utc))  # Saturday, before 02:00
    assert not is_open(friday_night, local("2026-12-26T02:00", utc))
    assert not is_open(friday_night, local("2026-12-25T21:59", utc))
    assert not is_open(friday_night, local("2026-12-26T23:00", utc))  # Saturday night: no
    assert not is_open(friday_night, local("2026-12-25T01:00", utc))  # Thursday's did not open


def test_daylight_saving_time_moves_the_window_with_the_clocks() -> None:
    nightly = make_window(1, {}, "daily", "01:00", "05:00")
    # 2026-03-29, Berlin: 02:00 CET becomes 03:00 CEST. 01:00-05:00 local is 00:00-03:00 UTC:
    # three real hours, not four, and not an hour off as a fixed +01:00 would have it.
    assert not is_open(nightly, local("2026-03-28T23:59"))
    assert is_open(nightly, local("2026-03-29T00:00"))
    assert is_open(nightly, local("2026-03-29T02:59"))  # 04:59 CEST
    assert not is_open(nightly, local("2026-03-29T03:00"))  # 05:00 CEST
    assert next_change([nightly], {}, BERLIN, at("2026-03-29T00:30")) == at("2026-03-29T03:00")
    # 2026-10-25: 03:00 CEST becomes 02:00 CET; the window lasts five real hours.
    assert is_open(nightly, local("2026-10-24T23:00"))  # 01:00 CEST
    assert is_open(nightly, local("2026-10-25T03:30"))  # 04:30 CET
    assert next_change([nightly], {}, BERLIN, at("2026-10-24T23:30")) == at("2026-10-25T04:00")
    # A window inside the skipped hour does not open that night; the next night it does.
    skipped = make_window(2, {}, "daily", "02:15", "02:45")
    assert not any(
        is_open(skipped, local(f"2026-03-29T{h:02d}:{m:02d}")) for h in range(5) for m in (0, 30)
    )
    assert is_open(skipped, local("2026-03-30T00:30"))  # 02:30 CEST


def test_a_device_outside_every_window_that_holds_it_may_not_update() -> None:
    windows = [
        make_window(1, {"site": "berlin"}, "mon-fri", "01:00", "05:00"),
        make_window(2, {"site": "berlin", "tier": "canary"}, "daily", "12:00", "13:00"),
    ]
    wednesday_noon = at("2026-12-23T11:30")  # 12:30 in Berlin
    held = verdict(windows, {"site": "berlin"}, BERLIN, wednesday_noon)
    assert (held.restricted, held.allowed) == (True, False)
    assert "outside its maintenance window(s) 1 (mon-fri 01:00-05:00)" in held.reason
    canary = verdict(windows, {"site": "berlin", "tier": "canary"}, BERLIN, wednesday_noon)
    assert canary.allowed and "inside window 2" in canary.reason
    free = verdict(windows, {"site": "paris"}, BERLIN, wednesday_noon)
    assert (free.restricted, free.allowed) == (False, True)
    assert next_change(windows, {"site": "paris"}, BERLIN, wednesday_noon) is None
    # The same labels in another zone: 01:30 in Tokyo is inside.
    assert verdict(windows, {"site": "berlin"}, ZoneInfo("Asia/Tokyo"), at("2026-12-22T16:30"))
    assert next_change(windows, {"site": "berlin"}, BERLIN, wednesday_noon) == at(
        "2026-12-24T00:00"  # Thursday 01:00 in Berlin
    )


@pytest.mark.parametrize(
    "name", ["../../etc/passwd", "/etc/localtime", "Europe/Nowhere", "x" * 200, "Europe/../UTC"]
)
def test_a_zone_a_device_made_up_is_utc(name: str) -> None:
    assert zone_of(name) is None
    assert device_zone(name).key == "UTC"
    assert device_zone("").key == "UTC"  # agents from before the field


def _row(rollout_id: int, version: str, state: DeviceState) -> DesiredRow:
    return DesiredRow(rollout_id, "m", version, RolloutState.RUNNING, state, None)


def test_a_closed_window_holds_back_only_what_the_device_does_not_run_yet() -> None:
    deployed = {"m": ("1.0.0", None)}
    told = _row(1, "2.0.0", DeviceState.ASSIGNED)
    assert held_rows([told], {"m": "1.0.0"}) == [told]
    assert targets_for(deployed, [told], held_rows([told], {}))["m"].version == "1.0.0"
    # Installed (reported or not): never taken back.
    assert held_rows([told], {"m": "2.0.0"}) == []
    assert held_rows([_row(1, "2.0.0", DeviceState.INSTALLED)], {}) == []
    rollback = DesiredRow(1, "m", "2.0.0", RolloutState.ROLLED_BACK, DeviceState.ASSIGNED, b"")
    assert held_rows([rollback], {}) == []


# the controller's step -----------------------------------------------------------------------


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    db = Database(db_url)
    db.create_schema()
    yield db
    db.close()


def _fleet(db: Database, zones: dict[str, str]) -> tuple[RolloutStore, dict[str, str]]:
    """Devices named after their zones ("" = an agent that reports none), all site=x."""
    catalog = CatalogStore(db)
    catalog.add_model(ModelRow("m", "1.0.0", "int8", 1, "ab" * 32, 10, False, b"x", 0))
    devices = DeviceStore(db)
    ids = {
        name: devices.add_device(
            name, f"t-{name}", {"site": "x"}, {"timezone": zone} if zone else {}
        )
        for name, zone in zones.items()
    }
    return RolloutStore(db, catalog), ids


def _rollout(rollouts: RolloutStore, max_concurrent: int = 0, bake_s: int = 0) -> int:
    return rollouts.create(
        model_name="m", version="1.0.0", selector={"site": "x"}, waves=["100%"],
        success_threshold=1.0, failure_threshold=0.0, max_concurrent=max_concurrent,
        device_timeout_s=60, created_by="test", health_gate=HealthGate(bake_s=bake_s),
    ).rollout_id  # fmt: skip


def _state(rollouts: RolloutStore, device_id: str) -> DeviceState:
    (row,) = rollouts.desired_rows(device_id)
    return row.device_state


def test_a_device_outside_its_window_waits_while_one_inside_is_told(db: Database) -> None:
    rollouts, ids = _fleet(db, {"tokyo": "Asia/Tokyo", "berlin": "Europe/Berlin", "old": ""})
    rollouts.windows.add(selector={"site": "x"}, days="daily", start="01:00", end="05:00",
                         created_by="test")  # fmt: skip
    rollout_id = _rollout(rollouts)
    # 16:30 UTC: 01:30 in Tokyo (inside), 17:30 in Berlin and UTC (outside).
    _decision, told = rollouts.tick(rollout_id, now=int(at("2026-12-22T16:30")))
    assert told == [ids["tokyo"]]
    assert _state(rollouts, ids["berlin"]) == _state(rollouts, ids["old"]) == DeviceState.WAITING
    # 01:30 UTC is 02:30 in Berlin: both Berlin and the device without a zone (UTC) go now.
    _decision, told = rollouts.tick(rollout_id, now=int(at("2026-12-23T01:30")))
    assert sorted(told) == sorted([ids["berlin"], ids["old"]])


def test_a_wave_whose_devices_are_all_outside_waits_without_failing(db: Database) -> None:
    rollouts, ids = _fleet(db, {"a": "Europe/Berlin", "b": "Europe/Berlin"})
    rollouts.windows.add(selector={"site": "x"}, days="daily", start="01:00", end="05:00",
                         created_by="test")  # fmt: skip
    # Pause on any failure, a bake time, a short device timeout: none of it may fire.
    rollout_id = _rollout(rollouts, bake_s=600)
    day = int(at("2026-12-22T06:00"))  # 07:00 in Berlin
    for hour in range(17):  # until 23:00 UTC, 00:00 in Berlin
        decision, told = rollouts.tick(rollout_id, now=day + hour * 3600)
        assert (decision.action, told) == ("wait", [])
    status = rollouts.get(rollout_id, now=day + 3600)
    assert status.state == RolloutState.RUNNING
    (wave,) = status.wave_status
    assert (wave.counts.waiting, wave.counts.failed, wave.stalled) == (2, 0, 0)
    # The window opens: both are told.
    _decision, told = rollouts.tick(rollout_id, now=int(at("2026-12-23T00:30")))
    assert sorted(told) == sorted(ids.values())


def test_the_status_counts_devices_waiting_for_their_window(db: Database) -> None:
    rollouts, ids = _fleet(db, {"in": "Asia/Tokyo", "out": "Europe/Berlin"})
    window = rollouts.windows.add(selector={"site": "x"}, days="daily", start="01:00",
                                  end="05:00", created_by="test")  # fmt: skip
    assert window.devices == 2
    rollout_id = _rollout(rollouts)
    rollouts.tick(rollout_id, now=int(at("2026-12-22T16:30")))
    (wave,) = rollouts.get(rollout_id, now=int(at("2026-12-22T16:30"))).wave_status
    assert (wave.counts.waiting, wave.outside_window, wave.counts.failed) == (1, 1, 0)
    # Inside its window (and not told yet), it waits for the rollout, not for its window.
    (wave,) = rollouts.get(rollout_id, now=int(at("2026-12-23T01:30"))).wave_status
    assert (wave.counts.waiting, wave.outside_window) == (1, 0)
    # Removing the window frees the device at the next step.
    rollouts.windows.remove(window.window.window_id)
    assert rollouts.windows.list_windows() == []
    _decision, told = rollouts.tick(rollout_id, now=int(at("2026-12-22T16:31")))
    assert told == [ids["out"]]
    with pytest.raises(NotFoundError, match="does not exist"):
        rollouts.windows.remove(window.window.window_id)


def test_the_concurrency_cap_is_not_spent_on_devices_outside(db: Database) -> None:
    rollouts, ids = _fleet(db, {"a": "Europe/Berlin", "b": "Europe/Berlin", "c": "Asia/Tokyo"})
    rollouts.windows.add(selector={"site": "x"}, days="daily", start="01:00", end="05:00",
                         created_by="test")  # fmt: skip
    rollout_id = _rollout(rollouts, max_concurrent=1)
    _decision, told = rollouts.tick(rollout_id, now=int(at("2026-12-22T16:30")))
    assert told == [ids["c"]]


def test_window_requests_out_of_bounds_are_refused(db: Database) -> None:
    store = WindowStore(db)
    with pytest.raises(BadRequestError, match="is not a day"):
        store.add(selector={}, days="someday", start="01:00", end="02:00", created_by="t")
    for _ in range(256):
        store.add(selector={"a": "b"}, days="daily", start="01:00", end="02:00", created_by="t")
    with pytest.raises(BadRequestError, match="256 maintenance windows already"):
        store.add(selector={"a": "b"}, days="daily", start="01:00", end="02:00", created_by="t")


def test_window_text_round_trips() -> None:
    window = Window(3, {}, frozenset({4}), 22 * 60, 2 * 60)
    assert str(window) == "fri 22:00-02:00" and window.crosses_midnight
