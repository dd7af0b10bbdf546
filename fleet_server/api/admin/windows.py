"""Maintenance windows: add, list, remove (docs/rollouts.md, "Maintenance windows"). Adding and
removing one are audited."""

from __future__ import annotations

import logging
from typing import Any

from fleet_server.api._errors import rpc_errors
from fleet_server.api.admin import wire
from fleet_server.api.admin._base import AdminBase, actor, audited
from fleet_server.api.identity import require_admin
from fleet_server.errors import BadRequestError
from fleet_server.registry.labels import check_labels
from protos import admin_pb2 as pb

__all__ = ["WindowsAdmin"]

log = logging.getLogger(__name__)


def _target(request: pb.AddMaintenanceWindowRequest) -> str:
    selector = ",".join(f"{k}={v}" for k, v in sorted(request.selector.items()))
    return f"window {selector[:120] or 'every device'} {request.days[:40]}"


class WindowsAdmin(AdminBase):
    @rpc_errors
    @audited("AddMaintenanceWindow", _target)
    def AddMaintenanceWindow(  # noqa: N802
        self, request: pb.AddMaintenanceWindowRequest, context: Any
    ) -> pb.MaintenanceWindow:
        require_admin(context)
        selector = check_labels(request.selector, "selector label")
        if not selector and not request.every_device:
            raise BadRequestError(
                "a maintenance window needs a selector (KEY=VALUE); a window for the whole "
                "fleet says so (every device)"
            )
        if selector and request.every_device:
            raise BadRequestError("a selector and every device: give one of them")
        row = self._ctx.windows.add(
            selector=selector,
            days=request.days,
            start=request.opens,
            end=request.closes,
            created_by=actor(context),
        )
        log.info("maintenance window %d added: %s", row.window.window_id, row.window)
        self._ctx.wake_rollouts()
        return wire.maintenance_window(row)

    @rpc_errors
    def ListMaintenanceWindows(  # noqa: N802
        self, request: pb.ListMaintenanceWindowsRequest, context: Any
    ) -> pb.ListMaintenanceWindowsResponse:
        require_admin(context)
        rows = self._ctx.windows.list_windows()
        return pb.ListMaintenanceWindowsResponse(windows=[wire.maintenance_window(r) for r in rows])

    @rpc_errors
    @audited("RemoveMaintenanceWindow", lambda r: f"window {r.window_id}")
    def RemoveMaintenanceWindow(  # noqa: N802
        self, request: pb.RemoveMaintenanceWindowRequest, context: Any
    ) -> pb.MaintenanceWindow:
        require_admin(context)
        row = self._ctx.windows.remove(request.window_id)
        log.info("maintenance window %d removed: %s", row.window.window_id, row.window)
        self._ctx.wake_rollouts()  # the devices it held may update now
        return wire.maintenance_window(row)
