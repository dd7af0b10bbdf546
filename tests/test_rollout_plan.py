"""The rollout's pure decisions: wave parsing, wave sizes, wave assignment, and the gate."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleet_server.errors import BadRequestError
from fleet_server.registry.labels import matches
from fleet_server.rollouts.plan import (
    TELEMETRY_FAILURE,
    Counts,
    HealthGate,
    assign_waves,
    decide,
    judge_health,
    parse_waves,
    wave_targets,
)

WAVE_TEXT = st.one_of(
    st.integers(1, 50).map(str),
    st.floats(0.5, 100).map(lambda f: f"{round(f, 1):g}%"),
)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (["1", "50%"], "last must be 100%"),
        (["10%", "5%", "100%"], "shrink"),
        (["5", "2", "100%"], "shrink"),
        (["0", "100%"], "neither"),
        (["abc", "100%"], "neither"),
        (["150%"], "neither"),
        (["-1", "100%"], "neither"),
        ([str(i) for i in range(1, 30)] + ["100%"], "at most"),
    ],
)
def test_bad_wave_specs_are_refused_with_the_reason(spec: list[str], message: str) -> None:
    with pytest.raises(BadRequestError, match=message):
        parse_waves(spec)


def test_default_waves_are_a_canary_then_growing_waves() -> None:
    waves = parse_waves([])
    assert [str(w) for w in waves] == ["1", "10%", "50%", "100%"]
    assert wave_targets(waves, 1000) == [1, 100, 500, 1000]
    assert wave_targets(waves, 3) == [1, 1, 2, 3]
    assert wave_targets(waves, 0) == [0, 0, 0, 0]


@given(st.lists(WAVE_TEXT, max_size=6), st.integers(0, 5000))
def test_wave_targets_grow_stay_in_bounds_and_end_at_every_device(
    spec: list[str], devices: int
) -> None:
    try:
        waves = parse_waves([*spec, "100%"])
    except BadRequestError:
        return  # shrinking specs are refused, which the test above covers
    targets = wave_targets(waves, devices)
    assert targets == sorted(targets)
    assert all(0 <= t <= devices for t in targets)
    assert targets[-1] == devices
    if devices:
        assert targets[0] >= 1


@given(st.integers(1, 10_000), st.sets(st.text("abcdef0123", min_size=1, max_size=8), max_size=300))
def test_every_device_lands_in_exactly_one_wave_of_the_planned_size(
    rollout_id: int, device_ids: set[str]
) -> None:
    waves = parse_waves(["1", "10%", "50%", "100%"])
    plan = assign_waves(rollout_id, device_ids, waves)
    assert set(plan) == device_ids
    targets = wave_targets(waves, len(device_ids))
    for index, target in enumerate(targets):
        assert sum(1 for w in plan.values() if w <= index) == target
    # Stable: the same rollout puts the same devices in the same waves on every replica.
    assert assign_waves(rollout_id, sorted(device_ids, reverse=True), waves) == plan


def test_canaries_differ_between_rollouts() -> None:
    devices = [f"dev-{i}" for i in range(100)]
    waves = parse_waves(["1", "100%"])
    canaries = {
        next(d for d, w in assign_waves(r, devices, waves).items() if w == 0) for r in range(20)
    }
    assert len(canaries) > 10


def test_selector_needs_every_label() -> None:
    assert matches({}, {"site": "a"})
    assert matches({"site": "a"}, {"site": "a", "hw": "pi"})
    assert not matches({"site": "a", "hw": "coral"}, {"site": "a", "hw": "pi"})
    assert not matches({"site": "a"}, {})


def test_gate_waits_advances_completes_and_pauses() -> None:
    waves = [Counts(devices=1), Counts(devices=10), Counts(devices=10)]
    assert decide(waves, 0, 0.9, 0.1).action == "wait"
    waves[0] = Counts(devices=1, installed=1)
    assert decide(waves, 0, 0.9, 0.1).action == "advance"
    waves[1] = Counts(devices=10, installed=8, assigned=2)
    assert decide(waves, 1, 0.9, 0.1).action == "wait"
    waves[1] = Counts(devices=10, installed=9, assigned=1)
    assert decide(waves, 1, 0.9, 0.1).action == "advance"
    waves[2] = Counts(devices=10, installed=10)
    assert decide(waves, 2, 0.9, 0.1).action == "complete"
    # Two failures among the 21 started devices: under 10%, goes on.
    waves[2] = Counts(devices=10, installed=8, failed=2)
    assert decide(waves, 2, 0.8, 0.1).action == "complete"
    # Three: 14% of 21 started, pauses with the numbers.
    waves[2] = Counts(devices=10, installed=7, failed=3)
    decision = decide(waves, 2, 0.5, 0.1)
    assert decision.action == "pause"
    assert "3 of 21 devices failed" in decision.reason


def test_failure_threshold_zero_pauses_on_the_first_failure_only() -> None:
    assert decide([Counts(devices=5, installed=5)], 0, 0.9, 0.0).action == "complete"
    assert decide([Counts(devices=5, installed=4, failed=1)], 0, 0.5, 0.0).action == "pause"


def test_failures_in_an_earlier_wave_still_count() -> None:
    # A health rollback in the canary after wave 2 started.
    waves = [Counts(devices=1, failed=1), Counts(devices=4, assigned=4)]
    assert decide(waves, 1, 0.9, 0.2).action == "pause"


def test_an_empty_wave_does_not_block() -> None:
    assert decide([Counts(), Counts(devices=2)], 0, 0.9, 0.1).action == "advance"


def test_resumed_failures_are_forgiven_and_failed_devices_do_not_hold_a_wave() -> None:
    waves = [Counts(devices=1, failed=1), Counts(devices=9, waiting=9)]
    assert decide(waves, 0, 0.9, 0.1).action == "pause"
    # After a resume the canary's failure no longer pauses, and the wave is done.
    assert decide(waves, 0, 0.9, 0.1, forgiven=1).action == "advance"
    waves[1] = Counts(devices=9, installed=8, failed=1)
    decision = decide(waves, 1, 0.9, 0.1, forgiven=1)
    assert decision.action == "pause"
    assert decision.reason == (
        "2 of 10 devices failed (1 before the last resume) (failure threshold 10%)"
    )
    # With a lenient failure gate, failed devices do not keep the wave from completing.
    assert decide([Counts(devices=10, installed=8, failed=2)], 0, 0.9, 0.5).action == "complete"


def test_a_wave_waits_for_its_devices_to_bake() -> None:
    # Ten installed, four of them long enough: the 90% threshold is not met yet.
    baking = Counts(devices=10, installed=10, baked=4)
    assert decide([baking, Counts(devices=5)], 0, 0.9, 0.1).action == "wait"
    baked = Counts(devices=10, installed=10, baked=9)
    assert decide([baked, Counts(devices=5)], 0, 0.9, 0.1).action == "advance"
    # Without a bake time every installed device counts.
    assert decide([Counts(devices=10, installed=9), Counts(devices=5)], 0, 0.9, 0.1).action == (
        "advance"
    )
    assert (baking + baked).settled == 13


GATES = st.builds(
    HealthGate,
    max_error_rate=st.floats(0.001, 1),
    max_latency_ratio=st.floats(1, 10),
    window_s=st.integers(0, 86400),
    min_requests=st.integers(1, 1000),
)


@given(
    GATES,
    st.integers(0, 10**6),
    st.integers(0, 10**6),
    st.floats(0, 1e4),
    st.one_of(st.none(), st.floats(0.01, 1e4)),
)
def test_the_health_gate_judges_only_with_enough_requests_and_says_why(
    gate: HealthGate, requests: int, errors: int, p95: float, baseline: float | None
) -> None:
    errors = min(errors, requests)
    reason = judge_health(gate, requests, errors, p95, baseline)
    too_many_errors = requests > 0 and errors / requests > gate.max_error_rate
    too_slow = baseline is not None and p95 > baseline * gate.max_latency_ratio
    if requests < gate.min_requests:
        assert reason == ""
    elif too_many_errors:
        assert reason.startswith(TELEMETRY_FAILURE + "error rate")
        assert f"over {requests} requests" in reason
    elif too_slow:
        assert reason.startswith(TELEMETRY_FAILURE + "p95 latency")
    else:
        assert reason == ""
    assert judge_health(HealthGate(disabled=True), requests, errors, p95, baseline) == ""


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"max_error_rate": 0}, "max error rate"),
        ({"max_latency_ratio": 0.9}, "max latency ratio"),
        ({"window_s": -1}, "health window"),
        ({"bake_s": 31 * 86400}, "bake time"),
        ({"min_requests": 0}, "min requests"),
    ],
)
def test_bad_health_gates_are_refused(fields: dict[str, float], message: str) -> None:
    with pytest.raises(BadRequestError, match=message):
        HealthGate(**fields)  # type: ignore[arg-type]


def test_gates_round_trip_and_rollouts_from_before_gates_have_none() -> None:
    gate = HealthGate(max_error_rate=0.02, bake_s=60)
    assert HealthGate.from_json(gate.to_json()) == gate
    assert HealthGate.from_json("{}").disabled
