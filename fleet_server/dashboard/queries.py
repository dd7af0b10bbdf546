"""What the dashboard shows, aggregated in the database (it must stay fast with 10,000
devices): counts and groups in SQL, one page of devices at a time."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from fleet_server.catalog.select import DeviceProfile
from fleet_server.registry.presence import presence_sql
from fleet_server.storage.db import Database
from fleet_server.storage.schema import device_models, devices, model_history, telemetry_history
from fleet_server.telemetry.history import HISTORY_BUCKET_S

__all__ = [
    "DevicePage",
    "FleetSummary",
    "HistoryPoint",
    "device_history",
    "device_page",
    "fleet_history",
    "fleet_summary",
    "history_window",
]

PAGE = 50


@dataclass
class FleetSummary:
    devices: int = 0
    revoked: int = 0
    states: dict[str, int] = field(default_factory=dict)  # presence word -> unrevoked devices
    seen_recently: int = 0  # checked in within 10 minutes
    versions: list[tuple[str, str, int]] = field(default_factory=list)  # model, version, devices
    classes: dict[str, int] = field(default_factory=dict)  # hardware class -> devices
    edgetpu: int = 0


def fleet_summary(db: Database) -> FleetSummary:
    summary = FleetSummary()
    now = int(time.time())
    with db.engine.connect() as conn:
        word = presence_sql(now).label("presence")
        for state, count in conn.execute(sa.select(word, sa.func.count()).group_by(word)):
            if state == "revoked":
                summary.revoked += int(count)
                continue
            summary.devices += int(count)
            summary.states[str(state)] = summary.states.get(str(state), 0) + int(count)
        summary.seen_recently = int(
            conn.execute(
                sa.select(sa.func.count()).where(
                    (devices.c.last_seen >= now - 600) & devices.c.revoked_at.is_(None)
                )
            ).scalar_one()
        )
        summary.versions = [
            (str(m), str(v), int(n))
            for m, v, n in conn.execute(
                sa.select(
                    device_models.c.model_name, device_models.c.active_version, sa.func.count()
                )
                .where(device_models.c.active_version.is_not(None))
                .group_by(device_models.c.model_name, device_models.c.active_version)
                .order_by(device_models.c.model_name, device_models.c.active_version)
            )
        ]
        # Capabilities are JSON: group identical documents in SQL, classify each once.
        for caps, count in conn.execute(
            sa.select(devices.c.capabilities, sa.func.count())
            .where(devices.c.revoked_at.is_(None))
            .group_by(devices.c.capabilities)
        ):
            profile = DeviceProfile.from_capabilities(json.loads(caps or "{}"))
            klass = profile.hardware_class
            summary.classes[klass] = summary.classes.get(klass, 0) + int(count)
            if profile.edgetpu:
                summary.edgetpu += int(count)
    return summary


@dataclass
class DevicePage:
    total: int
    offset: int
    rows: list[dict[str, Any]]


def device_page(
    db: Database, *, offset: int = 0, search: str = "", limit: int = PAGE
) -> DevicePage:
    """One page of ``limit`` devices by id from ``offset``, with their models, filtered by id
    or name."""
    where: sa.ColumnElement[bool] = devices.c.revoked_at.is_(None)
    if search:
        pattern = f"%{search[:64]}%"
        where = where & (devices.c.device_id.like(pattern) | devices.c.name.like(pattern))
    with db.engine.connect() as conn:
        total = int(conn.execute(sa.select(sa.func.count()).where(where)).scalar_one())
        rows = [
            dict(r)
            for r in conn.execute(
                sa.select(
                    devices.c.device_id,
                    devices.c.labels,
                    devices.c.capabilities,
                    devices.c.last_seen,
                    presence_sql(time.time()).label("presence"),
                )
                .where(where)
                .order_by(devices.c.device_id)
                .offset(max(0, offset))
                .limit(max(1, min(limit, 1000)))
            ).mappings()
        ]
        ids = [r["device_id"] for r in rows]
        models: dict[str, list[str]] = {}
        if ids:
            for device_id, name, version, state in conn.execute(
                sa.select(
                    device_models.c.device_id,
                    device_models.c.model_name,
                    device_models.c.version,
                    device_models.c.state,
                ).where(device_models.c.device_id.in_(ids))
            ):
                models.setdefault(str(device_id), []).append(f"{name} {version} {state}")
    for row in rows:
        row["labels"] = json.loads(row["labels"] or "{}")
        row["hardware_class"] = DeviceProfile.from_capabilities(
            json.loads(row.pop("capabilities") or "{}")
        ).hardware_class
        row["models"] = sorted(models.get(row["device_id"], []))
    return DevicePage(total, max(0, offset), rows)


@dataclass(frozen=True)
class HistoryPoint:
    bucket: int  # unix seconds at the start of a HISTORY_BUCKET_S bucket
    requests: int  # run locally (errors included)
    errors: int
    cloud_requests: int
    p50_ms: float
    p95_ms: float


def history_window(hours: float, now: float | None = None) -> tuple[int, int]:
    """The first and the last (current) bucket of the ``hours`` that end now."""
    current = int(time.time() if now is None else now) // HISTORY_BUCKET_S * HISTORY_BUCKET_S
    slots = max(1, int(hours * 3600) // HISTORY_BUCKET_S)
    return current - (slots - 1) * HISTORY_BUCKET_S, current


def device_history(
    db: Database, device_id: str, *, hours: float = 24, now: float | None = None
) -> dict[str, list[HistoryPoint]]:
    """A device's telemetry in the ``hours`` of buckets that end with the current one, per
    model, oldest first (buckets stamped later, by a device whose clock is ahead, are left
    out)."""
    since, current = history_window(hours, now)
    h = telemetry_history.c
    result: dict[str, list[HistoryPoint]] = {}
    with db.engine.connect() as conn:
        for r in conn.execute(
            sa.select(h.model_name, h.bucket, h.requests, h.errors, h.cloud_requests,
                      h.p50_ms, h.p95_ms)
            .where((h.device_id == device_id) & (h.bucket >= since) & (h.bucket <= current))
            .order_by(h.model_name, h.bucket)
        ):  # fmt: skip
            result.setdefault(str(r[0]), []).append(
                HistoryPoint(int(r[1]), int(r[2]), int(r[3]), int(r[4]), float(r[5]),
                             float(r[6]))
            )  # fmt: skip
    return result


def fleet_history(
    db: Database, *, hours: float = 24, now: float | None = None
) -> dict[str, list[HistoryPoint]]:
    """Each model's telemetry over the fleet, per bucket: requests, errors and cloud requests
    added up; as ``p95_ms`` the worst device's p95, as ``p50_ms`` the typical device's p95
    (weighted by requests)."""
    since, current = history_window(hours, now)
    m = model_history.c
    result: dict[str, list[HistoryPoint]] = {}
    with db.engine.connect() as conn:
        for r in conn.execute(
            sa.select(m.model_name, m.bucket, m.requests, m.errors, m.cloud_requests,
                      m.p95_weighted_ms, m.p95_max_ms)
            .where((m.bucket >= since) & (m.bucket <= current))
            .order_by(m.model_name, m.bucket)
        ):  # fmt: skip
            requests = int(r[2])
            typical = float(r[5]) / requests if requests else 0.0
            result.setdefault(str(r[0]), []).append(
                HistoryPoint(int(r[1]), requests, int(r[3]), int(r[4]), typical, float(r[6]))
            )
    return result
