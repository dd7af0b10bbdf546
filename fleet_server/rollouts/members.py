"""The devices of a rollout: who matches it, and their rows, planned into waves (in the caller's
transaction)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

import sqlalchemy as sa

from fleet_server.registry.labels import matches
from fleet_server.rollouts.plan import Wave, assign_waves
from fleet_server.rollouts.states import DeviceState
from fleet_server.storage.schema import devices, rollout_devices

__all__ = ["BATCH", "active_devices", "insert_devices", "matching", "replan"]

BATCH = 500  # rows per statement


def active_devices(
    conn: sa.Connection, exclude_rollout: int | None = None
) -> list[tuple[str, dict[str, str]]]:
    """Every device not revoked, with its labels (but those already in ``exclude_rollout``)."""
    query = sa.select(devices.c.device_id, devices.c.labels).where(devices.c.revoked_at.is_(None))
    if exclude_rollout is not None:
        query = query.where(
            ~devices.c.device_id.in_(
                sa.select(rollout_devices.c.device_id).where(
                    rollout_devices.c.rollout_id == exclude_rollout
                )
            )
        )
    return [(str(r[0]), json.loads(r[1])) for r in conn.execute(query)]


def matching(
    conn: sa.Connection, selector: Mapping[str, str], exclude_rollout: int | None = None
) -> list[str]:
    """The devices not revoked that carry every label of ``selector``."""
    return [d for d, labels in active_devices(conn, exclude_rollout) if matches(selector, labels)]


def insert_devices(conn: sa.Connection, rollout_id: int, plan: Mapping[str, int], now: int) -> None:
    """Add devices to a rollout, waiting in their waves (device id -> wave)."""
    rows = [
        {
            "rollout_id": rollout_id,
            "device_id": device_id,
            "wave": wave,
            "state": DeviceState.WAITING,
            "assigned_at": None,
            "updated_at": now,
        }
        for device_id, wave in plan.items()
    ]
    for start in range(0, len(rows), BATCH):
        conn.execute(rollout_devices.insert(), rows[start : start + BATCH])


def replan(
    conn: sa.Connection,
    rollout_id: int,
    selector: Mapping[str, str],
    waves: Sequence[Wave],
    now: int,
) -> int:
    """Plan a rollout that told no device anything yet afresh over the devices matching it now
    (a scheduled rollout at its start: the fleet may have changed since it was created).
    Returns how many devices it has."""
    conn.execute(rollout_devices.delete().where(rollout_devices.c.rollout_id == rollout_id))
    plan = assign_waves(rollout_id, matching(conn, selector), waves)
    insert_devices(conn, rollout_id, plan, now)
    return len(plan)
