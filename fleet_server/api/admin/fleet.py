"""What the fleet measured and what admins did: benchmarks and the audit log."""

from __future__ import annotations

import logging
import time
from typing import Any

from fleet_server.api._errors import rpc_errors
from fleet_server.api.admin import wire
from fleet_server.api.admin._base import (
    AdminBase,
    audited,
)
from fleet_server.api.identity import require_admin
from fleet_server.errors import (
    ConflictError,
    NotFoundError,
)
from fleet_server.registry.labels import check_labels, matches
from protos import admin_pb2 as pb

log = logging.getLogger(__name__)


class FleetAdmin(AdminBase):
    @rpc_errors
    @audited("RequestBenchmark", lambda r: f"model {r.model_name}")
    def RequestBenchmark(  # noqa: N802
        self, request: pb.RequestBenchmarkRequest, context: Any
    ) -> pb.RequestBenchmarkResponse:
        require_admin(context)
        check_labels(request.selector, "selector label")
        send = self._ctx.send_command
        if send is None:
            raise ConflictError("this server has no MQTT connection to send commands over")
        if self._ctx.catalog.newest_version(request.model_name) is None:
            raise NotFoundError(f"no model named {request.model_name!r} in the catalog")
        asked = []
        for device in self._ctx.devices.list_devices(request.device_id or None):
            runs = {m.model_name for m in device.models if m.state == "INSTALLED"}
            if device.revoked_at or not matches(request.selector, device.labels):
                continue
            if request.model_name not in runs:
                continue
            send(device.device_id, "bench", request.model_name)
            asked.append(device.device_id)
        if not asked:
            raise NotFoundError(f"no matching device has {request.model_name} installed")
        return pb.RequestBenchmarkResponse(device_ids=asked)

    @rpc_errors
    def GetBenchReport(  # noqa: N802
        self, request: pb.GetBenchReportRequest, context: Any
    ) -> pb.BenchReport:
        require_admin(context)
        return pb.BenchReport(
            rows=[wire.bench_row(r) for r in self._ctx.bench.report(request.model_name)]
        )

    @rpc_errors
    def ListAudit(self, request: pb.ListAuditRequest, context: Any) -> pb.ListAuditResponse:  # noqa: N802
        require_admin(context)
        rows = self._ctx.audit.entries(min(request.limit or 100, 1000), request.before_id)
        return pb.ListAuditResponse(entries=[wire.audit_entry(r) for r in rows])

    @rpc_errors
    def GetKeyStatus(  # noqa: N802
        self, request: pb.GetKeyStatusRequest, context: Any
    ) -> pb.KeyStatus:
        require_admin(context)
        return wire.key_status(self._ctx.key_status(time.time()))
