"""A device's recent log: an operator asks for it, the device uploads it at its next check-in
(asked for now over MQTT when the server has it), and the latest upload is read back."""

from __future__ import annotations

import logging
import time
from typing import Any

from fleet_server.api._errors import rpc_errors
from fleet_server.api.admin import wire
from fleet_server.api.admin._base import AdminBase, actor, audited
from fleet_server.api.identity import require_admin
from fleet_server.errors import BadRequestError, ConflictError, TransientError
from protos import admin_pb2 as pb
from protos.logs import DEFAULT_LINES, LEVELS, MAX_LINES

__all__ = ["LogsAdmin"]

log = logging.getLogger(__name__)


class LogsAdmin(AdminBase):
    @rpc_errors
    @audited("RequestDeviceLog", lambda r: f"device {r.device_id}")
    def RequestDeviceLog(  # noqa: N802
        self, request: pb.RequestDeviceLogRequest, context: Any
    ) -> pb.DeviceLog:
        require_admin(context)
        lines = request.lines or DEFAULT_LINES
        if lines > MAX_LINES:
            raise BadRequestError(f"{lines} lines asked for; a device keeps {MAX_LINES} at most")
        level = request.level or LEVELS["INFO"]
        if level > LEVELS["CRITICAL"]:
            raise BadRequestError(f"log level {level} is above CRITICAL ({LEVELS['CRITICAL']})")
        device = self._ctx.devices.get_device(request.device_id)
        if device.revoked_at:
            raise ConflictError(f"device {device.device_id} is revoked: it cannot upload")
        who, now = actor(context), int(time.time())
        asked = self._ctx.device_logs.request(
            device.device_id, lines=lines, level=level, requested_by=who, now=now
        )
        log.info("%s asked for the log of %s (request %s)", who, device.device_id,
                 asked.request_id[:12])  # fmt: skip
        info = wire.device_log(device.device_id, self._ctx.device_logs.get(device.device_id), now)
        info.asked_now = self._ask_check_in(device.device_id)
        return info

    def _ask_check_in(self, device_id: str) -> bool:
        """Ask the device to check in now (over MQTT, best effort); True when it was asked."""
        send = self._ctx.send_command
        if send is None:
            return False
        try:
            send(device_id, "checkin")
        except TransientError as exc:
            log.warning("cannot ask %s to check in now: %s", device_id, exc)
            return False
        return True

    @rpc_errors
    def GetDeviceLog(self, request: pb.DeviceRequest, context: Any) -> pb.DeviceLog:  # noqa: N802
        require_admin(context)
        device = self._ctx.devices.get_device(request.device_id)  # NotFound: one clear line
        row = self._ctx.device_logs.get(device.device_id)
        return wire.device_log(device.device_id, row, int(time.time()))
