"""AdminService: push models, deploy them, list devices and models."""

from __future__ import annotations

import functools
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from google.protobuf.json_format import MessageToJson
from google.protobuf.message import DecodeError

from agent.errors import ManifestError, ModelFileError
from agent.inference.modelfile import MAX_MODEL_BYTES, ModelInfo, inspect_model_file
from agent.updates.trust import TrustedKeys, count_signers, pin_keylist
from fleet_server.api._errors import rpc_errors
from fleet_server.api.auth import require_admin
from fleet_server.catalog.smoke import expect
from fleet_server.errors import AlreadyExistsError, BadRequestError, ConflictError, FleetError
from fleet_server.signing.keys import ManifestSigner
from fleet_server.storage.db import DeviceRow, ModelRow
from fleet_server.storage.rollouts import RolloutRow
from protos import admin_pb2 as pb
from protos import admin_pb2_grpc as pb_grpc
from protos import manifest_pb2
from protos.envelope import MANIFEST_PAYLOAD_TYPE

if TYPE_CHECKING:
    from fleet_server.api.server import ServerContext

__all__ = ["MANIFEST_LIFETIME_S", "AdminServicer"]

log = logging.getLogger(__name__)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# Semantic version: MAJOR.MINOR.PATCH with optional -prerelease and +build.
_SEMVER = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?$"
)
_VARIANT = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
MANIFEST_LIFETIME_S = 365 * 24 * 3600
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
    )
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
        )
    return info


def _actor(context: Any) -> str:
    """Who made a call, for the audit log. (One admin credential today: the token.)"""
    return f"admin-token@{context.peer() or 'unknown'}"


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
                self._ctx.rollouts.audit(
                    _actor(context), action, target(request), detail, ok=False, error=str(exc)
                )
                raise
            self._ctx.rollouts.audit(_actor(context), action, target(request), detail, ok=True)
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


def _inspect(path: Path, what: str) -> ModelInfo:
    try:
        return inspect_model_file(path)
    except ModelFileError as exc:
        raise BadRequestError(f"rejected {what}: {str(exc).split(': ', 1)[-1]}") from exc


def _check_fallback(model: ModelInfo, fallback: ModelInfo) -> None:
    """A CPU fallback must stand in for an Edge TPU model with the same inputs and outputs."""
    if not model.edgetpu:
        raise BadRequestError(
            "a CPU fallback is for Edge TPU-compiled models; this one runs on CPU"
        )
    if fallback.edgetpu:
        raise BadRequestError("the CPU fallback is itself compiled for the Edge TPU")

    def io(info: ModelInfo) -> list[tuple[str, tuple[int, ...]]]:
        return [(t.dtype, t.shape) for t in (*info.inputs, *info.outputs)]

    if io(model) != io(fallback):
        raise BadRequestError(
            f"the CPU fallback's inputs and outputs {io(fallback)} differ from the model's "
            f"{io(model)}"
        )


