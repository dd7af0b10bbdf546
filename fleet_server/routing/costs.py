"""What inference costs, per million requests: as served, and as local only or cloud only.

Pure: usage rows (added up from device telemetry) and the price table in, report rows out.
Local cost is energy: the summed inference time of local runs, times the device's power (its
hardware class's, else the default), times the energy price. Cloud cost is what the devices
counted at the cloud price they were given.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from fleet_server.routing.prices import Prices

__all__ = ["CostRow", "UsageRow", "summarize"]


@dataclass(frozen=True)
class UsageRow:
    """One device's usage of one model under one policy."""

    device_id: str
    model_name: str
    policy: str
    group: str  # the device's value of the grouping label ("" without one)
    hardware_class: str
    served: int
    local_runs: int
    local_ms: float
    cloud_requests: int
    cloud_cost: float


@dataclass(frozen=True)
class CostRow:
    model_name: str
    group: str
    policy: str
    devices: int
    served: int
    local_runs: int
    cloud_requests: int
    cost_usd: float
    per_million: float  # as served
    local_only_per_million: float | None  # None: the model never ran locally here
    cloud_only_per_million: float

    @property
    def cloud_share(self) -> float:
        return self.cloud_requests / self.served if self.served else 0.0

    @property
    def saving_vs_cloud(self) -> float:
        """1 - cost as served / cost had every request gone to the cloud."""
        if not self.cloud_only_per_million:
            return 0.0
        return 1 - self.per_million / self.cloud_only_per_million


def summarize(rows: Iterable[UsageRow], prices: Prices) -> list[CostRow]:
    """One row per (model, group, policy), sorted."""
    groups: dict[tuple[str, str, str], list[UsageRow]] = {}
    for row in rows:
        groups.setdefault((row.model_name, row.group, row.policy), []).append(row)
    result = []
    for (model, group, policy), members in sorted(groups.items()):
        served = sum(r.served for r in members)
        runs = sum(r.local_runs for r in members)
        energy = sum(
            prices.local_per_request(r.local_ms, r.hardware_class) for r in members
        )  # local_per_request of the summed time = the energy of all those runs
        cloud = sum(r.cloud_cost for r in members)
        cost = energy + cloud
        result.append(
            CostRow(
                model_name=model,
                group=group,
                policy=policy,
                devices=len({r.device_id for r in members}),
                served=served,
                local_runs=runs,
                cloud_requests=sum(r.cloud_requests for r in members),
                cost_usd=cost,
                per_million=cost / served * 1e6 if served else 0.0,
                local_only_per_million=energy / runs * 1e6 if runs else None,
                cloud_only_per_million=prices.cloud_per_request * 1e6,
            )
        )
    return result
