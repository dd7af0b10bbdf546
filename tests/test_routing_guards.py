"""The routing guards and policy decisions, pure and property-tested with a fake clock."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.errors import ConfigError
from agent.routing.guards import Breaker, Budget
from agent.routing.policy import Policy, cascade_reason, precheck


@given(st.lists(st.floats(0, 0.5), min_size=1, max_size=200), st.integers(0, 20))
def test_never_more_cloud_calls_in_a_minute_than_the_budget(gaps: list[float], limit: int) -> None:
    policy = Policy(kind="cascade", threshold=0.5, max_per_minute=limit)
    budget = Budget()
    now, made = 1000.0, []
    for gap in gaps:
        now += gap
        if not budget.allow(policy, now):
            budget.spend(policy, now)
            made.append(now)
    for i, t in enumerate(made):
        assert sum(1 for u in made[: i + 1] if t - u < 60) <= limit


def test_a_spend_budget_holds_for_a_utc_day_and_zero_means_no_cloud() -> None:
    policy = Policy(kind="cloud", cloud_cost=0.4, max_spend_per_day=1.0)
    budget = Budget()
    day = 20_000 * 86400.0
    for t in (day + 1, day + 2):
        assert budget.allow(policy, t) == ""
        budget.spend(policy, t)
    assert budget.allow(policy, day + 3) == "budget: 0.8000 of 1 USD spent today"
    assert budget.allow(policy, day + 86400) == ""  # a new day
    assert Budget().allow(Policy(kind="cloud", max_per_minute=0), day) != ""
    assert Budget().allow(Policy(kind="cloud", cloud_cost=0.1, max_spend_per_day=0), day) != ""


def test_the_breaker_opens_probes_once_and_closes_on_success() -> None:
    breaker = Breaker(failures=3, cooldown_s=30)
    for t in (1, 2, 3):
        assert breaker.allow(t) == ""
        breaker.record(False, t)
    assert breaker.allow(4).startswith("circuit open after 3 cloud failures")
    assert breaker.allow(40) == ""  # half-open: one probe
    assert breaker.allow(40.1) != ""  # ...and only one
    breaker.record(False, 41)  # the probe failed: open again
    assert breaker.allow(50) != ""
    assert breaker.allow(72) == ""
    breaker.record(True, 72)
    assert breaker.allow(73) == "" and not breaker.open


def test_policies_decide_before_and_after_the_local_model() -> None:
    cascade = Policy(kind="cascade", threshold=0.6)
    assert cascade_reason(cascade, 0.59).startswith("cascade: local top score 0.590 < 0.6")
    assert cascade_reason(cascade, 0.6) == ""
    assert precheck(cascade, loaded=True, queue_full=True, recent_ms=99) == ""
    assert precheck(cascade, loaded=False, queue_full=False, recent_ms=0) == (
        "local model not loaded"
    )
    fallback = Policy(kind="local_then_cloud", latency_budget_ms=10)
    assert precheck(fallback, loaded=True, queue_full=True, recent_ms=1) == "local queue full"
    assert "misses the 10 ms budget" in precheck(
        fallback, loaded=True, queue_full=False, recent_ms=12
    )
    assert precheck(Policy(), loaded=False, queue_full=True, recent_ms=1e9) == ""
    assert precheck(Policy(kind="cloud"), loaded=True, queue_full=False, recent_ms=0) == (
        "policy cloud"
    )
    for bad in ({"kind": "sometimes"}, {"threshold": 2}, {"max_per_minute": -1}):
        with pytest.raises(ConfigError):
            Policy(**bad)


def test_a_budget_refusal_does_not_take_the_breakers_probe() -> None:
    from agent.routing.cloud import CloudClient, CloudTarget
    from agent.routing.router import Router
    from protos import inference_pb2 as pb

    now = [1000.0]
    # Nothing listens on port 1: every call fails at once (UNAVAILABLE).
    cloud = CloudClient(CloudTarget("grpc://127.0.0.1:1"), timeout_s=0.5, retries=0)
    router = Router(cloud, breaker=Breaker(failures=2, cooldown_s=30), clock=lambda: now[0])
    policy = Policy(kind="cloud", max_per_minute=2)
    request = pb.ModelInferRequest(model_name="m")
    for _ in range(2):
        answer, why = router.call_cloud("m", policy, request)
        assert answer is None and why.startswith("cloud failed: UNAVAILABLE")
    assert router.breaker_open
    now[0] += 31  # the breaker would probe, but the minute's budget is spent
    assert router.call_cloud("m", policy, request)[1].startswith("budget: 2 cloud requests")
    now[0] += 30  # a new minute: the probe is still there to take
    assert router.call_cloud("m", policy, request)[1].startswith("cloud failed: UNAVAILABLE")
    stats = router.stats("m")
    assert (stats.cloud_errors, stats.cloud_skipped) == (3, 1)
    cloud.close()
