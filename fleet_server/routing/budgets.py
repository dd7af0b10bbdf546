"""Cloud spend today against the routing policies' daily budgets (per device), from the usage
devices report: what the dashboard's costs page and `edgefleet costs` show."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import sqlalchemy as sa

from fleet_server.routing.store import RoutingRow, RoutingStore
from fleet_server.storage.db import Database
from fleet_server.storage.schema import devices, usage

__all__ = ["BudgetRow", "budget_use"]


@dataclass
class BudgetRow:
    """Today's (UTC) cloud spend of the devices one routing policy applies to."""

    model_name: str
    policy: str  # the server's policy, or "device" when only the device's config routes it
    selector: dict[str, str]
    per_device_usd: float | None  # the policy's daily spend budget per device; None: none
    devices: int = 0  # devices that called the cloud today
    cloud_requests: int = 0
    spent_usd: float = 0.0
    exhausted: int = 0  # devices whose spend reached the budget (their cloud calls stop)
    top_use: float = 0.0  # the largest one device's share of its budget

    @property
    def use(self) -> float | None:
        """Spent today over what these devices may spend in a day."""
        if self.per_device_usd is None or not self.devices:
            return None
        return self.spent_usd / (self.per_device_usd * self.devices) if self.per_device_usd else 1.0


def budget_use(db: Database, routing: RoutingStore, *, now: float | None = None) -> list[BudgetRow]:
    """Cloud spend today per model and the server policy that routes it, against the policy's
    daily budget per device. A device's policy is matched by its labels, as at check-in."""
    today = int(time.time() if now is None else now) // 86400
    policies = routing.list()
    price = routing.prices().cloud_per_request
    matched: dict[str, dict[str, RoutingRow]] = {}  # labels JSON -> model -> policy
    rows: dict[tuple[str, str, str], BudgetRow] = {}
    with db.engine.connect() as conn:
        spend = conn.execute(
            sa.select(usage.c.device_id, usage.c.model_name, usage.c.day_cloud_requests,
                      usage.c.day_cloud_cost, devices.c.labels)
            .join(devices, devices.c.device_id == usage.c.device_id)
            .where((usage.c.day == today) & (usage.c.day_cloud_requests > 0))
        ).all()  # fmt: skip
    per_device: dict[tuple[str, str], tuple[float, int]] = {}
    for device_id, model, requests, cost, labels in spend:
        key = (str(device_id), str(model))  # a device may change policy within a day
        before = per_device.get(key, (0.0, 0))
        per_device[key] = (before[0] + float(cost), before[1] + int(requests))
        if labels not in matched:
            matched[labels] = routing.for_device(json.loads(labels or "{}"), policies)
    labels_of = {str(d): labels for d, _m, _r, _c, labels in spend}
    for (device_id, model), (cost, requests) in sorted(per_device.items()):
        policy = matched[labels_of[device_id]].get(model)
        selector = policy.selector if policy is not None else {}
        name = policy.policy if policy is not None else "device"
        budget = policy.max_spend_per_day if policy is not None else None
        group = (model, name, json.dumps(selector, sort_keys=True))
        row = rows.setdefault(group, BudgetRow(model, name, dict(selector), budget))
        row.devices += 1
        row.cloud_requests += requests
        row.spent_usd += cost
        if budget is not None:
            share = cost / budget if budget else 1.0
            row.top_use = max(row.top_use, share)
            # A device stops calling the cloud once the next call would exceed its budget.
            row.exhausted += cost + price > budget + 1e-12
    return [rows[k] for k in sorted(rows)]
