"""Scheduled rollouts with fixed clocks, on SQLite and PostgreSQL: which start times are taken,
that a scheduled rollout tells no device anything before its start, starts by itself once
(two replicas ticking at the same instant, a clock stepped backwards before or after the start,
a server that was down at the start time), and can be paused, resumed and aborted before it
starts."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator

import pytest

from fleet_server.audit.store import AuditLog
from fleet_server.catalog.store import CatalogStore, ModelRow
from fleet_server.errors import BadRequestError, ConflictError
from fleet_server.registry.store import DeviceStore
from fleet_server.rollouts.controller import RolloutController
from fleet_server.rollouts.schedule import GRACE_S, LATE, MAX_AHEAD_S, check_start, iso_utc, start
from fleet_server.rollouts.states import DeviceState, Event, RolloutState
from fleet_server.rollouts.store import RolloutRow, RolloutStore
from fleet_server.storage.db import Database

T = 1_798_077_600  # 2026-12-24T02:00Z
S = RolloutState


def test_start_times_in_the_past_or_over_a_year_ahead_are_refused() -> None:
    assert check_start(T, now=T - 10) == T
    assert check_start(T, now=T + GRACE_S) == T  # typed a minute late: starts at once
    with pytest.raises(BadRequestError, match=r"2026-12-24T02:00Z is in the past"):
        check_start(T, now=T + GRACE_S + 1)
    assert check_start(T, now=T - MAX_AHEAD_S) == T
    with pytest.raises(BadRequestError, match=r"more than a year ahead"):
        check_start(T, now=T - MAX_AHEAD_S - 1)


def test_a_start_is_due_at_its_time_and_a_late_one_says_why() -> None:
    assert not start(T, T - 1).due
    assert start(T, T - 1).reason == "scheduled for 2026-12-24T02:00Z"
    on_time = start(T, T + 30)
    assert on_time.due and on_time.reason == "started at its scheduled time 2026-12-24T02:00Z"
    late = start(T, T + 3 * 3600 + 12 * 60)
    assert late.due and late.late_s == 11520
    assert late.reason.startswith(LATE)
    assert "3 h 12 min after its scheduled time 2026-12-24T02:00Z" in late.reason
    assert "no server was running" in late.reason
    assert iso_utc(T + 30) == "2026-12-24T02:00:30Z"


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    db = Database(db_url)
    db.create_schema()
    yield db
    db.close()


def _fleet(db: Database, devices: int = 3) -> tuple[RolloutStore, list[str]]:
    catalog = CatalogStore(db)
    catalog.add_model(ModelRow("m", "1.0.0", "int8", 1, "ab" * 32, 10, False, b"x", 0))
    ids = [
        DeviceStore(db).add_device(f"cam-{i}", f"t{i}", {"site": "a"}, {}) for i in range(devices)
    ]
    return RolloutStore(db, catalog), ids


def _create(rollouts: RolloutStore, start_at: int | None = T, now: int = T - 3600) -> RolloutRow:
    return rollouts.create(
        model_name="m",
        version="1.0.0",
        selector={"site": "a"},
        waves=["1", "100%"],
        success_threshold=0.9,
        failure_threshold=0.1,
        max_concurrent=0,
        device_timeout_s=600,
        created_by="test",
        start_at=start_at,
        now=now,
    )


def _told(rollouts: RolloutStore, device_ids: list[str]) -> list[str]:
    """The devices a rollout told to update (what their check-ins would hear)."""
    return [
        d
        for d in device_ids
        if any(r.device_state != DeviceState.WAITING for r in rollouts.desired_rows(d))
    ]


def _starts(db: Database) -> list[str]:
    return [e.target for e in AuditLog(db).entries() if e.action == "StartScheduledRollout"]


def test_a_scheduled_rollout_tells_no_device_anything_before_its_start(db: Database) -> None:
    rollouts, ids = _fleet(db)
    row = _create(rollouts)
    assert row.state == S.SCHEDULED
    assert row.reason == "scheduled for 2026-12-24T02:00Z"
    assert (row.start_at, row.started_at) == (T, None)
    assert sum(w.counts.devices for w in row.wave_status) == 3  # the plan as it stands now
    for now in (T - 3600, T - 60, T - 1):
        assert rollouts.ticking(now) == []
        decision, assigned = rollouts.tick(row.rollout_id, now=now)
        assert (decision.action, assigned) == ("wait", [])
    assert _told(rollouts, ids) == []
    assert rollouts.get(row.rollout_id).state == S.SCHEDULED
    # One live rollout per model: a scheduled one counts.
    with pytest.raises(ConflictError, match=r"\(1.0.0\) is still scheduled; abort it"):
        _create(rollouts, start_at=None)


def test_it_starts_by_itself_once_planned_over_the_devices_matching_then(db: Database) -> None:
    rollouts, ids = _fleet(db)
    row = _create(rollouts)
    devices = DeviceStore(db)
    late = devices.add_device("cam-late", "t-late", {"site": "a"}, {})
    devices.revoke(ids[0])
    assert rollouts.ticking(T) == [row.rollout_id]
    decision, assigned = rollouts.tick(row.rollout_id, now=T + 1)
    assert decision.action == "start"
    assert decision.reason == ("started at its scheduled time 2026-12-24T02:00Z, over 3 device(s)")
    assert len(assigned) == 1  # the canary, at once
    started = rollouts.get(row.rollout_id)
    assert (started.state, started.started_at) == (S.RUNNING, T + 1)
    assert rollouts.desired_rows(late)  # enrolled after the creation: planned in at the start
    assert not rollouts.desired_rows(ids[0])  # revoked before the start: left out
    assert _starts(db) == [f"rollout {row.rollout_id}"]
    # Later steps do not start it again.
    for now in (T + 2, T + 60, T + 3600):
        assert rollouts.tick(row.rollout_id, now=now)[0].action != "start"
    assert _starts(db) == [f"rollout {row.rollout_id}"]


def test_two_replicas_at_the_same_instant_start_it_once(db: Database) -> None:
    rollouts, _ids = _fleet(db)
    row = _create(rollouts)
    replicas = [rollouts, RolloutStore(db, CatalogStore(db))]
    barrier = threading.Barrier(len(replicas))
    actions: list[str] = []

    def tick(store: RolloutStore) -> None:
        barrier.wait()
        actions.append(store.tick(row.rollout_id, now=T + 5)[0].action)

    threads = [threading.Thread(target=tick, args=(r,)) for r in replicas]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(actions) == ["start", "wait"]
    assert _starts(db) == [f"rollout {row.rollout_id}"]
    assert sum(w.counts.assigned for w in rollouts.get(row.rollout_id).wave_status) == 1


def test_a_clock_stepped_backwards_neither_loses_nor_repeats_the_start(db: Database) -> None:
    rollouts, ids = _fleet(db)
    row = _create(rollouts)
    # Stepped back before the start: not due yet, and still scheduled (not lost).
    assert rollouts.tick(row.rollout_id, now=T - 7200)[0].action == "wait"
    assert rollouts.get(row.rollout_id).state == S.SCHEDULED
    assert rollouts.ticking(T) == [row.rollout_id]  # due once the clock gets there again
    assert rollouts.tick(row.rollout_id, now=T)[0].action == "start"
    told = _told(rollouts, ids)
    # Stepped back after the start: running stays running; nothing is planned again.
    for now in (T - 3600, T - 1, T):
        assert rollouts.tick(row.rollout_id, now=now)[0].action != "start"
    assert rollouts.get(row.rollout_id).state == S.RUNNING
    assert _told(rollouts, ids) == told
    assert _starts(db) == [f"rollout {row.rollout_id}"]


def test_paused_or_aborted_before_its_start_it_does_not_start(db: Database) -> None:
    rollouts, ids = _fleet(db)
    row = _create(rollouts)
    rollouts.transition(row.rollout_id, Event.PAUSE, "paused by test")
    assert rollouts.tick(row.rollout_id, now=T + 10)[0].action == "wait"
    assert rollouts.get(row.rollout_id).state == S.PAUSED
    assert _told(rollouts, ids) == []
    # Resumed: it waits for its start again (here past), and the controller starts it.
    assert rollouts.transition(row.rollout_id, Event.RESUME, "r").state == S.SCHEDULED
    assert rollouts.tick(row.rollout_id, now=T + 20)[0].action == "start"
    assert len(_told(rollouts, ids)) == 1

    other, more = _fleet_second_model(db)
    second = other.create(
        model_name="n", version="1.0.0", selector={}, waves=["100%"], success_threshold=0.9,
        failure_threshold=0.1, max_concurrent=0, device_timeout_s=600, created_by="test",
        start_at=T, now=T - 60,
    )  # fmt: skip
    assert other.transition(second.rollout_id, Event.ABORT, "aborted").state == S.ABORTED
    assert other.ticking(T + 60) == [row.rollout_id]
    assert other.tick(second.rollout_id, now=T + 60)[0].action == "wait"
    assert other.get(second.rollout_id).state == S.ABORTED
    assert all(r.model_name != "n" or r.device_state == DeviceState.WAITING
               for d in more for r in other.desired_rows(d))  # fmt: skip
    with pytest.raises(ConflictError, match=r"is aborted"):
        other.transition(second.rollout_id, Event.RESUME, "r")


def _fleet_second_model(db: Database) -> tuple[RolloutStore, list[str]]:
    catalog = CatalogStore(db)
    catalog.add_model(ModelRow("n", "1.0.0", "int8", 1, "cd" * 32, 10, False, b"y", 0))
    rollouts = RolloutStore(db, catalog)
    return rollouts, [d.device_id for d in DeviceStore(db).list_devices()]


def test_a_resume_before_the_start_waits_for_it(db: Database) -> None:
    rollouts, ids = _fleet(db)
    row = _create(rollouts)
    rollouts.transition(row.rollout_id, Event.PAUSE, "p")
    assert rollouts.transition(row.rollout_id, Event.RESUME, "r").state == S.SCHEDULED
    assert rollouts.ticking(T - 60) == []
    assert rollouts.tick(row.rollout_id, now=T - 60)[0].action == "wait"
    assert _told(rollouts, ids) == []


def test_a_server_that_was_down_at_the_start_time_starts_it_and_says_so(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    rollouts, _ids = _fleet(db)
    due = int(time.time()) - 3 * 3600  # the controller reads the real clock
    row = _create(rollouts, start_at=due, now=due - 60)
    with caplog.at_level(logging.INFO, logger="fleet_server.rollouts.controller"):
        assert RolloutController(rollouts).tick_all() == 1
    started = rollouts.get(row.rollout_id)
    assert started.state == S.RUNNING
    assert started.reason.startswith(f"{LATE}started 3 h")
    (record,) = [r for r in caplog.records if "after its scheduled time" in r.getMessage()]
    assert record.levelno == logging.WARNING
    assert "no server was running its controller then" in record.getMessage()
    assert _starts(db) == [f"rollout {row.rollout_id}"]
