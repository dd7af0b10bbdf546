"""What the server believes of one model's entry in a device's telemetry report.

Usage (the cost reports), history (the charts) and the rollouts' health gates all read these
entries; one check decides for all three, so an entry one of them stores cannot break another.
"""

from __future__ import annotations

import math
from typing import Any

from protos.names import is_name

__all__ = ["MAX_COUNT", "plausible"]

MAX_COUNT = 10**9  # per report window: more is not a real device
_MAX_VALUE = 1e16  # milliseconds or USD in one window


def plausible(model: Any) -> bool:
    """Whether a ``ModelTelemetry`` entry is one a device could have sent: valid model and
    policy names, window counts within reach, times and money finite and not negative. An
    entry that is not is ignored whole; the rest of its report still counts."""
    latency = model.latency
    counts = (model.window_requests, model.window_errors, model.window_cloud_requests,
              model.window_routed_requests)  # fmt: skip
    values = (latency.p50_ms, latency.p95_ms, latency.mean_ms, model.window_compute_ms,
              model.window_cloud_cost_usd)  # fmt: skip
    return (
        is_name(model.model_name)
        and is_name(model.routing_policy or "local")
        and all(c <= MAX_COUNT for c in counts)
        and all(math.isfinite(v) and 0 <= v < _MAX_VALUE for v in values)
    )
