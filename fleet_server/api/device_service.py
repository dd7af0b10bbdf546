"""DeviceService: enrollment, check-in, artifact download, status reports, log uploads."""

from __future__ import annotations

import hashlib
import hmac
import logging
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import DecodeError
from sqlalchemy.exc import OperationalError

from fleet_server.api._errors import abort_for, rpc_errors
from fleet_server.api.auth import require_device
from fleet_server.catalog.select import DeviceProfile
from fleet_server.errors import (
    AuthError,
    BadRequestError,
    ConflictError,
    FleetError,
    TransientError,
)
from fleet_server.registry.ca import public_key_sha256
from fleet_server.registry.capabilities import bounded
from fleet_server.registry.checkins import CachedAnswer, state_version
from fleet_server.registry.devlogs import REQUEST_TTL_S, read_upload
from fleet_server.registry.labels import check_labels
from fleet_server.registry.refusals import CLEAR_TTL_S, RefusalKey, refusals_of
from fleet_server.rollouts.desired import (
    Resolved,
    Target,
    device_targets,
    explain,
    held_rows,
    resolve,
    targets_for,
)
from fleet_server.rollouts.outcomes import Outcome
from fleet_server.rollouts.states import DeviceState
from fleet_server.rollouts.store import DesiredRow
from fleet_server.routing.prices import Prices
from fleet_server.routing.store import RoutingRow
from fleet_server.storage.db import stored_text
from fleet_server.telemetry.throttle import Budget, OncePer
from protos import device_pb2 as pb
from protos import device_pb2_grpc as pb_grpc
from protos import manifest_pb2, telemetry_pb2
from protos.chunks import encode_chunk
from protos.names import is_name, is_version
from protos.topics import device_name

if TYPE_CHECKING:
    from fleet_server.context import ServerContext

__all__ = ["DeviceServicer"]

log = logging.getLogger(__name__)
_MAX_AUTH_CACHE = 200_000
GENERATION_MAX_AGE_S = 0.5
UPLOAD_DEADLINE_S = 60.0  # a log upload that has not ended by then is cut off, not stored


