"""Build the periodic telemetry report from the engine's statistics."""

from __future__ import annotations

import time

from agent.inference.engine import Engine
from agent.routing.router import Router
from protos import telemetry_pb2

__all__ = ["build_report"]


def build_report(
    engine: Engine,
    *,
    device_id: str,
    seq: int,
    started: float,
    epoch: str = "",
    spool_dropped: int = 0,
    spool_lost: str = "",
    system: telemetry_pb2.SystemTelemetry | None = None,
    router: Router | None = None,
) -> bytes:
    """Serialize a TelemetryReport and start a new statistics window for every model."""
    report = telemetry_pb2.TelemetryReport(
        device_id=device_id,
        seq=seq,
        sent_unix_ms=int(time.time() * 1000),
        uptime_s=time.monotonic() - started,
        epoch=epoch,
        spool_dropped=spool_dropped,
        spool_lost=spool_lost,
    )
    if system is not None:
        report.system.CopyFrom(system)
    for model in engine.models():
        window = model.stats.take_window()
        report.models.add(
            model_name=model.name,
            version=model.version,
            backend=model.backend,
            requests=window.requests_total,
            errors=window.errors_total,
            window_requests=window.window_requests,
            window_errors=window.window_errors,
            window_compute_ms=window.window_compute_ms,
            device=model.device,
            backend_reason=model.backend_reason[:256],
            rejected=model.stats.rejected,
            latency=telemetry_pb2.LatencySummary(
                p50_ms=window.p50_ms,
                p95_ms=window.p95_ms,
                p99_ms=window.p99_ms,
                mean_ms=window.mean_ms,
            ),
        )
    if router is not None:
        _add_routing(report, router)
    return report.SerializeToString()


def _add_routing(report: telemetry_pb2.TelemetryReport, router: Router) -> None:
    """Routing counts per model; models served only from the cloud get an entry of their own."""
    local = {m.model_name: m for m in report.models}
    for name in sorted(set(local) | set(router.models())):
        policy = router.policy(name)
        stats = router.take_window(name)
        entry = local.get(name)
        if entry is None:
            entry = report.models.add(model_name=name, backend="cloud")
        entry.routing_policy = policy.kind
        entry.cloud_requests = stats.cloud_requests
        entry.cloud_errors = stats.cloud_errors
        entry.cloud_skipped = stats.cloud_skipped
        entry.cloud_cost_usd = stats.cloud_cost_usd
        entry.window_cloud_requests = stats.window_cloud_requests
        entry.window_cloud_cost_usd = stats.window_cloud_cost_usd
        entry.window_routed_requests = stats.window_routed
