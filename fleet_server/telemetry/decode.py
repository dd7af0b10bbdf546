"""Decode a device's MQTT message: its topic names the kind and the device, its payload must
decode as that kind, stay within the size bound, and claim the device its topic names. Pure
apart from logging (once a minute per device and reason)."""

from __future__ import annotations

import logging
from typing import Any

from google.protobuf.message import DecodeError

from fleet_server.telemetry.checks import plausible
from fleet_server.telemetry.store import IngestBatch
from fleet_server.telemetry.throttle import OncePer
from protos import telemetry_pb2
from protos.topics import device_from_topic

__all__ = ["KINDS", "MAX_PAYLOAD", "count_usage", "decode_message", "decode_report"]

log = logging.getLogger(__name__)
MAX_PAYLOAD = 256 * 1024

KINDS: dict[str, type[Any]] = {
    "telemetry": telemetry_pb2.TelemetryReport,
    "state": telemetry_pb2.DeviceState,
    "events": telemetry_pb2.DeviceEvent,
}

_IGNORED = OncePer(60.0)  # one line per device (or topic) and reason a minute


def _ignore(key: str, message: str, *args: object) -> None:
    if _IGNORED.first(key):
        log.warning("%s (not logged again for it this minute)", message % args)


def decode_message(topic: str, payload: bytes, fleet_id: str) -> tuple[str, Any] | None:
    """(kind, message) of a device's MQTT message, or None (logged once a minute per device
    and reason) when it is on an unexpected topic, oversized, undecodable, or claims another
    device than its topic names."""
    where = device_from_topic(topic)
    if where is None or where[0] != fleet_id or where[2] not in KINDS:
        _ignore(f"topic:{topic[:64]}", "ignoring message on unexpected topic %r", topic[:200])
        return None
    kind = where[2]
    if len(payload) > MAX_PAYLOAD:
        _ignore(f"size:{where[1]}", "ignoring %d-byte %s from %s (limit %d)", len(payload), kind,
                where[1], MAX_PAYLOAD)  # fmt: skip
        return None
    if not payload and kind == "state":
        return None  # a cleared retained message
    message = KINDS[kind]()
    try:
        message.ParseFromString(payload)
    except DecodeError:
        _ignore(f"decode:{where[1]}", "ignoring undecodable %s on %s", kind, topic)
        return None
    if getattr(message, "seq", 0) >= 2**63:  # the database's BIGINT: a device's lie
        _ignore(f"seq:{where[1]}", "ignoring %s from %s with sequence number %d", kind, where[1],
                message.seq)  # fmt: skip
        return None
    if message.device_id != where[1]:
        _ignore(f"claim:{where[1]}", "ignoring %s on %s that claims device %r", kind, topic,
                message.device_id[:64])  # fmt: skip
        return None
    return kind, message


def decode_report(
    topic: str, payload: bytes, fleet_id: str
) -> telemetry_pb2.TelemetryReport | None:
    """The telemetry report in a message, or None (see :func:`decode_message`)."""
    decoded = decode_message(topic, payload, fleet_id)
    if decoded is None or decoded[0] != "telemetry":
        return None
    report: telemetry_pb2.TelemetryReport = decoded[1]
    return report


def count_usage(batch: IngestBatch, report: Any) -> None:
    """Add a report's window counts to the batch's usage deltas. Numbers a device could not
    have measured (negative, not finite, absurdly large) skip that model's entry, so one bad
    payload cannot make the whole batch fail to store."""
    for model in report.models:
        if not plausible(model):
            log.warning("ignoring implausible telemetry of a model named %r from %s",
                        model.model_name[:64], report.device_id)  # fmt: skip
            continue
        policy = model.routing_policy or "local"
        served = model.window_routed_requests if policy != "local" else model.window_requests
        counts = (served, model.window_requests, model.window_cloud_requests)
        # Inference time without queueing; older agents report only the mean latency.
        compute = model.window_compute_ms or model.window_requests * model.latency.mean_ms
        if not any(counts):
            continue
        key = (report.device_id, model.model_name[:64], policy[:32])
        entry = batch.usage.setdefault(key, [0, 0, 0.0, 0, 0.0])
        entry[0] += served
        entry[1] += model.window_requests
        entry[2] += compute
        entry[3] += model.window_cloud_requests
        entry[4] += model.window_cloud_cost_usd