# What an update report means for a rollout.
class DeviceServicer(pb_grpc.DeviceServiceServicer):
    """What agents call."""

    def __init__(self, ctx: ServerContext) -> None:
        self._ctx = ctx
        self._answers = ctx.answers
        self._auth: dict[bytes, tuple[int, str]] = {}
        # (device, file) -> when GetDownloadUrl last noted the delivery (monotonic seconds)
        self._url_given: dict[tuple[str, str], float] = {}
        self._keylist: tuple[bytes, bytes] | None = None
        # The routing policies and prices of one fleet generation (they change it).
        self._routing: tuple[int, list[RoutingRow], Prices] | None = None
        # New events a device may store through Deliver: the ingest guard's burst and rate,
        # so the device API lets a device store no more than MQTT does.
        self._delivered = Budget(burst=1000.0, rate=4.0)
        # Devices uploading their log now: one stream each holds a server thread at most.
        self._uploading: set[str] = set()
        self._uploading_lock = threading.Lock()

    @rpc_errors
    def Enroll(self, request: pb.EnrollRequest, context: Any) -> pb.EnrollResponse:  # noqa: N802
        token = request.enrollment_token
        name = device_name(request.requested_name)
        if not request.csr_pem:
            raise BadRequestError(
                "enrollment needs a certificate signing request (csr_pem); upgrade the agent"
            )
        # Check the CSR before spending the token, so a bad request does not burn it. Its
        # signature verifies: only the holder of its key can ask again with the same key.
        csr = self._ctx.ca.check_csr(request.csr_pem, expected_cn=name)
        bootstrap = bool(
            token
            and self._ctx.enrollment_token
            and hmac.compare_digest(token.encode(), self._ctx.enrollment_token.encode())
        )
        if not token:
            raise AuthError(
                "enrollment token is unknown, expired or used up; ask the fleet admin for a "
                "new one ('edgefleet tokens create')"
            )
        enrolled = self._ctx.devices.enroll(
            name,
            token=None if bootstrap else token,
            key_sha256=public_key_sha256(csr),
            labels=check_labels(request.labels),
            capabilities=MessageToDict(
                bounded(request.capabilities), preserving_proto_field_name=True
            ),
            certify=lambda device_id: self._ctx.ca.sign_device_csr(
                request.csr_pem, device_id, expected_cn=name
            ),
        )
        device_id, issued = enrolled.device_id, enrolled.issued
        if enrolled.repeated:
            log.info(
                "answered device %s's enrollment again (same token and key; certificate %s)",
                device_id,
                issued.serial[:12],
            )
        else:
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
        device_id = require_device(context, self._ctx.devices)
        issued = self._ctx.ca.sign_device_csr(request.csr_pem, device_id, expected_cn=device_id)
        self._ctx.devices.set_certificate(device_id, issued.serial, issued.not_after)
        log.info("renewed the certificate of %s (%s)", device_id, issued.serial[:12])
        return pb.RenewResponse(certificate_pem=issued.pem)

    @rpc_errors
    def CheckIn(self, request: pb.CheckInRequest, context: Any) -> pb.CheckInResponse:  # noqa: N802
        # Replicas notice a change within GENERATION_MAX_AGE_S; a nudged device asks fresh.
        generation = self._ctx.db.generation(0.0 if request.fresh else GENERATION_MAX_AGE_S)
        device_id = self._device(context, generation)
        has_caps = request.HasField("capabilities")
        caps = bounded(request.capabilities, device_id) if has_caps else None
        self._ctx.last_seen.note(device_id, caps.SerializeToString() if caps is not None else None)
        active = {
            m.model_name: m.version
            for m in request.active[:64]
            if is_name(m.model_name) and is_version(m.version)
        }
        reported = tuple(sorted(active.items()))
        refusals = refusals_of(request)
        answer = self._answers.get(device_id)
        profile = DeviceProfile.from_capabilities(caps) if caps is not None else None
        if profile is None and answer is not None:
            profile = answer.key[1]  # the capabilities it reported last
        key = (generation, profile, self._keylist_digest())
        if (
            answer is None
            or request.fresh
            or profile is None
            or answer.key != key
            or answer.active != reported
            or answer.refusals != refusals
            or time.time() >= answer.valid_until
        ):
            self._answers.misses += 1
            answer = self._answer(
                device_id,
                active=active,
                key=key,
                reported=reported,
                refusals=refusals,
                profile=profile,
                previous=answer,
            )
        else:
            self._answers.hits += 1
        if request.state_version and request.state_version == answer.state_version:
            return pb.CheckInResponse(
                state_version=answer.state_version,
                unchanged=True,
                next_checkin_s=self._ctx.checkin_interval_s,
            )
        return pb.CheckInResponse.FromString(answer.response)

    def _keylist_digest(self) -> bytes:
        # A rotation (by 'edgefleet keys rotate', another process) reaches check-ins within 1 s.
        raw = self._ctx.keys.keylist_bytes(max_age_s=1.0)
        if self._keylist is None or self._keylist[0] is not raw:
            self._keylist = (raw, hashlib.sha256(raw).digest())
        return self._keylist[1]

    def _device(self, context: Any, generation: int) -> str:
        """The caller's device id; the certificate check is cached per fleet generation
        (revocations and renewals bump it)."""
        pems = (context.auth_context() or {}).get("x509_pem_cert") or []
        cached = self._auth.get(pems[0]) if pems else None
        if cached is not None and cached[0] == generation:
            return cached[1]
        device_id = require_device(context, self._ctx.devices)
        if len(self._auth) > _MAX_AUTH_CACHE:
            self._auth.clear()
        self._auth[pems[0]] = (generation, device_id)
        return device_id

    def _answer(
        self,
        device_id: str,
        *,
        active: dict[str, str],
        key: tuple[Any, ...],
        reported: tuple[tuple[str, str], ...],
        refusals: tuple[RefusalKey, ...] | None,
        profile: DeviceProfile | None,
        previous: CachedAnswer | None,
    ) -> CachedAnswer:
        """Compute a device's answer from the database (the slow path) and cache it."""
        now = int(time.time())
        clears = self._ctx.refusals.check_in(
            device_id,
            refusals,
            record=previous is None or previous.refusals != refusals,
            now=now,
        )
        known = dict(previous.active) if previous is not None else {}
        changed = {name: v for name, v in active.items() if known.get(name) != v}
        # Only models the catalog has: a device cannot grow its registry rows with names.
        for name in self._ctx.catalog.known_models(changed):
            self._ctx.devices.set_active_version(device_id, name, changed[name])
        targets, rows = device_targets(self._ctx.catalog, self._ctx.rollouts, device_id)
        for row in rows:
            if (
                row.device_state == DeviceState.ASSIGNED
                and active.get(row.model_name) == row.version
            ):
                # Installed without a report reaching us (or installed before the rollout).
                self._ctx.rollouts.report(
                    device_id, row.model_name, row.version, DeviceState.INSTALLED
                )
        targets, until = self._windowed(
            device_id, key[0], targets=targets, rows=rows, active=active, now=now
        )
        if profile is None:
            stored = self._ctx.devices.get_device(device_id).capabilities
            profile = DeviceProfile.from_capabilities(stored)
        resolved = resolve(self._ctx.catalog, targets, profile)
        response = pb.CheckInResponse(
            next_checkin_s=self._ctx.checkin_interval_s,
            mqtt_url=self._ctx.device_mqtt_url,
            keylist=manifest_pb2.Envelope.FromString(self._ctx.keys.keylist_bytes()),
        )
        for _name, raw in sorted(resolved.envelopes.items()):
            response.desired.append(manifest_pb2.Envelope.FromString(raw))
        for name, (version, why) in sorted(resolved.cloud.items()):
            response.cloud.add(model_name=name, version=version, reason=why)
        self._add_routing(response, device_id, key[0], resolved)
        for clear in clears:
            response.clear_refusals.add(model_name=clear.model_name, sha256=clear.sha256)
        wanted = self._ctx.device_logs.pending(device_id, now)
        if wanted is not None:
            response.log_request.id = wanted.request_id
            response.log_request.lines = wanted.lines
            response.log_request.level = wanted.level
        response.mirror_url = self._ctx.mirror_url
        response.state_version = state_version(response.SerializeToString(deterministic=True))
        answer = CachedAnswer(
            key,
            reported,
            response.SerializeToString(),
            response.state_version,
            refusals,
            min(  # the answer holds until a clear, a log request or a window edge runs out
                [until]
                + [c.requested_at + CLEAR_TTL_S for c in clears]
                + ([wanted.requested_at + REQUEST_TTL_S + 1] if wanted is not None else []),
            ),
        )
        self._answers.put(device_id, answer)
        return answer

    def _windowed(
        self,
        device_id: str,
        generation: int,
        *,
        targets: dict[str, Target],
        rows: list[DesiredRow],
        active: dict[str, str],
        now: float,
    ) -> tuple[dict[str, Target], float]:
        """The targets once a closed maintenance window has held back what the device was told
        to update to and does not run yet, and until when the answer holds (the next time one
        of its windows opens or closes; forever when no window holds it)."""
        pending = held_rows(rows, active)
        windows = self._ctx.windows.current(generation) if pending else []
        if not windows:
            return targets, float("inf")
        verdict, changes = self._ctx.windows.device_verdict(device_id, windows, now)
        until = float("inf") if changes is None else changes
        if verdict.allowed:
            return targets, until
        log.debug("device %s: update held back, %s", device_id, verdict.reason)
        return targets_for(self._ctx.catalog.deployments(), rows, pending), until

    def _add_routing(
        self,
        response: pb.CheckInResponse,
        device_id: str,
        generation: int,
        resolved: Resolved,
    ) -> None:
        """The routing policy of each model the device runs or is routed to the cloud for, and
        the cloud endpoint when one of them uses it."""
        if self._routing is None or self._routing[0] != generation:
            self._routing = (generation, self._ctx.routing.list(), self._ctx.routing.prices())
        _, rows, prices = self._routing
        policies = (
            self._ctx.routing.for_device(self._ctx.devices.get_device(device_id).labels, rows)
            if rows
            else {}
        )
        uses_cloud = False
        for name in sorted(set(resolved.envelopes) | set(resolved.cloud)):
            row = policies.get(name)
            if name in resolved.cloud:
                kind, why = "cloud", f"no variant fits: {resolved.cloud[name][1]}"
            elif row is not None:
                kind, why = row.policy, ""
            else:
                continue
            policy = response.routing.add(
                model_name=name,
                policy=kind,
                cloud_cost=prices.cloud_per_request,
                reason=why[:512],
            )
            if row is not None:
                policy.threshold = row.threshold
                policy.latency_budget_ms = row.latency_budget_ms
                policy.cloud_model = row.cloud_model
                if row.max_per_minute is not None:
                    policy.max_per_minute = row.max_per_minute
                if row.max_spend_per_day is not None:
                    policy.max_spend_per_day = row.max_spend_per_day
            uses_cloud = uses_cloud or kind != "local"
        if uses_cloud and self._ctx.cloud_endpoint is not None:
            response.cloud_endpoint.CopyFrom(self._ctx.cloud_endpoint)

    @rpc_errors
    def ReportBenchmark(  # noqa: N802
        self, request: pb.BenchmarkReport, context: Any
    ) -> pb.StatusAck:
        device_id = require_device(context, self._ctx.devices)
        if not is_name(request.model_name) or not is_version(request.version):
            raise BadRequestError("benchmark report names an invalid model or version")
        device = self._ctx.devices.get_device(device_id)
        installed = {(m.model_name, m.version) for m in device.models if m.state == "INSTALLED"}
        if (request.model_name, request.version) not in installed:
            # Only what a device runs may move the fleet's numbers for its hardware class.
            raise BadRequestError(
                f"{request.model_name} {request.version} is not installed on this device"
            )
        # And only the variant file it was given: the variant selection picks for it (or that
        # variant's CPU fallback), not another one of the same version.
        explained = explain(
            self._ctx.catalog,
            self._ctx.rollouts,
            device_id,
            device.capabilities,
            request.model_name,
            version=request.version,
        )
        if explained is None:
            raise BadRequestError(f"{request.model_name} has no versions")
        chosen = next((r for r in explained.rows if r.variant == explained.choice.variant), None)
        if chosen is None or request.sha256 not in (chosen.sha256, chosen.fallback_sha256):
            raise BadRequestError(
                f"{request.sha256[:12]}... is not the variant of {request.model_name} "
                f"{request.version} this device runs"
            )
        self._ctx.bench.record(device_id, explained.hardware_class, request)
        log.info(
            "device %s (%s) benchmarked %s %s: p50 %.3f ms on %s",
            device_id,
            explained.hardware_class,
            request.model_name,
            request.version,
            request.p50_ms,
            request.backend,
        )
        return pb.StatusAck()

    def DownloadArtifact(  # noqa: N802
        self, request: pb.DownloadRequest, context: Any
    ) -> Iterator[bytes]:
        """Encoded ``ArtifactChunk`` messages (see :func:`add_device_service`)."""
        try:
            device_id = require_device(context, self._ctx.devices)
            row = self._ctx.catalog.model_by_sha(request.artifact_id)
            if row is None:
                raise AuthError("no model version uses that artifact")
            # A compressed copy delivers the model file it holds.
            sent = (
                row.sha256 if request.artifact_id == row.compressed_sha256 else request.artifact_id
            )
            chunks = self._ctx.artifacts.read(request.artifact_id, request.offset)
            progress = _Progress(self._ctx, device_id, request.artifact_id, sent, request.offset)
            try:
                for offset, data, total in chunks:
                    # Counted as sent when handed to the stream: a device that drops the stream
                    # after its last chunk was still given the whole file.
                    progress.sent(offset + len(data), total)
                    yield encode_chunk(offset, data, total)
            finally:  # also when the device cancels or the link drops
                progress.close()
        except FleetError as exc:
            abort_for(context, exc)
        except OperationalError as exc:  # as rpc_errors does for the unary calls
            log.warning("database unavailable in DownloadArtifact: %s", exc.orig)
            context.abort(grpc.StatusCode.UNAVAILABLE, "the fleet database is busy; retry")

    @rpc_errors
    def GetDownloadUrl(  # noqa: N802
        self, request: pb.DownloadUrlRequest, context: Any
    ) -> pb.DownloadUrl:
        device_id = require_device(context, self._ctx.devices)
        row = self._ctx.catalog.model_by_sha(request.artifact_id)
        if row is None:
            raise AuthError("no model version uses that artifact")
        found = self._ctx.artifacts.download_url(request.artifact_id)
        if found is None:
            return pb.DownloadUrl()  # a local folder: the device streams it from here
        url, lifetime = found
        key = (device_id, row.sha256)
        now = time.monotonic()
        if request.artifact_id in (row.sha256, row.compressed_sha256) and (
            now - self._url_given.get(key, -_URL_NOTED_S) >= _URL_NOTED_S
        ):
            # The device has the file from here on, as after a whole stream: its benchmarks of
            # this variant count (catalog/benchmarks.py). Noted once a minute per device and
            # file: a device asking again and again costs no database write.
            self._ctx.bench.delivered(device_id, row.sha256)
            if len(self._url_given) >= _MAX_AUTH_CACHE:
                self._url_given.clear()
            self._url_given[key] = now
        return pb.DownloadUrl(url=url, expires_in_s=lifetime)

    @rpc_errors
    def Deliver(self, request: pb.Outbox, context: Any) -> pb.Delivery:  # noqa: N802
        device_id = require_device(context, self._ctx.devices)
        events = _outbox_events(request, device_id)
        if request.floor >= 2**63:
            raise BadRequestError("the outbox floor is out of range")
        budget = self._delivered.available(device_id)
        ledger, stored, woke = self._ctx.telemetry.deliver(
            device_id, request.epoch, request.floor, events, time.time(), budget=budget
        )
        self._delivered.spend(device_id, stored)
        if woke:
            self._ctx.wake_rollouts()
        return pb.Delivery(
            epoch=ledger.epoch,
            highest=ledger.highest,
            missing=[pb.SeqRange(first=lo, last=hi) for lo, hi in ledger.missing],
        )

    @rpc_errors
    def UploadLog(  # noqa: N802
        self, request_iterator: Iterator[pb.LogUpload], context: Any
    ) -> pb.LogReceipt:
        device_id = require_device(context, self._ctx.devices)
        with self._uploading_lock:
            if device_id in self._uploading:
                raise ConflictError("an upload of this device's log is in progress already")
            self._uploading.add(device_id)
        try:
            return self._upload_log(device_id, request_iterator, context)
        finally:
            with self._uploading_lock:
                self._uploading.discard(device_id)

    def _upload_log(
        self, device_id: str, parts: Iterator[pb.LogUpload], context: Any
    ) -> pb.LogReceipt:
        """Store a device's log for the request pending for it: refused before a byte is read
        when there is none, read up to the bounds (registry.devlogs), cut off after
        UPLOAD_DEADLINE_S."""
        pending = self._ctx.device_logs.pending(device_id, int(time.time()))
        if pending is None:
            raise ConflictError(
                "no log was asked of this device, or its upload is stored already; devices "
                "upload their log when a check-in answer asks for it"
            )
        expired = threading.Event()

        def cut_off() -> None:
            expired.set()
            context.cancel()  # the stream's next message reads as its end

        timer = threading.Timer(UPLOAD_DEADLINE_S, cut_off)
        timer.daemon = True
        timer.start()
        try:
            first = next(parts, None)
            if first is None:
                raise BadRequestError("the log upload holds no message")
            if first.request_id != pending.request_id:
                raise ConflictError(
                    f"the upload answers request {first.request_id[:32]!r}; the one pending "
                    "for this device is another"
                )
            read = read_upload(first, parts)
        finally:
            timer.cancel()
        if expired.is_set():
            log.warning("device %s's log upload took over %.0f s: not stored", device_id,
                        UPLOAD_DEADLINE_S)  # fmt: skip
            raise TransientError(f"the upload took over {UPLOAD_DEADLINE_S:.0f} s; not stored")
        if not self._ctx.device_logs.store(device_id, pending.request_id, read, int(time.time())):
            raise ConflictError("the request this upload answers was replaced or answered")
        log.info(
            "device %s uploaded %d log record(s) asked for by %s%s",
            device_id,
            len(read.upload.records),
            pending.requested_by,
            " (truncated: more than the server keeps)" if read.truncated else "",
        )
        return pb.LogReceipt(stored=len(read.upload.records), truncated=read.truncated)

    @rpc_errors
    def ReportStatus(self, request: pb.StatusReport, context: Any) -> pb.StatusAck:  # noqa: N802
        device_id = require_device(context, self._ctx.devices)
        if not is_name(request.model_name) or not is_version(request.version):
            raise BadRequestError("status report names an invalid model or version")
        state = pb.UpdateState.Name(request.state)
        detail = stored_text(request.detail, 1024)
        outcome = Outcome(device_id, request.model_name, request.version, request.state, detail)
        if self._ctx.rollouts.apply_update(outcome):
            self._ctx.wake_rollouts()
        log.info(
            "device %s: %s %s %s %s",
            device_id,
            request.model_name,
            request.version,
            state,
            detail[:200],
        )
        return pb.StatusAck()


