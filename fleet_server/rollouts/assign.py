"""Telling a rollout's waiting devices to update (in the controller's step transaction): the
devices of the started waves, up to the concurrency cap, each only inside its maintenance
window (a device held by a closed window stays waiting, and no slot of the cap is spent on it).
Also how many waiting devices wait for their window, per wave, for the rollout's status."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from fleet_server.rollouts.members import BATCH
from fleet_server.rollouts.states import DeviceState
from fleet_server.rollouts.window_store import device_facts
from fleet_server.rollouts.windows import Window, verdict
from fleet_server.storage.schema import devices, rollout_devices

__all__ = ["assign", "outside_windows", "p95_before"]


def p95_before(report_json: str, model_name: str, version: str) -> float | None:
    """A model's p95 latency in a device's stored telemetry, unless it is already ``version``."""
    try:
        report = json.loads(report_json)
    except ValueError:
        return None
    for model in report.get("models", ()):
        if model.get("model_name") == model_name and model.get("version") != version:
            p95 = float(model.get("latency", {}).get("p95_ms", 0.0))
            return p95 if p95 > 0 else None
    return None


def _waiting(rollout_id: int, up_to_wave: int) -> sa.Select[Any]:
    c = rollout_devices.c
    return (
        sa.select(c.device_id, c.wave)
        .where(
            (c.rollout_id == rollout_id) & (c.state == DeviceState.WAITING) & (c.wave <= up_to_wave)
        )
        .order_by(c.wave, c.device_id)
    )


def _inside(
    conn: sa.Connection, device_ids: Sequence[str], windows: Sequence[Window], now: float
) -> list[str]:
    """Those of ``device_ids`` (in order) no closed window holds at ``now``."""
    facts = device_facts(conn, device_ids)
    return [
        d
        for d in device_ids
        if d in facts and verdict(windows, facts[d].labels, facts[d].zone, now).allowed
    ]


def assign(
    conn: sa.Connection,
    *,
    rollout_id: int,
    model_name: str,
    version: str,
    up_to_wave: int,
    max_concurrent: int,
    device_timeout_s: int,
    windows: Sequence[Window],
    now: int,
) -> list[str]:
    """Tell waiting devices of waves ``0..up_to_wave`` to update; return their ids."""
    key = rollout_devices.c.rollout_id == rollout_id
    limit: int | None = None
    if max_concurrent:
        in_flight = conn.execute(
            sa.select(sa.func.count()).where(
                key
                & (rollout_devices.c.state == DeviceState.ASSIGNED)
                & (rollout_devices.c.assigned_at >= now - device_timeout_s)
            )
        ).scalar_one()
        limit = max(0, max_concurrent - int(in_flight))
        if limit == 0:
            return []
    query = _waiting(rollout_id, up_to_wave)
    if not windows:
        rows = conn.execute(query if limit is None else query.limit(limit))
        chosen = [str(r[0]) for r in rows]
    else:
        # Whole batches in order, each filtered by its devices' windows, until the cap is met.
        chosen = []
        waiting = [str(r[0]) for r in conn.execute(query)]
        for start in range(0, len(waiting), BATCH):
            chosen += _inside(conn, waiting[start : start + BATCH], windows, now)
            if limit is not None and len(chosen) >= limit:
                chosen = chosen[:limit]
                break
    for start in range(0, len(chosen), BATCH):
        part = chosen[start : start + BATCH]
        conn.execute(
            rollout_devices.update()
            .where(key & rollout_devices.c.device_id.in_(part))
            .values(state=DeviceState.ASSIGNED, assigned_at=now, updated_at=now)
        )
        baselines = [
            {"d": device_id, "b": p95}
            for device_id, report in conn.execute(
                sa.select(devices.c.device_id, devices.c.last_telemetry).where(
                    devices.c.device_id.in_(part) & devices.c.last_telemetry.is_not(None)
                )
            )
            if (p95 := p95_before(report, model_name, version))
        ]
        if baselines:
            conn.execute(
                rollout_devices.update()
                .where(key & (rollout_devices.c.device_id == sa.bindparam("d")))
                .values(baseline_p95_ms=sa.bindparam("b")),
                baselines,
            )
    return chosen


def outside_windows(
    conn: sa.Connection,
    rollout_id: int,
    up_to_wave: int,
    windows: Sequence[Window],
    now: float,
) -> dict[int, int]:
    """Wave -> how many of its waiting devices (waves ``0..up_to_wave``) a closed maintenance
    window holds at ``now``: they wait for their window, not for the rollout."""
    if not windows:
        return {}
    counts: dict[int, int] = {}
    waiting = [(str(d), int(w)) for d, w in conn.execute(_waiting(rollout_id, up_to_wave))]
    for start in range(0, len(waiting), BATCH):
        part = waiting[start : start + BATCH]
        inside = set(_inside(conn, [d for d, _w in part], windows, now))
        for device_id, wave in part:
            if device_id not in inside:
                counts[wave] = counts.get(wave, 0) + 1
    return counts
