"""AdminService: push models, deploy them, list devices and models."""

from __future__ import annotations

import functools
import json
import logging
import secrets
import time
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from google.protobuf.json_format import MessageToJson
from google.protobuf.message import DecodeError

from agent.errors import ManifestError
from agent.updates.trust import TrustedKeys, count_signers, pin_keylist
from fleet_server.api._errors import rpc_errors
from fleet_server.api.auth import require_admin
from fleet_server.api.push import MANIFEST_LIFETIME_S, Pusher
from fleet_server.catalog.desired import explain
from fleet_server.catalog.store import ModelRow
from fleet_server.errors import (
    BadRequestError,
    ConflictError,
    FleetError,
    NotFoundError,
    TransientError,
)
from fleet_server.registry.labels import check_labels, matches
from fleet_server.registry.store import DeviceRow, token_digest
from fleet_server.rollouts.plan import HealthGate
from fleet_server.rollouts.store import RolloutRow
from fleet_server.routing.budgets import budget_use
from fleet_server.routing.costs import summarize
from fleet_server.routing.prices import Prices
from fleet_server.routing.store import RoutingRow
from protos import admin_pb2 as pb
from protos import admin_pb2_grpc as pb_grpc
from protos import manifest_pb2
from protos.envelope import MANIFEST_PAYLOAD_TYPE
from protos.names import is_name

if TYPE_CHECKING:
    from fleet_server.context import ServerContext

__all__ = ["MANIFEST_LIFETIME_S", "AdminServicer"]

log = logging.getLogger(__name__)
MAX_TOKEN_TTL_S = 30 * 86400
COMMANDS = frozenset({"checkin", "birth", "routing", "reload"})
DEFAULT_SUCCESS = 0.9
DEFAULT_FAILURE = 0.1
DEFAULT_DEVICE_TIMEOUT_S = 3600
_F = TypeVar("_F", bound=Callable[..., Any])


def _model_info(row: ModelRow, deployed: dict[str, str]) -> pb.ModelVersionInfo:
    return pb.ModelVersionInfo(
        model_name=row.model_name,
        version=row.version,
        variant=row.variant,
        release_counter=row.release_counter,
        sha256=row.sha256,
        size=row.size,
        created_unix=row.created_at,
        edgetpu=row.edgetpu,
        deployed=deployed.get(row.model_name) == row.version,
        fallback_sha256=row.fallback_sha256 or "",
        smoke_top_indices=_smoke_indices(row),
        signed=bool(manifest_pb2.Envelope.FromString(row.envelope).signatures),
        quantization=row.quantization,
        requirements_json=row.requirements,
    )


def _rollout_info(row: RolloutRow) -> pb.RolloutInfo:
    info = pb.RolloutInfo(
        rollout_id=row.rollout_id,
        model_name=row.model_name,
        version=row.version,
        previous_version=row.previous_version or "",
        selector=row.selector,
        waves=row.waves,
        success_threshold=row.success_threshold,
        failure_threshold=row.failure_threshold,
        max_concurrent=row.max_concurrent,
        device_timeout_s=row.device_timeout_s,
        state=row.state,
        current_wave=row.current_wave,
        reason=row.reason,
        created_unix=row.created_at,
        updated_unix=row.updated_at,
        created_by=row.created_by,
        health_gate=pb.HealthGate(
            max_error_rate=row.health_gate.max_error_rate,
            max_latency_ratio=row.health_gate.max_latency_ratio,
            window_s=row.health_gate.window_s,
            min_requests=row.health_gate.min_requests,
            disabled=row.health_gate.disabled,
            bake_s=row.health_gate.bake_s,
        ),
    )
    for failure in row.failures:
        info.failures.add(device_id=failure.device_id, wave=failure.wave, detail=failure.detail)
    for wave in row.wave_status:
        info.wave_status.add(
            index=wave.index,
            target=wave.target,
            devices=wave.counts.devices,
            waiting=wave.counts.waiting,
            assigned=wave.counts.assigned,
            installed=wave.counts.installed,
            failed=wave.counts.failed,
            stalled=wave.stalled,
            unhealthy=wave.unhealthy,
        )
    return info


