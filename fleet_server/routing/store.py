"""Cloud routing policies and the price table in the database.

A policy applies to one model on the devices matching its label selector; when several match a
device, the one with the most selector labels wins (then the newest). Changing one bumps the
fleet generation, so devices hear of it at their next check-in.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import sqlalchemy as sa

from fleet_server.catalog.select import DeviceProfile
from fleet_server.errors import BadRequestError, NotFoundError
from fleet_server.registry.labels import matches
from fleet_server.routing.costs import UsageRow
from fleet_server.routing.prices import Prices
from fleet_server.storage.db import Database, bump_generation
from fleet_server.storage.schema import devices, routing_policies, settings
from fleet_server.storage.schema import usage as usage_table

__all__ = ["POLICIES", "RoutingRow", "RoutingStore"]

POLICIES = ("local", "local_then_cloud", "cascade", "cloud")


@dataclass(frozen=True)
class RoutingRow:
    model_name: str
    selector: dict[str, str]
    policy: str
    threshold: float = 0.0
    latency_budget_ms: float = 0.0
    cloud_model: str = ""
    max_per_minute: int | None = None
    max_spend_per_day: float | None = None
    updated_at: int = 0
    updated_by: str = ""

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise BadRequestError(
                f"routing policy {self.policy!r} is not one of {', '.join(POLICIES)}"
            )
        if not 0 <= self.threshold <= 1:
            raise BadRequestError(f"cascade threshold {self.threshold} is outside 0..1")
        if self.policy == "cascade" and self.threshold == 0:
            raise BadRequestError("a cascade needs a threshold above 0 (e.g. 0.6)")
        if not 0 <= self.latency_budget_ms <= 3_600_000:
            raise BadRequestError(f"latency budget {self.latency_budget_ms} ms is out of range")
        if (self.max_per_minute is not None and not 0 <= self.max_per_minute <= 10**9) or (
            self.max_spend_per_day is not None and not 0 <= self.max_spend_per_day <= 1e9
        ):
            raise BadRequestError("cloud budgets must be within 0..1e9 (0 stops cloud calls)")

    def params(self) -> str:
        fields = asdict(self)
        for key in ("model_name", "selector", "policy", "updated_at", "updated_by"):
            fields.pop(key)
        return json.dumps(fields, sort_keys=True)


def _row(r: Any) -> RoutingRow:
    return RoutingRow(
        model_name=r["model_name"],
        selector=json.loads(r["selector"]),
        policy=r["policy"],
        updated_at=int(r["updated_at"]),
        updated_by=r["updated_by"],
        **json.loads(r["params"] or "{}"),
    )


class RoutingStore:
    """Routing policies and prices."""

    def __init__(self, db: Database) -> None:
        self._engine = db.engine

    def set(self, row: RoutingRow, actor: str) -> RoutingRow:
        """Create or replace the policy of a model for a selector."""
        key = json.dumps(dict(row.selector), sort_keys=True)
        if len(key) > 1024:
            raise BadRequestError("the selector is longer than 1024 characters")
        values = {
            "policy": row.policy,
            "params": row.params(),
            "updated_at": int(time.time()),
            "updated_by": actor[:128],
        }
        where = (routing_policies.c.model_name == row.model_name) & (
            routing_policies.c.selector == key
        )
        with self._engine.begin() as conn:
            if conn.execute(routing_policies.update().where(where).values(values)).rowcount == 0:
                conn.execute(
                    routing_policies.insert().values(
                        model_name=row.model_name, selector=key, **values
                    )
                )
            bump_generation(conn)
            stored = conn.execute(sa.select(routing_policies).where(where)).mappings().one()
        return _row(stored)

    def delete(self, model_name: str, selector: Mapping[str, str]) -> None:
        """Remove a policy (its devices fall back to a broader one, or to local).

        Raises:
            NotFoundError: there is none for that model and selector.
        """
        key = json.dumps(dict(selector), sort_keys=True)
        with self._engine.begin() as conn:
            result = conn.execute(
                routing_policies.delete().where(
                    (routing_policies.c.model_name == model_name)
                    & (routing_policies.c.selector == key)
                )
            )
            if result.rowcount == 0:
                raise NotFoundError(f"no routing policy for {model_name} with selector {key}")
            bump_generation(conn)

    def list(self, model_name: str = "") -> list[RoutingRow]:
        query = sa.select(routing_policies).order_by(
            routing_policies.c.model_name, routing_policies.c.selector
        )
        if model_name:
            query = query.where(routing_policies.c.model_name == model_name)
        with self._engine.connect() as conn:
            return [_row(r) for r in conn.execute(query).mappings()]

    def for_device(
        self, labels: Mapping[str, str], rows: Sequence[RoutingRow] | None = None
    ) -> dict[str, RoutingRow]:
        """Model name -> the policy that applies to a device with these labels (among
        ``rows``, default every policy)."""
        best: dict[str, RoutingRow] = {}
        for row in self.list() if rows is None else rows:
            if not matches(row.selector, labels):
                continue
            current = best.get(row.model_name)
            rank = (len(row.selector), row.updated_at)
            if current is None or rank > (len(current.selector), current.updated_at):
                best[row.model_name] = row
        return best

    def prices(self) -> Prices:
        with self._engine.connect() as conn:
            raw = conn.execute(
                sa.select(settings.c.value).where(settings.c.key == "prices")
            ).scalar()
        return Prices(**json.loads(raw)) if raw else Prices()

    def set_prices(self, prices: Prices) -> None:
        value = json.dumps(asdict(prices), sort_keys=True)
        with self._engine.begin() as conn:
            updated = conn.execute(
                settings.update().where(settings.c.key == "prices").values(value=value)
            )
            if updated.rowcount == 0:
                conn.execute(settings.insert().values(key="prices", value=value))
            bump_generation(conn)  # devices carry the cloud price for their spend budgets

    def usage(self, group_by: str = "", model_name: str = "") -> Sequence[UsageRow]:
        """Usage rows with each device's group (its ``group_by`` label) and hardware class."""
        query = sa.select(usage_table, devices.c.labels, devices.c.capabilities).join(
            devices, devices.c.device_id == usage_table.c.device_id
        )
        if model_name:
            query = query.where(usage_table.c.model_name == model_name)
        result = []
        classes: dict[str, str] = {}
        with self._engine.connect() as conn:
            for r in conn.execute(query).mappings():
                caps = r["capabilities"] or "{}"
                if caps not in classes:
                    classes[caps] = DeviceProfile.from_capabilities(json.loads(caps)).hardware_class
                labels = json.loads(r["labels"] or "{}")
                result.append(
                    UsageRow(
                        device_id=r["device_id"],
                        model_name=r["model_name"],
                        policy=r["policy"],
                        group=labels.get(group_by, "") if group_by else "",
                        hardware_class=classes[caps],
                        served=int(r["served"]),
                        local_runs=int(r["local_runs"]),
                        local_ms=float(r["local_ms"]),
                        cloud_requests=int(r["cloud_requests"]),
                        cloud_cost=float(r["cloud_cost"]),
                    )
                )
        return result
