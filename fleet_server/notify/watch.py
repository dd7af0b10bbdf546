"""The events no single transaction makes, noticed by looking: devices offline beyond the
threshold, devices that reached their cloud budget today, and what expires soon (the
:class:`~fleet_server.renewal.status.ExpiryWatch`'s events).

Every replica looks; an event's id is made from what identifies it (the device and when it
was last heard; the device, model and day; the item and day), so the outbox keeps it once per
webhook however many replicas notice it, and however often.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

import sqlalchemy as sa

from fleet_server.registry.presence import heard_sql, presence_sql
from fleet_server.routing.budgets import device_spend
from fleet_server.routing.store import RoutingStore
from fleet_server.storage.db import Database
from fleet_server.storage.schema import devices
from fleet_server.webhooks.events import Event, EventType, event_id, rfc3339
from fleet_server.webhooks.policy import KEEP_S

__all__ = ["OFFLINE_WINDOW_S", "budget_events", "expiry_events", "offline_events"]

# Devices last heard longer ago than this are not reported (any more): an event older than the
# delivery log's 7 days could no longer be told from a new one, and would be sent again.
OFFLINE_WINDOW_S = KEEP_S - 86400
_MOST = 1000  # events of one kind per look: a fleet that went dark all at once comes in turns


def offline_events(db: Database, *, now: float, after_s: float) -> list[Event]:
    """One event per device offline (docs/mqtt.md's word) and unheard for ``after_s`` seconds
    or more, per time it went silent; revoked devices are not reported."""
    heard = heard_sql().label("heard")
    c = devices.c
    with db.engine.connect() as conn:
        rows = conn.execute(
            sa.select(c.device_id, c.name, c.labels, heard)
            .where(
                c.revoked_at.is_(None)
                & (presence_sql(now) == "offline")
                & (heard <= now - after_s)
                & (heard >= now - OFFLINE_WINDOW_S)
            )
            .order_by(heard.desc(), c.device_id)
            .limit(_MOST)
        ).all()
    events: list[Event] = []
    for device_id, name, labels, heard_at in rows:
        last = int(heard_at)
        events.append(
            Event(
                EventType.DEVICE_OFFLINE,
                {
                    "device_id": str(device_id),
                    "name": str(name),
                    "labels": json.loads(labels or "{}"),
                    "last_heard": rfc3339(last),
                    "threshold_s": int(after_s),
                },
                id=event_id(EventType.DEVICE_OFFLINE, device_id, last),
                at=int(last + after_s),  # when it crossed the threshold: the same everywhere
            )
        )
    return events


def budget_events(db: Database, routing: RoutingStore, *, now: float) -> list[Event]:
    """One event per device and model whose cloud spend today reached the policy's budget."""
    day = int(now) // 86400
    events: list[Event] = []
    for spend in device_spend(db, routing, now=now):
        if not spend.exhausted or len(events) >= _MOST:
            continue
        events.append(
            Event(
                EventType.BUDGET_REACHED,
                {
                    "device_id": spend.device_id,
                    "model": spend.model_name,
                    "policy": spend.policy,
                    "selector": spend.selector,
                    "budget_usd": spend.per_device_usd,
                    "spent_usd": round(spend.spent_usd, 6),
                    "cloud_requests": spend.cloud_requests,
                    "day": rfc3339(day * 86400)[:10],
                },
                id=event_id(EventType.BUDGET_REACHED, spend.device_id, spend.model_name, day),
                at=int(now),
            )
        )
    return events


def expiry_events(due: Iterable[Mapping[str, Any]]) -> list[Event]:
    """The expiry watch's events (``edgefleet.expiry.v1``, as its hook gets them) as
    notifications: one per item per UTC day while it stays due."""
    events: list[Event] = []
    for item in due:
        checked = int(item["checked_unix"])
        key = (item["kind"], item["name"], item["event"], checked // 86400)
        expires = int(item["expires_unix"])
        events.append(
            Event(
                EventType.EXPIRY_DUE,
                {
                    "kind": str(item["kind"]),
                    "name": str(item["name"]),
                    "state": str(item["event"]),  # expiring, expired, root keys online
                    "expires": rfc3339(expires) if expires else None,
                    "days_left": int(item["days_left"]),
                    "warn_days": int(item["warn_days"]),
                    "advice": str(item["advice"]),
                },
                id=event_id(EventType.EXPIRY_DUE, *key),
                at=checked,
            )
        )
    return events