def _health_gate(gate: pb.HealthGate) -> HealthGate:
    """The gate a CreateRollout asks for; zero fields take the defaults."""
    default = HealthGate()
    return HealthGate(
        max_error_rate=round(gate.max_error_rate, 6) or default.max_error_rate,
        max_latency_ratio=round(gate.max_latency_ratio, 6) or default.max_latency_ratio,
        window_s=gate.window_s or default.window_s,
        min_requests=gate.min_requests or default.min_requests,
        bake_s=gate.bake_s,
        disabled=gate.disabled,
    )


def _routing_info(row: RoutingRow) -> pb.RoutingPolicyInfo:
    info = pb.RoutingPolicyInfo(
        model_name=row.model_name,
        selector=row.selector,
        policy=row.policy,
        threshold=row.threshold,
        latency_budget_ms=row.latency_budget_ms,
        cloud_model=row.cloud_model,
        updated_unix=row.updated_at,
        updated_by=row.updated_by,
    )
    if row.max_per_minute is not None:
        info.max_per_minute = row.max_per_minute
    if row.max_spend_per_day is not None:
        info.max_spend_per_day = row.max_spend_per_day
    return info


def _price_table(prices: Prices) -> pb.PriceTable:
    return pb.PriceTable(
        cloud_per_request=prices.cloud_per_request,
        energy_per_kwh=prices.energy_per_kwh,
        device_power_w=prices.device_power_w,
        power_by_class=prices.power_by_class,
    )


def _actor(context: Any) -> str:
    """Who made a call, for the audit log. (One admin credential today: the token.) Calls the
    dashboard makes for a logged-in admin say so."""
    metadata = dict(context.invocation_metadata() or ())
    via = " via dashboard" if metadata.get("x-edgefleet-client") == "dashboard" else ""
    return f"admin-token@{context.peer() or 'unknown'}{via}"


def _manifest_target(envelope: manifest_pb2.Envelope) -> str:
    try:
        manifest = manifest_pb2.Manifest.FromString(envelope.payload)
    except DecodeError:
        return "(not a manifest)"
    return f"{manifest.model_name} {manifest.version}"


def audited(action: str, target: Callable[[Any], str]) -> Callable[[_F], _F]:
    """Record every call of a state-changing admin RPC in the audit log, failed ones too."""

    def decorate(method: _F) -> _F:
        @functools.wraps(method)
        def wrapper(self: AdminServicer, request: Any, context: Any) -> Any:
            detail = MessageToJson(request, indent=None, preserving_proto_field_name=True)
            try:
                result = method(self, request, context)
            except FleetError as exc:
                self._ctx.audit.append(
                    _actor(context), action, target(request), detail, ok=False, error=str(exc)
                )
                raise
            self._ctx.audit.append(_actor(context), action, target(request), detail, ok=True)
            return result

        return wrapper  # type: ignore[return-value]

    return decorate


def _device_info(row: DeviceRow) -> pb.DeviceInfo:
    info = pb.DeviceInfo(
        device_id=row.device_id,
        name=row.name,
        labels=row.labels,
        capabilities_json=json.dumps(row.capabilities, sort_keys=True),
        enrolled_unix=row.enrolled_at,
        last_seen_unix=row.last_seen,
        last_telemetry_json=json.dumps(row.last_telemetry, sort_keys=True)
        if row.last_telemetry is not None
        else "",
        last_telemetry_unix=row.last_telemetry_at or 0,
        revoked_unix=row.revoked_at or 0,
        online_state=row.online_state or "",
        online_unix=row.online_at or 0,
        telemetry_count=row.telemetry_count,
        telemetry_gaps=row.telemetry_gaps,
    )
    for m in row.models:
        info.models.add(
            model_name=m.model_name,
            version=m.version,
            state=m.state,
            detail=m.detail,
            updated_unix=m.updated_at,
            active_version=m.active_version or "",
        )
    return info


def _manifest_of(envelope: manifest_pb2.Envelope) -> manifest_pb2.Manifest:
    """The manifest in an envelope an admin uploads.

    Raises:
        BadRequestError: another payload type, or not a manifest.
    """
    if envelope.payload_type != MANIFEST_PAYLOAD_TYPE:
        raise BadRequestError(f"payload type {envelope.payload_type!r} is not a manifest")
    try:
        return manifest_pb2.Manifest.FromString(envelope.payload)
    except DecodeError as exc:
        raise BadRequestError("the signed payload is not a manifest") from exc


def _smoke_indices(row: ModelRow) -> list[int]:
    envelope = manifest_pb2.Envelope.FromString(row.envelope)
    return list(manifest_pb2.Manifest.FromString(envelope.payload).smoke.top_indices)