class AdminServicer(pb_grpc.AdminServiceServicer):
    """What the admin CLI calls. Every method requires the admin token."""

    def __init__(self, ctx: ServerContext) -> None:
        self._ctx = ctx
        self._push_lock = threading.Lock()

    def _discard(self, stored: list[tuple[str, Path]]) -> None:
        """Remove artifacts of a push that failed, unless another version uses them."""
        for digest, path in stored:
            if self._ctx.db.model_by_sha(digest) is None:
                path.unlink(missing_ok=True)

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
            response = self._push_meta(meta, request_iterator)
        except FleetError as exc:
            self._ctx.rollouts.audit(
                _actor(context), "PushModel", target, detail, ok=False, error=str(exc)
            )
            raise
        self._ctx.rollouts.audit(_actor(context), "PushModel", target, detail, ok=True)
        return response

    def _push_meta(
        self, meta: pb.PushModelMeta, request_iterator: Iterator[pb.PushModelRequest]
    ) -> pb.PushModelResponse:
        if not _NAME.match(meta.model_name):
            raise BadRequestError(
                f"model name {meta.model_name!r} is invalid: use 1-64 of A-Z a-z 0-9 _ . -"
            )
        if not _SEMVER.match(meta.version) or len(meta.version) > 32:
            raise BadRequestError(f"version {meta.version!r} is not a semantic version like 1.0.0")
        variant = meta.variant or "default"
        if not _VARIANT.match(variant):
            raise BadRequestError(f"variant {variant!r} is invalid")
        if meta.size == 0 or meta.size > MAX_MODEL_BYTES:
            raise BadRequestError(f"model size {meta.size} is outside 1..{MAX_MODEL_BYTES} bytes")

        # Fail before storing anything when nothing here could sign the manifest, or when the
        # version exists already.
        signer = None if meta.sign_offline else self._ctx.keys.manifest_signer()
        if self._ctx.db.model_exists(meta.model_name, meta.version):
            raise AlreadyExistsError(
                f"model {meta.model_name} version {meta.version} exists already; "
                "versions are immutable, push a new version"
            )
        if meta.fallback_size > MAX_MODEL_BYTES:
            raise BadRequestError(f"fallback size {meta.fallback_size} is over {MAX_MODEL_BYTES}")
        first_fallback: list[bytes] = []

        def data() -> Iterator[bytes]:
            for message in request_iterator:
                part = message.WhichOneof("part")
                if part == "data":
                    yield message.data
                elif part == "fallback_data" and meta.fallback_size:
                    first_fallback.append(message.fallback_data)
                    return
                else:
                    raise BadRequestError(f"unexpected {part} after the model's data")

        def fallback_data() -> Iterator[bytes]:
            yield from first_fallback
            for message in request_iterator:
                if message.WhichOneof("part") != "fallback_data":
                    raise BadRequestError("only fallback data may follow the fallback's data")
                yield message.fallback_data

        store = self._ctx.artifacts
        sha256, size, path = store.put(data(), max_bytes=meta.size)
        stored = [(sha256, path)]
        fallback_sha: str | None = None
        try:
            if size != meta.size:
                raise BadRequestError(f"announced {meta.size} bytes, received {size}")
            info = _inspect(path, "the model")
            if meta.fallback_size:
                fallback_sha, fallback_size, fallback_path = store.put(
                    fallback_data(), max_bytes=meta.fallback_size
                )
                stored.append((fallback_sha, fallback_path))
                if fallback_size != meta.fallback_size:
                    raise BadRequestError(
                        f"announced a {meta.fallback_size}-byte fallback, received {fallback_size}"
                    )
                _check_fallback(info, _inspect(fallback_path, "the CPU fallback"))
            runnable = (fallback_path if fallback_sha else None) if info.edgetpu else path
            smoke = expect(info, runnable, meta.sample, meta.smoke_tolerance)
            sample_sha, sample_size, sample_path = store.put(
                [smoke.sample], max_bytes=len(smoke.sample)
            )
            stored.append((sample_sha, sample_path))
            packed = None if meta.no_compression else store.put_compressed(path)
            if packed is not None:
                stored.append((packed[0], packed[2]))
        except BaseException:
            self._discard(stored)
            raise
        now = int(time.time())
        # One counter per release, in this process; across replicas the unique index decides.
        with self._push_lock:
            return self._record(
                meta,
                variant=variant,
                now=now,
                info=info,
                stored=stored,
                sha256=sha256,
                size=size,
                smoke=smoke,
                sample=(sample_sha, sample_size),
                packed=packed,
                fallback_sha=fallback_sha,
                signer=signer,
            )

    def _record(
        self,
        meta: Any,
        *,
        variant: str,
        now: int,
        info: ModelInfo,
        stored: list[tuple[str, Path]],
        sha256: str,
        size: int,
        smoke: Any,
        sample: tuple[str, int],
        packed: tuple[str, int, Path] | None,
        fallback_sha: str | None,
        signer: ManifestSigner | None,
    ) -> pb.PushModelResponse:
        """Number, sign and store a pushed version (under the push lock)."""
        sample_sha, sample_size = sample
        counter = self._ctx.db.next_release_counter(meta.model_name)
        manifest = manifest_pb2.Manifest(
            model_name=meta.model_name,
            version=meta.version,
            release_counter=counter,
            variant=variant,
            sha256=sha256,
            size=size,
            artifact_id=sha256,
            created_unix=now,
            expires_unix=now + MANIFEST_LIFETIME_S,
            fleet_id=self._ctx.fleet_id,
            requirements=manifest_pb2.Requirements(edgetpu=info.edgetpu),
        )
        manifest.smoke.CopyFrom(
            manifest_pb2.SmokeTest(
                sample=manifest_pb2.ArtifactRef(
                    artifact_id=sample_sha, sha256=sample_sha, size=sample_size, variant="sample"
                ),
                top_indices=smoke.indices,
                top_scores=smoke.scores,
                tolerance=smoke.tolerance,
            )
        )
        if packed is not None:
            manifest.compressed.CopyFrom(
                manifest_pb2.ArtifactRef(
                    artifact_id=packed[0], sha256=packed[0], size=packed[1], variant="zstd"
                )
            )
        if fallback_sha is not None:
            manifest.cpu_fallback.CopyFrom(
                manifest_pb2.ArtifactRef(
                    artifact_id=fallback_sha,
                    sha256=fallback_sha,
                    size=meta.fallback_size,
                    variant="cpu",
                )
            )
        if signer is not None:
            envelope = signer.sign(manifest)
        else:
            envelope = manifest_pb2.Envelope(
                payload_type=MANIFEST_PAYLOAD_TYPE,
                payload=manifest.SerializeToString(deterministic=True),
            )
        row = ModelRow(
            model_name=meta.model_name,
            version=meta.version,
            variant=variant,
            release_counter=counter,
            sha256=sha256,
            size=size,
            edgetpu=info.edgetpu,
            envelope=envelope.SerializeToString(),
            created_at=now,
            fallback_sha256=fallback_sha,
            sample_sha256=sample_sha,
            compressed_sha256=packed[0] if packed is not None else None,
        )
        try:
            self._ctx.db.add_model(row)
        except BaseException:
            self._discard(stored)
            raise
        log.info(
            "pushed %s %s (%s, %d bytes, release %d)",
            meta.model_name,
            meta.version,
            sha256[:12],
            size,
            counter,
        )
        return pb.PushModelResponse(
            model=_model_info(row, self._ctx.db.deployed()),
            unsigned_manifest=envelope.payload if signer is None else b"",
        )

    @rpc_errors
    @audited("AttachSignatures", lambda r: f"model {_manifest_target(r.envelope)}")
    def AttachSignatures(  # noqa: N802
        self, request: pb.AttachSignaturesRequest, context: Any
    ) -> pb.PushModelResponse:
        require_admin(context, self._ctx.admin_token)
        envelope = request.envelope
        manifest = _manifest_of(envelope)
        row = self._ctx.db.get_model(manifest.model_name, manifest.version)
        stored = manifest_pb2.Envelope.FromString(row.envelope)
        if stored.payload != envelope.payload:
            raise BadRequestError(
                f"the signed manifest differs from the one pushed for {row.model_name} "
                f"{row.version}; sign the file 'models push --sign-offline' wrote"
            )
        now = time.time()
        trust = self._trust(now)
        signers = count_signers(envelope, trust.release_keys(now))
        if len(signers) < trust.release_threshold:
            raise BadRequestError(
                f"{len(signers)} valid release-key signature(s); key list version "
                f"{trust.version} requires {trust.release_threshold}"
            )
        self._ctx.db.set_envelope(row.model_name, row.version, envelope.SerializeToString())
        log.info("attached offline signatures to %s %s", row.model_name, row.version)
        updated = self._ctx.db.get_model(row.model_name, row.version)
        return pb.PushModelResponse(model=_model_info(updated, self._ctx.db.deployed()))

    @rpc_errors
    def PrepareRollback(  # noqa: N802
        self, request: pb.DeployRequest, context: Any
    ) -> pb.PushModelResponse:
        require_admin(context, self._ctx.admin_token)
        return self._prepare_rollback(request.model_name, request.version)

    def _prepare_rollback(self, model_name: str, version: str) -> pb.PushModelResponse:
        """An explicit rollback manifest for an older version, for the root keys to sign."""
        row = self._ctx.db.get_model(model_name, version)
        manifest = manifest_pb2.Manifest.FromString(
            manifest_pb2.Envelope.FromString(row.envelope).payload
        )
        now = int(time.time())
        manifest.explicit_rollback = True
        manifest.rollback_from = self._ctx.db.next_release_counter(manifest.model_name) - 1
        manifest.created_unix = now
        manifest.expires_unix = now + MANIFEST_LIFETIME_S
        return pb.PushModelResponse(
            model=_model_info(row, self._ctx.db.deployed()),
            unsigned_manifest=manifest.SerializeToString(deterministic=True),
        )

    def _verified_rollback(self, envelope: manifest_pb2.Envelope) -> ModelRow:
        """The version a root-signed rollback manifest names, once it checks out.

        Raises:
            BadRequestError: not what PrepareRollback prepared, or too few root signatures.
        """
        manifest = _manifest_of(envelope)
        row = self._ctx.db.get_model(manifest.model_name, manifest.version)
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

    @rpc_errors
    @audited("CommitRollback", lambda r: f"model {_manifest_target(r.envelope)}")
    def CommitRollback(  # noqa: N802
        self, request: pb.AttachSignaturesRequest, context: Any
    ) -> pb.DeployResponse:
        require_admin(context, self._ctx.admin_token)
        row = self._verified_rollback(request.envelope)
        self._ctx.db.deploy(
            row.model_name, row.version, envelope=request.envelope.SerializeToString()
        )
        self._ctx.rollouts.supersede(row.model_name)
        log.warning(
            "explicit rollback of %s to %s deployed to the fleet", row.model_name, row.version
        )
        return pb.DeployResponse(model=_model_info(row, self._ctx.db.deployed()))

    @rpc_errors
    def ListModels(self, request: pb.ListModelsRequest, context: Any) -> pb.ListModelsResponse:  # noqa: N802
        require_admin(context, self._ctx.admin_token)
        deployed = self._ctx.db.deployed()
        return pb.ListModelsResponse(
            models=[_model_info(r, deployed) for r in self._ctx.db.list_models()]
        )

    @rpc_errors
    @audited("Deploy", lambda r: f"model {r.model_name} {r.version}")
    def Deploy(self, request: pb.DeployRequest, context: Any) -> pb.DeployResponse:  # noqa: N802
        require_admin(context, self._ctx.admin_token)
        self._require_signed(request.model_name, request.version)
        row = self._ctx.db.deploy(request.model_name, request.version)
        replaced = self._ctx.rollouts.supersede(row.model_name)
        log.info(
            "deployed %s %s to the fleet%s",
            row.model_name,
            row.version,
            f" (replacing rollouts {replaced})" if replaced else "",
        )
        return pb.DeployResponse(model=_model_info(row, self._ctx.db.deployed()))

    @rpc_errors
    def GetDevice(self, request: pb.DeviceRequest, context: Any) -> pb.DeviceInfo:  # noqa: N802
        require_admin(context, self._ctx.admin_token)
        return _device_info(self._ctx.db.get_device(request.device_id))

    @rpc_errors
    @audited("LabelDevice", lambda r: f"device {r.device_id}")
    def LabelDevice(self, request: pb.LabelDeviceRequest, context: Any) -> pb.DeviceInfo:  # noqa: N802
        require_admin(context, self._ctx.admin_token)
        for key, value in request.set.items():
            if not _NAME.match(key) or len(value) > 255:
                raise BadRequestError(f"label {key!r} is invalid (key: 1-64 of A-Z a-z 0-9 _ . -)")
        self._ctx.db.set_labels(request.device_id, dict(request.set), list(request.remove))
        log.info("labels of %s changed", request.device_id)
        return _device_info(self._ctx.db.get_device(request.device_id))

    @rpc_errors
    @audited("RevokeDevice", lambda r: f"device {r.device_id}")
    def RevokeDevice(self, request: pb.DeviceRequest, context: Any) -> pb.DeviceInfo:  # noqa: N802
        require_admin(context, self._ctx.admin_token)
        self._ctx.db.revoke(request.device_id)
        log.warning("device %s revoked", request.device_id)
        return _device_info(self._ctx.db.get_device(request.device_id))

    @rpc_errors
    def ListDevices(self, request: pb.ListDevicesRequest, context: Any) -> pb.ListDevicesResponse:  # noqa: N802
        require_admin(context, self._ctx.admin_token)
        return pb.ListDevicesResponse(
            devices=[_device_info(r) for r in self._ctx.db.list_devices()]
        )

    def _require_signed(self, model_name: str, version: str) -> ModelRow:
        """The version, when release keys have signed it.

        Raises:
            NotFoundError: no such version.
            BadRequestError: pushed for offline signing and not signed yet.
        """
        row = self._ctx.db.get_model(model_name, version)
        if not manifest_pb2.Envelope.FromString(row.envelope).signatures:
            raise BadRequestError(
                f"{row.model_name} {row.version} is not signed yet: sign its "
                "manifest offline ('edgefleet manifest sign') and attach it "
                "('edgefleet manifest attach')"
            )
        return row

    # rollouts ----------------------------------------------------------------------------------

    @rpc_errors
    @audited("CreateRollout", lambda r: f"model {r.model_name} {r.version}")
    def CreateRollout(self, request: pb.CreateRolloutRequest, context: Any) -> pb.RolloutInfo:  # noqa: N802
        require_admin(context, self._ctx.admin_token)
        self._require_signed(request.model_name, request.version)
        for key, value in request.selector.items():
            if not _NAME.match(key) or len(value) > 255:
                raise BadRequestError(f"selector label {key!r} is invalid")
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
        row = self._verified_rollback(request.envelope)
        if (row.model_name, row.version) != (rollout.model_name, rollout.previous_version):
            raise BadRequestError(
                f"rollout {rollout.rollout_id} rolls back to {rollout.model_name} "
                f"{rollout.previous_version}, not {row.model_name} {row.version}"
            )
        updated = self._ctx.rollouts.set_rollback(
            rollout.rollout_id,
            request.envelope.SerializeToString(),
            f"rolled back to {row.version} by {_actor(context)}",
        )
        log.warning(
            "rollout %d rolled back to %s %s", rollout.rollout_id, row.model_name, row.version
        )
        return _rollout_info(updated)

    # audit -------------------------------------------------------------------------------------

    @rpc_errors
    def ListAudit(self, request: pb.ListAuditRequest, context: Any) -> pb.ListAuditResponse:  # noqa: N802
        require_admin(context, self._ctx.admin_token)
        rows = self._ctx.rollouts.audit_entries(min(request.limit or 100, 1000), request.before_id)
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
