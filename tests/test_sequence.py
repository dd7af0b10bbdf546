"""Sequence accounting: each number stored once, late arrivals fill their ranges, and every
number up to the highest is stored, awaited, dropped by the device or lost, never two of them."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from fleet_server.telemetry.sequence import MAX_RANGES, Ledger, Verdict, lost_between


def _balanced(ledger: Ledger) -> bool:
    return ledger.stored + ledger.dropped + ledger.lost + ledger.pending == ledger.highest


def test_in_order_duplicates_gaps_and_late_arrivals() -> None:
    ledger, verdict = Ledger().receive("e1", 1)
    assert verdict == Verdict.NEW and ledger.highest == 1 and ledger.missing == ()
    ledger, verdict = ledger.receive("e1", 1)
    assert verdict == Verdict.DUPLICATE
    ledger, verdict = ledger.receive("e1", 6)  # 2..5 missing: awaited, not lost
    assert verdict == Verdict.NEW and ledger.missing == ((2, 5),) and ledger.lost == 0
    ledger, verdict = ledger.receive("e1", 3)  # a late arrival fills its range
    assert verdict == Verdict.FILLED and ledger.missing == ((2, 2), (4, 5))
    assert ledger.receive("e1", 3)[1] == Verdict.DUPLICATE
    assert ledger.mark == 1 and _balanced(ledger)
    # The device no longer holds anything below 5: 2 and 4 were dropped by its bound.
    ledger = ledger.floor("e1", 5)
    assert ledger.missing == ((5, 5),) and ledger.dropped == 2 and _balanced(ledger)
    assert ledger.floor("other", 100) == ledger and ledger.floor("e1", 0) == ledger


def test_a_new_epoch_starts_again_and_the_old_ones_awaited_numbers_are_lost() -> None:
    ledger = Ledger().receive("e1", 1)[0].receive("e1", 4)[0]
    assert ledger.pending == 2
    fresh, verdict = ledger.receive("e2", 3)
    assert verdict == Verdict.NEW and fresh.epoch == "e2" and fresh.missing == ((1, 2),)
    assert fresh.lost_epochs == 1 and lost_between(ledger, fresh) == 2
    fresh = fresh.with_reason("the spool was damaged").with_reason("again")
    assert fresh.replaced == "the spool was damaged"


def test_past_the_range_bound_a_message_waits_and_nothing_is_given_up() -> None:
    ledger = Ledger()
    for seq in range(1, 2 * MAX_RANGES + 2, 2):  # every other number missing: 64 ranges
        ledger = ledger.receive("e", seq)[0]
    assert len(ledger.missing) == MAX_RANGES
    # A 65th gap is not opened: the message is deferred (not stored, not acknowledged: the
    # device sends it again), and nothing below is given up as stored or lost.
    after, verdict = ledger.receive("e", ledger.highest + 2)
    assert verdict == Verdict.DEFERRED and after == ledger
    assert ledger.receive("e", ledger.highest + 1)[1] == Verdict.NEW  # no gap: fine
    filled = ledger.receive("e", 2)[0]  # a gap filled makes room
    assert filled.receive("e", ledger.highest + 2)[1] == Verdict.NEW
    assert ledger.lost == 0 and _balanced(ledger)


def test_an_epoch_taken_up_again_stores_nothing_twice_and_freezes_nothing() -> None:
    ledger = Ledger().receive("a", 1)[0].receive("a", 2)[0].receive("b", 1)[0]
    assert ledger.epoch == "b" and [r.epoch for r in ledger.retired] == ["a"]
    back, verdict = ledger.receive("a", 2)  # a copy (or a forgery) under the old epoch
    assert verdict == Verdict.DUPLICATE and back.epoch == "a" and back.stored == 2
    again, verdict = back.receive("a", 3)  # the device goes on under it: counted
    assert verdict == Verdict.NEW and lost_between(ledger, back) == 0
    assert again.receive("b", 1)[1] == Verdict.DUPLICATE
    for epoch in "cdefg":
        again = again.receive(epoch, 1)[0]
    assert len(again.retired) == 4 and Ledger.load(again.to_json()) == again


def test_the_stored_form_round_trips_and_an_old_database_continues() -> None:
    ledger = Ledger().receive("e", 1)[0].receive("e", 9)[0].with_reason("why")
    assert Ledger.load(ledger.to_json()) == ledger
    old = Ledger.load(None, "e", 41)  # a database from before ledgers
    assert old.highest == 41 and old.receive("e", 41)[1] == Verdict.DUPLICATE
    assert old.receive("e", 42)[0].missing == ()
    assert Ledger.load("{not json", "e", 3).highest == 3


@given(
    st.lists(st.integers(1, 60), max_size=150),
    st.lists(st.integers(0, 70), max_size=5),
)
def test_any_order_any_repeats_each_number_counts_once(
    arrivals: list[int], floors: list[int]
) -> None:
    """However numbers arrive (out of order, repeated) and whatever floors the device names,
    each number is stored at most once, and the books always balance."""
    ledger = Ledger()
    stored: set[int] = set()
    for i, seq in enumerate(arrivals):
        ledger, verdict = ledger.receive("e", seq)
        if verdict != Verdict.DUPLICATE:
            assert seq not in stored
            stored.add(seq)
        if floors and i % 20 == 0:
            ledger = ledger.floor("e", floors[(i // 20) % len(floors)])
        assert _balanced(ledger)
    assert ledger.stored == len(stored)
