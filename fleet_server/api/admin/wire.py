"""One translator per wire object: the admin API's messages from the stores' rows (and the
one way back, a rollout's health gate)."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any, TypeVar

from google.protobuf.json_format import ParseDict, ParseError
from google.protobuf.message import Message

from fleet_server.audit.store import AuditRow
from fleet_server.catalog.benchmarks import BenchRow
from fleet_server.catalog.store import ModelRow
from fleet_server.registry.devlogs import DeviceLogRow
from fleet_server.registry.refusals import PendingClear
from fleet_server.registry.store import DeviceRow
from fleet_server.rollouts.plan import HealthGate
from fleet_server.rollouts.store import RolloutRow
from fleet_server.rollouts.window_store import WindowRow
from fleet_server.rollouts.windows import clock_text, days_text
from fleet_server.routing.prices import Prices
from fleet_server.routing.store import RoutingRow
from fleet_server.signing.expiry import KeyStatus
from fleet_server.telemetry.sequence import Ledger
from fleet_server.webhooks.policy import shown_url
from fleet_server.webhooks.store import Delivery, WebhookSummary
from protos import admin_pb2 as pb
from protos import device_pb2, manifest_pb2, telemetry_pb2

__all__ = [
    "audit_entry",
    "bench_row",
    "device_info",
    "device_log",
    "health_gate",
    "key_status",
    "maintenance_window",
    "model_info",
    "pending_clear",
    "price_table",
    "rollout_info",
    "routing_info",
    "token_info",
    "variant_profile",
    "webhook_delivery",
    "webhook_info",
]


def model_info(row: ModelRow, deployed: dict[str, str]) -> pb.ModelVersionInfo:
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
        profile=variant_profile(_json_object(row.requirements)),
    )


def rollout_info(row: RolloutRow) -> pb.RolloutInfo:
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
        start_unix=row.start_at if row.start_at is not None else row.created_at,
        started_unix=row.started_at or 0,
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
            outside_window=wave.outside_window,
        )
    return info


def maintenance_window(row: WindowRow) -> pb.MaintenanceWindow:
    window = row.window
    return pb.MaintenanceWindow(
        window_id=window.window_id,
        selector=dict(window.selector),
        days=days_text(window.days),
        opens=clock_text(window.start),
        closes=clock_text(window.end),
        created_unix=row.created_at,
        created_by=row.created_by,
        devices=row.devices,
    )


def health_gate(gate: pb.HealthGate) -> HealthGate:
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


def routing_info(row: RoutingRow) -> pb.RoutingPolicyInfo:
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


def price_table(prices: Prices) -> pb.PriceTable:
    return pb.PriceTable(
        cloud_per_request=prices.cloud_per_request,
        energy_per_kwh=prices.energy_per_kwh,
        device_power_w=prices.device_power_w,
        power_by_class=prices.power_by_class,
    )


def device_info(row: DeviceRow) -> pb.DeviceInfo:
    info = pb.DeviceInfo(
        device_id=row.device_id,
        name=row.name,
        labels=row.labels,
        capabilities=_parsed(row.capabilities, device_pb2.Capabilities()),
        enrolled_unix=row.enrolled_at,
        last_seen_unix=row.last_seen,
        last_telemetry_unix=row.last_telemetry_at or 0,
        revoked_unix=row.revoked_at or 0,
        online_state=row.online_state or "",
        online_unix=row.online_at or 0,
        presence=row.presence(time.time()),
        telemetry_count=row.telemetry_count,
        telemetry_gaps=row.telemetry_gaps,
    )
    if row.telemetry_ledger:
        ledger = Ledger.load(row.telemetry_ledger)
        info.telemetry_awaited = ledger.pending
        info.telemetry_dropped = ledger.dropped
        info.spool_replaced = ledger.replaced
    if row.last_telemetry is not None:
        info.last_telemetry.CopyFrom(_parsed(row.last_telemetry, telemetry_pb2.TelemetryReport()))
    for m in row.models:
        info.models.add(
            model_name=m.model_name,
            version=m.version,
            state=m.state,
            detail=m.detail,
            updated_unix=m.updated_at,
            active_version=m.active_version or "",
        )
    info.refusals_reported = row.refusals is not None
    return info


def device_log(device_id: str, row: DeviceLogRow | None, now: int) -> pb.DeviceLog:
    """A device's latest log request and upload (an empty one: never asked for)."""
    info = pb.DeviceLog(device_id=device_id)
    if row is None:
        return info
    request = row.request
    info.request_id = request.request_id
    info.requested_by = request.requested_by
    info.requested_unix = request.requested_at
    info.lines = request.lines
    info.level = request.level
    info.pending = row.pending(now)
    info.received_for = row.received_for
    info.received_unix = row.received_at
    info.truncated = row.truncated
    if row.upload:
        upload = device_pb2.LogUpload.FromString(row.upload)  # stored by the server, escaped
        info.records.extend(upload.records)
        info.dropped = upload.dropped
        info.started_unix_ms = upload.started_unix_ms
        info.previous_started_unix_ms = upload.previous_started_unix_ms
        info.agent_version = upload.agent_version
    return info


def pending_clear(row: PendingClear) -> pb.PendingClear:
    return pb.PendingClear(
        model_name=row.model_name,
        sha256=row.sha256,
        requested_by=row.requested_by,
        requested_unix=row.requested_at,
    )


def _smoke_indices(row: ModelRow) -> list[int]:
    envelope = manifest_pb2.Envelope.FromString(row.envelope)
    return list(manifest_pb2.Manifest.FromString(envelope.payload).smoke.top_indices)


