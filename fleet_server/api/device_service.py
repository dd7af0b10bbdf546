"""DeviceService: enrollment, check-in, artifact download, status reports."""

from __future__ import annotations

import hmac
import logging
import re
import secrets
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from google.protobuf.json_format import MessageToDict

from fleet_server.api._errors import abort_for, rpc_errors
from fleet_server.api.auth import require_device
from fleet_server.catalog.desired import device_targets, resolve
from fleet_server.catalog.select import profile_from_capabilities
from fleet_server.errors import AuthError, BadRequestError, FleetError
from protos import device_pb2 as pb
from protos import device_pb2_grpc as pb_grpc
from protos import manifest_pb2
from protos.topics import device_name

if TYPE_CHECKING:
    from fleet_server.api.server import ServerContext

__all__ = ["DeviceServicer"]

log = logging.getLogger(__name__)
_MAX_LABELS = 32
_NAME_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_VERSION = re.compile(r"^[0-9A-Za-z.+-]{1,32}$")
# What an update report means for a rollout.
_OUTCOMES = {pb.INSTALLED: "installed", pb.FAILED: "failed", pb.ROLLED_BACK: "failed"}


def _labels(raw: Any) -> dict[str, str]:
    if len(raw) > _MAX_LABELS:
        raise BadRequestError(f"{len(raw)} labels; at most {_MAX_LABELS}")
    labels = {}
    for key, value in raw.items():
        if not _NAME_PART.match(key) or len(value) > 255:
            raise BadRequestError(f"label {key!r} is invalid (key: 1-64 of A-Z a-z 0-9 _ . -)")
        labels[key] = value
    return labels


class DeviceServicer(pb_grpc.DeviceServiceServicer):
    """What agents call."""

    def __init__(self, ctx: ServerContext) -> None:
        self._ctx = ctx

    @rpc_errors
    def Enroll(self, request: pb.EnrollRequest, context: Any) -> pb.EnrollResponse:  # noqa: N802
        token = request.enrollment_token
        name = device_name(request.requested_name)
        if not request.csr_pem:
            raise BadRequestError(
                "enrollment needs a certificate signing request (csr_pem); upgrade the agent"
            )
        # Check the CSR before spending the token, so a bad request does not burn it.
        self._ctx.ca.check_csr(request.csr_pem, expected_cn=name)
        bootstrap = bool(
            token
            and self._ctx.enrollment_token
            and hmac.compare_digest(token.encode(), self._ctx.enrollment_token.encode())
        )
        token_labels = {} if bootstrap else self._ctx.db.enrollment_token_labels(token)
        if not token or token_labels is None:
            raise AuthError(
                "enrollment token is unknown, expired or used up; ask the fleet admin for a "
                "new one ('edgefleet tokens create')"
            )
        labels = _labels(request.labels) | token_labels
        device_id = self._ctx.db.add_device(
            name,
            secrets.token_urlsafe(32),  # no device bearer token: devices use certificates
            labels,
            MessageToDict(request.capabilities, preserving_proto_field_name=True),
        )
        if not bootstrap and not self._ctx.db.use_enrollment_token(token):
            self._ctx.db.delete_device(device_id)  # another device used it up meanwhile
            raise AuthError("enrollment token was used up by another device meanwhile")
        issued = self._ctx.ca.sign_device_csr(request.csr_pem, device_id, expected_cn=name)
        self._ctx.db.set_certificate(device_id, issued.serial, issued.not_after)
        log.info("enrolled device %s (certificate %s)", device_id, issued.serial[:12])
        return pb.EnrollResponse(
            device_id=device_id,
            fleet_id=self._ctx.fleet_id,
            keylist=manifest_pb2.Envelope.FromString(self._ctx.keys.keylist_bytes()),
            mqtt_url=self._ctx.device_mqtt_url,
            certificate_pem=issued.pem,
            ca_pem=self._ctx.ca.cert_pem,
            device_address=self._ctx.device_address,
        )

    @rpc_errors
    def RenewCertificate(  # noqa: N802
        self, request: pb.RenewRequest, context: Any
    ) -> pb.RenewResponse:
        device_id = require_device(context, self._ctx.db)
        issued = self._ctx.ca.sign_device_csr(request.csr_pem, device_id, expected_cn=device_id)
        self._ctx.db.set_certificate(device_id, issued.serial, issued.not_after)
        log.info("renewed the certificate of %s (%s)", device_id, issued.serial[:12])
        return pb.RenewResponse(certificate_pem=issued.pem)

    @rpc_errors
    def CheckIn(self, request: pb.CheckInRequest, context: Any) -> pb.CheckInResponse:  # noqa: N802
        device_id = require_device(context, self._ctx.db)
        caps = (
            MessageToDict(request.capabilities, preserving_proto_field_name=True)
            if request.HasField("capabilities")
            else None
        )
        self._ctx.db.touch_device(device_id, caps)
        active: dict[str, str] = {}
        for model in request.active[:64]:
            if _NAME_PART.match(model.model_name) and _VERSION.match(model.version):
                active[model.model_name] = model.version
                self._ctx.db.set_active_version(device_id, model.model_name, model.version)
        response = pb.CheckInResponse(
            next_checkin_s=self._ctx.checkin_interval_s,
            mqtt_url=self._ctx.device_mqtt_url,
            keylist=manifest_pb2.Envelope.FromString(self._ctx.keys.keylist_bytes()),
        )
        targets, rows = device_targets(self._ctx.db, self._ctx.rollouts, device_id)
        for row in rows:
            if row.device_state == "assigned" and active.get(row.model_name) == row.version:
                # Installed without a report reaching us (or installed before the rollout).
                self._ctx.rollouts.report(device_id, row.model_name, row.version, "installed")
        if caps is None:
            caps = self._ctx.db.get_device(device_id).capabilities
        resolved = resolve(self._ctx.db, targets, profile_from_capabilities(caps))
        for _name, raw in sorted(resolved.envelopes.items()):
            response.desired.append(manifest_pb2.Envelope.FromString(raw))
        for name, (version, why) in sorted(resolved.cloud.items()):
            response.cloud.add(model_name=name, version=version, reason=why)
        return response

    def DownloadArtifact(  # noqa: N802
        self, request: pb.DownloadRequest, context: Any
    ) -> Iterator[pb.ArtifactChunk]:
        try:
            require_device(context, self._ctx.db)
            if self._ctx.db.model_by_sha(request.artifact_id) is None:
                raise AuthError("no model version uses that artifact")
            chunks = self._ctx.artifacts.read(request.artifact_id, request.offset)
            for offset, data, total in chunks:
                yield pb.ArtifactChunk(offset=offset, data=data, total_size=total)
        except FleetError as exc:
            abort_for(context, exc)

    @rpc_errors
    def ReportStatus(self, request: pb.StatusReport, context: Any) -> pb.StatusAck:  # noqa: N802
        device_id = require_device(context, self._ctx.db)
        if not _NAME_PART.match(request.model_name) or not _VERSION.match(request.version):
            raise BadRequestError("status report names an invalid model or version")
        state = pb.UpdateState.Name(request.state)
        self._ctx.db.set_device_model(
            device_id, request.model_name, request.version, state, request.detail
        )
        outcome = _OUTCOMES.get(request.state)
        if outcome is not None:
            self._ctx.rollouts.report(device_id, request.model_name, request.version, outcome)
            self._ctx.wake_rollouts()
        log.info(
            "device %s: %s %s %s %s",
            device_id,
            request.model_name,
            request.version,
            state,
            request.detail[:200],
        )
        return pb.StatusAck()
