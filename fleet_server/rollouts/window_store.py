"""Maintenance windows in the database, and the facts about devices their verdicts need (labels
and time zone). The decisions are pure (:mod:`fleet_server.rollouts.windows`)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from fleet_server.errors import BadRequestError, NotFoundError
from fleet_server.registry.labels import matches
from fleet_server.rollouts.members import BATCH, active_devices
from fleet_server.rollouts.windows import (
    MAX_WINDOWS,
    Verdict,
    Window,
    device_zone,
    make_window,
    next_change,
    verdict,
)
from fleet_server.storage.db import Database, bump_generation
from fleet_server.storage.schema import devices, maintenance_windows

__all__ = ["DeviceFacts", "WindowRow", "WindowStore", "device_facts", "windows_in"]


@dataclass(frozen=True)
class WindowRow:
    window: Window
    created_at: int
    created_by: str
    devices: int = 0  # devices (not revoked) its selector matches now


@dataclass(frozen=True)
class DeviceFacts:
    """What a window's verdict needs to know of a device."""

    labels: Mapping[str, str]
    zone: ZoneInfo


def _window(r: Any) -> Window:
    return Window(
        window_id=int(r["window_id"]),
        selector=json.loads(r["selector"]),
        days=frozenset(d for d in range(7) if int(r["days"]) >> d & 1),
        start=int(r["start_minute"]),
        end=int(r["end_minute"]),
    )


def windows_in(conn: sa.Connection) -> list[Window]:
    """Every maintenance window, oldest first."""
    query = sa.select(maintenance_windows).order_by(maintenance_windows.c.window_id)
    return [_window(r) for r in conn.execute(query).mappings()]


def _zone(capabilities_json: str) -> ZoneInfo:
    try:
        name = json.loads(capabilities_json or "{}").get("timezone", "")
    except (ValueError, AttributeError):
        name = ""
    return device_zone(name if isinstance(name, str) else "")


def device_facts(conn: sa.Connection, device_ids: Collection[str]) -> dict[str, DeviceFacts]:
    """Labels and time zone of these devices (those that exist)."""
    ids = sorted(device_ids)
    result: dict[str, DeviceFacts] = {}
    for start in range(0, len(ids), BATCH):
        rows = conn.execute(
            sa.select(devices.c.device_id, devices.c.labels, devices.c.capabilities).where(
                devices.c.device_id.in_(ids[start : start + BATCH])
            )
        )
        for device_id, labels, capabilities in rows:
            result[str(device_id)] = DeviceFacts(json.loads(labels or "{}"), _zone(capabilities))
    return result


class WindowStore:
    """Adds, lists and removes maintenance windows; answers whether a device is inside one."""

    def __init__(self, db: Database) -> None:
        self._engine = db.engine
        self._lock = threading.Lock()
        self._cached: tuple[int, list[Window]] | None = None

    def add(
        self,
        *,
        selector: Mapping[str, str],
        days: str,
        start: str,
        end: str,
        created_by: str,
        now: int | None = None,
    ) -> WindowRow:
        """Add a window (see :func:`windows.make_window` for the words).

        Raises:
            BadRequestError: bad days or times, or the fleet has :data:`MAX_WINDOWS` already.
        """
        window = make_window(0, selector, days, start, end)
        now = int(time.time()) if now is None else now
        with self._engine.begin() as conn:
            bump_generation(conn)  # first: it also orders two adds at once (the row lock)
            count = conn.execute(sa.select(sa.func.count()).select_from(maintenance_windows))
            if count.scalar_one() >= MAX_WINDOWS:
                raise BadRequestError(
                    f"the fleet has {MAX_WINDOWS} maintenance windows already; remove one first"
                )
            result = conn.execute(
                maintenance_windows.insert().values(
                    selector=json.dumps(dict(selector), sort_keys=True),
                    days=sum(1 << d for d in window.days),
                    start_minute=window.start,
                    end_minute=window.end,
                    created_at=now,
                    created_by=created_by[:128],
                )
            )
            key = result.inserted_primary_key
            window_id = int(key[0]) if key is not None else 0
        return next(r for r in self.list_windows() if r.window.window_id == window_id)

    def list_windows(self) -> list[WindowRow]:
        """Every window, oldest first, with how many devices it holds now."""
        with self._engine.connect() as conn:
            rows = (
                conn.execute(
                    sa.select(maintenance_windows).order_by(maintenance_windows.c.window_id)
                )
                .mappings()
                .all()
            )
            labels = [lab for _d, lab in active_devices(conn)] if rows else []
        return [
            WindowRow(
                _window(r),
                int(r["created_at"]),
                str(r["created_by"]),
                sum(1 for lab in labels if matches(json.loads(r["selector"]), lab)),
            )
            for r in rows
        ]

    def remove(self, window_id: int) -> WindowRow:
        """Remove a window; the devices it held follow their other windows, or none.

        Raises:
            NotFoundError: no such window.
        """
        with self._engine.begin() as conn:
            row = (
                conn.execute(
                    sa.select(maintenance_windows).where(
                        maintenance_windows.c.window_id == window_id
                    )
                )
                .mappings()
                .first()
            )
            if row is None:
                raise NotFoundError(
                    f"maintenance window {window_id} does not exist ('edgefleet windows list')"
                )
            conn.execute(
                maintenance_windows.delete().where(maintenance_windows.c.window_id == window_id)
            )
            bump_generation(conn)
        return WindowRow(_window(row), int(row["created_at"]), str(row["created_by"]))

    def current(self, generation: int) -> list[Window]:
        """Every window, read again only when the fleet generation moved (adding or removing
        one bumps it): a check-in's look costs nothing while nothing changed."""
        with self._lock:
            cached = self._cached
        if cached is not None and cached[0] == generation:
            return cached[1]
        with self._engine.connect() as conn:
            found = windows_in(conn)
        with self._lock:
            self._cached = (generation, found)
        return found

    def device_verdict(
        self, device_id: str, windows: list[Window], now: float
    ) -> tuple[Verdict, float | None]:
        """Whether a device may be told to update at ``now``, and when that may change next
        (None: never, no window holds it)."""
        with self._engine.connect() as conn:
            facts = device_facts(conn, [device_id]).get(device_id)
        if facts is None:
            return Verdict(False, True), None
        found = verdict(windows, facts.labels, facts.zone, now)
        return found, next_change(windows, facts.labels, facts.zone, now)
