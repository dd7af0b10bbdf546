"""What the telemetry ingest writes: each device's position in its message sequence, its
latest report and retained state, its update events, usage for the cost report, and history."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from fleet_server.rollouts.outcomes import Outcome, apply_update
from fleet_server.storage.db import Database, add_rows, hold_writes
from fleet_server.storage.schema import (
    device_events,
    devices,
    model_history,
    telemetry_history,
    usage,
)
from fleet_server.telemetry.events import event_row, outcome_of
from fleet_server.telemetry.sequence import Ledger, Verdict, lost_between

__all__ = ["MAX_JUMP", "IngestBatch", "Known", "TelemetryStore"]

# How far past what is stored a delivered event may be numbered: a device's default spool
# bound. (MQTT messages have the ingest's guard, which allows for elapsed time.)
MAX_JUMP = 10_000

log = logging.getLogger(__name__)


@dataclass
class IngestBatch:
    """What one ingest batch writes: per device its sequence ledger, latest report (or None),
    messages stored and messages given up as lost; retained states; events, and the update
    outcomes among them."""

    telemetry: dict[str, tuple[Ledger, dict[str, Any] | None, int, int]] = field(
        default_factory=dict
    )
    states: dict[str, str] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    outcomes: list[Outcome] = field(default_factory=list)
    # (device, model, policy) -> [served, local runs, local ms, cloud requests, cloud USD]
    usage: dict[tuple[str, str, str], list[float]] = field(default_factory=dict)
    # telemetry_history rows to add, and the bucket before which history is deleted (0: keep)
    history: list[dict[str, Any]] = field(default_factory=list)
    prune_history_before: int = 0
    prune_events_before: int = 0  # device events (updates, command acks) older than this go


@dataclass(frozen=True)
class Known:
    """An enrolled, unrevoked device as a batch is judged: its ledger, when its last report
    was stored, when it enrolled."""

    ledger: Ledger
    last_at: int | None
    enrolled_at: int


def _greater(stored: Any, new: Any) -> Any:
    return sa.case((stored > new, stored), else_=new)


def _add_usage(
    conn: sa.Connection, deltas: Mapping[tuple[str, str, str], list[float]], now: int
) -> None:
    """Add usage deltas; the per-day columns restart on a new UTC day."""
    rows = [
        {
            "device_id": d,
            "model_name": m,
            "policy": p,
            "served": int(v[0]),
            "local_runs": int(v[1]),
            "local_ms": float(v[2]),
            "cloud_requests": int(v[3]),
            "cloud_cost": float(v[4]),
            "updated_at": now,
            "day": now // 86400,
            "day_cloud_requests": int(v[3]),
            "day_cloud_cost": float(v[4]),
        }
        for (d, m, p), v in deltas.items()
    ]

    def same_day(stored: Any, new: Any) -> Any:
        # The stored day's total carries on only when the new row is of the same day.
        return sa.case((usage.c.day == sa.literal_column("excluded.day"), stored), else_=0) + new

    add_rows(
        conn,
        usage,
        rows,
        combine={
            "updated_at": lambda _stored, new: new,
            "day": lambda _stored, new: new,
            "day_cloud_requests": same_day,
            "day_cloud_cost": same_day,
        },
    )


def _add_history(conn: sa.Connection, rows: Sequence[dict[str, Any]]) -> None:
    """Add history buckets, per device and per model; the latency of a device's bucket two
    replicas both wrote is the worse one."""
    add_rows(conn, telemetry_history, rows, combine={"p50_ms": _greater, "p95_ms": _greater})
    fleet: dict[tuple[str, int], dict[str, Any]] = {}
    for r in rows:
        entry = fleet.setdefault(
            (r["model_name"], r["bucket"]),
            {"model_name": r["model_name"], "bucket": r["bucket"], "devices": 0, "requests": 0,
             "errors": 0, "cloud_requests": 0, "p95_weighted_ms": 0.0, "p95_max_ms": 0.0},
        )  # fmt: skip
        entry["devices"] += 1
        for column in ("requests", "errors", "cloud_requests"):
            entry[column] += r[column]
        entry["p95_weighted_ms"] += r["p95_ms"] * r["requests"]
        entry["p95_max_ms"] = max(entry["p95_max_ms"], r["p95_ms"])
    add_rows(conn, model_history, list(fleet.values()), combine={"p95_max_ms": _greater})


class TelemetryStore:
    """Queries over what devices report by MQTT."""

    def __init__(self, db: Database) -> None:
        self._engine = db.engine

    def _known(self, conn: sa.Connection, device_ids: Sequence[str]) -> dict[str, Known]:
        """The devices among ``device_ids`` that are enrolled and not revoked, their ledgers
        locked until the caller's transaction ends."""
        hold_writes(conn)  # SQLite: the only writer from here (ledgers read, then written)
        query = sa.select(
            devices.c.device_id,
            devices.c.telemetry_ledger,
            devices.c.telemetry_epoch,
            devices.c.last_telemetry_seq,
            devices.c.last_telemetry_at,
            devices.c.enrolled_at,
        ).where(devices.c.device_id.in_(list(device_ids)) & devices.c.revoked_at.is_(None))
        if conn.dialect.name == "postgresql":
            query = query.with_for_update()
        return {
            str(d): Known(Ledger.load(raw, e, q), t, int(n))
            for d, raw, e, q, t, n in conn.execute(query).all()
        }

    def ingest(
        self, device_ids: Sequence[str], judge: Callable[[dict[str, Known]], IngestBatch]
    ) -> tuple[IngestBatch, bool]:
        """Judge and write one batch in one transaction: ``judge`` gets the devices' ledgers
        (locked: replicas and the device API wait their turn) and returns what to write. Returns
        the batch and whether its history was stored (see :meth:`record_mqtt_batch`).

        Raises:
            Exception: whatever the database (or ``judge``) raised; nothing was written.
        """
        with self._engine.begin() as conn:
            known = self._known(conn, sorted(set(device_ids))) if device_ids else {}
            batch = judge(known)
            return batch, self._write(conn, batch)

    def deliver(
        self,
        device_id: str,
        epoch: str,
        floor: int,
        events: Sequence[Any],
        now: float,
        *,
        budget: int = MAX_JUMP,
    ) -> tuple[Ledger, int, bool]:
        """Store what a device delivers over the device API (update events it has not seen
        stored, numbered in its sequence) and its floor; return its ledger, how many events
        were stored, and whether an update outcome may have changed a rollout. A copy already
        stored (by MQTT) counts once; at most ``budget`` new events are stored (the device's
        rate), none numbered more than :data:`MAX_JUMP` past what is stored, and none that
        would open too many missing ranges: the device keeps those and sends them again.

        Raises:
            Exception: whatever the database raised; nothing was written.
        """
        with self._engine.begin() as conn:
            known = self._known(conn, [device_id]).get(device_id)
            if known is None:
                return Ledger(), 0, False
            ledger = before = known.ledger
            batch = IngestBatch()
            stored = 0
            for event in events:
                reach = (ledger.highest if event.epoch == ledger.epoch else 0) + MAX_JUMP
                if stored >= budget or event.seq > reach:
                    break
                after, verdict = ledger.receive(event.epoch, event.seq)
                if verdict in (Verdict.DUPLICATE, Verdict.DEFERRED):
                    continue
                ledger = after
                stored += 1
                batch.events.append(event_row(event, now))
                outcome = outcome_of(event)
                if outcome is not None:
                    batch.outcomes.append(outcome)
            ledger = ledger.floor(epoch, floor)
            if ledger != before:
                batch.telemetry[device_id] = (ledger, None, stored, lost_between(before, ledger))
            self._write(conn, batch)
            return ledger, stored, bool(batch.outcomes)

    def revoked_devices(self) -> set[str]:
        """The ids of every revoked device."""
        with self._engine.connect() as conn:
            rows = conn.execute(
                sa.select(devices.c.device_id).where(devices.c.revoked_at.is_not(None))
            ).all()
        return {str(r[0]) for r in rows}

    def record_mqtt_batch(self, batch: IngestBatch) -> bool:
        """Write one batch of ingested MQTT messages in one transaction. History is written in
        a savepoint of its own: when it cannot be stored the rest still is (False)."""
        with self._engine.begin() as conn:
            return self._write(conn, batch)

    def _write(self, conn: sa.Connection, batch: IngestBatch) -> bool:
        now = int(time.time())
        with_report, counts_only = [], []
        for device_id, (ledger, report, count, gaps) in batch.telemetry.items():
            row = {
                "d": device_id,
                "e": ledger.epoch,
                "s": ledger.highest,
                "l": ledger.to_json(),
                "n": count,
                "g": gaps,
            }
            if report is None:
                counts_only.append(row)
            else:
                with_report.append(row | {"r": json.dumps(report, sort_keys=True), "t": now})
        counted = {
            "telemetry_epoch": sa.bindparam("e"),
            "last_telemetry_seq": sa.bindparam("s"),
            "telemetry_ledger": sa.bindparam("l"),
            "telemetry_count": devices.c.telemetry_count + sa.bindparam("n"),
            "telemetry_gaps": devices.c.telemetry_gaps + sa.bindparam("g"),
        }
        update = devices.update().where(devices.c.device_id == sa.bindparam("d"))
        if with_report:  # one statement, many rows
            conn.execute(
                update.values(
                    last_telemetry=sa.bindparam("r"),
                    last_telemetry_at=sa.bindparam("t"),
                    **counted,
                ),
                with_report,
            )
        if counts_only:
            conn.execute(update.values(**counted), counts_only)
        for device_id, state in batch.states.items():
            conn.execute(
                devices.update()
                .where(devices.c.device_id == device_id)
                .values(online_state=state, online_at=now)
            )
        if batch.events:
            conn.execute(device_events.insert().values(stored_at=now), batch.events)
        for outcome in batch.outcomes:
            apply_update(conn, outcome, now)
        if batch.usage:
            _add_usage(conn, batch.usage, now)
        history_stored = True
        if batch.history:
            try:
                with conn.begin_nested():
                    _add_history(conn, batch.history)
            except sa.exc.SQLAlchemyError:
                log.exception("cannot store %d telemetry history row(s)", len(batch.history))
                history_stored = False
        if batch.prune_history_before:
            for table in (telemetry_history, model_history):
                conn.execute(table.delete().where(table.c.bucket < batch.prune_history_before))
        if batch.prune_events_before:
            conn.execute(
                device_events.delete().where(device_events.c.stored_at < batch.prune_events_before)
            )
        return history_stored

    def device_events(self, device_id: str, limit: int = 100) -> list[dict[str, Any]]:
        """A device's update events from MQTT, newest first."""
        with self._engine.connect() as conn:
            rows = (
                conn.execute(
                    sa.select(device_events)
                    .where(device_events.c.device_id == device_id)
                    .order_by(device_events.c.id.desc())
                    .limit(limit)
                )
                .mappings()
                .all()
            )
        return [dict(r) for r in rows]
