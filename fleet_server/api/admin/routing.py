"""Cloud routing policies, the price table and the cost report."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fleet_server.api._errors import rpc_errors
from fleet_server.api.admin import wire
from fleet_server.api.admin._base import (
    AdminBase,
    actor,
    audited,
)
from fleet_server.api.identity import require_admin
from fleet_server.errors import (
    BadRequestError,
    NotFoundError,
    TransientError,
)
from fleet_server.registry.labels import check_labels, matches
from fleet_server.routing.budgets import budget_use
from fleet_server.routing.costs import summarize
from fleet_server.routing.prices import Prices
from fleet_server.routing.store import RoutingRow
from protos import admin_pb2 as pb
from protos.names import is_name

log = logging.getLogger(__name__)


class RoutingAdmin(AdminBase):
    @rpc_errors
    @audited("SetRoutingPolicy", lambda r: f"routing {r.model_name}")
    def SetRoutingPolicy(  # noqa: N802
        self, request: pb.RoutingPolicyInfo, context: Any
    ) -> pb.RoutingPolicyInfo:
        require_admin(context)
        if not is_name(request.model_name):
            raise BadRequestError(f"model name {request.model_name!r} is not valid")
        if self._ctx.catalog.newest_version(request.model_name) is None:
            raise NotFoundError(
                f"no model named {request.model_name!r} in the catalog; push it first"
            )
        check_labels(request.selector, "selector label")
        row = self._ctx.routing.set(
            RoutingRow(
                model_name=request.model_name,
                selector=dict(request.selector),
                policy=request.policy,
                threshold=round(request.threshold, 6),
                latency_budget_ms=round(request.latency_budget_ms, 3),
                cloud_model=request.cloud_model,
                max_per_minute=request.max_per_minute
                if request.HasField("max_per_minute")
                else None,
                max_spend_per_day=request.max_spend_per_day
                if request.HasField("max_spend_per_day")
                else None,
            ),
            actor(context),
        )
        self._tell_routing(row.selector)
        return wire.routing_info(row)

    def _tell_routing(self, selector: Mapping[str, str]) -> None:
        """Ask the devices a policy change may concern to check in for it now (over MQTT,
        best effort: the others pick it up at their next check-in)."""
        send = self._ctx.send_command
        if send is None:
            return
        told = 0
        for device in self._ctx.devices.list_devices():
            if device.revoked_at or not matches(selector, device.labels):
                continue
            try:
                send(device.device_id, "routing")
                told += 1
            except TransientError as exc:
                log.warning("cannot tell devices about the routing change: %s", exc)
                return
        log.info("told %d device(s) of a routing change", told)

    @rpc_errors
    def ListRoutingPolicies(  # noqa: N802
        self, request: pb.ListRoutingPoliciesRequest, context: Any
    ) -> pb.ListRoutingPoliciesResponse:
        require_admin(context)
        rows = self._ctx.routing.list(request.model_name)
        return pb.ListRoutingPoliciesResponse(policies=[wire.routing_info(r) for r in rows])

    @rpc_errors
    @audited("DeleteRoutingPolicy", lambda r: f"routing {r.model_name}")
    def DeleteRoutingPolicy(  # noqa: N802
        self, request: pb.DeleteRoutingPolicyRequest, context: Any
    ) -> pb.ListRoutingPoliciesResponse:
        require_admin(context)
        self._ctx.routing.delete(request.model_name, dict(request.selector))
        self._tell_routing(dict(request.selector))
        rows = self._ctx.routing.list(request.model_name)
        return pb.ListRoutingPoliciesResponse(policies=[wire.routing_info(r) for r in rows])

    @rpc_errors
    @audited("SetPrices", lambda r: "prices")
    def SetPrices(self, request: pb.PriceTable, context: Any) -> pb.PriceTable:  # noqa: N802
        require_admin(context)
        prices = Prices(
            cloud_per_request=request.cloud_per_request,
            energy_per_kwh=request.energy_per_kwh,
            device_power_w=request.device_power_w,
            power_by_class=dict(request.power_by_class),
        )
        self._ctx.routing.set_prices(prices)
        return wire.price_table(prices)

    @rpc_errors
    def GetPrices(self, request: pb.GetPricesRequest, context: Any) -> pb.PriceTable:  # noqa: N802
        require_admin(context)
        return wire.price_table(self._ctx.routing.prices())

    @rpc_errors
    def GetCosts(self, request: pb.GetCostsRequest, context: Any) -> pb.CostReport:  # noqa: N802
        require_admin(context)
        prices = self._ctx.routing.prices()
        rows = summarize(self._ctx.routing.usage(request.group_by, request.model_name), prices)
        report = pb.CostReport(prices=wire.price_table(prices), group_by=request.group_by)
        for row in rows:
            out = report.rows.add(
                model_name=row.model_name,
                group=row.group,
                policy=row.policy,
                devices=row.devices,
                served=row.served,
                local_runs=row.local_runs,
                cloud_requests=row.cloud_requests,
                cost_usd=row.cost_usd,
                per_million=row.per_million,
                cloud_only_per_million=row.cloud_only_per_million,
            )
            if row.local_only_per_million is not None:
                out.local_only_per_million = row.local_only_per_million
        for budget in budget_use(self._ctx.db, self._ctx.routing):
            if request.model_name and budget.model_name != request.model_name:
                continue
            entry = report.budgets.add(
                model_name=budget.model_name,
                policy=budget.policy,
                selector=budget.selector,
                devices=budget.devices,
                cloud_requests=budget.cloud_requests,
                spent_usd=budget.spent_usd,
                exhausted=budget.exhausted,
                top_use=budget.top_use,
            )
            if budget.per_device_usd is not None:
                entry.per_device_usd = budget.per_device_usd
        return report
