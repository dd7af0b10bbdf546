"""Devices: the registry, labels, revocation, refusal clears, enrollment tokens and commands
over MQTT."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from typing import Any

from google.protobuf.json_format import MessageToDict

from fleet_server.api._errors import rpc_errors
from fleet_server.api.admin import wire
from fleet_server.api.admin._base import (
    AdminBase,
    actor,
    audited,
)
from fleet_server.api.identity import require_admin
from fleet_server.datadir import new_token
from fleet_server.errors import (
    BadRequestError,
    ConflictError,
    FleetError,
    NotFoundError,
    TransientError,
)
from fleet_server.registry.labels import check_labels, matches
from fleet_server.registry.refusals import ClearTargets, clear_targets
from fleet_server.registry.store import DeviceRow, token_digest
from protos import admin_pb2 as pb
from protos.names import is_name, is_sha256

log = logging.getLogger(__name__)
MAX_TOKEN_TTL_S = 30 * 86400
DEVICES_PAGE = 500
MAX_DEVICES_PAGE = 1000
COMMANDS = frozenset({"checkin", "birth", "routing", "reload"})
_AUDITED_DEVICES = 100  # device ids named in a ClearRefusal audit entry (the count is all)


class DevicesAdmin(AdminBase):
    @rpc_errors
    def GetDevice(self, request: pb.DeviceRequest, context: Any) -> pb.DeviceInfo:  # noqa: N802
        require_admin(context)
        device = self._ctx.devices.get_device(request.device_id)
        info = wire.device_info(device)
        for event in self._ctx.telemetry.device_events(request.device_id, limit=20):
            info.events.add(
                at_unix=event["at"],
                seq=event["seq"],
                model_name=event["model_name"],
                version=event["version"],
                state=event["state"],
                detail=event["detail"],
            )
        for model_name, sha256 in device.refusals or ():
            # Which version those bytes are, where the catalog knows.
            row = self._ctx.catalog.model_by_sha(sha256)
            known = row is not None and model_name in ("", row.model_name)
            info.refused.add(
                model_name=model_name, sha256=sha256, version=row.version if row and known else ""
            )
        for clear in self._ctx.refusals.pending(request.device_id):
            info.pending_clears.append(wire.pending_clear(clear))
        for download in self._ctx.downloads.of_device(request.device_id):
            row = self._ctx.catalog.model_by_sha(download.artifact)
            info.downloads.add(
                model_name=row.model_name if row else "",
                version=row.version if row else "",
                variant=row.variant if row else "",
                sha256=download.artifact,
                compressed=row is not None and row.compressed_sha256 == download.artifact,
                reached=download.reached,
                total=download.total,
                updated_unix=download.at,
            )
        return info

    @rpc_errors
    @audited("LabelDevice", lambda r: f"device {r.device_id}")
    def LabelDevice(self, request: pb.LabelDeviceRequest, context: Any) -> pb.DeviceInfo:  # noqa: N802
        require_admin(context)
        check_labels(request.set)
        self._ctx.devices.set_labels(request.device_id, dict(request.set), list(request.remove))
        log.info("labels of %s changed", request.device_id)
        return wire.device_info(self._ctx.devices.get_device(request.device_id))

    @rpc_errors
    @audited("RevokeDevice", lambda r: f"device {r.device_id}")
    def RevokeDevice(self, request: pb.DeviceRequest, context: Any) -> pb.DeviceInfo:  # noqa: N802
        require_admin(context)
        self._ctx.devices.revoke(request.device_id)
        self._ctx.revoked(request.device_id)  # its MQTT session and messages end now
        log.warning("device %s revoked", request.device_id)
        return wire.device_info(self._ctx.devices.get_device(request.device_id))

    @rpc_errors
    def ClearRefusal(  # noqa: N802
        self, request: pb.ClearRefusalRequest, context: Any
    ) -> pb.ClearRefusalResponse:
        # Audited here rather than by @audited: the entry names the devices a selector chose.
        selector = ",".join(f"{k}={v}" for k, v in sorted(request.selector.items()))
        target = f"device {request.device_id}" if request.device_id else f"devices {selector}"
        detail = MessageToDict(
            request, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
        )  # with sha256 "" (every release) and the empty one of device_id and selector
        who = actor(context)
        try:
            require_admin(context)
            device_ids = self._clear_refusal(request, selector, who)
        except FleetError as exc:
            self._ctx.audit.append(
                who, "ClearRefusal", target, _audit_detail(detail), ok=False, error=str(exc)
            )
            raise
        # The first devices (an entry's detail is bounded) and how many in all.
        detail["devices"], detail["device_count"] = device_ids[:_AUDITED_DEVICES], len(device_ids)
        self._ctx.audit.append(who, "ClearRefusal", target, _audit_detail(detail), ok=True)
        return pb.ClearRefusalResponse(device_ids=device_ids)

    def _clear_refusal(self, request: pb.ClearRefusalRequest, selector: str, who: str) -> list[str]:
        """Record the clear for every device it would change anything on; return their ids.

        Raises:
            BadRequestError: no device or selector, both, or an invalid name or sha256.
            NotFoundError: no such model, device, or no device matching the selector.
            ConflictError: a revoked device, or none that refuses what the clear names.
        """
        model, sha = request.model_name, request.sha256
        if bool(request.device_id) == bool(request.selector):
            raise BadRequestError("name one device or give a label selector (not both)")
        if not is_name(model):
            raise BadRequestError(f"model name {model[:80]!r} is invalid")
        if sha and not is_sha256(sha):
            raise BadRequestError(f"sha256 {sha[:80]!r} is not 64 lower-case hex digits")
        check_labels(request.selector, "selector label")
        if self._ctx.catalog.newest_version(model) is None:
            raise NotFoundError(f"no model named {model!r} in the catalog")
        if request.device_id:
            device = self._ctx.devices.get_device(request.device_id)
            if device.revoked_at:
                raise ConflictError(f"device {device.device_id} is revoked")
            candidates = [device]
        else:
            candidates = [
                d
                for d in self._ctx.devices.list_devices()
                if not d.revoked_at and matches(request.selector, d.labels)
            ]
            if not candidates:
                raise NotFoundError(f"no device that is not revoked matches {selector}")
        targets = clear_targets({d.device_id: d.refusals for d in candidates}, model, sha)
        if not targets.device_ids:
            raise ConflictError(_nothing_to_clear(candidates, targets, model, sha, selector))
        self._ctx.refusals.request(targets.device_ids, model, sha, who, int(time.time()))
        log.info(
            "%s cleared the refusal of %s %s on %s",
            who,
            model,
            sha[:12] or "(every release)",
            ", ".join(targets.device_ids),
        )
        self._check_in_now(targets.device_ids)
        return list(targets.device_ids)

    def _check_in_now(self, device_ids: Sequence[str]) -> None:
        """Ask the devices to check in now (over MQTT, best effort: the others forget the
        refusal at their next check-in)."""
        send = self._ctx.send_command
        if send is None:
            return
        for device_id in device_ids:
            try:
                send(device_id, "checkin")
            except TransientError as exc:
                log.warning("cannot ask devices to check in now: %s", exc)
                return

    @rpc_errors
    def ListDevices(self, request: pb.ListDevicesRequest, context: Any) -> pb.ListDevicesResponse:  # noqa: N802
        require_admin(context)
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
        require_admin(context)
        check_labels(request.labels)
        ttl = request.ttl_s or 86400
        if ttl > MAX_TOKEN_TTL_S:
            raise BadRequestError(f"token lifetime {ttl} s is over {MAX_TOKEN_TTL_S} (30 days)")
        token = new_token(24)  # given on agents' command lines: never a leading "-"
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
        require_admin(context)
        return pb.ListTokensResponse(
            tokens=[wire.token_info(t) for t in self._ctx.devices.list_enrollment_tokens()]
        )

    @rpc_errors
    @audited("RevokeEnrollmentToken", lambda r: f"enrollment token {r.token_id}")
    def RevokeEnrollmentToken(  # noqa: N802
        self, request: pb.RevokeTokenRequest, context: Any
    ) -> pb.RevokeTokenResponse:
        require_admin(context)
        revoked = self._ctx.devices.revoke_enrollment_token(request.token_id)
        if not revoked:
            raise NotFoundError(f"no enrollment token {request.token_id!r}")
        return pb.RevokeTokenResponse(revoked=revoked)

    @rpc_errors
    @audited("SendCommand", lambda r: f"device {r.device_id}")
    def SendCommand(  # noqa: N802
        self, request: pb.SendCommandRequest, context: Any
    ) -> pb.SendCommandResponse:
        require_admin(context)
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


def _nothing_to_clear(
    candidates: Sequence[DeviceRow], targets: ClearTargets, model: str, sha: str, selector: str
) -> str:
    """Why a clear would change nothing, in one line."""
    what = f"{model} with sha256 {sha[:12]}..." if sha else model
    if len(candidates) == 1 and not selector:
        device = candidates[0]
        if targets.unreported:
            return (
                f"{device.device_id} does not report its refusals (its agent is older than "
                "refusal clears); upgrade the agent"
            )
        refused = ", ".join(f"{m or '(any model)'} {s[:12]}" for m, s in device.refusals or ())
        return (
            f"{device.device_id} refuses no release of {what} (it refuses: {refused or 'none'}, "
            "as of its last check-in)"
        )
    older = (
        f"; {len(targets.unreported)} do not report refusals (agents too old)"
        if targets.unreported
        else ""
    )
    return (
        f"none of the {len(candidates)} device(s) matching {selector} refuses a release of "
        f"{what}{older}"
    )


_AUDIT_DETAIL_MAX = 8192  # what the audit log keeps of a detail


def _audit_detail(detail: dict[str, Any]) -> str:
    """``detail`` as JSON that fits the audit log whole (it cuts longer details, which would
    leave JSON no tool can read): long strings and selectors are shortened first, then device
    ids are dropped (``device_count`` still says how many)."""
    text = json.dumps(detail, sort_keys=True)
    if len(text) <= _AUDIT_DETAIL_MAX:
        return text
    short: dict[str, Any] = {k: v[:128] if isinstance(v, str) else v for k, v in detail.items()}
    selector = detail.get("selector")
    if isinstance(selector, dict):
        short["selector"] = {str(k)[:64]: str(v)[:64] for k, v in list(selector.items())[:16]}
        short["shortened"] = True
    devices = list(short.get("devices", []))
    while len(text := json.dumps(short, sort_keys=True)) > _AUDIT_DETAIL_MAX and devices:
        devices = devices[: len(devices) // 2]
        short["devices"] = devices
        short["shortened"] = True
    if len(text) > _AUDIT_DETAIL_MAX:
        text = json.dumps({"shortened": True, "device_count": detail.get("device_count")})
    return text
