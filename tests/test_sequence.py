"""Sequence accounting: duplicates dropped, gaps counted, new epochs restart the count."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from fleet_server.telemetry.sequence import Position, account


def test_in_order_duplicates_and_gaps() -> None:
    first = account(None, "e1", 1)
    assert first.new and first.gap == 0
    second = account(first.position, "e1", 2)
    assert second.new and second.gap == 0
    again = account(second.position, "e1", 2)
    assert not again.new and again.position == Position("e1", 2)
    jump = account(second.position, "e1", 6)
    assert jump.new and jump.gap == 3
    fresh = account(jump.position, "e2", 1)
    assert fresh.new and fresh.gap == 0 and fresh.position == Position("e2", 1)
    assert account(jump.position, "e2", 4).gap == 3


@given(st.lists(st.integers(1, 50), max_size=200))
def test_replaying_any_prefix_again_counts_every_number_once(deliveries: list[int]) -> None:
    """However a spool redelivers (in order, at least once), each number is new once, and the
    gaps plus the new ones cover every number from the first seen to the highest."""
    stream = sorted(deliveries)
    position = None
    new = gaps = 0
    for seq in stream + stream:  # a second, complete redelivery
        verdict = account(position, "e", seq)
        new += verdict.new
        gaps += verdict.gap
        position = verdict.position
    assert new == len(set(stream))
    if stream:
        assert new + gaps == max(stream) - min(stream) + 1