class _Progress:
    """One stream's progress, written to the database every few seconds and at its end."""

    EVERY_S = 2.0

    def __init__(
        self, ctx: ServerContext, device_id: str, artifact: str, model_sha: str, start: int
    ) -> None:
        self._ctx, self._device, self._artifact, self._model = ctx, device_id, artifact, model_sha
        self._start = self._end = start
        self._total = -1
        self._written = time.monotonic()

    def sent(self, end: int, total: int) -> None:
        self._end, self._total = end, total
        if end >= total or time.monotonic() - self._written >= self.EVERY_S:
            self._write()

    def close(self) -> None:
        if self._total >= 0 and self._end > self._start:
            self._write()

    def _write(self) -> None:
        # The database may be away (a failover): the download goes on, and a later write (the
        # bytes since the last one that was stored) or the device's next stream catches up.
        self._written = time.monotonic()
        try:
            whole = self._ctx.downloads.streamed(
                self._device, self._artifact, self._start, self._end, self._total
            )
            if whole:
                self._ctx.bench.delivered(self._device, self._model)
        except OperationalError as exc:
            log.warning("download progress of %s not recorded: %s", self._device, exc.orig)
            return
        self._start = self._end


_MAX_EVENTS = 64  # per delivery, as the agent sends them
_URL_NOTED_S = 60.0  # GetDownloadUrl notes a delivery at most this often per device and file
_SKIPPED = OncePer(60.0)


