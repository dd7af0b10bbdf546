"""The health window after an activation, pure: is the new version healthy, still under watch,
or to be rolled back?"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["HealthPolicy", "Verdict", "judge"]


@dataclass(frozen=True)
class HealthPolicy:
    """When a freshly activated model is rolled back."""

    window_s: float = 60.0  # how long a new version is watched
    min_requests: int = 20  # fewer requests than this: error rate and latency are not judged
    max_error_rate: float = 0.2  # failed requests / requests
    max_latency_ratio: float = 3.0  # p50 against the previous version's p50
    max_starts: int = 3  # abnormal deaths while it loaded or served that make a crash loop


@dataclass(frozen=True)
class Verdict:
    """``action`` is "watch", "pass" or "rollback"; ``reason`` says why for a rollback."""

    action: str
    reason: str = ""


def judge(
    policy: HealthPolicy,
    *,
    elapsed_s: float,
    starts: int,
    requests: int,
    errors: int,
    p50_ms: float,
    baseline_p50_ms: float,
) -> Verdict:
    """The verdict on one activation. ``baseline_p50_ms`` is 0 when unknown."""
    if starts >= policy.max_starts:
        return Verdict(
            "rollback",
            f"crash loop: the agent started {starts} times within the health window",
        )
    if requests >= policy.min_requests:
        rate = errors / requests
        if rate > policy.max_error_rate:
            return Verdict(
                "rollback",
                f"{errors} of {requests} requests failed ({rate:.0%} > "
                f"{policy.max_error_rate:.0%})",
            )
        if baseline_p50_ms > 0 and p50_ms > policy.max_latency_ratio * baseline_p50_ms:
            return Verdict(
                "rollback",
                f"p50 latency {p50_ms:.2f} ms is {p50_ms / baseline_p50_ms:.1f}x the previous "
                f"version's {baseline_p50_ms:.2f} ms (limit {policy.max_latency_ratio:g}x)",
            )
    if elapsed_s >= policy.window_s:
        return Verdict("pass")
    return Verdict("watch")