_M = TypeVar("_M", bound=Message)


def _parsed(stored: Mapping[str, Any], message: _M) -> _M:
    """A message from the JSON the server stored of it (MessageToDict with proto field names).
    Fields a newer or older agent sent that this server does not know are left out; a
    document that does not parse gives the empty message rather than a failed call."""
    try:
        return ParseDict(dict(stored), message, ignore_unknown_fields=True)
    except ParseError:
        message.Clear()
        return message


def _json_object(raw: str) -> dict[str, Any]:
    try:
        value = json.loads(raw or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _tensors(raw: Any) -> list[pb.TensorSpec]:
    specs = []
    for item in raw if isinstance(raw, list) else []:
        if isinstance(item, list) and len(item) == 2 and isinstance(item[1], list):
            specs.append(pb.TensorSpec(dtype=str(item[0]), shape=[int(d) for d in item[1]]))
    return specs


def variant_profile(req: Mapping[str, Any]) -> pb.VariantProfile:
    """A variant's stored requirements (derived at push, with its evidence and the fleet's
    benchmarks) as the typed message."""
    profile = pb.VariantProfile(
        quantization=str(req.get("quantization", "")),
        edgetpu=bool(req.get("edgetpu", False)),
        max_op_code=int(req.get("max_op_code", 0)),
        memory_bytes=int(req.get("memory_bytes", 0)),
        activation_bytes=int(req.get("activation_bytes", 0)),
        inputs=_tensors(req.get("inputs")),
        outputs=_tensors(req.get("outputs")),
        builtin_ops=[str(o) for o in req.get("builtin_ops", [])],
        custom_ops=[str(o) for o in req.get("custom_ops", [])],
        weight_dtypes=[str(o) for o in req.get("weight_dtypes", [])],
        latency_ms={str(k): float(v) for k, v in req.get("latency_ms", {}).items()},
        fleet_latency_ms={str(k): float(v) for k, v in req.get("fleet_latency_ms", {}).items()},
        evidence=str(req.get("evidence", "")),
        transport_size=int(req.get("transport_size", 0)),
        size=int(req.get("size", 0)),
        technique=str(req.get("technique", "")),
    )
    for key in ("accuracy", "top1_agreement", "sparsity", "accuracy_floor"):
        if req.get(key) is not None:
            setattr(profile, key, float(req[key]))
    if isinstance(req.get("fallback"), Mapping):
        profile.fallback.CopyFrom(variant_profile(req["fallback"]))
    return profile


def token_info(row: Mapping[str, Any]) -> pb.TokenInfo:
    return pb.TokenInfo(
        token_id=row["token_sha256"][:12],
        created_unix=row["created_at"],
        expires_unix=row["expires_at"],
        uses_left=row["uses_left"],
        labels=row["labels"],
        note=row["note"],
        created_by=row["created_by"],
    )


def bench_row(row: BenchRow) -> pb.BenchRow:
    return pb.BenchRow(
        version=row.version,
        variant=row.variant,
        quantization=row.quantization,
        hardware_class=row.hardware_class,
        backend=row.backend,
        devices=row.devices,
        p50_ms=row.p50_ms,
        p95_ms=row.p95_ms,
        throughput_per_s=row.throughput_per_s,
        latest_unix=row.latest,
        source=row.source,
    )


def audit_entry(row: AuditRow) -> pb.AuditEntry:
    return pb.AuditEntry(
        id=row.id,
        at_unix=row.at,
        actor=row.actor,
        action=row.action,
        target=row.target,
        detail=row.detail,
        ok=row.ok,
        error=row.error,
    )


def key_status(status: KeyStatus) -> pb.KeyStatus:
    return pb.KeyStatus(
        root_key_folders=list(status.root_key_folders),
        items=[
            pb.Expiry(
                kind=str(i.kind),
                name=i.name,
                expires_unix=i.expires_unix,
                due=i.due,
                advice=i.advice,
            )
            for i in status.items
        ],
        checked_unix=status.checked_unix,
        warn_days=status.warn_days,
        deployed_manifests=status.deployed_manifests,
    )


def webhook_info(summary: WebhookSummary) -> pb.WebhookInfo:
    """A webhook as listed: never its secret, its URL's query hidden."""
    hook = summary.webhook
    return pb.WebhookInfo(
        name=hook.name,
        url=shown_url(hook.url),
        events=list(hook.events),
        allow_http=hook.allow_http,
        custom_ca=bool(hook.ca_pem),
        created_unix=hook.created_at,
        created_by=hook.created_by,
        pending=summary.pending,
        delivered=summary.delivered,
        failed=summary.failed,
        dropped=hook.dropped,
        last_delivered_unix=summary.last_delivered_at,
        last_status=summary.last_status,
        last_error=summary.last_error,
    )


def webhook_delivery(delivery: Delivery) -> pb.WebhookDelivery:
    return pb.WebhookDelivery(
        webhook=delivery.webhook,
        event_id=delivery.event_id,
        event_type=delivery.event_type,
        created_unix=delivery.created_at,
        state=str(delivery.state),
        attempts=delivery.attempts,
        next_unix=int(delivery.next_at) if delivery.state == "pending" else 0,
        log=[
            pb.WebhookAttempt(
                attempt=a.attempt,
                at_unix=a.at,
                status=a.status,
                error=a.error,
                duration_ms=a.duration_ms,
            )
            for a in delivery.log
        ],
    )