def _outbox_events(outbox: pb.Outbox, device_id: str) -> list[telemetry_pb2.DeviceEvent]:
    """The outbox's events that are this device's, of the outbox's epoch and decodable; the
    others are skipped (a spool kept across a re-enrollment holds another identity's: they must
    not block the rest) and logged once a minute per device.

    Raises:
        BadRequestError: more events than an outbox holds.
    """
    if len(outbox.events) > _MAX_EVENTS:
        raise BadRequestError(f"an outbox holds at most {_MAX_EVENTS} events")
    events = []
    for raw in outbox.events:
        event = telemetry_pb2.DeviceEvent()
        try:
            event.ParseFromString(raw)
        except DecodeError:
            event.Clear()
        if event.device_id == device_id and event.epoch == outbox.epoch and event.seq < 2**63:
            events.append(event)
        elif _SKIPPED.first(device_id):
            log.warning("device %s delivered an event that is not its own, or not of its "
                        "epoch: skipped (not logged again this minute)", device_id)  # fmt: skip
    return events


def add_device_service(servicer: DeviceServicer, server: grpc.Server) -> None:
    """Register the device service as the generated code does, except that DownloadArtifact's
    chunks are encoded by :func:`protos.chunks.encode_chunk` (one copy of the data instead of
    protobuf's two) and sent as they are."""

    class _Capture:
        def __init__(self) -> None:
            self.handlers: dict[str, grpc.RpcMethodHandler] = {}

        def add_generic_rpc_handlers(self, _handlers: Any) -> None:
            pass

        def add_registered_method_handlers(
            self, _service: str, handlers: dict[str, grpc.RpcMethodHandler]
        ) -> None:
            self.handlers = dict(handlers)

    capture = _Capture()
    pb_grpc.add_DeviceServiceServicer_to_server(servicer, capture)
    handlers = capture.handlers
    service = pb.DESCRIPTOR.services_by_name["DeviceService"]
    if set(handlers) != {m.name for m in service.methods}:  # the generated code changed
        raise RuntimeError(f"DeviceService handlers {sorted(handlers)} are not its methods")
    handlers["DownloadArtifact"] = grpc.unary_stream_rpc_method_handler(
        servicer.DownloadArtifact,
        request_deserializer=pb.DownloadRequest.FromString,
        response_serializer=bytes,
    )
    name = service.full_name
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(name, handlers),))
    server.add_registered_method_handlers(name, handlers)
