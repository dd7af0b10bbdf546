"""Cloud spend today against the routing policies' daily budgets (per device), from the usage
devices report: what the dashboard's costs page and `edgefleet costs` show, and what tells
operators that a device reached its budget (``budget.reached``, docs/notifications.md)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import sqlalchemy as sa

from fleet_server.routing.store import RoutingRow, RoutingStore
from fleet_server.storage.db import Database
from fleet_server.storage.schema import devices, usage

__all__ = ["BudgetRow", "DeviceSpend", "budget_use", "device_spend"]


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


@dataclass(frozen=True)
class DeviceSpend:
    """One device's cloud spend today on one model, against its policy's daily budget."""

    device_id: str
    model_name: str
    policy: str  # the server's policy, or "device" when only the device's config routes it
    selector: dict[str, str]
    per_device_usd: float | None  # the policy's daily spend budget per device; None: none
    cloud_requests: int
    spent_usd: float
    exhausted: bool  # the next cloud call would exceed the budget: the device stops calling


def device_spend(
    db: Database, routing: RoutingStore, *, now: float | None = None
) -> list[DeviceSpend]:
    """Cloud spend today (UTC) per device and model, with the server policy that routes it
    (matched by the device's labels, as at check-in), sorted by device and model."""
    today = int(time.time() if now is None else now) // 86400
    policies = routing.list()
    price = routing.prices().cloud_per_request
    matched: dict[str, dict[str, RoutingRow]] = {}  # labels JSON -> model -> policy
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
    result = []
    for (device_id, model), (cost, requests) in sorted(per_device.items()):
        policy = matched[labels_of[device_id]].get(model)
        budget = policy.max_spend_per_day if policy is not None else None
        result.append(
            DeviceSpend(
                device_id=device_id,
                model_name=model,
                policy=policy.policy if policy is not None else "device",
                selector=dict(policy.selector) if policy is not None else {},
                per_device_usd=budget,
                cloud_requests=requests,
                spent_usd=cost,
                # A device stops calling the cloud once the next call would exceed its budget.
                exhausted=budget is not None and cost + price > budget + 1e-12,
            )
        )
    return result


def budget_use(db: Database, routing: RoutingStore, *, now: float | None = None) -> list[BudgetRow]:
    """Cloud spend today per model and the server policy that routes it, against the policy's
    daily budget per device (:func:`device_spend`, summed)."""
    rows: dict[tuple[str, str, str], BudgetRow] = {}
    for spend in device_spend(db, routing, now=now):
        group = (spend.model_name, spend.policy, json.dumps(spend.selector, sort_keys=True))
        row = rows.setdefault(
            group, BudgetRow(spend.model_name, spend.policy, spend.selector, spend.per_device_usd)
        )
        row.devices += 1
        row.cloud_requests += spend.cloud_requests
        row.spent_usd += spend.spent_usd
        budget = spend.per_device_usd
        if budget is not None:
            row.top_use = max(row.top_use, spend.spent_usd / budget if budget else 1.0)
            row.exhausted += spend.exhausted
    return [rows[k] for k in sorted(rows)]
