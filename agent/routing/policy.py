"""Routing policies and their decisions, as pure code.

- ``local``: the device's model only (the default).
- ``local_then_cloud``: the cloud when the local model is not loaded, fails, its queue is full,
  or its recent latency already misses the latency budget.
- ``cascade``: the local model first; when its top score is under the threshold, the cloud.
- ``cloud``: the cloud only (the server assigns it when no variant fits the device).

The server sets a policy per model in the desired state; the agent's config may override it.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.errors import ConfigError

__all__ = ["KINDS", "Policy", "cascade_reason", "precheck"]

KINDS = ("local", "local_then_cloud", "cascade", "cloud")


@dataclass(frozen=True)
class Policy:
    """How one model's requests are routed. ``None`` budgets are unlimited; a budget of 0
    stops every cloud call (the local answer is served and flagged)."""

    kind: str = "local"
    threshold: float = 0.0  # cascade: cloud when the local top score is under it
    latency_budget_ms: float = 0.0  # local_then_cloud: 0 = none
    cloud_model: str = ""  # the model's name on the cloud endpoint ("" = the same name)
    cloud_cost: float = 0.0  # USD per cloud request, for the spend budget and telemetry
    max_per_minute: int | None = None
    max_spend_per_day: float | None = None
    source: str = "default"  # "server", "config" or "default"
    reason: str = ""  # why the server chose it (e.g. no variant fits)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"routing policy {self.kind!r} is not one of {', '.join(KINDS)}")
        if not 0 <= self.threshold <= 1:
            raise ConfigError(f"cascade threshold {self.threshold} is outside 0..1")
        if self.latency_budget_ms < 0 or self.cloud_cost < 0:
            raise ConfigError("latency budget and cloud cost must not be negative")
        if (self.max_per_minute is not None and self.max_per_minute < 0) or (
            self.max_spend_per_day is not None and self.max_spend_per_day < 0
        ):
            raise ConfigError("cloud budgets must not be negative")

    @property
    def uses_cloud(self) -> bool:
        return self.kind != "local"


def precheck(policy: Policy, *, loaded: bool, queue_full: bool, recent_ms: float) -> str:
    """Why a request goes to the cloud before the local model runs ("" = run it locally)."""
    if policy.kind == "cloud":
        return policy.reason or "policy cloud"
    if policy.kind == "local":
        return ""
    if not loaded:
        return "local model not loaded"
    if policy.kind != "local_then_cloud":
        return ""
    if queue_full:
        return "local queue full"
    if policy.latency_budget_ms and recent_ms > policy.latency_budget_ms:
        return f"local p50 {recent_ms:.1f} ms misses the {policy.latency_budget_ms:g} ms budget"
    return ""


def cascade_reason(policy: Policy, top_score: float) -> str:
    """Why a cascade asks the cloud after the local answer ("" = keep the local answer)."""
    if policy.kind != "cascade" or top_score >= policy.threshold:
        return ""
    return f"cascade: local top score {top_score:.3f} < {policy.threshold:g}"