class AdminServicer(pb_grpc.AdminServiceServicer):
    """What the admin CLI calls. Every method requires the admin token."""

    def __init__(self, ctx: ServerContext) -> None:
        self._ctx = ctx
        self._pusher = Pusher(ctx)

    def _trust(self, now: float) -> TrustedKeys:
        """The server's current key list, verified as a device would."""
        try:
            return pin_keylist(self._ctx.keys.keylist_bytes(), fleet_id=self._ctx.fleet_id, now=now)
        except ManifestError as exc:
            raise BadRequestError(f"the server's own key list does not verify: {exc}") from exc

    def PushModel(  # noqa: N802
        self, request_iterator: Iterator[pb.PushModelRequest], context: Any
    ) -> pb.PushModelResponse:
        return self._push(request_iterator, context)

    @rpc_errors
    def _push(
        self, request_iterator: Iterator[pb.PushModelRequest], context: Any
    ) -> pb.PushModelResponse:
        require_admin(context, self._ctx.admin_token)
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("part") != "meta":
            raise BadRequestError("the first message of PushModel must carry the metadata")
        meta = first.meta
        shown = pb.PushModelMeta()
        shown.CopyFrom(meta)
        shown.ClearField("sample")
        detail = MessageToJson(shown, indent=None, preserving_proto_field_name=True)
        target = f"model {meta.model_name} {meta.version}"
        try:
            rows, unsigned = self._pusher.push(meta, request_iterator)
            deployed = self._ctx.catalog.deployed()
            response = pb.PushModelResponse(
                model=_model_info(rows[0], deployed),
                unsigned_manifest=unsigned[0] if unsigned else b"",
                variants=[_model_info(r, deployed) for r in rows],
                unsigned_manifests=unsigned,
            )
        except FleetError as exc:
            self._ctx.audit.append(
                _actor(context), "PushModel", target, detail, ok=False, error=str(exc)
            )
            raise
        self._ctx.audit.append(_actor(context), "PushModel", target, detail, ok=True)
        return response

    @rpc_errors
    @audited("AttachSignatures", lambda r: f"model {_manifest_target(r.envelope)}")
    def AttachSignatures(  # noqa: N802
        self, request: pb.AttachSignaturesRequest, context: Any
    ) -> pb.PushModelResponse:
        require_admin(context, self._ctx.admin_token)
        envelope = request.envelope
        manifest = _manifest_of(envelope)
        row = self._ctx.catalog.get_model(manifest.model_name, manifest.version, manifest.variant)
        stored = manifest_pb2.Envelope.FromString(row.envelope)
        if stored.payload != envelope.payload:
            raise BadRequestError(
                f"the signed manifest differs from the one pushed for {row.model_name} "
                f"{row.version} ({row.variant}); sign the file 'models push --sign-offline' wrote"
            )
        now = time.time()
        trust = self._trust(now)
        signers = count_signers(envelope, trust.release_keys(now))
        if len(signers) < trust.release_threshold:
            raise BadRequestError(
                f"{len(signers)} valid release-key signature(s); key list version "
                f"{trust.version} requires {trust.release_threshold}"
            )
        self._ctx.catalog.set_envelope(
            row.model_name, row.version, row.variant, envelope.SerializeToString()
        )
        log.info(
            "attached offline signatures to %s %s (%s)", row.model_name, row.version, row.variant
        )
        updated = self._ctx.catalog.get_model(row.model_name, row.version, row.variant)
        return pb.PushModelResponse(model=_model_info(updated, self._ctx.catalog.deployed()))

    @rpc_errors
    def PrepareRollback(  # noqa: N802
        self, request: pb.DeployRequest, context: Any
    ) -> pb.PushModelResponse:
        require_admin(context, self._ctx.admin_token)
        return self._prepare_rollback(request.model_name, request.version)

    def _prepare_rollback(self, model_name: str, version: str) -> pb.PushModelResponse:
        """Explicit rollback manifests for an older version (one per variant), for the root
        keys to sign."""
        rows = self._ctx.catalog.get_variants(model_name, version)
        now = int(time.time())
        floor = self._ctx.catalog.next_release_counter(model_name) - 1
        unsigned = []
        for row in rows:
            manifest = manifest_pb2.Manifest.FromString(
                manifest_pb2.Envelope.FromString(row.envelope).payload
            )
            manifest.explicit_rollback = True
            manifest.rollback_from = floor
            manifest.created_unix = now
            manifest.expires_unix = now + MANIFEST_LIFETIME_S
            unsigned.append(manifest.SerializeToString(deterministic=True))
        deployed = self._ctx.catalog.deployed()
        return pb.PushModelResponse(
            model=_model_info(rows[0], deployed),
            unsigned_manifest=unsigned[0],
            variants=[_model_info(r, deployed) for r in rows],
            unsigned_manifests=unsigned,
        )

    def _verified_rollback(self, envelope: manifest_pb2.Envelope) -> ModelRow:
        """The variant a root-signed rollback manifest names, once it checks out.

        Raises:
            BadRequestError: not what PrepareRollback prepared, or too few root signatures.
        """
        manifest = _manifest_of(envelope)
        row = self._ctx.catalog.get_model(manifest.model_name, manifest.version, manifest.variant)
        original = manifest_pb2.Manifest.FromString(
            manifest_pb2.Envelope.FromString(row.envelope).payload
        )
        prepared = ("explicit_rollback", "rollback_from", "created_unix", "expires_unix")
        for field in prepared:
            original.ClearField(field)
        candidate = manifest_pb2.Manifest()
        candidate.CopyFrom(manifest)
        for field in prepared:
            candidate.ClearField(field)
        if not manifest.explicit_rollback or candidate != original:
            raise BadRequestError(
                "not the rollback manifest the server prepared for "
                f"{row.model_name} {row.version}; sign what 'models rollback' fetched"
            )
        now = time.time()
        trust = self._trust(now)
        roots = count_signers(envelope, trust.root)
        if len(roots) < trust.root_threshold:
            raise BadRequestError(
                f"{len(roots)} valid root-key signature(s); an explicit rollback needs "
                f"{trust.root_threshold}"
            )
        return row

    def _verified_rollback_set(
        self, envelopes: list[manifest_pb2.Envelope]
    ) -> tuple[ModelRow, bytes]:
        """Check a rollback's manifests, one per variant of the version; return the version's
        first variant and the serialized EnvelopeSet.

        Raises:
            BadRequestError: a manifest does not check out, or variants are missing or repeated.
        """
        if not envelopes:
            raise BadRequestError("no rollback manifest given")
        rows = [self._verified_rollback(e) for e in envelopes]
        first = rows[0]
        if any((r.model_name, r.version) != (first.model_name, first.version) for r in rows):
            raise BadRequestError("the rollback manifests name different versions")
        variants = self._ctx.catalog.get_variants(first.model_name, first.version)
        wanted = {r.variant for r in variants}
        given = [r.variant for r in rows]
        if sorted(given) != sorted(wanted):
            raise BadRequestError(
                f"a rollback of {first.model_name} {first.version} needs one signed manifest "
                f"per variant ({', '.join(sorted(wanted))}); got {', '.join(given)}"
            )
        blob = manifest_pb2.EnvelopeSet(envelopes=envelopes).SerializeToString()
        return first, blob

    @rpc_errors
    @audited("CommitRollback", lambda r: f"model {_manifest_target(r.envelope)}")
    def CommitRollback(  # noqa: N802
        self, request: pb.AttachSignaturesRequest, context: Any
    ) -> pb.DeployResponse:
        require_admin(context, self._ctx.admin_token)
        row, blob = self._verified_rollback_set([request.envelope, *request.envelopes])
        self._ctx.catalog.deploy(row.model_name, row.version, envelope=blob)
        self._ctx.rollouts.supersede(row.model_name)
        log.warning(
            "explicit rollback of %s to %s deployed to the fleet", row.model_name, row.version
        )
        return pb.DeployResponse(model=_model_info(row, self._ctx.catalog.deployed()))

    @rpc_errors
    def ListModels(self, request: pb.ListModelsRequest, context: Any) -> pb.ListModelsResponse:  # noqa: N802
        require_admin(context, self._ctx.admin_token)
        deployed = self._ctx.catalog.deployed()
        return pb.ListModelsResponse(
            models=[_model_info(r, deployed) for r in self._ctx.catalog.list_models()]
        )

    @rpc_errors
    @audited("Deploy", lambda r: f"model {r.model_name} {r.version}")
    def Deploy(self, request: pb.DeployRequest, context: Any) -> pb.DeployResponse:  # noqa: N802
        require_admin(context, self._ctx.admin_token)
        self._require_signed(request.model_name, request.version)
        row = self._ctx.catalog.deploy(request.model_name, request.version)
        replaced = self._ctx.rollouts.supersede(row.model_name)
        log.info(
            "deployed %s %s to the fleet%s",
            row.model_name,
            row.version,
            f" (replacing rollouts {replaced})" if replaced else "",
        )
        return pb.DeployResponse(model=_model_info(row, self._ctx.catalog.deployed()))

    @rpc_errors
    def GetDevice(self, request: pb.DeviceRequest, context: Any) -> pb.DeviceInfo:  # noqa: N802
        require_admin(context, self._ctx.admin_token)
        info = _device_info(self._ctx.devices.get_device(request.device_id))
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
        return _device_info(self._ctx.devices.get_device(request.device_id))

    @rpc_errors
    @audited("RevokeDevice", lambda r: f"device {r.device_id}")
    def RevokeDevice(self, request: pb.DeviceRequest, context: Any) -> pb.DeviceInfo:  # noqa: N802
        require_admin(context, self._ctx.admin_token)
        self._ctx.devices.revoke(request.device_id)
        log.warning("device %s revoked", request.device_id)
        return _device_info(self._ctx.devices.get_device(request.device_id))

    @rpc_errors
    def ListDevices(self, request: pb.ListDevicesRequest, context: Any) -> pb.ListDevicesResponse:  # noqa: N802
        require_admin(context, self._ctx.admin_token)
        return pb.ListDevicesResponse(
            devices=[_device_info(r) for r in self._ctx.devices.list_devices()]
        )

    def _require_signed(self, model_name: str, version: str) -> ModelRow:
        """The version, when release keys have signed it.

        Raises:
            NotFoundError: no such version.
            BadRequestError: pushed for offline signing and not signed yet.
        """
        rows = self._ctx.catalog.get_variants(model_name, version)
        unsigned = [
            r.variant for r in rows if not manifest_pb2.Envelope.FromString(r.envelope).signatures
        ]
        if unsigned:
            raise BadRequestError(
                f"{model_name} {version} is not signed yet (variants {', '.join(unsigned)}): "
                "sign its manifests offline ('edgefleet manifest sign') and attach them "
                "('edgefleet manifest attach')"
            )
        return rows[0]

    # enrollment tokens --------------------------------------------------------------------------

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
            created_by=_actor(context),
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
            tokens=[
                pb.TokenInfo(
                    token_id=t["token_sha256"][:12],
                    created_unix=t["created_at"],
                    expires_unix=t["expires_at"],
                    uses_left=t["uses_left"],
                    labels=t["labels"],
                    note=t["note"],
                    created_by=t["created_by"],
                )
                for t in self._ctx.devices.list_enrollment_tokens()
            ]
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

    @rpc_errors
    def ExplainVariant(  # noqa: N802
        self, request: pb.ExplainVariantRequest, context: Any
    ) -> pb.ExplainVariantResponse:
        require_admin(context, self._ctx.admin_token)
        device = self._ctx.devices.get_device(request.device_id)
        explained = explain(
            self._ctx.catalog,
            self._ctx.rollouts,
            device.device_id,
            device.capabilities,
            request.model_name,
            version=request.version,
        )
        if explained is None:
            raise NotFoundError(f"model {request.model_name!r} has no versions")
        version, rows, choice = explained.version, explained.rows, explained.choice
        return pb.ExplainVariantResponse(
            device_id=device.device_id,
            model_name=request.model_name,
            version=version,
            variant=choice.variant or "",
            reason=choice.reason,
            hardware_class=explained.hardware_class,
            verdicts=[
                pb.VariantVerdict(
                    variant=r.variant,
                    quantization=r.quantization,
                    chosen=r.variant == choice.variant,
                    reason=choice.verdicts.get(r.variant, ""),
                )
                for r in rows
            ],
        )

    # rollouts ----------------------------------------------------------------------------------

    @rpc_errors
    @audited("CreateRollout", lambda r: f"model {r.model_name} {r.version}")
    def CreateRollout(self, request: pb.CreateRolloutRequest, context: Any) -> pb.RolloutInfo:  # noqa: N802
        require_admin(context, self._ctx.admin_token)
        self._require_signed(request.model_name, request.version)
        check_labels(request.selector, "selector label")
        row = self._ctx.rollouts.create(
            model_name=request.model_name,
            version=request.version,
            selector=dict(request.selector),
            waves=list(request.waves),
            success_threshold=request.success_threshold or DEFAULT_SUCCESS,
            failure_threshold=0.0
            if request.pause_on_any_failure
            else request.failure_threshold or DEFAULT_FAILURE,
            max_concurrent=request.max_concurrent,
            device_timeout_s=request.device_timeout_s or DEFAULT_DEVICE_TIMEOUT_S,
            created_by=_actor(context),
            allow_empty=request.allow_empty,
            health_gate=_health_gate(request.health_gate),
        )
        log.info(
            "rollout %d of %s %s created over %d device(s)",
            row.rollout_id,
            row.model_name,
            row.version,
            sum(w.counts.devices for w in row.wave_status),
        )
        self._ctx.wake_rollouts()
        return _rollout_info(row)

    @rpc_errors
    def GetRollout(self, request: pb.RolloutRequest, context: Any) -> pb.RolloutInfo:  # noqa: N802
        require_admin(context, self._ctx.admin_token)
        return _rollout_info(self._ctx.rollouts.get(request.rollout_id))

    @rpc_errors
    def ListRollouts(  # noqa: N802
        self, request: pb.ListRolloutsRequest, context: Any
    ) -> pb.ListRolloutsResponse:
        require_admin(context, self._ctx.admin_token)
        rows = self._ctx.rollouts.list_rollouts(request.model_name)
        return pb.ListRolloutsResponse(rollouts=[_rollout_info(r) for r in rows])

    @rpc_errors
    @audited("PauseRollout", lambda r: f"rollout {r.rollout_id}")
    def PauseRollout(self, request: pb.RolloutRequest, context: Any) -> pb.RolloutInfo:  # noqa: N802
        require_admin(context, self._ctx.admin_token)
        row = self._ctx.rollouts.transition(
            request.rollout_id, ("running",), "paused", f"paused by {_actor(context)}"
        )
        return _rollout_info(row)

    @rpc_errors
    @audited("ResumeRollout", lambda r: f"rollout {r.rollout_id}")
    def ResumeRollout(self, request: pb.RolloutRequest, context: Any) -> pb.RolloutInfo:  # noqa: N802
        require_admin(context, self._ctx.admin_token)
        row = self._ctx.rollouts.transition(
            request.rollout_id, ("paused",), "running", f"resumed by {_actor(context)}"
        )
        self._ctx.wake_rollouts()
        return _rollout_info(row)

    @rpc_errors
    @audited("AbortRollout", lambda r: f"rollout {r.rollout_id}")
    def AbortRollout(self, request: pb.RolloutRequest, context: Any) -> pb.RolloutInfo:  # noqa: N802
        require_admin(context, self._ctx.admin_token)
        row = self._ctx.rollouts.transition(
            request.rollout_id, ("running", "paused"), "aborted", f"aborted by {_actor(context)}"
        )
        return _rollout_info(row)

    @rpc_errors
    def PrepareRolloutRollback(  # noqa: N802
        self, request: pb.RolloutRequest, context: Any
    ) -> pb.PushModelResponse:
        require_admin(context, self._ctx.admin_token)
        rollout = self._ctx.rollouts.get(request.rollout_id)
        if not rollout.previous_version:
            raise ConflictError(
                f"rollout {rollout.rollout_id} has no previous version to roll back to "
                "(the model had no deployment before it); abort it instead"
            )
        return self._prepare_rollback(rollout.model_name, rollout.previous_version)

    @rpc_errors
    @audited("CommitRolloutRollback", lambda r: f"rollout {r.rollout_id}")
    def CommitRolloutRollback(  # noqa: N802
        self, request: pb.RolloutRollbackRequest, context: Any
    ) -> pb.RolloutInfo:
        require_admin(context, self._ctx.admin_token)
        rollout = self._ctx.rollouts.get(request.rollout_id)
        row, blob = self._verified_rollback_set([request.envelope, *request.envelopes])
        if (row.model_name, row.version) != (rollout.model_name, rollout.previous_version):
            raise BadRequestError(
                f"rollout {rollout.rollout_id} rolls back to {rollout.model_name} "
                f"{rollout.previous_version}, not {row.model_name} {row.version}"
            )
        updated = self._ctx.rollouts.set_rollback(
            rollout.rollout_id,
            blob,
            f"rolled back to {row.version} by {_actor(context)}",
        )
        log.warning(
            "rollout %d rolled back to %s %s", rollout.rollout_id, row.model_name, row.version
        )
        return _rollout_info(updated)

    # cloud routing -----------------------------------------------------------------------------

    @rpc_errors
    @audited("SetRoutingPolicy", lambda r: f"routing {r.model_name}")
    def SetRoutingPolicy(  # noqa: N802
        self, request: pb.RoutingPolicyInfo, context: Any
    ) -> pb.RoutingPolicyInfo:
        require_admin(context, self._ctx.admin_token)
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
            _actor(context),
        )
        self._tell_routing(row.selector)
        return _routing_info(row)

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
        require_admin(context, self._ctx.admin_token)
        rows = self._ctx.routing.list(request.model_name)
        return pb.ListRoutingPoliciesResponse(policies=[_routing_info(r) for r in rows])

    @rpc_errors
    @audited("DeleteRoutingPolicy", lambda r: f"routing {r.model_name}")
    def DeleteRoutingPolicy(  # noqa: N802
        self, request: pb.DeleteRoutingPolicyRequest, context: Any
    ) -> pb.ListRoutingPoliciesResponse:
        require_admin(context, self._ctx.admin_token)
        self._ctx.routing.delete(request.model_name, dict(request.selector))
        self._tell_routing(dict(request.selector))
        rows = self._ctx.routing.list(request.model_name)
        return pb.ListRoutingPoliciesResponse(policies=[_routing_info(r) for r in rows])

    @rpc_errors
    @audited("SetPrices", lambda r: "prices")
    def SetPrices(self, request: pb.PriceTable, context: Any) -> pb.PriceTable:  # noqa: N802
        require_admin(context, self._ctx.admin_token)
        prices = Prices(
            cloud_per_request=request.cloud_per_request,
            energy_per_kwh=request.energy_per_kwh,
            device_power_w=request.device_power_w,
            power_by_class=dict(request.power_by_class),
        )
        self._ctx.routing.set_prices(prices)
        return _price_table(prices)

    @rpc_errors
    def GetPrices(self, request: pb.GetPricesRequest, context: Any) -> pb.PriceTable:  # noqa: N802
        require_admin(context, self._ctx.admin_token)
        return _price_table(self._ctx.routing.prices())

    @rpc_errors
    def GetCosts(self, request: pb.GetCostsRequest, context: Any) -> pb.CostReport:  # noqa: N802
        require_admin(context, self._ctx.admin_token)
        prices = self._ctx.routing.prices()
        rows = summarize(self._ctx.routing.usage(request.group_by, request.model_name), prices)
        report = pb.CostReport(prices=_price_table(prices), group_by=request.group_by)
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

    # fleet benchmarks --------------------------------------------------------------------------

    @rpc_errors
    @audited("RequestBenchmark", lambda r: f"model {r.model_name}")
    def RequestBenchmark(  # noqa: N802
        self, request: pb.RequestBenchmarkRequest, context: Any
    ) -> pb.RequestBenchmarkResponse:
        require_admin(context, self._ctx.admin_token)
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
        require_admin(context, self._ctx.admin_token)
        return pb.BenchReport(
            rows=[
                pb.BenchRow(
                    version=r.version,
                    variant=r.variant,
                    quantization=r.quantization,
                    hardware_class=r.hardware_class,
                    backend=r.backend,
                    devices=r.devices,
                    p50_ms=r.p50_ms,
                    p95_ms=r.p95_ms,
                    throughput_per_s=r.throughput_per_s,
                    latest_unix=r.latest,
                    source=r.source,
                )
                for r in self._ctx.bench.report(request.model_name)
            ]
        )

    # audit -------------------------------------------------------------------------------------

    @rpc_errors
    def ListAudit(self, request: pb.ListAuditRequest, context: Any) -> pb.ListAuditResponse:  # noqa: N802
        require_admin(context, self._ctx.admin_token)
        rows = self._ctx.audit.entries(min(request.limit or 100, 1000), request.before_id)
        return pb.ListAuditResponse(
            entries=[
                pb.AuditEntry(
                    id=r.id,
                    at_unix=r.at,
                    actor=r.actor,
                    action=r.action,
                    target=r.target,
                    detail=r.detail,
                    ok=r.ok,
                    error=r.error,
                )
                for r in rows
            ]
        )
