"""Devices: the registry, labels, revocation, enrollment tokens and commands over MQTT."""

from __future__ import annotations

import logging
import secrets
from typing import Any

from fleet_server.api._errors import rpc_errors
from fleet_server.api.admin import wire
from fleet_server.api.admin._base import (
    AdminBase,
    actor,
    audited,
)
from fleet_server.api.auth import require_admin
from fleet_server.errors import (
    BadRequestError,
    ConflictError,
    NotFoundError,
)
from fleet_server.registry.labels import check_labels
from fleet_server.registry.store import token_digest
from protos import admin_pb2 as pb

log = logging.getLogger(__name__)
MAX_TOKEN_TTL_S = 30 * 86400
DEVICES_PAGE = 500
MAX_DEVICES_PAGE = 1000
COMMANDS = frozenset({"checkin", "birth", "routing", "reload"})


class DevicesAdmin(AdminBase):
    @rpc_errors
    def GetDevice(self, request: pb.DeviceRequest, context: Any) -> pb.DeviceInfo:  # noqa: N802
        require_admin(context, self._ctx.admin_token)
        info = wire.device_info(self._ctx.devices.get_device(request.device_id))
        for event in self._ctx.telemetry.device_events(request.device_id, limit=20):
            info.events.add(
                at_unix=event["at"],
                seq=event["seq"],
                model_name=event["model_name"],
                version=event["version"],
                state=event["state"],
                detail=event["detail"],
            )
        return info

    @rpc_errors
    @audited("LabelDevice", lambda r: f"device {r.device_id}")
    def LabelDevice(self, request: pb.LabelDeviceRequest, context: Any) -> pb.DeviceInfo:  # noqa: N802
        require_admin(context, self._ctx.admin_token)
        check_labels(request.set)
        self._ctx.devices.set_labels(request.device_id, dict(request.set), list(request.remove))
        log.info("labels of %s changed", request.device_id)
        return wire.device_info(self._ctx.devices.get_device(request.device_id))

    @rpc_errors
    @audited("RevokeDevice", lambda r: f"device {r.device_id}")
    def RevokeDevice(self, request: pb.DeviceRequest, context: Any) -> pb.DeviceInfo:  # noqa: N802
        require_admin(context, self._ctx.admin_token)
        self._ctx.devices.revoke(request.device_id)
        self._ctx.revoked(request.device_id)  # its MQTT session and messages end now
        log.warning("device %s revoked", request.device_id)
        return wire.device_info(self._ctx.devices.get_device(request.device_id))

    @rpc_errors
    def ListDevices(self, request: pb.ListDevicesRequest, context: Any) -> pb.ListDevicesResponse:  # noqa: N802
        require_admin(context, self._ctx.admin_token)
        limit = min(request.limit or DEVICES_PAGE, MAX_DEVICES_PAGE)
        rows = self._ctx.devices.list_devices(after=request.after, limit=limit + 1)
        more = len(rows) > limit
        return pb.ListDevicesResponse(
            devices=[wire.device_info(r) for r in rows[:limit]],
            next_after=rows[limit - 1].device_id if more else "",
        )

    @rpc_errors
    @audited("CreateEnrollmentToken", lambda r: "enrollment token")
    def CreateEnrollmentToken(  # noqa: N802
        self, request: pb.CreateTokenRequest, context: Any
    ) -> pb.CreateTokenResponse:
        require_admin(context, self._ctx.admin_token)
        check_labels(request.labels)
        ttl = request.ttl_s or 86400
        if ttl > MAX_TOKEN_TTL_S:
            raise BadRequestError(f"token lifetime {ttl} s is over {MAX_TOKEN_TTL_S} (30 days)")
        token = secrets.token_urlsafe(24)
        expires = self._ctx.devices.add_enrollment_token(
            token,
            ttl_s=ttl,
            uses=request.uses or 1,
            labels=dict(request.labels),
            note=request.note,
            created_by=actor(context),
        )
        return pb.CreateTokenResponse(
            token=token, token_id=token_digest(token)[:12], expires_unix=expires
        )

    @rpc_errors
    def ListEnrollmentTokens(  # noqa: N802
        self, request: pb.ListTokensRequest, context: Any
    ) -> pb.ListTokensResponse:
        require_admin(context, self._ctx.admin_token)
        return pb.ListTokensResponse(
            tokens=[wire.token_info(t) for t in self._ctx.devices.list_enrollment_tokens()]
        )

    @rpc_errors
    @audited("RevokeEnrollmentToken", lambda r: f"enrollment token {r.token_id}")
    def RevokeEnrollmentToken(  # noqa: N802
        self, request: pb.RevokeTokenRequest, context: Any
    ) -> pb.RevokeTokenResponse:
        require_admin(context, self._ctx.admin_token)
        revoked = self._ctx.devices.revoke_enrollment_token(request.token_id)
        if not revoked:
            raise NotFoundError(f"no enrollment token {request.token_id!r}")
        return pb.RevokeTokenResponse(revoked=revoked)

    @rpc_errors
    @audited("SendCommand", lambda r: f"device {r.device_id}")
    def SendCommand(  # noqa: N802
        self, request: pb.SendCommandRequest, context: Any
    ) -> pb.SendCommandResponse:
        require_admin(context, self._ctx.admin_token)
        if request.kind not in COMMANDS:
            raise BadRequestError(
                f"unknown command {request.kind!r}; one of {', '.join(sorted(COMMANDS))}"
            )
        device = self._ctx.devices.get_device(request.device_id)
        if device.revoked_at:
            raise ConflictError(f"device {device.device_id} is revoked")
        if self._ctx.send_command is None:
            raise ConflictError("this server has no MQTT connection to send commands over")
        command_id = self._ctx.send_command(device.device_id, request.kind)
        return pb.SendCommandResponse(command_id=command_id)
