"""The per-device bounds of the ingest (fleet_server/telemetry/guard.py), judged on the device's
generation time: a spool replayed after an outage passes whole; a burst or a forged sequence
number does not; a clock step neither starves a device nor gives it more than real time."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from fleet_server.telemetry.guard import SPOOL_BOUND, Guard

NOW = 1_800_000_000.0


def test_a_day_of_spooled_reports_replayed_at_once_passes_whole() -> None:
    guard = Guard()
    start_ms = int((NOW - 86400) * 1000)
    refused = 0
    for i in range(10_000):  # one every 8.6 s over a day, all arriving within a second
        sent = start_ms + i * 8640
        if not guard.admit("d", sent, NOW + i / 10_000).ok:
            refused += 1
    assert refused == 0


def test_a_burst_generated_in_seconds_is_cut_to_the_burst_and_the_rate() -> None:
    guard = Guard(rate=4.0, burst=1000.0)
    sent0 = int(NOW * 1000)
    ok = sum(guard.admit("d", sent0 + i // 6, NOW + i / 6000).ok for i in range(20_000))
    # 3.3 s of device time: the burst and 3.3 s x 4 messages, counted on each clock, at most.
    assert 1000 <= ok <= 1000 + 2 * 14
    assert guard.admit("other", sent0, NOW).ok  # another device is not affected


def test_a_device_clock_ahead_gets_real_time_not_more() -> None:
    guard = Guard(rate=4.0, burst=10.0, skew_s=300)
    ahead = int((NOW + 86400) * 1000)  # a day ahead: counted as now + 5 minutes
    ok = sum(guard.admit("d", ahead + i * 1000, NOW + i / 100).ok for i in range(5000))
    assert ok <= 10 + 4 * 300 + 4 * 50 + 1


def test_a_clock_step_back_does_not_starve_the_device() -> None:
    guard = Guard(rate=4.0, burst=10.0)
    for i in range(20):
        guard.admit("d", int((NOW + i) * 1000), NOW + i)
    # The device clock jumps back an hour; it keeps sending one report a second.
    back = int((NOW - 3600) * 1000)
    ok = [guard.admit("d", back + i * 1000, NOW + 20 + i).ok for i in range(600)]
    assert all(ok)


def test_alternating_clocks_refill_no_faster_than_bounded() -> None:
    guard = Guard(rate=4.0, burst=10.0, skew_s=300)
    ok = 0
    for i in range(2000):  # forward, back, forward... within 20 s of real time
        sent = int((NOW + (1000 if i % 2 else -1000)) * 1000)
        ok += guard.admit("d", sent, NOW + i / 100).ok
    assert ok <= 10 + 4 * 300 + 2 * 4 * 20 + 2


def test_a_forged_jump_is_refused_and_a_consistent_one_adopted() -> None:
    guard = Guard(adopt_after=3)
    sent = int(NOW * 1000)
    guard.admit("d", sent, NOW)
    guard.accepted("d", sent, NOW)
    allowance = guard.allowance("d", sent + 1000, NOW + 1, dropped=0, last_at_s=None)
    assert allowance < 2 * SPOOL_BOUND + 10
    assert not guard.jump("d", "e", 2**62, 2**62 - 5, allowance).ok  # one forged number
    assert guard.jump("d", "e", 6, 1, allowance).ok  # the real sequence goes on
    # A real jump (a server restored from an old backup) continues consistently: adopted.
    big = 10**7
    verdicts = [guard.jump("d", "e", big + i, big + i - 6, allowance) for i in range(3)]
    assert [v.ok for v in verdicts] == [False, False, True] and verdicts[2].adopted


def test_dropped_telemetry_a_device_claims_counts_up_to_one_spool() -> None:
    guard = Guard()
    assert guard.allowance("d", 0, NOW, dropped=2**62, last_at_s=NOW) <= 2 * SPOOL_BOUND + 1


def test_a_failed_write_restores_the_budgets() -> None:
    guard = Guard(burst=5.0)
    snapshot = guard.snapshot({"d"})
    assert all(guard.admit("d", int(NOW * 1000), NOW).ok for _ in range(5))
    assert not guard.admit("d", int(NOW * 1000), NOW).ok
    guard.restore(snapshot)
    assert guard.admit("d", int(NOW * 1000), NOW).ok


@settings(max_examples=200, deadline=None)
@given(
    steps=st.lists(
        st.tuples(st.integers(-(10**7), 10**7), st.floats(0, 5)), min_size=1, max_size=300
    )
)
def test_whatever_the_device_clock_says_the_budget_is_bounded(
    steps: list[tuple[int, float]],
) -> None:
    """Any sequence of sent times: accepted <= burst + rate x (real time + skew, counted for
    the device clock and again for the server clock)."""
    guard = Guard(rate=4.0, burst=50.0, skew_s=300)
    now, ok = NOW, 0
    for offset_ms, wait in steps:
        now += wait
        ok += guard.admit("d", int(now * 1000) + offset_ms, now).ok
    elapsed = now - NOW
    assert ok <= 50 + 4 * (2 * elapsed + 300 + 10**4) + 1


def test_a_clock_that_starts_in_the_past_buys_no_credit() -> None:
    """Found by the attack review: a first message "sent" six days ago, then 250 ms more per
    message, refilled the bucket all the way (20,000 events in 6 s, all stored). Time before
    the server last heard from the device (here: it enrolled just now) earns nothing."""
    guard = Guard(rate=4.0, burst=1000.0, skew_s=300)
    start_ms = int((NOW - 6 * 86400) * 1000)
    ok = sum(
        guard.admit("d", start_ms + i * 250, NOW + i / 3000, since_s=NOW).ok for i in range(20_000)
    )
    assert ok <= 1000 + 2 * 4 * (20_000 / 3000 + 300), ok
